#!/usr/bin/env bash
# tests/e2e/lego.sh - Debian's lego against a fresh gateway: register with EAB and issue (EC and
# RSA certificate keys), renew, revoke; each certificate verifies against the root with openssl and
# the store records it. (lego 4.9.1 has no account key rollover command: acme_protocol tests
# keyChange with our own client.)
set -euo pipefail
. "$SOURCE_DIR/tests/e2e/lib.sh"
e2e_start

LG="$ACMEGW_STATE/lego"
NAME="host2.$ACMEGW_TEST_SUFFIX"
CERT="$LG/certificates/$NAME.crt"
lego_() {
    LEGO_CA_CERTIFICATES=$ACMEGW_TLS_CA lego --server "$ACMEGW_DIRECTORY" --accept-tos \
        --email ops@example.com --eab --kid "$ACMEGW_EAB_KID" --hmac "$ACMEGW_EAB_HMAC" \
        --http --http.port 127.0.0.1:0 --path "$LG" "$@" >>"$E2E_TMP/lego.out" 2>&1
}
leaf() { # split the bundle's first certificate
    openssl x509 -in "$1"
}
verify() {
    leaf "$1" >"$E2E_TMP/leaf.pem"
    openssl verify -CAfile "$ACMEGW_ROOTS" -untrusted "$ACMEGW_INTERMEDIATE" "$E2E_TMP/leaf.pem" \
        >/dev/null
}
serial_of() {
    openssl x509 -in "$1" -noout -serial | cut -d= -f2 | tr 'A-F' 'a-f' | sed 's/^0*//'
}
count() {
    sqlite3 "file:$ACMEGW_STATE/acmegw.db?mode=ro" "$1"
}

e2e_check "lego run (EC P-256 key)" lego_ --domains "$NAME" --domains "alt.$NAME" run
e2e_check "certificate verifies against ACMEGW_ROOTS" verify "$CERT"
e2e_check "both names in the SAN" bash -c \
    "openssl x509 -in '$CERT' -noout -ext subjectAltName | grep -q 'DNS:$NAME' && openssl x509 -in '$CERT' -noout -ext subjectAltName | grep -q 'DNS:alt.$NAME'"
e2e_check "validity is 90 days" bash -c \
    "[ \$(( (\$(date -d \"\$(openssl x509 -in '$CERT' -noout -enddate | cut -d= -f2)\" +%s) - \$(date +%s)) / 86400 )) -ge 89 ]"
s1=$(serial_of "$CERT")
e2e_check "store recorded it" \
    test "$(count "select count(*) from certificates where serial='$s1'")" = 1

e2e_check "lego renew" lego_ --domains "$NAME" --domains "alt.$NAME" renew --days 365 --no-random-sleep
s2=$(serial_of "$CERT")
e2e_check "renewal gave a new serial" test "$s1" != "$s2"
e2e_check "renewed certificate verifies" verify "$CERT"

e2e_check "lego run with an RSA-2048 certificate key" lego_ --key-type rsa2048 \
    --domains "rsa.$ACMEGW_TEST_SUFFIX" run
e2e_check "RSA certificate verifies" verify "$LG/certificates/rsa.$ACMEGW_TEST_SUFFIX.crt"
e2e_check "RSA key in the certificate" bash -c \
    "openssl x509 -in '$LG/certificates/rsa.$ACMEGW_TEST_SUFFIX.crt' -noout -text | grep -q 'rsaEncryption'"

e2e_check "lego revoke --reason 4" lego_ --domains "$NAME" revoke --reason 4
e2e_check "store shows it revoked (superseded)" \
    test "$(count "select status||':'||reason from certificates where serial='$s2'")" = "revoked:4"
e2e_check "one account for all of lego's runs" \
    test "$(count "select count(*) from accounts")" = 1

before=$(count "select count(*) from orders")
e2e_check "a name outside the class suffix is refused" bash -c \
    "! LEGO_CA_CERTIFICATES=$ACMEGW_TLS_CA lego --server '$ACMEGW_DIRECTORY' --accept-tos --email ops@example.com --eab --kid '$ACMEGW_EAB_KID' --hmac '$ACMEGW_EAB_HMAC' --http --http.port 127.0.0.1:0 --path '$LG' --domains evil.example.com run >$E2E_TMP/lego-bad.out 2>&1 && grep -q rejectedIdentifier $E2E_TMP/lego-bad.out"
e2e_check "the refused order was not stored" test "$(count "select count(*) from orders")" = "$before"
e2e_check "gateway still alive" e2e_gateway_alive
e2e_summary

#!/usr/bin/env bash
# tests/e2e/certbot.sh - Debian's certbot against a fresh gateway: the certbot command that
# tools/quickstart.sh prints works as printed (register with EAB + issue), then renew and revoke;
# every certificate verifies against the root with openssl, and the store records each step.
# A wrong EAB HMAC is refused and creates no account.
set -euo pipefail
. "$SOURCE_DIR/tests/e2e/lib.sh"
e2e_start

CB="$ACMEGW_STATE/certbot"
NAME="host1.$ACMEGW_TEST_SUFFIX"
LIVE="$CB/config/live/$NAME"
cb() {
    REQUESTS_CA_BUNDLE=$ACMEGW_TLS_CA certbot "$@" --config-dir "$CB/config" \
        --work-dir "$CB/work" --logs-dir "$CB/logs" --non-interactive
}
verify() { # cert
    openssl verify -CAfile "$ACMEGW_ROOTS" -untrusted "$ACMEGW_INTERMEDIATE" "$1" >/dev/null
}
serial_of() {
    openssl x509 -in "$1" -noout -serial | cut -d= -f2 | tr 'A-F' 'a-f' | sed 's/^0*//'
}
count() { # sql
    sqlite3 "file:$ACMEGW_STATE/acmegw.db?mode=ro" "$1"
}

# 1. the command exactly as quickstart printed it (the two lines after "Get a certificate")
cmd=$(sed -n '/^Get a certificate with certbot:/,/^Check it:/p' "$E2E_TMP/quickstart.out" |
    sed -e '1d' -e '/^Check it:/d' -e '/^$/d' | tr -d '\\\n')
e2e_log "running the printed command: $cmd"
e2e_check "printed certbot command succeeds" bash -c "$cmd >$E2E_TMP/certbot1.out 2>&1"
e2e_check "certificate file exists" test -s "$LIVE/cert.pem"
e2e_check "leaf verifies against ACMEGW_ROOTS" verify "$LIVE/cert.pem"
e2e_check "leaf names $NAME" bash -c "openssl x509 -in '$LIVE/cert.pem' -noout -ext subjectAltName | grep -q 'DNS:$NAME'"
e2e_check "fullchain has leaf + intermediate + root" \
    test "$(grep -c 'BEGIN CERTIFICATE' "$LIVE/fullchain.pem")" = 3
s1=$(serial_of "$LIVE/cert.pem")
e2e_check "store recorded the first certificate" \
    test "$(count "select count(*) from certificates where serial='$s1' and status='valid'")" = 1
e2e_check "one account, bound to the EAB key" \
    test "$(count "select count(*) from accounts where eab_kid='$ACMEGW_EAB_KID'")" = 1

# 2. renew
e2e_check "certbot renew --force-renewal" bash -c \
    "REQUESTS_CA_BUNDLE=$ACMEGW_TLS_CA certbot renew --force-renewal --no-random-sleep-on-renew --config-dir '$CB/config' --work-dir '$CB/work' --logs-dir '$CB/logs' --non-interactive >$E2E_TMP/certbot2.out 2>&1"
s2=$(serial_of "$LIVE/cert.pem")
e2e_check "renewal gave a new certificate" test "$s1" != "$s2"
e2e_check "renewed leaf verifies" verify "$LIVE/cert.pem"
e2e_check "store holds both certificates" \
    test "$(count "select count(*) from certificates where identifiers='$NAME'")" = 2

# 3. revoke
e2e_check "certbot revoke --reason keycompromise" cb revoke --server "$ACMEGW_DIRECTORY" \
    --cert-path "$LIVE/cert.pem" --reason keycompromise --no-delete-after-revoke
e2e_check "store shows it revoked with reason 1" \
    test "$(count "select status||':'||reason from certificates where serial='$s2'")" = "revoked:1"
e2e_check "acmegw-admin lists it as revoked" bash -c \
    "$ACMEGW_ADMIN cert list --status revoked --json | grep -q '\"$s2\"'"
e2e_check "revoking again fails (alreadyRevoked)" bash -c \
    "! REQUESTS_CA_BUNDLE=$ACMEGW_TLS_CA certbot revoke --server '$ACMEGW_DIRECTORY' --cert-path '$LIVE/cert.pem' --reason keycompromise --no-delete-after-revoke --config-dir '$CB/config' --work-dir '$CB/work' --logs-dir '$CB/logs' --non-interactive >$E2E_TMP/certbot3.out 2>&1 && grep -q 'urn:ietf:params:acme:error:alreadyRevoked' '$CB/logs/letsencrypt.log'"
# (certbot 2.1 then crashes rendering that problem, AttributeError in josepy: a client bug; the
# server's answer is checked in certbot's debug log)

# 4. a wrong HMAC is refused and changes nothing. It starts with '-', as 1 in 64 real keys do
# (base64url): passed as --eab-hmac-key=VALUE, the form quickstart prints, certbot's argument
# parser takes it as the value and the server is the one that refuses it.
e2e_check "the printed command passes the EAB values as --option=VALUE" \
    grep -q -- "--eab-kid=$ACMEGW_EAB_KID --eab-hmac-key=$ACMEGW_EAB_HMAC " "$E2E_TMP/quickstart.out"
before=$(count "select count(*) from accounts")
bad_hmac=-$(printf 'x%.0s' $(seq 1 42))
e2e_check "wrong EAB HMAC is refused by the server" bash -c \
    "! REQUESTS_CA_BUNDLE=$ACMEGW_TLS_CA certbot certonly --non-interactive --agree-tos --register-unsafely-without-email --server '$ACMEGW_DIRECTORY' --eab-kid='$ACMEGW_EAB_KID' --eab-hmac-key=$bad_hmac --standalone -d host9.$ACMEGW_TEST_SUFFIX --config-dir '$CB/bad' --work-dir '$CB/badw' --logs-dir '$CB/badl' >$E2E_TMP/certbot4.out 2>&1 && grep -q 'urn:ietf:params:acme:error:' '$CB/badl/letsencrypt.log'"
e2e_check "no account was created by the refused binding" \
    test "$(count "select count(*) from accounts")" = "$before"
e2e_check "gateway still alive" e2e_gateway_alive
e2e_summary

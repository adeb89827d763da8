#!/usr/bin/env bash
# tests/e2e/lifecycle.sh - certificate lifecycle against a fresh gateway: revocation through lego,
# certbot and acmegw-admin shows in the issuer's CRL within seconds, fetched over PLAIN http from
# the certificate's own CRL distribution point; the CRL verifies against the issuer chain, openssl
# reports the revoked leaf as revoked (error 23), CRL numbers grow, nextUpdate - thisUpdate is the
# configured interval, `acmegw-admin crl generate` bumps the number, ETag/If-None-Match gives 304.
# Then lifecycle.py: ARI (renewalInfo, replaces) and ACME profiles over HTTPS with our client.
set -euo pipefail
. "${SOURCE_DIR:?}/tests/e2e/lib.sh"
e2e_start

W="$ACMEGW_STATE/lifecycle"
mkdir -p "$W"
CHAIN="$ACMEGW_STATE/ca/chain.pem"
INTERVAL=86400 # crl_next_update_s default (quickstart sets none)
count() { sqlite3 "file:$ACMEGW_STATE/acmegw.db?mode=ro" "$1"; }
cdp_of() { # cert -> its first CRL distribution point URL
    openssl x509 -in "$1" -noout -ext crlDistributionPoints | sed -n 's/.*URI:\(http[^ ]*\).*/\1/p' |
        head -1
}
serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }
fetch() { curl -sf --max-time 5 -o "$2" "$1"; } # url, file: plain http, no TLS options
crl_number() { openssl crl -inform DER -in "$1" -noout -crlnumber | sed 's/.*=//' | xargs printf '%d\n'; }
crl_lists() { # crl, serial (hex as openssl prints it)
    openssl crl -inform DER -in "$1" -noout -text | grep -qi "Serial Number: *$2\$"
}
not_listed() { ! crl_lists "$@"; }
# Polls url until the CRL lists serial (max 15 s); prints the seconds it took.
wait_listed() { # url, serial, out file
    local t0 t1
    t0=$(date +%s.%N)
    for _ in $(seq 1 150); do
        if fetch "$1" "$3" && crl_lists "$3" "$2"; then
            t1=$(date +%s.%N)
            printf '%.1f\n' "$(echo "$t1 - $t0" | bc)"
            return 0
        fi
        sleep 0.1
    done
    echo never
    return 1
}
revoked_by_openssl() { # leaf, crl(DER)
    openssl crl -inform DER -in "$2" -out "$2.pem"
    local out
    out=$(openssl verify -crl_check -CAfile "$ACMEGW_ROOTS" -untrusted "$ACMEGW_INTERMEDIATE" \
        -CRLfile "$2.pem" "$1" 2>&1 || true)
    echo "$out" | grep -q 'error 23 at 0 depth lookup: certificate revoked'
}
valid_by_openssl() { # leaf, crl(DER): the same check passes for a certificate that is not revoked
    openssl crl -inform DER -in "$2" -out "$2.pem"
    openssl verify -crl_check -CAfile "$ACMEGW_ROOTS" -untrusted "$ACMEGW_INTERMEDIATE" \
        -CRLfile "$2.pem" "$1" >/dev/null 2>&1
}
interval_of() {
    local a b
    a=$(openssl crl -inform DER -in "$1" -noout -lastupdate | cut -d= -f2)
    b=$(openssl crl -inform DER -in "$1" -noout -nextupdate | cut -d= -f2)
    echo $(($(date -d "$b" +%s) - $(date -d "$a" +%s)))
}

# ------------------------------------------------------------------ lego: issue, CDP, revoke
LG="$W/lego"
NAME="crl-lego.$ACMEGW_TEST_SUFFIX"
lego_() {
    LEGO_CA_CERTIFICATES=$ACMEGW_TLS_CA lego --server "$ACMEGW_DIRECTORY" --accept-tos \
        --email ops@example.com --eab --kid "$ACMEGW_EAB_KID" --hmac "$ACMEGW_EAB_HMAC" \
        --http --http.port 127.0.0.1:0 --path "$LG" "$@" >>"$W/lego.out" 2>&1
}
e2e_check "lego run" lego_ --domains "$NAME" run
openssl x509 -in "$LG/certificates/$NAME.crt" -out "$W/lego.pem"
URL=$(cdp_of "$W/lego.pem")
e2e_log "CRL distribution point: $URL"
e2e_check "the certificate carries an http:// CDP for issuing-ca-1" \
    test "$URL" = "$ACMEGW_CRL_URL_BASE/crl/issuing-ca-1.crl"
e2e_check "CDP is on the plain-http listener (not the HTTPS port)" \
    bash -c "case '$URL' in http://*:$ACMEGW_PORT/*) exit 1;; http://*) exit 0;; *) exit 1;; esac"
e2e_check "CRL fetched over plain http from the CDP" fetch "$URL" "$W/crl0.der"
e2e_check "Content-Type application/pkix-crl" bash -c \
    "curl -sf -D - -o /dev/null '$URL' | grep -qi '^content-type: application/pkix-crl'"
e2e_check "openssl crl -CAfile chain -verify" bash -c \
    "openssl crl -inform DER -in '$W/crl0.der' -CAfile '$CHAIN' -verify -noout 2>&1 | grep -q 'verify OK'"
e2e_check "nextUpdate = thisUpdate + $INTERVAL s" test "$(interval_of "$W/crl0.der")" = "$INTERVAL"
e2e_check "CRL has an Authority Key Identifier equal to the issuer's SKI" bash -c \
    "test \"\$(openssl crl -inform DER -in '$W/crl0.der' -noout -text | grep -A1 'Authority Key Identifier' | tail -1 | tr -d ' ')\" = \"\$(openssl x509 -in '$ACMEGW_INTERMEDIATE' -noout -ext subjectKeyIdentifier | tail -1 | tr -d ' ')\""
e2e_check "a valid certificate passes openssl verify -crl_check" valid_by_openssl "$W/lego.pem" "$W/crl0.der"
n0=$(crl_number "$W/crl0.der")
S_LEGO=$(serial_of "$W/lego.pem")
e2e_check "CRL does not list the fresh certificate" not_listed "$W/crl0.der" "$S_LEGO"

e2e_check "lego revoke --reason 4" lego_ --domains "$NAME" revoke --reason 4
secs=$(wait_listed "$URL" "$S_LEGO" "$W/crl1.der" || true)
e2e_log "lego revocation listed in the CRL after $secs s"
e2e_check "lego revocation shows in the CRL within seconds ($secs s)" test "$secs" != never
e2e_check "openssl verify -crl_check: certificate revoked (error 23)" \
    revoked_by_openssl "$W/lego.pem" "$W/crl1.der"
e2e_check "entry has reason Superseded" bash -c \
    "openssl crl -inform DER -in '$W/crl1.der' -noout -text | grep -A4 -i 'Serial Number: *$S_LEGO\$' | grep -q Superseded"
n1=$(crl_number "$W/crl1.der")
e2e_check "CRL number increased ($n0 -> $n1)" test "$n1" -gt "$n0"

# ------------------------------------------------------------------ certbot: issue, revoke
CB="$W/certbot"
CBNAME="crl-certbot.$ACMEGW_TEST_SUFFIX"
cb() {
    REQUESTS_CA_BUNDLE=$ACMEGW_TLS_CA certbot "$@" --config-dir "$CB/config" \
        --work-dir "$CB/work" --logs-dir "$CB/logs" --non-interactive >>"$W/certbot.out" 2>&1
}
e2e_check "certbot certonly" cb certonly --agree-tos --register-unsafely-without-email \
    --server "$ACMEGW_DIRECTORY" --eab-kid "$ACMEGW_EAB_KID" --eab-hmac-key="$ACMEGW_EAB_HMAC" \
    --standalone --http-01-port 0 -d "$CBNAME"
CBCERT="$CB/config/live/$CBNAME/cert.pem"
S_CB=$(serial_of "$CBCERT")
e2e_check "certbot revoke --reason keycompromise" cb revoke --server "$ACMEGW_DIRECTORY" \
    --cert-path "$CBCERT" --reason keycompromise --no-delete-after-revoke
secs=$(wait_listed "$(cdp_of "$CBCERT")" "$S_CB" "$W/crl2.der" || true)
e2e_log "certbot revocation listed in the CRL after $secs s"
e2e_check "certbot revocation shows in the CRL within seconds ($secs s)" test "$secs" != never
e2e_check "certbot's certificate is revoked for openssl (error 23)" \
    revoked_by_openssl "$CBCERT" "$W/crl2.der"
e2e_check "entry has reason Key Compromise" bash -c \
    "openssl crl -inform DER -in '$W/crl2.der' -noout -text | grep -A4 -i 'Serial Number: *$S_CB\$' | grep -q 'Key Compromise'"
e2e_check "the earlier lego revocation is still listed" crl_lists "$W/crl2.der" "$S_LEGO"
n2=$(crl_number "$W/crl2.der")
e2e_check "CRL number increased ($n1 -> $n2)" test "$n2" -gt "$n1"

# ------------------------------------------------------------------ operator revocation (admin)
OPNAME="crl-admin.$ACMEGW_TEST_SUFFIX"
e2e_check "lego run (operator case)" lego_ --domains "$OPNAME" run
openssl x509 -in "$LG/certificates/$OPNAME.crt" -out "$W/op.pem"
S_OP=$(serial_of "$W/op.pem")
store_serial=$(count "select serial from certificates where identifiers='$OPNAME'")
e2e_check "acmegw-admin cert revoke --reason keyCompromise" bash -c \
    "$ACMEGW_ADMIN cert revoke $store_serial --reason keyCompromise >/dev/null"
secs=$(wait_listed "$URL" "$S_OP" "$W/crl3.der" || true)
e2e_log "operator revocation listed in the CRL after $secs s"
e2e_check "operator revocation shows in the CRL within seconds ($secs s)" test "$secs" != never
e2e_check "operator-revoked certificate is revoked for openssl (error 23)" \
    revoked_by_openssl "$W/op.pem" "$W/crl3.der"

# ------------------------------------------------------------------ crl generate, ETag
fetch "$URL" "$W/crl4.der"
n4=$(crl_number "$W/crl4.der")
etag=$(curl -sf -D - -o /dev/null "$URL" | sed -n 's/^etag: *\(.*\)\r$/\1/Ip')
e2e_check "ETag present" test -n "$etag"
e2e_check "Last-Modified present" bash -c "curl -sf -D - -o /dev/null '$URL' | grep -qi '^last-modified: '"
e2e_check "Cache-Control max-age" bash -c "curl -sf -D - -o /dev/null '$URL' | grep -qi '^cache-control: .*max-age='"
e2e_check "If-None-Match with the ETag: 304" test \
    "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$URL")" = 304
e2e_check "If-None-Match with another ETag: 200" test \
    "$(curl -s -o /dev/null -w '%{http_code}' -H 'If-None-Match: "0000"' "$URL")" = 200
out=$($ACMEGW_ADMIN crl generate 2>&1 || true)
e2e_log "crl generate: $(echo "$out" | tr '\n' ' ')"
newn=$(echo "$out" | sed -n 's/^issuer issuing-ca-1: CRL number \([0-9]*\) .*/\1/p')
e2e_check "acmegw-admin crl generate reports a new number" test -n "$newn"
e2e_check "... for the lab issuer too" bash -c "echo '$out' | grep -q '^issuer lab-ca: CRL number'"
sleep 0.3
fetch "$URL" "$W/crl5.der"
e2e_check "served CRL has the number it printed ($newn > $n4)" \
    bash -c "[ -n '$newn' ] && [ $(crl_number "$W/crl5.der") = '$newn' ] && [ '$newn' -gt $n4 ]"
e2e_check "the old ETag no longer matches: 200" test \
    "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$URL")" = 200
e2e_check "unknown issuer: 404" test \
    "$(curl -s -o /dev/null -w '%{http_code}' "$ACMEGW_CRL_URL_BASE/crl/nope.crl")" = 404
e2e_check "the lab issuer's CRL verifies against the lab chain" bash -c \
    "curl -sf -o '$W/lab.der' '$ACMEGW_CRL_URL_BASE/crl/lab-ca.crl' && openssl crl -inform DER -in '$W/lab.der' -CAfile '$ACMEGW_STATE/ca/lab-chain.pem' -verify -noout 2>&1 | grep -q 'verify OK'"
e2e_check "the CRL is served on the HTTPS listener too" bash -c \
    "curl -sf --cacert '$ACMEGW_TLS_CA' -o /dev/null https://127.0.0.1:$ACMEGW_PORT/crl/issuing-ca-1.crl"

# ------------------------------------------------------------------ ARI and profiles
rc=0
e2e_python "$SOURCE_DIR/tests/e2e/lifecycle.py" || rc=$?
e2e_finish || rc=1
exit "$rc"

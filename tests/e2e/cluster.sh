#!/usr/bin/env bash
# tests/e2e/cluster.sh - two gateways behind HAProxy on one PostgreSQL store (tools/cluster.sh):
# requests are spread round robin with no stickiness; certbot and lego register, issue, renew and
# revoke through the balancer with no badNonce; a revoked certificate is in the CRL every instance
# serves; the same finalize sent to both instances at once gives one certificate; one instance
# killed with SIGKILL under load leaves no order stuck in processing, no serial recorded twice,
# and the survivor keeps issuing and keeps producing the CRL.
# Skipped (exit 77) only when haproxy or the PostgreSQL server is not installed (tools/deps.sh
# installs both, so CI runs it).
set -euo pipefail
unset ACMEGW_TEST_PG_CONNINFO # the cluster has its own PostgreSQL; lib.sh must not redirect sqlite3
. "$SOURCE_DIR/tests/e2e/lib.sh"
. "$SOURCE_DIR/tools/pg.sh"

for tool in haproxy psql "$ACMEGW_PG_BIN/initdb"; do
    command -v "$tool" >/dev/null 2>&1 ||
        { e2e_log "SKIP: $tool is not installed (tools/deps.sh installs it)"; exit 77; }
done
BENCH=$BUILD_DIR/tools/acmegw-bench
[ -x "$BENCH" ] || { e2e_log "no $BENCH"; exit 1; }

# ------------------------------------------------------------------ start
E2E_TMP=$(mktemp -d "${TMPDIR:-/tmp}/acmegw-e2e-cluster.XXXXXX")
cluster_cleanup() {
    local rc=$?
    set +e
    ACMEGW_STATE=$E2E_TMP "$SOURCE_DIR/tools/cluster.sh" --stop >/dev/null 2>&1
    if [ "$rc" = 0 ] && [ "${E2E_KEEP:-0}" != 1 ]; then
        rm -rf "$E2E_TMP"
    else
        e2e_log "exit status $rc: keeping $E2E_TMP"
        for f in "$E2E_TMP"/acmegw-[12].log; do
            [ -f "$f" ] && { e2e_log "last 20 lines of $f:"; tail -20 "$f" | sed 's/^/    /'; }
        done
    fi
    exit "$rc"
}
trap cluster_cleanup EXIT
trap 'exit 130' INT TERM
read -r p0 p1 p2 p3 <<<"$(e2e_free_port 4)"
if ! ACMEGW_STATE=$E2E_TMP ACMEGW_PORT=$p0 ACMEGW_CRL_PORT=$p1 ACMEGW_GW_PORTS="$p2 $p3" \
    ACMEGW_BUILD_DIR=$BUILD_DIR ACMEGW_NO_INSTALL=1 ACMEGW_NO_BUILD=1 \
    SOFTHSM2_MODULE=${SOFTHSM2_MODULE:-} "$SOURCE_DIR/tools/cluster.sh" --detach \
    >"$E2E_TMP/cluster.out" 2>&1; then
    e2e_log "tools/cluster.sh failed:"
    tail -30 "$E2E_TMP/cluster.out" | sed 's/^/    /'
    exit 1
fi
# shellcheck disable=SC1091
. "$E2E_TMP/env.sh"
export ACMEGW_STATE ACMEGW_DIRECTORY ACMEGW_EAB_KID ACMEGW_EAB_HMAC ACMEGW_TLS_CA ACMEGW_ROOTS
export ACMEGW_PID ACMEGW_CONFIG ACMEGW_ADMIN SOFTHSM2_CONF ACMEGW_TEST_SUFFIX ACMEGW_BACKENDS
export ACMEGW_INTERMEDIATE=$ACMEGW_STATE/ca/intermediate.pem
export PYTHONPATH=$SOURCE_DIR/tests/e2e${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1
read -r PID1 PID2 <<<"$ACMEGW_PIDS"
read -r GW1 GW2 <<<"$ACMEGW_BACKENDS"
LOG1=$ACMEGW_STATE/acmegw-1.log LOG2=$ACMEGW_STATE/acmegw-2.log
e2e_log "haproxy $ACMEGW_DIRECTORY -> $GW1 (pid $PID1), $GW2 (pid $PID2)"
grep -q 'nonces stay per instance' "$E2E_TMP/cluster.out" &&
    e2e_log "WARNING: this gateway has no nonce_key_file: expect badNonce across instances"

sql() { psql -X -q -tA -v ON_ERROR_STOP=1 -d "$ACMEGW_STORE_CONNINFO" -c "$1"; }
served_by() { # last N lines of the haproxy log: the gateway names, one per line
    tail -n "$1" "$ACMEGW_HAPROXY_LOG" | sed -n 's/.* gateways\/\(gw[0-9]\) .*/\1/p'
}
crl_has() { # base URL, serial (hex, lower case): the issuer's CRL from there lists it
    curl -sf "$1/crl/issuing-ca-1.crl" -o "$E2E_TMP/c.crl" &&
        openssl crl -inform DER -in "$E2E_TMP/c.crl" -noout -text |
        tr 'A-Z' 'a-z' | sed -n 's/^ *serial number: *0*//p' | grep -qx "$2"
}
crl_number() { # base URL
    curl -sf "$1/crl/issuing-ca-1.crl" -o "$E2E_TMP/n.crl" &&
        openssl crl -inform DER -in "$E2E_TMP/n.crl" -noout -crlnumber | sed 's/.*=0x//; s/.*=//'
}
wait_for() { # seconds, command...
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.3
    done
}
serial_of() {
    openssl x509 -in "$1" -noout -serial | cut -d= -f2 | tr 'A-F' 'a-f' | sed 's/^0*//'
}

# ------------------------------------------------------------------ 1. round robin, no stickiness
for _ in 1 2 3 4 5 6; do
    curl -sf --cacert "$ACMEGW_TLS_CA" "$ACMEGW_DIRECTORY" -o /dev/null
done
curl -sf --cacert "$ACMEGW_TLS_CA" "$ACMEGW_DIRECTORY" "$ACMEGW_DIRECTORY" "$ACMEGW_DIRECTORY" \
    "$ACMEGW_DIRECTORY" -o /dev/null -o /dev/null -o /dev/null -o /dev/null # one connection
sleep 0.2
alternates() { awk 'NR > 1 && $0 == prev { bad = 1 } { prev = $0 } END { exit bad }'; }
e2e_check "6 new connections alternate between gw1 and gw2 ($(served_by 10 | head -6 | tr '\n' ' '))" \
    bash -c "$(declare -f served_by alternates); ACMEGW_HAPROXY_LOG=$ACMEGW_HAPROXY_LOG; served_by 10 | head -6 | alternates"
e2e_check "4 requests on one keep-alive connection reach both gateways" \
    test "$(served_by 4 | sort -u | wc -l)" = 2

# ------------------------------------------------------------------ 2. certbot through haproxy
CB=$ACMEGW_STATE/certbot
NAME="host1.$ACMEGW_TEST_SUFFIX"
LIVE=$CB/config/live/$NAME
cb() {
    REQUESTS_CA_BUNDLE=$ACMEGW_TLS_CA certbot "$@" --config-dir "$CB/config" \
        --work-dir "$CB/work" --logs-dir "$CB/logs" --non-interactive >>"$E2E_TMP/certbot.out" 2>&1
}
e2e_check "certbot: register with EAB + issue" cb certonly --agree-tos \
    --register-unsafely-without-email --server "$ACMEGW_DIRECTORY" --eab-kid "$ACMEGW_EAB_KID" \
    --eab-hmac-key="$ACMEGW_EAB_HMAC" --standalone -d "$NAME"
cs1=$(serial_of "$LIVE/cert.pem" 2>/dev/null || echo none)
e2e_check "certbot: renew" cb renew --force-renewal --no-random-sleep-on-renew
cs2=$(serial_of "$LIVE/cert.pem" 2>/dev/null || echo none)
e2e_check "certbot: renewal gave a new certificate" test "$cs1" != "$cs2"
e2e_check "certbot: revoke" cb revoke --server "$ACMEGW_DIRECTORY" --cert-path "$LIVE/cert.pem" \
    --reason keycompromise --no-delete-after-revoke
e2e_check "store: certbot's renewed certificate is revoked" \
    test "$(sql "select status from certificates where serial='$cs2'")" = revoked

# ------------------------------------------------------------------ 3. lego through haproxy
LG=$ACMEGW_STATE/lego
LNAME="host2.$ACMEGW_TEST_SUFFIX"
lego_() {
    LEGO_CA_CERTIFICATES=$ACMEGW_TLS_CA lego --server "$ACMEGW_DIRECTORY" --accept-tos \
        --email ops@example.com --eab --kid "$ACMEGW_EAB_KID" --hmac "$ACMEGW_EAB_HMAC" \
        --http --http.port 127.0.0.1:0 --path "$LG" "$@" >>"$E2E_TMP/lego.out" 2>&1
}
e2e_check "lego: register with EAB + issue" lego_ --domains "$LNAME" run
ls1=$(serial_of "$LG/certificates/$LNAME.crt" 2>/dev/null || echo none)
e2e_check "lego: renew" lego_ --domains "$LNAME" renew --days 365 --no-random-sleep
ls2=$(serial_of "$LG/certificates/$LNAME.crt" 2>/dev/null || echo none)
e2e_check "lego: renewal gave a new certificate" test "$ls1" != "$ls2"
e2e_check "lego: revoke" lego_ --domains "$LNAME" revoke --reason 4
e2e_check "store: lego's renewed certificate is revoked" \
    test "$(sql "select status from certificates where serial='$ls2'")" = revoked

nb_clients=$(cat "$E2E_TMP/certbot.out" "$CB/logs/letsencrypt.log" "$E2E_TMP/lego.out" 2>/dev/null |
    grep -c badNonce || true)
e2e_check "no badNonce in certbot's and lego's output and logs ($nb_clients)" test "$nb_clients" = 0
e2e_check "both gateways finalized orders ($(grep -c order.finalized "$LOG1" || true) + $(grep -c order.finalized "$LOG2" || true))" \
    bash -c "grep -q order.finalized '$LOG1' && grep -q order.finalized '$LOG2'"

# ------------------------------------------------------------------ 4. CRL from both instances
e2e_check "certbot's revoked certificate is in gw1's CRL" wait_for 15 crl_has "$GW1" "$cs2"
e2e_check "certbot's revoked certificate is in gw2's CRL" wait_for 15 crl_has "$GW2" "$cs2"
e2e_check "lego's revoked certificate is in gw1's and gw2's CRL" \
    wait_for 15 bash -c "$(declare -f crl_has); E2E_TMP=$E2E_TMP; crl_has $GW1 $ls2 && crl_has $GW2 $ls2"
for _ in 1 2; do crl_has "$ACMEGW_CRL_URL_BASE" "$cs2" || true; done
e2e_check "through haproxy's CRL port, served by both instances" \
    test "$(tail -n 2 "$ACMEGW_HAPROXY_LOG" | grep '^.* crl gateways/' | sed 's/.*gateways\/\(gw[0-9]\).*/\1/' | sort -u | wc -l)" = 2
e2e_check "...and that CRL lists the revoked certificate" crl_has "$ACMEGW_CRL_URL_BASE" "$cs2"

# ------------------------------------------------------------------ 5. one finalize, two instances
e2e_check "same finalize on both instances at once: one certificate, consistent answers" \
    bash -c "'$E2E_PY' '$SOURCE_DIR/tests/e2e/cluster.py' race >'$E2E_TMP/race.out' 2>&1"
sed 's/^/    /' "$E2E_TMP/race.out"
race_order=$(sed -n 's/^ORDER_ID=//p' "$E2E_TMP/race.out")
e2e_check "store: exactly one certificate row for the raced order" \
    test "$(sql "select count(*) from certificates where order_id='${race_order:-none}'")" = 1

# ------------------------------------------------------------------ 6. SIGKILL one instance under load
"$BENCH" issue --concurrency 4 --duration 10 --json --suffix "$ACMEGW_TEST_SUFFIX" \
    >"$E2E_TMP/bench1.json" 2>"$E2E_TMP/bench1.err" &
bench=$!
sleep 4
kill -KILL "$PID2"
e2e_log "killed gw2 (pid $PID2) with SIGKILL during the run"
wait "$bench" || true
e2e_log "bench during the kill: $(cat "$E2E_TMP/bench1.json")"
e2e_check "haproxy marks gw2 down" wait_for 10 bash -c \
    "tail -n 50 '$ACMEGW_HAPROXY_LOG' | grep -q 'gateways/gw2 is DOWN' || grep -q 'Server gateways/gw2 is DOWN' '$ACMEGW_HAPROXY_LOG'"
"$BENCH" issue --concurrency 2 --duration 3 --json --suffix "$ACMEGW_TEST_SUFFIX" \
    >"$E2E_TMP/bench2.json" 2>"$E2E_TMP/bench2.err" || true
e2e_log "bench after the kill: $(cat "$E2E_TMP/bench2.json")"
json_field() { "$E2E_PY" -c 'import json, sys; print(eval(sys.argv[2], {"j": json.load(open(sys.argv[1]))}))' "$1" "$2"; }
e2e_check "a client retrying after the kill gets certificates" \
    test "$(json_field "$E2E_TMP/bench2.json" 'j["certificates"] > 0')" = True
e2e_check "after the kill: no errors" test "$(json_field "$E2E_TMP/bench2.json" 'j["errors"]')" = 0
# An order gw2 had moved to processing when it died is ended by the survivor's sweep once it is
# older than processing_timeout_s (the configs set 10 s): processing -> invalid, so the client
# stops polling (RFC 8555 has no way back to ready).
no_stuck() { [ "$(sql "select count(*) from orders where status='processing'")" = 0 ]; }
e2e_check "no order left in processing (recovered within processing_timeout_s + a poll)" \
    wait_for 30 no_stuck
e2e_log "orders recovered from processing: $(grep -c 'order.recovered' "$ACMEGW_STATE"/*.log 2>/dev/null | tr '\n' ' ')"
e2e_check "no certificate serial recorded twice" \
    test "$(sql "select count(*) from (select serial from certificates group by serial having count(*) > 1) d")" = 0
e2e_check "no order with two certificates" \
    test "$(sql "select count(*) from (select order_id from certificates where order_id is not null group by order_id having count(*) > 1) d")" = 0

# ------------------------------------------------------------------ 7. CRL with one instance dead
n0=$(crl_number "$GW1" || echo 0)
e2e_check "issue + revoke through haproxy with gw2 dead" \
    bash -c "'$E2E_PY' '$SOURCE_DIR/tests/e2e/cluster.py' issue-revoke >'$E2E_TMP/revoke.out' 2>&1"
rs=$(sed -n 's/^SERIAL=//p' "$E2E_TMP/revoke.out")
e2e_check "the CRL lists it (served through haproxy)" wait_for 15 crl_has "$ACMEGW_CRL_URL_BASE" "${rs:-none}"
n1=$(crl_number "$ACMEGW_CRL_URL_BASE" || echo 0)
e2e_check "the CRL number increased ($n0 -> $n1)" test "$((16#${n1:-0}))" -gt "$((16#${n0:-0}))"

nb_gw=$(cat "$LOG1" "$LOG2" | grep -c badNonce || true)
e2e_check "no badNonce in either gateway's log ($nb_gw)" test "$nb_gw" = 0
e2e_check "gw1 still alive" kill -0 "$PID1"
e2e_check "gateway logs have no sanitizer report or crash" \
    bash -c "! grep -qE 'ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:|Segmentation fault' '$LOG1' '$LOG2'"
e2e_summary

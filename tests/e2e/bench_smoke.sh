#!/usr/bin/env bash
# tests/e2e/bench_smoke.sh - keeps tools/acmegw-bench from rotting: a tiny issue run and a tiny
# nonce run against a fresh gateway. Counts only, no timing assertions (the benchmark itself is
# tools/bench.sh; see docs/performance.md).
set -euo pipefail
. "$SOURCE_DIR/tests/e2e/lib.sh"

BENCH=$BUILD_DIR/tools/acmegw-bench
[ -x "$BENCH" ] || { e2e_log "no $BENCH"; exit 1; }
e2e_start

json_field() { # json, python expression over j
    "$E2E_PY" -c 'import json, sys; j = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"
}

out=$("$BENCH" issue --count 5 --concurrency 2 --json --server-pid "$ACMEGW_PID" \
    --suffix "$ACMEGW_TEST_SUFFIX") || true
e2e_log "issue: $out"
e2e_check "issue: output is one JSON object" test "$(json_field "$out" 'type(j).__name__')" = dict
e2e_check "issue: 5 certificates" test "$(json_field "$out" 'j["certificates"]')" = 5
e2e_check "issue: 0 errors" test "$(json_field "$out" 'j["errors"]')" = 0
e2e_check "issue: server CPU reported" test "$(json_field "$out" '"server" in j')" = True

out=$("$BENCH" nonce --count 200 --concurrency 2 --json) || true
e2e_log "nonce: $out"
e2e_check "nonce: 200 requests" test "$(json_field "$out" 'j["requests"]')" = 200
e2e_check "nonce: 0 errors" test "$(json_field "$out" 'j["errors"]')" = 0

out=$("$BENCH" accounts --count 3 --json) || true
e2e_log "accounts: $out"
e2e_check "accounts: 3 accounts, 0 errors" \
    test "$(json_field "$out" 'j["accounts"] - j["errors"]')" = 3

e2e_check "gateway still running" e2e_gateway_alive
e2e_stop
e2e_check "gateway log has no sanitizer report or crash" e2e_log_clean
e2e_summary

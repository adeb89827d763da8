#!/usr/bin/env bash
# tests/e2e/acme_negative.sh - every problem type the gateway emits, one hostile request each, with
# the store snapshot compared before and after (a rejected request changes nothing); then a flood
# of ~20 000 garbage requests (bounded time), after which the gateway must still answer, issue a
# certificate and not have grown much. Details: acme_negative.py and flood.py.
set -euo pipefail
. "${SOURCE_DIR:?}/tests/e2e/lib.sh"

e2e_start
rc=0
e2e_python "$SOURCE_DIR/tests/e2e/acme_negative.py" || rc=$?
e2e_check "gateway alive after the negative cases" e2e_gateway_alive
if [ "${E2E_SKIP_FLOOD:-0}" != 1 ]; then
    e2e_python "$SOURCE_DIR/tests/e2e/flood.py" || rc=$?
    e2e_check "gateway alive after the flood" e2e_gateway_alive
fi
e2e_stop
e2e_check "gateway stopped cleanly on SIGTERM (server.stopped clean=yes)" e2e_stopped_cleanly
e2e_check "gateway log has no sanitizer report or crash" e2e_log_clean
e2e_summary || rc=1
[ "$rc" = 0 ] && e2e_log "PASS" || e2e_log "FAIL (rc=$rc)"
exit "$rc"

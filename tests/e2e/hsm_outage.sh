#!/usr/bin/env bash
# tests/e2e/hsm_outage.sh - the HSM goes away under a running gateway (its SoftHSM2 token files are
# moved away): finalize answers 503 serverInternal with Retry-After at once (no hang), the order
# stays ready so the client can retry, /ready says 503 so a balancer drains the instance; when the
# token comes back the gateway reconnects by itself and the same order is finalized. Details in
# hsm_outage.py.
set -euo pipefail
. "${SOURCE_DIR:?}/tests/e2e/lib.sh"
e2e_start
rc=0
e2e_python "$SOURCE_DIR/tests/e2e/hsm_outage.py" || rc=$?
e2e_check "gateway still running" e2e_gateway_alive
e2e_stop
e2e_check "gateway log has no sanitizer report or crash" e2e_log_clean
e2e_summary || rc=1
exit "$rc"

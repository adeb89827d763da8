#!/usr/bin/env bash
# tests/e2e/hsm_outage.sh - the HSM goes away under a running gateway (its SoftHSM2 token files are
# moved away): finalize answers 503 serverInternal with Retry-After at once (no hang), the order
# stays ready so the client can retry, /ready says 503 so a balancer drains the instance; when the
# token comes back the gateway reconnects by itself and the same order is finalized. Then the
# gateway is restarted while the token files are away (a network HSM down during a restart): it
# starts, serves accounts and orders, answers 503 for signing and /ready, and issues as soon as
# the token is back, without another restart. Details in hsm_outage.py.
set -euo pipefail
. "${SOURCE_DIR:?}/tests/e2e/lib.sh"
e2e_start
rc=0
e2e_python "$SOURCE_DIR/tests/e2e/hsm_outage.py" || rc=$?
e2e_check "gateway still running" e2e_gateway_alive

e2e_log "restart with the token away"
e2e_stop
e2e_check "gateway stopped cleanly" e2e_stopped_cleanly
mv "$ACMEGW_STATE/tokens" "$ACMEGW_STATE/tokens.away"
e2e_check "gateway started although the token is away" e2e_restart_gateway
e2e_check "it says so in its log" grep -q 'hsm.start_unavailable' "$ACMEGW_STATE/acmegw.log"
e2e_python "$SOURCE_DIR/tests/e2e/hsm_outage.py" at-start || rc=$?
[ -d "$ACMEGW_STATE/tokens" ] || mv "$ACMEGW_STATE/tokens.away" "$ACMEGW_STATE/tokens"
e2e_check "gateway still running" e2e_gateway_alive
e2e_stop
e2e_check "gateway log has no sanitizer report or crash" e2e_log_clean
e2e_summary || rc=1
exit "$rc"

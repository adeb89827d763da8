#!/usr/bin/env bash
# tests/e2e/hsm_hang.sh - the HSM fails the way a network HSM does, not by vanishing: the gateway's
# issuers use tests/p11shim.c (SoftHSM2 behind a switch) and the test flips the switch. "hang": a
# signature blocks in the token; the client gets 503 with Retry-After within the signing deadline
# and the next ones at once, nothing piles up. "down": new sessions are refused (the case where
# libp11 0.4.12's PKCS11_login() waits forever): the reconnect attempts fail in time and the
# gateway keeps answering. "up": it reconnects by itself and issues; it then stops cleanly.
# Details in hsm_hang.py.
set -euo pipefail
. "${SOURCE_DIR:?}/tests/e2e/lib.sh"
e2e_start
rc=0
SHIM="$BUILD_DIR/tests/libp11shim.so"
[ -f "$SHIM" ] || { e2e_log "no $SHIM"; exit 1; }
e2e_stop
module=$(sed -n 's/^ *module: *//p' "$ACMEGW_CONFIG" | head -1)
sed -i "s|module: $module|module: $SHIM|" "$ACMEGW_CONFIG"
export P11SHIM_MODULE=$module P11SHIM_CONTROL=$ACMEGW_STATE/shim.mode
echo up >"$P11SHIM_CONTROL"
e2e_check "gateway starts on the shim module" e2e_restart_gateway
e2e_python "$SOURCE_DIR/tests/e2e/hsm_hang.py" || rc=$?
echo up >"$P11SHIM_CONTROL" # whatever happened: release any call still held in the shim
e2e_finish || rc=1
exit "$rc"

#!/usr/bin/env bash
# tests/e2e/acme_protocol.sh - RFC 8555 happy path against the real gateway on loopback, driven by
# our own client (tests/e2e/acmetest.py): directory, nonces, accounts with EAB, orders, authz,
# challenges, finalize, download + openssl verify, keyChange, deactivation, revocation (by account
# and by certificate key), and RS256 / ES384 / EdDSA account keys. Details: acme_protocol.py.
set -euo pipefail
. "${SOURCE_DIR:?}/tests/e2e/lib.sh"

e2e_start
rc=0
e2e_python "$SOURCE_DIR/tests/e2e/acme_protocol.py" || rc=$?
e2e_check "gateway still running after the protocol run" e2e_gateway_alive
e2e_stop
e2e_check "gateway stopped cleanly on SIGTERM (server.stopped clean=yes)" e2e_stopped_cleanly
e2e_check "gateway log has no sanitizer report or crash" e2e_log_clean
e2e_summary || rc=1
[ "$rc" = 0 ] && e2e_log "PASS" || e2e_log "FAIL (python rc=$rc)"
exit "$rc"

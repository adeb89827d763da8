#!/usr/bin/env bash
# tests/e2e/policy.sh - device classes end to end (issue 5): two classes bound to two EAB keys get
# different certificates (validity, EKU, issuer, checked with openssl); forbidden names and keys
# are refused with the right problem types and change nothing; http-01 is validated for real;
# a class added by dropping a file + `acmegw-admin policy reload` enrols; a broken edit keeps the
# running policy; single-use EAB keys, quotas and source CIDRs are enforced. Details: policy.py.
set -euo pipefail
. "${SOURCE_DIR:?}/tests/e2e/lib.sh"

ACMEGW_HTTP01_PORT=$(e2e_free_port)
export ACMEGW_HTTP01_PORT ACMEGW_HTTP01_ADDRESS=127.0.0.1
e2e_start
pid_before=$(cat "$ACMEGW_STATE/acmegw.pid")
e2e_check "a second gateway on the same port refuses to start" bash -c \
    "! timeout 20 '$BUILD_DIR/gateway/acmegw' --config '$ACMEGW_CONFIG' >'$E2E_TMP/second.log' 2>&1 && grep -q 'address already in use' '$E2E_TMP/second.log'"
e2e_check "... and leaves the running gateway's pid file alone" \
    test "$(cat "$ACMEGW_STATE/acmegw.pid")" = "$pid_before"
rc=0
e2e_python "$SOURCE_DIR/tests/e2e/policy.py" || rc=$?
e2e_check "gateway still running" e2e_gateway_alive
e2e_stop
e2e_check "gateway log has no sanitizer report or crash" e2e_log_clean
e2e_summary || rc=1
exit "$rc"

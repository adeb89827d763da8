#!/usr/bin/env bash
# tools/run-tests.sh - the README's test command and what CI runs.
#
# Installs the build and test dependencies (Debian bookworm, apt-get), builds with -Dwerror=true,
# runs the whole meson test suite (unit, e2e, interop with certbot and lego), then builds again
# with AddressSanitizer + UndefinedBehaviorSanitizer and runs the suite again. The last line is
# "N passed, N failed", counting both runs. Exit status is 0 only if nothing failed.
#
#   tools/run-tests.sh             both runs
#   ACMEGW_TEST_ASAN=0 tools/run-tests.sh    plain run only
#   ACMEGW_TEST_ARGS="jws" tools/run-tests.sh  only the named tests
set -uo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
acmegw_install_deps || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0

run_suite() { # name, build dir, extra meson args...
    local name=$1 dir=$2
    shift 2
    echo "=== $name: configure and build ($dir)"
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" -Dwerror=true "$@" >"$dir.setup.log" 2>&1 ||
            { cat "$dir.setup.log"; failed=$((failed + 1)); return; }
    fi
    if ! ninja -C "$dir" >"$dir.build.log" 2>&1; then
        tail -50 "$dir.build.log"
        echo "=== $name: BUILD FAILED"
        failed=$((failed + 1))
        return
    fi
    echo "=== $name: test"
    meson test -C "$dir" --print-errorlogs --num-processes 2 ${ACMEGW_TEST_ARGS:-} \
        2>&1 | tee "$dir.test.log" | grep -E '^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout|Skipped|Expected Fail|Unexpected Pass):' 
    local ok fail to up
    ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$dir.test.log" | tail -1)
    fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$dir.test.log" | tail -1)
    to=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$dir.test.log" | tail -1)
    up=$(sed -n 's/^Unexpected Pass: *\([0-9]*\).*/\1/p' "$dir.test.log" | tail -1)
    if [ -z "$ok" ]; then
        echo "=== $name: the test runner did not report (see $dir.test.log)"
        failed=$((failed + 1))
        return
    fi
    passed=$((passed + ok))
    failed=$((failed + ${fail:-0} + ${to:-0} + ${up:-0}))
}

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

run_suite plain build-test
if [ "${ACMEGW_TEST_ASAN:-1}" != 0 ]; then
    run_suite asan build-test-asan -Db_sanitize=address,undefined -Db_lundef=false
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# tools/run-tests.sh - the README's test command and what CI runs.
#
# Installs the build and test dependencies (Debian bookworm, apt-get), builds with -Dwerror=true,
# runs the whole meson test suite (unit, e2e, interop with certbot and lego), then builds again
# with AddressSanitizer + UndefinedBehaviorSanitizer and runs the suite again, then starts a
# throwaway PostgreSQL server (unix socket only, in a temp dir, stopped by a trap) and runs the
# plain build's suite a third time with the store on PostgreSQL. The last line is
# "N passed, N failed", counting all runs. Exit status is 0 only if nothing failed.
#
#   tools/run-tests.sh             all three runs
#   ACMEGW_TEST_ASAN=0 tools/run-tests.sh    no sanitizer run
#   ACMEGW_TEST_PG=0 tools/run-tests.sh      no PostgreSQL run
#   ACMEGW_TEST_ARGS="jws" tools/run-tests.sh  only the named tests
set -uo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
acmegw_install_deps || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
unset ACMEGW_TEST_PG_CONNINFO ACMEGW_STORE_CONNINFO # the first two runs are SQLite's

timed() { # name, command...: runs it, then prints the wall time of that run
    local t0=$SECONDS
    "${@:2}"
    echo "=== $1: $((SECONDS - t0)) s"
}

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
    local log=$dir.test${LOG_TAG:-}.log
    meson test -C "$dir" --print-errorlogs --num-processes 2 ${LOG_TAG:+--logbase "testlog$LOG_TAG"} \
        ${ACMEGW_TEST_ARGS:-} 2>&1 | tee "$log" | grep -E '^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout|Skipped|Expected Fail|Unexpected Pass):' 
    local ok fail to up skip
    ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    to=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    up=$(sed -n 's/^Unexpected Pass: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    skip=$(sed -n 's/^Skipped: *\([0-9]*\).*/\1/p' "$log" | tail -1) # exit 77: neither count
    if [ -z "$ok" ]; then
        echo "=== $name: the test runner did not report (see $log)"
        failed=$((failed + 1))
        return
    fi
    passed=$((passed + ok))
    failed=$((failed + ${fail:-0} + ${to:-0} + ${up:-0}))
    [ "${skip:-0}" = 0 ] || echo "=== $name: ${skip} skipped (see $log for why)"
}

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

# A throwaway PostgreSQL server (tools/pg.sh): a temp dir owned by postgres (initdb refuses root),
# trust auth for the acmegw role on a unix socket in that dir, no TCP. pg_stop runs on any exit.
. tools/pg.sh
PG_DIR=""
pg_stop() {
    [ -n "$PG_DIR" ] || return 0
    acmegw_pg_stop "$PG_DIR"
    rm -rf "$PG_DIR"
    PG_DIR=""
}
pg_start() {
    PG_DIR=$(mktemp -d /tmp/acmegw-pg.XXXXXX) || return 1
    acmegw_pg_start "$PG_DIR" || return 1
    export ACMEGW_TEST_PG_CONNINFO="$ACMEGW_PG_CONNINFO dbname=postgres"
    # e2e_start gives each test its own database; this one is for anything started without it
    psql -X -q -d "$ACMEGW_TEST_PG_CONNINFO" -c "CREATE DATABASE acmegw_ci" || return 1
    export ACMEGW_STORE_CONNINFO="$ACMEGW_PG_CONNINFO dbname=acmegw_ci"
}

timed plain run_suite plain build-test
if [ "${ACMEGW_TEST_ASAN:-1}" != 0 ]; then
    timed asan run_suite asan build-test-asan -Db_sanitize=address,undefined -Db_lundef=false
fi
if [ "${ACMEGW_TEST_PG:-1}" != 0 ]; then
    trap pg_stop EXIT
    if [ "$(id -u)" -ne 0 ] || ! pg_start; then
        echo "=== postgresql: cannot start a throwaway server (needs root for runuser)"
        failed=$((failed + 1))
    else
        # Every test again on PostgreSQL (acmetest.snapshot reads it through psql), store unit
        # test included; cluster always runs on its own PostgreSQL (tools/cluster.sh): once is
        # enough.
        pg_tests=$(meson test -C build-test --list 2>/dev/null | sed -n 's/^[^ ]* \/ //p' |
            grep -vxE 'cluster' | awk '!seen[$0]++' | tr '\n' ' ')
        LOG_TAG=-pg ACMEGW_TEST_ARGS=${ACMEGW_TEST_ARGS:-$pg_tests} \
            timed postgresql run_suite postgresql build-test
    fi
    pg_stop
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

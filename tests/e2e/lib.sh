# tests/e2e/lib.sh - shared helpers for the end-to-end scripts; source it after `set -euo pipefail`.
#
#   . "$SOURCE_DIR/tests/e2e/lib.sh"
#   e2e_start            fresh state dir + free loopback port, tools/quickstart.sh --detach, then
#                        sources $ACMEGW_STATE/env.sh and exports what the Python tests need
#   e2e_python FILE ...  runs /usr/bin/python3 FILE with tests/e2e on PYTHONPATH
#   e2e_check / e2e_summary   counting assertions for the shell side
#
# On exit a trap stops the gateway (quickstart.sh --stop) and removes the temp dir; after a failure
# the dir is kept and the end of the gateway log is printed. Needs BUILD_DIR and SOURCE_DIR (set by
# tests/e2e/meson.build); SOFTHSM2_MODULE is passed through.

: "${BUILD_DIR:?BUILD_DIR must be set (meson test sets it)}"
: "${SOURCE_DIR:?SOURCE_DIR must be set (meson test sets it)}"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
SOURCE_DIR=$(cd "$SOURCE_DIR" && pwd)
export BUILD_DIR SOURCE_DIR
E2E_PY=/usr/bin/python3
E2E_NAME=${E2E_NAME:-$(basename "$0" .sh)}
E2E_TMP=""
E2E_STARTED=0
E2E_CHECKS=0
E2E_FAILED=0

E2E_PG_DB=""

e2e_log() { printf '[%s] %s\n' "$E2E_NAME" "$*"; }

# PostgreSQL runs (ACMEGW_TEST_PG_CONNINFO set, see tools/run-tests.sh): e2e_start gives each test
# a fresh database, and the scripts' read-only store queries, sqlite3 "file:...acmegw.db?mode=ro"
# SQL, go to it instead (psql -tA prints rows as sqlite3 does, '|' between columns).
if [ -n "${ACMEGW_TEST_PG_CONNINFO:-}" ]; then
    e2e_psql() { psql -X -q -tA -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
    sqlite3() { local sql; for sql; do :; done; e2e_psql "$ACMEGW_STORE_CONNINFO" "$sql"; }
fi

# N (default 1) distinct free loopback ports (tools/free-port.py)
e2e_free_port() {
    "$E2E_PY" "$SOURCE_DIR/tools/free-port.py" "${1:-1}"
}

e2e_cleanup() {
    local rc=$?
    set +e
    if [ "$E2E_STARTED" = 1 ]; then
        ACMEGW_STATE=$E2E_TMP ACMEGW_BUILD_DIR=$BUILD_DIR "$SOURCE_DIR/tools/quickstart.sh" --stop \
            >/dev/null 2>&1
    fi
    if [ -n "$E2E_TMP" ] && [ -d "$E2E_TMP" ]; then
        if [ "$rc" = 0 ] && [ "${E2E_KEEP:-0}" != 1 ]; then
            rm -rf "$E2E_TMP"
            [ -z "$E2E_PG_DB" ] ||
                e2e_psql "$ACMEGW_TEST_PG_CONNINFO" "DROP DATABASE IF EXISTS $E2E_PG_DB WITH (FORCE)"
        else
            e2e_log "exit status $rc: keeping $E2E_TMP"
            if [ -f "$E2E_TMP/acmegw.log" ]; then
                e2e_log "last 40 lines of $E2E_TMP/acmegw.log:"
                tail -40 "$E2E_TMP/acmegw.log" | sed 's/^/    /'
            fi
        fi
    fi
    exit "$rc"
}

e2e_start() {
    local port i
    for tool in openssl curl sqlite3; do
        command -v "$tool" >/dev/null || { e2e_log "missing $tool"; exit 1; }
    done
    "$E2E_PY" -c 'import cryptography' || { e2e_log "missing python3-cryptography"; exit 1; }
    [ -x "$BUILD_DIR/gateway/acmegw" ] || { e2e_log "no $BUILD_DIR/gateway/acmegw"; exit 1; }
    # sanitizer builds: the project's leak suppressions (tools/run-tests.sh sets the same)
    [ -f "$SOURCE_DIR/tests/lsan.supp" ] &&
        export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$SOURCE_DIR/tests/lsan.supp:print_suppressions=0}
    E2E_TMP=$(mktemp -d "${TMPDIR:-/tmp}/acmegw-e2e-$E2E_NAME.XXXXXX")
    trap e2e_cleanup EXIT
    trap 'exit 130' INT TERM
    if [ -n "${ACMEGW_TEST_PG_CONNINFO:-}" ]; then
        E2E_PG_DB=$(basename "$E2E_TMP" | tr 'A-Z.-' 'a-z__')
        e2e_psql "$ACMEGW_TEST_PG_CONNINFO" "CREATE DATABASE $E2E_PG_DB" ||
            { e2e_log "cannot create database $E2E_PG_DB"; exit 1; }
        export ACMEGW_STORE_CONNINFO="$ACMEGW_TEST_PG_CONNINFO dbname=$E2E_PG_DB"
        e2e_log "store: PostgreSQL database $E2E_PG_DB"
    fi
    # the port can be taken between the probe and the gateway's bind: retry with another one
    for i in 1 2 3; do
        port=$(e2e_free_port)
        E2E_STARTED=1
        if ACMEGW_STATE=$E2E_TMP ACMEGW_PORT=$port ACMEGW_BUILD_DIR=$BUILD_DIR \
            ACMEGW_NO_INSTALL=1 ACMEGW_NO_BUILD=1 SOFTHSM2_MODULE=${SOFTHSM2_MODULE:-} \
            "$SOURCE_DIR/tools/quickstart.sh" --detach >"$E2E_TMP/quickstart.out" 2>&1; then
            break
        fi
        if [ "$i" = 3 ] || ! grep -qi 'address already in use\|did not start' \
            "$E2E_TMP/quickstart.out" "$E2E_TMP/acmegw.log" 2>/dev/null; then
            e2e_log "quickstart failed:"
            sed 's/^/    /' "$E2E_TMP/quickstart.out"
            exit 1
        fi
        e2e_log "port $port was taken; retrying"
    done
    # shellcheck disable=SC1091
    . "$E2E_TMP/env.sh"
    export ACMEGW_PORT=$port
    export ACMEGW_STATE ACMEGW_DIRECTORY ACMEGW_EAB_KID ACMEGW_EAB_HMAC ACMEGW_TLS_CA ACMEGW_ROOTS
    export ACMEGW_PID ACMEGW_CONFIG ACMEGW_ADMIN SOFTHSM2_CONF ACMEGW_TEST_SUFFIX
    export ACMEGW_INTERMEDIATE=$ACMEGW_STATE/ca/intermediate.pem
    export PYTHONPATH=$SOURCE_DIR/tests/e2e${PYTHONPATH:+:$PYTHONPATH}
    export PYTHONDONTWRITEBYTECODE=1
    [ -n "$ACMEGW_PID" ] && kill -0 "$ACMEGW_PID" || { e2e_log "gateway not running"; exit 1; }
    [ -n "$ACMEGW_EAB_KID" ] && [ -n "$ACMEGW_EAB_HMAC" ] || { e2e_log "no EAB key"; exit 1; }
    e2e_log "gateway pid $ACMEGW_PID at $ACMEGW_DIRECTORY (state $ACMEGW_STATE, build $BUILD_DIR)"
}

e2e_python() {
    "$E2E_PY" "$@"
}

e2e_check() { # description, command...
    local what=$1
    shift
    E2E_CHECKS=$((E2E_CHECKS + 1))
    if "$@"; then
        echo "  ok   $what"
    else
        echo "  FAIL $what"
        E2E_FAILED=$((E2E_FAILED + 1))
    fi
}

e2e_gateway_alive() {
    kill -0 "$ACMEGW_PID" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$ACMEGW_PID/status"
}

# Stops the gateway now (SIGTERM via quickstart.sh --stop) so that what it prints at exit
# (LeakSanitizer, a crash during shutdown) lands in the log before the checks below read it.
e2e_stop() {
    ACMEGW_STATE=$ACMEGW_STATE ACMEGW_BUILD_DIR=$BUILD_DIR "$SOURCE_DIR/tools/quickstart.sh" --stop \
        >/dev/null 2>&1 || true
    E2E_STARTED=0
}

# Starts the gateway again on the existing state (after e2e_stop), with the environment of the
# caller (e.g. a changed SOFTHSM2_CONF or module), and waits for its directory; sets ACMEGW_PID
# and the pid file e2e_stop uses. Returns non-zero if it does not answer within 15 s.
e2e_restart_gateway() {
    setsid "$BUILD_DIR/gateway/acmegw" --config "$ACMEGW_CONFIG" >>"$ACMEGW_STATE/acmegw.log" \
        2>&1 </dev/null &
    ACMEGW_PID=$!
    export ACMEGW_PID
    echo "$ACMEGW_PID" >"$ACMEGW_STATE/acmegw.pid"
    E2E_STARTED=1
    for _ in $(seq 1 150); do
        curl -sf --cacert "$ACMEGW_TLS_CA" "$ACMEGW_DIRECTORY" >/dev/null 2>&1 && return 0
        kill -0 "$ACMEGW_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

e2e_log_clean() { # no sanitizer report and no crash in the gateway log
    ! grep -qE 'ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:|SUMMARY: .*Sanitizer|Segmentation fault|Aborted' \
        "$ACMEGW_STATE/acmegw.log"
}

e2e_stopped_cleanly() {
    grep -q 'server.stopped clean=yes' "$ACMEGW_STATE/acmegw.log"
}

# The common end of a test: the gateway is still running, stops cleanly, and its log has no
# sanitizer report; then the summary. Returns non-zero if any check of the test failed.
e2e_finish() {
    e2e_check "gateway still running" e2e_gateway_alive
    e2e_stop
    e2e_check "gateway stopped cleanly" e2e_stopped_cleanly
    e2e_check "gateway log has no sanitizer report or crash" e2e_log_clean
    e2e_summary
}

e2e_summary() {
    e2e_log "shell checks: $E2E_CHECKS, failed: $E2E_FAILED"
    [ "$E2E_FAILED" = 0 ]
}

#!/usr/bin/env bash
# tests/e2e/ceremony_errors.sh - acmegw-ceremony refuses bad input cleanly: malformed YAML, an
# unknown key, an unknown algorithm, a weak key without opt-in, a wrong PIN, a missing module, a
# usage error. Each must exit non-zero, print exactly one line on stderr, and change nothing: the
# token's object list and the files in the directory are the same before and after.
set -euo pipefail

: "${BUILD_DIR:?BUILD_DIR must be set (meson test sets it)}"
: "${SOURCE_DIR:?SOURCE_DIR must be set (meson test sets it)}"
MODULE=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
TOOL=$(cd "$BUILD_DIR" && pwd)/tools/acmegw-ceremony
CHECKS=0
FAILED=0

pass() { CHECKS=$((CHECKS + 1)); printf 'ok   %s\n' "$1"; }
fail() { CHECKS=$((CHECKS + 1)); FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$1"; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/acmegw-ceremony-errors-XXXXXX")
trap 'rc=$?; if [ "$rc" = 0 ]; then rm -rf "$TMP"; else echo "keeping $TMP"; fi; exit $rc' EXIT
cd "$TMP"
mkdir tokens work
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' \
    "$TMP" >softhsm2.conf
export SOFTHSM2_CONF=$TMP/softhsm2.conf
export ACMEGW_SO_PIN=so-$RANDOM$RANDOM ACMEGW_PIN=user-$RANDOM$RANDOM

cat >work/init.yaml <<EOF
step: init-token
token: {module: $MODULE, label: errs, so_pin_env: ACMEGW_SO_PIN, pin_env: ACMEGW_PIN}
EOF
(cd work && "$TOOL" run init.yaml >/dev/null)

good_root() { # good_root [ALGORITHM [MODULE]]
    cat <<EOF
step: root
token:
  module: ${2:-$MODULE}
  label: errs
  pin_env: ACMEGW_PIN
key:
  algorithm: ${1:-ec-p256}
  label: errs-root
  id: "01"
certificate:
  subject:
    - CN: errors test root
  validity_days: 30
  key_usage: [keyCertSign, cRLSign]
cert_out: root.pem
EOF
}

state() { # everything a failed run must not change
    (cd work && find . -type f | sort | xargs sha256sum)
    pkcs11-tool --module "$MODULE" --token-label errs --login --pin "$ACMEGW_PIN" --list-objects \
        2>/dev/null
    # object files by name (SoftHSM rewrites token.object on every login, so no content hash)
    find "$TMP/tokens" -type f | sort
}

# expect_error NAME PATTERN [ENV=VALUE ...] -- ARGS...: exit 1 (or 2), one stderr line, no change
expect_error() {
    local name=$1 pattern=$2 rc=0 lines
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    state >"$TMP/before.txt"
    (cd work && env "${envs[@]}" "$TOOL" "$@" >"$TMP/out.txt" 2>"$TMP/err.txt") || rc=$?
    state >"$TMP/after.txt"
    lines=$(wc -l <"$TMP/err.txt")
    if [ "$rc" = 0 ]; then
        fail "$name: exit status 0"
    elif [ "$lines" != 1 ]; then
        fail "$name: $lines lines on stderr, want 1"
        sed 's/^/    /' "$TMP/err.txt"
    elif ! grep -q -- "$pattern" "$TMP/err.txt"; then
        fail "$name: stderr does not match '$pattern'"
        sed 's/^/    /' "$TMP/err.txt"
    elif ! cmp -s "$TMP/before.txt" "$TMP/after.txt"; then
        fail "$name: token or files changed"
        diff "$TMP/before.txt" "$TMP/after.txt" | sed 's/^/    /' || true
    else
        pass "$name (exit $rc): $(cat "$TMP/err.txt")"
    fi
}

printf 'step: root\ntoken:\n  module: x\n label: y\n' >work/malformed.yaml
expect_error "malformed YAML" "malformed.yaml:[0-9]*: YAML syntax error" -- run malformed.yaml

good_root | sed 's/  validity_days: 30/  validity_days: 30\n  colour: blue/' >work/unknown.yaml
expect_error "unknown key" "unknown.yaml:14: unknown key 'colour'" -- run unknown.yaml

good_root ec-p999 >work/alg.yaml
expect_error "unknown algorithm" "unknown algorithm 'ec-p999'" -- run alg.yaml

good_root rsa-2048 >work/weak.yaml
expect_error "rsa-2048 without allow_weak_test_key" "allow_weak_test_key" -- run weak.yaml

good_root >work/root.yaml
expect_error "wrong PIN" "token login failed: PIN incorrect" ACMEGW_PIN=wrong-pin -- run root.yaml

expect_error "PIN variable unset" "ACMEGW_PIN" ACMEGW_PIN= -- run root.yaml

good_root ec-p256 /nonexistent/libnope.so >work/module.yaml
expect_error "missing module" "cannot load PKCS#11 module" -- run module.yaml

printf 'step: ceremony-of-doom\ntoken: {module: x, label: y, pin_env: ACMEGW_PIN}\n' >work/step.yaml
expect_error "unknown step" "unknown step" -- run step.yaml

expect_error "missing file" "nonexistent.yaml" -- run nonexistent.yaml

state >"$TMP/before.txt"
rc=0
(cd work && "$TOOL" run root.yaml --bogus 2>/dev/null) || rc=$?
if [ "$rc" = 2 ]; then pass "usage error exits 2"; else fail "usage error exits $rc, want 2"; fi

# And the good file still works afterwards: the failures left the token usable.
if (cd work && "$TOOL" run root.yaml >/dev/null 2>&1); then
    pass "the same root file succeeds with the right PIN"
else
    fail "the same root file succeeds with the right PIN"
fi

printf '%d checks, %d failed\n' "$CHECKS" "$FAILED"
[ "$FAILED" = 0 ]

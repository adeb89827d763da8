#!/usr/bin/env bash
# tests/e2e/ceremony.sh - the whole key ceremony with acmegw-ceremony on fresh SoftHSM2 tokens:
# init-token, root, intermediate, crl, verify, for EC P-256 and for RSA-3072 (one token each),
# then openssl checks, pkcs11-tool attribute checks, verify-transcript (and its failure after a
# one-byte change), and the refusal to overwrite an existing key or certificate.
set -euo pipefail

: "${BUILD_DIR:?BUILD_DIR must be set (meson test sets it)}"
: "${SOURCE_DIR:?SOURCE_DIR must be set (meson test sets it)}"
MODULE=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
TOOL=$(cd "$BUILD_DIR" && pwd)/tools/acmegw-ceremony
CHECKS=0
FAILED=0

pass() { CHECKS=$((CHECKS + 1)); printf 'ok   %s\n' "$1"; }
fail() { CHECKS=$((CHECKS + 1)); FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$1"; }
check() { # check NAME COMMAND...: passes when the command succeeds
    local name=$1
    shift
    if "$@" >check.out 2>&1; then pass "$name"; else fail "$name"; sed 's/^/    /' check.out; fi
}
check_fails() { # check_fails NAME COMMAND...: passes when the command fails
    local name=$1
    shift
    if "$@" >check.out 2>&1; then fail "$name (unexpectedly succeeded)"; else pass "$name"; fi
    cp check.out last.out
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/acmegw-ceremony-XXXXXX")
trap 'rc=$?; if [ "$rc" = 0 ]; then rm -rf "$TMP"; else echo "keeping $TMP"; fi; exit $rc' EXIT
cd "$TMP"
mkdir tokens
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' \
    "$TMP" >softhsm2.conf
export SOFTHSM2_CONF=$TMP/softhsm2.conf
export ACMEGW_SO_PIN=so-$RANDOM$RANDOM ACMEGW_PIN=user-$RANDOM$RANDOM

# write_files PREFIX ALG TOKEN: the six ceremony files for one token and algorithm
write_files() {
    local p=$1 alg=$2 tok=$3
    local tokblock="token:
  module: $MODULE
  label: $tok
  pin_env: ACMEGW_PIN"
    cat >"$p-00.yaml" <<EOF
step: init-token
token:
  module: $MODULE
  label: $tok
  so_pin_env: ACMEGW_SO_PIN
  pin_env: ACMEGW_PIN
EOF
    cat >"$p-10.yaml" <<EOF
step: root
$tokblock
key: {algorithm: $alg, label: $p-root, id: "a1"}
certificate:
  subject:
    - C: DE
    - O: acmegw test
    - CN: $p test root
  validity_days: 3650
  path_length: 1
  key_usage: [keyCertSign, cRLSign]
cert_out: $p-root.pem
EOF
    cat >"$p-20.yaml" <<EOF
step: intermediate
$tokblock
key: {algorithm: $alg, label: $p-issuing, id: "a2"}
certificate:
  subject:
    - O: acmegw test
    - CN: $p test issuing
  validity_days: 1000
  path_length: 0
  key_usage: [keyCertSign, cRLSign, digitalSignature]
  name_constraints:
    permitted_dns: [devices.example.com]
    permitted_ip: [10.0.0.0/8]
issuer:
  token: {module: $MODULE, uri: "pkcs11:token=$tok", pin_env: ACMEGW_PIN}
  key: {label: $p-root, id: "a1"}
  cert: $p-root.pem
cert_out: $p-intermediate.pem
EOF
    cat >"$p-30.yaml" <<EOF
step: crl
$tokblock
key: {label: $p-root}
cert: $p-root.pem
next_update_days: 30
crl_out: $p-root.crl
EOF
    cat >"$p-40.yaml" <<EOF
step: verify
$tokblock
key: {label: $p-root, id: "a1"}
cert: $p-root.pem
EOF
    cat >"$p-41.yaml" <<EOF
step: verify
$tokblock
key: {label: $p-issuing, id: "a2"}
cert: $p-intermediate.pem
EOF
}

ceremony() { # ceremony PREFIX ALG TOKEN
    local p=$1 alg=$2 tok=$3 s
    write_files "$p" "$alg" "$tok"
    for s in 00 10 20 30 40 41; do
        check "$p: run step $s" "$TOOL" run "$p-$s.yaml" --transcript "$p.jsonl"
    done
    check "$p: openssl verify -CAfile root intermediate" \
        openssl verify -CAfile "$p-root.pem" "$p-intermediate.pem"
    check "$p: openssl crl -verify" openssl crl -in "$p-root.crl" -CAfile "$p-root.pem" -verify -noout
    check "$p: root is self-signed v3 CA" bash -c "openssl x509 -in $p-root.pem -noout -text |
        grep -q 'CA:TRUE, pathlen:1' && openssl x509 -in $p-root.pem -noout -text | grep -q 'Version: 3'"
    check "$p: intermediate has name constraints" bash -c \
        "openssl x509 -in $p-intermediate.pem -noout -text | grep -q 'DNS:devices.example.com'"
    check "$p: crl number 1" bash -c "openssl crl -in $p-root.crl -noout -text | grep -A1 'CRL Number' | grep -q ' 1$'"
    pkcs11-tool --module "$MODULE" --token-label "$tok" --login --pin "$ACMEGW_PIN" --list-objects \
        --type privkey >"$p-objects.txt" 2>/dev/null || true
    check "$p: pkcs11-tool: two private keys, sign only" \
        test "$(grep -c 'Usage: *sign$' "$p-objects.txt")" = 2
    check "$p: pkcs11-tool: sensitive, always sensitive, never extractable, local" \
        test "$(grep -c 'Access: *sensitive, always sensitive, never extractable, local' "$p-objects.txt")" = 2
    check "$p: verify-transcript passes" "$TOOL" verify-transcript "$p.jsonl"
    check "$p: transcript names PIN sources, never PINs" bash -c \
        "grep -q ACMEGW_PIN $p.jsonl && ! grep -q -e '$ACMEGW_PIN' -e '$ACMEGW_SO_PIN' $p.jsonl"
}

ceremony ec ec-p256 acmegw-ec
ceremony rsa rsa-3072 acmegw-rsa

# A one-byte change anywhere fails verification: try a few positions spread over the file.
len=$(stat -c %s ec.jsonl)
for frac in 1 3 5 7 9; do
    off=$((len * frac / 10))
    cp ec.jsonl tampered.jsonl
    "${PYTHON:-/usr/bin/python3}" -c 'import sys
p, off = sys.argv[1], int(sys.argv[2])
d = bytearray(open(p, "rb").read())
d[off] ^= 0x01
open(p, "wb").write(d)' tampered.jsonl "$off"
    check_fails "verify-transcript fails after flipping byte $off of $len" \
        "$TOOL" verify-transcript tampered.jsonl
done
cp ec-root.pem ec-root.pem.orig
printf 'x' >>ec-root.pem
check_fails "verify-transcript fails when an output file changed" "$TOOL" verify-transcript ec.jsonl
mv ec-root.pem.orig ec-root.pem

# Re-running root refuses to overwrite, and changes nothing.
snapshot() {
    sha256sum ec-root.pem ec.jsonl
    pkcs11-tool --module "$MODULE" --token-label acmegw-ec --login --pin "$ACMEGW_PIN" \
        --list-objects 2>/dev/null
}
snapshot >before.txt
check_fails "re-running root (certificate exists) is refused" "$TOOL" run ec-10.yaml --transcript ec.jsonl
check "refusal names the existing file" grep -q "exists: refusing to overwrite" last.out
sed 's/cert_out: ec-root.pem/cert_out: ec-root2.pem/' ec-10.yaml >ec-10b.yaml
check_fails "root with an existing key label is refused" "$TOOL" run ec-10b.yaml --transcript ec.jsonl
check "refusal names the existing key" grep -q "already exists in token" last.out
check "no new certificate file" test ! -e ec-root2.pem
snapshot >after.txt
check "files and token unchanged after the refusals" cmp -s before.txt after.txt

printf '%d checks, %d failed\n' "$CHECKS" "$FAILED"
[ "$FAILED" = 0 ]

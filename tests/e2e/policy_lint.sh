#!/usr/bin/env bash
# tests/e2e/policy_lint.sh - `acmegw-admin policy lint` against golden files: every broken policy
# in tests/policy_lint/ gives exactly the FILE:LINE:COL lines (and exit status) recorded in its
# .expected file; the good file passes. The gateway refuses to start with a broken policy
# directory and names the file and line.
set -euo pipefail
: "${BUILD_DIR:?}" "${SOURCE_DIR:?}"
ADMIN="$BUILD_DIR/tools/acmegw-admin"
cd "$SOURCE_DIR/tests/policy_lint"
failed=0
n=0
for f in *.yaml; do
    n=$((n + 1))
    got=$({ "$ADMIN" policy lint "$f" 2>&1; echo "rc=$?"; } || true)
    if [ "$got" = "$(cat "${f%.yaml}.expected")" ]; then
        echo "  ok   $f"
    else
        echo "  FAIL $f"
        diff <(echo "$got") "${f%.yaml}.expected" | sed 's/^/    /' || true
        failed=$((failed + 1))
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/policy.d"
cp good.yaml "$tmp/policy.d/good.yaml"
cp wrong-type.yaml "$tmp/policy.d/broken.yaml"
cat >"$tmp/acmegw.yaml" <<CFG
listen:
  - address: 127.0.0.1
    port: 1
    plain_http: true
base_url: http://127.0.0.1:1
store_path: acmegw.db
seal_key_file: seal.key
issuers:
  - name: issuing-ca-1
    module: /nonexistent.so
    token: t
    key_label: k
    pin_env: NO_SUCH_PIN
    ca_chain: chain.pem
policy_dir: policy.d
CFG
n=$((n + 1))
if out=$("$BUILD_DIR/gateway/acmegw" --check-config "$tmp/acmegw.yaml" 2>&1); then
    echo "  FAIL gateway accepted a broken policy directory"
    failed=$((failed + 1))
elif grep -q "broken.yaml:11:20" <<<"$out"; then
    echo "  ok   gateway refuses a broken policy and names file:line ($out)"
else
    echo "  FAIL gateway error does not name broken.yaml:11:20: $out"
    failed=$((failed + 1))
fi
n=$((n + 1))
rm "$tmp/policy.d/broken.yaml"
sed 's/issuer: issuing-ca-1/issuer: no-such-ca/' good.yaml >"$tmp/policy.d/good.yaml"
if out=$("$BUILD_DIR/gateway/acmegw" --check-config "$tmp/acmegw.yaml" 2>&1); then
    echo "  FAIL gateway accepted a class with an unknown issuer"
    failed=$((failed + 1))
elif grep -q "no-such-ca" <<<"$out"; then
    echo "  ok   gateway refuses a class naming an unknown issuer ($out)"
else
    echo "  FAIL unexpected error for an unknown issuer: $out"
    failed=$((failed + 1))
fi
n=$((n + 1))
mkdir "$tmp/example" "$tmp/example/policy.d"
cp "$SOURCE_DIR/examples/acmegw.yaml" "$tmp/example/"
cp "$SOURCE_DIR"/examples/policy.d/*.yaml "$tmp/example/policy.d/"
if out=$("$BUILD_DIR/gateway/acmegw" --check-config "$tmp/example/acmegw.yaml" 2>&1); then
    echo "  ok   examples/acmegw.yaml with examples/policy.d passes --check-config"
else
    echo "  FAIL examples/acmegw.yaml: $out"
    failed=$((failed + 1))
fi
echo "policy_lint: $n checks, $failed failed"
[ "$failed" = 0 ]

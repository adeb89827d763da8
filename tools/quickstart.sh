#!/usr/bin/env bash
# tools/quickstart.sh - from a fresh Debian bookworm machine to a running acmegw in one command.
#
#   tools/quickstart.sh            set up (or reuse) the state, start the gateway, stay in the
#                                  foreground (Ctrl-C stops it)
#   tools/quickstart.sh --detach   same, but return once the directory answers
#   tools/quickstart.sh --stop     stop a detached gateway
#
# Environment: ACMEGW_STATE (default ./state), ACMEGW_PORT (default 8443), ACMEGW_BUILD_DIR
# (default ./build), ACMEGW_NO_INSTALL=1 / ACMEGW_NO_BUILD=1 to skip apt-get / the build,
# SOFTHSM2_MODULE (default Debian's SoftHSM2), ACMEGW_STORE_CONNINFO (PostgreSQL store),
# ACMEGW_NO_START=1 to prepare the state (token, CA, config, EAB keys) and exit without starting
# the gateway (tools/cluster.sh starts its own gateways from that state).
#
# What it does: installs the Debian packages, builds, creates $ACMEGW_STATE holding a SoftHSM2
# token, runs the key ceremony with tools/acmegw-ceremony (root and issuing intermediate keys
# generated in the token, root CRL, attribute verification, transcript), makes the gateway's
# HTTPS certificate (a separate, software TLS CA: it is not the PKI being run), creates an EAB
# key, starts the gateway and writes $ACMEGW_STATE/env.sh. A second run reuses the state and
# never destroys keys: every step is skipped when its output exists.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=foreground
case "${1:-}" in
"") ;;
--detach) MODE=detach ;;
--stop) MODE=stop ;;
*) echo "usage: tools/quickstart.sh [--detach|--stop]" >&2; exit 2 ;;
esac

STATE=${ACMEGW_STATE:-./state}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
PORT=${ACMEGW_PORT:-8443}
CRL_PORT=${ACMEGW_CRL_PORT:-$((PORT + 1))}
BUILD=${ACMEGW_BUILD_DIR:-$ROOT/build}
MODULE=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
TOKEN_LABEL=acmegw-ca
SUFFIX=device.test
DIRECTORY="https://127.0.0.1:$PORT/directory"
PIDFILE="$STATE/acmegw.pid"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

running_pid() {
    local pid
    [ -f "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_env() { # pid
    local kid="" hmac=""
    if [ -f "$STATE/eab.json" ]; then
        kid=$(sed -n 's/.*"kid":"\([^"]*\)".*/\1/p' "$STATE/eab.json")
        hmac=$(sed -n 's/.*"hmac":"\([^"]*\)".*/\1/p' "$STATE/eab.json")
    fi
    cat >"$STATE/env.sh" <<ENV
# written by tools/quickstart.sh; source it: . $STATE/env.sh
export ACMEGW_STATE='$STATE'
export ACMEGW_DIRECTORY='$DIRECTORY'
export ACMEGW_EAB_KID='$kid'
export ACMEGW_EAB_HMAC='$hmac'
export ACMEGW_TLS_CA='$STATE/tls/ca.pem'
export ACMEGW_ROOTS='$STATE/ca/root.pem'
export ACMEGW_PID='$1'
export ACMEGW_CONFIG='$STATE/acmegw.yaml'
export ACMEGW_ADMIN='$BUILD/tools/acmegw-admin --config $STATE/acmegw.yaml'
export SOFTHSM2_CONF='$STATE/softhsm2.conf'
export ACMEGW_TOKEN_LABEL='$TOKEN_LABEL'
export ACMEGW_PIN_FILE='$STATE/secrets/pin'
export ACMEGW_TEST_SUFFIX='$SUFFIX'
export ACMEGW_POLICY_DIR='$STATE/policy.d'
export ACMEGW_CRL_URL_BASE='http://127.0.0.1:$CRL_PORT'
ENV
}

stop_gateway() {
    local pid
    pid=$(running_pid) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    rm -f "$PIDFILE"
    log "stopped acmegw (pid $pid)"
}

if [ "$MODE" = stop ]; then
    stop_gateway
    write_env ""
    exit 0
fi

# ------------------------------------------------------------------ install and build
if [ "${ACMEGW_NO_INSTALL:-0}" != 1 ]; then
    log "installing Debian packages (apt-get)"
    . "$ROOT/tools/deps.sh"
    acmegw_install_deps
fi
if [ "${ACMEGW_NO_BUILD:-0}" != 1 ]; then
    log "building in $BUILD"
    [ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" "$ROOT" -Dbuildtype=release >/dev/null
    ninja -C "$BUILD" >/dev/null
fi
CEREMONY="$BUILD/tools/acmegw-ceremony"
ADMIN="$BUILD/tools/acmegw-admin"
GATEWAY="$BUILD/gateway/acmegw"

# ------------------------------------------------------------------ token and PINs
umask 077
mkdir -p "$STATE/tokens" "$STATE/secrets" "$STATE/ca" "$STATE/ceremony" "$STATE/tls"
if [ ! -f "$STATE/softhsm2.conf" ]; then
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' \
        "$STATE" >"$STATE/softhsm2.conf"
fi
export SOFTHSM2_CONF="$STATE/softhsm2.conf"
for f in so-pin pin; do
    [ -s "$STATE/secrets/$f" ] || openssl rand -hex 16 >"$STATE/secrets/$f"
done

# ------------------------------------------------------------------ key ceremony
# One reviewed file per step, as a PKI team would sign off before a real ceremony.
cer() { # name, content
    [ -f "$STATE/ceremony/$1" ] || printf '%s\n' "$2" >"$STATE/ceremony/$1"
}
TOKEN_BLOCK="token:
  module: $MODULE
  label: $TOKEN_LABEL
  pin_file: $STATE/secrets/pin"
cer 00-init-token.yaml "step: init-token
token:
  module: $MODULE
  label: $TOKEN_LABEL
  pin_file: $STATE/secrets/pin
  so_pin_file: $STATE/secrets/so-pin
transcript: $STATE/ca/ceremony.transcript.jsonl"
cer 10-root.yaml "step: root
$TOKEN_BLOCK
key:
  algorithm: ec-p384
  label: acmegw-root
  id: \"01\"
certificate:
  subject:
    - O: acmegw quickstart
    - CN: acmegw quickstart root CA
  validity_days: 3650
  path_length: 1
  key_usage: [keyCertSign, cRLSign]
cert_out: $STATE/ca/root.pem
transcript: $STATE/ca/ceremony.transcript.jsonl"
# An issuing CA under the root: file, key label, CKA_ID, subject CN, certificate out.
intermediate() {
    cer "$1" "step: intermediate
$TOKEN_BLOCK
key:
  algorithm: ec-p256
  label: $2
  id: \"$3\"
certificate:
  subject:
    - O: acmegw quickstart
    - CN: $4
  validity_days: 1825
  path_length: 0
  key_usage: [keyCertSign, cRLSign, digitalSignature]
issuer:
  token:
    module: $MODULE
    label: $TOKEN_LABEL
    pin_file: $STATE/secrets/pin
  key:
    label: acmegw-root
  cert: $STATE/ca/root.pem
cert_out: $5
transcript: $STATE/ca/ceremony.transcript.jsonl"
}
# Reads back a key's attributes and checks it matches its certificate: file, key label, cert.
verify_step() {
    cer "$1" "step: verify
$TOKEN_BLOCK
key:
  label: $2
cert: $STATE/ca/$3
transcript: $STATE/ca/ceremony.transcript.jsonl"
}
intermediate 20-intermediate.yaml acmegw-issuing 02 "acmegw quickstart issuing CA 1" \
    "$STATE/ca/intermediate.pem"
intermediate 21-intermediate-lab.yaml acmegw-lab 03 "acmegw quickstart lab CA" "$STATE/ca/lab.pem"
verify_step 42-verify-lab.yaml acmegw-lab lab.pem
cer 30-root-crl.yaml "step: crl
$TOKEN_BLOCK
key:
  label: acmegw-root
cert: $STATE/ca/root.pem
crl_out: $STATE/ca/root.crl
next_update_days: 30
transcript: $STATE/ca/ceremony.transcript.jsonl"
verify_step 40-verify-root.yaml acmegw-root root.pem
verify_step 41-verify-intermediate.yaml acmegw-issuing intermediate.pem

step() { # marker file, ceremony file
    if [ ! -e "$1" ]; then
        log "ceremony: $2"
        "$CEREMONY" run "$STATE/ceremony/$2" >&2
        [ -e "$1" ] || touch "$1"
    fi
}
step "$STATE/ca/.token-initialized" 00-init-token.yaml
step "$STATE/ca/root.pem" 10-root.yaml
step "$STATE/ca/intermediate.pem" 20-intermediate.yaml
step "$STATE/ca/lab.pem" 21-intermediate-lab.yaml
step "$STATE/ca/root.crl" 30-root-crl.yaml
step "$STATE/ca/.verified-root" 40-verify-root.yaml
step "$STATE/ca/.verified-intermediate" 41-verify-intermediate.yaml
step "$STATE/ca/.verified-lab" 42-verify-lab.yaml
cat "$STATE/ca/intermediate.pem" "$STATE/ca/root.pem" >"$STATE/ca/chain.pem"
cat "$STATE/ca/lab.pem" "$STATE/ca/root.pem" >"$STATE/ca/lab-chain.pem"

# ------------------------------------------------------------------ policy: one file per class
# The live policy directory: edit a file, `acmegw-admin policy lint`, then `policy reload`.
mkdir -p "$STATE/policy.d"
if [ ! -f "$STATE/policy.d/default.yaml" ]; then
    cat >"$STATE/policy.d/default.yaml" <<POL
# default: the quickstart's class. Names under $SUFFIX are pre-authorized (no challenge) for
# clients on loopback; any common key type; server and client TLS; 90 days.
issuer: issuing-ca-1
identifiers:
  types: [dns]
  dns: [$SUFFIX, "*.$SUFFIX"]
  max: 20
validation:
  method: pre-authorized
  sources: [127.0.0.0/8, "::1/128"]
csr:
  keys: [ec-p256, ec-p384, "rsa>=2048"]
profiles:
  - name: default
    validity_days: 90
    key_usage: [digitalSignature]
    key_usage_rsa: [keyEncipherment]
    extended_key_usage: [serverAuth, clientAuth]
    # no crl_urls: the CDP comes from crl_url_base in the config, which follows ACMEGW_PORT
POL
    for f in devices web-servers lab; do
        cp "$ROOT/examples/policy.d/$f.yaml" "$STATE/policy.d/$f.yaml"
    done
fi

# ------------------------------------------------------------------ HTTPS certificate
if [ ! -f "$STATE/tls/server.pem" ]; then
    log "making the gateway's HTTPS certificate (software TLS CA in $STATE/tls)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
        -subj "/CN=acmegw quickstart TLS CA" -keyout "$STATE/tls/ca.key" -out "$STATE/tls/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout "$STATE/tls/server.key" -out "$STATE/tls/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
        >"$STATE/tls/server.ext"
    openssl x509 -req -in "$STATE/tls/server.csr" -CA "$STATE/tls/ca.pem" -CAkey "$STATE/tls/ca.key" \
        -CAcreateserial -days 825 -extfile "$STATE/tls/server.ext" -out "$STATE/tls/server.pem" \
        2>/dev/null
fi

# ------------------------------------------------------------------ config
# The store: SQLite next to the config, or PostgreSQL when ACMEGW_STORE_CONNINFO is set. The
# conninfo may hold a password, so it goes into a 0600 file (printf is a builtin: never on argv).
if [ -n "${ACMEGW_STORE_CONNINFO:-}" ]; then
    (umask 077 && printf '%s\n' "$ACMEGW_STORE_CONNINFO" >"$STATE/secrets/store.conninfo")
    chmod 600 "$STATE/secrets/store.conninfo"
    STORE_CFG="store: {driver: postgresql, conninfo_file: secrets/store.conninfo}"
else
    STORE_CFG="store_path: acmegw.db"
fi
cat >"$STATE/acmegw.yaml" <<CFG
# acmegw config written by tools/quickstart.sh (rewritten on every run)
listen:
  - address: 127.0.0.1
    port: $PORT
  - address: 127.0.0.1
    port: $CRL_PORT
    plain_http: true
tls_certificate: tls/server.pem
tls_key: tls/server.key
base_url: https://127.0.0.1:$PORT
$STORE_CFG
seal_key_file: secrets/seal.key
pid_file: acmegw.pid
crl_url_base: http://127.0.0.1:$CRL_PORT
issuers:
  - name: issuing-ca-1
    module: $MODULE
    token: $TOKEN_LABEL
    key_label: acmegw-issuing
    pin_file: secrets/pin
    ca_chain: ca/chain.pem
  - name: lab-ca
    module: $MODULE
    token: $TOKEN_LABEL
    key_label: acmegw-lab
    pin_file: secrets/pin
    ca_chain: ca/lab-chain.pem
policy_dir: policy.d
CFG
# tests: where http-01 validation connects (the names of test classes do not resolve)
[ -n "${ACMEGW_HTTP01_PORT:-}" ] && echo "http01_port: $ACMEGW_HTTP01_PORT" >>"$STATE/acmegw.yaml"
[ -n "${ACMEGW_HTTP01_ADDRESS:-}" ] && echo "http01_address: $ACMEGW_HTTP01_ADDRESS" >>"$STATE/acmegw.yaml"
"$GATEWAY" --check-config "$STATE/acmegw.yaml" >/dev/null

if [ ! -s "$STATE/eab.json" ]; then
    log "creating an EAB key for class 'default'"
    "$ADMIN" --config "$STATE/acmegw.yaml" eab create --class default --json >"$STATE/eab.json"
fi
for cls in devices web-servers lab; do
    if [ ! -s "$STATE/eab-$cls.json" ] && [ -f "$STATE/policy.d/$cls.yaml" ]; then
        "$ADMIN" --config "$STATE/acmegw.yaml" eab create --class "$cls" --json \
            >"$STATE/eab-$cls.json"
    fi
done

# ------------------------------------------------------------------ start
if [ "${ACMEGW_NO_START:-0}" = 1 ]; then
    write_env ""
    exit 0
fi
pid=$(running_pid || true)
if [ -z "$pid" ]; then
    log "starting acmegw on port $PORT (log: $STATE/acmegw.log)"
    if [ "$MODE" = detach ]; then
        setsid "$GATEWAY" --config "$STATE/acmegw.yaml" >>"$STATE/acmegw.log" 2>&1 </dev/null &
    else
        "$GATEWAY" --config "$STATE/acmegw.yaml" >>"$STATE/acmegw.log" 2>&1 </dev/null &
    fi
    pid=$!
    echo "$pid" >"$PIDFILE"
    ok=0
    for _ in $(seq 1 150); do
        if curl -sf --cacert "$STATE/tls/ca.pem" "$DIRECTORY" >/dev/null 2>&1; then
            ok=1
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$ok" != 1 ]; then
        echo "acmegw did not start; the end of $STATE/acmegw.log:" >&2
        tail -20 "$STATE/acmegw.log" >&2
        rm -f "$PIDFILE"
        exit 1
    fi
else
    log "acmegw is already running (pid $pid)"
fi
write_env "$pid"
. "$STATE/env.sh"

cat <<INFO

acmegw is running.
  directory:  $ACMEGW_DIRECTORY
  EAB kid:    $ACMEGW_EAB_KID
  EAB HMAC:   $ACMEGW_EAB_HMAC        (class 'default': names under $SUFFIX, no challenge)
  HTTPS CA:   $ACMEGW_TLS_CA          (trust it in your ACME client)
  issuing root: $ACMEGW_ROOTS
  environment: . $STATE/env.sh
  policy:     $STATE/policy.d (one file per device class)
INFO
for f in "$STATE"/eab-*.json; do
    [ -f "$f" ] || continue
    cls=$(sed -n 's/.*"class":"\([^"]*\)".*/\1/p' "$f")
    printf '  EAB key for class %-12s kid %s  hmac %s\n' "$cls:" \
        "$(sed -n 's/.*"kid":"\([^"]*\)".*/\1/p' "$f")" "$(sed -n 's/.*"hmac":"\([^"]*\)".*/\1/p' "$f")"
done
cat <<INFO

Get a certificate with certbot:

  REQUESTS_CA_BUNDLE=$ACMEGW_TLS_CA certbot certonly --non-interactive --agree-tos \\
    --register-unsafely-without-email --server $ACMEGW_DIRECTORY \\
    --eab-kid=$ACMEGW_EAB_KID --eab-hmac-key=$ACMEGW_EAB_HMAC \\
    --standalone -d host1.$SUFFIX \\
    --config-dir $STATE/certbot/config --work-dir $STATE/certbot/work --logs-dir $STATE/certbot/logs

Check it:  openssl verify -CAfile $ACMEGW_ROOTS -untrusted $STATE/ca/intermediate.pem \\
             $STATE/certbot/config/live/host1.$SUFFIX/cert.pem
Operators: $ACMEGW_ADMIN cert list
INFO

if [ "$MODE" = foreground ]; then
    echo "(foreground: Ctrl-C stops the gateway; use --detach to leave it running)"
    trap 'stop_gateway; write_env ""; exit 0' INT TERM
    wait "$pid" || true
    rm -f "$PIDFILE"
    write_env ""
fi

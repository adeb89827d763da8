#!/usr/bin/env bash
# tools/cluster.sh - a local acmegw cluster to try scale-out and to test it: one throwaway
# PostgreSQL, one SoftHSM2 token and CA (the quickstart's ceremony), two gateways on plain HTTP
# and HAProxy in front (examples/haproxy.cfg) terminating HTTPS, round robin. docs/scale-out.md.
#
#   tools/cluster.sh --detach   set up (or reuse) the state and start everything in the background
#   tools/cluster.sh --stop     stop HAProxy, both gateways and PostgreSQL
#
# Environment: as tools/quickstart.sh (ACMEGW_STATE default ./state/cluster, ACMEGW_PORT = the
# HTTPS port of HAProxy, default 8443; ACMEGW_CRL_PORT = HAProxy's plain HTTP CRL port, default
# ACMEGW_PORT+1; ACMEGW_BUILD_DIR, ACMEGW_NO_INSTALL, ACMEGW_NO_BUILD, SOFTHSM2_MODULE), plus
# ACMEGW_GW_PORTS="P1 P2" for the gateways' plain HTTP listeners (default ACMEGW_PORT+2, +3) and
# ACMEGW_NO_NONCE_KEY=1 to leave nonce_key_file out of the gateway configs (benchmarks only: with
# it out, a nonce from one instance is refused by the other).
#
# It writes $ACMEGW_STATE/env.sh with the quickstart's variables (ACMEGW_DIRECTORY is HAProxy's
# https URL, ACMEGW_TLS_CA verifies HAProxy's certificate, ACMEGW_PID is gateway 1, ACMEGW_CONFIG
# and ACMEGW_ADMIN use gateway 1's config) and: ACMEGW_PIDS (both gateways), ACMEGW_BACKENDS (their
# plain http:// base URLs), ACMEGW_CONFIGS, ACMEGW_LOGS, ACMEGW_HAPROXY_PID, ACMEGW_HAPROXY_LOG,
# ACMEGW_HAPROXY_SOCK and ACMEGW_STORE_CONNINFO (psql -d "$ACMEGW_STORE_CONNINFO").
# Logs: $ACMEGW_STATE/acmegw-1.log, acmegw-2.log, haproxy.log, pg/server.log.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in
--detach) MODE=detach ;;
--stop) MODE=stop ;;
*) echo "usage: tools/cluster.sh --detach|--stop" >&2; exit 2 ;;
esac

STATE=${ACMEGW_STATE:-./state/cluster}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
PORT=${ACMEGW_PORT:-8443}
CRL_PORT=${ACMEGW_CRL_PORT:-$((PORT + 1))}
read -r -a GW_PORTS <<<"${ACMEGW_GW_PORTS:-$((PORT + 2)) $((PORT + 3))}"
BUILD=${ACMEGW_BUILD_DIR:-$ROOT/build}
N=${#GW_PORTS[@]}
HAPROXY_PID="$STATE/haproxy.pid"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# shellcheck source=tools/pg.sh
. "$ROOT/tools/pg.sh"

stop_pidfile() { # file, name: SIGTERM, up to 10 s, then SIGKILL
    local pid
    [ -f "$1" ] || return 0
    pid=$(cat "$1")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        log "stopped $2 (pid $pid)"
    fi
    rm -f "$1"
}

alive() { # pidfile
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

if [ "$MODE" = stop ]; then
    stop_pidfile "$HAPROXY_PID" haproxy
    for i in $(seq 1 "$N"); do
        stop_pidfile "$STATE/acmegw-$i.pid" "acmegw $i"
    done
    acmegw_pg_stop "$STATE/pg"
    [ -f "$STATE/env.sh" ] && sed -i "s/^export ACMEGW_PIDS=.*/export ACMEGW_PIDS=''/;
        s/^export ACMEGW_PID=.*/export ACMEGW_PID=''/" "$STATE/env.sh"
    exit 0
fi

for tool in haproxy psql; do
    command -v "$tool" >/dev/null || [ "${ACMEGW_NO_INSTALL:-0}" = 1 ] || {
        . "$ROOT/tools/deps.sh"
        acmegw_install_deps
    }
done

# ------------------------------------------------------------------ the shared store
log "PostgreSQL in $STATE/pg"
acmegw_pg_start "$STATE/pg"
ADMIN_CONN="$ACMEGW_PG_CONNINFO dbname=postgres"
[ "$(psql -X -tA -d "$ADMIN_CONN" -c "SELECT 1 FROM pg_database WHERE datname='acmegw'")" = 1 ] ||
    psql -X -q -d "$ADMIN_CONN" -c "CREATE DATABASE acmegw"
CONNINFO="$ACMEGW_PG_CONNINFO dbname=acmegw"

# ------------------------------------------------------------------ token, CA, policy, EAB keys
# The quickstart's state, prepared only: one token and one CA for all instances.
ACMEGW_STATE=$STATE ACMEGW_PORT=$PORT ACMEGW_CRL_PORT=$CRL_PORT ACMEGW_BUILD_DIR=$BUILD \
    ACMEGW_STORE_CONNINFO=$CONNINFO ACMEGW_NO_START=1 "$ROOT/tools/quickstart.sh" >&2
GATEWAY="$BUILD/gateway/acmegw"
export SOFTHSM2_CONF="$STATE/softhsm2.conf" # the one token, for both gateways

# The nonce key: the same 32 bytes on every instance (raw, 0600, like the seal key).
umask 077
[ -s "$STATE/secrets/nonce.key" ] || head -c 32 /dev/urandom >"$STATE/secrets/nonce.key"
NONCE_KEYS=1 # 0 below if this build of the gateway does not know the keys yet

# ------------------------------------------------------------------ one config per instance
# The quickstart's config with its listeners replaced by one plain HTTP listener, its own pid
# file, instance_id and the shared nonce key; base_url stays HAProxy's URL.
for i in $(seq 1 "$N"); do
    python3 - "$STATE/acmegw.yaml" "$STATE/acmegw-$i.yaml" "$i" "${GW_PORTS[$((i - 1))]}" \
        "$NONCE_KEYS" "${ACMEGW_NO_NONCE_KEY:-0}" <<'PY'
import sys
src, dst, i, port, nonce_keys, no_nonce_key = sys.argv[1:]
out, skip = [], False
for line in open(src):
    if line.startswith("listen:"):
        out.append("listen:\n  - address: 127.0.0.1\n    port: %s\n    plain_http: true\n" % port)
        skip = True
        continue
    if skip and line.startswith(" "):
        continue
    skip = False
    if line.startswith("pid_file:"):
        line = "pid_file: acmegw-%s.pid\n" % i
    elif line.startswith("# acmegw config written by"):
        line = "# acmegw config written by tools/cluster.sh: instance %s (rewritten on every run)\n" % i
    out.append(line)
# a dead instance's orders in processing are ended by the survivors after this long
out.append("processing_timeout_s: 10\n")
if nonce_keys == "1":
    out.append("instance_id: %s\n" % i)
    if no_nonce_key != "1":
        out.append("nonce_key_file: secrets/nonce.key\n")
open(dst, "w").write("".join(out))
PY
    if [ "$NONCE_KEYS" = 1 ] && ! check=$("$GATEWAY" --check-config "$STATE/acmegw-$i.yaml" 2>&1) &&
        grep -q 'Unexpected key: \(instance_id\|nonce_key_file\)' <<<"$check"; then
        log "this gateway has no instance_id/nonce_key_file: nonces stay per instance"
        NONCE_KEYS=0
        sed -i '/^\(instance_id\|nonce_key_file\):/d' "$STATE/acmegw-$i.yaml"
    fi
    "$GATEWAY" --check-config "$STATE/acmegw-$i.yaml" >/dev/null
done

# ------------------------------------------------------------------ start the gateways
# One after the other: all instances here share one SoftHSM2 token directory, and SoftHSM's file
# store can show the token as absent to a process that opens it while another one is logging in
# (which rewrites the token's files). Production instances each talk to their own HSM session.
for i in $(seq 1 "$N"); do
    if alive "$STATE/acmegw-$i.pid"; then
        log "acmegw $i is already running (pid $(cat "$STATE/acmegw-$i.pid"))"
        continue
    fi
    log "starting acmegw $i on http://127.0.0.1:${GW_PORTS[$((i - 1))]} (log: $STATE/acmegw-$i.log)"
    setsid "$GATEWAY" --config "$STATE/acmegw-$i.yaml" >>"$STATE/acmegw-$i.log" 2>&1 </dev/null &
    echo $! >"$STATE/acmegw-$i.pid"
    ok=0
    for _ in $(seq 1 300); do
        if curl -sf "http://127.0.0.1:${GW_PORTS[$((i - 1))]}/ready" >/dev/null 2>&1; then
            ok=1
            break
        fi
        alive "$STATE/acmegw-$i.pid" || break
        sleep 0.1
    done
    if [ "$ok" != 1 ]; then
        echo "acmegw $i did not become ready; the end of $STATE/acmegw-$i.log:" >&2
        tail -20 "$STATE/acmegw-$i.log" >&2
        exit 1
    fi
done

# ------------------------------------------------------------------ HAProxy in front
cat "$STATE/tls/server.pem" "$STATE/tls/server.key" >"$STATE/tls/haproxy.pem"
export ACMEGW_HAPROXY_ADDR=127.0.0.1 ACMEGW_PORT=$PORT ACMEGW_CRL_PORT=$CRL_PORT
export ACMEGW_HAPROXY_PEM=$STATE/tls/haproxy.pem ACMEGW_HAPROXY_LOG=stdout
export ACMEGW_HAPROXY_SOCK=$STATE/haproxy.sock
export ACMEGW_GW1=127.0.0.1:${GW_PORTS[0]} ACMEGW_GW2=127.0.0.1:${GW_PORTS[1]}
haproxy -q -c -f "$ROOT/examples/haproxy.cfg"
if alive "$HAPROXY_PID"; then
    log "haproxy is already running (pid $(cat "$HAPROXY_PID"))"
else
    log "starting haproxy on https://127.0.0.1:$PORT (log: $STATE/haproxy.log)"
    # -db: foreground (logs to stdout, into haproxy.log); setsid detaches it from this shell
    setsid haproxy -db -f "$ROOT/examples/haproxy.cfg" >>"$STATE/haproxy.log" 2>&1 </dev/null &
    echo $! >"$HAPROXY_PID"
fi
ok=0
for _ in $(seq 1 100); do # the directory through HAProxy, and both servers UP in its checks
    if curl -sf --cacert "$STATE/tls/ca.pem" "https://127.0.0.1:$PORT/directory" >/dev/null 2>&1 &&
        [ "$(python3 - "$STATE/haproxy.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(sum(1 for l in data.decode().splitlines() if l.startswith("gateways,gw") and ",UP," in l))
PY
)" = "$N" ]; then
        ok=1
        break
    fi
    alive "$HAPROXY_PID" || break
    sleep 0.1
done
if [ "$ok" != 1 ]; then
    echo "haproxy did not come up; the end of $STATE/haproxy.log:" >&2
    tail -20 "$STATE/haproxy.log" >&2
    exit 1
fi

# ------------------------------------------------------------------ env.sh
pids="" backends="" configs="" logs=""
for i in $(seq 1 "$N"); do
    pids="$pids $(cat "$STATE/acmegw-$i.pid")"
    backends="$backends http://127.0.0.1:${GW_PORTS[$((i - 1))]}"
    configs="$configs $STATE/acmegw-$i.yaml"
    logs="$logs $STATE/acmegw-$i.log"
done
pid1=$(cat "$STATE/acmegw-1.pid")
sed -i -e "s|^# written by tools/quickstart.sh|# written by tools/cluster.sh|" \
    -e "s|^export ACMEGW_PID=.*|export ACMEGW_PID='$pid1'|" \
    -e "s|^export ACMEGW_CONFIG=.*|export ACMEGW_CONFIG='$STATE/acmegw-1.yaml'|" \
    -e "s|^export ACMEGW_ADMIN=.*|export ACMEGW_ADMIN='$BUILD/tools/acmegw-admin --config $STATE/acmegw-1.yaml'|" \
    -e "/^export ACMEGW_\(PIDS\|BACKENDS\|CONFIGS\|LOGS\|HAPROXY_[A-Z]*\|STORE_CONNINFO\)=/d" \
    "$STATE/env.sh"
cat >>"$STATE/env.sh" <<ENV
export ACMEGW_PIDS='${pids# }'
export ACMEGW_BACKENDS='${backends# }'
export ACMEGW_CONFIGS='${configs# }'
export ACMEGW_LOGS='${logs# }'
export ACMEGW_HAPROXY_PID='$(cat "$HAPROXY_PID")'
export ACMEGW_HAPROXY_LOG='$STATE/haproxy.log'
export ACMEGW_HAPROXY_SOCK='$STATE/haproxy.sock'
export ACMEGW_STORE_CONNINFO='$CONNINFO'
ENV
. "$STATE/env.sh"

cat <<INFO

acmegw cluster is running: haproxy (pid $ACMEGW_HAPROXY_PID) -> gateways $ACMEGW_BACKENDS
  directory:  $ACMEGW_DIRECTORY
  EAB kid:    $ACMEGW_EAB_KID
  EAB HMAC:   $ACMEGW_EAB_HMAC
  HTTPS CA:   $ACMEGW_TLS_CA
  store:      psql -d "$ACMEGW_STORE_CONNINFO"
  environment: . $STATE/env.sh
  stop:       ACMEGW_STATE=$STATE tools/cluster.sh --stop
INFO

#!/usr/bin/env bash
# tools/bench.sh - acmegw against Pebble, side by side, on this machine; results into
# docs/performance.md (the section between the bench markers is regenerated).
#
#   tools/bench.sh                  release build in ./build-bench, 10 s per run
#   BENCH_DURATION=30 tools/bench.sh
#
# Environment: BENCH_BUILD_DIR (default ./build-bench, built with -Dbuildtype=release),
# BENCH_DURATION (seconds per issue run, default 10), BENCH_NONCE_DURATION (default 5),
# BENCH_CONCURRENCY (default "1 8 32 512"), BENCH_PERF=0 to skip the perf profile,
# BENCH_DOC (default docs/performance.md; BENCH_DOC=- writes no doc), BENCH_KEEP=1 keeps the
# temporary directory, BENCH_NO_INSTALL=1 never runs apt-get, BENCH_NO_BUILD=1 skips the build,
# BENCH_SOAK (seconds, default 0 = no soak run) with BENCH_SOAK_CONCURRENCY (default 32).
#
# What runs: a fresh quickstart state in a temporary directory (token, CA, TLS certificate, EAB
# key) and the gateway on a free loopback port; Debian's pebble on another port with EAB required,
# PEBBLE_VA_ALWAYS_VALID=1 (no challenge server needed), PEBBLE_VA_NOSLEEP=1 and
# PEBBLE_WFE_NONCEREJECT=0 (its defaults add random sleeps and reject 5 % of good nonces), and
# the same TLS certificate as the gateway, so both servers pay the same handshake. Then
# acmegw-bench issue at each concurrency against both (alternating, so background load hits
# both alike; Pebble's with --serialize-authz, see start_pebble); with BENCH_SOAK, a soak run of
# acmegw alone (issue for BENCH_SOAK s, its VmRSS sampled every 30 s; the target is zero errors,
# no stall and RSS growing less than 10 % over 10 minutes); nonce and accounts modes, newNonce
# with wrk (installed if missing; acmegw over HTTPS and its plain-http listener, Pebble), the
# crypto floor (openssl speed; acmegw-bench hsm-sign against the same SoftHSM2 token), and a perf
# profile of the gateway at c=8.
# pebble and wrk are benchmark-only dependencies: installed here, not in tools/deps.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BENCH_BUILD_DIR:-$ROOT/build-bench}
DURATION=${BENCH_DURATION:-10}
NONCE_DURATION=${BENCH_NONCE_DURATION:-5}
SOAK=${BENCH_SOAK:-0}
SOAK_CONCURRENCY=${BENCH_SOAK_CONCURRENCY:-32}
CONCURRENCY=${BENCH_CONCURRENCY:-"1 8 32 512"}
DOC=${BENCH_DOC:-$ROOT/docs/performance.md}
MODULE=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
PY=/usr/bin/python3
BENCH_CMD="$0${*:+ $*}"
for v in BENCH_DURATION BENCH_NONCE_DURATION BENCH_CONCURRENCY BENCH_PERF BENCH_BUILD_DIR \
    BENCH_SOAK BENCH_SOAK_CONCURRENCY; do
    [ -n "${!v:-}" ] && BENCH_CMD="$v='${!v}' $BENCH_CMD"
done

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

install_missing() { # package...
    local missing="" p sudo=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    if [ "${BENCH_NO_INSTALL:-0}" = 1 ]; then
        echo "missing:$missing (BENCH_NO_INSTALL=1)" >&2
        return 1
    fi
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "installing:$missing"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        $missing >/dev/null
}

# N (default 1) distinct free loopback ports (tools/free-port.py)
free_port() {
    "$PY" "$ROOT/tools/free-port.py" "${1:-1}"
}

install_missing pebble
install_missing wrk || true # the newNonce rate is measured with wrk where it can be had
[ "${BENCH_PERF:-1}" = 1 ] && { install_missing linux-perf || BENCH_PERF=0; }
log "release build in $BUILD"
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    [ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" "$ROOT" -Dbuildtype=release >/dev/null
    if ! out=$(ninja -C "$BUILD" 2>&1); then
        printf '%s\n' "$out" | grep -E 'error|FAILED' | head -20 >&2
        echo "build failed (BENCH_NO_BUILD=1 uses the binaries already in $BUILD)" >&2
        exit 1
    fi
fi
BENCH="$BUILD/tools/acmegw-bench"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/acmegw-bench.XXXXXX")
PEBBLE_PID=""
SAMPLER_PID=""
cleanup() {
    local rc=$?
    set +e
    [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
    stop_pebble
    ACMEGW_STATE=$TMP/gw ACMEGW_BUILD_DIR=$BUILD "$ROOT/tools/quickstart.sh" --stop >/dev/null 2>&1
    if [ "$rc" = 0 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
        rm -rf "$TMP"
    else
        echo "kept $TMP" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$TMP/res"

# ------------------------------------------------------------------ servers
log "starting acmegw (state $TMP/gw)"
ACMEGW_STATE=$TMP/gw ACMEGW_PORT=$(free_port) ACMEGW_NO_INSTALL=1 ACMEGW_NO_BUILD=1 \
    ACMEGW_BUILD_DIR=$BUILD SOFTHSM2_MODULE=$MODULE "$ROOT/tools/quickstart.sh" --detach \
    >"$TMP/quickstart.out" 2>&1 || { cat "$TMP/quickstart.out" >&2; exit 1; }
# shellcheck disable=SC1091
. "$TMP/gw/env.sh"
export SOFTHSM2_CONF

read -r PEBBLE_PORT PEBBLE_MGMT_PORT PEBBLE_HTTP_PORT PEBBLE_TLS_PORT <<<"$(free_port 4)"
cat >"$TMP/pebble.json" <<EOF
{"pebble": {
  "listenAddress": "127.0.0.1:$PEBBLE_PORT",
  "managementListenAddress": "127.0.0.1:$PEBBLE_MGMT_PORT",
  "certificate": "$ACMEGW_STATE/tls/server.pem",
  "privateKey": "$ACMEGW_STATE/tls/server.key",
  "httpPort": $PEBBLE_HTTP_PORT, "tlsPort": $PEBBLE_TLS_PORT, "ocspResponderURL": "",
  "externalAccountBindingRequired": true,
  "externalAccountMACKeys": {"$ACMEGW_EAB_KID": "$ACMEGW_EAB_HMAC"}
}}
EOF
# Pebble 2.4.0 has a lock-order deadlock: a newOrder holds its store's read lock and waits for an
# authorization's lock, while a POST-as-GET of that authorization holds the authorization's lock
# and waits for the store's; a queued store writer keeps the read lock from being granted again.
# A hung Pebble answers nothing: the requests wait on those locks until the clients time out.
# Pebble's issue runs therefore pass --serialize-authz (acmegw-bench then sends newOrder and
# authorization POST-as-GET one at a time across all clients), and each Pebble run still gets a
# fresh process, so that if it hangs anyway (the report says "hung") later runs are not spoilt.
start_pebble() {
    stop_pebble
    PEBBLE_VA_ALWAYS_VALID=1 PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
        pebble -config "$TMP/pebble.json" >>"$TMP/pebble.log" 2>&1 &
    PEBBLE_PID=$!
    for _ in $(seq 1 100); do
        curl -sf --cacert "$ACMEGW_TLS_CA" "$PEBBLE_DIR" >/dev/null 2>&1 && return 0
        kill -0 "$PEBBLE_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -20 "$TMP/pebble.log" >&2
    return 1
}
stop_pebble() {
    if [ -n "$PEBBLE_PID" ]; then
        kill "$PEBBLE_PID" 2>/dev/null && { wait "$PEBBLE_PID" 2>/dev/null || true; }
        PEBBLE_PID=""
    fi
    return 0
}
PEBBLE_DIR="https://127.0.0.1:$PEBBLE_PORT/dir"
log "pebble on 127.0.0.1:$PEBBLE_PORT"
start_pebble

# ------------------------------------------------------------------ runs
run() { # name, server(acmegw|pebble), mode, concurrency, duration
    local name=$1 srv=$2 mode=$3 c=$4 d=$5 dir pid extra=()
    if [ "$srv" = acmegw ]; then
        dir=$ACMEGW_DIRECTORY pid=$ACMEGW_PID
    else
        start_pebble
        dir=$PEBBLE_DIR pid=$PEBBLE_PID extra=(--trigger-challenges)
        if [ "$mode" = issue ]; then
            extra+=(--serialize-authz)
        fi
    fi
    log "$srv $mode c=$c ${d}s"
    "$BENCH" "$mode" --directory "$dir" --cacert "$ACMEGW_TLS_CA" --concurrency "$c" \
        --duration "$d" --server-pid "$pid" --timeout-ms 15000 --label "$srv" --json \
        "${extra[@]}" >"$TMP/res/$name.json" 2>"$TMP/res/$name.err" || true
    [ -s "$TMP/res/$name.json" ] || echo '{}' >"$TMP/res/$name.json"
}
rss_kb() { # pid: prints its VmRSS in kB; fails once the process is gone
    local k v _
    while read -r k v _; do
        [ "$k" = VmRSS: ] && { echo "$v"; return 0; }
    done <"/proc/$1/status"
    return 1
} 2>/dev/null
# Appends "elapsed_s rss_kb" lines to out: one at the start, one every every_s seconds, and a last
# one when the stop file appears (polled each second, so the caller's wait returns within 1 s).
sample_rss() { # pid, every_s, out, stop file
    local pid=$1 every=$2 out=$3 stop=$4 start=$SECONDS next=0 t kb
    while :; do
        t=$((SECONDS - start))
        if [ -e "$stop" ] || [ "$t" -ge "$next" ]; then
            kb=$(rss_kb "$pid") || break
            echo "$t $kb" >>"$out"
            next=$((next + every))
            [ -e "$stop" ] && break
        fi
        sleep 1
    done
}
uptime >"$TMP/res/load-before.txt"
for c in $CONCURRENCY; do
    run "issue-acmegw-$c" acmegw issue "$c" "$DURATION"
    run "issue-pebble-$c" pebble issue "$c" "$DURATION"
done
if [ "$SOAK" != 0 ]; then
    sample_rss "$ACMEGW_PID" 30 "$TMP/res/soak-rss.txt" "$TMP/soak.stop" &
    SAMPLER_PID=$!
    run soak acmegw issue "$SOAK_CONCURRENCY" "$SOAK"
    touch "$TMP/soak.stop"
    wait "$SAMPLER_PID" || true
    SAMPLER_PID=""
fi
for srv in acmegw pebble; do
    run "nonce-$srv" "$srv" nonce 8 "$NONCE_DURATION"
    run "accounts-$srv" "$srv" accounts 8 "$NONCE_DURATION"
done
# newNonce with wrk (2 threads, 64 keep-alive connections): a C load generator that costs the
# shared cores far less per request than acmegw-bench, so more of the machine is the server's.
# acmegw over HTTPS and over its plain-http listener (behind a TLS-terminating balancer), Pebble
# over HTTPS (it has no plain listener). The gateway runs its default loop threads: one per core.
wrk_run() { # name, url, pid: writes $TMP/res/name.json (per_s, latency_ms.p99, server CPU per op)
    local name=$1 url=$2 pid=$3 t0 t1
    command -v wrk >/dev/null || return 0
    log "wrk newNonce $name"
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    wrk -t2 -c64 -d"${NONCE_DURATION}s" --latency "$url" >"$TMP/res/$name.txt" 2>&1 || true
    t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    "$PY" - "$TMP/res/$name.txt" "$((t1 - t0))" "$(getconf CLK_TCK)" >"$TMP/res/$name.json" <<'PYEOF'
import json, re, sys
text, ticks, hz = open(sys.argv[1]).read(), int(sys.argv[2]), int(sys.argv[3])
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
n = re.search(r"(\d+) requests in", text)
rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
out = {}
if n and rate:
    count = int(n.group(1))
    out = {"per_s": float(rate.group(1)), "operations": count,
           "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0),
           "server": {"cpu_ms_per_op": ticks * 1000.0 / hz / count if count else None}}
    if p99:
        out["latency_ms"] = {"p99": ms(p99.group(1), p99.group(2))}
print(json.dumps(out))
PYEOF
}
PLAIN_URL=${ACMEGW_CRL_URL_BASE:-}
wrk_run wrk-nonce-acmegw-tls "${ACMEGW_DIRECTORY%/directory}/new-nonce" "$ACMEGW_PID"
[ -n "$PLAIN_URL" ] && wrk_run wrk-nonce-acmegw-plain "$PLAIN_URL/new-nonce" "$ACMEGW_PID"
start_pebble
wrk_run wrk-nonce-pebble-tls "https://127.0.0.1:$PEBBLE_PORT/nonce-plz" "$PEBBLE_PID"
uptime >"$TMP/res/load-after.txt"

# ------------------------------------------------------------------ crypto floor
log "crypto floor: openssl speed ecdsap256, hsm-sign"
openssl speed -seconds 2 ecdsap256 >"$TMP/res/speed.txt" 2>/dev/null || true
for w in 1 2; do
    "$BENCH" hsm-sign --module "$MODULE" --token "$ACMEGW_TOKEN_LABEL" --key acmegw-issuing \
        --pin-file "$ACMEGW_PIN_FILE" --concurrency "$w" --workers "$w" --duration 3 --json \
        >"$TMP/res/hsm-sign-$w.json" 2>"$TMP/res/hsm-sign-$w.err" || true
    [ -s "$TMP/res/hsm-sign-$w.json" ] || echo '{}' >"$TMP/res/hsm-sign-$w.json"
done

# ------------------------------------------------------------------ profile
# Attributes each sample to the innermost frame that names a cost centre; prints markdown.
cat >"$TMP/profile.py" <<'PYEOF'
import json, re, sys
RULES = [  # (frame symbol or dso regex, category); the innermost matching frame decides
    (r"^tbs_decode$", "signing: hsm decodes the TBS (d2i_X509)"),
    (r"^tbs_verify$", "signing: hsm verifies its own signature"),
    (r"^tbs_sign$", "signing: token ECDSA (libp11 + SoftHSM2)"),
    (r"^tbs_encode$", "signing: hsm encodes the certificate"),
    (r"^(job_sign|conn_acquire|conn_check|conn_release)$", "signing: hsm other"),
    (r"fdatasync|fsync", "SQL: commit fsync (synchronous=FULL)"),
    (r"^agw_log", "logging"),
    (r"^sqlite3", "SQL: SQLite engine"),
    (r"^st_", "SQL: store glue"),
    (r"^X509_REQ_verify", "CSR: signature verify"),
    (r"^d2i_X509_REQ$", "CSR: decode"),
    (r"^pol_check_csr$", "CSR: policy checks"),
    (r"^X509_PUBKEY_set$", "policy: X509_PUBKEY_set (subject key re-encode)"),
    (r"^hsm_tbs_cert$", "policy: encode TBS"),
    (r"^pol_", "policy: build TBS"),
    (r"^gw_jws_verify$", "JWS: signature verify"),
    (r"^gw_jwk_to_pkey$", "JWS: JWK -> EVP_PKEY (OpenSSL 3 fromdata)"),
    (r"^gw_eab", "JWS: EAB"),
    (r"^(gw_jws_parse|gw_json|json_|gw_b64url)", "JSON: parse (JWS, payloads)"),
    (r"^(order_reply|authz_json|challenge_json|account_json)", "JSON: build responses"),
    (r"^gw_nonce", "nonce"),
    (r"libssl\.so", "TLS (libssl)"),
    (r"^h2o_|libh2o", "HTTP (h2o)"),
    (r"^gw_issue_finalize$", "issue: other"),
    (r"futex|pthread_cond|pthread_mutex|__lll_lock", "locks and wake-ups (futex)"),
    (r"^(acme_authenticate|gw_acme_handle)$", "gateway: request handling other"),
]
rules = [(re.compile(p), c) for p, c in RULES]
counts, total, dec = {}, 0, 0
stack = []
def flush():
    global total, dec
    if not stack:
        return
    total += 1
    cat = None
    syms = [f[0] for f in stack]
    if "worker_main" in syms and not {"gw_acme_handle", "hsm_call", "loop_main"} & set(syms):
        # hsm/signer.c's worker: its static helpers are inlined, so split by what it calls
        if any(d.find("softhsm") >= 0 or d.find("libp11") >= 0 for _, d in stack):
            cat = "signing: token ECDSA (libp11 + SoftHSM2)"
        elif "ASN1_item_d2i_ex" in syms or "d2i_X509" in syms:
            cat = "signing: hsm decodes the TBS (d2i_X509)"
        elif any(x.startswith("ASN1_item_verify") for x in syms):
            cat = "signing: hsm verifies its own signature"
        elif any(x.startswith("ASN1_item_sign") or x.startswith("ASN1_item_i2d") for x in syms):
            cat = "signing: hsm signs/encodes the certificate"
        elif any(re.search("futex|pthread_cond|pthread_mutex", x) for x in syms):
            cat = "signing: hsm worker wake-ups"
        else:
            cat = "signing: hsm other"
    for i, (sym, dso) in enumerate(stack):
        if cat:
            break
        if sym in ("gw_issue_finalize", "chain_pem") and "ASN1_item_d2i_ex" in syms[:i]:
            cat = "CSR: decode (d2i_X509_REQ, with its public key)"
            break
        for rx, c in rules:
            if rx.search(sym) or rx.search(dso):
                cat = c
                break
        if cat:
            break
    if cat is None:
        cat = "kernel other" if stack[0][1].startswith("[kernel") else "other: unattributed"
    if any(s.startswith("OSSL_DECODER") for s, _ in stack):
        dec += 1
    counts[cat] = counts.get(cat, 0) + 1
for line in sys.stdin:
    if not line.strip():
        flush(); stack = []
    elif line[0] in " \t":
        m = re.match(r"\s*\S+\s+(.*?)\s+\((.*)\)\s*$", line)
        if m:
            stack.append((m.group(1).split("+")[0], m.group(2)))
    else:
        flush(); stack = []
flush()
try:
    run = json.load(open(sys.argv[1]))
    per_cert = run["server"]["cpu_ms_per_op"]
except Exception:
    run, per_cert = {}, None
print("%d samples; the profiled run issued %s certificates/s at %s ms server CPU each." % (
    total, "%.0f" % run["per_s"] if "per_s" in run else "?", "%.3f" % per_cert if per_cert else "?"))
print()
print("| where | share of samples | ms per certificate |")
print("|---|---|---|")
groups = {}
for c, n in counts.items():
    groups[c.split(":")[0]] = groups.get(c.split(":")[0], 0) + n
for c, n in sorted(counts.items(), key=lambda kv: -kv[1]):
    if n * 1000 < total * 5:  # < 0.5 %
        continue
    print("| %s | %.1f %% | %s |" % (c, 100.0 * n / total, "%.3f" % (per_cert * n / total) if per_cert else "-"))
print()
print("By area: " + ", ".join("%s %.0f %%" % (g, 100.0 * n / total) for g, n in sorted(groups.items(), key=lambda kv: -kv[1])))
print()
print("Across all areas, %.1f %% of samples are inside OpenSSL 3's OSSL_DECODER (public-key decoding)." % (100.0 * dec / max(total, 1)))
PYEOF
if [ "${BENCH_PERF:-1}" = 1 ]; then
    log "perf profile of acmegw at c=8"
    "$BENCH" issue --concurrency 8 --duration 8 --server-pid "$ACMEGW_PID" --json --label perf \
        >"$TMP/res/perf-run.json" 2>/dev/null &
    bench_pid=$!
    sleep 2
    if perf record --call-graph dwarf,32768 -F 499 -p "$ACMEGW_PID" -o "$TMP/perf.data" \
        -- sleep 4 >"$TMP/perf.out" 2>&1; then
        wait "$bench_pid" || true
        perf script -i "$TMP/perf.data" -F comm,tid,ip,sym,dso 2>/dev/null |
            "$PY" "$TMP/profile.py" "$TMP/res/perf-run.json" >"$TMP/res/profile.md" || true
    else
        echo "perf record failed (not supported in this VM?): $(tail -1 "$TMP/perf.out")" \
            >"$TMP/res/profile.md"
        wait "$bench_pid" || true
    fi
fi

# ------------------------------------------------------------------ report
BENCH_DURATION=$DURATION BENCH_SOAK=$SOAK "$PY" - "$TMP/res" "$DOC" "$BENCH_CMD" <<'PYEOF'
import glob, json, os, platform, re, subprocess, sys

res, doc, cmd = sys.argv[1], sys.argv[2], sys.argv[3]

def load(name):
    try:
        with open(os.path.join(res, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}

def num(v, fmt="%.1f"):
    return fmt % v if isinstance(v, (int, float)) else "-"

def cpu(j):
    return j.get("server", {}).get("cpu_ms_per_op")

DUR = float(os.environ.get("BENCH_DURATION", "10"))

SOAK = float(os.environ.get("BENCH_SOAK", "0"))

def stalled(j, dur):
    return j.get("elapsed_s", 0) > dur + 5 and j.get("mode") == "issue"

def errs(j, dur=DUR):  # dur=None: leave the hang out (the soak section reports it on its own line)
    if not j:
        return "run failed"
    hung = dur is not None and stalled(j, dur)
    note = "; hung: the run took %.0f s" % j["elapsed_s"] if hung else ""
    if j.get("errors", 0) == 0:
        return "0" + note
    return "%d (%s%s)" % (j["errors"], ", ".join("%s %d" % kv for kv in j.get("errors_by_type", {}).items()), note)

concs = sorted({int(m.group(1)) for m in (re.match(r"issue-acmegw-(\d+)\.json", os.path.basename(p))
                for p in glob.glob(os.path.join(res, "issue-acmegw-*.json"))) if m})
lines = []
lines.append("| c | server | certs/s | p50 ms | p90 ms | p99 ms | max ms | req/cert | server CPU ms/cert | RSS kB before -> after | errors |")
lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
ratios = []
for c in concs:
    a, p = load("issue-acmegw-%d" % c), load("issue-pebble-%d" % c)
    for name, j in (("acmegw", a), ("pebble", p)):
        lat = j.get("latency_ms", {})
        s = j.get("server", {})
        lines.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            c, name, num(j.get("per_s")), num(lat.get("p50"), "%.2f"), num(lat.get("p90"), "%.2f"),
            num(lat.get("p99"), "%.2f"), num(lat.get("max"), "%.2f"),
            num(j.get("requests_per_op"), "%.2f"), num(cpu(j), "%.3f"),
            "%s -> %s" % (s.get("rss_kb_before", "-"), s.get("rss_kb_after", "-")), errs(j)))
    ra = a.get("per_s") / p["per_s"] if a.get("per_s") and p.get("per_s") else None
    rc = cpu(p) / cpu(a) if cpu(a) and cpu(p) else None
    ratios.append("| %d | %s | %s |" % (c, num(ra, "%.2fx"), num(rc, "%.2fx")))
if any(load("issue-pebble-%d" % c).get("serialize_authz") for c in concs):
    lines += ["", "Pebble runs use `--serialize-authz` (see docs/performance.md)."]
table = "\n".join(lines)

soak = []
if os.path.exists(os.path.join(res, "soak.json")):
    j = load("soak")
    lat, s = j.get("latency_ms", {}), j.get("server", {})
    rss = []
    try:
        for line in open(os.path.join(res, "soak-rss.txt")):
            f = line.split()
            if len(f) == 2 and f[0].isdigit() and f[1].isdigit():
                rss.append((int(f[0]), int(f[1])))
    except OSError:
        pass
    if rss:
        first, last = rss[0][1], rss[-1][1]
        growth = "%d kB -> %d kB (%+.1f %%), max %d kB" % (
            first, last, 100.0 * (last - first) / first if first else 0.0, max(kb for _, kb in rss))
    else:
        growth = "no samples"
    el = j.get("elapsed_s")
    soak = [
        "### Soak: acmegw at c=%s for %g s" % (j.get("concurrency", "?"), SOAK), "",
        "- certificates: %s (%s certs/s)" % (j.get("certificates", "-"), num(j.get("per_s"))),
        "- errors: %s" % errs(j, None),
        "- latency: p99 %s ms, max %s ms" % (num(lat.get("p99"), "%.2f"), num(lat.get("max"), "%.2f")),
        "- stalled: %s" % ("-" if el is None else "%s (the run took %.1f s)" % (
            "yes" if stalled(j, SOAK) else "no", el)),
        "- RSS (VmRSS, first -> last sample): %s; acmegw-bench's before -> after: %s -> %s kB" % (
            growth, s.get("rss_kb_before", "-"), s.get("rss_kb_after", "-")),
        "- RSS samples: %s" % (", ".join("%d s %d kB" % t for t in rss) or "-"),
        "",
    ]

other = ["| mode | server | ops/s | p99 ms | server CPU ms/op | errors |", "|---|---|---|---|---|---|"]
for mode in ("nonce", "accounts"):
    for srv in ("acmegw", "pebble"):
        j = load("%s-%s" % (mode, srv))
        other.append("| %s (c=8) | %s | %s | %s | %s | %s |" % (
            mode, srv, num(j.get("per_s")), num(j.get("latency_ms", {}).get("p99"), "%.2f"),
            num(cpu(j), "%.4f"), errs(j)))
wrk = []
for name, srv, how in (("wrk-nonce-acmegw-tls", "acmegw", "HTTPS"),
                       ("wrk-nonce-acmegw-plain", "acmegw", "plain http"),
                       ("wrk-nonce-pebble-tls", "pebble", "HTTPS")):
    j = load(name)
    if j:
        c = cpu(j)
        wrk.append("| newNonce, wrk, %s | %s | %s | %s | %s | %s | %s |" % (
            how, srv, num(j.get("per_s"), "%.0f"), num(j.get("latency_ms", {}).get("p99"), "%.2f"),
            num(c * 1000 if c else None, "%.1f"), num(2000.0 / c if c else None, "%.0f"), errs(j)))
if wrk:
    other += ["", "newNonce with `wrk -t2 -c64` (GET; wrk shares the two cores with the server). The "
              "last but one column is what the server's own CPU per request allows on two cores "
              "once the load generator runs elsewhere.", "",
              "| run | server | requests/s | p99 ms | server CPU us/request | requests/s at 2 cores | errors |",
              "|---|---|---|---|---|---|---|", *wrk]

# crypto floor
verify = sign = None
try:
    for line in open(os.path.join(res, "speed.txt")):
        m = re.match(r"\s*256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            sign, verify = float(m.group(1)), float(m.group(2))
except OSError:
    pass
h1, h2 = load("hsm-sign-1"), load("hsm-sign-2")
hsm_rate = h1.get("per_s")
a8 = load("issue-acmegw-8")
req = a8.get("requests_per_op") or 4.0
floor = None
if verify and hsm_rate:
    n_verify = req + 1  # one JWS per request, plus the CSR's self-signature
    floor = n_verify / verify * 1000 + 1000 / hsm_rate
pure = (req + 1) / verify * 1000 + 1000 / sign if verify and sign else None
floor_lines = [
    "- OpenSSL P-256 (`openssl speed -seconds 2 ecdsap256`, one core): %s sign/s, %s verify/s" % (num(sign, "%.0f"), num(verify, "%.0f")),
    "- SoftHSM2 token signing through hsm/ (`acmegw-bench hsm-sign`, hsm_call incl. TBS decode): %s sig/s with 1 thread, %s with 2 (p99 %s ms)" % (
        num(hsm_rate, "%.0f"), num(h2.get("per_s"), "%.0f"), num(h1.get("latency_ms", {}).get("p99"), "%.3f")),
    "- Floor per certificate = (%.2f requests + 1 CSR) verifications + 1 token signature (hsm_call) = %s ms" % (req, num(floor, "%.3f")),
    "- Pure-crypto floor (the same verifications + one software P-256 signature; what a token without the hsm/ overhead would give) = %s ms" % num(pure, "%.3f"),
]
for c in concs:
    a = load("issue-acmegw-%d" % c)
    if cpu(a) and floor:
        floor_lines.append("- c=%d: server CPU %.3f ms/cert = %.1fx the floor" % (c, cpu(a), cpu(a) / floor))

def sh(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"
model = "?"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
def read(name):
    try:
        return open(os.path.join(res, name)).read().strip()
    except OSError:
        return "-"
machine = [
    "- machine: %s CPUs (`nproc`), %s, kernel %s" % (sh(["nproc"]), model, platform.release()),
    "- load before: `%s`" % read("load-before.txt"),
    "- load after: `%s`" % read("load-after.txt"),
    "- versions: %s; %s" % (sh(["openssl", "version"]), sh(["dpkg-query", "-W", "-f=pebble ${Version}", "pebble"])),
    "- date: %s" % sh(["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
    "- command: `%s`" % cmd,
]
prof = read("profile.md")
section = "\n".join([
    "<!-- bench:begin (generated by tools/bench.sh; edits between the markers are overwritten) -->",
    "### Machine and command", "", *machine, "",
    "### issue: acmegw vs Pebble", "", table, "",
    "Ratios (acmegw / Pebble certs/s; Pebble / acmegw server CPU per certificate):", "",
    "| c | certs/s ratio | CPU efficiency ratio |", "|---|---|---|", *ratios, "",
    *soak,
    "### nonce and accounts", "", *other, "",
    "### Crypto floor", "", *floor_lines, "",
    "### Profile (perf, acmegw at c=8)", "", prof if prof != "-" else "(not run)", "",
    "<!-- bench:end -->",
])
print(section)
if doc != "-":
    try:
        text = open(doc).read()
    except OSError:
        text = "# acmegw performance\n\n"
    b, e = text.find("<!-- bench:begin"), text.find("<!-- bench:end -->")
    if b >= 0 and e > b:
        text = text[:b] + section + text[e + len("<!-- bench:end -->"):]
    else:
        text = text.rstrip("\n") + "\n\n## Latest run\n\n" + section + "\n"
    with open(doc, "w") as f:
        f.write(text)
    print("\nwrote %s" % doc, file=sys.stderr)
PYEOF

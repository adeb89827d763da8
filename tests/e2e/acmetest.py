"""tests/e2e/acmetest.py - a small ACME (RFC 8555) client for the end-to-end tests.

Standard library + `cryptography` only (Debian python3-cryptography). It is deliberately
low-level: every request can be built by hand (raw bytes, any header, any JWS member) so the
negative tests can send what a real client never would.

Pieces:
  Key          account/CSR keys: ES256 (default), ES384, RS256, EdDSA; JWK, RFC 7638 thumbprint
  jws()        flattened JSON JWS; sign_raw() / b64u() to build malformed ones
  eab()        RFC 8555 §7.3.4 external account binding (HS256 over the account JWK)
  Client       one keep-alive HTTPS connection (TLS verified against $ACMEGW_TLS_CA), nonce
               bookkeeping (every Replay-Nonce is kept), POST-as-GET, raw requests
  make_csr()   CSRs (DER) for finalize
  snapshot()   every row of every table of the store, read-only, to assert "nothing changed"
  Checks       counting assertions with readable output; every check can fail
  ready_status(), wait_ready(), finalize_refused()   HSM outage checks (hsm_outage, hsm_hang)

Environment (tests/e2e/lib.sh exports it from $ACMEGW_STATE/env.sh): ACMEGW_DIRECTORY,
ACMEGW_TLS_CA, ACMEGW_EAB_KID, ACMEGW_EAB_HMAC, ACMEGW_STATE, ACMEGW_ROOTS, ACMEGW_TEST_SUFFIX,
ACMEGW_ADMIN, ACMEGW_PID.
"""
import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import shlex
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

ERR = "urn:ietf:params:acme:error:"


# ------------------------------------------------------------------ encoding

def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def env(name):
    v = os.environ.get(name)
    if not v:
        raise SystemExit("missing environment variable %s (run through tests/e2e/lib.sh)" % name)
    return v


# ------------------------------------------------------------------ keys

def _int_b64(n, length=None):
    if length is None:
        length = (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


class Key:
    """An account (or certificate) key. kind: ES256, ES384, ES512, RS256, EdDSA."""

    CURVES = {"ES256": (ec.SECP256R1, "P-256", 32, hashes.SHA256),
              "ES384": (ec.SECP384R1, "P-384", 48, hashes.SHA384),
              "ES512": (ec.SECP521R1, "P-521", 66, hashes.SHA512)}

    def __init__(self, alg="ES256", bits=2048, private=None):
        self.alg = alg
        if private is not None:
            self.priv = private
        elif alg in self.CURVES:
            self.priv = ec.generate_private_key(self.CURVES[alg][0]())
        elif alg == "RS256":
            self.priv = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        elif alg == "EdDSA":
            self.priv = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        self.pub = self.priv.public_key()

    def jwk(self):
        if self.alg in self.CURVES:
            _, crv, flen, _ = self.CURVES[self.alg]
            n = self.pub.public_numbers()
            return {"kty": "EC", "crv": crv, "x": _int_b64(n.x, flen), "y": _int_b64(n.y, flen)}
        if self.alg == "RS256":
            n = self.pub.public_numbers()
            return {"kty": "RSA", "n": _int_b64(n.n), "e": _int_b64(n.e)}
        raw = self.pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}

    def thumbprint(self):
        """RFC 7638: SHA-256 over the required members, sorted, no whitespace."""
        return thumbprint(self.jwk())

    def sign(self, data):
        if self.alg in self.CURVES:
            _, _, flen, h = self.CURVES[self.alg]
            der = self.priv.sign(data, ec.ECDSA(h()))
            r, s = decode_dss_signature(der)
            return r.to_bytes(flen, "big") + s.to_bytes(flen, "big")
        if self.alg == "RS256":
            return self.priv.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.priv.sign(data)

    def pem(self):
        return self.priv.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())


def thumbprint(jwk):
    req = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    canon = compact({k: jwk[k] for k in req[jwk["kty"]]})
    return b64u(hashlib.sha256(canon.encode()).digest())


# ------------------------------------------------------------------ JWS

def sign_raw(key, protected_b64, payload_b64):
    return b64u(key.sign((protected_b64 + "." + payload_b64).encode()))


def jws(key, url, payload, nonce=None, kid=None, extra=None, alg=None, use_jwk=None):
    """Flattened JWS (RFC 8555 §6.2). payload: dict, bytes/str (taken as-is) or None (POST-as-GET).
    kid=None means the jwk goes in the header (unless use_jwk says otherwise). extra: more
    protected header members (None values delete)."""
    prot = {"alg": alg or key.alg}
    if nonce is not None:
        prot["nonce"] = nonce
    prot["url"] = url
    if kid is not None:
        prot["kid"] = kid
    if use_jwk or (use_jwk is None and kid is None):
        prot["jwk"] = key.jwk()
    for k, v in (extra or {}).items():
        if v is None:
            prot.pop(k, None)
        else:
            prot[k] = v
    p64 = b64u(compact(prot))
    if payload is None:
        pl64 = ""
    elif isinstance(payload, (bytes, str)):
        pl64 = b64u(payload)
    else:
        pl64 = b64u(compact(payload))
    return {"protected": p64, "payload": pl64, "signature": sign_raw(key, p64, pl64)}


def eab(kid, hmac_b64, url, account_jwk, mac_key=None):
    """RFC 8555 §7.3.4: HS256 JWS over the account JWK, keyed by the base64url-decoded HMAC."""
    prot = b64u(compact({"alg": "HS256", "kid": kid, "url": url}))
    pl = b64u(compact(account_jwk))
    k = mac_key if mac_key is not None else b64u_decode(hmac_b64)
    sig = hmac.new(k, (prot + "." + pl).encode(), hashlib.sha256).digest()
    return {"protected": prot, "payload": pl, "signature": b64u(sig)}


# ------------------------------------------------------------------ CSRs

def make_csr(names, key=None, cn=True):
    """DER CSR with dNSName SANs = names. key: a cryptography private key (default new P-256)."""
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder()
    if cn and names:
        b = b.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
    else:
        b = b.subject_name(x509.Name([]))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                            critical=False)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = b.sign(key, algo)
    return csr.public_bytes(serialization.Encoding.DER), key


def split_pem_chain(text):
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", text, re.S)


def cert_der(pem):
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------ HTTP

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body
        self._json = None

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def links(self):
        """{rel: [url, ...]} from every Link header."""
        out = {}
        for v in self.header_all("Link"):
            for part in v.split(","):
                m = re.match(r'\s*<([^>]*)>\s*;\s*rel="?([^";]+)"?', part)
                if m:
                    out.setdefault(m.group(2), []).append(m.group(1))
        return out

    @property
    def ctype(self):
        return (self.header("Content-Type") or "").split(";")[0].strip().lower()

    def json(self):
        if self._json is None:
            self._json = json.loads(self.body.decode())
        return self._json

    def problem_type(self):
        if self.ctype != "application/problem+json":
            return None
        try:
            return self.json().get("type")
        except ValueError:
            return None

    def __repr__(self):
        body = self.body[:400].decode("utf-8", "replace")
        return "HTTP %d %s %s" % (self.status, self.header("Content-Type"), body)


def tls_context():
    return ssl.create_default_context(cafile=env("ACMEGW_TLS_CA"))


class Client:
    """One keep-alive HTTPS connection to the gateway plus the ACME state of one account."""

    def __init__(self, key=None, directory_url=None, ctx=None, timeout=30, connect_to=None):
        self.directory_url = directory_url or env("ACMEGW_DIRECTORY")
        # connect_to "http://host:port": one gateway behind a load balancer, spoken to directly in
        # plain HTTP, while every URL (the JWS "url" too) stays the balancer's, as the gateway's
        # base_url expects
        self.connect_to = urllib.parse.urlsplit(connect_to) if connect_to else None
        u = urllib.parse.urlsplit(self.directory_url)
        self.host, self.port = u.hostname, u.port or 443
        self.base = "%s://%s" % (u.scheme, u.netloc)
        self.ctx = ctx or tls_context()
        self.timeout = timeout
        self.conn = None
        self.key = key or Key()
        self.kid = None
        self.nonces = []
        self.last = None
        self.dir = None

    # -- transport
    def _connect(self):
        if self.connect_to is not None:
            self.conn = http.client.HTTPConnection(self.connect_to.hostname, self.connect_to.port,
                                                   timeout=self.timeout)
            return
        self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                                timeout=self.timeout)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, url, body=None, headers=None):
        """Sends exactly this request; url may be a path. Keeps any Replay-Nonce."""
        path = url
        if url.startswith("http"):
            u = urllib.parse.urlsplit(url)
            path = u.path + ("?" + u.query if u.query else "")
        hdrs = dict(headers or {})
        if isinstance(body, str):
            body = body.encode()
        for attempt in (0, 1):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                r = self.conn.getresponse()
                data = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine, ssl.SSLEOFError):
                # the server may close a keep-alive connection (e.g. after a 413, or idle for
                # longer than its keep-alive timeout); reconnect once
                self.close()
                if attempt:
                    raise
        resp = Response(r.status, r.getheaders(), data)
        if r.will_close:
            self.close()
        n = resp.header("Replay-Nonce")
        if n:
            self.nonces.append(n)
        self.last = resp
        return resp

    # -- ACME
    def directory(self):
        r = self.request("GET", self.directory_url)
        if r.status != 200:
            raise RuntimeError("directory: %r" % r)
        self.dir = r.json()
        return self.dir

    def url(self, name):
        if self.dir is None:
            self.directory()
        return self.dir[name]

    def new_nonce(self):
        r = self.request("HEAD", self.url("newNonce"))
        if r.status != 200 or not r.header("Replay-Nonce"):
            raise RuntimeError("newNonce: %r" % r)
        return self.nonces.pop()

    def nonce(self):
        return self.nonces.pop() if self.nonces else self.new_nonce()

    def post_body(self, url, body, ctype="application/jose+json", headers=None):
        h = {"Content-Type": ctype}
        h.update(headers or {})
        return self.request("POST", url, body=body, headers=h)

    def post(self, url, payload, key=None, kid=None, use_jwk=False, nonce=None, extra=None,
             alg=None):
        """Signed POST. payload None = POST-as-GET. Signs with the account kid unless use_jwk."""
        key = key or self.key
        if nonce is not None and nonce in self.nonces:
            self.nonces.remove(nonce)  # never hand it out again from the pool
        if not use_jwk and kid is None:
            kid = self.kid
        body = jws(key, url, payload, nonce=nonce if nonce is not None else self.nonce(),
                   kid=None if use_jwk else kid, extra=extra, alg=alg, use_jwk=use_jwk)
        return self.post_body(url, compact(body))

    def get(self, url):
        return self.post(url, None)

    def new_account(self, eab_kid=None, eab_hmac=None, contact=None, only_existing=False,
                    with_eab=True, extra_payload=None):
        url = self.url("newAccount")
        p = {"termsOfServiceAgreed": True}
        if contact is not None:
            p["contact"] = contact
        if only_existing:
            p["onlyReturnExisting"] = True
        if with_eab:
            p["externalAccountBinding"] = eab(eab_kid or env("ACMEGW_EAB_KID"),
                                              eab_hmac or env("ACMEGW_EAB_HMAC"), url,
                                              self.key.jwk())
        p.update(extra_payload or {})
        r = self.post(url, p, use_jwk=True)
        if r.status in (200, 201) and r.header("Location"):
            self.kid = r.header("Location")
        return r

    def new_order(self, names):
        return self.post(self.url("newOrder"),
                         {"identifiers": [{"type": "dns", "value": n} for n in names]})

    def finalize(self, order, csr_der):
        return self.post(order["finalize"], {"csr": b64u(csr_der)})

    def issue(self, names, csr_key=None):
        """newOrder + finalize + download; returns (order_url, order, chain_pem, csr_key)."""
        r = self.new_order(names)
        if r.status != 201:
            raise RuntimeError("newOrder: %r" % r)
        order_url, order = r.header("Location"), r.json()
        csr, k = make_csr(names, csr_key)
        r = self.finalize(order, csr)
        if r.status != 200 or r.json().get("status") != "valid":
            raise RuntimeError("finalize: %r" % r)
        order = r.json()
        r = self.get(order["certificate"])
        if r.status != 200:
            raise RuntimeError("certificate: %r" % r)
        return order_url, order, r.body.decode(), k


def raw_exchange(data, chunks=None, timeout=10, host=None, port=None, ctx=None):
    """Sends data (bytes) on a fresh TLS connection and returns whatever comes back (bytes) until
    the server closes or times out. A send error (the server answered early and closed) is not an
    error: the answer read so far is returned."""
    u = urllib.parse.urlsplit(env("ACMEGW_DIRECTORY"))
    host, port = host or u.hostname, port or u.port
    ctx = ctx or tls_context()
    raw = socket.create_connection((host, port), timeout=timeout)
    s = ctx.wrap_socket(raw, server_hostname=host)
    out = b""
    try:
        try:
            for i in range(0, len(data), 16384):
                s.sendall(data[i:i + 16384])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
            pass
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, ssl.SSLError, socket.timeout):
                break
            if not b:
                break
            out += b
    finally:
        try:
            s.close()
        except OSError:
            pass
    return out


def parse_raw_status(resp):
    """HTTP status code of a raw HTTP/1.1 response, or 0."""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", resp)
    return int(m.group(1)) if m else 0


# ------------------------------------------------------------------ store snapshot

# Rows the gateway's background thread writes on its own schedule, not as part of the request
# under test: the CRL writer's lease (renewed at every poll) and the CRLs it regenerates about a
# second after a revocation (their numbers and DER). Snapshots leave them out.
VOLATILE_TABLES = {"crl_leases", "crl_numbers", "crls"}
_pg_tables = {}


def _psql(conninfo, sql):
    p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-R", "\x1e", "-d",
                        conninfo, "-c", sql], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("psql: %s" % p.stderr)
    return [r for r in p.stdout.rstrip("\n").split("\x1e") if r != ""]


def _pg_value(v):
    """psql prints every value as text: give integers back as ints, like sqlite3 does."""
    return int(v) if v.lstrip("-").isdigit() else v


def _pg_literal(v):
    if isinstance(v, (bytes, bytearray)):
        return "'\\x%s'::bytea" % bytes(v).hex()
    if isinstance(v, int):
        return str(v)
    return "'%s'" % str(v).replace("'", "''")


def _pg_snapshot(conninfo):
    """The same snapshot of a PostgreSQL store: one psql call (rows as sorted JSON text), the
    table list cached per database (the schema does not change during a test)."""
    tables = _pg_tables.get(conninfo)
    if tables is None:
        tables = [t for t in _psql(conninfo, "SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = 'public' ORDER BY 1")
                  if t not in VOLATILE_TABLES]
        _pg_tables[conninfo] = tables
    if not tables:
        return {}
    sql = " UNION ALL ".join(
        "SELECT '%s', COALESCE((SELECT json_agg(r ORDER BY r) FROM (SELECT row_to_json(x)::text "
        "AS r FROM \"%s\" x) s), '[]')" % (t, t) for t in tables)
    out = {}
    for row in _psql(conninfo, sql):
        t, rows = row.split("\x1f", 1)
        out[t] = [(r,) for r in json.loads(rows)]
    return out


def snapshot(path=None):
    """{table: [row, ...]} for every table, rows ordered; opened read-only (WAL: safe while
    the gateway runs). A PostgreSQL store (ACMEGW_STORE_CONNINFO, set per test by lib.sh) is
    read through psql instead."""
    if path is None and os.environ.get("ACMEGW_STORE_CONNINFO"):
        return _pg_snapshot(os.environ["ACMEGW_STORE_CONNINFO"])
    path = path or os.path.join(env("ACMEGW_STATE"), "acmegw.db")
    db = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(path), uri=True, timeout=10)
    try:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        out = {}
        for t in tables:
            if t not in VOLATILE_TABLES:
                out[t] = [tuple(r) for r in db.execute('SELECT * FROM "%s" ORDER BY 1' % t)]
        return out
    finally:
        db.close()


def query(sql, args=(), path=None):
    """Rows of one read-only query on the store ("?" placeholders, sqlite3 style; on a
    PostgreSQL store the arguments are quoted into the text for psql)."""
    if path is None and os.environ.get("ACMEGW_STORE_CONNINFO"):
        parts = sql.split("?")
        if len(parts) != len(args) + 1:
            raise ValueError("placeholders and arguments differ")
        text = parts[0] + "".join(_pg_literal(a) + p for a, p in zip(args, parts[1:]))
        return [tuple(_pg_value(v) for v in r.split("\x1f"))
                for r in _psql(os.environ["ACMEGW_STORE_CONNINFO"], text)]
    path = path or os.path.join(env("ACMEGW_STATE"), "acmegw.db")
    db = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(path), uri=True, timeout=10)
    try:
        return [tuple(r) for r in db.execute(sql, args)]
    finally:
        db.close()


def snapshot_diff(a, b):
    """Human-readable differences between two snapshots ([] when equal)."""
    out = []
    for t in sorted(set(a) | set(b)):
        ra, rb = a.get(t, []), b.get(t, [])
        if ra == rb:
            continue
        sa, sb = set(ra), set(rb)
        for r in sorted(sa - sb, key=repr):
            out.append("%s: - %s" % (t, _short(r)))
        for r in sorted(sb - sa, key=repr):
            out.append("%s: + %s" % (t, _short(r)))
        if sa == sb:
            out.append("%s: row order/multiplicity changed" % t)
    return out


def _short(row):
    s = repr(tuple(x[:16] + b"..." if isinstance(x, bytes) and len(x) > 16 else x for x in row))
    return s if len(s) < 300 else s[:300] + "..."


# ------------------------------------------------------------------ admin CLI and process

def admin(*args):
    cmd = shlex.split(env("ACMEGW_ADMIN")) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("%s: rc=%d %s" % (" ".join(cmd), p.returncode, p.stderr))
    return p.stdout


def rss_kib(pid=None):
    pid = pid or env("ACMEGW_PID")
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def alive(pid=None):
    pid = int(pid or env("ACMEGW_PID"))
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie is not alive
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ checks

def ready_status():
    """(HTTP status, Retry-After) of GET /ready."""
    url = env("ACMEGW_DIRECTORY").replace("/directory", "/ready")
    ctx = ssl.create_default_context(cafile=env("ACMEGW_TLS_CA"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            return r.status, r.headers.get("Retry-After")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Retry-After")


def wait_ready(want, tries=100):
    """Polls /ready every 0.2 s until it answers want (at most tries times); its last status."""
    for _ in range(tries):
        if ready_status()[0] == want:
            break
        time.sleep(0.2)
    return ready_status()[0]


def finalize_refused(checks, c, order_url, order, name, what, max_s):
    """finalize while the HSM cannot sign: 503 with Retry-After within max_s seconds, the order
    still ready. Returns the CSR, for the retry once the HSM is back."""
    csr, _ = make_csr([name])
    t0 = time.monotonic()
    r = c.finalize(order, csr)
    dt = time.monotonic() - t0
    checks.problem(r, 503, "serverInternal", what + ":")
    checks.check(r.header("Retry-After") is not None, "503 has Retry-After")
    checks.check(dt < max_s, "answered in %.2f s (bound %d s), no hang" % (dt, max_s))
    checks.eq(c.get(order_url).json().get("status"), "ready", "order is ready (retryable)")
    return csr


class Checks:
    """Counting assertions: each prints one line; failures are collected, summary() exits 1."""

    def __init__(self, name):
        self.name = name
        self.n = 0
        self.failed = []
        self.section = ""
        self.t0 = time.time()

    def begin(self, section):
        self.section = section
        print("--- %s" % section, flush=True)

    def check(self, cond, what, detail=None):
        self.n += 1
        if cond:
            print("  ok   %s" % what, flush=True)
        else:
            msg = "%s: %s" % (self.section, what)
            if detail is not None:
                msg += "\n         got: %s" % (detail,)
            print("  FAIL %s" % msg, flush=True)
            self.failed.append(msg)
        return bool(cond)

    def eq(self, got, want, what):
        return self.check(got == want, "%s == %r" % (what, want), "%r" % (got,))

    def status(self, r, want, what=""):
        return self.check(r.status == want, "%s HTTP %d" % (what, want), r)

    def problem(self, r, status, ptype, what="", nonce=True):
        """status, Content-Type application/problem+json, exact type URN, and a Replay-Nonce."""
        ok = self.check(r.status == status, "%s HTTP %d" % (what, status), r)
        ok &= self.check(r.ctype == "application/problem+json",
                         "%s Content-Type application/problem+json" % what,
                         r.header("Content-Type"))
        t = r.problem_type()
        ok &= self.check(t == ERR + ptype, "%s type %s" % (what, ERR + ptype), r)
        if t is not None:
            try:
                st = r.json().get("status")
                ok &= self.check(st in (None, status), "%s problem status member %d" % (what, status),
                                 st)
            except ValueError:
                pass
        if nonce:
            ok &= self.check(bool(r.header("Replay-Nonce")), "%s has a Replay-Nonce" % what)
        return ok

    def summary(self):
        dt = time.time() - self.t0
        print("=== %s: %d checks, %d failed (%.1f s)" % (self.name, self.n, len(self.failed), dt))
        for f in self.failed:
            print("  FAILED: %s" % f.split("\n")[0])
        sys.stdout.flush()
        return 1 if self.failed else 0


def iso(ts):
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)

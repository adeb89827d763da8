"""Device classes end to end; run by tests/e2e/policy.sh (see there)."""
import http.server
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import acmetest as at
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

C = at.Checks("policy")
STATE = at.env("ACMEGW_STATE")
POLICY_DIR = at.env("ACMEGW_POLICY_DIR")
SUFFIX = at.env("ACMEGW_TEST_SUFFIX")


def eab_of(cls):
    with open(os.path.join(STATE, "eab-%s.json" % cls)) as f:
        e = json.load(f)
    return e["kid"], e["hmac"]


def account(cls=None, key=None):
    c = at.Client(key=key)
    kid, hmac = eab_of(cls) if cls else (None, None)
    r = c.new_account(eab_kid=kid, eab_hmac=hmac)
    if r.status not in (200, 201):
        raise RuntimeError("newAccount %s: %r" % (cls, r))
    return c


def leaf(chain_pem):
    return x509.load_pem_x509_certificate(at.split_pem_chain(chain_pem)[0].encode())


def days(cert):
    return (cert.not_valid_after - cert.not_valid_before).total_seconds() / 86400


def ekus(cert):
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def openssl_verify(chain_pem, root, intermediate):
    p = os.path.join(STATE, "leaf-under-test.pem")
    with open(p, "w") as f:
        f.write(at.split_pem_chain(chain_pem)[0])
    r = subprocess.run(["openssl", "verify", "-CAfile", root, "-untrusted", intermediate, p],
                       capture_output=True, text=True)
    return r.returncode == 0


def issuer_cn(cert):
    return cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


def admin_rc(*args):
    cmd = shlex.split(at.env("ACMEGW_ADMIN")) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def wait_log(text, since_size, timeout=10):
    log = os.path.join(STATE, "acmegw.log")
    end = time.time() + timeout
    while time.time() < end:
        with open(log) as f:
            f.seek(since_size)
            if text in f.read():
                return True
        time.sleep(0.1)
    return False


def log_size():
    return os.path.getsize(os.path.join(STATE, "acmegw.log"))


root = os.path.join(STATE, "ca", "root.pem")
inter = os.path.join(STATE, "ca", "intermediate.pem")
lab_ca = os.path.join(STATE, "ca", "lab.pem")

# ------------------------------------------------------------------ two classes, two certificates
C.begin("two classes bound to two EAB keys get different certificates")
dflt = account("default") if os.path.exists(os.path.join(STATE, "eab-default.json")) else None
if dflt is None:
    dflt = at.Client()
    C.status(dflt.new_account(), 201, "default-class account")
dev = account("devices")
name = "twin." + SUFFIX
_, _, chain_d, _ = dflt.issue([name])
_, _, chain_v, _ = dev.issue([name])
cd, cv = leaf(chain_d), leaf(chain_v)
C.check(openssl_verify(chain_d, root, inter), "default-class certificate verifies (openssl)")
C.check(openssl_verify(chain_v, root, inter), "devices-class certificate verifies (openssl)")
C.check(89.9 < days(cd) < 90.1, "default class: 90 days", days(cd))
C.check(364.9 < days(cv) < 365.1, "devices class: 365 days", days(cv))
C.eq(ekus(cd), {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH},
     "default class EKU")
C.eq(ekus(cv), {ExtendedKeyUsageOID.CLIENT_AUTH}, "devices class EKU")
pol = cv.extensions.get_extension_for_class(x509.CertificatePolicies).value
C.eq([p.policy_identifier.dotted_string for p in pol], ["1.3.6.1.4.1.55555.1.2"],
     "devices class certificate policy OID")

lab = account("lab")
_, order_l, chain_l, _ = lab.issue(["box1.lab.test", "*.lab.test"])
cl = leaf(chain_l)
C.check(openssl_verify(chain_l, root, lab_ca), "lab-class certificate verifies under lab-ca")
C.check(not openssl_verify(chain_l, root, inter), "lab-class certificate does not verify under "
        "issuing-ca-1")
C.eq(issuer_cn(cl), "acmegw quickstart lab CA", "lab class issuer")
C.eq(issuer_cn(cd), "acmegw quickstart issuing CA 1", "default class issuer")
C.check(6.9 < days(cl) < 7.1, "lab class default profile 'short': 7 days", days(cl))

# ------------------------------------------------------------------ refusals change nothing
C.begin("forbidden names and keys")
snap = at.snapshot()
r = dflt.new_order(["evil.example.com", "ok." + SUFFIX])
C.problem(r, 400, "rejectedIdentifier", "name outside the class")
subs = r.json().get("subproblems", []) if r.status == 400 else []
C.eq([s.get("identifier", {}).get("value") for s in subs], ["evil.example.com"],
     "one subproblem, naming the forbidden identifier")
r = dev.new_order(["*.%s" % SUFFIX])
C.problem(r, 400, "rejectedIdentifier", "wildcard in a class without wildcards")
C.check(at.snapshot_diff(snap, at.snapshot()) == [], "store unchanged by refused orders")

r = dev.new_order(["rsa." + SUFFIX])
C.status(r, 201, "devices order")
order = r.json()
snap = at.snapshot()
csr, _ = at.make_csr(["rsa." + SUFFIX], at.Key("RS256", 2048).priv)
r = dev.finalize(order, csr)
C.problem(r, 400, "badPublicKey", "RSA key for the EC-only devices class")
detail = r.json().get("detail", "") if r.status == 400 else ""
C.check("rsa" in detail and "ec-p256" in detail, "detail names the rule", detail)
csr, _ = at.make_csr(["other." + SUFFIX])
r = dev.finalize(order, csr)
C.problem(r, 400, "badCSR", "CSR names differ from the order")
C.check(at.snapshot_diff(snap, at.snapshot()) == [], "store unchanged by refused finalizes")

# ------------------------------------------------------------------ http-01 for real
C.begin("http-01 class: validated over HTTP")
web = account("web-servers")
tokens = {}


class Responder(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        tok = self.path.rsplit("/", 1)[-1]
        body = tokens.get(tok)
        self.send_response(200 if body else 404)
        self.end_headers()
        if body:
            self.wfile.write(body.encode())

    def log_message(self, *a):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(at.env("ACMEGW_HTTP01_PORT"))), Responder)
threading.Thread(target=srv.serve_forever, daemon=True).start()
r = web.new_order(["www.web.test"])
C.status(r, 201, "web-servers order")
order, order_url = r.json(), r.header("Location")
C.eq(order.get("status"), "pending", "http-01 order starts pending")
az = web.get(order["authorizations"][0]).json()
C.eq(az.get("status"), "pending", "authorization pending")
ch = [c for c in az.get("challenges", []) if c["type"] == "http-01"]
C.check(len(ch) == 1, "one http-01 challenge offered")
if ch:
    tokens[ch[0]["token"]] = ch[0]["token"] + "." + web.key.thumbprint()
    r = web.post(ch[0]["url"], {})
    C.status(r, 200, "challenge answered")
    for _ in range(50):
        if web.get(ch[0]["url"]).json().get("status") in ("valid", "invalid"):
            break
        time.sleep(0.1)
    C.eq(web.get(ch[0]["url"]).json().get("status"), "valid", "challenge valid")
    C.eq(web.get(order_url).json().get("status"), "ready", "order ready after validation")
    csr, _ = at.make_csr(["www.web.test"])
    r = web.finalize(web.get(order_url).json(), csr)
    C.eq(r.json().get("status") if r.status == 200 else r, "valid", "http-01 order finalized")
r = web.new_order(["bad.web.test"])
order = r.json()
az = web.get(order["authorizations"][0]).json()
ch = [c for c in az.get("challenges", []) if c["type"] == "http-01"]
tokens[ch[0]["token"]] = "wrong-key-authorization"
web.post(ch[0]["url"], {})
for _ in range(50):
    got = web.get(ch[0]["url"]).json()
    if got.get("status") in ("valid", "invalid"):
        break
    time.sleep(0.1)
C.eq(got.get("status"), "invalid", "wrong key authorization: challenge invalid")
C.eq((got.get("error") or {}).get("type"), at.ERR + "incorrectResponse",
     "challenge error incorrectResponse")
srv.shutdown()

# ------------------------------------------------------------------ add a class, reload
C.begin("add a class by dropping a file, lint, reload, enrol")
printers = """# printers: single-use EAB keys, tight quotas, loopback only
issuer: issuing-ca-1
identifiers:
  types: [dns]
  dns: ["*.printers.test"]
  max: 2
validation:
  method: pre-authorized
  sources: [127.0.0.1/32]
csr:
  keys: [ec-p256]
profiles:
  - name: printer-30d
    validity_days: 30
    description: thirty days for printers
    key_usage: [digitalSignature]
    extended_key_usage: [clientAuth]
quotas:
  pending_orders_per_account: 2
  certs_per_account_per_day: 3
eab:
  multiple_accounts: false
"""
path = os.path.join(POLICY_DIR, "printers.yaml")
with open(path, "w") as f:
    f.write(printers)
rc, out = admin_rc("policy", "lint", path)
C.eq(rc, 0, "policy lint of the new file")
pos = log_size()
rc, out = admin_rc("policy", "reload")
C.eq(rc, 0, "acmegw-admin policy reload")
C.check(wait_log("policy.reloaded", pos), "gateway logged policy.reloaded")
meta = at.Client().directory().get("meta", {})
C.eq(meta.get("profiles", {}).get("printer-30d"), "thirty days for printers",
     "directory meta.profiles follows the reload")
e = json.loads(at.admin("eab", "create", "--class", "printers", "--json"))
pr = at.Client()
r = pr.new_account(eab_kid=e["kid"], eab_hmac=e["hmac"])
C.status(r, 201, "printers account")
_, _, chain_p, _ = pr.issue(["p1.printers.test"])
C.check(29.9 < days(leaf(chain_p)) < 30.1, "printers certificate: 30 days")

C.begin("single-use EAB key, quotas, source CIDR")
snap = at.snapshot()
r = at.Client().new_account(eab_kid=e["kid"], eab_hmac=e["hmac"])
C.problem(r, 403, "unauthorized", "second account on a single-use EAB key")
C.check(at.snapshot_diff(snap, at.snapshot()) == [], "store unchanged by the refused binding")
r_p2 = pr.new_order(["p2.printers.test"])
C.status(r_p2, 201, "pending order 1")
r_p3 = pr.new_order(["p3.printers.test"])
C.status(r_p3, 201, "pending order 2")
snap = at.snapshot()
r = pr.new_order(["p4.printers.test"])
C.problem(r, 429, "rateLimited", "third pending order")
C.check(r.header("Retry-After") is not None, "rateLimited has Retry-After")
C.check(at.snapshot_diff(snap, at.snapshot()) == [], "store unchanged by the refused order")

C.begin("certificates per account per day (3): held at finalize")
# p1 is issued; p2 and p3 are ready (pre-authorized). Finalize p2, order p4 (the pending limit is
# 2), finalize p3: three certificates today, so p4 is refused at finalize, where the store counts
# and reserves in one transaction (a store unit test races it).


def finalize_status(resp, name):
    r = pr.finalize(resp.json(), at.make_csr([name])[0])
    return r, (r.json().get("status") if r.status == 200 else None)


C.eq(finalize_status(r_p2, "p2.printers.test")[1], "valid", "certificate 2 of the day")
r_p4 = pr.new_order(["p4.printers.test"])
C.status(r_p4, 201, "order p4, before the quota is used up")
C.eq(finalize_status(r_p3, "p3.printers.test")[1], "valid", "certificate 3 of the day")
snap = at.snapshot()
r, _ = finalize_status(r_p4, "p4.printers.test")
C.problem(r, 429, "rateLimited", "finalize of a fourth certificate in a day")
C.check(r.header("Retry-After") is not None, "rateLimited has Retry-After")
C.check("per day" in (r.json().get("detail") or ""), "the detail names the quota", r.json())
C.eq(pr.get(r_p4.header("Location")).json().get("status"), "ready",
     "the refused order stays ready")
C.check(at.snapshot_diff(snap, at.snapshot()) == [], "store unchanged by the refused finalize")
r = pr.new_order(["p5.printers.test"])
C.problem(r, 429, "rateLimited", "and newOrder says so early")


class FromOtherAddress(at.Client):
    """The same client, connecting from 127.0.0.2 (outside the class's 127.0.0.1/32)."""

    def _connect(self):
        import http.client
        self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                                timeout=self.timeout,
                                                source_address=("127.0.0.2", 0))


e2 = json.loads(at.admin("eab", "create", "--class", "printers", "--json"))
far = FromOtherAddress()
C.status(far.new_account(eab_kid=e2["kid"], eab_hmac=e2["hmac"]), 201, "account from 127.0.0.2")
r = far.new_order(["far.printers.test"])
C.problem(r, 400, "rejectedIdentifier", "pre-authorized class from a source outside its CIDRs")

C.begin("a broken edit keeps the running policy")
with open(path, "w") as f:
    f.write(printers.replace("validity_days: 30", "validity_days: thirty"))
rc, out = admin_rc("policy", "lint", path)
C.eq(rc, 1, "lint refuses the broken file")
C.check("printers.yaml:" in out and "thirty" in out, "lint names file, line and value", out)
rc, out = admin_rc("policy", "reload")
C.eq(rc, 1, "acmegw-admin policy reload refuses")
pos = log_size()
os.kill(int(at.env("ACMEGW_PID")), signal.SIGHUP)  # the gateway itself must refuse it too
C.check(wait_log("policy.reload_failed", pos), "gateway logged policy.reload_failed")
pr2 = at.Client()
e3 = json.loads(at.admin("eab", "create", "--class", "printers", "--json"))
C.status(pr2.new_account(eab_kid=e3["kid"], eab_hmac=e3["hmac"]), 201,
         "the running printers class still enrols")
_, _, chain_p2, _ = pr2.issue(["p9.printers.test"])
C.check(29.9 < days(leaf(chain_p2)) < 30.1, "still the old (valid) printers policy")
sys.exit(C.summary())

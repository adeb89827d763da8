"""tests/e2e/lifecycle.py - certificate lifecycle over HTTPS with our own client: ACME Renewal
Information (RFC 9773: renewalInfo windows, newOrder "replaces") and ACME profiles
(draft-aaron-acme-profiles: meta.profiles, newOrder "profile").

Run by tests/e2e/lifecycle.sh (which starts the gateway and covers CRLs with lego, certbot and
acmegw-admin). Uses the quickstart's default class (EAB in the environment) and its "lab" class
(two profiles, short and long; EAB key in $ACMEGW_STATE/eab-lab.json).
"""
import datetime
import json
import os
import subprocess
import tempfile
import uuid

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

import acmetest as A

T = A.Checks("lifecycle")
SUFFIX = A.env("ACMEGW_TEST_SUFFIX")
STATE = A.env("ACMEGW_STATE")
TMP = tempfile.mkdtemp(prefix="lifecycle.", dir=STATE)
WINDOW_RETRY_AFTER = 6 * 3600


def name(label, suffix=SUFFIX):
    return "%s-%s.%s" % (label, uuid.uuid4().hex[:8], suffix)


def leaf_of(chain_pem):
    return x509.load_pem_x509_certificate(A.split_pem_chain(chain_pem)[0].encode())


def serial_bytes(n):
    """Content octets of the DER INTEGER (RFC 9773 §4.1)."""
    length = n.bit_length() // 8 + 1  # room for a 0x00 sign byte when the top bit is set
    b = n.to_bytes(length, "big")
    return b[1:] if len(b) > 1 and b[0] == 0 and not b[1] & 0x80 else b


def cert_id(cert):
    aki = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    return A.b64u(aki.value.key_identifier) + "." + A.b64u(serial_bytes(cert.serial_number))


def store_serial(cert):
    return "%x" % cert.serial_number


def renewal_info(c, cid, method="GET"):
    return c.request(method, c.url("renewalInfo") + "/" + cid)


def window(r):
    w = r.json()["suggestedWindow"]
    return A.iso(w["start"]).timestamp(), A.iso(w["end"]).timestamp()


def lab_client():
    with open(os.path.join(STATE, "eab-lab.json")) as f:
        e = json.load(f)
    c = A.Client()
    r = c.new_account(eab_kid=e["kid"], eab_hmac=e["hmac"])
    T.check(r.status in (200, 201), "lab account created with the lab EAB key", r)
    return c


def order_with(c, names, **extra):
    p = {"identifiers": [{"type": "dns", "value": n} for n in names]}
    p.update(extra)
    return c.post(c.url("newOrder"), p)


def finalize_and_get(c, r, names):
    order = r.json()
    csr, _ = A.make_csr(names)
    r = c.finalize(order, csr)
    if not T.check(r.status == 200 and r.json().get("status") == "valid", "finalize valid", r):
        return None
    r = c.get(r.json()["certificate"])
    T.status(r, 200, "certificate download")
    return leaf_of(r.body.decode())


def days(cert):
    return (cert.not_valid_after - cert.not_valid_before).total_seconds() / 86400


def ekus(cert):
    return set(cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value)


# ------------------------------------------------------------------ ARI
T.begin("renewalInfo in the directory")
c = A.Client()
r = c.new_account()
T.check(r.status in (200, 201), "default-class account", r)
d = c.directory()
T.eq(d.get("renewalInfo"), c.base + "/renewal-info", "directory renewalInfo")

T.begin("window of a fresh certificate")
n1 = name("ari")
_, order, chain, _ = c.issue([n1])
cert = leaf_of(chain)
cid = cert_id(cert)
r = renewal_info(c, cid)
T.status(r, 200, "GET renewalInfo/<certID>")
T.eq(r.ctype, "application/json", "Content-Type")
T.eq(r.header("Retry-After"), str(WINDOW_RETRY_AFTER), "Retry-After (6 h)")
nb = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc).timestamp()
na = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc).timestamp()
v = na - nb
start, end = window(r)
T.check(abs(start - (nb + 2 * v / 3)) <= 1, "start = notBefore + 2/3 validity", (start, nb, v))
T.check(abs(end - (nb + 5 * v / 6)) <= 1, "end = notBefore + 5/6 validity", (end, nb, v))
T.check(start > datetime.datetime.now().timestamp(), "a fresh certificate's window is ahead")
r = renewal_info(c, cid, "HEAD")
T.status(r, 200, "HEAD renewalInfo")
r = c.post(c.url("renewalInfo") + "/" + cid, None)
T.problem(r, 405, "malformed", "POST-as-GET to renewalInfo", nonce=False)

T.begin("unknown and malformed certIDs")
aki_b64 = cid.split(".")[0]
r = renewal_info(c, aki_b64 + "." + A.b64u(b"\x11" + os.urandom(14)))  # positive serial
T.problem(r, 404, "malformed", "unknown serial", nonce=False)
wrong_aki = A.b64u(bytes(20)) + "." + cid.split(".")[1]
r = renewal_info(c, wrong_aki)
T.problem(r, 404, "malformed", "our serial under another AKI", nonce=False)
r = renewal_info(c, aki_b64 + "." + A.b64u(b"\x81" + os.urandom(14)))
T.problem(r, 400, "malformed", "negative serial", nonce=False)
for bad in ("nodot", "a.b.c", "%%%.AA", "AA."):
    r = renewal_info(c, bad)
    T.check(r.status in (400, 404) and r.problem_type() == A.ERR + "malformed",
            "malformed certID %r refused" % bad, r)
r = renewal_info(c, "")
T.check(r.status == 404, "renewalInfo without a certID is 404", r)

T.begin("replaces")
before = A.snapshot()
r = order_with(c, [n1], replaces=cid)
T.status(r, 201, "newOrder replaces=<certID of our certificate>")
T.eq(r.json().get("replaces"), cid, "order object shows replaces")
rows = A.query("SELECT count(*) FROM orders WHERE replaces = ?", (cid,))
T.eq(rows[0][0], 1, "orders.replaces stored")
before = A.snapshot()
r = order_with(c, [n1], replaces=cid)
T.problem(r, 409, "alreadyReplaced", "the same certID twice")
T.eq(A.snapshot_diff(before, A.snapshot()), [], "refused replaces changed nothing")
r = order_with(c, [n1], replaces="not-a-cert-id")
T.problem(r, 400, "malformed", "replaces that is not a certID")
r = order_with(c, [n1], replaces=12)
T.problem(r, 400, "malformed", "replaces that is not a string")
other = A.Client()
other.new_account()
_, _, chain_o, _ = other.issue([name("other")])
cid_o = cert_id(leaf_of(chain_o))
before = A.snapshot()
r = order_with(c, [n1], replaces=cid_o)
T.problem(r, 400, "malformed", "replaces naming another account's certificate")
T.eq(A.snapshot_diff(before, A.snapshot()), [], "refused replaces changed nothing")

T.begin("window of a revoked certificate")
n2 = name("ari-rev")
_, _, chain2, _ = c.issue([n2])
cert2 = leaf_of(chain2)
r = c.post(c.url("revokeCert"), {"certificate": A.b64u(A.cert_der(A.split_pem_chain(chain2)[0])),
                                 "reason": 1})
T.status(r, 200, "revokeCert")
r = renewal_info(c, cert_id(cert2))
T.status(r, 200, "renewalInfo of the revoked certificate")
start, end = window(r)
now = datetime.datetime.now().timestamp()
T.check(start < end <= now + 1, "revoked: the window is in the past (renew now)", (start, end, now))

# ------------------------------------------------------------------ profiles
T.begin("profiles in the directory")
prof = d.get("meta", {}).get("profiles")
T.check(isinstance(prof, dict), "meta.profiles is an object", d.get("meta"))
for p in ("default", "short", "long"):
    T.check(isinstance(prof, dict) and isinstance(prof.get(p), str) and prof.get(p) != "",
            "meta.profiles lists %s with a description" % p, prof)

T.begin("newOrder profile shapes the certificate")
lab = lab_client()
nl = name("p", "lab.test")
r = order_with(lab, [nl], profile="long")
T.status(r, 201, "newOrder profile=long")
T.eq(r.json().get("profile"), "long", "order object shows profile")
T.eq(A.query("SELECT profile FROM orders WHERE id = ?",
             (r.header("Location").rsplit("/", 1)[1],))[0][0], "long", "orders.profile stored")
cl = finalize_and_get(lab, r, [nl])
if cl is not None:
    T.check(89.9 < days(cl) <= 90.1, "profile long: 90 days", days(cl))
    T.eq(ekus(cl), {ExtendedKeyUsageOID.SERVER_AUTH}, "profile long: EKU serverAuth only")
ns = name("s", "lab.test")
r = order_with(lab, [ns], profile="short")
T.status(r, 201, "newOrder profile=short")
cs = finalize_and_get(lab, r, [ns])
if cs is not None:
    T.check(6.9 < days(cs) <= 7.1, "profile short: 7 days", days(cs))
    T.eq(ekus(cs), {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH},
         "profile short: EKU serverAuth + clientAuth")
    p = subprocess.run(["openssl", "x509", "-noout", "-ext", "crlDistributionPoints"],
                       input=cs.public_bytes(A.serialization.Encoding.PEM), capture_output=True)
    T.check(b"/crl/lab-ca.crl" in p.stdout, "lab certificate's CDP is the lab-ca CRL", p.stdout)

T.begin("unknown or foreign profile is invalidProfile, store unchanged")
for bad in ("nope", "default", "x" * 65, 7):
    before = A.snapshot()
    r = order_with(lab, [name("bad", "lab.test")], profile=bad)
    T.problem(r, 400, "invalidProfile", "profile %r" % (bad,))
    T.eq(A.snapshot_diff(before, A.snapshot()), [], "profile %r changed nothing" % (bad,))

raise SystemExit(T.summary())

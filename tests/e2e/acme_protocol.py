"""tests/e2e/acme_protocol.py - the RFC 8555 happy path against a running gateway.

Run by tests/e2e/acme_protocol.sh (which starts the gateway and exports the environment).
Each section prints what it checks; the exit status is the number of failed checks (capped).
"""
import datetime
import os
import subprocess
import sys
import tempfile
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

import acmetest as A

T = A.Checks("acme_protocol")
SUFFIX = A.env("ACMEGW_TEST_SUFFIX")
ROOTS = A.env("ACMEGW_ROOTS")
DIRECTORY = A.env("ACMEGW_DIRECTORY")
BASE = DIRECTORY.rsplit("/directory", 1)[0]
TMP = tempfile.mkdtemp(prefix="acme_protocol.", dir=A.env("ACMEGW_STATE"))


def name(label):
    return "%s-%s.%s" % (label, uuid.uuid4().hex[:8], SUFFIX)


def index_link(r, what):
    T.check(DIRECTORY in r.links().get("index", []), '%s Link rel="index" is the directory' % what,
            r.header_all("Link"))


def verify_chain(chain_pem, names, what):
    """openssl verify of the leaf with the chain's intermediate; SANs and validity."""
    certs = A.split_pem_chain(chain_pem)
    T.eq(len(certs), 3, "%s chain length (leaf + intermediate + root)" % what)
    if len(certs) < 2:
        return None
    leaf_f = os.path.join(TMP, "leaf.pem")
    inter_f = os.path.join(TMP, "inter.pem")
    with open(leaf_f, "w") as f:
        f.write(certs[0])
    with open(inter_f, "w") as f:
        f.write(certs[1])
    p = subprocess.run(["openssl", "verify", "-CAfile", ROOTS, "-untrusted", inter_f, leaf_f],
                       capture_output=True, text=True)
    T.check(p.returncode == 0 and p.stdout.strip().endswith(": OK"),
            "%s openssl verify -CAfile roots -untrusted <chain intermediate> leaf" % what,
            p.stdout + p.stderr)
    if len(certs) == 3:
        with open(ROOTS) as f:
            roots = A.split_pem_chain(f.read())
        T.check(A.cert_der(certs[2]) in [A.cert_der(x) for x in roots],
                "%s third chain element is the configured root" % what)
        p = subprocess.run(["openssl", "verify", "-CAfile", ROOTS, inter_f], capture_output=True,
                           text=True)
        T.check(p.returncode == 0, "%s intermediate verifies against the root" % what, p.stderr)
    leaf = x509.load_pem_x509_certificate(certs[0].encode())
    sans = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    T.eq(sorted(sans.get_values_for_type(x509.DNSName)), sorted(names), "%s leaf dNSName SANs" % what)
    T.eq(sans.get_values_for_type(x509.IPAddress), [], "%s leaf has no iPAddress SANs" % what)
    nb, na = leaf.not_valid_before, leaf.not_valid_after
    days = (na - nb).total_seconds() / 86400
    T.check(89.9 <= days <= 90.01, "%s validity is 90 days" % what, "%s .. %s (%.3f d)" % (nb, na, days))
    now = datetime.datetime.utcnow()
    T.check(nb <= now + datetime.timedelta(minutes=5) and na > now,
            "%s certificate is currently valid" % what, "%s .. %s" % (nb, na))
    bc = leaf.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    T.check(not bc.ca, "%s leaf is not a CA" % what)
    return leaf


# ------------------------------------------------------------------ directory and nonces

def test_directory(c):
    T.begin("directory")
    r = c.request("GET", DIRECTORY)
    T.status(r, 200, "GET /directory")
    T.eq(r.ctype, "application/json", "directory Content-Type")
    d = r.json()
    for k, path in (("newNonce", "/new-nonce"), ("newAccount", "/new-account"),
                    ("newOrder", "/new-order"), ("revokeCert", "/revoke-cert"),
                    ("keyChange", "/key-change")):
        T.eq(d.get(k), BASE + path, "directory.%s" % k)
    T.check(isinstance(d.get("meta"), dict), "directory.meta is an object", d.get("meta"))
    T.check(d.get("meta", {}).get("externalAccountRequired") is True,
            "directory.meta.externalAccountRequired is true", d.get("meta"))
    c.dir = d
    r = c.request("HEAD", DIRECTORY)
    T.status(r, 200, "HEAD /directory")


def test_nonce(c):
    T.begin("newNonce")
    seen = set()
    for method, want in (("HEAD", 200), ("GET", 204)):
        r = c.request(method, c.url("newNonce"))
        T.status(r, want, "%s newNonce" % method)
        n = r.header("Replay-Nonce")
        T.check(bool(n), "%s newNonce has Replay-Nonce" % method)
        T.check(n is not None and all(ch.isalnum() or ch in "-_" for ch in n),
                "%s Replay-Nonce is base64url" % method, n)
        T.check(n not in seen, "%s Replay-Nonce is fresh" % method, n)
        seen.add(n)
        T.eq((r.header("Cache-Control") or "").lower(), "no-store", "%s Cache-Control" % method)
        index_link(r, "%s newNonce" % method)
        T.eq(r.body, b"", "%s newNonce has an empty body" % method)
    c.nonces.clear()


# ------------------------------------------------------------------ accounts

def test_accounts(c):
    T.begin("newAccount with EAB")
    r = c.new_account(contact=["mailto:ops@example.com"])
    T.status(r, 201, "newAccount")
    loc = r.header("Location")
    T.check(loc is not None and loc.startswith(BASE + "/acct/"), "newAccount Location is /acct/ID",
            loc)
    T.eq(r.ctype, "application/json", "newAccount Content-Type")
    a = r.json()
    T.eq(a.get("status"), "valid", "account status")
    T.eq(a.get("contact"), ["mailto:ops@example.com"], "account contact")
    T.eq(a.get("orders"), loc + "/orders", "account orders URL")
    T.eq(a.get("externalAccountBinding", {}).get("kid"), A.env("ACMEGW_EAB_KID"),
         "account externalAccountBinding.kid")
    T.check(bool(r.header("Replay-Nonce")), "newAccount has Replay-Nonce")
    index_link(r, "newAccount")

    T.begin("newAccount again with the same key")
    again = A.Client(key=c.key)
    again.dir = c.dir
    r = again.new_account()
    T.status(r, 200, "same key newAccount")
    T.eq(r.header("Location"), loc, "same key Location")
    T.eq(r.json().get("status"), "valid", "same key status")

    T.begin("onlyReturnExisting")
    r = again.new_account(only_existing=True, with_eab=False)
    T.status(r, 200, "onlyReturnExisting with the known key")
    T.eq(r.header("Location"), loc, "onlyReturnExisting Location")
    again.close()

    T.begin("account update and POST-as-GET")
    r = c.post(loc, {"contact": ["mailto:a@example.com", "mailto:b@example.com"]})
    T.status(r, 200, "update contact")
    T.eq(r.json().get("contact"), ["mailto:a@example.com", "mailto:b@example.com"],
         "updated contact")
    index_link(r, "account update")
    r = c.get(loc)
    T.status(r, 200, "account POST-as-GET")
    T.eq(r.json().get("contact"), ["mailto:a@example.com", "mailto:b@example.com"],
         "contact persisted")
    T.eq(r.header("Location"), loc, "account POST-as-GET Location")

    T.begin("orders list (empty)")
    r = c.get(loc + "/orders")
    T.status(r, 200, "orders list")
    T.eq(r.json(), {"orders": []}, "no orders yet")
    index_link(r, "orders list")
    return loc


# ------------------------------------------------------------------ orders and issuance

def test_issuance(c, acct_url):
    T.begin("newOrder for two names")
    names = [name("web"), name("api")]
    r = c.new_order(names)
    T.status(r, 201, "newOrder")
    order_url = r.header("Location")
    T.check(order_url is not None and order_url.startswith(BASE + "/order/"),
            "newOrder Location is /order/ID", order_url)
    index_link(r, "newOrder")
    o = r.json()
    T.eq(o.get("status"), "ready", "pre-authorized order status")
    T.eq(sorted((i["type"], i["value"]) for i in o.get("identifiers", [])),
         sorted(("dns", n) for n in names), "order identifiers")
    T.eq(len(o.get("authorizations", [])), 2, "two authorizations")
    T.eq(o.get("finalize"), order_url + "/finalize", "finalize URL")
    T.check("expires" in o, "order has expires")
    T.check("certificate" not in o, "no certificate before finalize")

    T.begin("order POST-as-GET and orders list")
    r = c.get(order_url)
    T.status(r, 200, "order POST-as-GET")
    T.eq(r.json().get("status"), "ready", "order status on re-read")
    T.eq(r.header("Location"), order_url, "order POST-as-GET Location")
    r = c.get(acct_url + "/orders")
    T.eq(r.json().get("orders"), [order_url], "orders list names the order")

    T.begin("authorizations and challenges")
    authz_values = []
    for az_url in o.get("authorizations", []):
        r = c.get(az_url)
        T.status(r, 200, "authz POST-as-GET")
        az = r.json()
        authz_values.append(az.get("identifier", {}).get("value"))
        T.eq(az.get("status"), "valid", "authz status")
        T.eq(az.get("identifier", {}).get("type"), "dns", "authz identifier type")
        T.check(order_url in r.links().get("up", []), 'authz Link rel="up" is the order',
                r.header_all("Link"))
        index_link(r, "authz")
        chs = az.get("challenges", [])
        T.check(len(chs) >= 1, "authz has challenges", chs)
        for ch in chs:
            r = c.get(ch["url"])
            T.status(r, 200, "challenge POST-as-GET")
            j = r.json()
            T.eq(j.get("url"), ch["url"], "challenge url")
            T.eq(j.get("status"), "valid", "pre-authorized challenge status")
            T.check(bool(j.get("token")), "challenge has a token")
            T.check(az_url in r.links().get("up", []), 'challenge Link rel="up" is the authz',
                    r.header_all("Link"))
            index_link(r, "challenge")
    T.eq(sorted(authz_values), sorted(names), "authz identifiers are the order's names")

    T.begin("finalize")
    csr, csr_key = A.make_csr(names)
    r = c.finalize(o, csr)
    T.status(r, 200, "finalize")
    fo = r.json()
    T.eq(fo.get("status"), "valid", "order status after finalize")
    T.eq(r.header("Location"), order_url, "finalize Location is the order")
    T.check(fo.get("certificate", "").startswith(BASE + "/cert/"),
            "order has a certificate URL", fo.get("certificate"))
    index_link(r, "finalize")
    r = c.get(order_url)
    T.eq(r.json().get("certificate"), fo.get("certificate"), "order re-read has the certificate")

    T.begin("finalize twice")
    r = c.finalize(o, csr)
    T.status(r, 200, "second finalize on a valid order")
    T.eq(r.json().get("status"), "valid", "second finalize status")
    T.eq(r.json().get("certificate"), fo.get("certificate"), "second finalize same certificate")

    T.begin("certificate download")
    r = c.get(fo["certificate"])
    T.status(r, 200, "certificate POST-as-GET")
    T.eq(r.ctype, "application/pem-certificate-chain", "certificate Content-Type")
    index_link(r, "certificate")
    chain = r.body.decode()
    leaf = verify_chain(chain, names, "certificate")
    if leaf is not None:
        T.check(leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) ==
            csr_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            "leaf key is the CSR key")
        T.eq(format(leaf.serial_number, "x"), fo["certificate"].rsplit("/", 1)[1].lstrip("0"),
             "certificate URL names the leaf serial")
    r = c.request("POST", fo["certificate"], body=b"", headers={"Content-Type": "application/jose+json"})
    T.status(r, 400, "certificate with an empty (non-JWS) body")
    return names, order_url, fo, chain, csr_key


# ------------------------------------------------------------------ key rollover

def test_key_change(c, acct_url):
    T.begin("keyChange (rollover)")
    old = c.key
    new = A.Key("ES256")
    url = c.url("keyChange")
    inner = A.jws(new, url, {"account": acct_url, "oldKey": old.jwk()})
    r = c.post(url, inner)
    T.status(r, 200, "keyChange")
    T.eq(r.header("Location"), acct_url, "keyChange Location is the account")
    index_link(r, "keyChange")
    r = c.post(acct_url, None, key=old)
    T.problem(r, 403, "unauthorized", "old key after rollover:")
    c.key = new
    r = c.get(acct_url)
    T.status(r, 200, "new key POST-as-GET account")
    T.eq(r.json().get("status"), "valid", "account still valid")
    r = c.new_order([name("after-rollover")])
    T.status(r, 201, "new key can order")
    probe = A.Client(key=new)
    probe.dir = c.dir
    r = probe.new_account(only_existing=True, with_eab=False)
    T.status(r, 200, "onlyReturnExisting finds the account by the new key")
    T.eq(r.header("Location"), acct_url, "new key names the same account")
    probe.close()
    probe = A.Client(key=old)
    probe.dir = c.dir
    r = probe.new_account(only_existing=True, with_eab=False)
    T.problem(r, 400, "accountDoesNotExist", "old key no longer names an account:")
    probe.close()


# ------------------------------------------------------------------ authz deactivation

def test_authz_deactivation(c):
    T.begin("authorization deactivation")
    r = c.new_order([name("deact")])
    T.status(r, 201, "newOrder")
    order_url, o = r.header("Location"), r.json()
    az_url = o["authorizations"][0]
    r = c.post(az_url, {"status": "deactivated"})
    T.status(r, 200, "deactivate authz")
    T.eq(r.json().get("status"), "deactivated", "authz status after deactivation")
    T.check(order_url in r.links().get("up", []), 'deactivation response Link rel="up"')
    r = c.get(az_url)
    T.eq(r.json().get("status"), "deactivated", "authz status persisted")
    r = c.post(az_url, {"status": "deactivated"})
    T.problem(r, 403, "unauthorized", "deactivate twice:")
    r = c.get(order_url)
    T.check(r.json().get("status") != "valid", "order of a deactivated authz is not valid",
            r.json().get("status"))


# ------------------------------------------------------------------ revocation

def test_revocation(c, chain):
    T.begin("revocation by account (reason 4)")
    der = A.cert_der(A.split_pem_chain(chain)[0])
    url = c.url("revokeCert")
    r = c.post(url, {"certificate": A.b64u(der), "reason": 4})
    T.status(r, 200, "revokeCert")
    T.check(bool(r.header("Replay-Nonce")), "revokeCert has a Replay-Nonce")
    index_link(r, "revokeCert")
    rows = A.query("SELECT status, reason FROM certificates WHERE der = ?", (der,))
    T.eq(rows, [("revoked", 4)], "store row (status, reason) of the revoked certificate")
    r = c.post(url, {"certificate": A.b64u(der), "reason": 4})
    T.problem(r, 400, "alreadyRevoked", "revoke again:")

    T.begin("revocation signed by the certificate key (jwk)")
    names = [name("certkey")]
    _, _, chain2, k = c.issue(names)
    der2 = A.cert_der(A.split_pem_chain(chain2)[0])
    certkey = A.Key("ES256", private=k)
    r = c.post(url, {"certificate": A.b64u(der2), "reason": 1}, key=certkey, use_jwk=True)
    T.status(r, 200, "revokeCert with the certificate's key")
    r = c.post(url, {"certificate": A.b64u(der2)}, key=certkey, use_jwk=True)
    T.problem(r, 400, "alreadyRevoked", "revoke again with the certificate's key:")

    T.begin("revocation by another account holding authorizations for every name (§7.6)")
    names = [name("authz-a"), name("authz-b")]
    _, _, chain3, _ = c.issue(names)
    der3 = A.cert_der(A.split_pem_chain(chain3)[0])
    stranger = A.Client()
    stranger.directory()
    T.status(stranger.new_account(), 201, "a second account")
    snap = A.snapshot()
    r = stranger.post(url, {"certificate": A.b64u(der3)})
    T.problem(r, 403, "unauthorized", "without authorizations:")
    T.check(A.snapshot_diff(snap, A.snapshot()) == [], "refused revocation changed nothing")
    T.status(stranger.new_order(names[:1]), 201, "second account orders one of the names")
    r = stranger.post(url, {"certificate": A.b64u(der3)})
    T.problem(r, 403, "unauthorized", "with an authorization for only one name:")
    T.status(stranger.new_order(names[1:]), 201, "... and then the other")
    r = stranger.post(url, {"certificate": A.b64u(der3), "reason": 5})
    T.status(r, 200, "revokeCert by the account holding authorizations for both names")
    rows = A.query("SELECT status, reason FROM certificates WHERE der = ?", (der3,))
    T.eq(rows, [("revoked", 5)], "store row of the certificate revoked by the other account")


# ------------------------------------------------------------------ other key types

def test_key_types():
    for alg, bits in (("RS256", 2048), ("ES384", None), ("EdDSA", None)):
        T.begin("account key %s" % alg)
        c = A.Client(key=A.Key(alg, bits=bits or 2048))
        c.directory()
        r = c.new_account()
        T.status(r, 201, "%s newAccount" % alg)
        names = [name(alg.lower())]
        r = c.new_order(names)
        T.status(r, 201, "%s newOrder" % alg)
        o = r.json()
        csr, _ = A.make_csr(names)
        r = c.finalize(o, csr)
        T.status(r, 200, "%s finalize" % alg)
        T.eq(r.json().get("status"), "valid", "%s order valid" % alg)
        if r.status == 200 and "certificate" in r.json():
            r = c.get(r.json()["certificate"])
            T.status(r, 200, "%s certificate download" % alg)
            verify_chain(r.body.decode(), names, alg)
        c.close()


# ------------------------------------------------------------------ account deactivation

def test_account_deactivation():
    T.begin("account deactivation")
    c = A.Client()
    c.directory()
    r = c.new_account()
    T.status(r, 201, "newAccount")
    acct = c.kid
    r = c.new_order([name("pre-deact")])
    order_url = r.header("Location")
    r = c.post(acct, {"status": "deactivated"})
    T.status(r, 200, "deactivate account")
    T.eq(r.json().get("status"), "deactivated", "account status after deactivation")
    for what, url, payload in (("POST-as-GET account", acct, None),
                               ("newOrder", c.url("newOrder"),
                                {"identifiers": [{"type": "dns", "value": name("x")}]}),
                               ("POST-as-GET order", order_url, None),
                               ("orders list", acct + "/orders", None)):
        r = c.post(url, payload)
        T.problem(r, 403, "unauthorized", "deactivated account %s:" % what)
    r = c.new_account(with_eab=False, only_existing=True)
    T.check((r.status == 403 and r.problem_type() == A.ERR + "unauthorized") or
            (r.status == 200 and r.json().get("status") == "deactivated"),
            "newAccount with the deactivated key: 403 unauthorized or 200 status deactivated", r)
    c.close()


def main():
    c = A.Client()
    test_directory(c)
    test_nonce(c)
    acct = test_accounts(c)
    names, order_url, fo, chain, csr_key = test_issuance(c, acct)
    test_key_change(c, acct)
    test_authz_deactivation(c)
    test_revocation(c, chain)
    test_key_types()
    test_account_deactivation()
    c.close()
    return T.summary()


if __name__ == "__main__":
    try:
        rc = main()
    except Exception:
        import traceback
        traceback.print_exc()
        T.summary()
        rc = 2
    sys.exit(rc)

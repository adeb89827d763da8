"""tests/e2e/acme_negative.py - every problem the gateway emits, one request each.

For each case: HTTP status, Content-Type application/problem+json, the exact type URN, a
Replay-Nonce where the gateway answers (everything but h2o's own 413) and, the core assertion,
that the store (every row of every table) is IDENTICAL before and after the rejected request.
The single documented exception is listed in EXPECTED_CHANGES.

Run by tests/e2e/acme_negative.sh, which starts the gateway.
"""
import datetime
import json
import os
import sys
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

import acmetest as A

T = A.Checks("acme_negative")
SUFFIX = A.env("ACMEGW_TEST_SUFFIX")
DIRECTORY = A.env("ACMEGW_DIRECTORY")
BASE = DIRECTORY.rsplit("/directory", 1)[0]
JOSE = "application/jose+json"

# Requests that are rejected but may legitimately change the store (table -> why). Empty: a
# rejected request changes nothing.
EXPECTED_CHANGES = {}


def name(label):
    return "%s-%s.%s" % (label, uuid.uuid4().hex[:8], SUFFIX)


def case(title, send, status, ptype, nonce=True, then=None):
    """Runs one rejected request between two store snapshots."""
    T.begin(title)
    before = A.snapshot()
    r = send()
    T.problem(r, status, ptype, nonce=nonce)
    if then is not None:
        then(r)
    diff = A.snapshot_diff(before, A.snapshot())
    T.check(not diff, "store unchanged", "\n           ".join(diff[:10]))
    return r


def body(key, url, payload, nonce, kid=None, **kw):
    return A.compact(A.jws(key, url, payload, nonce=nonce, kid=kid, **kw))


def manual(key, prot_text, payload_text):
    """A JWS whose protected header / payload are the given texts, exactly."""
    p64, pl64 = A.b64u(prot_text), A.b64u(payload_text) if payload_text else ""
    return A.compact({"protected": p64, "payload": pl64, "signature": A.sign_raw(key, p64, pl64)})


def self_signed(serial=None, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name("never-issued"))])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.DER)


def main():
    # ---------------------------------------------------------------- setup (store changes here)
    T.begin("setup")
    a = A.Client()
    a.directory()
    T.status(a.new_account(contact=["mailto:a@example.com"]), 201, "account A")
    acct_a = a.kid
    r = a.new_order([name("ready")])
    T.status(r, 201, "A: order left ready")
    ready_url, ready = r.header("Location"), r.json()
    _, issued_order, chain_a, _ = a.issue([name("issued")])
    cert_a = A.cert_der(A.split_pem_chain(chain_a)[0])
    serial_a = x509.load_der_x509_certificate(cert_a).serial_number
    r = a.new_order([name("deact")])
    deact_url, deact = r.header("Location"), r.json()
    r = a.post(deact["authorizations"][0], {"status": "deactivated"})
    T.status(r, 200, "A: authz of an order deactivated")

    b = A.Client()
    b.dir = a.dir
    T.status(b.new_account(), 201, "account B")
    acct_b = b.kid
    order_b_url, order_b, chain_b, _ = b.issue([name("b")])
    cert_b = A.cert_der(A.split_pem_chain(chain_b)[0])
    r = b.new_order([name("b-ready")])
    ready_b_url, ready_b = r.header("Location"), r.json()
    authz_b = ready_b["authorizations"][0]
    r = b.get(authz_b)
    chall_b = r.json()["challenges"][0]["url"]

    # an EAB key that works, then is revoked
    eab2 = json.loads(A.admin("eab", "create", "--class", "default", "--json"))
    c2 = A.Client()
    c2.dir = a.dir
    T.status(c2.new_account(eab_kid=eab2["kid"], eab_hmac=eab2["hmac"]), 201,
             "fresh EAB key binds an account before revocation")
    A.admin("eab", "revoke", eab2["kid"])

    new_order_url = a.url("newOrder")
    new_acct_url = a.url("newAccount")
    revoke_url = a.url("revokeCert")
    key_change_url = a.url("keyChange")
    order_payload = {"identifiers": [{"type": "dns", "value": name("neg")}]}

    # ---------------------------------------------------------------- transport and framing
    case("wrong Content-Type (application/json)",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce(),
                                                 kid=acct_a), ctype="application/json"),
         415, "malformed")
    case("missing Content-Type",
         lambda: a.request("POST", new_order_url,
                           body=body(a.key, new_order_url, order_payload, a.nonce(), kid=acct_a)),
         415, "malformed")
    case("Content-Type application/jose+jsonx",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce(),
                                                 kid=acct_a), ctype="application/jose+jsonx"),
         415, "malformed")

    def big_body():
        pad = "x" * (64 * 1024)
        return a.post_body(new_order_url, body(a.key, new_order_url, dict(order_payload, pad=pad),
                                               a.nonce(), kid=acct_a))
    r = case("body over 64 KiB (our 413)", big_body, 413, "malformed")
    T.check(len(r.body) < 4096 and r.ctype == "application/problem+json",
            "413 is our short JSON problem, not h2o's text", r)

    def huge_body():
        data = b"x" * (200 * 1024)
        req = (b"POST /new-order HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + JOSE.encode() +
               b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
        return A.raw_exchange(req)
    T.begin("body far over the cap (200 KiB: h2o's own 413)")
    before = A.snapshot()
    resp = huge_body()
    T.eq(A.parse_raw_status(resp), 413, "200 KiB body status")
    T.check(not A.snapshot_diff(before, A.snapshot()), "store unchanged")
    r = A.Client().request("GET", DIRECTORY)
    T.status(r, 200, "directory still served after the 200 KiB body")

    case("empty body", lambda: a.post_body(new_order_url, b""), 400, "malformed")
    case("non-JSON body", lambda: a.post_body(new_order_url, b"hello, world\x00\xff"),
         400, "malformed")
    case("JSON array body", lambda: a.post_body(new_order_url, b"[1,2,3]"), 400, "malformed")

    def dup_outer():
        j = A.jws(a.key, new_order_url, order_payload, nonce=a.nonce(), kid=acct_a)
        return a.post_body(new_order_url, '{"protected":"%s","payload":"%s","signature":"%s",'
                           '"payload":"%s"}' % (j["protected"], j["payload"], j["signature"],
                                                j["payload"]))
    case("JWS with a duplicate member (outer)", dup_outer, 400, "malformed")

    def dup_header():
        prot = '{"alg":"ES256","nonce":"%s","url":"%s","kid":"%s","kid":"%s"}' % (
            a.nonce(), new_order_url, acct_a, acct_b)
        return a.post_body(new_order_url, manual(a.key, prot, A.compact(order_payload)))
    case("JWS with a duplicate key in the protected header", dup_header, 400, "malformed")

    def dup_payload():
        prot = A.compact({"alg": "ES256", "nonce": a.nonce(), "url": new_order_url, "kid": acct_a})
        pl = '{"identifiers":[{"type":"dns","value":"%s"}],"identifiers":[]}' % name("dup")
        return a.post_body(new_order_url, manual(a.key, prot, pl))
    case("JWS payload with a duplicate key", dup_payload, 400, "malformed")

    def unprotected_header():
        j = A.jws(a.key, new_order_url, order_payload, nonce=a.nonce(), kid=acct_a)
        j["header"] = {"kid": acct_b}
        return a.post_body(new_order_url, A.compact(j))
    case("JWS with an unprotected header (not flattened-only)", unprotected_header, 400,
         "malformed")

    def deep():
        pl = '{"a":' * 40 + "1" + "}" * 40
        prot = A.compact({"alg": "ES256", "nonce": a.nonce(), "url": new_order_url, "kid": acct_a})
        return a.post_body(new_order_url, manual(a.key, prot, pl))
    case("payload nested 40 levels deep", deep, 400, "malformed")

    # ---------------------------------------------------------------- algorithms and signatures
    def alg(name_):
        def send():
            prot = A.compact({"alg": name_, "nonce": a.nonce(), "url": new_order_url, "kid": acct_a})
            p64, pl64 = A.b64u(prot), A.b64u(A.compact(order_payload))
            return a.post_body(new_order_url, A.compact({"protected": p64, "payload": pl64,
                                                         "signature": ""}))
        return send
    case('alg "none"', alg("none"), 400, "badSignatureAlgorithm")

    def hs256():
        prot = A.compact({"alg": "HS256", "nonce": a.nonce(), "url": new_order_url, "kid": acct_a})
        p64, pl64 = A.b64u(prot), A.b64u(A.compact(order_payload))
        import hashlib
        import hmac
        sig = hmac.new(b"secret", (p64 + "." + pl64).encode(), hashlib.sha256).digest()
        return a.post_body(new_order_url, A.compact({"protected": p64, "payload": pl64,
                                                     "signature": A.b64u(sig)}))
    case('alg "HS256"', hs256, 400, "badSignatureAlgorithm")
    case('alg "PS256"', alg("PS256"), 400, "badSignatureAlgorithm")

    case("alg ES384 with a P-256 account key",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce(),
                                                 kid=acct_a, alg="ES384")),
         400, "badSignatureAlgorithm")
    case("alg RS256 with a P-256 jwk on newAccount",
         lambda: a.post_body(new_acct_url, body(A.Key(), new_acct_url, {}, a.nonce(),
                                                alg="RS256")),
         400, "badSignatureAlgorithm")

    def ecdsa_sig(sig_fn):
        def send():
            j = A.jws(a.key, new_order_url, order_payload, nonce=a.nonce(), kid=acct_a)
            raw = A.b64u_decode(j["signature"])
            j["signature"] = A.b64u(sig_fn(raw))
            return a.post_body(new_order_url, A.compact(j))
        return send
    case("ECDSA signature with r = 0", ecdsa_sig(lambda s: b"\0" * 32 + s[32:]),
         403, "unauthorized")
    case("ECDSA signature with s = 0", ecdsa_sig(lambda s: s[:32] + b"\0" * 32),
         403, "unauthorized")
    n256 = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    case("ECDSA signature with r = n", ecdsa_sig(lambda s: n256.to_bytes(32, "big") + s[32:]),
         403, "unauthorized")
    case("bad signature (one bit flipped)",
         ecdsa_sig(lambda s: bytes([s[0] ^ 1]) + s[1:]), 403, "unauthorized")
    case("signature one byte short", ecdsa_sig(lambda s: s[:-1]), 403, "unauthorized")
    case("signature by another key",
         lambda: a.post_body(new_order_url, body(b.key, new_order_url, order_payload, a.nonce(),
                                                 kid=acct_a)),
         403, "unauthorized")

    def sig_not_b64():
        j = A.jws(a.key, new_order_url, order_payload, nonce=a.nonce(), kid=acct_a)
        j["signature"] = j["signature"][:-2] + "+/"
        return a.post_body(new_order_url, A.compact(j))
    case("signature not base64url", sig_not_b64, 400, "malformed")

    # ---------------------------------------------------------------- header members
    case("both jwk and kid",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce(),
                                                 kid=acct_a, use_jwk=True)),
         400, "malformed")
    case("neither jwk nor kid",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce(),
                                                 use_jwk=False)),
         400, "malformed")
    case("kid on newAccount (needs a jwk)",
         lambda: a.post_body(new_acct_url, body(a.key, new_acct_url, {}, a.nonce(), kid=acct_a)),
         400, "malformed")
    case("jwk on newOrder (needs a kid)",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce())),
         400, "malformed")
    case('"crit" in the protected header',
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce(),
                                                 kid=acct_a, extra={"crit": ["exp"], "exp": 1})),
         400, "malformed")
    case('"b64": false in the protected header',
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce(),
                                                 kid=acct_a, extra={"b64": False})),
         400, "malformed")
    case("jwk with a private member (d)",
         lambda: a.post_body(new_acct_url, body(a.key, new_acct_url, {}, a.nonce(),
                                                extra={"jwk": dict(a.key.jwk(), d="AAAA")})),
         400, "malformed")
    k1024 = A.Key("RS256", bits=1024)
    case("RSA-1024 account key (jwk)",
         lambda: a.post_body(new_acct_url, body(k1024, new_acct_url, {}, a.nonce())),
         400, "badPublicKey")

    # ---------------------------------------------------------------- nonces
    case("missing nonce",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, None,
                                                 kid=acct_a)),
         400, "badNonce")

    T.begin("replayed nonce")
    n = a.new_nonce()
    r = a.post(acct_a, None, nonce=n)
    T.status(r, 200, "first use of the nonce")
    before = A.snapshot()
    r = a.post(acct_a, {"contact": ["mailto:replay@example.com"]}, nonce=n)
    T.problem(r, 400, "badNonce", "replay:")
    fresh = r.header("Replay-Nonce")
    T.check(fresh is not None and fresh != n, "badNonce carries a fresh nonce", fresh)
    T.check(not A.snapshot_diff(before, A.snapshot()), "store unchanged by the replay")
    r = a.post(acct_a, None, nonce=fresh)
    T.status(r, 200, "the fresh nonce from the badNonce answer works")
    T.eq(r.json().get("contact"), ["mailto:a@example.com"], "replayed update did not apply")

    case("forged nonce",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload,
                                                 A.b64u(os.urandom(32)), kid=acct_a)),
         400, "badNonce")
    case("nonce that is not base64url",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload,
                                                 "not a nonce!", kid=acct_a)),
         400, "badNonce")

    # ---------------------------------------------------------------- url and kid
    case("url mismatch (signed for the account URL, sent to newOrder)",
         lambda: a.post_body(new_order_url, body(a.key, acct_a, order_payload, a.nonce(),
                                                 kid=acct_a)),
         403, "unauthorized")
    case("url with a different host",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url.replace("127.0.0.1",
                                                                              "localhost"),
                                                 order_payload, a.nonce(), kid=acct_a)),
         403, "unauthorized")
    case("kid of an unknown account",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce(),
                                                 kid=BASE + "/acct/" + A.b64u(os.urandom(16)))),
         400, "accountDoesNotExist")
    case("kid of another server",
         lambda: a.post_body(new_order_url, body(a.key, new_order_url, order_payload, a.nonce(),
                                                 kid="https://acme.example/acct/1")),
         400, "accountDoesNotExist")

    # ---------------------------------------------------------------- newAccount and EAB
    def new_account(key, payload):
        return a.post_body(new_acct_url, body(key, new_acct_url, payload, a.nonce()))

    k = A.Key()
    case("newAccount without EAB",
         lambda: new_account(k, {"termsOfServiceAgreed": True}), 400, "externalAccountRequired")
    case("newAccount POST-as-GET", lambda: a.post_body(new_acct_url, body(k, new_acct_url, None,
                                                                          a.nonce())),
         400, "malformed")
    bad_mac = bytes(32)
    case("EAB with a wrong HMAC",
         lambda: new_account(k, {"externalAccountBinding":
                                 A.eab(A.env("ACMEGW_EAB_KID"), None, new_acct_url, k.jwk(),
                                       mac_key=bad_mac)}),
         403, "unauthorized")
    case("EAB with an unknown kid",
         lambda: new_account(k, {"externalAccountBinding":
                                 A.eab("kid-" + A.b64u(os.urandom(16)), A.env("ACMEGW_EAB_HMAC"),
                                       new_acct_url, k.jwk())}),
         403, "unauthorized")
    case("EAB revoked with acmegw-admin eab revoke",
         lambda: new_account(k, {"externalAccountBinding":
                                 A.eab(eab2["kid"], eab2["hmac"], new_acct_url, k.jwk())}),
         403, "unauthorized")
    case("EAB over another key's JWK",
         lambda: new_account(k, {"externalAccountBinding":
                                 A.eab(A.env("ACMEGW_EAB_KID"), A.env("ACMEGW_EAB_HMAC"),
                                       new_acct_url, A.Key().jwk())}),
         403, "unauthorized")

    def eab_with_nonce():
        e = A.eab(A.env("ACMEGW_EAB_KID"), A.env("ACMEGW_EAB_HMAC"), new_acct_url, k.jwk())
        prot = A.b64u(A.compact({"alg": "HS256", "kid": A.env("ACMEGW_EAB_KID"),
                                 "url": new_acct_url, "nonce": "abc"}))
        e["protected"] = prot
        return new_account(k, {"externalAccountBinding": e})
    case("EAB with a nonce (§7.3.4: MUST NOT)", eab_with_nonce, 400, "malformed")
    case("EAB that is not an object",
         lambda: new_account(k, {"externalAccountBinding": "yes"}), 400, "malformed")
    case("onlyReturnExisting with an unknown key",
         lambda: new_account(k, {"onlyReturnExisting": True}), 400, "accountDoesNotExist")
    case("termsOfServiceAgreed not a boolean",
         lambda: new_account(k, {"termsOfServiceAgreed": "yes"}), 400, "malformed")

    def with_eab(payload):
        p = dict(payload)
        p["externalAccountBinding"] = A.eab(A.env("ACMEGW_EAB_KID"), A.env("ACMEGW_EAB_HMAC"),
                                            new_acct_url, k.jwk())
        return new_account(k, p)
    case("invalid contact (tel:)", lambda: with_eab({"contact": ["tel:+15555550100"]}),
         400, "invalidContact")
    case("invalid contact (mailto with headers)",
         lambda: with_eab({"contact": ["mailto:a@example.com?subject=x"]}), 400, "invalidContact")
    case("invalid contact (two addresses)",
         lambda: with_eab({"contact": ["mailto:a@example.com,b@example.com"]}), 400,
         "invalidContact")
    case("contact not an array", lambda: with_eab({"contact": "mailto:a@example.com"}),
         400, "malformed")
    case("account update with an invalid contact",
         lambda: a.post(acct_a, {"contact": ["mailto:no-at-sign"]}), 400, "invalidContact")
    case("account update with status valid",
         lambda: a.post(acct_a, {"status": "valid"}), 400, "malformed")
    case("account update with contact + bad status (nothing applied)",
         lambda: a.post(acct_a, {"contact": ["mailto:new@example.com"], "status": "revoked"}),
         400, "malformed")
    case("another account's URL", lambda: a.post(acct_b, None), 403, "unauthorized")
    case("another account's orders list", lambda: a.post(acct_b + "/orders", None),
         403, "unauthorized")

    # ---------------------------------------------------------------- newOrder
    def new_order(ids, **extra):
        p = {"identifiers": ids}
        p.update(extra)
        return a.post(new_order_url, p)

    outside = "host.example.com"

    def subproblems(want):
        def check(r):
            subs = r.json().get("subproblems") if r.ctype == "application/problem+json" else None
            got = sorted((s.get("type"), s.get("identifier", {}).get("type"),
                          s.get("identifier", {}).get("value")) for s in subs or [])
            T.eq(got, sorted(want), "subproblems (type, identifier)")
        return check
    case("newOrder with a name outside the suffix",
         lambda: new_order([{"type": "dns", "value": name("ok")}, {"type": "dns", "value": outside}]),
         400, "rejectedIdentifier",
         then=subproblems([(A.ERR + "rejectedIdentifier", "dns", outside)]))
    case("newOrder with a wildcard (not allowed by the default class)",
         lambda: new_order([{"type": "dns", "value": "*." + SUFFIX}]),
         400, "rejectedIdentifier",
         then=subproblems([(A.ERR + "rejectedIdentifier", "dns", "*." + SUFFIX)]))
    case("newOrder with an unsupported identifier type (only)",
         lambda: new_order([{"type": "email", "value": "a@" + SUFFIX}]),
         400, "unsupportedIdentifier",
         then=subproblems([(A.ERR + "unsupportedIdentifier", "email", "a@" + SUFFIX)]))
    mixed_bad = "-mixed-." + SUFFIX
    case("newOrder with mixed failures (malformed + unsupported + outside): rejectedIdentifier",
         lambda: new_order([{"type": "email", "value": "b@" + SUFFIX},
                            {"type": "dns", "value": mixed_bad},
                            {"type": "dns", "value": outside},
                            {"type": "dns", "value": name("fine")}]),
         400, "rejectedIdentifier",
         then=subproblems([(A.ERR + "unsupportedIdentifier", "email", "b@" + SUFFIX),
                           (A.ERR + "malformed", "dns", mixed_bad),
                           (A.ERR + "rejectedIdentifier", "dns", outside)]))
    many = [{"type": "dns", "value": "h%d.%s" % (i, SUFFIX)} for i in range(101)]
    case("newOrder with 101 identifiers (too many)", lambda: new_order(many),
         400, "rejectedIdentifier")
    bad = "bad_name!." + SUFFIX
    case("newOrder with a malformed DNS name (every identifier malformed)",
         lambda: new_order([{"type": "dns", "value": bad}]), 400, "malformed",
         then=subproblems([(A.ERR + "malformed", "dns", bad)]))
    case("newOrder identifier without a value",
         lambda: new_order([{"type": "dns"}]), 400, "malformed")
    case("newOrder identifier with an extra member",
         lambda: new_order([{"type": "dns", "value": name("x"), "x": 1}]), 400, "malformed")
    case("newOrder identifier value of 254 bytes",
         lambda: new_order([{"type": "dns", "value": "a" * 254}]), 400, "malformed")
    case("newOrder with an empty identifiers array", lambda: new_order([]), 400, "malformed")
    case("newOrder with notBefore",
         lambda: new_order([{"type": "dns", "value": name("nb")}],
                           notBefore="2030-01-01T00:00:00Z"), 400, "malformed")
    case("newOrder POST-as-GET", lambda: a.post(new_order_url, None), 400, "malformed")

    # ---------------------------------------------------------------- finalize
    def finalize(order, csr_b64):
        return a.post(order["finalize"], {"csr": csr_b64})

    ready_names = [i["value"] for i in ready["identifiers"]]
    case("finalize with a garbage CSR", lambda: finalize(ready, A.b64u(b"\x30\x03\x02\x01\x00")),
         400, "badCSR")
    case("finalize with a CSR that is not base64url", lambda: finalize(ready, "!!!!"),
         400, "badCSR")
    case("finalize without csr", lambda: a.post(ready["finalize"], {}), 400, "badCSR")
    case("finalize with a CSR for other names",
         lambda: finalize(ready, A.b64u(A.make_csr([name("other")])[0])), 400, "badCSR")
    case("finalize with a CSR for a subset of the names",
         lambda: finalize(ready, A.b64u(A.make_csr(ready_names + [name("extra")])[0])),
         400, "badCSR")
    rsa1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    case("finalize with an RSA-1024 CSR key",
         lambda: finalize(ready, A.b64u(A.make_csr(ready_names, rsa1024)[0])),
         400, "badPublicKey")
    case("finalize with the account key as CSR key",
         lambda: finalize(ready, A.b64u(A.make_csr(ready_names, a.key.priv)[0])),
         400, "badCSR")

    def tampered_csr():
        der = bytearray(A.make_csr(ready_names)[0])
        der[-1] ^= 1  # break the CSR's signature
        return finalize(ready, A.b64u(bytes(der)))
    case("finalize with a CSR whose signature does not verify", tampered_csr, 400, "badCSR")
    T.begin("order still ready after the rejected finalizes")
    r = a.get(ready_url)
    T.eq(r.json().get("status"), "ready", "order status")

    case("finalize an order whose authorization was deactivated",
         lambda: finalize(deact, A.b64u(A.make_csr([i["value"] for i in deact["identifiers"]])[0])),
         403, "orderNotReady")

    T.begin("finalize twice (valid order)")
    before = A.snapshot()
    csr = A.make_csr([i["value"] for i in issued_order["identifiers"]])[0]
    r = finalize(issued_order, A.b64u(csr))
    T.status(r, 200, "second finalize")
    T.eq(r.json().get("status"), "valid", "second finalize returns the valid order")
    T.eq(r.json().get("certificate"), issued_order.get("certificate"), "same certificate")
    T.check(not A.snapshot_diff(before, A.snapshot()), "store unchanged (no second certificate)",
            A.snapshot_diff(before, A.snapshot()))

    # ---------------------------------------------------------------- revocation
    def revoke(payload, key=None, use_jwk=False):
        return a.post(revoke_url, payload, key=key, use_jwk=use_jwk)
    case("revocation reason 7 (unassigned)",
         lambda: revoke({"certificate": A.b64u(cert_a), "reason": 7}), 400, "badRevocationReason")
    case("revocation reason 6 (certificateHold)",
         lambda: revoke({"certificate": A.b64u(cert_a), "reason": 6}), 400, "badRevocationReason")
    case('revocation reason "4" (a string)',
         lambda: revoke({"certificate": A.b64u(cert_a), "reason": "4"}), 400,
         "badRevocationReason")
    case("revocation reason -1",
         lambda: revoke({"certificate": A.b64u(cert_a), "reason": -1}), 400, "badRevocationReason")
    case("revoke a certificate the server never issued",
         lambda: revoke({"certificate": A.b64u(self_signed())}), 404, "malformed")
    case("revoke a forged certificate with an issued serial",
         lambda: revoke({"certificate": A.b64u(self_signed(serial=serial_a))}), 404, "malformed")
    case("revoke with a certificate that is not DER",
         lambda: revoke({"certificate": A.b64u(b"\x30\x82garbage")}), 400, "malformed")
    case("revoke without certificate", lambda: revoke({"reason": 1}), 400, "malformed")
    case("revoke another account's certificate (kid)",
         lambda: revoke({"certificate": A.b64u(cert_b)}), 403, "unauthorized")
    case("revoke with a jwk that is not the certificate's key",
         lambda: revoke({"certificate": A.b64u(cert_a)}, key=A.Key(), use_jwk=True),
         403, "unauthorized")

    # ---------------------------------------------------------------- keyChange
    def key_change(inner_key, inner_payload, inner_url=None, **kw):
        inner = A.jws(inner_key, inner_url or key_change_url, inner_payload, **kw)
        return a.post(key_change_url, inner)
    nk = A.Key()
    r = case("keyChange to a key another account uses (409)",
             lambda: key_change(b.key, {"account": acct_a, "oldKey": a.key.jwk()}),
             409, "malformed")
    T.eq(r.header("Location"), acct_b, "409 Location names the account holding the key")
    case("keyChange inner url mismatch",
         lambda: key_change(nk, {"account": acct_a, "oldKey": a.key.jwk()}, inner_url=acct_a),
         403, "unauthorized")
    case("keyChange with the wrong oldKey",
         lambda: key_change(nk, {"account": acct_a, "oldKey": A.Key().jwk()}),
         403, "unauthorized")
    case("keyChange naming another account",
         lambda: key_change(nk, {"account": acct_b, "oldKey": a.key.jwk()}), 403, "unauthorized")
    case("keyChange inner JWS with a nonce",
         lambda: key_change(nk, {"account": acct_a, "oldKey": a.key.jwk()}, nonce=a.nonce()),
         400, "malformed")

    def kc_bad_inner_sig():
        inner = A.jws(nk, key_change_url, {"account": acct_a, "oldKey": a.key.jwk()})
        inner["signature"] = A.jws(A.Key(), key_change_url, {"x": 1})["signature"]
        return a.post(key_change_url, inner)
    case("keyChange inner signature does not verify", kc_bad_inner_sig, 403, "unauthorized")
    case("keyChange inner alg none",
         lambda: key_change(nk, {"account": acct_a, "oldKey": a.key.jwk()}, alg="none"),
         400, "badSignatureAlgorithm")
    case("keyChange POST-as-GET", lambda: a.post(key_change_url, None), 400, "malformed")

    # ---------------------------------------------------------------- authz / challenge
    case("authz update to status valid",
         lambda: a.post(ready["authorizations"][0], {"status": "valid"}), 400, "malformed")
    case("authz deactivation of an already deactivated authz",
         lambda: a.post(deact["authorizations"][0], {"status": "deactivated"}),
         403, "unauthorized")

    # ---------------------------------------------------------------- methods and paths
    case("GET on a POST resource (newOrder)", lambda: a.request("GET", new_order_url),
         405, "malformed",
         then=lambda r: T.eq(r.header("Allow"), "POST", "Allow header"))
    case("GET on an order URL", lambda: a.request("GET", ready_url), 405, "malformed",
         then=lambda r: T.eq(r.header("Allow"), "POST", "Allow header"))
    case("PUT on newAccount", lambda: a.request("PUT", new_acct_url, body=b"{}",
                                                headers={"Content-Type": JOSE}),
         405, "malformed")
    case("unknown path", lambda: a.post(BASE + "/no-such-thing", None), 404, "malformed")
    case("unknown path (GET)", lambda: a.request("GET", BASE + "/no-such-thing"),
         404, "malformed")
    case("order URL with a bad id", lambda: a.post(BASE + "/order/..%2f..", None), 404,
         "malformed")
    case("unknown order id", lambda: a.post(BASE + "/order/" + A.b64u(os.urandom(16)), None),
         404, "malformed")
    long_path = BASE + "/order/" + "a" * 5000
    T.begin("very long path")
    r = a.request("GET", long_path)
    T.check(r.status in (404, 414, 400, 431), "very long path is refused (4xx)", r)
    T.check(r.status != 404 or r.problem_type() == A.ERR + "malformed",
            "a 404 there is a malformed problem", r)

    # ---------------------------------------------------------------- cross-account (no leak)
    case("another account's order (POST-as-GET)", lambda: a.post(order_b_url, None),
         404, "malformed")
    case("another account's order: finalize",
         lambda: a.post(ready_b["finalize"],
                        {"csr": A.b64u(A.make_csr([i["value"] for i in ready_b["identifiers"]])[0])}),
         404, "malformed")
    case("another account's authorization", lambda: a.post(authz_b, None), 404, "malformed")
    case("another account's authorization: deactivate",
         lambda: a.post(authz_b, {"status": "deactivated"}), 404, "malformed")
    case("another account's challenge", lambda: a.post(chall_b, {}), 404, "malformed")
    case("another account's certificate", lambda: a.post(order_b["certificate"], None),
         404, "malformed")
    T.begin("the 404 for a foreign order says the same as for a missing one")
    r1 = a.post(order_b_url, None)
    r2 = a.post(BASE + "/order/" + A.b64u(os.urandom(16)), None)
    T.eq(r1.json().get("detail"), r2.json().get("detail"), "foreign vs missing order detail")
    T.eq(r1.json().get("detail") and (r1.status, r1.ctype), (r2.status, r2.ctype),
         "foreign vs missing order status/type")

    for cl in (a, b, c2):
        cl.close()
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

"""tests/e2e/cluster.py - the Python half of tests/e2e/cluster.sh (two gateways behind HAProxy).

  cluster.py race            the same finalize sent at the same moment to instance 1 and instance 2
                             directly (plain HTTP, each with a fresh nonce of its own instance, the
                             JWS url the balancer's): exactly one certificate for the order, and the
                             two answers agree (valid with the same certificate, or one of them
                             processing / orderNotReady). Prints ORDER_ID=<id>.
  cluster.py issue-revoke    one certificate through the balancer, revoked at once (reason 1).
                             Prints SERIAL=<lower-case hex>.

Environment: tests/e2e/lib.sh's, plus ACMEGW_BACKENDS (tools/cluster.sh's env.sh).
"""
import os
import sys
import threading
import time

import acmetest as A


def fresh_account():
    c = A.Client()
    r = c.new_account()
    if r.status not in (200, 201):
        raise SystemExit("newAccount: %r" % r)
    return c


def race(T):
    backends = A.env("ACMEGW_BACKENDS").split()
    T.begin("two instances finalize the same order at the same moment")
    lb = fresh_account()
    name = "race%d.%s" % (os.getpid(), A.env("ACMEGW_TEST_SUFFIX"))
    r = lb.new_order([name])
    T.status(r, 201, "newOrder through the balancer")
    order_url, order = r.header("Location"), r.json()
    # preauthorized class: the authorization is valid at once, the order becomes ready on read
    lb.get(order["authorizations"][0])
    direct, nonces = [], []
    for b in backends[:2]:
        d = A.Client(key=lb.key, connect_to=b)
        d.kid = lb.kid
        nonces.append(d.new_nonce())  # HEAD newNonce on that instance: the nonce comes from it
        direct.append(d)
    csr, _ = A.make_csr([name])
    answers = [None, None]
    barrier = threading.Barrier(2)

    def send(i):
        barrier.wait()
        answers[i] = direct[i].post(order["finalize"], {"csr": A.b64u(csr)}, nonce=nonces[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok_states = []
    for i, a in enumerate(answers):
        if a is None:
            T.check(False, "instance %d answered" % (i + 1))
            continue
        print("  instance %d: %r" % (i + 1, a))
        if a.status == 200 and a.json().get("status") in ("valid", "processing"):
            ok_states.append(a.json().get("status"))
        elif a.problem_type() == A.ERR + "orderNotReady":
            ok_states.append("orderNotReady")
        else:
            T.check(False, "instance %d: valid, processing or orderNotReady" % (i + 1), a)
    T.check("valid" in ok_states or "processing" in ok_states,
            "at least one instance accepted the finalize", answers)
    T.check(all(a is None or a.problem_type() != A.ERR + "badNonce" for a in answers),
            "no badNonce: each nonce came from the instance it went to")
    # poll through the balancer until the order settles
    deadline = time.time() + 20
    final = None
    while time.time() < deadline:
        r = lb.get(order_url)
        if r.status == 200 and r.json().get("status") != "processing":
            final = r.json()
            break
        time.sleep(0.2)
    T.check(final is not None and final.get("status") == "valid", "the order ends valid", final)
    cert_urls = {a.json().get("certificate") for a in answers
                 if a is not None and a.status == 200 and a.json().get("certificate")}
    if final is not None:
        cert_urls.add(final.get("certificate"))
    T.eq(len(cert_urls), 1, "one certificate URL in every answer and in the order")
    print("ORDER_ID=%s" % order_url.rsplit("/", 1)[-1])


def issue_revoke(T):
    T.begin("issue and revoke through the balancer")
    c = fresh_account()
    name = "crl%d.%s" % (os.getpid(), A.env("ACMEGW_TEST_SUFFIX"))
    _, _, chain, _ = c.issue([name])
    leaf = A.split_pem_chain(chain)[0]
    der = A.cert_der(leaf)
    r = c.post(c.url("revokeCert"), {"certificate": A.b64u(der), "reason": 1})
    T.status(r, 200, "revokeCert")
    serial = A.x509.load_der_x509_certificate(der).serial_number
    print("SERIAL=%x" % serial)


def main():
    T = A.Checks("cluster.py " + sys.argv[1])
    {"race": race, "issue-revoke": issue_revoke}[sys.argv[1]](T)
    return T.summary()


if __name__ == "__main__":
    sys.exit(main())

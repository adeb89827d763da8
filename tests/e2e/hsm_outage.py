"""HSM outage and recovery; run by tests/e2e/hsm_outage.sh (see there).

hsm_outage.py            the token goes away under a running gateway, and comes back
hsm_outage.py at-start   the gateway was started while the token was away (its files are in
                         tokens.away): it serves, answers 503 for signing, and issues once the
                         token is back"""
import os
import ssl
import sys
import urllib.request

import acmetest as at

C = at.Checks("hsm_outage")
STATE = at.env("ACMEGW_STATE")
TOKENS = os.path.join(STATE, "tokens")
SUFFIX = at.env("ACMEGW_TEST_SUFFIX")


def running():
    c = at.Client()
    c.directory()
    C.status(c.new_account(), 201, "account")
    C.begin("before the outage")
    c.issue(["before." + SUFFIX])
    C.eq(at.ready_status()[0], 200, "/ready")

    C.begin("token files moved away")
    r = c.new_order(["during." + SUFFIX])
    C.status(r, 201, "newOrder needs no HSM")
    order_url, order = r.header("Location"), r.json()
    os.rename(TOKENS, TOKENS + ".away")
    try:
        # within the signing deadline (5 s): the first job finds the token gone
        csr = at.finalize_refused(C, c, order_url, order, "during." + SUFFIX,
                                  "finalize while the HSM is gone", 10)
        st, retry = at.ready_status()
        C.eq(st, 503, "/ready while the HSM is gone")
        C.check(retry is not None, "/ready 503 has Retry-After")
        r = c.finalize(order, csr)
        C.problem(r, 503, "serverInternal", "a second finalize, refused at once:")
    finally:
        os.rename(TOKENS + ".away", TOKENS)

    C.begin("token back: reconnect without a restart")
    C.eq(at.wait_ready(200), 200, "/ready after the token is back")
    r = c.finalize(c.get(order_url).json(), csr)
    C.eq(r.json().get("status") if r.status == 200 else r, "valid", "the same order finalizes now")
    C.check(bool(c.get(r.json()["certificate"]).body) if r.status == 200 else False,
            "certificate downloads")


def at_start():
    C.begin("gateway started while the token was away")
    st, retry = at.ready_status()
    C.eq(st, 503, "/ready while the token has never answered")
    C.check(retry is not None, "/ready 503 has Retry-After")
    url = at.env("ACMEGW_DIRECTORY").replace("/directory", "/health")
    ctx = ssl.create_default_context(cafile=at.env("ACMEGW_TLS_CA"))
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        C.eq(r.status, 200, "/health: the process serves")
    c = at.Client()
    c.directory()
    C.status(c.new_account(), 201, "newAccount needs no HSM")
    r = c.new_order(["atstart." + SUFFIX])
    C.status(r, 201, "newOrder needs no HSM")
    order_url, order = r.header("Location"), r.json()
    # not ready since the start: refused without queueing
    csr = at.finalize_refused(C, c, order_url, order, "atstart." + SUFFIX,
                              "finalize before the token ever answered", 2)

    C.begin("token back: the gateway connects by itself")
    os.rename(TOKENS + ".away", TOKENS)
    C.eq(at.wait_ready(200), 200, "/ready once the token answers")
    r = c.finalize(c.get(order_url).json(), csr)
    C.eq(r.json().get("status") if r.status == 200 else r, "valid", "the same order finalizes now")
    C.check(bool(c.get(r.json()["certificate"]).body) if r.status == 200 else False,
            "certificate downloads")


if len(sys.argv) > 1 and sys.argv[1] == "at-start":
    at_start()
else:
    running()
sys.exit(C.summary())

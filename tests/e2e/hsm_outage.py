"""HSM outage and recovery; run by tests/e2e/hsm_outage.sh (see there)."""
import os
import ssl
import sys
import time
import urllib.request

import acmetest as at

C = at.Checks("hsm_outage")
STATE = at.env("ACMEGW_STATE")
TOKENS = os.path.join(STATE, "tokens")
SUFFIX = at.env("ACMEGW_TEST_SUFFIX")


def ready_status():
    url = at.env("ACMEGW_DIRECTORY").replace("/directory", "/ready")
    ctx = ssl.create_default_context(cafile=at.env("ACMEGW_TLS_CA"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            return r.status, r.headers.get("Retry-After")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Retry-After")


c = at.Client()
c.directory()
C.status(c.new_account(), 201, "account")
C.begin("before the outage")
c.issue(["before." + SUFFIX])
C.eq(ready_status()[0], 200, "/ready")

C.begin("token files moved away")
r = c.new_order(["during." + SUFFIX])
C.status(r, 201, "newOrder needs no HSM")
order_url, order = r.header("Location"), r.json()
os.rename(TOKENS, TOKENS + ".away")
try:
    csr, _ = at.make_csr(["during." + SUFFIX])
    t0 = time.monotonic()
    r = c.finalize(order, csr)
    dt = time.monotonic() - t0
    C.problem(r, 503, "serverInternal", "finalize while the HSM is gone:")
    C.check(r.header("Retry-After") is not None, "503 has Retry-After")
    C.check(dt < 10, "answered within the signing deadline, no hang (%.2f s)" % dt)
    C.eq(c.get(order_url).json().get("status"), "ready", "order is back to ready (retryable)")
    st, retry = ready_status()
    C.eq(st, 503, "/ready while the HSM is gone")
    C.check(retry is not None, "/ready 503 has Retry-After")
    r = c.finalize(order, csr)
    C.problem(r, 503, "serverInternal", "a second finalize, refused at once:")
finally:
    os.rename(TOKENS + ".away", TOKENS)

C.begin("token back: reconnect without a restart")
for _ in range(100):
    if ready_status()[0] == 200:
        break
    time.sleep(0.2)
C.eq(ready_status()[0], 200, "/ready after the token is back")
r = c.finalize(c.get(order_url).json(), csr)
C.eq(r.json().get("status") if r.status == 200 else r, "valid", "the same order finalizes now")
C.check(bool(c.get(r.json()["certificate"]).body) if r.status == 200 else False,
        "certificate downloads")
sys.exit(C.summary())

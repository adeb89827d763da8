"""The HSM hangs, then refuses sessions, then comes back; run by tests/e2e/hsm_hang.sh."""
import os
import sys
import time

import acmetest as at

C = at.Checks("hsm_hang")
SUFFIX = at.env("ACMEGW_TEST_SUFFIX")
CONTROL = at.env("P11SHIM_CONTROL")


def switch(mode):
    with open(CONTROL + ".new", "w") as f:
        f.write(mode + "\n")
    os.rename(CONTROL + ".new", CONTROL)


c = at.Client()
c.directory()
C.status(c.new_account(), 201, "account")
C.begin("shim up: issuance as usual")
c.issue(["up." + SUFFIX])
C.eq(at.ready_status()[0], 200, "/ready")

C.begin("hang: a signature blocks inside the token")
r = c.new_order(["hang." + SUFFIX])
C.status(r, 201, "newOrder needs no HSM")
order_url, order = r.header("Location"), r.json()
switch("hang")
# the signing deadline is 5 s (issuer timeout_ms): the job is abandoned, the signer marked lost
at.finalize_refused(C, c, order_url, order, "hang." + SUFFIX,
                    "finalize while the token hangs", 9)
st, retry = at.ready_status()
C.eq(st, 503, "/ready while the token hangs")
C.check(retry is not None, "/ready 503 has Retry-After")
r = c.new_order(["hang2." + SUFFIX])
at.finalize_refused(C, c, r.header("Location"), r.json(), "hang2." + SUFFIX,
                    "the next finalize, refused at once", 2)
t0 = time.monotonic()
C.status(c.new_order(["meanwhile." + SUFFIX]), 201, "other requests are served meanwhile")
C.check(time.monotonic() - t0 < 2, "promptly")

# the reconnect thread waits up to the signing deadline (5 s) for the hung worker, sets its
# connection aside, and its connect attempt hangs in C_OpenSession too: past the connect deadline
# (5 s more) that thread is abandoned (hsm.connect_hung) and the next attempt does not wait for it
time.sleep(11)
with open(os.path.join(at.env("ACMEGW_STATE"), "acmegw.log")) as f:
    C.check("hsm.connect_hung" in f.read(), "a hung connect attempt was abandoned at its deadline")
r = c.new_order(["hang3." + SUFFIX])
at.finalize_refused(C, c, r.header("Location"), r.json(), "hang3." + SUFFIX,
                    "finalize while a connect attempt hangs, refused at once", 2)

C.begin("down: new sessions refused (reconnect attempts must not hang)")
switch("down")
time.sleep(3)  # reconnect attempts run against the refusing token
r = c.new_order(["down." + SUFFIX])
at.finalize_refused(C, c, r.header("Location"), r.json(), "down." + SUFFIX,
                    "finalize while sessions are refused", 2)
C.eq(at.ready_status()[0], 503, "/ready while sessions are refused")

C.begin("up: reconnect by itself")
switch("up")
# the reconnect back-off grows to 5 s, and an attempt abandoned while the token hung may be
# waited out (connect deadline): allow 30 s
C.eq(at.wait_ready(200, tries=150), 200, "/ready once the token answers again")
r = c.finalize(c.get(order_url).json(), at.make_csr(["hang." + SUFFIX])[0])
C.eq(r.json().get("status") if r.status == 200 else r, "valid", "the order from the hang finalizes")
c.issue(["after." + SUFFIX])
sys.exit(C.summary())

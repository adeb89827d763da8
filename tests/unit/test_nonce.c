/*
 * tests/unit/test_nonce.c - Replay-Nonce: fresh nonces redeem once, replays, forgeries, other
 * instances' nonces, expired and evicted counters are refused; redemption works across threads.
 */
#include "gateway/nonce.h"

#include "common/err.h"
#include "tests/check.h"

#include <pthread.h>
#include <string.h>

static void nonce_redeems_once(void)
{
    struct gw_nonces *n;
    char a[GW_NONCE_TEXT_LEN + 1];

    CHECK_INT(gw_nonces_new(0, 0, 0, &n), 0);
    gw_nonce_issue(n, a);
    CHECK_INT(strlen(a), GW_NONCE_TEXT_LEN);
    CHECK_INT(gw_nonce_redeem(n, a, strlen(a)), 0);
    CHECK_INT(gw_nonce_redeem(n, a, strlen(a)), AGW_ERR_BAD_NONCE);
    gw_nonces_free(n);
}

static void nonce_rejects_forgery_and_garbage(void)
{
    struct gw_nonces *n, *other;
    char a[GW_NONCE_TEXT_LEN + 1], b[GW_NONCE_TEXT_LEN + 1];

    CHECK_INT(gw_nonces_new(0, 0, 0, &n), 0);
    CHECK_INT(gw_nonces_new(0, 0, 0, &other), 0);
    gw_nonce_issue(n, a);
    memcpy(b, a, sizeof(a));
    b[10] = b[10] == 'A' ? 'B' : 'A'; /* one character changed: MAC fails */
    CHECK_INT(gw_nonce_redeem(n, b, strlen(b)), AGW_ERR_BAD_NONCE);
    CHECK_INT(gw_nonce_redeem(n, "", 0), AGW_ERR_BAD_NONCE);
    CHECK_INT(gw_nonce_redeem(n, "not a nonce", 11), AGW_ERR_BAD_NONCE);
    CHECK_INT(gw_nonce_redeem(n, NULL, 0), AGW_ERR_BAD_NONCE);
    gw_nonce_issue(other, b); /* another instance's key */
    CHECK_INT(gw_nonce_redeem(n, b, strlen(b)), AGW_ERR_BAD_NONCE);
    CHECK_INT(gw_nonce_redeem(n, a, strlen(a)), 0); /* the forgery did not burn the real one */
    gw_nonces_free(other);
    gw_nonces_free(n);
}

static void nonce_outside_window_is_refused(void)
{
    struct gw_nonces *n;
    char first[GW_NONCE_TEXT_LEN + 1], x[GW_NONCE_TEXT_LEN + 1], last[GW_NONCE_TEXT_LEN + 1];

    CHECK_INT(gw_nonces_new(64, 0, 0, &n), 0);
    gw_nonce_issue(n, first);
    for (int i = 0; i < 63; i++)
        gw_nonce_issue(n, x);
    gw_nonce_issue(n, last); /* 65th: slot of `first` reused */
    CHECK_INT(gw_nonce_redeem(n, first, strlen(first)), AGW_ERR_BAD_NONCE);
    CHECK_INT(gw_nonce_redeem(n, last, strlen(last)), 0);
    CHECK_INT(gw_nonce_redeem(n, x, strlen(x)), 0);
    gw_nonces_free(n);
}

static void nonce_old_unused_still_valid_within_window(void)
{
    struct gw_nonces *n;
    char first[GW_NONCE_TEXT_LEN + 1], x[GW_NONCE_TEXT_LEN + 1];

    CHECK_INT(gw_nonces_new(1 << 16, 0, 0, &n), 0);
    gw_nonce_issue(n, first);
    for (int i = 0; i < 60000; i++) { /* many nonces issued and used after it */
        gw_nonce_issue(n, x);
        if (i % 2 == 0)
            CHECK_INT(gw_nonce_redeem(n, x, strlen(x)), 0);
    }
    CHECK_INT(gw_nonce_redeem(n, first, strlen(first)), 0);
    gw_nonces_free(n);
}

static struct gw_nonces *shared;
static char pool[8][1000][GW_NONCE_TEXT_LEN + 1];
static int ok_count[8];

static void *redeem_all(void *arg)
{
    /* every thread tries every nonce: each must be accepted exactly once overall */
    long t = (long)arg;
    for (int k = 0; k < 8; k++)
        for (int i = 0; i < 1000; i++)
            if (gw_nonce_redeem(shared, pool[(k + t) % 8][i], GW_NONCE_TEXT_LEN) == 0)
                ok_count[t]++;
    return NULL;
}

static void nonce_each_accepted_once_across_threads(void)
{
    pthread_t tids[8];
    int total = 0;

    CHECK_INT(gw_nonces_new(0, 0, 0, &shared), 0);
    for (int k = 0; k < 8; k++)
        for (int i = 0; i < 1000; i++)
            gw_nonce_issue(shared, pool[k][i]);
    for (long t = 0; t < 8; t++)
        pthread_create(&tids[t], NULL, redeem_all, (void *)t);
    for (int t = 0; t < 8; t++) {
        pthread_join(tids[t], NULL);
        total += ok_count[t];
    }
    CHECK_INT(total, 8000);
    gw_nonces_free(shared);
}

/* A stand-in for the shared store: the set of redeemed ids, unique. */
static char used[64][33];
static int n_used;

static int shared_redeem(void *arg, const char *id, int64_t expires)
{
    (void)arg;
    CHECK(expires > 0);
    for (int i = 0; i < n_used; i++)
        if (strcmp(used[i], id) == 0)
            return -1;
    if (n_used == 64 || strlen(id) != 32)
        return -1;
    strcpy(used[n_used++], id);
    return 0;
}

static void nonce_shared_by_instances_is_good_once_anywhere(void)
{
    static const unsigned char key[32] = {1, 2, 3};
    struct gw_nonces *a, *b, *lone;
    char na[GW_NONCE_TEXT_LEN + 1], nb[GW_NONCE_TEXT_LEN + 1], nl[GW_NONCE_TEXT_LEN + 1];

    CHECK_INT(gw_nonces_new(0, 0, 1, &a), 0);
    CHECK_INT(gw_nonces_new(0, 0, 2, &b), 0);
    CHECK_INT(gw_nonces_new(0, 0, 3, &lone), 0); /* not sharing: its own random key */
    gw_nonces_share(a, key, shared_redeem, NULL);
    gw_nonces_share(b, key, shared_redeem, NULL);
    gw_nonce_issue(a, na);
    gw_nonce_issue(b, nb);
    gw_nonce_issue(lone, nl);
    CHECK_INT(gw_nonce_redeem(b, na, strlen(na)), 0); /* issued by a, used at b */
    CHECK_INT(gw_nonce_redeem(a, na, strlen(na)), AGW_ERR_BAD_NONCE); /* replay at the issuer */
    CHECK_INT(gw_nonce_redeem(b, na, strlen(na)), AGW_ERR_BAD_NONCE);
    CHECK_INT(gw_nonce_redeem(a, nb, strlen(nb)), 0);
    CHECK_INT(gw_nonce_redeem(a, nl, strlen(nl)), AGW_ERR_BAD_NONCE); /* another key */
    CHECK_INT(n_used, 2);
    gw_nonces_free(lone);
    gw_nonces_free(b);
    gw_nonces_free(a);
}

int main(void)
{
    RUN(nonce_redeems_once);
    RUN(nonce_rejects_forgery_and_garbage);
    RUN(nonce_outside_window_is_refused);
    RUN(nonce_old_unused_still_valid_within_window);
    RUN(nonce_each_accepted_once_across_threads);
    RUN(nonce_shared_by_instances_is_good_once_anywhere);
    return CHECK_DONE();
}

/*
 * gateway/nonce.c - Replay-Nonce issue and check (RFC 8555 §6.5, §7.2).
 *
 * A nonce is authenticated, not stored: 32 bytes = prefix (1: the instance), issue time (4, unix
 * seconds), counter (8), random (3), HMAC-SHA256 truncated to 16 bytes over the first 16.
 * A forged nonce fails the MAC; an expired one fails the time check; a replay is refused by a
 * bitmap of the last `window` counters (one bit each, set atomically on redemption, cleared when
 * the counter slot is reused). So a nonce we issued stays valid until used, for its lifetime,
 * as long as fewer than `window` nonces were issued after it (2^24 by default, 2 MiB of memory):
 * some clients never retry badNonce, so a false rejection must not happen under normal load.
 * The MAC key is random per process (a restart invalidates outstanding nonces rather than risk a
 * replay the new bitmap cannot see).
 *
 * Several instances (gw_nonces_share): the key is shared, any prefix is accepted, and a
 * redemption is recorded in the shared store instead of the bitmap, so a nonce from any
 * instance is good once at any instance, with no sticky sessions. Cost: one INSERT per request.
 */
#include "gateway/nonce.h"

#include "common/err.h"
#include "gateway/jws.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define NONCE_RAW_LEN 32
#define NONCE_MAC_OFF 16

struct gw_nonces {
    unsigned char key[32];
    uint64_t counter;   /* atomic: next counter to issue */
    uint64_t *bitmap;   /* atomic words: bit set = counter redeemed */
    uint64_t window;    /* power of two */
    unsigned lifetime_s;
    uint8_t prefix;
    gw_nonce_redeem_fn shared_redeem; /* set by gw_nonces_share(): record in the store */
    void *shared_arg;
};

int gw_nonces_new(size_t window, unsigned lifetime_s, uint8_t prefix, struct gw_nonces **out)
{
    struct gw_nonces *n;
    uint64_t w = 64;

    *out = NULL;
    if (window == 0)
        window = (size_t)1 << 24;
    while (w < window)
        w <<= 1;
    n = calloc(1, sizeof(*n));
    if (n == NULL)
        return AGW_ERR_NOMEM;
    n->bitmap = calloc(w / 64, sizeof(uint64_t));
    if (n->bitmap == NULL || RAND_bytes(n->key, sizeof(n->key)) != 1) {
        gw_nonces_free(n);
        return AGW_ERR_NOMEM;
    }
    n->window = w;
    n->lifetime_s = lifetime_s != 0 ? lifetime_s : 3600 + 600;
    n->prefix = prefix;
    *out = n;
    return 0;
}

void gw_nonces_share(struct gw_nonces *n, const unsigned char key[32], gw_nonce_redeem_fn redeem,
                     void *arg)
{
    memcpy(n->key, key, sizeof(n->key));
    n->shared_redeem = redeem;
    n->shared_arg = arg;
}

void gw_nonces_free(struct gw_nonces *n)
{
    if (n == NULL)
        return;
    OPENSSL_cleanse(n->key, sizeof(n->key));
    free(n->bitmap);
    free(n);
}

static void nonce_mac(const struct gw_nonces *n, const unsigned char *msg, unsigned char *mac)
{
    unsigned char full[EVP_MAX_MD_SIZE];
    unsigned int len = 0;

    HMAC(EVP_sha256(), n->key, (int)sizeof(n->key), msg, NONCE_MAC_OFF, full, &len);
    memcpy(mac, full, NONCE_RAW_LEN - NONCE_MAC_OFF);
}

static void put_be(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | p[i];
    return v;
}

/*
 * The 3 random bytes of a nonce, from a per-thread pool refilled 256 nonces at a time: OpenSSL
 * 3.0's RAND_bytes makes a getpid() system call per call (its fork check), which was a third of
 * the system calls of a newNonce request and ~10 % of its CPU. The bytes only make a nonce
 * unpredictable (the counter makes it unique, the MAC authentic), so if a refill fails they come
 * from the counter instead.
 */
#define NONCE_RANDOM_LEN  3
#define NONCE_POOL_NONCES 256
static void nonce_random(unsigned char *out, uint64_t counter)
{
    static _Thread_local unsigned char pool[NONCE_RANDOM_LEN * NONCE_POOL_NONCES];
    static _Thread_local size_t left; /* bytes not handed out yet, at the end of pool */

    if (left < NONCE_RANDOM_LEN) {
        if (RAND_bytes(pool, (int)sizeof(pool)) != 1) {
            put_be(out, counter, NONCE_RANDOM_LEN);
            return;
        }
        left = sizeof(pool);
    }
    memcpy(out, pool + sizeof(pool) - left, NONCE_RANDOM_LEN);
    left -= NONCE_RANDOM_LEN;
}

void gw_nonce_issue(struct gw_nonces *n, char out[GW_NONCE_TEXT_LEN + 1])
{
    unsigned char raw[NONCE_RAW_LEN];
    uint64_t c = __atomic_fetch_add(&n->counter, 1, __ATOMIC_RELAXED);
    uint64_t slot = c & (n->window - 1);
    uint64_t issued = (uint64_t)time(NULL) & 0xffffffffu;

    /* the slot now belongs to counter c: forget the redemption of counter c - window */
    __atomic_fetch_and(&n->bitmap[slot / 64], ~((uint64_t)1 << (slot % 64)), __ATOMIC_RELEASE);
    raw[0] = n->prefix;
    put_be(raw + 1, issued, 4);
    put_be(raw + 5, c, 8);
    nonce_random(raw + 13, c);
    nonce_mac(n, raw, raw + NONCE_MAC_OFF);
    gw_b64url_encode(raw, sizeof(raw), out, GW_NONCE_TEXT_LEN + 1);
}

int gw_nonce_redeem(struct gw_nonces *n, const char *text, size_t len)
{
    unsigned char *raw = NULL, mac[NONCE_RAW_LEN - NONCE_MAC_OFF];
    size_t raw_len = 0;
    uint64_t c, next, slot, bit, old, issued;
    int64_t now;
    int err = AGW_ERR_BAD_NONCE;

    if (text == NULL || len != GW_NONCE_TEXT_LEN)
        return AGW_ERR_BAD_NONCE;
    if (gw_b64url_decode(text, len, &raw, &raw_len) != 0 || raw_len != NONCE_RAW_LEN)
        goto out;
    nonce_mac(n, raw, mac);
    if (CRYPTO_memcmp(mac, raw + NONCE_MAC_OFF, sizeof(mac)) != 0 ||
        (n->shared_redeem == NULL && raw[0] != n->prefix))
        goto out;
    issued = get_be(raw + 1, 4);
    now = (int64_t)time(NULL);
    if ((int64_t)issued > now + 5 || now - (int64_t)issued > (int64_t)n->lifetime_s)
        goto out;
    if (n->shared_redeem != NULL) {
        char id[2 * NONCE_MAC_OFF + 1];
        static const char hex[] = "0123456789abcdef";
        for (size_t i = 0; i < NONCE_MAC_OFF; i++) {
            id[2 * i] = hex[raw[i] >> 4];
            id[2 * i + 1] = hex[raw[i] & 15];
        }
        id[2 * NONCE_MAC_OFF] = '\0';
        if (n->shared_redeem(n->shared_arg, id, (int64_t)issued + n->lifetime_s + 60) == 0)
            err = 0;
        goto out;
    }
    c = get_be(raw + 5, 8);
    next = __atomic_load_n(&n->counter, __ATOMIC_ACQUIRE);
    if (c >= next || next - c > n->window)
        goto out; /* not issued yet, or its slot was reused: refuse rather than risk a replay */
    slot = c & (n->window - 1);
    bit = (uint64_t)1 << (slot % 64);
    old = __atomic_fetch_or(&n->bitmap[slot / 64], bit, __ATOMIC_ACQ_REL);
    if (old & bit)
        goto out; /* replay */
    /* the slot may have been reused between the window check and the set: check again */
    next = __atomic_load_n(&n->counter, __ATOMIC_ACQUIRE);
    if (next - c > n->window)
        goto out;
    err = 0;
out:
    free(raw);
    return err;
}

/*
 * gateway/nonce.h - Replay-Nonce issue and check (RFC 8555 §6.5, §7.2).
 */
#ifndef AGW_GATEWAY_NONCE_H
#define AGW_GATEWAY_NONCE_H

#include <stddef.h>
#include <stdint.h>

#define GW_NONCE_TEXT_LEN 43 /* base64url of 32 bytes, without padding */

struct gw_nonces; /* opaque, shared by all threads */

/*
 * window      counters remembered for replay detection (rounded up to a power of two; 0 means
 *             2^24: at 4 600 nonces/s sustained that is still an hour).
 * lifetime_s  a nonce older than this is refused (0 means 3600 + 600).
 * prefix      instance prefix (0..255), so a later multi-instance design can route or shard.
 */
int gw_nonces_new(size_t window, unsigned lifetime_s, uint8_t prefix, struct gw_nonces **out);
void gw_nonces_free(struct gw_nonces *n);
/*
 * Several instances behind a load balancer: every instance gets the same 32-byte key (so any of
 * them can authenticate a nonce any of them issued, whatever its prefix) and records each
 * redemption through redeem(arg, id, expires): id is the hex of the nonce's authenticated bytes,
 * and redeem returns 0 the first time and non-zero for a replay (the store's unique key decides
 * across instances). The local bitmap is not used then. Call before any nonce is issued.
 */
typedef int (*gw_nonce_redeem_fn)(void *arg, const char *id, int64_t expires);
void gw_nonces_share(struct gw_nonces *n, const unsigned char key[32], gw_nonce_redeem_fn redeem,
                     void *arg);

/* Writes a fresh nonce (GW_NONCE_TEXT_LEN chars + NUL) into out. Lock-free, thread-safe. */
void gw_nonce_issue(struct gw_nonces *n, char out[GW_NONCE_TEXT_LEN + 1]);
/* 0 and marks it used if it is ours, unused, in the window and not expired; else
 * AGW_ERR_BAD_NONCE. Thread-safe; never touches the store. */
int gw_nonce_redeem(struct gw_nonces *n, const char *text, size_t len);

#endif

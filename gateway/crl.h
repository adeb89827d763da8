/*
 * gateway/crl.h - one X.509 v2 CRL per issuer, regenerated in the background (gateway/crl.c).
 *
 * Loop threads may call gw_crl_copy() (a memcpy under a lock, no store, no HSM); everything that
 * blocks runs on the CRL thread. Revocations reach the thread in two ways: gw_crl_kick() from this
 * process (acme.c revokeCert, SIGUSR1 from `acmegw-admin crl generate`) and a cheap poll of the
 * store's revocation marker, which sees revocations made by other processes (acmegw-admin).
 */
#ifndef AGW_GATEWAY_CRL_H
#define AGW_GATEWAY_CRL_H

#include <stddef.h>
#include <stdint.h>

struct gw_server;

#define GW_CRL_ETAG_SIZE 24 /* "\"" + 16 hex + "\"" + NUL, rounded up */
#define GW_CRL_DATE_SIZE 32 /* IMF-fixdate + NUL */

/* What a loop thread gets to send: a private copy of the current CRL. */
struct gw_crl_view {
    unsigned char *der; /* owned by the caller: free() */
    size_t der_len;
    char etag[GW_CRL_ETAG_SIZE];          /* quoted, e.g. "\"0123456789abcdef\"" */
    char last_modified[GW_CRL_DATE_SIZE]; /* thisUpdate as an HTTP date */
    uint64_t number;
    int64_t next_update;
};

/*
 * Generates a first CRL for every issuer of srv (synchronously, so a CRL is there before the
 * listeners open; a failure is logged and retried by the thread) and starts the CRL thread.
 * srv is borrowed and must outlive gw_crl_stop(). Returns 0 or AGW_ERR_NOMEM.
 */
int gw_crl_start(struct gw_server *srv);
/* Stops and joins the thread and frees every CRL. Safe without a start. */
void gw_crl_stop(void);

/*
 * Asks for a new CRL of issuer (NULL: every issuer) soon: the thread waits GW_CRL_COALESCE_MS
 * after the first kick of a burst, then generates once. Never blocks; any thread, also a signal
 * handling thread.
 */
void gw_crl_kick(const char *issuer);

/*
 * Copies the current CRL of the issuer named by name[0..name_len) (not NUL-terminated: straight
 * from the request path). Returns 0, AGW_ERR_NOT_FOUND (no such issuer, or no CRL yet) or
 * AGW_ERR_NOMEM. Never blocks on I/O.
 */
int gw_crl_copy(const char *name, size_t name_len, struct gw_crl_view *out);

#endif

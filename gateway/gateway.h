/*
 * gateway/gateway.h - what the HTTP server (server.c) and the ACME handlers (acme.c, issue.c)
 * share inside gateway/.
 *
 * Request flow: an h2o loop thread parses HTTP and either answers at once (directory, newNonce,
 * health: no store, no HSM) or copies the request into a gw_request and queues it for a worker
 * thread. The worker runs gw_acme_handle(), which may call the store and the HSM (both block),
 * and fills a gw_response. The response goes back to the loop thread through h2o's multithread
 * queue and is sent there. So loop threads never block, and nothing in acme.c sees h2o.
 */
#ifndef AGW_GATEWAY_GATEWAY_H
#define AGW_GATEWAY_GATEWAY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/config.h"
#include "gateway/nonce.h"

struct st_store;
struct hsm_signer;
struct pol_set;

#define GW_MAX_PATH    1024
#define GW_MAX_LINKS   4
#define GW_MAX_CT      128

struct gw_request {
    int is_post, is_head;
    char method[16];
    char path[GW_MAX_PATH];   /* normalized path, no query */
    char content_type[GW_MAX_CT];
    char client_ip[64];       /* peer address, textual */
    char *body;               /* owned, body_len bytes (not NUL-terminated) */
    size_t body_len;
};

struct gw_response {
    int status;
    const char *content_type; /* static string */
    char *body;               /* owned (malloc) */
    size_t body_len;
    char *location;           /* owned or NULL */
    char *links[GW_MAX_LINKS]; /* owned: complete Link header values */
    int n_links;
    char nonce[GW_NONCE_TEXT_LEN + 1]; /* "" = none */
    unsigned retry_after;      /* 0 = none */
    const char *allow;         /* Allow header for 405, static */
};

/* An immutable text published to loop threads; replaced ones stay on a list until exit, so a
 * loop never reads freed memory (reloads are rare: a few hundred bytes each). */
struct gw_text {
    struct gw_text *retired_next;
    size_t len;
    char s[];
};

struct gw_issuer {
    char name[64];
    struct hsm_signer *signer;
};

struct gw_server {
    struct gw_config *cfg;
    struct gw_nonces *nonces;
    struct st_store *store;
    struct gw_issuer *issuers;
    size_t n_issuers;
    pthread_mutex_t policy_lock; /* guards policy (the pointer swap on reload only) */
    struct pol_set *policy;
    struct gw_text *directory; /* atomic pointer: loops read it without a lock; a policy reload
                                * publishes a new one (meta.profiles) and retires the old */
    volatile int stopping;
};

/* Runs one queued request on a worker thread. Never called on an event loop. */
void gw_acme_handle(struct gw_server *srv, const struct gw_request *req, struct gw_response *resp);
/* Builds the directory from the config and the current policy and publishes it. */
int gw_acme_directory_build(struct gw_server *srv);
/* Drops the parsed account keys kept by acme.c (at exit). */
void gw_acme_cache_free(void);
/* Frees the published directory and every retired one (at exit). */
void gw_acme_directory_free(struct gw_server *srv);
/* Unix seconds as RFC 3339 UTC ("2026-12-04T19:00:00Z"), the timestamps of ACME objects. */
void gw_time_rfc3339(int64_t t, char *buf, size_t size);
/* Releases what a response owns. */
void gw_response_clear(struct gw_response *resp);
/* A problem document response for err (detail may be NULL); also sets Retry-After when due. */
void gw_response_problem(struct gw_response *resp, int err, const char *detail);
/* Checks the class's certificates-per-account-per-day quota (soft under concurrency: count, then
 * sign). On excess fills resp with rateLimited + Retry-After and returns AGW_ERR_RATE_LIMITED.
 * The order quotas are enforced by st_order_create() inside its transaction. */
struct pol_class;
struct st_account;
int gw_quota_check(struct gw_server *srv, const struct pol_class *cls,
                   const struct st_account *acct, int64_t now, struct gw_response *resp);
/* Current policy set, with a reference the caller must drop with pol_set_unref(). */
struct pol_set *gw_policy_get(struct gw_server *srv);
/* The issuer called name, or the first one for NULL/""; NULL if there is none. */
struct gw_issuer *gw_issuer_find(struct gw_server *srv, const char *name);

/* The HTTP server (server.c): runs until SIGTERM/SIGINT (SIGHUP reloads the policy); returns 0
 * on a clean stop. Call gw_signals_block() first thing in main, before any thread starts. */
int gw_server_run(struct gw_server *srv);
void gw_signals_block(void);
/* Re-reads the policy directory; swaps the set atomically only if every file is valid, else
 * keeps the running policy and logs why. Requests in flight keep the set they started with.
 * Returns 0 or AGW_ERR_BAD_CONFIG. */
int gw_policy_reload(struct gw_server *srv);

#endif

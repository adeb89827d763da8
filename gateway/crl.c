/*
 * gateway/crl.c - CRLs per issuer (RFC 5280 §5), signed in the HSM, served from memory.
 *
 * Each issuer has one current CRL: X.509 v2, issuer name and AKI (keyIdentifier = the issuing
 * CA's SKI) from the CA certificate, a CRL number from the store (st_crl_next_number(): monotonic
 * across restarts and processes; a number taken for a CRL that then failed to sign is simply
 * skipped, which §5.2.3 allows), thisUpdate = now, nextUpdate = now + crl_next_update_s, and one
 * entry per revoked, unexpired certificate with a reasonCode extension unless the reason is
 * unspecified (§5.3.1 says to omit it then). The DER sits in memory behind crl.lock with an ETag
 * (SHA-256 prefix) and Last-Modified (thisUpdate); loop threads copy it out (gw_crl_copy) and
 * never touch the store or the HSM.
 *
 * One thread serves every issuer. It regenerates an issuer's CRL
 *   - GW_CRL_COALESCE_MS after the first kick of a burst (revokeCert, SIGUSR1), so fifty
 *     revocations in a second give one CRL, not fifty HSM signatures;
 *   - when the store's revocation marker changed (polled every GW_CRL_POLL_MS): revocations by
 *     `acmegw-admin cert revoke`, which runs in another process and cannot kick us;
 *   - at half the nextUpdate interval, so relying parties never see a stale CRL;
 *   - GW_CRL_RETRY_MS after a failure (HSM lost, store busy).
 *
 * Several gateways on one store: exactly one instance writes each issuer's CRL, the holder of a
 * lease row in the store (st_crl_lease: one conditional upsert, GW_CRL_LEASE_S long, renewed at
 * every poll). The holder signs, publishes in memory and stores the DER (st_crl_put); every other
 * instance loads the stored CRL into the same in-memory slot at each poll (crl_load) and signs
 * nothing. A crashed holder's lease runs out and the next instance to poll takes it over and
 * signs a fresh CRL: within GW_CRL_LEASE_S + GW_CRL_POLL_MS. A single gateway is its own holder.
 */
#include "gateway/crl.h"

#include "common/err.h"
#include "common/log.h"
#include "gateway/gateway.h"
#include "hsm/hsm.h"
#include "store/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define GW_CRL_COALESCE_MS 1000
#define GW_CRL_POLL_MS     2000
#define GW_CRL_RETRY_MS    5000
#define GW_CRL_LEASE_S     10

struct crl_entry {
    struct gw_issuer *issuer; /* borrowed from the server */
    /* guarded by crl.lock: */
    unsigned char *der;
    size_t der_len;
    char etag[GW_CRL_ETAG_SIZE];
    char last_modified[GW_CRL_DATE_SIZE];
    uint64_t number;
    int64_t this_update, next_update; /* unix seconds */
    int kicked;                       /* a regeneration is wanted */
    int64_t kick_ms;                  /* monotonic ms: generate at or after this */
    /* CRL thread only: */
    int64_t marker; /* last revocation marker seen in the store */
    int holder;     /* we held the writer's lease at the last check */
};

static struct {
    pthread_mutex_t lock; /* guards the entries' CRL fields, kicked, kick_ms, stop; never held
                           * across the store or the HSM */
    pthread_cond_t cond;  /* a kick or stop; CLOCK_MONOTONIC */
    struct gw_server *srv;
    struct crl_entry *entries;
    size_t n;
    int stop, started;
    pthread_t tid;
    char owner[128]; /* this instance's name in the lease: host:pid:random */
} crl = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------- building */

static int add_entry(X509_CRL *x, const struct st_revoked *r)
{
    X509_REVOKED *rev = X509_REVOKED_new();
    BIGNUM *bn = NULL;
    ASN1_INTEGER *serial = NULL;
    ASN1_TIME *when = NULL;
    ASN1_ENUMERATED *reason = NULL;
    int ok;

    ok = rev != NULL && BN_hex2bn(&bn, r->serial) > 0;
    if (ok) {
        serial = BN_to_ASN1_INTEGER(bn, NULL);
        when = ASN1_TIME_set(NULL, (time_t)r->revoked_at);
        ok = serial != NULL && when != NULL && X509_REVOKED_set_serialNumber(rev, serial) == 1 &&
             X509_REVOKED_set_revocationDate(rev, when) == 1;
    }
    if (ok && r->reason > 0) { /* §5.3.1: no reasonCode for unspecified (0) */
        reason = ASN1_ENUMERATED_new();
        ok = reason != NULL && ASN1_ENUMERATED_set(reason, r->reason) == 1 &&
             X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, reason, 0, 0) == 1;
    }
    if (ok)
        ok = X509_CRL_add0_revoked(x, rev) == 1;
    if (ok)
        rev = NULL; /* owned by the CRL */
    X509_REVOKED_free(rev);
    ASN1_ENUMERATED_free(reason);
    ASN1_TIME_free(when);
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    return ok ? 0 : AGW_ERR_NOMEM;
}

/* The unsigned CRL; *out owned by the caller (X509_CRL_free). */
static int crl_build(const X509 *ca, const struct st_revoked *rv, size_t n, uint64_t number,
                     int64_t this_update, int64_t next_update, X509_CRL **out)
{
    X509_CRL *x = X509_CRL_new();
    ASN1_TIME *t1 = ASN1_TIME_set(NULL, (time_t)this_update);
    ASN1_TIME *t2 = ASN1_TIME_set(NULL, (time_t)next_update);
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    X509_EXTENSION *aki = NULL;
    X509V3_CTX ctx;
    int err = AGW_ERR_NOMEM;

    *out = NULL;
    if (x == NULL || t1 == NULL || t2 == NULL || num == NULL ||
        X509_CRL_set_version(x, X509_CRL_VERSION_2) != 1 ||
        X509_CRL_set_issuer_name(x, X509_get_subject_name(ca)) != 1 ||
        X509_CRL_set1_lastUpdate(x, t1) != 1 || X509_CRL_set1_nextUpdate(x, t2) != 1 ||
        ASN1_INTEGER_set_uint64(num, number) != 1 ||
        X509_CRL_add1_ext_i2d(x, NID_crl_number, num, 0, 0) != 1)
        goto out;
    /* AKI keyIdentifier: the CA's SKI (computed from its key if the certificate has none) */
    X509V3_set_ctx(&ctx, (X509 *)ca, NULL, NULL, x, 0);
    aki = X509V3_EXT_nconf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
    if (aki == NULL || X509_CRL_add_ext(x, aki, -1) != 1)
        goto out;
    for (size_t i = 0; i < n; i++) {
        err = add_entry(x, &rv[i]);
        if (err != 0)
            goto out;
    }
    X509_CRL_sort(x);
    *out = x;
    x = NULL;
    err = 0;
out:
    ERR_clear_error();
    X509_EXTENSION_free(aki);
    ASN1_INTEGER_free(num);
    ASN1_TIME_free(t2);
    ASN1_TIME_free(t1);
    X509_CRL_free(x);
    return err;
}

static void http_date(int64_t t, char *buf, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;

    gmtime_r(&tt, &tm);
    strftime(buf, size, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/*
 * Makes, signs and publishes a new CRL for entry e. CRL thread (and gw_crl_start) only: blocks on
 * the store and the HSM. This is the one boundary a multi-instance gateway needs to guard (see
 * the top of the file).
 */
/* Puts a signed CRL into the entry's in-memory slot (takes der). */
static void crl_publish(struct crl_entry *e, unsigned char *der, size_t der_len, uint64_t number,
                        int64_t this_update, int64_t next_update)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char etag[GW_CRL_ETAG_SIZE], date[GW_CRL_DATE_SIZE];

    SHA256(der, der_len, digest);
    etag[0] = '"';
    for (size_t i = 0; i < 8; i++)
        snprintf(etag + 1 + 2 * i, 3, "%02x", digest[i]);
    etag[17] = '"';
    etag[18] = '\0';
    http_date(this_update, date, sizeof(date));
    pthread_mutex_lock(&crl.lock);
    free(e->der);
    e->der = der;
    e->der_len = der_len;
    memcpy(e->etag, etag, sizeof(etag));
    memcpy(e->last_modified, date, sizeof(date));
    e->number = number;
    e->this_update = this_update;
    e->next_update = next_update;
    pthread_mutex_unlock(&crl.lock);
}

/* Another instance writes this issuer's CRL: serve the newest one it stored. */
static int crl_load(struct crl_entry *e)
{
    unsigned char *der = NULL;
    size_t len = 0;
    uint64_t number = 0, have;
    int64_t tu = 0, nu = 0;
    int err = st_crl_get(crl.srv->store, e->issuer->name, &number, &tu, &nu, &der, &len);

    pthread_mutex_lock(&crl.lock);
    have = e->der != NULL ? e->number : 0;
    pthread_mutex_unlock(&crl.lock);
    if (err == 0 && number > have) {
        crl_publish(e, der, len, number, tu, nu);
        LOG_INFO("crl.loaded", "issuer=%s number=%llu from=store", e->issuer->name,
                 (unsigned long long)number);
        der = NULL;
    }
    free(der);
    return err == AGW_ERR_NOT_FOUND ? 0 : err;
}

static int crl_generate(struct crl_entry *e)
{
    struct gw_server *srv = crl.srv;
    struct st_revoked *rv = NULL;
    size_t n = 0;
    uint64_t number = 0;
    int64_t now = (int64_t)time(NULL);
    int64_t next = now + (int64_t)srv->cfg->crl_next_update_s;
    const X509 *ca = hsm_ca_cert(e->issuer->signer);
    X509_CRL *x = NULL;
    unsigned char *tbs = NULL;
    size_t tbs_len = 0;
    struct hsm_request req;
    struct hsm_response resp = {0, NULL, 0};
    int err;

    if (ca == NULL)
        return AGW_ERR_INTERNAL;
    {
        int granted = 0;
        err = st_crl_lease(srv->store, e->issuer->name, crl.owner, now, GW_CRL_LEASE_S, &granted);
        if (err != 0)
            return err;
        e->holder = granted;
        if (!granted)
            return crl_load(e);
    }
    err = hsm_signer_ready(e->issuer->signer); /* not ready: no CRL number is used up */
    if (err == 0)
        err = st_revoked_list(srv->store, e->issuer->name, now, &rv, &n);
    if (err == 0)
        err = st_crl_next_number(srv->store, e->issuer->name, &number);
    if (err == 0)
        err = crl_build(ca, rv, n, number, now, next, &x);
    if (err == 0)
        err = hsm_tbs_crl(e->issuer->signer, x, &tbs, &tbs_len);
    if (err == 0) {
        memset(&req, 0, sizeof(req));
        req.op = HSM_OP_SIGN_CRL;
        req.tbs_der = tbs;
        req.tbs_len = tbs_len;
        err = hsm_call(e->issuer->signer, &req, &resp);
    }
    if (err != 0) {
        LOG_WARN("crl.failed", "issuer=%s number=%llu error=\"%s\"", e->issuer->name,
                 (unsigned long long)number, agw_err_str(err));
        (void)crl_load(e); /* meanwhile the newest CRL signed, if newer than ours (a restart) */
        goto out;
    }
    /* for the other instances (and for ourselves after a restart) */
    if (st_crl_put(srv->store, e->issuer->name, number, now, next, resp.der, resp.der_len) != 0)
        LOG_WARN("crl.store_failed", "issuer=%s number=%llu", e->issuer->name,
                 (unsigned long long)number);
    crl_publish(e, resp.der, resp.der_len, number, now, next);
    resp.der = NULL; /* moved into the entry */
    LOG_INFO("crl.published", "issuer=%s number=%llu entries=%zu next_update=%lld", e->issuer->name,
             (unsigned long long)number, n, (long long)next);
out:
    free(resp.der);
    OPENSSL_free(tbs);
    X509_CRL_free(x);
    free(rv);
    return err;
}

/* ---------------------------------------------------------------- the thread */

static void *crl_main(void *arg)
{
    int64_t next_poll = mono_ms() + GW_CRL_POLL_MS;

    (void)arg;
    pthread_mutex_lock(&crl.lock);
    while (!crl.stop) {
        int64_t now_ms = mono_ms(), wake = next_poll;
        int64_t now = (int64_t)time(NULL);
        struct crl_entry *todo = NULL;

        for (size_t i = 0; i < crl.n && todo == NULL; i++) {
            struct crl_entry *e = &crl.entries[i];
            /* half the interval: with a 24 h nextUpdate a new CRL every 12 h */
            int64_t half = e->this_update + (e->next_update - e->this_update) / 2;

            if (e->der != NULL && now >= half && !e->kicked) {
                e->kicked = 1;
                e->kick_ms = now_ms;
            }
            if (e->kicked && now_ms >= e->kick_ms) {
                todo = e;
            } else {
                if (e->kicked && e->kick_ms < wake)
                    wake = e->kick_ms;
                if (e->der != NULL && now_ms + (half - now) * 1000 < wake)
                    wake = now_ms + (half - now) * 1000;
            }
        }
        if (todo != NULL) {
            todo->kicked = 0;
            pthread_mutex_unlock(&crl.lock);
            if (crl_generate(todo) != 0) {
                pthread_mutex_lock(&crl.lock);
                if (!todo->kicked) {
                    todo->kicked = 1;
                    todo->kick_ms = mono_ms() + GW_CRL_RETRY_MS;
                }
                pthread_mutex_unlock(&crl.lock);
            }
            pthread_mutex_lock(&crl.lock);
            continue;
        }
        if (now_ms >= next_poll) {
            /* revocations by other processes: compare the store's marker per issuer */
            pthread_mutex_unlock(&crl.lock);
            for (size_t i = 0; i < crl.n; i++) {
                struct crl_entry *e = &crl.entries[i];
                int64_t m = 0;

                int granted = 0;

                if (st_revocation_marker(crl.srv->store, e->issuer->name, &m) == 0 &&
                    m != e->marker) {
                    e->marker = m;
                    gw_crl_kick(e->issuer->name);
                }
                /* renew the writer's lease, take it over from a crashed holder, or follow the
                 * holder's latest CRL */
                if (st_crl_lease(crl.srv->store, e->issuer->name, crl.owner, (int64_t)time(NULL),
                                 GW_CRL_LEASE_S, &granted) == 0) {
                    if (granted && !e->holder) {
                        LOG_INFO("crl.writer", "issuer=%s owner=%s", e->issuer->name, crl.owner);
                        gw_crl_kick(e->issuer->name);
                    } else if (!granted) {
                        (void)crl_load(e);
                    }
                    e->holder = granted;
                }
            }
            /* orders a dead gateway (any instance) left in processing: end them, so clients
             * stop polling and order again (every instance sweeps; the UPDATE is idempotent) */
            {
                static const char stale_err[] =
                    "{\"type\":\"urn:ietf:params:acme:error:serverInternal\","
                    "\"detail\":\"issuance was interrupted; place a new order\",\"status\":500}";
                int64_t n_stale = 0;
                if (st_order_fail_stale(crl.srv->store, crl.srv->cfg->processing_timeout_s,
                                        stale_err, &n_stale) == 0 &&
                    n_stale > 0)
                    LOG_WARN("order.recovered", "orders=%lld state=processing->invalid "
                             "after_s=%u", (long long)n_stale,
                             crl.srv->cfg->processing_timeout_s);
            }
            next_poll = mono_ms() + GW_CRL_POLL_MS;
            pthread_mutex_lock(&crl.lock);
            continue;
        }
        {
            struct timespec ts;
            int64_t wait_ms = wake - now_ms;

            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += (time_t)(wait_ms / 1000);
            ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&crl.cond, &crl.lock, &ts);
        }
    }
    pthread_mutex_unlock(&crl.lock);
    return NULL;
}

/* ---------------------------------------------------------------- public */

int gw_crl_start(struct gw_server *srv)
{
    pthread_condattr_t ca;

    crl.srv = srv;
    {
        char host[64] = "host";
        unsigned char r[4] = {0};
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        RAND_bytes(r, sizeof(r));
        snprintf(crl.owner, sizeof(crl.owner), "%.60s:%ld:%02x%02x%02x%02x", host,
                 (long)getpid(), r[0], r[1], r[2], r[3]);
    }
    crl.entries = calloc(srv->n_issuers > 0 ? srv->n_issuers : 1, sizeof(*crl.entries));
    if (crl.entries == NULL)
        return AGW_ERR_NOMEM;
    crl.n = srv->n_issuers;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&crl.cond, &ca);
    pthread_condattr_destroy(&ca);
    for (size_t i = 0; i < crl.n; i++) {
        struct crl_entry *e = &crl.entries[i];

        e->issuer = &srv->issuers[i];
        (void)st_revocation_marker(srv->store, e->issuer->name, &e->marker);
        if (crl_generate(e) != 0) {
            e->kicked = 1;
            e->kick_ms = mono_ms() + GW_CRL_RETRY_MS;
        }
    }
    if (pthread_create(&crl.tid, NULL, crl_main, NULL) != 0)
        return AGW_ERR_NOMEM;
    crl.started = 1;
    return 0;
}

void gw_crl_stop(void)
{
    if (crl.started) {
        pthread_mutex_lock(&crl.lock);
        crl.stop = 1;
        pthread_cond_signal(&crl.cond);
        pthread_mutex_unlock(&crl.lock);
        pthread_join(crl.tid, NULL);
        crl.started = 0;
        pthread_cond_destroy(&crl.cond);
    }
    for (size_t i = 0; i < crl.n; i++)
        free(crl.entries[i].der);
    free(crl.entries);
    crl.entries = NULL;
    crl.n = 0;
}

void gw_crl_kick(const char *issuer)
{
    int64_t at = mono_ms() + GW_CRL_COALESCE_MS;

    pthread_mutex_lock(&crl.lock);
    for (size_t i = 0; i < crl.n; i++) {
        struct crl_entry *e = &crl.entries[i];

        if (issuer != NULL && strcmp(e->issuer->name, issuer) != 0)
            continue;
        if (!e->kicked) { /* the first kick of a burst sets the time; later ones join it */
            e->kicked = 1;
            e->kick_ms = at;
        }
    }
    if (crl.started)
        pthread_cond_signal(&crl.cond);
    pthread_mutex_unlock(&crl.lock);
}

int gw_crl_copy(const char *name, size_t name_len, struct gw_crl_view *out)
{
    int err = AGW_ERR_NOT_FOUND;

    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&crl.lock);
    for (size_t i = 0; i < crl.n; i++) {
        struct crl_entry *e = &crl.entries[i];

        if (strlen(e->issuer->name) != name_len || memcmp(e->issuer->name, name, name_len) != 0)
            continue;
        if (e->der == NULL)
            break;
        out->der = malloc(e->der_len);
        if (out->der == NULL) {
            err = AGW_ERR_NOMEM;
            break;
        }
        memcpy(out->der, e->der, e->der_len);
        out->der_len = e->der_len;
        memcpy(out->etag, e->etag, sizeof(out->etag));
        memcpy(out->last_modified, e->last_modified, sizeof(out->last_modified));
        out->number = e->number;
        out->next_update = e->next_update;
        err = 0;
        break;
    }
    pthread_mutex_unlock(&crl.lock);
    return err;
}

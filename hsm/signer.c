/*
 * hsm/signer.c - the signer: libp11 0.4.12 + OpenSSL 3, a worker pool, a deadline on every job,
 * token-loss detection and background reconnect (notes §2, §3, §5).
 *
 * Objects and who owns them:
 *   struct conn     one connection to the token: PKCS11_CTX (module loaded, C_Initialize done), the
 *                   slot list, the logged-in slot and the CA key as an EVP_PKEY. Refcounted under
 *                   s->lock: s->conn holds one reference, each worker that is signing holds one, so
 *                   no worker ever signs with a freed key. The last reference closes it, in reverse
 *                   order: EVP_PKEY_free, PKCS11_release_all_slots, PKCS11_CTX_unload (never after
 * a failed load: SIGSEGV), PKCS11_CTX_free. struct job      one hsm_call(). refs 2 while queued
 * (caller + queue/worker). A caller past its deadline marks the job abandoned and drops its
 * reference; the worker drops the other when it finishes (or skips the job if still queued).
 * Whoever drops the last reference frees it, result included. struct attempt  one connect (load,
 * probe, login, key lookup) on its own thread, waited for with a deadline, because libp11 0.4.12's
 * PKCS11_login() blocks forever when C_OpenSession fails (notes §5). It owns copies of everything
 * it needs, so when it hangs we abandon the thread (detached) and the attempt is freed by whichever
 *                   side lets go last; a thread stuck for good leaks its attempt, by design.
 *
 * Token loss: a signing error whose CK_RV means the session, object or device is gone (or one we
 * cannot classify), a signature that does not verify, or a job past its deadline marks the signer
 * not ready. hsm_call() then answers AGW_ERR_HSM_UNAVAILABLE at once and the reconnect thread
 * does a full teardown and reload with exponential back-off: after the token's files move away
 * and back, only a new C_Initialize finds the key again (notes §5). The old connection is closed
 * before the module is loaded again, because its C_Finalize would end the new one's sessions; we
 * wait for signing workers to let go of it, but not for one that is hung. A wrong PIN stops the
 * reconnect for good: a real HSM locks the PIN after a few tries.
 *
 * One signer per PKCS#11 module per process: two contexts on one module share its C_Initialize
 * and the first C_Finalize ends the other's sessions.
 *
 * hsm_signer_free() waits for the threads to finish (up to the connect deadline plus one job
 * deadline). A thread still inside the token after that is detached and the signer is freed by
 * the last such thread when it returns, or never if it never returns.
 */
#define _GNU_SOURCE /* pthread_mutex_clocklock (glibc >= 2.30): a lock wait on CLOCK_MONOTONIC */
#include "hsm/hsm.h"

#include "common/err.h"
#include "common/log.h"
#include "hsm/internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <libp11.h>
#include <openssl/asn1t.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#define HSM_DEFAULT_WORKERS      2
#define HSM_MAX_WORKERS          64
#define HSM_DEFAULT_TIMEOUT_MS   5000
#define HSM_MAX_TIMEOUT_MS       600000
#define HSM_DEFAULT_MAX_QUEUE    1024
#define HSM_CONNECT_MIN_MS       2000 /* module load + login take longer than one signature */
#define HSM_BACKOFF_FIRST_MS     100
#define HSM_BACKOFF_MAX_MS       5000
#define HSM_MAX_TBS_LEN          (1024 * 1024)
#define HSM_MAX_CHAIN_LEN        (1024 * 1024)
#define HSM_MAX_DEVICE_CLASS_LEN 256
#define HSM_MAX_PIN_LEN          256
#define HSM_MAX_KEY_ID_LEN       64
#define HSM_RETRY_MARGIN_MS      200 /* at most; < 1000 (a nanosecond field); worker_main */

/* ---------------------------------------------------------------- small helpers */

static void deadline_after(struct timespec *ts, unsigned ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Deadlines are on CLOCK_MONOTONIC: a wall-clock step must not stretch or cut a wait. */
static int cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    int rc;

    if (pthread_condattr_init(&attr) != 0)
        return AGW_ERR_NOMEM;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? 0 : AGW_ERR_NOMEM;
}

static pthread_once_t strings_once = PTHREAD_ONCE_INIT;

static void strings_load(void)
{
    ERR_load_PKCS11_strings(); /* readable reasons ("PIN incorrect") and the CKR lib id */
}

/* The first CK_RV libp11 left in this thread's error queue, or 0; empties the queue. */
static unsigned long ckr_from_queue(void)
{
    int ckr_lib = ERR_get_CKR_code();
    unsigned long e, ckr = 0;

    for (e = ERR_get_error(); e != 0; e = ERR_get_error()) {
        if (ckr == 0 && ERR_GET_LIB(e) == ckr_lib)
            ckr = (unsigned long)ERR_GET_REASON(e);
    }
    return ckr;
}

/* Does a signing failure with this CK_RV (0: none found) mean the token is gone (notes §5)? */
static bool ckr_means_lost(unsigned long ckr)
{
    switch (ckr) {
    case 0: /* a failure we cannot classify: assume the worst, reconnect */
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_KEY_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_CRYPTOKI_NOT_INITIALIZED: /* another context on the module ran C_Finalize */
        return true;
    default:
        return false;
    }
}

static int err_from_login_ckr(unsigned long ckr)
{
    switch (ckr) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
        return AGW_ERR_PIN_INCORRECT;
    default:
        return AGW_ERR_HSM_UNAVAILABLE;
    }
}

/* ---------------------------------------------------------------- connection parameters */

/* Everything a connect needs, owned: an abandoned connect thread may outlive the signer. */
struct conn_params {
    char *module;
    char *token;
    char *key_label;
    unsigned char key_id[HSM_MAX_KEY_ID_LEN];
    size_t key_id_len; /* 0: match the label only */
    char *pin;         /* wiped on clear */
};

static void params_clear(struct conn_params *p)
{
    free(p->module);
    free(p->token);
    free(p->key_label);
    if (p->pin != NULL) {
        OPENSSL_cleanse(p->pin, strlen(p->pin));
        free(p->pin);
    }
    memset(p, 0, sizeof(*p));
}

static int params_set(struct conn_params *p, const char *module, const char *token,
                      const char *key_label, const unsigned char *key_id, size_t key_id_len,
                      const char *pin)
{
    memset(p, 0, sizeof(*p));
    p->module = strdup(module);
    p->token = strdup(token);
    p->key_label = strdup(key_label);
    p->pin = strdup(pin);
    if (key_id_len > 0)
        memcpy(p->key_id, key_id, key_id_len);
    p->key_id_len = key_id_len;
    if (p->module == NULL || p->token == NULL || p->key_label == NULL || p->pin == NULL) {
        params_clear(p);
        return AGW_ERR_NOMEM;
    }
    return 0;
}

static int params_copy(struct conn_params *dst, const struct conn_params *src)
{
    return params_set(dst, src->module, src->token, src->key_label, src->key_id, src->key_id_len,
                      src->pin);
}

/* ---------------------------------------------------------------- one connection */

struct conn {
    PKCS11_CTX *ctx;
    bool loaded; /* PKCS11_CTX_load() succeeded: unload is allowed */
    PKCS11_SLOT *slots;
    unsigned int n_slots;
    EVP_PKEY *key; /* from PKCS11_get_private_key(): refers into the slot list's PKCS11_KEY */
    EVP_PKEY *pub; /* software copy of the public half: verify and compare with it */
    enum hsm_key_alg alg;
    unsigned refs; /* guarded by the signer's lock once installed in s->conn */
    /* Retired while a worker still held it (a call hung in the token), guarded by the signer's
     * lock: a newer connection may be open by the time that worker lets go, and this one's
     * C_Finalize (or C_CloseAllSessions) would end the newer one's sessions in the shared module
     * (seen: SIGSEGV). So it is not closed then but kept on s->stale until the signer is freed. */
    bool stale;
    struct conn *next_stale;
};

/*
 * The PKCS#11 module is one per process, shared by every connection (every issuer on it, every
 * reconnect attempt): C_Initialize and C_Finalize act on all of them. So they are never called
 * while another thread is inside the module, nor two at once: calls into the module (sessions,
 * login, signing) hold module_lock for reading, C_Initialize / C_Finalize (PKCS11_CTX_load /
 * _unload) for writing. Seen without it, with SoftHSM2 2.6 and two issuers on one module:
 * leaks and SIGSEGV when both reconnect threads called C_Initialize in the same millisecond, and
 * SIGSEGV when a connection was finalized while a call of another one, released from a hang,
 * was still running. Every wait is bounded, because a call may hang in the token (a network
 * HSM): a thread that cannot get the lock in time fails as if the token were unavailable and
 * is retried with back-off; an unload that cannot get it is skipped and the context leaked.
 */
#define HSM_MODULE_LOCK_MS 10000
static pthread_rwlock_t module_lock = PTHREAD_RWLOCK_INITIALIZER;

static bool module_enter(bool exclusive)
{
    struct timespec until;

    deadline_after(&until, HSM_MODULE_LOCK_MS);
    return (exclusive ? pthread_rwlock_clockwrlock(&module_lock, CLOCK_MONOTONIC, &until)
                      : pthread_rwlock_clockrdlock(&module_lock, CLOCK_MONOTONIC, &until)) == 0;
}

static void module_leave(void)
{
    pthread_rwlock_unlock(&module_lock);
}

static void conn_close(struct conn *c)
{
    if (c == NULL)
        return;
    EVP_PKEY_free(c->pub);
    if (c->key != NULL || c->slots != NULL) {
        if (!module_enter(false)) {
            LOG_WARN("hsm.unload_skipped", "module busy for %d ms; the context is leaked",
                     HSM_MODULE_LOCK_MS);
            free(c);
            return;
        }
        EVP_PKEY_free(c->key); /* before the slots, which free the PKCS11_KEY it points into */
        if (c->slots != NULL)
            PKCS11_release_all_slots(c->ctx, c->slots, c->n_slots);
        module_leave();
    }
    if (c->loaded) { /* PKCS11_CTX_unload() after a failed load crashes (notes §2) */
        if (!module_enter(true)) { /* a call is stuck in the module: leave it be */
            LOG_WARN("hsm.unload_skipped", "module busy for %d ms; the context is leaked",
                     HSM_MODULE_LOCK_MS);
            free(c);
            return;
        }
        PKCS11_CTX_unload(c->ctx);
        module_leave();
    }
    if (c->ctx != NULL)
        PKCS11_CTX_free(c->ctx);
    ERR_clear_error();
    free(c);
}

/*
 * Opens a session on the slot with raw PKCS#11 and closes it again, before PKCS11_login(): libp11
 * 0.4.12 waits forever for a session when C_OpenSession fails (notes §5). dlopen(RTLD_NOLOAD)
 * gives the module instance libp11 has already initialised. Returns the CK_RV.
 */
static CK_RV probe_session(const char *module, CK_SLOT_ID slot_id)
{
    CK_FUNCTION_LIST_PTR fl = NULL;
    CK_C_GetFunctionList get_list;
    CK_SESSION_HANDLE session;
    CK_RV rv = CKR_GENERAL_ERROR;
    void *handle, *sym;

    handle = dlopen(module, RTLD_NOW | RTLD_NOLOAD);
    if (handle == NULL)
        return CKR_GENERAL_ERROR;
    sym = dlsym(handle, "C_GetFunctionList");
    if (sym != NULL) {
        memcpy(&get_list, &sym, sizeof(get_list)); /* ISO C has no object-to-function cast */
        rv = get_list(&fl);
    }
    if (rv == CKR_OK && fl == NULL)
        rv = CKR_GENERAL_ERROR;
    if (rv == CKR_OK) {
        rv = fl->C_OpenSession(slot_id, CKF_SERIAL_SESSION, NULL, NULL, &session);
        if (rv == CKR_OK)
            fl->C_CloseSession(session); /* before login, so no login state is lost */
    }
    dlclose(handle);
    return rv;
}

/* *out owns a software EVP_PKEY with the public half of key. */
static int public_copy(EVP_PKEY *key, EVP_PKEY **out)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    int len;

    len = i2d_PUBKEY(key, &der);
    if (len <= 0)
        return AGW_ERR_BAD_INPUT;
    p = der;
    *out = d2i_PUBKEY(NULL, &p, len);
    OPENSSL_free(der);
    return *out != NULL ? 0 : AGW_ERR_BAD_INPUT;
}

static int alg_of(const EVP_PKEY *pub, enum hsm_key_alg *out)
{
    char group[80];
    size_t len;

    if (EVP_PKEY_is_a(pub, "EC")) {
        if (EVP_PKEY_get_group_name(pub, group, sizeof(group), &len) != 1)
            return AGW_ERR_BAD_INPUT;
        switch (OBJ_txt2nid(group)) {
        case NID_X9_62_prime256v1:
            *out = HSM_KEY_EC_P256;
            return 0;
        case NID_secp384r1:
            *out = HSM_KEY_EC_P384;
            return 0;
        default:
            return AGW_ERR_BAD_INPUT;
        }
    }
    if (EVP_PKEY_is_a(pub, "RSA")) {
        switch (EVP_PKEY_get_bits(pub)) {
        case 2048:
            *out = HSM_KEY_RSA_2048;
            return 0;
        case 3072:
            *out = HSM_KEY_RSA_3072;
            return 0;
        case 4096:
            *out = HSM_KEY_RSA_4096;
            return 0;
        default:
            return AGW_ERR_BAD_INPUT;
        }
    }
    return AGW_ERR_BAD_INPUT;
}

/* The private key named by p in the logged-in token; NOT_FOUND or CONFLICT (ambiguous). */
static int key_find(const struct conn_params *p, PKCS11_TOKEN *token, PKCS11_KEY **out)
{
    PKCS11_KEY *keys = NULL;
    unsigned int i, n_keys = 0, n_match = 0;

    *out = NULL;
    if (PKCS11_enumerate_keys(token, &keys, &n_keys) != 0) {
        LOG_ERROR("hsm.keys_failed", "token=%s ckr=0x%lx", p->token, ckr_from_queue());
        return AGW_ERR_HSM_UNAVAILABLE;
    }
    for (i = 0; i < n_keys; i++) {
        if (keys[i].label == NULL || strcmp(keys[i].label, p->key_label) != 0)
            continue;
        if (p->key_id_len != 0 &&
            (keys[i].id_len != p->key_id_len || memcmp(keys[i].id, p->key_id, p->key_id_len) != 0))
            continue;
        if (*out == NULL)
            *out = &keys[i];
        n_match++;
    }
    if (n_match == 0) {
        LOG_ERROR("hsm.key_not_found", "token=%s label=%s", p->token, p->key_label);
        return AGW_ERR_NOT_FOUND;
    }
    if (n_match > 1) {
        LOG_ERROR("hsm.key_ambiguous", "token=%s label=%s n=%u hint=set_key_id", p->token,
                  p->key_label, n_match);
        *out = NULL;
        return AGW_ERR_CONFLICT;
    }
    return 0;
}

/*
 * Load the module, find the token, probe it, log in, find the key. Runs on an attempt thread.
 *   *out  owned by the caller on success: conn_close()
 */
static int conn_open(const struct conn_params *p, struct conn **out)
{
    PKCS11_SLOT *slot = NULL;
    PKCS11_KEY *key = NULL;
    struct conn *c;
    unsigned int i, n_other = 0;
    unsigned long ckr;
    bool in_module = false;
    int err = AGW_ERR_NOMEM;

    *out = NULL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return AGW_ERR_NOMEM;
    c->ctx = PKCS11_CTX_new();
    if (c->ctx == NULL)
        goto fail;
    err = AGW_ERR_HSM_UNAVAILABLE;
    if (!module_enter(true)) {
        LOG_ERROR("hsm.load_failed", "module=%s: busy for %d ms (a call hangs in it)", p->module,
                  HSM_MODULE_LOCK_MS);
        goto fail;
    }
    if (PKCS11_CTX_load(c->ctx, p->module) != 0) {
        module_leave();
        LOG_ERROR("hsm.load_failed", "module=%s ckr=0x%lx", p->module, ckr_from_queue());
        goto fail;
    }
    module_leave();
    c->loaded = true;
    if (!module_enter(false)) { /* held to the end: slots, probe, login, key */
        LOG_ERROR("hsm.load_failed", "module=%s: busy for %d ms", p->module, HSM_MODULE_LOCK_MS);
        goto fail;
    }
    in_module = true;
    ERR_clear_error(); /* SoftHSM's C_Initialize leaves unrelated DSO errors (notes §2) */
    if (PKCS11_enumerate_slots(c->ctx, &c->slots, &c->n_slots) != 0) {
        c->slots = NULL;
        LOG_ERROR("hsm.slots_failed", "module=%s ckr=0x%lx", p->module, ckr_from_queue());
        goto fail;
    }
    for (i = 0; i < c->n_slots; i++) {
        PKCS11_TOKEN *t = c->slots[i].token;

        if (t == NULL || !t->initialized ||
            hsm_token_match(p->token, t->label, t->serialnr, t->manufacturer, t->model) != 1)
            continue;
        if (slot == NULL)
            slot = &c->slots[i];
        else
            n_other++;
    }
    if (slot == NULL) {
        LOG_ERROR("hsm.token_not_found", "token=%s", p->token);
        goto fail;
    }
    if (n_other > 0)
        LOG_WARN("hsm.token_ambiguous", "token=%s n_other=%u using=first", p->token, n_other);
    ckr = probe_session(p->module, PKCS11_get_slotid_from_slot(slot));
    if (ckr != CKR_OK) {
        LOG_ERROR("hsm.probe_failed", "token=%s ckr=0x%lx", p->token, ckr);
        goto fail;
    }
    if (PKCS11_login(slot, 0, p->pin) != 0) {
        ckr = ckr_from_queue();
        err = err_from_login_ckr(ckr);
        LOG_ERROR("hsm.login_failed", "token=%s ckr=0x%lx", p->token, ckr);
        goto fail;
    }
    err = key_find(p, slot->token, &key);
    if (err != 0)
        goto fail;
    err = AGW_ERR_HSM_UNAVAILABLE;
    c->key = PKCS11_get_private_key(key);
    if (c->key == NULL) {
        LOG_ERROR("hsm.key_load_failed", "label=%s ckr=0x%lx", p->key_label, ckr_from_queue());
        goto fail;
    }
    err = public_copy(c->key, &c->pub);
    if (err == 0)
        err = alg_of(c->pub, &c->alg);
    if (err != 0) {
        LOG_ERROR("hsm.key_unsupported", "label=%s want=ec-p256|ec-p384|rsa-2048..4096",
                  p->key_label);
        goto fail;
    }
    *out = c;
    c = NULL;
    err = 0;
fail:
    if (in_module)
        module_leave(); /* before conn_close, which takes the lock itself */
    ERR_clear_error();
    conn_close(c);
    return err;
}

/* ---------------------------------------------------------------- connect with a deadline */

struct attempt {
    pthread_mutex_t lock; /* guards refs, done, err, conn */
    pthread_cond_t done_cv;
    unsigned refs; /* the waiting caller and the connect thread */
    bool done;
    int err;
    struct conn *conn; /* the result until the caller takes it */
    struct conn_params params;
};

static void attempt_unref(struct attempt *a)
{
    bool last;

    pthread_mutex_lock(&a->lock);
    last = --a->refs == 0;
    pthread_mutex_unlock(&a->lock);
    if (!last)
        return;
    conn_close(a->conn); /* a late result nobody waits for any more */
    params_clear(&a->params);
    pthread_cond_destroy(&a->done_cv);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

static void *attempt_main(void *arg)
{
    struct attempt *a = arg;
    struct conn *c = NULL;
    int err = conn_open(&a->params, &c);

    pthread_mutex_lock(&a->lock);
    a->err = err;
    a->conn = c;
    a->done = true;
    pthread_cond_signal(&a->done_cv);
    pthread_mutex_unlock(&a->lock);
    attempt_unref(a);
    return NULL;
}

/*
 * conn_open() on its own thread, waited for at most timeout_ms. On the deadline the thread is
 * detached and left behind (it may be stuck in PKCS11_login for good) and we answer
 * AGW_ERR_HSM_UNAVAILABLE.
 *   *out  owned by the caller on success: conn_close()
 */
static int connect_within(const struct conn_params *p, unsigned timeout_ms, struct conn **out)
{
    struct attempt *a;
    struct timespec until;
    pthread_t tid;
    bool done;
    int err;

    *out = NULL;
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return AGW_ERR_NOMEM;
    if (pthread_mutex_init(&a->lock, NULL) != 0) {
        free(a);
        return AGW_ERR_NOMEM;
    }
    err = cond_init_monotonic(&a->done_cv);
    if (err != 0) {
        pthread_mutex_destroy(&a->lock);
        free(a);
        return err;
    }
    a->refs = 1;
    err = params_copy(&a->params, p);
    if (err != 0)
        goto fail;
    a->refs = 2;
    if (pthread_create(&tid, NULL, attempt_main, a) != 0) {
        a->refs = 1;
        err = AGW_ERR_NOMEM;
        goto fail;
    }
    deadline_after(&until, timeout_ms);
    pthread_mutex_lock(&a->lock);
    while (!a->done) {
        if (pthread_cond_timedwait(&a->done_cv, &a->lock, &until) == ETIMEDOUT)
            break;
    }
    done = a->done;
    if (done) {
        err = a->err;
        *out = a->conn;
        a->conn = NULL;
    }
    pthread_mutex_unlock(&a->lock);
    if (done) {
        pthread_join(tid, NULL); /* it is past its last use of a, or about to be */
    } else {
        pthread_detach(tid);
        err = AGW_ERR_HSM_UNAVAILABLE;
        LOG_ERROR("hsm.connect_hung", "module=%s timeout_ms=%u action=thread_abandoned", p->module,
                  timeout_ms);
    }
fail:
    attempt_unref(a);
    return err;
}

/* ---------------------------------------------------------------- the signer */

enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_DONE };

struct job {
    struct job *next;
    pthread_cond_t done_cv;
    enum job_state state; /* guarded by s->lock, as are refs, abandoned and the result */
    unsigned refs;        /* the caller, and the queue or worker */
    bool abandoned;       /* the caller gave up at its deadline */
    bool retried;         /* signed again after a reconnect (worker_main); worker only */
    struct timespec until; /* the caller's deadline (CLOCK_MONOTONIC) */
    enum hsm_op op;
    char *device_class; /* or NULL */
    unsigned char *tbs;
    size_t tbs_len;
    int err;
    unsigned char *der; /* the result; moved to the caller's hsm_response */
    size_t der_len;
};

struct thread_slot {
    struct hsm_signer *s;
    pthread_t tid;
    bool started;
    bool exited; /* guarded by s->lock */
};

struct hsm_signer {
    /* Set by hsm_signer_new(), read-only afterwards. */
    struct conn_params params;
    unsigned n_workers, timeout_ms, max_queue, connect_timeout_ms;
    hsm_precheck_fn precheck;
    void *precheck_arg;
    OSSL_LIB_CTX *cert_libctx; /* borrowed from the caller (hsm_config), or NULL */
    X509 *ca_cert;   /* or NULL (ceremony) */
    char *chain_pem; /* the chain file's text, NUL-terminated, or NULL */
    size_t chain_len;
    EVP_PKEY *pub;   /* software public key: every signature is verified with it, every reconnect
                        compared with it (the CA certificate's key, or the first connect's) */
    EVP_PKEY *dummy; /* software key of the same type, for CRL templates (hsm_tbs_crl) */
    enum hsm_key_alg alg;
    bool sync_ok; /* lock and condvars initialised */

    pthread_mutex_t lock;    /* guards everything below; never held across PKCS#11 or I/O */
    pthread_cond_t work_cv;  /* a job was queued, or stopping */
    pthread_cond_t state_cv; /* ready dropped, a conn reference went, a thread exited, stopping */
    struct job *head, *tail;
    unsigned n_queued;
    struct conn *conn; /* NULL while reconnecting */
    struct conn *stale; /* retired connections a hung worker let go of late (struct conn) */
    atomic_bool ready; /* written under lock; read without it by hsm_signer_ready() */
    bool stopping;
    bool pin_rejected; /* a reconnect got a wrong PIN: never retried */
    bool orphaned;     /* freed by the last thread to exit, not by hsm_signer_free() */
    unsigned n_live;   /* threads started and not yet exited */
    struct thread_slot threads[HSM_MAX_WORKERS + 1]; /* the workers, then the reconnect thread */
    unsigned n_threads;
};

static void job_free(struct job *j)
{
    if (j == NULL)
        return;
    pthread_cond_destroy(&j->done_cv);
    free(j->device_class);
    free(j->tbs);
    free(j->der);
    free(j);
}

static void conn_release(struct hsm_signer *s, struct conn *c)
{
    bool last;

    if (c == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    last = --c->refs == 0;
    if (last && c->stale) {
        c->next_stale = s->stale;
        s->stale = c;
        last = false;
    }
    pthread_cond_broadcast(&s->state_cv); /* the reconnect thread may wait for this */
    pthread_mutex_unlock(&s->lock);
    if (last)
        conn_close(c);
}

/* A reference to the current connection, unless the signer is not ready or j was abandoned. */
static int conn_acquire(struct hsm_signer *s, const struct job *j, struct conn **out)
{
    int err = AGW_ERR_HSM_UNAVAILABLE;

    *out = NULL;
    pthread_mutex_lock(&s->lock);
    if (!j->abandoned && atomic_load(&s->ready) && s->conn != NULL) {
        s->conn->refs++;
        *out = s->conn;
        err = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return err;
}

/* Marks the signer not ready and wakes the reconnect thread, if c (NULL: any) is current.
 * Called with s->lock held; returns true if this call made the change (the caller logs). */
static bool mark_lost_locked(struct hsm_signer *s, const struct conn *c)
{
    if (!atomic_load(&s->ready) || (c != NULL && s->conn != c))
        return false;
    atomic_store(&s->ready, false);
    pthread_cond_broadcast(&s->state_cv);
    return true;
}

static void mark_lost(struct hsm_signer *s, const struct conn *c, const char *why,
                      unsigned long ckr)
{
    bool changed;

    pthread_mutex_lock(&s->lock);
    changed = mark_lost_locked(s, c);
    pthread_mutex_unlock(&s->lock);
    if (changed)
        LOG_WARN("hsm.lost", "reason=%s ckr=0x%lx retry_in_ms=0", why, ckr);
}

/* Is this connection's key the one we started with (and the CA certificate's)? */
static int conn_check(const struct hsm_signer *s, const struct conn *c)
{
    if (c->alg == s->alg && EVP_PKEY_eq(s->pub, c->pub) == 1)
        return 0;
    ERR_clear_error();
    LOG_ERROR("hsm.key_mismatch", "label=%s alg=%s: the token key is not the CA certificate's",
              s->params.key_label, hsm_key_alg_name(c->alg));
    return AGW_ERR_CONFLICT;
}

/* -------------------------------------------------- a request decoded: a certificate or a CRL */

struct tbs {
    enum hsm_op op;
    X509 *x;
    X509_CRL *crl;
};

/* A certificate is decoded in cert_libctx when one is configured (hsm_config says why). Signing,
 * verifying and encoding it take the default context as before: d2i_ex gives the context to the
 * subject key's decoder only, it does not attach it to the X509. */
static int tbs_decode(struct tbs *t, OSSL_LIB_CTX *cert_libctx, const unsigned char *der,
                      size_t len)
{
    const unsigned char *p = der;

    if (len == 0 || len > LONG_MAX)
        return AGW_ERR_BAD_INPUT;
    if (t->op == HSM_OP_SIGN_CERT && cert_libctx != NULL)
        t->x = (X509 *)ASN1_item_d2i_ex(NULL, &p, (long)len, ASN1_ITEM_rptr(X509), cert_libctx,
                                        NULL);
    else if (t->op == HSM_OP_SIGN_CERT)
        t->x = d2i_X509(NULL, &p, (long)len);
    else
        t->crl = d2i_X509_CRL(NULL, &p, (long)len);
    ERR_clear_error();
    if ((t->x == NULL && t->crl == NULL) || p != der + len)
        return AGW_ERR_BAD_INPUT; /* not DER of one object, or bytes after it */
    return 0;
}

static const X509_NAME *tbs_issuer(const struct tbs *t)
{
    return t->x != NULL ? X509_get_issuer_name(t->x) : X509_CRL_get_issuer(t->crl);
}

static int tbs_sign(struct tbs *t, EVP_PKEY *key, const EVP_MD *md)
{
    return t->x != NULL ? X509_sign(t->x, key, md) : X509_CRL_sign(t->crl, key, md);
}

static int tbs_verify(struct tbs *t, EVP_PKEY *pub)
{
    int ok = t->x != NULL ? X509_verify(t->x, pub) : X509_CRL_verify(t->crl, pub);

    ERR_clear_error();
    return ok;
}

/* *der owned by the caller (free()). */
static int tbs_encode(const struct tbs *t, unsigned char **der, size_t *der_len)
{
    unsigned char *buf, *p;
    int len = t->x != NULL ? i2d_X509(t->x, NULL) : i2d_X509_CRL(t->crl, NULL);

    if (len <= 0)
        return AGW_ERR_INTERNAL;
    buf = malloc((size_t)len);
    if (buf == NULL)
        return AGW_ERR_NOMEM;
    p = buf;
    if ((t->x != NULL ? i2d_X509(t->x, &p) : i2d_X509_CRL(t->crl, &p)) != len) {
        free(buf);
        return AGW_ERR_INTERNAL;
    }
    *der = buf;
    *der_len = (size_t)len;
    return 0;
}

static void tbs_free(struct tbs *t)
{
    X509_free(t->x);
    X509_CRL_free(t->crl);
}

static const EVP_MD *md_of(enum hsm_key_alg alg)
{
    return alg == HSM_KEY_EC_P384 ? EVP_sha384() : EVP_sha256();
}

/* ---------------------------------------------------------------- workers */

/* Decodes, prechecks, signs in the token and verifies one job. Worker thread. */
static int job_sign(struct hsm_signer *s, struct job *j, unsigned char **der, size_t *der_len,
                    bool *session_lost)
{
    struct tbs t = {j->op, NULL, NULL};
    struct conn *c = NULL;
    unsigned long ckr;
    int err, ok;

    *session_lost = false;
    *der = NULL;
    *der_len = 0;
    err = tbs_decode(&t, s->cert_libctx, j->tbs, j->tbs_len);
    if (err != 0)
        goto fail;
    if (s->ca_cert != NULL &&
        X509_NAME_cmp(tbs_issuer(&t), X509_get_subject_name(s->ca_cert)) != 0) {
        LOG_WARN("hsm.issuer_mismatch", "op=%d: issuer is not the CA certificate's subject",
                 (int)j->op);
        err = AGW_ERR_BAD_INPUT;
        goto fail;
    }
    if (t.x != NULL && s->precheck != NULL) {
        err = s->precheck(s->precheck_arg, j->device_class, t.x);
        if (err > 0) /* not an agw_err: still a refusal */
            err = AGW_ERR_POLICY_REJECTED;
        if (err != 0)
            goto fail;
    }
    err = conn_acquire(s, j, &c); /* a job whose caller gave up is never signed */
    if (err != 0)
        goto fail;
    ERR_clear_error();
    if (!module_enter(false)) { /* a load or unload holds the module (or hangs in it) */
        err = AGW_ERR_HSM_UNAVAILABLE;
        goto fail;
    }
    ok = tbs_sign(&t, c->key, md_of(s->alg));
    module_leave();
    if (ok <= 0) {
        ckr = ckr_from_queue();
        if (ckr_means_lost(ckr)) {
            mark_lost(s, c, "sign_failed", ckr);
            *session_lost = true; /* nothing was signed: worth one more try after a reconnect */
            err = AGW_ERR_HSM_UNAVAILABLE;
        } else {
            LOG_ERROR("hsm.sign_failed", "ckr=0x%lx", ckr);
            err = AGW_ERR_INTERNAL;
        }
        goto fail;
    }
    if (tbs_verify(&t, s->pub) != 1) { /* cheap insurance against a faulty token */
        LOG_ERROR("hsm.bad_signature", "op=%d: the token's signature does not verify", (int)j->op);
        mark_lost(s, c, "bad_signature", 0);
        err = AGW_ERR_HSM_UNAVAILABLE;
        goto fail;
    }
    err = tbs_encode(&t, der, der_len);
fail:
    conn_release(s, c);
    tbs_free(&t);
    return err;
}

static void signer_destroy(struct hsm_signer *s);

/* Called with s->lock held by a thread about to return; releases the lock. */
static void thread_exit(struct thread_slot *t)
{
    struct hsm_signer *s = t->s;
    bool free_now;

    t->exited = true;
    s->n_live--;
    free_now = s->orphaned && s->n_live == 0;
    pthread_cond_broadcast(&s->state_cv);
    pthread_mutex_unlock(&s->lock);
    if (free_now) /* hsm_signer_free() gave up waiting for us: we are the last user */
        signer_destroy(s);
}

static void *worker_main(void *arg)
{
    struct thread_slot *t = arg;
    struct hsm_signer *s = t->s;

    pthread_mutex_lock(&s->lock);
    for (;;) {
        struct job *j;

        while (!s->stopping && s->head == NULL)
            pthread_cond_wait(&s->work_cv, &s->lock);
        if (s->stopping)
            break;
        j = s->head;
        s->head = j->next;
        if (s->head == NULL)
            s->tail = NULL;
        s->n_queued--;
        j->next = NULL;
        if (!j->abandoned) {
            unsigned char *der;
            size_t der_len;
            bool session_lost;
            int err;

            j->state = JOB_RUNNING;
            pthread_mutex_unlock(&s->lock);
            err = job_sign(s, j, &der, &der_len, &session_lost);
            pthread_mutex_lock(&s->lock);
            if (session_lost && !j->retried) {
                /* The token ended the session under the call (a network HSM's failover, or
                 * another issuer on the same module reconnecting: its new C_Initialize ends our
                 * sessions). The reconnect usually takes ~0.1 s: wait for it within the
                 * caller's deadline and sign once more, so a blip costs latency, not a 503. */
                struct timespec give_up = j->until;

                /* a little before the caller's deadline, so the caller gets our answer rather
                 * than its own timeout (which would report a hung token) */
                give_up.tv_nsec -= (long)(s->timeout_ms / 4 < HSM_RETRY_MARGIN_MS
                                              ? s->timeout_ms / 4
                                              : HSM_RETRY_MARGIN_MS) * 1000000L;
                if (give_up.tv_nsec < 0) {
                    give_up.tv_sec--;
                    give_up.tv_nsec += 1000000000L;
                }
                j->retried = true;
                while (!atomic_load(&s->ready) && !s->stopping && !j->abandoned) {
                    if (pthread_cond_timedwait(&s->state_cv, &s->lock, &give_up) == ETIMEDOUT)
                        break;
                }
                if (atomic_load(&s->ready) && !s->stopping && !j->abandoned) {
                    pthread_mutex_unlock(&s->lock);
                    LOG_INFO("hsm.retry", "op=%d: signing again on the new connection",
                             (int)j->op);
                    err = job_sign(s, j, &der, &der_len, &session_lost);
                    pthread_mutex_lock(&s->lock);
                }
            }
            j->err = err;
            j->der = der;
            j->der_len = der_len;
            j->state = JOB_DONE;
            pthread_cond_signal(&j->done_cv);
        }
        if (--j->refs == 0) { /* the caller gave up: the result is ours to free */
            pthread_mutex_unlock(&s->lock);
            job_free(j);
            pthread_mutex_lock(&s->lock);
        }
    }
    thread_exit(t);
    return NULL;
}

/* ---------------------------------------------------------------- reconnect */

/* Waits for backoff_ms or stopping. Called and returns with s->lock held. */
static void backoff_wait(struct hsm_signer *s, unsigned backoff_ms)
{
    struct timespec until;

    deadline_after(&until, backoff_ms);
    while (!s->stopping) {
        if (pthread_cond_timedwait(&s->state_cv, &s->lock, &until) == ETIMEDOUT)
            break;
    }
}

/* Takes the lost connection out of s and closes it once no worker signs with it (but does
 * not wait past one job deadline for a hung one). Called and returns with s->lock held. */
static void conn_retire_locked(struct hsm_signer *s)
{
    struct conn *old = s->conn;
    struct timespec until;
    bool last;

    s->conn = NULL;
    if (old == NULL)
        return;
    deadline_after(&until, s->timeout_ms);
    while (old->refs > 1 && !s->stopping) {
        if (pthread_cond_timedwait(&s->state_cv, &s->lock, &until) == ETIMEDOUT)
            break;
    }
    last = --old->refs == 0;
    if (!last)
        old->stale = true; /* see struct conn */
    pthread_mutex_unlock(&s->lock);
    if (last)
        conn_close(old);
    else
        LOG_WARN("hsm.conn_busy", "a worker is still inside the token on the lost connection; "
                 "it is set aside, closed when the signer is freed");
    pthread_mutex_lock(&s->lock);
}

static void *reconnect_main(void *arg)
{
    struct thread_slot *t = arg;
    struct hsm_signer *s = t->s;
    unsigned backoff_ms = HSM_BACKOFF_FIRST_MS;

    pthread_mutex_lock(&s->lock);
    for (;;) {
        struct conn *fresh = NULL;
        int err;

        while (!s->stopping && (atomic_load(&s->ready) || s->pin_rejected))
            pthread_cond_wait(&s->state_cv, &s->lock);
        if (s->stopping)
            break;
        conn_retire_locked(s); /* its C_Finalize must come before the new C_Initialize */
        if (s->stopping)
            break;
        pthread_mutex_unlock(&s->lock);
        err = connect_within(&s->params, s->connect_timeout_ms, &fresh);
        if (err == 0)
            err = conn_check(s, fresh);
        if (err != 0) {
            conn_close(fresh);
            fresh = NULL;
        }
        if (err == 0)
            LOG_INFO("hsm.reconnected", "token=%s label=%s", s->params.token, s->params.key_label);
        else if (err == AGW_ERR_PIN_INCORRECT)
            LOG_ERROR("hsm.reconnect_stopped", "token=%s reason=pin_incorrect action=restart",
                      s->params.token);
        else
            LOG_WARN("hsm.reconnect_failed", "token=%s err=\"%s\" retry_in_ms=%u", s->params.token,
                     agw_err_str(err), backoff_ms);
        pthread_mutex_lock(&s->lock);
        if (fresh != NULL) {
            fresh->refs = 1;
            s->conn = fresh;
            atomic_store(&s->ready, true);
            pthread_cond_broadcast(&s->state_cv); /* a worker may wait to sign again */
            backoff_ms = HSM_BACKOFF_FIRST_MS;
        } else if (err == AGW_ERR_PIN_INCORRECT) {
            s->pin_rejected = true; /* a real HSM locks the PIN after a few tries */
        } else {
            backoff_wait(s, backoff_ms);
            backoff_ms = backoff_ms * 2 > HSM_BACKOFF_MAX_MS ? HSM_BACKOFF_MAX_MS : backoff_ms * 2;
        }
    }
    thread_exit(t);
    return NULL;
}

/* ---------------------------------------------------------------- lifecycle */

static int threads_start(struct hsm_signer *s)
{
    unsigned i;

    s->n_threads = s->n_workers + 1;
    for (i = 0; i < s->n_threads; i++) {
        struct thread_slot *t = &s->threads[i];
        int rc;

        t->s = s;
        pthread_mutex_lock(&s->lock);
        s->n_live++;
        pthread_mutex_unlock(&s->lock);
        rc = pthread_create(&t->tid, NULL, i < s->n_workers ? worker_main : reconnect_main, t);
        if (rc != 0) {
            pthread_mutex_lock(&s->lock);
            s->n_live--;
            pthread_mutex_unlock(&s->lock);
            return AGW_ERR_NOMEM;
        }
        t->started = true;
    }
    return 0;
}

/* Stops and joins the threads. Returns true if some did not stop in time: they were detached
 * and the last of them frees s, so the caller must not touch s any more. */
static bool threads_stop(struct hsm_signer *s)
{
    pthread_t tids[HSM_MAX_WORKERS + 1];
    enum { T_NONE, T_JOIN, T_DETACH } what[HSM_MAX_WORKERS + 1];
    struct timespec until;
    unsigned i, n, n_alive;

    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->work_cv);
    pthread_cond_broadcast(&s->state_cv);
    deadline_after(&until, s->connect_timeout_ms + s->timeout_ms);
    while (s->n_live > 0) {
        if (pthread_cond_timedwait(&s->state_cv, &s->lock, &until) == ETIMEDOUT)
            break;
    }
    n = s->n_threads;
    for (i = 0; i < n; i++) { /* copied: once orphaned, s may go as soon as we unlock */
        tids[i] = s->threads[i].tid;
        what[i] = !s->threads[i].started ? T_NONE : s->threads[i].exited ? T_JOIN : T_DETACH;
    }
    n_alive = s->n_live;
    s->orphaned = n_alive > 0;
    pthread_mutex_unlock(&s->lock);
    for (i = 0; i < n; i++) {
        if (what[i] == T_JOIN)
            pthread_join(tids[i], NULL);
        else if (what[i] == T_DETACH)
            pthread_detach(tids[i]); /* still inside the token */
    }
    if (n_alive > 0)
        LOG_WARN("hsm.threads_abandoned", "n=%u: still inside the token; the last frees the signer",
                 n_alive);
    return n_alive > 0;
}

static void signer_destroy(struct hsm_signer *s)
{
    struct job *j, *next;

    if (s == NULL)
        return;
    for (j = s->head; j != NULL; j = next) { /* only abandoned jobs can be left */
        next = j->next;
        if (--j->refs == 0)
            job_free(j);
    }
    if (s->conn != NULL && --s->conn->refs == 0)
        conn_close(s->conn);
    while (s->stale != NULL) { /* after the current one: their C_Finalize can harm nobody now */
        struct conn *c = s->stale;

        s->stale = c->next_stale;
        conn_close(c);
    }
    EVP_PKEY_free(s->dummy);
    EVP_PKEY_free(s->pub);
    X509_free(s->ca_cert);
    free(s->chain_pem);
    params_clear(&s->params);
    if (s->sync_ok) {
        pthread_cond_destroy(&s->state_cv);
        pthread_cond_destroy(&s->work_cv);
        pthread_mutex_destroy(&s->lock);
    }
    free(s);
}

/* Reads the PEM chain file: the first certificate is the CA key's, the rest must parse too. */
static int chain_load(struct hsm_signer *s, const char *path)
{
    X509 *extra;
    BIO *bio = NULL;
    FILE *f;
    size_t n;
    unsigned long e;
    int err;

    f = fopen(path, "rb");
    if (f == NULL) {
        LOG_ERROR("hsm.chain_unreadable", "file=%s", path);
        return AGW_ERR_IO;
    }
    err = AGW_ERR_NOMEM;
    s->chain_pem = malloc(HSM_MAX_CHAIN_LEN + 1);
    if (s->chain_pem == NULL)
        goto fail;
    n = fread(s->chain_pem, 1, HSM_MAX_CHAIN_LEN + 1, f);
    err = AGW_ERR_IO;
    if (ferror(f))
        goto fail;
    err = AGW_ERR_BAD_INPUT;
    if (n > HSM_MAX_CHAIN_LEN || memchr(s->chain_pem, '\0', n) != NULL)
        goto fail;
    s->chain_pem[n] = '\0';
    s->chain_len = n;
    err = AGW_ERR_NOMEM;
    bio = BIO_new_mem_buf(s->chain_pem, (int)n);
    if (bio == NULL)
        goto fail;
    err = AGW_ERR_BAD_INPUT;
    s->ca_cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (s->ca_cert == NULL)
        goto fail;
    for (extra = PEM_read_bio_X509(bio, NULL, NULL, NULL); extra != NULL;
         extra = PEM_read_bio_X509(bio, NULL, NULL, NULL))
        X509_free(extra);
    e = ERR_peek_last_error(); /* the end of the file, or a broken certificate? */
    if (ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE)
        goto fail;
    err = 0;
fail:
    if (err == AGW_ERR_BAD_INPUT)
        LOG_ERROR("hsm.chain_bad", "file=%s want=PEM certificates, CA first", path);
    ERR_clear_error();
    BIO_free(bio);
    fclose(f);
    return err;
}

/* Validates cfg and copies what the signer keeps. */
static int config_copy(struct hsm_signer *s, const struct hsm_config *cfg, const char *pin)
{
    unsigned char *id = NULL;
    long id_len = 0;
    size_t pin_len = strnlen(pin, HSM_MAX_PIN_LEN + 1);
    int err;

    if (cfg->ref.module == NULL || cfg->ref.module[0] == '\0' || cfg->key_label == NULL ||
        cfg->key_label[0] == '\0' || pin_len == 0 || pin_len > HSM_MAX_PIN_LEN ||
        cfg->n_workers > HSM_MAX_WORKERS || cfg->timeout_ms > HSM_MAX_TIMEOUT_MS ||
        hsm_token_match(cfg->ref.token, NULL, NULL, NULL, NULL) < 0)
        return AGW_ERR_BAD_INPUT;
    if (cfg->key_id_hex != NULL) {
        id = OPENSSL_hexstr2buf(cfg->key_id_hex, &id_len);
        ERR_clear_error();
        if (id == NULL || id_len <= 0 || id_len > HSM_MAX_KEY_ID_LEN) {
            OPENSSL_free(id);
            return AGW_ERR_BAD_INPUT;
        }
    }
    err = params_set(&s->params, cfg->ref.module, cfg->ref.token, cfg->key_label, id,
                     (size_t)id_len, pin);
    OPENSSL_free(id);
    if (err != 0)
        return err;
    s->n_workers = cfg->n_workers != 0 ? cfg->n_workers : HSM_DEFAULT_WORKERS;
    s->timeout_ms = cfg->timeout_ms != 0 ? cfg->timeout_ms : HSM_DEFAULT_TIMEOUT_MS;
    s->max_queue = cfg->max_queue != 0 ? cfg->max_queue : HSM_DEFAULT_MAX_QUEUE;
    s->connect_timeout_ms = s->timeout_ms > HSM_CONNECT_MIN_MS ? s->timeout_ms : HSM_CONNECT_MIN_MS;
    s->precheck = cfg->precheck;
    s->precheck_arg = cfg->precheck_arg;
    s->cert_libctx = cfg->cert_libctx;
    return 0;
}

/* A software key of the signer's type: hsm_tbs_crl() signs CRL templates with it. */
static int dummy_make(struct hsm_signer *s)
{
    switch (s->alg) {
    case HSM_KEY_EC_P256:
        s->dummy = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        break;
    case HSM_KEY_EC_P384:
        s->dummy = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
        break;
    default: /* the AlgorithmIdentifier of RSA does not depend on the size */
        s->dummy = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
        break;
    }
    ERR_clear_error();
    return s->dummy != NULL ? 0 : AGW_ERR_NOMEM;
}

int hsm_signer_new(const struct hsm_config *cfg, const char *pin, struct hsm_signer **out)
{
    struct hsm_signer *s = NULL;
    struct conn *c = NULL;
    struct stat st;
    int err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (cfg == NULL || pin == NULL)
        return AGW_ERR_BAD_INPUT;
    pthread_once(&strings_once, strings_load);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return AGW_ERR_NOMEM;
    atomic_init(&s->ready, false);
    err = AGW_ERR_NOMEM;
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        free(s);
        return AGW_ERR_NOMEM;
    }
    if (cond_init_monotonic(&s->work_cv) != 0) {
        pthread_mutex_destroy(&s->lock);
        free(s);
        return AGW_ERR_NOMEM;
    }
    if (cond_init_monotonic(&s->state_cv) != 0) {
        pthread_cond_destroy(&s->work_cv);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return AGW_ERR_NOMEM;
    }
    s->sync_ok = true;
    err = config_copy(s, cfg, pin);
    if (err != 0)
        goto fail;
    if (cfg->ca_chain_file != NULL) {
        err = chain_load(s, cfg->ca_chain_file);
        if (err != 0)
            goto fail;
    }
    /* A missing file is a config error; libp11 would also print dlerror() to stderr. */
    if (strchr(s->params.module, '/') != NULL && stat(s->params.module, &st) != 0) {
        LOG_ERROR("hsm.module_missing", "module=%s", s->params.module);
        err = AGW_ERR_BAD_INPUT;
        goto fail;
    }
    err = connect_within(&s->params, s->connect_timeout_ms, &c);
    if (err == AGW_ERR_HSM_UNAVAILABLE && cfg->start_unavailable && s->ca_cert != NULL)
        err = 0; /* c stays NULL: the reconnect thread takes over */
    if (err != 0)
        goto fail;
    err = AGW_ERR_BAD_INPUT;
    if (s->ca_cert != NULL)
        s->pub = X509_get_pubkey(s->ca_cert);
    else if (EVP_PKEY_up_ref(c->pub) == 1)
        s->pub = c->pub;
    if (s->pub == NULL)
        goto fail;
    if (c != NULL) {
        s->alg = c->alg;
        err = conn_check(s, c);
    } else {
        err = alg_of(s->pub, &s->alg); /* the token's key is checked against it on connect */
    }
    if (err == 0)
        err = dummy_make(s);
    if (err != 0)
        goto fail;
    if (c != NULL) {
        c->refs = 1;
        s->conn = c;
        c = NULL;
        atomic_store(&s->ready, true);
    }
    err = threads_start(s);
    if (err != 0) {
        if (!threads_stop(s)) /* idle threads stop at once; orphaned would free s itself */
            signer_destroy(s);
        return err;
    }
    if (atomic_load(&s->ready))
        LOG_INFO("hsm.signer_ready", "token=%s label=%s alg=%s workers=%u timeout_ms=%u",
                 s->params.token, s->params.key_label, hsm_key_alg_name(s->alg), s->n_workers,
                 s->timeout_ms);
    else
        LOG_WARN("hsm.start_unavailable",
                 "token=%s label=%s alg=%s: the token does not answer; started not ready, "
                 "reconnecting in the background",
                 s->params.token, s->params.key_label, hsm_key_alg_name(s->alg));
    *out = s;
    return 0;
fail:
    conn_close(c);
    signer_destroy(s);
    return err;
}

void hsm_signer_free(struct hsm_signer *s)
{
    if (s == NULL)
        return;
    if (threads_stop(s))
        return; /* orphaned: the last thread to come back frees s */
    signer_destroy(s);
}

/* ---------------------------------------------------------------- calls */

static int job_new(const struct hsm_request *req, struct job **out)
{
    struct job *j = calloc(1, sizeof(*j));

    *out = NULL;
    if (j == NULL)
        return AGW_ERR_NOMEM;
    if (cond_init_monotonic(&j->done_cv) != 0) {
        free(j);
        return AGW_ERR_NOMEM;
    }
    j->refs = 1;
    j->op = req->op;
    j->tbs = malloc(req->tbs_len);
    if (req->device_class != NULL)
        j->device_class = strdup(req->device_class);
    if (j->tbs == NULL || (req->device_class != NULL && j->device_class == NULL)) {
        job_free(j);
        return AGW_ERR_NOMEM;
    }
    memcpy(j->tbs, req->tbs_der, req->tbs_len);
    j->tbs_len = req->tbs_len;
    *out = j;
    return 0;
}

int hsm_call(struct hsm_signer *s, const struct hsm_request *req, struct hsm_response *resp)
{
    struct job *j = NULL;
    struct timespec until;
    enum job_state state = JOB_QUEUED;
    bool lost = false, last;
    int err;

    if (resp == NULL)
        return AGW_ERR_BAD_INPUT;
    resp->der = NULL;
    resp->der_len = 0;
    err = AGW_ERR_BAD_INPUT;
    if (s == NULL || req == NULL || (req->op != HSM_OP_SIGN_CERT && req->op != HSM_OP_SIGN_CRL) ||
        req->tbs_der == NULL || req->tbs_len == 0 || req->tbs_len > HSM_MAX_TBS_LEN ||
        (req->device_class != NULL &&
         strnlen(req->device_class, HSM_MAX_DEVICE_CLASS_LEN + 1) > HSM_MAX_DEVICE_CLASS_LEN))
        goto out;
    err = AGW_ERR_HSM_UNAVAILABLE;
    if (!atomic_load(&s->ready))
        goto out; /* reconnecting: answer at once, queue nothing */
    err = job_new(req, &j);
    if (err != 0)
        goto out;
    deadline_after(&until, s->timeout_ms);
    j->until = until;
    pthread_mutex_lock(&s->lock);
    if (s->stopping || !atomic_load(&s->ready) || s->n_queued >= s->max_queue) {
        bool full = s->n_queued >= s->max_queue;

        pthread_mutex_unlock(&s->lock);
        if (full)
            LOG_WARN("hsm.queue_full", "max_queue=%u", s->max_queue);
        err = AGW_ERR_HSM_UNAVAILABLE;
        goto out;
    }
    j->refs = 2; /* ours and the queue's */
    if (s->tail != NULL)
        s->tail->next = j;
    else
        s->head = j;
    s->tail = j;
    s->n_queued++;
    pthread_cond_signal(&s->work_cv);
    while (j->state != JOB_DONE) {
        if (pthread_cond_timedwait(&j->done_cv, &s->lock, &until) == ETIMEDOUT)
            break;
    }
    state = j->state;
    if (state == JOB_DONE) {
        err = j->err;
        resp->der = j->der;
        resp->der_len = j->der_len;
        j->der = NULL;
    } else {
        j->abandoned = true; /* the worker frees it; it is never signed if still queued */
        err = AGW_ERR_HSM_UNAVAILABLE;
        lost = mark_lost_locked(s, NULL); /* the token may hang: reconnect */
    }
    last = --j->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (!last)
        j = NULL;
    if (state != JOB_DONE)
        LOG_WARN("hsm.deadline", "timeout_ms=%u state=%s", s->timeout_ms,
                 state == JOB_QUEUED ? "queued" : "running");
    if (lost)
        LOG_WARN("hsm.lost", "reason=deadline ckr=0x0 retry_in_ms=0");
out:
    job_free(j);
    resp->err = err;
    return err;
}

/* ---------------------------------------------------------------- templates */

static int sig_alg_set(const struct hsm_signer *s, X509_ALGOR *alg)
{
    int nid = NID_sha256WithRSAEncryption, ptype = V_ASN1_NULL; /* RFC 4055: NULL params */

    if (s->alg == HSM_KEY_EC_P256 || s->alg == HSM_KEY_EC_P384) {
        nid = s->alg == HSM_KEY_EC_P256 ? NID_ecdsa_with_SHA256 : NID_ecdsa_with_SHA384;
        ptype = V_ASN1_UNDEF; /* RFC 5758 §3.2: parameters absent */
    }
    return X509_ALGOR_set0(alg, OBJ_nid2obj(nid), ptype, NULL) == 1 ? 0 : AGW_ERR_NOMEM;
}

int hsm_tbs_cert(const struct hsm_signer *s, X509 *x, unsigned char **der, size_t *der_len)
{
    static const unsigned char placeholder[1] = {0};
    const ASN1_BIT_STRING *sig;
    const X509_ALGOR *alg;
    int len, err;

    if (der == NULL || der_len == NULL)
        return AGW_ERR_BAD_INPUT;
    *der = NULL;
    *der_len = 0;
    if (s == NULL || x == NULL)
        return AGW_ERR_BAD_INPUT;
    X509_get0_signature(&sig, &alg, x);
    /* OpenSSL offers no setters: these fields are x's own, which we were given to modify */
    err = sig_alg_set(s, (X509_ALGOR *)X509_get0_tbs_sigalg(x));
    if (err == 0)
        err = sig_alg_set(s, (X509_ALGOR *)alg);
    if (err == 0 && ASN1_BIT_STRING_set((ASN1_BIT_STRING *)sig, (unsigned char *)placeholder,
                                        (int)sizeof(placeholder)) != 1)
        err = AGW_ERR_NOMEM;
    if (err == 0 && i2d_re_X509_tbs(x, NULL) <= 0) /* re-encode: the cached TBS is stale */
        err = AGW_ERR_BAD_INPUT;
    if (err == 0) {
        len = i2d_X509(x, der);
        if (len <= 0)
            err = AGW_ERR_BAD_INPUT;
        else
            *der_len = (size_t)len;
    }
    ERR_clear_error();
    return err;
}

/*
 * OpenSSL 3.0 has no getter for a CRL's inner AlgorithmIdentifier (X509_CRL_get0_tbs_sigalg()
 * came later), so the template is signed with a throwaway software key of the same type: that
 * sets both fields, and its signature is the placeholder the token replaces.
 */
int hsm_tbs_crl(const struct hsm_signer *s, X509_CRL *crl, unsigned char **der, size_t *der_len)
{
    int len, err = 0;

    if (der == NULL || der_len == NULL)
        return AGW_ERR_BAD_INPUT;
    *der = NULL;
    *der_len = 0;
    if (s == NULL || crl == NULL)
        return AGW_ERR_BAD_INPUT;
    if (X509_CRL_sign(crl, s->dummy, md_of(s->alg)) <= 0)
        err = AGW_ERR_BAD_INPUT;
    if (err == 0) {
        len = i2d_X509_CRL(crl, der);
        if (len <= 0)
            err = AGW_ERR_BAD_INPUT;
        else
            *der_len = (size_t)len;
    }
    ERR_clear_error();
    return err;
}

/* ---------------------------------------------------------------- accessors */

const X509 *hsm_ca_cert(const struct hsm_signer *s)
{
    return s != NULL ? s->ca_cert : NULL;
}

const char *hsm_ca_chain_pem(const struct hsm_signer *s, size_t *len)
{
    if (len != NULL)
        *len = s != NULL ? s->chain_len : 0;
    return s != NULL ? s->chain_pem : NULL;
}

enum hsm_key_alg hsm_signer_alg(const struct hsm_signer *s)
{
    return s->alg;
}

int hsm_signer_pubkey(const struct hsm_signer *s, unsigned char **der, size_t *der_len)
{
    int len;

    if (der == NULL || der_len == NULL)
        return AGW_ERR_BAD_INPUT;
    *der = NULL;
    *der_len = 0;
    if (s == NULL)
        return AGW_ERR_BAD_INPUT;
    len = i2d_PUBKEY(s->pub, der);
    if (len <= 0) {
        ERR_clear_error();
        return AGW_ERR_NOMEM;
    }
    *der_len = (size_t)len;
    return 0;
}

int hsm_signer_ready(const struct hsm_signer *s)
{
    return s != NULL && atomic_load(&s->ready) ? 0 : AGW_ERR_HSM_UNAVAILABLE;
}

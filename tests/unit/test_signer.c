/*
 * tests/unit/test_signer.c - hsm/signer.c and hsm/util.c against a fresh SoftHSM2 token per test:
 * key made with hsm_key_generate(), a self-signed CA made by the signer itself in ceremony mode,
 * then a second signer with that chain file. Covers concurrent signing (8 threads, EC and RSA),
 * token files moved away and back, the refusals at start-up, CRLs, the precheck, the job
 * deadline and the full queue. The only clock checks are upper bounds on "returns within the
 * deadline", which is what the deadline promises.
 */
#include "hsm/hsm.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/err.h"
#include "common/log.h"
#include "hsm/internal.h"
#include "tests/check.h"
#include "tests/testlib.h"

#define SO_PIN    "so-pin-1234"
#define USER_PIN  "user-pin-5678"
#define LABEL     "signer-test"
#define KEY_LABEL "ca"
#define SLACK_MS  1500 /* scheduling under ASan on a loaded 2-core box */

/* ---------------------------------------------------------------- helpers */

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    int ok;

    if (f == NULL)
        return -1;
    ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static X509_NAME *name_cn(const char *cn)
{
    X509_NAME *n = X509_NAME_new();

    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    return n;
}

static void add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
}

/* A certificate template: issuer NULL means self-issued. */
static X509 *cert_template(const X509_NAME *issuer, const char *cn, EVP_PKEY *pub, long serial,
                           bool is_ca)
{
    X509 *x = X509_new();
    X509_NAME *subject = name_cn(cn);

    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_set_subject_name(x, subject);
    X509_set_issuer_name(x, issuer != NULL ? issuer : subject);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, pub);
    if (is_ca) {
        add_ext(x, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(x, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(x, NID_key_usage, "critical,digitalSignature");
    }
    X509_NAME_free(subject);
    return x;
}

/* hsm_tbs_cert + hsm_call; *out owns the signed certificate on success. */
static int sign_cert(struct hsm_signer *s, X509 *tmpl, const char *device_class, X509 **out)
{
    struct hsm_request req = {HSM_OP_SIGN_CERT, device_class, NULL, 0};
    struct hsm_response resp;
    unsigned char *tbs = NULL;
    const unsigned char *p;
    size_t tbs_len = 0;
    int err;

    *out = NULL;
    err = hsm_tbs_cert(s, tmpl, &tbs, &tbs_len);
    if (err != 0)
        return err;
    req.tbs_der = tbs;
    req.tbs_len = tbs_len;
    err = hsm_call(s, &req, &resp);
    OPENSSL_free(tbs);
    if (err != 0) {
        if (resp.der != NULL || resp.der_len != 0 || resp.err != err)
            return AGW_ERR_INTERNAL; /* a failed call must not return bytes */
        return err;
    }
    p = resp.der;
    *out = d2i_X509(NULL, &p, (long)resp.der_len);
    free(resp.der);
    return *out != NULL ? 0 : AGW_ERR_BAD_INPUT;
}

static EVP_PKEY *signer_pub(struct hsm_signer *s)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    size_t len = 0;
    EVP_PKEY *pub = NULL;

    if (hsm_signer_pubkey(s, &der, &len) == 0) {
        p = der;
        pub = d2i_PUBKEY(NULL, &p, (long)len);
    }
    OPENSSL_free(der);
    return pub;
}

static int sig_nid_of(enum hsm_key_alg alg)
{
    switch (alg) {
    case HSM_KEY_EC_P256:
        return NID_ecdsa_with_SHA256;
    case HSM_KEY_EC_P384:
        return NID_ecdsa_with_SHA384;
    default:
        return NID_sha256WithRSAEncryption;
    }
}

/* Sign one leaf with s and check it against the CA certificate. */
static int sign_leaf_ok(struct hsm_signer *s, const char *device_class, long serial)
{
    const X509 *ca = hsm_ca_cert(s);
    EVP_PKEY *leaf_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *tmpl = cert_template(X509_get_subject_name(ca), "leaf", leaf_key, serial, false);
    X509 *cert = NULL;
    int err = sign_cert(s, tmpl, device_class, &cert);

    if (err == 0 && (X509_verify(cert, X509_get0_pubkey(ca)) != 1 ||
                     X509_get_signature_nid(cert) != sig_nid_of(hsm_signer_alg(s))))
        err = AGW_ERR_INTERNAL;
    X509_free(cert);
    X509_free(tmpl);
    EVP_PKEY_free(leaf_key);
    return err;
}

/* ---------------------------------------------------------------- fixture */

struct fx {
    char dir[1024];
    char tokens[1100];
    char chain[1100];
    struct hsm_config cfg;
};

/* Fresh token with one CA key (label "ca", id 01); cfg in ceremony mode. */
static int fx_token(struct fx *f, enum hsm_key_alg alg)
{
    static const unsigned char id[1] = {0x01};
    unsigned char *pub = NULL;
    size_t pub_len = 0;
    int err;

    memset(f, 0, sizeof(*f));
    if (tl_tmpdir(f->dir, sizeof(f->dir)) != 0 || tl_softhsm_setup(f->dir) != 0)
        return -1;
    snprintf(f->tokens, sizeof(f->tokens), "%s/tokens", f->dir);
    snprintf(f->chain, sizeof(f->chain), "%s/ca.pem", f->dir);
    f->cfg.ref.module = tl_softhsm_module();
    f->cfg.ref.token = LABEL;
    f->cfg.key_label = KEY_LABEL;
    f->cfg.key_id_hex = "01";
    f->cfg.timeout_ms = 3000;
    if (hsm_token_init(f->cfg.ref.module, LABEL, SO_PIN, USER_PIN) != 0)
        return -1;
    err = hsm_key_generate(&f->cfg.ref, USER_PIN, alg, KEY_LABEL, id, sizeof(id), &pub, &pub_len);
    OPENSSL_free(pub);
    return err == 0 ? 0 : -1;
}

/* The ceremony: the signer signs its own root, which becomes cfg's chain file. */
static int fx_ca(struct fx *f)
{
    struct hsm_signer *s = NULL;
    EVP_PKEY *pub = NULL;
    X509 *tmpl = NULL, *ca = NULL;
    FILE *out;
    int err;

    f->cfg.ca_chain_file = NULL;
    err = hsm_signer_new(&f->cfg, USER_PIN, &s);
    if (err != 0)
        return err;
    err = AGW_ERR_INTERNAL;
    if (hsm_ca_cert(s) != NULL || hsm_ca_chain_pem(s, NULL) != NULL)
        goto fail; /* ceremony mode has neither */
    pub = signer_pub(s);
    if (pub == NULL)
        goto fail;
    tmpl = cert_template(NULL, "acmegw test CA", pub, 1, true);
    err = sign_cert(s, tmpl, NULL, &ca);
    if (err != 0)
        goto fail;
    err = AGW_ERR_INTERNAL;
    if (X509_verify(ca, pub) != 1)
        goto fail;
    out = fopen(f->chain, "w");
    if (out == NULL)
        goto fail;
    PEM_write_X509(out, ca);
    fclose(out);
    f->cfg.ca_chain_file = f->chain;
    err = 0;
fail:
    X509_free(ca);
    X509_free(tmpl);
    EVP_PKEY_free(pub);
    hsm_signer_free(s);
    return err;
}

static int fx_setup(struct fx *f, enum hsm_key_alg alg)
{
    return fx_token(f, alg) == 0 && fx_ca(f) == 0 ? 0 : -1;
}

static void fx_done(struct fx *f)
{
    tl_rmtree(f->dir);
}

/* Polls hsm_signer_ready() for up to max_ms. */
static int wait_ready(struct hsm_signer *s, unsigned max_ms)
{
    double end = now_ms() + max_ms;

    while (hsm_signer_ready(s) != 0 && now_ms() < end)
        sleep_ms(20);
    return hsm_signer_ready(s);
}

/* ---------------------------------------------------------------- util.c */

static void key_alg_names_round_trip(void)
{
    static const char *const names[] = {"ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"};
    enum hsm_key_alg alg = HSM_KEY_EC_P256;
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        CHECK_INT(hsm_key_alg_parse(names[i], &alg), 0);
        CHECK_STR(hsm_key_alg_name(alg), names[i]);
    }
    CHECK_INT(hsm_key_alg_parse("rsa-1024", &alg), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_key_alg_parse("EC-P256", &alg), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_key_alg_parse(NULL, &alg), AGW_ERR_BAD_INPUT);
    CHECK_STR(hsm_key_alg_name((enum hsm_key_alg)99), "unknown");
}

static void secret_read_file_and_env(void)
{
    char dir[1024], path[1100], big[300];
    char *pin = NULL;

    CHECK_INT(tl_tmpdir(dir, sizeof(dir)), 0);
    snprintf(path, sizeof(path), "%s/pin", dir);

    CHECK_INT(write_file(path, "1234\r\nsecond line\n"), 0);
    CHECK_INT(hsm_secret_read(path, NULL, &pin), 0);
    CHECK_STR(pin, "1234");
    hsm_secret_free(pin);
    pin = NULL;

    CHECK_INT(write_file(path, "no-newline"), 0);
    CHECK_INT(hsm_secret_read(path, "IGNORED", &pin), 0);
    CHECK_STR(pin, "no-newline");
    hsm_secret_free(pin);
    pin = NULL;

    CHECK_INT(write_file(path, "\n1234\n"), 0); /* empty first line */
    CHECK_INT(hsm_secret_read(path, NULL, &pin), AGW_ERR_BAD_INPUT);
    CHECK(pin == NULL);

    memset(big, 'x', 256);
    big[256] = '\n';
    big[257] = '\0';
    CHECK_INT(write_file(path, big), 0); /* exactly the cap */
    CHECK_INT(hsm_secret_read(path, NULL, &pin), 0);
    CHECK_INT(pin != NULL ? strlen(pin) : 0, 256);
    hsm_secret_free(pin);
    pin = NULL;
    big[256] = 'x'; /* 257 bytes, no newline */
    CHECK_INT(write_file(path, big), 0);
    CHECK_INT(hsm_secret_read(path, NULL, &pin), AGW_ERR_BAD_INPUT);

    snprintf(path, sizeof(path), "%s/missing", dir);
    CHECK_INT(hsm_secret_read(path, NULL, &pin), AGW_ERR_IO);

    setenv("ACMEGW_TEST_PIN", "env-pin\n", 1);
    CHECK_INT(hsm_secret_read(NULL, "ACMEGW_TEST_PIN", &pin), 0);
    CHECK_STR(pin, "env-pin");
    hsm_secret_free(pin);
    pin = NULL;
    setenv("ACMEGW_TEST_PIN", "", 1);
    CHECK_INT(hsm_secret_read(NULL, "ACMEGW_TEST_PIN", &pin), AGW_ERR_BAD_INPUT);
    unsetenv("ACMEGW_TEST_PIN");
    CHECK_INT(hsm_secret_read(NULL, "ACMEGW_TEST_PIN", &pin), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_secret_read(NULL, NULL, &pin), AGW_ERR_BAD_INPUT);
    CHECK(pin == NULL);
    hsm_secret_free(NULL);
    tl_rmtree(dir);
}

static void token_match_label_and_uri(void)
{
    const char *label = "CA one                          "; /* padded like CK_TOKEN_INFO */

    CHECK_INT(hsm_token_match("CA one", label, "1234", "SoftHSM project", "SoftHSM v2"), 1);
    CHECK_INT(hsm_token_match("CA two", label, "1234", "SoftHSM project", "SoftHSM v2"), 0);
    CHECK_INT(hsm_token_match("pkcs11:token=CA%20one", label, NULL, NULL, NULL), 1);
    CHECK_INT(hsm_token_match("PKCS11:token=CA%20one;serial=1234", label, "1234", NULL, NULL), 1);
    CHECK_INT(hsm_token_match("pkcs11:token=CA%20one;serial=9999", label, "1234", NULL, NULL), 0);
    CHECK_INT(hsm_token_match("pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;"
                              "object=ca;type=private?pin-source=file:x",
                              label, "1234", "SoftHSM project", "SoftHSM v2"),
              1);
    CHECK_INT(hsm_token_match("pkcs11:model=other", label, "1234", "SoftHSM project", "v2"), 0);
    CHECK_INT(hsm_token_match("pkcs11:serial=1234", label, NULL, NULL, NULL), 0); /* no serial */
    CHECK_INT(hsm_token_match("pkcs11:", label, NULL, NULL, NULL), 1); /* no constraint */
    CHECK_INT(hsm_token_match("pkcs11:token=CA%2", label, NULL, NULL, NULL), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_token_match("pkcs11:token=CA%zz", label, NULL, NULL, NULL), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_token_match("pkcs11:token=a%00b", label, NULL, NULL, NULL), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_token_match("pkcs11:token=a;token=b", label, NULL, NULL, NULL),
              AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_token_match("pkcs11:tokenCA", label, NULL, NULL, NULL), AGW_ERR_BAD_INPUT);
    /* a malformed tail is an error even after a mismatch */
    CHECK_INT(hsm_token_match("pkcs11:token=x;serial=%", label, NULL, NULL, NULL),
              AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_token_match("", label, NULL, NULL, NULL), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_token_match(NULL, label, NULL, NULL, NULL), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_token_match("CA one", NULL, NULL, NULL, NULL), 0);
}

/* ---------------------------------------------------------------- concurrent signing */

struct sign_worker {
    struct hsm_signer *s;
    pthread_t tid;
    int idx, n, n_ok, n_bad, first_err;
};

static void *sign_worker_main(void *arg)
{
    struct sign_worker *w = arg;
    const X509 *ca = hsm_ca_cert(w->s);
    EVP_PKEY *leaf_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    int want_nid = sig_nid_of(hsm_signer_alg(w->s));
    int i;

    for (i = 0; i < w->n; i++) {
        long serial = 1000L * w->idx + i + 2;
        X509 *tmpl = cert_template(X509_get_subject_name(ca), "leaf", leaf_key, serial, false);
        X509 *cert = NULL;
        int err = sign_cert(w->s, tmpl, "test", &cert);

        if (err == 0 && X509_verify(cert, X509_get0_pubkey(ca)) == 1 &&
            X509_get_signature_nid(cert) == want_nid &&
            ASN1_INTEGER_get(X509_get0_serialNumber(cert)) == serial &&
            X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(ca)) == 0) {
            w->n_ok++;
        } else {
            w->n_bad++;
            if (w->first_err == 0)
                w->first_err = err != 0 ? err : AGW_ERR_INTERNAL;
        }
        X509_free(cert);
        X509_free(tmpl);
    }
    EVP_PKEY_free(leaf_key);
    return NULL;
}

static void sign_many(enum hsm_key_alg alg, int n_threads, int per_thread)
{
    struct sign_worker w[8];
    struct hsm_signer *s = NULL;
    struct fx f;
    EVP_PKEY *pub;
    double t0, t1;
    int i, n_ok = 0, n_bad = 0, first_err = 0;

    CHECK_INT(fx_setup(&f, alg), 0);
    f.cfg.n_workers = 4;
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    if (s == NULL)
        goto done;
    CHECK_INT(hsm_signer_alg(s), alg);
    CHECK_INT(hsm_signer_ready(s), 0);
    pub = signer_pub(s);
    CHECK(pub != NULL && EVP_PKEY_eq(pub, X509_get0_pubkey(hsm_ca_cert(s))) == 1);
    EVP_PKEY_free(pub);
    {
        size_t len = 0;
        const char *pem = hsm_ca_chain_pem(s, &len);

        CHECK(pem != NULL && len > 0 && strlen(pem) == len &&
              strstr(pem, "-----BEGIN CERTIFICATE-----") == pem);
    }
    t0 = now_ms();
    for (i = 0; i < n_threads; i++) {
        w[i] = (struct sign_worker){.s = s, .idx = i, .n = per_thread};
        pthread_create(&w[i].tid, NULL, sign_worker_main, &w[i]);
    }
    for (i = 0; i < n_threads; i++) {
        pthread_join(w[i].tid, NULL);
        n_ok += w[i].n_ok;
        n_bad += w[i].n_bad;
        if (first_err == 0)
            first_err = w[i].first_err;
    }
    t1 = now_ms();
    CHECK_INT(n_ok, n_threads * per_thread);
    CHECK_INT(n_bad, 0);
    CHECK_INT(first_err, 0);
    fprintf(stderr, "  %s: %d threads x %d certificates in %.0f ms = %.0f sig/s\n",
            hsm_key_alg_name(alg), n_threads, per_thread, t1 - t0,
            (double)n_ok * 1000.0 / (t1 - t0));
done:
    hsm_signer_free(s);
    fx_done(&f);
}

static void signs_from_8_threads_ec_p256(void)
{
    sign_many(HSM_KEY_EC_P256, 8, 50);
}

static void signs_from_8_threads_rsa_2048(void)
{
    sign_many(HSM_KEY_RSA_2048, 8, 50);
}

static void signs_from_8_threads_rsa_3072(void)
{
    sign_many(HSM_KEY_RSA_3072, 8, 10);
}

static void signs_from_8_threads_ec_p384(void)
{
    sign_many(HSM_KEY_EC_P384, 8, 10);
}

/* ---------------------------------------------------------------- token loss */

/* The token's files are at away: a few reconnect attempts fail, then they are moved back and the
 * signer is ready again by itself and signs (serial). */
static void back_and_signing(struct hsm_signer *s, const struct fx *f, const char *away, int serial)
{
    sleep_ms(400); /* let a few reconnect attempts fail */
    CHECK_INT(hsm_signer_ready(s), AGW_ERR_HSM_UNAVAILABLE);
    CHECK_INT(rename(away, f->tokens), 0);
    CHECK_INT(wait_ready(s, 10000), 0);
    CHECK_INT(sign_leaf_ok(s, "test", serial), 0);
}

static void token_moved_away_then_back_recovers(void)
{
    struct hsm_signer *s = NULL;
    char away[1200];
    struct fx f;
    double t0, elapsed;

    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    snprintf(away, sizeof(away), "%s.away", f.tokens);
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    if (s == NULL)
        goto done;
    CHECK_INT(sign_leaf_ok(s, "test", 2), 0);

    CHECK_INT(rename(f.tokens, away), 0);
    t0 = now_ms();
    CHECK_INT(sign_leaf_ok(s, "test", 3), AGW_ERR_HSM_UNAVAILABLE);
    elapsed = now_ms() - t0;
    CHECK(elapsed <= f.cfg.timeout_ms + SLACK_MS);
    /* now known lost: answered at once, without queueing, while the files are away */
    CHECK_INT(hsm_signer_ready(s), AGW_ERR_HSM_UNAVAILABLE);
    CHECK_INT(sign_leaf_ok(s, "test", 4), AGW_ERR_HSM_UNAVAILABLE);
    back_and_signing(s, &f, away, 5);
done:
    hsm_signer_free(s);
    fx_done(&f);
}

/* Two signers on one module (two issuers in one token, as quickstart makes): when one reconnects,
 * its new C_Initialize ends the other's sessions (SoftHSM2 answers CKR_SESSION_HANDLE_INVALID).
 * The other's next signature must not fail for it: it reconnects and signs again within its
 * deadline. */
static void other_signer_on_module_survives_a_reconnect(void)
{
    struct hsm_signer *a = NULL, *b = NULL;
    char away[1200];
    struct fx f;

    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    snprintf(away, sizeof(away), "%s.away", f.tokens);
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &a), 0);
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &b), 0);
    if (a == NULL || b == NULL)
        goto done;
    CHECK_INT(sign_leaf_ok(a, "test", 2), 0);
    CHECK_INT(sign_leaf_ok(b, "test", 3), 0);
    CHECK_INT(rename(f.tokens, away), 0);
    CHECK_INT(sign_leaf_ok(a, "test", 4), AGW_ERR_HSM_UNAVAILABLE); /* a finds the token gone */
    CHECK_INT(rename(away, f.tokens), 0);
    CHECK_INT(wait_ready(a, 10000), 0); /* a reconnected: a new C_Initialize on the module */
    CHECK_INT(sign_leaf_ok(a, "test", 5), 0);
    CHECK_INT(sign_leaf_ok(b, "test", 6), 0); /* b's session was ended under it: retried */
    CHECK_INT(sign_leaf_ok(b, "test", 7), 0);
    CHECK_INT(sign_leaf_ok(a, "test", 8), 0); /* and b's reconnect did not break a */
done:
    hsm_signer_free(b);
    hsm_signer_free(a);
    fx_done(&f);
}

/* start_unavailable: the token is away when the signer starts (the gateway's start while a network
 * HSM is down): the signer starts not ready, answers at once, and is ready when the token is back.
 * Without the flag, or without a CA certificate to take the key's algorithm from, it still fails;
 * a wrong PIN is still refused at start when the token answers. */
static void start_while_token_away_then_ready(void)
{
    struct hsm_signer *s = NULL;
    struct hsm_config cfg;
    char away[1200];
    struct fx f;
    double t0;

    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    snprintf(away, sizeof(away), "%s.away", f.tokens);
    cfg = f.cfg;
    cfg.start_unavailable = true;
    CHECK_INT(hsm_signer_new(&cfg, "wrong-pin", &s), AGW_ERR_PIN_INCORRECT);
    CHECK_INT(rename(f.tokens, away), 0);
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), AGW_ERR_HSM_UNAVAILABLE); /* flag unset */
    cfg.ca_chain_file = NULL;
    CHECK_INT(hsm_signer_new(&cfg, USER_PIN, &s), AGW_ERR_HSM_UNAVAILABLE); /* no certificate */
    cfg.ca_chain_file = f.cfg.ca_chain_file;
    CHECK_INT(hsm_signer_new(&cfg, USER_PIN, &s), 0);
    if (s == NULL) {
        (void)rename(away, f.tokens);
        goto done;
    }
    CHECK_INT(hsm_signer_ready(s), AGW_ERR_HSM_UNAVAILABLE);
    CHECK_INT(hsm_signer_alg(s), HSM_KEY_EC_P256); /* from the CA certificate */
    CHECK(hsm_ca_cert(s) != NULL);
    t0 = now_ms();
    CHECK_INT(sign_leaf_ok(s, "test", 2), AGW_ERR_HSM_UNAVAILABLE);
    CHECK(now_ms() - t0 < 100); /* not queued: answered at once */
    back_and_signing(s, &f, away, 3);
done:
    hsm_signer_free(s);
    fx_done(&f);
}

/* Does the file at path contain needle (after the line containing after, if not NULL)? */
static bool file_has(const char *path, const char *after, const char *needle)
{
    static char buf[1 << 16];
    const char *from = buf;
    FILE *f = fopen(path, "r");
    size_t n;

    if (f == NULL)
        return false;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (after != NULL) {
        from = strstr(buf, after);
        if (from == NULL)
            return false;
        from += strlen(after);
    }
    return strstr(from, needle) != NULL;
}

static void wrong_pin_on_reconnect_is_not_retried(void)
{
    struct hsm_signer *s = NULL;
    char away[1200], log_path[1200], cmd[4096];
    FILE *log_file = NULL;
    double end;
    struct fx f;

    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    snprintf(away, sizeof(away), "%s.away", f.tokens);
    snprintf(log_path, sizeof(log_path), "%s/signer.log", f.dir);
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    if (s == NULL)
        goto done;
    CHECK_INT(sign_leaf_ok(s, "test", 2), 0);
    /* someone changes the user PIN behind our back (PINs on argv: tests only) */
    snprintf(cmd, sizeof(cmd),
             "pkcs11-tool --module '%s' --token-label " LABEL " --login --pin " USER_PIN
             " --change-pin --new-pin changed-pin-1 >/dev/null 2>&1",
             f.cfg.ref.module);
    CHECK_INT(system(cmd), 0);
    log_file = fopen(log_path, "w");
    if (log_file == NULL)
        goto done;
    setvbuf(log_file, NULL, _IOLBF, 0);
    agw_log_set_file(log_file);
    /* force a reconnect: the login with the old PIN must fail and stop the retries */
    CHECK_INT(rename(f.tokens, away), 0);
    CHECK_INT(sign_leaf_ok(s, "test", 3), AGW_ERR_HSM_UNAVAILABLE);
    CHECK_INT(rename(away, f.tokens), 0);
    end = now_ms() + 10000;
    while (!file_has(log_path, NULL, "hsm.reconnect_stopped") && now_ms() < end)
        sleep_ms(20);
    CHECK(file_has(log_path, NULL, "hsm.reconnect_stopped"));
    CHECK(file_has(log_path, NULL, "ckr=0xa0"));
    sleep_ms(1000);                                              /* several back-off periods */
    CHECK(!file_has(log_path, "hsm.reconnect_stopped", "hsm.")); /* no attempt since */
    CHECK_INT(hsm_signer_ready(s), AGW_ERR_HSM_UNAVAILABLE);
    CHECK_INT(sign_leaf_ok(s, "test", 4), AGW_ERR_HSM_UNAVAILABLE);
    CHECK(!file_has(log_path, NULL, "changed-pin-1") && !file_has(log_path, NULL, USER_PIN));
done:
    hsm_signer_free(s);
    agw_log_set_file(NULL);
    if (log_file != NULL)
        fclose(log_file);
    fx_done(&f);
}

/* ---------------------------------------------------------------- start-up refusals */

/* Runs hsm_signer_new with log lines captured; returns its result, *n_lines the line count. */
static int new_logged(const struct hsm_config *cfg, const char *pin, char **log_text)
{
    struct hsm_signer *s = (struct hsm_signer *)&s; /* must be reset to NULL on failure */
    size_t len = 0;
    FILE *f;
    int err;

    *log_text = NULL;
    f = open_memstream(log_text, &len);
    agw_log_set_file(f);
    err = hsm_signer_new(cfg, pin, &s);
    agw_log_set_file(NULL);
    fclose(f);
    if (err != 0 && s != NULL)
        return AGW_ERR_INTERNAL;
    hsm_signer_free(s);
    return err;
}

static int count_lines(const char *text)
{
    int n = 0;

    for (; text != NULL && *text != '\0'; text++)
        n += *text == '\n';
    return n;
}

static void start_refusals(void)
{
    struct hsm_config cfg;
    struct hsm_signer *s = NULL;
    char other[1200], garbage[1200];
    EVP_PKEY *soft;
    X509 *x;
    FILE *out;
    char *log_text = NULL;
    struct fx f;

    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);

    CHECK_INT(new_logged(&f.cfg, "wrong-pin", &log_text), AGW_ERR_PIN_INCORRECT);
    CHECK(log_text != NULL && strstr(log_text, "hsm.login_failed") != NULL &&
          strstr(log_text, "ckr=0xa0") != NULL && strstr(log_text, "wrong-pin") == NULL);
    free(log_text);

    cfg = f.cfg;
    cfg.ref.module = "/nonexistent/libnothing.so";
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_BAD_INPUT);
    CHECK_INT(count_lines(log_text), 1);
    CHECK(log_text != NULL && strstr(log_text, "hsm.module_missing") != NULL);
    free(log_text);

    cfg.ref.module = f.chain; /* a file, but no PKCS#11 module */
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_HSM_UNAVAILABLE);
    CHECK(log_text != NULL && strstr(log_text, "hsm.load_failed") != NULL);
    free(log_text);

    cfg = f.cfg;
    cfg.key_label = "no-such-key";
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_NOT_FOUND);
    free(log_text);
    cfg = f.cfg;
    cfg.key_id_hex = "02"; /* right label, wrong id */
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_NOT_FOUND);
    free(log_text);
    cfg.key_id_hex = "zz";
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_BAD_INPUT);
    free(log_text);

    cfg = f.cfg;
    cfg.ref.token = "no-such-token";
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_HSM_UNAVAILABLE);
    CHECK(log_text != NULL && strstr(log_text, "hsm.token_not_found") != NULL);
    free(log_text);
    cfg.ref.token = "pkcs11:token=" LABEL ";serial=%zz";
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_BAD_INPUT);
    free(log_text);
    cfg.ref.token = "pkcs11:model=SoftHSM%20v2;token=signer%2dtest"; /* a URI that matches */
    CHECK_INT(hsm_signer_new(&cfg, USER_PIN, &s), 0);
    CHECK(s != NULL && sign_leaf_ok(s, "test", 7) == 0);
    hsm_signer_free(s);
    s = NULL;

    /* a chain file whose certificate belongs to another key */
    snprintf(other, sizeof(other), "%s/other.pem", f.dir);
    soft = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    x = cert_template(NULL, "acmegw test CA", soft, 1, true);
    X509_sign(x, soft, EVP_sha256());
    out = fopen(other, "w");
    if (out != NULL) {
        PEM_write_X509(out, x);
        fclose(out);
    }
    X509_free(x);
    EVP_PKEY_free(soft);
    cfg = f.cfg;
    cfg.ca_chain_file = other;
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_CONFLICT);
    CHECK(log_text != NULL && strstr(log_text, "hsm.key_mismatch") != NULL);
    free(log_text);

    snprintf(garbage, sizeof(garbage), "%s/garbage.pem", f.dir);
    CHECK_INT(write_file(garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
              0);
    cfg.ca_chain_file = garbage;
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_BAD_INPUT);
    free(log_text);
    cfg.ca_chain_file = "/nonexistent/ca.pem";
    CHECK_INT(new_logged(&cfg, USER_PIN, &log_text), AGW_ERR_IO);
    free(log_text);

    CHECK_INT(hsm_signer_new(NULL, USER_PIN, &s), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_signer_new(&f.cfg, "", &s), AGW_ERR_BAD_INPUT);
    CHECK(s == NULL);

    /* and the right everything still works after all of that */
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    CHECK(s != NULL && sign_leaf_ok(s, "test", 8) == 0);
    hsm_signer_free(s);
    fx_done(&f);
}

/* ---------------------------------------------------------------- CRL */

static void crl_signature_verifies(void)
{
    struct hsm_request req = {HSM_OP_SIGN_CRL, NULL, NULL, 0};
    struct hsm_response resp = {0, NULL, 0};
    struct hsm_signer *s = NULL;
    X509_CRL *tmpl = NULL, *crl = NULL;
    X509_REVOKED *rev, *found = NULL;
    ASN1_INTEGER *serial;
    ASN1_TIME *t;
    EVP_PKEY *stranger;
    unsigned char *tbs = NULL;
    const unsigned char *p;
    size_t tbs_len = 0;
    struct fx f;

    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    if (s == NULL)
        goto done;
    tmpl = X509_CRL_new();
    X509_CRL_set_version(tmpl, 1); /* v2 */
    X509_CRL_set_issuer_name(tmpl, X509_get_subject_name(hsm_ca_cert(s)));
    t = X509_gmtime_adj(NULL, 0);
    X509_CRL_set1_lastUpdate(tmpl, t);
    X509_gmtime_adj(t, 86400);
    X509_CRL_set1_nextUpdate(tmpl, t);
    rev = X509_REVOKED_new();
    serial = ASN1_INTEGER_new();
    ASN1_INTEGER_set(serial, 4242);
    X509_REVOKED_set_serialNumber(rev, serial);
    X509_gmtime_adj(t, 0);
    X509_REVOKED_set_revocationDate(rev, t);
    X509_CRL_add0_revoked(tmpl, rev);
    X509_CRL_sort(tmpl);

    CHECK_INT(hsm_tbs_crl(s, tmpl, &tbs, &tbs_len), 0);
    req.tbs_der = tbs;
    req.tbs_len = tbs_len;
    CHECK_INT(hsm_call(s, &req, &resp), 0);
    CHECK_INT(resp.err, 0);
    p = resp.der;
    crl = resp.der != NULL ? d2i_X509_CRL(NULL, &p, (long)resp.der_len) : NULL;
    CHECK(crl != NULL);
    if (crl != NULL) {
        CHECK_INT(X509_CRL_verify(crl, X509_get0_pubkey(hsm_ca_cert(s))), 1);
        CHECK_INT(X509_CRL_get_signature_nid(crl), NID_ecdsa_with_SHA256);
        CHECK_INT(X509_CRL_get0_by_serial(crl, &found, serial), 1);
        stranger = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        CHECK_INT(X509_CRL_verify(crl, stranger), 0); /* the check above can fail */
        EVP_PKEY_free(stranger);
    }
    /* a CRL request that is not a CRL */
    free(resp.der);
    resp.der = NULL;
    req.tbs_len = tbs_len / 2;
    CHECK_INT(hsm_call(s, &req, &resp), AGW_ERR_BAD_INPUT);
    CHECK(resp.der == NULL);
    ASN1_INTEGER_free(serial);
    ASN1_TIME_free(t);
done:
    free(resp.der);
    OPENSSL_free(tbs);
    X509_CRL_free(crl);
    X509_CRL_free(tmpl);
    hsm_signer_free(s);
    fx_done(&f);
}

/* ---------------------------------------------------------------- precheck, deadline, queue */

struct pre_state {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int calls, finished;
    bool entered, open;
    bool key_decoded; /* the last precheck's certificate came with its subject key decoded */
    unsigned sleep_ms;
    char last_class[64];
    char last_cn[64];
};

static int precheck(void *arg, const char *device_class, const X509 *tbs)
{
    struct pre_state *ps = arg;
    const X509_NAME *subject = X509_get_subject_name(tbs);

    pthread_mutex_lock(&ps->lock);
    ps->calls++;
    snprintf(ps->last_class, sizeof(ps->last_class), "%s",
             device_class != NULL ? device_class : "(null)");
    X509_NAME_get_text_by_NID((X509_NAME *)subject, NID_commonName, ps->last_cn,
                              sizeof(ps->last_cn));
    ps->key_decoded = X509_get0_pubkey(tbs) != NULL;
    ERR_clear_error(); /* X509_get0_pubkey() queues an error for a key it has not decoded */
    pthread_mutex_unlock(&ps->lock);
    if (device_class != NULL && strcmp(device_class, "refuse") == 0)
        return AGW_ERR_POLICY_REJECTED;
    if (device_class != NULL && strcmp(device_class, "sleep") == 0)
        sleep_ms(ps->sleep_ms);
    if (device_class != NULL && strcmp(device_class, "gate") == 0) {
        pthread_mutex_lock(&ps->lock);
        ps->entered = true;
        pthread_cond_broadcast(&ps->cv);
        while (!ps->open)
            pthread_cond_wait(&ps->cv, &ps->lock);
        pthread_mutex_unlock(&ps->lock);
    }
    pthread_mutex_lock(&ps->lock);
    ps->finished++;
    pthread_mutex_unlock(&ps->lock);
    return 0;
}

/* Polls until n prechecks have returned, for up to max_ms. */
static int wait_finished(struct pre_state *ps, int n, unsigned max_ms)
{
    double end = now_ms() + max_ms;
    int got;

    for (;;) {
        pthread_mutex_lock(&ps->lock);
        got = ps->finished;
        pthread_mutex_unlock(&ps->lock);
        if (got >= n || now_ms() >= end)
            return got;
        sleep_ms(20);
    }
}

static void pre_state_init(struct pre_state *ps)
{
    memset(ps, 0, sizeof(*ps));
    pthread_mutex_init(&ps->lock, NULL);
    pthread_cond_init(&ps->cv, NULL);
}

static void pre_state_destroy(struct pre_state *ps)
{
    pthread_cond_destroy(&ps->cv);
    pthread_mutex_destroy(&ps->lock);
}

static void precheck_refusal_signs_nothing(void)
{
    struct hsm_signer *s = NULL;
    struct pre_state ps;
    EVP_PKEY *leaf_key;
    X509_NAME *wrong;
    X509 *tmpl, *cert = NULL;
    struct fx f;

    pre_state_init(&ps);
    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    f.cfg.precheck = precheck;
    f.cfg.precheck_arg = &ps;
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    if (s == NULL)
        goto done;
    CHECK_INT(sign_leaf_ok(s, "allow", 2), 0);
    CHECK_INT(ps.calls, 1);
    CHECK_STR(ps.last_class, "allow");
    CHECK_STR(ps.last_cn, "leaf");

    /* sign_cert() also fails if a refused call hands back any bytes */
    CHECK_INT(sign_leaf_ok(s, "refuse", 3), AGW_ERR_POLICY_REJECTED);
    CHECK_INT(ps.calls, 2);
    CHECK_STR(ps.last_class, "refuse");
    CHECK_INT(hsm_signer_ready(s), 0); /* a refusal is not a token loss */

    /* an issuer that is not the CA is refused before the precheck runs */
    leaf_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    wrong = name_cn("not the CA");
    tmpl = cert_template(wrong, "leaf", leaf_key, 9, false);
    CHECK_INT(sign_cert(s, tmpl, "allow", &cert), AGW_ERR_BAD_INPUT);
    CHECK(cert == NULL);
    CHECK_INT(ps.calls, 2);
    X509_free(tmpl);
    X509_NAME_free(wrong);
    EVP_PKEY_free(leaf_key);
done:
    hsm_signer_free(s);
    fx_done(&f);
    pre_state_destroy(&ps);
}

/* With cert_libctx (the gateway passes policy's keyless context) the precheck sees the subject key
 * undecoded, and the signed certificate still carries that key, bit for bit. */
static void cert_decoded_in_the_configured_libctx(void)
{
    OSSL_LIB_CTX *keyless = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *null_prov = keyless != NULL ? OSSL_PROVIDER_load(keyless, "null") : NULL;
    struct hsm_signer *s = NULL;
    struct pre_state ps;
    EVP_PKEY *leaf_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *tmpl = NULL, *cert = NULL;
    struct fx f;

    pre_state_init(&ps);
    CHECK(keyless != NULL && null_prov != NULL);
    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    f.cfg.precheck = precheck;
    f.cfg.precheck_arg = &ps;
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0); /* without: the key comes decoded */
    if (s == NULL)
        goto done;
    CHECK_INT(sign_leaf_ok(s, "allow", 2), 0);
    CHECK(ps.key_decoded);
    hsm_signer_free(s);
    s = NULL;

    f.cfg.cert_libctx = keyless;
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    if (s == NULL)
        goto done;
    tmpl = cert_template(X509_get_subject_name(hsm_ca_cert(s)), "leaf", leaf_key, 3, false);
    CHECK_INT(sign_cert(s, tmpl, "allow", &cert), 0);
    CHECK_INT(ps.calls, 2);
    CHECK(!ps.key_decoded);
    CHECK(cert != NULL && EVP_PKEY_eq(X509_get0_pubkey(cert), leaf_key) == 1);
    CHECK(cert != NULL && X509_verify(cert, X509_get0_pubkey(hsm_ca_cert(s))) == 1);
done:
    X509_free(cert);
    X509_free(tmpl);
    EVP_PKEY_free(leaf_key);
    hsm_signer_free(s);
    fx_done(&f);
    pre_state_destroy(&ps);
    if (null_prov != NULL)
        OSSL_PROVIDER_unload(null_prov);
    OSSL_LIB_CTX_free(keyless);
}

static void deadline_answers_in_time_and_frees_clean(void)
{
    struct hsm_signer *s = NULL;
    struct pre_state ps;
    double t0, elapsed;
    struct fx f;

    pre_state_init(&ps);
    ps.sleep_ms = 700;
    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    f.cfg.precheck = precheck;
    f.cfg.precheck_arg = &ps;
    f.cfg.timeout_ms = 300;
    f.cfg.n_workers = 1;
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    if (s == NULL)
        goto done;
    t0 = now_ms();
    CHECK_INT(sign_leaf_ok(s, "sleep", 2), AGW_ERR_HSM_UNAVAILABLE);
    elapsed = now_ms() - t0;
    CHECK(elapsed >= f.cfg.timeout_ms - 5 && elapsed <= f.cfg.timeout_ms + SLACK_MS);
    CHECK_INT(ps.calls, 1); /* it was picked up, and it is still sleeping */
    /* the job may hang in the token: not ready until a reconnect succeeds */
    CHECK_INT(hsm_signer_ready(s), AGW_ERR_HSM_UNAVAILABLE);
    CHECK_INT(wait_ready(s, 10000), 0);
    CHECK_INT(wait_finished(&ps, 1, 5000), 1); /* the only worker is free again */
    CHECK_INT(sign_leaf_ok(s, "allow", 3), 0);

    /* free while a worker still sleeps in an abandoned job: joined, no leak under ASan */
    CHECK_INT(sign_leaf_ok(s, "sleep", 4), AGW_ERR_HSM_UNAVAILABLE);
done:
    hsm_signer_free(s);
    CHECK_INT(ps.calls, 3);
    fx_done(&f);
    pre_state_destroy(&ps);
}

struct call_thread {
    struct hsm_signer *s;
    const char *device_class;
    long serial;
    pthread_t tid;
    int err;
};

static void *call_thread_main(void *arg)
{
    struct call_thread *c = arg;

    c->err = sign_leaf_ok(c->s, c->device_class, c->serial);
    return NULL;
}

static void full_queue_answers_at_once(void)
{
    struct call_thread a = {NULL, "gate", 2, 0, -1}, b = {NULL, "allow", 3, 0, -1};
    struct hsm_signer *s = NULL;
    struct pre_state ps;
    double t0, elapsed;
    struct fx f;

    pre_state_init(&ps);
    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    f.cfg.precheck = precheck;
    f.cfg.precheck_arg = &ps;
    f.cfg.timeout_ms = 8000;
    f.cfg.n_workers = 1;
    f.cfg.max_queue = 1;
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    if (s == NULL)
        goto done;
    a.s = b.s = s;
    pthread_create(&a.tid, NULL, call_thread_main, &a); /* holds the only worker */
    pthread_mutex_lock(&ps.lock);
    while (!ps.entered)
        pthread_cond_wait(&ps.cv, &ps.lock);
    pthread_mutex_unlock(&ps.lock);
    pthread_create(&b.tid, NULL, call_thread_main, &b); /* fills the queue */
    sleep_ms(300); /* sequencing only: give b time to enqueue */

    t0 = now_ms();
    CHECK_INT(sign_leaf_ok(s, "allow", 4), AGW_ERR_HSM_UNAVAILABLE);
    elapsed = now_ms() - t0;
    CHECK(elapsed < f.cfg.timeout_ms / 4); /* refused at once, not at the deadline */
    CHECK_INT(hsm_signer_ready(s), 0);     /* a full queue is not a token loss */

    pthread_mutex_lock(&ps.lock);
    ps.open = true;
    pthread_cond_broadcast(&ps.cv);
    pthread_mutex_unlock(&ps.lock);
    pthread_join(a.tid, NULL);
    pthread_join(b.tid, NULL);
    CHECK_INT(a.err, 0);
    CHECK_INT(b.err, 0);
    CHECK_INT(ps.calls, 2); /* the refused call never reached the precheck */
done:
    hsm_signer_free(s);
    fx_done(&f);
    pre_state_destroy(&ps);
}

static void bad_requests_are_refused(void)
{
    static const unsigned char junk[4] = {0x30, 0x02, 0x01, 0x00};
    struct hsm_request req = {HSM_OP_SIGN_CERT, "x", junk, sizeof(junk)};
    struct hsm_response resp;
    struct hsm_signer *s = NULL;
    struct fx f;

    CHECK_INT(fx_setup(&f, HSM_KEY_EC_P256), 0);
    CHECK_INT(hsm_signer_new(&f.cfg, USER_PIN, &s), 0);
    if (s == NULL)
        goto done;
    CHECK_INT(hsm_call(s, &req, &resp), AGW_ERR_BAD_INPUT);
    CHECK(resp.der == NULL);
    req.op = (enum hsm_op)7;
    CHECK_INT(hsm_call(s, &req, &resp), AGW_ERR_BAD_INPUT);
    req.op = HSM_OP_SIGN_CERT;
    req.tbs_len = 0;
    CHECK_INT(hsm_call(s, &req, &resp), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_signer_ready(s), 0);
done:
    hsm_signer_free(s);
    fx_done(&f);
}

int main(void)
{
    RUN(key_alg_names_round_trip);
    RUN(secret_read_file_and_env);
    RUN(token_match_label_and_uri);
    RUN(signs_from_8_threads_ec_p256);
    RUN(signs_from_8_threads_rsa_2048);
    RUN(signs_from_8_threads_rsa_3072);
    RUN(signs_from_8_threads_ec_p384);
    RUN(token_moved_away_then_back_recovers);
    RUN(start_while_token_away_then_ready);
    RUN(other_signer_on_module_survives_a_reconnect);
    RUN(wrong_pin_on_reconnect_is_not_retried);
    RUN(start_refusals);
    RUN(crl_signature_verifies);
    RUN(precheck_refusal_signs_nothing);
    RUN(cert_decoded_in_the_configured_libctx);
    RUN(deadline_answers_in_time_and_frees_clean);
    RUN(full_queue_answers_at_once);
    RUN(bad_requests_are_refused);
    return CHECK_DONE();
}

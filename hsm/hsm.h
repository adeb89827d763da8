/*
 * hsm/hsm.h - the signing service: the CA key lives only in a PKCS#11 token.
 *
 * Two halves:
 *   1. Ceremony operations (token init, key generation, attribute read-back). Each runs raw PKCS#11
 *      (dlopen the module, C_Initialize ... C_Finalize) in its own phase, because libp11 0.4.12
 *      cannot generate EC keys (notes §2). They are for tools/acmegw-ceremony, never the gateway.
 *   2. The signer: libp11 + OpenSSL, a pool of worker threads, a deadline on every job, token-loss
 *      detection and background reconnect with back-off. Requests and responses are flat messages
 *      (DER in, DER out, plus the device class) so a later issue can move the signer into its own
 *      privileged process, like OpenSSH's monitor. No function here returns private key material.
 *
 * hsm/ knows nothing of HTTP, ACME or policy files. Errors are enum agw_err (common/err.h).
 */
#ifndef AGW_HSM_H
#define AGW_HSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

/* ---------------------------------------------------------------- key algorithms */

enum hsm_key_alg {
    HSM_KEY_EC_P256 = 1,
    HSM_KEY_EC_P384,
    HSM_KEY_RSA_2048, /* accepted for test tokens; ceremony files should use 3072 or 4096 */
    HSM_KEY_RSA_3072,
    HSM_KEY_RSA_4096,
};

/* "ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096" -> 0, else AGW_ERR_BAD_INPUT. */
int hsm_key_alg_parse(const char *name, enum hsm_key_alg *out);
/* Inverse of hsm_key_alg_parse; never NULL ("unknown"). */
const char *hsm_key_alg_name(enum hsm_key_alg alg);

/* ---------------------------------------------------------------- secrets */

/*
 * Reads a PIN (or any small secret) from a file (first line, trailing newline stripped) or, when
 * path is NULL, from the environment variable env_name. Never from argv.
 *   *out  owned by the caller on success: wipe with hsm_secret_free().
 * Returns 0, AGW_ERR_BAD_INPUT (empty, too long, unset) or AGW_ERR_IO.
 */
int hsm_secret_read(const char *path, const char *env_name, char **out);
void hsm_secret_free(char *secret); /* OPENSSL_cleanse + free; accepts NULL */

/* ---------------------------------------------------------------- token reference */

/* Which token: module is the PKCS#11 .so path; token is a label or an RFC 7512 "pkcs11:" URI
 * (token=, serial=, manufacturer=, model= attributes honoured). */
struct hsm_token_ref {
    const char *module;
    const char *token;
};

/* ---------------------------------------------------------------- ceremony operations */

/*
 * Initialises a free slot as a new token with this label, sets the SO PIN and the user PIN.
 * Refuses (AGW_ERR_EXISTS) when a token with that label is already initialised.
 * Returns 0, AGW_ERR_EXISTS, AGW_ERR_HSM_UNAVAILABLE (module/slot problems), AGW_ERR_BAD_INPUT.
 */
int hsm_token_init(const char *module, const char *label, const char *so_pin,
                   const char *user_pin);

/*
 * Generates a key pair inside the token with C_GenerateKeyPair. Private key: CKA_TOKEN, CKA_PRIVATE,
 * CKA_SENSITIVE=TRUE, CKA_EXTRACTABLE=FALSE, CKA_SIGN=TRUE, CKA_DECRYPT/UNWRAP/DERIVE=FALSE.
 * Public key: CKA_TOKEN, CKA_VERIFY only. Both carry label and id.
 *   id, id_len  the CKA_ID (1..64 bytes)
 *   *pub_der    owned by the caller on success (OPENSSL_free): the SubjectPublicKeyInfo DER
 * Refuses (AGW_ERR_EXISTS) when any object with that label or id exists in the token.
 * Returns 0, AGW_ERR_EXISTS, AGW_ERR_UNAUTHORIZED (wrong PIN), AGW_ERR_HSM_UNAVAILABLE,
 * AGW_ERR_BAD_INPUT, AGW_ERR_NOMEM.
 */
int hsm_key_generate(const struct hsm_token_ref *ref, const char *pin, enum hsm_key_alg alg,
                     const char *label, const unsigned char *id, size_t id_len,
                     unsigned char **pub_der, size_t *pub_len);

/* What hsm_key_attrs_read() found on the private key (and its public half). */
struct hsm_key_attrs {
    bool token, is_private, sensitive, extractable, always_sensitive, never_extractable, local;
    bool sign, decrypt, unwrap, derive;
    bool value_readable; /* true if C_GetAttributeValue(CKA_VALUE/CKA_PRIVATE_EXPONENT) succeeded */
    enum hsm_key_alg alg;
};

/*
 * Finds the private key by label (id may be NULL) and reads its attributes back.
 *   *pub_der  may be NULL; else owned by the caller (OPENSSL_free): SubjectPublicKeyInfo DER
 * Returns 0, AGW_ERR_NOT_FOUND, AGW_ERR_UNAUTHORIZED, AGW_ERR_HSM_UNAVAILABLE, AGW_ERR_NOMEM.
 */
int hsm_key_attrs_read(const struct hsm_token_ref *ref, const char *pin, const char *label,
                       const unsigned char *id, size_t id_len, struct hsm_key_attrs *out,
                       unsigned char **pub_der, size_t *pub_len);

/* ---------------------------------------------------------------- the signer */

struct hsm_signer; /* opaque */

/*
 * Optional last check before the key signs: the final to-be-signed certificate, decoded.
 * Return 0 to allow, or an AGW_ERR_* (typically AGW_ERR_POLICY_REJECTED) to refuse. Runs on an
 * hsm worker thread; must not block. The policy issue plugs policy/ in here.
 */
typedef int (*hsm_precheck_fn)(void *arg, const char *device_class, const X509 *tbs);

struct hsm_config {
    struct hsm_token_ref ref;
    const char *key_label; /* private key label; */
    const char *key_id_hex; /* or NULL; else must match CKA_ID too */
    /* PEM file: first the certificate of this key (the issuing CA), then the chain above it.
     * After every (re)connect the token key's public half is compared with it (EVP_PKEY_eq).
     * NULL only for the ceremony, which signs a new root with a key that has no certificate yet:
     * then hsm_ca_cert() is NULL and no match check is made. */
    const char *ca_chain_file;
    unsigned n_workers;  /* signing threads; 0 means 2 */
    unsigned timeout_ms; /* deadline of one job; 0 means 5000 */
    unsigned max_queue;  /* queued jobs beyond this get AGW_ERR_HSM_UNAVAILABLE; 0 means 1024 */
    hsm_precheck_fn precheck; /* may be NULL */
    void *precheck_arg;
    /* Or NULL. The library context a certificate request is decoded in before the precheck
     * (ASN1_item_d2i_ex): the gateway passes policy's keyless context, in which the subject key
     * stays undecoded, sparing OpenSSL 3.0's key decoder (~70 us per certificate) for a precheck
     * that builds the key from its parts anyway. Borrowed: must outlive the signer. */
    OSSL_LIB_CTX *cert_libctx;
    /* The token cannot be reached now (AGW_ERR_HSM_UNAVAILABLE: module, slot, token, session or
     * key not answering): start anyway, not ready, and connect in the background as after a
     * token loss. Needs ca_chain_file (the key's algorithm and public half come from it; the
     * token's key is compared with it when it answers). A wrong PIN, a missing key or a key
     * that does not match still fail the call: those are configuration errors. */
    bool start_unavailable;
};

/*
 * Opens the token, logs in and finds the CA key, starts the workers. With
 * cfg->start_unavailable a token that does not answer gives a signer that is not ready yet
 * (hsm_signer_ready(), hsm_call() answer AGW_ERR_HSM_UNAVAILABLE) and reconnects by itself.
 *   cfg   borrowed: read during the call only (strings are copied)
 *   pin   borrowed: the signer keeps a copy to log in again after a token loss, wiped on free
 *   *out  owned by the caller on success: release with hsm_signer_free(), which accepts NULL
 * Returns 0, AGW_ERR_BAD_INPUT, AGW_ERR_PIN_INCORRECT (never retried), AGW_ERR_HSM_UNAVAILABLE,
 * AGW_ERR_NOT_FOUND (no such key), AGW_ERR_CONFLICT (key does not match the CA certificate),
 * AGW_ERR_IO (chain file), AGW_ERR_NOMEM.
 */
int hsm_signer_new(const struct hsm_config *cfg, const char *pin, struct hsm_signer **out);
void hsm_signer_free(struct hsm_signer *s);

enum hsm_op {
    HSM_OP_SIGN_CERT = 1, /* tbs is an X509 from hsm_tbs_cert() */
    HSM_OP_SIGN_CRL = 2,  /* tbs is an X509_CRL from hsm_tbs_crl() */
};

struct hsm_request {
    enum hsm_op op;
    const char *device_class; /* passed to the precheck; may be NULL for CRLs */
    const unsigned char *tbs_der;
    size_t tbs_len;
};

struct hsm_response {
    int err;            /* 0 or AGW_ERR_* */
    unsigned char *der; /* owned by the caller on success: free() */
    size_t der_len;
};

/*
 * Signs one request on a worker thread and waits for it, at most cfg->timeout_ms. Call it from a
 * worker thread of your own, never from an event loop. A job past its deadline, a full queue or a
 * lost token gives AGW_ERR_HSM_UNAVAILABLE at once; a background task reconnects with back-off.
 * The signature algorithm follows the key: ecdsa-with-SHA256 (P-256), -SHA384 (P-384),
 * sha256WithRSAEncryption (RSA).
 * Returns resp->err as well.
 */
int hsm_call(struct hsm_signer *s, const struct hsm_request *req, struct hsm_response *resp);

/*
 * Encodes a complete certificate (or CRL) template for an hsm_request: sets the signature
 * algorithm fields to this signer's algorithm and a placeholder signature. x is modified only in
 * those fields. *der owned by the caller (OPENSSL_free).
 */
int hsm_tbs_cert(const struct hsm_signer *s, X509 *x, unsigned char **der, size_t *der_len);
int hsm_tbs_crl(const struct hsm_signer *s, X509_CRL *crl, unsigned char **der, size_t *der_len);

/* The issuing CA certificate (borrowed; lives as long as s) and the PEM of the whole chain file. */
const X509 *hsm_ca_cert(const struct hsm_signer *s);
const char *hsm_ca_chain_pem(const struct hsm_signer *s, size_t *len);
enum hsm_key_alg hsm_signer_alg(const struct hsm_signer *s);
/* SubjectPublicKeyInfo DER of the signing key (public half only). *der owned by the caller
 * (OPENSSL_free). */
int hsm_signer_pubkey(const struct hsm_signer *s, unsigned char **der, size_t *der_len);

/* 0 when the signer is connected and logged in, else AGW_ERR_HSM_UNAVAILABLE. Never blocks. */
int hsm_signer_ready(const struct hsm_signer *s);

#endif

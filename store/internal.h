/*
 * store/internal.h - shared between the files of store/ only; nobody else includes it.
 *
 * Sealed EAB HMAC key layout (a BLOB column of eab_keys):
 *   1 byte version (ST_SEAL_VERSION) || 12-byte random IV || ciphertext || 16-byte GCM tag
 * The AAD is the version byte followed by the kid, so a blob copied to another row (or a
 * different kid) fails to open instead of handing out another key's secret.
 */
#ifndef AGW_STORE_INTERNAL_H
#define AGW_STORE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "store/store.h"

/*
 * Backend dispatch (store/store.c). Every backend's handle starts with a struct st_store, so a
 * backend casts the handle it is given back to its own type; the public st_* functions forward
 * to s->ops. One function pointer per public st_* function that takes a store, with the same
 * arguments and the same contract as in store/store.h, except for the reads by key (account_get,
 * account_by_thumbprint, order_get, authz_get, challenge_get, cert_get, authz_list_by_order,
 * challenge_list_by_authz): store.c checks their arguments and resets and clears their
 * out-parameters, so they get a valid handle, their own copy of the key and a zeroed *out.
 * store.c checks the arguments of every other function as well before it calls the backend.
 */
struct st_ops {
    const char *driver; /* "sqlite", "postgresql": the st_config.driver that selects it */
    int (*open)(const struct st_config *cfg, const unsigned char seal_key[32],
                struct st_store **out);
    void (*close)(struct st_store *s);
    int (*schema_version)(struct st_store *s, int *version);
    int (*eab_create)(struct st_store *s, const char *class_name, int64_t now, struct st_eab *out,
                      unsigned char hmac_out[32]);
    int (*eab_get)(struct st_store *s, const char *kid, struct st_eab *out, unsigned char *hmac,
                   size_t *hmac_len);
    int (*eab_list)(struct st_store *s, struct st_eab **out, size_t *n);
    int (*eab_revoke)(struct st_store *s, const char *kid, int64_t now);
    int (*account_create)(struct st_store *s, struct st_account *a, char existing_id[ST_ID_LEN]);
    int (*account_get)(struct st_store *s, const char *id, struct st_account *out);
    int (*account_by_thumbprint)(struct st_store *s, const char *thumbprint,
                                 struct st_account *out);
    int (*account_set_contact)(struct st_store *s, const char *id, const char *contact_json);
    int (*account_deactivate)(struct st_store *s, const char *id);
    int (*account_set_key)(struct st_store *s, const char *id, const char *thumbprint,
                           const char *jwk_json);
    int (*order_create)(struct st_store *s, struct st_order *o, struct st_authz *authz,
                        size_t n_authz, struct st_new_challenge *chal, size_t n_chal);
    int (*order_get)(struct st_store *s, const char *id, struct st_order *out);
    int (*order_ids_by_account)(struct st_store *s, const char *account_id, size_t max,
                                char (**ids)[ST_ID_LEN], size_t *n);
    int (*order_replacing)(struct st_store *s, const char *cert_id, int64_t now, int *found);
    int (*order_transition)(struct st_store *s, const char *id, const char *from, const char *to,
                            const char *error_json);
    int (*order_start_processing)(struct st_store *s, const char *id, int64_t max_certs,
                                  int64_t since);
    int (*order_count)(struct st_store *s, const char *account_id, const char *status,
                       int64_t since, int64_t *n);
    int (*order_count_by_eab)(struct st_store *s, const char *kid, int64_t since, int64_t *n);
    int (*cert_count_by_account)(struct st_store *s, const char *account_id, int64_t since,
                                 int64_t *n);
    int (*authz_get)(struct st_store *s, const char *id, struct st_authz *out);
    int (*authz_list_by_order)(struct st_store *s, const char *order_id, struct st_authz **out,
                               size_t *n);
    int (*authz_transition)(struct st_store *s, const char *id, const char *from, const char *to);
    int (*challenge_get)(struct st_store *s, const char *id, struct st_challenge *out);
    int (*challenge_list_by_authz)(struct st_store *s, const char *authz_id,
                                   struct st_challenge **out, size_t *n);
    int (*challenge_transition)(struct st_store *s, const char *id, const char *from,
                                const char *to, int64_t validated, const char *error_json);
    int (*cert_issue)(struct st_store *s, const struct st_cert *c);
    int (*cert_get)(struct st_store *s, const char *serial, struct st_cert *out);
    int (*cert_list)(struct st_store *s, const struct st_cert_filter *f, struct st_cert **out,
                     size_t *n);
    int (*cert_revoke)(struct st_store *s, const char *serial, int reason, int64_t now);
    int (*revoked_list)(struct st_store *s, const char *issuer, int64_t since,
                        struct st_revoked **out, size_t *n);
    int (*crl_next_number)(struct st_store *s, const char *issuer, uint64_t *number);
    int (*crl_number)(struct st_store *s, const char *issuer, uint64_t *number);
    int (*revocation_marker)(struct st_store *s, const char *issuer, int64_t *marker);
    int (*order_fail_stale)(struct st_store *s, int64_t age_s, const char *error_json,
                            int64_t *n);
    int (*authz_valid_for)(struct st_store *s, const char *account_id, const char *id_type,
                           const char *id_value, int64_t now, int *found);
    int (*nonce_redeem)(struct st_store *s, const char *id, int64_t expires);
    int (*nonce_purge)(struct st_store *s, int64_t now);
    int (*crl_lease)(struct st_store *s, const char *issuer, const char *owner, int64_t now,
                     int64_t ttl_s, int *granted);
    int (*crl_put)(struct st_store *s, const char *issuer, uint64_t number, int64_t this_update,
                   int64_t next_update, const unsigned char *der, size_t der_len);
    int (*crl_get)(struct st_store *s, const char *issuer, uint64_t *number, int64_t *this_update,
                   int64_t *next_update, unsigned char **der, size_t *der_len);
};

struct st_store {
    const struct st_ops *ops; /* never NULL in a handle a backend returned */
};

extern const struct st_ops st_sqlite_ops;   /* store/sqlite.c */
extern const struct st_ops st_postgres_ops; /* store/postgres.c */

/* Input checks shared by the backends: a value must fit its fixed-size field with its NUL. */
static inline int st_fits(const char *v, size_t size)
{
    return v != NULL && strnlen(v, size) < size;
}

/* st_fits() and not empty. */
static inline int st_given(const char *v, size_t size)
{
    return st_fits(v, size) && v[0] != '\0';
}

/* Copies src into dst (size bytes), always NUL-terminated; callers checked the length. */
static inline void st_copy_str(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);

    memcpy(dst, src, n);
    dst[n] = '\0';
}

#define ST_SEAL_KEY_LEN  32
#define ST_SEAL_VERSION  1
#define ST_SEAL_IV_LEN   12
#define ST_SEAL_TAG_LEN  16
#define ST_SEAL_OVERHEAD (1 + ST_SEAL_IV_LEN + ST_SEAL_TAG_LEN)

/*
 * Encrypts pt (pt_len bytes) under key with AES-256-GCM, AAD bound to kid.
 *   out       caller's buffer of out_size >= pt_len + ST_SEAL_OVERHEAD; *out_len gets the length.
 * Returns 0, AGW_ERR_BAD_INPUT (buffer too small, kid NULL) or AGW_ERR_INTERNAL (OpenSSL).
 */
int st_seal(const unsigned char key[ST_SEAL_KEY_LEN], const char *kid, const unsigned char *pt,
            size_t pt_len, unsigned char *out, size_t out_size, size_t *out_len);

/*
 * Opens a blob made by st_seal() for the same kid. pt gets the plaintext (pt_size bytes room).
 * Returns 0; AGW_ERR_STORE if the blob is malformed, was sealed under another key or for another
 * kid, or was altered (pt is wiped then: no partial plaintext is left); AGW_ERR_BAD_INPUT if pt is
 * too small; AGW_ERR_INTERNAL (OpenSSL).
 */
int st_unseal(const unsigned char key[ST_SEAL_KEY_LEN], const char *kid, const unsigned char *blob,
              size_t blob_len, unsigned char *pt, size_t pt_size, size_t *pt_len);

#endif

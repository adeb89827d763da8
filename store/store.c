/*
 * store/store.c - backend dispatch for store/store.h, and the parts every backend shares.
 *
 * st_open_config() picks the backend by cfg->driver; the handle it returns starts with a struct
 * st_store holding that backend's ops table (store/internal.h), and every public st_* function
 * forwards to it. The table is the whole backend contract: a new backend fills one in and is
 * tested by the same tests/unit/test_store.c functions as SQLite.
 *
 * The reads by key (st_account_get, st_account_by_thumbprint, st_order_get, st_authz_get,
 * st_challenge_get, st_cert_get, st_authz_list_by_order, st_challenge_list_by_authz) check their
 * arguments, reset their out-parameters and clear them again on failure here, once for every
 * backend; their backend functions get a valid handle, a key that is a private copy, and a zeroed
 * *out. Every other function checks its arguments here too (sizes that fit the columns, states,
 * reasons, out-parameters set to their empty value first) and then forwards: a backend function
 * is only ever called with arguments that passed, so the backends do not repeat the checks.
 */
#include "store/store.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "common/err.h"
#include "common/log.h"
#include "store/internal.h"

#define ST_RAW_ID_LEN 16 /* st_random_id: 128 bits */

static const struct st_ops *const backends[] = {&st_sqlite_ops, &st_postgres_ops};

int st_open_config(const struct st_config *cfg, const unsigned char seal_key[32],
                   struct st_store **out)
{
    const char *driver;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (cfg == NULL || seal_key == NULL)
        return AGW_ERR_BAD_INPUT;
    driver = cfg->driver != NULL && cfg->driver[0] != '\0' ? cfg->driver : "sqlite";
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
        if (strcmp(backends[i]->driver, driver) == 0)
            return backends[i]->open(cfg, seal_key, out);
    LOG_ERROR("store.open", "error=unknown_driver driver=%s", driver);
    return AGW_ERR_BAD_INPUT;
}

int st_open(const char *path, const unsigned char seal_key[32], struct st_store **out)
{
    struct st_config cfg = {.driver = "sqlite", .path = path, .conninfo = NULL};

    return st_open_config(&cfg, seal_key, out);
}

static const struct st_ops *ops_of(struct st_store *s)
{
    return s != NULL ? s->ops : &st_sqlite_ops;
}

/* Input checks of the writes, the same for every backend: sizes fit the columns. */
static int state_ok(const char *state)
{
    return st_given(state, ST_STATE_LEN);
}

static int order_input_ok(const struct st_order *o)
{
    return st_given(o->account_id, sizeof(o->account_id)) &&
           st_fits(o->status, sizeof(o->status)) && st_fits(o->class_name, sizeof(o->class_name)) &&
           st_fits(o->profile, sizeof(o->profile)) &&
           st_fits(o->cert_serial, sizeof(o->cert_serial)) &&
           st_fits(o->replaces, sizeof(o->replaces)) && o->identifiers_json != NULL;
}

static int authz_input_ok(const struct st_authz *a)
{
    return st_fits(a->account_id, sizeof(a->account_id)) &&
           st_given(a->id_type, sizeof(a->id_type)) && st_fits(a->status, sizeof(a->status)) &&
           a->id_value != NULL;
}

static int chal_input_ok(const struct st_new_challenge *c, size_t n_authz)
{
    return c->authz_index < n_authz && st_given(c->c.type, sizeof(c->c.type)) &&
           st_given(c->c.token, sizeof(c->c.token)) && st_fits(c->c.status, sizeof(c->c.status));
}

static int cert_input_ok(const struct st_cert *c)
{
    return st_given(c->serial, sizeof(c->serial)) && st_fits(c->order_id, sizeof(c->order_id)) &&
           st_fits(c->account_id, sizeof(c->account_id)) &&
           st_fits(c->class_name, sizeof(c->class_name)) &&
           st_given(c->issuer, sizeof(c->issuer)) && c->der != NULL && c->der_len > 0 &&
           c->der_len <= INT_MAX;
}

/* The checks of a read by key: a handle, an out-parameter, a key that fits. The key is copied
 * into copy (size bytes: the key's column width), because it may point into *out, which the
 * caller zeroes next. */
static int read_args_ok(const struct st_store *s, const void *out, const char *key, char *copy,
                        size_t size)
{
    if (s == NULL || out == NULL || !st_given(key, size))
        return 0;
    st_copy_str(copy, size, key);
    return 1;
}

void st_close(struct st_store *s)
{
    if (s != NULL)
        s->ops->close(s);
}

int st_schema_version(struct st_store *s, int *version)
{
    if (s == NULL || version == NULL)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->schema_version(s, version);
}

int st_eab_create(struct st_store *s, const char *class_name, int64_t now, struct st_eab *out,
                  unsigned char hmac_out[32])
{
    if (s == NULL || out == NULL || hmac_out == NULL || !st_given(class_name, ST_NAME_LEN))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->eab_create(s, class_name, now, out, hmac_out);
}

int st_eab_get(struct st_store *s, const char *kid, struct st_eab *out, unsigned char *hmac,
               size_t *hmac_len)
{
    if (s == NULL || out == NULL || hmac == NULL || hmac_len == NULL || !st_given(kid, ST_KID_LEN))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->eab_get(s, kid, out, hmac, hmac_len);
}

int st_eab_list(struct st_store *s, struct st_eab **out, size_t *n)
{
    if (s == NULL || out == NULL || n == NULL)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->eab_list(s, out, n);
}

int st_eab_revoke(struct st_store *s, const char *kid, int64_t now)
{
    /* revoked = 0 means active, so a revocation must carry a real time */
    if (s == NULL || !st_given(kid, ST_KID_LEN) || now <= 0)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->eab_revoke(s, kid, now);
}

int st_account_create(struct st_store *s, struct st_account *a, char existing_id[ST_ID_LEN])
{
    if (existing_id != NULL)
        existing_id[0] = '\0';
    if (s == NULL || a == NULL || !st_given(a->thumbprint, sizeof(a->thumbprint)) ||
        !st_fits(a->status, sizeof(a->status)) || !st_fits(a->eab_kid, sizeof(a->eab_kid)) ||
        !st_fits(a->class_name, sizeof(a->class_name)) || a->jwk_json == NULL)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->account_create(s, a, existing_id);
}

static int account_read(struct st_store *s, const char *key_in, size_t key_size,
                        struct st_account *out, int by_thumbprint)
{
    char key[ST_THUMB_LEN > ST_ID_LEN ? ST_THUMB_LEN : ST_ID_LEN];
    int err;

    if (!read_args_ok(s, out, key_in, key, key_size))
        return AGW_ERR_BAD_INPUT;
    memset(out, 0, sizeof(*out));
    err = by_thumbprint ? s->ops->account_by_thumbprint(s, key, out)
                        : s->ops->account_get(s, key, out);
    if (err != 0)
        st_account_clear(out);
    return err;
}

int st_account_get(struct st_store *s, const char *id, struct st_account *out)
{
    return account_read(s, id, ST_ID_LEN, out, 0);
}

int st_account_by_thumbprint(struct st_store *s, const char *thumbprint, struct st_account *out)
{
    return account_read(s, thumbprint, ST_THUMB_LEN, out, 1);
}

int st_account_set_contact(struct st_store *s, const char *id, const char *contact_json)
{
    if (s == NULL || !st_given(id, ST_ID_LEN) || contact_json == NULL)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->account_set_contact(s, id, contact_json);
}

int st_account_deactivate(struct st_store *s, const char *id)
{
    if (s == NULL || !st_given(id, ST_ID_LEN))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->account_deactivate(s, id);
}

int st_account_set_key(struct st_store *s, const char *id, const char *thumbprint,
                       const char *jwk_json)
{
    if (s == NULL || !st_given(id, ST_ID_LEN) || !st_given(thumbprint, ST_THUMB_LEN) ||
        jwk_json == NULL)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->account_set_key(s, id, thumbprint, jwk_json);
}

int st_order_create(struct st_store *s, struct st_order *o, struct st_authz *authz, size_t n_authz,
                    struct st_new_challenge *chal, size_t n_chal)
{
    if (s == NULL || o == NULL || !order_input_ok(o) || (n_authz > 0 && authz == NULL) ||
        (n_chal > 0 && chal == NULL))
        return AGW_ERR_BAD_INPUT;
    for (size_t i = 0; i < n_authz; i++)
        if (!authz_input_ok(&authz[i]))
            return AGW_ERR_BAD_INPUT;
    for (size_t j = 0; j < n_chal; j++)
        if (!chal_input_ok(&chal[j], n_authz))
            return AGW_ERR_BAD_INPUT;
    return ops_of(s)->order_create(s, o, authz, n_authz, chal, n_chal);
}

int st_order_get(struct st_store *s, const char *id, struct st_order *out)
{
    char key[ST_ID_LEN];
    int err;

    if (!read_args_ok(s, out, id, key, sizeof(key)))
        return AGW_ERR_BAD_INPUT;
    memset(out, 0, sizeof(*out));
    err = s->ops->order_get(s, key, out);
    if (err != 0)
        st_order_clear(out);
    return err;
}

int st_order_ids_by_account(struct st_store *s, const char *account_id, size_t max,
                            char (**ids)[ST_ID_LEN], size_t *n)
{
    return ops_of(s)->order_ids_by_account(s, account_id, max, ids, n);
}

int st_order_replacing(struct st_store *s, const char *cert_id, int64_t now, int *found)
{
    if (found == NULL)
        return AGW_ERR_BAD_INPUT;
    *found = 0;
    if (s == NULL || !st_given(cert_id, sizeof(((struct st_order *)0)->replaces)))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->order_replacing(s, cert_id, now, found);
}

int st_order_transition(struct st_store *s, const char *id, const char *from, const char *to,
                        const char *error_json)
{
    if (s == NULL || !st_given(id, ST_ID_LEN) || !state_ok(from) || !state_ok(to))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->order_transition(s, id, from, to, error_json);
}

int st_order_start_processing(struct st_store *s, const char *id, int64_t max_certs,
                              int64_t since)
{
    if (s == NULL || !st_given(id, ST_ID_LEN) || max_certs < 0)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->order_start_processing(s, id, max_certs, since);
}

int st_order_count(struct st_store *s, const char *account_id, const char *status, int64_t since,
                   int64_t *n)
{
    if (s == NULL || n == NULL || !st_given(account_id, ST_ID_LEN) ||
        (status != NULL && !state_ok(status)))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->order_count(s, account_id, status, since, n);
}

int st_order_count_by_eab(struct st_store *s, const char *kid, int64_t since, int64_t *n)
{
    if (s == NULL || n == NULL || !st_given(kid, ST_KID_LEN))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->order_count_by_eab(s, kid, since, n);
}

int st_cert_count_by_account(struct st_store *s, const char *account_id, int64_t since, int64_t *n)
{
    if (s == NULL || n == NULL || !st_given(account_id, ST_ID_LEN))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->cert_count_by_account(s, account_id, since, n);
}

int st_authz_get(struct st_store *s, const char *id, struct st_authz *out)
{
    char key[ST_ID_LEN];
    int err;

    if (!read_args_ok(s, out, id, key, sizeof(key)))
        return AGW_ERR_BAD_INPUT;
    memset(out, 0, sizeof(*out));
    err = s->ops->authz_get(s, key, out);
    if (err != 0)
        st_authz_clear(out);
    return err;
}

int st_authz_list_by_order(struct st_store *s, const char *order_id, struct st_authz **out,
                           size_t *n)
{
    if (out == NULL || n == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    *n = 0;
    if (s == NULL || !st_given(order_id, ST_ID_LEN))
        return AGW_ERR_BAD_INPUT;
    return s->ops->authz_list_by_order(s, order_id, out, n);
}

int st_authz_transition(struct st_store *s, const char *id, const char *from, const char *to)
{
    if (s == NULL || !st_given(id, ST_ID_LEN) || !state_ok(from) || !state_ok(to))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->authz_transition(s, id, from, to);
}

int st_challenge_get(struct st_store *s, const char *id, struct st_challenge *out)
{
    char key[ST_ID_LEN];
    int err;

    if (!read_args_ok(s, out, id, key, sizeof(key)))
        return AGW_ERR_BAD_INPUT;
    memset(out, 0, sizeof(*out));
    err = s->ops->challenge_get(s, key, out);
    if (err != 0)
        st_challenge_clear(out);
    return err;
}

int st_challenge_list_by_authz(struct st_store *s, const char *authz_id, struct st_challenge **out,
                               size_t *n)
{
    if (out == NULL || n == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    *n = 0;
    if (s == NULL || !st_given(authz_id, ST_ID_LEN))
        return AGW_ERR_BAD_INPUT;
    return s->ops->challenge_list_by_authz(s, authz_id, out, n);
}

int st_challenge_transition(struct st_store *s, const char *id, const char *from, const char *to,
                            int64_t validated, const char *error_json)
{
    if (s == NULL || !st_given(id, ST_ID_LEN) || !state_ok(from) || !state_ok(to))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->challenge_transition(s, id, from, to, validated, error_json);
}

int st_cert_issue(struct st_store *s, const struct st_cert *c)
{
    if (s == NULL || c == NULL || !cert_input_ok(c))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->cert_issue(s, c);
}

int st_cert_get(struct st_store *s, const char *serial, struct st_cert *out)
{
    char key[ST_SERIAL_LEN];
    int err;

    if (!read_args_ok(s, out, serial, key, sizeof(key)))
        return AGW_ERR_BAD_INPUT;
    memset(out, 0, sizeof(*out));
    err = s->ops->cert_get(s, key, out);
    if (err != 0)
        st_cert_clear(out);
    return err;
}

int st_cert_list(struct st_store *s, const struct st_cert_filter *f, struct st_cert **out,
                 size_t *n)
{
    if (out == NULL || n == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    *n = 0;
    if (s == NULL || f == NULL || (f->class_name != NULL && !st_fits(f->class_name, ST_NAME_LEN)))
        return AGW_ERR_BAD_INPUT;
    if (f->status != NULL && strcmp(f->status, "valid") != 0 && strcmp(f->status, "revoked") != 0 &&
        strcmp(f->status, "expired") != 0)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->cert_list(s, f, out, n);
}

int st_cert_revoke(struct st_store *s, const char *serial, int reason, int64_t now)
{
    if (s == NULL || !st_given(serial, ST_SERIAL_LEN) || reason < 0 || reason > 10 || reason == 7 ||
        now <= 0)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->cert_revoke(s, serial, reason, now);
}

int st_revoked_list(struct st_store *s, const char *issuer, int64_t since, struct st_revoked **out,
                    size_t *n)
{
    if (out == NULL || n == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    *n = 0;
    if (s == NULL || !st_given(issuer, ST_NAME_LEN))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->revoked_list(s, issuer, since, out, n);
}

int st_crl_next_number(struct st_store *s, const char *issuer, uint64_t *number)
{
    if (s == NULL || number == NULL || !st_given(issuer, ST_NAME_LEN))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->crl_next_number(s, issuer, number);
}

int st_crl_number(struct st_store *s, const char *issuer, uint64_t *number)
{
    if (number == NULL)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->crl_number(s, issuer, number);
}

int st_revocation_marker(struct st_store *s, const char *issuer, int64_t *marker)
{
    if (marker == NULL)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->revocation_marker(s, issuer, marker);
}

int st_order_fail_stale(struct st_store *s, int64_t age_s, const char *error_json, int64_t *n)
{
    if (s == NULL || n == NULL || error_json == NULL || age_s <= 0)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->order_fail_stale(s, age_s, error_json, n);
}

int st_authz_valid_for(struct st_store *s, const char *account_id, const char *id_type,
                       const char *id_value, int64_t now, int *found)
{
    if (s == NULL || found == NULL || !st_given(account_id, ST_ID_LEN) ||
        !st_given(id_type, ST_STATE_LEN) || !st_given(id_value, 1024))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->authz_valid_for(s, account_id, id_type, id_value, now, found);
}

int st_nonce_redeem(struct st_store *s, const char *id, int64_t expires)
{
    if (s == NULL || !st_given(id, 65))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->nonce_redeem(s, id, expires);
}

int st_nonce_purge(struct st_store *s, int64_t now)
{
    if (s == NULL)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->nonce_purge(s, now);
}

int st_crl_lease(struct st_store *s, const char *issuer, const char *owner, int64_t now,
                 int64_t ttl_s, int *granted)
{
    if (s == NULL || granted == NULL || !st_given(issuer, ST_NAME_LEN) || !st_given(owner, 128))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->crl_lease(s, issuer, owner, now, ttl_s, granted);
}

int st_crl_put(struct st_store *s, const char *issuer, uint64_t number, int64_t this_update,
               int64_t next_update, const unsigned char *der, size_t der_len)
{
    if (s == NULL || !st_given(issuer, ST_NAME_LEN) || der == NULL || der_len == 0 ||
        number > INT64_MAX)
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->crl_put(s, issuer, number, this_update, next_update, der, der_len);
}

int st_crl_get(struct st_store *s, const char *issuer, uint64_t *number, int64_t *this_update,
               int64_t *next_update, unsigned char **der, size_t *der_len)
{
    if (s == NULL || der == NULL || der_len == NULL || !st_given(issuer, ST_NAME_LEN))
        return AGW_ERR_BAD_INPUT;
    return ops_of(s)->crl_get(s, issuer, number, this_update, next_update, der, der_len);
}

/* ---------------------------------------------------------------- shared by all backends */

int st_random_id(char *buf, size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[ST_RAW_ID_LEN];
    size_t o = 0;

    if (buf == NULL || len < ST_ID_LEN)
        return AGW_ERR_BAD_INPUT;
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        LOG_ERROR("store.random_id", "error=RAND_bytes");
        return AGW_ERR_INTERNAL;
    }
    /* base64url without padding (RFC 4648 §5): 16 bytes -> 22 characters. */
    for (size_t i = 0; i < sizeof(raw); i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16;
        size_t left = sizeof(raw) - i;

        if (left > 1)
            v |= (uint32_t)raw[i + 1] << 8;
        if (left > 2)
            v |= raw[i + 2];
        buf[o++] = alphabet[(v >> 18) & 63];
        buf[o++] = alphabet[(v >> 12) & 63];
        if (left > 1)
            buf[o++] = alphabet[(v >> 6) & 63];
        if (left > 2)
            buf[o++] = alphabet[v & 63];
    }
    buf[o] = '\0';
    return 0;
}

void st_account_clear(struct st_account *a)
{
    if (a == NULL)
        return;
    free(a->jwk_json);
    free(a->contact_json);
    memset(a, 0, sizeof(*a));
}

void st_order_clear(struct st_order *o)
{
    if (o == NULL)
        return;
    free(o->identifiers_json);
    free(o->error_json);
    memset(o, 0, sizeof(*o));
}

void st_authz_clear(struct st_authz *a)
{
    if (a == NULL)
        return;
    free(a->id_value);
    memset(a, 0, sizeof(*a));
}

void st_challenge_clear(struct st_challenge *c)
{
    if (c == NULL)
        return;
    free(c->error_json);
    memset(c, 0, sizeof(*c));
}

void st_cert_clear(struct st_cert *c)
{
    if (c == NULL)
        return;
    free(c->identifiers);
    free(c->der);
    free(c->chain_pem);
    memset(c, 0, sizeof(*c));
}

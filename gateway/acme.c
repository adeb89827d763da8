/*
 * gateway/acme.c - the RFC 8555 resources, run on worker threads (gateway/gateway.h).
 *
 * Every POST goes through acme_authenticate(): Content-Type, body cap, JWS structure (§6.2),
 * nonce (§6.5), url equal to the request URL (§6.4), then the key: a jwk for newAccount and
 * revokeCert-by-certificate-key, else a kid naming a valid account (§6.2), and the signature.
 * Only then does a handler run. A handler writes to the store only after every check passed, so a
 * rejected request changes nothing. All reads are POST-as-GET (§6.3); plain GET is for the
 * directory and newNonce only. Every response carries a fresh Replay-Nonce and Link rel="index".
 */
#include "gateway/gateway.h"

#include "common/err.h"
#include "common/log.h"
#include "gateway/ari.h"
#include "gateway/crl.h"
#include "gateway/issue.h"
#include "gateway/jws.h"
#include "gateway/problem.h"
#include "gateway/profiles.h"
#include "hsm/hsm.h"
#include "policy/policy.h"
#include "store/store.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define MAX_CONTACTS    10
#define MAX_CONTACT_LEN 320
#define MAX_IDENT_LEN   253
#define MAX_ORDERS_LIST 1000
#define MAX_CSR_LEN     (16 * 1024)

struct acme_ctx {
    struct gw_server *srv;
    const struct gw_request *req;
    struct gw_response *resp;
    struct gw_jws jws;
    struct st_account acct; /* set when the request was signed with a kid */
    int have_acct;
    EVP_PKEY *key; /* the key that verified the request */
    int64_t now;
};

/* ---------------------------------------------------------------- response helpers */

void gw_response_clear(struct gw_response *r)
{
    free(r->body);
    free(r->location);
    for (int i = 0; i < r->n_links; i++)
        free(r->links[i]);
    memset(r, 0, sizeof(*r));
}

static char *fmt_alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_alloc(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    out = malloc((size_t)n + 1);
    if (out == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(out, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return out;
}

static void add_link(struct gw_response *r, const char *url, const char *rel)
{
    if (r->n_links < GW_MAX_LINKS) {
        r->links[r->n_links] = fmt_alloc("<%s>;rel=\"%s\"", url, rel);
        if (r->links[r->n_links] != NULL)
            r->n_links++;
    }
}

static void set_json(struct gw_response *r, int status, json_t *body)
{
    free(r->body);
    r->body = json_dumps(body, JSON_INDENT(2));
    r->body_len = r->body != NULL ? strlen(r->body) : 0;
    r->status = status;
    r->content_type = "application/json";
    json_decref(body);
}

static void set_problem_json(struct gw_response *r, int err, json_t *problem)
{
    int status;
    const char *type;

    gw_problem_map(err, &status, &type);
    set_json(r, status, problem);
    r->content_type = "application/problem+json";
    r->retry_after = gw_problem_retry_after(err);
    if (err == AGW_ERR_METHOD)
        r->allow = "POST";
}

void gw_response_problem(struct gw_response *r, int err, const char *detail)
{
    set_problem_json(r, err, gw_problem_new(err, detail));
}

static char *url_for(const struct gw_server *srv, const char *kind, const char *id)
{
    return fmt_alloc("%s/%s/%s", srv->cfg->base_url, kind, id);
}

/* ---------------------------------------------------------------- directory */

int gw_acme_directory_build(struct gw_server *srv)
{
    const char *b = srv->cfg->base_url;
    json_t *meta = json_object(), *d;
    char u[6][600];

    snprintf(u[5], sizeof(u[5]), "%s%s", b, GW_ARI_PATH); /* RFC 9773 §3 */
    snprintf(u[0], sizeof(u[0]), "%s/new-nonce", b);
    snprintf(u[1], sizeof(u[1]), "%s/new-account", b);
    snprintf(u[2], sizeof(u[2]), "%s/new-order", b);
    snprintf(u[3], sizeof(u[3]), "%s/revoke-cert", b);
    snprintf(u[4], sizeof(u[4]), "%s/key-change", b);
    json_object_set_new(meta, "externalAccountRequired", json_boolean(!srv->cfg->eab_optional));
    if (srv->cfg->terms_of_service != NULL)
        json_object_set_new(meta, "termsOfService", json_string(srv->cfg->terms_of_service));
    if (srv->cfg->website != NULL)
        json_object_set_new(meta, "website", json_string(srv->cfg->website));
    {
        struct pol_set *pol = gw_policy_get(srv);
        json_t *profiles = gw_profiles_meta(pol); /* draft-aaron-acme-profiles */
        pol_set_unref(pol);
        if (profiles != NULL)
            json_object_set_new(meta, "profiles", profiles);
    }
    d = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "newNonce", u[0], "newAccount", u[1],
                  "newOrder", u[2], "revokeCert", u[3], "keyChange", u[4], "renewalInfo", u[5],
                  "meta", meta);
    if (d == NULL)
        return AGW_ERR_NOMEM;
    {
        char *text = json_dumps(d, JSON_INDENT(2));
        size_t len = text != NULL ? strlen(text) : 0;
        struct gw_text *t = text != NULL ? malloc(sizeof(*t) + len + 1) : NULL, *old;

        json_decref(d);
        if (t == NULL) {
            free(text);
            return AGW_ERR_NOMEM;
        }
        t->len = len;
        t->retired_next = NULL;
        memcpy(t->s, text, len + 1);
        free(text);
        pthread_mutex_lock(&srv->policy_lock); /* serialises publishers, not readers */
        old = __atomic_exchange_n(&srv->directory, t, __ATOMIC_ACQ_REL);
        t->retired_next = old; /* the old one keeps its own chain of older ones */
        pthread_mutex_unlock(&srv->policy_lock);
    }
    return 0;
}

void gw_acme_directory_free(struct gw_server *srv)
{
    struct gw_text *t = srv->directory;

    srv->directory = NULL;
    while (t != NULL) {
        struct gw_text *next = t->retired_next;
        free(t);
        t = next;
    }
}

/* ---------------------------------------------------------------- account key cache */

/*
 * Every kid-signed request needs the account's public key. Parsing the stored JWK and checking
 * the point costs as much as the signature check itself, so parsed keys are kept: direct-mapped by
 * account id, valid only while the stored thumbprint matches (a key rollover is a miss). The
 * account row is still read on every request, so a deactivation takes effect at once.
 */
#define KEY_CACHE_SLOTS 1024

static struct {
    pthread_mutex_t lock; /* guards slots; never held across I/O or crypto */
    struct {
        char id[ST_ID_LEN];
        char thumbprint[ST_THUMB_LEN];
        EVP_PKEY *key;
    } slots[KEY_CACHE_SLOTS];
} key_cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

static size_t key_slot(const char *id)
{
    size_t h = 5381;
    for (; *id != '\0'; id++)
        h = h * 33 + (unsigned char)*id;
    return h % KEY_CACHE_SLOTS;
}

/* A new reference to the account's key, from the cache or parsed from a->jwk_json. */
static int account_key(const struct st_account *a, EVP_PKEY **out)
{
    size_t i = key_slot(a->id);
    json_t *jwk;
    int err;

    *out = NULL;
    pthread_mutex_lock(&key_cache.lock);
    if (key_cache.slots[i].key != NULL && strcmp(key_cache.slots[i].id, a->id) == 0 &&
        strcmp(key_cache.slots[i].thumbprint, a->thumbprint) == 0 &&
        EVP_PKEY_up_ref(key_cache.slots[i].key) == 1)
        *out = key_cache.slots[i].key;
    pthread_mutex_unlock(&key_cache.lock);
    if (*out != NULL)
        return 0;
    jwk = json_loads(a->jwk_json, 0, NULL);
    err = jwk != NULL ? gw_jwk_to_pkey(jwk, out) : AGW_ERR_STORE;
    json_decref(jwk);
    if (err != 0)
        return err;
    pthread_mutex_lock(&key_cache.lock);
    if (EVP_PKEY_up_ref(*out) == 1) {
        EVP_PKEY *old = key_cache.slots[i].key;
        key_cache.slots[i].key = *out;
        snprintf(key_cache.slots[i].id, sizeof(key_cache.slots[i].id), "%s", a->id);
        snprintf(key_cache.slots[i].thumbprint, sizeof(key_cache.slots[i].thumbprint), "%s",
                 a->thumbprint);
        EVP_PKEY_free(old);
    }
    pthread_mutex_unlock(&key_cache.lock);
    return 0;
}

void gw_acme_cache_free(void)
{
    pthread_mutex_lock(&key_cache.lock);
    for (size_t i = 0; i < KEY_CACHE_SLOTS; i++) {
        EVP_PKEY_free(key_cache.slots[i].key);
        key_cache.slots[i].key = NULL;
    }
    pthread_mutex_unlock(&key_cache.lock);
}

/* ---------------------------------------------------------------- authentication */

/* Splits "/kind/id[/rest]"; id must be base64url or hex, bounded. */
static int path_id(const char *path, const char *kind, char *id, size_t id_size,
                   const char **rest)
{
    size_t klen = strlen(kind), n = 0;
    const char *p;

    if (path[0] != '/' || strncmp(path + 1, kind, klen) != 0 || path[1 + klen] != '/')
        return 0;
    p = path + 2 + klen;
    while (p[n] != '\0' && p[n] != '/') {
        if (!(isalnum((unsigned char)p[n]) || p[n] == '-' || p[n] == '_') || n + 1 >= id_size)
            return 0;
        n++;
    }
    if (n == 0)
        return 0;
    memcpy(id, p, n);
    id[n] = '\0';
    *rest = p + n;
    return 1;
}

enum key_mode { KEY_KID, KEY_JWK, KEY_EITHER };

static int acme_authenticate(struct acme_ctx *c, enum key_mode mode)
{
    const struct gw_request *req = c->req;
    struct gw_server *srv = c->srv;
    char want_url[GW_MAX_URL_LEN + 1];
    int err;

    if (strncmp(req->content_type, "application/jose+json", 21) != 0 ||
        (req->content_type[21] != '\0' && req->content_type[21] != ';')) {
        gw_response_problem(c->resp, AGW_ERR_UNSUPPORTED_MEDIA,
                            "Content-Type must be application/jose+json");
        return AGW_ERR_UNSUPPORTED_MEDIA;
    }
    if (req->body_len > srv->cfg->max_body) {
        gw_response_problem(c->resp, AGW_ERR_TOO_LARGE, "request body is too large");
        return AGW_ERR_TOO_LARGE;
    }
    err = gw_jws_parse(req->body, req->body_len, &c->jws);
    if (err != 0) {
        gw_response_problem(c->resp, err,
                            err == AGW_ERR_BAD_SIG_ALG
                                ? "unsupported JWS algorithm (use RS256, ES256, ES384, ES512 "
                                  "or EdDSA)"
                                : "request is not a valid flattened JWS");
        return err;
    }
    if (c->jws.nonce == NULL ||
        gw_nonce_redeem(srv->nonces, c->jws.nonce, strlen(c->jws.nonce)) != 0) {
        gw_response_problem(c->resp, AGW_ERR_BAD_NONCE, "JWS has an invalid anti-replay nonce");
        return AGW_ERR_BAD_NONCE;
    }
    snprintf(want_url, sizeof(want_url), "%s%s", srv->cfg->base_url, req->path);
    if (c->jws.url == NULL || strcmp(c->jws.url, want_url) != 0) {
        gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED,
                            "JWS url does not match the request URL");
        return AGW_ERR_UNAUTHORIZED;
    }
    if (c->jws.kid != NULL) {
        char prefix[600], id[ST_ID_LEN];
        size_t plen;

        if (mode == KEY_JWK) {
            gw_response_problem(c->resp, AGW_ERR_BAD_INPUT,
                                "this resource needs a jwk in the protected header, not a kid");
            return AGW_ERR_BAD_INPUT;
        }
        plen = (size_t)snprintf(prefix, sizeof(prefix), "%s/acct/", srv->cfg->base_url);
        if (strncmp(c->jws.kid, prefix, plen) != 0 || strlen(c->jws.kid + plen) >= ST_ID_LEN) {
            gw_response_problem(c->resp, AGW_ERR_ACCOUNT_DOES_NOT_EXIST,
                                "kid does not name an account of this server");
            return AGW_ERR_ACCOUNT_DOES_NOT_EXIST;
        }
        snprintf(id, sizeof(id), "%s", c->jws.kid + plen);
        err = st_account_get(srv->store, id, &c->acct);
        if (err != 0) {
            err = err == AGW_ERR_NOT_FOUND ? AGW_ERR_ACCOUNT_DOES_NOT_EXIST : err;
            gw_response_problem(c->resp, err, err == AGW_ERR_ACCOUNT_DOES_NOT_EXIST
                                                  ? "no account with this kid"
                                                  : "could not read the account");
            return err;
        }
        c->have_acct = 1;
        if (strcmp(c->acct.status, "valid") != 0) {
            gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED, "the account is not valid");
            return AGW_ERR_UNAUTHORIZED;
        }
        err = account_key(&c->acct, &c->key);
        if (err != 0) {
            gw_response_problem(c->resp, AGW_ERR_INTERNAL, "could not load the account key");
            return err;
        }
    } else {
        if (mode == KEY_KID) {
            gw_response_problem(c->resp, AGW_ERR_BAD_INPUT,
                                "this resource needs a kid in the protected header, not a jwk");
            return AGW_ERR_BAD_INPUT;
        }
        err = gw_jwk_to_pkey(c->jws.jwk, &c->key);
        if (err != 0) {
            gw_response_problem(c->resp, err, "the jwk is not an acceptable public key");
            return err;
        }
    }
    err = gw_jws_verify(&c->jws, c->key);
    if (err != 0) {
        gw_response_problem(c->resp, err,
                            err == AGW_ERR_BAD_SIG_ALG
                                ? "JWS algorithm does not match the key"
                                : "JWS signature does not verify");
        return err;
    }
    return 0;
}

/* ---------------------------------------------------------------- accounts */

static json_t *account_json(const struct acme_ctx *c, const struct st_account *a)
{
    json_t *contact = json_loads(a->contact_json != NULL ? a->contact_json : "[]", 0, NULL);
    char *orders = fmt_alloc("%s/acct/%s/orders", c->srv->cfg->base_url, a->id);
    json_t *o = json_pack("{s:s, s:o, s:s}", "status", a->status, "contact",
                          contact != NULL ? contact : json_array(), "orders",
                          orders != NULL ? orders : "");

    free(orders);
    if (a->eab_kid[0] != '\0')
        json_object_set_new(o, "externalAccountBinding",
                            json_pack("{s:s}", "kid", a->eab_kid));
    return o;
}

/* RFC 8555 §7.3: contact is an array of mailto: URLs (we accept nothing else). */
static int contacts_check(const json_t *contact, char **out, const char **detail)
{
    size_t i;
    json_t *v;

    *out = NULL;
    if (contact == NULL) {
        *out = strdup("[]");
        return *out != NULL ? 0 : AGW_ERR_NOMEM;
    }
    if (!json_is_array(contact) || json_array_size(contact) > MAX_CONTACTS) {
        *detail = "contact must be an array of at most 10 mailto: URLs";
        return AGW_ERR_BAD_INPUT;
    }
    json_array_foreach(contact, i, v)
    {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);

        if (s == NULL || n < 8 || n > MAX_CONTACT_LEN || strncmp(s, "mailto:", 7) != 0 ||
            strchr(s, '?') != NULL || strchr(s, ',') != NULL || strchr(s + 7, '@') == NULL) {
            *detail = "each contact must be a mailto: URL with one address and no headers";
            return AGW_ERR_INVALID_CONTACT;
        }
        for (size_t k = 0; k < n; k++) {
            if ((unsigned char)s[k] <= 0x20 || (unsigned char)s[k] >= 0x7f) {
                *detail = "contact contains a character that is not allowed";
                return AGW_ERR_INVALID_CONTACT;
            }
        }
    }
    *out = json_dumps(contact, JSON_COMPACT);
    return *out != NULL ? 0 : AGW_ERR_NOMEM;
}

static void account_reply(struct acme_ctx *c, int status, const struct st_account *a)
{
    c->resp->location = url_for(c->srv, "acct", a->id);
    set_json(c->resp, status, account_json(c, a));
}

static void handle_new_account(struct acme_ctx *c)
{
    struct gw_server *srv = c->srv;
    json_t *p = c->jws.payload;
    struct st_account a, existing;
    char thumb[ST_THUMB_LEN], kid[ST_KID_LEN], url[600], existing_id[ST_ID_LEN];
    unsigned char hmac[ST_HMAC_MAX];
    size_t hmac_len = 0;
    struct st_eab eab;
    const json_t *eab_obj;
    const char *detail = NULL;
    char *contact = NULL;
    int err;

    memset(&a, 0, sizeof(a));
    memset(&existing, 0, sizeof(existing));
    if (c->jws.post_as_get || p == NULL) {
        gw_response_problem(c->resp, AGW_ERR_BAD_INPUT, "newAccount needs a JSON payload");
        return;
    }
    if (gw_jwk_thumbprint(c->jws.jwk, thumb, sizeof(thumb)) != 0) {
        gw_response_problem(c->resp, AGW_ERR_BAD_INPUT, "cannot compute the jwk thumbprint");
        return;
    }
    err = st_account_by_thumbprint(srv->store, thumb, &existing);
    if (err == 0) {
        /* §7.3.1: an existing key returns its account (200), whatever else the payload says */
        account_reply(c, 200, &existing);
        st_account_clear(&existing);
        return;
    }
    if (err != AGW_ERR_NOT_FOUND) {
        gw_response_problem(c->resp, err, "could not look up the account");
        return;
    }
    if (json_is_true(json_object_get(p, "onlyReturnExisting"))) {
        gw_response_problem(c->resp, AGW_ERR_ACCOUNT_DOES_NOT_EXIST,
                            "no account exists with this key");
        return;
    }
    {
        json_t *tos = json_object_get(p, "termsOfServiceAgreed");
        if (tos != NULL && !json_is_boolean(tos)) {
            gw_response_problem(c->resp, AGW_ERR_BAD_INPUT,
                                "termsOfServiceAgreed must be a boolean");
            return;
        }
        if (srv->cfg->terms_of_service != NULL && !json_is_true(tos)) {
            gw_response_problem(c->resp, AGW_ERR_USER_ACTION_REQUIRED,
                                "you must agree to the terms of service");
            return;
        }
    }
    err = contacts_check(json_object_get(p, "contact"), &contact, &detail);
    if (err != 0) {
        gw_response_problem(c->resp, err, detail);
        return;
    }
    eab_obj = json_object_get(p, "externalAccountBinding");
    if (eab_obj == NULL && !srv->cfg->eab_optional) {
        gw_response_problem(c->resp, AGW_ERR_EXTERNAL_ACCOUNT_REQUIRED,
                            "this server requires an external account binding (EAB)");
        goto out;
    }
    if (eab_obj != NULL) {
        snprintf(url, sizeof(url), "%s/new-account", srv->cfg->base_url);
        err = gw_eab_parse(eab_obj, url, c->jws.jwk, kid, sizeof(kid));
        if (err != 0) {
            gw_response_problem(c->resp, err, "externalAccountBinding is malformed");
            goto out;
        }
        err = st_eab_get(srv->store, kid, &eab, hmac, &hmac_len);
        if (err == 0 && eab.revoked != 0)
            err = AGW_ERR_UNAUTHORIZED;
        if (err == 0)
            err = gw_eab_verify(eab_obj, hmac, hmac_len);
        OPENSSL_cleanse(hmac, sizeof(hmac));
        if (err != 0) {
            LOG_WARN("acme.eab_rejected", "kid=%s client=%s", kid, c->req->client_ip);
            gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED,
                                "external account binding is not valid");
            goto out;
        }
        {
            struct pol_set *pol = gw_policy_get(srv);
            const struct pol_class *cls = pol_class_find(pol, eab.class_name);
            const char *why = NULL;

            if (cls == NULL)
                why = "the EAB key's device class has no policy";
            else if (!pol_class_eab_multiple_accounts(cls) && eab.n_accounts > 0)
                why = "this EAB key is already bound to an account (single-use class)";
            else if (!pol_class_eab_multiple_accounts(cls))
                a.eab_max_accounts = 1; /* the store enforces it against a race, too */
            pol_set_unref(pol);
            if (why != NULL) {
                LOG_WARN("acme.eab_rejected", "kid=%s client=%s reason=\"%s\"", kid,
                         c->req->client_ip, why);
                gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED, why);
                goto out;
            }
        }
        snprintf(a.eab_kid, sizeof(a.eab_kid), "%s", kid);
        snprintf(a.class_name, sizeof(a.class_name), "%s", eab.class_name);
    } else {
        snprintf(a.class_name, sizeof(a.class_name), "default");
    }
    snprintf(a.thumbprint, sizeof(a.thumbprint), "%s", thumb);
    snprintf(a.status, sizeof(a.status), "valid");
    a.created = c->now;
    if (gw_jwk_canonical(c->jws.jwk, &a.jwk_json) != 0) {
        gw_response_problem(c->resp, AGW_ERR_NOMEM, NULL);
        goto out;
    }
    a.contact_json = contact;
    contact = NULL;
    err = st_account_create(srv->store, &a, existing_id);
    if (err == AGW_ERR_CONFLICT) {
        /* raced with another request for the same key: return that account */
        if (st_account_get(srv->store, existing_id, &existing) == 0) {
            account_reply(c, 200, &existing);
            st_account_clear(&existing);
        } else {
            gw_response_problem(c->resp, AGW_ERR_CONFLICT, "account exists");
        }
        goto out;
    }
    if (err != 0) {
        gw_response_problem(c->resp, err, "could not create the account");
        goto out;
    }
    LOG_INFO("acme.account_created", "account=%s eab=%s class=%s client=%s", a.id, a.eab_kid,
             a.class_name, c->req->client_ip);
    account_reply(c, 201, &a);
out:
    free(contact);
    st_account_clear(&a);
}

static void handle_account(struct acme_ctx *c, const char *id)
{
    json_t *p = c->jws.payload;
    int err;

    if (strcmp(id, c->acct.id) != 0) {
        gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED, "kid does not match the account URL");
        return;
    }
    if (!c->jws.post_as_get && p != NULL) {
        json_t *status = json_object_get(p, "status");
        json_t *contact = json_object_get(p, "contact");
        if (status != NULL) {
            if (!json_is_string(status) ||
                strcmp(json_string_value(status), "deactivated") != 0) {
                gw_response_problem(c->resp, AGW_ERR_BAD_INPUT,
                                    "status may only be set to \"deactivated\"");
                return;
            }
        }
        if (contact != NULL) {
            char *cj = NULL;
            const char *detail = NULL;
            err = contacts_check(contact, &cj, &detail);
            if (err != 0) {
                gw_response_problem(c->resp, err, detail);
                return;
            }
            err = st_account_set_contact(c->srv->store, c->acct.id, cj);
            if (err == 0) {
                free(c->acct.contact_json);
                c->acct.contact_json = cj;
                cj = NULL;
            }
            free(cj);
            if (err != 0) {
                gw_response_problem(c->resp, err, "could not update the account");
                return;
            }
        }
        if (status != NULL) {
            err = st_account_deactivate(c->srv->store, c->acct.id);
            if (err != 0) {
                gw_response_problem(c->resp, err, "could not deactivate the account");
                return;
            }
            snprintf(c->acct.status, sizeof(c->acct.status), "deactivated");
            LOG_INFO("acme.account_deactivated", "account=%s", c->acct.id);
        }
    }
    account_reply(c, 200, &c->acct);
}

static void handle_account_orders(struct acme_ctx *c, const char *id)
{
    char(*ids)[ST_ID_LEN] = NULL;
    size_t n = 0;
    json_t *list;
    int err;

    if (strcmp(id, c->acct.id) != 0) {
        gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED, "kid does not match the account URL");
        return;
    }
    err = st_order_ids_by_account(c->srv->store, id, MAX_ORDERS_LIST, &ids, &n);
    if (err != 0) {
        gw_response_problem(c->resp, err, "could not list orders");
        return;
    }
    list = json_array();
    for (size_t i = 0; i < n; i++) {
        char *u = url_for(c->srv, "order", ids[i]);
        if (u != NULL)
            json_array_append_new(list, json_string(u));
        free(u);
    }
    free(ids);
    set_json(c->resp, 200, json_pack("{s:o}", "orders", list));
}

/* §7.3.5: the payload is a JWS signed by the new key over {account, oldKey}. */
static void handle_key_change(struct acme_ctx *c)
{
    struct gw_jws inner;
    EVP_PKEY *newkey = NULL;
    json_t *old_jwk = NULL;
    char thumb[ST_THUMB_LEN], old_thumb[ST_THUMB_LEN];
    char *canon = NULL, *acct_url = NULL;
    struct st_account other;
    int err;

    memset(&inner, 0, sizeof(inner));
    memset(&other, 0, sizeof(other));
    if (c->jws.payload == NULL) {
        gw_response_problem(c->resp, AGW_ERR_BAD_INPUT, "keyChange needs a JWS payload");
        return;
    }
    err = gw_jws_parse_json(c->jws.payload, &inner);
    if (err != 0 || inner.jwk == NULL || inner.kid != NULL || inner.nonce != NULL ||
        inner.payload == NULL) {
        gw_response_problem(c->resp, err == AGW_ERR_BAD_SIG_ALG ? err : AGW_ERR_BAD_INPUT,
                            "inner JWS must have a jwk, no kid, no nonce and a payload");
        goto out;
    }
    if (inner.url == NULL || strcmp(inner.url, c->jws.url) != 0) {
        gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED,
                            "inner JWS url does not match the outer url");
        goto out;
    }
    err = gw_jwk_to_pkey(inner.jwk, &newkey);
    if (err == 0)
        err = gw_jws_verify(&inner, newkey);
    if (err != 0) {
        gw_response_problem(c->resp, err, "inner JWS does not verify with its jwk");
        goto out;
    }
    acct_url = url_for(c->srv, "acct", c->acct.id);
    {
        const char *account = json_string_value(json_object_get(inner.payload, "account"));
        old_jwk = json_object_get(inner.payload, "oldKey");
        if (account == NULL || acct_url == NULL || strcmp(account, acct_url) != 0) {
            gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED,
                                "inner payload account does not match the kid");
            goto out;
        }
    }
    if (old_jwk == NULL || gw_jwk_thumbprint(old_jwk, old_thumb, sizeof(old_thumb)) != 0 ||
        strcmp(old_thumb, c->acct.thumbprint) != 0) {
        gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED,
                            "oldKey is not the account's current key");
        goto out;
    }
    if (gw_jwk_thumbprint(inner.jwk, thumb, sizeof(thumb)) != 0 ||
        gw_jwk_canonical(inner.jwk, &canon) != 0) {
        gw_response_problem(c->resp, AGW_ERR_BAD_INPUT, "new key is not usable");
        goto out;
    }
    if (st_account_by_thumbprint(c->srv->store, thumb, &other) == 0) {
        c->resp->location = url_for(c->srv, "acct", other.id);
        gw_response_problem(c->resp, AGW_ERR_CONFLICT, "the new key is already in use");
        goto out;
    }
    err = st_account_set_key(c->srv->store, c->acct.id, thumb, canon);
    if (err != 0) {
        gw_response_problem(c->resp, err, "could not change the account key");
        goto out;
    }
    LOG_INFO("acme.key_changed", "account=%s", c->acct.id);
    snprintf(c->acct.thumbprint, sizeof(c->acct.thumbprint), "%s", thumb);
    account_reply(c, 200, &c->acct);
out:
    st_account_clear(&other);
    free(canon);
    free(acct_url);
    EVP_PKEY_free(newkey);
    gw_jws_clear(&inner);
}

/* ---------------------------------------------------------------- orders */

void gw_time_rfc3339(int64_t t, char *buf, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;

    gmtime_r(&tt, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void authz_list_free(struct st_authz *az, size_t n)
{
    for (size_t i = 0; az != NULL && i < n; i++)
        st_authz_clear(&az[i]);
    free(az);
}

/* The order as RFC 8555 §7.1.3 shows it. az/n: its authorizations if the caller has them (read
 * for order_refresh, or just created), else NULL: they are read here. */
static json_t *order_json(struct acme_ctx *c, const struct st_order *o, const struct st_authz *az,
                          size_t n)
{
    struct st_authz *own = NULL;
    char ts[32];
    json_t *obj, *authzs = json_array();
    char *fin = fmt_alloc("%s/order/%s/finalize", c->srv->cfg->base_url, o->id);

    if (az == NULL && st_authz_list_by_order(c->srv->store, o->id, &own, &n) == 0)
        az = own;
    for (size_t i = 0; az != NULL && i < n; i++) {
        char *u = url_for(c->srv, "authz", az[i].id);
        if (u != NULL)
            json_array_append_new(authzs, json_string(u));
        free(u);
    }
    if (own != NULL)
        authz_list_free(own, n);
    gw_time_rfc3339(o->expires, ts, sizeof(ts));
    obj = json_pack("{s:s, s:s, s:o, s:o, s:s}", "status", o->status, "expires", ts,
                    "identifiers", json_loads(o->identifiers_json, 0, NULL), "authorizations",
                    authzs, "finalize", fin != NULL ? fin : "");
    free(fin);
    if (o->not_before != 0) {
        gw_time_rfc3339(o->not_before, ts, sizeof(ts));
        json_object_set_new(obj, "notBefore", json_string(ts));
    }
    if (o->not_after != 0) {
        gw_time_rfc3339(o->not_after, ts, sizeof(ts));
        json_object_set_new(obj, "notAfter", json_string(ts));
    }
    if (o->cert_serial[0] != '\0') {
        char *u = url_for(c->srv, "cert", o->cert_serial);
        json_object_set_new(obj, "certificate", json_string(u != NULL ? u : ""));
        free(u);
    }
    if (o->profile[0] != '\0')
        json_object_set_new(obj, "profile", json_string(o->profile));
    if (o->replaces[0] != '\0')
        json_object_set_new(obj, "replaces", json_string(o->replaces));
    if (o->error_json != NULL)
        json_object_set_new(obj, "error", json_loads(o->error_json, 0, NULL));
    return obj;
}

/* Brings a stored order up to date (§7.1.6). pending -> ready is stored (finalize depends on it);
 * invalid because expired or because an authorization went invalid/deactivated is derived at
 * read time and not written, so a read never changes the store. The authorizations it read are
 * left in *az_out / *n_out for order_json (NULL if none were read); free with authz_list_free. */
static void order_refresh(struct acme_ctx *c, struct st_order *o, struct st_authz **az_out,
                          size_t *n_out)
{
    struct gw_server *srv = c->srv;
    struct st_authz *az = NULL;
    size_t n = 0;
    int all_valid = 1, any_invalid = 0;

    *az_out = NULL;
    *n_out = 0;
    if (strcmp(o->status, "pending") != 0 && strcmp(o->status, "ready") != 0)
        return;
    if (o->expires != 0 && o->expires < c->now) {
        snprintf(o->status, sizeof(o->status), "invalid");
        return;
    }
    if (st_authz_list_by_order(srv->store, o->id, &az, &n) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(az[i].status, "valid") != 0)
            all_valid = 0;
        if (strcmp(az[i].status, "invalid") == 0 || strcmp(az[i].status, "deactivated") == 0 ||
            strcmp(az[i].status, "revoked") == 0 || strcmp(az[i].status, "expired") == 0 ||
            (az[i].expires != 0 && az[i].expires < c->now))
            any_invalid = 1;
    }
    *az_out = az;
    *n_out = n;
    if (any_invalid) {
        snprintf(o->status, sizeof(o->status), "invalid");
    } else if (all_valid && n > 0 && strcmp(o->status, "pending") == 0) {
        if (st_order_transition(srv->store, o->id, "pending", "ready", NULL) == 0)
            snprintf(o->status, sizeof(o->status), "ready");
    }
}

static void order_reply(struct acme_ctx *c, int status, struct st_order *o,
                        const struct st_authz *az, size_t n)
{
    c->resp->location = url_for(c->srv, "order", o->id);
    set_json(c->resp, status, order_json(c, o, az, n));
    if (strcmp(o->status, "processing") == 0)
        c->resp->retry_after = 1;
}

static int load_own_order(struct acme_ctx *c, const char *id, struct st_order *o)
{
    int err = st_order_get(c->srv->store, id, o);

    if (err == 0 && strcmp(o->account_id, c->acct.id) != 0)
        err = AGW_ERR_NOT_FOUND; /* do not reveal other accounts' orders */
    if (err != 0) {
        gw_response_problem(c->resp, err, err == AGW_ERR_NOT_FOUND ? "no such order" : NULL);
        st_order_clear(o);
    }
    return err;
}

/* Lower-cases ASCII and checks the bounds of one identifier; 0 or AGW_ERR_BAD_INPUT. */
static int ident_normalise(const json_t *id, char *type, size_t type_size, char *value,
                           size_t value_size)
{
    const char *t = json_string_value(json_object_get(id, "type"));
    const json_t *v = json_object_get(id, "value");
    size_t n;

    if (!json_is_object(id) || t == NULL || !json_is_string(v) || json_object_size(id) != 2)
        return AGW_ERR_BAD_INPUT;
    n = json_string_length(v);
    if (strlen(t) >= type_size || n == 0 || n > MAX_IDENT_LEN || n >= value_size)
        return AGW_ERR_BAD_INPUT;
    snprintf(type, type_size, "%s", t);
    memcpy(value, json_string_value(v), n);
    value[n] = '\0';
    if (strlen(value) != n)
        return AGW_ERR_BAD_INPUT; /* embedded NUL */
    if (strcmp(type, "dns") == 0)
        for (size_t i = 0; i < n; i++)
            value[i] = (char)tolower((unsigned char)value[i]);
    return 0;
}

static void handle_new_order(struct acme_ctx *c)
{
    struct gw_server *srv = c->srv;
    json_t *p = c->jws.payload, *ids, *id, *canon_ids = NULL, *problem = NULL;
    struct pol_set *pol = NULL;
    const struct pol_class *cls;
    struct pol_identifier *pids = NULL;
    char(*types)[16] = NULL;
    char(*values)[MAX_IDENT_LEN + 1] = NULL;
    int *results = NULL;
    struct st_order o;
    struct st_authz *az = NULL;
    struct st_new_challenge *ch = NULL;
    size_t n = 0, i, n_unique = 0;
    int err, pre;

    memset(&o, 0, sizeof(o));
    ids = p != NULL ? json_object_get(p, "identifiers") : NULL;
    if (ids == NULL || !json_is_array(ids) || json_array_size(ids) == 0) {
        gw_response_problem(c->resp, AGW_ERR_BAD_INPUT,
                            "newOrder needs a non-empty identifiers array");
        return;
    }
    n = json_array_size(ids);
    if (n > srv->cfg->max_identifiers) {
        gw_response_problem(c->resp, AGW_ERR_REJECTED_IDENTIFIER, "too many identifiers");
        return;
    }
    if (json_object_get(p, "notBefore") != NULL || json_object_get(p, "notAfter") != NULL) {
        gw_response_problem(c->resp, AGW_ERR_BAD_INPUT,
                            "notBefore and notAfter are not supported: validity comes from "
                            "the policy of your device class");
        return;
    }
    pol = gw_policy_get(srv);
    cls = pol != NULL ? pol_class_find(pol, c->acct.class_name) : NULL;
    if (cls == NULL) {
        gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED,
                            "the account's device class has no policy");
        goto out;
    }
    if (n > pol_class_max_identifiers(cls)) {
        gw_response_problem(c->resp, AGW_ERR_REJECTED_IDENTIFIER,
                            "too many identifiers for this device class");
        goto out;
    }
    {
        /* draft-aaron-acme-profiles and RFC 9773 §5: checked before anything is counted or
         * stored */
        json_t *pv = json_object_get(p, "profile"), *rv = json_object_get(p, "replaces");
        const char *detail = NULL;
        if (pv != NULL && gw_profile_check(cls, pv, o.profile, sizeof(o.profile), &detail) != 0) {
            gw_response_problem(c->resp, AGW_ERR_INVALID_PROFILE, detail);
            goto out;
        }
        if (rv != NULL) {
            err = gw_ari_check_replaces(srv, c->acct.id, rv, c->now, o.replaces, &problem);
            if (err != 0) {
                set_problem_json(c->resp, err, problem);
                problem = NULL;
                goto out;
            }
        }
    }
    if (gw_quota_check(c->srv, cls, &c->acct, c->now, c->resp) != 0)
        goto out;
    pids = calloc(n, sizeof(*pids));
    types = calloc(n, sizeof(*types));
    values = calloc(n, sizeof(*values));
    results = calloc(n, sizeof(*results));
    az = calloc(n, sizeof(*az));
    ch = calloc(n, sizeof(*ch));
    canon_ids = json_array();
    if (pids == NULL || types == NULL || values == NULL || results == NULL || az == NULL ||
        ch == NULL) {
        gw_response_problem(c->resp, AGW_ERR_NOMEM, NULL);
        goto out;
    }
    json_array_foreach(ids, i, id)
    {
        char t[16], v[MAX_IDENT_LEN + 1];
        int dup = 0;
        if (ident_normalise(id, t, sizeof(t), v, sizeof(v)) != 0) {
            gw_response_problem(c->resp, AGW_ERR_BAD_INPUT,
                                "each identifier needs a type and a value of at most 253 bytes");
            goto out;
        }
        for (size_t k = 0; k < n_unique; k++)
            if (strcmp(types[k], t) == 0 && strcmp(values[k], v) == 0)
                dup = 1;
        if (dup)
            continue;
        memcpy(types[n_unique], t, sizeof(t));
        memcpy(values[n_unique], v, sizeof(v));
        pids[n_unique].type = types[n_unique];
        pids[n_unique].value = values[n_unique];
        n_unique++;
    }
    err = pol_check_identifiers(cls, pids, n_unique, c->req->client_ip, results);
    if (err != 0) {
        problem = gw_problem_new(AGW_ERR_REJECTED_IDENTIFIER,
                                 "one or more identifiers are not allowed for this account");
        for (i = 0; i < n_unique; i++)
            if (results[i] != 0)
                gw_problem_add_sub(problem,
                                   results[i] == AGW_ERR_UNAUTHORIZED ? AGW_ERR_REJECTED_IDENTIFIER
                                                                      : results[i],
                                   results[i] == AGW_ERR_UNSUPPORTED_IDENTIFIER
                                       ? "identifier type is not supported"
                                   : results[i] == AGW_ERR_BAD_INPUT
                                       ? "identifier is malformed"
                                   : results[i] == AGW_ERR_UNAUTHORIZED
                                       ? "this class may not use this identifier from your "
                                         "network address"
                                       : "identifier is not allowed by the policy",
                                   pids[i].type, pids[i].value);
        /* §6.7.1: when every failure is of one kind the top level says so (e.g. all
         * malformed); mixed failures are rejectedIdentifier. Subproblems either way. */
        {
            int top = 0;
            for (i = 0; i < n_unique; i++) {
                int r = results[i] == AGW_ERR_UNAUTHORIZED ? AGW_ERR_REJECTED_IDENTIFIER
                                                           : results[i];
                if (r != 0)
                    top = top == 0 || top == r ? r : AGW_ERR_REJECTED_IDENTIFIER;
            }
            json_object_set_new(problem, "type",
                                json_string(top == AGW_ERR_BAD_INPUT
                                                ? "urn:ietf:params:acme:error:malformed"
                                            : top == AGW_ERR_UNSUPPORTED_IDENTIFIER
                                                ? "urn:ietf:params:acme:error:"
                                                  "unsupportedIdentifier"
                                                : "urn:ietf:params:acme:error:rejectedIdentifier"));
            set_problem_json(c->resp, top, problem);
        }
        problem = NULL;
        LOG_INFO("acme.order_rejected", "account=%s class=%s n=%zu", c->acct.id,
                 c->acct.class_name, n_unique);
        goto out;
    }
    pre = pol_class_validation(cls) == POL_VALIDATE_PRE_AUTHORIZED;
    for (i = 0; i < n_unique; i++) {
        json_array_append_new(canon_ids,
                              json_pack("{s:s, s:s}", "type", types[i], "value", values[i]));
        snprintf(az[i].account_id, sizeof(az[i].account_id), "%s", c->acct.id);
        snprintf(az[i].id_type, sizeof(az[i].id_type), "%s", types[i]);
        az[i].id_value = values[i];
        snprintf(az[i].status, sizeof(az[i].status), pre ? "valid" : "pending");
        az[i].expires = c->now + srv->cfg->order_lifetime_s;
        ch[i].authz_index = i;
        snprintf(ch[i].c.type, sizeof(ch[i].c.type), "http-01");
        snprintf(ch[i].c.status, sizeof(ch[i].c.status), pre ? "valid" : "pending");
        ch[i].c.validated = pre ? c->now : 0;
        if (st_random_id(ch[i].c.token, sizeof(ch[i].c.token)) != 0) {
            gw_response_problem(c->resp, AGW_ERR_INTERNAL, NULL);
            goto out;
        }
    }
    snprintf(o.account_id, sizeof(o.account_id), "%s", c->acct.id);
    snprintf(o.status, sizeof(o.status), pre ? "ready" : "pending");
    snprintf(o.class_name, sizeof(o.class_name), "%s", pol_class_name(cls));
    o.created = c->now;
    o.expires = c->now + srv->cfg->order_lifetime_s;
    o.identifiers_json = json_dumps(canon_ids, JSON_COMPACT);
    if (o.identifiers_json == NULL) {
        gw_response_problem(c->resp, AGW_ERR_NOMEM, NULL);
        goto out;
    }
    /* the order quotas are counted inside the store's transaction, so they hold under
     * concurrency (two requests, two instances) */
    o.max_pending = pol_class_quotas(cls)->pending_orders_per_account;
    o.max_per_eab_hour = pol_class_quotas(cls)->orders_per_eab_key_per_hour;
    snprintf(o.eab_kid, sizeof(o.eab_kid), "%s", c->acct.eab_kid);
    err = st_order_create(srv->store, &o, az, n_unique, ch, n_unique);
    if (err == AGW_ERR_RATE_LIMITED) {
        char detail[200];
        snprintf(detail, sizeof(detail),
                 "quota: at most %u orders per account waiting for finalization and %u new "
                 "orders per EAB key per hour (0 = no limit)",
                 pol_class_quotas(cls)->pending_orders_per_account,
                 pol_class_quotas(cls)->orders_per_eab_key_per_hour);
        LOG_INFO("acme.rate_limited", "account=%s class=%s reason=orders", c->acct.id,
                 c->acct.class_name);
        gw_response_problem(c->resp, err, detail);
        goto out;
    }
    if (err == AGW_ERR_CONFLICT && o.replaces[0] != '\0') {
        problem = gw_problem_new(AGW_ERR_CONFLICT,
                                 "this certificate was already replaced by another order");
        json_object_set_new(problem, "type",
                            json_string("urn:ietf:params:acme:error:alreadyReplaced"));
        set_problem_json(c->resp, AGW_ERR_CONFLICT, problem);
        problem = NULL;
        goto out;
    }
    if (err != 0) {
        gw_response_problem(c->resp, err, "could not create the order");
        goto out;
    }
    if (pre)
        LOG_INFO("acme.preauthorized", "account=%s class=%s order=%s client=%s identifiers=%s",
                 c->acct.id, o.class_name, o.id, c->req->client_ip, o.identifiers_json);
    LOG_INFO("acme.order_created", "order=%s account=%s status=%s", o.id, c->acct.id, o.status);
    order_reply(c, 201, &o, az, n);
out:
    for (i = 0; az != NULL && i < n; i++)
        az[i].id_value = NULL; /* borrowed from values */
    json_decref(problem);
    json_decref(canon_ids);
    st_order_clear(&o);
    free(ch);
    free(az);
    free(results);
    free(values);
    free(types);
    free(pids);
    pol_set_unref(pol);
}

static void handle_order(struct acme_ctx *c, const char *id)
{
    struct st_order o;
    struct st_authz *az;
    size_t n;

    memset(&o, 0, sizeof(o));
    if (load_own_order(c, id, &o) != 0)
        return;
    order_refresh(c, &o, &az, &n);
    order_reply(c, 200, &o, az, n);
    authz_list_free(az, n);
    st_order_clear(&o);
}

static void handle_finalize(struct acme_ctx *c, const char *id)
{
    struct st_order o;
    struct st_authz *az = NULL;
    const char *csr_b64;
    unsigned char *csr = NULL;
    size_t csr_len = 0, n = 0;
    char detail[256];
    int err;

    memset(&o, 0, sizeof(o));
    if (load_own_order(c, id, &o) != 0)
        return;
    order_refresh(c, &o, &az, &n); /* finalize does not change them: they serve the reply too */
    if (strcmp(o.status, "ready") != 0) {
        if (strcmp(o.status, "processing") == 0 || strcmp(o.status, "valid") == 0) {
            /* a retried finalize: report where the order is */
            order_reply(c, 200, &o, az, n);
        } else {
            gw_response_problem(c->resp, AGW_ERR_ORDER_NOT_READY,
                                "the order is not ready for finalization");
        }
        goto out;
    }
    csr_b64 = c->jws.payload != NULL
                  ? json_string_value(json_object_get(c->jws.payload, "csr"))
                  : NULL;
    if (csr_b64 == NULL ||
        json_string_length(json_object_get(c->jws.payload, "csr")) > MAX_CSR_LEN * 4 / 3 + 4 ||
        gw_b64url_decode(csr_b64, strlen(csr_b64), &csr, &csr_len) != 0 || csr_len == 0) {
        gw_response_problem(c->resp, AGW_ERR_BAD_CSR, "csr must be base64url DER");
        goto out;
    }
    detail[0] = '\0'; /* the certificate quota is held inside (st_order_start_processing) */
    err = gw_issue_finalize(c->srv, &o, &c->acct, c->key, csr, csr_len, c->now, detail,
                            sizeof(detail));
    if (err != 0) {
        gw_response_problem(c->resp, err, detail[0] != '\0' ? detail : NULL);
        goto out;
    }
    order_reply(c, 200, &o, az, n);
out:
    authz_list_free(az, n);
    free(csr);
    st_order_clear(&o);
}

/* ---------------------------------------------------------------- authorizations, challenges */

static json_t *challenge_json(struct acme_ctx *c, const struct st_challenge *ch)
{
    char *u = url_for(c->srv, "chall", ch->id);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "type", ch->type, "url", u != NULL ? u : "",
                          "status", ch->status, "token", ch->token);
    free(u);
    if (ch->validated != 0) {
        char ts[32];
        gw_time_rfc3339(ch->validated, ts, sizeof(ts));
        json_object_set_new(o, "validated", json_string(ts));
    }
    if (ch->error_json != NULL)
        json_object_set_new(o, "error", json_loads(ch->error_json, 0, NULL));
    return o;
}

static json_t *authz_json(struct acme_ctx *c, const struct st_authz *a)
{
    struct st_challenge *chs = NULL;
    size_t n = 0;
    char ts[32];
    json_t *list = json_array(), *o;

    if (st_challenge_list_by_authz(c->srv->store, a->id, &chs, &n) == 0) {
        for (size_t i = 0; i < n; i++) {
            json_array_append_new(list, challenge_json(c, &chs[i]));
            st_challenge_clear(&chs[i]);
        }
        free(chs);
    }
    gw_time_rfc3339(a->expires, ts, sizeof(ts));
    o = json_pack("{s:{s:s, s:s}, s:s, s:s, s:o}", "identifier", "type", a->id_type, "value",
                  a->id_value, "status", a->status, "expires", ts, "challenges", list);
    if (a->wildcard)
        json_object_set_new(o, "wildcard", json_true());
    return o;
}

static int load_own_authz(struct acme_ctx *c, const char *id, struct st_authz *a)
{
    int err = st_authz_get(c->srv->store, id, a);

    if (err == 0 && strcmp(a->account_id, c->acct.id) != 0)
        err = AGW_ERR_NOT_FOUND;
    if (err != 0) {
        gw_response_problem(c->resp, err, err == AGW_ERR_NOT_FOUND ? "no such authorization"
                                                                   : NULL);
        st_authz_clear(a);
    }
    return err;
}

static void handle_authz(struct acme_ctx *c, const char *id)
{
    struct st_authz a;

    memset(&a, 0, sizeof(a));
    if (load_own_authz(c, id, &a) != 0)
        return;
    if (!c->jws.post_as_get && c->jws.payload != NULL) {
        const char *st = json_string_value(json_object_get(c->jws.payload, "status"));
        if (json_object_size(c->jws.payload) > 0) {
            if (st == NULL || strcmp(st, "deactivated") != 0) {
                gw_response_problem(c->resp, AGW_ERR_BAD_INPUT,
                                    "status may only be set to \"deactivated\"");
                goto out;
            }
            /* §7.5.2: only pending or valid authorizations can be deactivated */
            if ((strcmp(a.status, "valid") != 0 && strcmp(a.status, "pending") != 0) ||
                st_authz_transition(c->srv->store, a.id, a.status, "deactivated") != 0) {
                gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED,
                                    "only pending or valid authorizations can be deactivated");
                goto out;
            }
            snprintf(a.status, sizeof(a.status), "deactivated");
        }
    }
    {
        char *order = url_for(c->srv, "order", a.order_id);
        if (order != NULL)
            add_link(c->resp, order, "up");
        free(order);
    }
    set_json(c->resp, 200, authz_json(c, &a));
out:
    st_authz_clear(&a);
}

static void handle_challenge(struct acme_ctx *c, const char *id)
{
    struct st_challenge ch;
    struct st_authz a;
    int err;

    memset(&ch, 0, sizeof(ch));
    memset(&a, 0, sizeof(a));
    err = st_challenge_get(c->srv->store, id, &ch);
    if (err != 0) {
        gw_response_problem(c->resp, err, err == AGW_ERR_NOT_FOUND ? "no such challenge" : NULL);
        return;
    }
    if (load_own_authz(c, ch.authz_id, &a) != 0)
        goto out;
    if (!c->jws.post_as_get && strcmp(ch.status, "pending") == 0) {
        /* §7.5.1: the client says it is ready; validation runs on this worker */
        err = st_challenge_transition(c->srv->store, ch.id, "pending", "processing", 0, NULL);
        if (err == 0) {
            gw_issue_validate_challenge(c->srv, &a, &ch, c->acct.thumbprint);
            st_challenge_clear(&ch);
            err = st_challenge_get(c->srv->store, id, &ch);
            if (err != 0) {
                gw_response_problem(c->resp, err, NULL);
                goto out;
            }
        }
    }
    {
        char *up = url_for(c->srv, "authz", a.id);
        if (up != NULL)
            add_link(c->resp, up, "up");
        free(up);
    }
    set_json(c->resp, 200, challenge_json(c, &ch));
out:
    st_authz_clear(&a);
    st_challenge_clear(&ch);
}

/* ---------------------------------------------------------------- certificates */

static void handle_cert(struct acme_ctx *c, const char *serial)
{
    struct st_cert cert;
    int err;

    memset(&cert, 0, sizeof(cert));
    if (!c->jws.post_as_get) {
        gw_response_problem(c->resp, AGW_ERR_BAD_INPUT,
                            "certificate download is POST-as-GET (empty payload)");
        return;
    }
    err = st_cert_get(c->srv->store, serial, &cert);
    if (err == 0 && strcmp(cert.account_id, c->acct.id) != 0)
        err = AGW_ERR_NOT_FOUND;
    if (err != 0) {
        gw_response_problem(c->resp, err, err == AGW_ERR_NOT_FOUND ? "no such certificate" : NULL);
        st_cert_clear(&cert);
        return;
    }
    if (cert.chain_pem == NULL) {
        /* Certificates are recorded without their chain (rows from older versions keep theirs):
         * the issuer's chain as configured now, the same file at every instance. Not storing
         * it per certificate keeps a row at its DER (~0.7 KB instead of ~3 KB with the PEMs). */
        struct gw_issuer *issuer = gw_issuer_find(c->srv, cert.issuer);
        const char *ca = NULL;
        size_t ca_len = 0;

        if (issuer != NULL)
            ca = hsm_ca_chain_pem(issuer->signer, &ca_len);
        else
            LOG_WARN("acme.cert_issuer_gone", "serial=%s issuer=%s: served without its chain",
                     cert.serial, cert.issuer);
        cert.chain_pem = gw_chain_pem(cert.der, cert.der_len, ca, ca_len);
        if (cert.chain_pem == NULL) {
            gw_response_problem(c->resp, AGW_ERR_NOMEM, NULL);
            st_cert_clear(&cert);
            return;
        }
    }
    c->resp->status = 200;
    c->resp->content_type = "application/pem-certificate-chain";
    c->resp->body = cert.chain_pem;
    c->resp->body_len = strlen(cert.chain_pem);
    cert.chain_pem = NULL;
    st_cert_clear(&cert);
}

/* RFC 5280 reasons a subscriber may give (§7.6): not certificateHold (6), removeFromCRL (8),
 * privilegeWithdrawn (9) or aACompromise (10), caCompromise (2). */
static int reason_allowed(json_int_t r)
{
    return r == 0 || r == 1 || r == 3 || r == 4 || r == 5;
}

/* 1 if c's account holds valid, unexpired authorizations for every SAN of x (and x has one). */
static int account_authorized_for(struct acme_ctx *c, X509 *x)
{
    GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n = sans != NULL ? sk_GENERAL_NAME_num(sans) : 0, ok = n > 0;

    for (int i = 0; ok && i < n; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        char value[256];
        const char *type = NULL;
        int found = 0;

        if (g->type == GEN_DNS && g->d.dNSName->length > 0 &&
            (size_t)g->d.dNSName->length < sizeof(value)) {
            memcpy(value, g->d.dNSName->data, (size_t)g->d.dNSName->length);
            value[g->d.dNSName->length] = '\0';
            type = strlen(value) == (size_t)g->d.dNSName->length ? "dns" : NULL;
        } else if (g->type == GEN_IPADD && (g->d.iPAddress->length == 4 ||
                                            g->d.iPAddress->length == 16)) {
            type = inet_ntop(g->d.iPAddress->length == 4 ? AF_INET : AF_INET6,
                             g->d.iPAddress->data, value, sizeof(value)) != NULL
                       ? "ip"
                       : NULL;
        }
        if (type == NULL || st_authz_valid_for(c->srv->store, c->acct.id, type, value, c->now,
                                               &found) != 0 || !found)
            ok = 0;
    }
    GENERAL_NAMES_free(sans);
    return ok;
}

static void handle_revoke(struct acme_ctx *c)
{
    const char *b64 = c->jws.payload != NULL
                          ? json_string_value(json_object_get(c->jws.payload, "certificate"))
                          : NULL;
    json_t *reason_v = c->jws.payload != NULL ? json_object_get(c->jws.payload, "reason") : NULL;
    unsigned char *der = NULL;
    const unsigned char *pp;
    size_t der_len = 0;
    X509 *x = NULL;
    char serial[ST_SERIAL_LEN];
    struct st_cert cert;
    json_int_t reason = 0;
    int err;

    memset(&cert, 0, sizeof(cert));
    if (b64 == NULL || gw_b64url_decode(b64, strlen(b64), &der, &der_len) != 0 ||
        der_len > 64 * 1024) {
        gw_response_problem(c->resp, AGW_ERR_BAD_INPUT, "certificate must be base64url DER");
        goto out;
    }
    if (reason_v != NULL) {
        if (!json_is_integer(reason_v) || !reason_allowed(json_integer_value(reason_v))) {
            gw_response_problem(c->resp, AGW_ERR_BAD_REVOCATION_REASON,
                                "reason must be 0, 1, 3, 4 or 5 (RFC 5280 CRLReason)");
            goto out;
        }
        reason = json_integer_value(reason_v);
    }
    pp = der;
    x = d2i_X509(NULL, &pp, (long)der_len);
    if (x == NULL || pp != der + der_len) {
        gw_response_problem(c->resp, AGW_ERR_BAD_INPUT, "certificate does not parse");
        goto out;
    }
    {
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
        size_t k = 0;
        if (hex == NULL || strlen(hex) >= sizeof(serial)) {
            BN_free(bn);
            OPENSSL_free(hex);
            gw_response_problem(c->resp, AGW_ERR_NOT_FOUND, "unknown certificate");
            goto out;
        }
        for (; hex[k] != '\0'; k++)
            serial[k] = (char)tolower((unsigned char)hex[k]);
        serial[k] = '\0';
        BN_free(bn);
        OPENSSL_free(hex);
    }
    err = st_cert_get(c->srv->store, serial, &cert);
    if (err != 0 || cert.der_len != der_len || memcmp(cert.der, der, der_len) != 0) {
        gw_response_problem(c->resp, AGW_ERR_NOT_FOUND, "this server did not issue it");
        goto out;
    }
    if (c->have_acct) {
        /* §7.6: the account that ordered it, or one holding valid authorizations for every
         * identifier in it */
        if (strcmp(cert.account_id, c->acct.id) != 0 &&
            !account_authorized_for(c, x)) {
            gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED,
                                "this account may not revoke this certificate");
            goto out;
        }
    } else if (EVP_PKEY_eq(X509_get0_pubkey(x), c->key) != 1) {
        gw_response_problem(c->resp, AGW_ERR_UNAUTHORIZED,
                            "the JWS key is not the certificate's key");
        goto out;
    }
    err = st_cert_revoke(c->srv->store, serial, (int)reason, c->now);
    if (err != 0) {
        gw_response_problem(c->resp, err,
                            err == AGW_ERR_ALREADY_REVOKED ? "certificate is already revoked"
                                                           : "could not revoke");
        goto out;
    }
    LOG_INFO("acme.revoked", "serial=%s reason=%d by=%s", serial, (int)reason,
             c->have_acct ? c->acct.id : "certificate-key");
    gw_crl_kick(cert.issuer); /* the CRL thread regenerates within about a second */
    c->resp->status = 200;
out:
    st_cert_clear(&cert);
    X509_free(x);
    free(der);
}

/* ---------------------------------------------------------------- quotas */

int gw_quota_check(struct gw_server *srv, const struct pol_class *cls,
                   const struct st_account *acct, int64_t now, struct gw_response *resp)
{
    const struct pol_quotas *q = pol_class_quotas(cls);
    int64_t n = 0;
    char detail[160];
    unsigned retry = 3600;

    if (q->certs_per_account_per_day == 0 ||
        st_cert_count_by_account(srv->store, acct->id, now - 86400, &n) != 0 ||
        n < (int64_t)q->certs_per_account_per_day)
        return 0;
    snprintf(detail, sizeof(detail), "quota: at most %u certificates per account per day",
             q->certs_per_account_per_day);
    LOG_INFO("acme.rate_limited", "account=%s class=%s reason=\"%s\"", acct->id,
             acct->class_name, detail);
    gw_response_problem(resp, AGW_ERR_RATE_LIMITED, detail);
    resp->retry_after = retry;
    return AGW_ERR_RATE_LIMITED;
}

/* ---------------------------------------------------------------- dispatch */

struct pol_set *gw_policy_get(struct gw_server *srv)
{
    struct pol_set *p;

    pthread_mutex_lock(&srv->policy_lock);
    p = srv->policy != NULL ? pol_set_ref(srv->policy) : NULL;
    pthread_mutex_unlock(&srv->policy_lock);
    return p;
}

struct gw_issuer *gw_issuer_find(struct gw_server *srv, const char *name)
{
    if (srv->n_issuers == 0)
        return NULL;
    if (name == NULL || name[0] == '\0')
        return &srv->issuers[0];
    for (size_t i = 0; i < srv->n_issuers; i++)
        if (strcmp(srv->issuers[i].name, name) == 0)
            return &srv->issuers[i];
    return NULL;
}

void gw_acme_handle(struct gw_server *srv, const struct gw_request *req, struct gw_response *resp)
{
    struct acme_ctx c;
    char id[ST_SERIAL_LEN + 1];
    const char *rest = NULL;
    char index_url[600];
    enum key_mode mode = KEY_KID;
    int known = 1;

    if (gw_ari_is_path(req->path)) { /* RFC 9773: the one unauthenticated GET on a worker */
        gw_ari_handle(srv, req, resp);
        return;
    }
    memset(&c, 0, sizeof(c));
    c.srv = srv;
    c.req = req;
    c.resp = resp;
    c.now = (int64_t)time(NULL);
    gw_nonce_issue(srv->nonces, resp->nonce);
    snprintf(index_url, sizeof(index_url), "%s/directory", srv->cfg->base_url);
    add_link(resp, index_url, "index");

    if (strcmp(req->path, "/new-account") == 0)
        mode = KEY_JWK;
    else if (strcmp(req->path, "/revoke-cert") == 0)
        mode = KEY_EITHER;
    else if (strcmp(req->path, "/new-order") == 0 || strcmp(req->path, "/key-change") == 0)
        mode = KEY_KID;
    else if (path_id(req->path, "acct", id, ST_ID_LEN, &rest) &&
             (rest[0] == '\0' || strcmp(rest, "/orders") == 0))
        mode = KEY_KID;
    else if (path_id(req->path, "order", id, ST_ID_LEN, &rest) &&
             (rest[0] == '\0' || strcmp(rest, "/finalize") == 0))
        mode = KEY_KID;
    else if ((path_id(req->path, "authz", id, ST_ID_LEN, &rest) ||
              path_id(req->path, "chall", id, ST_ID_LEN, &rest) ||
              path_id(req->path, "cert", id, sizeof(id), &rest)) &&
             rest[0] == '\0')
        mode = KEY_KID;
    else
        known = 0;

    if (!known) {
        gw_response_problem(resp, AGW_ERR_NOT_FOUND, "no such resource");
        return;
    }
    if (!req->is_post) {
        gw_response_problem(resp, AGW_ERR_METHOD,
                            "use POST (POST-as-GET for reads, RFC 8555 §6.3)");
        return;
    }
    if (acme_authenticate(&c, mode) != 0)
        goto out;

    if (strcmp(req->path, "/new-account") == 0)
        handle_new_account(&c);
    else if (strcmp(req->path, "/revoke-cert") == 0)
        handle_revoke(&c);
    else if (strcmp(req->path, "/key-change") == 0)
        handle_key_change(&c);
    else if (strcmp(req->path, "/new-order") == 0)
        handle_new_order(&c);
    else if (path_id(req->path, "acct", id, ST_ID_LEN, &rest))
        rest[0] == '\0' ? handle_account(&c, id) : handle_account_orders(&c, id);
    else if (path_id(req->path, "order", id, ST_ID_LEN, &rest))
        rest[0] == '\0' ? handle_order(&c, id) : handle_finalize(&c, id);
    else if (path_id(req->path, "authz", id, ST_ID_LEN, &rest))
        handle_authz(&c, id);
    else if (path_id(req->path, "chall", id, ST_ID_LEN, &rest))
        handle_challenge(&c, id);
    else if (path_id(req->path, "cert", id, sizeof(id), &rest))
        handle_cert(&c, id);
out:
    if (resp->status == 0)
        gw_response_problem(resp, AGW_ERR_INTERNAL, NULL);
    EVP_PKEY_free(c.key);
    st_account_clear(&c.acct);
    gw_jws_clear(&c.jws);
}

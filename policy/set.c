/*
 * policy/set.c - policy sets: the built-in default class, reference counting, class lookup.
 *
 * A set is immutable once built. The gateway holds one reference to the current set and takes
 * another for each request, so a hot reload swaps in a new set while requests in flight finish
 * under the one they started with; the last pol_set_unref() frees it. The count is the only
 * shared mutable state: increments are relaxed (taking a reference needs a reference already),
 * the decrement is release and the freeing thread does an acquire fence, so every read of the
 * set on other threads happens before the free.
 */
#include "policy/policy.h"

#include "common/err.h"
#include "policy/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/obj_mac.h>

static const struct {
    int nid;
    const char *name; /* as written in policy files */
} eku_table[POL_EKU_NBITS] = {
    {NID_server_auth, "serverAuth"},  {NID_client_auth, "clientAuth"},
    {NID_code_sign, "codeSigning"},   {NID_email_protect, "emailProtection"},
    {NID_time_stamp, "timeStamping"}, {NID_OCSP_sign, "OCSPSigning"},
};

int pol_eku_nid(unsigned bit_index)
{
    return bit_index < POL_EKU_NBITS ? eku_table[bit_index].nid : NID_undef;
}

const char *pol_eku_name(unsigned bit_index)
{
    return bit_index < POL_EKU_NBITS ? eku_table[bit_index].name : NULL;
}

void pol_detail(char *detail, size_t size, const char *fmt, ...)
{
    va_list ap;

    if (detail == NULL || size == 0)
        return;
    va_start(ap, fmt);
    (void)vsnprintf(detail, size, fmt, ap);
    va_end(ap);
}

static void free_strings(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void pol_profile_clear(struct pol_profile *p)
{
    if (p == NULL)
        return;
    free(p->name);
    free(p->description);
    free_strings(p->policy_oids, p->n_policy_oids);
    free_strings(p->crl_urls, p->n_crl_urls);
    free_strings(p->ocsp_urls, p->n_ocsp_urls);
    free_strings(p->ca_issuer_urls, p->n_ca_issuer_urls);
    memset(p, 0, sizeof(*p));
}

void pol_class_clear(struct pol_class *c)
{
    if (c == NULL)
        return;
    free(c->name);
    free(c->issuer);
    for (size_t i = 0; i < c->ids.n_dns; i++)
        free(c->ids.dns[i].name);
    free(c->ids.dns);
    free(c->ids.ip_ranges);
    free(c->validation.sources);
    for (size_t i = 0; i < c->n_profiles; i++)
        pol_profile_clear(&c->profiles[i]);
    free(c->profiles);
    memset(c, 0, sizeof(*c));
}

static void set_free(struct pol_set *p)
{
    for (size_t i = 0; i < p->n_classes; i++)
        pol_class_clear(&p->classes[i]);
    free(p->classes);
    free(p);
}

/*
 * The default class: two dns patterns (the suffix itself and its subtree), one profile "default".
 */
static int default_class_init(struct pol_class *c, const char *suffix, unsigned validity_days,
                              const char *issuer)
{
    struct pol_profile *prof;

    c->name = strdup("default");
    c->issuer = strdup(issuer);
    c->ids.dns = calloc(2, sizeof(*c->ids.dns));
    c->profiles = calloc(1, sizeof(*c->profiles));
    if (c->name == NULL || c->issuer == NULL || c->ids.dns == NULL || c->profiles == NULL)
        return AGW_ERR_NOMEM;
    c->ids.dns[0].name = strdup(suffix);
    c->ids.dns[1].name = strdup(suffix);
    c->ids.n_dns = 2;
    if (c->ids.dns[0].name == NULL || c->ids.dns[1].name == NULL)
        return AGW_ERR_NOMEM;
    c->ids.dns[1].subtree = true;
    c->ids.allow_dns = true;
    c->ids.max_identifiers = 100;
    c->eab_multiple_accounts = true;

    c->validation.method = POL_VALIDATE_PRE_AUTHORIZED; /* from any source: no sources listed */

    c->keys.kinds = POL_KEY_EC_P256 | POL_KEY_EC_P384 | POL_KEY_RSA;
    c->keys.rsa_min_bits = 2048;
    c->keys.rsa_max_bits = POL_RSA_HARD_MAX_BITS;

    c->subject.csr_cn = POL_CN_OPTIONAL;
    c->subject.cert_cn = true;

    c->n_profiles = 1;
    prof = &c->profiles[0];
    prof->name = strdup("default");
    if (prof->name == NULL)
        return AGW_ERR_NOMEM;
    prof->default_validity_s = (int64_t)validity_days * 86400;
    prof->max_validity_s = prof->default_validity_s;
    prof->ku = POL_KU_DIGITAL_SIGNATURE;
    prof->ku_rsa_extra = POL_KU_KEY_ENCIPHERMENT;
    prof->eku = POL_EKU_SERVER_AUTH | POL_EKU_CLIENT_AUTH;
    return 0;
}

int pol_set_default(const char *dns_suffix, unsigned validity_days, const char *issuer,
                    struct pol_set **out)
{
    struct pol_set *p = NULL;
    bool wildcard = false;
    size_t len;
    int err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (dns_suffix == NULL || issuer == NULL || issuer[0] == '\0')
        return AGW_ERR_BAD_CONFIG;
    len = strnlen(dns_suffix, POL_DNS_MAX_LEN + 1);
    if (pol_dns_syntax(dns_suffix, len, &wildcard) != 0 || wildcard)
        return AGW_ERR_BAD_CONFIG;
    if (validity_days == 0)
        validity_days = 90;
    if (validity_days > POL_MAX_VALIDITY_DAYS)
        return AGW_ERR_BAD_CONFIG;

    err = AGW_ERR_NOMEM;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        goto fail;
    atomic_init(&p->refs, 1u);
    p->classes = calloc(1, sizeof(*p->classes));
    if (p->classes == NULL)
        goto fail;
    p->n_classes = 1;
    err = default_class_init(&p->classes[0], dns_suffix, validity_days, issuer);
    if (err != 0)
        goto fail;
    *out = p;
    p = NULL;
fail:
    if (p != NULL)
        set_free(p);
    return err;
}

struct pol_set *pol_set_ref(struct pol_set *p)
{
    if (p != NULL)
        atomic_fetch_add_explicit(&p->refs, 1u, memory_order_relaxed);
    return p;
}

void pol_set_unref(struct pol_set *p)
{
    if (p == NULL)
        return;
    if (atomic_fetch_sub_explicit(&p->refs, 1u, memory_order_release) != 1u)
        return;
    atomic_thread_fence(memory_order_acquire);
    set_free(p);
}

const struct pol_class *pol_class_find(const struct pol_set *p, const char *name)
{
    if (p == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < p->n_classes; i++) {
        if (strcmp(p->classes[i].name, name) == 0)
            return &p->classes[i];
    }
    return NULL;
}

const struct pol_profile *pol_profile_find(const struct pol_class *c, const char *name)
{
    if (c == NULL || c->n_profiles == 0)
        return NULL;
    if (name == NULL)
        return &c->profiles[c->default_profile];
    for (size_t i = 0; i < c->n_profiles; i++) {
        if (strcmp(c->profiles[i].name, name) == 0)
            return &c->profiles[i];
    }
    return NULL;
}

const char *pol_class_name(const struct pol_class *c)
{
    return c != NULL ? c->name : NULL;
}

const char *pol_class_issuer(const struct pol_class *c)
{
    return c != NULL ? c->issuer : NULL;
}

enum pol_validation pol_class_validation(const struct pol_class *c)
{
    return c != NULL ? c->validation.method : POL_VALIDATE_HTTP01;
}

unsigned pol_class_max_identifiers(const struct pol_class *c)
{
    return c != NULL ? c->ids.max_identifiers : 0;
}

const struct pol_quotas *pol_class_quotas(const struct pol_class *c)
{
    static const struct pol_quotas none;
    return c != NULL ? &c->quota : &none;
}

bool pol_class_eab_multiple_accounts(const struct pol_class *c)
{
    return c == NULL || c->eab_multiple_accounts;
}

size_t pol_set_n_classes(const struct pol_set *p)
{
    return p != NULL ? p->n_classes : 0;
}

const struct pol_class *pol_set_class_at(const struct pol_set *p, size_t i)
{
    return p != NULL && i < p->n_classes ? &p->classes[i] : NULL;
}

int pol_set_default_crl_urls(struct pol_set *p, const char *url_base)
{
    size_t base_len;

    if (p == NULL || url_base == NULL || url_base[0] == '\0')
        return 0;
    base_len = strnlen(url_base, 1025);
    if (base_len > 1024)
        return AGW_ERR_BAD_INPUT;
    for (size_t i = 0; i < p->n_classes; i++) {
        struct pol_class *c = &p->classes[i];

        for (size_t k = 0; k < c->n_profiles; k++) {
            struct pol_profile *prof = &c->profiles[k];
            size_t len = base_len + strlen("/crl/.crl") + strlen(c->issuer) + 1;

            if (prof->n_crl_urls != 0)
                continue;
            prof->crl_urls = calloc(1, sizeof(*prof->crl_urls));
            if (prof->crl_urls == NULL)
                return AGW_ERR_NOMEM;
            prof->crl_urls[0] = malloc(len);
            if (prof->crl_urls[0] == NULL) {
                free(prof->crl_urls);
                prof->crl_urls = NULL;
                return AGW_ERR_NOMEM;
            }
            snprintf(prof->crl_urls[0], len, "%s/crl/%s.crl", url_base, c->issuer);
            prof->n_crl_urls = 1;
        }
    }
    return 0;
}

const char *pol_class_profile_name(const struct pol_class *c, size_t i)
{
    return c != NULL && i < c->n_profiles ? c->profiles[i].name : NULL;
}

const char *pol_class_profile_description(const struct pol_class *c, size_t i)
{
    return c != NULL && i < c->n_profiles ? c->profiles[i].description : NULL;
}

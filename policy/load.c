/*
 * policy/load.c - policy files: one YAML file per device class, named after the class
 * ("devices.yaml" is class "devices"), loaded from the policy directory into a pol_set.
 *
 * A file goes through three passes, each with file:line:col positions in its messages:
 *   1. libyaml builds the document tree (syntax errors, with libyaml's mark);
 *   2. the tree is walked against the libcyaml schema below: unknown or duplicate keys, missing
 *      keys, a mapping where a list belongs, numbers that are not plain digits (libcyaml 1.3.1
 *      reads "9x" as 9), booleans other than true/false, aliases (refused: one spelling per value);
 *   3. libcyaml loads the text into the y_* structs, and convert() turns them into a pol_class,
 *      checking meaning: patterns, CIDRs, key types, usages, OIDs, URLs, contradictions (a
 *      default validity above the maximum, a wildcard allowed without a "*." pattern, ...).
 * The schema is written once, for libcyaml; pass 2 reads the same tables, so the two cannot
 * disagree on which keys exist. Semantic errors name a path ("profiles.0.validity_days") that is
 * looked up in the pass-1 tree for its position.
 *
 * pol_set_load_dir() stops at the first problem and returns it in err; pol_lint_file() (lint.c)
 * runs the same passes and prints every problem. Nothing is kept from the YAML structs: the
 * pol_class is built from malloc'd copies, so the file format stays out of policy/internal.h.
 *
 * File format (every key below; optional ones marked):
 *   issuer: issuing-ca-1                # names the CA in the gateway config
 *   identifiers:
 *     types: [dns, ip]
 *     dns: [host.example, "*.device.test"]  # exact name, or every name under it
 *     ip: [192.0.2.0/24, 2001:db8::/32]     # optional
 *     max: 20                               # optional, per order, default 100, 1..1000
 *     wildcards: false                      # optional: "*.x" identifiers
 *   validation:
 *     method: pre-authorized            # or http-01
 *     sources: [127.0.0.0/8]            # optional, pre-authorized only: client source CIDRs
 *   csr:
 *     keys: [ec-p256, ec-p384, "rsa>=3072", ed25519]  # RSA: at most 8192 bits, and always an
 *                                       # odd exponent of 3..256 bits (CA/B BR 6.1.6)
 *     subject_cn: optional              # optional: optional | required | forbidden
 *   subject:                            # optional
 *     empty: false                      # true: no CN in certificates, SAN critical
 *   profiles:                           # 1..16, the first is the default
 *     - name: default
 *       description: TLS server, 90 days  # optional: shown in the ACME directory (meta.profiles)
 *       validity_days: 90
 *       max_validity_days: 90           # optional, default validity_days
 *       key_usage: [digitalSignature]
 *       key_usage_rsa: [keyEncipherment]  # optional: added for RSA keys
 *       extended_key_usage: [serverAuth]  # optional
 *       policy_oids: [1.3.6.1.4.1.55555.1.1]  # optional
 *       crl_urls: [http://pki.test/ca.crl]     # optional
 *       ocsp_urls: [http://ocsp.pki.test/]     # optional
 *       ca_issuers_urls: [http://pki.test/ca.crt]  # optional
 *   default_profile: default            # optional, default the first profile
 *   quotas:                             # optional, 0 = no limit
 *     certs_per_account_per_day: 100    # certificates issued to one account in 24 h (held at
 *                                       # finalize, also under concurrency)
 *     pending_orders_per_account: 20    # orders not yet finalized (pending or ready)
 *     orders_per_eab_key_per_hour: 500  # new orders by all accounts bound to one EAB key
 *   eab:                                # optional
 *     multiple_accounts: true           # false: an EAB key binds one account only
 */
#include "policy/policy.h"

#include "common/err.h"
#include "policy/internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cyaml/cyaml.h>
#include <openssl/objects.h>
#include <yaml.h>

#define MAX_FILE_LEN   (1024 * 1024)
#define MAX_FILES      256
#define MAX_LIST       256 /* entries in any list */
#define MAX_STR        1024
#define MAX_NAME_LEN   64
#define MAX_PROFILES   16
#define MAX_IDS_CAP    1000
#define MAX_URL_LEN    1024
#define MAX_RSA_DIGITS 5

/* ---- the YAML side: what libcyaml fills ---- */

struct y_identifiers {
    char **types;
    unsigned types_count;
    char **dns;
    unsigned dns_count;
    char **ip;
    unsigned ip_count;
    unsigned max;
    bool wildcards;
};

struct y_validation {
    char *method;
    char **sources;
    unsigned sources_count;
};

struct y_csr {
    char **keys;
    unsigned keys_count;
    char *subject_cn;
};

struct y_subject {
    bool empty;
};

struct y_profile {
    char *name;
    char *description;
    unsigned validity_days;
    unsigned max_validity_days;
    char **key_usage;
    unsigned key_usage_count;
    char **key_usage_rsa;
    unsigned key_usage_rsa_count;
    char **extended_key_usage;
    unsigned extended_key_usage_count;
    char **policy_oids;
    unsigned policy_oids_count;
    char **crl_urls;
    unsigned crl_urls_count;
    char **ocsp_urls;
    unsigned ocsp_urls_count;
    char **ca_issuers_urls;
    unsigned ca_issuers_urls_count;
};

struct y_quotas {
    unsigned certs_per_account_per_day;
    unsigned pending_orders_per_account;
    unsigned orders_per_eab_key_per_hour;
};

struct y_eab {
    bool multiple_accounts;
    bool multiple_accounts_set; /* not in YAML: set when the key was given */
};

struct y_class {
    char *issuer;
    struct y_identifiers *identifiers;
    struct y_validation *validation;
    struct y_csr *csr;
    struct y_subject *subject;
    struct y_profile *profiles;
    unsigned profiles_count;
    char *default_profile;
    struct y_quotas *quotas;
    struct y_eab *eab;
};

#define STR(key, st, m) CYAML_FIELD_STRING_PTR(key, CYAML_FLAG_POINTER, st, m, 1, MAX_STR)
#define OSTR(key, st, m)                                                                           \
    CYAML_FIELD_STRING_PTR(key, CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, st, m, 1, MAX_STR)
#define LIST(key, st, m, min)                                                                      \
    CYAML_FIELD_SEQUENCE(key, CYAML_FLAG_POINTER, st, m, &string_entry, min, MAX_LIST)
#define OLIST(key, st, m)                                                                          \
    CYAML_FIELD_SEQUENCE(key, CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, st, m, &string_entry, 0,   \
                         MAX_LIST)
#define OUINT(key, st, m) CYAML_FIELD_UINT(key, CYAML_FLAG_OPTIONAL, st, m)
#define MAP(key, flags, st, m, fields)                                                             \
    CYAML_FIELD_MAPPING_PTR(key, CYAML_FLAG_POINTER | (flags), st, m, fields)

static const cyaml_schema_value_t string_entry = {
    CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 1, MAX_STR),
};

static const cyaml_schema_field_t identifiers_fields[] = {
    LIST("types", struct y_identifiers, types, 1),
    OLIST("dns", struct y_identifiers, dns),
    OLIST("ip", struct y_identifiers, ip),
    OUINT("max", struct y_identifiers, max),
    CYAML_FIELD_BOOL("wildcards", CYAML_FLAG_OPTIONAL, struct y_identifiers, wildcards),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t validation_fields[] = {
    STR("method", struct y_validation, method),
    OLIST("sources", struct y_validation, sources),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t csr_fields[] = {
    LIST("keys", struct y_csr, keys, 1),
    OSTR("subject_cn", struct y_csr, subject_cn),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t subject_fields[] = {
    CYAML_FIELD_BOOL("empty", CYAML_FLAG_OPTIONAL, struct y_subject, empty),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t profile_fields[] = {
    STR("name", struct y_profile, name),
    OSTR("description", struct y_profile, description),
    CYAML_FIELD_UINT("validity_days", CYAML_FLAG_DEFAULT, struct y_profile, validity_days),
    OUINT("max_validity_days", struct y_profile, max_validity_days),
    LIST("key_usage", struct y_profile, key_usage, 1),
    OLIST("key_usage_rsa", struct y_profile, key_usage_rsa),
    OLIST("extended_key_usage", struct y_profile, extended_key_usage),
    OLIST("policy_oids", struct y_profile, policy_oids),
    OLIST("crl_urls", struct y_profile, crl_urls),
    OLIST("ocsp_urls", struct y_profile, ocsp_urls),
    OLIST("ca_issuers_urls", struct y_profile, ca_issuers_urls),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t profile_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct y_profile, profile_fields),
};

static const cyaml_schema_field_t quotas_fields[] = {
    OUINT("certs_per_account_per_day", struct y_quotas, certs_per_account_per_day),
    OUINT("pending_orders_per_account", struct y_quotas, pending_orders_per_account),
    OUINT("orders_per_eab_key_per_hour", struct y_quotas, orders_per_eab_key_per_hour),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t eab_fields[] = {
    CYAML_FIELD_BOOL("multiple_accounts", CYAML_FLAG_DEFAULT, struct y_eab, multiple_accounts),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t class_fields[] = {
    STR("issuer", struct y_class, issuer),
    MAP("identifiers", 0, struct y_class, identifiers, identifiers_fields),
    MAP("validation", 0, struct y_class, validation, validation_fields),
    MAP("csr", 0, struct y_class, csr, csr_fields),
    MAP("subject", CYAML_FLAG_OPTIONAL, struct y_class, subject, subject_fields),
    CYAML_FIELD_SEQUENCE("profiles", CYAML_FLAG_POINTER, struct y_class, profiles, &profile_entry,
                         1, MAX_PROFILES),
    OSTR("default_profile", struct y_class, default_profile),
    MAP("quotas", CYAML_FLAG_OPTIONAL, struct y_class, quotas, quotas_fields),
    MAP("eab", CYAML_FLAG_OPTIONAL, struct y_class, eab, eab_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t class_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct y_class, class_fields),
};

static void cyaml_log_first(cyaml_log_t level, void *ctx, const char *fmt, va_list args)
{
    char *first = ctx;

    if (level >= CYAML_LOG_ERROR && first[0] == '\0') {
        (void)vsnprintf(first, MAX_STR, fmt, args);
        first[strcspn(first, "\n")] = '\0';
    }
}

static const cyaml_config_t cyaml_base = {
    .mem_fn = cyaml_mem,
    .log_fn = cyaml_log_first,
    .log_level = CYAML_LOG_ERROR,
    .flags = CYAML_CFG_NO_ALIAS,
};

/* ---- diagnostics ---- */

struct diag {
    const char *file; /* as the user named it */
    yaml_document_t *doc;
    FILE *out; /* lint: every problem */
    char *err; /* load: the first problem */
    size_t err_size;
    unsigned n;
};

static void diag_at(struct diag *d, size_t line, size_t col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void diag_at(struct diag *d, size_t line, size_t col, const char *fmt, ...)
{
    char msg[MAX_STR + 128];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (d->out != NULL)
        fprintf(d->out, "%s:%zu:%zu: %s\n", d->file, line, col, msg);
    if (d->n == 0)
        pol_detail(d->err, d->err_size, "%s:%zu:%zu: %s", d->file, line, col, msg);
    d->n++;
}

static void diag_node(struct diag *d, const yaml_node_t *node, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void diag_node(struct diag *d, const yaml_node_t *node, const char *fmt, ...)
{
    char msg[MAX_STR + 64];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    diag_at(d, node != NULL ? node->start_mark.line + 1 : 1,
            node != NULL ? node->start_mark.column + 1 : 1, "%s", msg);
}

static const char *scalar(const yaml_node_t *n)
{
    return n != NULL && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *map_get(yaml_document_t *doc, yaml_node_t *map, const char *key)
{
    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        const char *k = scalar(yaml_document_get_node(doc, p->key));

        if (k != NULL && strcmp(k, key) == 0)
            return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

/* "profiles.0.validity_days": the deepest node the path reaches (the root at worst). */
static const yaml_node_t *node_at(yaml_document_t *doc, const char *path)
{
    yaml_node_t *node = yaml_document_get_root_node(doc);
    char seg[MAX_NAME_LEN + 1];

    while (node != NULL && *path != '\0') {
        size_t len = strcspn(path, ".");
        yaml_node_t *next = NULL;

        if (len > MAX_NAME_LEN)
            break;
        memcpy(seg, path, len);
        seg[len] = '\0';
        path += len + (path[len] == '.');
        if (node->type == YAML_SEQUENCE_NODE && seg[0] >= '0' && seg[0] <= '9') {
            long i = strtol(seg, NULL, 10);
            long count = node->data.sequence.items.top - node->data.sequence.items.start;

            if (i < count)
                next = yaml_document_get_node(doc, node->data.sequence.items.start[i]);
        } else {
            next = map_get(doc, node, seg);
        }
        if (next == NULL)
            break;
        node = next;
    }
    return node;
}

static void diag_path(struct diag *d, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void diag_path(struct diag *d, const char *path, const char *fmt, ...)
{
    char msg[MAX_STR + 64];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    diag_node(d, d->doc != NULL ? node_at(d->doc, path) : NULL, "%s", msg);
}

/* ---- pass 2: the tree against the schema ---- */

struct walk {
    struct diag *d;
    yaml_document_t *doc;
    unsigned char *seen; /* per node id: aliases reuse a node */
    size_t n_nodes;
};

static void walk_value(struct walk *w, int id, const cyaml_schema_value_t *schema);

static void walk_mapping(struct walk *w, yaml_node_t *node, const cyaml_schema_field_t *fields)
{
    size_t n_fields = 0;
    unsigned char seen[32] = {0};

    while (fields[n_fields].key != NULL)
        n_fields++;
    for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top;
         p++) {
        yaml_node_t *key = yaml_document_get_node(w->doc, p->key);
        const char *k = scalar(key);
        size_t i = 0;

        if (k == NULL) {
            diag_node(w->d, key, "keys must be plain strings");
            continue;
        }
        while (i < n_fields && strcmp(fields[i].key, k) != 0)
            i++;
        if (i == n_fields) {
            char known[512] = "";

            for (size_t j = 0; j < n_fields; j++) {
                size_t used = strlen(known);
                pol_detail(known + used, sizeof(known) - used, "%s%s", j > 0 ? ", " : "",
                           fields[j].key);
            }
            diag_node(w->d, key, "unknown key '%.64s' (known: %s)", k, known);
            continue;
        }
        if (i < sizeof(seen) && seen[i]) {
            diag_node(w->d, key, "key '%s' appears twice", k);
            continue;
        }
        if (i < sizeof(seen))
            seen[i] = 1;
        walk_value(w, p->value, &fields[i].value);
    }
    for (size_t i = 0; i < n_fields && i < sizeof(seen); i++) {
        if (!seen[i] && !(fields[i].value.flags & CYAML_FLAG_OPTIONAL))
            diag_node(w->d, node, "missing key '%s'", fields[i].key);
    }
}

static void walk_value(struct walk *w, int id, const cyaml_schema_value_t *schema)
{
    yaml_node_t *node = yaml_document_get_node(w->doc, id);
    const char *v;

    if (node == NULL || id <= 0 || (size_t)id > w->n_nodes)
        return;
    if (w->seen[id - 1]) {
        diag_node(w->d, node, "aliases are not allowed");
        return;
    }
    w->seen[id - 1] = 1;
    switch (schema->type) {
    case CYAML_MAPPING:
        if (node->type != YAML_MAPPING_NODE) {
            diag_node(w->d, node, "expected a mapping (key: value lines)");
            return;
        }
        walk_mapping(w, node, schema->mapping.fields);
        return;
    case CYAML_SEQUENCE: {
        long count;

        if (node->type != YAML_SEQUENCE_NODE) {
            diag_node(w->d, node, "expected a list");
            return;
        }
        count = node->data.sequence.items.top - node->data.sequence.items.start;
        if (count < (long)schema->sequence.min || count > (long)schema->sequence.max) {
            diag_node(w->d, node, "list must have %u..%u entries, not %ld", schema->sequence.min,
                      schema->sequence.max, count);
            return;
        }
        for (yaml_node_item_t *it = node->data.sequence.items.start;
             it < node->data.sequence.items.top; it++)
            walk_value(w, *it, schema->sequence.entry);
        return;
    }
    default:
        break;
    }
    v = scalar(node);
    if (v == NULL) {
        diag_node(w->d, node, "expected a single value, not a %s",
                  node->type == YAML_MAPPING_NODE ? "mapping" : "list");
        return;
    }
    switch (schema->type) {
    case CYAML_UINT: {
        size_t len = node->data.scalar.length;

        if (len == 0 || len > 9 || strspn(v, "0123456789") != len || (len > 1 && v[0] == '0'))
            diag_node(w->d, node, "'%.40s' is not a whole number", v);
        return;
    }
    case CYAML_BOOL:
        if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0)
            diag_node(w->d, node, "'%.40s' is not true or false", v);
        return;
    case CYAML_STRING:
        if (node->data.scalar.length < schema->string.min ||
            node->data.scalar.length > schema->string.max || strlen(v) != node->data.scalar.length)
            diag_node(w->d, node, "value must be %u..%u characters", schema->string.min,
                      schema->string.max);
        else if (node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                 (strcmp(v, "null") == 0 || strcmp(v, "~") == 0))
            diag_node(w->d, node, "value is missing (null)");
        return;
    default:
        return;
    }
}

/* ---- pass 3: meaning ---- */

static char *dup_str(const char *s, int *err)
{
    char *c = strdup(s);

    if (c == NULL)
        *err = AGW_ERR_NOMEM;
    return c;
}

static char **dup_list(char **v, unsigned n, int *err)
{
    char **c;

    if (n == 0)
        return NULL;
    c = calloc(n, sizeof(*c));
    if (c == NULL) {
        *err = AGW_ERR_NOMEM;
        return NULL;
    }
    for (unsigned i = 0; i < n; i++)
        c[i] = dup_str(v[i], err);
    return c;
}

static bool list_has_duplicate(char **v, unsigned n, unsigned i)
{
    for (unsigned j = 0; j < i; j++) {
        if (strcmp(v[j], v[i]) == 0)
            return true;
    }
    (void)n;
    return false;
}

/* A list of CIDR texts at path (e.g. "validation.sources") into *out; bad entries reported. */
static void convert_cidrs(struct diag *d, const char *path, char **v, unsigned n,
                          struct pol_cidr **out, size_t *n_out, int *err)
{
    *out = NULL;
    *n_out = 0;
    if (n == 0)
        return;
    *out = calloc(n, sizeof(**out));
    if (*out == NULL) {
        *err = AGW_ERR_NOMEM;
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        char entry[64];

        snprintf(entry, sizeof(entry), "%s.%u", path, i);
        if (pol_cidr_parse(v[i], &(*out)[*n_out]) != 0)
            diag_path(d, entry, "'%.64s' is not a CIDR range (address/prefix, host bits zero)",
                      v[i]);
        else
            (*n_out)++;
    }
}

static void convert_identifiers(struct diag *d, const struct y_identifiers *y,
                                struct pol_identifier_rules *r, int *err)
{
    bool any_subtree = false;

    for (unsigned i = 0; i < y->types_count; i++) {
        char path[64];

        snprintf(path, sizeof(path), "identifiers.types.%u", i);
        if (strcmp(y->types[i], "dns") == 0)
            r->allow_dns = true;
        else if (strcmp(y->types[i], "ip") == 0)
            r->allow_ip = true;
        else
            diag_path(d, path, "unknown identifier type '%.64s' (known: dns, ip)", y->types[i]);
    }
    r->max_identifiers = y->max != 0 ? y->max : 100;
    if (y->max > MAX_IDS_CAP)
        diag_path(d, "identifiers.max", "max must be 1..%d", MAX_IDS_CAP);
    r->allow_wildcards = y->wildcards;

    if (y->dns_count > 0) {
        r->dns = calloc(y->dns_count, sizeof(*r->dns));
        if (r->dns == NULL) {
            *err = AGW_ERR_NOMEM;
            return;
        }
    }
    for (unsigned i = 0; i < y->dns_count; i++) {
        const char *pat = y->dns[i];
        bool subtree = strncmp(pat, "*.", 2) == 0, wildcard;
        const char *name = subtree ? pat + 2 : pat;
        char path[64];

        snprintf(path, sizeof(path), "identifiers.dns.%u", i);
        if (pol_dns_syntax(name, strnlen(name, POL_DNS_MAX_LEN + 1), &wildcard) != 0 || wildcard) {
            diag_path(d, path, "dns pattern '%.64s' is not a lowercase name or \"*.\" and a name",
                      pat);
            continue;
        }
        if (list_has_duplicate(y->dns, y->dns_count, i))
            diag_path(d, path, "dns pattern '%.64s' is listed twice", pat);
        r->dns[r->n_dns].name = dup_str(name, err);
        r->dns[r->n_dns].subtree = subtree;
        r->n_dns++;
        any_subtree = any_subtree || subtree;
    }
    convert_cidrs(d, "identifiers.ip", y->ip, y->ip_count, &r->ip_ranges, &r->n_ip_ranges, err);
    if (r->allow_dns && y->dns_count == 0)
        diag_path(d, "identifiers.types", "dns is allowed but identifiers.dns lists no pattern");
    if (!r->allow_dns && y->dns_count > 0)
        diag_path(d, "identifiers.dns", "dns patterns given but types does not list dns");
    if (r->allow_ip && y->ip_count == 0)
        diag_path(d, "identifiers.types", "ip is allowed but identifiers.ip lists no range");
    if (!r->allow_ip && y->ip_count > 0)
        diag_path(d, "identifiers.ip", "ip ranges given but types does not list ip");
    if (r->allow_wildcards && !any_subtree)
        diag_path(d, "identifiers.wildcards",
                  "wildcards are allowed but no dns pattern starts with \"*.\"");
}

static void convert_validation(struct diag *d, const struct y_validation *y,
                               struct pol_validation_rules *r, int *err)
{
    if (strcmp(y->method, "pre-authorized") == 0) {
        r->method = POL_VALIDATE_PRE_AUTHORIZED;
    } else if (strcmp(y->method, "http-01") == 0) {
        r->method = POL_VALIDATE_HTTP01;
    } else {
        diag_path(d, "validation.method",
                  "unknown validation method '%.64s' (known: pre-authorized, http-01)", y->method);
    }
    if (r->method == POL_VALIDATE_HTTP01 && y->sources_count > 0)
        diag_path(d, "validation.sources", "sources apply to pre-authorized validation only");
    convert_cidrs(d, "validation.sources", y->sources, y->sources_count, &r->sources, &r->n_sources,
                  err);
}

static void convert_keys(struct diag *d, const struct y_csr *y, struct pol_key_rules *r,
                         struct pol_subject_rules *s)
{
    for (unsigned i = 0; i < y->keys_count; i++) {
        const char *k = y->keys[i];
        unsigned kind = 0;
        char path[64];

        snprintf(path, sizeof(path), "csr.keys.%u", i);
        if (strcmp(k, "ec-p256") == 0) {
            kind = POL_KEY_EC_P256;
        } else if (strcmp(k, "ec-p384") == 0) {
            kind = POL_KEY_EC_P384;
        } else if (strcmp(k, "ed25519") == 0) {
            kind = POL_KEY_ED25519;
        } else if (strncmp(k, "rsa>=", 5) == 0) {
            size_t digits = strlen(k + 5);
            unsigned long bits = strtoul(k + 5, NULL, 10);

            if (digits == 0 || digits > MAX_RSA_DIGITS || strspn(k + 5, "0123456789") != digits ||
                bits < 2048 || bits > POL_RSA_HARD_MAX_BITS) {
                diag_path(d, path, "'%.64s': rsa>=N needs N in 2048..%d", k, POL_RSA_HARD_MAX_BITS);
                continue;
            }
            kind = POL_KEY_RSA;
            r->rsa_min_bits = (unsigned)bits;
            r->rsa_max_bits = POL_RSA_HARD_MAX_BITS;
        } else {
            diag_path(d, path,
                      "unknown key type '%.64s' (known: ec-p256, ec-p384, ed25519, rsa>=N)", k);
            continue;
        }
        if (r->kinds & kind)
            diag_path(d, path, "key type '%.64s' is listed twice", k);
        r->kinds |= kind;
    }
    s->csr_cn = POL_CN_OPTIONAL;
    if (y->subject_cn == NULL || strcmp(y->subject_cn, "optional") == 0)
        s->csr_cn = POL_CN_OPTIONAL;
    else if (strcmp(y->subject_cn, "required") == 0)
        s->csr_cn = POL_CN_REQUIRED;
    else if (strcmp(y->subject_cn, "forbidden") == 0)
        s->csr_cn = POL_CN_FORBIDDEN;
    else
        diag_path(d, "csr.subject_cn",
                  "unknown value '%.64s' (known: optional, required, forbidden)", y->subject_cn);
}

static const char *const ku_names[POL_KU_NBITS] = {
    "digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment", "keyAgreement",
    "keyCertSign",      "cRLSign",           "encipherOnly",    "decipherOnly",
};

static unsigned convert_ku(struct diag *d, const char *field, char **v, unsigned n,
                           unsigned idx_prof)
{
    unsigned mask = 0;

    for (unsigned i = 0; i < n; i++) {
        unsigned bit = 0;
        char path[96];

        snprintf(path, sizeof(path), "profiles.%u.%s.%u", idx_prof, field, i);
        while (bit < POL_KU_NBITS && strcmp(ku_names[bit], v[i]) != 0)
            bit++;
        if (strcmp(v[i], "nonRepudiation") == 0)
            bit = 1; /* the X.509 2000 name of contentCommitment */
        if (bit == POL_KU_NBITS)
            diag_path(d, path, "unknown key usage '%.64s'", v[i]);
        else if (bit == 5 || bit == 6)
            diag_path(d, path, "key usage %s is for CA certificates only", ku_names[bit]);
        else if (mask & (1u << bit))
            diag_path(d, path, "key usage %s is listed twice", ku_names[bit]);
        else
            mask |= 1u << bit;
    }
    return mask;
}

static bool url_ok(const char *u)
{
    size_t len = strnlen(u, MAX_URL_LEN + 1);

    if (len > MAX_URL_LEN || (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0))
        return false;
    if (len <= (size_t)(u[4] == 's' ? 8 : 7))
        return false; /* no host */
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)u[i] <= 0x20 || (unsigned char)u[i] >= 0x7f)
            return false;
    }
    return true;
}

static bool oid_ok(const char *s)
{
    ASN1_OBJECT *obj;
    size_t len = strlen(s);
    bool ok;

    if (len == 0 || len > 128 || strspn(s, "0123456789.") != len || s[0] == '.' ||
        s[len - 1] == '.' || strstr(s, "..") != NULL || strchr(s, '.') == NULL)
        return false;
    obj = OBJ_txt2obj(s, 1);
    ok = obj != NULL;
    ASN1_OBJECT_free(obj);
    return ok;
}

static void check_list(struct diag *d, unsigned p, const char *field, char **v, unsigned n,
                       bool (*ok)(const char *), const char *what)
{
    for (unsigned i = 0; i < n; i++) {
        char path[96];

        snprintf(path, sizeof(path), "profiles.%u.%s.%u", p, field, i);
        if (!ok(v[i]))
            diag_path(d, path, "'%.64s' is not %s", v[i], what);
        else if (list_has_duplicate(v, n, i))
            diag_path(d, path, "'%.64s' is listed twice", v[i]);
    }
}

static void convert_profile(struct diag *d, const struct y_profile *y, unsigned idx,
                            struct pol_profile *p, int *err)
{
    char path[64];
    unsigned max_days = y->max_validity_days != 0 ? y->max_validity_days : y->validity_days;

    p->name = dup_str(y->name, err);
    if (y->description != NULL)
        p->description = dup_str(y->description, err);
    snprintf(path, sizeof(path), "profiles.%u.validity_days", idx);
    if (y->validity_days == 0 || y->validity_days > POL_MAX_VALIDITY_DAYS)
        diag_path(d, path, "validity_days must be 1..%d", POL_MAX_VALIDITY_DAYS);
    snprintf(path, sizeof(path), "profiles.%u.max_validity_days", idx);
    if (max_days > POL_MAX_VALIDITY_DAYS)
        diag_path(d, path, "max_validity_days must be 1..%d", POL_MAX_VALIDITY_DAYS);
    if (y->validity_days > max_days)
        diag_path(d, path, "validity_days (%u) is above max_validity_days (%u)", y->validity_days,
                  max_days);
    p->default_validity_s = (int64_t)y->validity_days * 86400;
    p->max_validity_s = (int64_t)max_days * 86400;

    p->ku = convert_ku(d, "key_usage", y->key_usage, y->key_usage_count, idx);
    p->ku_rsa_extra = convert_ku(d, "key_usage_rsa", y->key_usage_rsa, y->key_usage_rsa_count, idx);
    for (unsigned i = 0; i < y->extended_key_usage_count; i++) {
        unsigned bit = 0;

        snprintf(path, sizeof(path), "profiles.%u.extended_key_usage.%u", idx, i);
        while (bit < POL_EKU_NBITS && strcmp(pol_eku_name(bit), y->extended_key_usage[i]) != 0)
            bit++;
        if (bit == POL_EKU_NBITS)
            diag_path(d, path, "unknown extended key usage '%.64s'", y->extended_key_usage[i]);
        else if (p->eku & (1u << bit))
            diag_path(d, path, "extended key usage %s is listed twice", pol_eku_name(bit));
        else
            p->eku |= 1u << bit;
    }
    check_list(d, idx, "policy_oids", y->policy_oids, y->policy_oids_count, oid_ok, "a dotted OID");
    check_list(d, idx, "crl_urls", y->crl_urls, y->crl_urls_count, url_ok, "an http(s) URL");
    check_list(d, idx, "ocsp_urls", y->ocsp_urls, y->ocsp_urls_count, url_ok, "an http(s) URL");
    check_list(d, idx, "ca_issuers_urls", y->ca_issuers_urls, y->ca_issuers_urls_count, url_ok,
               "an http(s) URL");
    p->policy_oids = dup_list(y->policy_oids, y->policy_oids_count, err);
    p->n_policy_oids = p->policy_oids != NULL ? y->policy_oids_count : 0;
    p->crl_urls = dup_list(y->crl_urls, y->crl_urls_count, err);
    p->n_crl_urls = p->crl_urls != NULL ? y->crl_urls_count : 0;
    p->ocsp_urls = dup_list(y->ocsp_urls, y->ocsp_urls_count, err);
    p->n_ocsp_urls = p->ocsp_urls != NULL ? y->ocsp_urls_count : 0;
    p->ca_issuer_urls = dup_list(y->ca_issuers_urls, y->ca_issuers_urls_count, err);
    p->n_ca_issuer_urls = p->ca_issuer_urls != NULL ? y->ca_issuers_urls_count : 0;
}

static int convert(struct diag *d, const struct y_class *y, const char *name, struct pol_class *c)
{
    int err = 0;

    c->name = dup_str(name, &err);
    c->issuer = dup_str(y->issuer, &err);
    convert_identifiers(d, y->identifiers, &c->ids, &err);
    convert_validation(d, y->validation, &c->validation, &err);
    convert_keys(d, y->csr, &c->keys, &c->subject);
    c->subject.cert_cn = y->subject == NULL || !y->subject->empty;
    c->profiles = calloc(y->profiles_count, sizeof(*c->profiles));
    if (c->profiles == NULL)
        return AGW_ERR_NOMEM;
    c->n_profiles = y->profiles_count;
    for (unsigned i = 0; i < y->profiles_count; i++) {
        char path[64];

        convert_profile(d, &y->profiles[i], i, &c->profiles[i], &err);
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(y->profiles[j].name, y->profiles[i].name) == 0) {
                snprintf(path, sizeof(path), "profiles.%u.name", i);
                diag_path(d, path, "profile name '%.64s' is used twice", y->profiles[i].name);
            }
        }
    }
    if (y->default_profile != NULL) {
        size_t i = 0;

        while (i < c->n_profiles && strcmp(y->profiles[i].name, y->default_profile) != 0)
            i++;
        if (i == c->n_profiles)
            diag_path(d, "default_profile", "no profile is named '%.64s'", y->default_profile);
        else
            c->default_profile = i;
    }
    if (y->quotas != NULL) {
        c->quota.certs_per_account_per_day = y->quotas->certs_per_account_per_day;
        c->quota.pending_orders_per_account = y->quotas->pending_orders_per_account;
        c->quota.orders_per_eab_key_per_hour = y->quotas->orders_per_eab_key_per_hour;
    }
    c->eab_multiple_accounts = y->eab == NULL || y->eab->multiple_accounts;
    return err;
}

/* ---- one file ---- */

static int read_file(const char *path, unsigned char **out, size_t *out_len, struct diag *d)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    bool read_error;
    size_t len;

    *out = NULL;
    *out_len = 0;
    if (f == NULL) {
        diag_at(d, 1, 1, "cannot open: %s", strerror(errno));
        return AGW_ERR_IO;
    }
    buf = malloc(MAX_FILE_LEN + 1);
    if (buf == NULL) {
        fclose(f);
        return AGW_ERR_NOMEM;
    }
    len = fread(buf, 1, MAX_FILE_LEN + 1, f);
    read_error = ferror(f) != 0;
    fclose(f);
    if (read_error || len > MAX_FILE_LEN) {
        if (read_error)
            diag_at(d, 1, 1, "read error");
        else
            diag_at(d, 1, 1, "file is larger than %d bytes", MAX_FILE_LEN);
        free(buf);
        return read_error ? AGW_ERR_IO : AGW_ERR_BAD_CONFIG;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

/* "dir/devices.yaml" -> "devices"; 0 or AGW_ERR_BAD_CONFIG if not a usable class name. */
static int class_name_of(const char *path, char *name, size_t size)
{
    const char *base = strrchr(path, '/');
    size_t len;

    base = base != NULL ? base + 1 : path;
    len = strlen(base);
    if (len <= 5 || strcmp(base + len - 5, ".yaml") != 0)
        return AGW_ERR_BAD_CONFIG;
    len -= 5;
    if (len >= size || len > MAX_NAME_LEN)
        return AGW_ERR_BAD_CONFIG;
    for (size_t i = 0; i < len; i++) {
        char ch = base[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              (i > 0 && (ch == '-' || ch == '_'))))
            return AGW_ERR_BAD_CONFIG;
    }
    memcpy(name, base, len);
    name[len] = '\0';
    return 0;
}

int pol_load_file(const char *path, struct pol_class *out, FILE *diag_out, char *err,
                  size_t err_size)
{
    struct diag d = {path, NULL, diag_out, err, err_size, 0};
    char name[MAX_NAME_LEN + 1], cyaml_msg[MAX_STR];
    unsigned char *text = NULL;
    size_t len = 0;
    yaml_parser_t parser;
    yaml_document_t doc;
    bool have_doc = false;
    struct y_class *y = NULL;
    cyaml_config_t cc = cyaml_base;
    struct walk w = {&d, &doc, NULL, 0};
    int rc;

    memset(out, 0, sizeof(*out));
    pol_detail(err, err_size, "%s", "");
    if (class_name_of(path, name, sizeof(name)) != 0) {
        diag_at(&d, 1, 1, "file name must be CLASS.yaml, CLASS lowercase letters, digits, - or _");
        return AGW_ERR_BAD_CONFIG;
    }
    rc = read_file(path, &text, &len, &d);
    if (rc != 0)
        return rc;

    /* pass 1 */
    if (yaml_parser_initialize(&parser) != 1) {
        free(text);
        return AGW_ERR_NOMEM;
    }
    yaml_parser_set_input_string(&parser, text, len);
    if (yaml_parser_load(&parser, &doc) != 1) {
        diag_at(&d, parser.problem_mark.line + 1, parser.problem_mark.column + 1, "YAML: %s%s%s",
                parser.problem != NULL ? parser.problem : "syntax error",
                parser.context != NULL ? " " : "", parser.context != NULL ? parser.context : "");
        rc = AGW_ERR_BAD_CONFIG;
        goto done;
    }
    have_doc = true;
    d.doc = &doc;
    if (yaml_document_get_root_node(&doc) == NULL) {
        diag_at(&d, 1, 1, "file is empty");
        rc = AGW_ERR_BAD_CONFIG;
        goto done;
    }

    /* pass 2 */
    w.n_nodes = (size_t)(doc.nodes.top - doc.nodes.start);
    w.seen = calloc(w.n_nodes + 1, 1);
    if (w.seen == NULL) {
        rc = AGW_ERR_NOMEM;
        goto done;
    }
    walk_value(&w, 1, &class_schema);
    if (d.n > 0) {
        rc = AGW_ERR_BAD_CONFIG;
        goto done;
    }

    /* pass 3 */
    cyaml_msg[0] = '\0';
    cc.log_ctx = cyaml_msg;
    if (cyaml_load_data(text, len, &cc, &class_schema, (cyaml_data_t **)&y, NULL) != CYAML_OK ||
        y == NULL) {
        diag_at(&d, 1, 1, "%s", cyaml_msg[0] != '\0' ? cyaml_msg : "does not load");
        rc = AGW_ERR_BAD_CONFIG;
        goto done;
    }
    rc = convert(&d, y, name, out);
    if (rc == 0 && d.n > 0)
        rc = AGW_ERR_BAD_CONFIG;
done:
    if (rc != 0)
        pol_class_clear(out);
    cyaml_free(&cyaml_base, &class_schema, y, 0);
    free(w.seen);
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(text);
    return rc;
}

/* ---- the directory ---- */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int pol_set_load_dir(const char *dir, struct pol_set **out, char *err, size_t err_size)
{
    struct pol_set *set = NULL;
    char **names = NULL;
    size_t n = 0;
    DIR *dh;
    int rc = AGW_ERR_NOMEM;

    if (out == NULL || dir == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    pol_detail(err, err_size, "%s", "");
    dh = opendir(dir);
    if (dh == NULL) {
        pol_detail(err, err_size, "%s: cannot open: %s", dir, strerror(errno));
        return AGW_ERR_BAD_CONFIG;
    }
    names = calloc(MAX_FILES, sizeof(*names));
    if (names == NULL)
        goto fail;
    for (struct dirent *e = readdir(dh); e != NULL; e = readdir(dh)) {
        size_t len = strlen(e->d_name);

        if (e->d_name[0] == '.' || len <= 5 || strcmp(e->d_name + len - 5, ".yaml") != 0)
            continue;
        if (n == MAX_FILES) {
            pol_detail(err, err_size, "%s: more than %d policy files", dir, MAX_FILES);
            rc = AGW_ERR_BAD_CONFIG;
            goto fail;
        }
        names[n] = malloc(strlen(dir) + len + 2);
        if (names[n] == NULL)
            goto fail;
        snprintf(names[n], strlen(dir) + len + 2, "%s/%s", dir, e->d_name);
        n++;
    }
    if (n == 0) {
        pol_detail(err, err_size, "%s: no *.yaml policy files", dir);
        rc = AGW_ERR_BAD_CONFIG;
        goto fail;
    }
    qsort(names, n, sizeof(*names), cmp_names); /* the same order on every load */
    set = calloc(1, sizeof(*set));
    if (set == NULL)
        goto fail;
    atomic_init(&set->refs, 1u);
    set->classes = calloc(n, sizeof(*set->classes));
    if (set->classes == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        rc = pol_load_file(names[i], &set->classes[i], NULL, err, err_size);
        if (rc != 0)
            goto fail;
        set->n_classes++;
    }
    *out = set;
    set = NULL;
    rc = 0;
fail:
    closedir(dh);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    pol_set_unref(set);
    return rc;
}

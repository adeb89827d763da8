/*
 * gateway/config.h - the gateway's one YAML config file (see examples/acmegw.yaml).
 *
 * Loaded with libcyaml against a strict schema: unknown keys and wrong types are errors. Relative
 * paths are resolved against the directory of the config file. Secrets are never in the file:
 * the HSM PIN comes from pin_file (or the environment variable pin_env).
 */
#ifndef AGW_GATEWAY_CONFIG_H
#define AGW_GATEWAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

struct gw_listen {
    char *address; /* "127.0.0.1", "::", "0.0.0.0" */
    unsigned port;
    bool plain_http; /* true: no TLS (behind a TLS-terminating load balancer) */
};

struct gw_issuer_cfg {
    char *name;      /* referenced by policy classes; the first issuer is the default */
    char *module;    /* PKCS#11 module path */
    char *token;     /* label or pkcs11: URI */
    char *key_label;
    char *key_id;    /* hex, optional */
    char *pin_file;  /* or pin_env */
    char *pin_env;
    char *ca_chain;  /* PEM: issuing CA certificate, then the chain up to the root */
    unsigned workers;
    unsigned timeout_ms;
};

struct gw_default_class {
    char *dns_suffix;
    unsigned validity_days;
};

/* store: {driver, path, conninfo_file, pool_size, prepared_statements}; the alternative to
 * store_path (exactly one is given). */
struct gw_store_cfg {
    char *driver;        /* "sqlite" (default) or "postgresql" */
    char *path;          /* sqlite: the database file */
    char *conninfo_file; /* postgresql: libpq conninfo, read at start (0600: it may hold the
                          * password); absent: the environment variable ACMEGW_STORE_CONNINFO */
    unsigned pool_size;  /* postgresql: connections per gateway, 1..64; 0: 8 (workers + 2) */
    bool *prepared_statements; /* postgresql: NULL or true: prepare each statement once per
                                * connection; false: never (PgBouncer in transaction mode < 1.21) */
};

struct gw_config {
    struct gw_listen *listen;
    unsigned listen_count;
    char *tls_certificate;
    char *tls_key;
    char *base_url;       /* what clients see, e.g. https://acme.example.com (no trailing /) */
    unsigned threads;     /* event loops; 0 = one per core */
    unsigned workers;     /* request workers (store, JWS, signing waits); 0 = 2 x threads */
    char *store_path;     /* SQLite file; or store: below */
    struct gw_store_cfg *store;
    char *seal_key_file;  /* EAB key encryption key; created on first start */
    struct gw_issuer_cfg *issuers;
    unsigned issuers_count;
    char *policy_dir;     /* optional: policy files; else the default class */
    struct gw_default_class *default_class;
    bool eab_optional;    /* default false: EAB required */
    char *terms_of_service;
    char *website;
    unsigned max_body;        /* bytes; 0 = 65536 */
    unsigned max_identifiers; /* per order; 0 = 100 */
    unsigned order_lifetime_s; /* 0 = 7 days */
    unsigned http01_port;     /* 0 = 80 */
    unsigned http01_timeout_ms; /* 0 = 5000 */
    char *http01_address;       /* tests only: connect here instead of resolving the name */
    char *nonce_key_file; /* several instances: shared nonce key (32 bytes, 0600); every
                           * redemption is then recorded in the shared store */
    unsigned instance_id; /* 0..255, distinct per instance: the nonce prefix */
    unsigned processing_timeout_s; /* an order processing longer than this was left by a dead
                                    * gateway: it becomes invalid. 0 = 2 x the longest issuer
                                    * deadline + 10 s */
    char *log_level;
    char *pid_file;
    unsigned crl_next_update_s; /* CRL nextUpdate - thisUpdate; 0 = 86400 (24 h) */
    char *crl_url_base; /* optional, e.g. http://127.0.0.1:8444: classes without crl_urls get
                         * <base>/crl/<issuer>.crl as their CRL distribution point */
    char *dir; /* directory of the config file (derived, not in YAML) */
};

/*
 * Loads and validates path. On error writes one human-readable line to err (file and reason)
 * and returns AGW_ERR_BAD_CONFIG. *out owned by the caller: gw_config_free().
 */
int gw_config_load(const char *path, struct gw_config **out, char *err, size_t err_size);
void gw_config_free(struct gw_config *c);
/* Resolves p relative to the config's directory; returns a malloc'd string (or NULL). */
char *gw_config_path(const struct gw_config *c, const char *p);

struct st_config;
/*
 * Fills *out for st_open_config() from store_path or store: (paths resolved, conninfo read from
 * conninfo_file or ACMEGW_STORE_CONNINFO). *owned receives the one allocation out points into
 * (the path or the conninfo, which may hold a password): release it with gw_config_store_free()
 * after st_open_config(). Returns 0, AGW_ERR_BAD_CONFIG (no conninfo, unreadable file; logged
 * without its contents) or AGW_ERR_NOMEM.
 */
int gw_config_store(const struct gw_config *c, struct st_config *out, char **owned);
void gw_config_store_free(char *owned); /* wipes, then frees; accepts NULL */

#endif

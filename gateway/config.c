/*
 * gateway/config.c - loading and validating the gateway config (gateway/config.h).
 *
 * libcyaml does the parsing against the schema below (unknown keys are errors, strings and
 * sequences have explicit bounds); this file then checks what a schema cannot say: ports in range,
 * a base URL without trailing slash, TLS files present when a TLS listener exists, and so on.
 */
#include "gateway/config.h"

#include "common/err.h"
#include "common/log.h"
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cyaml/cyaml.h>
#include <openssl/crypto.h>
#include <yaml.h>

#define STR(key, st, m) CYAML_FIELD_STRING_PTR(key, CYAML_FLAG_POINTER, st, m, 1, 4096)
#define OSTR(key, st, m)                                                                      \
    CYAML_FIELD_STRING_PTR(key, CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, st, m, 1, 4096)
#define OUINT(key, st, m) CYAML_FIELD_UINT(key, CYAML_FLAG_OPTIONAL, st, m)

static const cyaml_schema_field_t listen_fields[] = {
    STR("address", struct gw_listen, address),
    CYAML_FIELD_UINT("port", CYAML_FLAG_DEFAULT, struct gw_listen, port),
    CYAML_FIELD_BOOL("plain_http", CYAML_FLAG_OPTIONAL, struct gw_listen, plain_http),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t listen_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct gw_listen, listen_fields),
};

static const cyaml_schema_field_t issuer_fields[] = {
    STR("name", struct gw_issuer_cfg, name),
    STR("module", struct gw_issuer_cfg, module),
    STR("token", struct gw_issuer_cfg, token),
    STR("key_label", struct gw_issuer_cfg, key_label),
    OSTR("key_id", struct gw_issuer_cfg, key_id),
    OSTR("pin_file", struct gw_issuer_cfg, pin_file),
    OSTR("pin_env", struct gw_issuer_cfg, pin_env),
    STR("ca_chain", struct gw_issuer_cfg, ca_chain),
    OUINT("workers", struct gw_issuer_cfg, workers),
    OUINT("timeout_ms", struct gw_issuer_cfg, timeout_ms),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t issuer_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct gw_issuer_cfg, issuer_fields),
};

static const cyaml_schema_field_t default_class_fields[] = {
    STR("dns_suffix", struct gw_default_class, dns_suffix),
    OUINT("validity_days", struct gw_default_class, validity_days),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t store_fields[] = {
    OSTR("driver", struct gw_store_cfg, driver),
    OSTR("path", struct gw_store_cfg, path),
    OSTR("conninfo_file", struct gw_store_cfg, conninfo_file),
    OUINT("pool_size", struct gw_store_cfg, pool_size),
    CYAML_FIELD_BOOL_PTR("prepared_statements", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
                         struct gw_store_cfg, prepared_statements),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t config_fields[] = {
    CYAML_FIELD_SEQUENCE("listen", CYAML_FLAG_POINTER, struct gw_config, listen, &listen_entry, 1,
                         16),
    OSTR("tls_certificate", struct gw_config, tls_certificate),
    OSTR("tls_key", struct gw_config, tls_key),
    STR("base_url", struct gw_config, base_url),
    OUINT("threads", struct gw_config, threads),
    OUINT("workers", struct gw_config, workers),
    OSTR("store_path", struct gw_config, store_path),
    CYAML_FIELD_MAPPING_PTR("store", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct gw_config,
                            store, store_fields),
    STR("seal_key_file", struct gw_config, seal_key_file),
    CYAML_FIELD_SEQUENCE("issuers", CYAML_FLAG_POINTER, struct gw_config, issuers, &issuer_entry,
                         1, 16),
    OSTR("policy_dir", struct gw_config, policy_dir),
    CYAML_FIELD_MAPPING_PTR("default_class", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
                            struct gw_config, default_class, default_class_fields),
    CYAML_FIELD_BOOL("eab_optional", CYAML_FLAG_OPTIONAL, struct gw_config, eab_optional),
    OSTR("terms_of_service", struct gw_config, terms_of_service),
    OSTR("website", struct gw_config, website),
    OUINT("max_body", struct gw_config, max_body),
    OUINT("max_identifiers", struct gw_config, max_identifiers),
    OUINT("order_lifetime_s", struct gw_config, order_lifetime_s),
    OUINT("http01_port", struct gw_config, http01_port),
    OUINT("http01_timeout_ms", struct gw_config, http01_timeout_ms),
    OSTR("http01_address", struct gw_config, http01_address),
    OSTR("nonce_key_file", struct gw_config, nonce_key_file),
    OUINT("instance_id", struct gw_config, instance_id),
    OUINT("processing_timeout_s", struct gw_config, processing_timeout_s),
    OSTR("log_level", struct gw_config, log_level),
    OSTR("pid_file", struct gw_config, pid_file),
    OUINT("crl_next_update_s", struct gw_config, crl_next_update_s),
    OSTR("crl_url_base", struct gw_config, crl_url_base),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t config_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct gw_config, config_fields),
};

/* libcyaml reports problems through its log callback: keep the first error line for the user. */
struct cyaml_log_ctx {
    char *buf;
    size_t size;
    int have;
};

static void cyaml_log_capture(cyaml_log_t level, void *ctx, const char *fmt, va_list args)
{
    struct cyaml_log_ctx *c = ctx;
    size_t n;

    if (level < CYAML_LOG_ERROR || c->have)
        return;
    vsnprintf(c->buf, c->size, fmt, args);
    n = strlen(c->buf);
    while (n > 0 && (c->buf[n - 1] == '\n' || c->buf[n - 1] == ' '))
        c->buf[--n] = '\0';
    c->have = 1;
}

static const cyaml_config_t cyaml_base = {
    .log_fn = NULL,
    .mem_fn = cyaml_mem,
    .log_level = CYAML_LOG_ERROR,
    .flags = CYAML_CFG_NO_ALIAS,
};

static void set_err(char *err, size_t size, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_err(char *err, size_t size, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(err, size, "%s: %s", path, msg);
}

char *gw_config_path(const struct gw_config *c, const char *p)
{
    size_t n;
    char *out;

    if (p == NULL)
        return NULL;
    if (p[0] == '/' || c->dir == NULL)
        return strdup(p);
    n = strlen(c->dir) + strlen(p) + 2;
    out = malloc(n);
    if (out != NULL)
        snprintf(out, n, "%s/%s", c->dir, p);
    return out;
}

static int validate(struct gw_config *c, const char *path, char *err, size_t size)
{
    size_t n = strlen(c->base_url);
    int need_tls = 0;

    if (strncmp(c->base_url, "https://", 8) != 0 && strncmp(c->base_url, "http://", 7) != 0) {
        set_err(err, size, path, "base_url must start with https:// or http://");
        return AGW_ERR_BAD_CONFIG;
    }
    if (n > 512 || c->base_url[n - 1] == '/') {
        set_err(err, size, path, "base_url must not end with '/' (and be at most 512 bytes)");
        return AGW_ERR_BAD_CONFIG;
    }
    for (unsigned i = 0; i < c->listen_count; i++) {
        if (c->listen[i].port == 0 || c->listen[i].port > 65535) {
            set_err(err, size, path, "listen[%u].port must be 1..65535", i);
            return AGW_ERR_BAD_CONFIG;
        }
        if (!c->listen[i].plain_http)
            need_tls = 1;
    }
    if (need_tls && (c->tls_certificate == NULL || c->tls_key == NULL)) {
        set_err(err, size, path, "a TLS listener needs tls_certificate and tls_key");
        return AGW_ERR_BAD_CONFIG;
    }
    for (unsigned i = 0; i < c->issuers_count; i++) {
        struct gw_issuer_cfg *is = &c->issuers[i];
        if ((is->pin_file == NULL) == (is->pin_env == NULL)) {
            set_err(err, size, path, "issuer '%s' needs exactly one of pin_file, pin_env",
                    is->name);
            return AGW_ERR_BAD_CONFIG;
        }
        if (strlen(is->name) >= 64) {
            set_err(err, size, path, "issuer name '%s' is longer than 63 bytes", is->name);
            return AGW_ERR_BAD_CONFIG;
        }
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(c->issuers[j].name, is->name) == 0) {
                set_err(err, size, path, "issuer name '%s' appears twice", is->name);
                return AGW_ERR_BAD_CONFIG;
            }
        }
        if (is->timeout_ms > 600000) {
            set_err(err, size, path, "issuer '%s' timeout_ms is above 600000", is->name);
            return AGW_ERR_BAD_CONFIG;
        }
    }
    if ((c->store_path == NULL) == (c->store == NULL)) {
        set_err(err, size, path, "set exactly one of store_path, store");
        return AGW_ERR_BAD_CONFIG;
    }
    if (c->store != NULL) {
        const char *d = c->store->driver != NULL ? c->store->driver : "sqlite";
        int pg = strcmp(d, "postgresql") == 0;

        if (!pg && strcmp(d, "sqlite") != 0) {
            set_err(err, size, path, "store.driver must be sqlite or postgresql");
            return AGW_ERR_BAD_CONFIG;
        }
        if (pg ? c->store->path != NULL : c->store->path == NULL) {
            set_err(err, size, path, "store.path is %s for driver %s", pg ? "not used" : "needed",
                    d);
            return AGW_ERR_BAD_CONFIG;
        }
        if (!pg && (c->store->conninfo_file != NULL || c->store->pool_size != 0 ||
                    c->store->prepared_statements != NULL)) {
            set_err(err, size, path, "store.%s is for driver postgresql",
                    c->store->conninfo_file != NULL ? "conninfo_file"
                    : c->store->pool_size != 0      ? "pool_size"
                                                    : "prepared_statements");
            return AGW_ERR_BAD_CONFIG;
        }
        if (c->store->pool_size > 64) {
            set_err(err, size, path, "store.pool_size must be 1..64");
            return AGW_ERR_BAD_CONFIG;
        }
    }
    if (c->policy_dir == NULL && c->default_class == NULL) {
        set_err(err, size, path, "set policy_dir or default_class");
        return AGW_ERR_BAD_CONFIG;
    }
    if (c->default_class != NULL) {
        if (c->default_class->validity_days == 0)
            c->default_class->validity_days = 90;
        if (c->default_class->validity_days > 3650) {
            set_err(err, size, path, "default_class.validity_days is above 3650");
            return AGW_ERR_BAD_CONFIG;
        }
    }
    if (c->log_level != NULL) {
        enum agw_log_level l;
        if (agw_log_level_parse(c->log_level, &l) != 0) {
            set_err(err, size, path, "log_level must be debug, info, warn or error");
            return AGW_ERR_BAD_CONFIG;
        }
    }
    if (c->threads > 64 || c->workers > 256) {
        set_err(err, size, path, "threads must be <= 64 and workers <= 256");
        return AGW_ERR_BAD_CONFIG;
    }
    if (c->max_body == 0)
        c->max_body = 64 * 1024;
    if (c->max_body < 4096 || c->max_body > 1024 * 1024) {
        set_err(err, size, path, "max_body must be 4096..1048576");
        return AGW_ERR_BAD_CONFIG;
    }
    if (c->max_identifiers == 0)
        c->max_identifiers = 100;
    if (c->max_identifiers > 1000) {
        set_err(err, size, path, "max_identifiers must be <= 1000");
        return AGW_ERR_BAD_CONFIG;
    }
    if (c->order_lifetime_s == 0)
        c->order_lifetime_s = 7 * 24 * 3600;
    if (c->http01_port == 0)
        c->http01_port = 80;
    if (c->http01_port > 65535) {
        set_err(err, size, path, "http01_port must be 1..65535");
        return AGW_ERR_BAD_CONFIG;
    }
    if (c->processing_timeout_s == 0) {
        unsigned longest = 5000;
        for (unsigned i = 0; i < c->issuers_count; i++)
            if (c->issuers[i].timeout_ms > longest)
                longest = c->issuers[i].timeout_ms;
        c->processing_timeout_s = 2 * (longest / 1000 + 1) + 10;
    }
    if (c->instance_id > 255) {
        set_err(err, size, path, "instance_id must be 0..255");
        return AGW_ERR_BAD_CONFIG;
    }
    if (c->http01_timeout_ms == 0)
        c->http01_timeout_ms = 5000;
    if (c->crl_next_update_s == 0)
        c->crl_next_update_s = 24 * 3600;
    if (c->crl_next_update_s < 60 || c->crl_next_update_s > 90 * 24 * 3600) {
        set_err(err, size, path, "crl_next_update_s must be 60..7776000");
        return AGW_ERR_BAD_CONFIG;
    }
    if (c->crl_url_base != NULL &&
        ((strncmp(c->crl_url_base, "http://", 7) != 0 &&
          strncmp(c->crl_url_base, "https://", 8) != 0) ||
         c->crl_url_base[strlen(c->crl_url_base) - 1] == '/' ||
         strpbrk(c->crl_url_base, " \t\r\n\"<>") != NULL)) {
        set_err(err, size, path, "crl_url_base must be an http(s) URL without trailing slash");
        return AGW_ERR_BAD_CONFIG;
    }
    return 0;
}

/* libcyaml 1.3.1 reads "port: 9x4x" as 9 (it stops at the first non-digit). This pass refuses
 * any numeric field whose scalar is not all digits, with its line, before libcyaml runs. */
static const char *const numeric_keys[] = {
    "port", "threads", "workers", "timeout_ms", "validity_days", "max_body", "max_identifiers",
    "order_lifetime_s", "http01_port", "http01_timeout_ms", "instance_id", "processing_timeout_s", "crl_next_update_s",
    "pool_size",
};

static int numbers_strict(const char *path, char *err, size_t err_size)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    FILE *f = fopen(path, "rb");
    int rc = 0, expect_value = 0, numeric = 0, depth_is_map[64] = {0}, depth = 0, done = 0;

    if (f == NULL) {
        set_err(err, err_size, path, "cannot open: %s", strerror(errno));
        return AGW_ERR_BAD_CONFIG;
    }
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    while (!done && rc == 0) {
        if (!yaml_parser_parse(&parser, &ev))
            break; /* syntax errors are reported by libcyaml with more context */
        switch (ev.type) {
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            if (depth < 63)
                depth_is_map[++depth] = ev.type == YAML_MAPPING_START_EVENT;
            expect_value = 0;
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            if (depth > 0)
                depth--;
            expect_value = 0;
            break;
        case YAML_SCALAR_EVENT:
            if (depth_is_map[depth] && !expect_value) {
                const char *k = (const char *)ev.data.scalar.value;
                numeric = 0;
                for (size_t i = 0; i < sizeof(numeric_keys) / sizeof(numeric_keys[0]); i++)
                    if (strcmp(k, numeric_keys[i]) == 0)
                        numeric = 1;
                expect_value = 1;
            } else {
                const char *v = (const char *)ev.data.scalar.value;
                size_t n = ev.data.scalar.length;
                if (depth_is_map[depth] && numeric &&
                    (n == 0 || n > 9 || strspn(v, "0123456789") != n)) {
                    set_err(err, err_size, path, "line %lu: '%.40s' is not a whole number",
                            (unsigned long)ev.start_mark.line + 1, v);
                    rc = AGW_ERR_BAD_CONFIG;
                }
                expect_value = 0;
            }
            break;
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

int gw_config_load(const char *path, struct gw_config **out, char *err, size_t err_size)
{
    struct cyaml_log_ctx lc = {err, err_size, 0};
    cyaml_config_t cc = cyaml_base;
    struct gw_config *c = NULL;
    cyaml_err_t cerr;
    const char *slash;
    char msg[400];
    int rc;

    *out = NULL;
    msg[0] = '\0';
    lc.buf = msg;
    lc.size = sizeof(msg);
    if (numbers_strict(path, err, err_size) != 0)
        return AGW_ERR_BAD_CONFIG;
    cc.log_fn = cyaml_log_capture;
    cc.log_ctx = &lc;
    cerr = cyaml_load_file(path, &cc, &config_schema, (cyaml_data_t **)&c, NULL);
    if (cerr != CYAML_OK || c == NULL) {
        if (lc.have)
            set_err(err, err_size, path, "%s (%s)", msg, cyaml_strerror(cerr));
        else
            set_err(err, err_size, path, "%s", cyaml_strerror(cerr));
        return AGW_ERR_BAD_CONFIG;
    }
    slash = strrchr(path, '/');
    c->dir = slash != NULL ? strndup(path, (size_t)(slash - path)) : strdup(".");
    if (c->dir == NULL) {
        gw_config_free(c);
        return AGW_ERR_NOMEM;
    }
    rc = validate(c, path, err, err_size);
    if (rc != 0) {
        gw_config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void gw_config_free(struct gw_config *c)
{
    char *dir;

    if (c == NULL)
        return;
    dir = c->dir;
    c->dir = NULL;
    cyaml_free(&cyaml_base, &config_schema, c, 0);
    free(dir);
}

#define GW_CONNINFO_MAX 4096

/* Reads the conninfo file: at most GW_CONNINFO_MAX bytes, trailing whitespace dropped. The file
 * may hold a password: its contents are never logged, and a group/other-readable file warns. */
static int read_conninfo(const char *path, char **out)
{
    struct stat sb;
    char *buf;
    ssize_t n;
    size_t len = 0;
    int fd;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        LOG_ERROR("store.conninfo", "file=%s errno=%s", path, strerror(errno));
        return AGW_ERR_BAD_CONFIG;
    }
    if (fstat(fd, &sb) == 0 && (sb.st_mode & (S_IRWXG | S_IRWXO)) != 0)
        LOG_WARN("store.conninfo",
                 "file=%s mode=%04o warning=group_or_other_access hint=\"chmod 600 the file\"",
                 path, (unsigned)(sb.st_mode & 07777));
    buf = malloc(GW_CONNINFO_MAX + 1);
    if (buf == NULL) {
        close(fd);
        return AGW_ERR_NOMEM;
    }
    for (;;) {
        n = read(fd, buf + len, GW_CONNINFO_MAX + 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len > GW_CONNINFO_MAX)
            break;
    }
    close(fd);
    if (n < 0 || len > GW_CONNINFO_MAX) {
        LOG_ERROR("store.conninfo", "file=%s error=%s", path,
                  n < 0 ? "unreadable" : "longer_than_4096_bytes");
        OPENSSL_cleanse(buf, GW_CONNINFO_MAX + 1);
        free(buf);
        return AGW_ERR_BAD_CONFIG;
    }
    while (len > 0 && strchr(" \t\r\n", buf[len - 1]) != NULL)
        len--;
    buf[len] = '\0';
    *out = buf;
    return 0;
}

int gw_config_store(const struct gw_config *c, struct st_config *out, char **owned)
{
    const char *env;
    char *file;
    int err;

    memset(out, 0, sizeof(*out));
    *owned = NULL;
    if (c->store == NULL || c->store->driver == NULL || strcmp(c->store->driver, "sqlite") == 0) {
        out->driver = "sqlite";
        *owned = gw_config_path(c, c->store != NULL ? c->store->path : c->store_path);
        out->path = *owned;
        return *owned != NULL ? 0 : AGW_ERR_NOMEM;
    }
    out->driver = "postgresql";
    out->pool_size = c->store->pool_size;
    out->no_prepare = c->store->prepared_statements != NULL && !*c->store->prepared_statements;
    if (c->store->conninfo_file != NULL) {
        file = gw_config_path(c, c->store->conninfo_file);
        if (file == NULL)
            return AGW_ERR_NOMEM;
        err = read_conninfo(file, owned);
        free(file);
        if (err != 0)
            return err;
    } else {
        env = getenv("ACMEGW_STORE_CONNINFO");
        if (env == NULL || env[0] == '\0') {
            LOG_ERROR("store.conninfo",
                      "error=missing hint=\"set store.conninfo_file or ACMEGW_STORE_CONNINFO\"");
            return AGW_ERR_BAD_CONFIG;
        }
        *owned = strdup(env);
        if (*owned == NULL)
            return AGW_ERR_NOMEM;
    }
    out->conninfo = *owned;
    return 0;
}

void gw_config_store_free(char *owned)
{
    if (owned == NULL)
        return;
    OPENSSL_cleanse(owned, strlen(owned));
    free(owned);
}

/*
 * tests/unit/test_config.c - the gateway config: a good file loads with defaults filled in;
 * unknown keys, wrong types and contradictions are refused with the file named.
 */
#include "gateway/config.h"

#include "common/err.h"
#include "store/store.h"
#include "tests/check.h"
#include "tests/testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char dir[512];

static const char *good =
    "listen:\n  - address: 127.0.0.1\n    port: 8443\n"
    "tls_certificate: tls/server.pem\ntls_key: tls/server.key\n"
    "base_url: https://127.0.0.1:8443\nstore_path: acmegw.db\nseal_key_file: seal.key\n"
    "issuers:\n  - name: ca1\n    module: /usr/lib/softhsm/libsofthsm2.so\n    token: t\n"
    "    key_label: k\n    pin_file: pin\n    ca_chain: chain.pem\n"
    "default_class:\n  dns_suffix: device.test\n";

static int load_text(const char *text, struct gw_config **c, char *err, size_t size)
{
    char path[600];
    FILE *f;

    snprintf(path, sizeof(path), "%s/acmegw.yaml", dir);
    f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return gw_config_load(path, c, err, size);
}

static void config_good_file_loads_with_defaults(void)
{
    struct gw_config *c = NULL;
    char err[600] = "", *p;

    CHECK_INT(load_text(good, &c, err, sizeof(err)), 0);
    if (c == NULL)
        return;
    CHECK_INT(c->listen_count, 1);
    CHECK_INT(c->listen[0].port, 8443);
    CHECK_INT(c->max_body, 65536);
    CHECK_INT(c->max_identifiers, 100);
    CHECK_INT(c->default_class->validity_days, 90);
    CHECK(!c->eab_optional);
    p = gw_config_path(c, c->store_path);
    CHECK(p != NULL && strncmp(p, dir, strlen(dir)) == 0);
    free(p);
    gw_config_free(c);
}

static void config_refuses(const char *text, const char *want_in_err)
{
    struct gw_config *c = NULL;
    char err[600] = "";

    if (load_text(text, &c, err, sizeof(err)) != AGW_ERR_BAD_CONFIG)
        fprintf(stderr, "  accepted:\n%s\n", text);
    CHECK(err[0] != 0);
    CHECK(c == NULL);
    CHECK(strstr(err, "acmegw.yaml") != NULL);
    if (want_in_err != NULL && strstr(err, want_in_err) == NULL)
        fprintf(stderr, "  error text was: %s (wanted '%s')\n", err, want_in_err);
    CHECK(want_in_err == NULL || strstr(err, want_in_err) != NULL);
}

static void replace_into(char *buf, size_t size, const char *from, const char *to)
{
    const char *at = strstr(good, from);
    snprintf(buf, size, "%.*s%s%s", (int)(at - good), good, to, at + strlen(from));
}

static void config_bad_files_are_refused(void)
{
    char buf[4096];

    snprintf(buf, sizeof(buf), "%sbogus_key: 1\n", good);
    config_refuses(buf, "bogus_key");
    replace_into(buf, sizeof(buf), "port: 8443", "port: 9x4x");
    config_refuses(buf, NULL);
    replace_into(buf, sizeof(buf), "port: 8443", "port: 70000");
    config_refuses(buf, "port");
    replace_into(buf, sizeof(buf), "https://127.0.0.1:8443\n", "https://127.0.0.1:8443/\n");
    config_refuses(buf, "base_url");
    replace_into(buf, sizeof(buf), "    pin_file: pin\n", "");
    config_refuses(buf, "pin_file");
    replace_into(buf, sizeof(buf), "default_class:\n  dns_suffix: device.test\n", "");
    config_refuses(buf, "default_class");
    config_refuses("listen: []\n", NULL);
    config_refuses("not: [valid\n", NULL);
}

/* store: the PostgreSQL pool size reaches the store's config; it is refused out of range and
 * for SQLite. */
static void config_store_pool_size(void)
{
    char buf[4096], conninfo_path[700];
    struct gw_config *c = NULL;
    struct st_config sc;
    char err[600] = "", *owned = NULL;
    FILE *f;

    snprintf(conninfo_path, sizeof(conninfo_path), "%s/conninfo", dir);
    f = fopen(conninfo_path, "w");
    fputs("host=/nonexistent dbname=acmegw\n", f);
    fclose(f);
    replace_into(buf, sizeof(buf), "store_path: acmegw.db\n",
                 "store:\n  driver: postgresql\n  conninfo_file: conninfo\n  pool_size: 16\n");
    CHECK_INT(load_text(buf, &c, err, sizeof(err)), 0);
    if (c != NULL) {
        CHECK_INT(gw_config_store(c, &sc, &owned), 0);
        CHECK_STR(sc.driver, "postgresql");
        CHECK_INT(sc.pool_size, 16);
        CHECK(!sc.no_prepare); /* statements are prepared unless the config says otherwise */
        CHECK(sc.conninfo != NULL && strstr(sc.conninfo, "dbname=acmegw") != NULL);
        gw_config_store_free(owned);
        gw_config_free(c);
    }
    replace_into(buf, sizeof(buf), "store_path: acmegw.db\n",
                 "store:\n  driver: postgresql\n  conninfo_file: conninfo\n"
                 "  prepared_statements: false\n");
    CHECK_INT(load_text(buf, &c, err, sizeof(err)), 0);
    if (c != NULL) {
        CHECK_INT(gw_config_store(c, &sc, &owned), 0);
        CHECK(sc.no_prepare);
        gw_config_store_free(owned);
        gw_config_free(c);
    }
    replace_into(buf, sizeof(buf), "store_path: acmegw.db\n",
                 "store:\n  driver: sqlite\n  path: a.db\n  prepared_statements: true\n");
    config_refuses(buf, "prepared_statements");
    replace_into(buf, sizeof(buf), "store_path: acmegw.db\n",
                 "store:\n  driver: postgresql\n  conninfo_file: conninfo\n  pool_size: 65\n");
    config_refuses(buf, "pool_size");
    replace_into(buf, sizeof(buf), "store_path: acmegw.db\n",
                 "store:\n  driver: sqlite\n  path: a.db\n  pool_size: 4\n");
    config_refuses(buf, "pool_size");
}

int main(void)
{
    if (tl_tmpdir(dir, sizeof(dir)) != 0)
        return 1;
    RUN(config_good_file_loads_with_defaults);
    RUN(config_bad_files_are_refused);
    RUN(config_store_pool_size);
    tl_rmtree(dir);
    return CHECK_DONE();
}

/*
 * tests/unit/test_store.c - store/ against a real SQLite file: schema migrations, file modes,
 * sealed EAB keys, account/order/certificate lifecycles, conditional transitions, input bounds,
 * concurrent writers, and durability of acknowledged commits across kill -9.
 *
 * With ACMEGW_TEST_PG_CONNINFO set (a libpq key=value string for a server where that role may
 * CREATE DATABASE), the backend-neutral tests run a second time against store/postgres.c, each
 * in a fresh database acmegw_test_<pid>_<n> dropped at the end, plus PostgreSQL-only tests: two
 * stores racing to finalize one order, and two processes migrating one fresh database at once.
 */
#define _GNU_SOURCE /* memmem() */

#include "store/store.h"

#include "common/err.h"
#include "common/log.h"
#include "tests/check.h"
#include "tests/testlib.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#define NOW ((int64_t)1767225600) /* 2026-01-01 */

static char tmp[4096];

/* PostgreSQL pass: the maintenance conninfo, and the databases made so far (dropped in main). */
static const char *pg_base;
static int use_pg;
#define MAX_PG_DBS 64
static char pg_dbs[MAX_PG_DBS][64];
static int n_pg_dbs;

struct fixture {
    char db[4200]; /* SQLite: the file; PostgreSQL: the conninfo of the test's database */
    char key_path[4200];
    unsigned char key[32];
    struct st_store *s;
};

/* Runs fixed SQL on a new connection to conninfo; 0 if it succeeded. */
static int pg_exec_raw(const char *conninfo, const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    PGresult *r = NULL;
    int ok = 0;

    if (PQstatus(c) == CONNECTION_OK) {
        r = PQexec(c, sql);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
        if (!ok)
            fprintf(stderr, "postgresql: %s", PQerrorMessage(c));
    } else {
        fprintf(stderr, "postgresql: %s", PQerrorMessage(c));
    }
    PQclear(r);
    PQfinish(c);
    return ok ? 0 : -1;
}

/* A fresh, empty database; its conninfo (pg_base plus dbname) goes into out. */
static int pg_create_db(const char *name, char *out, size_t out_size)
{
    char sql[256];

    if (n_pg_dbs >= MAX_PG_DBS)
        return -1;
    snprintf(pg_dbs[n_pg_dbs], sizeof(pg_dbs[0]), "acmegw_test_%ld_%d_%.16s", (long)getpid(),
             n_pg_dbs, name);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", pg_dbs[n_pg_dbs]);
    if (pg_exec_raw(pg_base, sql) != 0)
        return -1;
    snprintf(out, out_size, "%s dbname=%s", pg_base, pg_dbs[n_pg_dbs]);
    n_pg_dbs++;
    return 0;
}

/* st_open() for the backend under test: db is a file path or a conninfo. */
static unsigned pg_pool_size; /* PostgreSQL connections per store; 0: the default */
static bool pg_no_prepare;    /* PostgreSQL: every statement unprepared (st_config.no_prepare) */

static int store_open(const char *db, const unsigned char key[32], struct st_store **out)
{
    struct st_config cfg = {
        .driver = "postgresql",
        .path = NULL,
        .conninfo = db,
        .pool_size = pg_pool_size,
        .no_prepare = pg_no_prepare};

    if (!use_pg)
        return st_open(db, key, out);
    return st_open_config(&cfg, key, out);
}

static int fixture_open(struct fixture *fx, const char *name)
{
    snprintf(fx->db, sizeof(fx->db), "%s/%s.db", tmp, name);
    snprintf(fx->key_path, sizeof(fx->key_path), "%s/%s%s.key", tmp, name, use_pg ? "-pg" : "");
    fx->s = NULL;
    if (st_seal_key_load(fx->key_path, 1, fx->key) != 0)
        return -1;
    if (use_pg && pg_create_db(name, fx->db, sizeof(fx->db)) != 0)
        return -1;
    return store_open(fx->db, fx->key, &fx->s);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs a single-integer query on a separate, plain connection (what is really on disk). */
static long long query_int(const char *db_path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;

    if (use_pg) {
        PGconn *c = PQconnectdb(db_path);
        PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, sql) : NULL;

        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
            v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        PQfinish(c);
        return v;
    }
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* SQLITE_OK if it ran, on either backend. */
static int exec_raw(const char *db_path, const char *sql)
{
    sqlite3 *db = NULL;
    int rc;

    if (use_pg)
        return pg_exec_raw(db_path, sql) == 0 ? SQLITE_OK : SQLITE_ERROR;
    rc = sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc;
}

static unsigned file_mode(const char *path)
{
    struct stat sb;

    return stat(path, &sb) == 0 ? (unsigned)(sb.st_mode & 07777) : 0xffffu;
}

/* Whether needle occurs in the file at path (missing file: no). */
static int file_contains(const char *path, const void *needle, size_t len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t cap = 0, used = 0, n;
    int found;

    if (f == NULL)
        return 0;
    do {
        if (used == cap) {
            unsigned char *nb = realloc(buf, cap == 0 ? 65536 : cap * 2);
            if (nb == NULL)
                break;
            buf = nb;
            cap = cap == 0 ? 65536 : cap * 2;
        }
        n = fread(buf + used, 1, cap - used, f);
        used += n;
    } while (n > 0);
    fclose(f);
    found = buf != NULL && memmem(buf, used, needle, len) != NULL;
    free(buf);
    return found;
}

/* In the database file or its WAL (fresh commits live in the WAL until a checkpoint). */
static int db_contains(const char *db_path, const void *needle, size_t len)
{
    char wal[4300];

    snprintf(wal, sizeof(wal), "%s-wal", db_path);
    return file_contains(db_path, needle, len) || file_contains(wal, needle, len);
}

static void make_account(struct st_account *a, const char *thumb, const char *kid)
{
    memset(a, 0, sizeof(*a));
    snprintf(a->thumbprint, sizeof(a->thumbprint), "%s", thumb);
    snprintf(a->eab_kid, sizeof(a->eab_kid), "%s", kid);
    snprintf(a->class_name, sizeof(a->class_name), "sensor");
    a->created = NOW;
    a->jwk_json = (char *)"{\"kty\":\"EC\"}";
    a->contact_json = (char *)"[\"mailto:ops@example.org\"]";
}

/* An order with two identifiers, one authorization and one http-01 challenge each. */
static int make_order(struct st_store *s, const char *account_id, struct st_order *o,
                      struct st_authz az[2], struct st_new_challenge ch[2])
{
    static const char *names[2] = {"a.example", "b.example"};

    memset(o, 0, sizeof(*o));
    memset(az, 0, 2 * sizeof(*az));
    memset(ch, 0, 2 * sizeof(*ch));
    snprintf(o->account_id, sizeof(o->account_id), "%s", account_id);
    snprintf(o->class_name, sizeof(o->class_name), "sensor");
    o->created = NOW;
    o->expires = NOW + 3600;
    o->identifiers_json = (char *)"[{\"type\":\"dns\",\"value\":\"a.example\"},{\"type\":\"dns\","
                                  "\"value\":\"b.example\"}]";
    for (size_t i = 0; i < 2; i++) {
        snprintf(az[i].id_type, sizeof(az[i].id_type), "dns");
        az[i].id_value = (char *)names[i];
        az[i].expires = NOW + 3600;
        snprintf(ch[i].c.type, sizeof(ch[i].c.type), "http-01");
        snprintf(ch[i].c.token, sizeof(ch[i].c.token), "token-%zu-abcdefghijklmnop", i);
        ch[i].authz_index = i;
    }
    return st_order_create(s, o, az, 2, ch, 2);
}

static void make_cert(struct st_cert *c, const char *serial, const char *order_id,
                      const char *account_id, const char *class_name, const char *idents,
                      int64_t not_after, const unsigned char *der, size_t der_len)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->serial, sizeof(c->serial), "%s", serial);
    snprintf(c->order_id, sizeof(c->order_id), "%s", order_id);
    snprintf(c->account_id, sizeof(c->account_id), "%s", account_id);
    snprintf(c->class_name, sizeof(c->class_name), "%s", class_name);
    snprintf(c->issuer, sizeof(c->issuer), "issuing-ca-1");
    c->issued = NOW;
    c->not_before = NOW;
    c->not_after = not_after;
    c->identifiers = (char *)idents;
    c->der = (unsigned char *)der;
    c->der_len = der_len;
    c->chain_pem = (char *)"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
}

/* ---------------------------------------------------------------- tests */

static void random_id_is_22_base64url_chars(void)
{
    char a[ST_ID_LEN], b[ST_ID_LEN], small[8];

    CHECK_INT(st_random_id(a, sizeof(a)), 0);
    CHECK_INT(st_random_id(b, sizeof(b)), 0);
    CHECK_INT(strlen(a), 22);
    CHECK(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == 22);
    CHECK(strcmp(a, b) != 0);
    CHECK_INT(st_random_id(small, sizeof(small)), AGW_ERR_BAD_INPUT);
}

static void migrations_apply_once_and_rerun_is_a_no_op(void)
{
    struct fixture fx;
    int v = -1;

    CHECK_INT(fixture_open(&fx, "migrate"), 0);
    CHECK_INT(st_schema_version(fx.s, &v), 0);
    CHECK_INT(v, 7);
    st_close(fx.s);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM schema_migrations"), 7);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM sqlite_master WHERE type='table' AND "
                               "name IN ('eab_keys','accounts','orders','authorizations',"
                               "'challenges','certificates','crl_numbers','used_nonces','crl_leases','crls')"),
              10);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM sqlite_master WHERE type='index' AND "
                               "name='certificates_issued'"),
              1);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM sqlite_master WHERE type='index' AND "
                               "name='certificates_order'"),
              0); /* made by 1, dropped by 7 */

    /* an existing, up-to-date database: opens, nothing re-applied */
    CHECK_INT(store_open(fx.db, fx.key, &fx.s), 0);
    v = -1;
    CHECK_INT(st_schema_version(fx.s, &v), 0);
    CHECK_INT(v, 7);
    st_close(fx.s);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM schema_migrations"), 7);
    CHECK_INT(query_int(fx.db, "PRAGMA journal_mode"), 0); /* text "wal" reads as 0 */

    /* a database from only migration 1 gets migrations 2 to 7 */
    CHECK_INT(exec_raw(fx.db, "DROP INDEX certificates_issued; DROP INDEX certificates_account; "
                              "DROP TABLE used_nonces; DROP TABLE crl_leases; DROP TABLE crls; "
                              "DROP INDEX orders_status_updated; ALTER TABLE orders DROP COLUMN updated; "
                              "DROP INDEX orders_replaces; "
                              "DELETE FROM schema_migrations WHERE version >= 2"),
              SQLITE_OK);
    CHECK_INT(store_open(fx.db, fx.key, &fx.s), 0);
    CHECK_INT(st_schema_version(fx.s, &v), 0);
    CHECK_INT(v, 7);
    st_close(fx.s);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM sqlite_master WHERE type='index' AND "
                               "name='certificates_issued'"),
              1);

    /* a database from a newer binary is refused, not half-used */
    CHECK_INT(exec_raw(fx.db, "INSERT INTO schema_migrations VALUES (99, 0)"), SQLITE_OK);
    fx.s = NULL;
    CHECK_INT(store_open(fx.db, fx.key, &fx.s), AGW_ERR_STORE);
    CHECK(fx.s == NULL);
}

static void journal_is_wal(void)
{
    struct fixture fx;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;

    CHECK_INT(fixture_open(&fx, "wal"), 0);
    st_close(fx.s);
    CHECK_INT(sqlite3_open_v2(fx.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    CHECK_INT(sqlite3_step(st), SQLITE_ROW);
    CHECK_STR((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void db_and_seal_key_are_0600(void)
{
    struct fixture fx;
    unsigned char again[32];
    char path[4300];
    mode_t old = umask(0); /* the modes must not depend on a friendly umask */
    int fd;

    CHECK_INT(fixture_open(&fx, "modes"), 0);
    umask(old);
    CHECK_INT(file_mode(fx.db), 0600);
    CHECK_INT(file_mode(fx.key_path), 0600);
    snprintf(path, sizeof(path), "%s-wal", fx.db);
    CHECK_INT(file_mode(path), 0600); /* SQLite copies the main file's mode */
    st_close(fx.s);

    /* loading again gives the same key, and create != 0 does not overwrite it */
    CHECK_INT(st_seal_key_load(fx.key_path, 1, again), 0);
    CHECK(memcmp(again, fx.key, 32) == 0);
    CHECK_INT(st_seal_key_load(fx.key_path, 0, again), 0);
    CHECK(memcmp(again, fx.key, 32) == 0);

    snprintf(path, sizeof(path), "%s/absent.key", tmp);
    CHECK_INT(st_seal_key_load(path, 0, again), AGW_ERR_NOT_FOUND);

    /* group- or world-readable key files are refused */
    CHECK_INT(chmod(fx.key_path, 0640), 0);
    CHECK_INT(st_seal_key_load(fx.key_path, 0, again), AGW_ERR_BAD_CONFIG);
    CHECK_INT(chmod(fx.key_path, 0604), 0);
    CHECK_INT(st_seal_key_load(fx.key_path, 1, again), AGW_ERR_BAD_CONFIG);
    CHECK_INT(chmod(fx.key_path, 0600), 0);

    /* a key file of the wrong size is refused, not padded or cut */
    snprintf(path, sizeof(path), "%s/short.key", tmp);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, "0123456789", 10) == 10);
    close(fd);
    CHECK_INT(st_seal_key_load(path, 1, again), AGW_ERR_BAD_INPUT);
    snprintf(path, sizeof(path), "%s/long.key", tmp);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, "0123456789012345678901234567890123", 33) == 33);
    close(fd);
    CHECK_INT(st_seal_key_load(path, 0, again), AGW_ERR_BAD_INPUT);
}

static void eab_keys_are_sealed_and_round_trip(void)
{
    struct fixture fx;
    struct st_eab e1, e2, got, *list = NULL;
    unsigned char h1[32], h2[32], hmac[ST_HMAC_MAX], wrong_key[32];
    size_t hmac_len = 0, n = 0;
    char sql[512];

    CHECK_INT(fixture_open(&fx, "eab"), 0);
    CHECK_INT(st_eab_create(fx.s, "sensor", NOW, &e1, h1), 0);
    CHECK_INT(st_eab_create(fx.s, "gateway", NOW + 1, &e2, h2), 0);
    CHECK(strncmp(e1.kid, "kid-", 4) == 0);
    CHECK_INT(strlen(e1.kid), 26);
    CHECK(strcmp(e1.kid, e2.kid) != 0);
    CHECK(memcmp(h1, h2, 32) != 0);

    CHECK_INT(st_eab_get(fx.s, e1.kid, &got, hmac, &hmac_len), 0);
    CHECK_INT(hmac_len, 32);
    CHECK(memcmp(hmac, h1, 32) == 0);
    CHECK_STR(got.class_name, "sensor");
    CHECK_INT(got.created, NOW);
    CHECK_INT(got.revoked, 0);
    CHECK_INT(got.n_accounts, 0);
    CHECK_INT(st_eab_get(fx.s, "kid-nope", &got, hmac, &hmac_len), AGW_ERR_NOT_FOUND);

    CHECK_INT(st_eab_list(fx.s, &list, &n), 0);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(list[0].kid, e1.kid); /* oldest first */
        CHECK_STR(list[1].kid, e2.kid);
    }
    free(list);

    CHECK_INT(st_eab_revoke(fx.s, e1.kid, NOW + 5), 0);
    CHECK_INT(st_eab_revoke(fx.s, e1.kid, NOW + 6), AGW_ERR_CONFLICT);
    CHECK_INT(st_eab_revoke(fx.s, "kid-nope", NOW + 6), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_eab_get(fx.s, e1.kid, &got, hmac, &hmac_len), 0);
    CHECK_INT(got.revoked, NOW + 5);
    st_close(fx.s);

    /* On disk: the kid is there in clear (so the search works), the HMAC key is not. */
    if (!use_pg) {
        CHECK(db_contains(fx.db, e1.kid, strlen(e1.kid)));
        CHECK(!db_contains(fx.db, h1, sizeof(h1)));
        CHECK(!db_contains(fx.db, h2, sizeof(h2)));
    } else {
        CHECK_INT(query_int(fx.db, "SELECT count(*) FROM eab_keys WHERE "
                                   "length(hmac_sealed) = 61"), /* 32 + version, IV, tag */
                  2);
    }

    /* Another seal key: an error, never garbage bytes. */
    memcpy(wrong_key, fx.key, 32);
    wrong_key[0] ^= 1;
    CHECK_INT(store_open(fx.db, wrong_key, &fx.s), 0);
    memset(hmac, 0xAA, sizeof(hmac));
    hmac_len = 99;
    CHECK_INT(st_eab_get(fx.s, e2.kid, &got, hmac, &hmac_len), AGW_ERR_STORE);
    CHECK_INT(hmac_len, 0);
    CHECK(memcmp(hmac, h2, 32) != 0);
    st_close(fx.s);

    /* A sealed blob moved to another row does not open (the kid is the AAD). */
    snprintf(sql, sizeof(sql),
             "UPDATE eab_keys SET hmac_sealed = (SELECT hmac_sealed FROM eab_keys WHERE kid='%s') "
             "WHERE kid='%s'",
             e1.kid, e2.kid);
    CHECK_INT(exec_raw(fx.db, sql), SQLITE_OK);
    CHECK_INT(store_open(fx.db, fx.key, &fx.s), 0);
    CHECK_INT(st_eab_get(fx.s, e1.kid, &got, hmac, &hmac_len), 0);
    CHECK_INT(st_eab_get(fx.s, e2.kid, &got, hmac, &hmac_len), AGW_ERR_STORE);
    st_close(fx.s);
}

static void accounts_lifecycle(void)
{
    struct fixture fx;
    struct st_eab e, erev;
    struct st_account a, b, got;
    unsigned char h[32], hmac[ST_HMAC_MAX];
    char existing[ST_ID_LEN];
    size_t hmac_len;

    CHECK_INT(fixture_open(&fx, "accounts"), 0);
    CHECK_INT(st_eab_create(fx.s, "meter", NOW, &e, h), 0);
    make_account(&a, "thumb-A", e.kid);
    CHECK_INT(st_account_create(fx.s, &a, existing), 0);
    CHECK_INT(strlen(a.id), 22);
    CHECK_STR(a.status, "valid");
    CHECK_STR(a.class_name, "meter"); /* copied from the EAB key */
    CHECK_INT(st_eab_get(fx.s, e.kid, &erev, hmac, &hmac_len), 0);
    CHECK_INT(erev.n_accounts, 1);

    CHECK_INT(st_account_get(fx.s, a.id, &got), 0);
    CHECK_STR(got.thumbprint, "thumb-A");
    CHECK_STR(got.eab_kid, e.kid);
    CHECK_STR(got.jwk_json, "{\"kty\":\"EC\"}");
    CHECK_STR(got.contact_json, "[\"mailto:ops@example.org\"]");
    CHECK_INT(got.created, NOW);
    st_account_clear(&got);
    CHECK_INT(st_account_by_thumbprint(fx.s, "thumb-A", &got), 0);
    CHECK_STR(got.id, a.id);
    st_account_clear(&got);
    CHECK_INT(st_account_get(fx.s, "nope", &got), AGW_ERR_NOT_FOUND);

    /* same thumbprint: CONFLICT naming the holder, and the EAB count is not bumped */
    make_account(&b, "thumb-A", e.kid);
    CHECK_INT(st_account_create(fx.s, &b, existing), AGW_ERR_CONFLICT);
    CHECK_STR(existing, a.id);
    CHECK_INT(st_eab_get(fx.s, e.kid, &erev, hmac, &hmac_len), 0);
    CHECK_INT(erev.n_accounts, 1);

    /* no EAB key: eab_kid stays "" */
    make_account(&b, "thumb-B", "");
    CHECK_INT(st_account_create(fx.s, &b, NULL), 0);
    CHECK_INT(st_account_get(fx.s, b.id, &got), 0);
    CHECK_STR(got.eab_kid, "");
    CHECK_STR(got.class_name, "sensor");
    st_account_clear(&got);

    /* unknown or revoked EAB key: nothing written */
    make_account(&b, "thumb-C", "kid-unknown");
    CHECK_INT(st_account_create(fx.s, &b, NULL), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_eab_revoke(fx.s, e.kid, NOW + 1), 0);
    make_account(&b, "thumb-C", e.kid);
    CHECK_INT(st_account_create(fx.s, &b, NULL), AGW_ERR_UNAUTHORIZED);
    CHECK_INT(st_account_by_thumbprint(fx.s, "thumb-C", &got), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_eab_get(fx.s, e.kid, &erev, hmac, &hmac_len), 0);
    CHECK_INT(erev.n_accounts, 1);

    CHECK_INT(st_account_set_contact(fx.s, a.id, "[]"), 0);
    CHECK_INT(st_account_set_contact(fx.s, "nope", "[]"), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_account_get(fx.s, a.id, &got), 0);
    CHECK_STR(got.contact_json, "[]");
    st_account_clear(&got);

    /* key rollover: new thumbprint found, old one gone; a taken thumbprint is a CONFLICT */
    CHECK_INT(st_account_set_key(fx.s, a.id, "thumb-A2", "{\"kty\":\"OKP\"}"), 0);
    CHECK_INT(st_account_by_thumbprint(fx.s, "thumb-A", &got), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_account_by_thumbprint(fx.s, "thumb-A2", &got), 0);
    CHECK_STR(got.jwk_json, "{\"kty\":\"OKP\"}");
    st_account_clear(&got);
    CHECK_INT(st_account_set_key(fx.s, a.id, "thumb-B", "{}"), AGW_ERR_CONFLICT);
    CHECK_INT(st_account_set_key(fx.s, "nope", "thumb-Z", "{}"), AGW_ERR_NOT_FOUND);

    CHECK_INT(st_account_deactivate(fx.s, a.id), 0);
    CHECK_INT(st_account_deactivate(fx.s, a.id), AGW_ERR_CONFLICT);
    CHECK_INT(st_account_deactivate(fx.s, "nope"), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_account_get(fx.s, a.id, &got), 0);
    CHECK_STR(got.status, "deactivated");
    st_account_clear(&got);
    st_close(fx.s);
}

static void orders_authz_challenges(void)
{
    struct fixture fx;
    struct st_account a;
    struct st_order o, o2, got;
    struct st_authz az[2], *azl = NULL, azg;
    struct st_new_challenge ch[2];
    struct st_challenge *chl = NULL, chg;
    char(*ids)[ST_ID_LEN] = NULL;
    size_t n = 0;
    int64_t cnt = -1;

    CHECK_INT(fixture_open(&fx, "orders"), 0);
    make_account(&a, "thumb-O", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    CHECK_INT(make_order(fx.s, a.id, &o, az, ch), 0);
    CHECK_INT(strlen(o.id), 22);
    CHECK_STR(az[0].order_id, o.id);
    CHECK_STR(az[1].account_id, a.id);
    CHECK_STR(ch[1].c.authz_id, az[1].id);

    CHECK_INT(st_order_get(fx.s, o.id, &got), 0);
    CHECK_STR(got.status, "pending");
    CHECK_STR(got.account_id, a.id);
    CHECK_STR(got.cert_serial, "");
    CHECK_INT(got.expires, NOW + 3600);
    CHECK(got.identifiers_json != NULL && strstr(got.identifiers_json, "b.example") != NULL);
    CHECK(got.error_json == NULL);
    st_order_clear(&got);

    CHECK_INT(st_authz_list_by_order(fx.s, o.id, &azl, &n), 0);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(azl[0].id, az[0].id); /* creation order */
        CHECK_STR(azl[1].id_value, "b.example");
        CHECK_STR(azl[1].status, "pending");
    }
    for (size_t i = 0; i < n; i++)
        st_authz_clear(&azl[i]);
    free(azl);

    CHECK_INT(st_challenge_list_by_authz(fx.s, az[1].id, &chl, &n), 0);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(chl[0].id, ch[1].c.id);
        CHECK_STR(chl[0].type, "http-01");
        CHECK_STR(chl[0].token, ch[1].c.token);
    }
    for (size_t i = 0; i < n; i++)
        st_challenge_clear(&chl[i]);
    free(chl);

    /* challenge -> processing -> valid; the wrong 'from' is a CONFLICT */
    CHECK_INT(st_challenge_transition(fx.s, ch[0].c.id, "pending", "processing", 0, NULL), 0);
    CHECK_INT(st_challenge_transition(fx.s, ch[0].c.id, "pending", "valid", NOW, NULL),
              AGW_ERR_CONFLICT);
    CHECK_INT(st_challenge_transition(fx.s, ch[0].c.id, "processing", "valid", NOW + 9, NULL), 0);
    CHECK_INT(st_challenge_transition(fx.s, ch[1].c.id, "pending", "invalid", 0,
                                      "{\"type\":\"urn:ietf:params:acme:error:connection\"}"),
              0);
    CHECK_INT(st_challenge_transition(fx.s, "nope", "pending", "valid", 0, NULL),
              AGW_ERR_NOT_FOUND);
    CHECK_INT(st_challenge_get(fx.s, ch[0].c.id, &chg), 0);
    CHECK_STR(chg.status, "valid");
    CHECK_INT(chg.validated, NOW + 9);
    st_challenge_clear(&chg);
    CHECK_INT(st_challenge_get(fx.s, ch[1].c.id, &chg), 0);
    CHECK(chg.error_json != NULL && strstr(chg.error_json, "connection") != NULL);
    st_challenge_clear(&chg);

    CHECK_INT(st_authz_transition(fx.s, az[0].id, "pending", "valid"), 0);
    CHECK_INT(st_authz_transition(fx.s, az[0].id, "pending", "invalid"), AGW_ERR_CONFLICT);
    CHECK_INT(st_authz_transition(fx.s, "nope", "pending", "valid"), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_authz_get(fx.s, az[0].id, &azg), 0);
    CHECK_STR(azg.status, "valid");
    st_authz_clear(&azg);

    CHECK_INT(st_order_transition(fx.s, o.id, "pending", "ready", NULL), 0);
    CHECK_INT(st_order_transition(fx.s, o.id, "pending", "ready", NULL), AGW_ERR_CONFLICT);
    CHECK_INT(st_order_transition(fx.s, o.id, "valid", "processing", NULL), AGW_ERR_CONFLICT);
    CHECK_INT(st_order_transition(fx.s, "nope", "pending", "ready", NULL), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_order_get(fx.s, o.id, &got), 0);
    CHECK_STR(got.status, "ready");
    st_order_clear(&got);

    /* a second order; list newest first, counts by status */
    CHECK_INT(make_order(fx.s, a.id, &o2, az, ch), 0);
    CHECK_INT(exec_raw(fx.db, "UPDATE orders SET created = created + 10 WHERE status='pending'"),
              SQLITE_OK);
    CHECK_INT(st_order_ids_by_account(fx.s, a.id, 10, &ids, &n), 0);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(ids[0], o2.id);
        CHECK_STR(ids[1], o.id);
    }
    free(ids);
    CHECK_INT(st_order_ids_by_account(fx.s, a.id, 1, &ids, &n), 0);
    CHECK_INT(n, 1);
    free(ids);
    CHECK_INT(st_order_count(fx.s, a.id, "pending", 0, &cnt), 0);
    CHECK_INT(cnt, 1);
    CHECK_INT(st_order_count(fx.s, a.id, NULL, 0, &cnt), 0);
    CHECK_INT(cnt, 2);
    CHECK_INT(st_order_count(fx.s, a.id, NULL, NOW + 5, &cnt), 0);
    CHECK_INT(cnt, 1);

    /* unknown account: foreign key, nothing written */
    CHECK_INT(make_order(fx.s, "no-such-account", &o2, az, ch), AGW_ERR_NOT_FOUND);
    st_close(fx.s);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM orders"), 2);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM authorizations"), 4);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM challenges"), 4);
}

static void certificates_issue_revoke_list(void)
{
    static const unsigned char der[] = {0x30, 0x82, 0x01, 0x0a, 0x00, 0xff, 0x42};
    struct fixture fx;
    struct st_account a;
    struct st_order o, o2, got;
    struct st_authz az[2];
    struct st_new_challenge ch[2];
    struct st_cert c, cg, *list = NULL;
    struct st_revoked *rl = NULL;
    struct st_cert_filter f;
    uint64_t num = 0;
    size_t n = 0;
    char serial[ST_SERIAL_LEN];
    double t0, dt;

    CHECK_INT(fixture_open(&fx, "certs"), 0);
    make_account(&a, "thumb-C", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    CHECK_INT(make_order(fx.s, a.id, &o, az, ch), 0);
    CHECK_INT(make_order(fx.s, a.id, &o2, az, ch), 0);

    /* not processing yet: CONFLICT, and no certificate row */
    make_cert(&c, "0a01", o.id, a.id, "sensor", "a.example,b.example", NOW + 86400, der,
              sizeof(der));
    CHECK_INT(st_cert_issue(fx.s, &c), AGW_ERR_CONFLICT);
    CHECK_INT(st_cert_get(fx.s, "0a01", &cg), AGW_ERR_NOT_FOUND);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM certificates"), 0);

    CHECK_INT(st_order_transition(fx.s, o.id, "pending", "ready", NULL), 0);
    CHECK_INT(st_order_transition(fx.s, o.id, "ready", "processing", NULL), 0);
    CHECK_INT(st_cert_issue(fx.s, &c), 0);
    CHECK_INT(st_order_get(fx.s, o.id, &got), 0);
    CHECK_STR(got.status, "valid");
    CHECK_STR(got.cert_serial, "0a01");
    st_order_clear(&got);
    CHECK_INT(st_cert_get(fx.s, "0a01", &cg), 0);
    CHECK_INT(cg.der_len, sizeof(der));
    CHECK(cg.der != NULL && memcmp(cg.der, der, sizeof(der)) == 0);
    CHECK_STR(cg.chain_pem, c.chain_pem);
    CHECK_STR(cg.status, "valid");
    CHECK_STR(cg.order_id, o.id);
    CHECK_INT(cg.reason, -1);
    st_cert_clear(&cg);

    /* the order is valid now: a second issuance for it is a CONFLICT */
    make_cert(&c, "0a02", o.id, a.id, "sensor", "a.example", NOW + 86400, der, sizeof(der));
    CHECK_INT(st_cert_issue(fx.s, &c), AGW_ERR_CONFLICT);
    CHECK_INT(st_cert_get(fx.s, "0a02", &cg), AGW_ERR_NOT_FOUND);

    /* duplicate serial on another processing order: CONFLICT, and the order stays processing */
    CHECK_INT(st_order_transition(fx.s, o2.id, "pending", "processing", NULL), 0);
    make_cert(&c, "0a01", o2.id, a.id, "sensor", "a.example", NOW + 86400, der, sizeof(der));
    CHECK_INT(st_cert_issue(fx.s, &c), AGW_ERR_CONFLICT);
    CHECK_INT(st_order_get(fx.s, o2.id, &got), 0);
    CHECK_STR(got.status, "processing");
    CHECK_STR(got.cert_serial, "");
    st_order_clear(&got);

    /* operator-issued certificates (no order): a few classes, one expired */
    make_cert(&c, "0b01", "", "", "meter", "m1.example", NOW + 86400, der, sizeof(der));
    c.issued = NOW + 1;
    CHECK_INT(st_cert_issue(fx.s, &c), 0);
    make_cert(&c, "0b02", "", "", "meter", "m2.example", NOW - 10, der, sizeof(der));
    c.issued = NOW + 2;
    CHECK_INT(st_cert_issue(fx.s, &c), 0);

    /* timed: certificate commits with synchronous=FULL (a figure, not an assertion) */
    t0 = now_s();
    for (int i = 0; i < 300; i++) {
        snprintf(serial, sizeof(serial), "ff%04x", (unsigned)i);
        make_cert(&c, serial, "", "", "bulk", "bulk.example", NOW + 86400, der, sizeof(der));
        c.issued = NOW - 100; /* older than the rest, so the list tests see them last */
        CHECK_INT(st_cert_issue(fx.s, &c), 0);
    }
    dt = now_s() - t0;
    fprintf(stderr, "store: st_cert_issue synchronous=FULL: 300 commits in %.3f s = %.0f/s\n", dt,
            300.0 / dt);

    CHECK_INT(st_cert_revoke(fx.s, "0b01", 1, NOW + 100), 0);
    CHECK_INT(st_cert_revoke(fx.s, "0b01", 4, NOW + 200), AGW_ERR_ALREADY_REVOKED);
    CHECK_INT(st_cert_revoke(fx.s, "dead", 1, NOW), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_cert_revoke(fx.s, "0a01", 7, NOW), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_cert_get(fx.s, "0b01", &cg), 0);
    CHECK_STR(cg.status, "revoked");
    CHECK_INT(cg.revoked_at, NOW + 100);
    CHECK_INT(cg.reason, 1);
    st_cert_clear(&cg);

    CHECK_INT(st_revoked_list(fx.s, "issuing-ca-1", NOW, &rl, &n), 0);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(rl[0].serial, "0b01");
        CHECK_INT(rl[0].reason, 1);
        CHECK_INT(rl[0].revoked_at, NOW + 100);
    }
    free(rl);
    CHECK_INT(st_revoked_list(fx.s, "issuing-ca-1", NOW + 86401, &rl, &n), 0);
    CHECK_INT(n, 0); /* expired before 'since': off the CRL */
    free(rl);
    CHECK_INT(st_revoked_list(fx.s, "other-ca", 0, &rl, &n), 0);
    CHECK_INT(n, 0);
    free(rl);

    CHECK_INT(st_crl_next_number(fx.s, "issuing-ca-1", &num), 0);
    CHECK_INT(num, 1);
    CHECK_INT(st_crl_next_number(fx.s, "issuing-ca-1", &num), 0);
    CHECK_INT(num, 2);
    CHECK_INT(st_crl_next_number(fx.s, "other-ca", &num), 0);
    CHECK_INT(num, 1);
    CHECK_INT(st_crl_next_number(fx.s, "issuing-ca-1", &num), 0);
    CHECK_INT(num, 3);

    memset(&f, 0, sizeof(f));
    f.now = NOW;
    CHECK_INT(st_cert_list(fx.s, &f, &list, &n), 0);
    CHECK_INT(n, 303);
    if (n == 303) {
        CHECK_STR(list[0].serial, "0b02"); /* newest first */
        CHECK_STR(list[1].serial, "0b01");
        CHECK(list[0].der == NULL && list[0].chain_pem == NULL);
    }
    for (size_t i = 0; i < n; i++)
        st_cert_clear(&list[i]);
    free(list);

    f.class_name = "meter";
    CHECK_INT(st_cert_list(fx.s, &f, &list, &n), 0);
    CHECK_INT(n, 2);
    for (size_t i = 0; i < n; i++)
        st_cert_clear(&list[i]);
    free(list);

    f.status = "expired";
    CHECK_INT(st_cert_list(fx.s, &f, &list, &n), 0);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK_STR(list[0].serial, "0b02");
    for (size_t i = 0; i < n; i++)
        st_cert_clear(&list[i]);
    free(list);

    f.status = "revoked";
    CHECK_INT(st_cert_list(fx.s, &f, &list, &n), 0);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK_STR(list[0].serial, "0b01");
    for (size_t i = 0; i < n; i++)
        st_cert_clear(&list[i]);
    free(list);

    f.class_name = NULL;
    f.status = "valid";
    f.identifier = "b.example";
    CHECK_INT(st_cert_list(fx.s, &f, &list, &n), 0);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK_STR(list[0].serial, "0a01");
    for (size_t i = 0; i < n; i++)
        st_cert_clear(&list[i]);
    free(list);

    f.identifier = "bulk.";
    f.max = 5;
    CHECK_INT(st_cert_list(fx.s, &f, &list, &n), 0);
    CHECK_INT(n, 5);
    for (size_t i = 0; i < n; i++)
        st_cert_clear(&list[i]);
    free(list);

    memset(&f, 0, sizeof(f));
    f.now = NOW;
    f.expiring_before = NOW;
    CHECK_INT(st_cert_list(fx.s, &f, &list, &n), 0);
    CHECK_INT(n, 1); /* only 0b02 ends before NOW */
    for (size_t i = 0; i < n; i++)
        st_cert_clear(&list[i]);
    free(list);

    f.status = "bogus";
    CHECK_INT(st_cert_list(fx.s, &f, &list, &n), AGW_ERR_BAD_INPUT);
    CHECK(list == NULL);
    st_close(fx.s);
}

static void quota_counts_and_single_use_eab(void)
{
    static const unsigned char der[] = {0x30, 0x03, 0x02, 0x01, 0x01};
    struct fixture fx;
    struct st_eab e;
    unsigned char hmac[32];
    struct st_account a, b;
    struct st_order o;
    struct st_authz az[2];
    struct st_new_challenge ch[2];
    struct st_cert c;
    int64_t n = -1;

    CHECK_INT(fixture_open(&fx, "quota"), 0);
    CHECK_INT(st_eab_create(fx.s, "sensor", NOW, &e, hmac), 0);
    make_account(&a, "thumb-Q1", e.kid);
    a.eab_max_accounts = 1;
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    /* single use: a second binding is refused and writes nothing */
    make_account(&b, "thumb-Q2", e.kid);
    b.eab_max_accounts = 1;
    CHECK_INT(st_account_create(fx.s, &b, NULL), AGW_ERR_UNAUTHORIZED);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM accounts"), 1);
    CHECK_INT(query_int(fx.db, "SELECT n_accounts FROM eab_keys"), 1);
    /* without the cap the same key binds more */
    b.eab_max_accounts = 0;
    CHECK_INT(st_account_create(fx.s, &b, NULL), 0);

    CHECK_INT(st_order_count_by_eab(fx.s, e.kid, NOW - 10, &n), 0);
    CHECK_INT(n, 0);
    CHECK_INT(make_order(fx.s, a.id, &o, az, ch), 0);
    CHECK_INT(make_order(fx.s, b.id, &o, az, ch), 0);
    CHECK_INT(st_order_count_by_eab(fx.s, e.kid, NOW - 10, &n), 0);
    CHECK_INT(n, 2);
    CHECK_INT(st_order_count_by_eab(fx.s, e.kid, NOW + 10, &n), 0); /* created before "since" */
    CHECK_INT(n, 0);

    CHECK_INT(st_cert_count_by_account(fx.s, b.id, NOW - 10, &n), 0);
    CHECK_INT(n, 0);
    CHECK_INT(st_order_transition(fx.s, o.id, "pending", "processing", NULL), 0);
    make_cert(&c, "0b01", o.id, b.id, "sensor", "a.example", NOW + 86400, der, sizeof(der));
    CHECK_INT(st_cert_issue(fx.s, &c), 0);
    CHECK_INT(st_cert_count_by_account(fx.s, b.id, NOW - 10, &n), 0);
    CHECK_INT(n, 1);
    CHECK_INT(st_cert_count_by_account(fx.s, a.id, NOW - 10, &n), 0);
    CHECK_INT(n, 0);
    st_close(fx.s);
}

static void shared_nonces_and_crl_lease(void)
{
    static const unsigned char der1[] = {0x30, 0x01, 0x01}, der2[] = {0x30, 0x01, 0x02};
    struct fixture fx;
    unsigned char *der = NULL;
    size_t len = 0;
    uint64_t number = 0;
    int64_t tu = 0, nu = 0;
    int granted = -1;

    CHECK_INT(fixture_open(&fx, "shared"), 0);
    /* a nonce is redeemed once, from any instance */
    CHECK_INT(st_nonce_redeem(fx.s, "00aa", NOW + 60), 0);
    CHECK_INT(st_nonce_redeem(fx.s, "00aa", NOW + 60), AGW_ERR_CONFLICT);
    CHECK_INT(st_nonce_redeem(fx.s, "00ab", NOW - 60), 0);
    CHECK_INT(st_nonce_purge(fx.s, NOW), 0);
    CHECK_INT(st_nonce_redeem(fx.s, "00ab", NOW + 60), 0); /* purged: the record was expired */
    CHECK_INT(st_nonce_redeem(fx.s, "00aa", NOW + 60), AGW_ERR_CONFLICT); /* not yet expired */

    /* one lease holder per issuer; it renews; another takes over only after expiry */
    CHECK_INT(st_crl_lease(fx.s, "ca1", "gw-a", NOW, 10, &granted), 0);
    CHECK_INT(granted, 1);
    CHECK_INT(st_crl_lease(fx.s, "ca1", "gw-b", NOW + 5, 10, &granted), 0);
    CHECK_INT(granted, 0);
    CHECK_INT(st_crl_lease(fx.s, "ca1", "gw-a", NOW + 5, 10, &granted), 0);
    CHECK_INT(granted, 1);
    CHECK_INT(st_crl_lease(fx.s, "ca1", "gw-b", NOW + 14, 10, &granted), 0);
    CHECK_INT(granted, 0);
    CHECK_INT(st_crl_lease(fx.s, "ca1", "gw-b", NOW + 16, 10, &granted), 0);
    CHECK_INT(granted, 1);
    CHECK_INT(st_crl_lease(fx.s, "ca2", "gw-a", NOW + 16, 10, &granted), 0);
    CHECK_INT(granted, 1); /* leases are per issuer */

    /* the latest CRL wins; an older number does not overwrite */
    CHECK_INT(st_crl_get(fx.s, "ca1", &number, &tu, &nu, &der, &len), AGW_ERR_NOT_FOUND);
    CHECK_INT(st_crl_put(fx.s, "ca1", 2, NOW, NOW + 100, der2, sizeof(der2)), 0);
    CHECK_INT(st_crl_put(fx.s, "ca1", 1, NOW, NOW + 100, der1, sizeof(der1)), 0);
    CHECK_INT(st_crl_get(fx.s, "ca1", &number, &tu, &nu, &der, &len), 0);
    CHECK_INT(number, 2);
    CHECK_INT(nu, NOW + 100);
    CHECK(len == sizeof(der2) && der != NULL && memcmp(der, der2, len) == 0);
    free(der);
    st_close(fx.s);
}

static void stale_processing_orders_become_invalid(void)
{
    struct fixture fx;
    struct st_account a;
    struct st_order o, o2, got;
    struct st_authz az[2];
    struct st_new_challenge ch[2];
    char sql[256];
    int64_t n = -1;

    memset(&got, 0, sizeof(got));
    CHECK_INT(fixture_open(&fx, "stale"), 0);
    make_account(&a, "thumb-S", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    CHECK_INT(make_order(fx.s, a.id, &o, az, ch), 0);
    CHECK_INT(make_order(fx.s, a.id, &o2, az, ch), 0);
    CHECK_INT(st_order_transition(fx.s, o.id, "pending", "processing", NULL), 0);
    CHECK_INT(st_order_transition(fx.s, o2.id, "pending", "processing", NULL), 0);
    /* just moved: not stale */
    CHECK_INT(st_order_fail_stale(fx.s, 60, "{\"type\":\"x\"}", &n), 0);
    CHECK_INT(n, 0);
    /* o was left processing an hour ago (a gateway died during its finalize) */
    snprintf(sql, sizeof(sql), "UPDATE orders SET updated = updated - 3600 WHERE id = '%s'",
             o.id);
    CHECK_INT(exec_raw(fx.db, sql), SQLITE_OK);
    CHECK_INT(st_order_fail_stale(fx.s, 60, "{\"type\":\"x\"}", &n), 0);
    CHECK_INT(n, 1);
    CHECK_INT(st_order_get(fx.s, o.id, &got), 0);
    CHECK_STR(got.status, "invalid");
    CHECK(got.error_json != NULL && strstr(got.error_json, "\"x\"") != NULL);
    st_order_clear(&got);
    CHECK_INT(st_order_get(fx.s, o2.id, &got), 0);
    CHECK_STR(got.status, "processing"); /* the fresh one is left alone */
    st_order_clear(&got);
    /* a late finalize of the swept order cannot complete it */
    CHECK_INT(st_order_transition(fx.s, o.id, "processing", "valid", NULL), AGW_ERR_CONFLICT);
    st_close(fx.s);
}

struct limit_race {
    struct st_store *s;
    const char *account_id;
    int ok, limited;
};

static void *limit_race_run(void *arg)
{
    struct limit_race *r = arg;

    for (int i = 0; i < 5; i++) {
        struct st_order o;
        struct st_authz az[2];
        struct st_new_challenge ch[2];
        int err;

        memset(&o, 0, sizeof(o));
        memset(az, 0, sizeof(az));
        memset(ch, 0, sizeof(ch));
        snprintf(o.account_id, sizeof(o.account_id), "%s", r->account_id);
        snprintf(o.class_name, sizeof(o.class_name), "sensor");
        o.created = NOW;
        o.expires = NOW + 3600;
        o.identifiers_json = (char *)"[]";
        o.max_pending = 3;
        err = st_order_create(r->s, &o, az, 0, ch, 0);
        if (err == 0)
            __atomic_add_fetch(&r->ok, 1, __ATOMIC_RELAXED);
        else if (err == AGW_ERR_RATE_LIMITED)
            __atomic_add_fetch(&r->limited, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void order_limits_hold_under_concurrency_and_replaces_is_unique(void)
{
    struct fixture fx;
    struct st_account a;
    struct st_order o;
    struct st_authz az[2];
    struct st_new_challenge ch[2];
    struct limit_race r;
    pthread_t t[4];

    CHECK_INT(fixture_open(&fx, "limits"), 0);
    make_account(&a, "thumb-L", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    memset(&r, 0, sizeof(r));
    r.s = fx.s;
    r.account_id = a.id;
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, limit_race_run, &r);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK_INT(r.ok, 3); /* 20 attempts, a limit of 3 pending: exactly 3 */
    CHECK_INT(r.limited, 17);

    /* one live order may replace a certificate; once it is invalid, another may */
    memset(&o, 0, sizeof(o));
    CHECK_INT(make_order(fx.s, a.id, &o, az, ch), 0); /* no limits set: not counted */
    {
        struct st_order x;
        int err;
        memset(&x, 0, sizeof(x));
        snprintf(x.account_id, sizeof(x.account_id), "%s", a.id);
        snprintf(x.class_name, sizeof(x.class_name), "sensor");
        snprintf(x.replaces, sizeof(x.replaces), "aki.serial");
        x.created = NOW;
        x.expires = NOW + 3600;
        x.identifiers_json = (char *)"[]";
        CHECK_INT(st_order_create(fx.s, &x, az, 0, ch, 0), 0);
        {
            char first[ST_ID_LEN];
            snprintf(first, sizeof(first), "%s", x.id);
            err = st_order_create(fx.s, &x, az, 0, ch, 0);
            CHECK_INT(err, AGW_ERR_CONFLICT);
            CHECK_INT(st_order_transition(fx.s, first, "pending", "invalid", NULL), 0);
            CHECK_INT(st_order_create(fx.s, &x, az, 0, ch, 0), 0);
        }
    }
    st_close(fx.s);
}

/* The reads by key (checked once, in store.c, for every backend): bad arguments are refused with
 * the out-parameters reset, and a key that points into the out-parameter itself still works. */
static void reads_by_key_check_their_arguments(void)
{
    struct fixture fx;
    struct st_account a, ga;
    struct st_order o, go;
    struct st_authz az[2], gz, *zl = (struct st_authz *)1;
    struct st_new_challenge ch[2];
    struct st_challenge gc, *cl = (struct st_challenge *)1;
    struct st_cert gt;
    char long_id[ST_ID_LEN + 1], long_serial[ST_SERIAL_LEN + 1];
    size_t n = 7;

    memset(long_id, 'i', ST_ID_LEN);
    long_id[ST_ID_LEN] = '\0';
    memset(long_serial, 'a', ST_SERIAL_LEN);
    long_serial[ST_SERIAL_LEN] = '\0';
    CHECK_INT(fixture_open(&fx, "reads"), 0);
    make_account(&a, "thumb-reads", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    CHECK_INT(make_order(fx.s, a.id, &o, az, ch), 0);

    CHECK_INT(st_account_get(NULL, a.id, &ga), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_account_get(fx.s, a.id, NULL), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_account_get(fx.s, "", &ga), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_account_get(fx.s, long_id, &ga), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_account_by_thumbprint(fx.s, NULL, &ga), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_order_get(fx.s, long_id, &go), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_order_get(NULL, o.id, &go), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_authz_get(fx.s, "", &gz), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_challenge_get(fx.s, long_id, &gc), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_cert_get(fx.s, long_serial, &gt), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_cert_get(fx.s, "0a", NULL), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_authz_list_by_order(fx.s, long_id, &zl, &n), AGW_ERR_BAD_INPUT);
    CHECK(zl == NULL && n == 0);
    cl = (struct st_challenge *)1;
    n = 7;
    CHECK_INT(st_challenge_list_by_authz(NULL, az[0].id, &cl, &n), AGW_ERR_BAD_INPUT);
    CHECK(cl == NULL && n == 0);
    CHECK_INT(st_challenge_list_by_authz(fx.s, az[0].id, NULL, &n), AGW_ERR_BAD_INPUT);

    /* the key may live in the struct the row is read into (its allocations released first,
     * as a caller reusing the struct would) */
    CHECK_INT(st_account_get(fx.s, a.id, &ga), 0);
    free(ga.jwk_json);
    free(ga.contact_json);
    CHECK_INT(st_account_get(fx.s, ga.id, &ga), 0);
    CHECK_STR(ga.id, a.id);
    free(ga.jwk_json);
    free(ga.contact_json);
    CHECK_INT(st_account_by_thumbprint(fx.s, ga.thumbprint, &ga), 0);
    CHECK_STR(ga.thumbprint, "thumb-reads");
    st_account_clear(&ga);
    CHECK_INT(st_order_get(fx.s, o.id, &go), 0);
    free(go.identifiers_json);
    free(go.error_json);
    CHECK_INT(st_order_get(fx.s, go.id, &go), 0);
    CHECK_STR(go.id, o.id);
    st_order_clear(&go);
    CHECK_INT(st_authz_get(fx.s, az[0].id, &gz), 0);
    free(gz.id_value);
    CHECK_INT(st_authz_get(fx.s, gz.id, &gz), 0);
    CHECK_STR(gz.id, az[0].id);
    st_authz_clear(&gz);
    CHECK_INT(st_challenge_get(fx.s, ch[0].c.id, &gc), 0);
    free(gc.error_json);
    CHECK_INT(st_challenge_get(fx.s, gc.id, &gc), 0);
    CHECK_STR(gc.id, ch[0].c.id);
    st_challenge_clear(&gc);
    /* a missing row: not found, and the out-parameter left empty */
    CHECK_INT(st_cert_get(fx.s, "0a01", &gt), AGW_ERR_NOT_FOUND);
    CHECK(gt.der == NULL && gt.serial[0] == '\0');
    st_close(fx.s);
}

static void overlong_inputs_are_refused_and_write_nothing(void)
{
    static const unsigned char der[] = {0x30, 0x00};
    struct fixture fx;
    struct st_eab e;
    struct st_account a;
    struct st_order o;
    struct st_authz az[2];
    struct st_new_challenge ch[2];
    struct st_cert c;
    unsigned char h[32];
    char name63[64], name64[65], serial48[49];
    uint64_t num;

    memset(name63, 'n', 63);
    name63[63] = '\0';
    memset(name64, 'n', 64);
    name64[64] = '\0';
    memset(serial48, 'a', 48);
    serial48[48] = '\0';

    CHECK_INT(fixture_open(&fx, "bounds"), 0);
    CHECK_INT(st_eab_create(fx.s, name64, NOW, &e, h), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_eab_create(fx.s, "", NOW, &e, h), AGW_ERR_BAD_INPUT);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM eab_keys"), 0);
    CHECK_INT(st_eab_create(fx.s, name63, NOW, &e, h), 0); /* exactly fits */
    CHECK_STR(e.class_name, name63);

    /* a fixed field with no NUL in it */
    make_account(&a, "thumb-X", "");
    memset(a.class_name, 'c', sizeof(a.class_name));
    CHECK_INT(st_account_create(fx.s, &a, NULL), AGW_ERR_BAD_INPUT);
    make_account(&a, "thumb-X", "");
    memset(a.thumbprint, 't', sizeof(a.thumbprint));
    CHECK_INT(st_account_create(fx.s, &a, NULL), AGW_ERR_BAD_INPUT);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM accounts"), 0);

    make_account(&a, "thumb-X", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    CHECK_INT(st_account_set_key(fx.s, a.id, serial48, "{}"), AGW_ERR_BAD_INPUT);

    /* a challenge pointing at a missing authorization: nothing of the order is written */
    memset(&o, 0, sizeof(o));
    snprintf(o.account_id, sizeof(o.account_id), "%s", a.id);
    o.identifiers_json = (char *)"[]";
    memset(az, 0, sizeof(az));
    memset(ch, 0, sizeof(ch));
    snprintf(az[0].id_type, sizeof(az[0].id_type), "dns");
    az[0].id_value = (char *)"x.example";
    snprintf(ch[0].c.type, sizeof(ch[0].c.type), "http-01");
    snprintf(ch[0].c.token, sizeof(ch[0].c.token), "tok");
    ch[0].authz_index = 1;
    CHECK_INT(st_order_create(fx.s, &o, az, 1, ch, 1), AGW_ERR_BAD_INPUT);
    ch[0].authz_index = 0;
    memset(o.profile, 'p', sizeof(o.profile));
    CHECK_INT(st_order_create(fx.s, &o, az, 1, ch, 1), AGW_ERR_BAD_INPUT);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM orders"), 0);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM authorizations"), 0);

    make_cert(&c, "01", "", "", "x", "", NOW, der, sizeof(der));
    memset(c.class_name, 'c', sizeof(c.class_name)); /* 64 characters, no NUL */
    CHECK_INT(st_cert_issue(fx.s, &c), AGW_ERR_BAD_INPUT);
    make_cert(&c, "01", "", "", "x", "", NOW, der, sizeof(der));
    memset(c.serial, 'f', sizeof(c.serial));
    CHECK_INT(st_cert_issue(fx.s, &c), AGW_ERR_BAD_INPUT);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM certificates"), 0);

    CHECK_INT(st_crl_next_number(fx.s, name64, &num), AGW_ERR_BAD_INPUT);
    CHECK_INT(st_order_transition(fx.s, "x", "pending", "a-state-name-too-long", NULL),
              AGW_ERR_BAD_INPUT);
    st_close(fx.s);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM crl_numbers"), 0);
}

/* ---------------------------------------------------------------- concurrency */

#define N_THREADS    4
#define N_PER_THREAD 200

struct worker {
    struct st_store *s;
    const char *kid;
    int index;
    int n_ok, n_read_ok;
    char ids[N_PER_THREAD][ST_ID_LEN];
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;

    for (int i = 0; i < N_PER_THREAD; i++) {
        struct st_account a, got;
        char thumb[ST_THUMB_LEN];

        snprintf(thumb, sizeof(thumb), "thumb-%d-%d", w->index, i);
        make_account(&a, thumb, w->kid);
        if (st_account_create(w->s, &a, NULL) == 0) {
            w->n_ok++;
            memcpy(w->ids[i], a.id, ST_ID_LEN);
            /* reads run on the pooled connections while other threads write */
            if (st_account_by_thumbprint(w->s, thumb, &got) == 0 && strcmp(got.id, a.id) == 0)
                w->n_read_ok++;
            st_account_clear(&got);
        }
    }
    return NULL;
}

static void concurrent_account_creation(void)
{
    static struct worker w[N_THREADS];
    pthread_t th[N_THREADS];
    struct fixture fx;
    struct st_eab e;
    unsigned char h[32], hmac[ST_HMAC_MAX];
    size_t hmac_len;
    int total = 0, total_read = 0, found = 0;
    double t0, dt;

    CHECK_INT(fixture_open(&fx, "threads"), 0);
    CHECK_INT(st_eab_create(fx.s, "sensor", NOW, &e, h), 0);
    t0 = now_s();
    for (int i = 0; i < N_THREADS; i++) {
        memset(&w[i], 0, sizeof(w[i]));
        w[i].s = fx.s;
        w[i].kid = e.kid;
        w[i].index = i;
        CHECK_INT(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(th[i], NULL);
    dt = now_s() - t0;
    for (int i = 0; i < N_THREADS; i++) {
        total += w[i].n_ok;
        total_read += w[i].n_read_ok;
    }
    fprintf(stderr, "store: %d threads created %d accounts in %.3f s = %.0f/s\n", N_THREADS, total,
            dt, (double)total / dt);
    CHECK_INT(total, N_THREADS * N_PER_THREAD);
    CHECK_INT(total_read, N_THREADS * N_PER_THREAD);
    CHECK_INT(st_eab_get(fx.s, e.kid, &e, hmac, &hmac_len), 0);
    CHECK_INT(e.n_accounts, N_THREADS * N_PER_THREAD); /* the increment is atomic with insert */
    for (int i = 0; i < N_THREADS; i++) {
        for (int j = 0; j < N_PER_THREAD; j++) {
            struct st_account got;

            if (st_account_get(fx.s, w[i].ids[j], &got) == 0)
                found++;
            st_account_clear(&got);
        }
    }
    CHECK_INT(found, N_THREADS * N_PER_THREAD);
    st_close(fx.s);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM accounts"), N_THREADS * N_PER_THREAD);
}

/* ---------------------------------------------------------------- kill -9 */

#define KILL_AFTER 300

struct ack {
    char serial[ST_SERIAL_LEN];
    char order_id[ST_ID_LEN];
};

/* Child: issue forever, acknowledging each certificate only after st_cert_issue returned 0. */
static void kill9_child(const char *db, const unsigned char key[32], const char *account_id, int fd)
{
    static const unsigned char der[] = {0x30, 0x03, 0x02, 0x01, 0x01};
    struct st_store *s = NULL;

    if (store_open(db, key, &s) != 0)
        _exit(2);
    for (unsigned i = 0;; i++) {
        struct st_order o;
        struct st_authz az[2];
        struct st_new_challenge ch[2];
        struct st_cert c;
        struct ack ack;

        if (make_order(s, account_id, &o, az, ch) != 0 ||
            st_order_transition(s, o.id, "pending", "processing", NULL) != 0)
            _exit(3);
        memset(&ack, 0, sizeof(ack));
        snprintf(ack.serial, sizeof(ack.serial), "%08x", i);
        memcpy(ack.order_id, o.id, ST_ID_LEN);
        make_cert(&c, ack.serial, o.id, account_id, "sensor", "a.example", NOW + 86400, der,
                  sizeof(der));
        if (st_cert_issue(s, &c) != 0)
            _exit(4);
        if (write(fd, &ack, sizeof(ack)) != (ssize_t)sizeof(ack)) /* < PIPE_BUF: atomic */
            _exit(5);
    }
}

static size_t read_acks(int fd, struct ack *acks, size_t max)
{
    size_t n = 0, got = 0;

    while (n < max) {
        ssize_t r = read(fd, (char *)&acks[n] + got, sizeof(*acks) - got);

        if (r <= 0)
            break;
        got += (size_t)r;
        if (got == sizeof(*acks)) {
            n++;
            got = 0;
        }
    }
    return n;
}

static void kill9_loses_no_acknowledged_certificate(void)
{
    enum { MAX_ACKS = 200000 };
    struct fixture fx;
    struct st_account a;
    struct ack *acks = calloc(MAX_ACKS, sizeof(*acks));
    size_t n, lost = 0, wrong = 0;
    int pfd[2], status = 0;
    pid_t pid;
    double t0, dt;

    CHECK(acks != NULL);
    if (acks == NULL)
        return;
    CHECK_INT(fixture_open(&fx, "kill9"), 0);
    make_account(&a, "thumb-K", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    st_close(fx.s); /* the child opens its own store: no SQLite state crosses fork() */

    CHECK_INT(pipe(pfd), 0);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        kill9_child(fx.db, fx.key, a.id, pfd[1]);
    }
    close(pfd[1]);
    t0 = now_s();
    n = read_acks(pfd[0], acks, KILL_AFTER);
    dt = now_s() - t0;
    CHECK_INT(n, KILL_AFTER);
    CHECK_INT(kill(pid, SIGKILL), 0);
    /* acknowledgements already in the pipe when the child died count too */
    n += read_acks(pfd[0], acks + n, MAX_ACKS - n);
    close(pfd[0]);
    CHECK_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL); /* killed mid-loop, not exited */
    fprintf(stderr,
            "store: kill -9 after %zu acknowledged issuances; %.0f issuances/s before the kill "
            "(4 commits each)\n",
            n, (double)KILL_AFTER / dt);

    CHECK_INT(store_open(fx.db, fx.key, &fx.s), 0);
    for (size_t i = 0; fx.s != NULL && i < n; i++) {
        struct st_cert c;
        struct st_order o;

        if (st_cert_get(fx.s, acks[i].serial, &c) != 0)
            lost++;
        st_cert_clear(&c);
        if (st_order_get(fx.s, acks[i].order_id, &o) != 0 || strcmp(o.status, "valid") != 0 ||
            strcmp(o.cert_serial, acks[i].serial) != 0)
            wrong++;
        st_order_clear(&o);
    }
    CHECK_INT(lost, 0);
    CHECK_INT(wrong, 0);
    /* the store is usable after the crash: WAL recovery happened */
    {
        uint64_t num = 0;
        CHECK_INT(st_crl_next_number(fx.s, "issuing-ca-1", &num), 0);
        CHECK_INT(num, 1);
    }
    st_close(fx.s);
    free(acks);
}

/* ---------------------------------------------------------------- PostgreSQL only */

/* Child: waits for the parent's go (the pipe closing), opens the store, exits 0 on success. */
static void migrate_child(const char *conninfo, const unsigned char key[32], int go_fd)
{
    struct st_store *s = NULL;
    char c;
    int v = 0;

    (void)read(go_fd, &c, 1); /* EOF: all children are waiting, go */
    if (store_open(conninfo, key, &s) != 0)
        _exit(2);
    if (st_schema_version(s, &v) != 0 || v != 7)
        _exit(3);
    st_close(s);
    _exit(0);
}

static void pg_concurrent_migrations_apply_once(void)
{
    enum { N_PROCS = 4, N_ROUNDS = 3 };
    struct fixture fx;
    int v = -1;

    for (int round = 0; round < N_ROUNDS; round++) {
        char name[32];
        pid_t pids[N_PROCS];
        int go[2], n_ok = 0;

        snprintf(name, sizeof(name), "migrate%d", round);
        snprintf(fx.key_path, sizeof(fx.key_path), "%s/%s-pg.key", tmp, name);
        CHECK_INT(st_seal_key_load(fx.key_path, 1, fx.key), 0);
        CHECK_INT(pg_create_db(name, fx.db, sizeof(fx.db)), 0); /* empty: nothing migrated */
        CHECK_INT(pipe(go), 0);
        for (int i = 0; i < N_PROCS; i++) {
            pids[i] = fork();
            if (pids[i] == 0) {
                close(go[1]);
                migrate_child(fx.db, fx.key, go[0]);
            }
        }
        close(go[0]);
        usleep(100000); /* let every child reach its read() */
        close(go[1]);
        for (int i = 0; i < N_PROCS; i++) {
            int status = 0;

            if (pids[i] > 0 && waitpid(pids[i], &status, 0) == pids[i] && WIFEXITED(status) &&
                WEXITSTATUS(status) == 0)
                n_ok++;
        }
        CHECK_INT(n_ok, N_PROCS);
        CHECK_INT(query_int(fx.db, "SELECT count(*) FROM schema_migrations"), 7);
        CHECK_INT(query_int(fx.db, "SELECT count(DISTINCT version) FROM schema_migrations"), 7);
    }
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM information_schema.tables WHERE "
                               "table_schema = 'public' AND table_name IN ('eab_keys','accounts',"
                               "'orders','authorizations','challenges','certificates',"
                               "'crl_numbers')"),
              7);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM pg_indexes WHERE "
                               "indexname = 'certificates_issued'"),
              1);

    /* up to date: opens, nothing re-applied */
    CHECK_INT(store_open(fx.db, fx.key, &fx.s), 0);
    CHECK_INT(st_schema_version(fx.s, &v), 0);
    CHECK_INT(v, 7);
    st_close(fx.s);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM schema_migrations"), 7);

    /* a database from only migration 1 gets migrations 2 to 7 */
    CHECK_INT(exec_raw(fx.db, "DROP INDEX certificates_issued; DROP INDEX certificates_account; "
                              "DROP TABLE used_nonces; DROP TABLE crl_leases; DROP TABLE crls; "
                              "DROP INDEX orders_status_updated; ALTER TABLE orders DROP COLUMN updated; "
                              "DROP INDEX orders_replaces; "
                              "DELETE FROM schema_migrations WHERE version >= 2"),
              SQLITE_OK);
    CHECK_INT(store_open(fx.db, fx.key, &fx.s), 0);
    st_close(fx.s);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM pg_indexes WHERE "
                               "indexname = 'certificates_issued'"),
              1);

    /* a database from a newer binary is refused */
    CHECK_INT(exec_raw(fx.db, "INSERT INTO schema_migrations VALUES (99, 0)"), SQLITE_OK);
    fx.s = NULL;
    CHECK_INT(store_open(fx.db, fx.key, &fx.s), AGW_ERR_STORE);
    CHECK(fx.s == NULL);
}

/* n orders of the account, each moved to "ready"; their IDs in ids. */
static void make_ready_orders(struct st_store *s, const char *account_id, int n,
                              char ids[][ST_ID_LEN])
{
    for (int i = 0; i < n; i++) {
        struct st_order o;
        struct st_authz az[2];
        struct st_new_challenge ch[2];

        CHECK_INT(make_order(s, account_id, &o, az, ch), 0);
        CHECK_INT(st_order_transition(s, o.id, "pending", "ready", NULL), 0);
        memcpy(ids[i], o.id, ST_ID_LEN);
    }
}

#define Q_THREADS 8
#define Q_MAX     3

struct quota_racer {
    struct st_store *s; /* every other one has its own store: a second instance */
    pthread_barrier_t *barrier;
    const char *order_id;
    int err;
};

static void *quota_racer_run(void *arg)
{
    struct quota_racer *r = arg;

    pthread_barrier_wait(r->barrier);
    r->err = st_order_start_processing(r->s, r->order_id, Q_MAX, NOW - 86400);
    return NULL;
}

/* The daily certificate quota holds when finalizes race (threads, two stores on one database):
 * issued certificates and orders in processing both count; at the limit nothing changes. */
static void certificate_quota_holds_under_concurrent_finalizes(void)
{
    static const unsigned char der[] = {0x30, 0x03, 0x02, 0x01, 0x02};
    static char ids[Q_THREADS + 2][ST_ID_LEN];
    struct quota_racer r[Q_THREADS];
    pthread_t th[Q_THREADS];
    pthread_barrier_t barrier;
    struct st_store *second = NULL;
    struct fixture fx;
    struct st_account a;
    struct st_order o;
    struct st_cert c;
    int won = 0, limited = 0, first = -1;

    CHECK_INT(fixture_open(&fx, "quota"), 0);
    CHECK_INT(store_open(fx.db, fx.key, &second), 0);
    make_account(&a, "thumb-Q", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    make_ready_orders(fx.s, a.id, Q_THREADS + 2, ids);
    CHECK_INT(st_order_start_processing(fx.s, "no-such-order-xxxxxxxxx", Q_MAX, 0),
              AGW_ERR_NOT_FOUND);
    CHECK_INT(st_order_start_processing(fx.s, ids[0], -1, 0), AGW_ERR_BAD_INPUT);
    CHECK_INT(pthread_barrier_init(&barrier, NULL, Q_THREADS), 0);
    for (int i = 0; i < Q_THREADS; i++) {
        r[i].s = i % 2 == 0 ? fx.s : second;
        r[i].barrier = &barrier;
        r[i].order_id = ids[i];
        r[i].err = 1;
        CHECK_INT(pthread_create(&th[i], NULL, quota_racer_run, &r[i]), 0);
    }
    for (int i = 0; i < Q_THREADS; i++) {
        pthread_join(th[i], NULL);
        if (r[i].err == 0) {
            won++;
            if (first < 0)
                first = i;
        } else if (r[i].err == AGW_ERR_RATE_LIMITED) {
            limited++;
        } else {
            CHECK_INT(r[i].err, 0); /* neither: report it */
        }
    }
    pthread_barrier_destroy(&barrier);
    CHECK_INT(won, Q_MAX);
    CHECK_INT(limited, Q_THREADS - Q_MAX);
    CHECK_INT((int)query_int(fx.db, "SELECT COUNT(*) FROM orders WHERE status = 'processing'"),
              Q_MAX);
    CHECK_INT(st_order_get(fx.s, ids[Q_THREADS], &o), 0); /* a refused one is still ready */
    CHECK_STR(o.status, "ready");
    st_order_clear(&o);
    CHECK_INT(st_order_start_processing(fx.s, ids[first], Q_MAX, NOW - 86400), AGW_ERR_CONFLICT);

    /* one of them is issued: a certificate of the day counts as its reservation did */
    if (first >= 0) {
        make_cert(&c, "51a0", ids[first], a.id, "sensor", "a.example", NOW + 86400, der,
                  sizeof(der));
        CHECK_INT(st_cert_issue(fx.s, &c), 0);
    }
    CHECK_INT(st_order_start_processing(second, ids[Q_THREADS], Q_MAX, NOW - 86400),
              AGW_ERR_RATE_LIMITED);
    /* a window that starts after that certificate: only the two in processing count */
    CHECK_INT(st_order_start_processing(second, ids[Q_THREADS], Q_MAX, NOW + 1), 0);
    CHECK_INT(st_order_start_processing(fx.s, ids[Q_THREADS + 1], 0, 0), 0); /* 0: no limit */
    st_close(second);
    st_close(fx.s);
}

#define N_RACES 30

struct racer {
    struct st_store *s; /* its own store: as a second gateway instance would have */
    pthread_barrier_t *barrier;
    const char (*order_ids)[ST_ID_LEN];
    const char *account_id;
    int index;
    int n_transitioned, n_issued;
    int bad_err; /* a result other than 0 or AGW_ERR_CONFLICT */
};

static void *racer_run(void *arg)
{
    static const unsigned char der[] = {0x30, 0x03, 0x02, 0x01, 0x02};
    struct racer *r = arg;

    for (int i = 0; i < N_RACES; i++) {
        struct st_cert c;
        char serial[ST_SERIAL_LEN];
        int err;

        pthread_barrier_wait(r->barrier); /* both finalize at once: §7.4 ready -> processing */
        err = st_order_transition(r->s, r->order_ids[i], "ready", "processing", NULL);
        if (err == 0)
            r->n_transitioned++;
        else if (err != AGW_ERR_CONFLICT)
            r->bad_err = err;
        pthread_barrier_wait(r->barrier); /* both record a certificate for the order at once */
        snprintf(serial, sizeof(serial), "%02x%04x", r->index + 0x10, (unsigned)i);
        make_cert(&c, serial, r->order_ids[i], r->account_id, "sensor", "a.example", NOW + 86400,
                  der, sizeof(der));
        err = st_cert_issue(r->s, &c);
        if (err == 0)
            r->n_issued++;
        else if (err != AGW_ERR_CONFLICT)
            r->bad_err = err;
    }
    return NULL;
}

static void pg_two_instances_finalizing_one_order_race(void)
{
    static char order_ids[N_RACES][ST_ID_LEN];
    struct racer rc[2];
    pthread_t th[2];
    pthread_barrier_t barrier;
    struct fixture fx;
    struct st_store *s2 = NULL;
    struct st_account a;
    int won_once = 0, issued_once = 0;

    CHECK_INT(fixture_open(&fx, "race"), 0);
    CHECK_INT(store_open(fx.db, fx.key, &s2), 0);
    make_account(&a, "thumb-R", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    make_ready_orders(fx.s, a.id, N_RACES, order_ids);
    CHECK_INT(pthread_barrier_init(&barrier, NULL, 2), 0);
    for (int i = 0; i < 2; i++) {
        memset(&rc[i], 0, sizeof(rc[i]));
        rc[i].s = i == 0 ? fx.s : s2;
        rc[i].barrier = &barrier;
        rc[i].order_ids = (const char(*)[ST_ID_LEN])order_ids;
        rc[i].account_id = a.id;
        rc[i].index = i;
        CHECK_INT(pthread_create(&th[i], NULL, racer_run, &rc[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&barrier);
    CHECK_INT(rc[0].bad_err, 0);
    CHECK_INT(rc[1].bad_err, 0);
    CHECK_INT(rc[0].n_transitioned + rc[1].n_transitioned, N_RACES); /* one winner per order */
    CHECK_INT(rc[0].n_issued + rc[1].n_issued, N_RACES);             /* one certificate each */
    for (int i = 0; i < N_RACES; i++) {
        struct st_order o;
        char sql[2048];

        if (st_order_get(fx.s, order_ids[i], &o) == 0 && strcmp(o.status, "valid") == 0)
            won_once++;
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM certificates WHERE order_id = '%s' AND serial = '%s'",
                 order_ids[i], o.cert_serial);
        if (query_int(fx.db, sql) == 1)
            issued_once++;
        st_order_clear(&o);
    }
    CHECK_INT(won_once, N_RACES);
    CHECK_INT(issued_once, N_RACES);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM certificates"), N_RACES);
    fprintf(stderr, "store: %d finalize races, transitions won %d/%d, issued %d/%d\n", N_RACES,
            rc[0].n_transitioned, rc[1].n_transitioned, rc[0].n_issued, rc[1].n_issued);
    st_close(s2);
    st_close(fx.s);
}

/*
 * Many threads on one store through the issuance writes (st_order_create, st_order_transition,
 * st_cert_issue), which SQLite groups into shared commits: each round all threads race for one
 * order's ready -> processing (losers roll back inside the same batch as the winner) while
 * creating orders of their own. Every acknowledged write must be there after a reopen, and
 * nothing else.
 */
#define GC_THREADS 8
#define GC_ROUNDS  40

struct gc_worker {
    struct st_store *s;
    pthread_barrier_t *barrier;
    const char (*shared)[ST_ID_LEN];
    const char *account_id;
    int index;
    int n_won, n_issued, n_own;
    int bad_err;
    char own[GC_ROUNDS][ST_ID_LEN];
};

static void *gc_run(void *arg)
{
    static const unsigned char der[] = {0x30, 0x03, 0x02, 0x01, 0x02};
    struct gc_worker *w = arg;

    for (int i = 0; i < GC_ROUNDS; i++) {
        struct st_order o;
        struct st_authz az[2];
        struct st_new_challenge ch[2];
        int err;

        pthread_barrier_wait(w->barrier);
        err = st_order_transition(w->s, w->shared[i], "ready", "processing", NULL);
        if (err == 0) {
            struct st_cert c;
            char serial[ST_SERIAL_LEN];

            w->n_won++;
            snprintf(serial, sizeof(serial), "%02x%04x", w->index + 0x20, (unsigned)i);
            make_cert(&c, serial, w->shared[i], w->account_id, "sensor", "a.example",
                      NOW + 86400, der, sizeof(der));
            err = st_cert_issue(w->s, &c);
            if (err == 0)
                w->n_issued++;
            else
                w->bad_err = err;
        } else if (err != AGW_ERR_CONFLICT) {
            w->bad_err = err;
        }
        memset(&o, 0, sizeof(o));
        err = make_order(w->s, w->account_id, &o, az, ch);
        if (err == 0) {
            memcpy(w->own[w->n_own++], o.id, ST_ID_LEN);
            err = st_order_transition(w->s, o.id, "pending", "ready", NULL);
        }
        if (err != 0)
            w->bad_err = err;
    }
    return NULL;
}

static void group_commit_keeps_every_acknowledged_write(void)
{
    static char shared[GC_ROUNDS][ST_ID_LEN];
    static struct gc_worker w[GC_THREADS];
    pthread_t th[GC_THREADS];
    pthread_barrier_t barrier;
    struct fixture fx;
    struct st_account a;
    int won = 0, issued = 0, own = 0;

    CHECK_INT(fixture_open(&fx, "group"), 0);
    make_account(&a, "thumb-G", "");
    CHECK_INT(st_account_create(fx.s, &a, NULL), 0);
    make_ready_orders(fx.s, a.id, GC_ROUNDS, shared);
    CHECK_INT(pthread_barrier_init(&barrier, NULL, GC_THREADS), 0);
    for (int i = 0; i < GC_THREADS; i++) {
        memset(&w[i], 0, sizeof(w[i]));
        w[i].s = fx.s;
        w[i].barrier = &barrier;
        w[i].shared = (const char(*)[ST_ID_LEN])shared;
        w[i].account_id = a.id;
        w[i].index = i;
        CHECK_INT(pthread_create(&th[i], NULL, gc_run, &w[i]), 0);
    }
    for (int i = 0; i < GC_THREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&barrier);
    for (int i = 0; i < GC_THREADS; i++) {
        CHECK_INT(w[i].bad_err, 0);
        won += w[i].n_won;
        issued += w[i].n_issued;
        own += w[i].n_own;
    }
    CHECK_INT(won, GC_ROUNDS); /* one winner per shared order, losers changed nothing */
    CHECK_INT(issued, GC_ROUNDS);
    CHECK_INT(own, GC_THREADS * GC_ROUNDS);
    st_close(fx.s);

    /* what a fresh process sees */
    fx.s = NULL;
    CHECK_INT(store_open(fx.db, fx.key, &fx.s), 0);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM certificates"), GC_ROUNDS);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM orders WHERE status = 'valid'"), GC_ROUNDS);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM orders WHERE status = 'processing'"), 0);
    CHECK_INT(query_int(fx.db, "SELECT count(*) FROM orders WHERE status = 'ready'"),
              GC_THREADS * GC_ROUNDS);
    for (int i = 0; i < GC_THREADS; i++) {
        for (int j = 0; j < w[i].n_own; j++) {
            struct st_order o;

            CHECK_INT(st_order_get(fx.s, w[i].own[j], &o), 0);
            CHECK_STR(o.status, "ready");
            st_order_clear(&o);
        }
    }
    st_close(fx.s);
}

/* A call blocked by another session's lock fails within the statement timeout as a store error
 * (no request that never ends): 10 s by default, or the conninfo's own value, which is kept. */
static double blocked_eab_get_s(struct st_store *s, int *err)
{
    unsigned char hmac[ST_HMAC_MAX];
    size_t hmac_len = 0;
    struct st_eab e;
    double t0 = now_s();

    *err = st_eab_get(s, "kid-nobody", &e, hmac, &hmac_len);
    return now_s() - t0;
}

static void pg_statement_timeout_ends_a_blocked_call(void)
{
    struct fixture fx;
    struct st_store *quick = NULL;
    struct st_config cfg = {.driver = "postgresql", .path = NULL, .conninfo = NULL};
    char conninfo[4400];
    PGconn *locker;
    PGresult *r;
    double dt;
    int err;

    CHECK_INT(fixture_open(&fx, "stmt_timeout"), 0);
    snprintf(conninfo, sizeof(conninfo), "%s options='-c statement_timeout=300'", fx.db);
    cfg.conninfo = conninfo;
    CHECK_INT(st_open_config(&cfg, fx.key, &quick), 0);
    locker = PQconnectdb(fx.db);
    r = PQexec(locker, "BEGIN; LOCK TABLE eab_keys IN ACCESS EXCLUSIVE MODE");
    CHECK(PQresultStatus(r) == PGRES_COMMAND_OK);
    PQclear(r);

    dt = blocked_eab_get_s(quick, &err);
    CHECK_INT(err, AGW_ERR_STORE);
    CHECK(dt >= 0.25 && dt < 3.0); /* the conninfo's 300 ms, not our 10 s */
    dt = blocked_eab_get_s(fx.s, &err);
    CHECK_INT(err, AGW_ERR_STORE);
    CHECK(dt >= 9.0 && dt < 14.0); /* the default */

    r = PQexec(locker, "COMMIT");
    PQclear(r);
    PQfinish(locker);
    (void)blocked_eab_get_s(fx.s, &err); /* the same connections work again */
    CHECK_INT(err, AGW_ERR_NOT_FOUND);
    (void)blocked_eab_get_s(quick, &err);
    CHECK_INT(err, AGW_ERR_NOT_FOUND);
    st_close(quick);
    st_close(fx.s);
}

/* The server ends every session of the store (a restart, a failover): the call that finds its
 * connection dead fails, the connection is reset, and the statements prepared on the old session
 * are prepared again on the new one instead of being executed by a name the server forgot. */
static void pg_prepared_statements_follow_a_reset_connection(void)
{
    struct fixture fx;
    struct st_eab e, got;
    unsigned char hmac[ST_HMAC_MAX];
    size_t hmac_len = 0;
    char sql[4400];
    int fails = 0;

    CHECK_INT(fixture_open(&fx, "reset"), 0);
    CHECK_INT(st_eab_create(fx.s, "default", 1000, &e, hmac), 0);
    for (int i = 0; i < 3; i++) /* prepared on the first call, executed by name after */
        CHECK_INT(st_eab_get(fx.s, e.kid, &got, hmac, &hmac_len), 0);
    /* fx.db is pg_base (which may name a dbname) plus the test's own dbname, last */
    snprintf(sql, sizeof(sql),
             "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'",
             strrchr(fx.db, '=') + 1);
    CHECK_INT(pg_exec_raw(pg_base, sql), 0);
    for (int i = 0; i < 4; i++) {
        if (st_eab_get(fx.s, e.kid, &got, hmac, &hmac_len) != 0)
            fails++;
    }
    CHECK_INT(fails, 1); /* the call that met the dead session; every later one works */
    st_close(fx.s);
}

static void pg_bad_conninfo_is_a_store_error(void)
{
    struct st_config cfg = {.driver = "postgresql", .path = NULL, .conninfo = NULL};
    struct st_store *s = (struct st_store *)&cfg;
    unsigned char key[32] = {0};
    char bad[4400];

    CHECK_INT(st_open_config(&cfg, key, &s), AGW_ERR_BAD_INPUT);
    CHECK(s == NULL);
    snprintf(bad, sizeof(bad), "%s dbname=acmegw_test_does_not_exist", pg_base);
    cfg.conninfo = bad;
    CHECK_INT(st_open_config(&cfg, key, &s), AGW_ERR_STORE);
    CHECK(s == NULL);
    cfg.conninfo = pg_base;
    cfg.pool_size = 65;
    CHECK_INT(st_open_config(&cfg, key, &s), AGW_ERR_BAD_INPUT);
    CHECK(s == NULL);
    cfg.pool_size = 0;
    cfg.driver = "oracle";
    CHECK_INT(st_open_config(&cfg, key, &s), AGW_ERR_BAD_INPUT);
}

int main(void)
{
    if (tl_tmpdir(tmp, sizeof(tmp)) != 0) {
        fprintf(stderr, "cannot create a temporary directory\n");
        return 1;
    }
    agw_log_set_level(AGW_LOG_WARN); /* one info line per certificate would drown the output */
    RUN(random_id_is_22_base64url_chars);
    RUN(migrations_apply_once_and_rerun_is_a_no_op);
    RUN(journal_is_wal);
    RUN(db_and_seal_key_are_0600);
    RUN(eab_keys_are_sealed_and_round_trip);
    RUN(accounts_lifecycle);
    RUN(orders_authz_challenges);
    RUN(certificates_issue_revoke_list);
    RUN(quota_counts_and_single_use_eab);
    RUN(shared_nonces_and_crl_lease);
    RUN(stale_processing_orders_become_invalid);
    RUN(order_limits_hold_under_concurrency_and_replaces_is_unique);
    RUN(reads_by_key_check_their_arguments);
    RUN(overlong_inputs_are_refused_and_write_nothing);
    RUN(concurrent_account_creation);
    RUN(group_commit_keeps_every_acknowledged_write);
    RUN(certificate_quota_holds_under_concurrent_finalizes);
    RUN(kill9_loses_no_acknowledged_certificate);

    pg_base = getenv("ACMEGW_TEST_PG_CONNINFO");
    if (pg_base != NULL && pg_base[0] != '\0') {
        fprintf(stderr, "--- the same tests against PostgreSQL\n");
        use_pg = 1;
        RUN(eab_keys_are_sealed_and_round_trip);
        RUN(accounts_lifecycle);
        RUN(orders_authz_challenges);
        RUN(certificates_issue_revoke_list);
        RUN(quota_counts_and_single_use_eab);
        RUN(shared_nonces_and_crl_lease);
        RUN(stale_processing_orders_become_invalid);
        RUN(order_limits_hold_under_concurrency_and_replaces_is_unique);
        RUN(reads_by_key_check_their_arguments);
    RUN(overlong_inputs_are_refused_and_write_nothing);
        RUN(concurrent_account_creation);
        RUN(group_commit_keeps_every_acknowledged_write);
        RUN(certificate_quota_holds_under_concurrent_finalizes);
        RUN(kill9_loses_no_acknowledged_certificate);
        RUN(pg_concurrent_migrations_apply_once);
        RUN(pg_two_instances_finalizing_one_order_race);
        RUN(pg_bad_conninfo_is_a_store_error);
        RUN(pg_statement_timeout_ends_a_blocked_call);
        pg_pool_size = 1; /* callers queue for the one connection, and all are served */
        RUN(concurrent_account_creation);
        RUN(certificate_quota_holds_under_concurrent_finalizes);
        pg_pool_size = 0;
        RUN(pg_prepared_statements_follow_a_reset_connection);
        pg_no_prepare = true; /* behind a pooler that cannot keep named statements */
        RUN(accounts_lifecycle);
        RUN(certificates_issue_revoke_list);
        RUN(pg_prepared_statements_follow_a_reset_connection);
        pg_no_prepare = false;
        for (int i = 0; i < n_pg_dbs; i++) {
            char sql[4096];

            snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %.63s WITH (FORCE)", pg_dbs[i]);
            CHECK_INT(pg_exec_raw(pg_base, sql), 0);
        }
    } else {
        fprintf(stderr, "--- PostgreSQL: ACMEGW_TEST_PG_CONNINFO not set, SQLite only\n");
    }
    tl_rmtree(tmp);
    return CHECK_DONE();
}

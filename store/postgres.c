/*
 * store/postgres.c - the PostgreSQL implementation of store/store.h (libpq).
 *
 * Same contract as store/sqlite.c, function by function: the same checks before anything is
 * written, the same error codes, the same sealing (store/seal.c). Where the two differ it is
 * because several gateway instances may share one PostgreSQL database, so nothing here relies
 * on an in-process lock for correctness:
 *
 * Connections. A pool of n_conns connections (st_config.pool_size) behind pool_lock; a call takes
 * a free one
 * for its whole duration (libpq connections must not be used by two threads at once) and gives it
 * back. A connection found broken when taken is reset (PQreset) before use, so a restarted server
 * costs the calls in flight, not the process. The conninfo string may hold the password: it is
 * kept (for the resets) and wiped in pg_close(), and never logged.
 *
 * Races between instances. Every state change two instances could both attempt is one
 * conditional statement, UPDATE ... WHERE id = $1 AND status = $2: under READ COMMITTED a second
 * UPDATE of the same row waits for the first to commit and then re-checks its WHERE against the
 * new row, so exactly one wins and the loser sees 0 rows (AGW_ERR_CONFLICT). That covers order,
 * authorization and challenge transitions, st_cert_issue (processing -> valid and the certificate
 * insert in one transaction), st_cert_revoke and EAB binding (n_accounts < max re-checked the same
 * way). CRL numbers are one INSERT ... ON CONFLICT DO UPDATE ... RETURNING. Unique violations
 * (SQLSTATE 23505) are AGW_ERR_CONFLICT, foreign-key violations (23503) AGW_ERR_NOT_FOUND.
 *
 * Durability. Each session runs SET synchronous_commit = on (the server default, set anyway so a
 * database- or role-level "off" cannot weaken it): COMMIT returns only after the WAL is flushed.
 *
 * Statements. Every value is a parameter (text format; BYTEA binary). The only SQL assembled at
 * run time is st_cert_list's WHERE clause, from fixed fragments and parameter numbers. Fixed SQL
 * without values (BEGIN, COMMIT, migrations) goes through PQexec. A statement with parameters is
 * prepared once per connection (PQprepare, named acmegw_N) and executed by name after that: like
 * SQLite's statement cache, it spares the server a parse and plan per call. The cache of each
 * connection hangs on the PGconn (libpq's event data), is emptied when libpq resets the connection
 * (the server forgets its statements then) and freed with it. st_config.no_prepare turns it off,
 * for a pooler between us and the server that cannot keep named statements (PgBouncer in
 * transaction mode before 1.21).
 *
 * Migrations mirror sqlite.c's numbering (same versions, PostgreSQL types: BIGINT, TEXT, BYTEA;
 * a seq identity column stands in for SQLite's rowid where lists are in insertion order). Each
 * runs in its own transaction holding pg_advisory_xact_lock(PG_MIGRATE_LOCK), re-reading the
 * version under the lock, so instances starting together apply each migration exactly once.
 */
#include "store/store.h"

#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-events.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "common/err.h"
#include "common/log.h"
#include "store/internal.h"

#define PG_DEFAULT_CONNS 8  /* the gateway's default 6 request workers, the CRL thread, one spare */
#define PG_MAX_CONNS     64
#define PG_MAX_PARAMS   16
#define PG_SQL_MAX      1024
#define PG_MAX_PREPARED 128 /* per connection: ~40 fixed statements, st_cert_list's forms */
#define PG_MIGRATE_LOCK "7162863054325281585" /* any constant: "acmegw" migrations, by agreement   \
                                               */

struct pg_store {
    struct st_store base;      /* first member: the ops table (store/internal.h) */
    bool prepare;              /* prepare statements (conn_open); false: st_config.no_prepare */
    pthread_mutex_t pool_lock; /* guards busy; never held across I/O */
    pthread_cond_t pool_cond;  /* signalled when a connection is returned */
    PGconn *conns[PG_MAX_CONNS];
    int busy[PG_MAX_CONNS];
    size_t n_conns;
    int locks_ready; /* pool_lock and pool_cond initialised */
    char *conninfo;  /* owned, secret: for PQreset only; wiped in pg_close() */
    size_t conninfo_len;
    unsigned char seal_key[ST_SEAL_KEY_LEN]; /* wiped in pg_close() */
};

/* Every struct st_store this file sees was made by pg_open(): base is the first member. */
static struct pg_store *pg(struct st_store *s)
{
    return (struct pg_store *)s;
}

/* ---------------------------------------------------------------- schema */

static const char *const migrations[] = {
    /* 1: the initial schema */
    "CREATE TABLE eab_keys ("
    "  kid TEXT PRIMARY KEY,"
    "  class_name TEXT NOT NULL,"
    "  hmac_sealed BYTEA NOT NULL," /* store/internal.h: version || IV || ciphertext || tag */
    "  created BIGINT NOT NULL,"
    "  revoked BIGINT NOT NULL DEFAULT 0,"
    "  n_accounts BIGINT NOT NULL DEFAULT 0,"
    "  seq BIGINT GENERATED ALWAYS AS IDENTITY);"
    "CREATE TABLE accounts ("
    "  id TEXT PRIMARY KEY,"
    "  thumbprint TEXT NOT NULL UNIQUE,"
    "  status TEXT NOT NULL,"
    "  eab_kid TEXT REFERENCES eab_keys(kid)," /* NULL if none */
    "  class_name TEXT NOT NULL,"
    "  created BIGINT NOT NULL,"
    "  jwk_json TEXT NOT NULL,"
    "  contact_json TEXT NOT NULL);"
    "CREATE INDEX accounts_eab ON accounts(eab_kid);"
    "CREATE TABLE orders ("
    "  id TEXT PRIMARY KEY,"
    "  account_id TEXT NOT NULL REFERENCES accounts(id),"
    "  status TEXT NOT NULL,"
    "  class_name TEXT NOT NULL,"
    "  profile TEXT NOT NULL,"
    "  cert_serial TEXT NOT NULL,"
    "  replaces TEXT NOT NULL,"
    "  created BIGINT NOT NULL,"
    "  expires BIGINT NOT NULL,"
    "  not_before BIGINT NOT NULL,"
    "  not_after BIGINT NOT NULL,"
    "  identifiers_json TEXT NOT NULL,"
    "  error_json TEXT,"
    "  seq BIGINT GENERATED ALWAYS AS IDENTITY);"
    "CREATE INDEX orders_account ON orders(account_id, created);"
    "CREATE INDEX orders_account_status ON orders(account_id, status, created);"
    "CREATE TABLE authorizations ("
    "  id TEXT PRIMARY KEY,"
    "  order_id TEXT NOT NULL REFERENCES orders(id),"
    "  account_id TEXT NOT NULL REFERENCES accounts(id),"
    "  id_type TEXT NOT NULL,"
    "  id_value TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  expires BIGINT NOT NULL,"
    "  wildcard BIGINT NOT NULL,"
    "  seq BIGINT GENERATED ALWAYS AS IDENTITY);"
    "CREATE INDEX authorizations_order ON authorizations(order_id, seq);"
    "CREATE TABLE challenges ("
    "  id TEXT PRIMARY KEY,"
    "  authz_id TEXT NOT NULL REFERENCES authorizations(id),"
    "  type TEXT NOT NULL,"
    "  token TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  validated BIGINT NOT NULL,"
    "  error_json TEXT,"
    "  seq BIGINT GENERATED ALWAYS AS IDENTITY);"
    "CREATE INDEX challenges_authz ON challenges(authz_id, seq);"
    "CREATE TABLE certificates ("
    "  serial TEXT PRIMARY KEY,"
    "  order_id TEXT REFERENCES orders(id)," /* NULL for operator-issued */
    "  account_id TEXT NOT NULL,"
    "  class_name TEXT NOT NULL,"
    "  issuer TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  issued BIGINT NOT NULL,"
    "  not_before BIGINT NOT NULL,"
    "  not_after BIGINT NOT NULL,"
    "  revoked_at BIGINT NOT NULL DEFAULT 0,"
    "  reason BIGINT NOT NULL DEFAULT -1,"
    "  identifiers TEXT NOT NULL,"
    "  der BYTEA NOT NULL,"
    "  chain_pem TEXT,"
    "  seq BIGINT GENERATED ALWAYS AS IDENTITY);"
    "CREATE INDEX certificates_issuer ON certificates(issuer, status, not_after);"
    "CREATE INDEX certificates_class ON certificates(class_name, issued);"
    "CREATE INDEX certificates_not_after ON certificates(not_after);"
    "CREATE INDEX certificates_order ON certificates(order_id);"
    "CREATE TABLE crl_numbers ("
    "  issuer TEXT PRIMARY KEY,"
    "  number BIGINT NOT NULL);",
    /* 2: st_cert_list without a class filter lists newest first */
    "CREATE INDEX certificates_issued ON certificates(issued);",
    /* 3: quotas count an account's certificates of the last day */
    "CREATE INDEX certificates_account ON certificates(account_id, issued);",
    /* 4: several gateways on one store: used nonces, the CRL writer's lease, the latest CRLs */
    "CREATE TABLE used_nonces (id TEXT PRIMARY KEY, expires BIGINT NOT NULL);"
    "CREATE INDEX used_nonces_expires ON used_nonces(expires);"
    "CREATE TABLE crl_leases (issuer TEXT PRIMARY KEY, owner TEXT NOT NULL,"
    "  until BIGINT NOT NULL);"
    "CREATE TABLE crls (issuer TEXT PRIMARY KEY, number BIGINT NOT NULL,"
    "  this_update BIGINT NOT NULL, next_update BIGINT NOT NULL, der BYTEA NOT NULL);",
    /* 5: when an order last changed state, to recover one a dead gateway left in processing */
    "ALTER TABLE orders ADD COLUMN updated BIGINT NOT NULL DEFAULT 0;"
    "CREATE INDEX orders_status_updated ON orders(status, updated);",
    /* 6: a certificate is replaced by at most one live order (RFC 9773), whatever the race */
    "CREATE UNIQUE INDEX orders_replaces ON orders(replaces) "
    "  WHERE replaces IS NOT NULL AND replaces != '' AND status != 'invalid';",
    /* 7: no query looks certificates up by order (an order names its certificate, cert_serial,
     * and orders are never deleted), so that index only cost a B-tree insert per certificate */
    "DROP INDEX IF EXISTS certificates_order;",
};
#define PG_SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* ---------------------------------------------------------------- statements */

struct pg_params {
    int n;
    int overflow; /* more than PG_MAX_PARAMS, or a blob over INT_MAX: the call fails */
    const char *values[PG_MAX_PARAMS];
    int lengths[PG_MAX_PARAMS];
    int formats[PG_MAX_PARAMS];
    char nums[PG_MAX_PARAMS][24];
};

/* t: text (NULL binds NULL). */
static void par_text(struct pg_params *p, const char *t)
{
    if (p->n >= PG_MAX_PARAMS) {
        p->overflow = 1;
        return;
    }
    p->values[p->n] = t;
    p->lengths[p->n] = 0;
    p->formats[p->n] = 0;
    p->n++;
}

static void par_i64(struct pg_params *p, int64_t v)
{
    if (p->n >= PG_MAX_PARAMS) {
        p->overflow = 1;
        return;
    }
    snprintf(p->nums[p->n], sizeof(p->nums[p->n]), "%" PRId64, v);
    par_text(p, p->nums[p->n]);
}

/* BYTEA, sent in binary: the raw bytes, no escaping. */
static void par_blob(struct pg_params *p, const unsigned char *b, size_t len)
{
    if (p->n >= PG_MAX_PARAMS || len > INT_MAX) {
        p->overflow = 1;
        return;
    }
    p->values[p->n] = (const char *)b;
    p->lengths[p->n] = (int)len;
    p->formats[p->n] = 1;
    p->n++;
}

/* The one place PostgreSQL errors become ours. Server messages name tables, columns and
 * constraints; the primary message carries no bound value for the errors we expect. */
static int pg_err(PGconn *c, const PGresult *r, const char *op)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    if (state != NULL && strcmp(state, "23505") == 0) {
        LOG_DEBUG("store.conflict", "op=%s error=\"%s\"", op, msg != NULL ? msg : "");
        return AGW_ERR_CONFLICT;
    }
    if (state != NULL && strcmp(state, "23503") == 0) {
        LOG_DEBUG("store.no_parent", "op=%s error=\"%s\"", op, msg != NULL ? msg : "");
        return AGW_ERR_NOT_FOUND;
    }
    if (msg == NULL)
        msg = PQerrorMessage(c); /* no result: out of memory or the connection is gone */
    LOG_ERROR("store.postgresql", "op=%s sqlstate=%s error=\"%.200s\"", op,
              state != NULL ? state : "none", msg != NULL ? msg : "");
    return AGW_ERR_STORE;
}

/* The statements prepared on one connection: statement i is named acmegw_i on the server. Used
 * by the one thread that holds the connection; lives as long as the PGconn (stmt_event). */
struct stmt_cache {
    size_t n;
    uint64_t hash[PG_MAX_PREPARED];
    char *sql[PG_MAX_PREPARED]; /* owned copies */
};

static void stmt_cache_clear(struct stmt_cache *sc)
{
    for (size_t i = 0; i < sc->n; i++)
        free(sc->sql[i]);
    sc->n = 0;
}

/* libpq event procedure: a reset connection has no statements left on the server; a finished one
 * takes its cache along. */
static int stmt_event(PGEventId id, void *info, void *pass)
{
    struct stmt_cache *sc = NULL;

    (void)pass;
    if (id == PGEVT_CONNRESET)
        sc = PQinstanceData(((PGEventConnReset *)info)->conn, stmt_event);
    else if (id == PGEVT_CONNDESTROY)
        sc = PQinstanceData(((PGEventConnDestroy *)info)->conn, stmt_event);
    if (sc != NULL)
        stmt_cache_clear(sc);
    if (sc != NULL && id == PGEVT_CONNDESTROY)
        free(sc);
    return 1;
}

/* Gives c a statement cache. Returns 0 or AGW_ERR_NOMEM (conn_open then fails). */
static int stmt_cache_attach(PGconn *c)
{
    struct stmt_cache *sc = calloc(1, sizeof(*sc));

    if (sc == NULL)
        return AGW_ERR_NOMEM;
    if (PQregisterEventProc(c, stmt_event, "acmegw statements", NULL) != 1 ||
        PQsetInstanceData(c, stmt_event, sc) != 1) {
        free(sc);
        return AGW_ERR_NOMEM;
    }
    return 0;
}

static uint64_t sql_hash(const char *sql) /* FNV-1a */
{
    uint64_t h = 14695981039346656037u;

    for (const unsigned char *p = (const unsigned char *)sql; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211u;
    return h;
}

/* Finds sql among c's prepared statements, preparing it first if needed. Returns 1 with its name
 * in name; 0 to run it unprepared (c has no cache, the cache is full, the transaction failed
 * already: then the statement reports that); -1 when the server refused to prepare it (a lock
 * wait past statement_timeout, a lost connection): *fail is that result, to be reported as the
 * call's error, not tried again unprepared. */
static int stmt_prepared(PGconn *c, const char *sql, const struct pg_params *p, char *name,
                         size_t name_size, PGresult **fail)
{
    struct stmt_cache *sc = PQinstanceData(c, stmt_event);
    uint64_t h;
    PGresult *r;
    size_t i;
    char *copy;

    *fail = NULL;
    if (sc == NULL)
        return 0;
    h = sql_hash(sql);
    for (i = 0; i < sc->n; i++) {
        if (sc->hash[i] == h && strcmp(sc->sql[i], sql) == 0)
            break;
    }
    snprintf(name, name_size, "acmegw_%zu", i);
    if (i < sc->n)
        return 1;
    if (sc->n >= PG_MAX_PREPARED || PQtransactionStatus(c) == PQTRANS_INERROR)
        return 0;
    copy = strdup(sql);
    if (copy == NULL)
        return 0;
    r = PQprepare(c, name, sql, p->n, NULL);
    if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
        free(copy);
        *fail = r;
        return -1;
    }
    PQclear(r);
    sc->hash[sc->n] = h;
    sc->sql[sc->n] = copy;
    sc->n++;
    return 1;
}

/*
 * Runs sql with the parameters in p. On success *out (if not NULL) owns the result: PQclear().
 * Returns 0 or the translated error (the result is cleared then).
 */
static int pg_exec(PGconn *c, const char *op, const char *sql, const struct pg_params *p,
                   PGresult **out)
{
    char name[32];
    PGresult *r = NULL;
    ExecStatusType rs;
    int err, prepared = 0;

    if (out != NULL)
        *out = NULL;
    if (p != NULL && p->overflow) {
        LOG_ERROR("store.postgresql", "op=%s error=too_many_parameters", op);
        return AGW_ERR_INTERNAL;
    }
    if (p != NULL)
        prepared = stmt_prepared(c, sql, p, name, sizeof(name), &r); /* -1: r is its error */
    if (prepared > 0)
        r = PQexecPrepared(c, name, p->n, p->values, p->lengths, p->formats, 0);
    else if (prepared == 0 && p != NULL)
        r = PQexecParams(c, sql, p->n, NULL, p->values, p->lengths, p->formats, 0);
    else if (p == NULL)
        r = PQexec(c, sql);
    rs = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (rs != PGRES_COMMAND_OK && rs != PGRES_TUPLES_OK) {
        const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        struct stmt_cache *sc = PQinstanceData(c, stmt_event);

        /* 26000: the server lost the statement (a pooler switched sessions under us); 0A000:
         * "cached plan must not change result type" after a schema change. Prepare anew next
         * time; this call fails. */
        if (prepared > 0 && sc != NULL && state != NULL &&
            (strcmp(state, "26000") == 0 || strcmp(state, "0A000") == 0))
            stmt_cache_clear(sc);
        err = pg_err(c, r, op);
        PQclear(r);
        return err;
    }
    if (out != NULL)
        *out = r;
    else
        PQclear(r);
    return 0;
}

/*
 * pg_exec() with the parameters given by fmt, one letter each:
 *   t  const char *            text; NULL binds NULL
 *   e  const char *            text; NULL or "" binds NULL (optional foreign keys)
 *   i  int64_t                 integer
 *   b  const unsigned char *, size_t   bytea
 */
static int pg_execf(PGconn *c, const char *op, const char *sql, PGresult **out, const char *fmt,
                    ...)
{
    struct pg_params p;
    va_list ap;

    memset(&p, 0, sizeof(p));
    va_start(ap, fmt);
    for (const char *f = fmt; *f != '\0'; f++) {
        const char *t;
        const unsigned char *b;
        size_t len;

        switch (*f) {
        case 't':
        case 'e':
            t = va_arg(ap, const char *);
            par_text(&p, t == NULL || (*f == 'e' && t[0] == '\0') ? NULL : t);
            break;
        case 'i':
            par_i64(&p, va_arg(ap, int64_t));
            break;
        case 'b':
            b = va_arg(ap, const unsigned char *);
            len = va_arg(ap, size_t);
            par_blob(&p, b, len);
            break;
        default:
            p.overflow = 1;
            break;
        }
    }
    va_end(ap);
    return pg_exec(c, op, sql, &p, out);
}

/* Rows changed by an UPDATE / INSERT / DELETE result. */
static long changes(PGresult *r)
{
    const char *t = PQcmdTuples(r);

    return t != NULL && t[0] != '\0' ? strtol(t, NULL, 10) : 0;
}

static int tx_begin(PGconn *c, const char *op)
{
    return pg_exec(c, op, "BEGIN", NULL, NULL);
}

/* A COMMIT of a transaction that failed answers "ROLLBACK" with PGRES_COMMAND_OK: check. */
static int tx_commit(PGconn *c, const char *op)
{
    PGresult *r = NULL;
    int err = pg_exec(c, op, "COMMIT", NULL, &r);

    if (err == 0 && strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        LOG_ERROR("store.postgresql", "op=%s error=commit_rolled_back", op);
        err = AGW_ERR_STORE;
    }
    PQclear(r);
    return err;
}

/* Safe to call whether or not a transaction is open; a broken connection is left to conn_get. */
static void tx_rollback(PGconn *c)
{
    PGTransactionStatusType ts = PQtransactionStatus(c);

    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        (void)pg_exec(c, "rollback", "ROLLBACK", NULL, NULL);
}

/* Copies a text column into a fixed field; NULL reads as "". */
static int col_fixed(const PGresult *r, int row, int col, char *dst, size_t size)
{
    int n;

    dst[0] = '\0';
    if (PQgetisnull(r, row, col))
        return 0;
    n = PQgetlength(r, row, col);
    if (n < 0 || (size_t)n >= size) {
        LOG_ERROR("store.field_too_long", "column=%s max=%zu", PQfname(r, col), size - 1);
        return AGW_ERR_STORE;
    }
    memcpy(dst, PQgetvalue(r, row, col), (size_t)n);
    dst[n] = '\0';
    return 0;
}

/* Copies a text column into a new string; NULL stays NULL. */
static int col_dup(const PGresult *r, int row, int col, char **out)
{
    int n;

    *out = NULL;
    if (PQgetisnull(r, row, col))
        return 0;
    n = PQgetlength(r, row, col);
    if (n < 0)
        return AGW_ERR_STORE;
    *out = malloc((size_t)n + 1);
    if (*out == NULL)
        return AGW_ERR_NOMEM;
    memcpy(*out, PQgetvalue(r, row, col), (size_t)n);
    (*out)[n] = '\0';
    return 0;
}

static int64_t col_i64(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return 0;
    return (int64_t)strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* A BYTEA column (text result: hex form) as bytes; *out is freed with PQfreemem(). */
static int col_bytea(const PGresult *r, int row, int col, unsigned char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (PQgetisnull(r, row, col))
        return 0;
    *out = PQunescapeBytea((const unsigned char *)PQgetvalue(r, row, col), len);
    return *out != NULL ? 0 : AGW_ERR_NOMEM;
}

/* ---------------------------------------------------------------- connections */

static void notice_ignore(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* "relation already exists, skipping" and the like: not for our logs */
}

/*
 * The session settings every connection gets, after connecting and after each reset. A statement
 * never waits longer than PG_STATEMENT_TIMEOUT (a row locked by a stuck session, an overloaded
 * server): it fails as AGW_ERR_STORE and the client gets a problem document instead of a request
 * that never ends; a session of ours left idle in a transaction (a hung gateway) is ended by the
 * server after PG_IDLE_IN_TX_TIMEOUT, so its locks do not stop the other instances. Each is set
 * only where the session has none, so a value from the conninfo (e.g. options='-c
 * statement_timeout=30s'), the role or the database is kept. Migrations lift the statement limit
 * (migrate()).
 */
#define PG_STATEMENT_TIMEOUT  "10s"
#define PG_IDLE_IN_TX_TIMEOUT "60s"
static int conn_setup(PGconn *c)
{
    PQsetNoticeProcessor(c, notice_ignore, NULL);
    return pg_exec(c, "open_settings",
                   "SET synchronous_commit = on; SET client_min_messages = warning;"
                   "SELECT set_config('statement_timeout', '" PG_STATEMENT_TIMEOUT "', false)"
                   "  WHERE current_setting('statement_timeout') = '0';"
                   "SELECT set_config('idle_in_transaction_session_timeout', '"
                   PG_IDLE_IN_TX_TIMEOUT "', false)"
                   "  WHERE current_setting('idle_in_transaction_session_timeout') = '0'",
                   NULL, NULL);
}

static int conn_open(const char *conninfo, bool prepare, PGconn **out)
{
    PGconn *c;
    int err;

    *out = NULL;
    {
        /* Defaults for a server that does not answer: give up connecting after 10 s, and find a
         * dead peer under a statement in ~25 s (TCP keepalive) instead of the kernel's 2 hours.
         * conninfo is expanded after them (expand_dbname), so its own values win. */
        static const char *const keys[] = {"connect_timeout", "keepalives_idle",
                                           "keepalives_interval", "keepalives_count",
                                           "dbname", NULL};
        const char *values[] = {"10", "10", "5", "3", conninfo, NULL};

        c = PQconnectdbParams(keys, values, 1);
    }
    if (c == NULL)
        return AGW_ERR_NOMEM;
    if (PQstatus(c) != CONNECTION_OK) {
        /* libpq's message names host, port, user and database, never the password */
        LOG_ERROR("store.open", "driver=postgresql error=\"%.200s\"", PQerrorMessage(c));
        PQfinish(c);
        return AGW_ERR_STORE;
    }
    err = conn_setup(c);
    if (err == 0 && prepare)
        err = stmt_cache_attach(c);
    if (err != 0) {
        PQfinish(c);
        return err;
    }
    *out = c;
    return 0;
}

/* Takes a free connection, waiting for one if all are in use; resets it if it broke. */
static PGconn *conn_get(struct st_store *st, size_t *slot)
{
    struct pg_store *s = pg(st);
    PGconn *c = NULL;

    pthread_mutex_lock(&s->pool_lock);
    for (;;) {
        for (size_t i = 0; c == NULL && i < s->n_conns; i++) {
            if (!s->busy[i]) {
                s->busy[i] = 1;
                *slot = i;
                c = s->conns[i];
            }
        }
        if (c != NULL)
            break;
        pthread_cond_wait(&s->pool_cond, &s->pool_lock);
    }
    pthread_mutex_unlock(&s->pool_lock);
    if (PQstatus(c) != CONNECTION_OK) {
        LOG_WARN("store.reconnect", "driver=postgresql slot=%zu", *slot);
        PQreset(c);
        if (PQstatus(c) == CONNECTION_OK)
            (void)conn_setup(c); /* a failure shows in the call that follows */
    }
    return c;
}

static void conn_put(struct st_store *st, size_t slot)
{
    struct pg_store *s = pg(st);

    tx_rollback(s->conns[slot]); /* never hand on an open transaction */
    pthread_mutex_lock(&s->pool_lock);
    s->busy[slot] = 0;
    pthread_cond_signal(&s->pool_cond);
    pthread_mutex_unlock(&s->pool_lock);
}

static int read_version(PGconn *c, int *version)
{
    PGresult *r = NULL;
    int err;

    err =
        pg_exec(c, "version", "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", NULL, &r);
    if (err != 0)
        return err;
    if (PQntuples(r) == 1) {
        int64_t v = col_i64(r, 0, 0);

        if (v < 0 || v > INT_MAX) {
            err = AGW_ERR_STORE;
        } else {
            *version = (int)v;
        }
    } else {
        err = AGW_ERR_STORE;
    }
    PQclear(r);
    return err;
}

static int migrate(PGconn *c)
{
    int err, version = 0;

    for (;;) {
        err = tx_begin(c, "migrate");
        if (err != 0)
            return err;
        /* held to the end of this transaction: another instance waits here, then sees our rows;
         * a migration (an index on a large table) or that wait may take longer than a request */
        err = pg_exec(c, "migrate",
                      "SET LOCAL statement_timeout = 0;"
                      "SELECT pg_advisory_xact_lock(" PG_MIGRATE_LOCK ")",
                      NULL, NULL);
        if (err == 0)
            err = pg_exec(c, "migrate",
                          "CREATE TABLE IF NOT EXISTS schema_migrations ("
                          "version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
                          NULL, NULL);
        if (err == 0)
            err = read_version(c, &version);
        if (err != 0)
            goto fail;
        if (version > PG_SCHEMA_VERSION) {
            LOG_ERROR("store.schema_too_new", "version=%d known=%d", version, PG_SCHEMA_VERSION);
            err = AGW_ERR_STORE;
            goto fail;
        }
        if (version == PG_SCHEMA_VERSION)
            return tx_commit(c, "migrate"); /* only schema_migrations may have been created */
        err = pg_exec(c, "migrate", migrations[version], NULL, NULL);
        if (err == 0)
            err = pg_execf(c, "migrate",
                           "INSERT INTO schema_migrations(version, applied_at) VALUES ($1, $2)",
                           NULL, "ii", (int64_t)version + 1, (int64_t)time(NULL));
        if (err == 0)
            err = tx_commit(c, "migrate");
        if (err != 0)
            goto fail;
        LOG_INFO("store.migrated", "driver=postgresql version=%d", version + 1);
    }
fail:
    tx_rollback(c);
    return err;
}

static void pg_close(struct st_store *st);

/* cfg->conninfo: a libpq connection string (key=value or URI). */
static int pg_open(const struct st_config *cfg, const unsigned char seal_key[32],
                   struct st_store **out)
{
    struct pg_store *s;
    const char *conninfo = cfg != NULL ? cfg->conninfo : NULL;
    int err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (conninfo == NULL || conninfo[0] == '\0' || seal_key == NULL ||
        cfg->pool_size > PG_MAX_CONNS)
        return AGW_ERR_BAD_INPUT;
    if (PQisthreadsafe() == 0) { /* one connection per thread at a time needs it */
        LOG_ERROR("store.open", "error=libpq_built_without_threads");
        return AGW_ERR_STORE;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return AGW_ERR_NOMEM;
    s->base.ops = &st_postgres_ops;
    s->n_conns = cfg->pool_size != 0 ? cfg->pool_size : PG_DEFAULT_CONNS;
    s->prepare = !cfg->no_prepare;
    s->conninfo_len = strlen(conninfo);
    s->conninfo = malloc(s->conninfo_len + 1);
    if (s->conninfo == NULL) {
        free(s);
        return AGW_ERR_NOMEM;
    }
    memcpy(s->conninfo, conninfo, s->conninfo_len + 1);
    err = AGW_ERR_INTERNAL;
    if (pthread_mutex_init(&s->pool_lock, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&s->pool_cond, NULL) != 0) {
        pthread_mutex_destroy(&s->pool_lock);
        goto fail;
    }
    s->locks_ready = 1;
    memcpy(s->seal_key, seal_key, ST_SEAL_KEY_LEN);
    for (size_t i = 0; i < s->n_conns; i++) {
        err = conn_open(s->conninfo, s->prepare, &s->conns[i]);
        if (err != 0)
            goto fail;
    }
    err = migrate(s->conns[0]);
    if (err != 0)
        goto fail;
    *out = &s->base;
    return 0;
fail:
    pg_close(&s->base);
    return err;
}

static void pg_close(struct st_store *st)
{
    struct pg_store *s = pg(st);

    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n_conns; i++)
        if (s->conns[i] != NULL)
            PQfinish(s->conns[i]);
    if (s->locks_ready) {
        pthread_cond_destroy(&s->pool_cond);
        pthread_mutex_destroy(&s->pool_lock);
    }
    if (s->conninfo != NULL) {
        OPENSSL_cleanse(s->conninfo, s->conninfo_len);
        free(s->conninfo);
    }
    OPENSSL_cleanse(s->seal_key, sizeof(s->seal_key));
    free(s);
}

static int pg_schema_version(struct st_store *s, int *version)
{
    size_t slot;
    PGconn *c;
    int err;

    c = conn_get(s, &slot);
    err = read_version(c, version);
    conn_put(s, slot);
    return err;
}

/* ---------------------------------------------------------------- generic reads */

typedef int (*row_fn)(const PGresult *r, int row, void *out);

/*
 * Each row of r goes through fn into a new array element of elem_size bytes (zeroed first). On
 * failure every filled element is released with clear (may be NULL) and nothing is returned.
 */
static int collect(const PGresult *r, size_t elem_size, row_fn fn, void (*clear)(void *),
                   void **out, size_t *n)
{
    int rows = PQntuples(r), err = 0;
    unsigned char *arr;
    size_t cnt = 0;

    *out = NULL;
    *n = 0;
    if (rows <= 0)
        return 0;
    arr = calloc((size_t)rows, elem_size);
    if (arr == NULL)
        return AGW_ERR_NOMEM;
    for (int i = 0; i < rows; i++) {
        err = fn(r, i, arr + cnt * elem_size);
        if (err != 0) {
            if (clear != NULL)
                clear(arr + cnt * elem_size);
            goto fail;
        }
        cnt++;
    }
    *out = arr;
    *n = cnt;
    return 0;
fail:
    for (size_t i = 0; clear != NULL && i < cnt; i++)
        clear(arr + i * elem_size);
    free(arr);
    return err;
}

/* Runs sql with one text parameter: the one row, if any, through fn. */
static int get_by_key(struct st_store *s, const char *op, const char *sql, const char *key,
                      row_fn fn, void *out)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c = conn_get(s, &slot);
    int err;

    err = pg_execf(c, op, sql, &r, "t", key);
    if (err == 0)
        err = PQntuples(r) > 0 ? fn(r, 0, out) : AGW_ERR_NOT_FOUND;
    PQclear(r);
    conn_put(s, slot);
    return err;
}

/* Lists rows of sql (one text parameter). */
static int list_by_key(struct st_store *s, const char *op, const char *sql, const char *key,
                       size_t elem_size, row_fn fn, void (*clear)(void *), void **out, size_t *n)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c = conn_get(s, &slot);
    int err;

    err = pg_execf(c, op, sql, &r, "t", key);
    if (err == 0)
        err = collect(r, elem_size, fn, clear, out, n);
    PQclear(r);
    conn_put(s, slot);
    return err;
}

/* *exists = whether sql (one text parameter) returns a row. */
static int row_exists(PGconn *c, const char *sql, const char *key, const char *op, int *exists)
{
    PGresult *r = NULL;
    int err;

    *exists = 0;
    err = pg_execf(c, op, sql, &r, "t", key);
    if (err == 0)
        *exists = PQntuples(r) > 0;
    PQclear(r);
    return err;
}

/*
 * The outcome of a conditional UPDATE already run: 0 if exactly one row changed; else
 * AGW_ERR_NOT_FOUND when exists_sql finds no row for key, AGW_ERR_CONFLICT when it does (the row
 * was not in the expected state, or another instance moved it first).
 */
static int cond_result(PGconn *c, PGresult *r, const char *op, const char *exists_sql,
                       const char *key)
{
    int err, exists;

    if (changes(r) == 1)
        return 0;
    err = row_exists(c, exists_sql, key, op, &exists);
    if (err != 0)
        return err;
    return exists ? AGW_ERR_CONFLICT : AGW_ERR_NOT_FOUND;
}

/* One conditional UPDATE (values per fmt, as pg_execf) on its own connection and commit. */
static int cond_update(struct st_store *s, const char *op, const char *sql, const char *exists_sql,
                       const char *key, const char *fmt, ...)
{
    struct pg_params p;
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    va_list ap;
    int err;

    memset(&p, 0, sizeof(p));
    va_start(ap, fmt);
    for (const char *f = fmt; *f != '\0'; f++) {
        if (*f == 'i') {
            par_i64(&p, va_arg(ap, int64_t));
        } else if (*f == 't') {
            par_text(&p, va_arg(ap, const char *));
        } else {
            p.overflow = 1;
            break;
        }
    }
    va_end(ap);
    c = conn_get(s, &slot);
    err = pg_exec(c, op, sql, &p, &r);
    if (err == 0)
        err = cond_result(c, r, op, exists_sql, key);
    PQclear(r);
    conn_put(s, slot);
    return err;
}

/* ---------------------------------------------------------------- EAB keys */

#define EAB_COLS "kid, class_name, created, revoked, n_accounts"

static int eab_row(const PGresult *r, int row, void *out)
{
    struct st_eab *e = out;
    int err;

    err = col_fixed(r, row, 0, e->kid, sizeof(e->kid));
    if (err == 0)
        err = col_fixed(r, row, 1, e->class_name, sizeof(e->class_name));
    e->created = col_i64(r, row, 2);
    e->revoked = col_i64(r, row, 3);
    e->n_accounts = col_i64(r, row, 4);
    return err;
}

static int pg_eab_create(struct st_store *s, const char *class_name, int64_t now,
                         struct st_eab *out, unsigned char hmac_out[32])
{
    unsigned char hmac[32], sealed[32 + ST_SEAL_OVERHEAD];
    char kid[ST_KID_LEN], id[ST_ID_LEN];
    size_t sealed_len, slot;
    PGconn *c;
    int err;

    err = st_random_id(id, sizeof(id));
    if (err != 0)
        return err;
    snprintf(kid, sizeof(kid), "kid-%s", id); /* 26 characters: fits */
    if (RAND_bytes(hmac, sizeof(hmac)) != 1) {
        LOG_ERROR("store.eab_create", "error=RAND_bytes");
        return AGW_ERR_INTERNAL;
    }
    err = st_seal(pg(s)->seal_key, kid, hmac, sizeof(hmac), sealed, sizeof(sealed), &sealed_len);
    if (err != 0)
        goto done;

    c = conn_get(s, &slot);
    err = pg_execf(c, "eab_create",
                   "INSERT INTO eab_keys(kid, class_name, hmac_sealed, created) "
                   "VALUES ($1, $2, $3, $4)",
                   NULL, "ttbi", kid, class_name, (const unsigned char *)sealed, sealed_len, now);
    conn_put(s, slot);
    if (err != 0)
        goto done;

    memset(out, 0, sizeof(*out));
    st_copy_str(out->kid, sizeof(out->kid), kid);
    st_copy_str(out->class_name, sizeof(out->class_name), class_name);
    out->created = now;
    memcpy(hmac_out, hmac, sizeof(hmac));
    LOG_INFO("store.eab_created", "kid=%s class=%s", kid, class_name);
done:
    OPENSSL_cleanse(hmac, sizeof(hmac));
    return err;
}

static int pg_eab_get(struct st_store *s, const char *kid, struct st_eab *out, unsigned char *hmac,
                      size_t *hmac_len)
{
    char key[ST_KID_LEN];
    unsigned char *blob = NULL;
    size_t blob_len = 0, slot;
    PGresult *r = NULL;
    PGconn *c;
    int err;

    st_copy_str(key, sizeof(key), kid); /* kid may point into *out, which is cleared next */
    kid = key;
    memset(out, 0, sizeof(*out));
    *hmac_len = 0;
    c = conn_get(s, &slot);
    err = pg_execf(c, "eab_get", "SELECT " EAB_COLS ", hmac_sealed FROM eab_keys WHERE kid = $1",
                   &r, "t", kid);
    conn_put(s, slot);
    if (err == 0 && PQntuples(r) == 0)
        err = AGW_ERR_NOT_FOUND;
    if (err == 0)
        err = eab_row(r, 0, out);
    if (err == 0)
        err = col_bytea(r, 0, 5, &blob, &blob_len);
    if (err == 0)
        err = st_unseal(pg(s)->seal_key, out->kid, blob, blob_len, hmac, ST_HMAC_MAX, hmac_len);
    PQfreemem(blob);
    PQclear(r);
    if (err != 0)
        memset(out, 0, sizeof(*out));
    return err;
}

static int pg_eab_list(struct st_store *s, struct st_eab **out, size_t *n)
{
    PGresult *r = NULL;
    void *arr = NULL;
    size_t slot;
    PGconn *c;
    int err;

    *out = NULL;
    *n = 0;
    c = conn_get(s, &slot);
    err =
        pg_exec(c, "eab_list", "SELECT " EAB_COLS " FROM eab_keys ORDER BY created, seq", NULL, &r);
    conn_put(s, slot);
    if (err == 0)
        err = collect(r, sizeof(struct st_eab), eab_row, NULL, &arr, n);
    PQclear(r);
    *out = arr;
    return err;
}

static int pg_eab_revoke(struct st_store *s, const char *kid, int64_t now)
{
    int err;

    err = cond_update(s, "eab_revoke",
                      "UPDATE eab_keys SET revoked = $1 WHERE kid = $2 AND revoked = 0",
                      "SELECT 1 FROM eab_keys WHERE kid = $1", kid, "it", now, kid);
    if (err == 0)
        LOG_INFO("store.eab_revoked", "kid=%s", kid);
    return err;
}

/* ---------------------------------------------------------------- accounts */

#define ACCOUNT_COLS "id, thumbprint, status, eab_kid, class_name, created, jwk_json, contact_json"

static int account_row(const PGresult *r, int row, void *out)
{
    struct st_account *a = out;
    int err;

    err = col_fixed(r, row, 0, a->id, sizeof(a->id));
    if (err == 0)
        err = col_fixed(r, row, 1, a->thumbprint, sizeof(a->thumbprint));
    if (err == 0)
        err = col_fixed(r, row, 2, a->status, sizeof(a->status));
    if (err == 0)
        err = col_fixed(r, row, 3, a->eab_kid, sizeof(a->eab_kid));
    if (err == 0)
        err = col_fixed(r, row, 4, a->class_name, sizeof(a->class_name));
    a->created = col_i64(r, row, 5);
    if (err == 0)
        err = col_dup(r, row, 6, &a->jwk_json);
    if (err == 0)
        err = col_dup(r, row, 7, &a->contact_json);
    return err;
}


/* After the failed transaction was rolled back: who holds this thumbprint. */
static void account_holder(PGconn *c, const char *thumbprint, char existing_id[ST_ID_LEN])
{
    PGresult *r = NULL;

    existing_id[0] = '\0';
    if (pg_execf(c, "account_holder", "SELECT id FROM accounts WHERE thumbprint = $1", &r, "t",
                 thumbprint) == 0 &&
        PQntuples(r) > 0)
        (void)col_fixed(r, 0, 0, existing_id, ST_ID_LEN);
    PQclear(r);
}

/*
 * As in sqlite.c: the EAB binding is part of the transaction. The UPDATE re-checks revoked and
 * n_accounts < max on the row it locks, so two instances binding the last slot of a key cannot
 * both succeed: the second waits for the first to commit and then finds the key full.
 */
static int pg_account_create(struct st_store *s, struct st_account *a, char existing_id[ST_ID_LEN])
{
    char id[ST_ID_LEN], class_name[ST_NAME_LEN];
    const char *status;
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    status = a->status[0] != '\0' ? a->status : "valid";
    st_copy_str(class_name, sizeof(class_name), a->class_name);
    err = st_random_id(id, sizeof(id));
    if (err != 0)
        return err;

    c = conn_get(s, &slot);
    err = tx_begin(c, "account_create");
    if (err != 0)
        goto done;
    if (a->eab_kid[0] != '\0') {
        err = pg_execf(c, "account_create",
                       "UPDATE eab_keys SET n_accounts = n_accounts + 1 "
                       "WHERE kid = $1 AND revoked = 0 AND ($2::bigint = 0 OR n_accounts < $2) "
                       "RETURNING class_name",
                       &r, "ti", a->eab_kid, a->eab_max_accounts);
        if (err == 0 && PQntuples(r) == 1) {
            err = col_fixed(r, 0, 0, class_name, sizeof(class_name));
        } else if (err == 0) {
            int exists;

            err = row_exists(c, "SELECT 1 FROM eab_keys WHERE kid = $1", a->eab_kid,
                             "account_create", &exists);
            if (err == 0)
                err = exists ? AGW_ERR_UNAUTHORIZED : AGW_ERR_NOT_FOUND;
        }
        PQclear(r);
        if (err != 0)
            goto rollback;
    }
    err = pg_execf(c, "account_create",
                   "INSERT INTO accounts(" ACCOUNT_COLS ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                   NULL, "tttetitt", id, a->thumbprint, status, a->eab_kid, class_name, a->created,
                   a->jwk_json, a->contact_json != NULL ? a->contact_json : "[]");
    if (err == 0)
        err = tx_commit(c, "account_create");
    if (err != 0)
        goto rollback;
    conn_put(s, slot);
    st_copy_str(a->id, sizeof(a->id), id);
    st_copy_str(a->status, sizeof(a->status), status);
    st_copy_str(a->class_name, sizeof(a->class_name), class_name);
    return 0;
rollback:
    tx_rollback(c);
    if (err == AGW_ERR_CONFLICT && existing_id != NULL)
        account_holder(c, a->thumbprint, existing_id);
done:
    conn_put(s, slot);
    return err;
}

static int pg_account_get(struct st_store *s, const char *id, struct st_account *out)
{
    return get_by_key(s, "account_get", "SELECT " ACCOUNT_COLS " FROM accounts WHERE id = $1", id,
                      account_row, out);
}

static int pg_account_by_thumbprint(struct st_store *s, const char *thumbprint,
                                    struct st_account *out)
{
    return get_by_key(s, "account_by_thumbprint",
                      "SELECT " ACCOUNT_COLS " FROM accounts WHERE thumbprint = $1", thumbprint,
                      account_row, out);
}

/* An UPDATE of the row with key id: AGW_ERR_NOT_FOUND unless exactly one row changed. */
static int update_one(struct st_store *s, const char *op, const char *sql, const char *a1,
                      const char *a2, const char *a3)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c = conn_get(s, &slot);
    int err;

    err = a3 != NULL ? pg_execf(c, op, sql, &r, "ttt", a1, a2, a3)
                     : pg_execf(c, op, sql, &r, "tt", a1, a2);
    if (err == 0 && changes(r) != 1)
        err = AGW_ERR_NOT_FOUND;
    PQclear(r);
    conn_put(s, slot);
    return err;
}

static int pg_account_set_contact(struct st_store *s, const char *id, const char *contact_json)
{
    return update_one(s, "account_contact", "UPDATE accounts SET contact_json = $1 WHERE id = $2",
                      contact_json, id, NULL);
}

static int pg_account_deactivate(struct st_store *s, const char *id)
{
    return cond_update(s, "account_deactivate",
                       "UPDATE accounts SET status = 'deactivated' WHERE id = $1 AND status = "
                       "'valid'",
                       "SELECT 1 FROM accounts WHERE id = $1", id, "t", id);
}

static int pg_account_set_key(struct st_store *s, const char *id, const char *thumbprint,
                              const char *jwk_json)
{
    return update_one(s, "account_set_key",
                      "UPDATE accounts SET thumbprint = $1, jwk_json = $2 WHERE id = $3",
                      thumbprint, jwk_json, id);
}

/* ---------------------------------------------------------------- orders */

#define ORDER_COLS                                                                                 \
    "id, account_id, status, class_name, profile, cert_serial, replaces, created, expires, "       \
    "not_before, not_after, identifiers_json, error_json"

static int order_row(const PGresult *r, int row, void *out)
{
    struct st_order *o = out;
    int err;

    err = col_fixed(r, row, 0, o->id, sizeof(o->id));
    if (err == 0)
        err = col_fixed(r, row, 1, o->account_id, sizeof(o->account_id));
    if (err == 0)
        err = col_fixed(r, row, 2, o->status, sizeof(o->status));
    if (err == 0)
        err = col_fixed(r, row, 3, o->class_name, sizeof(o->class_name));
    if (err == 0)
        err = col_fixed(r, row, 4, o->profile, sizeof(o->profile));
    if (err == 0)
        err = col_fixed(r, row, 5, o->cert_serial, sizeof(o->cert_serial));
    if (err == 0)
        err = col_fixed(r, row, 6, o->replaces, sizeof(o->replaces));
    o->created = col_i64(r, row, 7);
    o->expires = col_i64(r, row, 8);
    o->not_before = col_i64(r, row, 9);
    o->not_after = col_i64(r, row, 10);
    if (err == 0)
        err = col_dup(r, row, 11, &o->identifiers_json);
    if (err == 0)
        err = col_dup(r, row, 12, &o->error_json);
    return err;
}

static const char *or_default(const char *v, const char *dflt)
{
    return v[0] != '\0' ? v : dflt;
}

/* One count in the caller's transaction. */
static int pg_count_in_tx(PGconn *c, const char *sql, const char *t, int64_t i, int64_t *n)
{
    PGresult *r = NULL;
    int err = pg_execf(c, "order_limits", sql, &r, "ti", t, i);

    *n = err == 0 && PQntuples(r) == 1 ? col_i64(r, 0, 0) : 0;
    PQclear(r);
    return err;
}

/* The quota limits of st_order_create. The row locks (account, EAB key) make concurrent
 * order creations of one account or key take turns across instances, so the count and the
 * insert cannot interleave with another request's. */
static int pg_order_limits(PGconn *c, const struct st_order *o)
{
    int64_t n = 0;
    int err = 0;

    if (o->max_pending > 0) {
        err = pg_count_in_tx(c, "SELECT 1 FROM accounts WHERE id = $1 AND 0 < $2 FOR UPDATE",
                             o->account_id, 1, &n);
        if (err == 0)
            err = pg_count_in_tx(c,
                                 "SELECT count(*) FROM orders WHERE account_id = $1 AND "
                                 "created >= $2 AND status IN ('pending', 'ready')",
                                 o->account_id, 0, &n);
        if (err == 0 && n >= o->max_pending)
            err = AGW_ERR_RATE_LIMITED;
    }
    if (err == 0 && o->max_per_eab_hour > 0 && o->eab_kid[0] != '\0') {
        err = pg_count_in_tx(c, "SELECT 1 FROM eab_keys WHERE kid = $1 AND 0 < $2 FOR UPDATE",
                             o->eab_kid, 1, &n);
        if (err == 0)
            err = pg_count_in_tx(c,
                                 "SELECT count(*) FROM orders o JOIN accounts a ON "
                                 "a.id = o.account_id WHERE a.eab_kid = $1 AND o.created >= $2",
                                 o->eab_kid, o->created - 3600, &n);
        if (err == 0 && n >= o->max_per_eab_hour)
            err = AGW_ERR_RATE_LIMITED;
    }
    return err;
}

static int pg_order_create(struct st_store *s, struct st_order *o, struct st_authz *authz,
                           size_t n_authz, struct st_new_challenge *chal, size_t n_chal)
{
    size_t slot;
    PGconn *c;
    int err;

    err = st_random_id(o->id, sizeof(o->id));
    for (size_t i = 0; err == 0 && i < n_authz; i++) {
        err = st_random_id(authz[i].id, sizeof(authz[i].id));
        st_copy_str(authz[i].order_id, sizeof(authz[i].order_id), o->id);
        if (authz[i].account_id[0] == '\0')
            st_copy_str(authz[i].account_id, sizeof(authz[i].account_id), o->account_id);
        st_copy_str(authz[i].status, sizeof(authz[i].status),
                    or_default(authz[i].status, "pending"));
    }
    for (size_t j = 0; err == 0 && j < n_chal; j++) {
        struct st_challenge *ch = &chal[j].c;

        err = st_random_id(ch->id, sizeof(ch->id));
        st_copy_str(ch->authz_id, sizeof(ch->authz_id), authz[chal[j].authz_index].id);
        st_copy_str(ch->status, sizeof(ch->status), or_default(ch->status, "pending"));
    }
    if (err != 0)
        return err;
    st_copy_str(o->status, sizeof(o->status), or_default(o->status, "pending"));

    c = conn_get(s, &slot);
    err = tx_begin(c, "order_create");
    if (err != 0)
        goto done;
    err = pg_order_limits(c, o);
    if (err == 0)
        err = pg_execf(c, "order_create",
                   "INSERT INTO orders(" ORDER_COLS ") "
                   "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
                   NULL, "tttttttiiiitt", o->id, o->account_id, o->status, o->class_name,
                   o->profile, o->cert_serial, o->replaces, o->created, o->expires, o->not_before,
                   o->not_after, o->identifiers_json, o->error_json);
    for (size_t i = 0; err == 0 && i < n_authz; i++) {
        const struct st_authz *a = &authz[i];

        err = pg_execf(c, "order_create",
                       "INSERT INTO authorizations(id, order_id, account_id, id_type, id_value, "
                       "status, expires, wildcard) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                       NULL, "ttttttii", a->id, a->order_id, a->account_id, a->id_type, a->id_value,
                       a->status, a->expires, (int64_t)(a->wildcard != 0));
    }
    for (size_t j = 0; err == 0 && j < n_chal; j++) {
        const struct st_challenge *ch = &chal[j].c;

        err = pg_execf(c, "order_create",
                       "INSERT INTO challenges(id, authz_id, type, token, status, validated, "
                       "error_json) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                       NULL, "tttttit", ch->id, ch->authz_id, ch->type, ch->token, ch->status,
                       ch->validated, ch->error_json);
    }
    if (err == 0)
        err = tx_commit(c, "order_create");
    if (err != 0)
        tx_rollback(c);
done:
    conn_put(s, slot);
    return err;
}

static int pg_order_get(struct st_store *s, const char *id, struct st_order *out)
{
    return get_by_key(s, "order_get", "SELECT " ORDER_COLS " FROM orders WHERE id = $1", id,
                      order_row, out);
}

static int id_row(const PGresult *r, int row, void *out)
{
    return col_fixed(r, row, 0, out, ST_ID_LEN);
}

/* max 0 means no cap, as in st_cert_filter. */
static int pg_order_ids_by_account(struct st_store *s, const char *account_id, size_t max,
                                   char (**ids)[ST_ID_LEN], size_t *n)
{
    PGresult *r = NULL;
    void *arr = NULL;
    size_t slot;
    PGconn *c;
    int err;

    if (ids == NULL || n == NULL)
        return AGW_ERR_BAD_INPUT;
    *ids = NULL;
    *n = 0;
    if (s == NULL || !st_given(account_id, ST_ID_LEN))
        return AGW_ERR_BAD_INPUT;
    c = conn_get(s, &slot);
    err = pg_execf(c, "order_ids",
                   "SELECT id FROM orders WHERE account_id = $1 ORDER BY created DESC, seq DESC "
                   "LIMIT $2",
                   &r, "ti", account_id, max == 0 || max > INT64_MAX ? INT64_MAX : (int64_t)max);
    conn_put(s, slot);
    if (err == 0)
        err = collect(r, ST_ID_LEN, id_row, NULL, &arr, n);
    PQclear(r);
    *ids = arr;
    return err;
}

static int pg_order_transition(struct st_store *s, const char *id, const char *from, const char *to,
                               const char *error_json)
{
    /* error_json NULL keeps what is there */
    return cond_update(s, "order_transition",
                       "UPDATE orders SET status = $1, error_json = COALESCE($2::text, error_json), "
                       "updated = extract(epoch from now())::bigint WHERE id = $3 AND status = $4",
                       "SELECT 1 FROM orders WHERE id = $1", id, "tttt", to, error_json, id, from);
}

/* st_order_start_processing: the same UPDATE as sqlite.c's. Under READ COMMITTED two
 * instances' UPDATEs of different orders would both count from their own snapshot, so the
 * account's row is locked first: finalizes of one account take turns, and each counts after the
 * previous one committed its reservation. */
static int pg_order_start_processing(struct st_store *s, const char *id, int64_t max_certs,
                                     int64_t since)
{
    static const char op[] = "order_start_processing";
    PGresult *r = NULL;
    size_t slot;
    PGconn *c = conn_get(s, &slot);
    int err, ready = 0;

    err = tx_begin(c, op);
    if (err == 0)
        err = pg_execf(c, op,
                       "SELECT 1 FROM accounts WHERE id = "
                       "(SELECT account_id FROM orders WHERE id = $1) FOR NO KEY UPDATE",
                       NULL, "t", id);
    if (err == 0)
        err = pg_execf(c, op,
                       "UPDATE orders SET status = 'processing', "
                       "updated = extract(epoch from now())::bigint "
                       "WHERE id = $3 AND status = 'ready' AND ($1::bigint <= 0 OR "
                       "(SELECT count(*) FROM certificates c "
                       "WHERE c.account_id = orders.account_id AND c.issued >= $2::bigint) + "
                       "(SELECT count(*) FROM orders o WHERE o.account_id = orders.account_id "
                       "AND o.status = 'processing') < $1::bigint)",
                       &r, "iit", max_certs, since, id);
    if (err == 0)
        err = cond_result(c, r, op, "SELECT 1 FROM orders WHERE id = $1", id);
    if (err == AGW_ERR_CONFLICT && /* ready, so the quota held it back */
        row_exists(c, "SELECT 1 FROM orders WHERE id = $1 AND status = 'ready'", id, op,
                   &ready) == 0 && ready)
        err = AGW_ERR_RATE_LIMITED;
    if (err == 0)
        err = tx_commit(c, op);
    PQclear(r);
    conn_put(s, slot); /* rolls back what is still open */
    return err;
}

/* One "SELECT count(*) ..." with parameters per fmt (t / i only). */
static int count_query(struct st_store *s, const char *op, const char *sql, int64_t *n,
                       const char *fmt, const char *t1, int64_t i2, const char *t3)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    *n = 0;
    c = conn_get(s, &slot);
    err = t3 != NULL ? pg_execf(c, op, sql, &r, fmt, t1, i2, t3)
                     : pg_execf(c, op, sql, &r, fmt, t1, i2);
    if (err == 0 && PQntuples(r) == 1)
        *n = col_i64(r, 0, 0);
    else if (err == 0)
        err = AGW_ERR_STORE;
    PQclear(r);
    conn_put(s, slot);
    return err;
}

/* status NULL counts orders in any state. */
static int pg_order_count(struct st_store *s, const char *account_id, const char *status,
                          int64_t since, int64_t *n)
{
    if (status != NULL)
        return count_query(s, "order_count",
                           "SELECT count(*) FROM orders WHERE account_id = $1 AND created >= $2 "
                           "AND status = $3",
                           n, "tit", account_id, since, status);
    return count_query(s, "order_count",
                       "SELECT count(*) FROM orders WHERE account_id = $1 AND created >= $2", n,
                       "ti", account_id, since, NULL);
}

static int pg_order_count_by_eab(struct st_store *s, const char *kid, int64_t since, int64_t *n)
{
    return count_query(s, "order_count_by_eab",
                       "SELECT count(*) FROM orders o JOIN accounts a ON a.id = o.account_id "
                       "WHERE a.eab_kid = $1 AND o.created >= $2",
                       n, "ti", kid, since, NULL);
}

static int pg_cert_count_by_account(struct st_store *s, const char *account_id, int64_t since,
                                    int64_t *n)
{
    return count_query(s, "cert_count_by_account",
                       "SELECT count(*) FROM certificates WHERE account_id = $1 AND issued >= $2",
                       n, "ti", account_id, since, NULL);
}

static int pg_order_replacing(struct st_store *s, const char *cert_id, int64_t now, int *found)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    c = conn_get(s, &slot);
    err = pg_execf(c, "order_replacing",
                   "SELECT 1 FROM orders WHERE replaces = $1 AND status <> 'invalid' AND "
                   "NOT (status IN ('pending', 'ready') AND expires < $2) LIMIT 1",
                   &r, "ti", cert_id, now);
    if (err == 0)
        *found = PQntuples(r) > 0;
    PQclear(r);
    conn_put(s, slot);
    return err;
}

/* ---------------------------------------------------------------- authorizations */

#define AUTHZ_COLS "id, order_id, account_id, id_type, id_value, status, expires, wildcard"

static void authz_clear_v(void *a)
{
    st_authz_clear(a);
}

static int authz_row(const PGresult *r, int row, void *out)
{
    struct st_authz *a = out;
    int err;

    err = col_fixed(r, row, 0, a->id, sizeof(a->id));
    if (err == 0)
        err = col_fixed(r, row, 1, a->order_id, sizeof(a->order_id));
    if (err == 0)
        err = col_fixed(r, row, 2, a->account_id, sizeof(a->account_id));
    if (err == 0)
        err = col_fixed(r, row, 3, a->id_type, sizeof(a->id_type));
    if (err == 0)
        err = col_dup(r, row, 4, &a->id_value);
    if (err == 0)
        err = col_fixed(r, row, 5, a->status, sizeof(a->status));
    a->expires = col_i64(r, row, 6);
    a->wildcard = col_i64(r, row, 7) != 0;
    return err;
}

static int pg_authz_get(struct st_store *s, const char *id, struct st_authz *out)
{
    return get_by_key(s, "authz_get", "SELECT " AUTHZ_COLS " FROM authorizations WHERE id = $1", id,
                      authz_row, out);
}

static int pg_authz_list_by_order(struct st_store *s, const char *order_id, struct st_authz **out,
                                  size_t *n)
{
    void *arr = NULL;
    int err;

    /* seq order is insertion order: the order's authorizations as the client listed them */
    err = list_by_key(s, "authz_list",
                      "SELECT " AUTHZ_COLS " FROM authorizations WHERE order_id = $1 ORDER BY seq",
                      order_id, sizeof(struct st_authz), authz_row, authz_clear_v, &arr, n);
    *out = arr;
    return err;
}

static int pg_authz_transition(struct st_store *s, const char *id, const char *from, const char *to)
{
    return cond_update(s, "authz_transition",
                       "UPDATE authorizations SET status = $1 WHERE id = $2 AND status = $3",
                       "SELECT 1 FROM authorizations WHERE id = $1", id, "ttt", to, id, from);
}

/* ---------------------------------------------------------------- challenges */

#define CHAL_COLS "id, authz_id, type, token, status, validated, error_json"

static void chal_clear_v(void *c)
{
    st_challenge_clear(c);
}

static int chal_row(const PGresult *r, int row, void *out)
{
    struct st_challenge *c = out;
    int err;

    err = col_fixed(r, row, 0, c->id, sizeof(c->id));
    if (err == 0)
        err = col_fixed(r, row, 1, c->authz_id, sizeof(c->authz_id));
    if (err == 0)
        err = col_fixed(r, row, 2, c->type, sizeof(c->type));
    if (err == 0)
        err = col_fixed(r, row, 3, c->token, sizeof(c->token));
    if (err == 0)
        err = col_fixed(r, row, 4, c->status, sizeof(c->status));
    c->validated = col_i64(r, row, 5);
    if (err == 0)
        err = col_dup(r, row, 6, &c->error_json);
    return err;
}

static int pg_challenge_get(struct st_store *s, const char *id, struct st_challenge *out)
{
    return get_by_key(s, "challenge_get", "SELECT " CHAL_COLS " FROM challenges WHERE id = $1", id,
                      chal_row, out);
}

static int pg_challenge_list_by_authz(struct st_store *s, const char *authz_id,
                                      struct st_challenge **out, size_t *n)
{
    void *arr = NULL;
    int err;

    err = list_by_key(s, "challenge_list",
                      "SELECT " CHAL_COLS " FROM challenges WHERE authz_id = $1 ORDER BY seq",
                      authz_id, sizeof(struct st_challenge), chal_row, chal_clear_v, &arr, n);
    *out = arr;
    return err;
}

static int pg_challenge_transition(struct st_store *s, const char *id, const char *from,
                                   const char *to, int64_t validated, const char *error_json)
{
    return cond_update(s, "challenge_transition",
                       "UPDATE challenges SET status = $1, validated = $2, error_json = $3 "
                       "WHERE id = $4 AND status = $5",
                       "SELECT 1 FROM challenges WHERE id = $1", id,
                       "titt"
                       "t",
                       to, validated, error_json, id, from);
}

/* ---------------------------------------------------------------- certificates */

#define CERT_COLS                                                                                  \
    "serial, order_id, account_id, class_name, issuer, status, issued, not_before, not_after, "    \
    "revoked_at, reason, identifiers"

static void cert_clear_v(void *c)
{
    st_cert_clear(c);
}

static int cert_row(const PGresult *r, int row, void *out)
{
    struct st_cert *c = out;
    int64_t reason;
    int err;

    err = col_fixed(r, row, 0, c->serial, sizeof(c->serial));
    if (err == 0)
        err = col_fixed(r, row, 1, c->order_id, sizeof(c->order_id));
    if (err == 0)
        err = col_fixed(r, row, 2, c->account_id, sizeof(c->account_id));
    if (err == 0)
        err = col_fixed(r, row, 3, c->class_name, sizeof(c->class_name));
    if (err == 0)
        err = col_fixed(r, row, 4, c->issuer, sizeof(c->issuer));
    if (err == 0)
        err = col_fixed(r, row, 5, c->status, sizeof(c->status));
    c->issued = col_i64(r, row, 6);
    c->not_before = col_i64(r, row, 7);
    c->not_after = col_i64(r, row, 8);
    c->revoked_at = col_i64(r, row, 9);
    reason = col_i64(r, row, 10);
    c->reason = reason >= -1 && reason <= INT_MAX ? (int)reason : -1;
    if (err == 0)
        err = col_dup(r, row, 11, &c->identifiers);
    return err;
}

/* cert_row plus der (column 12) and chain_pem (13). */
static int cert_row_full(const PGresult *r, int row, void *out)
{
    struct st_cert *c = out;
    unsigned char *der = NULL;
    size_t len = 0;
    int err;

    err = cert_row(r, row, c);
    if (err == 0)
        err = col_bytea(r, row, 12, &der, &len);
    if (err == 0 && der != NULL && len > 0) {
        c->der = malloc(len);
        if (c->der == NULL) {
            err = AGW_ERR_NOMEM;
        } else {
            memcpy(c->der, der, len);
            c->der_len = len;
        }
    }
    PQfreemem(der);
    if (err == 0)
        err = col_dup(r, row, 13, &c->chain_pem);
    return err;
}

/*
 * As in sqlite.c: always recorded "valid". processing -> valid and the insert are one
 * transaction; of two instances finalizing one order, the second's UPDATE waits on the row lock,
 * then finds the order "valid" and changes nothing (AGW_ERR_CONFLICT, nothing inserted).
 */
static int pg_cert_issue(struct st_store *s, const struct st_cert *c)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *db;
    int err;

    db = conn_get(s, &slot);
    err = tx_begin(db, "cert_issue");
    if (err != 0)
        goto done;
    if (c->order_id[0] != '\0') {
        /* §7.4: only an order being finalized becomes valid, and only once */
        err = pg_execf(db, "cert_issue",
                       "UPDATE orders SET status = 'valid', cert_serial = $1, "
                       "updated = extract(epoch from now())::bigint "
                       "WHERE id = $2 AND status = 'processing'",
                       &r, "tt", c->serial, c->order_id);
        if (err == 0)
            err =
                cond_result(db, r, "cert_issue", "SELECT 1 FROM orders WHERE id = $1", c->order_id);
        PQclear(r);
        if (err != 0)
            goto rollback;
    }
    err =
        pg_execf(db, "cert_issue",
                 "INSERT INTO certificates(serial, order_id, account_id, class_name, issuer, "
                 "status, issued, not_before, not_after, revoked_at, reason, identifiers, der, "
                 "chain_pem) VALUES ($1, $2, $3, $4, $5, 'valid', $6, $7, $8, 0, -1, $9, $10, $11)",
                 NULL,
                 "tettt"
                 "iii"
                 "tbt",
                 c->serial, c->order_id, c->account_id, c->class_name, c->issuer, c->issued,
                 c->not_before, c->not_after, c->identifiers != NULL ? c->identifiers : "",
                 (const unsigned char *)c->der, c->der_len, c->chain_pem);
    if (err == 0)
        err = tx_commit(db, "cert_issue"); /* synchronous_commit=on: WAL flushed on return */
    if (err != 0)
        goto rollback;
    conn_put(s, slot);
    LOG_INFO("store.cert_recorded", "serial=%s order=%s issuer=%s", c->serial, c->order_id,
             c->issuer);
    return 0;
rollback:
    tx_rollback(db);
done:
    conn_put(s, slot);
    return err;
}

static int pg_cert_get(struct st_store *s, const char *serial, struct st_cert *out)
{
    return get_by_key(s, "cert_get",
                      "SELECT " CERT_COLS ", der, chain_pem FROM certificates WHERE serial = $1",
                      serial, cert_row_full, out);
}

/* Appends a fixed SQL fragment with its parameter number ($%d); never a value. */
static void sql_add(char *sql, const char *frag, int param)
{
    size_t used = strlen(sql);

    if (used < PG_SQL_MAX)
        snprintf(sql + used, PG_SQL_MAX - used, frag, param);
}

static int pg_cert_list(struct st_store *s, const struct st_cert_filter *f, struct st_cert **out,
                        size_t *n)
{
    char sql[PG_SQL_MAX] = "SELECT " CERT_COLS " FROM certificates WHERE true";
    struct pg_params p;
    PGresult *r = NULL;
    void *arr = NULL;
    size_t slot;
    PGconn *c;
    int err;

    memset(&p, 0, sizeof(p));
    if (f->class_name != NULL) {
        par_text(&p, f->class_name);
        sql_add(sql, " AND class_name = $%d", p.n);
    }
    if (f->identifier != NULL) {
        par_text(&p, f->identifier);
        sql_add(sql, " AND strpos(identifiers, $%d) > 0", p.n);
    }
    /* "valid" lists certificates still in their validity period; past it they are "expired" */
    if (f->status != NULL && strcmp(f->status, "revoked") == 0) {
        sql_add(sql, " AND status = 'revoked'", 0);
    } else if (f->status != NULL) {
        par_i64(&p, f->now);
        sql_add(sql,
                strcmp(f->status, "valid") == 0 ? " AND status = 'valid' AND not_after >= $%d"
                                                : " AND status = 'valid' AND not_after < $%d",
                p.n);
    }
    if (f->expiring_before != 0) {
        par_i64(&p, f->expiring_before);
        sql_add(sql, " AND not_after < $%d", p.n);
    }
    par_i64(&p, f->max == 0 || f->max > INT64_MAX ? INT64_MAX : (int64_t)f->max);
    sql_add(sql, " ORDER BY issued DESC, seq DESC LIMIT $%d", p.n);

    c = conn_get(s, &slot);
    err = pg_exec(c, "cert_list", sql, &p, &r);
    conn_put(s, slot);
    if (err == 0)
        err = collect(r, sizeof(struct st_cert), cert_row, cert_clear_v, &arr, n);
    PQclear(r);
    *out = arr;
    return err;
}

/* RFC 5280 §5.3.1: reasons 0..10 except 7, which is unused. */
static int pg_cert_revoke(struct st_store *s, const char *serial, int reason, int64_t now)
{
    int err;

    err = cond_update(s, "cert_revoke",
                      "UPDATE certificates SET status = 'revoked', revoked_at = $1, reason = $2 "
                      "WHERE serial = $3 AND status = 'valid'",
                      "SELECT 1 FROM certificates WHERE serial = $1", serial, "iit", now,
                      (int64_t)reason, serial);
    if (err == AGW_ERR_CONFLICT)
        err = AGW_ERR_ALREADY_REVOKED; /* the only other status is revoked */
    if (err == 0)
        LOG_INFO("store.cert_revoked", "serial=%s reason=%d", serial, reason);
    return err;
}

static int revoked_row(const PGresult *r, int row, void *out)
{
    struct st_revoked *rv = out;
    int64_t reason = col_i64(r, row, 2);

    rv->revoked_at = col_i64(r, row, 1);
    rv->reason = reason >= 0 && reason <= 10 ? (int)reason : 0;
    return col_fixed(r, row, 0, rv->serial, sizeof(rv->serial));
}

static int pg_revoked_list(struct st_store *s, const char *issuer, int64_t since,
                           struct st_revoked **out, size_t *n)
{
    PGresult *r = NULL;
    void *arr = NULL;
    size_t slot;
    PGconn *c;
    int err;

    c = conn_get(s, &slot);
    /* COLLATE "C": byte order, as SQLite's ORDER BY serial */
    err = pg_execf(c, "revoked_list",
                   "SELECT serial, revoked_at, reason FROM certificates WHERE issuer = $1 AND "
                   "status = 'revoked' AND not_after >= $2 ORDER BY serial COLLATE \"C\"",
                   &r, "ti", issuer, since);
    conn_put(s, slot);
    if (err == 0)
        err = collect(r, sizeof(struct st_revoked), revoked_row, NULL, &arr, n);
    PQclear(r);
    *out = arr;
    return err;
}

static int pg_crl_next_number(struct st_store *s, const char *issuer, uint64_t *number)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    *number = 0;
    c = conn_get(s, &slot);
    /* One statement: the row lock of the upsert makes concurrent callers take turns, so no two
     * CRLs, from any instance, get the same number. */
    err = pg_execf(c, "crl_next_number",
                   "INSERT INTO crl_numbers(issuer, number) VALUES ($1, 1) ON CONFLICT (issuer) "
                   "DO UPDATE SET number = crl_numbers.number + 1 RETURNING number",
                   &r, "t", issuer);
    if (err == 0) {
        int64_t v = PQntuples(r) == 1 ? col_i64(r, 0, 0) : 0;

        if (v > 0)
            *number = (uint64_t)v;
        else
            err = AGW_ERR_STORE;
    }
    PQclear(r);
    conn_put(s, slot);
    return err;
}

/* One "SELECT <int> ... WHERE issuer = $1" read; 0 when there is no row. */
static int issuer_int(struct st_store *s, const char *sql, const char *op, const char *issuer,
                      int64_t *out)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    *out = 0;
    if (s == NULL || !st_given(issuer, ST_NAME_LEN))
        return AGW_ERR_BAD_INPUT;
    c = conn_get(s, &slot);
    err = pg_execf(c, op, sql, &r, "t", issuer);
    if (err == 0 && PQntuples(r) > 0)
        *out = col_i64(r, 0, 0);
    PQclear(r);
    conn_put(s, slot);
    return err;
}

static int pg_crl_number(struct st_store *s, const char *issuer, uint64_t *number)
{
    int64_t v = 0;
    int err;

    err =
        issuer_int(s, "SELECT number FROM crl_numbers WHERE issuer = $1", "crl_number", issuer, &v);
    *number = err == 0 && v > 0 ? (uint64_t)v : 0;
    return err;
}

static int pg_revocation_marker(struct st_store *s, const char *issuer, int64_t *marker)
{
    /* revocations are never undone, so the count only grows: a changed count is a revocation */
    return issuer_int(s,
                      "SELECT count(*) FROM certificates WHERE issuer = $1 AND status = 'revoked'",
                      "revocation_marker", issuer, marker);
}

static int pg_order_fail_stale(struct st_store *s, int64_t age_s, const char *error_json,
                               int64_t *n)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    *n = 0;
    c = conn_get(s, &slot);
    /* the database's clock: the one clock every instance shares */
    err = pg_execf(c, "order_fail_stale",
                   "UPDATE orders SET status = 'invalid', error_json = $1, "
                   "updated = extract(epoch from now())::bigint WHERE status = 'processing' "
                   "AND updated < extract(epoch from now())::bigint - $2",
                   &r, "ti", error_json, age_s);
    if (err == 0)
        *n = changes(r);
    PQclear(r);
    conn_put(s, slot);
    return err;
}

static int pg_authz_valid_for(struct st_store *s, const char *account_id, const char *id_type,
                              const char *id_value, int64_t now, int *found)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    *found = 0;
    c = conn_get(s, &slot);
    err = pg_execf(c, "authz_valid_for",
                   "SELECT 1 FROM authorizations WHERE account_id = $1 AND id_type = $2 AND "
                   "id_value = $3 AND status = 'valid' AND expires > $4 LIMIT 1",
                   &r, "ttti", account_id, id_type, id_value, now);
    if (err == 0)
        *found = PQntuples(r) > 0;
    PQclear(r);
    conn_put(s, slot);
    return err;
}

static int pg_nonce_redeem(struct st_store *s, const char *id, int64_t expires)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    c = conn_get(s, &slot);
    /* the primary key makes a replay at any instance lose: 0 rows inserted */
    err = pg_execf(c, "nonce_redeem",
                   "INSERT INTO used_nonces(id, expires) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                   &r, "ti", id, expires);
    if (err == 0 && changes(r) != 1)
        err = AGW_ERR_CONFLICT;
    PQclear(r);
    conn_put(s, slot);
    return err;
}

static int pg_nonce_purge(struct st_store *s, int64_t now)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    c = conn_get(s, &slot);
    err = pg_execf(c, "nonce_purge", "DELETE FROM used_nonces WHERE expires < $1", &r, "i", now);
    PQclear(r);
    conn_put(s, slot);
    return err;
}

static int pg_crl_lease(struct st_store *s, const char *issuer, const char *owner, int64_t now,
                        int64_t ttl_s, int *granted)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    *granted = 0;
    c = conn_get(s, &slot);
    /* one statement: the upsert's row lock decides between instances racing for the lease */
    err = pg_execf(c, "crl_lease",
                   "INSERT INTO crl_leases(issuer, owner, until) VALUES ($1, $2, $3::bigint + $4) "
                   "ON CONFLICT (issuer) DO UPDATE SET owner = $2, until = $3::bigint + $4 "
                   "WHERE crl_leases.owner = $2 OR crl_leases.until < $3",
                   &r, "ttii", issuer, owner, now, ttl_s);
    *granted = err == 0 && changes(r) == 1;
    PQclear(r);
    conn_put(s, slot);
    return err;
}

static int pg_crl_put(struct st_store *s, const char *issuer, uint64_t number, int64_t this_update,
                      int64_t next_update, const unsigned char *der, size_t der_len)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    c = conn_get(s, &slot);
    err = pg_execf(c, "crl_put",
                   "INSERT INTO crls(issuer, number, this_update, next_update, der) "
                   "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (issuer) DO UPDATE SET "
                   "number = $2, this_update = $3, next_update = $4, der = $5 "
                   "WHERE crls.number < $2",
                   &r, "tiiib", issuer, (int64_t)number, this_update, next_update, der, der_len);
    PQclear(r);
    conn_put(s, slot);
    return err;
}

static int pg_crl_get(struct st_store *s, const char *issuer, uint64_t *number,
                      int64_t *this_update, int64_t *next_update, unsigned char **der,
                      size_t *der_len)
{
    PGresult *r = NULL;
    size_t slot;
    PGconn *c;
    int err;

    *der = NULL;
    *der_len = 0;
    c = conn_get(s, &slot);
    err = pg_execf(c, "crl_get",
                   "SELECT number, this_update, next_update, der FROM crls WHERE issuer = $1", &r,
                   "t", issuer);
    if (err == 0 && PQntuples(r) != 1)
        err = AGW_ERR_NOT_FOUND;
    if (err == 0) {
        *number = (uint64_t)col_i64(r, 0, 0);
        *this_update = col_i64(r, 0, 1);
        *next_update = col_i64(r, 0, 2);
        {
            unsigned char *pq = NULL;
            size_t n = 0;
            err = col_bytea(r, 0, 3, &pq, &n);
            if (err == 0 && (pq == NULL || n == 0))
                err = AGW_ERR_STORE;
            if (err == 0) {
                *der = malloc(n); /* the caller frees with free(), not PQfreemem() */
                if (*der == NULL)
                    err = AGW_ERR_NOMEM;
                else
                    memcpy(*der, pq, n);
                *der_len = *der != NULL ? n : 0;
            }
            PQfreemem(pq);
        }
    }
    PQclear(r);
    conn_put(s, slot);
    return err;
}

const struct st_ops st_postgres_ops = {
    .driver = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .schema_version = pg_schema_version,
    .eab_create = pg_eab_create,
    .eab_get = pg_eab_get,
    .eab_list = pg_eab_list,
    .eab_revoke = pg_eab_revoke,
    .account_create = pg_account_create,
    .account_get = pg_account_get,
    .account_by_thumbprint = pg_account_by_thumbprint,
    .account_set_contact = pg_account_set_contact,
    .account_deactivate = pg_account_deactivate,
    .account_set_key = pg_account_set_key,
    .order_create = pg_order_create,
    .order_get = pg_order_get,
    .order_ids_by_account = pg_order_ids_by_account,
    .order_replacing = pg_order_replacing,
    .order_transition = pg_order_transition,
    .order_start_processing = pg_order_start_processing,
    .order_count = pg_order_count,
    .order_count_by_eab = pg_order_count_by_eab,
    .cert_count_by_account = pg_cert_count_by_account,
    .authz_get = pg_authz_get,
    .authz_list_by_order = pg_authz_list_by_order,
    .authz_transition = pg_authz_transition,
    .challenge_get = pg_challenge_get,
    .challenge_list_by_authz = pg_challenge_list_by_authz,
    .challenge_transition = pg_challenge_transition,
    .cert_issue = pg_cert_issue,
    .cert_get = pg_cert_get,
    .cert_list = pg_cert_list,
    .cert_revoke = pg_cert_revoke,
    .revoked_list = pg_revoked_list,
    .crl_next_number = pg_crl_next_number,
    .crl_number = pg_crl_number,
    .revocation_marker = pg_revocation_marker,
    .order_fail_stale = pg_order_fail_stale,
    .authz_valid_for = pg_authz_valid_for,
    .nonce_redeem = pg_nonce_redeem,
    .nonce_purge = pg_nonce_purge,
    .crl_lease = pg_crl_lease,
    .crl_put = pg_crl_put,
    .crl_get = pg_crl_get,
};

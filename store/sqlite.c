/*
 * store/sqlite.c - the SQLite implementation of store/store.h.
 *
 * Connections. One write connection behind write_lock, and a small pool of read connections.
 * SQLite has a single writer per database anyway; notes §4 measured that letting threads race for
 * it through busy_timeout is unfair (the loser sleeps in SQLite's back-off, seconds of tail latency
 * under synchronous=FULL), while an in-process mutex keeps latency bounded and even. In WAL mode
 * readers do not block the writer nor each other, so reads take any free pooled connection and run
 * in parallel with a write. Connections are opened SQLITE_OPEN_NOMUTEX: each is used by one thread
 * at a time, guaranteed by our locks, so SQLite's own per-connection mutex would be redundant.
 * busy_timeout is still set, for another process (acmegw-admin) holding the write lock briefly.
 *
 * Durability. The whole store runs with synchronous=FULL, not only the commits that record a
 * certificate (st_cert_issue, st_cert_revoke, st_crl_next_number). Notes §4: FULL costs one WAL
 * fsync per commit, ~9 000 commits/s on the target disk, still over 10x the token's signing rate,
 * and one setting means no commit can be made with the wrong one by accident. The writes of the
 * issuance path and account creation share commits under concurrency (group commit,
 * wb_begin/wb_end): fewer fsyncs, each still FULL, and no call returns before the commit holding
 * its work is on disk.
 *
 * Statements. Every value is a bound parameter. The only SQL assembled at run time is
 * st_cert_list's WHERE clause, and only from fixed fragments chosen by which filters are set.
 * Statements are prepared once per connection and kept (the statement cache below): parsing SQL
 * was the largest single share of a certificate's CPU when every call prepared its statements
 * again (docs/performance.md).
 *
 * State changes are conditional (UPDATE ... WHERE id=? AND status=?): 0 rows changed means the
 * row is missing (AGW_ERR_NOT_FOUND) or was not in the 'from' state (AGW_ERR_CONFLICT), so two
 * workers racing on one order cannot both win. SQLite codes are translated once, in sql_err().
 *
 * Strings. Every value that goes into or comes out of a fixed-size field is length-checked:
 * too long on the way in is AGW_ERR_BAD_INPUT before anything is written; too long on the way out
 * (a row written by something else) is AGW_ERR_STORE. Nothing is truncated.
 *
 * Migrations are numbered; each runs in its own BEGIN IMMEDIATE transaction together with its
 * schema_migrations row, after re-reading the version inside that transaction, so two processes
 * opening a fresh database at once apply each migration once.
 */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include "common/err.h"
#include "common/log.h"
#include "store/internal.h"

#define ST_N_READERS       4
#define ST_BUSY_TIMEOUT_MS 5000
#define ST_SQL_MAX         1024
#define ST_BATCH_MAX       32 /* operations sharing one group commit, at most */

struct wb_member { /* one operation waiting for its batch's commit; lives on its caller's stack */
    struct wb_member *next;
    int done;
    int err;
};

struct sq_store {
    struct st_store base;       /* first member: the ops table (store/internal.h) */
    pthread_mutex_t write_lock; /* guards wdb; held across the commit and its fsync, by design */
    sqlite3 *wdb;
    pthread_mutex_t pool_lock; /* guards reader_busy; never held across I/O */
    pthread_cond_t pool_cond;  /* signalled when a reader is returned */
    sqlite3 *readers[ST_N_READERS];
    int reader_busy[ST_N_READERS];
    int locks_ready;                         /* every mutex and condition variable initialised */
    unsigned char seal_key[ST_SEAL_KEY_LEN]; /* wiped in sq_close() */
    /* group commit (wb_begin/wb_end): all guarded by write_lock except the notification */
    atomic_uint wr_waiting;     /* threads blocked in wr_lock(): someone will commit after us */
    struct wb_member *batch;    /* operations done in the open batch transaction, not committed */
    unsigned batch_n;
    pthread_mutex_t gc_lock;    /* guards every member's done/err; never held across I/O */
    pthread_cond_t gc_cond;     /* broadcast when a batch is committed or failed */
};

/* Every struct st_store this file sees was made by sq_open(): base is the first member. */
static struct sq_store *sq(struct st_store *s)
{
    return (struct sq_store *)s;
}

/* ---------------------------------------------------------------- schema */

static const char *const migrations[] = {
    /* 1: the initial schema */
    "CREATE TABLE eab_keys ("
    "  kid TEXT PRIMARY KEY,"
    "  class_name TEXT NOT NULL,"
    "  hmac_sealed BLOB NOT NULL," /* store/internal.h: version || IV || ciphertext || tag */
    "  created INTEGER NOT NULL,"
    "  revoked INTEGER NOT NULL DEFAULT 0,"
    "  n_accounts INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE accounts ("
    "  id TEXT PRIMARY KEY,"
    "  thumbprint TEXT NOT NULL UNIQUE,"
    "  status TEXT NOT NULL,"
    "  eab_kid TEXT REFERENCES eab_keys(kid)," /* NULL if none */
    "  class_name TEXT NOT NULL,"
    "  created INTEGER NOT NULL,"
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
    "  created INTEGER NOT NULL,"
    "  expires INTEGER NOT NULL,"
    "  not_before INTEGER NOT NULL,"
    "  not_after INTEGER NOT NULL,"
    "  identifiers_json TEXT NOT NULL,"
    "  error_json TEXT);"
    "CREATE INDEX orders_account ON orders(account_id, created);"
    "CREATE INDEX orders_account_status ON orders(account_id, status, created);"
    "CREATE TABLE authorizations ("
    "  id TEXT PRIMARY KEY,"
    "  order_id TEXT NOT NULL REFERENCES orders(id),"
    "  account_id TEXT NOT NULL REFERENCES accounts(id),"
    "  id_type TEXT NOT NULL,"
    "  id_value TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  expires INTEGER NOT NULL,"
    "  wildcard INTEGER NOT NULL);"
    "CREATE INDEX authorizations_order ON authorizations(order_id);"
    "CREATE TABLE challenges ("
    "  id TEXT PRIMARY KEY,"
    "  authz_id TEXT NOT NULL REFERENCES authorizations(id),"
    "  type TEXT NOT NULL,"
    "  token TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  validated INTEGER NOT NULL,"
    "  error_json TEXT);"
    "CREATE INDEX challenges_authz ON challenges(authz_id);"
    "CREATE TABLE certificates ("
    "  serial TEXT PRIMARY KEY,"
    "  order_id TEXT REFERENCES orders(id)," /* NULL for operator-issued */
    "  account_id TEXT NOT NULL,"
    "  class_name TEXT NOT NULL,"
    "  issuer TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  issued INTEGER NOT NULL,"
    "  not_before INTEGER NOT NULL,"
    "  not_after INTEGER NOT NULL,"
    "  revoked_at INTEGER NOT NULL DEFAULT 0,"
    "  reason INTEGER NOT NULL DEFAULT -1,"
    "  identifiers TEXT NOT NULL,"
    "  der BLOB NOT NULL,"
    "  chain_pem TEXT);"
    "CREATE INDEX certificates_issuer ON certificates(issuer, status, not_after);"
    "CREATE INDEX certificates_class ON certificates(class_name, issued);"
    "CREATE INDEX certificates_not_after ON certificates(not_after);"
    "CREATE INDEX certificates_order ON certificates(order_id);"
    "CREATE TABLE crl_numbers ("
    "  issuer TEXT PRIMARY KEY,"
    "  number INTEGER NOT NULL);",
    /* 2: st_cert_list without a class filter lists newest first */
    "CREATE INDEX certificates_issued ON certificates(issued);",
    /* 3: quotas count an account's certificates of the last day */
    "CREATE INDEX certificates_account ON certificates(account_id, issued);",
    /* 4: several gateways on one store: used nonces, the CRL writer's lease, the latest CRLs */
    "CREATE TABLE used_nonces (id TEXT PRIMARY KEY, expires INTEGER NOT NULL);"
    "CREATE INDEX used_nonces_expires ON used_nonces(expires);"
    "CREATE TABLE crl_leases (issuer TEXT PRIMARY KEY, owner TEXT NOT NULL,"
    "  until INTEGER NOT NULL);"
    "CREATE TABLE crls (issuer TEXT PRIMARY KEY, number INTEGER NOT NULL,"
    "  this_update INTEGER NOT NULL, next_update INTEGER NOT NULL, der BLOB NOT NULL);",
    /* 5: when an order last changed state, to recover one a dead gateway left in processing */
    "ALTER TABLE orders ADD COLUMN updated INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX orders_status_updated ON orders(status, updated);",
    /* 6: a certificate is replaced by at most one live order (RFC 9773), whatever the race */
    "CREATE UNIQUE INDEX orders_replaces ON orders(replaces) "
    "  WHERE replaces IS NOT NULL AND replaces != '' AND status != 'invalid';",
    /* 7: no query looks certificates up by order (an order names its certificate, cert_serial,
     * and orders are never deleted), so that index only cost a B-tree insert per certificate */
    "DROP INDEX IF EXISTS certificates_order;",
};
#define ST_SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* ---------------------------------------------------------------- helpers */

/* The one place SQLite result codes become ours. Unique/foreign-key violations are expected
 * outcomes (a taken thumbprint, an unknown parent row), so only the rest is logged as an error.
 * SQLite's messages name tables and columns, never bound values. */
static int sql_err(sqlite3 *db, int rc, const char *op)
{
    int ext = db != NULL ? sqlite3_extended_errcode(db) : rc;

    switch (rc & 0xff) {
    case SQLITE_NOMEM:
        return AGW_ERR_NOMEM;
    case SQLITE_CONSTRAINT:
        if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) {
            LOG_DEBUG("store.conflict", "op=%s error=\"%s\"", op, sqlite3_errmsg(db));
            return AGW_ERR_CONFLICT;
        }
        if (ext == SQLITE_CONSTRAINT_FOREIGNKEY) {
            LOG_DEBUG("store.no_parent", "op=%s error=\"%s\"", op, sqlite3_errmsg(db));
            return AGW_ERR_NOT_FOUND;
        }
        break;
    default:
        break;
    }
    LOG_ERROR("store.sqlite", "op=%s rc=%d error=\"%s\"", op, ext,
              db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    return AGW_ERR_STORE;
}

/*
 * The statement cache. Each connection keeps up to ST_CACHE_SLOTS prepared statements, found by
 * their SQL text; stmt_done() resets one and clears its bindings instead of finalizing it. A
 * connection is used by one thread at a time (write_lock, the reader pool), so its slots need no
 * lock; the registry that maps a connection to its slots is a fixed array whose db field is the
 * only thing other threads read, atomically. Entries are never freed, so a reader scanning the
 * registry never touches freed memory. A connection that finds no free registry entry, or a
 * statement that finds no free slot, is simply prepared and finalized per call as before.
 */
#define ST_CACHE_SLOTS 64
#define ST_CACHE_CONNS 64

struct stmt_slot {
    uint64_t hash;
    char *sql;
    sqlite3_stmt *st;
    int busy; /* handed out by prep(), not yet back through stmt_done() */
};

struct stmt_cache {
    _Atomic(sqlite3 *) db;
    struct stmt_slot slot[ST_CACHE_SLOTS];
};

static struct stmt_cache stmt_caches[ST_CACHE_CONNS];
static pthread_mutex_t stmt_caches_lock = PTHREAD_MUTEX_INITIALIZER;

static struct stmt_cache *cache_of(const sqlite3 *db)
{
    for (size_t i = 0; db != NULL && i < ST_CACHE_CONNS; i++)
        if (atomic_load_explicit(&stmt_caches[i].db, memory_order_acquire) == db)
            return &stmt_caches[i];
    return NULL;
}

static void cache_attach(sqlite3 *db)
{
    pthread_mutex_lock(&stmt_caches_lock);
    for (size_t i = 0; i < ST_CACHE_CONNS; i++) {
        if (atomic_load_explicit(&stmt_caches[i].db, memory_order_relaxed) == NULL) {
            memset(stmt_caches[i].slot, 0, sizeof(stmt_caches[i].slot));
            atomic_store_explicit(&stmt_caches[i].db, db, memory_order_release);
            break;
        }
    }
    pthread_mutex_unlock(&stmt_caches_lock);
}

/* Finalizes the connection's cached statements and closes it. NULL is fine. */
static void conn_close(sqlite3 *db)
{
    struct stmt_cache *c = cache_of(db);

    if (c != NULL) {
        for (size_t i = 0; i < ST_CACHE_SLOTS; i++) {
            sqlite3_finalize(c->slot[i].st);
            free(c->slot[i].sql);
        }
        memset(c->slot, 0, sizeof(c->slot));
        pthread_mutex_lock(&stmt_caches_lock);
        atomic_store_explicit(&c->db, NULL, memory_order_release);
        pthread_mutex_unlock(&stmt_caches_lock);
    }
    sqlite3_close(db);
}

static uint64_t sql_hash(const char *sql)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (const unsigned char *p = (const unsigned char *)sql; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static int prep(sqlite3 *db, const char *sql, sqlite3_stmt **st, const char *op)
{
    struct stmt_cache *c = cache_of(db);
    struct stmt_slot *free_slot = NULL;
    uint64_t h = sql_hash(sql);
    int rc;

    for (size_t i = 0; c != NULL && i < ST_CACHE_SLOTS; i++) {
        struct stmt_slot *sl = &c->slot[i];

        if (sl->st == NULL) {
            if (free_slot == NULL)
                free_slot = sl;
        } else if (!sl->busy && sl->hash == h && strcmp(sl->sql, sql) == 0) {
            sl->busy = 1;
            *st = sl->st;
            return 0;
        }
    }
    rc = sqlite3_prepare_v3(db, sql, -1, free_slot != NULL ? SQLITE_PREPARE_PERSISTENT : 0, st,
                            NULL);
    if (rc != SQLITE_OK) {
        *st = NULL;
        return sql_err(db, rc, op);
    }
    if (free_slot != NULL && (free_slot->sql = strdup(sql)) != NULL) {
        free_slot->hash = h;
        free_slot->st = *st;
        free_slot->busy = 1;
    }
    return 0;
}

/* The end of a statement from prep(): a cached one is reset for the next call (which also ends
 * any read it holds open), any other finalized. NULL is fine. */
static void stmt_done(sqlite3_stmt *st)
{
    struct stmt_cache *c = st != NULL ? cache_of(sqlite3_db_handle(st)) : NULL;

    for (size_t i = 0; c != NULL && i < ST_CACHE_SLOTS; i++) {
        if (c->slot[i].st == st) {
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            c->slot[i].busy = 0;
            return;
        }
    }
    sqlite3_finalize(st);
}

/*
 * Binds parameters 1.. from fmt, one letter each:
 *   t  const char *            text; NULL binds NULL
 *   e  const char *            text; NULL or "" binds NULL (optional foreign keys)
 *   i  int64_t                 integer
 *   b  const unsigned char *, size_t   blob
 * Values are bound SQLITE_STATIC: they must outlive the statement's use, which every caller ends
 * with stmt_done() (clearing the bindings) before returning.
 */
static int bindv(sqlite3 *db, sqlite3_stmt *st, const char *op, const char *fmt, ...)
{
    va_list ap;
    int i = 1, rc = SQLITE_OK;

    va_start(ap, fmt);
    for (const char *f = fmt; *f != '\0' && rc == SQLITE_OK; f++, i++) {
        const char *t;
        const unsigned char *b;
        size_t len;

        switch (*f) {
        case 't':
        case 'e':
            t = va_arg(ap, const char *);
            if (t == NULL || (*f == 'e' && t[0] == '\0'))
                rc = sqlite3_bind_null(st, i);
            else
                rc = sqlite3_bind_text(st, i, t, -1, SQLITE_STATIC);
            break;
        case 'i':
            rc = sqlite3_bind_int64(st, i, (sqlite3_int64)va_arg(ap, int64_t));
            break;
        case 'b':
            b = va_arg(ap, const unsigned char *);
            len = va_arg(ap, size_t);
            rc = sqlite3_bind_blob64(st, i, b, (sqlite3_uint64)len, SQLITE_STATIC);
            break;
        default:
            rc = SQLITE_MISUSE;
            break;
        }
    }
    va_end(ap);
    return rc == SQLITE_OK ? 0 : sql_err(db, rc, op);
}

/* Steps a statement that returns no rows (or whose rows we ignore). */
static int step_done(sqlite3 *db, sqlite3_stmt *st, const char *op)
{
    int rc = sqlite3_step(st);

    while (rc == SQLITE_ROW)
        rc = sqlite3_step(st);
    return rc == SQLITE_DONE ? 0 : sql_err(db, rc, op);
}

/* For fixed SQL without values: pragmas, BEGIN/COMMIT, migrations. */
static int exec_sql(sqlite3 *db, const char *sql, const char *op)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);

    return rc == SQLITE_OK ? 0 : sql_err(db, rc, op);
}

/* One fixed statement without values, through the statement cache. */
static int run_fixed(sqlite3 *db, const char *sql, const char *op)
{
    sqlite3_stmt *st = NULL;
    int err = prep(db, sql, &st, op);

    if (err == 0)
        err = step_done(db, st, op);
    stmt_done(st);
    return err;
}

static int tx_begin(sqlite3 *db, const char *op)
{
    return run_fixed(db, "BEGIN IMMEDIATE", op);
}

static int tx_commit(sqlite3 *db, const char *op)
{
    return run_fixed(db, "COMMIT", op);
}

/* Safe to call whether or not a transaction is open (a failed COMMIT may leave one open). */
static void tx_rollback(sqlite3 *db)
{
    if (sqlite3_get_autocommit(db) == 0)
        (void)run_fixed(db, "ROLLBACK", "rollback");
}

/* Copies a text column into a fixed field; NULL reads as "". */
static int col_fixed(sqlite3_stmt *st, int i, char *dst, size_t size)
{
    const unsigned char *t;
    int n;

    dst[0] = '\0';
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return 0;
    t = sqlite3_column_text(st, i);
    if (t == NULL)
        return AGW_ERR_NOMEM;
    n = sqlite3_column_bytes(st, i);
    if (n < 0 || (size_t)n >= size) {
        LOG_ERROR("store.field_too_long", "column=%s max=%zu", sqlite3_column_name(st, i),
                  size - 1);
        return AGW_ERR_STORE;
    }
    memcpy(dst, t, (size_t)n);
    dst[n] = '\0';
    return 0;
}

/* Copies a text column into a new string; NULL stays NULL. */
static int col_dup(sqlite3_stmt *st, int i, char **out)
{
    const unsigned char *t;
    int n;

    *out = NULL;
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return 0;
    t = sqlite3_column_text(st, i);
    n = sqlite3_column_bytes(st, i);
    if (t == NULL || n < 0)
        return AGW_ERR_NOMEM;
    *out = malloc((size_t)n + 1);
    if (*out == NULL)
        return AGW_ERR_NOMEM;
    memcpy(*out, t, (size_t)n);
    (*out)[n] = '\0';
    return 0;
}

static int64_t col_i64(sqlite3_stmt *st, int i)
{
    return (int64_t)sqlite3_column_int64(st, i);
}

/* ---------------------------------------------------------------- connections */

static void batch_flush(struct sq_store *q);

/* The write connection, exclusively. A batch transaction left open by wb_end() for the threads
 * queued here is committed first, so what follows runs and commits on its own as before. */
/* Takes write_lock, counted in wr_waiting while waiting for it (wb_end() looks). */
static void wr_acquire(struct sq_store *q)
{
    atomic_fetch_add(&q->wr_waiting, 1);
    pthread_mutex_lock(&q->write_lock);
    atomic_fetch_sub(&q->wr_waiting, 1);
}

static sqlite3 *wr_lock(struct st_store *s)
{
    wr_acquire(sq(s));
    batch_flush(sq(s));
    return sq(s)->wdb;
}

static void wr_unlock(struct st_store *s)
{
    pthread_mutex_unlock(&sq(s)->write_lock);
}

/*
 * Group commit, for the writes of the issuance path (st_order_create, st_order_transition,
 * st_order_start_processing, st_cert_issue) and of enrolment (st_account_create). With
 * synchronous=FULL every COMMIT is a WAL fsync with write_lock held, so under concurrency the
 * fsyncs queue one behind the other. Here an operation runs inside SAVEPOINT b of
 * a shared "batch" transaction; when it is done and other writers are already queued on
 * write_lock, it leaves the transaction open for them and waits; the last writer of a burst (or
 * the ST_BATCH_MAX-th) commits once, with one fsync, for everyone in the batch. No operation
 * returns before the commit that contains it is on disk, so the durability of each call is that
 * of its own FULL commit; a failed batch commit fails every operation in it. An operation that
 * fails rolls back only its savepoint. A thread alone commits at once, as before.
 */
static void batch_notify(struct sq_store *q, int err)
{
    pthread_mutex_lock(&q->gc_lock);
    for (struct wb_member *m = q->batch; m != NULL; m = m->next) {
        m->err = err;
        m->done = 1;
    }
    pthread_cond_broadcast(&q->gc_cond);
    pthread_mutex_unlock(&q->gc_lock);
    q->batch = NULL;
    q->batch_n = 0;
}

/* Commits the open batch transaction, if any, and tells its members. write_lock held. */
static void batch_flush(struct sq_store *q)
{
    int err;

    if (sqlite3_get_autocommit(q->wdb)) {
        if (q->batch != NULL) /* SQLite rolled the transaction back itself (I/O error, full) */
            batch_notify(q, AGW_ERR_STORE);
        return;
    }
    err = q->batch != NULL ? tx_commit(q->wdb, "group_commit") : AGW_ERR_STORE;
    if (err != 0)
        tx_rollback(q->wdb);
    batch_notify(q, err);
}

/* Starts an operation of the batch: the write connection, inside SAVEPOINT b. NULL and *err
 * set when no transaction could be started (write_lock is then released). */
static sqlite3 *wb_begin(struct st_store *s, const char *op, int *err)
{
    struct sq_store *q = sq(s);
    sqlite3 *db;

    wr_acquire(q);
    db = q->wdb;
    *err = sqlite3_get_autocommit(db) ? tx_begin(db, op) : 0;
    if (*err == 0)
        *err = run_fixed(db, "SAVEPOINT b", op);
    if (*err == 0)
        return db;
    if (q->batch != NULL)
        batch_flush(q); /* the others' work is done: commit it, nobody else may be coming */
    else
        tx_rollback(db);
    pthread_mutex_unlock(&q->write_lock);
    return NULL;
}

/* Ends an operation from wb_begin(): err 0 keeps its work, else only its work is rolled back.
 * Returns once its work is committed (0) or known lost (an error); releases write_lock. */
static int wb_end(struct st_store *s, int err)
{
    struct sq_store *q = sq(s);
    struct wb_member m = {NULL, 0, 0};
    sqlite3 *db = q->wdb;

    if (err == 0)
        err = run_fixed(db, "RELEASE b", "group_commit");
    if (err != 0 && !sqlite3_get_autocommit(db)) {
        (void)run_fixed(db, "ROLLBACK TO b", "group_commit");
        (void)run_fixed(db, "RELEASE b", "group_commit");
    }
    if (err == 0) {
        m.next = q->batch;
        q->batch = &m;
        q->batch_n++;
    }
    if (q->batch == NULL || sqlite3_get_autocommit(db) ||
        atomic_load(&q->wr_waiting) == 0 || q->batch_n >= ST_BATCH_MAX) {
        if (q->batch == NULL)
            tx_rollback(db); /* an empty transaction: this operation failed, nobody else is in it */
        else
            batch_flush(q);
        pthread_mutex_unlock(&q->write_lock);
        return err != 0 ? err : m.err;
    }
    pthread_mutex_unlock(&q->write_lock); /* a queued writer commits for us */
    if (err != 0)
        return err;
    pthread_mutex_lock(&q->gc_lock);
    while (!m.done)
        pthread_cond_wait(&q->gc_cond, &q->gc_lock);
    pthread_mutex_unlock(&q->gc_lock);
    return m.err;
}

/* Takes a free read connection, waiting for one if all are in use. */
static sqlite3 *rd_get(struct st_store *s, size_t *slot)
{
    pthread_mutex_lock(&sq(s)->pool_lock);
    for (;;) {
        for (size_t i = 0; i < ST_N_READERS; i++) {
            if (!sq(s)->reader_busy[i]) {
                sq(s)->reader_busy[i] = 1;
                pthread_mutex_unlock(&sq(s)->pool_lock);
                *slot = i;
                return sq(s)->readers[i];
            }
        }
        pthread_cond_wait(&sq(s)->pool_cond, &sq(s)->pool_lock);
    }
}

static void rd_put(struct st_store *s, size_t slot)
{
    pthread_mutex_lock(&sq(s)->pool_lock);
    sq(s)->reader_busy[slot] = 0;
    pthread_cond_signal(&sq(s)->pool_cond);
    pthread_mutex_unlock(&sq(s)->pool_lock);
}

static int conn_open(const char *path, int writer, sqlite3 **out)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc, err;

    *out = NULL;
    rc = sqlite3_open_v2(path, &db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW, NULL);
    if (rc != SQLITE_OK) {
        err = sql_err(db, rc, "open");
        goto fail;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, ST_BUSY_TIMEOUT_MS);
    if (!writer) {
        /* Readers never write: a bug that tries fails loudly instead of bypassing write_lock. */
        err = exec_sql(db, "PRAGMA query_only=ON", "open_reader");
        if (err != 0)
            goto fail;
        cache_attach(db);
        *out = db;
        return 0;
    }
    /* journal_mode answers with the mode in effect; anything but wal (e.g. a read-only
     * directory, or a network file system) would silently lose the reader/writer concurrency. */
    err = prep(db, "PRAGMA journal_mode=WAL", &st, "open_wal");
    if (err != 0)
        goto fail;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        err = sql_err(db, rc, "open_wal");
        goto fail;
    }
    if (sqlite3_column_text(st, 0) == NULL ||
        strcmp((const char *)sqlite3_column_text(st, 0), "wal") != 0) {
        LOG_ERROR("store.open", "error=wal_refused path=%s", path);
        err = AGW_ERR_STORE;
        goto fail;
    }
    stmt_done(st);
    st = NULL;
    /* temp_store=MEMORY: the statement journals of statements inside a transaction (the group
     * commit's savepoints) stay in memory instead of a file created and unlinked in /var/tmp
     * each time; they are never needed after a crash, so durability is unchanged. */
    err = exec_sql(db, "PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL; PRAGMA temp_store=MEMORY",
                   "open_pragmas");
    if (err != 0)
        goto fail;
    cache_attach(db);
    *out = db;
    return 0;
fail:
    stmt_done(st);
    sqlite3_close(db); /* both accept NULL; db is not in the cache yet */
    return err;
}

static int read_version(sqlite3 *db, int *version)
{
    sqlite3_stmt *st = NULL;
    int rc, err;

    err = prep(db, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &st, "version");
    if (err != 0)
        return err;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        sqlite3_int64 v = sqlite3_column_int64(st, 0);

        if (v < 0 || v > INT_MAX) {
            err = AGW_ERR_STORE;
        } else {
            *version = (int)v;
            err = 0;
        }
    } else {
        err = sql_err(db, rc, "version");
    }
    stmt_done(st);
    return err;
}

static int migrate(sqlite3 *db)
{
    int err, version = 0;

    err = exec_sql(db,
                   "CREATE TABLE IF NOT EXISTS schema_migrations ("
                   "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
                   "migrate");
    if (err != 0)
        return err;
    /* The common case, an up-to-date database, takes no write lock at all. */
    err = read_version(db, &version);
    if (err != 0 || version == ST_SCHEMA_VERSION)
        return err;
    for (;;) {
        sqlite3_stmt *st = NULL;

        err = tx_begin(db, "migrate");
        if (err != 0)
            return err;
        err = read_version(db, &version); /* again, inside the write lock: another process */
        if (err != 0)
            goto fail;
        if (version > ST_SCHEMA_VERSION) {
            LOG_ERROR("store.schema_too_new", "version=%d known=%d", version, ST_SCHEMA_VERSION);
            err = AGW_ERR_STORE;
            goto fail;
        }
        if (version == ST_SCHEMA_VERSION) {
            tx_rollback(db); /* nothing to do: an up-to-date database is not written */
            return 0;
        }
        err = exec_sql(db, migrations[version], "migrate");
        if (err != 0)
            goto fail;
        err = prep(db, "INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)", &st,
                   "migrate");
        if (err == 0)
            err = bindv(db, st, "migrate", "ii", (int64_t)version + 1, (int64_t)time(NULL));
        if (err == 0)
            err = step_done(db, st, "migrate");
        stmt_done(st);
        if (err == 0)
            err = tx_commit(db, "migrate");
        if (err != 0)
            goto fail;
        LOG_INFO("store.migrated", "version=%d", version + 1);
    }
fail:
    tx_rollback(db);
    return err;
}

static void sq_close(struct st_store *s);

/* The store's mutexes and condition variables; on failure none is left initialised. */
static int locks_init(struct sq_store *s)
{
    if (pthread_mutex_init(&s->write_lock, NULL) != 0)
        return -1;
    if (pthread_mutex_init(&s->pool_lock, NULL) != 0)
        goto write_lock;
    if (pthread_cond_init(&s->pool_cond, NULL) != 0)
        goto pool_lock;
    if (pthread_mutex_init(&s->gc_lock, NULL) != 0)
        goto pool_cond;
    if (pthread_cond_init(&s->gc_cond, NULL) != 0)
        goto gc_lock;
    return 0;
gc_lock:
    pthread_mutex_destroy(&s->gc_lock);
pool_cond:
    pthread_cond_destroy(&s->pool_cond);
pool_lock:
    pthread_mutex_destroy(&s->pool_lock);
write_lock:
    pthread_mutex_destroy(&s->write_lock);
    return -1;
}

/* cfg->path: the database file, created 0600 if absent. */
static int sq_open(const struct st_config *cfg, const unsigned char seal_key[32],
                   struct st_store **out)
{
    struct sq_store *s = NULL;
    const char *path = cfg != NULL ? cfg->path : NULL;
    struct stat sb;
    int fd, err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (path == NULL || path[0] == '\0' || seal_key == NULL)
        return AGW_ERR_BAD_INPUT;
    if (sqlite3_threadsafe() == 0) { /* NOMUTEX connections on several threads need it */
        LOG_ERROR("store.open", "error=sqlite_built_without_threads");
        return AGW_ERR_STORE;
    }
    /* Create the file ourselves so it is 0600 whatever the umask is; SQLite gives the -wal and
     * -shm files the main file's permissions. */
    fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        LOG_ERROR("store.open", "path=%s errno=%s", path, strerror(errno));
        return AGW_ERR_IO;
    }
    if (fstat(fd, &sb) == 0 && (sb.st_mode & (S_IRWXG | S_IRWXO)) != 0)
        LOG_WARN("store.open", "path=%s mode=%04o warning=group_or_other_access", path,
                 (unsigned)(sb.st_mode & 07777));
    close(fd);

    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return AGW_ERR_NOMEM;
    if (locks_init(s) != 0) {
        free(s);
        return AGW_ERR_INTERNAL;
    }
    atomic_init(&s->wr_waiting, 0);
    s->base.ops = &st_sqlite_ops;
    s->locks_ready = 1;
    memcpy(s->seal_key, seal_key, ST_SEAL_KEY_LEN);

    err = conn_open(path, 1, &s->wdb);
    if (err != 0)
        goto fail;
    err = migrate(s->wdb);
    if (err != 0)
        goto fail;
    for (size_t i = 0; i < ST_N_READERS; i++) {
        err = conn_open(path, 0, &s->readers[i]);
        if (err != 0)
            goto fail;
    }
    *out = &s->base;
    return 0;
fail:
    sq_close(&s->base);
    return err;
}

static void sq_close(struct st_store *st)
{
    struct sq_store *s = sq(st);

    if (s == NULL)
        return;
    for (size_t i = 0; i < ST_N_READERS; i++)
        conn_close(s->readers[i]);
    conn_close(s->wdb); /* last: the final close checkpoints the WAL */
    if (s->locks_ready) {
        pthread_cond_destroy(&s->gc_cond);
        pthread_mutex_destroy(&s->gc_lock);
        pthread_cond_destroy(&s->pool_cond);
        pthread_mutex_destroy(&s->pool_lock);
        pthread_mutex_destroy(&s->write_lock);
    }
    OPENSSL_cleanse(s->seal_key, sizeof(s->seal_key));
    free(s);
}

static int sq_schema_version(struct st_store *s, int *version)
{
    size_t slot;
    sqlite3 *db;
    int err;

    db = rd_get(s, &slot);
    err = read_version(db, version);
    rd_put(s, slot);
    return err;
}

/*
 * Generic read: the statement is prepared and bound; each row goes through fn into a new array
 * element of elem_size bytes (zeroed first). On failure every filled element is released with
 * clear (may be NULL) and nothing is returned.
 */
typedef int (*row_fn)(sqlite3_stmt *st, void *out);

static int collect(sqlite3 *db, sqlite3_stmt *st, const char *op, size_t elem_size, row_fn fn,
                   void (*clear)(void *), void **out, size_t *n)
{
    unsigned char *arr = NULL;
    size_t cap = 0, cnt = 0;
    int rc, err = 0;

    *out = NULL;
    *n = 0;
    for (;;) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            break;
        if (rc != SQLITE_ROW) {
            err = sql_err(db, rc, op);
            goto fail;
        }
        if (cnt == cap) {
            size_t ncap = cap == 0 ? 8 : cap * 2;
            unsigned char *narr;

            if (ncap > SIZE_MAX / elem_size) {
                err = AGW_ERR_NOMEM;
                goto fail;
            }
            narr = realloc(arr, ncap * elem_size);
            if (narr == NULL) {
                err = AGW_ERR_NOMEM;
                goto fail;
            }
            arr = narr;
            cap = ncap;
        }
        memset(arr + cnt * elem_size, 0, elem_size);
        err = fn(st, arr + cnt * elem_size);
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

/* Runs a prepared, bound statement expected to give at most one row, through fn. */
static int fetch_one(sqlite3 *db, sqlite3_stmt *st, const char *op, row_fn fn, void *out)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_DONE)
        return AGW_ERR_NOT_FOUND;
    if (rc != SQLITE_ROW)
        return sql_err(db, rc, op);
    return fn(st, out);
}

/* Reads one row by a single text key with a pooled reader. */
static int get_by_key(struct st_store *s, const char *op, const char *sql, const char *key,
                      row_fn fn, void *out)
{
    sqlite3_stmt *st = NULL;
    size_t slot;
    sqlite3 *db = rd_get(s, &slot);
    int err;

    err = prep(db, sql, &st, op);
    if (err == 0)
        err = bindv(db, st, op, "t", key);
    if (err == 0)
        err = fetch_one(db, st, op, fn, out);
    stmt_done(st);
    rd_put(s, slot);
    return err;
}

/* *exists = whether sql (one text parameter) returns a row. Caller holds the connection. */
static int row_exists(sqlite3 *db, const char *sql, const char *key, const char *op, int *exists)
{
    sqlite3_stmt *st = NULL;
    int rc, err;

    *exists = 0;
    err = prep(db, sql, &st, op);
    if (err == 0)
        err = bindv(db, st, op, "t", key);
    if (err == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *exists = 1;
        else if (rc != SQLITE_DONE)
            err = sql_err(db, rc, op);
    }
    stmt_done(st);
    return err;
}

/*
 * Runs a conditional UPDATE (bound by the caller) with the write lock held: 0 if exactly one row
 * changed; else AGW_ERR_NOT_FOUND when exists_sql finds no row for key, AGW_ERR_CONFLICT when it
 * does (the row was not in the expected state).
 */
static int cond_update(sqlite3 *db, sqlite3_stmt *st, const char *op, const char *exists_sql,
                       const char *key)
{
    int err, exists;

    err = step_done(db, st, op);
    if (err != 0)
        return err;
    if (sqlite3_changes(db) == 1)
        return 0;
    err = row_exists(db, exists_sql, key, op, &exists);
    if (err != 0)
        return err;
    return exists ? AGW_ERR_CONFLICT : AGW_ERR_NOT_FOUND;
}

/* ---------------------------------------------------------------- EAB keys */

#define EAB_COLS "kid, class_name, created, revoked, n_accounts"

static int eab_row(sqlite3_stmt *st, void *out)
{
    struct st_eab *e = out;
    int err;

    err = col_fixed(st, 0, e->kid, sizeof(e->kid));
    if (err == 0)
        err = col_fixed(st, 1, e->class_name, sizeof(e->class_name));
    e->created = col_i64(st, 2);
    e->revoked = col_i64(st, 3);
    e->n_accounts = col_i64(st, 4);
    return err;
}

static int sq_eab_create(struct st_store *s, const char *class_name, int64_t now,
                         struct st_eab *out, unsigned char hmac_out[32])
{
    unsigned char hmac[32], sealed[32 + ST_SEAL_OVERHEAD];
    char kid[ST_KID_LEN], id[ST_ID_LEN];
    size_t sealed_len;
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    err = st_random_id(id, sizeof(id));
    if (err != 0)
        return err;
    snprintf(kid, sizeof(kid), "kid-%s", id); /* 26 characters: fits */
    if (RAND_bytes(hmac, sizeof(hmac)) != 1) {
        LOG_ERROR("store.eab_create", "error=RAND_bytes");
        return AGW_ERR_INTERNAL;
    }
    err = st_seal(sq(s)->seal_key, kid, hmac, sizeof(hmac), sealed, sizeof(sealed), &sealed_len);
    if (err != 0)
        goto done;

    db = wr_lock(s);
    err =
        prep(db, "INSERT INTO eab_keys(kid, class_name, hmac_sealed, created) VALUES (?, ?, ?, ?)",
             &st, "eab_create");
    if (err == 0)
        err = bindv(db, st, "eab_create", "ttbi", kid, class_name, (const unsigned char *)sealed,
                    sealed_len, now);
    if (err == 0)
        err = step_done(db, st, "eab_create");
    stmt_done(st);
    wr_unlock(s);
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

static int sq_eab_get(struct st_store *s, const char *kid, struct st_eab *out, unsigned char *hmac,
                      size_t *hmac_len)
{
    char key[ST_KID_LEN];
    sqlite3_stmt *st = NULL;
    size_t slot;
    sqlite3 *db;
    int err;

    st_copy_str(key, sizeof(key), kid); /* kid may point into *out, which is cleared next */
    kid = key;
    memset(out, 0, sizeof(*out));
    *hmac_len = 0;
    db = rd_get(s, &slot);
    err = prep(db, "SELECT " EAB_COLS ", hmac_sealed FROM eab_keys WHERE kid = ?", &st, "eab_get");
    if (err == 0)
        err = bindv(db, st, "eab_get", "t", kid);
    if (err == 0)
        err = fetch_one(db, st, "eab_get", eab_row, out);
    if (err == 0) {
        /* the blob pointer is valid until the statement moves on: unseal before finalizing */
        const unsigned char *blob = sqlite3_column_blob(st, 5);
        int blob_len = sqlite3_column_bytes(st, 5);

        err = st_unseal(sq(s)->seal_key, out->kid, blob, blob_len > 0 ? (size_t)blob_len : 0, hmac,
                        ST_HMAC_MAX, hmac_len);
    }
    stmt_done(st);
    rd_put(s, slot);
    if (err != 0)
        memset(out, 0, sizeof(*out));
    return err;
}

static int sq_eab_list(struct st_store *s, struct st_eab **out, size_t *n)
{
    sqlite3_stmt *st = NULL;
    void *arr = NULL;
    size_t slot;
    sqlite3 *db;
    int err;

    *out = NULL;
    *n = 0;
    db = rd_get(s, &slot);
    err = prep(db, "SELECT " EAB_COLS " FROM eab_keys ORDER BY created, rowid", &st, "eab_list");
    if (err == 0)
        err = collect(db, st, "eab_list", sizeof(struct st_eab), eab_row, NULL, &arr, n);
    stmt_done(st);
    rd_put(s, slot);
    *out = arr;
    return err;
}

static int sq_eab_revoke(struct st_store *s, const char *kid, int64_t now)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    db = wr_lock(s);
    err = prep(db, "UPDATE eab_keys SET revoked = ? WHERE kid = ? AND revoked = 0", &st,
               "eab_revoke");
    if (err == 0)
        err = bindv(db, st, "eab_revoke", "it", now, kid);
    if (err == 0)
        err = cond_update(db, st, "eab_revoke", "SELECT 1 FROM eab_keys WHERE kid = ?", kid);
    stmt_done(st);
    wr_unlock(s);
    if (err == 0)
        LOG_INFO("store.eab_revoked", "kid=%s", kid);
    return err;
}

/* ---------------------------------------------------------------- accounts */

#define ACCOUNT_COLS "id, thumbprint, status, eab_kid, class_name, created, jwk_json, contact_json"

static int account_row(sqlite3_stmt *st, void *out)
{
    struct st_account *a = out;
    int err;

    err = col_fixed(st, 0, a->id, sizeof(a->id));
    if (err == 0)
        err = col_fixed(st, 1, a->thumbprint, sizeof(a->thumbprint));
    if (err == 0)
        err = col_fixed(st, 2, a->status, sizeof(a->status));
    if (err == 0)
        err = col_fixed(st, 3, a->eab_kid, sizeof(a->eab_kid));
    if (err == 0)
        err = col_fixed(st, 4, a->class_name, sizeof(a->class_name));
    a->created = col_i64(st, 5);
    if (err == 0)
        err = col_dup(st, 6, &a->jwk_json);
    if (err == 0)
        err = col_dup(st, 7, &a->contact_json);
    return err;
}


/* With the write lock held and no transaction open: who holds this thumbprint. */
static void account_holder(sqlite3 *db, const char *thumbprint, char existing_id[ST_ID_LEN])
{
    sqlite3_stmt *st = NULL;

    existing_id[0] = '\0';
    if (prep(db, "SELECT id FROM accounts WHERE thumbprint = ?", &st, "account_holder") == 0 &&
        bindv(db, st, "account_holder", "t", thumbprint) == 0 && sqlite3_step(st) == SQLITE_ROW)
        (void)col_fixed(st, 0, existing_id, ST_ID_LEN);
    stmt_done(st);
}

/*
 * Binding to an EAB key is part of the same transaction: the key must exist (AGW_ERR_NOT_FOUND)
 * and not be revoked (AGW_ERR_UNAUTHORIZED: header "no new bindings"), its n_accounts goes up by
 * one, and the account takes the key's class_name (copied back into a->class_name).
 * a->status "" means "valid"; a->contact_json NULL means "[]".
 */
static int sq_account_create(struct st_store *s, struct st_account *a, char existing_id[ST_ID_LEN])
{
    char id[ST_ID_LEN], class_name[ST_NAME_LEN];
    const char *status;
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    status = a->status[0] != '\0' ? a->status : "valid";
    st_copy_str(class_name, sizeof(class_name), a->class_name);
    err = st_random_id(id, sizeof(id));
    if (err != 0)
        return err;

    /* group commit: a burst of devices enrolling at once shares the fsyncs */
    db = wb_begin(s, "account_create", &err);
    if (db == NULL)
        return err;
    if (a->eab_kid[0] != '\0') {
        err = prep(db,
                   "UPDATE eab_keys SET n_accounts = n_accounts + 1 "
                   "WHERE kid = ? AND revoked = 0 AND (? = 0 OR n_accounts < ?) "
                   "RETURNING class_name",
                   &st, "account_create");
        if (err == 0)
            err = bindv(db, st, "account_create", "tii", a->eab_kid, a->eab_max_accounts,
                        a->eab_max_accounts);
        if (err == 0) {
            int rc = sqlite3_step(st);

            if (rc == SQLITE_ROW) {
                err = col_fixed(st, 0, class_name, sizeof(class_name));
                if (err == 0)
                    err = step_done(db, st, "account_create");
            } else if (rc == SQLITE_DONE) {
                int exists;

                err = row_exists(db, "SELECT 1 FROM eab_keys WHERE kid = ?", a->eab_kid,
                                 "account_create", &exists);
                if (err == 0)
                    err = exists ? AGW_ERR_UNAUTHORIZED : AGW_ERR_NOT_FOUND;
            } else {
                err = sql_err(db, rc, "account_create");
            }
        }
        stmt_done(st);
        st = NULL;
        if (err != 0)
            goto end;
    }
    err = prep(db, "INSERT INTO accounts(" ACCOUNT_COLS ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)", &st,
               "account_create");
    if (err == 0)
        err = bindv(db, st, "account_create", "tttetitt", id, a->thumbprint, status, a->eab_kid,
                    class_name, a->created, a->jwk_json,
                    a->contact_json != NULL ? a->contact_json : "[]");
    if (err == 0)
        err = step_done(db, st, "account_create");
    stmt_done(st);
    /* the failed INSERT changed nothing; the holder is read before wb_end() rolls back */
    if (err == AGW_ERR_CONFLICT && existing_id != NULL)
        account_holder(db, a->thumbprint, existing_id);
end:
    err = wb_end(s, err); /* 0: committed (synchronous=FULL), maybe with other operations */
    if (err == 0) {
        st_copy_str(a->id, sizeof(a->id), id);
        st_copy_str(a->status, sizeof(a->status), status);
        st_copy_str(a->class_name, sizeof(a->class_name), class_name);
    }
    return err;
}

static int sq_account_get(struct st_store *s, const char *id, struct st_account *out)
{
    return get_by_key(s, "account_get", "SELECT " ACCOUNT_COLS " FROM accounts WHERE id = ?", id,
                      account_row, out);
}

static int sq_account_by_thumbprint(struct st_store *s, const char *thumbprint,
                                    struct st_account *out)
{
    return get_by_key(s, "account_by_thumbprint",
                      "SELECT " ACCOUNT_COLS " FROM accounts WHERE thumbprint = ?", thumbprint,
                      account_row, out);
}

static int sq_account_set_contact(struct st_store *s, const char *id, const char *contact_json)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    db = wr_lock(s);
    err = prep(db, "UPDATE accounts SET contact_json = ? WHERE id = ?", &st, "account_contact");
    if (err == 0)
        err = bindv(db, st, "account_contact", "tt", contact_json, id);
    if (err == 0)
        err = step_done(db, st, "account_contact");
    if (err == 0 && sqlite3_changes(db) != 1)
        err = AGW_ERR_NOT_FOUND;
    stmt_done(st);
    wr_unlock(s);
    return err;
}

static int sq_account_deactivate(struct st_store *s, const char *id)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    db = wr_lock(s);
    err = prep(db, "UPDATE accounts SET status = 'deactivated' WHERE id = ? AND status = 'valid'",
               &st, "account_deactivate");
    if (err == 0)
        err = bindv(db, st, "account_deactivate", "t", id);
    if (err == 0)
        err = cond_update(db, st, "account_deactivate", "SELECT 1 FROM accounts WHERE id = ?", id);
    stmt_done(st);
    wr_unlock(s);
    return err;
}

static int sq_account_set_key(struct st_store *s, const char *id, const char *thumbprint,
                              const char *jwk_json)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    db = wr_lock(s);
    err = prep(db, "UPDATE accounts SET thumbprint = ?, jwk_json = ? WHERE id = ?", &st,
               "account_set_key");
    if (err == 0)
        err = bindv(db, st, "account_set_key", "ttt", thumbprint, jwk_json, id);
    if (err == 0)
        err = step_done(db, st, "account_set_key");
    if (err == 0 && sqlite3_changes(db) != 1)
        err = AGW_ERR_NOT_FOUND;
    stmt_done(st);
    wr_unlock(s);
    return err;
}

/* ---------------------------------------------------------------- orders */

#define ORDER_COLS                                                                                 \
    "id, account_id, status, class_name, profile, cert_serial, replaces, created, expires, "       \
    "not_before, not_after, identifiers_json, error_json"

static int order_row(sqlite3_stmt *st, void *out)
{
    struct st_order *o = out;
    int err;

    err = col_fixed(st, 0, o->id, sizeof(o->id));
    if (err == 0)
        err = col_fixed(st, 1, o->account_id, sizeof(o->account_id));
    if (err == 0)
        err = col_fixed(st, 2, o->status, sizeof(o->status));
    if (err == 0)
        err = col_fixed(st, 3, o->class_name, sizeof(o->class_name));
    if (err == 0)
        err = col_fixed(st, 4, o->profile, sizeof(o->profile));
    if (err == 0)
        err = col_fixed(st, 5, o->cert_serial, sizeof(o->cert_serial));
    if (err == 0)
        err = col_fixed(st, 6, o->replaces, sizeof(o->replaces));
    o->created = col_i64(st, 7);
    o->expires = col_i64(st, 8);
    o->not_before = col_i64(st, 9);
    o->not_after = col_i64(st, 10);
    if (err == 0)
        err = col_dup(st, 11, &o->identifiers_json);
    if (err == 0)
        err = col_dup(st, 12, &o->error_json);
    return err;
}

static const char *or_default(const char *v, const char *dflt)
{
    return v[0] != '\0' ? v : dflt;
}

/*
 * Empty status fields default to "pending"; an authorization's empty account_id takes the
 * order's. Everything is checked before the transaction starts, so bad input writes nothing.
 */
/* One count inside the caller's write transaction. */
static int sq_count_in_tx(sqlite3 *db, const char *sql, const char *t, int64_t i, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    int err = prep(db, sql, &st, "order_limits"), rc;

    *n = 0;
    if (err == 0)
        err = bindv(db, st, "order_limits", "ti", t, i);
    if (err == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *n = col_i64(st, 0);
        else
            err = sql_err(db, rc, "order_limits");
    }
    stmt_done(st);
    return err;
}

/* The quota limits of st_order_create, counted under its write lock. */
static int sq_order_limits(sqlite3 *db, const struct st_order *o)
{
    int64_t n = 0;
    int err = 0;

    if (o->max_pending > 0) {
        err = sq_count_in_tx(db,
                             "SELECT count(*) FROM orders WHERE account_id = ? AND created >= ? "
                             "AND status IN ('pending', 'ready')",
                             o->account_id, 0, &n);
        if (err == 0 && n >= o->max_pending)
            err = AGW_ERR_RATE_LIMITED;
    }
    if (err == 0 && o->max_per_eab_hour > 0 && o->eab_kid[0] != '\0') {
        err = sq_count_in_tx(db,
                             "SELECT count(*) FROM orders o JOIN accounts a ON a.id = o.account_id "
                             "WHERE a.eab_kid = ? AND o.created >= ?",
                             o->eab_kid, o->created - 3600, &n);
        if (err == 0 && n >= o->max_per_eab_hour)
            err = AGW_ERR_RATE_LIMITED;
    }
    return err;
}

static int sq_order_create(struct st_store *s, struct st_order *o, struct st_authz *authz,
                           size_t n_authz, struct st_new_challenge *chal, size_t n_chal)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
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
        struct st_challenge *c = &chal[j].c;

        err = st_random_id(c->id, sizeof(c->id));
        st_copy_str(c->authz_id, sizeof(c->authz_id), authz[chal[j].authz_index].id);
        st_copy_str(c->status, sizeof(c->status), or_default(c->status, "pending"));
    }
    if (err != 0)
        return err;
    st_copy_str(o->status, sizeof(o->status), or_default(o->status, "pending"));

    /* BEGIN IMMEDIATE (wb_begin): writers in every process take turns */
    db = wb_begin(s, "order_create", &err);
    if (db == NULL)
        return err;
    err = sq_order_limits(db, o);
    if (err != 0)
        goto rollback;
    err = prep(db, "INSERT INTO orders(" ORDER_COLS ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", &st,
               "order_create");
    if (err == 0)
        err = bindv(db, st, "order_create", "tttttttiiiitt", o->id, o->account_id, o->status,
                    o->class_name, o->profile, o->cert_serial, o->replaces, o->created, o->expires,
                    o->not_before, o->not_after, o->identifiers_json, o->error_json);
    if (err == 0)
        err = step_done(db, st, "order_create");
    stmt_done(st);
    st = NULL;
    if (err != 0)
        goto rollback;

    err = prep(db,
               "INSERT INTO authorizations(id, order_id, account_id, id_type, id_value, status, "
               "expires, wildcard) VALUES (?,?,?,?,?,?,?,?)",
               &st, "order_create");
    for (size_t i = 0; err == 0 && i < n_authz; i++) {
        const struct st_authz *a = &authz[i];

        err = bindv(db, st, "order_create", "ttttttii", a->id, a->order_id, a->account_id,
                    a->id_type, a->id_value, a->status, a->expires, (int64_t)(a->wildcard != 0));
        if (err == 0)
            err = step_done(db, st, "order_create");
        sqlite3_reset(st);
    }
    stmt_done(st);
    st = NULL;
    if (err != 0)
        goto rollback;

    err = prep(db,
               "INSERT INTO challenges(id, authz_id, type, token, status, validated, error_json) "
               "VALUES (?,?,?,?,?,?,?)",
               &st, "order_create");
    for (size_t j = 0; err == 0 && j < n_chal; j++) {
        const struct st_challenge *c = &chal[j].c;

        err = bindv(db, st, "order_create", "tttttit", c->id, c->authz_id, c->type, c->token,
                    c->status, c->validated, c->error_json);
        if (err == 0)
            err = step_done(db, st, "order_create");
        sqlite3_reset(st);
    }
    stmt_done(st);
    if (err != 0)
        goto rollback;
rollback:
    return wb_end(s, err); /* err 0: committed, possibly together with other operations */
}

static int sq_order_get(struct st_store *s, const char *id, struct st_order *out)
{
    return get_by_key(s, "order_get", "SELECT " ORDER_COLS " FROM orders WHERE id = ?", id,
                      order_row, out);
}

static int id_row(sqlite3_stmt *st, void *out)
{
    return col_fixed(st, 0, out, ST_ID_LEN);
}

/* max 0 means no cap, as in st_cert_filter. */
static int sq_order_ids_by_account(struct st_store *s, const char *account_id, size_t max,
                                   char (**ids)[ST_ID_LEN], size_t *n)
{
    sqlite3_stmt *st = NULL;
    void *arr = NULL;
    size_t slot;
    sqlite3 *db;
    int err;

    if (ids == NULL || n == NULL)
        return AGW_ERR_BAD_INPUT;
    *ids = NULL;
    *n = 0;
    if (s == NULL || !st_given(account_id, ST_ID_LEN))
        return AGW_ERR_BAD_INPUT;
    db = rd_get(s, &slot);
    err = prep(db,
               "SELECT id FROM orders WHERE account_id = ? ORDER BY created DESC, rowid DESC "
               "LIMIT ?",
               &st, "order_ids");
    if (err == 0)
        err = bindv(db, st, "order_ids", "ti", account_id,
                    max == 0 || max > INT64_MAX ? (int64_t)-1 : (int64_t)max);
    if (err == 0)
        err = collect(db, st, "order_ids", ST_ID_LEN, id_row, NULL, &arr, n);
    stmt_done(st);
    rd_put(s, slot);
    *ids = arr;
    return err;
}

static int sq_order_transition(struct st_store *s, const char *id, const char *from, const char *to,
                               const char *error_json)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    db = wb_begin(s, "order_transition", &err);
    if (db == NULL)
        return err;
    /* error_json NULL keeps what is there */
    err = prep(db,
               "UPDATE orders SET status = ?, error_json = COALESCE(?, error_json), "
               "updated = CAST(strftime('%s', 'now') AS INTEGER) WHERE id = ? AND status = ?",
               &st, "order_transition");
    if (err == 0)
        err = bindv(db, st, "order_transition", "tttt", to, error_json, id, from);
    if (err == 0)
        err = cond_update(db, st, "order_transition", "SELECT 1 FROM orders WHERE id = ?", id);
    stmt_done(st);
    return wb_end(s, err);
}

/* status NULL counts orders in any state. */
static int sq_order_count(struct st_store *s, const char *account_id, const char *status,
                          int64_t since, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    size_t slot;
    sqlite3 *db;
    int rc, err;

    *n = 0;
    db = rd_get(s, &slot);
    err = prep(db,
               status != NULL ? "SELECT count(*) FROM orders WHERE account_id = ? AND created >= ? "
                                "AND status = ?"
                              : "SELECT count(*) FROM orders WHERE account_id = ? AND created >= ?",
               &st, "order_count");
    if (err == 0)
        err = status != NULL ? bindv(db, st, "order_count", "tit", account_id, since, status)
                             : bindv(db, st, "order_count", "ti", account_id, since);
    if (err == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *n = col_i64(st, 0);
        else
            err = sql_err(db, rc, "order_count");
    }
    stmt_done(st);
    rd_put(s, slot);
    return err;
}

/* One "SELECT count(*) ... WHERE <key> = ? AND <time> >= ?" for the quota counters. */
static int count_since(struct st_store *s, const char *sql, const char *what, const char *key,
                       int64_t since, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    size_t slot;
    sqlite3 *db;
    int rc, err;

    *n = 0;
    db = rd_get(s, &slot);
    err = prep(db, sql, &st, what);
    if (err == 0)
        err = bindv(db, st, what, "ti", key, since);
    if (err == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *n = col_i64(st, 0);
        else
            err = sql_err(db, rc, what);
    }
    stmt_done(st);
    rd_put(s, slot);
    return err;
}

static int sq_order_count_by_eab(struct st_store *s, const char *kid, int64_t since, int64_t *n)
{
    return count_since(s,
                       "SELECT count(*) FROM orders o JOIN accounts a ON a.id = o.account_id "
                       "WHERE a.eab_kid = ? AND o.created >= ?",
                       "order_count_by_eab", kid, since, n);
}

static int sq_cert_count_by_account(struct st_store *s, const char *account_id, int64_t since,
                                    int64_t *n)
{
    return count_since(s, "SELECT count(*) FROM certificates WHERE account_id = ? AND issued >= ?",
                       "cert_count_by_account", account_id, since, n);
}

/* ---------------------------------------------------------------- authorizations */

#define AUTHZ_COLS "id, order_id, account_id, id_type, id_value, status, expires, wildcard"

static void authz_clear_v(void *a)
{
    st_authz_clear(a);
}

static int authz_row(sqlite3_stmt *st, void *out)
{
    struct st_authz *a = out;
    int err;

    err = col_fixed(st, 0, a->id, sizeof(a->id));
    if (err == 0)
        err = col_fixed(st, 1, a->order_id, sizeof(a->order_id));
    if (err == 0)
        err = col_fixed(st, 2, a->account_id, sizeof(a->account_id));
    if (err == 0)
        err = col_fixed(st, 3, a->id_type, sizeof(a->id_type));
    if (err == 0)
        err = col_dup(st, 4, &a->id_value);
    if (err == 0)
        err = col_fixed(st, 5, a->status, sizeof(a->status));
    a->expires = col_i64(st, 6);
    a->wildcard = sqlite3_column_int(st, 7) != 0;
    return err;
}

static int sq_authz_get(struct st_store *s, const char *id, struct st_authz *out)
{
    return get_by_key(s, "authz_get", "SELECT " AUTHZ_COLS " FROM authorizations WHERE id = ?", id,
                      authz_row, out);
}

/* Lists rows of sql (one text parameter) with a pooled reader. */
static int list_by_key(struct st_store *s, const char *op, const char *sql, const char *key,
                       size_t elem_size, row_fn fn, void (*clear)(void *), void **out, size_t *n)
{
    sqlite3_stmt *st = NULL;
    size_t slot;
    sqlite3 *db = rd_get(s, &slot);
    int err;

    err = prep(db, sql, &st, op);
    if (err == 0)
        err = bindv(db, st, op, "t", key);
    if (err == 0)
        err = collect(db, st, op, elem_size, fn, clear, out, n);
    stmt_done(st);
    rd_put(s, slot);
    return err;
}

static int sq_authz_list_by_order(struct st_store *s, const char *order_id, struct st_authz **out,
                                  size_t *n)
{
    void *arr = NULL;
    int err;

    /* rowid order is insertion order: the order's authorizations as the client listed them */
    err = list_by_key(s, "authz_list",
                      "SELECT " AUTHZ_COLS " FROM authorizations WHERE order_id = ? ORDER BY rowid",
                      order_id, sizeof(struct st_authz), authz_row, authz_clear_v, &arr, n);
    *out = arr;
    return err;
}

static int sq_authz_transition(struct st_store *s, const char *id, const char *from, const char *to)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    db = wr_lock(s);
    err = prep(db, "UPDATE authorizations SET status = ? WHERE id = ? AND status = ?", &st,
               "authz_transition");
    if (err == 0)
        err = bindv(db, st, "authz_transition", "ttt", to, id, from);
    if (err == 0)
        err = cond_update(db, st, "authz_transition", "SELECT 1 FROM authorizations WHERE id = ?",
                          id);
    stmt_done(st);
    wr_unlock(s);
    return err;
}

/* ---------------------------------------------------------------- challenges */

#define CHAL_COLS "id, authz_id, type, token, status, validated, error_json"

static void chal_clear_v(void *c)
{
    st_challenge_clear(c);
}

static int chal_row(sqlite3_stmt *st, void *out)
{
    struct st_challenge *c = out;
    int err;

    err = col_fixed(st, 0, c->id, sizeof(c->id));
    if (err == 0)
        err = col_fixed(st, 1, c->authz_id, sizeof(c->authz_id));
    if (err == 0)
        err = col_fixed(st, 2, c->type, sizeof(c->type));
    if (err == 0)
        err = col_fixed(st, 3, c->token, sizeof(c->token));
    if (err == 0)
        err = col_fixed(st, 4, c->status, sizeof(c->status));
    c->validated = col_i64(st, 5);
    if (err == 0)
        err = col_dup(st, 6, &c->error_json);
    return err;
}

static int sq_challenge_get(struct st_store *s, const char *id, struct st_challenge *out)
{
    return get_by_key(s, "challenge_get", "SELECT " CHAL_COLS " FROM challenges WHERE id = ?", id,
                      chal_row, out);
}

static int sq_challenge_list_by_authz(struct st_store *s, const char *authz_id,
                                      struct st_challenge **out, size_t *n)
{
    void *arr = NULL;
    int err;

    err = list_by_key(s, "challenge_list",
                      "SELECT " CHAL_COLS " FROM challenges WHERE authz_id = ? ORDER BY rowid",
                      authz_id, sizeof(struct st_challenge), chal_row, chal_clear_v, &arr, n);
    *out = arr;
    return err;
}

static int sq_challenge_transition(struct st_store *s, const char *id, const char *from,
                                   const char *to, int64_t validated, const char *error_json)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    db = wr_lock(s);
    err = prep(db,
               "UPDATE challenges SET status = ?, validated = ?, error_json = ? "
               "WHERE id = ? AND status = ?",
               &st, "challenge_transition");
    if (err == 0)
        err = bindv(db, st, "challenge_transition",
                    "titt"
                    "t",
                    to, validated, error_json, id, from);
    if (err == 0)
        err = cond_update(db, st, "challenge_transition", "SELECT 1 FROM challenges WHERE id = ?",
                          id);
    stmt_done(st);
    wr_unlock(s);
    return err;
}

/* ---------------------------------------------------------------- certificates */

#define CERT_COLS                                                                                  \
    "serial, order_id, account_id, class_name, issuer, status, issued, not_before, not_after, "    \
    "revoked_at, reason, identifiers"

static void cert_clear_v(void *c)
{
    st_cert_clear(c);
}

static int cert_row(sqlite3_stmt *st, void *out)
{
    struct st_cert *c = out;
    int64_t reason;
    int err;

    err = col_fixed(st, 0, c->serial, sizeof(c->serial));
    if (err == 0)
        err = col_fixed(st, 1, c->order_id, sizeof(c->order_id));
    if (err == 0)
        err = col_fixed(st, 2, c->account_id, sizeof(c->account_id));
    if (err == 0)
        err = col_fixed(st, 3, c->class_name, sizeof(c->class_name));
    if (err == 0)
        err = col_fixed(st, 4, c->issuer, sizeof(c->issuer));
    if (err == 0)
        err = col_fixed(st, 5, c->status, sizeof(c->status));
    c->issued = col_i64(st, 6);
    c->not_before = col_i64(st, 7);
    c->not_after = col_i64(st, 8);
    c->revoked_at = col_i64(st, 9);
    reason = col_i64(st, 10);
    c->reason = reason >= -1 && reason <= INT_MAX ? (int)reason : -1;
    if (err == 0)
        err = col_dup(st, 11, &c->identifiers);
    return err;
}

/* cert_row plus der (column 12) and chain_pem (13). */
static int cert_row_full(sqlite3_stmt *st, void *out)
{
    struct st_cert *c = out;
    const void *der;
    int n, err;

    err = cert_row(st, c);
    if (err != 0)
        return err;
    der = sqlite3_column_blob(st, 12);
    n = sqlite3_column_bytes(st, 12);
    if (n > 0 && der != NULL) {
        c->der = malloc((size_t)n);
        if (c->der == NULL)
            return AGW_ERR_NOMEM;
        memcpy(c->der, der, (size_t)n);
        c->der_len = (size_t)n;
    }
    return col_dup(st, 13, &c->chain_pem);
}

/*
 * The certificate is always recorded "valid", not revoked (c->status, revoked_at and reason are
 * ignored): issuance and revocation are separate, each with its own durable commit.
 */
static int sq_cert_issue(struct st_store *s, const struct st_cert *c)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    db = wb_begin(s, "cert_issue", &err);
    if (db == NULL)
        return err;
    if (c->order_id[0] != '\0') {
        /* §7.4: only an order being finalized becomes valid, and only once */
        err = prep(db,
                   "UPDATE orders SET status = 'valid', cert_serial = ?, "
                   "updated = CAST(strftime('%s', 'now') AS INTEGER) "
                   "WHERE id = ? AND status = 'processing'",
                   &st, "cert_issue");
        if (err == 0)
            err = bindv(db, st, "cert_issue", "tt", c->serial, c->order_id);
        if (err == 0)
            err =
                cond_update(db, st, "cert_issue", "SELECT 1 FROM orders WHERE id = ?", c->order_id);
        stmt_done(st);
        st = NULL;
        if (err != 0)
            goto rollback;
    }
    err = prep(db,
               "INSERT INTO certificates(serial, order_id, account_id, class_name, issuer, status, "
               "issued, not_before, not_after, revoked_at, reason, identifiers, der, chain_pem) "
               "VALUES (?, ?, ?, ?, ?, 'valid', ?, ?, ?, 0, -1, ?, ?, ?)",
               &st, "cert_issue");
    if (err == 0)
        err = bindv(db, st, "cert_issue",
                    "tettt"
                    "iii"
                    "tbt",
                    c->serial, c->order_id, c->account_id, c->class_name, c->issuer, c->issued,
                    c->not_before, c->not_after, c->identifiers != NULL ? c->identifiers : "",
                    (const unsigned char *)c->der, c->der_len, c->chain_pem);
    if (err == 0)
        err = step_done(db, st, "cert_issue");
    stmt_done(st);
    if (err != 0)
        goto rollback;
    err = wb_end(s, 0); /* synchronous=FULL: on disk when this returns 0 */
    if (err == 0)
        LOG_INFO("store.cert_recorded", "serial=%s order=%s issuer=%s", c->serial, c->order_id,
                 c->issuer);
    return err;
rollback:
    return wb_end(s, err);
}

static int sq_cert_get(struct st_store *s, const char *serial, struct st_cert *out)
{
    return get_by_key(s, "cert_get",
                      "SELECT " CERT_COLS ", der, chain_pem FROM certificates WHERE serial = ?",
                      serial, cert_row_full, out);
}

/* Appends a fixed SQL fragment; the fragments are constants, never values. */
static void sql_add(char *sql, const char *frag)
{
    size_t used = strlen(sql), n = strlen(frag);

    if (used + n < ST_SQL_MAX)
        memcpy(sql + used, frag, n + 1);
}

static int sq_cert_list(struct st_store *s, const struct st_cert_filter *f, struct st_cert **out,
                        size_t *n)
{
    char sql[ST_SQL_MAX] = "SELECT " CERT_COLS " FROM certificates WHERE 1";
    sqlite3_stmt *st = NULL;
    void *arr = NULL;
    size_t slot;
    sqlite3 *db;
    int err, i = 1, rc = SQLITE_OK;

    if (f->class_name != NULL)
        sql_add(sql, " AND class_name = ?");
    if (f->identifier != NULL)
        sql_add(sql, " AND instr(identifiers, ?) > 0");
    /* "valid" lists certificates still in their validity period; past it they are "expired" */
    if (f->status != NULL && strcmp(f->status, "revoked") == 0)
        sql_add(sql, " AND status = 'revoked'");
    else if (f->status != NULL && strcmp(f->status, "valid") == 0)
        sql_add(sql, " AND status = 'valid' AND not_after >= ?");
    else if (f->status != NULL)
        sql_add(sql, " AND status = 'valid' AND not_after < ?");
    if (f->expiring_before != 0)
        sql_add(sql, " AND not_after < ?");
    sql_add(sql, " ORDER BY issued DESC, rowid DESC LIMIT ?");

    db = rd_get(s, &slot);
    err = prep(db, sql, &st, "cert_list");
    if (err != 0)
        goto done;
    if (f->class_name != NULL)
        rc = sqlite3_bind_text(st, i++, f->class_name, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && f->identifier != NULL)
        rc = sqlite3_bind_text(st, i++, f->identifier, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && f->status != NULL && strcmp(f->status, "revoked") != 0)
        rc = sqlite3_bind_int64(st, i++, (sqlite3_int64)f->now);
    if (rc == SQLITE_OK && f->expiring_before != 0)
        rc = sqlite3_bind_int64(st, i++, (sqlite3_int64)f->expiring_before);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, i,
                                f->max == 0 || f->max > INT64_MAX ? -1 : (sqlite3_int64)f->max);
    if (rc != SQLITE_OK) {
        err = sql_err(db, rc, "cert_list");
        goto done;
    }
    err = collect(db, st, "cert_list", sizeof(struct st_cert), cert_row, cert_clear_v, &arr, n);
    *out = arr;
done:
    stmt_done(st);
    rd_put(s, slot);
    return err;
}

/* RFC 5280 §5.3.1: reasons 0..10 except 7, which is unused. */
static int sq_cert_revoke(struct st_store *s, const char *serial, int reason, int64_t now)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err;

    db = wr_lock(s);
    err = prep(db,
               "UPDATE certificates SET status = 'revoked', revoked_at = ?, reason = ? "
               "WHERE serial = ? AND status = 'valid'",
               &st, "cert_revoke");
    if (err == 0)
        err = bindv(db, st, "cert_revoke", "iit", now, (int64_t)reason, serial);
    if (err == 0)
        err = cond_update(db, st, "cert_revoke", "SELECT 1 FROM certificates WHERE serial = ?",
                          serial);
    stmt_done(st);
    wr_unlock(s);
    if (err == AGW_ERR_CONFLICT)
        err = AGW_ERR_ALREADY_REVOKED; /* the only other status is revoked */
    if (err == 0)
        LOG_INFO("store.cert_revoked", "serial=%s reason=%d", serial, reason);
    return err;
}

static int revoked_row(sqlite3_stmt *st, void *out)
{
    struct st_revoked *r = out;
    int64_t reason = col_i64(st, 2);

    r->revoked_at = col_i64(st, 1);
    r->reason = reason >= 0 && reason <= 10 ? (int)reason : 0;
    return col_fixed(st, 0, r->serial, sizeof(r->serial));
}

static int sq_revoked_list(struct st_store *s, const char *issuer, int64_t since,
                           struct st_revoked **out, size_t *n)
{
    sqlite3_stmt *st = NULL;
    void *arr = NULL;
    size_t slot;
    sqlite3 *db;
    int err;

    db = rd_get(s, &slot);
    err = prep(db,
               "SELECT serial, revoked_at, reason FROM certificates "
               "WHERE issuer = ? AND status = 'revoked' AND not_after >= ? ORDER BY serial",
               &st, "revoked_list");
    if (err == 0)
        err = bindv(db, st, "revoked_list", "ti", issuer, since);
    if (err == 0)
        err =
            collect(db, st, "revoked_list", sizeof(struct st_revoked), revoked_row, NULL, &arr, n);
    stmt_done(st);
    rd_put(s, slot);
    *out = arr;
    return err;
}

static int sq_crl_next_number(struct st_store *s, const char *issuer, uint64_t *number)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int rc, err;

    *number = 0;
    db = wr_lock(s);
    /* One statement, so one implicit transaction: no two CRLs can get the same number. */
    err = prep(db,
               "INSERT INTO crl_numbers(issuer, number) VALUES (?, 1) "
               "ON CONFLICT(issuer) DO UPDATE SET number = number + 1 RETURNING number",
               &st, "crl_next_number");
    if (err == 0)
        err = bindv(db, st, "crl_next_number", "t", issuer);
    if (err == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            sqlite3_int64 v = sqlite3_column_int64(st, 0);

            err = step_done(db, st, "crl_next_number"); /* the commit happens here */
            if (err == 0 && v > 0)
                *number = (uint64_t)v;
            else if (err == 0)
                err = AGW_ERR_STORE;
        } else {
            err = sql_err(db, rc, "crl_next_number");
        }
    }
    stmt_done(st);
    wr_unlock(s);
    return err;
}

/* One "SELECT <int> ... WHERE issuer = ?" read; 0 when there is no row. */
static int issuer_int(struct st_store *s, const char *sql, const char *op, const char *issuer,
                      int64_t *out)
{
    sqlite3_stmt *st = NULL;
    size_t slot;
    sqlite3 *db;
    int rc, err;

    *out = 0;
    if (s == NULL || !st_given(issuer, ST_NAME_LEN))
        return AGW_ERR_BAD_INPUT;
    db = rd_get(s, &slot);
    err = prep(db, sql, &st, op);
    if (err == 0)
        err = bindv(db, st, op, "t", issuer);
    if (err == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *out = col_i64(st, 0);
        else if (rc != SQLITE_DONE)
            err = sql_err(db, rc, op);
    }
    stmt_done(st);
    rd_put(s, slot);
    return err;
}

static int sq_crl_number(struct st_store *s, const char *issuer, uint64_t *number)
{
    int64_t v = 0;
    int err;

    err =
        issuer_int(s, "SELECT number FROM crl_numbers WHERE issuer = ?", "crl_number", issuer, &v);
    *number = err == 0 && v > 0 ? (uint64_t)v : 0;
    return err;
}

static int sq_revocation_marker(struct st_store *s, const char *issuer, int64_t *marker)
{
    /* revocations are never undone, so the count only grows: a changed count is a revocation */
    return issuer_int(s,
                      "SELECT count(*) FROM certificates WHERE issuer = ? AND status = 'revoked'",
                      "revocation_marker", issuer, marker);
}

static int sq_order_replacing(struct st_store *s, const char *cert_id, int64_t now, int *found)
{
    sqlite3_stmt *st = NULL;
    size_t slot;
    sqlite3 *db;
    int rc, err;

    db = rd_get(s, &slot);
    err = prep(db,
               "SELECT 1 FROM orders WHERE replaces = ? AND status <> 'invalid' AND "
               "NOT (status IN ('pending', 'ready') AND expires < ?) LIMIT 1",
               &st, "order_replacing");
    if (err == 0)
        err = bindv(db, st, "order_replacing", "ti", cert_id, now);
    if (err == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *found = 1;
        else if (rc != SQLITE_DONE)
            err = sql_err(db, rc, "order_replacing");
    }
    stmt_done(st);
    rd_put(s, slot);
    return err;
}

/* One write statement under the write lock; *changed gets sqlite3_changes(). */
static int sq_write(struct st_store *s, const char *op, const char *sql, long *changed,
                    const char *fmt, ...)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db = wr_lock(s);
    va_list ap;
    int err, rc = SQLITE_OK, i = 1;

    err = prep(db, sql, &st, op);
    va_start(ap, fmt);
    for (const char *f = fmt; err == 0 && *f != '\0' && rc == SQLITE_OK; f++, i++) {
        if (*f == 't') {
            rc = sqlite3_bind_text(st, i, va_arg(ap, const char *), -1, SQLITE_STATIC);
        } else if (*f == 'i') {
            rc = sqlite3_bind_int64(st, i, (sqlite3_int64)va_arg(ap, int64_t));
        } else {
            const unsigned char *b = va_arg(ap, const unsigned char *);
            size_t len = va_arg(ap, size_t);
            rc = sqlite3_bind_blob64(st, i, b, (sqlite3_uint64)len, SQLITE_STATIC);
        }
    }
    va_end(ap);
    if (err == 0 && rc != SQLITE_OK)
        err = sql_err(db, rc, op);
    if (err == 0)
        err = step_done(db, st, op);
    if (err == 0 && changed != NULL)
        *changed = (long)sqlite3_changes(db);
    stmt_done(st);
    wr_unlock(s);
    return err;
}

/* st_order_start_processing: one conditional UPDATE, ?1 max_certs (0: none), ?2 since, ?3 the
 * order; under the write lock (and inside a group commit, where the batch's own reservations are
 * visible to the count) nothing can change between the count and the change. */
static int sq_order_start_processing(struct st_store *s, const char *id, int64_t max_certs,
                                     int64_t since)
{
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    int err, ready = 0;

    db = wb_begin(s, "order_start_processing", &err);
    if (db == NULL)
        return err;
    err = prep(db,
               "UPDATE orders SET status = 'processing', "
               "updated = CAST(strftime('%s', 'now') AS INTEGER) "
               "WHERE id = ?3 AND status = 'ready' AND (?1 <= 0 OR "
               "(SELECT COUNT(*) FROM certificates c WHERE c.account_id = orders.account_id "
               "AND c.issued >= ?2) + (SELECT COUNT(*) FROM orders o WHERE "
               "o.account_id = orders.account_id AND o.status = 'processing') < ?1)",
               &st, "order_start_processing");
    if (err == 0)
        err = bindv(db, st, "order_start_processing", "iit", max_certs, since, id);
    if (err == 0)
        err = cond_update(db, st, "order_start_processing", "SELECT 1 FROM orders WHERE id = ?",
                          id);
    stmt_done(st);
    if (err == AGW_ERR_CONFLICT && /* ready, so the quota held it back */
        row_exists(db, "SELECT 1 FROM orders WHERE id = ? AND status = 'ready'", id,
                   "order_start_processing", &ready) == 0 && ready)
        err = AGW_ERR_RATE_LIMITED;
    return wb_end(s, err);
}

static int sq_order_fail_stale(struct st_store *s, int64_t age_s, const char *error_json,
                               int64_t *n)
{
    long changed = 0;
    int err;

    err = sq_write(s, "order_fail_stale",
                   "UPDATE orders SET status = 'invalid', error_json = ?, "
                   "updated = CAST(strftime('%s', 'now') AS INTEGER) WHERE status = 'processing' "
                   "AND updated < CAST(strftime('%s', 'now') AS INTEGER) - ?",
                   &changed, "ti", error_json, age_s);
    *n = changed;
    return err;
}

static int sq_authz_valid_for(struct st_store *s, const char *account_id, const char *id_type,
                              const char *id_value, int64_t now, int *found)
{
    sqlite3_stmt *st = NULL;
    size_t slot;
    sqlite3 *db;
    int rc, err;

    *found = 0;
    db = rd_get(s, &slot);
    err = prep(db,
               "SELECT 1 FROM authorizations WHERE account_id = ? AND id_type = ? AND "
               "id_value = ? AND status = 'valid' AND expires > ? LIMIT 1",
               &st, "authz_valid_for");
    if (err == 0)
        err = bindv(db, st, "authz_valid_for", "ttti", account_id, id_type, id_value, now);
    if (err == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *found = 1;
        else if (rc != SQLITE_DONE)
            err = sql_err(db, rc, "authz_valid_for");
    }
    stmt_done(st);
    rd_put(s, slot);
    return err;
}

static int sq_nonce_redeem(struct st_store *s, const char *id, int64_t expires)
{
    /* a taken primary key is a replay: sql_err() maps it to AGW_ERR_CONFLICT */
    return sq_write(s, "nonce_redeem", "INSERT INTO used_nonces(id, expires) VALUES (?, ?)", NULL,
                    "ti", id, expires);
}

static int sq_nonce_purge(struct st_store *s, int64_t now)
{
    return sq_write(s, "nonce_purge", "DELETE FROM used_nonces WHERE expires < ?", NULL, "i",
                    now);
}

static int sq_crl_lease(struct st_store *s, const char *issuer, const char *owner, int64_t now,
                        int64_t ttl_s, int *granted)
{
    long n = 0;
    int err;

    *granted = 0;
    err = sq_write(s, "crl_lease",
                   "INSERT INTO crl_leases(issuer, owner, until) VALUES (?1, ?2, ?3 + ?4) "
                   "ON CONFLICT(issuer) DO UPDATE SET owner = ?2, until = ?3 + ?4 "
                   "WHERE crl_leases.owner = ?2 OR crl_leases.until < ?3",
                   &n, "ttii", issuer, owner, now, ttl_s);
    *granted = err == 0 && n == 1;
    return err;
}

static int sq_crl_put(struct st_store *s, const char *issuer, uint64_t number, int64_t this_update,
                      int64_t next_update, const unsigned char *der, size_t der_len)
{
    return sq_write(s, "crl_put",
                    "INSERT INTO crls(issuer, number, this_update, next_update, der) "
                    "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(issuer) DO UPDATE SET "
                    "number = ?2, this_update = ?3, next_update = ?4, der = ?5 "
                    "WHERE crls.number < ?2",
                    NULL, "tiiib", issuer, (int64_t)number, this_update, next_update, der,
                    der_len);
}

static int sq_crl_get(struct st_store *s, const char *issuer, uint64_t *number,
                      int64_t *this_update, int64_t *next_update, unsigned char **der,
                      size_t *der_len)
{
    sqlite3_stmt *st = NULL;
    size_t slot;
    sqlite3 *db;
    int rc, err;

    *der = NULL;
    *der_len = 0;
    db = rd_get(s, &slot);
    err = prep(db, "SELECT number, this_update, next_update, der FROM crls WHERE issuer = ?", &st,
               "crl_get");
    if (err == 0)
        err = bindv(db, st, "crl_get", "t", issuer);
    if (err == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            int n = sqlite3_column_bytes(st, 3);
            const void *b = sqlite3_column_blob(st, 3);

            *number = (uint64_t)col_i64(st, 0);
            *this_update = col_i64(st, 1);
            *next_update = col_i64(st, 2);
            *der = n > 0 && b != NULL ? malloc((size_t)n) : NULL;
            if (*der == NULL) {
                err = n > 0 ? AGW_ERR_NOMEM : AGW_ERR_STORE;
            } else {
                memcpy(*der, b, (size_t)n);
                *der_len = (size_t)n;
            }
        } else if (rc == SQLITE_DONE) {
            err = AGW_ERR_NOT_FOUND;
        } else {
            err = sql_err(db, rc, "crl_get");
        }
    }
    stmt_done(st);
    rd_put(s, slot);
    return err;
}

const struct st_ops st_sqlite_ops = {
    .driver = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .schema_version = sq_schema_version,
    .eab_create = sq_eab_create,
    .eab_get = sq_eab_get,
    .eab_list = sq_eab_list,
    .eab_revoke = sq_eab_revoke,
    .account_create = sq_account_create,
    .account_get = sq_account_get,
    .account_by_thumbprint = sq_account_by_thumbprint,
    .account_set_contact = sq_account_set_contact,
    .account_deactivate = sq_account_deactivate,
    .account_set_key = sq_account_set_key,
    .order_create = sq_order_create,
    .order_get = sq_order_get,
    .order_ids_by_account = sq_order_ids_by_account,
    .order_replacing = sq_order_replacing,
    .order_transition = sq_order_transition,
    .order_start_processing = sq_order_start_processing,
    .order_count = sq_order_count,
    .order_count_by_eab = sq_order_count_by_eab,
    .cert_count_by_account = sq_cert_count_by_account,
    .authz_get = sq_authz_get,
    .authz_list_by_order = sq_authz_list_by_order,
    .authz_transition = sq_authz_transition,
    .challenge_get = sq_challenge_get,
    .challenge_list_by_authz = sq_challenge_list_by_authz,
    .challenge_transition = sq_challenge_transition,
    .cert_issue = sq_cert_issue,
    .cert_get = sq_cert_get,
    .cert_list = sq_cert_list,
    .cert_revoke = sq_cert_revoke,
    .revoked_list = sq_revoked_list,
    .crl_next_number = sq_crl_next_number,
    .crl_number = sq_crl_number,
    .revocation_marker = sq_revocation_marker,
    .order_fail_stale = sq_order_fail_stale,
    .authz_valid_for = sq_authz_valid_for,
    .nonce_redeem = sq_nonce_redeem,
    .nonce_purge = sq_nonce_purge,
    .crl_lease = sq_crl_lease,
    .crl_put = sq_crl_put,
    .crl_get = sq_crl_get,
};

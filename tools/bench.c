/*
 * tools/bench.c - acmegw-bench: a bounded load generator for ACME servers (RFC 8555).
 *
 *   acmegw-bench [issue] [options]    certificates/s: newOrder, authz, finalize, poll, download
 *   acmegw-bench nonce [options]      HEAD newNonce requests/s over keep-alive
 *   acmegw-bench accounts [options]   newAccount/s with External Account Binding (§7.3.4)
 *   acmegw-bench hsm-sign --module M --token T --key L --pin-file F [--count N]
 *                                     hsm_call() signatures/s straight through hsm/
 *
 * Each of the N clients is one thread with one keep-alive HTTP/1.1 connection over TLS (OpenSSL
 * on a TCP socket; no libcurl: a small bounded response parser is all a benchmark needs, and it
 * keeps the client's own cost visible and small). In issue mode every client has its own account
 * (all may share one EAB key) and loops: newOrder -> authorization (a pre-authorized class is
 * valid at once) -> finalize with a fresh P-256 key and CSR (client-side cost, reported apart) ->
 * poll the order while processing (Retry-After respected) -> download the chain. With
 * --serialize-authz the newOrder and authorization requests of all clients go one at a time (a
 * Pebble 2.4.0 deadlock workaround: see authz_serial_lock).
 *
 * Everything is bounded: --count and --duration end the run, every socket has a timeout, each
 * certificate has a deadline, responses are capped (16 KiB of headers, 1 MiB of body), and a client
 * that fails many times in a row gives up. Only loopback targets unless --allow-remote.
 *
 * Numbers: latency is per certificate (first request to downloaded chain, CSR generation
 * included); server CPU is the utime+stime delta of --server-pid over the timed phase (account
 * setup excluded), divided by certificates issued. The client runs on the same machine: its own
 * CPU per operation is reported too so the two can be told apart.
 */
#include "common/err.h"
#include "gateway/jws.h"
#include "hsm/hsm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define MAX_HEADER_BYTES   (16 * 1024)   /* response head cap */
#define MAX_RESP_BODY      (1024 * 1024) /* response body cap */
#define CONN_BUF           (32 * 1024)   /* raw read buffer per connection */
#define MAX_CHUNK_LINE     256
#define MAX_ERR_TYPES      24
#define MAX_SAMPLES        (1u << 22) /* latency samples kept per thread */
#define MAX_CONCURRENCY    4096
#define MAX_BAD_NONCE      3  /* badNonce retries per request (§6.5: the error is retryable) */
#define MAX_CONSEC_ERRORS  50 /* a client that fails this often in a row gives up */
#define MAX_EINTR          16 /* EINTR retries per read or write; each restarts the timeout */
#define MAX_RUN_SECONDS    3600.0
#define DEFAULT_SECONDS    10.0
#define COUNT_ONLY_SECONDS 600.0 /* --count without --duration: still bounded */
#define THREAD_STACK       (256 * 1024)
#define ACME_ERR_PREFIX    "urn:ietf:params:acme:error:"

enum mode { MODE_ISSUE, MODE_NONCE, MODE_ACCOUNTS, MODE_HSM_SIGN };

/* Bench-local failures; ACME problems are recorded by their type string. */
enum bench_err {
    B_OK = 0,
    B_ERR = -1,   /* recorded already */
    B_FATAL = -2, /* recorded; this client cannot continue (e.g. authorization pending) */
    B_RETRY = -3, /* connection dropped before any response byte: retry once */
};

struct opts {
    enum mode mode;
    const char *directory, *cacert, *eab_kid, *eab_hmac, *suffix;
    unsigned concurrency;
    double duration_s;
    bool duration_set;
    uint64_t count;
    int server_pid;
    bool json, trigger_challenges, serialize_authz, allow_remote;
    unsigned timeout_ms;
    const char *label;
    /* hsm-sign */
    const char *module, *token, *key_label, *pin_file, *ca_chain;
    unsigned hsm_workers;
};

/* The server, shared read-only by every client after main() filled it. */
struct target {
    char host[256];
    char port[8];
    char authority[300]; /* "https://host:port", the prefix every ACME URL must have */
    bool host_is_ip;
    SSL_CTX *tls;
    unsigned timeout_ms;
    char new_nonce[GW_MAX_URL_LEN + 1];
    char new_account[GW_MAX_URL_LEN + 1];
    char new_order[GW_MAX_URL_LEN + 1];
    unsigned char *eab_key; /* decoded HMAC key, wiped at exit */
    size_t eab_key_len;
    const char *eab_kid;
    const char *suffix;
    bool trigger_challenges;
    bool serialize_authz; /* newOrder and authorization POST-as-GET under authz_serial_lock */
};

/*
 * --serialize-authz. Pebble 2.4.0 deadlocks when a newOrder and an authorization POST-as-GET are
 * in flight at once: newOrder holds its store's read lock and waits for an authorization's lock,
 * while the authorization GET holds that authorization's write lock and waits for the store's
 * read lock to look the account up; any queued store writer (a new certificate or authorization)
 * makes Go's RWMutex refuse new readers, so neither ever gets it. With the option on, every client
 * sends those two requests under this one lock, so no two of them overlap anywhere in the process.
 * Unlike most locks it is held across I/O on purpose: one request (and its badNonce retries) at a
 * time, bounded by the socket timeout; waiters give up at their certificate's deadline.
 */
static pthread_mutex_t authz_serial_lock = PTHREAD_MUTEX_INITIALIZER;

struct err_count {
    char type[96];
    uint64_t n;
};

struct wstats {
    uint64_t ops, requests, errors, bad_nonce_retries, reconnects, challenges, polls;
    double csr_ms_total;
    double *lat_ms; /* owned */
    size_t n_lat, cap_lat;
    struct err_count errs[MAX_ERR_TYPES];
    size_t n_errs;
    char first_error[200];
};

/* Stop conditions shared by all clients. */
struct run {
    atomic_uint_fast64_t started;
    uint64_t count;  /* 0: unbounded by count */
    double deadline; /* monotonic seconds */
    atomic_bool stop;
    pthread_barrier_t ready; /* every client set up; main then sets deadline */
    pthread_barrier_t go;    /* deadline set: the timed phase starts */
};

struct resp {
    int status;
    char nonce[GW_MAX_NONCE_LEN + 1];
    char location[GW_MAX_URL_LEN + 1];
    long retry_after_s; /* -1 when absent */
    bool close;
    bool problem;
    char *body; /* owned, NUL-terminated, reused between responses */
    size_t body_len, body_cap;
};

struct conn {
    const struct target *t;
    int fd;
    SSL *ssl;
    uint64_t n_on_conn;
    char in[CONN_BUF];
    size_t in_off, in_len;
};

struct client {
    unsigned id;
    const struct opts *o;
    const struct target *t;
    struct run *run;
    struct wstats st;
    struct conn c;
    struct resp r;
    EVP_PKEY *key;
    char kid[GW_MAX_URL_LEN + 1];
    char nonce[GW_MAX_NONCE_LEN + 1];
    struct hsm_signer *signer;      /* hsm-sign only, borrowed */
    const struct hsm_request *hreq; /* hsm-sign only, borrowed */
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(double ms)
{
    struct timespec ts;

    if (ms <= 0)
        return;
    ts.tv_sec = (time_t)(ms / 1000.0);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000.0) * 1e6);
    nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------------- stats */

static void stats_error(struct wstats *st, const char *type, const char *detail)
{
    size_t i;

    st->errors++;
    if (st->first_error[0] == '\0')
        snprintf(st->first_error, sizeof(st->first_error), "%s%s%.120s", type,
                 detail != NULL ? ": " : "", detail != NULL ? detail : "");
    for (i = 0; i < st->n_errs; i++) {
        if (strcmp(st->errs[i].type, type) == 0) {
            st->errs[i].n++;
            return;
        }
    }
    if (st->n_errs == MAX_ERR_TYPES)
        type = "other";
    for (i = 0; i < st->n_errs; i++) {
        if (strcmp(st->errs[i].type, type) == 0) {
            st->errs[i].n++;
            return;
        }
    }
    if (st->n_errs < MAX_ERR_TYPES) {
        snprintf(st->errs[st->n_errs].type, sizeof(st->errs[0].type), "%s", type);
        st->errs[st->n_errs].n = 1;
        st->n_errs++;
    }
}

static void stats_sample(struct wstats *st, double ms)
{
    st->ops++;
    if (st->n_lat == st->cap_lat) {
        size_t cap = st->cap_lat == 0 ? 1024 : st->cap_lat * 2;
        double *p;

        if (cap > MAX_SAMPLES)
            return; /* counted, not sampled */
        p = realloc(st->lat_ms, cap * sizeof(*p));
        if (p == NULL)
            return;
        st->lat_ms = p;
        st->cap_lat = cap;
    }
    st->lat_ms[st->n_lat++] = ms;
}

/* ---------------------------------------------------------------- run bounds */

/* Claims the next operation: false once the deadline passed, the count is used up, or stop. */
static bool run_take(struct run *run)
{
    if (atomic_load(&run->stop) || now_s() >= run->deadline)
        return false;
    if (run->count > 0 && atomic_fetch_add(&run->started, 1) >= run->count)
        return false;
    return true;
}

/* ---------------------------------------------------------------- URLs */

/* Splits "https://host[:port]/path"; *path points into url (or to "/"). */
static int url_split(const char *url, char *host, size_t host_size, char *port, size_t port_size,
                     const char **path)
{
    const char *p, *h_end, *slash;
    size_t hl;

    if (strncmp(url, "https://", 8) != 0)
        return AGW_ERR_BAD_INPUT;
    p = url + 8;
    slash = strchr(p, '/');
    if (slash == NULL)
        slash = p + strlen(p);
    if (*p == '[') {
        h_end = memchr(p, ']', (size_t)(slash - p));
        if (h_end == NULL)
            return AGW_ERR_BAD_INPUT;
        hl = (size_t)(h_end - p - 1);
        if (hl == 0 || hl >= host_size)
            return AGW_ERR_BAD_INPUT;
        memcpy(host, p + 1, hl);
        host[hl] = '\0';
        p = h_end + 1;
    } else {
        h_end = memchr(p, ':', (size_t)(slash - p));
        if (h_end == NULL)
            h_end = slash;
        hl = (size_t)(h_end - p);
        if (hl == 0 || hl >= host_size)
            return AGW_ERR_BAD_INPUT;
        memcpy(host, p, hl);
        host[hl] = '\0';
        p = h_end;
    }
    if (*p == ':') {
        size_t pl = (size_t)(slash - p - 1);
        if (pl == 0 || pl >= port_size || strspn(p + 1, "0123456789") < pl)
            return AGW_ERR_BAD_INPUT;
        memcpy(port, p + 1, pl);
        port[pl] = '\0';
    } else if (p == slash) {
        snprintf(port, port_size, "443");
    } else {
        return AGW_ERR_BAD_INPUT;
    }
    *path = *slash == '\0' ? "/" : slash;
    return 0;
}

/* The path of an ACME URL on our one server; NULL when the URL points elsewhere. */
static const char *url_path(const struct target *t, const char *url)
{
    size_t n = strlen(t->authority);

    if (strncmp(url, t->authority, n) != 0)
        return NULL;
    if (url[n] == '/')
        return url + n;
    return url[n] == '\0' ? "/" : NULL;
}

/* ---------------------------------------------------------------- connection */

static void conn_close(struct conn *c)
{
    if (c->ssl != NULL) {
        SSL_shutdown(c->ssl); /* one close_notify; we do not wait for the peer's */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->in_off = c->in_len = 0;
    c->n_on_conn = 0;
}

static int conn_open(struct conn *c, struct wstats *st)
{
    const struct target *t = c->t;
    struct addrinfo hints, *res = NULL, *ai;
    struct timeval tv;
    int one = 1, rc;
    X509_VERIFY_PARAM *vp;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(t->host, t->port, &hints, &res);
    if (rc != 0) {
        stats_error(st, "bench:resolve", gai_strerror(rc));
        return B_ERR;
    }
    tv.tv_sec = (time_t)(t->timeout_ms / 1000);
    tv.tv_usec = (suseconds_t)(t->timeout_ms % 1000) * 1000;
    c->fd = -1;
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (c->fd < 0)
            continue;
        /* SO_SNDTIMEO also bounds connect() on Linux */
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(c->fd);
        c->fd = -1;
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        stats_error(st, "bench:connect", strerror(errno));
        return B_ERR;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->ssl = SSL_new(t->tls);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
        goto tls_fail;
    vp = SSL_get0_param(c->ssl);
    if (t->host_is_ip) {
        if (X509_VERIFY_PARAM_set1_ip_asc(vp, t->host) != 1)
            goto tls_fail;
    } else if (SSL_set_tlsext_host_name(c->ssl, t->host) != 1 ||
               SSL_set1_host(c->ssl, t->host) != 1) {
        goto tls_fail;
    }
    if (SSL_connect(c->ssl) != 1)
        goto tls_fail;
    c->in_off = c->in_len = 0;
    c->n_on_conn = 0;
    st->reconnects++;
    return 0;
tls_fail : {
    char buf[160];
    unsigned long e = ERR_get_error();

    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    stats_error(st, "bench:tls", buf);
    conn_close(c);
    return B_ERR;
}
}

/*
 * True when an SSL_read() or SSL_write() that returned n <= 0 was only interrupted by a signal
 * (EINTR, e.g. after SIGSTOP and SIGCONT on a socket with SO_RCVTIMEO), so the same call may be
 * made again; false for EOF, a TLS error or a timeout (EAGAIN). sys_errno is errno right after
 * the call. OpenSSL's socket BIO reports EINTR as "want read/write", like a timeout.
 */
static bool conn_interrupted(const struct conn *c, int n, int sys_errno)
{
    int e = SSL_get_error(c->ssl, n);

    return sys_errno == EINTR &&
           (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_SYSCALL);
}

/* SSL_write() of all len bytes, again after EINTR; false on error or timeout. */
static bool conn_write(struct conn *c, const char *buf, size_t len)
{
    int n = -1;

    if (len > INT_MAX)
        return false;
    for (int tries = 0; tries <= MAX_EINTR; tries++) {
        errno = 0;
        n = SSL_write(c->ssl, buf, (int)len);
        if (n > 0 || !conn_interrupted(c, n, errno))
            break;
        ERR_clear_error();
    }
    return n == (int)len; /* without SSL_MODE_ENABLE_PARTIAL_WRITE: all or nothing */
}

/* Reads more bytes into c->in, again after EINTR; -1 on EOF, error or timeout. */
static int conn_fill(struct conn *c)
{
    int n = -1;

    if (c->in_off > 0 && c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    if (c->in_len == sizeof(c->in)) {
        if (c->in_off == 0)
            return -1;
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    for (int tries = 0; tries <= MAX_EINTR; tries++) {
        errno = 0;
        n = SSL_read(c->ssl, c->in + c->in_len, (int)(sizeof(c->in) - c->in_len));
        if (n > 0 || !conn_interrupted(c, n, errno))
            break;
        ERR_clear_error();
    }
    if (n <= 0) {
        ERR_clear_error();
        return -1;
    }
    c->in_len += (size_t)n;
    return 0;
}

/* find_bytes() is a GNU extension; the build is POSIX. */
static const char *find_bytes(const char *s, size_t n, const char *pat, size_t pat_len)
{
    for (size_t i = 0; i + pat_len <= n; i++) {
        if (s[i] == pat[0] && memcmp(s + i, pat, pat_len) == 0)
            return s + i;
    }
    return NULL;
}

static int body_append(struct resp *r, const char *p, size_t n)
{
    if (n > MAX_RESP_BODY - r->body_len)
        return -1;
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap == 0 ? 4096 : r->body_cap;
        char *b;

        while (cap < r->body_len + n + 1)
            cap *= 2;
        b = realloc(r->body, cap);
        if (b == NULL)
            return -1;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, p, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

/* Moves exactly n body bytes from the connection into r. */
static int body_take(struct conn *c, struct resp *r, size_t n)
{
    while (n > 0) {
        size_t avail = c->in_len - c->in_off, m;

        if (avail == 0) {
            if (conn_fill(c) != 0)
                return -1;
            continue;
        }
        m = avail < n ? avail : n;
        if (body_append(r, c->in + c->in_off, m) != 0)
            return -1;
        c->in_off += m;
        n -= m;
    }
    return 0;
}

/* One CRLF-terminated line (without the CRLF) of at most MAX_CHUNK_LINE bytes. */
static int read_line(struct conn *c, char *line, size_t line_size)
{
    for (;;) {
        const char *s = c->in + c->in_off, *e;
        size_t avail = c->in_len - c->in_off;

        e = find_bytes(s, avail, "\r\n", 2);
        if (e != NULL) {
            size_t l = (size_t)(e - s);
            if (l >= line_size)
                return -1;
            memcpy(line, s, l);
            line[l] = '\0';
            c->in_off += l + 2;
            return 0;
        }
        if (avail > MAX_CHUNK_LINE || conn_fill(c) != 0)
            return -1;
    }
}

static int read_chunked(struct conn *c, struct resp *r)
{
    char line[MAX_CHUNK_LINE + 1], *end;
    unsigned long size;

    for (;;) {
        if (read_line(c, line, sizeof(line)) != 0)
            return -1;
        errno = 0;
        size = strtoul(line, &end, 16);
        if (end == line || errno != 0 || (*end != '\0' && *end != ';' && *end != ' ') ||
            size > MAX_RESP_BODY)
            return -1;
        if (size == 0)
            break;
        if (body_take(c, r, (size_t)size) != 0 || read_line(c, line, sizeof(line)) != 0 ||
            line[0] != '\0')
            return -1;
    }
    for (int i = 0; i < 64; i++) { /* trailer fields, then the empty line */
        if (read_line(c, line, sizeof(line)) != 0)
            return -1;
        if (line[0] == '\0')
            return 0;
    }
    return -1;
}

static bool hdr_is(const char *name, size_t name_len, const char *want)
{
    return strlen(want) == name_len && strncasecmp(name, want, name_len) == 0;
}

static void copy_value(char *dst, size_t dst_size, const char *v, size_t v_len)
{
    if (v_len >= dst_size)
        v_len = dst_size - 1; /* truncation makes the value wrong, which the server will tell */
    memcpy(dst, v, v_len);
    dst[v_len] = '\0';
}

/* Parses the response head in c->in[c->in_off .. head_end) into r. */
static int parse_head(const char *h, size_t len, struct resp *r, long *content_length,
                      bool *chunked)
{
    const char *p = h, *end = h + len, *eol;
    char num[4];

    if (len < 12 || (strncmp(h, "HTTP/1.1 ", 9) != 0 && strncmp(h, "HTTP/1.0 ", 9) != 0))
        return -1;
    if (h[7] == '0')
        r->close = true;
    memcpy(num, h + 9, 3);
    num[3] = '\0';
    if (strspn(num, "0123456789") != 3)
        return -1;
    r->status = atoi(num);
    eol = find_bytes(p, (size_t)(end - p), "\r\n", 2);
    if (eol == NULL)
        return -1;
    p = eol + 2;
    for (int n = 0; p < end; n++) {
        const char *colon, *v, *ve;

        if (n > 100)
            return -1;
        eol = find_bytes(p, (size_t)(end - p), "\r\n", 2);
        if (eol == NULL)
            eol = end;
        colon = memchr(p, ':', (size_t)(eol - p));
        if (colon == NULL)
            return -1;
        v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        ve = eol;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t nl = (size_t)(colon - p), vl = (size_t)(ve - v);
        if (hdr_is(p, nl, "content-length")) {
            char buf[24];
            if (vl == 0 || vl >= sizeof(buf) || strspn(v, "0123456789") < vl)
                return -1;
            memcpy(buf, v, vl);
            buf[vl] = '\0';
            *content_length = strtol(buf, NULL, 10);
            if (*content_length > MAX_RESP_BODY)
                return -1;
        } else if (hdr_is(p, nl, "transfer-encoding")) {
            *chunked = vl >= 7 && strncasecmp(ve - 7, "chunked", 7) == 0;
            if (!*chunked)
                return -1;
        } else if (hdr_is(p, nl, "replay-nonce")) {
            copy_value(r->nonce, sizeof(r->nonce), v, vl);
        } else if (hdr_is(p, nl, "location")) {
            copy_value(r->location, sizeof(r->location), v, vl);
        } else if (hdr_is(p, nl, "retry-after")) {
            char buf[16];
            copy_value(buf, sizeof(buf), v, vl);
            /* seconds; an HTTP-date is read as 1 s */
            r->retry_after_s = strspn(buf, "0123456789") == strlen(buf) && buf[0] != '\0'
                                   ? strtol(buf, NULL, 10)
                                   : 1;
        } else if (hdr_is(p, nl, "connection")) {
            if (vl == 5 && strncasecmp(v, "close", 5) == 0)
                r->close = true;
        } else if (hdr_is(p, nl, "content-type")) {
            r->problem = vl >= 24 && strncasecmp(v, "application/problem+json", 24) == 0;
        }
        p = eol + 2;
    }
    return 0;
}

/* Reads one response. *got_bytes tells whether any byte arrived (for the keep-alive retry). */
static int read_response(struct conn *c, bool head, struct resp *r, bool *got_bytes)
{
    const char *hend;
    long content_length = -1;
    bool chunked = false;
    size_t hlen;

    *got_bytes = c->in_len > c->in_off;
    for (;;) {
        hend = find_bytes(c->in + c->in_off, c->in_len - c->in_off, "\r\n\r\n", 4);
        if (hend != NULL)
            break;
        if (c->in_len - c->in_off >= MAX_HEADER_BYTES || conn_fill(c) != 0)
            return -1;
        *got_bytes = true;
    }
    hlen = (size_t)(hend - (c->in + c->in_off));
    if (parse_head(c->in + c->in_off, hlen, r, &content_length, &chunked) != 0)
        return -1;
    c->in_off += hlen + 4;
    if (head || r->status == 204 || r->status == 304 || r->status < 200)
        return 0;
    if (chunked)
        return read_chunked(c, r);
    if (content_length >= 0)
        return body_take(c, r, (size_t)content_length);
    r->close = true; /* body ends at EOF */
    for (;;) {
        if (c->in_len > c->in_off) {
            if (body_append(r, c->in + c->in_off, c->in_len - c->in_off) != 0)
                return -1;
            c->in_off = c->in_len;
        }
        if (conn_fill(c) != 0)
            return 0;
    }
}

static void resp_reset(struct resp *r)
{
    r->status = 0;
    r->nonce[0] = '\0';
    r->location[0] = '\0';
    r->retry_after_s = -1;
    r->close = false;
    r->problem = false;
    r->body_len = 0;
    if (r->body != NULL)
        r->body[0] = '\0';
}

/*
 * One HTTP/1.1 request on the keep-alive connection, opening it when needed. A request on a
 * reused connection that gets no byte back (the server closed it while idle) is sent once more
 * on a new connection.
 */
static int http_request(struct conn *c, struct wstats *st, const char *method, const char *path,
                        const char *body, size_t body_len, struct resp *r)
{
    char head[GW_MAX_URL_LEN + 512];
    bool v6 = strchr(c->t->host, ':') != NULL;
    int hl;

    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh, got = false, sent;

        if (c->ssl == NULL && conn_open(c, st) != 0)
            return B_ERR;
        fresh = c->n_on_conn == 0;
        hl = snprintf(head, sizeof(head),
                      "%s %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: acmegw-bench\r\n"
                      "Accept: */*\r\n%s"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, v6 ? "[" : "", c->t->host, v6 ? "]" : "", c->t->port,
                      body != NULL ? "Content-Type: application/jose+json\r\n" : "", body_len);
        if (hl < 0 || (size_t)hl >= sizeof(head)) {
            stats_error(st, "bench:url", "request line too long");
            return B_ERR;
        }
        st->requests++;
        resp_reset(r);
        sent = conn_write(c, head, (size_t)hl) && (body_len == 0 || conn_write(c, body, body_len));
        if (sent && read_response(c, strcmp(method, "HEAD") == 0, r, &got) == 0) {
            c->n_on_conn++;
            if (r->close)
                conn_close(c);
            return 0;
        }
        ERR_clear_error();
        conn_close(c);
        if (fresh || got || attempt == 1) {
            stats_error(st, got ? "bench:badResponse" : "bench:io", method);
            return B_ERR;
        }
    }
    return B_ERR;
}

/* ---------------------------------------------------------------- ACME */

/* Records a non-2xx response by its problem type (without the ACME prefix) or its status. */
static void record_problem(struct wstats *st, const struct resp *r, const char *what)
{
    char type[96];
    json_t *j = NULL;

    snprintf(type, sizeof(type), "http-%d", r->status);
    if (r->body_len > 0)
        j = json_loadb(r->body, r->body_len, 0, NULL);
    if (j != NULL && json_is_string(json_object_get(j, "type"))) {
        const char *t = json_string_value(json_object_get(j, "type"));
        size_t pl = strlen(ACME_ERR_PREFIX);
        snprintf(type, sizeof(type), "%s", strncmp(t, ACME_ERR_PREFIX, pl) == 0 ? t + pl : t);
    }
    {
        char detail[160];
        const char *d = j != NULL ? json_string_value(json_object_get(j, "detail")) : NULL;
        snprintf(detail, sizeof(detail), "%s: %s", what, d != NULL ? d : "");
        stats_error(st, type, detail);
    }
    json_decref(j);
}

static bool problem_is(const struct resp *r, const char *type)
{
    json_t *j;
    bool yes = false;
    const char *t;

    if (r->body_len == 0)
        return false;
    j = json_loadb(r->body, r->body_len, 0, NULL);
    t = j != NULL ? json_string_value(json_object_get(j, "type")) : NULL;
    yes = t != NULL && strncmp(t, ACME_ERR_PREFIX, strlen(ACME_ERR_PREFIX)) == 0 &&
          strcmp(t + strlen(ACME_ERR_PREFIX), type) == 0;
    json_decref(j);
    return yes;
}

static int acme_new_nonce(struct client *cl)
{
    const char *path = url_path(cl->t, cl->t->new_nonce);

    if (path == NULL) {
        stats_error(&cl->st, "bench:url", "newNonce on another server");
        return B_ERR;
    }
    if (http_request(&cl->c, &cl->st, "HEAD", path, NULL, 0, &cl->r) != 0)
        return B_ERR;
    if (cl->r.status != 200 && cl->r.status != 204) {
        record_problem(&cl->st, &cl->r, "newNonce");
        return B_ERR;
    }
    if (cl->r.nonce[0] == '\0') {
        stats_error(&cl->st, "bench:noNonce", "newNonce");
        return B_ERR;
    }
    memcpy(cl->nonce, cl->r.nonce, sizeof(cl->nonce));
    return 0;
}

/*
 * Signed POST (§6.2). payload NULL is POST-as-GET. Uses the jwk when cl->kid is empty.
 * badNonce is retried with the nonce from the error response (§6.5). 0 means a 2xx response in
 * cl->r; otherwise the problem is recorded.
 */
static int acme_post(struct client *cl, const char *url, const json_t *payload, const char *what)
{
    const char *path = url_path(cl->t, url);

    if (path == NULL) {
        stats_error(&cl->st, "bench:url", what);
        return B_ERR;
    }
    for (int tries = 0;; tries++) {
        char *jws = NULL;
        int err;

        if (cl->nonce[0] == '\0' && acme_new_nonce(cl) != 0)
            return B_ERR;
        err = gw_jws_sign(cl->key, cl->kid[0] != '\0' ? cl->kid : NULL, cl->nonce, url, payload,
                          &jws);
        cl->nonce[0] = '\0';
        if (err != 0) {
            stats_error(&cl->st, "bench:jwsSign", agw_err_str(err));
            return B_ERR;
        }
        err = http_request(&cl->c, &cl->st, "POST", path, jws, strlen(jws), &cl->r);
        free(jws);
        if (err != 0)
            return B_ERR;
        if (cl->r.nonce[0] != '\0')
            memcpy(cl->nonce, cl->r.nonce, sizeof(cl->nonce));
        if (cl->r.status >= 200 && cl->r.status < 300)
            return 0;
        if (tries < MAX_BAD_NONCE && cl->r.status == 400 && problem_is(&cl->r, "badNonce")) {
            cl->st.bad_nonce_retries++;
            continue;
        }
        record_problem(&cl->st, &cl->r, what);
        return B_ERR;
    }
}

/*
 * acme_post() for newOrder and authorization POST-as-GET: with --serialize-authz it holds
 * authz_serial_lock around the request (see there why), waiting at most until deadline
 * (monotonic seconds, the certificate's). Without the option it is acme_post().
 */
static int acme_post_serial(struct client *cl, const char *url, const json_t *payload,
                            const char *what, double deadline)
{
    double left = deadline - now_s();
    struct timespec until;
    int err;

    if (!cl->t->serialize_authz)
        return acme_post(cl, url, payload, what);
    if (left <= 0) {
        stats_error(&cl->st, "bench:timeout", what);
        return B_ERR;
    }
    clock_gettime(CLOCK_REALTIME, &until); /* pthread_mutex_timedlock() takes realtime */
    until.tv_sec += (time_t)left;
    until.tv_nsec += (long)((left - (double)(time_t)left) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    err = pthread_mutex_timedlock(&authz_serial_lock, &until);
    if (err != 0) {
        stats_error(&cl->st, "bench:timeout", err == ETIMEDOUT ? "--serialize-authz lock" : what);
        return B_ERR;
    }
    err = acme_post(cl, url, payload, what);
    pthread_mutex_unlock(&authz_serial_lock);
    return err;
}

static json_t *resp_json(struct client *cl, const char *what)
{
    json_t *j = cl->r.body_len > 0 ? json_loadb(cl->r.body, cl->r.body_len, 0, NULL) : NULL;

    if (!json_is_object(j)) {
        json_decref(j);
        stats_error(&cl->st, "bench:badJson", what);
        return NULL;
    }
    return j;
}

static int new_key(EVP_PKEY **out)
{
    *out = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    return *out != NULL ? 0 : AGW_ERR_NOMEM;
}

/* newAccount with EAB (§7.3, §7.3.4); sets cl->kid. */
static int acme_new_account(struct client *cl)
{
    json_t *jwk = NULL, *eab = NULL, *payload = NULL;
    int err = B_ERR;

    cl->kid[0] = '\0';
    if (gw_jwk_from_pkey(cl->key, &jwk) != 0) {
        stats_error(&cl->st, "bench:jwk", "newAccount");
        goto out;
    }
    if (cl->t->eab_key != NULL && gw_eab_sign(cl->t->eab_kid, cl->t->eab_key, cl->t->eab_key_len,
                                              cl->t->new_account, jwk, &eab) != 0) {
        stats_error(&cl->st, "bench:eab", "newAccount");
        goto out;
    }
    payload = json_pack("{s:b}", "termsOfServiceAgreed", 1);
    if (payload == NULL || (eab != NULL && json_object_set(payload, "externalAccountBinding", eab)))
        goto out;
    if (acme_post(cl, cl->t->new_account, payload, "newAccount") != 0)
        goto out;
    if (cl->r.location[0] == '\0') {
        stats_error(&cl->st, "bench:noLocation", "newAccount");
        goto out;
    }
    memcpy(cl->kid, cl->r.location, sizeof(cl->kid));
    err = 0;
out:
    json_decref(jwk);
    json_decref(eab);
    json_decref(payload);
    return err;
}

/* DER CSR for one DNS name with a fresh P-256 key, base64url into *out (malloc'd). */
static int make_csr(const char *name, char **out)
{
    EVP_PKEY *key = NULL;
    X509_REQ *req = NULL;
    X509_EXTENSION *ext = NULL;
    STACK_OF(X509_EXTENSION) *exts = NULL;
    unsigned char *der = NULL;
    char san[300];
    int der_len, err = AGW_ERR_NOMEM;
    size_t b64_len;

    *out = NULL;
    snprintf(san, sizeof(san), "DNS:%s", name);
    if (new_key(&key) != 0)
        goto out;
    req = X509_REQ_new();
    exts = sk_X509_EXTENSION_new_null();
    if (req == NULL || exts == NULL || X509_REQ_set_version(req, 0) != 1 ||
        X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC,
                                   (const unsigned char *)name, -1, -1, 0) != 1)
        goto out;
    ext = X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, san);
    if (ext == NULL || sk_X509_EXTENSION_push(exts, ext) <= 0)
        goto out;
    ext = NULL; /* owned by exts */
    if (X509_REQ_add_extensions(req, exts) != 1 || X509_REQ_set_pubkey(req, key) != 1 ||
        X509_REQ_sign(req, key, EVP_sha256()) <= 0)
        goto out;
    der_len = i2d_X509_REQ(req, &der);
    if (der_len <= 0)
        goto out;
    b64_len = gw_b64url_len((size_t)der_len) + 1;
    *out = malloc(b64_len);
    if (*out == NULL)
        goto out;
    err = gw_b64url_encode(der, (size_t)der_len, *out, b64_len);
    if (err != 0) {
        free(*out);
        *out = NULL;
    }
out:
    ERR_clear_error();
    OPENSSL_free(der);
    X509_EXTENSION_free(ext);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    return err;
}

/* Waits before the next poll: Retry-After when given, else a short exponential back-off. */
static bool poll_wait(struct client *cl, double *backoff_ms, double cert_deadline)
{
    double wait = cl->r.retry_after_s >= 0 ? (double)cl->r.retry_after_s * 1000.0 : *backoff_ms;
    double left = (cert_deadline - now_s()) * 1000.0;

    if (left <= 0)
        return false;
    sleep_ms(wait < left ? wait : left);
    if (*backoff_ms < 100)
        *backoff_ms *= 2;
    return now_s() < cert_deadline;
}

/* Brings one authorization to "valid" (§7.5). A pending one needs a challenge response, which
 * we only send with --trigger-challenges (a server that validates always, e.g. Pebble with
 * PEBBLE_VA_ALWAYS_VALID=1): this client serves no http-01 tokens. */
static int authz_valid(struct client *cl, const char *authz_url, double deadline)
{
    double backoff = 1;
    bool triggered = false;
    int err = B_ERR, polled = 0;
    json_t *a = NULL;

    for (;;) {
        const char *status;

        json_decref(a);
        a = NULL;
        if (acme_post_serial(cl, authz_url, NULL, "authorization", deadline) != 0)
            goto out;
        if (polled++ > 0)
            cl->st.polls++;
        a = resp_json(cl, "authorization");
        if (a == NULL)
            goto out;
        status = json_string_value(json_object_get(a, "status"));
        if (status != NULL && strcmp(status, "valid") == 0) {
            err = 0;
            goto out;
        }
        if (status == NULL || strcmp(status, "invalid") == 0 ||
            (strcmp(status, "pending") != 0 && strcmp(status, "processing") != 0)) {
            stats_error(&cl->st, "bench:authzInvalid", status);
            goto out;
        }
        if (!cl->t->trigger_challenges) {
            stats_error(&cl->st, "bench:authzPending",
                        "authorization pending: this class needs a challenge; acmegw-bench "
                        "serves none (use a pre-authorized class, or --trigger-challenges)");
            err = B_FATAL;
            goto out;
        }
        if (!triggered && strcmp(status, "pending") == 0) {
            json_t *chs = json_object_get(a, "challenges"), *ch, *empty;
            const char *curl = NULL;
            size_t i;

            json_array_foreach(chs, i, ch)
            {
                const char *type = json_string_value(json_object_get(ch, "type"));
                if (curl == NULL || (type != NULL && strcmp(type, "http-01") == 0))
                    curl = json_string_value(json_object_get(ch, "url"));
            }
            if (curl == NULL) {
                stats_error(&cl->st, "bench:noChallenge", "authorization");
                goto out;
            }
            empty = json_object();
            err = acme_post(cl, curl, empty, "challenge");
            json_decref(empty);
            if (err != 0)
                goto out;
            err = B_ERR;
            cl->st.challenges++;
            triggered = true;
            continue;
        }
        if (!poll_wait(cl, &backoff, deadline)) {
            stats_error(&cl->st, "bench:timeout", "authorization");
            goto out;
        }
    }
out:
    json_decref(a);
    return err;
}

/* One certificate: newOrder -> authorizations -> finalize -> poll -> download. */
static int issue_one(struct client *cl, uint64_t n)
{
    double deadline = now_s() + (double)cl->t->timeout_ms / 1000.0, backoff = 1, t0;
    char name[256], order_url[GW_MAX_URL_LEN + 1], *csr = NULL;
    json_t *payload = NULL, *order = NULL, *auths;
    const char *status, *fin, *cert_url;
    json_t *v;
    size_t i;
    int err = B_ERR;

    snprintf(name, sizeof(name), "c%u-%llu.%s", cl->id, (unsigned long long)n, cl->t->suffix);
    payload = json_pack("{s:[{s:s,s:s}]}", "identifiers", "type", "dns", "value", name);
    if (payload == NULL ||
        acme_post_serial(cl, cl->t->new_order, payload, "newOrder", deadline) != 0)
        goto out;
    if (cl->r.location[0] == '\0') {
        stats_error(&cl->st, "bench:noLocation", "newOrder");
        goto out;
    }
    memcpy(order_url, cl->r.location, sizeof(order_url));
    order = resp_json(cl, "newOrder");
    if (order == NULL)
        goto out;
    auths = json_object_get(order, "authorizations");
    if (!json_is_array(auths) || json_array_size(auths) == 0 || json_array_size(auths) > 100) {
        stats_error(&cl->st, "bench:badOrder", "authorizations");
        goto out;
    }
    json_array_foreach(auths, i, v)
    {
        if (!json_is_string(v)) {
            stats_error(&cl->st, "bench:badOrder", "authorizations");
            goto out;
        }
        err = authz_valid(cl, json_string_value(v), deadline);
        if (err != 0)
            goto out;
    }
    err = B_ERR;
    fin = json_string_value(json_object_get(order, "finalize"));
    if (fin == NULL) {
        stats_error(&cl->st, "bench:badOrder", "finalize");
        goto out;
    }
    t0 = now_s();
    if (make_csr(name, &csr) != 0) {
        stats_error(&cl->st, "bench:csr", name);
        goto out;
    }
    cl->st.csr_ms_total += (now_s() - t0) * 1000.0;
    json_decref(payload);
    payload = json_pack("{s:s}", "csr", csr);
    if (payload == NULL || acme_post(cl, fin, payload, "finalize") != 0)
        goto out;
    for (;;) {
        json_decref(order);
        order = resp_json(cl, "order");
        if (order == NULL)
            goto out;
        status = json_string_value(json_object_get(order, "status"));
        if (status != NULL && strcmp(status, "valid") == 0)
            break;
        if (status == NULL || strcmp(status, "invalid") == 0) {
            stats_error(&cl->st, "bench:orderInvalid", name);
            goto out;
        }
        if (!poll_wait(cl, &backoff, deadline)) {
            stats_error(&cl->st, "bench:timeout", "order");
            goto out;
        }
        if (acme_post(cl, order_url, NULL, "order") != 0)
            goto out;
        cl->st.polls++;
    }
    cert_url = json_string_value(json_object_get(order, "certificate"));
    if (cert_url == NULL) {
        stats_error(&cl->st, "bench:badOrder", "certificate");
        goto out;
    }
    if (acme_post(cl, cert_url, NULL, "certificate") != 0)
        goto out;
    if (cl->r.status != 200 ||
        strncmp(cl->r.body != NULL ? cl->r.body : "", "-----BEGIN CERTIFICATE-----", 27) != 0) {
        stats_error(&cl->st, "bench:badCertificate", name);
        goto out;
    }
    err = 0;
out:
    free(csr);
    json_decref(payload);
    json_decref(order);
    return err;
}

/* ---------------------------------------------------------------- client threads */

static void client_loop(struct client *cl, int (*one)(struct client *, uint64_t))
{
    unsigned consec = 0;

    for (uint64_t n = 0; run_take(cl->run); n++) {
        double t0 = now_s();
        int err = one(cl, n);

        if (err == 0) {
            stats_sample(&cl->st, (now_s() - t0) * 1000.0);
            consec = 0;
            continue;
        }
        if (err == B_FATAL || ++consec >= MAX_CONSEC_ERRORS)
            break;
        sleep_ms(1); /* no hot spin against a failing server */
    }
}

static int nonce_one(struct client *cl, uint64_t n)
{
    (void)n;
    cl->nonce[0] = '\0';
    return acme_new_nonce(cl);
}

static int account_one(struct client *cl, uint64_t n)
{
    (void)n;
    EVP_PKEY_free(cl->key);
    if (new_key(&cl->key) != 0) {
        stats_error(&cl->st, "bench:keygen", NULL);
        return B_FATAL;
    }
    return acme_new_account(cl);
}

static int hsm_one(struct client *cl, uint64_t n)
{
    struct hsm_response resp;
    int err;

    (void)n;
    memset(&resp, 0, sizeof(resp));
    err = hsm_call(cl->signer, cl->hreq, &resp);
    free(resp.der);
    if (err != 0) {
        stats_error(&cl->st, agw_err_str(err), "hsm_call");
        return B_ERR;
    }
    return 0;
}

static void *client_main(void *arg)
{
    struct client *cl = arg;
    bool ok = true;

    /* setup, untimed: a connection, and for issue mode an account */
    switch (cl->o->mode) {
    case MODE_ISSUE:
        ok = new_key(&cl->key) == 0 && acme_new_account(cl) == 0;
        break;
    case MODE_ACCOUNTS:
        ok = acme_new_nonce(cl) == 0;
        break;
    case MODE_NONCE:
        ok = cl->c.ssl != NULL || conn_open(&cl->c, &cl->st) == 0;
        break;
    case MODE_HSM_SIGN:
        break;
    }
    pthread_barrier_wait(&cl->run->ready);
    pthread_barrier_wait(&cl->run->go);
    if (!ok)
        return NULL;
    switch (cl->o->mode) {
    case MODE_ISSUE:
        client_loop(cl, issue_one);
        break;
    case MODE_NONCE:
        client_loop(cl, nonce_one);
        break;
    case MODE_ACCOUNTS:
        client_loop(cl, account_one);
        break;
    case MODE_HSM_SIGN:
        client_loop(cl, hsm_one);
        break;
    }
    return NULL;
}

/* ---------------------------------------------------------------- server process figures */

struct proc_sample {
    bool ok;
    double cpu_ms;
    long rss_kb;
};

static struct proc_sample proc_read(int pid)
{
    struct proc_sample s = {false, 0, -1};
    char path[64], buf[2048], *p;
    FILE *f;
    size_t n;
    unsigned long long ut = 0, stt = 0;

    if (pid <= 0)
        return s;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return s;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
    /* after ')': state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
     */
    if (p == NULL ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stt) != 2)
        return s;
    s.cpu_ms = (double)(ut + stt) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
    s.ok = true;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (f != NULL) {
        while (fgets(buf, sizeof(buf), f) != NULL) {
            if (strncmp(buf, "VmRSS:", 6) == 0) {
                s.rss_kb = strtol(buf + 6, NULL, 10);
                break;
            }
        }
        fclose(f);
    }
    return s;
}

static double self_cpu_ms(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec * 1000.0 + (double)ru.ru_utime.tv_usec / 1000.0 +
           (double)ru.ru_stime.tv_sec * 1000.0 + (double)ru.ru_stime.tv_usec / 1000.0;
}

/* ---------------------------------------------------------------- setup */

static int read_directory(struct target *t, const char *path, struct wstats *st)
{
    struct conn c;
    struct resp r;
    json_t *d = NULL;
    int err = -1;
    const char *keys[3] = {"newNonce", "newAccount", "newOrder"};
    char *dst[3] = {t->new_nonce, t->new_account, t->new_order};

    memset(&c, 0, sizeof(c));
    memset(&r, 0, sizeof(r));
    c.t = t;
    c.fd = -1;
    if (http_request(&c, st, "GET", path, NULL, 0, &r) != 0 || r.status != 200) {
        fprintf(stderr, "acmegw-bench: GET %s failed (status %d, %s)\n", path, r.status,
                st->first_error);
        goto out;
    }
    d = json_loadb(r.body != NULL ? r.body : "", r.body_len, 0, NULL);
    for (int i = 0; i < 3; i++) {
        const char *v = json_string_value(json_object_get(d, keys[i]));
        if (v == NULL || strlen(v) > GW_MAX_URL_LEN || url_path(t, v) == NULL) {
            fprintf(stderr, "acmegw-bench: directory: %s missing or not on %s\n", keys[i],
                    t->authority);
            goto out;
        }
        snprintf(dst[i], GW_MAX_URL_LEN + 1, "%s", v);
    }
    err = 0;
out:
    json_decref(d);
    conn_close(&c);
    free(r.body);
    return err;
}

static bool addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr) >> 24) ==
               127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr);
    return false;
}

static int target_init(struct target *t, const struct opts *o, const char **dir_path)
{
    struct addrinfo hints, *res = NULL, *ai;
    struct in6_addr a6;
    struct in_addr a4;
    bool loop = true;

    memset(t, 0, sizeof(*t));
    if (url_split(o->directory, t->host, sizeof(t->host), t->port, sizeof(t->port), dir_path)) {
        fprintf(stderr, "acmegw-bench: --directory must be https://host[:port]/path\n");
        return -1;
    }
    t->host_is_ip = inet_pton(AF_INET, t->host, &a4) == 1 || inet_pton(AF_INET6, t->host, &a6) == 1;
    snprintf(t->authority, sizeof(t->authority), "%.*s", (int)(*dir_path - o->directory),
             o->directory);
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(t->host, t->port, &hints, &res) != 0) {
        fprintf(stderr, "acmegw-bench: cannot resolve %s\n", t->host);
        return -1;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next)
        loop = loop && addr_is_loopback(ai->ai_addr);
    freeaddrinfo(res);
    if (!loop && !o->allow_remote) {
        fprintf(stderr, "acmegw-bench: %s is not a loopback address (--allow-remote to insist)\n",
                t->host);
        return -1;
    }
    t->timeout_ms = o->timeout_ms;
    t->suffix = o->suffix;
    t->trigger_challenges = o->trigger_challenges;
    t->serialize_authz = o->serialize_authz;
    t->tls = SSL_CTX_new(TLS_client_method());
    if (t->tls == NULL)
        return -1;
    SSL_CTX_set_min_proto_version(t->tls, TLS1_2_VERSION);
    SSL_CTX_set_verify(t->tls, SSL_VERIFY_PEER, NULL);
    if (o->cacert != NULL ? SSL_CTX_load_verify_locations(t->tls, o->cacert, NULL) != 1
                          : SSL_CTX_set_default_verify_paths(t->tls) != 1) {
        fprintf(stderr, "acmegw-bench: cannot load CA file %s\n", o->cacert ? o->cacert : "");
        return -1;
    }
    if (o->eab_kid != NULL && o->eab_hmac != NULL && o->eab_kid[0] != '\0') {
        if (gw_b64url_decode(o->eab_hmac, strlen(o->eab_hmac), &t->eab_key, &t->eab_key_len)) {
            fprintf(stderr, "acmegw-bench: the EAB HMAC key must be base64url\n");
            return -1;
        }
        t->eab_kid = o->eab_kid;
    }
    return 0;
}

static void target_free(struct target *t)
{
    if (t->eab_key != NULL) {
        OPENSSL_cleanse(t->eab_key, t->eab_key_len);
        free(t->eab_key);
    }
    SSL_CTX_free(t->tls);
}

/* A CA-like TBS certificate for hsm-sign: the shape the gateway signs (P-256 subject key, SAN,
 * key usage, EKU), encoded by hsm_tbs_cert(). *der owned by the caller (OPENSSL_free). */
static int hsm_bench_tbs(struct hsm_signer *s, unsigned char **der, size_t *der_len)
{
    X509 *x = X509_new();
    EVP_PKEY *key = NULL;
    X509_NAME *nm = X509_NAME_new();
    X509_EXTENSION *ext;
    X509V3_CTX ctx;
    const char *exts[][2] = {{"basicConstraints", "critical,CA:FALSE"},
                             {"keyUsage", "critical,digitalSignature"},
                             {"extendedKeyUsage", "serverAuth,clientAuth"},
                             {"subjectAltName", "DNS:bench.device.test"}};
    int err = AGW_ERR_NOMEM;

    if (x == NULL || nm == NULL || new_key(&key) != 0 || X509_set_version(x, 2) != 1 ||
        ASN1_INTEGER_set(X509_get_serialNumber(x), 0x1234567) != 1 ||
        X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"bench", -1, -1,
                                   0) != 1 ||
        X509_set_subject_name(x, nm) != 1 || X509_set_issuer_name(x, nm) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), 90L * 86400) == NULL || X509_set_pubkey(x, key) != 1)
        goto out;
    X509V3_set_ctx(&ctx, NULL, x, NULL, NULL, 0);
    for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
        ext = X509V3_EXT_nconf(NULL, &ctx, exts[i][0], exts[i][1]);
        if (ext == NULL || X509_add_ext(x, ext, -1) != 1) {
            X509_EXTENSION_free(ext);
            goto out;
        }
        X509_EXTENSION_free(ext);
    }
    err = hsm_tbs_cert(s, x, der, der_len);
out:
    X509_NAME_free(nm);
    EVP_PKEY_free(key);
    X509_free(x);
    return err;
}

/* ---------------------------------------------------------------- report */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y ? 1 : 0;
}

static double pct(const double *v, size_t n, double q)
{
    size_t i;

    if (n == 0)
        return 0;
    i = (size_t)(q * (double)n); /* nearest rank: ceil(q*n) - 1 */
    if ((double)i == q * (double)n && i > 0)
        i--;
    return v[i < n ? i : n - 1];
}

/* Indexed by enum mode: the command name and what one operation is called in the output. */
static const struct {
    const char *name, *ops;
} mode_rows[] = {
    [MODE_ISSUE] = {"issue", "certificates"},
    [MODE_NONCE] = {"nonce", "requests"},
    [MODE_ACCOUNTS] = {"accounts", "accounts"},
    [MODE_HSM_SIGN] = {"hsm-sign", "signatures"},
};

struct totals {
    struct wstats st; /* merged */
    double elapsed_s, client_cpu_ms;
    struct proc_sample before, after;
    unsigned failed_setup;
};

static void merge(struct totals *tot, struct client *cls, unsigned n)
{
    struct wstats *m = &tot->st;
    size_t n_lat = 0;

    for (unsigned i = 0; i < n; i++)
        n_lat += cls[i].st.n_lat;
    m->lat_ms = malloc((n_lat > 0 ? n_lat : 1) * sizeof(double));
    for (unsigned i = 0; i < n; i++) {
        struct wstats *s = &cls[i].st;

        m->ops += s->ops;
        m->requests += s->requests;
        m->bad_nonce_retries += s->bad_nonce_retries;
        m->reconnects += s->reconnects;
        m->challenges += s->challenges;
        m->polls += s->polls;
        m->csr_ms_total += s->csr_ms_total;
        if (m->lat_ms != NULL) {
            memcpy(m->lat_ms + m->n_lat, s->lat_ms, s->n_lat * sizeof(double));
            m->n_lat += s->n_lat;
        }
        if (m->first_error[0] == '\0')
            memcpy(m->first_error, s->first_error, sizeof(m->first_error));
        for (size_t e = 0; e < s->n_errs; e++) {
            for (uint64_t k = 0; k < s->errs[e].n; k++)
                stats_error(m, s->errs[e].type, NULL);
        }
    }
    if (m->lat_ms != NULL)
        qsort(m->lat_ms, m->n_lat, sizeof(double), cmp_double);
}

static void report(const struct opts *o, struct totals *tot)
{
    const struct wstats *m = &tot->st;
    double rate = tot->elapsed_s > 0 ? (double)m->ops / tot->elapsed_s : 0;
    double per_op = m->ops > 0 ? 1.0 / (double)m->ops : 0;
    bool srv = tot->before.ok && tot->after.ok;
    double srv_cpu = srv ? tot->after.cpu_ms - tot->before.cpu_ms : 0;
    const char *ops = mode_rows[o->mode].ops;

    if (o->json) {
        json_t *j = json_object(), *lat, *errs = json_object(), *s;

        json_object_set_new(j, "mode", json_string(mode_rows[o->mode].name));
        if (o->label != NULL)
            json_object_set_new(j, "label", json_string(o->label));
        if (o->mode != MODE_HSM_SIGN)
            json_object_set_new(j, "directory", json_string(o->directory));
        json_object_set_new(j, "concurrency", json_integer(o->concurrency));
        json_object_set_new(j, "elapsed_s", json_real(tot->elapsed_s));
        json_object_set_new(j, ops, json_integer((json_int_t)m->ops));
        json_object_set_new(j, "operations", json_integer((json_int_t)m->ops));
        json_object_set_new(j, "per_s", json_real(rate));
        lat = json_pack("{s:f,s:f,s:f,s:f}", "p50", pct(m->lat_ms, m->n_lat, 0.50), "p90",
                        pct(m->lat_ms, m->n_lat, 0.90), "p99", pct(m->lat_ms, m->n_lat, 0.99),
                        "max", m->n_lat > 0 ? m->lat_ms[m->n_lat - 1] : 0.0);
        json_object_set_new(j, "latency_ms", lat);
        json_object_set_new(j, "requests", json_integer((json_int_t)m->requests));
        json_object_set_new(j, "requests_per_op", json_real((double)m->requests * per_op));
        for (size_t e = 0; e < m->n_errs; e++)
            json_object_set_new(errs, m->errs[e].type, json_integer((json_int_t)m->errs[e].n));
        json_object_set_new(j, "errors", json_integer((json_int_t)m->errors));
        json_object_set_new(j, "errors_by_type", errs);
        if (m->first_error[0] != '\0')
            json_object_set_new(j, "first_error", json_string(m->first_error));
        json_object_set_new(j, "failed_setup", json_integer(tot->failed_setup));
        json_object_set_new(j, "bad_nonce_retries", json_integer((json_int_t)m->bad_nonce_retries));
        json_object_set_new(j, "connections", json_integer((json_int_t)m->reconnects));
        if (o->mode == MODE_ISSUE) {
            json_object_set_new(j, "polls", json_integer((json_int_t)m->polls));
            json_object_set_new(j, "challenges", json_integer((json_int_t)m->challenges));
            json_object_set_new(j, "client_csr_ms_per_op", json_real(m->csr_ms_total * per_op));
            json_object_set_new(j, "serialize_authz", json_boolean(o->serialize_authz));
        }
        json_object_set_new(j, "client_cpu_ms_per_op", json_real(tot->client_cpu_ms * per_op));
        if (srv) {
            s = json_pack("{s:i,s:f,s:f,s:I,s:I}", "pid", o->server_pid, "cpu_ms", srv_cpu,
                          "cpu_ms_per_op", srv_cpu * per_op, "rss_kb_before",
                          (json_int_t)tot->before.rss_kb, "rss_kb_after",
                          (json_int_t)tot->after.rss_kb);
            json_object_set_new(j, "server", s);
        }
        char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6));
        if (text != NULL)
            printf("%s\n", text);
        free(text);
        json_decref(j);
        return;
    }
    printf("acmegw-bench %s%s%s  %s  concurrency %u, %.1f s%s\n", mode_rows[o->mode].name,
           o->label ? " " : "", o->label ? o->label : "",
           o->mode == MODE_HSM_SIGN ? o->module : o->directory, o->concurrency, tot->elapsed_s,
           o->mode != MODE_ISSUE ? ""
           : o->serialize_authz  ? ", serialize-authz on"
                                 : ", serialize-authz off");
    printf("  %-16s %llu  (%.1f/s)\n", ops, (unsigned long long)m->ops, rate);
    printf("  %-16s p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n", "latency ms",
           pct(m->lat_ms, m->n_lat, 0.50), pct(m->lat_ms, m->n_lat, 0.90),
           pct(m->lat_ms, m->n_lat, 0.99), m->n_lat > 0 ? m->lat_ms[m->n_lat - 1] : 0.0);
    if (o->mode != MODE_HSM_SIGN && o->mode != MODE_NONCE)
        printf("  %-16s %llu  (%.2f per op, %llu badNonce retries, %llu connections)\n", "requests",
               (unsigned long long)m->requests, (double)m->requests * per_op,
               (unsigned long long)m->bad_nonce_retries, (unsigned long long)m->reconnects);
    printf("  %-16s %llu%s\n", "errors", (unsigned long long)m->errors,
           tot->failed_setup ? "  (some clients failed setup)" : "");
    for (size_t e = 0; e < m->n_errs; e++)
        printf("    %-24s %llu\n", m->errs[e].type, (unsigned long long)m->errs[e].n);
    if (m->first_error[0] != '\0')
        printf("    first: %s\n", m->first_error);
    if (srv)
        printf("  %-16s %.3f ms per op (pid %d, %.0f ms total), rss %ld -> %ld kB\n", "server cpu",
               srv_cpu * per_op, o->server_pid, srv_cpu, tot->before.rss_kb, tot->after.rss_kb);
    printf("  %-16s %.3f ms cpu per op", "client", tot->client_cpu_ms * per_op);
    if (o->mode == MODE_ISSUE)
        printf(", of which CSR keygen+sign %.3f ms; %llu polls, %llu challenges",
               m->csr_ms_total * per_op, (unsigned long long)m->polls,
               (unsigned long long)m->challenges);
    printf("\n");
}

/* ---------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr,
            "usage: acmegw-bench [issue|nonce|accounts] [options]\n"
            "       acmegw-bench hsm-sign --module M --token T --key LABEL --pin-file F [options]\n"
            "  --directory URL     ACME directory (default $ACMEGW_DIRECTORY)\n"
            "  --cacert FILE       CA for the server's TLS certificate (default $ACMEGW_TLS_CA)\n"
            "  --eab-kid KID --eab-hmac KEY   (default $ACMEGW_EAB_KID, $ACMEGW_EAB_HMAC)\n"
            "  --concurrency N     clients, one thread and connection each (default 1)\n"
            "  --duration S        timed phase (default 10 s; with --count only, at most 600 s)\n"
            "  --count N           stop after N operations in total\n"
            "  --suffix DOMAIN     names are c<client>-<n>.DOMAIN (default device.test)\n"
            "  --server-pid PID    report the server's CPU per operation and RSS\n"
            "  --timeout-ms MS     socket timeout and per-certificate deadline (default 30000)\n"
            "  --trigger-challenges  POST to a pending authorization's challenge (servers that\n"
            "                      validate always, e.g. Pebble with PEBBLE_VA_ALWAYS_VALID=1)\n"
            "  --serialize-authz   send every newOrder and authorization POST-as-GET under one\n"
            "                      lock, so those requests never overlap across clients: works\n"
            "                      around Pebble 2.4.0's lock-order deadlock between newOrder and\n"
            "                      authorization GET. It limits the client (those two requests go\n"
            "                      one at a time), so use it only for such a server (default off)\n"
            "  --label TEXT        name this run in the output\n"
            "  --json              one JSON object on stdout instead of the table\n"
            "  --allow-remote      allow a non-loopback server\n"
            "  hsm-sign: --ca-chain FILE (check the key against it), --workers N (hsm threads)\n");
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;

    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return errno == 0 && *end == '\0' && *out <= max ? 0 : -1;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    int i = 1;

    memset(o, 0, sizeof(*o));
    o->mode = MODE_ISSUE;
    o->concurrency = 1;
    o->duration_s = DEFAULT_SECONDS;
    o->suffix = "device.test";
    o->timeout_ms = 30000;
    o->directory = getenv("ACMEGW_DIRECTORY");
    o->cacert = getenv("ACMEGW_TLS_CA");
    o->eab_kid = getenv("ACMEGW_EAB_KID");
    o->eab_hmac = getenv("ACMEGW_EAB_HMAC");
    if (i < argc && argv[i][0] != '-') {
        size_t m = 0;

        while (m < sizeof(mode_rows) / sizeof(mode_rows[0]) && strcmp(argv[i], mode_rows[m].name))
            m++;
        if (m == sizeof(mode_rows) / sizeof(mode_rows[0]))
            return -1;
        o->mode = (enum mode)m;
        i++;
    }
    for (; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long long u;
        bool takes = true;

        if (strcmp(a, "--json") == 0) {
            o->json = true;
            takes = false;
        } else if (strcmp(a, "--trigger-challenges") == 0) {
            o->trigger_challenges = true;
            takes = false;
        } else if (strcmp(a, "--serialize-authz") == 0) {
            o->serialize_authz = true;
            takes = false;
        } else if (strcmp(a, "--allow-remote") == 0) {
            o->allow_remote = true;
            takes = false;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            return -1;
        } else if (v == NULL) {
            return -1;
        } else if (strcmp(a, "--directory") == 0) {
            o->directory = v;
        } else if (strcmp(a, "--cacert") == 0) {
            o->cacert = v;
        } else if (strcmp(a, "--eab-kid") == 0) {
            o->eab_kid = v;
        } else if (strcmp(a, "--eab-hmac") == 0) {
            o->eab_hmac = v;
        } else if (strcmp(a, "--suffix") == 0) {
            o->suffix = v;
        } else if (strcmp(a, "--label") == 0) {
            o->label = v;
        } else if (strcmp(a, "--module") == 0) {
            o->module = v;
        } else if (strcmp(a, "--token") == 0) {
            o->token = v;
        } else if (strcmp(a, "--key") == 0) {
            o->key_label = v;
        } else if (strcmp(a, "--pin-file") == 0) {
            o->pin_file = v;
        } else if (strcmp(a, "--ca-chain") == 0) {
            o->ca_chain = v;
        } else if (strcmp(a, "--concurrency") == 0) {
            if (parse_uint(v, MAX_CONCURRENCY, &u) != 0 || u == 0)
                return -1;
            o->concurrency = (unsigned)u;
        } else if (strcmp(a, "--workers") == 0) {
            if (parse_uint(v, 64, &u) != 0)
                return -1;
            o->hsm_workers = (unsigned)u;
        } else if (strcmp(a, "--count") == 0) {
            if (parse_uint(v, 1000000000ULL, &u) != 0 || u == 0)
                return -1;
            o->count = u;
        } else if (strcmp(a, "--server-pid") == 0) {
            if (parse_uint(v, INT_MAX, &u) != 0)
                return -1;
            o->server_pid = (int)u;
        } else if (strcmp(a, "--timeout-ms") == 0) {
            if (parse_uint(v, 600000, &u) != 0 || u < 100)
                return -1;
            o->timeout_ms = (unsigned)u;
        } else if (strcmp(a, "--duration") == 0) {
            char *end;
            o->duration_s = strtod(v, &end);
            if (*end != '\0' || !(o->duration_s > 0) || o->duration_s > MAX_RUN_SECONDS)
                return -1;
            o->duration_set = true;
        } else {
            return -1;
        }
        if (takes)
            i++;
    }
    if (o->count > 0 && !o->duration_set)
        o->duration_s = COUNT_ONLY_SECONDS;
    if (o->mode == MODE_HSM_SIGN) {
        if (o->module == NULL || o->token == NULL || o->key_label == NULL) {
            fprintf(stderr, "acmegw-bench: hsm-sign needs --module, --token and --key\n");
            return -1;
        }
        return 0;
    }
    if (o->directory == NULL || o->directory[0] == '\0') {
        fprintf(stderr, "acmegw-bench: no --directory (or $ACMEGW_DIRECTORY)\n");
        return -1;
    }
    if (o->mode != MODE_NONCE && (o->eab_kid == NULL || o->eab_kid[0] == '\0'))
        fprintf(stderr, "acmegw-bench: note: no EAB key (--eab-kid/--eab-hmac); accounts "
                        "are created without external account binding\n");
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    struct target t;
    struct run run;
    struct totals tot;
    struct client *cls = NULL;
    pthread_t *tids = NULL;
    pthread_attr_t attr;
    struct hsm_signer *signer = NULL;
    struct hsm_request hreq;
    unsigned char *tbs = NULL;
    char *pin = NULL;
    const char *dir_path = NULL;
    unsigned n_started = 0;
    double t0, cpu0;
    int rc = 1;

    if (parse_args(argc, argv, &o) != 0) {
        usage();
        return 2;
    }
    memset(&t, 0, sizeof(t));
    memset(&tot, 0, sizeof(tot));
    memset(&hreq, 0, sizeof(hreq));
    json_object_seed(0); /* before any thread touches jansson */
    if (o.mode == MODE_HSM_SIGN) {
        struct hsm_config cfg;
        size_t tbs_len = 0;
        int err;

        memset(&cfg, 0, sizeof(cfg));
        cfg.ref.module = o.module;
        cfg.ref.token = o.token;
        cfg.key_label = o.key_label;
        cfg.ca_chain_file = o.ca_chain;
        cfg.n_workers = o.hsm_workers;
        err = hsm_secret_read(o.pin_file, "ACMEGW_PIN", &pin);
        if (err == 0)
            err = hsm_signer_new(&cfg, pin, &signer);
        if (err == 0)
            err = hsm_bench_tbs(signer, &tbs, &tbs_len);
        if (err != 0) {
            fprintf(stderr, "acmegw-bench: hsm: %s\n", agw_err_str(err));
            goto out;
        }
        hreq.op = HSM_OP_SIGN_CERT;
        hreq.device_class = "default";
        hreq.tbs_der = tbs;
        hreq.tbs_len = tbs_len;
    } else {
        if (target_init(&t, &o, &dir_path) != 0 || read_directory(&t, dir_path, &tot.st) != 0)
            goto out;
        memset(&tot.st, 0, sizeof(tot.st));
    }

    memset(&run, 0, sizeof(run));
    atomic_init(&run.started, 0);
    atomic_init(&run.stop, false);
    run.count = o.count;
    cls = calloc(o.concurrency, sizeof(*cls));
    tids = calloc(o.concurrency, sizeof(*tids));
    if (cls == NULL || tids == NULL ||
        pthread_barrier_init(&run.ready, NULL, o.concurrency + 1) != 0)
        goto out;
    if (pthread_barrier_init(&run.go, NULL, o.concurrency + 1) != 0) {
        pthread_barrier_destroy(&run.ready);
        goto out;
    }
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK);
    run.deadline = now_s() + MAX_RUN_SECONDS; /* setup bound; reset below */
    for (unsigned i = 0; i < o.concurrency; i++) {
        cls[i].id = i;
        cls[i].o = &o;
        cls[i].t = &t;
        cls[i].run = &run;
        cls[i].c.t = &t;
        cls[i].c.fd = -1;
        cls[i].signer = signer;
        cls[i].hreq = &hreq;
    }
    for (; n_started < o.concurrency; n_started++) {
        if (pthread_create(&tids[n_started], &attr, client_main, &cls[n_started]) != 0)
            break;
    }
    pthread_attr_destroy(&attr);
    if (n_started < o.concurrency) {
        /* the barrier counts every client: stand in for those never started */
        fprintf(stderr, "acmegw-bench: only %u threads started\n", n_started);
        atomic_store(&run.stop, true);
        for (unsigned i = n_started; i < o.concurrency; i++) {
            pthread_barrier_wait(&run.ready);
            pthread_barrier_wait(&run.go);
        }
    }
    /* the clock starts once every client is set up (accounts exist, connections open); the
     * second barrier publishes the deadline to the clients before their first run_take() */
    pthread_barrier_wait(&run.ready);
    tot.before = proc_read(o.server_pid);
    cpu0 = self_cpu_ms();
    t0 = now_s();
    run.deadline = t0 + o.duration_s;
    pthread_barrier_wait(&run.go);
    for (unsigned i = 0; i < n_started; i++)
        pthread_join(tids[i], NULL);
    tot.elapsed_s = now_s() - t0;
    tot.after = proc_read(o.server_pid);
    tot.client_cpu_ms = self_cpu_ms() - cpu0;
    for (unsigned i = 0; i < n_started; i++) {
        if (o.mode == MODE_ISSUE && cls[i].kid[0] == '\0')
            tot.failed_setup++;
    }
    merge(&tot, cls, n_started);
    report(&o, &tot);
    rc = tot.st.errors == 0 && tot.st.ops > 0 ? 0 : 1;
    pthread_barrier_destroy(&run.ready);
    pthread_barrier_destroy(&run.go);
out:
    if (cls != NULL) {
        for (unsigned i = 0; i < o.concurrency; i++) {
            conn_close(&cls[i].c);
            free(cls[i].r.body);
            free(cls[i].st.lat_ms);
            EVP_PKEY_free(cls[i].key);
        }
    }
    free(tot.st.lat_ms);
    free(cls);
    free(tids);
    OPENSSL_free(tbs);
    hsm_signer_free(signer);
    hsm_secret_free(pin);
    target_free(&t);
    return rc;
}

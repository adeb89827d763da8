/*
 * gateway/server.c - the HTTP side: libh2o-evloop, one event loop per thread, SO_REUSEPORT.
 *
 * Each loop thread owns its h2o context, its own listening socket per configured address (the
 * kernel spreads connections across threads) and a receiver on h2o's multithread queue. Cheap
 * requests (directory, newNonce, health) are answered on the loop. Everything else is copied out
 * of req->pool into a job and queued for the worker pool; the worker's response comes back as a
 * message to the loop thread that queued it, which sends it. If the client goes away first
 * (an HTTP/2 stream reset frees req), a guard allocated in req->pool tells the loop to drop the
 * response (notes §1). A full queue answers 503 with Retry-After at once: load never becomes a
 * hang. h2o's own body cap is set to twice ours so that we, not h2o, answer oversized bodies
 * with an RFC 8555 problem document.
 */
#include "gateway/gateway.h"

#include "common/err.h"
#include "common/log.h"
#include "gateway/crl.h"
#include "gateway/problem.h"
#include "hsm/hsm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <h2o.h>
#include <h2o/socket/evloop.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define GW_MAX_QUEUE 4096

struct loop_thread;

struct gw_job {
    h2o_multithread_message_t msg; /* first member, zeroed */
    struct loop_thread *lt;        /* the loop that queued it and will answer */
    struct job_guard *guard;       /* loop thread only: NULL once req is gone */
    h2o_req_t *req;                /* loop thread only */
    struct gw_request in;
    struct gw_response out;
    struct gw_job *next; /* worker queue link */
};

struct job_guard {
    struct gw_job *job;
};

struct loop_thread {
    struct gw_server *srv;
    pthread_t tid;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_plain, accept_tls;
    h2o_multithread_receiver_t receiver;
    h2o_multithread_receiver_t waker;
    int fds[16];   /* listening sockets, opened by the main thread (bind errors are synchronous) */
    int plain[16]; /* fds[i] serves plain HTTP */
    h2o_socket_t *listeners[16];
    int n_listeners;
    size_t n_in_flight; /* loop thread only: jobs queued by this loop and not yet answered */
};

/* The worker pool: one queue shared by all loop threads. */
static struct {
    pthread_mutex_t lock; /* guards head, tail, n, stop */
    pthread_cond_t cond;
    struct gw_job *head, *tail;
    size_t n;
    int stop;
    pthread_t *tids;
    unsigned n_threads;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static h2o_globalconf_t h2o_config;
static struct loop_thread *loops;
static unsigned n_loops;
static SSL_CTX *ssl_ctx;
static volatile sig_atomic_t stop_requested;

/* ---------------------------------------------------------------- responses on the loop */

static void add_header(h2o_req_t *req, const char *name, const char *value, size_t len)
{
    char *v = h2o_mem_alloc_pool(&req->pool, len);
    memcpy(v, value, len);
    h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 1, NULL, v, len);
}

static void send_response(h2o_req_t *req, struct gw_response *r)
{
    char num[24];
    int n;

    req->res.status = r->status;
    req->res.reason = r->status < 300 ? "OK" : "Error";
    if (r->content_type != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, r->content_type,
                       strlen(r->content_type));
    if (r->nonce[0] != '\0') {
        add_header(req, "replay-nonce", r->nonce, strlen(r->nonce));
        add_header(req, "cache-control", "no-store", 8);
    }
    if (r->location != NULL)
        add_header(req, "location", r->location, strlen(r->location));
    for (int i = 0; i < r->n_links; i++)
        add_header(req, "link", r->links[i], strlen(r->links[i]));
    if (r->retry_after != 0) {
        n = snprintf(num, sizeof(num), "%u", r->retry_after);
        add_header(req, "retry-after", num, (size_t)n);
    }
    if (r->allow != NULL)
        add_header(req, "allow", r->allow, strlen(r->allow));
    if (r->status >= 500 || r->status == 413)
        req->http1_is_persistent = r->status == 413 ? 0 : req->http1_is_persistent;
    if (stop_requested)
        req->http1_is_persistent = 0;
    req->res.content_length = r->body_len;
    h2o_send_inline(req, r->body, r->body_len);
}

/* GET/HEAD /crl/<issuer>.crl on any listener (CDPs are fetched over plain http): a copy of the
 * in-memory CRL, so the loop never blocks. If-None-Match with our ETag gives 304. */
static void send_crl(h2o_req_t *req, h2o_iovec_t path)
{
    static const char prefix[] = "/crl/", suffix[] = ".crl";
    size_t plen = sizeof(prefix) - 1, slen = sizeof(suffix) - 1;
    struct gw_crl_view v;
    struct gw_response r;
    ssize_t inm;
    int err;

    memset(&r, 0, sizeof(r));
    err = path.len > plen + slen && path.len - plen - slen < 64
              ? gw_crl_copy(path.base + plen, path.len - plen - slen, &v)
              : AGW_ERR_NOT_FOUND;
    if (err != 0) {
        gw_response_problem(&r, err, err == AGW_ERR_NOT_FOUND ? "no CRL for this issuer" : NULL);
        send_response(req, &r);
        gw_response_clear(&r);
        return;
    }
    add_header(req, "etag", v.etag, strlen(v.etag));
    add_header(req, "last-modified", v.last_modified, strlen(v.last_modified));
    add_header(req, "cache-control", "public, max-age=60", 18);
    inm = h2o_find_header(&req->headers, H2O_TOKEN_IF_NONE_MATCH, -1);
    if (inm != -1 && h2o_memis(req->headers.entries[inm].value.base,
                               req->headers.entries[inm].value.len, v.etag, strlen(v.etag))) {
        req->res.status = 304;
        req->res.reason = "Not Modified";
        req->res.content_length = 0;
        h2o_send_inline(req, "", 0);
    } else {
        r.status = 200;
        r.content_type = "application/pkix-crl";
        r.body = (char *)v.der; /* moved into r */
        r.body_len = v.der_len;
        v.der = NULL;
        send_response(req, &r);
        gw_response_clear(&r);
    }
    free(v.der);
}

static void on_job_done(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    (void)receiver;
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *msg =
            H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        struct gw_job *job = (struct gw_job *)msg;

        h2o_linklist_unlink(&msg->link);
        job->lt->n_in_flight--;
        if (job->guard != NULL) {
            job->guard->job = NULL;
            send_response(job->req, &job->out);
        }
        gw_response_clear(&job->out);
        free(job->in.body);
        free(job);
    }
}

static void on_wake(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    (void)receiver;
    (void)messages; /* only wakes the loop so it sees stop_requested */
}

static void on_guard_dispose(void *p)
{
    struct job_guard *g = p;
    if (g->job != NULL)
        g->job->guard = NULL; /* req is gone; the worker's answer will be dropped */
}

/* ---------------------------------------------------------------- worker pool */

static void *worker_main(void *arg)
{
    struct gw_server *srv = arg;

    for (;;) {
        struct gw_job *job;

        pthread_mutex_lock(&pool.lock);
        while (pool.head == NULL && !pool.stop)
            pthread_cond_wait(&pool.cond, &pool.lock);
        if (pool.head == NULL) {
            pthread_mutex_unlock(&pool.lock);
            return NULL;
        }
        job = pool.head;
        pool.head = job->next;
        if (pool.head == NULL)
            pool.tail = NULL;
        pool.n--;
        pthread_mutex_unlock(&pool.lock);

        gw_acme_handle(srv, &job->in, &job->out);
        h2o_multithread_send_message(&job->lt->receiver, &job->msg);
    }
}

static int pool_push(struct gw_job *job)
{
    int ok = 0;

    pthread_mutex_lock(&pool.lock);
    if (pool.n < GW_MAX_QUEUE && !pool.stop) {
        job->next = NULL;
        if (pool.tail != NULL)
            pool.tail->next = job;
        else
            pool.head = job;
        pool.tail = job;
        pool.n++;
        ok = 1;
        pthread_cond_signal(&pool.cond);
    }
    pthread_mutex_unlock(&pool.lock);
    return ok;
}

/* ---------------------------------------------------------------- request handling */

static void respond_inline(h2o_req_t *req, struct gw_response *r)
{
    send_response(req, r);
    gw_response_clear(r);
}

static void peer_ip(h2o_req_t *req, char *buf, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);

    buf[0] = '\0';
    if (len == 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, buf, (socklen_t)size);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, buf, (socklen_t)size);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    struct loop_thread *lt = H2O_STRUCT_FROM_MEMBER(struct loop_thread, ctx, req->conn->ctx);
    struct gw_server *srv = lt->srv;
    struct gw_response r;
    struct gw_job *job;
    struct job_guard *guard;
    h2o_iovec_t path = req->path_normalized;
    ssize_t ct;
    int is_get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    int is_head = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));

    memset(&r, 0, sizeof(r));
    /* path_normalized keeps the query string out already; strip one defensively */
    for (size_t i = 0; i < path.len; i++) {
        if (path.base[i] == '?') {
            path.len = i;
            break;
        }
    }
    if ((is_get || is_head) && h2o_memis(path.base, path.len, H2O_STRLIT("/directory"))) {
        r.status = 200;
        r.content_type = "application/json";
        {
            const struct gw_text *d = __atomic_load_n(&srv->directory, __ATOMIC_ACQUIRE);
            r.body = malloc(d->len);
            if (r.body != NULL) {
                memcpy(r.body, d->s, d->len);
                r.body_len = d->len;
            }
        }
        respond_inline(req, &r);
        return 0;
    }
    if ((is_get || is_head) && h2o_memis(path.base, path.len, H2O_STRLIT("/new-nonce"))) {
        r.status = is_head ? 200 : 204;
        gw_nonce_issue(srv->nonces, r.nonce);
        {
            char link[600];
            snprintf(link, sizeof(link), "<%s/directory>;rel=\"index\"", srv->cfg->base_url);
            r.links[0] = strdup(link);
            r.n_links = r.links[0] != NULL ? 1 : 0;
        }
        respond_inline(req, &r);
        return 0;
    }
    if ((is_get || is_head) && (h2o_memis(path.base, path.len, H2O_STRLIT("/health")) ||
                                h2o_memis(path.base, path.len, H2O_STRLIT("/ready")))) {
        int ready = 1;
        for (size_t i = 0; i < srv->n_issuers; i++)
            if (hsm_signer_ready(srv->issuers[i].signer) != 0)
                ready = 0;
        /* /health: the process is alive; /ready: it can sign (load balancers drain on 503) */
        if (h2o_memis(path.base, path.len, H2O_STRLIT("/health")))
            ready = 1;
        r.status = ready ? 200 : 503;
        r.content_type = "application/json";
        r.body = strdup(ready ? "{\"status\":\"ok\"}" : "{\"status\":\"hsm unavailable\"}");
        r.body_len = r.body != NULL ? strlen(r.body) : 0;
        if (!ready)
            r.retry_after = 5;
        respond_inline(req, &r);
        return 0;
    }
    if ((is_get || is_head) && path.len > 5 && memcmp(path.base, "/crl/", 5) == 0) {
        send_crl(req, path);
        return 0;
    }
    if (path.len >= GW_MAX_PATH) {
        gw_response_problem(&r, AGW_ERR_NOT_FOUND, "no such resource");
        respond_inline(req, &r);
        return 0;
    }
    if (req->entity.base != NULL && req->entity.len > srv->cfg->max_body) {
        gw_response_problem(&r, AGW_ERR_TOO_LARGE, "request body is too large");
        gw_nonce_issue(srv->nonces, r.nonce);
        respond_inline(req, &r);
        return 0;
    }
    job = calloc(1, sizeof(*job));
    if (job == NULL) {
        gw_response_problem(&r, AGW_ERR_NOMEM, NULL);
        respond_inline(req, &r);
        return 0;
    }
    job->lt = lt;
    job->req = req;
    job->in.is_post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    job->in.is_head = is_head;
    snprintf(job->in.method, sizeof(job->in.method), "%.*s",
             (int)(req->method.len < 15 ? req->method.len : 15), req->method.base);
    memcpy(job->in.path, path.base, path.len);
    job->in.path[path.len] = '\0';
    ct = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    if (ct != -1) {
        h2o_iovec_t v = req->headers.entries[ct].value;
        size_t n = v.len < GW_MAX_CT - 1 ? v.len : GW_MAX_CT - 1;
        memcpy(job->in.content_type, v.base, n);
        job->in.content_type[n] = '\0';
    }
    peer_ip(req, job->in.client_ip, sizeof(job->in.client_ip));
    if (req->entity.base != NULL && req->entity.len > 0) {
        job->in.body = malloc(req->entity.len);
        if (job->in.body == NULL) {
            free(job);
            gw_response_problem(&r, AGW_ERR_NOMEM, NULL);
            respond_inline(req, &r);
            return 0;
        }
        memcpy(job->in.body, req->entity.base, req->entity.len);
        job->in.body_len = req->entity.len;
    }
    guard = h2o_mem_alloc_shared(&req->pool, sizeof(*guard), on_guard_dispose);
    guard->job = job;
    job->guard = guard;
    lt->n_in_flight++;
    if (!pool_push(job)) {
        lt->n_in_flight--;
        free(job->in.body);
        free(job);
        guard->job = NULL;
        LOG_WARN("http.overload", "queue=%d", GW_MAX_QUEUE);
        gw_response_problem(&r, AGW_ERR_HSM_UNAVAILABLE, "the server is busy; retry later");
        respond_inline(req, &r);
    }
    return 0;
}

/* ---------------------------------------------------------------- listeners and loops */

/* reuseport: each loop binds its own socket with SO_REUSEPORT. Without it (the probe below), the
 * bind fails if anyone already listens there. */
static int listen_socket(const struct gw_listen *l, int reuseport)
{
    struct addrinfo hints, *res = NULL;
    char port[8];
    int fd = -1, on = 1;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%u", l->port);
    if (getaddrinfo(l->address, port, &hints, &res) != 0 || res == NULL) {
        LOG_ERROR("http.listen", "address=%s port=%u error=\"bad address\"", l->address, l->port);
        return -1;
    }
    fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0) ||
        (res->ai_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0) ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0 ||
        fcntl(fd, F_SETFL, O_NONBLOCK) != 0) {
        LOG_ERROR("http.listen", "address=%s port=%u error=\"%s\"", l->address, l->port,
                  errno == EADDRINUSE ? "address already in use (another process listens there)"
                                      : strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    h2o_accept_ctx_t *actx = listener->data;
    h2o_socket_t *sock;

    if (err != NULL)
        return;
    sock = h2o_evloop_socket_accept(listener);
    if (sock == NULL)
        return;
    h2o_accept(actx, sock);
}

/* Loops become ready here; the main thread waits for all of them before it says "listening". */
static pthread_mutex_t ready_lock = PTHREAD_MUTEX_INITIALIZER; /* guards n_ready */
static pthread_cond_t ready_cond = PTHREAD_COND_INITIALIZER;
static unsigned n_ready;

/*
 * Everything h2o of one loop is created on that loop's own thread: the evloop, the context (and
 * with it the multithread queue's pipe socket) and the listener sockets. h2o's socket buffers come
 * from the *creating* thread's thread-local recycle allocator; created on the main thread they
 * would share main's allocator between loop threads, unlocked, and corrupt the heap under load
 * (found with ThreadSanitizer: two loops read()ing into one recycled buffer).
 */
static void *loop_main(void *arg)
{
    struct loop_thread *lt = arg;

    h2o_context_init(&lt->ctx, h2o_evloop_create(), &h2o_config);
    lt->accept_plain.ctx = &lt->ctx;
    lt->accept_plain.hosts = h2o_config.hosts;
    lt->accept_tls = lt->accept_plain;
    lt->accept_tls.ssl_ctx = ssl_ctx;
    h2o_multithread_register_receiver(lt->ctx.queue, &lt->receiver, on_job_done);
    h2o_multithread_register_receiver(lt->ctx.queue, &lt->waker, on_wake);
    for (int i = 0; i < lt->n_listeners; i++) {
        h2o_socket_t *sock = h2o_evloop_socket_create(lt->ctx.loop, lt->fds[i],
                                                      H2O_SOCKET_FLAG_DONT_READ);
        sock->data = lt->plain[i] ? &lt->accept_plain : &lt->accept_tls;
        h2o_socket_read_start(sock, on_accept);
        lt->listeners[i] = sock;
    }
    pthread_mutex_lock(&ready_lock);
    n_ready++;
    pthread_cond_broadcast(&ready_cond);
    pthread_mutex_unlock(&ready_lock);

    while (!stop_requested)
        h2o_evloop_run(lt->ctx.loop, 1000);
    for (int i = 0; i < lt->n_listeners; i++) {
        h2o_socket_read_stop(lt->listeners[i]);
        h2o_socket_close(lt->listeners[i]);
    }
    /* finish what is queued: keep answering while jobs of this loop are in flight (<= 10 s) */
    for (int i = 0; i < 100 && lt->n_in_flight > 0; i++)
        h2o_evloop_run(lt->ctx.loop, 100);
    return NULL;
}

void gw_signals_block(void)
{
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1); /* acmegw-admin crl generate */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static int setup_tls(struct gw_config *cfg)
{
    char *cert = gw_config_path(cfg, cfg->tls_certificate);
    char *key = gw_config_path(cfg, cfg->tls_key);
    static h2o_iovec_t protos[] = {{H2O_STRLIT("h2")}, {H2O_STRLIT("http/1.1")}, {NULL, 0}};
    int rc = -1;

    ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (ssl_ctx == NULL || cert == NULL || key == NULL)
        goto out;
    SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ssl_ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ssl_ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ssl_ctx) != 1) {
        LOG_ERROR("tls.setup", "certificate=%s key=%s error=\"cannot load the pair\"", cert, key);
        goto out;
    }
    h2o_ssl_register_alpn_protocols(ssl_ctx, protos);
    rc = 0;
out:
    ERR_clear_error();
    free(cert);
    free(key);
    return rc;
}

int gw_server_run(struct gw_server *srv)
{
    struct gw_config *cfg = srv->cfg;
    h2o_hostconf_t *host;
    h2o_pathconf_t *pathconf;
    h2o_handler_t *handler;
    int need_tls = 0, rc = 0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    sigset_t sigs;

    n_loops = cfg->threads != 0 ? cfg->threads : (unsigned)(ncpu > 0 ? ncpu : 1);
    pool.n_threads = cfg->workers != 0 ? cfg->workers : 2 * n_loops + 2;

    h2o_config_init(&h2o_config);
    h2o_config.server_name = h2o_iovec_init(H2O_STRLIT("acmegw"));
    h2o_config.max_request_entity_size = 2 * (size_t)cfg->max_body;
    h2o_config.http1.upgrade_to_http2 = 0;
    host = h2o_config_register_host(&h2o_config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    pathconf = h2o_config_register_path(host, "/", 0);
    handler = h2o_create_handler(pathconf, sizeof(*handler));
    handler->on_req = on_req;

    for (unsigned i = 0; i < cfg->listen_count; i++)
        if (!cfg->listen[i].plain_http)
            need_tls = 1;
    if (need_tls && setup_tls(cfg) != 0)
        return AGW_ERR_BAD_CONFIG;

    /* gw_signals_block() ran before any thread started: every thread inherits the mask and
     * only this thread takes SIGTERM, SIGINT and SIGHUP, with sigwait() */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGUSR1);

    loops = calloc(n_loops, sizeof(*loops));
    pool.tids = calloc(pool.n_threads, sizeof(pthread_t));
    if (loops == NULL || pool.tids == NULL)
        return AGW_ERR_NOMEM;
    for (unsigned i = 0; i < pool.n_threads; i++)
        pthread_create(&pool.tids[i], NULL, worker_main, srv);
    if (gw_crl_start(srv) != 0)
        rc = AGW_ERR_NOMEM;

    /* SO_REUSEPORT would let us silently share a port with another process of the same user
     * (a second gateway): probe each address without it first, so that is a start-up error. */
    for (unsigned j = 0; j < cfg->listen_count && rc == 0; j++) {
        int probe = listen_socket(&cfg->listen[j], 0);
        if (probe < 0)
            rc = AGW_ERR_IO;
        else
            close(probe);
    }
    /* all loops share one handler; on_req finds its loop through req->conn->ctx. Each loop gets
     * its own SO_REUSEPORT socket per listener, opened here so a bind error stops start-up. */
    for (unsigned i = 0; i < n_loops && rc == 0; i++) {
        struct loop_thread *lt = &loops[i];
        lt->srv = srv;
        for (unsigned j = 0; j < cfg->listen_count && j < 16; j++) {
            int fd = listen_socket(&cfg->listen[j], 1);
            if (fd < 0) {
                rc = AGW_ERR_IO;
                break;
            }
            lt->fds[lt->n_listeners] = fd;
            lt->plain[lt->n_listeners++] = cfg->listen[j].plain_http;
        }
    }
    if (rc == 0) {
        for (unsigned i = 0; i < n_loops; i++)
            pthread_create(&loops[i].tid, NULL, loop_main, &loops[i]);
        pthread_mutex_lock(&ready_lock);
        while (n_ready < n_loops)
            pthread_cond_wait(&ready_cond, &ready_lock);
        pthread_mutex_unlock(&ready_lock);
        for (unsigned i = 0; i < cfg->listen_count; i++)
            LOG_INFO("http.listening", "address=%s port=%u tls=%s threads=%u workers=%u",
                     cfg->listen[i].address, cfg->listen[i].port,
                     cfg->listen[i].plain_http ? "no" : "yes", n_loops, pool.n_threads);
        LOG_INFO("acme.directory", "url=%s/directory", cfg->base_url);
        /* only now: a gateway that failed to bind must not clobber the running one's pid file */
        if (cfg->pid_file != NULL) {
            char *pf = gw_config_path(cfg, cfg->pid_file);
            FILE *f = pf != NULL ? fopen(pf, "w") : NULL;
            if (f != NULL) {
                fprintf(f, "%ld\n", (long)getpid());
                fclose(f);
            }
            free(pf);
        }
        while (!stop_requested) {
            int sig = 0;
            if (sigwait(&sigs, &sig) != 0)
                continue;
            if (sig == SIGHUP)
                gw_policy_reload(srv);
            else if (sig == SIGUSR1)
                gw_crl_kick(NULL); /* every issuer: acmegw-admin crl generate */
            else
                stop_requested = 1;
        }
        LOG_INFO("server.stopping", "reason=signal");
        for (unsigned i = 0; i < n_loops; i++)
            h2o_multithread_send_message(&loops[i].waker, NULL);
        for (unsigned i = 0; i < n_loops; i++)
            pthread_join(loops[i].tid, NULL);
    }
    pthread_mutex_lock(&pool.lock);
    pool.stop = 1;
    pthread_cond_broadcast(&pool.cond);
    pthread_mutex_unlock(&pool.lock);
    for (unsigned i = 0; i < pool.n_threads; i++)
        pthread_join(pool.tids[i], NULL);
    gw_crl_stop();
    return rc;
}

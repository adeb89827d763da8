/*
 * gateway/issue.c - finalize and http-01 validation, on worker threads.
 *
 * Finalize is the one place the gateway asks the HSM to sign. Order of events (§7.4, §7.1.6):
 *   check CSR (policy) -> order ready->processing (conditional, so a finalize runs once) ->
 *   build TBS (policy) -> sign (hsm, which re-checks the policy first) -> record certificate and
 *   order processing->valid in one synchronous=FULL commit -> answer. A certificate exists for
 *   clients only after it is durably recorded.
 */
#include "gateway/issue.h"

#include "common/err.h"
#include "common/log.h"
#include "gateway/gateway.h"
#include "gateway/problem.h"
#include "hsm/hsm.h"
#include "policy/policy.h"
#include "store/store.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#define MAX_ORDER_IDENTIFIERS 1000

int gw_cert_serial_hex(const X509 *x, char *out, size_t size)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    int err = AGW_ERR_BAD_INPUT;

    if (hex != NULL && strlen(hex) < size) {
        size_t i = 0;
        for (; hex[i] != '\0'; i++)
            out[i] = (char)tolower((unsigned char)hex[i]);
        out[i] = '\0';
        err = 0;
    }
    OPENSSL_free(hex);
    BN_free(bn);
    return err;
}

int gw_issue_precheck(void *arg, const char *device_class, const X509 *tbs)
{
    struct gw_server *srv = arg;
    struct pol_set *pol = gw_policy_get(srv);
    const struct pol_class *cls =
        pol != NULL && device_class != NULL ? pol_class_find(pol, device_class) : NULL;
    char detail[256] = "";
    int err = AGW_ERR_POLICY_REJECTED;

    if (cls != NULL)
        err = pol_check_final(cls, tbs, time(NULL), detail, sizeof(detail));
    if (err != 0)
        LOG_ERROR("hsm.precheck_refused", "class=%s reason=\"%s\"",
                  device_class != NULL ? device_class : "", detail);
    pol_set_unref(pol);
    return err;
}

/* Parses the order's stored identifiers into pol_identifier views of the JSON (kept alive). */
static int order_identifiers(const struct st_order *o, json_t **root, struct pol_identifier **ids,
                             size_t *n)
{
    size_t i;
    json_t *v;

    *ids = NULL;
    *n = 0;
    *root = json_loads(o->identifiers_json, 0, NULL);
    if (*root == NULL || !json_is_array(*root) || json_array_size(*root) == 0 ||
        json_array_size(*root) > MAX_ORDER_IDENTIFIERS)
        return AGW_ERR_STORE;
    *ids = calloc(json_array_size(*root), sizeof(**ids));
    if (*ids == NULL)
        return AGW_ERR_NOMEM;
    json_array_foreach(*root, i, v)
    {
        (*ids)[i].type = json_string_value(json_object_get(v, "type"));
        (*ids)[i].value = json_string_value(json_object_get(v, "value"));
        if ((*ids)[i].type == NULL || (*ids)[i].value == NULL)
            return AGW_ERR_STORE;
    }
    *n = json_array_size(*root);
    return 0;
}

char *gw_chain_pem(const unsigned char *der, size_t der_len, const char *ca_pem, size_t ca_len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *data;
    long n;

    if (b != NULL && der_len <= INT_MAX && ca_len <= INT_MAX &&
        PEM_write_bio(b, PEM_STRING_X509, "", der, (long)der_len) > 0 &&
        (ca_len == 0 || BIO_write(b, ca_pem, (int)ca_len) == (int)ca_len)) {
        n = BIO_get_mem_data(b, &data);
        out = malloc((size_t)n + 1);
        if (out != NULL) {
            memcpy(out, data, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(b);
    return out;
}

static char *json_error(int err, const char *detail)
{
    json_t *p = gw_problem_new(err, detail);
    char *s = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    return s;
}

int gw_issue_finalize(struct gw_server *srv, struct st_order *o, const struct st_account *acct,
                      EVP_PKEY *account_key, const unsigned char *csr_der, size_t csr_len,
                      int64_t now, char *detail, size_t detail_size)
{
    struct pol_set *pol = gw_policy_get(srv);
    const struct pol_class *cls = pol != NULL ? pol_class_find(pol, o->class_name) : NULL;
    struct gw_issuer *issuer = NULL;
    struct pol_identifier *ids = NULL;
    json_t *ids_root = NULL;
    size_t n_ids = 0;
    X509_REQ *csr = NULL;
    X509 *tbs = NULL;
    unsigned char *tbs_der = NULL;
    size_t tbs_len = 0;
    struct hsm_request hreq;
    struct hsm_response hresp = {0, NULL, 0};
    struct st_cert cert;
    int err, processing = 0;

    memset(&cert, 0, sizeof(cert));
    if (cls == NULL) {
        snprintf(detail, detail_size, "the order's device class has no policy");
        err = AGW_ERR_UNAUTHORIZED;
        goto out;
    }
    issuer = gw_issuer_find(srv, pol_class_issuer(cls));
    if (issuer == NULL) {
        snprintf(detail, detail_size, "no issuer is configured for this device class");
        err = AGW_ERR_INTERNAL;
        goto out;
    }
    if (pol_csr_decode(csr_der, csr_len, &csr) != 0) {
        snprintf(detail, detail_size, "CSR is not valid DER");
        err = AGW_ERR_BAD_CSR;
        goto out;
    }
    err = order_identifiers(o, &ids_root, &ids, &n_ids);
    if (err != 0)
        goto out;
    err = pol_check_csr(cls, csr, ids, n_ids, account_key, detail, detail_size);
    if (err != 0)
        goto out;
    /* the daily certificate quota is held here, in the store's transaction: concurrent
     * finalizes of one account, at any instance, cannot pass it together */
    err = st_order_start_processing(srv->store, o->id,
                                    (int64_t)pol_class_quotas(cls)->certs_per_account_per_day,
                                    now - 86400);
    if (err == AGW_ERR_RATE_LIMITED) {
        snprintf(detail, detail_size, "quota: at most %u certificates per account per day",
                 pol_class_quotas(cls)->certs_per_account_per_day);
        LOG_INFO("acme.rate_limited", "account=%s class=%s order=%s reason=\"%s\"", acct->id,
                 o->class_name, o->id, detail);
        goto out;
    }
    if (err != 0) {
        snprintf(detail, detail_size, "the order is not ready for finalization");
        err = err == AGW_ERR_CONFLICT ? AGW_ERR_ORDER_NOT_READY : err;
        goto out;
    }
    processing = 1;
    err = pol_build_cert(cls, o->profile[0] != '\0' ? o->profile : NULL, csr,
                         hsm_ca_cert(issuer->signer), (time_t)now, &tbs);
    if (err == 0)
        err = hsm_tbs_cert(issuer->signer, tbs, &tbs_der, &tbs_len);
    if (err != 0) {
        snprintf(detail, detail_size, "could not build the certificate");
        goto out;
    }
    hreq.op = HSM_OP_SIGN_CERT;
    hreq.device_class = o->class_name;
    hreq.tbs_der = tbs_der;
    hreq.tbs_len = tbs_len;
    err = hsm_call(issuer->signer, &hreq, &hresp);
    if (err != 0) {
        snprintf(detail, detail_size, "%s",
                 err == AGW_ERR_POLICY_REJECTED
                     ? "the final certificate was refused by the policy check before signing"
                     : "the signing service is unavailable; retry later");
        goto out;
    }
    snprintf(cert.order_id, sizeof(cert.order_id), "%s", o->id);
    snprintf(cert.account_id, sizeof(cert.account_id), "%s", acct->id);
    snprintf(cert.class_name, sizeof(cert.class_name), "%s", o->class_name);
    snprintf(cert.issuer, sizeof(cert.issuer), "%s", issuer->name);
    snprintf(cert.status, sizeof(cert.status), "valid");
    err = gw_cert_serial_hex(tbs, cert.serial, sizeof(cert.serial));
    if (err != 0)
        goto out;
    cert.issued = now;
    {
        /* the HSM signs the template as it is (it re-checked it): its dates are the cert's */
        struct tm tm;
        if (ASN1_TIME_to_tm(X509_get0_notBefore(tbs), &tm) != 1) {
            err = AGW_ERR_INTERNAL;
            goto out;
        }
        cert.not_before = (int64_t)timegm(&tm);
        if (ASN1_TIME_to_tm(X509_get0_notAfter(tbs), &tm) != 1) {
            err = AGW_ERR_INTERNAL;
            goto out;
        }
        cert.not_after = (int64_t)timegm(&tm);
    }
    cert.reason = -1;
    {
        size_t len = 1;
        for (size_t i = 0; i < n_ids; i++)
            len += strlen(ids[i].value) + 1;
        cert.identifiers = calloc(1, len);
        if (cert.identifiers == NULL) {
            err = AGW_ERR_NOMEM;
            goto out;
        }
        for (size_t i = 0; i < n_ids; i++) {
            if (i > 0)
                strcat(cert.identifiers, ",");
            strcat(cert.identifiers, ids[i].value);
        }
    }
    cert.der = hresp.der;
    cert.der_len = hresp.der_len;
    cert.chain_pem = NULL; /* the issuer's chain is added at download (handle_cert) */
    err = st_cert_issue(srv->store, &cert);
    if (err != 0) {
        LOG_ERROR("acme.record_failed", "order=%s serial=%s err=%s", o->id, cert.serial,
                  agw_err_str(err));
        snprintf(detail, detail_size, "could not record the certificate; retry later");
        goto out;
    }
    processing = 0;
    snprintf(o->status, sizeof(o->status), "valid");
    snprintf(o->cert_serial, sizeof(o->cert_serial), "%s", cert.serial);
    LOG_INFO("order.finalized", "order=%s account=%s class=%s issuer=%s serial=%s", o->id,
             acct->id, o->class_name, issuer->name, cert.serial);
out:
    if (processing) {
        /* transient failures let the client retry; a policy refusal ends the order */
        if (err == AGW_ERR_POLICY_REJECTED) {
            char *e = json_error(err, detail);
            st_order_transition(srv->store, o->id, "processing", "invalid", e);
            free(e);
        } else {
            st_order_transition(srv->store, o->id, "processing", "ready", NULL);
        }
    }
    cert.der = NULL; /* hresp owns it */
    st_cert_clear(&cert);
    free(hresp.der);
    OPENSSL_free(tbs_der);
    X509_free(tbs);
    X509_REQ_free(csr);
    free(ids);
    json_decref(ids_root);
    pol_set_unref(pol);
    return err;
}

/* ---------------------------------------------------------------- http-01 (RFC 8555 §8.3) */

#define HTTP01_MAX_RESPONSE 8192
#define HTTP01_MAX_REDIRECTS 3

static int connect_timeout(const char *host, unsigned port, unsigned timeout_ms)
{
    struct addrinfo hints, *res = NULL, *ai;
    char portstr[8];
    int fd = -1;

    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof(portstr), "%u", port);
    if (getaddrinfo(host, portstr, &hints, &res) != 0)
        return -1;
    for (ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        struct pollfd pfd;
        int soerr = 0;
        socklen_t sl = sizeof(soerr);

        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            close(fd);
            fd = -1;
            continue;
        }
        pfd.fd = fd;
        pfd.events = POLLOUT;
        if (poll(&pfd, 1, (int)timeout_ms) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

/* One GET; fills body (NUL-terminated, capped) and, for redirects, location. Returns status. */
static int http_get(const char *addr, const char *host, unsigned port, const char *path,
                    unsigned timeout_ms, char *body, size_t body_size, char *location,
                    size_t loc_size)
{
    char reqbuf[1024], buf[HTTP01_MAX_RESPONSE + 1];
    size_t len = 0;
    int fd, n, status = -1;
    struct timespec start, t;
    char *hdr_end, *p;

    fd = connect_timeout(addr, port, timeout_ms);
    if (fd < 0)
        return -1;
    n = snprintf(reqbuf, sizeof(reqbuf),
                 "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: acmegw-validator\r\n"
                 "Accept: */*\r\nConnection: close\r\n\r\n",
                 path, host);
    if (n < 0 || (size_t)n >= sizeof(reqbuf) || send(fd, reqbuf, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        long elapsed;
        ssize_t r;

        clock_gettime(CLOCK_MONOTONIC, &t);
        elapsed = (t.tv_sec - start.tv_sec) * 1000 + (t.tv_nsec - start.tv_nsec) / 1000000;
        if (elapsed >= (long)timeout_ms || len >= HTTP01_MAX_RESPONSE)
            break;
        if (poll(&pfd, 1, (int)((long)timeout_ms - elapsed)) != 1)
            break;
        r = recv(fd, buf + len, HTTP01_MAX_RESPONSE - len, 0);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    if (sscanf(buf, "HTTP/1.%*[01] %d", &status) != 1)
        return -1;
    hdr_end = strstr(buf, "\r\n\r\n");
    if (hdr_end == NULL)
        return -1;
    *hdr_end = '\0';
    snprintf(body, body_size, "%s", hdr_end + 4);
    location[0] = '\0';
    for (p = strstr(buf, "\r\n"); p != NULL; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, "location:", 9) == 0) {
            char *v = p + 11, *e;
            while (*v == ' ')
                v++;
            e = strstr(v, "\r\n");
            snprintf(location, loc_size, "%.*s", (int)(e != NULL ? e - v : (long)strlen(v)), v);
        }
    }
    return status;
}

static int http01_fetch(struct gw_server *srv, const struct st_authz *a, const char *token,
                        char *body, size_t body_size, char *why, size_t why_size)
{
    char host[300], path[600], location[600];
    const char *connect_to;
    unsigned port = srv->cfg->http01_port;
    int status = -1;

    snprintf(host, sizeof(host), "%s", a->id_value); /* getaddrinfo takes bare IPv6 too */
    connect_to = srv->cfg->http01_address != NULL ? srv->cfg->http01_address : NULL;
    snprintf(path, sizeof(path), "/.well-known/acme-challenge/%s", token);
    for (int hop = 0; hop <= HTTP01_MAX_REDIRECTS; hop++) {
        status = http_get(connect_to != NULL && hop == 0 ? connect_to : host, host, port, path,
                          srv->cfg->http01_timeout_ms, body, body_size, location,
                          sizeof(location));
        if (status < 0) {
            snprintf(why, why_size, "could not connect to %.200s port %u or read a response",
                     host, port);
            return AGW_ERR_CONNECTION;
        }
        if (status < 300 || status >= 400)
            break;
        /* redirects: only to http:// URLs with the same path rules, at most 3 hops */
        if (strncmp(location, "http://", 7) != 0) {
            snprintf(why, why_size, "redirect to an unsupported location");
            return AGW_ERR_CONNECTION;
        }
        {
            char *slash = strchr(location + 7, '/');
            char *colon;
            snprintf(host, sizeof(host), "%.*s",
                     (int)(slash != NULL ? slash - (location + 7) : (long)strlen(location + 7)),
                     location + 7);
            snprintf(path, sizeof(path), "%s", slash != NULL ? slash : "/");
            colon = strrchr(host, ':');
            if (colon != NULL && strchr(host, ']') == NULL) {
                port = (unsigned)atoi(colon + 1);
                *colon = '\0';
            } else {
                port = 80;
            }
        }
    }
    if (status != 200) {
        snprintf(why, why_size, "the challenge URL answered HTTP %d", status);
        return AGW_ERR_INCORRECT_RESPONSE;
    }
    return 0;
}

void gw_issue_validate_challenge(struct gw_server *srv, const struct st_authz *a,
                                 const struct st_challenge *ch, const char *thumbprint)
{
    char body[HTTP01_MAX_RESPONSE + 1], expected[200], why[300] = "";
    size_t n;
    int err;

    snprintf(expected, sizeof(expected), "%s.%s", ch->token, thumbprint);
    err = http01_fetch(srv, a, ch->token, body, sizeof(body), why, sizeof(why));
    if (err == 0) {
        n = strlen(body);
        while (n > 0 && isspace((unsigned char)body[n - 1]))
            body[--n] = '\0';
        if (strcmp(body, expected) != 0) {
            err = AGW_ERR_INCORRECT_RESPONSE;
            snprintf(why, sizeof(why), "the key authorization does not match");
        }
    }
    if (err == 0) {
        st_challenge_transition(srv->store, ch->id, "processing", "valid", (int64_t)time(NULL),
                                NULL);
        st_authz_transition(srv->store, a->id, "pending", "valid");
        LOG_INFO("acme.challenge_valid", "authz=%s type=http-01 identifier=%s", a->id,
                 a->id_value);
    } else {
        char *e = json_error(err, why);
        st_challenge_transition(srv->store, ch->id, "processing", "invalid", 0, e);
        st_authz_transition(srv->store, a->id, "pending", "invalid");
        free(e);
        LOG_INFO("acme.challenge_invalid", "authz=%s identifier=%s reason=\"%s\"", a->id,
                 a->id_value, why);
    }
}

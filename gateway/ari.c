/*
 * gateway/ari.c - ACME Renewal Information (RFC 9773): renewalInfo and newOrder "replaces".
 *
 * GET /renewal-info/<certID> runs on a worker (it reads the store) and is the one plain GET among
 * the ACME resources besides the directory and newNonce: RFC 9773 §4.1 makes it unauthenticated.
 * A certID names a certificate by the issuer's key identifier and the serial, so lookups go by
 * serial and then the AKI keyIdentifier of the stored certificate, and of its issuer's SKI, must
 * equal the requested one: a certID that borrows our serial under another CA's key is unknown.
 * Clients may send the serial with a leading zero byte or not; we compare the canonical form we
 * compute from the stored DER, so "replaces" values are stored canonically and compared exactly.
 *
 * The window arithmetic is in ari.h (gw_ari_window), pure, so the unit test needs no server.
 */
#include "gateway/ari.h"

#include "common/err.h"
#include "common/log.h"
#include "gateway/gateway.h"
#include "gateway/issue.h"
#include "gateway/jws.h"
#include "gateway/problem.h"
#include "hsm/hsm.h"
#include "store/store.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define MAX_AKI_LEN    64
#define MAX_SERIAL_LEN 21 /* RFC 5280 §4.1.2.2: at most 20 octets, plus a sign byte */

int gw_ari_is_path(const char *path)
{
    size_t n = sizeof(GW_ARI_PATH) - 1;

    return strncmp(path, GW_ARI_PATH, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* AKI keyIdentifier of x into aki (MAX_AKI_LEN); 0 or AGW_ERR_BAD_INPUT. */
static int cert_aki(const X509 *x, unsigned char *aki, size_t *aki_len)
{
    const ASN1_OCTET_STRING *kid = X509_get0_authority_key_id((X509 *)x);
    int n = kid != NULL ? ASN1_STRING_length(kid) : 0;

    if (n <= 0 || n > MAX_AKI_LEN)
        return AGW_ERR_BAD_INPUT;
    memcpy(aki, ASN1_STRING_get0_data(kid), (size_t)n);
    *aki_len = (size_t)n;
    return 0;
}

static int cert_id_of(const X509 *x, char *out, size_t out_size)
{
    unsigned char aki[MAX_AKI_LEN], *ser = NULL;
    size_t aki_len = 0, a_len;
    int n, err;

    err = cert_aki(x, aki, &aki_len);
    if (err != 0)
        return err;
    /* the content octets of the DER INTEGER: big-endian, a 0x00 first when the top bit is set */
    {
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        int nb = bn != NULL && !BN_is_negative(bn) ? BN_num_bytes(bn) : -1;

        n = 0;
        if (nb >= 0 && nb < MAX_SERIAL_LEN)
            ser = malloc((size_t)nb + 1);
        if (ser != NULL) {
            ser[0] = 0;
            BN_bn2bin(bn, ser + 1);
            n = nb == 0 || (ser[1] & 0x80) != 0 ? nb + 1 : nb;
            if (n == nb)
                memmove(ser, ser + 1, (size_t)nb);
        }
        BN_free(bn);
        if (ser == NULL)
            return nb < 0 || nb >= MAX_SERIAL_LEN ? AGW_ERR_BAD_INPUT : AGW_ERR_NOMEM;
    }
    a_len = gw_b64url_len(aki_len);
    if (a_len + 1 + gw_b64url_len((size_t)n) + 1 > out_size ||
        gw_b64url_encode(aki, aki_len, out, out_size) != 0) {
        free(ser);
        return AGW_ERR_BAD_INPUT;
    }
    out[a_len] = '.';
    err = gw_b64url_encode(ser, (size_t)n, out + a_len + 1, out_size - a_len - 1);
    free(ser);
    return err != 0 ? AGW_ERR_BAD_INPUT : 0;
}

int gw_ari_cert_id(const unsigned char *der, size_t der_len, char *out, size_t out_size)
{
    const unsigned char *p = der;
    X509 *x = der_len <= 64 * 1024 ? d2i_X509(NULL, &p, (long)der_len) : NULL;
    int err = x != NULL ? cert_id_of(x, out, out_size) : AGW_ERR_BAD_INPUT;

    X509_free(x);
    return err;
}

/*
 * Parses a certID and loads the certificate it names. On 0, cert is filled (st_cert_clear) and
 * canon holds the canonical certID. AGW_ERR_BAD_INPUT: not a certID; AGW_ERR_NOT_FOUND: no such
 * certificate of ours; AGW_ERR_STORE.
 */
static int cert_by_id(struct gw_server *srv, const char *id, size_t id_len, struct st_cert *cert,
                      char canon[GW_ARI_MAX_CERT_ID])
{
    const char *dot = memchr(id, '.', id_len);
    unsigned char *aki = NULL, *ser = NULL;
    size_t aki_len = 0, ser_len = 0;
    char serial[ST_SERIAL_LEN];
    BIGNUM *bn = NULL;
    char *hex = NULL;
    X509 *x = NULL;
    int err = AGW_ERR_BAD_INPUT;

    memset(cert, 0, sizeof(*cert));
    if (id_len == 0 || id_len >= GW_ARI_MAX_CERT_ID || dot == NULL ||
        memchr(dot + 1, '.', id_len - (size_t)(dot + 1 - id)) != NULL)
        return AGW_ERR_BAD_INPUT;
    if (gw_b64url_decode(id, (size_t)(dot - id), &aki, &aki_len) != 0 ||
        gw_b64url_decode(dot + 1, id_len - (size_t)(dot + 1 - id), &ser, &ser_len) != 0 ||
        aki_len == 0 || aki_len > MAX_AKI_LEN || ser_len == 0 || ser_len > MAX_SERIAL_LEN ||
        (ser[0] & 0x80) != 0) /* a negative serial is not one of ours */
        goto out;
    bn = BN_bin2bn(ser, (int)ser_len, NULL);
    hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    if (hex == NULL || strlen(hex) >= sizeof(serial))
        goto out;
    for (size_t i = 0; i <= strlen(hex); i++)
        serial[i] = (char)tolower((unsigned char)hex[i]);
    err = st_cert_get(srv->store, serial, cert);
    if (err != 0)
        goto out;
    {
        const unsigned char *p = cert->der;
        x = d2i_X509(NULL, &p, (long)cert->der_len);
    }
    err = AGW_ERR_NOT_FOUND;
    if (x == NULL || cert_id_of(x, canon, GW_ARI_MAX_CERT_ID) != 0)
        goto out;
    {
        /* the AKI must be the stored certificate's, and its issuer's key identifier too */
        unsigned char mine[MAX_AKI_LEN];
        size_t mine_len = 0;
        struct gw_issuer *is = gw_issuer_find(srv, cert->issuer);
        const X509 *ca = is != NULL ? hsm_ca_cert(is->signer) : NULL;
        const ASN1_OCTET_STRING *ski = ca != NULL ? X509_get0_subject_key_id((X509 *)ca) : NULL;

        if (cert_aki(x, mine, &mine_len) != 0 || mine_len != aki_len ||
            memcmp(mine, aki, aki_len) != 0)
            goto out;
        if (ski != NULL && ((size_t)ASN1_STRING_length(ski) != aki_len ||
                            memcmp(ASN1_STRING_get0_data(ski), aki, aki_len) != 0))
            goto out;
    }
    err = 0;
out:
    if (err != 0)
        st_cert_clear(cert);
    X509_free(x);
    OPENSSL_free(hex);
    BN_free(bn);
    free(aki);
    free(ser);
    return err;
}

static void set_problem(struct gw_response *resp, int err, const char *detail)
{
    gw_response_problem(resp, err, detail);
}

void gw_ari_handle(struct gw_server *srv, const struct gw_request *req, struct gw_response *resp)
{
    size_t n = sizeof(GW_ARI_PATH) - 1;
    const char *id = req->path + n + (req->path[n] == '/' ? 1 : 0);
    char canon[GW_ARI_MAX_CERT_ID], start[32], end[32];
    struct st_cert cert;
    int64_t ws = 0, we = 0;
    json_t *body;
    int err;

    if (req->is_post || (strcmp(req->method, "GET") != 0 && !req->is_head)) {
        set_problem(resp, AGW_ERR_METHOD, "renewalInfo is read with GET (RFC 9773 §4.1)");
        resp->allow = "GET";
        return;
    }
    if (req->path[n] != '/' || id[0] == '\0') {
        set_problem(resp, AGW_ERR_NOT_FOUND, "renewalInfo needs a certID: /renewal-info/<certID>");
        return;
    }
    err = cert_by_id(srv, id, strlen(id), &cert, canon);
    if (err != 0) {
        set_problem(resp, err,
                    err == AGW_ERR_BAD_INPUT   ? "not a certID (base64url AKI '.' base64url serial)"
                    : err == AGW_ERR_NOT_FOUND ? "no certificate of this server has this certID"
                                               : NULL);
        return;
    }
    gw_ari_window(cert.not_before, cert.not_after, cert.revoked_at, &ws, &we);
    gw_time_rfc3339(ws, start, sizeof(start));
    gw_time_rfc3339(we, end, sizeof(end));
    body = json_pack("{s:{s:s, s:s}}", "suggestedWindow", "start", start, "end", end);
    resp->body = body != NULL ? json_dumps(body, JSON_INDENT(2)) : NULL;
    json_decref(body);
    if (resp->body == NULL) {
        set_problem(resp, AGW_ERR_NOMEM, NULL);
    } else {
        resp->body_len = strlen(resp->body);
        resp->status = 200;
        resp->content_type = "application/json";
        resp->retry_after = GW_ARI_RETRY_AFTER_S;
    }
    st_cert_clear(&cert);
}

int gw_ari_check_replaces(struct gw_server *srv, const char *account_id, const json_t *v,
                          int64_t now, char out[GW_ARI_MAX_CERT_ID], json_t **problem)
{
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    struct st_cert cert;
    int found = 0, err;

    *problem = NULL;
    out[0] = '\0';
    if (s == NULL || len == 0 || len >= GW_ARI_MAX_CERT_ID || strlen(s) != len) {
        *problem = gw_problem_new(AGW_ERR_BAD_INPUT, "replaces must be a certID string");
        return AGW_ERR_BAD_INPUT;
    }
    err = cert_by_id(srv, s, len, &cert, out);
    if (err == 0 && strcmp(cert.account_id, account_id) != 0)
        err = AGW_ERR_NOT_FOUND; /* another account's certificate: do not tell them apart */
    st_cert_clear(&cert);
    if (err == AGW_ERR_BAD_INPUT || err == AGW_ERR_NOT_FOUND) {
        *problem = gw_problem_new(AGW_ERR_BAD_INPUT,
                                  err == AGW_ERR_BAD_INPUT
                                      ? "replaces is not a certID"
                                      : "replaces does not name a certificate of this account");
        out[0] = '\0';
        return AGW_ERR_BAD_INPUT;
    }
    if (err == 0)
        err = st_order_replacing(srv->store, out, now, &found);
    if (err != 0) {
        *problem = gw_problem_new(AGW_ERR_STORE, "could not check replaces");
        out[0] = '\0';
        return AGW_ERR_STORE;
    }
    if (found) {
        /* RFC 9773 §5: one live replacement order per certificate */
        *problem = gw_problem_new(AGW_ERR_CONFLICT, "this certificate was already replaced by "
                                                    "another order");
        json_object_set_new(*problem, "type",
                            json_string("urn:ietf:params:acme:error:alreadyReplaced"));
        out[0] = '\0';
        return AGW_ERR_CONFLICT;
    }
    return 0;
}

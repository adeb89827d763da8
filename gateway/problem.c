/*
 * gateway/problem.c - what a client sees for each error code (RFC 8555 §6.7).
 *
 * One table: code -> HTTP status and ACME error type. The detail text tells a human what was wrong
 * with the request: never a path, SQL, a CKR code or anything secret.
 */
#include "gateway/problem.h"

#include "common/err.h"

#include <stddef.h>
#include <stdio.h>

struct problem_row {
    int err;
    int status;
    const char *type;
};

static const struct problem_row problem_rows[] = {
    {AGW_ERR_BAD_INPUT, 400, "malformed"},
    {AGW_ERR_TOO_LARGE, 413, "malformed"},
    {AGW_ERR_UNSUPPORTED_MEDIA, 415, "malformed"},
    {AGW_ERR_METHOD, 405, "malformed"},
    {AGW_ERR_NOT_FOUND, 404, "malformed"},
    {AGW_ERR_BAD_SIG_ALG, 400, "badSignatureAlgorithm"},
    {AGW_ERR_BAD_NONCE, 400, "badNonce"},
    {AGW_ERR_UNAUTHORIZED, 403, "unauthorized"},
    {AGW_ERR_POLICY_REJECTED, 403, "rejectedIdentifier"},
    {AGW_ERR_REJECTED_IDENTIFIER, 400, "rejectedIdentifier"},
    {AGW_ERR_UNSUPPORTED_IDENTIFIER, 400, "unsupportedIdentifier"},
    {AGW_ERR_HSM_UNAVAILABLE, 503, "serverInternal"},
    {AGW_ERR_DEADLINE, 503, "serverInternal"},
    {AGW_ERR_CONFLICT, 409, "malformed"},
    {AGW_ERR_ALREADY_REVOKED, 400, "alreadyRevoked"},
    {AGW_ERR_BAD_CSR, 400, "badCSR"},
    {AGW_ERR_BAD_PUBLIC_KEY, 400, "badPublicKey"},
    {AGW_ERR_ORDER_NOT_READY, 403, "orderNotReady"},
    {AGW_ERR_ACCOUNT_DOES_NOT_EXIST, 400, "accountDoesNotExist"},
    {AGW_ERR_EXTERNAL_ACCOUNT_REQUIRED, 400, "externalAccountRequired"},
    {AGW_ERR_RATE_LIMITED, 429, "rateLimited"},
    {AGW_ERR_BAD_REVOCATION_REASON, 400, "badRevocationReason"},
    {AGW_ERR_INVALID_CONTACT, 400, "invalidContact"},
    {AGW_ERR_CONNECTION, 400, "connection"},
    {AGW_ERR_INCORRECT_RESPONSE, 403, "incorrectResponse"},
    {AGW_ERR_INVALID_PROFILE, 400, "invalidProfile"},
    {AGW_ERR_USER_ACTION_REQUIRED, 403, "userActionRequired"},
};

void gw_problem_map(int err, int *status, const char **type)
{
    for (size_t i = 0; i < sizeof(problem_rows) / sizeof(problem_rows[0]); i++) {
        if (problem_rows[i].err == err) {
            *status = problem_rows[i].status;
            *type = problem_rows[i].type;
            return;
        }
    }
    *status = 500;
    *type = "serverInternal";
}

static json_t *problem_object(int err, const char *detail, int with_status)
{
    char type_urn[96];
    const char *type;
    int status;
    json_t *p;

    gw_problem_map(err, &status, &type);
    snprintf(type_urn, sizeof(type_urn), "urn:ietf:params:acme:error:%s", type);
    p = json_object();
    json_object_set_new(p, "type", json_string(type_urn));
    json_object_set_new(p, "detail", json_string(detail != NULL ? detail : agw_err_str(err)));
    if (with_status)
        json_object_set_new(p, "status", json_integer(status));
    return p;
}

json_t *gw_problem_new(int err, const char *detail)
{
    return problem_object(err, detail, 1);
}

void gw_problem_add_sub(json_t *problem, int err, const char *detail, const char *id_type,
                        const char *id_value)
{
    json_t *subs = json_object_get(problem, "subproblems");
    json_t *sub = problem_object(err, detail, 0);

    if (subs == NULL) {
        subs = json_array();
        json_object_set_new(problem, "subproblems", subs);
    }
    json_object_set_new(sub, "identifier",
                        json_pack("{s:s, s:s}", "type", id_type, "value", id_value));
    json_array_append_new(subs, sub);
}

unsigned gw_problem_retry_after(int err)
{
    switch (err) {
    case AGW_ERR_HSM_UNAVAILABLE:
    case AGW_ERR_DEADLINE:
    case AGW_ERR_STORE:
        return 5;
    case AGW_ERR_RATE_LIMITED:
        return 60;
    default:
        return 0;
    }
}

/*
 * tests/unit/test_problem.c - error codes map to the RFC 8555 problem types and statuses.
 */
#include "gateway/problem.h"

#include "common/err.h"
#include "tests/check.h"

#include <string.h>

static void check_map(int err, int want_status, const char *want_type)
{
    int status = 0;
    const char *type = NULL;

    gw_problem_map(err, &status, &type);
    CHECK_INT(status, want_status);
    CHECK_STR(type, want_type);
}

static void problem_types_follow_rfc8555(void)
{
    check_map(AGW_ERR_BAD_INPUT, 400, "malformed");
    check_map(AGW_ERR_BAD_NONCE, 400, "badNonce");
    check_map(AGW_ERR_BAD_SIG_ALG, 400, "badSignatureAlgorithm");
    check_map(AGW_ERR_UNAUTHORIZED, 403, "unauthorized");
    check_map(AGW_ERR_ACCOUNT_DOES_NOT_EXIST, 400, "accountDoesNotExist");
    check_map(AGW_ERR_EXTERNAL_ACCOUNT_REQUIRED, 400, "externalAccountRequired");
    check_map(AGW_ERR_BAD_CSR, 400, "badCSR");
    check_map(AGW_ERR_BAD_PUBLIC_KEY, 400, "badPublicKey");
    check_map(AGW_ERR_ORDER_NOT_READY, 403, "orderNotReady");
    check_map(AGW_ERR_REJECTED_IDENTIFIER, 400, "rejectedIdentifier");
    check_map(AGW_ERR_ALREADY_REVOKED, 400, "alreadyRevoked");
    check_map(AGW_ERR_BAD_REVOCATION_REASON, 400, "badRevocationReason");
    check_map(AGW_ERR_RATE_LIMITED, 429, "rateLimited");
    check_map(AGW_ERR_HSM_UNAVAILABLE, 503, "serverInternal");
    check_map(AGW_ERR_TOO_LARGE, 413, "malformed");
    check_map(AGW_ERR_UNSUPPORTED_MEDIA, 415, "malformed");
    check_map(AGW_ERR_INTERNAL, 500, "serverInternal");
    check_map(-9999, 500, "serverInternal");
}

static void problem_document_has_urn_and_status(void)
{
    json_t *p = gw_problem_new(AGW_ERR_BAD_NONCE, "stale");

    CHECK_STR(json_string_value(json_object_get(p, "type")), "urn:ietf:params:acme:error:badNonce");
    CHECK_STR(json_string_value(json_object_get(p, "detail")), "stale");
    CHECK_INT(json_integer_value(json_object_get(p, "status")), 400);
    gw_problem_add_sub(p, AGW_ERR_REJECTED_IDENTIFIER, "no", "dns", "x.example");
    CHECK_INT(json_array_size(json_object_get(p, "subproblems")), 1);
    CHECK_STR(json_string_value(json_object_get(
                  json_object_get(json_array_get(json_object_get(p, "subproblems"), 0),
                                  "identifier"),
                  "value")),
              "x.example");
    json_decref(p);
}

static void retry_after_for_unavailable_and_rate_limited_only(void)
{
    CHECK(gw_problem_retry_after(AGW_ERR_HSM_UNAVAILABLE) > 0);
    CHECK(gw_problem_retry_after(AGW_ERR_RATE_LIMITED) > 0);
    CHECK_INT(gw_problem_retry_after(AGW_ERR_BAD_INPUT), 0);
}

int main(void)
{
    RUN(problem_types_follow_rfc8555);
    RUN(problem_document_has_urn_and_status);
    RUN(retry_after_for_unavailable_and_rate_limited_only);
    return CHECK_DONE();
}

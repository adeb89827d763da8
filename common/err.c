/*
 * common/err.c - fixed text for each acmegw error code (common/err.h).
 */
#include "common/err.h"

#include <stddef.h>

static const struct {
    int code;
    const char *text;
} err_rows[] = {
    {AGW_OK, "ok"},
    {AGW_ERR_NOMEM, "out of memory"},
    {AGW_ERR_BAD_INPUT, "malformed input"},
    {AGW_ERR_BAD_SIG_ALG, "unsupported signature algorithm"},
    {AGW_ERR_BAD_NONCE, "bad nonce"},
    {AGW_ERR_UNAUTHORIZED, "unauthorized"},
    {AGW_ERR_POLICY_REJECTED, "rejected by policy"},
    {AGW_ERR_HSM_UNAVAILABLE, "HSM unavailable"},
    {AGW_ERR_STORE, "store error"},
    {AGW_ERR_NOT_FOUND, "not found"},
    {AGW_ERR_CONFLICT, "conflict"},
    {AGW_ERR_ALREADY_REVOKED, "already revoked"},
    {AGW_ERR_BAD_CSR, "bad CSR"},
    {AGW_ERR_BAD_PUBLIC_KEY, "bad public key"},
    {AGW_ERR_ORDER_NOT_READY, "order not ready"},
    {AGW_ERR_ACCOUNT_DOES_NOT_EXIST, "account does not exist"},
    {AGW_ERR_EXTERNAL_ACCOUNT_REQUIRED, "external account binding required"},
    {AGW_ERR_RATE_LIMITED, "rate limited"},
    {AGW_ERR_UNSUPPORTED_IDENTIFIER, "unsupported identifier"},
    {AGW_ERR_BAD_REVOCATION_REASON, "bad revocation reason"},
    {AGW_ERR_TOO_LARGE, "too large"},
    {AGW_ERR_UNSUPPORTED_MEDIA, "unsupported media type"},
    {AGW_ERR_METHOD, "method not allowed"},
    {AGW_ERR_EXISTS, "already exists"},
    {AGW_ERR_IO, "I/O error"},
    {AGW_ERR_INTERNAL, "internal error"},
    {AGW_ERR_INVALID_CONTACT, "invalid contact"},
    {AGW_ERR_CONNECTION, "connection failed"},
    {AGW_ERR_INCORRECT_RESPONSE, "incorrect response"},
    {AGW_ERR_INVALID_PROFILE, "invalid profile"},
    {AGW_ERR_REJECTED_IDENTIFIER, "rejected identifier"},
    {AGW_ERR_USER_ACTION_REQUIRED, "user action required"},
    {AGW_ERR_DEADLINE, "deadline exceeded"},
    {AGW_ERR_PIN_INCORRECT, "PIN incorrect"},
    {AGW_ERR_BAD_CONFIG, "bad configuration"},
};

const char *agw_err_str(int err)
{
    for (size_t i = 0; i < sizeof(err_rows) / sizeof(err_rows[0]); i++)
        if (err_rows[i].code == err)
            return err_rows[i].text;
    return "unknown error";
}

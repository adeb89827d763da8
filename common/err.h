/*
 * common/err.h - the one error language of acmegw.
 *
 * 0 is success; every failure is one of these negative codes. Foreign codes (OpenSSL, CKR, SQLite,
 * libcyaml) are translated once, at the module edge. The gateway maps codes to RFC 8555 problem
 * types in gateway/problem.c; agw_err_str() gives fixed text for logs and CLIs.
 */
#ifndef AGW_COMMON_ERR_H
#define AGW_COMMON_ERR_H

enum agw_err {
    AGW_OK = 0,
    AGW_ERR_NOMEM = -1,
    AGW_ERR_BAD_INPUT = -2,   /* malformed request, CSR or file */
    AGW_ERR_BAD_SIG_ALG = -3, /* RFC 8555 §6.2 */
    AGW_ERR_BAD_NONCE = -4,
    AGW_ERR_UNAUTHORIZED = -5,    /* bad signature, unknown account, bad EAB MAC, wrong PIN */
    AGW_ERR_POLICY_REJECTED = -6, /* well formed, but not allowed for this device class */
    AGW_ERR_HSM_UNAVAILABLE = -7, /* token lost or slow: retry later */
    AGW_ERR_STORE = -8,
    AGW_ERR_NOT_FOUND = -9,
    AGW_ERR_CONFLICT = -10, /* state changed under us, or a unique value is taken */
    AGW_ERR_ALREADY_REVOKED = -11,
    AGW_ERR_BAD_CSR = -12,
    AGW_ERR_BAD_PUBLIC_KEY = -13,
    AGW_ERR_ORDER_NOT_READY = -14,
    AGW_ERR_ACCOUNT_DOES_NOT_EXIST = -15,
    AGW_ERR_EXTERNAL_ACCOUNT_REQUIRED = -16,
    AGW_ERR_RATE_LIMITED = -17,
    AGW_ERR_UNSUPPORTED_IDENTIFIER = -18,
    AGW_ERR_BAD_REVOCATION_REASON = -19,
    AGW_ERR_TOO_LARGE = -20,
    AGW_ERR_UNSUPPORTED_MEDIA = -21,
    AGW_ERR_METHOD = -22,
    AGW_ERR_EXISTS = -23, /* refuse to overwrite a key, certificate or file */
    AGW_ERR_IO = -24,
    AGW_ERR_INTERNAL = -25,
    AGW_ERR_INVALID_CONTACT = -26,
    AGW_ERR_CONNECTION = -27,         /* http-01: could not reach the client */
    AGW_ERR_INCORRECT_RESPONSE = -28, /* http-01: wrong key authorization */
    AGW_ERR_INVALID_PROFILE = -29,
    AGW_ERR_REJECTED_IDENTIFIER = -30,
    AGW_ERR_USER_ACTION_REQUIRED = -31,
    AGW_ERR_DEADLINE = -32, /* a job ran past its deadline */
    AGW_ERR_PIN_INCORRECT = -33,
    AGW_ERR_BAD_CONFIG = -34,
};

/* Fixed text for logs and CLIs, never NULL. */
const char *agw_err_str(int err);

#endif

/*
 * gateway/issue.h - finalize (RFC 8555 §7.4) and challenge validation (§8.3), worker side.
 */
#ifndef AGW_GATEWAY_ISSUE_H
#define AGW_GATEWAY_ISSUE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

struct gw_server;
struct st_order;
struct st_account;
struct st_authz;
struct st_challenge;

/*
 * Checks the CSR against the order and the class policy, moves the order ready -> processing,
 * builds the certificate, has the HSM sign it (after the precheck there re-runs the policy on the
 * final certificate), records it with synchronous=FULL and moves the order to valid; only then is
 * it downloadable. o is updated (status, cert_serial). On a transient HSM failure the order goes
 * back to ready so the client may retry. detail gets a human reason on failure.
 * Returns 0, AGW_ERR_BAD_CSR, AGW_ERR_BAD_PUBLIC_KEY, AGW_ERR_ORDER_NOT_READY,
 * AGW_ERR_HSM_UNAVAILABLE, AGW_ERR_POLICY_REJECTED, AGW_ERR_STORE, AGW_ERR_NOMEM.
 */
int gw_issue_finalize(struct gw_server *srv, struct st_order *o, const struct st_account *acct,
                      EVP_PKEY *account_key, const unsigned char *csr_der, size_t csr_len,
                      int64_t now, char *detail, size_t detail_size);

/* Validates an http-01 challenge now (blocking, bounded by the configured timeout) and records
 * the result on the challenge and its authorization. thumbprint is the account key's. */
void gw_issue_validate_challenge(struct gw_server *srv, const struct st_authz *a,
                                 const struct st_challenge *ch, const char *thumbprint);

/* Precheck for hsm/: re-runs the class policy on the final TBS certificate. arg is the server. */
int gw_issue_precheck(void *arg, const char *device_class, const X509 *tbs);

/* Lower-case hex serial of x into out (ST_SERIAL_LEN). */
int gw_cert_serial_hex(const X509 *x, char *out, size_t size);
/* The PEM served at a certificate URL: the leaf, straight from its DER (no decode: OpenSSL 3.0's
 * d2i_X509 runs the public-key decoder), then ca_pem (the issuer's chain file, ca_len bytes; may
 * be empty). NULL if out of memory. Owned by the caller: free(). */
char *gw_chain_pem(const unsigned char *der, size_t der_len, const char *ca_pem, size_t ca_len);

#endif

/*
 * policy/policy.h - what each device class may get.
 *
 * A policy set is every class loaded from the policy directory (one YAML file per class), or a
 * built-in default class. Policy is pure: no I/O after load, no clock (callers pass now), no
 * store (the gateway passes counts in), no PKCS#11. The same checks run at the gateway (newOrder,
 * finalize) and again on the final to-be-signed certificate just before the HSM signs it.
 *
 * Sets are reference-counted so a hot reload can swap them atomically while requests in flight
 * finish under the set they started with.
 */
#ifndef AGW_POLICY_H
#define AGW_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/x509.h>

struct pol_set;   /* opaque, refcounted */
struct pol_class; /* opaque, lives as long as its set */

enum pol_validation { POL_VALIDATE_PRE_AUTHORIZED = 1, POL_VALIDATE_HTTP01 = 2 };

/* Built-in class "default": dns names equal to or under dns_suffix (e.g. "device.test"),
 * validity_days, pre-authorized, EC P-256/P-384 or RSA >= 2048 CSR keys, serverAuth+clientAuth.
 * issuer is the issuer name certificates of this class are signed by. */
int pol_set_default(const char *dns_suffix, unsigned validity_days, const char *issuer,
                    struct pol_set **out);
struct pol_set *pol_set_ref(struct pol_set *p);
void pol_set_unref(struct pol_set *p); /* accepts NULL */

const struct pol_class *pol_class_find(const struct pol_set *p, const char *name);
const char *pol_class_name(const struct pol_class *c);
const char *pol_class_issuer(const struct pol_class *c);
enum pol_validation pol_class_validation(const struct pol_class *c);
unsigned pol_class_max_identifiers(const struct pol_class *c);

struct pol_identifier {
    const char *type;  /* "dns" | "ip" */
    const char *value; /* NUL-terminated, already length-checked by the gateway */
};

/*
 * newOrder check. results[i] gets 0 or an AGW_ERR_* for identifier i (AGW_ERR_REJECTED_IDENTIFIER,
 * AGW_ERR_UNSUPPORTED_IDENTIFIER, AGW_ERR_BAD_INPUT); returns 0 when all pass, else the first
 * failure. client_ip (textual, may be NULL) is checked against the class's source CIDRs for
 * pre-authorized validation.
 */
int pol_check_identifiers(const struct pol_class *c, const struct pol_identifier *ids, size_t n,
                          const char *client_ip, int *results);

/*
 * finalize check of the CSR: signature verified, key type/size allowed, key not the account key,
 * its identifiers (SAN dNSName/iPAddress plus CN) exactly the order's set. detail receives a
 * human-readable reason naming the rule (no secrets). Returns 0, AGW_ERR_BAD_CSR or
 * AGW_ERR_BAD_PUBLIC_KEY.
 */
int pol_check_csr(const struct pol_class *c, const X509_REQ *csr, const struct pol_identifier *ids,
                  size_t n, const EVP_PKEY *account_key, char *detail, size_t detail_size);

/*
 * Builds the certificate template: version 3, random serial (>= 64 bits; we use 128 with the top
 * bit clear), subject (CN from the first SAN), issuer name from issuer_cert, validity from now
 * (capped at the issuer's notAfter), the CSR key, SAN, SKI, AKI (from the issuer's SKI),
 * basicConstraints CA:FALSE, KU and EKU per class. *out owned by the caller (X509_free).
 * profile may be NULL (the class default).
 */
int pol_build_cert(const struct pol_class *c, const char *profile, const X509_REQ *csr,
                   const X509 *issuer_cert, time_t now, X509 **out);

/* The last check, on the final TBS certificate (hsm precheck): validity within the class maximum
 * and the issuer's notAfter, CA:FALSE, KU/EKU as the class says, SANs allowed by the class. */
int pol_check_final(const struct pol_class *c, const X509 *tbs, time_t now, char *detail,
                    size_t detail_size);

#endif

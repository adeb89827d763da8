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
#include <stdio.h>
#include <time.h>

#include <openssl/x509.h>

struct pol_set;   /* opaque, refcounted */
struct pol_class; /* opaque, lives as long as its set */

enum pol_validation { POL_VALIDATE_PRE_AUTHORIZED = 1, POL_VALIDATE_HTTP01 = 2 };

/* Built-in class "default": dns names equal to or under dns_suffix (e.g. "device.test"),
 * validity_days, pre-authorized, EC P-256/P-384 or RSA >= 2048 CSR keys, serverAuth+clientAuth.
 * issuer is the issuer name certificates of this class are signed by.
 * dns_suffix must be a lowercase LDH name without wildcard; validity_days 0 means 90, at most
 * 3650; issuer non-empty. Returns 0, AGW_ERR_BAD_CONFIG or AGW_ERR_NOMEM; *out holds one
 * reference. */
int pol_set_default(const char *dns_suffix, unsigned validity_days, const char *issuer,
                    struct pol_set **out);
/*
 * Loads every *.yaml in dir, one class per file named after it ("devices.yaml" is class
 * "devices"; the format is described at the top of policy/load.c). Strict: unknown keys, wrong
 * types and contradictions are errors. err receives the first problem as "FILE:LINE:COL: text".
 * Returns 0 (*out holds one reference), AGW_ERR_BAD_CONFIG, AGW_ERR_IO or AGW_ERR_NOMEM.
 */
int pol_set_load_dir(const char *dir, struct pol_set **out, char *err, size_t err_size);
/*
 * Checks one policy file and prints every problem to out as "FILE:LINE:COL: message" lines.
 * Returns 0 when the file would load, AGW_ERR_BAD_CONFIG, AGW_ERR_IO or AGW_ERR_NOMEM.
 */
int pol_lint_file(const char *path, FILE *out);
struct pol_set *pol_set_ref(struct pol_set *p);
void pol_set_unref(struct pol_set *p); /* accepts NULL */
/*
 * Gives every profile without crl_urls one CRL distribution point, "<url_base>/crl/<issuer>.crl"
 * with the class's issuer (the gateway serves its CRLs there). Call it right after loading, before
 * the set is shared: it changes the set. url_base is borrowed (copied); NULL or "" does nothing.
 * Returns 0, AGW_ERR_BAD_INPUT (url_base too long) or AGW_ERR_NOMEM (the set is then unchanged
 * only in part: drop it).
 */
int pol_set_default_crl_urls(struct pol_set *p, const char *url_base);
/* Name and description (NULL if none) of profile i of class c; NULL name past the end. */
const char *pol_class_profile_name(const struct pol_class *c, size_t i);
const char *pol_class_profile_description(const struct pol_class *c, size_t i);

/* The class called name, or NULL (also for a NULL name: there is no implicit class). */
const struct pol_class *pol_class_find(const struct pol_set *p, const char *name);
const char *pol_class_name(const struct pol_class *c);
const char *pol_class_issuer(const struct pol_class *c);
enum pol_validation pol_class_validation(const struct pol_class *c);
unsigned pol_class_max_identifiers(const struct pol_class *c);

/* Quotas of a class (0 = no limit). The gateway counts from the store and compares; policy/
 * stays free of I/O. */
struct pol_quotas {
    unsigned certs_per_account_per_day;   /* certificates issued to one account in 24 h */
    unsigned pending_orders_per_account;  /* orders not yet finalized: pending or ready */
    unsigned orders_per_eab_key_per_hour; /* new orders of all accounts bound to one EAB key */
};
const struct pol_quotas *pol_class_quotas(const struct pol_class *c);
/* false when one EAB key of this class may bind only one ACME account (default true). */
bool pol_class_eab_multiple_accounts(const struct pol_class *c);
/* Classes of the set, for start-up checks (issuers exist) and listings. */
size_t pol_set_n_classes(const struct pol_set *p);
const struct pol_class *pol_set_class_at(const struct pol_set *p, size_t i);

struct pol_identifier {
    const char *type;  /* "dns" | "ip" */
    const char *value; /* NUL-terminated, already length-checked by the gateway; dns values
                        * lowercased by the gateway (RFC 4343): uppercase is AGW_ERR_BAD_INPUT */
};

/*
 * newOrder check. results[i] gets 0 or an AGW_ERR_* for identifier i (AGW_ERR_REJECTED_IDENTIFIER,
 * AGW_ERR_UNSUPPORTED_IDENTIFIER, AGW_ERR_BAD_INPUT); returns 0 when all pass, else the first
 * failure. client_ip (textual, may be NULL) is checked against the class's source CIDRs for
 * pre-authorized validation.
 * Malformed (not lowercase LDH, bad "*." placement, non-canonical ip text) is AGW_ERR_BAD_INPUT;
 * well formed but not allowed by the class (including identifiers past max_identifiers, at
 * index >= pol_class_max_identifiers()) is AGW_ERR_REJECTED_IDENTIFIER; a type other than "dns"
 * and "ip" is AGW_ERR_UNSUPPORTED_IDENTIFIER; an allowed identifier from a client outside the
 * class's source CIDRs is AGW_ERR_UNAUTHORIZED. n == 0 is AGW_ERR_BAD_INPUT.
 */
int pol_check_identifiers(const struct pol_class *c, const struct pol_identifier *ids, size_t n,
                          const char *client_ip, int *results);

/*
 * Decodes a CSR (DER, exactly len bytes) without running OpenSSL 3.0's public-key decoder on it:
 * the pol_ functions below build its key from its parts when they need it (policy/der.c says
 * why). Any X509_REQ works with them; this one is ~70 us cheaper. *out owned by the caller
 * (X509_REQ_free). Returns 0 or AGW_ERR_BAD_CSR (not DER of one request, or bytes after it).
 */
int pol_csr_decode(const unsigned char *der, size_t len, X509_REQ **out);

/*
 * The library context pol_csr_decode() decodes in: it holds only OpenSSL's "null" provider, so a
 * CSR or certificate decoded in it (ASN1_item_d2i_ex) keeps its subject key undecoded, and the
 * pol_ checks build the key from its parts. For the signer's decode of the final certificate.
 * Made on first use, lives as long as the process; NULL if it could not be made.
 */
OSSL_LIB_CTX *pol_keyless_libctx(void);

/*
 * finalize check of the CSR: signature verified, key type/size allowed, key not the account key,
 * its identifiers (SAN dNSName/iPAddress plus CN) exactly the order's set. detail receives a
 * human-readable reason naming the rule (no secrets). Returns 0, AGW_ERR_BAD_CSR or
 * AGW_ERR_BAD_PUBLIC_KEY (AGW_ERR_BAD_INPUT for NULL arguments or n == 0; AGW_ERR_NOMEM).
 * dns names compare case-insensitively and as sets (duplicates are fine). Only the key and the
 * names are used: other subject attributes, keyUsage/extendedKeyUsage and other extensions are
 * ignored and never copied; a CSR asking for CA:TRUE, with another SAN type (email, URI, ...) or
 * an extension twice is AGW_ERR_BAD_CSR.
 */
int pol_check_csr(const struct pol_class *c, const X509_REQ *csr, const struct pol_identifier *ids,
                  size_t n, const EVP_PKEY *account_key, char *detail, size_t detail_size);

/*
 * Builds the certificate template: version 3, random serial (>= 64 bits; we use 128 with the top
 * bit clear), subject (CN from the first SAN), issuer name from issuer_cert, validity from now
 * (capped at the issuer's notAfter), the CSR key, SAN, SKI, AKI (from the issuer's SKI),
 * basicConstraints CA:FALSE, KU and EKU per class. *out owned by the caller (X509_free).
 * profile may be NULL (the class default). The CN is the CSR's CN if it has one (it is one of
 * the SANs), else the first SAN; longer than 64 characters: empty subject, critical SAN.
 * Call pol_check_csr() first. Returns 0, AGW_ERR_INVALID_PROFILE, AGW_ERR_BAD_CSR,
 * AGW_ERR_BAD_PUBLIC_KEY, AGW_ERR_BAD_CONFIG (issuer expired), AGW_ERR_INTERNAL (RNG),
 * AGW_ERR_NOMEM. The template is unsigned: the HSM sets the signature algorithm.
 */
int pol_build_cert(const struct pol_class *c, const char *profile, const X509_REQ *csr,
                   const X509 *issuer_cert, time_t now, X509 **out);

/* The last check, on the final TBS certificate (hsm precheck): validity within the class maximum
 * (+60 s backdate), notBefore within 5 min of now, CA:FALSE, KU/EKU exactly as the class says,
 * SANs allowed by the class, no unknown or duplicate extensions. (The issuer's notAfter is not
 * passed in, so it is not checked here: pol_build_cert() caps it.) Returns 0,
 * AGW_ERR_POLICY_REJECTED with detail, or AGW_ERR_BAD_INPUT for NULL arguments. */
int pol_check_final(const struct pol_class *c, const X509 *tbs, time_t now, char *detail,
                    size_t detail_size);

#endif

/*
 * policy/internal.h - what a device class is made of, shared by the files of policy/ only.
 *
 * A class is plain data: every rule is a field with a fixed meaning, filled either by
 * pol_set_default() (set.c) or, in stage 2, by the YAML loader (load.c), which parses a file into
 * its own libcyaml schema structs and then converts them into these. Keeping the YAML schema out of
 * this header means the checks (identifiers.c, csr.c, certificate.c) never see how a rule was
 * written down, and a change of file format is a change in load.c only.
 *
 * Ownership: a pol_set owns its classes array; each class owns its strings and arrays (all
 * malloc'd, released by pol_class_clear()). Nothing in a class is modified after the set is
 * published, so readers on any thread need no lock; only the set's reference count is shared.
 */
#ifndef AGW_POLICY_INTERNAL_H
#define AGW_POLICY_INTERNAL_H

#include "policy/policy.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/x509v3.h>

/* RFC 1035 §2.3.4 limits, and the textual form of a name without the trailing dot. */
#define POL_DNS_MAX_LEN       253
#define POL_DNS_MAX_LABEL_LEN 63
/* Room for a DNS name or an IPv6 address in text, with the NUL. */
#define POL_NAME_TEXT_SIZE 256
/* A CSR naming more than this many SANs is refused before comparing sets. */
#define POL_MAX_CSR_NAMES 1000
/* RSA keys above this are refused whatever a class says: verify cost grows with the size. */
#define POL_RSA_HARD_MAX_BITS 8192
#define POL_RSA_MAX_EXPONENT_BITS 256 /* CA/B BR 6.1.6: e <= 2^256 - 1 */
/* notBefore is set this far in the past so clients with a slow clock accept the certificate. */
#define POL_BACKDATE_S 60
/* pol_check_final(): slack between pol_build_cert() and the final check (HSM queue, clock). */
#define POL_FINAL_SLACK_S 300
/* Validity caps any class may ask for (keeps time_t arithmetic far from overflow). */
#define POL_MAX_VALIDITY_DAYS 3650

enum pol_id_type { POL_ID_DNS = 1, POL_ID_IP = 2 };

/* Key kinds a CSR may carry, as a bit mask in pol_key_rules.kinds. */
enum pol_key_kind {
    POL_KEY_EC_P256 = 1u << 0,
    POL_KEY_EC_P384 = 1u << 1,
    POL_KEY_RSA = 1u << 2, /* sizes from rsa_min_bits..rsa_max_bits */
    POL_KEY_ED25519 = 1u << 3,
};

/* Key usage bits as a mask of (1u << RFC 5280 §4.2.1.3 bit number). */
enum pol_ku {
    POL_KU_DIGITAL_SIGNATURE = 1u << 0,
    POL_KU_CONTENT_COMMITMENT = 1u << 1,
    POL_KU_KEY_ENCIPHERMENT = 1u << 2,
    POL_KU_DATA_ENCIPHERMENT = 1u << 3,
    POL_KU_KEY_AGREEMENT = 1u << 4,
    /* keyCertSign (5) and cRLSign (6) are never allowed: leaf certificates only. */
    POL_KU_ENCIPHER_ONLY = 1u << 7,
    POL_KU_DECIPHER_ONLY = 1u << 8,
};
#define POL_KU_NBITS 9

/* Extended key usages as a bit mask; pol_eku_nid() maps each bit to its OpenSSL NID. */
enum pol_eku {
    POL_EKU_SERVER_AUTH = 1u << 0,
    POL_EKU_CLIENT_AUTH = 1u << 1,
    POL_EKU_CODE_SIGNING = 1u << 2,
    POL_EKU_EMAIL_PROTECTION = 1u << 3,
    POL_EKU_TIME_STAMPING = 1u << 4,
    POL_EKU_OCSP_SIGNING = 1u << 5,
};
#define POL_EKU_NBITS 6

/* An address range; family is AF_INET (addr_len 4) or AF_INET6 (addr_len 16). */
struct pol_cidr {
    int family;
    unsigned char addr[16]; /* host bits beyond prefix_len are zero */
    size_t addr_len;
    unsigned prefix_len;
};

/*
 * A DNS pattern: "name" matches exactly that name; "*.name" (subtree) matches every name with one
 * or more labels under it, at a label boundary ("a.b.name" yes, "xname" no), but not name itself.
 * A wildcard identifier "*.x" is allowed (when wildcards are) if some subtree pattern's name is x
 * or a parent of x, i.e. every name the wildcard covers is allowed.
 */
struct pol_dns_pattern {
    char *name; /* lowercase, validated, no "*." */
    bool subtree;
};

struct pol_identifier_rules {
    bool allow_dns;
    bool allow_ip;
    bool allow_wildcards;
    struct pol_dns_pattern *dns; /* a dns name must match one; none: no dns name allowed */
    size_t n_dns;
    struct pol_cidr *ip_ranges; /* an ip identifier must fall in one; none: no ip allowed */
    size_t n_ip_ranges;
    unsigned max_identifiers; /* per order, >= 1 */
};

struct pol_validation_rules {
    enum pol_validation method;
    /* Pre-authorized only: the ACME client's source address must fall in one; none: any. */
    struct pol_cidr *sources;
    size_t n_sources;
};

struct pol_key_rules {
    unsigned kinds; /* enum pol_key_kind mask */
    unsigned rsa_min_bits;
    unsigned rsa_max_bits; /* <= POL_RSA_HARD_MAX_BITS */
};

enum pol_subject_cn { POL_CN_OPTIONAL = 0, POL_CN_REQUIRED = 1, POL_CN_FORBIDDEN = 2 };

/*
 * Subject rules. The CSR's CN, if any, must be one of its SANs; every other subject attribute of
 * the CSR is ignored and never copied. The certificate's subject is CN = one name (or empty, with
 * the SAN critical, when the name is longer than 64 characters or cert_cn is false).
 */
struct pol_subject_rules {
    enum pol_subject_cn csr_cn;
    bool cert_cn;
};

/* What a certificate of a profile looks like. Validity in seconds so a lab class may use hours. */
struct pol_profile {
    char *name;
    char *description;          /* for the ACME directory's meta.profiles; NULL if none */
    int64_t default_validity_s; /* > 0, <= max_validity_s */
    int64_t max_validity_s;     /* what pol_check_final() allows */
    unsigned ku;                /* enum pol_ku mask for every key type */
    unsigned ku_rsa_extra;      /* added when the key is RSA (keyEncipherment for TLS 1.2 RSA kx) */
    unsigned eku;               /* enum pol_eku mask; 0: no EKU extension */
    char **policy_oids;         /* certificatePolicies, dotted OIDs (stage 2) */
    size_t n_policy_oids;
    char **crl_urls; /* cRLDistributionPoints fullName URIs (stage 2) */
    size_t n_crl_urls;
    char **ocsp_urls; /* authorityInfoAccess id-ad-ocsp (stage 2) */
    size_t n_ocsp_urls;
    char **ca_issuer_urls; /* authorityInfoAccess id-ad-caIssuers (stage 2) */
    size_t n_ca_issuer_urls;
};

/* The quota limits are struct pol_quotas in policy.h (the gateway counts; 0 = no limit). */

struct pol_class {
    char *name;
    char *issuer; /* names the issuing CA (the gateway maps it to an HSM key and certificate) */
    struct pol_identifier_rules ids;
    struct pol_validation_rules validation;
    struct pol_key_rules keys;
    struct pol_subject_rules subject;
    struct pol_profile *profiles; /* >= 1 */
    size_t n_profiles;
    size_t default_profile; /* index into profiles */
    struct pol_quotas quota;
    bool eab_multiple_accounts; /* false: one account per EAB key */
};

struct pol_set {
    atomic_uint refs;
    struct pol_class *classes;
    size_t n_classes;
};

/* A name taken from a CSR or certificate SAN, normalised: dns lowercased, ip in both forms. */
struct pol_name {
    enum pol_id_type type;
    char text[POL_NAME_TEXT_SIZE]; /* dns lowercase / canonical ip text */
    unsigned char ip[16];
    size_t ip_len; /* 4 or 16 for ip, 0 for dns */
};

/* set.c */
void pol_class_clear(struct pol_class *c); /* frees what c owns; c itself is not freed */
void pol_profile_clear(struct pol_profile *p);
const struct pol_profile *pol_profile_find(const struct pol_class *c, const char *name);
/* Writes printf-style text into detail (may be NULL or size 0). */
void pol_detail(char *detail, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int pol_eku_nid(unsigned bit_index); /* NID for bit i of enum pol_eku, NID_undef past the end */
const char *pol_eku_name(unsigned bit_index);

/* identifiers.c */
/* 0 if s[0..len) is a lowercase LDH dns name, or "*." + one; *wildcard says which. */
int pol_dns_syntax(const char *s, size_t len, bool *wildcard);
/* Canonical textual ip (RFC 1123 §2.1 / RFC 5952 §4) to bytes; AGW_ERR_BAD_INPUT otherwise. */
int pol_ip_parse(const char *text, unsigned char out[16], size_t *out_len);
/* "a.b.c.d/n" or "v6/n"; host bits must be zero. 0 or AGW_ERR_BAD_INPUT. */
int pol_cidr_parse(const char *text, struct pol_cidr *out);
bool pol_cidr_contains(const struct pol_cidr *r, const unsigned char *addr, size_t addr_len);
/* One identifier against the class's identifier rules, without source-address checks. */
int pol_check_one(const struct pol_class *c, enum pol_id_type type, const char *value);

/* csr.c */
/*
 * Decodes a GENERAL_NAMES into normalised names. Only dNSName and iPAddress are accepted; anything
 * else, an unparsable or non-LDH dNSName, or more than POL_MAX_CSR_NAMES entries is
 * AGW_ERR_BAD_INPUT with detail. *out (malloc'd, caller frees) may hold duplicates.
 */
int pol_names_from_gens(const GENERAL_NAMES *gens, struct pol_name **out, size_t *n_out,
                        char *detail, size_t detail_size);
/* The CSR's (or certificate's) CN, normalised like a SAN: 0 with *found false if none. */
int pol_subject_cn(const X509_NAME *subject, struct pol_name *out, bool *found, char *detail,
                   size_t detail_size);
/* The key of a SubjectPublicKeyInfo (of a CSR or certificate): the one OpenSSL decoded with it,
 * else one built from its parts into *owned (der.c; the caller frees *owned). NULL if the key
 * does not parse. */
const EVP_PKEY *pol_pubkey(const X509_PUBKEY *spki, EVP_PKEY **owned);
/* Classifies a key: the enum pol_key_kind bit (0 if none) and a name such as "rsa-1024". */
unsigned pol_key_kind_of(const EVP_PKEY *key, char *name, size_t name_size);
/* 0 if the key is allowed by the class, else AGW_ERR_BAD_PUBLIC_KEY with detail. */
int pol_check_key(const struct pol_class *c, const EVP_PKEY *key, char *detail, size_t detail_size);
/*
 * A CSR's names: its SANs (pol_names_from_gens() rules) plus the rules on its other extensions and
 * on its subject CN (see csr.c). 0 or AGW_ERR_BAD_CSR / AGW_ERR_NOMEM; *out malloc'd, >= 1 name.
 */
int pol_csr_names(X509_REQ *csr, struct pol_name **out, size_t *n_out, char *detail,
                  size_t detail_size);
bool pol_name_eq(const struct pol_name *a, const struct pol_name *b);
bool pol_name_in(const struct pol_name *name, const struct pol_name *set, size_t n);

/* load.c */
/*
 * Loads one policy file into *out (class name from the file name). Problems go to diag_out
 * (every one, as FILE:LINE:COL: message lines; may be NULL) and the first into err. Returns 0,
 * AGW_ERR_BAD_CONFIG, AGW_ERR_IO (unreadable) or AGW_ERR_NOMEM; on failure *out is cleared.
 */
int pol_load_file(const char *path, struct pol_class *out, FILE *diag_out, char *err,
                  size_t err_size);

/* certificate.c */
/* KU mask (enum pol_ku) a certificate of profile p for key must carry. */
unsigned pol_expected_ku(const struct pol_profile *p, const EVP_PKEY *key);
int pol_asn1_time_to_time_t(const ASN1_TIME *t, int64_t *out);

#endif

/*
 * policy/csr.c - the finalize check of a CSR (RFC 8555 §7.4) and the name and key helpers the
 * certificate checks share.
 *
 * In order, each failing with a detail that names the rule:
 *   1. the CSR is version 1 and its signature verifies with its own key      else AGW_ERR_BAD_CSR
 *   2. the key's type and size are allowed by the class            else AGW_ERR_BAD_PUBLIC_KEY
 *   3. the key is not the ACME account key (RFC 8555 §11.1)                  else AGW_ERR_BAD_CSR
 *   4. extensions parse, none appears twice, basicConstraints (if any) is CA:FALSE, SANs are only
 *      dNSName and iPAddress, the subject CN (if any) is one of the SANs     else AGW_ERR_BAD_CSR
 *   5. the CSR's names, as a set, equal the order's identifiers              else AGW_ERR_BAD_CSR
 *
 * Only the key and the names are taken from a CSR. Its subject attributes other than CN, its
 * keyUsage and extendedKeyUsage (the class decides those) and every other extension are ignored
 * and never copied into the certificate; we only refuse a CSR that asks to be a CA, since that
 * request can never be honoured and is more likely an error than an intent.
 *
 * Every byte from the CSR is untrusted: lengths come from the ASN.1 objects and are checked
 * before copying, names must be printable LDH text, and the number of names is capped.
 */
#include "policy/policy.h"

#include "common/err.h"
#include "policy/internal.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

/* Real CSRs ask for a handful; the duplicate check below is quadratic. */
#define POL_MAX_CSR_EXTENSIONS 64

static const char *gen_type_name(int type)
{
    switch (type) {
    case GEN_OTHERNAME:
        return "otherName";
    case GEN_EMAIL:
        return "rfc822Name";
    case GEN_DNS:
        return "dNSName";
    case GEN_X400:
        return "x400Address";
    case GEN_DIRNAME:
        return "directoryName";
    case GEN_EDIPARTY:
        return "ediPartyName";
    case GEN_URI:
        return "uniformResourceIdentifier";
    case GEN_IPADD:
        return "iPAddress";
    case GEN_RID:
        return "registeredID";
    default:
        return "unknown";
    }
}

/* Copies an ASN.1 string holding a DNS name (any case), lowercased, and checks its syntax. */
static int dns_from_asn1(const ASN1_STRING *s, struct pol_name *out)
{
    const unsigned char *data = ASN1_STRING_get0_data(s);
    int len = ASN1_STRING_length(s);
    bool wildcard;

    if (data == NULL || len <= 0 || (size_t)len >= sizeof(out->text))
        return AGW_ERR_BAD_INPUT;
    for (int i = 0; i < len; i++) {
        unsigned char ch = data[i];

        if (ch <= 0x20 || ch >= 0x7f)
            return AGW_ERR_BAD_INPUT; /* NUL, space, control or non-ASCII */
        out->text[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
    }
    out->text[len] = '\0';
    if (pol_dns_syntax(out->text, (size_t)len, &wildcard) != 0)
        return AGW_ERR_BAD_INPUT;
    out->type = POL_ID_DNS;
    out->ip_len = 0;
    return 0;
}

static int ip_from_octets(const ASN1_OCTET_STRING *s, struct pol_name *out)
{
    const unsigned char *data = ASN1_STRING_get0_data(s);
    int len = ASN1_STRING_length(s);
    int family;

    if (data == NULL || (len != 4 && len != 16))
        return AGW_ERR_BAD_INPUT; /* 8 or 32 would be a name constraint, not an address */
    family = len == 4 ? AF_INET : AF_INET6;
    memcpy(out->ip, data, (size_t)len);
    out->ip_len = (size_t)len;
    if (inet_ntop(family, out->ip, out->text, sizeof(out->text)) == NULL)
        return AGW_ERR_BAD_INPUT;
    out->type = POL_ID_IP;
    return 0;
}

int pol_names_from_gens(const GENERAL_NAMES *gens, struct pol_name **out, size_t *n_out,
                        char *detail, size_t detail_size)
{
    struct pol_name *names = NULL;
    int count = sk_GENERAL_NAME_num(gens);
    int err = 0;

    *out = NULL;
    *n_out = 0;
    if (count < 0)
        count = 0;
    if ((size_t)count > POL_MAX_CSR_NAMES) {
        pol_detail(detail, detail_size, "too many subjectAltNames (%d, at most %d)", count,
                   POL_MAX_CSR_NAMES);
        return AGW_ERR_BAD_INPUT;
    }
    if (count == 0)
        return 0;
    names = calloc((size_t)count, sizeof(*names));
    if (names == NULL)
        return AGW_ERR_NOMEM;
    for (int i = 0; i < count; i++) {
        const GENERAL_NAME *gen = sk_GENERAL_NAME_value(gens, i);

        if (gen == NULL) {
            err = AGW_ERR_BAD_INPUT;
            pol_detail(detail, detail_size, "subjectAltName entry %d does not parse", i);
            break;
        }
        if (gen->type == GEN_DNS) {
            err = dns_from_asn1(gen->d.dNSName, &names[i]);
            if (err != 0)
                pol_detail(detail, detail_size, "subjectAltName dNSName %d is not a DNS name", i);
        } else if (gen->type == GEN_IPADD) {
            err = ip_from_octets(gen->d.iPAddress, &names[i]);
            if (err != 0)
                pol_detail(detail, detail_size, "subjectAltName iPAddress %d is not an address", i);
        } else {
            err = AGW_ERR_BAD_INPUT;
            pol_detail(detail, detail_size, "subjectAltName type %s is not allowed",
                       gen_type_name(gen->type));
        }
        if (err != 0)
            break;
    }
    if (err != 0) {
        free(names);
        return err;
    }
    *out = names;
    *n_out = (size_t)count;
    return 0;
}

int pol_subject_cn(const X509_NAME *subject, struct pol_name *out, bool *found, char *detail,
                   size_t detail_size)
{
    const X509_NAME_ENTRY *entry;
    const ASN1_STRING *value;
    unsigned char ip[16];
    size_t ip_len;
    int idx;

    *found = false;
    if (subject == NULL)
        return 0;
    idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (idx < 0)
        return 0;
    if (X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0) {
        pol_detail(detail, detail_size, "subject has more than one commonName");
        return AGW_ERR_BAD_INPUT;
    }
    entry = X509_NAME_get_entry(subject, idx);
    value = entry != NULL ? X509_NAME_ENTRY_get_data(entry) : NULL;
    if (value == NULL || dns_from_asn1(value, out) != 0) {
        /* not a DNS name: it may still be an ip address in text */
        const unsigned char *data = value != NULL ? ASN1_STRING_get0_data(value) : NULL;
        int len = value != NULL ? ASN1_STRING_length(value) : -1;

        if (data == NULL || len <= 0 || (size_t)len >= sizeof(out->text) ||
            memchr(data, '\0', (size_t)len) != NULL) {
            pol_detail(detail, detail_size, "subject commonName is not a DNS name or address");
            return AGW_ERR_BAD_INPUT;
        }
        memcpy(out->text, data, (size_t)len);
        out->text[len] = '\0';
        if (pol_ip_parse(out->text, ip, &ip_len) != 0) {
            pol_detail(detail, detail_size, "subject commonName is not a DNS name or address");
            return AGW_ERR_BAD_INPUT;
        }
        out->type = POL_ID_IP;
        memcpy(out->ip, ip, ip_len);
        out->ip_len = ip_len;
    }
    *found = true;
    return 0;
}

bool pol_name_eq(const struct pol_name *a, const struct pol_name *b)
{
    if (a->type != b->type)
        return false;
    if (a->type == POL_ID_IP)
        return a->ip_len == b->ip_len && memcmp(a->ip, b->ip, a->ip_len) == 0;
    return strcmp(a->text, b->text) == 0; /* both already lowercase */
}

bool pol_name_in(const struct pol_name *name, const struct pol_name *set, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (pol_name_eq(name, &set[i]))
            return true;
    }
    return false;
}

/* The first of a[] that is not in b[], or NULL. */
static const struct pol_name *first_not_in(const struct pol_name *a, size_t n_a,
                                           const struct pol_name *b, size_t n_b)
{
    for (size_t i = 0; i < n_a; i++) {
        if (!pol_name_in(&a[i], b, n_b))
            return &a[i];
    }
    return NULL;
}

unsigned pol_key_kind_of(const EVP_PKEY *key, char *name, size_t name_size)
{
    char group[64];
    size_t group_len = 0;
    int bits;

    pol_detail(name, name_size, "unknown");
    if (key == NULL)
        return 0;
    switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_EC:
        if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                           &group_len) != 1) {
            pol_detail(name, name_size, "ec-explicit-parameters");
            return 0;
        }
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0) {
            pol_detail(name, name_size, "ec-p256");
            return POL_KEY_EC_P256;
        }
        if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0) {
            pol_detail(name, name_size, "ec-p384");
            return POL_KEY_EC_P384;
        }
        pol_detail(name, name_size, "ec-%s", group);
        return 0;
    case EVP_PKEY_RSA:
        bits = EVP_PKEY_get_bits(key);
        pol_detail(name, name_size, "rsa-%d", bits);
        return POL_KEY_RSA;
    case EVP_PKEY_ED25519:
        pol_detail(name, name_size, "ed25519");
        return POL_KEY_ED25519;
    case EVP_PKEY_ED448:
        pol_detail(name, name_size, "ed448");
        return 0;
    case EVP_PKEY_RSA_PSS:
        pol_detail(name, name_size, "rsa-pss");
        return 0;
    default:
        return 0;
    }
}

/* "ec-p256, ec-p384, rsa>=2048" */
static void allowed_keys_text(const struct pol_key_rules *k, char *buf, size_t size)
{
    size_t used = 0;

    buf[0] = '\0';
#define APPEND(...)                                                                                \
    do {                                                                                           \
        if (used < size)                                                                           \
            pol_detail(buf + used, size - used, "%s", used > 0 ? ", " : "");                       \
        used = strnlen(buf, size);                                                                 \
        if (used < size)                                                                           \
            pol_detail(buf + used, size - used, __VA_ARGS__);                                      \
        used = strnlen(buf, size);                                                                 \
    } while (0)
    if (k->kinds & POL_KEY_EC_P256)
        APPEND("ec-p256");
    if (k->kinds & POL_KEY_EC_P384)
        APPEND("ec-p384");
    if (k->kinds & POL_KEY_RSA) {
        if (k->rsa_max_bits >= POL_RSA_HARD_MAX_BITS)
            APPEND("rsa>=%u", k->rsa_min_bits);
        else
            APPEND("rsa %u..%u", k->rsa_min_bits, k->rsa_max_bits);
    }
    if (k->kinds & POL_KEY_ED25519)
        APPEND("ed25519");
    if (used == 0)
        APPEND("none");
#undef APPEND
}

/* CA/B Baseline Requirements 6.1.6: an odd exponent of 3 or more, and at most 2^256 - 1 (there
 * a SHOULD; here a bound, since OpenSSL verifies with a 3072-bit key's exponent as long as its
 * modulus, as slowly as a private-key operation). */
static bool rsa_exponent_ok(const EVP_PKEY *key)
{
    BIGNUM *e = NULL;
    bool ok = EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e) == 1 && BN_is_odd(e) &&
              BN_num_bits(e) >= 2 && BN_num_bits(e) <= POL_RSA_MAX_EXPONENT_BITS;

    BN_free(e);
    return ok;
}

int pol_check_key(const struct pol_class *c, const EVP_PKEY *key, char *detail, size_t detail_size)
{
    char name[80], allowed[128];
    unsigned kind = pol_key_kind_of(key, name, sizeof(name));
    bool ok = (kind & c->keys.kinds) != 0;

    if (ok && kind == POL_KEY_RSA && !rsa_exponent_ok(key)) {
        pol_detail(detail, detail_size,
                   "RSA public exponent must be odd, at least 3 and at most %d bits",
                   POL_RSA_MAX_EXPONENT_BITS);
        return AGW_ERR_BAD_PUBLIC_KEY;
    }
    if (ok && kind == POL_KEY_RSA) {
        int bits = EVP_PKEY_get_bits(key);
        unsigned max = c->keys.rsa_max_bits < POL_RSA_HARD_MAX_BITS ? c->keys.rsa_max_bits
                                                                    : POL_RSA_HARD_MAX_BITS;

        ok = bits > 0 && (unsigned)bits >= c->keys.rsa_min_bits && (unsigned)bits <= max;
    }
    if (ok)
        return 0;
    allowed_keys_text(&c->keys, allowed, sizeof(allowed));
    if (kind == POL_KEY_RSA && (unsigned)EVP_PKEY_get_bits(key) > POL_RSA_HARD_MAX_BITS)
        pol_detail(detail, detail_size,
                   "key type %s not allowed for class %s (allowed: %s; at most %d bits)", name,
                   c->name, allowed, POL_RSA_HARD_MAX_BITS);
    else
        pol_detail(detail, detail_size, "key type %s not allowed for class %s (allowed: %s)", name,
                   c->name, allowed);
    return AGW_ERR_BAD_PUBLIC_KEY;
}

/* Step 4: the CSR's names from its extensions and subject, with the extension rules. */
int pol_csr_names(X509_REQ *csr, struct pol_name **out, size_t *n_out, char *detail,
                  size_t detail_size)
{
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(csr);
    GENERAL_NAMES *gens = NULL;
    struct pol_name *names = NULL, cn;
    size_t n_names = 0;
    bool have_cn = false, have_san = false;
    int err = AGW_ERR_BAD_CSR;
    int n_exts;

    *out = NULL;
    *n_out = 0;
    if (exts == NULL) {
        pol_detail(detail, detail_size, "CSR extension request does not parse");
        goto fail;
    }
    n_exts = sk_X509_EXTENSION_num(exts);
    if (n_exts > POL_MAX_CSR_EXTENSIONS) {
        pol_detail(detail, detail_size, "CSR requests too many extensions (%d)", n_exts);
        goto fail;
    }
    for (int i = 0; i < n_exts; i++) {
        X509_EXTENSION *ext = sk_X509_EXTENSION_value(exts, i);
        int nid = OBJ_obj2nid(X509_EXTENSION_get_object(ext));

        for (int j = 0; j < i; j++) {
            if (OBJ_cmp(X509_EXTENSION_get_object(ext),
                        X509_EXTENSION_get_object(sk_X509_EXTENSION_value(exts, j))) == 0) {
                pol_detail(detail, detail_size, "CSR requests an extension twice");
                goto fail;
            }
        }
        if (nid == NID_basic_constraints) {
            BASIC_CONSTRAINTS *bc = X509V3_EXT_d2i(ext);
            bool ca = bc == NULL || bc->ca != 0;

            BASIC_CONSTRAINTS_free(bc);
            if (ca) {
                pol_detail(detail, detail_size, "CSR requests a CA certificate");
                goto fail;
            }
        } else if (nid == NID_subject_alt_name) {
            gens = X509V3_EXT_d2i(ext);
            if (gens == NULL) {
                pol_detail(detail, detail_size, "CSR subjectAltName does not parse");
                goto fail;
            }
            have_san = true;
        }
    }
    if (have_san) {
        err = pol_names_from_gens(gens, &names, &n_names, detail, detail_size);
        if (err == AGW_ERR_BAD_INPUT)
            err = AGW_ERR_BAD_CSR;
        if (err != 0)
            goto fail;
        err = AGW_ERR_BAD_CSR;
    }
    if (pol_subject_cn(X509_REQ_get_subject_name(csr), &cn, &have_cn, detail, detail_size) != 0)
        goto fail;
    if (have_cn) {
        if (!pol_name_in(&cn, names, n_names)) {
            pol_detail(detail, detail_size, "CSR commonName %s is not one of its subjectAltNames",
                       cn.text);
            goto fail;
        }
    }
    if (n_names == 0) {
        pol_detail(detail, detail_size, "CSR names no identifiers (no subjectAltName)");
        goto fail;
    }
    *out = names;
    *n_out = n_names;
    names = NULL;
    err = 0;
fail:
    free(names);
    GENERAL_NAMES_free(gens);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    return err;
}

/* An order identifier as a pol_name: the gateway stored it after pol_check_identifiers(). */
static int order_name(const struct pol_identifier *id, struct pol_name *out)
{
    size_t len;

    memset(out, 0, sizeof(*out));
    if (id->type == NULL || id->value == NULL)
        return AGW_ERR_BAD_INPUT;
    len = strnlen(id->value, sizeof(out->text));
    if (len >= sizeof(out->text))
        return AGW_ERR_BAD_INPUT;
    if (strcmp(id->type, "dns") == 0) {
        for (size_t i = 0; i < len; i++) {
            char ch = id->value[i];
            out->text[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
        }
        out->text[len] = '\0';
        out->type = POL_ID_DNS;
        return 0;
    }
    if (strcmp(id->type, "ip") == 0) {
        memcpy(out->text, id->value, len + 1);
        out->type = POL_ID_IP;
        return pol_ip_parse(out->text, out->ip, &out->ip_len);
    }
    return AGW_ERR_BAD_INPUT;
}

int pol_check_csr(const struct pol_class *c, const X509_REQ *csr, const struct pol_identifier *ids,
                  size_t n, const EVP_PKEY *account_key, char *detail, size_t detail_size)
{
    /* X509_REQ_verify() and friends take non-const pointers in OpenSSL 3.0 but do not modify
     * the request beyond caching decoded fields. */
    X509_REQ *req = (X509_REQ *)csr;
    struct pol_name *names = NULL, *want = NULL;
    const struct pol_name *missing;
    size_t n_names = 0;
    EVP_PKEY *key, *owned = NULL;
    int err;

    pol_detail(detail, detail_size, "%s", "");
    if (c == NULL || csr == NULL || account_key == NULL || n == 0 || ids == NULL)
        return AGW_ERR_BAD_INPUT;
    err = AGW_ERR_BAD_CSR;
    if (X509_REQ_get_version(csr) != X509_REQ_VERSION_1) {
        pol_detail(detail, detail_size, "CSR version is not 1");
        goto fail;
    }
    /* X509_REQ_verify() takes a non-const key in 3.0; it does not modify it */
    key = (EVP_PKEY *)pol_pubkey(X509_REQ_get_X509_PUBKEY(req), &owned);
    if (key == NULL) {
        pol_detail(detail, detail_size, "CSR public key does not parse");
        goto fail;
    }
    /* the class's key rules first: a key it refuses costs no signature verification (an RSA
     * key up to 3072 bits may carry an exponent as long as its modulus) */
    err = pol_check_key(c, key, detail, detail_size);
    if (err != 0)
        goto fail;
    err = AGW_ERR_BAD_CSR;
    if (X509_REQ_verify(req, key) != 1) {
        pol_detail(detail, detail_size, "CSR signature does not verify");
        goto fail;
    }
    if (EVP_PKEY_eq(key, account_key) == 1) {
        pol_detail(detail, detail_size, "CSR key is the account key");
        goto fail;
    }
    err = pol_csr_names(req, &names, &n_names, detail, detail_size);
    if (err != 0)
        goto fail;
    if (c->subject.csr_cn != POL_CN_OPTIONAL) {
        struct pol_name cn;
        bool have_cn = false;

        err = AGW_ERR_BAD_CSR;
        (void)pol_subject_cn(X509_REQ_get_subject_name(csr), &cn, &have_cn, NULL, 0);
        if (have_cn != (c->subject.csr_cn == POL_CN_REQUIRED)) {
            pol_detail(detail, detail_size, "class %s %s a subject commonName in the CSR", c->name,
                       have_cn ? "forbids" : "requires");
            goto fail;
        }
    }

    err = AGW_ERR_NOMEM;
    want = calloc(n, sizeof(*want));
    if (want == NULL)
        goto fail;
    err = AGW_ERR_BAD_CSR;
    for (size_t i = 0; i < n; i++) {
        if (order_name(&ids[i], &want[i]) != 0) {
            err = AGW_ERR_BAD_INPUT; /* the gateway passed an identifier it should not have */
            goto fail;
        }
    }
    missing = first_not_in(names, n_names, want, n);
    if (missing != NULL) {
        pol_detail(detail, detail_size, "CSR names %s %s, which is not in the order",
                   missing->type == POL_ID_DNS ? "dns" : "ip", missing->text);
        goto fail;
    }
    missing = first_not_in(want, n, names, n_names);
    if (missing != NULL) {
        pol_detail(detail, detail_size, "CSR lacks %s %s from the order",
                   missing->type == POL_ID_DNS ? "dns" : "ip", missing->text);
        goto fail;
    }
    err = 0;
fail:
    free(names);
    free(want);
    EVP_PKEY_free(owned);
    return err;
}

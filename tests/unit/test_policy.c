/*
 * tests/unit/test_policy.c - the built-in default class: identifier rules, CSR checks, the
 * certificate template and the final check before signing; then policy files: the examples in
 * examples/policy.d, strict loading and lint positions. Each rule has an accepted and a
 * rejected case. Keys, CSRs and a software issuer are made here with OpenSSL; now is fixed.
 */
#include "policy/policy.h"

#include "common/err.h"
#include "tests/check.h"
#include "tests/testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#define NOW ((time_t)1780000000) /* 2026-05-28 */
#define DAY 86400

static struct pol_set *set;
static const struct pol_class *cls;

/* ---- fixtures ---- */

static EVP_PKEY *ec_key(const char *curve)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);
}

static EVP_PKEY *rsa_key(size_t bits)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", bits);
}

static EVP_PKEY *ed25519_key(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
}

/* A CSR for key with an optional CN and SANs in openssl.cnf syntax ("DNS:a,IP:1.2.3.4"). */
static X509_REQ *make_csr(EVP_PKEY *key, const char *cn, const char *sans)
{
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_REQ_get_subject_name(req);
    const EVP_MD *md = EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519 ? NULL : EVP_sha256();

    X509_REQ_set_version(req, X509_REQ_VERSION_1);
    if (cn != NULL)
        X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn,
                                   -1, -1, 0);
    X509_REQ_set_pubkey(req, key);
    if (sans != NULL) {
        STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
        X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, sans);

        CHECK(ext != NULL);
        sk_X509_EXTENSION_push(exts, ext);
        X509_REQ_add_extensions(req, exts);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    }
    CHECK(X509_REQ_sign(req, key, md) > 0);
    return req;
}

/* A copy of req whose signature's last byte is flipped (decoded again from DER). */
static X509_REQ *tampered_copy(X509_REQ *req)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    int len = i2d_X509_REQ(req, &der);
    X509_REQ *out;

    CHECK(len > 10);
    der[len - 1] ^= 0x01; /* last byte of the signature */
    p = der;
    out = d2i_X509_REQ(NULL, &p, len);
    CHECK(out != NULL);
    OPENSSL_free(der);
    return out;
}

/* A self-signed CA valid until not_after, with or without an SKI extension. */
static X509 *make_issuer(EVP_PKEY *key, time_t not_after, int with_ski)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_get_subject_name(x);
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    X509V3_CTX ctx;

    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                               (const unsigned char *)"Test Issuing CA", -1, -1, 0);
    X509_set_issuer_name(x, name);
    ASN1_TIME_set(X509_getm_notBefore(x), NOW - 365 * DAY);
    ASN1_TIME_set(X509_getm_notAfter(x), not_after);
    X509_set_pubkey(x, key);
    bc->ca = 0xff;
    X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT);
    BASIC_CONSTRAINTS_free(bc);
    if (with_ski) {
        X509_EXTENSION *ext;

        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
        ext = X509V3_EXT_nconf_nid(NULL, &ctx, NID_subject_key_identifier, "hash");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    CHECK(X509_sign(x, key, EVP_sha256()) > 0);
    return x;
}

static int ids_check(const char *type, const char *value)
{
    struct pol_identifier id = {type, value};
    int result = 1;
    int err = pol_check_identifiers(cls, &id, 1, "192.0.2.7", &result);

    CHECK_INT(result, err);
    return err;
}

static int csr_check(X509_REQ *req, const char *const *dns, size_t n, const EVP_PKEY *account,
                     char *detail, size_t size)
{
    struct pol_identifier ids[8];

    for (size_t i = 0; i < n; i++) {
        ids[i].type = strncmp(dns[i], "ip:", 3) == 0 ? "ip" : "dns";
        ids[i].value = strncmp(dns[i], "ip:", 3) == 0 ? dns[i] + 3 : dns[i];
    }
    return pol_check_csr(cls, req, ids, n, account, detail, size);
}

/* Replaces (or adds) the extension nid of x. */
static void replace_ext(X509 *x, int nid, void *value, int crit)
{
    int idx = X509_get_ext_by_NID(x, nid, -1);

    if (idx >= 0)
        X509_EXTENSION_free(X509_delete_ext(x, idx));
    CHECK_INT(X509_add1_ext_i2d(x, nid, value, crit, X509V3_ADD_DEFAULT), 1);
}

/* ---- the set ---- */

static void set_default_and_refcount(void)
{
    struct pol_set *other = NULL;

    CHECK(cls != NULL);
    CHECK_STR(pol_class_name(cls), "default");
    CHECK_STR(pol_class_issuer(cls), "test-ca");
    CHECK_INT(pol_class_validation(cls), POL_VALIDATE_PRE_AUTHORIZED);
    CHECK_INT(pol_class_max_identifiers(cls), 100);
    CHECK(pol_class_find(set, "devices") == NULL);
    CHECK(pol_class_find(set, NULL) == NULL);

    CHECK(pol_set_ref(set) == set);
    pol_set_unref(set); /* back to one reference: still usable below */
    CHECK_STR(pol_class_name(pol_class_find(set, "default")), "default");
    pol_set_unref(NULL);

    CHECK_INT(pol_set_default("Device.test", 90, "ca", &other), AGW_ERR_BAD_CONFIG);
    CHECK(other == NULL);
    CHECK_INT(pol_set_default("*.device.test", 90, "ca", &other), AGW_ERR_BAD_CONFIG);
    CHECK_INT(pol_set_default("device.test.", 90, "ca", &other), AGW_ERR_BAD_CONFIG);
    CHECK_INT(pol_set_default("device.test", 90, NULL, &other), AGW_ERR_BAD_CONFIG);
    CHECK_INT(pol_set_default("device.test", 100000, "ca", &other), AGW_ERR_BAD_CONFIG);
    CHECK_INT(pol_set_default("device.test", 0, "ca", &other), 0); /* 0: 90 days */
    CHECK(other != NULL);
    pol_set_unref(other);
}

/* ---- identifiers ---- */

static void ids_suffix_on_label_boundary(void)
{
    CHECK_INT(ids_check("dns", "device.test"), 0);
    CHECK_INT(ids_check("dns", "a.device.test"), 0);
    CHECK_INT(ids_check("dns", "b.a.device.test"), 0);
    CHECK_INT(ids_check("dns", "evildevice.test"), AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(ids_check("dns", "device.test.evil"), AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(ids_check("dns", "other.test"), AGW_ERR_REJECTED_IDENTIFIER);
}

static void ids_wildcard_rejected_by_default_class(void)
{
    CHECK_INT(ids_check("dns", "a.device.test"), 0);
    CHECK_INT(ids_check("dns", "*.device.test"), AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(ids_check("dns", "*.a.device.test"), AGW_ERR_REJECTED_IDENTIFIER);
    /* a star anywhere but as the whole first label is not a wildcard: malformed */
    CHECK_INT(ids_check("dns", "a.*.device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "a*.device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "*"), AGW_ERR_BAD_INPUT);
}

static void ids_ip_rejected_by_default_class_malformed_ip_is_bad_input(void)
{
    CHECK_INT(ids_check("ip", "192.0.2.1"), AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(ids_check("ip", "2001:db8::1"), AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(ids_check("ip", "::ffff:192.0.2.1"), AGW_ERR_REJECTED_IDENTIFIER);
    /* RFC 8738 §3: canonical text only */
    CHECK_INT(ids_check("ip", "192.0.2.01"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("ip", "2001:DB8::1"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("ip", "2001:db8:0:0:0:0:0:1"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("ip", "192.0.2"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("ip", "a.device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("ip", ""), AGW_ERR_BAD_INPUT);
}

static void ids_unknown_type_unsupported(void)
{
    CHECK_INT(ids_check("dns", "a.device.test"), 0);
    CHECK_INT(ids_check("email", "a@device.test"), AGW_ERR_UNSUPPORTED_IDENTIFIER);
    CHECK_INT(ids_check("DNS", "a.device.test"), AGW_ERR_UNSUPPORTED_IDENTIFIER);
    CHECK_INT(ids_check("", "a.device.test"), AGW_ERR_UNSUPPORTED_IDENTIFIER);
    CHECK_INT(ids_check(NULL, "a.device.test"), AGW_ERR_BAD_INPUT);
}

static void ids_malformed_dns_is_bad_input(void)
{
    char name[300];

    CHECK_INT(ids_check("dns", "a-b.device.test"), 0);
    CHECK_INT(ids_check("dns", "xn--bcher-kva.device.test"), 0);
    CHECK_INT(ids_check("dns", "0.device.test"), 0); /* all-digit labels are fine below the TLD */
    /* the gateway lowercases: uppercase reaching policy is malformed */
    CHECK_INT(ids_check("dns", "A.device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "a.Device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "-a.device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "a-.device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "a..device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", ".device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "a.device.test."), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "a_b.device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "a b.device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "\xc3\xa4.device.test"), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", ""), AGW_ERR_BAD_INPUT);
    CHECK_INT(ids_check("dns", "a.device.123"), AGW_ERR_BAD_INPUT); /* numeric TLD */
    CHECK_INT(ids_check("dns", "192.0.2.1"), AGW_ERR_BAD_INPUT);

    /* labels: 63 bytes ok, 64 not */
    memset(name, 'a', 63);
    strcpy(name + 63, ".device.test");
    CHECK_INT(ids_check("dns", name), 0);
    memset(name, 'a', 64);
    strcpy(name + 64, ".device.test");
    CHECK_INT(ids_check("dns", name), AGW_ERR_BAD_INPUT);

    /* whole name: 253 bytes ok, 254 not (3 x 63 + 49 + 4 dots + 11 = 253) */
    memset(name, 'a', sizeof(name));
    name[63] = name[127] = name[191] = '.';
    name[241] = '.';
    strcpy(name + 242, "device.test");
    CHECK_INT(strlen(name), 253);
    CHECK_INT(ids_check("dns", name), 0);
    memmove(name + 1, name, 254);
    name[0] = 'a';
    CHECK_INT(strlen(name), 254);
    CHECK_INT(ids_check("dns", name), AGW_ERR_BAD_INPUT);
}

static void ids_results_per_identifier_first_failure_returned(void)
{
    struct pol_identifier ids[] = {
        {"dns", "a.device.test"}, {"ip", "192.0.2.1"}, {"dns", "Bad.device.test"}, {"uri", "x"},
        {"dns", "b.device.test"},
    };
    int results[5] = {1, 1, 1, 1, 1};

    CHECK_INT(pol_check_identifiers(cls, ids, 5, NULL, results), AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(results[0], 0);
    CHECK_INT(results[1], AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(results[2], AGW_ERR_BAD_INPUT);
    CHECK_INT(results[3], AGW_ERR_UNSUPPORTED_IDENTIFIER);
    CHECK_INT(results[4], 0);
    CHECK_INT(pol_check_identifiers(cls, ids, 1, NULL, results), 0); /* any source */
    CHECK_INT(pol_check_identifiers(cls, ids, 0, NULL, results), AGW_ERR_BAD_INPUT);
}

static void ids_max_identifiers_per_order(void)
{
    static char names[101][32];
    struct pol_identifier ids[101];
    int results[101];

    for (int i = 0; i < 101; i++) {
        snprintf(names[i], sizeof(names[i]), "h%d.device.test", i);
        ids[i].type = "dns";
        ids[i].value = names[i];
    }
    CHECK_INT(pol_check_identifiers(cls, ids, 100, NULL, results), 0);
    CHECK_INT(pol_check_identifiers(cls, ids, 101, NULL, results), AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(results[99], 0);
    CHECK_INT(results[100], AGW_ERR_REJECTED_IDENTIFIER);
}

/* ---- CSR ---- */

static void csr_ec_p256_with_matching_sans_passes(void)
{
    EVP_PKEY *key = ec_key("P-256"), *account = ec_key("P-256");
    const char *want[] = {"a.device.test", "b.device.test"};
    X509_REQ *req = make_csr(key, NULL, "DNS:a.device.test,DNS:b.device.test");
    X509_REQ *with_cn = make_csr(key, "b.device.test", "DNS:a.device.test,DNS:b.device.test");
    /* sets, case-insensitive: duplicates and case differences in the CSR are fine */
    X509_REQ *dups =
        make_csr(key, "A.Device.Test", "DNS:B.device.test,DNS:a.device.test,DNS:A.DEVICE.TEST");
    char detail[256];

    CHECK_INT(csr_check(req, want, 2, account, detail, sizeof(detail)), 0);
    CHECK_STR(detail, "");
    CHECK_INT(csr_check(with_cn, want, 2, account, detail, sizeof(detail)), 0);
    CHECK_INT(csr_check(dups, want, 2, account, detail, sizeof(detail)), 0);
    X509_REQ_free(req);
    X509_REQ_free(with_cn);
    X509_REQ_free(dups);
    EVP_PKEY_free(key);
    EVP_PKEY_free(account);
}

static void csr_san_set_mismatch_is_bad_csr(void)
{
    EVP_PKEY *key = ec_key("P-384"), *account = ec_key("P-256");
    const char *want[] = {"a.device.test", "b.device.test"};
    X509_REQ *missing = make_csr(key, NULL, "DNS:a.device.test");
    X509_REQ *extra = make_csr(key, NULL, "DNS:a.device.test,DNS:b.device.test,DNS:c.device.test");
    X509_REQ *ip = make_csr(key, NULL, "DNS:a.device.test,DNS:b.device.test,IP:192.0.2.1");
    X509_REQ *none = make_csr(key, NULL, NULL);
    char detail[256];

    CHECK_INT(csr_check(missing, want, 2, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "CSR lacks dns b.device.test from the order");
    CHECK_INT(csr_check(extra, want, 2, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "CSR names dns c.device.test, which is not in the order");
    CHECK_INT(csr_check(ip, want, 2, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "CSR names ip 192.0.2.1, which is not in the order");
    CHECK_INT(csr_check(none, want, 2, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_INT(csr_check(missing, want, 1, account, detail, sizeof(detail)), 0);
    X509_REQ_free(missing);
    X509_REQ_free(extra);
    X509_REQ_free(ip);
    X509_REQ_free(none);
    EVP_PKEY_free(key);
    EVP_PKEY_free(account);
}

static void csr_cn_not_in_sans_is_bad_csr(void)
{
    EVP_PKEY *key = ec_key("P-256"), *account = ec_key("P-256");
    const char *want[] = {"a.device.test"};
    X509_REQ *ok = make_csr(key, "a.device.test", "DNS:a.device.test");
    X509_REQ *bad = make_csr(key, "c.device.test", "DNS:a.device.test");
    X509_REQ *cn_only = make_csr(key, "a.device.test", NULL);
    char detail[256];

    CHECK_INT(csr_check(ok, want, 1, account, detail, sizeof(detail)), 0);
    CHECK_INT(csr_check(bad, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "CSR commonName c.device.test is not one of its subjectAltNames");
    CHECK_INT(csr_check(cn_only, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    X509_REQ_free(ok);
    X509_REQ_free(bad);
    X509_REQ_free(cn_only);
    EVP_PKEY_free(key);
    EVP_PKEY_free(account);
}

static void csr_rsa_1024_is_bad_public_key(void)
{
    EVP_PKEY *small = rsa_key(1024), *ok = rsa_key(2048), *account = ec_key("P-256");
    const char *want[] = {"a.device.test"};
    X509_REQ *bad = make_csr(small, NULL, "DNS:a.device.test");
    X509_REQ *good = make_csr(ok, NULL, "DNS:a.device.test"), *tampered;
    char detail[256];

    CHECK_INT(csr_check(good, want, 1, account, detail, sizeof(detail)), 0);
    CHECK_INT(csr_check(bad, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_PUBLIC_KEY);
    CHECK_STR(detail, "key type rsa-1024 not allowed for class default "
                      "(allowed: ec-p256, ec-p384, rsa>=2048)");
    /* the key rules come before the signature: a refused key costs no verification */
    tampered = tampered_copy(bad);
    CHECK_INT(csr_check(tampered, want, 1, account, detail, sizeof(detail)),
              AGW_ERR_BAD_PUBLIC_KEY);
    X509_REQ_free(tampered);
    X509_REQ_free(bad);
    X509_REQ_free(good);
    EVP_PKEY_free(small);
    EVP_PKEY_free(ok);
    EVP_PKEY_free(account);
}

/* An RSA key of n's size with public exponent e (no private half: for key checks only). */
static EVP_PKEY *rsa_with_exponent(const EVP_PKEY *like, const BIGNUM *e)
{
    BIGNUM *n = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *key = NULL;

    CHECK(EVP_PKEY_get_bn_param(like, OSSL_PKEY_PARAM_RSA_N, &n) == 1);
    CHECK(OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) == 1);
    CHECK(OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) == 1);
    params = OSSL_PARAM_BLD_to_param(bld);
    CHECK(EVP_PKEY_fromdata_init(ctx) == 1);
    CHECK(EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) == 1);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    BN_free(n);
    return key;
}

static void csr_rsa_exponent_follows_the_baseline_requirements(void)
{
    EVP_PKEY_CTX *gen = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *e3 = NULL, *account = ec_key("P-256");
    BIGNUM *three = BN_new(), *big = BN_new(), *even = BN_new();
    const char *want[] = {"a.device.test"};
    char detail[256];

    CHECK(BN_set_word(three, 3) == 1);
    CHECK(EVP_PKEY_keygen_init(gen) == 1 && EVP_PKEY_CTX_set_rsa_keygen_bits(gen, 2048) == 1 &&
          EVP_PKEY_CTX_set1_rsa_keygen_pubexp(gen, three) == 1 && EVP_PKEY_keygen(gen, &e3) == 1);
    X509_REQ *ok = make_csr(e3, NULL, "DNS:a.device.test");
    CHECK_INT(csr_check(ok, want, 1, account, detail, sizeof(detail)), 0); /* odd, >= 3 */

    /* 2^256 + 1 (257 bits) and 65536 (even): the same modulus, refused before any signature is
     * looked at (these CSRs carry the e=3 key's signature, which cannot verify) */
    CHECK(BN_lshift(big, BN_value_one(), 256) == 1 && BN_add_word(big, 1) == 1);
    CHECK(BN_set_word(even, 65536) == 1);
    BIGNUM *bad_e[] = {big, even};
    for (size_t i = 0; i < 2; i++) {
        EVP_PKEY *fake = rsa_with_exponent(e3, bad_e[i]);
        X509_REQ *req = make_csr(e3, NULL, "DNS:a.device.test");

        CHECK(X509_REQ_set_pubkey(req, fake) == 1);
        CHECK_INT(csr_check(req, want, 1, account, detail, sizeof(detail)),
                  AGW_ERR_BAD_PUBLIC_KEY);
        CHECK_STR(detail, "RSA public exponent must be odd, at least 3 and at most 256 bits");
        X509_REQ_free(req);
        EVP_PKEY_free(fake);
    }
    X509_REQ_free(ok);
    BN_free(three);
    BN_free(big);
    BN_free(even);
    EVP_PKEY_free(e3);
    EVP_PKEY_free(account);
    EVP_PKEY_CTX_free(gen);
}

static void csr_ed25519_and_other_curves_rejected_by_default_class(void)
{
    EVP_PKEY *ed = ed25519_key(), *k256 = ec_key("secp256k1"), *account = ec_key("P-256");
    const char *want[] = {"a.device.test"};
    X509_REQ *req = make_csr(ed, NULL, "DNS:a.device.test");
    X509_REQ *req_k = make_csr(k256, NULL, "DNS:a.device.test");
    char detail[256];

    CHECK_INT(csr_check(req, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_PUBLIC_KEY);
    CHECK(strncmp(detail, "key type ed25519 not allowed for class default", 46) == 0);
    CHECK_INT(csr_check(req_k, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_PUBLIC_KEY);
    CHECK(strncmp(detail, "key type ec-secp256k1 not allowed", 33) == 0);
    X509_REQ_free(req);
    X509_REQ_free(req_k);
    EVP_PKEY_free(ed);
    EVP_PKEY_free(k256);
    EVP_PKEY_free(account);
}

static void csr_key_equal_to_account_key_is_bad_csr(void)
{
    EVP_PKEY *key = ec_key("P-256"), *other = ec_key("P-256");
    const char *want[] = {"a.device.test"};
    X509_REQ *req = make_csr(key, NULL, "DNS:a.device.test");
    char detail[256];

    CHECK_INT(csr_check(req, want, 1, other, detail, sizeof(detail)), 0);
    CHECK_INT(csr_check(req, want, 1, key, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "CSR key is the account key");
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

static void csr_tampered_signature_is_bad_csr(void)
{
    EVP_PKEY *key = ec_key("P-256"), *account = ec_key("P-256");
    const char *want[] = {"a.device.test"};
    X509_REQ *req = make_csr(key, NULL, "DNS:a.device.test"), *tampered = tampered_copy(req);
    char detail[256];

    CHECK_INT(csr_check(req, want, 1, account, detail, sizeof(detail)), 0);
    CHECK_INT(csr_check(tampered, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "CSR signature does not verify");
    X509_REQ_free(tampered);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    EVP_PKEY_free(account);
}

static void csr_email_or_uri_san_is_bad_csr(void)
{
    EVP_PKEY *key = ec_key("P-256"), *account = ec_key("P-256");
    const char *want[] = {"a.device.test"};
    X509_REQ *email = make_csr(key, NULL, "DNS:a.device.test,email:a@device.test");
    X509_REQ *uri = make_csr(key, NULL, "DNS:a.device.test,URI:https://a.device.test/");
    char detail[256];

    CHECK_INT(csr_check(email, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "subjectAltName type rfc822Name is not allowed");
    CHECK_INT(csr_check(uri, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "subjectAltName type uniformResourceIdentifier is not allowed");
    X509_REQ_free(email);
    X509_REQ_free(uri);
    EVP_PKEY_free(key);
    EVP_PKEY_free(account);
}

static void csr_asking_for_ca_is_bad_csr(void)
{
    EVP_PKEY *key = ec_key("P-256"), *account = ec_key("P-256");
    const char *want[] = {"a.device.test"};
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    char detail[256];

    X509_REQ_set_version(req, X509_REQ_VERSION_1);
    X509_REQ_set_pubkey(req, key);
    sk_X509_EXTENSION_push(
        exts, X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, "DNS:a.device.test"));
    sk_X509_EXTENSION_push(
        exts, X509V3_EXT_nconf_nid(NULL, NULL, NID_basic_constraints, "critical,CA:TRUE"));
    X509_REQ_add_extensions(req, exts);
    X509_REQ_sign(req, key, EVP_sha256());
    CHECK_INT(csr_check(req, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "CSR requests a CA certificate");
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    EVP_PKEY_free(account);
}

/* ---- CSRs decoded without OpenSSL's key decoder (policy/der.c) ---- */

/* DER of req, decoded again with pol_csr_decode(). */
static X509_REQ *redecode(X509_REQ *req)
{
    unsigned char *der = NULL;
    int len = i2d_X509_REQ(req, &der);
    X509_REQ *out = NULL;

    CHECK(len > 0);
    CHECK_INT(pol_csr_decode(der, (size_t)len, &out), 0);
    OPENSSL_free(der);
    return out;
}

static void csr_decode_builds_each_key_kind_from_its_parts(void)
{
    EVP_PKEY *keys[] = {ec_key("P-256"), ec_key("P-384"), rsa_key(2048), rsa_key(1024),
                        ed25519_key(), ec_key("secp256k1")};
    const char *want_kind[] = {NULL, NULL, NULL, "key type rsa-1024 not allowed",
                               "key type ed25519 not allowed", "key type ec-secp256k1 not allowed"};
    EVP_PKEY *account = ec_key("P-256"), *ik = ec_key("P-256"), *got;
    X509 *issuer = make_issuer(ik, NOW + 3650 * DAY, 1);
    const char *want[] = {"a.device.test"};
    char detail[256];

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        X509_REQ *orig = make_csr(keys[i], NULL, "DNS:a.device.test"), *req = redecode(orig);
        X509 *cert = NULL;
        unsigned char *der = NULL;
        const unsigned char *p;
        int len;

        /* the key was left undecoded: what follows runs on the key built from its parts */
        CHECK(X509_REQ_get0_pubkey(req) == NULL);
        ERR_clear_error();
        if (want_kind[i] != NULL) {
            CHECK_INT(csr_check(req, want, 1, account, detail, sizeof(detail)),
                      AGW_ERR_BAD_PUBLIC_KEY);
            CHECK(strncmp(detail, want_kind[i], strlen(want_kind[i])) == 0);
        } else {
            CHECK_INT(csr_check(req, want, 1, account, detail, sizeof(detail)), 0);
            /* the certificate carries the CSR's key, as the ordinary decoder reads it */
            CHECK_INT(pol_build_cert(cls, NULL, req, issuer, NOW, &cert), 0);
            CHECK(X509_sign(cert, ik, EVP_sha256()) > 0);
            len = i2d_X509(cert, &der);
            p = der;
            X509_free(cert);
            cert = len > 0 ? d2i_X509(NULL, &p, len) : NULL;
            got = cert != NULL ? X509_get0_pubkey(cert) : NULL;
            CHECK(got != NULL && EVP_PKEY_eq(got, keys[i]) == 1);
            CHECK_INT(pol_check_final(cls, cert, NOW, detail, sizeof(detail)), 0);
            OPENSSL_free(der);
            X509_free(cert);
        }
        X509_REQ_free(req);
        X509_REQ_free(orig);
        EVP_PKEY_free(keys[i]);
    }
    X509_free(issuer);
    EVP_PKEY_free(ik);
    EVP_PKEY_free(account);
}

static void csr_decode_refuses_trailing_bytes_and_point_off_curve(void)
{
    EVP_PKEY *key = ec_key("P-256"), *account = ec_key("P-256");
    const char *want[] = {"a.device.test"};
    X509_REQ *req = make_csr(key, NULL, "DNS:a.device.test"), *bad = NULL;
    unsigned char *der = NULL, *point;
    size_t point_len = 0;
    int len = i2d_X509_REQ(req, &der);
    char detail[256];

    CHECK(len > 100);
    CHECK_INT(pol_csr_decode(der, (size_t)len - 1, &bad), AGW_ERR_BAD_CSR);
    CHECK(bad == NULL);
    unsigned char *longer = malloc((size_t)len + 1);
    memcpy(longer, der, (size_t)len);
    longer[len] = 0;
    CHECK_INT(pol_csr_decode(longer, (size_t)len + 1, &bad), AGW_ERR_BAD_CSR);
    CHECK_INT(pol_csr_decode(der, 0, &bad), AGW_ERR_BAD_CSR);
    free(longer);

    /* the uncompressed point 04||x||y with y changed: the same DER shape, not on the curve */
    CHECK(EVP_PKEY_get_octet_string_param(key, "encoded-pub-key", NULL, 0, &point_len) == 1);
    point = malloc(point_len);
    CHECK(EVP_PKEY_get_octet_string_param(key, "encoded-pub-key", point, point_len,
                                          &point_len) == 1);
    for (int i = 0; i + (int)point_len <= len; i++) {
        if (memcmp(der + i, point, point_len) == 0) {
            der[i + (int)point_len - 1] ^= 0x01;
            break;
        }
    }
    CHECK_INT(pol_csr_decode(der, (size_t)len, &bad), 0);
    CHECK_INT(csr_check(bad, want, 1, account, detail, sizeof(detail)), AGW_ERR_BAD_CSR);
    CHECK_STR(detail, "CSR public key does not parse");
    CHECK_INT((int)ERR_peek_error(), 0);
    X509_REQ_free(bad);
    free(point);
    OPENSSL_free(der);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    EVP_PKEY_free(account);
}

/* ---- certificate template and final check ---- */

struct issued {
    EVP_PKEY *issuer_key, *key;
    X509 *issuer;
    X509_REQ *req;
    X509 *cert;
};

static void issue(struct issued *t, EVP_PKEY *key, const char *cn, const char *sans,
                  time_t issuer_not_after, int issuer_ski)
{
    memset(t, 0, sizeof(*t));
    t->issuer_key = ec_key("P-384");
    t->issuer = make_issuer(t->issuer_key, issuer_not_after, issuer_ski);
    t->key = key;
    t->req = make_csr(t->key, cn, sans);
    CHECK_INT(pol_build_cert(cls, NULL, t->req, t->issuer, NOW, &t->cert), 0);
    CHECK(t->cert != NULL);
}

static void issued_free(struct issued *t)
{
    X509_free(t->cert);
    X509_REQ_free(t->req);
    X509_free(t->issuer);
    EVP_PKEY_free(t->key);
    EVP_PKEY_free(t->issuer_key);
}

static void cert_serial_random_positive_128_bits(void)
{
    struct issued a, b;
    BIGNUM *bn;

    issue(&a, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    issue(&b, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(a.cert), NULL);
    CHECK(bn != NULL && !BN_is_negative(bn) && BN_num_bits(bn) >= 64 && BN_num_bits(bn) <= 128);
    CHECK_INT(BN_num_bytes(bn), 16); /* no leading zero byte */
    BN_free(bn);
    CHECK(ASN1_INTEGER_cmp(X509_get0_serialNumber(a.cert), X509_get0_serialNumber(b.cert)) != 0);
    issued_free(&a);
    issued_free(&b);
}

static void cert_validity_90_days_backdated_60_s(void)
{
    struct issued t;
    int days = -1, secs = -1;

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    CHECK_INT(ASN1_TIME_cmp_time_t(X509_get0_notBefore(t.cert), NOW - 60), 0);
    CHECK_INT(ASN1_TIME_cmp_time_t(X509_get0_notAfter(t.cert), NOW + 90 * DAY), 0);
    CHECK(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(t.cert), X509_get0_notAfter(t.cert)));
    CHECK_INT(days, 90);
    CHECK_INT(secs, 60);
    CHECK_INT(ASN1_STRING_type(X509_get0_notAfter(t.cert)), V_ASN1_UTCTIME); /* §4.1.2.5 */
    issued_free(&t);
}

static void cert_validity_capped_at_issuer_not_after(void)
{
    struct issued t;
    char detail[256];

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 30 * DAY, 1);
    CHECK_INT(ASN1_TIME_compare(X509_get0_notAfter(t.cert), X509_get0_notAfter(t.issuer)), 0);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), 0);
    issued_free(&t);

    /* an issuer that has expired cannot issue */
    {
        EVP_PKEY *ik = ec_key("P-256"), *key = ec_key("P-256");
        X509 *issuer = make_issuer(ik, NOW - 1, 1), *cert = NULL;
        X509_REQ *req = make_csr(key, NULL, "DNS:a.device.test");

        CHECK_INT(pol_build_cert(cls, NULL, req, issuer, NOW, &cert), AGW_ERR_BAD_CONFIG);
        CHECK(cert == NULL);
        X509_REQ_free(req);
        X509_free(issuer);
        EVP_PKEY_free(ik);
        EVP_PKEY_free(key);
    }
}

static void cert_extensions_present_and_correct(void)
{
    struct issued t;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    int crit = -1;
    BASIC_CONSTRAINTS *bc;
    ASN1_BIT_STRING *ku;
    EXTENDED_KEY_USAGE *eku;
    ASN1_OCTET_STRING *ski;
    AUTHORITY_KEYID *akid;
    GENERAL_NAMES *gens;
    const ASN1_OCTET_STRING *issuer_ski;
    char cn[128];

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test,IP:192.0.2.1,DNS:A.device.test",
          NOW + 3650 * DAY, 1);
    CHECK_INT(X509_get_version(t.cert), X509_VERSION_3);
    CHECK_INT(X509_NAME_cmp(X509_get_issuer_name(t.cert), X509_get_subject_name(t.issuer)), 0);
    CHECK_INT(
        X509_NAME_get_text_by_NID(X509_get_subject_name(t.cert), NID_commonName, cn, sizeof(cn)),
        13);
    CHECK_STR(cn, "a.device.test");
    {
        /* the subject key is the CSR's, byte for byte (pol_build_cert copies, never re-encodes) */
        unsigned char *der = NULL;
        const unsigned char *q;
        int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(t.cert), &der);
        EVP_PKEY *k;

        q = der;
        k = n > 0 ? d2i_PUBKEY(NULL, &q, n) : NULL;
        CHECK(k != NULL);
        CHECK_INT(EVP_PKEY_eq(k, t.key), 1);
        EVP_PKEY_free(k);
        OPENSSL_free(der);
    }

    bc = X509_get_ext_d2i(t.cert, NID_basic_constraints, &crit, NULL);
    CHECK(bc != NULL && bc->ca == 0 && bc->pathlen == NULL);
    CHECK_INT(crit, 1);
    BASIC_CONSTRAINTS_free(bc);

    ku = X509_get_ext_d2i(t.cert, NID_key_usage, &crit, NULL);
    CHECK_INT(crit, 1);
    CHECK(ku != NULL && ASN1_BIT_STRING_get_bit(ku, 0) == 1 && ASN1_BIT_STRING_get_bit(ku, 2) == 0);
    ASN1_BIT_STRING_free(ku);

    eku = X509_get_ext_d2i(t.cert, NID_ext_key_usage, &crit, NULL);
    CHECK_INT(crit, 0);
    CHECK(eku != NULL && sk_ASN1_OBJECT_num(eku) == 2);
    CHECK_INT(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 0)), NID_server_auth);
    CHECK_INT(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 1)), NID_client_auth);
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);

    ski = X509_get_ext_d2i(t.cert, NID_subject_key_identifier, &crit, NULL);
    CHECK_INT(X509_pubkey_digest(t.cert, EVP_sha1(), md, &md_len), 1);
    CHECK(ski != NULL && ASN1_STRING_length(ski) == (int)md_len &&
          memcmp(ASN1_STRING_get0_data(ski), md, md_len) == 0);
    ASN1_OCTET_STRING_free(ski);

    akid = X509_get_ext_d2i(t.cert, NID_authority_key_identifier, &crit, NULL);
    issuer_ski = X509_get0_subject_key_id(t.issuer);
    CHECK(akid != NULL && akid->keyid != NULL && issuer_ski != NULL);
    CHECK(akid != NULL && ASN1_OCTET_STRING_cmp(akid->keyid, issuer_ski) == 0);
    AUTHORITY_KEYID_free(akid);

    gens = X509_get_ext_d2i(t.cert, NID_subject_alt_name, &crit, NULL);
    CHECK_INT(crit, 0);                                    /* the subject has a CN */
    CHECK(gens != NULL && sk_GENERAL_NAME_num(gens) == 2); /* the duplicate went away */
    if (gens != NULL && sk_GENERAL_NAME_num(gens) == 2) {
        const GENERAL_NAME *g0 = sk_GENERAL_NAME_value(gens, 0);
        const GENERAL_NAME *g1 = sk_GENERAL_NAME_value(gens, 1);

        CHECK_INT(g0->type, GEN_DNS);
        CHECK(ASN1_STRING_length(g0->d.dNSName) == 13 &&
              memcmp(ASN1_STRING_get0_data(g0->d.dNSName), "a.device.test", 13) == 0);
        CHECK_INT(g1->type, GEN_IPADD);
        CHECK(ASN1_STRING_length(g1->d.iPAddress) == 4 &&
              memcmp(ASN1_STRING_get0_data(g1->d.iPAddress), "\xc0\x00\x02\x01", 4) == 0);
    }
    GENERAL_NAMES_free(gens);
    issued_free(&t);
}

static void cert_aki_computed_when_issuer_lacks_ski(void)
{
    struct issued t;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    AUTHORITY_KEYID *akid;

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 0);
    CHECK(X509_get_ext_by_NID(t.issuer, NID_subject_key_identifier, -1) < 0);
    akid = X509_get_ext_d2i(t.cert, NID_authority_key_identifier, NULL, NULL);
    CHECK_INT(X509_pubkey_digest(t.issuer, EVP_sha1(), md, &md_len), 1);
    CHECK(akid != NULL && akid->keyid != NULL && ASN1_STRING_length(akid->keyid) == (int)md_len &&
          memcmp(ASN1_STRING_get0_data(akid->keyid), md, md_len) == 0);
    AUTHORITY_KEYID_free(akid);
    issued_free(&t);
}

static void cert_rsa_key_gets_key_encipherment(void)
{
    struct issued t;
    ASN1_BIT_STRING *ku;
    char detail[256];

    issue(&t, rsa_key(2048), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    ku = X509_get_ext_d2i(t.cert, NID_key_usage, NULL, NULL);
    CHECK(ku != NULL && ASN1_BIT_STRING_get_bit(ku, 0) == 1 && ASN1_BIT_STRING_get_bit(ku, 2) == 1);
    ASN1_BIT_STRING_free(ku);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), 0);
    issued_free(&t);
}

static void cert_long_name_gets_empty_subject_and_critical_san(void)
{
    struct issued t;
    char name[128], sans[140], detail[256];
    int crit = -1;
    GENERAL_NAMES *gens;

    memset(name, 'x', 63);
    strcpy(name + 63, ".device.test"); /* 75 > 64 characters */
    snprintf(sans, sizeof(sans), "DNS:%s", name);
    issue(&t, ec_key("P-256"), NULL, sans, NOW + 3650 * DAY, 1);
    CHECK_INT(X509_NAME_entry_count(X509_get_subject_name(t.cert)), 0);
    gens = X509_get_ext_d2i(t.cert, NID_subject_alt_name, &crit, NULL);
    CHECK_INT(crit, 1);
    GENERAL_NAMES_free(gens);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), 0);
    CHECK_STR(detail, "");
    issued_free(&t);
}

static void cert_unknown_profile_is_invalid_profile(void)
{
    EVP_PKEY *ik = ec_key("P-256"), *key = ec_key("P-256");
    X509 *issuer = make_issuer(ik, NOW + 3650 * DAY, 1), *cert = NULL;
    X509_REQ *req = make_csr(key, NULL, "DNS:a.device.test");

    CHECK_INT(pol_build_cert(cls, "web", req, issuer, NOW, &cert), AGW_ERR_INVALID_PROFILE);
    CHECK(cert == NULL);
    CHECK_INT(pol_build_cert(cls, "default", req, issuer, NOW, &cert), 0);
    X509_free(cert);
    X509_REQ_free(req);
    X509_free(issuer);
    EVP_PKEY_free(ik);
    EVP_PKEY_free(key);
}

static void final_accepts_built_cert_and_signed_cert_verifies(void)
{
    struct issued t;
    char detail[256];

    issue(&t, ec_key("P-256"), "a.device.test", "DNS:a.device.test,DNS:b.device.test",
          NOW + 3650 * DAY, 1);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), 0);
    CHECK_STR(detail, "");
    /* what the HSM does next */
    CHECK(X509_sign(t.cert, t.issuer_key, EVP_sha384()) > 0);
    CHECK_INT(X509_verify(t.cert, t.issuer_key), 1);
    CHECK_INT(pol_check_final(cls, t.cert, NOW + 299, detail, sizeof(detail)), 0);
    issued_free(&t);
}

static void final_rejects_ca_true(void)
{
    struct issued t;
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    char detail[256];

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    bc->ca = 0xff;
    replace_ext(t.cert, NID_basic_constraints, bc, 1);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK_STR(detail, "basicConstraints is not CA:FALSE");
    BASIC_CONSTRAINTS_free(bc);

    X509_EXTENSION_free(
        X509_delete_ext(t.cert, X509_get_ext_by_NID(t.cert, NID_basic_constraints, -1)));
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK_STR(detail, "basicConstraints missing or unparsable");
    issued_free(&t);
}

static void final_rejects_validity_over_class_maximum(void)
{
    struct issued t;
    char detail[256];

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    ASN1_TIME_set(X509_getm_notAfter(t.cert), NOW + 90 * DAY); /* the maximum: accepted */
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), 0);
    ASN1_TIME_set(X509_getm_notAfter(t.cert), NOW + 90 * DAY + 1);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    ASN1_TIME_set(X509_getm_notAfter(t.cert), NOW + 400 * DAY);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK(strstr(detail, "validity of") != NULL);
    /* notBefore in the future, or backdated far: both refused */
    ASN1_TIME_set(X509_getm_notAfter(t.cert), NOW + 10 * DAY);
    ASN1_TIME_set(X509_getm_notBefore(t.cert), NOW + 3600);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    ASN1_TIME_set(X509_getm_notBefore(t.cert), NOW - 30 * DAY);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    issued_free(&t);
}

static void final_rejects_san_outside_suffix_or_of_other_type(void)
{
    struct issued t;
    char detail[256];
    X509_EXTENSION *ext;

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    X509_EXTENSION_free(
        X509_delete_ext(t.cert, X509_get_ext_by_NID(t.cert, NID_subject_alt_name, -1)));
    ext = X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name,
                               "DNS:a.device.test,DNS:evil.example");
    X509_add_ext(t.cert, ext, -1);
    X509_EXTENSION_free(ext);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK_STR(detail, "subjectAltName dns evil.example not allowed for class default");

    X509_EXTENSION_free(
        X509_delete_ext(t.cert, X509_get_ext_by_NID(t.cert, NID_subject_alt_name, -1)));
    ext = X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name,
                               "DNS:a.device.test,email:root@device.test");
    X509_add_ext(t.cert, ext, -1);
    X509_EXTENSION_free(ext);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK_STR(detail, "subjectAltName type rfc822Name is not allowed");

    X509_EXTENSION_free(
        X509_delete_ext(t.cert, X509_get_ext_by_NID(t.cert, NID_subject_alt_name, -1)));
    ext = X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, "DNS:a.device.test");
    X509_add_ext(t.cert, ext, -1);
    X509_EXTENSION_free(ext);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), 0);
    issued_free(&t);
}

static void final_rejects_other_ku_eku_or_unknown_extension(void)
{
    struct issued t;
    char detail[256];
    ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
    EXTENDED_KEY_USAGE *eku = sk_ASN1_OBJECT_new_null();
    X509_EXTENSION *ext;

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    ASN1_BIT_STRING_set_bit(ku, 0, 1);
    ASN1_BIT_STRING_set_bit(ku, 5, 1); /* keyCertSign */
    replace_ext(t.cert, NID_key_usage, ku, 1);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK(strstr(detail, "keyUsage") != NULL);
    ASN1_BIT_STRING_set_bit(ku, 5, 0);
    replace_ext(t.cert, NID_key_usage, ku, 1);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), 0);
    ASN1_BIT_STRING_free(ku);

    sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_server_auth));
    replace_ext(t.cert, NID_ext_key_usage, eku, 0); /* clientAuth missing */
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK(strstr(detail, "extendedKeyUsage") != NULL);
    sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_client_auth));
    replace_ext(t.cert, NID_ext_key_usage, eku, 0);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), 0);
    sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_code_sign));
    replace_ext(t.cert, NID_ext_key_usage, eku, 0);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    sk_ASN1_OBJECT_free(eku);

    issued_free(&t);
    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    ext = X509V3_EXT_nconf_nid(NULL, NULL, NID_netscape_comment, "hello");
    X509_add_ext(t.cert, ext, -1);
    X509_EXTENSION_free(ext);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK_STR(detail, "extension 2.16.840.1.113730.1.13 is not allowed");
    issued_free(&t);
}

static void final_rejects_disallowed_key_and_foreign_subject(void)
{
    struct issued t;
    char detail[256];
    EVP_PKEY *ed = ed25519_key();
    X509_NAME *name = X509_NAME_new();

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                               (const unsigned char *)"b.device.test", -1, -1, 0);
    X509_set_subject_name(t.cert, name);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK_STR(detail, "subject is not a commonName naming a SAN");
    X509_NAME_free(name);
    issued_free(&t);

    issue(&t, ec_key("P-256"), NULL, "DNS:a.device.test", NOW + 3650 * DAY, 1);
    X509_set_pubkey(t.cert, ed);
    CHECK_INT(pol_check_final(cls, t.cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK(strncmp(detail, "key type ed25519 not allowed", 28) == 0);
    EVP_PKEY_free(ed);
    issued_free(&t);
}

/* ---- policy files ---- */

static char tmp[4096];

/* examples/policy.d from the source tree. __FILE__ is relative to the build directory, which is
 * the parent of this executable's directory (tests/), wherever the test is started from. */
static void examples_dir(char *buf, size_t size)
{
    const char *src = getenv("SOURCE_DIR");
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    int dir_len = (int)(strrchr(__FILE__, '/') - __FILE__);

    if (src != NULL) {
        snprintf(buf, size, "%s/examples/policy.d", src);
        return;
    }
    if (__FILE__[0] == '/' || n <= 0) {
        snprintf(buf, size, "%.*s/../../examples/policy.d", dir_len, __FILE__);
        return;
    }
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0'; /* build/tests */
    snprintf(buf, size, "%s/../%.*s/../../examples/policy.d", exe, dir_len, __FILE__);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[4200];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    CHECK(f != NULL);
    if (f != NULL) {
        fputs(text, f);
        fclose(f);
    }
}

/* Lint output for one file written into a fresh subdirectory of tmp. */
static char *lint_text(const char *name, const char *text, int *rc)
{
    static int seq;
    char dir[4200], path[4300];
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    snprintf(dir, sizeof(dir), "%s/lint%d", tmp, seq++);
    CHECK_INT(mkdir(dir, 0700), 0);
    write_file(dir, name, text);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    *rc = pol_lint_file(path, f);
    fclose(f);
    /* drop the directory part so expectations read "name:line:col: ..." */
    for (char *p = strstr(buf, dir); p != NULL; p = strstr(buf, dir))
        memmove(p, p + strlen(dir) + 1, strlen(p + strlen(dir) + 1) + 1);
    return buf;
}

static const char good_policy[] = "issuer: ca-1\n"
                                  "identifiers:\n"
                                  "  types: [dns]\n"
                                  "  dns: [\"*.device.test\"]\n"
                                  "validation:\n"
                                  "  method: pre-authorized\n"
                                  "csr:\n"
                                  "  keys: [ec-p256]\n"
                                  "profiles:\n"
                                  "  - name: default\n"
                                  "    validity_days: 30\n"
                                  "    key_usage: [digitalSignature]\n";

static void files_examples_load(void)
{
    char dir[4200], err[512] = "x";
    struct pol_set *files = NULL;
    const struct pol_class *dev, *lab, *web;

    examples_dir(dir, sizeof(dir));
    CHECK_INT(pol_set_load_dir(dir, &files, err, sizeof(err)), 0);
    CHECK_STR(err, "");
    dev = pol_class_find(files, "devices");
    lab = pol_class_find(files, "lab");
    web = pol_class_find(files, "web-servers");
    CHECK(dev != NULL && lab != NULL && web != NULL);
    CHECK(pol_class_find(files, "default") == NULL);
    if (dev == NULL || lab == NULL || web == NULL) {
        pol_set_unref(files);
        return;
    }
    CHECK_INT(pol_class_validation(dev), POL_VALIDATE_PRE_AUTHORIZED);
    CHECK_INT(pol_class_validation(web), POL_VALIDATE_HTTP01);
    CHECK_INT(pol_class_max_identifiers(dev), 5);
    CHECK_STR(pol_class_issuer(lab), "lab-ca");
    for (int i = 0; i < 3; i++) { /* every example passes lint too */
        static const char *const names[] = {"devices.yaml", "lab.yaml", "web-servers.yaml"};
        char path[4300];

        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        CHECK_INT(pol_lint_file(path, stderr), 0);
    }
    pol_set_unref(files);
}

static struct pol_set *load_examples(void)
{
    char dir[4200], err[512];
    struct pol_set *files = NULL;

    examples_dir(dir, sizeof(dir));
    CHECK_INT(pol_set_load_dir(dir, &files, err, sizeof(err)), 0);
    return files;
}

static void files_devices_source_cidr_keys_and_profile(void)
{
    struct pol_set *files = load_examples();
    const struct pol_class *dev = pol_class_find(files, "devices");
    const struct pol_class *web = pol_class_find(files, "web-servers");
    struct pol_identifier id = {"dns", "a.device.test"}, apex = {"dns", "device.test"};
    EVP_PKEY *ik = ec_key("P-256"), *key = ec_key("P-256"), *rsa = rsa_key(2048);
    EVP_PKEY *account = ec_key("P-256");
    X509 *issuer = make_issuer(ik, NOW + 3650 * DAY, 1), *cert = NULL;
    X509_REQ *req = make_csr(key, NULL, "DNS:a.device.test"), *rsa_req;
    int r, crit = -1, days = 0, secs = 0;
    char detail[256];
    EXTENDED_KEY_USAGE *eku;
    CERTIFICATEPOLICIES *cp;

    rsa_req = make_csr(rsa, NULL, "DNS:a.device.test");
    CHECK(dev != NULL && web != NULL);
    if (dev == NULL || web == NULL)
        goto done;
    CHECK_INT(pol_check_identifiers(dev, &id, 1, "127.0.0.1", &r), 0);
    CHECK_INT(pol_check_identifiers(dev, &id, 1, "::1", &r), 0);
    CHECK_INT(pol_check_identifiers(dev, &id, 1, "192.0.2.7", &r), AGW_ERR_UNAUTHORIZED);
    CHECK_INT(pol_check_identifiers(dev, &id, 1, NULL, &r), AGW_ERR_UNAUTHORIZED);
    CHECK_INT(pol_check_identifiers(dev, &apex, 1, "127.0.0.1", &r), AGW_ERR_REJECTED_IDENTIFIER);
    /* http-01 classes do not look at the source */
    CHECK_INT(pol_check_identifiers(web, &(struct pol_identifier){"dns", "www.web.test"}, 1,
                                    "192.0.2.7", &r),
              0);

    CHECK_INT(pol_check_csr(dev, req, &id, 1, account, detail, sizeof(detail)), 0);
    CHECK_INT(pol_check_csr(dev, rsa_req, &id, 1, account, detail, sizeof(detail)),
              AGW_ERR_BAD_PUBLIC_KEY);
    CHECK_STR(detail,
              "key type rsa-2048 not allowed for class devices (allowed: ec-p256, ec-p384)");

    CHECK_INT(pol_build_cert(dev, NULL, req, issuer, NOW, &cert), 0);
    CHECK(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert), X509_get0_notAfter(cert)));
    CHECK_INT(days, 365);
    eku = X509_get_ext_d2i(cert, NID_ext_key_usage, &crit, NULL);
    CHECK(eku != NULL && sk_ASN1_OBJECT_num(eku) == 1 &&
          OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 0)) == NID_client_auth);
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    cp = X509_get_ext_d2i(cert, NID_certificate_policies, &crit, NULL);
    CHECK(cp != NULL && sk_POLICYINFO_num(cp) == 1);
    if (cp != NULL && sk_POLICYINFO_num(cp) == 1) {
        char oid[64];

        OBJ_obj2txt(oid, sizeof(oid), sk_POLICYINFO_value(cp, 0)->policyid, 1);
        CHECK_STR(oid, "1.3.6.1.4.1.55555.1.2");
    }
    sk_POLICYINFO_pop_free(cp, POLICYINFO_free);
    CHECK_INT(pol_check_final(dev, cert, NOW, detail, sizeof(detail)), 0);
    /* a devices certificate is not a web-servers certificate, nor a default-class one */
    CHECK_INT(pol_check_final(web, cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK_INT(pol_check_final(cls, cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
done:
    X509_free(cert);
    X509_REQ_free(req);
    X509_REQ_free(rsa_req);
    X509_free(issuer);
    EVP_PKEY_free(ik);
    EVP_PKEY_free(key);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(account);
    pol_set_unref(files);
}

static void files_lab_ip_wildcards_ed25519_profiles(void)
{
    struct pol_set *files = load_examples();
    const struct pol_class *lab = pol_class_find(files, "lab");
    struct pol_identifier ids[] = {
        {"ip", "10.1.2.3"}, {"dns", "*.lab.test"}, {"dns", "*.x.lab.test"}, {"ip", "fd00::1"}};
    EVP_PKEY *ik = ec_key("P-256"), *key = ed25519_key(), *account = ec_key("P-256");
    X509 *issuer = make_issuer(ik, NOW + 3650 * DAY, 1), *cert = NULL, *long_cert = NULL;
    X509_REQ *req = make_csr(key, NULL, "IP:10.1.2.3,DNS:*.lab.test");
    int results[4], r, days = 0, secs = 0;
    char detail[256];
    AUTHORITY_INFO_ACCESS *aia;

    CHECK(lab != NULL);
    if (lab == NULL)
        goto done;
    CHECK_INT(pol_check_identifiers(lab, ids, 4, "203.0.113.9", results), 0);
    CHECK_INT(
        pol_check_identifiers(lab, &(struct pol_identifier){"ip", "203.0.113.1"}, 1, NULL, &r),
        AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(
        pol_check_identifiers(lab, &(struct pol_identifier){"dns", "*.other.test"}, 1, NULL, &r),
        AGW_ERR_REJECTED_IDENTIFIER);
    CHECK_INT(pol_check_csr(lab, req, ids, 2, account, detail, sizeof(detail)), 0);

    CHECK_INT(pol_build_cert(lab, NULL, req, issuer, NOW, &cert), 0); /* default: short */
    CHECK(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert), X509_get0_notAfter(cert)));
    CHECK_INT(days, 7);
    CHECK_INT(pol_check_final(lab, cert, NOW, detail, sizeof(detail)), 0);
    CHECK_INT(pol_build_cert(lab, "long", req, issuer, NOW, &long_cert), 0);
    CHECK(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(long_cert),
                         X509_get0_notAfter(long_cert)));
    CHECK_INT(days, 90);
    aia = X509_get_ext_d2i(long_cert, NID_info_access, NULL, NULL);
    CHECK(aia != NULL && sk_ACCESS_DESCRIPTION_num(aia) == 1 &&
          OBJ_obj2nid(sk_ACCESS_DESCRIPTION_value(aia, 0)->method) == NID_ad_OCSP);
    sk_ACCESS_DESCRIPTION_pop_free(aia, ACCESS_DESCRIPTION_free);
    /* matches the "long" profile as a whole, so the final check passes */
    CHECK_INT(pol_check_final(lab, long_cert, NOW, detail, sizeof(detail)), 0);
    /* 90 days with the short profile's extensions matches no profile */
    ASN1_TIME_set(X509_getm_notAfter(cert), NOW + 90 * DAY);
    CHECK_INT(pol_check_final(lab, cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK(strstr(detail, "profile short") != NULL);
    X509_free(cert);
    CHECK_INT(pol_build_cert(lab, "medium", req, issuer, NOW, &cert), AGW_ERR_INVALID_PROFILE);
    CHECK(cert == NULL);
done:
    X509_free(cert);
    X509_free(long_cert);
    X509_REQ_free(req);
    X509_free(issuer);
    EVP_PKEY_free(ik);
    EVP_PKEY_free(key);
    EVP_PKEY_free(account);
    pol_set_unref(files);
}

static void files_web_crl_and_aia_exact(void)
{
    struct pol_set *files = load_examples();
    const struct pol_class *web = pol_class_find(files, "web-servers");
    EVP_PKEY *ik = ec_key("P-256"), *key = ec_key("P-256");
    X509 *issuer = make_issuer(ik, NOW + 3650 * DAY, 1), *cert = NULL;
    X509_REQ *req = make_csr(key, NULL, "DNS:www.web.test");
    char detail[256];
    X509_EXTENSION *ext;
    CRL_DIST_POINTS *dps;

    CHECK(web != NULL);
    if (web == NULL)
        goto done;
    CHECK_INT(pol_build_cert(web, NULL, req, issuer, NOW, &cert), 0);
    dps = X509_get_ext_d2i(cert, NID_crl_distribution_points, NULL, NULL);
    CHECK(dps != NULL && sk_DIST_POINT_num(dps) == 1);
    sk_DIST_POINT_pop_free(dps, DIST_POINT_free);
    CHECK(X509_get_ext_by_NID(cert, NID_info_access, -1) >= 0);
    CHECK_INT(pol_check_final(web, cert, NOW, detail, sizeof(detail)), 0);
    X509_EXTENSION_free(
        X509_delete_ext(cert, X509_get_ext_by_NID(cert, NID_crl_distribution_points, -1)));
    ext =
        X509V3_EXT_nconf_nid(NULL, NULL, NID_crl_distribution_points, "URI:http://evil.test/x.crl");
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    CHECK_INT(pol_check_final(web, cert, NOW, detail, sizeof(detail)), AGW_ERR_POLICY_REJECTED);
    CHECK_STR(detail, "X509v3 CRL Distribution Points is not exactly profile default's");
done:
    X509_free(cert);
    X509_REQ_free(req);
    X509_free(issuer);
    EVP_PKEY_free(ik);
    EVP_PKEY_free(key);
    pol_set_unref(files);
}

static void files_load_dir_errors(void)
{
    char dir[4200], err[512];
    struct pol_set *files = NULL;

    snprintf(dir, sizeof(dir), "%s/empty", tmp);
    CHECK_INT(mkdir(dir, 0700), 0);
    CHECK_INT(pol_set_load_dir(dir, &files, err, sizeof(err)), AGW_ERR_BAD_CONFIG);
    CHECK(strstr(err, "no *.yaml policy files") != NULL);
    write_file(dir, "ok.yaml", good_policy);
    CHECK_INT(pol_set_load_dir(dir, &files, err, sizeof(err)), 0);
    CHECK(pol_class_find(files, "ok") != NULL);
    pol_set_unref(files);
    files = NULL;
    write_file(dir, "typo.yaml", "issuer: ca-1\nidentifer: {}\n");
    CHECK_INT(pol_set_load_dir(dir, &files, err, sizeof(err)), AGW_ERR_BAD_CONFIG);
    CHECK(files == NULL);
    CHECK(strstr(err, "/typo.yaml:2:1: unknown key 'identifer'") != NULL);
    snprintf(dir, sizeof(dir), "%s/nope", tmp);
    CHECK_INT(pol_set_load_dir(dir, &files, err, sizeof(err)), AGW_ERR_BAD_CONFIG);
}

static void lint_good_file_is_clean(void)
{
    int rc = -1;
    char *out = lint_text("good.yaml", good_policy, &rc);

    CHECK_INT(rc, 0);
    CHECK_STR(out, "");
    free(out);
}

static void lint_reports_unknown_keys_and_wrong_types_with_positions(void)
{
    static const char text[] = "issuer: ca-1\n"
                               "identifiers:\n"
                               "  types: dns\n" /* 3: not a list */
                               "  dns: [\"*.device.test\"]\n"
                               "  max: 9x\n"        /* 5: not a number */
                               "  wildcard: true\n" /* 6: unknown key */
                               "validation:\n"
                               "  method: pre-authorized\n"
                               "csr:\n"
                               "  keys: [ec-p256]\n"
                               "profiles:\n"
                               "  - name: default\n"
                               "    validity_days: 30\n"
                               "    key_usage: [digitalSignature]\n"
                               "    colour: blue\n"; /* 15: unknown key */
    int rc = 0;
    char *out = lint_text("types.yaml", text, &rc);

    CHECK_INT(rc, AGW_ERR_BAD_CONFIG);
    CHECK(strstr(out, "types.yaml:3:10: expected a list\n") != NULL);
    CHECK(strstr(out, "types.yaml:5:8: '9x' is not a whole number\n") != NULL);
    CHECK(strstr(out, "types.yaml:6:3: unknown key 'wildcard' (known: types, dns, ip, max, "
                      "wildcards)\n") != NULL);
    CHECK(strstr(out, "types.yaml:15:5: unknown key 'colour'") != NULL);
    fputs(out, stderr);
    free(out);
}

static void lint_reports_meaning_problems_with_positions(void)
{
    static const char text[] = "issuer: ca-1\n"
                               "identifiers:\n"
                               "  types: [dns, ip]\n"
                               "  dns: [\"*.device.test\", \"Bad..name\"]\n" /* 4:26 */
                               "  ip: [10.0.0.1/8, 192.0.2.0/33]\n"          /* 5:8, 5:20 */
                               "validation:\n"
                               "  method: http-01\n"
                               "  sources: [127.0.0.0/8]\n" /* 8:12 contradiction */
                               "csr:\n"
                               "  keys: [ec-p256, rsa-1024, \"rsa>=1024\"]\n" /* 10:19, 10:29 */
                               "profiles:\n"
                               "  - name: default\n"
                               "    validity_days: 400\n"
                               "    max_validity_days: 365\n"                     /* 14:24 */
                               "    key_usage: [digitalSignature, keyCertSign]\n" /* 15:35 */
                               "    extended_key_usage: [serverAuth, anyThing]\n" /* 16:38 */
                               "    crl_urls: [ftp://x]\n"                        /* 17:16 */
                               "default_profile: other\n";                        /* 18:18 */
    int rc = 0;
    char *out = lint_text("meaning.yaml", text, &rc);

    CHECK_INT(rc, AGW_ERR_BAD_CONFIG);
    CHECK(strstr(out, "meaning.yaml:4:26: dns pattern 'Bad..name' is not") != NULL);
    CHECK(strstr(out, "meaning.yaml:5:8: '10.0.0.1/8' is not a CIDR range") != NULL);
    CHECK(strstr(out, "meaning.yaml:5:20: '192.0.2.0/33' is not a CIDR range") != NULL);
    CHECK(strstr(out, "meaning.yaml:8:12: sources apply to pre-authorized validation only") !=
          NULL);
    CHECK(strstr(out, "meaning.yaml:10:19: unknown key type 'rsa-1024'") != NULL);
    CHECK(strstr(out, "meaning.yaml:10:29: 'rsa>=1024': rsa>=N needs N in 2048..8192") != NULL);
    CHECK(strstr(out, "meaning.yaml:14:24: validity_days (400) is above max_validity_days (365)") !=
          NULL);
    CHECK(strstr(out, "meaning.yaml:15:35: key usage keyCertSign is for CA certificates only") !=
          NULL);
    CHECK(strstr(out, "meaning.yaml:16:38: unknown extended key usage 'anyThing'") != NULL);
    CHECK(strstr(out, "meaning.yaml:17:16: 'ftp://x' is not an http(s) URL") != NULL);
    CHECK(strstr(out, "meaning.yaml:18:18: no profile is named 'other'") != NULL);
    fputs(out, stderr);
    free(out);
}

static void lint_reports_syntax_missing_keys_and_contradictions(void)
{
    int rc = 0;
    char *out = lint_text("syntax.yaml", "issuer: [unclosed\n", &rc);

    CHECK_INT(rc, AGW_ERR_BAD_CONFIG);
    CHECK(strncmp(out, "syntax.yaml:2:1: YAML: ", 23) == 0);
    free(out);

    out = lint_text("missing.yaml", "issuer: ca-1\n", &rc);
    CHECK_INT(rc, AGW_ERR_BAD_CONFIG);
    CHECK(strstr(out, "missing.yaml:1:1: missing key 'identifiers'\n") != NULL);
    CHECK(strstr(out, "missing.yaml:1:1: missing key 'profiles'\n") != NULL);
    free(out);

    out = lint_text("wild.yaml",
                    "issuer: ca-1\n"
                    "identifiers:\n"
                    "  types: [dns]\n"
                    "  dns: [host.device.test]\n"
                    "  wildcards: true\n"
                    "validation:\n"
                    "  method: pre-authorized\n"
                    "csr:\n"
                    "  keys: [ec-p256]\n"
                    "profiles:\n"
                    "  - name: default\n"
                    "    validity_days: 30\n"
                    "    key_usage: [digitalSignature]\n"
                    "  - name: default\n"
                    "    validity_days: 30\n"
                    "    key_usage: [digitalSignature]\n",
                    &rc);
    CHECK_INT(rc, AGW_ERR_BAD_CONFIG);
    CHECK(strstr(out, "wild.yaml:5:14: wildcards are allowed but no dns pattern") != NULL);
    CHECK(strstr(out, "wild.yaml:14:11: profile name 'default' is used twice") != NULL);
    free(out);

    out = lint_text("Bad Name.yaml", good_policy, &rc);
    CHECK_INT(rc, AGW_ERR_BAD_CONFIG);
    CHECK(strstr(out, "file name must be CLASS.yaml") != NULL);
    free(out);

    out = lint_text("alias.yaml",
                    "issuer: &a ca-1\n"
                    "identifiers:\n"
                    "  types: [dns]\n"
                    "  dns: [*a]\n"
                    "validation:\n"
                    "  method: pre-authorized\n"
                    "csr:\n"
                    "  keys: [ec-p256]\n"
                    "profiles:\n"
                    "  - name: default\n"
                    "    validity_days: 30\n"
                    "    key_usage: [digitalSignature]\n",
                    &rc);
    CHECK_INT(rc, AGW_ERR_BAD_CONFIG);
    CHECK(strstr(out, "aliases are not allowed") != NULL);
    free(out);
}

int main(void)
{
    CHECK_INT(pol_set_default("device.test", 90, "test-ca", &set), 0);
    cls = pol_class_find(set, "default");

    RUN(set_default_and_refcount);
    RUN(ids_suffix_on_label_boundary);
    RUN(ids_wildcard_rejected_by_default_class);
    RUN(ids_ip_rejected_by_default_class_malformed_ip_is_bad_input);
    RUN(ids_unknown_type_unsupported);
    RUN(ids_malformed_dns_is_bad_input);
    RUN(ids_results_per_identifier_first_failure_returned);
    RUN(ids_max_identifiers_per_order);
    RUN(csr_ec_p256_with_matching_sans_passes);
    RUN(csr_san_set_mismatch_is_bad_csr);
    RUN(csr_cn_not_in_sans_is_bad_csr);
    RUN(csr_rsa_1024_is_bad_public_key);
    RUN(csr_rsa_exponent_follows_the_baseline_requirements);
    RUN(csr_ed25519_and_other_curves_rejected_by_default_class);
    RUN(csr_key_equal_to_account_key_is_bad_csr);
    RUN(csr_tampered_signature_is_bad_csr);
    RUN(csr_email_or_uri_san_is_bad_csr);
    RUN(csr_asking_for_ca_is_bad_csr);
    RUN(csr_decode_builds_each_key_kind_from_its_parts);
    RUN(csr_decode_refuses_trailing_bytes_and_point_off_curve);
    RUN(cert_serial_random_positive_128_bits);
    RUN(cert_validity_90_days_backdated_60_s);
    RUN(cert_validity_capped_at_issuer_not_after);
    RUN(cert_extensions_present_and_correct);
    RUN(cert_aki_computed_when_issuer_lacks_ski);
    RUN(cert_rsa_key_gets_key_encipherment);
    RUN(cert_long_name_gets_empty_subject_and_critical_san);
    RUN(cert_unknown_profile_is_invalid_profile);
    RUN(final_accepts_built_cert_and_signed_cert_verifies);
    RUN(final_rejects_ca_true);
    RUN(final_rejects_validity_over_class_maximum);
    RUN(final_rejects_san_outside_suffix_or_of_other_type);
    RUN(final_rejects_other_ku_eku_or_unknown_extension);
    RUN(final_rejects_disallowed_key_and_foreign_subject);

    CHECK_INT(tl_tmpdir(tmp, sizeof(tmp)), 0);
    RUN(files_examples_load);
    RUN(files_devices_source_cidr_keys_and_profile);
    RUN(files_lab_ip_wildcards_ed25519_profiles);
    RUN(files_web_crl_and_aia_exact);
    RUN(files_load_dir_errors);
    RUN(lint_good_file_is_clean);
    RUN(lint_reports_unknown_keys_and_wrong_types_with_positions);
    RUN(lint_reports_meaning_problems_with_positions);
    RUN(lint_reports_syntax_missing_keys_and_contradictions);
    tl_rmtree(tmp);

    pol_set_unref(set);
    return CHECK_DONE();
}

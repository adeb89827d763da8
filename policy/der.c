/*
 * policy/der.c - CSRs and subject public keys decoded without OpenSSL 3.0's key decoder chain.
 *
 * Why this file exists: in OpenSSL 3.0 every d2i of a SubjectPublicKeyInfo (inside d2i_X509_REQ,
 * d2i_X509 and d2i_PUBKEY alike) builds an OSSL_DECODER context, which walks every decoder and
 * key manager of every provider under a global lock: ~70-90 us per key on one idle core here,
 * more when threads contend, and twice per issued certificate (the CSR in the gateway, the final
 * certificate in the hsm precheck) - 16 % of the gateway's CPU in the profile of
 * docs/performance.md. OpenSSL 3.2 caches those contexts; bookworm ships 3.0.
 *
 * So a CSR is decoded in a library context that holds only the "null" provider: the ASN.1 is
 * parsed as usual (every field, every bound) but the opportunistic key decode finds no decoder
 * and leaves the key undecoded. pol_pubkey() then builds the key from the SPKI's parts with
 * EVP_PKEY_fromdata() in the default context: the curve named by its OID plus the point (EC), the
 * modulus and exponent of the RSAPublicKey (RSA), the raw key (Ed25519, Ed448). fromdata refuses
 * a point that is not on the curve, as the decoder does. Anything else (explicit EC parameters,
 * RSA-PSS, other algorithms) goes to the decoder as before, so what is refused and how stays the
 * same; only the cost changes.
 *
 * The library context is created once per process and never freed (like OpenSSL's own default
 * context); without it (allocation failure) CSRs are decoded the ordinary way.
 */
#include "policy/policy.h"

#include "common/err.h"
#include "policy/internal.h"

#include <limits.h>
#include <threads.h>

#include <openssl/asn1t.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

static OSSL_LIB_CTX *nokey_ctx;
static once_flag nokey_once = ONCE_FLAG_INIT;

static void nokey_init(void)
{
    OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();

    /* loading a provider explicitly stops the default one from being loaded on first use */
    if (ctx != NULL && OSSL_PROVIDER_load(ctx, "null") == NULL) {
        OSSL_LIB_CTX_free(ctx);
        ctx = NULL;
    }
    ERR_clear_error();
    nokey_ctx = ctx;
}

OSSL_LIB_CTX *pol_keyless_libctx(void)
{
    call_once(&nokey_once, nokey_init);
    return nokey_ctx;
}

int pol_csr_decode(const unsigned char *der, size_t len, X509_REQ **out)
{
    OSSL_LIB_CTX *ctx = pol_keyless_libctx();
    const unsigned char *p = der;
    X509_REQ *req;

    *out = NULL;
    if (der == NULL || len == 0 || len > LONG_MAX)
        return AGW_ERR_BAD_CSR;
    if (ctx != NULL)
        req = (X509_REQ *)ASN1_item_d2i_ex(NULL, &p, (long)len, ASN1_ITEM_rptr(X509_REQ), ctx,
                                           NULL);
    else
        req = d2i_X509_REQ(NULL, &p, (long)len);
    ERR_clear_error();
    if (req == NULL || p != der + len) {
        X509_REQ_free(req);
        return AGW_ERR_BAD_CSR; /* not DER of one request, or bytes after it */
    }
    *out = req;
    return 0;
}

static EVP_PKEY *key_fromdata(const char *type, const OSSL_PARAM *params)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *key = NULL;

    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, (OSSL_PARAM *)params) != 1)
        key = NULL;
    EVP_PKEY_CTX_free(ctx);
    return key;
}

/* id-ecPublicKey with a named curve: the curve's name and the point as they are. */
static EVP_PKEY *ec_key(const ASN1_OBJECT *curve, const unsigned char *point, int point_len)
{
    int nid = OBJ_obj2nid(curve);
    const char *group = nid != NID_undef ? OBJ_nid2sn(nid) : NULL;
    OSSL_PARAM params[3];

    if (group == NULL)
        return NULL;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)point,
                                                  (size_t)point_len);
    params[2] = OSSL_PARAM_construct_end();
    return key_fromdata("EC", params);
}

/* rsaEncryption: RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }, both
 * positive, nothing after it. */
static EVP_PKEY *rsa_key(const unsigned char *der, int der_len)
{
    const unsigned char *p = der;
    ASN1_SEQUENCE_ANY *seq = d2i_ASN1_SEQUENCE_ANY(NULL, &p, der_len);
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY *key = NULL;

    if (seq == NULL || p != der + der_len || sk_ASN1_TYPE_num(seq) != 2 ||
        ASN1_TYPE_get(sk_ASN1_TYPE_value(seq, 0)) != V_ASN1_INTEGER ||
        ASN1_TYPE_get(sk_ASN1_TYPE_value(seq, 1)) != V_ASN1_INTEGER) /* NEG_INTEGER: refused */
        goto out;
    n = ASN1_INTEGER_to_BN(sk_ASN1_TYPE_value(seq, 0)->value.integer, NULL);
    e = ASN1_INTEGER_to_BN(sk_ASN1_TYPE_value(seq, 1)->value.integer, NULL);
    if (n == NULL || e == NULL || BN_is_zero(n) || BN_is_zero(e))
        goto out;
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1)
        goto out;
    params = OSSL_PARAM_BLD_to_param(bld);
    if (params != NULL)
        key = key_fromdata("RSA", params);
out:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
    return key;
}

/* What OpenSSL's decoder would make of the SPKI: the slow path, for the uncommon kinds. */
static EVP_PKEY *decoder_key(const X509_PUBKEY *spki)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    EVP_PKEY *key = NULL;
    int len = i2d_X509_PUBKEY(spki, &der);

    p = der;
    if (len > 0)
        key = d2i_PUBKEY(NULL, &p, len);
    OPENSSL_free(der);
    return key;
}

static EVP_PKEY *spki_key(const X509_PUBKEY *spki)
{
    const unsigned char *pk = NULL;
    int pk_len = 0, ptype = V_ASN1_UNDEF;
    X509_ALGOR *alg = NULL;
    const ASN1_OBJECT *oid = NULL;
    const void *pval = NULL;

    if (X509_PUBKEY_get0_param(NULL, &pk, &pk_len, &alg, spki) != 1 || pk == NULL ||
        pk_len <= 0 || alg == NULL)
        return NULL;
    X509_ALGOR_get0(&oid, &ptype, &pval, alg);
    switch (OBJ_obj2nid(oid)) {
    case NID_X9_62_id_ecPublicKey:
        if (ptype == V_ASN1_OBJECT)
            return ec_key(pval, pk, pk_len);
        break; /* explicit or implicit parameters */
    case NID_rsaEncryption:
        if (ptype == V_ASN1_NULL || ptype == V_ASN1_UNDEF)
            return rsa_key(pk, pk_len);
        break;
    case NID_ED25519:
    case NID_ED448:
        if (ptype == V_ASN1_UNDEF) /* RFC 8410 §3: parameters absent */
            return EVP_PKEY_new_raw_public_key(OBJ_obj2nid(oid), NULL, pk, (size_t)pk_len);
        break;
    default:
        break;
    }
    return decoder_key(spki);
}

const EVP_PKEY *pol_pubkey(const X509_PUBKEY *spki, EVP_PKEY **owned)
{
    const EVP_PKEY *key;

    *owned = NULL;
    if (spki == NULL)
        return NULL;
    key = X509_PUBKEY_get0(spki);
    if (key == NULL) {
        *owned = spki_key(spki);
        key = *owned;
    }
    ERR_clear_error(); /* X509_PUBKEY_get0() queues an error for a key it has not decoded */
    return key;
}

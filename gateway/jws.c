/*
 * gateway/jws.c - flattened JWS (RFC 7515) as ACME uses it (RFC 8555 §6.2), public JWKs
 * (RFC 7517, RFC 7518 §6, RFC 8037), thumbprints (RFC 7638), External Account Binding
 * (RFC 8555 §7.3.4) and strict base64url.
 *
 * Everything here reads bytes an anonymous client sent, so every step is bounded before it runs:
 * the body length before the JSON parse, the depth and every string length right after it, the
 * encoded header length before it is decoded. Duplicate JSON keys are refused, so no two readers
 * of one request can disagree about a value; non-canonical base64url (padding, '+', '/',
 * whitespace, stray trailing bits) is refused for the same reason: one request, one spelling.
 *
 * Signatures: the alg in the protected header must fit the key (RS256 only with RSA, ES256 only
 * with P-256, ...). ECDSA signatures arrive as raw r||s (RFC 7518 §3.4); r and s are checked
 * against [1, n-1] here rather than trusting the library's DER path, then converted to DER for
 * EVP_DigestVerify(). Verification failures of any kind are AGW_ERR_UNAUTHORIZED and leave the
 * OpenSSL error queue empty, so a hostile request cannot grow another request's error report.
 *
 * RSA keys are checked by size (2048..8192 bits), e == 65537 and an odd modulus without a leading
 * zero byte, but not with EVP_PKEY_public_check(): its SP 800-56B check runs Miller-Rabin rounds
 * over n, which costs milliseconds per call and would let any client burn CPU with every request
 * (the gateway turns a stored JWK into a key on each kid-signed request). A bogus modulus only
 * makes the client's own signatures fail. EC points are checked fully (on the curve, in range),
 * since an invalid point is an attack on verification itself.
 *
 * EAB error codes (RFC 8555 §7.3.4), chosen so a client can tell a broken request from a refused
 * binding:
 *   - not a flattened JWS, alg other than HS256 (HS512, none, ...), no kid, a jwk member, a nonce,
 *     a url other than the newAccount URL, a payload that is not a JWK: AGW_ERR_BAD_INPUT
 *     (malformed). Not badSignatureAlgorithm: that problem advertises the algorithms of the outer
 *     JWS, which would mislead for the MAC.
 *   - payload JWK is not the account key of the outer JWS: AGW_ERR_UNAUTHORIZED (the binding was
 *     made for another key).
 *   - MAC of the wrong length or value: AGW_ERR_UNAUTHORIZED.
 * The HMAC key is raw bytes here; clients are given it base64url-encoded and the caller decodes.
 */
#include "gateway/jws.h"

#include "common/err.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#define RSA_MIN_BITS     2048
#define RSA_MAX_BITS     8192
#define ED25519_KEY_LEN  32
#define ED25519_SIG_LEN  64
#define HS256_MAC_LEN    32
#define THUMBPRINT_CHARS 43 /* base64url of a SHA-256 digest */

/* ---------------------------------------------------------------- base64url */

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t gw_b64url_len(size_t len)
{
    return len / 3 * 4 + (len % 3 == 0 ? 0 : len % 3 + 1);
}

int gw_b64url_encode(const unsigned char *in, size_t len, char *out, size_t out_size)
{
    size_t i, o = 0;
    uint32_t v;

    if (out == NULL || (in == NULL && len != 0) || len > SIZE_MAX / 2 ||
        out_size < gw_b64url_len(len) + 1)
        return AGW_ERR_BAD_INPUT;
    for (i = 0; len - i >= 3; i += 3) {
        v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | (uint32_t)in[i + 2];
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (len - i == 1) {
        v = (uint32_t)in[i] << 16;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
    } else if (len - i == 2) {
        v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
    return 0;
}

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1; /* '=', '+', '/', whitespace, NUL, anything else */
}

int gw_b64url_decode(const char *in, size_t in_len, unsigned char **out, size_t *out_len)
{
    unsigned char *buf;
    size_t i, n = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    int v;

    if (out == NULL || out_len == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    *out_len = 0;
    /* one leftover char carries 6 bits: never a whole byte, so no encoder emits it */
    if ((in == NULL && in_len != 0) || in_len % 4 == 1)
        return AGW_ERR_BAD_INPUT;
    buf = malloc(in_len / 4 * 3 + 3); /* never 0 bytes */
    if (buf == NULL)
        return AGW_ERR_NOMEM;
    for (i = 0; i < in_len; i++) {
        v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            goto bad;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* RFC 4648 §3.5: the unused bits of the last char must be zero, else two spellings decode
     * to the same bytes */
    if (acc != 0)
        goto bad;
    *out = buf;
    *out_len = n;
    return 0;
bad:
    free(buf);
    return AGW_ERR_BAD_INPUT;
}

/* ---------------------------------------------------------------- JSON helpers */

/* Bounded recursion: depth_left starts at the cap (16), so the C stack holds at most 17 frames.
 * caps: also bound every string and key length and refuse embedded NULs. */
static int json_walk(const json_t *v, int depth_left, bool caps)
{
    json_t *obj = (json_t *)v; /* jansson's iterators take non-const; nothing is modified */
    void *it;
    size_t i, len;
    int err;

    if (json_is_string(v)) {
        len = json_string_length(v);
        if (caps && (len > GW_MAX_JSON_STRING || memchr(json_string_value(v), '\0', len) != NULL))
            return AGW_ERR_BAD_INPUT;
        return 0;
    }
    if (!json_is_object(v) && !json_is_array(v))
        return 0;
    if (depth_left < 1)
        return AGW_ERR_BAD_INPUT;
    if (json_is_array(v)) {
        for (i = 0; i < json_array_size(v); i++) {
            err = json_walk(json_array_get(v, i), depth_left - 1, caps);
            if (err != 0)
                return err;
        }
        return 0;
    }
    for (it = json_object_iter(obj); it != NULL; it = json_object_iter_next(obj, it)) {
        if (caps && json_object_iter_key_len(it) > GW_MAX_JSON_STRING)
            return AGW_ERR_BAD_INPUT;
        err = json_walk(json_object_iter_value(it), depth_left - 1, caps);
        if (err != 0)
            return err;
    }
    return 0;
}

int gw_json_check_depth(const json_t *v, int max_depth)
{
    if (v == NULL)
        return AGW_ERR_BAD_INPUT;
    return json_walk(v, max_depth, false);
}

int gw_json_parse(const char *buf, size_t len, json_t **out)
{
    json_error_t jerr;
    json_t *root;
    int err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (buf == NULL || len == 0 || len > GW_MAX_BODY)
        return AGW_ERR_BAD_INPUT;
    /* default flags also refuse \u0000 in strings and trailing bytes after the value */
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return AGW_ERR_BAD_INPUT;
    err = json_walk(root, GW_MAX_JSON_DEPTH, true);
    if (err != 0) {
        json_decref(root);
        return err;
    }
    *out = root;
    return 0;
}

/* true when v is a string equal to s (length-aware, so an embedded NUL cannot match) */
static bool json_str_eq(const json_t *v, const char *s)
{
    size_t len = strlen(s);

    return json_is_string(v) && json_string_length(v) == len &&
           memcmp(json_string_value(v), s, len) == 0;
}

/* Sets obj[name] to the base64url encoding of len bytes. */
static int json_set_b64(json_t *obj, const char *name, const unsigned char *buf, size_t len)
{
    size_t enc_len = gw_b64url_len(len);
    char *enc = malloc(enc_len + 1);
    int err = AGW_ERR_NOMEM;

    if (enc == NULL)
        return AGW_ERR_NOMEM;
    if (gw_b64url_encode(buf, len, enc, enc_len + 1) == 0 &&
        json_object_set_new(obj, name, json_stringn(enc, enc_len)) == 0)
        err = 0;
    free(enc);
    return err;
}

/* Sets obj[name] to a caller's string; invalid UTF-8 is AGW_ERR_BAD_INPUT. */
static int json_set_str(json_t *obj, const char *name, const char *s)
{
    json_t *v = json_string(s);

    if (v == NULL)
        return AGW_ERR_BAD_INPUT;
    return json_object_set_new(obj, name, v) == 0 ? 0 : AGW_ERR_NOMEM;
}

/* Decodes the base64url string member name of obj. */
static int json_get_b64(const json_t *obj, const char *name, unsigned char **out, size_t *out_len)
{
    const json_t *v = json_object_get(obj, name);

    *out = NULL;
    *out_len = 0;
    if (!json_is_string(v))
        return AGW_ERR_BAD_INPUT;
    return gw_b64url_decode(json_string_value(v), json_string_length(v), out, out_len);
}

/* *out = a "." b, NUL-terminated (the JWS signing input, RFC 7515 §5.1). */
static int concat_dot(const char *a, size_t a_len, const char *b, size_t b_len, char **out,
                      size_t *out_len)
{
    char *s;

    if (a_len > GW_MAX_BODY || b_len > GW_MAX_BODY)
        return AGW_ERR_BAD_INPUT;
    s = malloc(a_len + b_len + 2);
    if (s == NULL)
        return AGW_ERR_NOMEM;
    memcpy(s, a, a_len);
    s[a_len] = '.';
    memcpy(s + a_len + 1, b, b_len);
    s[a_len + 1 + b_len] = '\0';
    *out = s;
    *out_len = a_len + 1 + b_len;
    return 0;
}

/* ---------------------------------------------------------------- algorithms and curves */

struct ec_curve {
    const char *crv;   /* JWK name, RFC 7518 §6.2.1.1 */
    const char *group; /* OpenSSL group name */
    int nid;
    size_t field_len; /* bytes of x, y, r and s */
    enum gw_alg alg;
    const EVP_MD *(*md)(void);
};

static const struct ec_curve ec_curves[] = {
    {"P-256", "prime256v1", NID_X9_62_prime256v1, 32, GW_ALG_ES256, EVP_sha256},
    {"P-384", "secp384r1", NID_secp384r1, 48, GW_ALG_ES384, EVP_sha384},
    {"P-521", "secp521r1", NID_secp521r1, 66, GW_ALG_ES512, EVP_sha512},
};
#define N_EC_CURVES (sizeof(ec_curves) / sizeof(ec_curves[0]))

static const struct {
    const char *name;
    enum gw_alg alg;
} alg_names[] = {
    {"RS256", GW_ALG_RS256}, {"ES256", GW_ALG_ES256}, {"ES384", GW_ALG_ES384},
    {"ES512", GW_ALG_ES512}, {"EdDSA", GW_ALG_EDDSA},
};

static const char *alg_name(enum gw_alg alg)
{
    size_t i;

    for (i = 0; i < sizeof(alg_names) / sizeof(alg_names[0]); i++)
        if (alg_names[i].alg == alg)
            return alg_names[i].name;
    return NULL;
}

static const struct ec_curve *curve_by_crv(const json_t *crv)
{
    size_t i;

    for (i = 0; i < N_EC_CURVES; i++)
        if (json_str_eq(crv, ec_curves[i].crv))
            return &ec_curves[i];
    return NULL;
}

static const struct ec_curve *curve_by_alg(enum gw_alg alg)
{
    size_t i;

    for (i = 0; i < N_EC_CURVES; i++)
        if (ec_curves[i].alg == alg)
            return &ec_curves[i];
    return NULL;
}

/* The curve of an EC key, or NULL for other keys and curves. */
static const struct ec_curve *curve_of_key(const EVP_PKEY *key)
{
    char name[64];
    size_t i;
    int nid;

    if (!EVP_PKEY_is_a(key, "EC") ||
        EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof(name), NULL) !=
            1) {
        ERR_clear_error();
        return NULL;
    }
    nid = OBJ_sn2nid(name);
    if (nid == NID_undef)
        nid = EC_curve_nist2nid(name);
    for (i = 0; i < N_EC_CURVES; i++)
        if (ec_curves[i].nid == nid)
            return &ec_curves[i];
    return NULL;
}

/* ---------------------------------------------------------------- JWK */

/* RFC 7518 §6.3.2, §6.4; RFC 8037 §2: a public JWK carries none of these */
static const char *const jwk_private_members[] = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"};

/* Builds a public key from params and takes ownership of nothing. */
static int pkey_fromdata(const char *type, OSSL_PARAM *params, bool check, EVP_PKEY **out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY_CTX *check_ctx = NULL;
    EVP_PKEY *pkey = NULL;
    int err = AGW_ERR_BAD_PUBLIC_KEY;

    if (ctx == NULL) {
        err = AGW_ERR_NOMEM;
        goto fail;
    }
    if (EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        goto fail;
    if (check) {
        check_ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        if (check_ctx == NULL) {
            err = AGW_ERR_NOMEM;
            goto fail;
        }
        /* The quick check is on the curve, not infinity, coordinates in range: all of it for
         * P-256/384/521, whose cofactor is 1, so every such point has the group's prime order.
         * The full check adds n*Q == O, a scalar multiplication as costly as a verification. */
        if (EVP_PKEY_public_check_quick(check_ctx) != 1)
            goto fail;
    }
    *out = pkey;
    pkey = NULL;
    err = 0;
fail:
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(check_ctx);
    EVP_PKEY_CTX_free(ctx);
    return err;
}

static unsigned bit_length(unsigned char c)
{
    unsigned n = 0;

    while (c != 0) {
        n++;
        c >>= 1;
    }
    return n;
}

static int rsa_from_jwk(const json_t *jwk, EVP_PKEY **out)
{
    unsigned char *n = NULL, *e = NULL;
    size_t n_len, e_len, bits;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    int err;

    err = json_get_b64(jwk, "n", &n, &n_len);
    if (err != 0)
        goto fail;
    err = json_get_b64(jwk, "e", &e, &e_len);
    if (err != 0)
        goto fail;
    err = AGW_ERR_BAD_PUBLIC_KEY;
    /* RFC 7518 §6.3.1.1: n without leading zero octets; an even n is no RSA modulus */
    if (n_len == 0 || n_len > RSA_MAX_BITS / 8 || n[0] == 0 || (n[n_len - 1] & 1) == 0)
        goto fail;
    bits = (n_len - 1) * 8 + bit_length(n[0]);
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS)
        goto fail;
    if (e_len != 3 || e[0] != 0x01 || e[1] != 0x00 || e[2] != 0x01) /* 65537 only */
        goto fail;
    err = AGW_ERR_NOMEM;
    bn_n = BN_bin2bn(n, (int)n_len, NULL); /* n_len <= 1024, checked above */
    bn_e = BN_bin2bn(e, (int)e_len, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (bn_n == NULL || bn_e == NULL || bld == NULL ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) != 1)
        goto fail;
    params = OSSL_PARAM_BLD_to_param(bld);
    if (params == NULL)
        goto fail;
    err = pkey_fromdata("RSA", params, false, out); /* no public_check: see the top comment */
fail:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    free(n);
    free(e);
    return err;
}

static int ec_from_jwk(const json_t *jwk, EVP_PKEY **out)
{
    const json_t *crv = json_object_get(jwk, "crv");
    const struct ec_curve *curve;
    unsigned char *x = NULL, *y = NULL, *point = NULL;
    size_t x_len, y_len, point_len;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    int err;

    if (!json_is_string(crv))
        return AGW_ERR_BAD_INPUT;
    curve = curve_by_crv(crv);
    if (curve == NULL)
        return AGW_ERR_BAD_PUBLIC_KEY;
    err = json_get_b64(jwk, "x", &x, &x_len);
    if (err != 0)
        goto fail;
    err = json_get_b64(jwk, "y", &y, &y_len);
    if (err != 0)
        goto fail;
    /* RFC 7518 §6.2.1.2: x and y are exactly the field size, leading zeros kept */
    err = AGW_ERR_BAD_PUBLIC_KEY;
    if (x_len != curve->field_len || y_len != curve->field_len)
        goto fail;
    err = AGW_ERR_NOMEM;
    point_len = 1 + 2 * curve->field_len;
    point = malloc(point_len);
    if (point == NULL)
        goto fail;
    point[0] = POINT_CONVERSION_UNCOMPRESSED;
    memcpy(point + 1, x, x_len);
    memcpy(point + 1 + x_len, y, y_len);
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL ||
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, curve->group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, point_len) != 1)
        goto fail;
    params = OSSL_PARAM_BLD_to_param(bld);
    if (params == NULL)
        goto fail;
    /* fromdata refuses points off the curve; the check adds the range checks */
    err = pkey_fromdata("EC", params, true, out);
fail:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    free(point);
    free(x);
    free(y);
    return err;
}

static int okp_from_jwk(const json_t *jwk, EVP_PKEY **out)
{
    const json_t *crv = json_object_get(jwk, "crv");
    unsigned char *x = NULL;
    size_t x_len;
    int err;

    if (!json_is_string(crv))
        return AGW_ERR_BAD_INPUT;
    if (!json_str_eq(crv, "Ed25519")) /* X25519 cannot sign; Ed448 is not offered */
        return AGW_ERR_BAD_PUBLIC_KEY;
    err = json_get_b64(jwk, "x", &x, &x_len);
    if (err != 0)
        return err;
    err = AGW_ERR_BAD_PUBLIC_KEY;
    if (x_len == ED25519_KEY_LEN) {
        *out = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, x, x_len);
        if (*out != NULL)
            err = 0;
    }
    free(x);
    return err;
}

int gw_jwk_to_pkey(const json_t *jwk, EVP_PKEY **out)
{
    const json_t *kty;
    size_t i;
    int err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (!json_is_object(jwk))
        return AGW_ERR_BAD_INPUT;
    for (i = 0; i < sizeof(jwk_private_members) / sizeof(jwk_private_members[0]); i++)
        if (json_object_get(jwk, jwk_private_members[i]) != NULL)
            return AGW_ERR_BAD_INPUT;
    kty = json_object_get(jwk, "kty");
    if (!json_is_string(kty))
        return AGW_ERR_BAD_INPUT;
    if (json_str_eq(kty, "RSA"))
        err = rsa_from_jwk(jwk, out);
    else if (json_str_eq(kty, "EC"))
        err = ec_from_jwk(jwk, out);
    else if (json_str_eq(kty, "OKP"))
        err = okp_from_jwk(jwk, out);
    else
        err = AGW_ERR_BAD_PUBLIC_KEY; /* "oct" and anything else */
    if (err != 0)
        ERR_clear_error();
    return err;
}

/* Sets obj[name] to base64url(bn), left-padded with zeros to pad_len bytes (0: minimal). */
static int json_set_bn(json_t *obj, const char *name, const BIGNUM *bn, size_t pad_len)
{
    size_t len = pad_len != 0 ? pad_len : (size_t)BN_num_bytes(bn);
    unsigned char *buf;
    int err = AGW_ERR_NOMEM;

    if (len == 0 || len > RSA_MAX_BITS / 8 * 2)
        return AGW_ERR_BAD_PUBLIC_KEY;
    buf = malloc(len);
    if (buf == NULL)
        return AGW_ERR_NOMEM;
    if (BN_bn2binpad(bn, buf, (int)len) == (int)len)
        err = json_set_b64(obj, name, buf, len);
    else
        err = AGW_ERR_BAD_PUBLIC_KEY;
    free(buf);
    return err;
}

int gw_jwk_from_pkey(const EVP_PKEY *key, json_t **out)
{
    const struct ec_curve *curve;
    unsigned char raw[ED25519_KEY_LEN];
    size_t raw_len = sizeof(raw);
    BIGNUM *a = NULL, *b = NULL;
    json_t *jwk;
    int err = AGW_ERR_NOMEM;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (key == NULL)
        return AGW_ERR_BAD_INPUT;
    jwk = json_object();
    if (jwk == NULL)
        return AGW_ERR_NOMEM;
    if (EVP_PKEY_is_a(key, "RSA")) {
        err = AGW_ERR_BAD_PUBLIC_KEY;
        if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &a) != 1 ||
            EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &b) != 1)
            goto fail;
        err = json_set_str(jwk, "kty", "RSA");
        if (err == 0)
            err = json_set_bn(jwk, "n", b, 0);
        if (err == 0)
            err = json_set_bn(jwk, "e", a, 0);
    } else if (EVP_PKEY_is_a(key, "EC")) {
        err = AGW_ERR_BAD_PUBLIC_KEY;
        curve = curve_of_key(key);
        if (curve == NULL || EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &a) != 1 ||
            EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &b) != 1)
            goto fail;
        err = json_set_str(jwk, "kty", "EC");
        if (err == 0)
            err = json_set_str(jwk, "crv", curve->crv);
        if (err == 0)
            err = json_set_bn(jwk, "x", a, curve->field_len);
        if (err == 0)
            err = json_set_bn(jwk, "y", b, curve->field_len);
    } else if (EVP_PKEY_is_a(key, "ED25519")) {
        err = AGW_ERR_BAD_PUBLIC_KEY;
        if (EVP_PKEY_get_raw_public_key(key, raw, &raw_len) != 1 || raw_len != sizeof(raw))
            goto fail;
        err = json_set_str(jwk, "kty", "OKP");
        if (err == 0)
            err = json_set_str(jwk, "crv", "Ed25519");
        if (err == 0)
            err = json_set_b64(jwk, "x", raw, raw_len);
    } else {
        err = AGW_ERR_BAD_PUBLIC_KEY;
    }
    if (err == 0) {
        *out = jwk;
        jwk = NULL;
    }
fail:
    if (err != 0)
        ERR_clear_error();
    BN_free(a);
    BN_free(b);
    json_decref(jwk);
    return err;
}

int gw_jwk_canonical(const json_t *jwk, char **out)
{
    /* RFC 7638 §3.2: the required members only, in this (lexicographic) order */
    static const char *const rsa_members[] = {"e", "kty", "n", NULL};
    static const char *const ec_members[] = {"crv", "kty", "x", "y", NULL};
    static const char *const okp_members[] = {"crv", "kty", "x", NULL};
    const char *const *members;
    const json_t *kty, *v;
    json_t *canon;
    int err = AGW_ERR_BAD_INPUT;
    size_t i;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (!json_is_object(jwk))
        return AGW_ERR_BAD_INPUT;
    kty = json_object_get(jwk, "kty");
    if (!json_is_string(kty))
        return AGW_ERR_BAD_INPUT;
    if (json_str_eq(kty, "RSA"))
        members = rsa_members;
    else if (json_str_eq(kty, "EC"))
        members = ec_members;
    else if (json_str_eq(kty, "OKP"))
        members = okp_members;
    else
        return AGW_ERR_BAD_PUBLIC_KEY;
    canon = json_object();
    if (canon == NULL)
        return AGW_ERR_NOMEM;
    for (i = 0; members[i] != NULL; i++) {
        v = json_object_get(jwk, members[i]);
        if (!json_is_string(v))
            goto fail;
        if (json_object_set_new(canon, members[i],
                                json_stringn(json_string_value(v), json_string_length(v))) != 0) {
            err = AGW_ERR_NOMEM;
            goto fail;
        }
    }
    /* compact: no whitespace; sorted keys; jansson escapes only what JSON requires */
    *out = json_dumps(canon, JSON_COMPACT | JSON_SORT_KEYS);
    err = *out != NULL ? 0 : AGW_ERR_NOMEM;
fail:
    json_decref(canon);
    return err;
}

int gw_jwk_thumbprint(const json_t *jwk, char *out, size_t out_size)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char *canon = NULL;
    int err;

    if (out == NULL || out_size < THUMBPRINT_CHARS + 1)
        return AGW_ERR_BAD_INPUT;
    out[0] = '\0';
    err = gw_jwk_canonical(jwk, &canon);
    if (err != 0)
        return err;
    if (EVP_Digest(canon, strlen(canon), digest, NULL, EVP_sha256(), NULL) != 1) {
        ERR_clear_error();
        err = AGW_ERR_INTERNAL;
    } else {
        err = gw_b64url_encode(digest, sizeof(digest), out, out_size);
    }
    free(canon);
    return err;
}

/* ---------------------------------------------------------------- JWS */

enum jws_mode {
    JWS_ACME, /* request JWS: RS256, ES256/384/512, EdDSA; exactly one of jwk/kid */
    JWS_EAB,  /* RFC 8555 §7.3.4: HS256, kid, no nonce */
};

static int parse_header(struct gw_jws *out, enum jws_mode mode)
{
    const json_t *h = out->header;
    const json_t *alg, *url, *nonce, *kid, *jwk;
    size_t i;

    if (!json_is_object(h))
        return AGW_ERR_BAD_INPUT;
    alg = json_object_get(h, "alg");
    if (!json_is_string(alg))
        return AGW_ERR_BAD_INPUT;
    out->alg = GW_ALG_NONE;
    if (mode == JWS_EAB) {
        if (!json_str_eq(alg, "HS256")) /* EAB codes: see the top comment */
            return AGW_ERR_BAD_INPUT;
    } else {
        for (i = 0; i < sizeof(alg_names) / sizeof(alg_names[0]); i++)
            if (json_str_eq(alg, alg_names[i].name))
                out->alg = alg_names[i].alg;
        if (out->alg == GW_ALG_NONE) /* "none", HS*, PS*, anything else: §6.2 */
            return AGW_ERR_BAD_SIG_ALG;
    }
    /* RFC 7797 "b64" changes what is signed; "crit" names extensions we do not implement */
    if (json_object_get(h, "crit") != NULL || json_object_get(h, "b64") != NULL)
        return AGW_ERR_BAD_INPUT;

    url = json_object_get(h, "url");
    if (!json_is_string(url) || json_string_length(url) == 0 ||
        json_string_length(url) > GW_MAX_URL_LEN)
        return AGW_ERR_BAD_INPUT;
    out->url = json_string_value(url);

    nonce = json_object_get(h, "nonce");
    if (nonce != NULL) {
        if (mode == JWS_EAB) /* §7.3.4: MUST NOT contain a nonce */
            return AGW_ERR_BAD_INPUT;
        if (!json_is_string(nonce) || json_string_length(nonce) == 0 ||
            json_string_length(nonce) > GW_MAX_NONCE_LEN)
            return AGW_ERR_BAD_INPUT;
        out->nonce = json_string_value(nonce);
    }

    kid = json_object_get(h, "kid");
    jwk = json_object_get(h, "jwk");
    if (mode == JWS_EAB ? (kid == NULL || jwk != NULL) : ((kid == NULL) == (jwk == NULL)))
        return AGW_ERR_BAD_INPUT; /* §6.2: exactly one of jwk and kid */
    if (kid != NULL) {
        if (!json_is_string(kid) || json_string_length(kid) == 0 ||
            json_string_length(kid) > GW_MAX_KID_LEN)
            return AGW_ERR_BAD_INPUT;
        out->kid = json_string_value(kid);
    } else {
        if (!json_is_object(jwk))
            return AGW_ERR_BAD_INPUT;
        out->jwk = jwk;
    }
    return 0;
}

/* Decodes a base64url member into JSON that must be an object. */
static int decode_json_object(const char *b64, size_t b64_len, size_t max_len, json_t **out)
{
    unsigned char *buf = NULL;
    size_t len;
    int err;

    *out = NULL;
    err = gw_b64url_decode(b64, b64_len, &buf, &len);
    if (err != 0)
        return err;
    err = AGW_ERR_BAD_INPUT;
    if (len <= max_len)
        err = gw_json_parse((const char *)buf, len, out);
    free(buf);
    if (err == 0 && !json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        err = AGW_ERR_BAD_INPUT;
    }
    return err;
}

static int parse_flat(const json_t *root, enum jws_mode mode, struct gw_jws *out)
{
    const json_t *prot, *payload, *sig;
    size_t prot_len, payload_len, sig_len;
    int err;

    memset(out, 0, sizeof(*out));
    /* RFC 8555 §6.2: flattened serialization only; an unprotected "header" is refused */
    if (!json_is_object(root) || json_object_size(root) != 3)
        return AGW_ERR_BAD_INPUT;
    prot = json_object_get(root, "protected");
    payload = json_object_get(root, "payload");
    sig = json_object_get(root, "signature");
    if (!json_is_string(prot) || !json_is_string(payload) || !json_is_string(sig))
        return AGW_ERR_BAD_INPUT;
    prot_len = json_string_length(prot);
    payload_len = json_string_length(payload);
    sig_len = json_string_length(sig);
    if (prot_len == 0 || prot_len > gw_b64url_len(GW_MAX_HEADER_LEN) || payload_len > GW_MAX_BODY ||
        sig_len > GW_MAX_BODY)
        return AGW_ERR_BAD_INPUT;

    err = decode_json_object(json_string_value(prot), prot_len, GW_MAX_HEADER_LEN, &out->header);
    if (err != 0)
        goto fail;
    err = parse_header(out, mode);
    if (err != 0)
        goto fail;
    if (payload_len == 0) {
        out->post_as_get = true; /* §6.3 */
    } else {
        err =
            decode_json_object(json_string_value(payload), payload_len, GW_MAX_BODY, &out->payload);
        if (err != 0)
            goto fail;
    }
    /* RFC 7515 §5.2: the signature covers the members exactly as received */
    err = concat_dot(json_string_value(prot), prot_len, json_string_value(payload), payload_len,
                     &out->signing_input, &out->signing_input_len);
    if (err != 0)
        goto fail;
    err = gw_b64url_decode(json_string_value(sig), sig_len, &out->sig, &out->sig_len);
    if (err != 0)
        goto fail;
    return 0;
fail:
    gw_jws_clear(out);
    return err;
}

int gw_jws_parse(const char *body, size_t len, struct gw_jws *out)
{
    json_t *root = NULL;
    int err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    memset(out, 0, sizeof(*out));
    if (body == NULL || len == 0)
        return AGW_ERR_BAD_INPUT;
    if (len > GW_MAX_BODY)
        return AGW_ERR_TOO_LARGE;
    err = gw_json_parse(body, len, &root);
    if (err == 0)
        err = parse_flat(root, JWS_ACME, out);
    json_decref(root); /* out holds no pointer into root */
    return err;
}

int gw_jws_parse_json(const json_t *root, struct gw_jws *out)
{
    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    memset(out, 0, sizeof(*out));
    if (root == NULL)
        return AGW_ERR_BAD_INPUT;
    return parse_flat(root, JWS_ACME, out);
}

void gw_jws_clear(struct gw_jws *jws)
{
    if (jws == NULL)
        return;
    json_decref(jws->header); /* also releases nonce, url, kid and jwk */
    json_decref(jws->payload);
    free(jws->signing_input);
    free(jws->sig);
    memset(jws, 0, sizeof(*jws));
}

/* Raw r||s (RFC 7518 §3.4) -> DER ECDSA-Sig-Value, after checking 1 <= r, s < n.
 * *der is OPENSSL_malloc'd. */
/* Each curve's group order, computed once: EC_GROUP_new_by_curve_name() builds the whole group
 * with its precomputation, which per verification was ~3 % of a certificate's CPU. Read-only
 * after curve_orders_load(), so threads share them without a lock. */
static BIGNUM *curve_orders[N_EC_CURVES];
static pthread_once_t curve_orders_once = PTHREAD_ONCE_INIT;

static void curve_orders_load(void)
{
    for (size_t i = 0; i < N_EC_CURVES; i++) {
        EC_GROUP *g = EC_GROUP_new_by_curve_name(ec_curves[i].nid);

        curve_orders[i] = g != NULL ? BN_dup(EC_GROUP_get0_order(g)) : NULL;
        EC_GROUP_free(g);
    }
}

static const BIGNUM *curve_order(const struct ec_curve *curve)
{
    pthread_once(&curve_orders_once, curve_orders_load);
    return curve_orders[curve - ec_curves];
}

static int ecdsa_raw_to_der(const struct ec_curve *curve, const unsigned char *sig, size_t sig_len,
                            unsigned char **der, size_t *der_len)
{
    const BIGNUM *order = curve_order(curve);
    BIGNUM *r = NULL, *s = NULL;
    ECDSA_SIG *es = NULL;
    int len, err = AGW_ERR_UNAUTHORIZED;

    *der = NULL;
    if (sig_len != 2 * curve->field_len)
        return AGW_ERR_UNAUTHORIZED;
    err = AGW_ERR_NOMEM;
    r = BN_bin2bn(sig, (int)curve->field_len, NULL); /* field_len <= 66 */
    s = BN_bin2bn(sig + curve->field_len, (int)curve->field_len, NULL);
    if (order == NULL || r == NULL || s == NULL)
        goto fail;
    err = AGW_ERR_UNAUTHORIZED;
    if (BN_is_zero(r) || BN_is_zero(s) || BN_cmp(r, order) >= 0 || BN_cmp(s, order) >= 0)
        goto fail;
    err = AGW_ERR_NOMEM;
    es = ECDSA_SIG_new();
    if (es == NULL || ECDSA_SIG_set0(es, r, s) != 1)
        goto fail;
    r = NULL; /* owned by es */
    s = NULL;
    len = i2d_ECDSA_SIG(es, der);
    if (len <= 0)
        goto fail;
    *der_len = (size_t)len;
    err = 0;
fail:
    ECDSA_SIG_free(es);
    BN_free(r);
    BN_free(s);
    return err;
}

static int digest_verify(EVP_PKEY *key, const EVP_MD *md, const unsigned char *sig, size_t sig_len,
                         const unsigned char *tbs, size_t tbs_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int err = AGW_ERR_UNAUTHORIZED;

    if (ctx == NULL)
        return AGW_ERR_NOMEM;
    if (EVP_DigestVerifyInit(ctx, &pctx, md, NULL, key) != 1)
        goto fail;
    if (EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)
        goto fail;
    if (EVP_DigestVerify(ctx, sig, sig_len, tbs, tbs_len) != 1)
        goto fail;
    err = 0;
fail:
    EVP_MD_CTX_free(ctx);
    return err;
}

int gw_jws_verify(const struct gw_jws *jws, EVP_PKEY *key)
{
    const struct ec_curve *curve;
    unsigned char *der = NULL;
    size_t der_len = 0;
    int size, err;

    if (jws == NULL || key == NULL || jws->signing_input == NULL || jws->sig == NULL)
        return AGW_ERR_UNAUTHORIZED;
    switch (jws->alg) {
    case GW_ALG_RS256:
        if (!EVP_PKEY_is_a(key, "RSA"))
            return AGW_ERR_BAD_SIG_ALG;
        size = EVP_PKEY_get_size(key);
        if (size <= 0 || jws->sig_len != (size_t)size) /* RFC 8017 §8.2.2 step 1 */
            return AGW_ERR_UNAUTHORIZED;
        err = digest_verify(key, EVP_sha256(), jws->sig, jws->sig_len,
                            (const unsigned char *)jws->signing_input, jws->signing_input_len);
        break;
    case GW_ALG_ES256:
    case GW_ALG_ES384:
    case GW_ALG_ES512:
        curve = curve_by_alg(jws->alg);
        if (curve == NULL || curve_of_key(key) != curve)
            return AGW_ERR_BAD_SIG_ALG;
        err = ecdsa_raw_to_der(curve, jws->sig, jws->sig_len, &der, &der_len);
        if (err == 0)
            err = digest_verify(key, curve->md(), der, der_len,
                                (const unsigned char *)jws->signing_input, jws->signing_input_len);
        OPENSSL_free(der);
        break;
    case GW_ALG_EDDSA:
        if (!EVP_PKEY_is_a(key, "ED25519"))
            return AGW_ERR_BAD_SIG_ALG;
        if (jws->sig_len != ED25519_SIG_LEN)
            return AGW_ERR_UNAUTHORIZED;
        err = digest_verify(key, NULL, jws->sig, jws->sig_len,
                            (const unsigned char *)jws->signing_input, jws->signing_input_len);
        break;
    default:
        return AGW_ERR_BAD_SIG_ALG;
    }
    if (err != 0)
        ERR_clear_error();
    return err;
}

/* The JWS alg for a key, or GW_ALG_NONE. */
static enum gw_alg alg_for_key(const EVP_PKEY *key)
{
    const struct ec_curve *curve;

    if (EVP_PKEY_is_a(key, "RSA"))
        return GW_ALG_RS256;
    if (EVP_PKEY_is_a(key, "ED25519"))
        return GW_ALG_EDDSA;
    curve = curve_of_key(key);
    return curve != NULL ? curve->alg : GW_ALG_NONE;
}

/* Signs tbs; ECDSA signatures come back as raw r||s. *sig malloc'd. */
static int digest_sign(EVP_PKEY *key, enum gw_alg alg, const char *tbs, size_t tbs_len,
                       unsigned char **sig, size_t *sig_len)
{
    const struct ec_curve *curve = curve_by_alg(alg);
    const EVP_MD *md = alg == GW_ALG_RS256 ? EVP_sha256() : curve != NULL ? curve->md() : NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    unsigned char *buf = NULL, *raw = NULL;
    const unsigned char *p;
    const BIGNUM *r, *s;
    ECDSA_SIG *es = NULL;
    size_t len = 0;
    int err = AGW_ERR_INTERNAL;

    *sig = NULL;
    if (ctx == NULL)
        return AGW_ERR_NOMEM;
    if (EVP_DigestSignInit(ctx, &pctx, md, NULL, key) != 1 ||
        (alg == GW_ALG_RS256 && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) ||
        EVP_DigestSign(ctx, NULL, &len, (const unsigned char *)tbs, tbs_len) != 1)
        goto fail;
    buf = malloc(len);
    if (buf == NULL) {
        err = AGW_ERR_NOMEM;
        goto fail;
    }
    if (EVP_DigestSign(ctx, buf, &len, (const unsigned char *)tbs, tbs_len) != 1)
        goto fail;
    if (curve != NULL) {
        p = buf;
        es = d2i_ECDSA_SIG(NULL, &p, (long)len);
        raw = malloc(2 * curve->field_len);
        if (es == NULL || raw == NULL)
            goto fail;
        ECDSA_SIG_get0(es, &r, &s);
        if (BN_bn2binpad(r, raw, (int)curve->field_len) < 0 ||
            BN_bn2binpad(s, raw + curve->field_len, (int)curve->field_len) < 0)
            goto fail;
        free(buf);
        buf = raw;
        raw = NULL;
        len = 2 * curve->field_len;
    }
    *sig = buf;
    *sig_len = len;
    buf = NULL;
    err = 0;
fail:
    if (err != 0)
        ERR_clear_error();
    ECDSA_SIG_free(es);
    free(raw);
    free(buf);
    EVP_MD_CTX_free(ctx);
    return err;
}

/* Builds {"protected","payload"} from a header and an optional payload text, and the signing
 * input over them. payload_text NULL means "". */
static int flat_begin(const json_t *header, const char *payload_text, json_t **jws, char **tbs,
                      size_t *tbs_len)
{
    const json_t *prot, *payload;
    char *header_text;
    int err = AGW_ERR_NOMEM;

    *jws = json_object();
    header_text = json_dumps(header, JSON_COMPACT);
    if (*jws == NULL || header_text == NULL)
        goto fail;
    err = json_set_b64(*jws, "protected", (const unsigned char *)header_text, strlen(header_text));
    if (err != 0)
        goto fail;
    err = json_set_b64(*jws, "payload", (const unsigned char *)payload_text,
                       payload_text != NULL ? strlen(payload_text) : 0);
    if (err != 0)
        goto fail;
    prot = json_object_get(*jws, "protected");
    payload = json_object_get(*jws, "payload");
    err = concat_dot(json_string_value(prot), json_string_length(prot), json_string_value(payload),
                     json_string_length(payload), tbs, tbs_len);
fail:
    free(header_text);
    if (err != 0) {
        json_decref(*jws);
        *jws = NULL;
    }
    return err;
}

int gw_jws_sign(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
                const json_t *payload, char **out)
{
    json_t *header = NULL, *jwk = NULL, *jws = NULL;
    char *payload_text = NULL, *tbs = NULL;
    unsigned char *sig = NULL;
    size_t tbs_len, sig_len;
    enum gw_alg alg;
    int err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (key == NULL || url == NULL)
        return AGW_ERR_BAD_INPUT;
    alg = alg_for_key(key);
    if (alg == GW_ALG_NONE)
        return AGW_ERR_BAD_SIG_ALG;
    err = AGW_ERR_NOMEM;
    header = json_object();
    if (header == NULL)
        goto fail;
    err = json_set_str(header, "alg", alg_name(alg));
    if (err == 0 && nonce != NULL)
        err = json_set_str(header, "nonce", nonce);
    if (err == 0)
        err = json_set_str(header, "url", url);
    if (err == 0 && kid != NULL)
        err = json_set_str(header, "kid", kid);
    if (err == 0 && kid == NULL) {
        err = gw_jwk_from_pkey(key, &jwk);
        if (err == 0 && json_object_set_new(header, "jwk", jwk) != 0)
            err = AGW_ERR_NOMEM;
        jwk = NULL; /* owned by header, or freed by the failed set */
    }
    if (err != 0)
        goto fail;
    if (payload != NULL) {
        payload_text = json_dumps(payload, JSON_COMPACT);
        if (payload_text == NULL) {
            err = AGW_ERR_NOMEM;
            goto fail;
        }
    }
    err = flat_begin(header, payload_text, &jws, &tbs, &tbs_len);
    if (err == 0)
        err = digest_sign(key, alg, tbs, tbs_len, &sig, &sig_len);
    if (err == 0)
        err = json_set_b64(jws, "signature", sig, sig_len);
    if (err != 0)
        goto fail;
    *out = json_dumps(jws, JSON_COMPACT);
    err = *out != NULL ? 0 : AGW_ERR_NOMEM;
fail:
    json_decref(header);
    json_decref(jws);
    free(payload_text);
    free(tbs);
    free(sig);
    return err;
}

/* ---------------------------------------------------------------- EAB (RFC 8555 §7.3.4) */

int gw_eab_parse(const json_t *eab, const char *expected_url, const json_t *outer_jwk,
                 char *kid_out, size_t kid_size)
{
    char tp_inner[THUMBPRINT_CHARS + 1], tp_outer[THUMBPRINT_CHARS + 1];
    struct gw_jws jws;
    size_t kid_len;
    int err;

    if (kid_out != NULL && kid_size > 0)
        kid_out[0] = '\0';
    if (eab == NULL || expected_url == NULL || outer_jwk == NULL || kid_out == NULL ||
        kid_size == 0)
        return AGW_ERR_BAD_INPUT;
    err = parse_flat(eab, JWS_EAB, &jws);
    if (err != 0)
        return err;
    err = AGW_ERR_BAD_INPUT;
    /* url has no NUL inside (gw_json_parse refuses \u0000), so strcmp sees all of it */
    if (strcmp(jws.url, expected_url) != 0 || jws.post_as_get)
        goto done;
    kid_len = json_string_length(json_object_get(jws.header, "kid"));
    if (kid_len >= kid_size)
        goto done;
    if (gw_jwk_thumbprint(jws.payload, tp_inner, sizeof(tp_inner)) != 0)
        goto done; /* payload is no JWK at all */
    err = gw_jwk_thumbprint(outer_jwk, tp_outer, sizeof(tp_outer));
    if (err != 0)
        goto done;
    /* the binding must be for this account key: same key, and same JWK text as well */
    err = AGW_ERR_UNAUTHORIZED;
    if (strcmp(tp_inner, tp_outer) != 0 || !json_equal(jws.payload, outer_jwk))
        goto done;
    memcpy(kid_out, jws.kid, kid_len + 1);
    err = 0;
done:
    gw_jws_clear(&jws);
    return err;
}

/* HMAC-SHA256 of the signing input; mac holds 32 bytes. */
static int eab_mac(const unsigned char *hmac_key, size_t hmac_len, const char *tbs, size_t tbs_len,
                   unsigned char mac[HS256_MAC_LEN])
{
    unsigned int mac_len = 0;

    if (HMAC(EVP_sha256(), hmac_key, (int)hmac_len, (const unsigned char *)tbs, tbs_len, mac,
             &mac_len) == NULL ||
        mac_len != HS256_MAC_LEN) {
        ERR_clear_error();
        OPENSSL_cleanse(mac, HS256_MAC_LEN);
        return AGW_ERR_INTERNAL;
    }
    return 0;
}

int gw_eab_verify(const json_t *eab, const unsigned char *hmac_key, size_t hmac_len)
{
    unsigned char mac[HS256_MAC_LEN];
    struct gw_jws jws;
    int err;

    if (eab == NULL || hmac_key == NULL || hmac_len == 0 || hmac_len > INT_MAX)
        return AGW_ERR_BAD_INPUT;
    err = parse_flat(eab, JWS_EAB, &jws);
    if (err != 0)
        return err;
    err = eab_mac(hmac_key, hmac_len, jws.signing_input, jws.signing_input_len, mac);
    if (err == 0 &&
        (jws.sig_len != HS256_MAC_LEN || CRYPTO_memcmp(jws.sig, mac, HS256_MAC_LEN) != 0))
        err = AGW_ERR_UNAUTHORIZED;
    OPENSSL_cleanse(mac, sizeof(mac));
    gw_jws_clear(&jws);
    return err;
}

int gw_eab_sign(const char *kid, const unsigned char *hmac_key, size_t hmac_len, const char *url,
                const json_t *outer_jwk, json_t **out)
{
    unsigned char mac[HS256_MAC_LEN] = {0};
    json_t *header = NULL, *jws = NULL;
    char *payload_text = NULL, *tbs = NULL;
    size_t tbs_len;
    int err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (kid == NULL || hmac_key == NULL || hmac_len == 0 || hmac_len > INT_MAX || url == NULL ||
        !json_is_object(outer_jwk))
        return AGW_ERR_BAD_INPUT;
    err = AGW_ERR_NOMEM;
    header = json_object();
    payload_text = json_dumps(outer_jwk, JSON_COMPACT);
    if (header == NULL || payload_text == NULL)
        goto fail;
    err = json_set_str(header, "alg", "HS256");
    if (err == 0)
        err = json_set_str(header, "kid", kid);
    if (err == 0)
        err = json_set_str(header, "url", url);
    if (err == 0)
        err = flat_begin(header, payload_text, &jws, &tbs, &tbs_len);
    if (err == 0)
        err = eab_mac(hmac_key, hmac_len, tbs, tbs_len, mac);
    if (err == 0)
        err = json_set_b64(jws, "signature", mac, sizeof(mac));
    OPENSSL_cleanse(mac, sizeof(mac));
    if (err != 0)
        goto fail;
    *out = jws;
    jws = NULL;
fail:
    json_decref(header);
    json_decref(jws);
    free(payload_text);
    free(tbs);
    return err;
}

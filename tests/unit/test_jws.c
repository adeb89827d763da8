/*
 * tests/unit/test_jws.c - flattened JWS, JWK, RFC 7638 thumbprints, EAB and base64url: every
 * supported alg round-trips, and each way a hostile client can bend a request is refused with
 * the code RFC 8555 asks for.
 */
#include "gateway/jws.h"

#include "common/err.h"
#include "tests/check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/obj_mac.h>

#define URL   "https://acme.test/acme/new-order"
#define NONCE "bm9uY2Utb25l"
#define KID   "https://acme.test/acme/acct/1"

static const char HDR_KID[] = "{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\"}";

static EVP_PKEY *key_rsa, *key_p256, *key_p384, *key_p521, *key_ed;

/* ---------------------------------------------------------------- helpers */

static char *b64(const void *buf, size_t len)
{
    size_t n = gw_b64url_len(len) + 1;
    char *s = malloc(n);

    if (s != NULL && gw_b64url_encode(buf, len, s, n) != 0) {
        free(s);
        s = NULL;
    }
    return s;
}

/* A body from already-encoded members. */
static char *body_raw(const char *prot, const char *payload, const char *sig)
{
    size_t n = strlen(prot) + strlen(payload) + strlen(sig) + 64;
    char *s = malloc(n);

    snprintf(s, n, "{\"protected\":\"%s\",\"payload\":\"%s\",\"signature\":\"%s\"}", prot, payload,
             sig);
    return s;
}

/* A body from header and payload JSON text (payload "" for POST-as-GET); the signature is junk. */
static char *body_json(const char *header, const char *payload)
{
    char *p = b64(header, strlen(header));
    char *q = b64(payload, strlen(payload));
    char *s = body_raw(p, q, "AAAA");

    free(p);
    free(q);
    return s;
}

static int parse_str(const char *body)
{
    struct gw_jws jws;
    int err = gw_jws_parse(body, strlen(body), &jws);

    gw_jws_clear(&jws);
    return err;
}

/* Parses body and verifies it with key. */
static int parse_verify(const char *body, EVP_PKEY *key)
{
    struct gw_jws jws;
    int err = gw_jws_parse(body, strlen(body), &jws);

    if (err == 0)
        err = gw_jws_verify(&jws, key);
    gw_jws_clear(&jws);
    return err;
}

static char *sign_kid(EVP_PKEY *key, const char *payload_json)
{
    json_t *payload = payload_json != NULL ? json_loads(payload_json, 0, NULL) : NULL;
    char *out = NULL;

    CHECK_INT(gw_jws_sign(key, KID, NONCE, URL, payload, &out), 0);
    json_decref(payload);
    return out;
}

static json_t *jwk_of(EVP_PKEY *key)
{
    json_t *jwk = NULL;

    CHECK_INT(gw_jwk_from_pkey(key, &jwk), 0);
    return jwk;
}

/* Replaces member name of jwk with base64url(buf). */
static void jwk_set_b64(json_t *jwk, const char *name, const unsigned char *buf, size_t len)
{
    char *s = b64(buf, len);

    json_object_set_new(jwk, name, json_string(s));
    free(s);
}

static int jwk_to_pkey_err(const json_t *jwk)
{
    EVP_PKEY *key = NULL;
    int err = gw_jwk_to_pkey(jwk, &key);

    if (err != 0)
        CHECK(key == NULL);
    EVP_PKEY_free(key);
    return err;
}

/* Decodes member name of jwk into a malloc'd buffer. */
static unsigned char *jwk_get_b64(const json_t *jwk, const char *name, size_t *len)
{
    const json_t *v = json_object_get(jwk, name);
    unsigned char *buf = NULL;

    CHECK_INT(gw_b64url_decode(json_string_value(v), json_string_length(v), &buf, len), 0);
    return buf;
}

/* ---------------------------------------------------------------- base64url */

static void b64url_round_trips_every_length(void)
{
    unsigned char in[67], *out;
    char enc[100];
    size_t len, out_len;

    for (len = 0; len < sizeof(in); len++) {
        in[len] = (unsigned char)(len * 37 + 11);
        CHECK_INT(gw_b64url_encode(in, len, enc, sizeof(enc)), 0);
        CHECK_INT(strlen(enc), gw_b64url_len(len));
        CHECK_INT(gw_b64url_decode(enc, strlen(enc), &out, &out_len), 0);
        CHECK_INT(out_len, len);
        CHECK(out != NULL && memcmp(out, in, len) == 0);
        free(out);
    }
    CHECK_INT(gw_b64url_encode((const unsigned char *)"foo", 3, enc, 4), AGW_ERR_BAD_INPUT);
    CHECK_INT(gw_b64url_encode((const unsigned char *)"fo", 2, enc, 4), 0);
    CHECK_STR(enc, "Zm8");
    CHECK_INT(gw_b64url_encode((const unsigned char *)"\xfb\xff", 2, enc, sizeof(enc)), 0);
    CHECK_STR(enc, "-_8"); /* the url alphabet, not '+' '/' */
}

static void b64url_rejects_noncanonical_input(void)
{
    static const char *const bad[] = {
        "Zg==",  "Zm8=",  "Zm+v", "Zm/v",  "Zm9 v", "Zm9v\n",
        " Zm9v", "Zm\tv", "Z",    "Zm9vY", "Zh", /* low bits of 'h' are not zero: a second spelling
                                                    of "f" */
        "Zm9",                                   /* "fo" is Zm8 */
        "Zm\0v",
    };
    unsigned char *out;
    size_t i, out_len;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = i == sizeof(bad) / sizeof(bad[0]) - 1 ? 4 : strlen(bad[i]);

        CHECK_INT(gw_b64url_decode(bad[i], len, &out, &out_len), AGW_ERR_BAD_INPUT);
        CHECK(out == NULL);
    }
    CHECK_INT(gw_b64url_decode("Zg", 2, &out, &out_len), 0);
    CHECK(out_len == 1 && out[0] == 'f');
    free(out);
    CHECK_INT(gw_b64url_decode("", 0, &out, &out_len), 0);
    CHECK_INT(out_len, 0);
    free(out);
}

/* ---------------------------------------------------------------- round trips */

static void round_trip(EVP_PKEY *key, enum gw_alg want_alg)
{
    json_t *payload = json_pack("{s:s,s:i}", "status", "deactivated", "n", 7);
    EVP_PKEY *from_jwk = NULL;
    struct gw_jws jws;
    char *body = NULL;

    /* kid form, with payload */
    CHECK_INT(gw_jws_sign(key, KID, NONCE, URL, payload, &body), 0);
    CHECK_INT(gw_jws_parse(body, strlen(body), &jws), 0);
    CHECK_INT(jws.alg, want_alg);
    CHECK_STR(jws.url, URL);
    CHECK_STR(jws.nonce, NONCE);
    CHECK_STR(jws.kid, KID);
    CHECK(jws.jwk == NULL);
    CHECK(!jws.post_as_get);
    CHECK(jws.payload != NULL && json_equal(jws.payload, payload));
    CHECK_INT(gw_jws_verify(&jws, key), 0);
    gw_jws_clear(&jws);
    free(body);

    /* jwk form, POST-as-GET: the key in the header verifies its own signature */
    body = NULL;
    CHECK_INT(gw_jws_sign(key, NULL, NONCE, URL, NULL, &body), 0);
    CHECK_INT(gw_jws_parse(body, strlen(body), &jws), 0);
    CHECK(jws.kid == NULL && jws.jwk != NULL);
    CHECK(jws.post_as_get && jws.payload == NULL);
    CHECK_INT(gw_jwk_to_pkey(jws.jwk, &from_jwk), 0);
    CHECK_INT(gw_jws_verify(&jws, from_jwk), 0);
    CHECK(EVP_PKEY_eq(from_jwk, key) == 1);
    EVP_PKEY_free(from_jwk);
    gw_jws_clear(&jws);
    free(body);
    json_decref(payload);
}

static void jws_round_trips_rs256(void)
{
    round_trip(key_rsa, GW_ALG_RS256);
}

static void jws_round_trips_es256(void)
{
    round_trip(key_p256, GW_ALG_ES256);
}

static void jws_round_trips_es384(void)
{
    round_trip(key_p384, GW_ALG_ES384);
}

static void jws_round_trips_es512(void)
{
    round_trip(key_p521, GW_ALG_ES512);
}

static void jws_round_trips_eddsa(void)
{
    round_trip(key_ed, GW_ALG_EDDSA);
}

static void tamper(EVP_PKEY *key)
{
    static const char other[] = "{\"status\":\"valid\"}";
    char *body = sign_kid(key, "{\"status\":\"deactivated\"}");
    char *other_b64 = b64(other, strlen(other));
    json_t *root = json_loads(body, 0, NULL);
    char *forged;
    struct gw_jws jws;

    /* another payload under the same protected header and signature */
    forged = body_raw(json_string_value(json_object_get(root, "protected")), other_b64,
                      json_string_value(json_object_get(root, "signature")));
    CHECK_INT(parse_verify(forged, key), AGW_ERR_UNAUTHORIZED);
    free(forged);

    /* one flipped signature bit */
    CHECK_INT(gw_jws_parse(body, strlen(body), &jws), 0);
    jws.sig[jws.sig_len / 2] ^= 0x01;
    CHECK_INT(gw_jws_verify(&jws, key), AGW_ERR_UNAUTHORIZED);
    gw_jws_clear(&jws);

    CHECK_INT(parse_verify(body, key), 0); /* and the untouched body still verifies */
    json_decref(root);
    free(other_b64);
    free(body);
}

static void jws_tampered_payload_or_signature_is_unauthorized(void)
{
    tamper(key_rsa);
    tamper(key_p256);
    tamper(key_p384);
    tamper(key_p521);
    tamper(key_ed);
}

/* ---------------------------------------------------------------- algorithms */

static void jws_rejects_unsupported_algs(void)
{
    static const char *const algs[] = {"none",  "HS256", "HS384",  "HS512",   "RS512",
                                       "PS256", "es256", "ES256K", "Ed25519", ""};
    char header[256], *body;
    size_t i;

    for (i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        snprintf(header, sizeof(header),
                 "{\"alg\":\"%s\",\"nonce\":\"n\",\"url\":\"u\",\"kid\":\"k\"}", algs[i]);
        body = body_json(header, "{}");
        CHECK_INT(parse_str(body), AGW_ERR_BAD_SIG_ALG);
        free(body);
    }
    /* the example from STYLE.md: {"alg":"none"} alone */
    CHECK_INT(
        parse_str("{\"protected\":\"eyJhbGciOiJub25lIn0\",\"payload\":\"\",\"signature\":\"\"}"),
        AGW_ERR_BAD_SIG_ALG);
    body = body_json("{\"alg\":256,\"url\":\"u\",\"kid\":\"k\"}", "{}");
    CHECK_INT(parse_str(body), AGW_ERR_BAD_INPUT); /* not even a string */
    free(body);
}

static void jws_alg_must_match_key(void)
{
    char *es256 = sign_kid(key_p256, "{}");
    char *rs256 = sign_kid(key_rsa, "{}");
    char *eddsa = sign_kid(key_ed, "{}");
    char *es512 = sign_kid(key_p521, "{}");
    json_t *jwk384 = jwk_of(key_p384), *probe;
    char header[1024], *jwk_text, *body;
    EVP_PKEY *k = NULL;
    struct gw_jws jws;

    CHECK_INT(parse_verify(es256, key_p384), AGW_ERR_BAD_SIG_ALG);
    CHECK_INT(parse_verify(es256, key_rsa), AGW_ERR_BAD_SIG_ALG);
    CHECK_INT(parse_verify(es256, key_ed), AGW_ERR_BAD_SIG_ALG);
    CHECK_INT(parse_verify(rs256, key_p256), AGW_ERR_BAD_SIG_ALG);
    CHECK_INT(parse_verify(rs256, key_ed), AGW_ERR_BAD_SIG_ALG);
    CHECK_INT(parse_verify(eddsa, key_rsa), AGW_ERR_BAD_SIG_ALG);
    CHECK_INT(parse_verify(eddsa, key_p256), AGW_ERR_BAD_SIG_ALG);
    CHECK_INT(parse_verify(es512, key_p384), AGW_ERR_BAD_SIG_ALG);

    /* ES256 header carrying a P-384 jwk: the key from the header does not fit the alg */
    jwk_text = json_dumps(jwk384, JSON_COMPACT);
    snprintf(header, sizeof(header), "{\"alg\":\"ES256\",\"nonce\":\"n\",\"url\":\"u\",\"jwk\":%s}",
             jwk_text);
    probe = json_loads(header, 0, NULL); /* the hand-built header is valid JSON */
    CHECK(probe != NULL);
    json_decref(probe);
    body = body_json(header, "{}");
    CHECK_INT(gw_jws_parse(body, strlen(body), &jws), 0);
    CHECK_INT(gw_jwk_to_pkey(jws.jwk, &k), 0);
    CHECK_INT(gw_jws_verify(&jws, k), AGW_ERR_BAD_SIG_ALG);
    gw_jws_clear(&jws);
    EVP_PKEY_free(k);
    free(body);
    free(jwk_text);
    json_decref(jwk384);
    free(es256);
    free(rs256);
    free(eddsa);
    free(es512);
}

/* ---------------------------------------------------------------- ECDSA ranges and lengths */

/* A valid signature of key, parsed; then the raw r||s replaced by r_or_s patterns. */
static void ecdsa_bad_scalars(EVP_PKEY *key, int nid, size_t field_len)
{
    EC_GROUP *group = EC_GROUP_new_by_curve_name(nid);
    unsigned char *n = malloc(field_len), *good = malloc(2 * field_len);
    char *body = sign_kid(key, "{}");
    struct gw_jws jws;
    int i;

    CHECK(group != NULL && n != NULL && good != NULL);
    CHECK_INT(BN_bn2binpad(EC_GROUP_get0_order(group), n, (int)field_len), (int)field_len);
    CHECK_INT(gw_jws_parse(body, strlen(body), &jws), 0);
    CHECK_INT(jws.sig_len, 2 * field_len);
    memcpy(good, jws.sig, 2 * field_len);
    CHECK_INT(gw_jws_verify(&jws, key), 0);
    for (i = 0; i < 5; i++) {
        memcpy(jws.sig, good, 2 * field_len);
        switch (i) {
        case 0: /* r = 0 */
            memset(jws.sig, 0, field_len);
            break;
        case 1: /* s = 0 */
            memset(jws.sig + field_len, 0, field_len);
            break;
        case 2: /* r = n */
            memcpy(jws.sig, n, field_len);
            break;
        case 3: /* s = n */
            memcpy(jws.sig + field_len, n, field_len);
            break;
        default: /* r = all ones, above n */
            memset(jws.sig, 0xff, field_len);
            break;
        }
        CHECK_INT(gw_jws_verify(&jws, key), AGW_ERR_UNAUTHORIZED);
    }
    gw_jws_clear(&jws);
    EC_GROUP_free(group);
    free(n);
    free(good);
    free(body);
}

static void ecdsa_r_or_s_zero_or_n_is_unauthorized(void)
{
    ecdsa_bad_scalars(key_p256, NID_X9_62_prime256v1, 32);
    ecdsa_bad_scalars(key_p384, NID_secp384r1, 48);
    ecdsa_bad_scalars(key_p521, NID_secp521r1, 66);
}

static void wrong_length(EVP_PKEY *key, size_t delta_up)
{
    char *body = sign_kid(key, "{}");
    struct gw_jws jws;
    unsigned char *longer;
    size_t len;

    CHECK_INT(gw_jws_parse(body, strlen(body), &jws), 0);
    len = jws.sig_len;
    jws.sig_len = len - 1; /* truncated */
    CHECK_INT(gw_jws_verify(&jws, key), AGW_ERR_UNAUTHORIZED);
    longer = calloc(1, len + delta_up); /* the good signature, then zeros */
    memcpy(longer, jws.sig, len);
    free(jws.sig);
    jws.sig = longer;
    jws.sig_len = len + delta_up;
    CHECK_INT(gw_jws_verify(&jws, key), AGW_ERR_UNAUTHORIZED);
    gw_jws_clear(&jws);
    free(body);
}

static void wrong_signature_length_is_unauthorized(void)
{
    wrong_length(key_rsa, 1);
    wrong_length(key_p256, 1);
    wrong_length(key_p256, 2);
    wrong_length(key_p384, 2);
    wrong_length(key_p521, 2);
    wrong_length(key_ed, 1);
}

/* ---------------------------------------------------------------- header structure */

static void expect_header(const char *header, const char *payload, int want)
{
    char *body = body_json(header, payload);

    CHECK_INT(parse_str(body), want);
    free(body);
}

static void jws_needs_exactly_one_of_jwk_and_kid(void)
{
    char header[1024], *jwk_text;
    json_t *jwk = jwk_of(key_p256);

    jwk_text = json_dumps(jwk, JSON_COMPACT);
    snprintf(header, sizeof(header),
             "{\"alg\":\"ES256\",\"nonce\":\"n\",\"url\":\"u\",\"kid\":\"k\",\"jwk\":%s}",
             jwk_text);
    expect_header(header, "{}", AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"nonce\":\"n\",\"url\":\"u\"}", "{}", AGW_ERR_BAD_INPUT);
    snprintf(header, sizeof(header), "{\"alg\":\"ES256\",\"nonce\":\"n\",\"url\":\"u\",\"jwk\":%s}",
             jwk_text);
    expect_header(header, "{}", 0);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\"}", "{}", 0); /* nonce optional */
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":7}", "{}", AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"\"}", "{}", AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"jwk\":\"k\"}", "{}", AGW_ERR_BAD_INPUT);
    free(jwk_text);
    json_decref(jwk);
}

static void jws_needs_a_url(void)
{
    expect_header("{\"alg\":\"ES256\",\"nonce\":\"n\",\"kid\":\"k\"}", "{}", AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"nonce\":\"n\",\"url\":1,\"kid\":\"k\"}", "{}",
                  AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"nonce\":\"n\",\"url\":\"\",\"kid\":\"k\"}", "{}",
                  AGW_ERR_BAD_INPUT);
}

static void jws_caps_header_members(void)
{
    char header[4096];

    snprintf(header, sizeof(header),
             "{\"alg\":\"ES256\",\"nonce\":\"%0*d\",\"url\":\"u\",\"kid\":\"k\"}",
             GW_MAX_NONCE_LEN + 1, 0);
    expect_header(header, "{}", AGW_ERR_BAD_INPUT);
    snprintf(header, sizeof(header),
             "{\"alg\":\"ES256\",\"nonce\":\"%0*d\",\"url\":\"u\",\"kid\":\"k\"}", GW_MAX_NONCE_LEN,
             0);
    expect_header(header, "{}", 0);
    snprintf(header, sizeof(header), "{\"alg\":\"ES256\",\"url\":\"%0*d\",\"kid\":\"k\"}",
             GW_MAX_URL_LEN + 1, 0);
    expect_header(header, "{}", AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\",\"nonce\":5}", "{}",
                  AGW_ERR_BAD_INPUT);
    expect_header("[\"alg\",\"ES256\"]", "{}", AGW_ERR_BAD_INPUT); /* header not an object */
}

static void jws_caps_protected_header_size(void)
{
    char header[GW_MAX_HEADER_LEN + 64];
    int fill = GW_MAX_HEADER_LEN - 40; /* every member within its own cap, the sum over 4096 */

    snprintf(header, sizeof(header),
             "{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\",\"x\":\"%0*d\"}", fill, 0);
    CHECK(strlen(header) > GW_MAX_HEADER_LEN);
    expect_header(header, "{}", AGW_ERR_BAD_INPUT);
    snprintf(header, sizeof(header),
             "{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\",\"x\":\"%0*d\"}", fill - 60, 0);
    CHECK(strlen(header) <= GW_MAX_HEADER_LEN);
    expect_header(header, "{}", 0);
}

static void jws_parse_json_accepts_an_inner_jws_object(void)
{
    char *body = NULL;
    json_t *root;
    struct gw_jws jws;

    CHECK_INT(gw_jws_sign(key_p384, NULL, NULL, URL, NULL, &body),
              0); /* keyChange-like: no nonce */
    root = json_loads(body, 0, NULL);
    CHECK_INT(gw_jws_parse_json(root, &jws), 0);
    CHECK(jws.nonce == NULL && jws.jwk != NULL);
    CHECK_INT(gw_jws_verify(&jws, key_p384), 0);
    gw_jws_clear(&jws);
    json_object_set_new(root, "header", json_object());
    CHECK_INT(gw_jws_parse_json(root, &jws), AGW_ERR_BAD_INPUT);
    CHECK_INT(gw_jws_parse_json(NULL, &jws), AGW_ERR_BAD_INPUT);
    json_decref(root);
    free(body);
}

static void jws_rejects_crit_and_b64(void)
{
    expect_header(
        "{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\",\"crit\":[\"b64\"],\"b64\":false}", "{}",
        AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\",\"b64\":true}", "{}",
                  AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\",\"crit\":[]}", "{}",
                  AGW_ERR_BAD_INPUT);
}

static void jws_outer_object_has_exactly_three_members(void)
{
    char *hdr = b64(HDR_KID, strlen(HDR_KID));
    char body[512];

    snprintf(body, sizeof(body), "{\"protected\":\"%s\",\"payload\":\"\",\"signature\":\"AAAA\"}",
             hdr);
    CHECK_INT(parse_str(body), 0);
    snprintf(
        body, sizeof(body),
        "{\"protected\":\"%s\",\"header\":{\"kid\":\"x\"},\"payload\":\"\",\"signature\":\"AAAA\"}",
        hdr);
    CHECK_INT(parse_str(body), AGW_ERR_BAD_INPUT);
    snprintf(body, sizeof(body), "{\"protected\":\"%s\",\"payload\":\"\"}", hdr);
    CHECK_INT(parse_str(body), AGW_ERR_BAD_INPUT);
    snprintf(body, sizeof(body), "{\"protected\":\"%s\",\"payload\":{},\"signature\":\"AAAA\"}",
             hdr);
    CHECK_INT(parse_str(body), AGW_ERR_BAD_INPUT);
    snprintf(body, sizeof(body), "{\"protected\":\"%s\",\"payload\":\"\",\"signature\":\"AAAA\"} x",
             hdr);
    CHECK_INT(parse_str(body), AGW_ERR_BAD_INPUT);                         /* trailing bytes */
    CHECK_INT(parse_str("eyJhbGciOiJFUzI1NiJ9..AAAA"), AGW_ERR_BAD_INPUT); /* compact form */
    CHECK_INT(parse_str("[]"), AGW_ERR_BAD_INPUT);
    free(hdr);
}

/* ---------------------------------------------------------------- hostile JSON */

static void jws_rejects_duplicate_keys(void)
{
    char *hdr = b64(HDR_KID, strlen(HDR_KID));
    char body[512];

    snprintf(body, sizeof(body),
             "{\"protected\":\"%s\",\"payload\":\"\",\"payload\":\"e30\",\"signature\":\"AAAA\"}",
             hdr);
    CHECK_INT(parse_str(body), AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"url\":\"v\",\"kid\":\"k\"}", "{}",
                  AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\"}", "{\"a\":1,\"a\":2}",
                  AGW_ERR_BAD_INPUT);
    free(hdr);
}

static char *nested(int depth)
{
    char *s = malloc((size_t)depth * 6 + 8);
    size_t o = 0;
    int i;

    for (i = 0; i < depth; i++) {
        memcpy(s + o, "{\"a\":", 5);
        o += 5;
    }
    s[o++] = '1';
    for (i = 0; i < depth; i++)
        s[o++] = '}';
    s[o] = '\0';
    return s;
}

static void jws_caps_payload_depth(void)
{
    char *ok = nested(GW_MAX_JSON_DEPTH), *deep = nested(GW_MAX_JSON_DEPTH + 1);
    json_t *v = json_loads(deep, 0, NULL);

    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\"}", ok, 0);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\"}", deep, AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\"}",
                  "{\"a\":[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}", AGW_ERR_BAD_INPUT); /* 17, arrays */
    CHECK(v != NULL);
    CHECK_INT(gw_json_check_depth(v, GW_MAX_JSON_DEPTH), AGW_ERR_BAD_INPUT);
    CHECK_INT(gw_json_check_depth(v, GW_MAX_JSON_DEPTH + 1), 0);
    json_decref(v);
    free(ok);
    free(deep);
}

static void json_caps_string_length_and_nul(void)
{
    size_t len = GW_MAX_JSON_STRING + 1;
    char *buf = malloc(len + 16), *body;
    char *hdr = b64(HDR_KID, strlen(HDR_KID));
    json_t *v = NULL;

    memcpy(buf, "{\"a\":\"", 6);
    memset(buf + 6, 'x', len);
    memcpy(buf + 6 + len, "\"}", 2);
    CHECK_INT(gw_json_parse(buf, len + 8, &v), AGW_ERR_BAD_INPUT);
    CHECK(v == NULL);
    memcpy(buf + 5 + len, "\"}", 2); /* one shorter: exactly the cap */
    CHECK_INT(gw_json_parse(buf, len + 7, &v), 0);
    json_decref(v);
    /* a key over the cap */
    buf[0] = '{';
    buf[1] = '"';
    memset(buf + 2, 'k', len);
    memcpy(buf + 2 + len, "\":1}", 4);
    CHECK_INT(gw_json_parse(buf, len + 6, &v), AGW_ERR_BAD_INPUT);

    /* inside a JWS: a signature string over the cap, body still under GW_MAX_BODY */
    memset(buf, 'A', len);
    buf[len] = '\0';
    body = body_raw(hdr, "", buf);
    CHECK(strlen(body) < GW_MAX_BODY);
    CHECK_INT(parse_str(body), AGW_ERR_BAD_INPUT);
    free(body);

    CHECK_INT(gw_json_parse("{\"a\":\"x\\u0000y\"}", 16, &v), AGW_ERR_BAD_INPUT);
    expect_header("{\"alg\":\"ES256\",\"url\":\"u\\u0000v\",\"kid\":\"k\"}", "{}",
                  AGW_ERR_BAD_INPUT);
    CHECK_INT(gw_json_parse("{\"a\":\"\xff\"}", 9, &v), AGW_ERR_BAD_INPUT); /* not UTF-8 */
    free(hdr);
    free(buf);
}

static void expect_raw(const char *prot, const char *payload, const char *sig, int want)
{
    char *body = body_raw(prot, payload, sig);

    CHECK_INT(parse_str(body), want);
    free(body);
}

static void jws_rejects_noncanonical_base64url(void)
{
    static const char *const bad[][2] = {
        /* payload, signature */
        {"e30=", "AAAA"},   {"e3+9", "AAAA"}, {"e30", "AA AA"},
        {"e30", "AA/A"},    {"e31", "AAAA"}, /* "e31": stray low bits, "{}" is e30 */
        {"e30", "AA\\nAA"},                  /* JSON escape that decodes to a newline */
    };
    char *hdr = b64(HDR_KID, strlen(HDR_KID));
    size_t i, n = strlen(hdr);
    char *padded = malloc(n + 4);

    expect_raw(hdr, "e30", "AAAA", 0);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_raw(hdr, bad[i][0], bad[i][1], AGW_ERR_BAD_INPUT);
    snprintf(padded, n + 4, "%s%s", hdr, n % 4 == 2 ? "==" : n % 4 == 3 ? "=" : "");
    CHECK(strchr(padded, '=') != NULL);
    expect_raw(padded, "e30", "AAAA", AGW_ERR_BAD_INPUT);
    free(padded);
    free(hdr);
}

static void jws_body_over_cap_is_too_large(void)
{
    char *body = malloc(GW_MAX_BODY + 1);

    memset(body, ' ', GW_MAX_BODY + 1);
    body[0] = '{';
    body[GW_MAX_BODY] = '}';
    CHECK_INT(gw_jws_parse(body, GW_MAX_BODY + 1, &(struct gw_jws){0}), AGW_ERR_TOO_LARGE);
    CHECK_INT(gw_jws_parse(body, 0, &(struct gw_jws){0}), AGW_ERR_BAD_INPUT);
    free(body);
}

static void jws_payload_must_be_an_object(void)
{
    static const char hdr[] = "{\"alg\":\"ES256\",\"url\":\"u\",\"kid\":\"k\"}";

    expect_header(hdr, "[1,2]", AGW_ERR_BAD_INPUT);
    expect_header(hdr, "\"str\"", AGW_ERR_BAD_INPUT);
    expect_header(hdr, "7", AGW_ERR_BAD_INPUT);
    expect_header(hdr, "{", AGW_ERR_BAD_INPUT);
    expect_header(hdr, "{}", 0);
}

/* ---------------------------------------------------------------- JWK */

static void jwk_refuses_weak_rsa(void)
{
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    json_t *jwk = jwk_of(small), *good = jwk_of(key_rsa);
    unsigned char *n, *padded;
    size_t n_len;

    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_decref(jwk);

    CHECK_INT(jwk_to_pkey_err(good), 0);
    jwk = json_deep_copy(good);
    json_object_set_new(jwk, "e", json_string("Aw")); /* e = 3 */
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_object_set_new(jwk, "e", json_string("AQAD")); /* 65539: three bytes, still not 65537 */
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_object_set_new(jwk, "e", json_string("AAEAAQ")); /* 65537 with a leading zero */
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_decref(jwk);

    jwk = json_deep_copy(good);
    n = jwk_get_b64(good, "n", &n_len);
    padded = calloc(1, n_len + 1);
    memcpy(padded + 1, n, n_len);
    jwk_set_b64(jwk, "n", padded, n_len + 1); /* leading zero octet */
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    n[n_len - 1] &= 0xfe; /* even modulus */
    jwk_set_b64(jwk, "n", n, n_len);
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_object_set_new(jwk, "n", json_string("n+t"));
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_INPUT);
    json_object_del(jwk, "n");
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_INPUT);
    free(padded);
    free(n);
    json_decref(jwk);
    json_decref(good);
    EVP_PKEY_free(small);
}

static void jwk_with_private_member_is_bad_input(void)
{
    static const char *const priv[] = {"d", "p", "q", "dp", "dq", "qi", "k"};
    json_t *ec = jwk_of(key_p256), *rsa = jwk_of(key_rsa), *ed = jwk_of(key_ed), *jwk;
    size_t i;

    for (i = 0; i < sizeof(priv) / sizeof(priv[0]); i++) {
        jwk = json_deep_copy(i % 3 == 0 ? ec : i % 3 == 1 ? rsa : ed);
        json_object_set_new(jwk, priv[i], json_string("AQAB"));
        CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_INPUT);
        json_decref(jwk);
    }
    json_decref(ec);
    json_decref(rsa);
    json_decref(ed);
}

static void jwk_refuses_unknown_types_and_curves(void)
{
    json_t *ec = jwk_of(key_p256), *ed = jwk_of(key_ed), *jwk;
    unsigned char *x;
    size_t x_len;

    jwk = json_pack("{s:s,s:s}", "kty", "oct", "k", "AAAA");
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_INPUT); /* "k" is secret material */
    json_object_del(jwk, "k");
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_decref(jwk);
    jwk = json_pack("{s:i}", "kty", 1);
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_INPUT);
    json_decref(jwk);
    CHECK_INT(jwk_to_pkey_err(json_object_get(ec, "x")), AGW_ERR_BAD_INPUT); /* not an object */

    jwk = json_deep_copy(ec);
    json_object_set_new(jwk, "crv", json_string("P-192"));
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_object_set_new(jwk, "crv", json_string("secp256k1"));
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_object_set_new(jwk, "crv", json_string("P-384")); /* 32-byte x, y on a 48-byte curve */
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_decref(jwk);

    jwk = json_deep_copy(ec);
    x = jwk_get_b64(ec, "x", &x_len);
    jwk_set_b64(jwk, "x", x + 1, x_len - 1); /* leading byte stripped */
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    free(x);
    json_decref(jwk);

    jwk = json_deep_copy(ed);
    json_object_set_new(jwk, "crv", json_string("X25519"));
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_object_set_new(jwk, "crv", json_string("Ed448"));
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    json_decref(jwk);
    jwk = json_deep_copy(ed);
    x = jwk_get_b64(ed, "x", &x_len);
    jwk_set_b64(jwk, "x", x, x_len - 1);
    CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
    free(x);
    json_decref(jwk);
    CHECK_INT(jwk_to_pkey_err(ed), 0);
    json_decref(ec);
    json_decref(ed);
}

static void jwk_point_off_curve_is_refused(void)
{
    EVP_PKEY *keys[] = {key_p256, key_p384, key_p521};
    unsigned char *y;
    size_t i, y_len;
    json_t *good, *jwk;

    for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        good = jwk_of(keys[i]);
        CHECK_INT(jwk_to_pkey_err(good), 0);
        jwk = json_deep_copy(good);
        y = jwk_get_b64(good, "y", &y_len);
        y[y_len - 1] ^= 0x01;
        jwk_set_b64(jwk, "y", y, y_len);
        CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
        memset(y, 0xff, y_len); /* y >= p */
        jwk_set_b64(jwk, "y", y, y_len);
        CHECK_INT(jwk_to_pkey_err(jwk), AGW_ERR_BAD_PUBLIC_KEY);
        free(y);
        json_decref(jwk);
        json_decref(good);
    }
}

static void jwk_thumbprint_matches_rfc7638_example(void)
{
    /* RFC 7638 §3.1, with its extra members "alg" and "kid" and a different member order */
    static const char n[] =
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
        "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhA"
        "I4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    json_t *jwk = json_pack("{s:s,s:s,s:s,s:s,s:s}", "kty", "RSA", "n", n, "e", "AQAB", "alg",
                            "RS256", "kid", "2011-04-29");
    char tp[44], want[600], *canon = NULL;
    EVP_PKEY *key = NULL;

    CHECK_INT(gw_jwk_thumbprint(jwk, tp, sizeof(tp)), 0);
    CHECK_STR(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    CHECK_INT(strlen(tp), 43);
    CHECK_INT(gw_jwk_canonical(jwk, &canon), 0);
    snprintf(want, sizeof(want), "{\"e\":\"AQAB\",\"kty\":\"RSA\",\"n\":\"%s\"}", n);
    CHECK_STR(canon, want);
    CHECK_INT(gw_jwk_thumbprint(jwk, tp, 43), AGW_ERR_BAD_INPUT); /* no room for the NUL */
    CHECK_INT(gw_jwk_to_pkey(jwk, &key), 0); /* the RFC key is a usable 2048-bit key */
    EVP_PKEY_free(key);
    free(canon);
    json_decref(jwk);
}

static void jwk_round_trips_through_pkey(void)
{
    EVP_PKEY *keys[] = {key_rsa, key_p256, key_p384, key_p521, key_ed};
    char tp1[44], tp2[44];
    EVP_PKEY *back;
    json_t *a, *b;
    size_t i;

    for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        a = jwk_of(keys[i]);
        back = NULL;
        b = NULL;
        CHECK_INT(gw_jwk_to_pkey(a, &back), 0);
        CHECK(back != NULL && EVP_PKEY_eq(back, keys[i]) == 1);
        CHECK_INT(gw_jwk_from_pkey(back, &b), 0);
        CHECK(json_equal(a, b));
        CHECK_INT(gw_jwk_thumbprint(a, tp1, sizeof(tp1)), 0);
        CHECK_INT(gw_jwk_thumbprint(b, tp2, sizeof(tp2)), 0);
        CHECK_STR(tp1, tp2);
        EVP_PKEY_free(back);
        json_decref(a);
        json_decref(b);
    }
}

/* ---------------------------------------------------------------- EAB */

static const unsigned char eab_key[32] = "0123456789abcdef0123456789abcdef";
#define EAB_URL "https://acme.test/acme/new-account"
#define EAB_KID "kid-1"

/* An EAB object from header and payload text, MACed with key (test-side, to build bad ones). */
static json_t *eab_custom(const char *header, const char *payload, const unsigned char *key,
                          size_t key_len)
{
    char *p = b64(header, strlen(header)), *q = b64(payload, strlen(payload)), *tbs, *sig;
    unsigned char mac[32];
    unsigned int mac_len = 0;
    size_t tbs_len = strlen(p) + strlen(q) + 2;
    json_t *eab;

    tbs = malloc(tbs_len);
    snprintf(tbs, tbs_len, "%s.%s", p, q);
    HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)tbs, strlen(tbs), mac, &mac_len);
    sig = b64(mac, mac_len);
    eab = json_pack("{s:s,s:s,s:s}", "protected", p, "payload", q, "signature", sig);
    free(p);
    free(q);
    free(tbs);
    free(sig);
    return eab;
}

static void eab_valid_binding_verifies(void)
{
    json_t *jwk = jwk_of(key_p256), *eab = NULL;
    char kid[64], *jwk_text = json_dumps(jwk, JSON_COMPACT), header[256];

    CHECK_INT(gw_eab_sign(EAB_KID, eab_key, sizeof(eab_key), EAB_URL, jwk, &eab), 0);
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), 0);
    CHECK_STR(kid, EAB_KID);
    CHECK_INT(gw_eab_verify(eab, eab_key, sizeof(eab_key)), 0);
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, 5), AGW_ERR_BAD_INPUT); /* kid does not fit */
    json_decref(eab);

    /* the same binding built independently verifies too */
    snprintf(header, sizeof(header), "{\"alg\":\"HS256\",\"kid\":\"%s\",\"url\":\"%s\"}", EAB_KID,
             EAB_URL);
    eab = eab_custom(header, jwk_text, eab_key, sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), 0);
    CHECK_INT(gw_eab_verify(eab, eab_key, sizeof(eab_key)), 0);
    json_decref(eab);
    free(jwk_text);
    json_decref(jwk);
}

static void eab_wrong_or_truncated_mac_is_unauthorized(void)
{
    unsigned char other[32];
    json_t *jwk = jwk_of(key_ed), *eab = NULL;
    const char *sig;
    char cut[64];

    memcpy(other, eab_key, sizeof(other));
    other[31] ^= 0x80;
    CHECK_INT(gw_eab_sign(EAB_KID, eab_key, sizeof(eab_key), EAB_URL, jwk, &eab), 0);
    CHECK_INT(gw_eab_verify(eab, other, sizeof(other)), AGW_ERR_UNAUTHORIZED);
    CHECK_INT(gw_eab_verify(eab, eab_key, 31), AGW_ERR_UNAUTHORIZED);
    CHECK_INT(gw_eab_verify(eab, eab_key, sizeof(eab_key)), 0);

    sig = json_string_value(json_object_get(eab, "signature"));
    CHECK_INT(strlen(sig), 43);
    snprintf(cut, sizeof(cut), "%.40s", sig); /* 30 bytes, canonical */
    json_object_set_new(eab, "signature", json_string(cut));
    CHECK_INT(gw_eab_verify(eab, eab_key, sizeof(eab_key)), AGW_ERR_UNAUTHORIZED);
    json_object_set_new(eab, "signature", json_string(""));
    CHECK_INT(gw_eab_verify(eab, eab_key, sizeof(eab_key)), AGW_ERR_UNAUTHORIZED);
    json_decref(eab);
    json_decref(jwk);
}

static void eab_header_rules(void)
{
    json_t *jwk = jwk_of(key_p256), *eab;
    char *jwk_text = json_dumps(jwk, JSON_COMPACT), kid[64], header[2048];

    /* §7.3.4: MUST NOT contain a nonce */
    eab = eab_custom("{\"alg\":\"HS256\",\"kid\":\"k\",\"nonce\":\"n\",\"url\":\"" EAB_URL "\"}",
                     jwk_text, eab_key, sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), AGW_ERR_BAD_INPUT);
    CHECK_INT(gw_eab_verify(eab, eab_key, sizeof(eab_key)), AGW_ERR_BAD_INPUT);
    json_decref(eab);
    /* HS512 and asymmetric algs are not the MAC we issued keys for */
    eab = eab_custom("{\"alg\":\"HS512\",\"kid\":\"k\",\"url\":\"" EAB_URL "\"}", jwk_text, eab_key,
                     sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), AGW_ERR_BAD_INPUT);
    CHECK_INT(gw_eab_verify(eab, eab_key, sizeof(eab_key)), AGW_ERR_BAD_INPUT);
    json_decref(eab);
    eab = eab_custom("{\"alg\":\"ES256\",\"kid\":\"k\",\"url\":\"" EAB_URL "\"}", jwk_text, eab_key,
                     sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), AGW_ERR_BAD_INPUT);
    json_decref(eab);
    eab = eab_custom("{\"alg\":\"none\",\"kid\":\"k\",\"url\":\"" EAB_URL "\"}", jwk_text, eab_key,
                     sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), AGW_ERR_BAD_INPUT);
    json_decref(eab);
    /* kid required, jwk refused */
    eab = eab_custom("{\"alg\":\"HS256\",\"url\":\"" EAB_URL "\"}", jwk_text, eab_key,
                     sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), AGW_ERR_BAD_INPUT);
    json_decref(eab);
    snprintf(header, sizeof(header), "{\"alg\":\"HS256\",\"kid\":\"k\",\"jwk\":%s,\"url\":\"%s\"}",
             jwk_text, EAB_URL);
    eab = eab_custom(header, jwk_text, eab_key, sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), AGW_ERR_BAD_INPUT);
    json_decref(eab);
    /* payload must be a JWK, not empty */
    eab = eab_custom("{\"alg\":\"HS256\",\"kid\":\"k\",\"url\":\"" EAB_URL "\"}", "", eab_key,
                     sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), AGW_ERR_BAD_INPUT);
    json_decref(eab);
    eab = eab_custom("{\"alg\":\"HS256\",\"kid\":\"k\",\"url\":\"" EAB_URL "\"}", "{\"a\":1}",
                     eab_key, sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), AGW_ERR_BAD_INPUT);
    json_decref(eab);
    /* the well-formed control case passes */
    eab = eab_custom("{\"alg\":\"HS256\",\"kid\":\"k\",\"url\":\"" EAB_URL "\"}", jwk_text, eab_key,
                     sizeof(eab_key));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), 0);
    CHECK_STR(kid, "k");
    json_decref(eab);
    free(jwk_text);
    json_decref(jwk);
}

static void eab_wrong_url_is_bad_input(void)
{
    json_t *jwk = jwk_of(key_p256), *eab = NULL;
    char kid[64];

    CHECK_INT(gw_eab_sign(EAB_KID, eab_key, sizeof(eab_key), EAB_URL, jwk, &eab), 0);
    CHECK_INT(gw_eab_parse(eab, "https://acme.test/acme/new-order", jwk, kid, sizeof(kid)),
              AGW_ERR_BAD_INPUT);
    CHECK_INT(gw_eab_parse(eab, EAB_URL "x", jwk, kid, sizeof(kid)), AGW_ERR_BAD_INPUT);
    CHECK_STR(kid, "");
    json_decref(eab);
    json_decref(jwk);
}

static void eab_for_another_key_is_unauthorized(void)
{
    json_t *jwk = jwk_of(key_p256), *other = jwk_of(key_p384), *eab = NULL, *extra;
    char kid[64];

    CHECK_INT(gw_eab_sign(EAB_KID, eab_key, sizeof(eab_key), EAB_URL, jwk, &eab), 0);
    CHECK_INT(gw_eab_parse(eab, EAB_URL, other, kid, sizeof(kid)), AGW_ERR_UNAUTHORIZED);
    /* same key, different JWK text: refused too (the MAC covered the exact JWK) */
    extra = json_deep_copy(jwk);
    json_object_set_new(extra, "use", json_string("sig"));
    CHECK_INT(gw_eab_parse(eab, EAB_URL, extra, kid, sizeof(kid)), AGW_ERR_UNAUTHORIZED);
    CHECK_INT(gw_eab_parse(eab, EAB_URL, jwk, kid, sizeof(kid)), 0);
    json_decref(extra);
    json_decref(eab);
    json_decref(other);
    json_decref(jwk);
}

/* ---------------------------------------------------------------- mutations */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* Mutates a copy of body and checks the result never crashes and never verifies, unless the
 * mutation only moved JSON whitespace (same signing input and signature). */
static void mutate_and_check(const char *body, EVP_PKEY *key, int iterations, int *n_parsed)
{
    struct gw_jws orig, jws;
    size_t len = strlen(body), n, pos;
    unsigned char *buf;
    EVP_PKEY *k;
    int i, j, ops, err;

    CHECK_INT(gw_jws_parse(body, len, &orig), 0);
    for (i = 0; i < iterations; i++) {
        buf = malloc(len + 8);
        memcpy(buf, body, len);
        n = len;
        ops = 1 + (int)(rng() % 4);
        for (j = 0; j < ops; j++) {
            pos = rng() % n;
            switch (rng() % 4) {
            case 0:
                buf[pos] ^= (unsigned char)(1u << (rng() % 8));
                break;
            case 1:
                buf[pos] = (unsigned char)rng();
                break;
            case 2:
                if (n < len + 8) {
                    memmove(buf + pos + 1, buf + pos, n - pos);
                    buf[pos] = (unsigned char)rng();
                    n++;
                }
                break;
            default:
                if (n > 1) {
                    memmove(buf + pos, buf + pos + 1, n - pos - 1);
                    n--;
                }
                break;
            }
        }
        /* exact length, no NUL: ASan catches any read past the body */
        buf = realloc(buf, n);
        err = gw_jws_parse((const char *)buf, n, &jws);
        if (err == 0) {
            (*n_parsed)++;
            k = NULL;
            if (jws.jwk != NULL && gw_jwk_to_pkey(jws.jwk, &k) != 0)
                k = NULL;
            err = gw_jws_verify(&jws, k != NULL ? k : key);
            if (err == 0)
                CHECK(jws.signing_input_len == orig.signing_input_len &&
                      memcmp(jws.signing_input, orig.signing_input, orig.signing_input_len) == 0 &&
                      jws.sig_len == orig.sig_len && memcmp(jws.sig, orig.sig, orig.sig_len) == 0);
            EVP_PKEY_free(k);
        }
        CHECK(err != 0 || jws.signing_input != NULL);
        gw_jws_clear(&jws);
        free(buf);
    }
    gw_jws_clear(&orig);
}

static void mutated_bodies_never_crash_or_verify(void)
{
    json_t *payload =
        json_pack("{s:[{s:s,s:s}]}", "identifiers", "type", "dns", "value", "device-1.example");
    char *es = NULL, *rs = NULL, *ed = NULL;
    int parsed = 0;

    CHECK_INT(gw_jws_sign(key_p256, NULL, NONCE, URL, payload, &es), 0); /* jwk form */
    CHECK_INT(gw_jws_sign(key_rsa, KID, NONCE, URL, payload, &rs), 0);
    CHECK_INT(gw_jws_sign(key_ed, NULL, NONCE, URL, payload, &ed), 0);
    mutate_and_check(es, key_p256, 800, &parsed);
    mutate_and_check(rs, key_rsa, 600, &parsed);
    mutate_and_check(ed, key_ed, 600, &parsed);
    fprintf(stderr, "  mutations: %d of 2000 still parsed\n", parsed);
    free(es);
    free(rs);
    free(ed);
    json_decref(payload);
}

int main(void)
{
    key_rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    key_p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    key_p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    key_p521 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
    key_ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    CHECK(key_rsa != NULL && key_p256 != NULL && key_p384 != NULL && key_p521 != NULL &&
          key_ed != NULL);

    RUN(b64url_round_trips_every_length);
    RUN(b64url_rejects_noncanonical_input);
    RUN(jws_round_trips_rs256);
    RUN(jws_round_trips_es256);
    RUN(jws_round_trips_es384);
    RUN(jws_round_trips_es512);
    RUN(jws_round_trips_eddsa);
    RUN(jws_tampered_payload_or_signature_is_unauthorized);
    RUN(jws_rejects_unsupported_algs);
    RUN(jws_alg_must_match_key);
    RUN(ecdsa_r_or_s_zero_or_n_is_unauthorized);
    RUN(wrong_signature_length_is_unauthorized);
    RUN(jws_needs_exactly_one_of_jwk_and_kid);
    RUN(jws_needs_a_url);
    RUN(jws_caps_header_members);
    RUN(jws_caps_protected_header_size);
    RUN(jws_parse_json_accepts_an_inner_jws_object);
    RUN(jws_rejects_crit_and_b64);
    RUN(jws_outer_object_has_exactly_three_members);
    RUN(jws_rejects_duplicate_keys);
    RUN(jws_caps_payload_depth);
    RUN(json_caps_string_length_and_nul);
    RUN(jws_rejects_noncanonical_base64url);
    RUN(jws_body_over_cap_is_too_large);
    RUN(jws_payload_must_be_an_object);
    RUN(jwk_refuses_weak_rsa);
    RUN(jwk_with_private_member_is_bad_input);
    RUN(jwk_refuses_unknown_types_and_curves);
    RUN(jwk_point_off_curve_is_refused);
    RUN(jwk_thumbprint_matches_rfc7638_example);
    RUN(jwk_round_trips_through_pkey);
    RUN(eab_valid_binding_verifies);
    RUN(eab_wrong_or_truncated_mac_is_unauthorized);
    RUN(eab_header_rules);
    RUN(eab_wrong_url_is_bad_input);
    RUN(eab_for_another_key_is_unauthorized);
    RUN(mutated_bodies_never_crash_or_verify);

    EVP_PKEY_free(key_rsa);
    EVP_PKEY_free(key_p256);
    EVP_PKEY_free(key_p384);
    EVP_PKEY_free(key_p521);
    EVP_PKEY_free(key_ed);
    return CHECK_DONE();
}

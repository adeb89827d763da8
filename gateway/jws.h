/*
 * gateway/jws.h - JWS (RFC 7515) as ACME uses it (RFC 8555 §6.2), JWK (RFC 7517/7518/8037),
 * thumbprints (RFC 7638) and External Account Binding (RFC 8555 §7.3.4). Also base64url.
 *
 * Only the flattened JSON serialization. Protected header: alg, nonce, url and exactly one of
 * jwk/kid. Algorithms: RS256 (RSA >= 2048 bits, e = 65537), ES256, ES384, ES512, EdDSA (Ed25519).
 * "none", HS* and anything else are AGW_ERR_BAD_SIG_ALG; an alg that does not match the key is
 * AGW_ERR_BAD_SIG_ALG; ECDSA signatures with r or s equal to 0 or >= n are AGW_ERR_UNAUTHORIZED.
 * Every input is hostile: lengths are checked before parsing, JSON depth is capped, duplicate
 * keys are refused.
 */
#ifndef AGW_GATEWAY_JWS_H
#define AGW_GATEWAY_JWS_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <openssl/evp.h>

#define GW_MAX_BODY         (64 * 1024) /* request body cap, answered with our own 413 */
#define GW_MAX_JSON_DEPTH   16
#define GW_MAX_JSON_STRING  (48 * 1024) /* longest string value accepted anywhere */
#define GW_MAX_HEADER_LEN   4096        /* decoded protected header */
#define GW_MAX_URL_LEN      2048
#define GW_MAX_NONCE_LEN    128
#define GW_MAX_KID_LEN      2048

/* ---------------------------------------------------------------- base64url (no padding) */

/* Encodes len bytes into out (NUL-terminated). out_size must be >= gw_b64url_len(len) + 1. */
size_t gw_b64url_len(size_t len);
int gw_b64url_encode(const unsigned char *in, size_t len, char *out, size_t out_size);
/* Decodes exactly in_len chars of strict base64url (no padding, no whitespace, no '+' '/').
 * *out owned by the caller (free()); *out_len bytes. AGW_ERR_BAD_INPUT on any bad character. */
int gw_b64url_decode(const char *in, size_t in_len, unsigned char **out, size_t *out_len);

/* ---------------------------------------------------------------- JSON helpers */

/* Parses len bytes of untrusted JSON: JSON_REJECT_DUPLICATES, depth <= GW_MAX_JSON_DEPTH,
 * every string <= GW_MAX_JSON_STRING. *out owned by caller (json_decref). AGW_ERR_BAD_INPUT. */
int gw_json_parse(const char *buf, size_t len, json_t **out);
/* 0 when v nests at most max_depth levels. */
int gw_json_check_depth(const json_t *v, int max_depth);

/* ---------------------------------------------------------------- JWK */

enum gw_alg { GW_ALG_NONE = 0, GW_ALG_RS256, GW_ALG_ES256, GW_ALG_ES384, GW_ALG_ES512, GW_ALG_EDDSA };

/* Public JWK object -> EVP_PKEY (RSA n/e; EC crv P-256/P-384/P-521 x/y with the point on the
 * curve; OKP Ed25519 x). A private member ("d", "p", ...) is AGW_ERR_BAD_INPUT.
 * RSA < 2048 bits or e != 65537 is AGW_ERR_BAD_PUBLIC_KEY. *out owned by the caller. */
int gw_jwk_to_pkey(const json_t *jwk, EVP_PKEY **out);
/* EVP_PKEY -> new public JWK object (for tests and clients). */
int gw_jwk_from_pkey(const EVP_PKEY *key, json_t **out);
/* RFC 7638 SHA-256 thumbprint, base64url, into out (>= 44 bytes). */
int gw_jwk_thumbprint(const json_t *jwk, char *out, size_t out_size);
/* Canonical JSON of the required members only (what RFC 7638 hashes); *out malloc'd. */
int gw_jwk_canonical(const json_t *jwk, char **out);

/* ---------------------------------------------------------------- JWS */

struct gw_jws {
    enum gw_alg alg;
    const char *nonce; /* borrowed from header; may be NULL (the caller decides) */
    const char *url;
    const char *kid;     /* exactly one of kid / jwk is set */
    const json_t *jwk;   /* borrowed from header */
    json_t *header;      /* decoded protected header (owned) */
    json_t *payload;     /* decoded payload JSON (owned); NULL when post_as_get */
    bool post_as_get;    /* payload was the empty string */
    char *signing_input; /* "protected.payload" as received, owned */
    size_t signing_input_len;
    unsigned char *sig; /* decoded signature, owned */
    size_t sig_len;
};

/* Parses a flattened JWS from an HTTP body (not NUL-terminated). Checks structure, header
 * members (alg supported, url present, exactly one of jwk/kid, no "b64": false, no "crit"),
 * and that the payload is empty or a JSON object. Does not verify the signature.
 * Returns 0, AGW_ERR_BAD_INPUT, AGW_ERR_BAD_SIG_ALG, AGW_ERR_TOO_LARGE. Release with gw_jws_clear. */
int gw_jws_parse(const char *body, size_t len, struct gw_jws *out);
/* Same, from an already-parsed JSON object (used for the inner JWS of EAB and keyChange). */
int gw_jws_parse_json(const json_t *root, struct gw_jws *out);
void gw_jws_clear(struct gw_jws *jws);

/* Verifies the signature with key: the alg must fit the key type and size (ES256 only with
 * P-256, ...). Returns 0, AGW_ERR_BAD_SIG_ALG (mismatch) or AGW_ERR_UNAUTHORIZED (bad signature). */
int gw_jws_verify(const struct gw_jws *jws, EVP_PKEY *key);

/* Signs (for tests and the benchmark client): builds a flattened JWS JSON string. header members
 * alg is derived from key; pass nonce/url and either kid or (kid NULL) the key's jwk.
 * payload NULL means POST-as-GET (""). *out malloc'd, NUL-terminated. */
int gw_jws_sign(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
                const json_t *payload, char **out);

/* ---------------------------------------------------------------- EAB (RFC 8555 §7.3.4) */

/* From the newAccount payload's externalAccountBinding object: checks it is a JWS with alg
 * HS256, a kid (copied to kid_out, at most kid_size-1 chars), url equal to expected_url, no
 * nonce, and payload equal (as a JWK) to outer_jwk. Does not check the MAC. */
int gw_eab_parse(const json_t *eab, const char *expected_url, const json_t *outer_jwk,
                 char *kid_out, size_t kid_size);
/* Checks the HS256 MAC with the HMAC key: lengths first, then CRYPTO_memcmp.
 * AGW_ERR_UNAUTHORIZED on mismatch. */
int gw_eab_verify(const json_t *eab, const unsigned char *hmac_key, size_t hmac_len);
/* Builds an EAB object (client side, for tests/bench). *out owned by the caller. */
int gw_eab_sign(const char *kid, const unsigned char *hmac_key, size_t hmac_len, const char *url,
                const json_t *outer_jwk, json_t **out);

#endif

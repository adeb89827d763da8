/*
 * tests/unit/test_keygen.c - hsm/keygen.c against a fresh SoftHSM2 token per run: token init,
 * EC P-256 and RSA-3072 generation, attribute read-back, and the refusals (taken label or id,
 * existing token, wrong PIN, missing module).
 */
#include "hsm/hsm.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common/err.h"
#include "tests/check.h"
#include "tests/testlib.h"

#define SO_PIN   "so-pin-1234"
#define USER_PIN "user-pin-5678"
#define LABEL    "keygen-test"

static struct hsm_token_ref ref;

static void check_ca_attrs(const struct hsm_key_attrs *a)
{
    CHECK(a->token);
    CHECK(a->is_private);
    CHECK(a->sensitive);
    CHECK(!a->extractable);
    CHECK(a->always_sensitive);
    CHECK(a->never_extractable);
    CHECK(a->local);
    CHECK(a->sign);
    CHECK(!a->decrypt);
    CHECK(!a->unwrap);
    CHECK(!a->derive);
    CHECK(!a->value_readable);
}

static void token_init_creates_token_and_refuses_second(void)
{
    CHECK_INT(hsm_token_init(ref.module, LABEL, SO_PIN, USER_PIN), 0);
    CHECK_INT(hsm_token_init(ref.module, LABEL, SO_PIN, USER_PIN), AGW_ERR_EXISTS);
    CHECK_INT(hsm_token_init(ref.module, "", SO_PIN, USER_PIN), AGW_ERR_BAD_INPUT);
    CHECK_INT(hsm_token_init(ref.module, "this-label-is-longer-than-32-bytes!", SO_PIN, USER_PIN),
              AGW_ERR_BAD_INPUT);
}

static void keygen_round_trip(enum hsm_key_alg alg, const char *label, unsigned char id_byte,
                              const char *type)
{
    unsigned char id[2] = {0xca, id_byte};
    unsigned char *pub = NULL, *pub2 = NULL;
    size_t pub_len = 0, pub2_len = 0;
    struct hsm_key_attrs a;
    EVP_PKEY *pkey = NULL;
    const unsigned char *q;

    CHECK_INT(hsm_key_generate(&ref, USER_PIN, alg, label, id, sizeof(id), &pub, &pub_len), 0);
    CHECK(pub != NULL && pub_len > 0);
    q = pub;
    pkey = pub != NULL ? d2i_PUBKEY(NULL, &q, (long)pub_len) : NULL;
    CHECK(pkey != NULL && EVP_PKEY_is_a(pkey, type));
    if (alg == HSM_KEY_RSA_3072)
        CHECK_INT(pkey != NULL ? EVP_PKEY_get_bits(pkey) : 0, 3072);
    EVP_PKEY_free(pkey);

    memset(&a, 0, sizeof(a));
    CHECK_INT(hsm_key_attrs_read(&ref, USER_PIN, label, id, sizeof(id), &a, &pub2, &pub2_len), 0);
    check_ca_attrs(&a);
    CHECK_INT(a.alg, alg);
    CHECK(pub2 != NULL && pub2_len == pub_len && memcmp(pub, pub2, pub_len) == 0);
    OPENSSL_free(pub2);
    pub2 = NULL;

    /* by label alone, without the public key */
    CHECK_INT(hsm_key_attrs_read(&ref, USER_PIN, label, NULL, 0, &a, NULL, NULL), 0);
    CHECK_INT(a.alg, alg);

    /* a second key under the same label, or the same id, is refused */
    CHECK_INT(hsm_key_generate(&ref, USER_PIN, alg, label, (const unsigned char *)"\x01", 1, &pub2,
                               &pub2_len),
              AGW_ERR_EXISTS);
    CHECK(pub2 == NULL);
    CHECK_INT(
        hsm_key_generate(&ref, USER_PIN, alg, "other-label", id, sizeof(id), &pub2, &pub2_len),
        AGW_ERR_EXISTS);
    CHECK_INT(hsm_key_attrs_read(&ref, USER_PIN, "other-label", NULL, 0, &a, NULL, NULL),
              AGW_ERR_NOT_FOUND);
    OPENSSL_free(pub);
}

static void keygen_ec_p256_is_sensitive_sign_only(void)
{
    keygen_round_trip(HSM_KEY_EC_P256, "ca-ec", 0x01, "EC");
}

static void keygen_rsa_3072_is_sensitive_sign_only(void)
{
    keygen_round_trip(HSM_KEY_RSA_3072, "ca-rsa", 0x02, "RSA");
}

static void token_selected_by_uri(void)
{
    struct hsm_token_ref uri = {ref.module,
                                "pkcs11:token=keygen%2dtest;manufacturer=SoftHSM%20project"};
    struct hsm_token_ref other = {ref.module, "pkcs11:token=nope"};
    struct hsm_key_attrs a;

    CHECK_INT(hsm_key_attrs_read(&uri, USER_PIN, "ca-ec", NULL, 0, &a, NULL, NULL), 0);
    CHECK_INT(hsm_key_attrs_read(&other, USER_PIN, "ca-ec", NULL, 0, &a, NULL, NULL),
              AGW_ERR_NOT_FOUND);
}

static void wrong_pin_is_unauthorized(void)
{
    unsigned char *pub = NULL;
    size_t pub_len = 0;
    struct hsm_key_attrs a;

    CHECK_INT(hsm_key_generate(&ref, "wrong-pin", HSM_KEY_EC_P256, "never",
                               (const unsigned char *)"\x09", 1, &pub, &pub_len),
              AGW_ERR_UNAUTHORIZED);
    CHECK_INT(hsm_key_attrs_read(&ref, "wrong-pin", "ca-ec", NULL, 0, &a, NULL, NULL),
              AGW_ERR_UNAUTHORIZED);
    CHECK(pub == NULL);
}

static void missing_module_is_unavailable(void)
{
    struct hsm_token_ref bad = {"/nonexistent/libnothing.so", LABEL};
    unsigned char *pub = NULL;
    size_t pub_len = 0;
    struct hsm_key_attrs a;

    CHECK_INT(hsm_token_init(bad.module, "x", SO_PIN, USER_PIN), AGW_ERR_HSM_UNAVAILABLE);
    CHECK_INT(hsm_key_generate(&bad, USER_PIN, HSM_KEY_EC_P256, "x", (const unsigned char *)"\x09",
                               1, &pub, &pub_len),
              AGW_ERR_HSM_UNAVAILABLE);
    CHECK_INT(hsm_key_attrs_read(&bad, USER_PIN, "ca-ec", NULL, 0, &a, NULL, NULL),
              AGW_ERR_HSM_UNAVAILABLE);
}

int main(void)
{
    char dir[4096];
    int rc;

    if (tl_tmpdir(dir, sizeof(dir)) != 0 || tl_softhsm_setup(dir) != 0) {
        fprintf(stderr, "cannot set up a temporary SoftHSM2 token\n");
        return 1;
    }
    ref.module = tl_softhsm_module();
    ref.token = LABEL;
    RUN(token_init_creates_token_and_refuses_second);
    RUN(keygen_ec_p256_is_sensitive_sign_only);
    RUN(keygen_rsa_3072_is_sensitive_sign_only);
    RUN(token_selected_by_uri);
    RUN(wrong_pin_is_unauthorized);
    RUN(missing_module_is_unavailable);
    rc = CHECK_DONE();
    tl_rmtree(dir);
    return rc;
}

/*
 * hsm/keygen.c - ceremony operations in raw PKCS#11: token init, key generation, attribute
 * read-back.
 *
 * Why raw PKCS#11 and not libp11: libp11 0.4.12 cannot generate EC keys, its RSA keygen grants
 * decrypt and unwrap, and its PKCS11_init_token() passes an unpadded label (notes §2). So each call
 * here is one self-contained phase:
 *
 *     dlopen(module) -> C_GetFunctionList -> C_Initialize -> C_GetSlotList / C_GetTokenInfo
 *       -> C_OpenSession -> C_Login -> ... -> C_Logout -> C_CloseSession -> C_Finalize -> dlclose
 *
 * and leaves nothing behind. PKCS#11 has one C_Initialize owner per process: a phase here must not
 * run while libp11 (the signer) has the same module loaded in this process, or the two would tear
 * down each other's sessions and login state. We refuse CKR_CRYPTOKI_ALREADY_INITIALIZED with
 * AGW_ERR_HSM_UNAVAILABLE instead of sharing. The ceremony tool therefore runs keygen first,
 * frees every hsm_signer before the next read-back, and never overlaps the two.
 *
 * Ownership: struct p11 owns the dlopen handle, the initialised library, one session and its login;
 * p11_close() releases them in reverse order (logout, close session, finalize, dlclose) and is
 * safe on a partly opened struct. Object handles are borrowed from the session and die with it.
 * Token references (label or RFC 7512 URI) are matched by hsm_token_match() (hsm/util.c).
 *
 * Nothing is logged at info level or above: the ceremony tool prints exactly one line per error,
 * and the codes returned carry the meaning (CKR codes are translated once, in ckr_err()).
 */
#include "hsm/hsm.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#include "common/err.h"
#include "common/log.h"
#include "hsm/internal.h"

#define LABEL_FIELD_LEN 32 /* CK_TOKEN_INFO.label and C_InitToken's label: space padded, no NUL */
#define MAX_KEY_LABEL   128
#define MAX_ID_LEN      64
#define MAX_SLOTS       256
#define MAX_PIN_LEN     256
#define MAX_ATTR_LEN    4096 /* CKA_MODULUS of RSA-4096 is 512 bytes; EC points are smaller */

struct p11 {
    void *dl;               /* owned: dlopen handle */
    CK_FUNCTION_LIST_PTR f; /* borrowed from the module */
    bool initialized;       /* we own the C_Initialize */
    CK_SESSION_HANDLE sess;
    bool have_sess;
    bool logged_in;
};

/* DER OIDs for CKA_EC_PARAMS (namedCurve). */
static const unsigned char oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                         0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

static int ckr_err(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return 0;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_LOCKED:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
        return AGW_ERR_UNAUTHORIZED;
    case CKR_HOST_MEMORY:
        return AGW_ERR_NOMEM;
    case CKR_ARGUMENTS_BAD:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_TEMPLATE_INCONSISTENT:
    case CKR_TEMPLATE_INCOMPLETE:
    case CKR_DOMAIN_PARAMS_INVALID:
    case CKR_MECHANISM_INVALID:
    case CKR_KEY_SIZE_RANGE:
        return AGW_ERR_BAD_INPUT;
    default:
        return AGW_ERR_HSM_UNAVAILABLE;
    }
}

/* ---------------------------------------------------------------- one PKCS#11 phase */

static void p11_close(struct p11 *p)
{
    if (p->logged_in)
        (void)p->f->C_Logout(p->sess);
    if (p->have_sess)
        (void)p->f->C_CloseSession(p->sess);
    if (p->initialized)
        (void)p->f->C_Finalize(NULL);
    if (p->dl != NULL)
        dlclose(p->dl);
    memset(p, 0, sizeof(*p));
}

/* Loads the module and initialises it; on failure p is closed again. */
static int p11_open(const char *module, struct p11 *p)
{
    CK_C_GetFunctionList get_list;
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;

    memset(p, 0, sizeof(*p));
    if (module == NULL || module[0] == '\0')
        return AGW_ERR_BAD_INPUT;
    p->dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (p->dl == NULL) {
        LOG_DEBUG("hsm.keygen.dlopen", "module=%s error=%s", module, dlerror());
        return AGW_ERR_HSM_UNAVAILABLE;
    }
    /* POSIX: a function pointer travels through void * (dlsym's documented idiom). */
    *(void **)&get_list = dlsym(p->dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(&p->f) != CKR_OK || p->f == NULL) {
        p11_close(p);
        return AGW_ERR_HSM_UNAVAILABLE;
    }
    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    rv = p->f->C_Initialize(&args);
    if (rv != CKR_OK) {
        /* CKR_CRYPTOKI_ALREADY_INITIALIZED: libp11 owns the module in this process (see top). */
        LOG_DEBUG("hsm.keygen.init", "module=%s ckr=0x%lx", module, (unsigned long)rv);
        p11_close(p);
        return AGW_ERR_HSM_UNAVAILABLE;
    }
    p->initialized = true;
    return 0;
}

/* The slots that have a token. *out owned by the caller (free). */
static int p11_slots(struct p11 *p, CK_SLOT_ID **out, CK_ULONG *n_out)
{
    CK_ULONG n = 0;
    CK_SLOT_ID *slots;
    CK_RV rv;

    *out = NULL;
    *n_out = 0;
    rv = p->f->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv != CKR_OK)
        return ckr_err(rv);
    if (n == 0)
        return 0;
    if (n > MAX_SLOTS)
        return AGW_ERR_HSM_UNAVAILABLE;
    slots = calloc(n, sizeof(*slots));
    if (slots == NULL)
        return AGW_ERR_NOMEM;
    rv = p->f->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK) {
        free(slots);
        return ckr_err(rv);
    }
    *out = slots;
    *n_out = n;
    return 0;
}

/* ---------------------------------------------------------------- token selection */

/* Fixed-width, space-padded PKCS#11 field equals want (want shorter or equal, no padding). */
static bool field_eq(const CK_UTF8CHAR *field, size_t field_len, const char *want, size_t want_len)
{
    if (want_len > field_len)
        return false;
    if (memcmp(field, want, want_len) != 0)
        return false;
    for (size_t i = want_len; i < field_len; i++)
        if (field[i] != ' ' && field[i] != '\0')
            return false;
    return true;
}

/* A fixed-width PKCS#11 field as a C string (hsm_token_match ignores the trailing padding). */
static void field_str(const CK_UTF8CHAR *field, size_t len, char *out)
{
    memcpy(out, field, len);
    out[len] = '\0';
}

/* Does this token match the reference (label or RFC 7512 URI)? 1, 0 or AGW_ERR_BAD_INPUT. */
static int token_match(const CK_TOKEN_INFO *ti, const char *ref)
{
    char label[sizeof(ti->label) + 1], serial[sizeof(ti->serialNumber) + 1];
    char manufacturer[sizeof(ti->manufacturerID) + 1], model[sizeof(ti->model) + 1];

    field_str(ti->label, sizeof(ti->label), label);
    field_str(ti->serialNumber, sizeof(ti->serialNumber), serial);
    field_str(ti->manufacturerID, sizeof(ti->manufacturerID), manufacturer);
    field_str(ti->model, sizeof(ti->model), model);
    return hsm_token_match(ref, label, serial, manufacturer, model);
}

/* First initialised token matching ref. Returns 0, AGW_ERR_NOT_FOUND, or another error. */
static int find_token(struct p11 *p, const char *ref, CK_SLOT_ID *slot)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    int err;

    err = p11_slots(p, &slots, &n);
    if (err != 0)
        return err;
    err = AGW_ERR_NOT_FOUND;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        int m;

        if (p->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        if ((ti.flags & CKF_TOKEN_INITIALIZED) == 0)
            continue;
        m = token_match(&ti, ref);
        if (m < 0) {
            err = m;
            break;
        }
        if (m == 1) {
            *slot = slots[i];
            err = 0;
            break;
        }
    }
    free(slots);
    return err;
}

/* Opens a session on the token named by ref and logs in as user. */
static int open_user(const struct hsm_token_ref *ref, const char *pin, bool rw, struct p11 *p)
{
    CK_SLOT_ID slot;
    CK_FLAGS flags = CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0);
    size_t pin_len;
    CK_RV rv;
    int err;

    if (ref == NULL || ref->token == NULL || ref->token[0] == '\0' || pin == NULL)
        return AGW_ERR_BAD_INPUT;
    pin_len = strlen(pin);
    if (pin_len == 0 || pin_len > MAX_PIN_LEN)
        return AGW_ERR_BAD_INPUT;
    err = p11_open(ref->module, p);
    if (err != 0)
        return err;
    err = find_token(p, ref->token, &slot);
    if (err != 0)
        goto fail;
    rv = p->f->C_OpenSession(slot, flags, NULL, NULL, &p->sess);
    if (rv != CKR_OK) {
        err = ckr_err(rv);
        goto fail;
    }
    p->have_sess = true;
    rv = p->f->C_Login(p->sess, CKU_USER, (CK_UTF8CHAR_PTR)(uintptr_t)pin, (CK_ULONG)pin_len);
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        err = ckr_err(rv);
        goto fail;
    }
    p->logged_in = true;
    return 0;
fail:
    p11_close(p);
    return err;
}

/* ---------------------------------------------------------------- token init */

static bool label_ok(const char *label, size_t max_len)
{
    size_t n = label != NULL ? strlen(label) : 0;

    if (n == 0 || n > max_len)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)label[i] < 0x20 || (unsigned char)label[i] == 0x7f)
            return false;
    return label[n - 1] != ' '; /* a trailing space would vanish in the padded field */
}

int hsm_token_init(const char *module, const char *label, const char *so_pin, const char *user_pin)
{
    CK_UTF8CHAR padded[LABEL_FIELD_LEN];
    CK_SLOT_ID *slots = NULL, slot = 0;
    CK_ULONG n = 0;
    bool have_free = false;
    size_t so_len, user_len, label_len;
    struct p11 p;
    CK_RV rv;
    int err;

    if (!label_ok(label, LABEL_FIELD_LEN) || so_pin == NULL || user_pin == NULL)
        return AGW_ERR_BAD_INPUT;
    so_len = strlen(so_pin);
    user_len = strlen(user_pin);
    if (so_len == 0 || so_len > MAX_PIN_LEN || user_len == 0 || user_len > MAX_PIN_LEN)
        return AGW_ERR_BAD_INPUT;
    label_len = strlen(label);
    memset(padded, ' ', sizeof(padded)); /* notes §2 pitfall 1: C_InitToken reads all 32 bytes */
    memcpy(padded, label, label_len);

    err = p11_open(module, &p);
    if (err != 0)
        return err;
    err = p11_slots(&p, &slots, &n);
    if (err != 0)
        goto fail;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;

        if (p.f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        if ((ti.flags & CKF_TOKEN_INITIALIZED) == 0) {
            if (!have_free) {
                slot = slots[i];
                have_free = true;
            }
        } else if (field_eq(ti.label, sizeof(ti.label), label, label_len)) {
            err = AGW_ERR_EXISTS;
            goto fail;
        }
    }
    err = AGW_ERR_HSM_UNAVAILABLE; /* no free slot */
    if (!have_free)
        goto fail;
    rv = p.f->C_InitToken(slot, (CK_UTF8CHAR_PTR)(uintptr_t)so_pin, (CK_ULONG)so_len, padded);
    if (rv != CKR_OK) {
        err = ckr_err(rv);
        goto fail;
    }
    /* SoftHSM moves the new token to a new slot id and adds a fresh free slot: look again. */
    err = find_token(&p, label, &slot);
    if (err != 0) {
        err = AGW_ERR_HSM_UNAVAILABLE;
        goto fail;
    }
    rv = p.f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &p.sess);
    if (rv != CKR_OK) {
        err = ckr_err(rv);
        goto fail;
    }
    p.have_sess = true;
    rv = p.f->C_Login(p.sess, CKU_SO, (CK_UTF8CHAR_PTR)(uintptr_t)so_pin, (CK_ULONG)so_len);
    if (rv != CKR_OK) {
        err = ckr_err(rv);
        goto fail;
    }
    p.logged_in = true;
    rv = p.f->C_InitPIN(p.sess, (CK_UTF8CHAR_PTR)(uintptr_t)user_pin, (CK_ULONG)user_len);
    err = ckr_err(rv);
fail:
    free(slots);
    p11_close(&p);
    return err;
}

/* ---------------------------------------------------------------- objects */

/* Number of objects matching the template, capped at 1 (we only ask "is there any?"). */
static int find_first(struct p11 *p, CK_ATTRIBUTE *tmpl, CK_ULONG n_tmpl, CK_OBJECT_HANDLE *obj,
                      bool *found)
{
    CK_ULONG n = 0;
    CK_RV rv;

    *found = false;
    rv = p->f->C_FindObjectsInit(p->sess, tmpl, n_tmpl);
    if (rv != CKR_OK)
        return ckr_err(rv);
    rv = p->f->C_FindObjects(p->sess, obj, 1, &n);
    (void)p->f->C_FindObjectsFinal(p->sess);
    if (rv != CKR_OK)
        return ckr_err(rv);
    *found = n > 0;
    return 0;
}

/* Reads one variable-length attribute. *out owned by the caller (free); rv is the module's answer.
 */
static CK_RV attr_get(struct p11 *p, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
                      unsigned char **out, size_t *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv;

    *out = NULL;
    *len = 0;
    rv = p->f->C_GetAttributeValue(p->sess, obj, &a, 1);
    if (rv != CKR_OK)
        return rv;
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0 ||
        a.ulValueLen > MAX_ATTR_LEN)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    a.pValue = malloc(a.ulValueLen);
    if (a.pValue == NULL)
        return CKR_HOST_MEMORY;
    rv = p->f->C_GetAttributeValue(p->sess, obj, &a, 1);
    if (rv != CKR_OK) {
        free(a.pValue);
        return rv;
    }
    *out = a.pValue;
    *len = a.ulValueLen;
    return CKR_OK;
}

static bool attr_bool(struct p11 *p, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE a = {type, &v, sizeof(v)};

    if (p->f->C_GetAttributeValue(p->sess, obj, &a, 1) != CKR_OK || a.ulValueLen != sizeof(v))
        return false;
    return v == CK_TRUE;
}

/* ---------------------------------------------------------------- public key -> SPKI DER */

static int spki_from_pkey(EVP_PKEY *pkey, unsigned char **der, size_t *len)
{
    unsigned char *buf = NULL;
    int n = i2d_PUBKEY(pkey, &buf);

    if (n <= 0)
        return AGW_ERR_INTERNAL;
    *der = buf;
    *len = (size_t)n;
    return 0;
}

static int fromdata(const char *type, OSSL_PARAM_BLD *bld, EVP_PKEY **out)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = NULL;
    int err = AGW_ERR_NOMEM;

    *out = NULL;
    if (params == NULL)
        goto fail;
    ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (ctx == NULL)
        goto fail;
    err = AGW_ERR_BAD_PUBLIC_KEY;
    if (EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        goto fail;
    err = 0;
fail:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return err;
}

/* ec_point is CKA_EC_POINT: a DER OCTET STRING around the uncompressed point (some modules give
 * the bare point; both are accepted). */
static int ec_spki(enum hsm_key_alg alg, const unsigned char *ec_point, size_t point_len,
                   unsigned char **der, size_t *len)
{
    const char *group = alg == HSM_KEY_EC_P384 ? "secp384r1" : "prime256v1";
    size_t coord = alg == HSM_KEY_EC_P384 ? 48 : 32;
    const unsigned char *q = ec_point;
    ASN1_OCTET_STRING *os = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;
    const unsigned char *pt = ec_point;
    size_t pt_len = point_len;
    int err = AGW_ERR_BAD_PUBLIC_KEY;

    if (point_len > LONG_MAX)
        return AGW_ERR_BAD_PUBLIC_KEY;
    if (!(point_len == 2 * coord + 1 && ec_point[0] == 0x04)) {
        os = d2i_ASN1_OCTET_STRING(NULL, &q, (long)point_len);
        if (os == NULL || q != ec_point + point_len)
            goto fail;
        pt = ASN1_STRING_get0_data(os);
        pt_len = (size_t)ASN1_STRING_length(os);
    }
    if (pt_len != 2 * coord + 1 || pt[0] != 0x04)
        goto fail;
    err = AGW_ERR_NOMEM;
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, pt_len))
        goto fail;
    err = fromdata("EC", bld, &pkey);
    if (err == 0)
        err = spki_from_pkey(pkey, der, len);
fail:
    EVP_PKEY_free(pkey);
    OSSL_PARAM_BLD_free(bld);
    ASN1_OCTET_STRING_free(os);
    return err;
}

static int rsa_spki(const unsigned char *mod, size_t mod_len, const unsigned char *exp,
                    size_t exp_len, unsigned char **der, size_t *len)
{
    OSSL_PARAM_BLD *bld = NULL;
    BIGNUM *n = NULL, *e = NULL;
    EVP_PKEY *pkey = NULL;
    int err = AGW_ERR_NOMEM;

    if (mod_len > INT_MAX || exp_len > INT_MAX)
        return AGW_ERR_BAD_PUBLIC_KEY;
    n = BN_bin2bn(mod, (int)mod_len, NULL);
    e = BN_bin2bn(exp, (int)exp_len, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (n == NULL || e == NULL || bld == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
        goto fail;
    err = fromdata("RSA", bld, &pkey);
    if (err == 0)
        err = spki_from_pkey(pkey, der, len);
fail:
    EVP_PKEY_free(pkey);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return err;
}

/* SPKI DER of a public key object (or, for RSA, of a private key object: modulus and public
 * exponent are public attributes). */
static int object_spki(struct p11 *p, CK_OBJECT_HANDLE obj, enum hsm_key_alg alg,
                       unsigned char **der, size_t *len)
{
    unsigned char *a = NULL, *b = NULL;
    size_t a_len = 0, b_len = 0;
    CK_RV rv;
    int err;

    if (alg == HSM_KEY_EC_P256 || alg == HSM_KEY_EC_P384) {
        rv = attr_get(p, obj, CKA_EC_POINT, &a, &a_len);
        err = rv == CKR_OK ? ec_spki(alg, a, a_len, der, len) : ckr_err(rv);
    } else {
        rv = attr_get(p, obj, CKA_MODULUS, &a, &a_len);
        if (rv == CKR_OK)
            rv = attr_get(p, obj, CKA_PUBLIC_EXPONENT, &b, &b_len);
        err = rv == CKR_OK ? rsa_spki(a, a_len, b, b_len, der, len) : ckr_err(rv);
    }
    free(a);
    free(b);
    return err;
}

/* ---------------------------------------------------------------- key generation */

static bool id_ok(const unsigned char *id, size_t id_len)
{
    return id != NULL && id_len > 0 && id_len <= MAX_ID_LEN;
}

int hsm_key_generate(const struct hsm_token_ref *ref, const char *pin, enum hsm_key_alg alg,
                     const char *label, const unsigned char *id, size_t id_len,
                     unsigned char **pub_der, size_t *pub_len)
{
    static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    static const CK_BYTE exponent[] = {0x01, 0x00, 0x01};
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 0, label_len;
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE, found_obj;
    CK_ATTRIBUTE pub_tmpl[8], priv_tmpl[12], q[1];
    CK_ULONG n_pub = 0, n_priv = 0;
    bool found;
    struct p11 p;
    CK_RV rv;
    int err;

    if (pub_der == NULL || pub_len == NULL)
        return AGW_ERR_BAD_INPUT;
    *pub_der = NULL;
    *pub_len = 0;
    if (!label_ok(label, MAX_KEY_LABEL) || !id_ok(id, id_len))
        return AGW_ERR_BAD_INPUT;
    switch (alg) {
    case HSM_KEY_EC_P256:
    case HSM_KEY_EC_P384:
        break;
    case HSM_KEY_RSA_2048:
        bits = 2048;
        break;
    case HSM_KEY_RSA_3072:
        bits = 3072;
        break;
    case HSM_KEY_RSA_4096:
        bits = 4096;
        break;
    default:
        return AGW_ERR_BAD_INPUT;
    }
    label_len = (CK_ULONG)strlen(label);

    err = open_user(ref, pin, true, &p);
    if (err != 0)
        return err == AGW_ERR_NOT_FOUND ? AGW_ERR_HSM_UNAVAILABLE : err;

    /* Refuse to add a second key under a taken label or id: nothing is created then. */
    q[0] = (CK_ATTRIBUTE){CKA_LABEL, (void *)(uintptr_t)label, label_len};
    err = find_first(&p, q, 1, &found_obj, &found);
    if (err == 0 && !found) {
        q[0] = (CK_ATTRIBUTE){CKA_ID, (void *)(uintptr_t)id, (CK_ULONG)id_len};
        err = find_first(&p, q, 1, &found_obj, &found);
    }
    if (err != 0)
        goto fail;
    if (found) {
        err = AGW_ERR_EXISTS;
        goto fail;
    }

#define PUB(ty, v, l) pub_tmpl[n_pub++] = (CK_ATTRIBUTE){(ty), (void *)(uintptr_t)(v), (l)}
#define PRIV(ty, v, l)                                                                             \
    priv_tmpl[n_priv++] = (CK_ATTRIBUTE)                                                           \
    {                                                                                              \
        (ty), (void *)(uintptr_t)(v), (l)                                                          \
    }
    PUB(CKA_TOKEN, &yes, sizeof(yes));
    PUB(CKA_VERIFY, &yes, sizeof(yes));
    PUB(CKA_ENCRYPT, &no, sizeof(no));
    PUB(CKA_WRAP, &no, sizeof(no));
    PUB(CKA_LABEL, label, label_len);
    PUB(CKA_ID, id, id_len);
    if (bits == 0) {
        if (alg == HSM_KEY_EC_P384)
            PUB(CKA_EC_PARAMS, oid_p384, sizeof(oid_p384));
        else
            PUB(CKA_EC_PARAMS, oid_p256, sizeof(oid_p256));
    } else {
        mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
        PUB(CKA_MODULUS_BITS, &bits, sizeof(bits));
        PUB(CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent));
    }
    PRIV(CKA_TOKEN, &yes, sizeof(yes));
    PRIV(CKA_PRIVATE, &yes, sizeof(yes));
    PRIV(CKA_SENSITIVE, &yes, sizeof(yes));
    PRIV(CKA_EXTRACTABLE, &no, sizeof(no));
    PRIV(CKA_SIGN, &yes, sizeof(yes));
    PRIV(CKA_DECRYPT, &no, sizeof(no));
    PRIV(CKA_UNWRAP, &no, sizeof(no));
    PRIV(CKA_DERIVE, &no, sizeof(no));
    PRIV(CKA_LABEL, label, label_len);
    PRIV(CKA_ID, id, id_len);
#undef PUB
#undef PRIV
    rv = p.f->C_GenerateKeyPair(p.sess, &mech, pub_tmpl, n_pub, priv_tmpl, n_priv, &pub, &priv);
    if (rv != CKR_OK) {
        err = ckr_err(rv);
        goto fail;
    }
    err = object_spki(&p, pub, alg, pub_der, pub_len);
    if (err != 0) {
        /* A key without a usable public half is worthless: take both halves out again. */
        (void)p.f->C_DestroyObject(p.sess, priv);
        (void)p.f->C_DestroyObject(p.sess, pub);
    }
fail:
    p11_close(&p);
    return err;
}

/* ---------------------------------------------------------------- read-back */

static int key_alg(struct p11 *p, CK_OBJECT_HANDLE priv, enum hsm_key_alg *alg)
{
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE a = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    unsigned char *v = NULL;
    size_t len = 0;
    CK_RV rv;
    int err = AGW_ERR_BAD_PUBLIC_KEY;

    rv = p->f->C_GetAttributeValue(p->sess, priv, &a, 1);
    if (rv != CKR_OK)
        return ckr_err(rv);
    if (kt == CKK_EC) {
        rv = attr_get(p, priv, CKA_EC_PARAMS, &v, &len);
        if (rv != CKR_OK)
            return ckr_err(rv);
        if (len == sizeof(oid_p256) && memcmp(v, oid_p256, len) == 0) {
            *alg = HSM_KEY_EC_P256;
            err = 0;
        } else if (len == sizeof(oid_p384) && memcmp(v, oid_p384, len) == 0) {
            *alg = HSM_KEY_EC_P384;
            err = 0;
        }
    } else if (kt == CKK_RSA) {
        size_t bits;

        rv = attr_get(p, priv, CKA_MODULUS, &v, &len);
        if (rv != CKR_OK)
            return ckr_err(rv);
        while (len > 0 && v[0] == 0) /* leading zero bytes do not count */
            memmove(v, v + 1, --len);
        bits = len * 8;
        err = 0;
        if (bits == 2048)
            *alg = HSM_KEY_RSA_2048;
        else if (bits == 3072)
            *alg = HSM_KEY_RSA_3072;
        else if (bits == 4096)
            *alg = HSM_KEY_RSA_4096;
        else
            err = AGW_ERR_BAD_PUBLIC_KEY;
    }
    free(v);
    return err;
}

int hsm_key_attrs_read(const struct hsm_token_ref *ref, const char *pin, const char *label,
                       const unsigned char *id, size_t id_len, struct hsm_key_attrs *out,
                       unsigned char **pub_der, size_t *pub_len)
{
    CK_OBJECT_CLASS priv_class = CKO_PRIVATE_KEY, pub_class = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE q[3];
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE, pub = CK_INVALID_HANDLE;
    unsigned char *val = NULL, *key_id = NULL;
    size_t val_len = 0, key_id_len = 0;
    bool found;
    struct p11 p;
    CK_RV rv;
    int err;

    if (pub_der != NULL)
        *pub_der = NULL;
    if (pub_len != NULL)
        *pub_len = 0;
    if (out == NULL || !label_ok(label, MAX_KEY_LABEL) || (id != NULL && !id_ok(id, id_len)) ||
        (pub_der != NULL && pub_len == NULL))
        return AGW_ERR_BAD_INPUT;
    memset(out, 0, sizeof(*out));
    err = open_user(ref, pin, false, &p);
    if (err != 0)
        return err;

    q[0] = (CK_ATTRIBUTE){CKA_CLASS, &priv_class, sizeof(priv_class)};
    q[1] = (CK_ATTRIBUTE){CKA_LABEL, (void *)(uintptr_t)label, (CK_ULONG)strlen(label)};
    q[2] = (CK_ATTRIBUTE){CKA_ID, (void *)(uintptr_t)id, (CK_ULONG)id_len};
    err = find_first(&p, q, id != NULL ? 3 : 2, &priv, &found);
    if (err == 0 && !found)
        err = AGW_ERR_NOT_FOUND;
    if (err != 0)
        goto fail;

    out->token = attr_bool(&p, priv, CKA_TOKEN);
    out->is_private = attr_bool(&p, priv, CKA_PRIVATE);
    out->sensitive = attr_bool(&p, priv, CKA_SENSITIVE);
    out->extractable = attr_bool(&p, priv, CKA_EXTRACTABLE);
    out->always_sensitive = attr_bool(&p, priv, CKA_ALWAYS_SENSITIVE);
    out->never_extractable = attr_bool(&p, priv, CKA_NEVER_EXTRACTABLE);
    out->local = attr_bool(&p, priv, CKA_LOCAL);
    out->sign = attr_bool(&p, priv, CKA_SIGN);
    out->decrypt = attr_bool(&p, priv, CKA_DECRYPT);
    out->unwrap = attr_bool(&p, priv, CKA_UNWRAP);
    out->derive = attr_bool(&p, priv, CKA_DERIVE);
    err = key_alg(&p, priv, &out->alg);
    if (err != 0)
        goto fail;
    /* The secret half must stay inside: expect CKR_ATTRIBUTE_SENSITIVE here. */
    rv = attr_get(&p, priv,
                  out->alg == HSM_KEY_EC_P256 || out->alg == HSM_KEY_EC_P384 ? CKA_VALUE
                                                                             : CKA_PRIVATE_EXPONENT,
                  &val, &val_len);
    out->value_readable = rv == CKR_OK;
    if (val != NULL) {
        OPENSSL_cleanse(val, val_len);
        free(val);
    }
    if (pub_der == NULL)
        goto fail; /* done: err is 0 */

    /* The public half: the public object with the private key's id (and label). */
    rv = attr_get(&p, priv, CKA_ID, &key_id, &key_id_len);
    q[0] = (CK_ATTRIBUTE){CKA_CLASS, &pub_class, sizeof(pub_class)};
    if (rv == CKR_OK) {
        q[2] = (CK_ATTRIBUTE){CKA_ID, key_id, (CK_ULONG)key_id_len};
        err = find_first(&p, q, 3, &pub, &found);
    } else {
        err = find_first(&p, q, 2, &pub, &found);
    }
    if (err != 0)
        goto fail;
    if (found)
        err = object_spki(&p, pub, out->alg, pub_der, pub_len);
    else if (out->alg == HSM_KEY_EC_P256 || out->alg == HSM_KEY_EC_P384)
        err = AGW_ERR_NOT_FOUND; /* an EC private key does not carry its point */
    else
        err = object_spki(&p, priv, out->alg, pub_der, pub_len);
fail:
    free(key_id);
    p11_close(&p);
    return err;
}

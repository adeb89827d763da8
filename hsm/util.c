/*
 * hsm/util.c - small pure helpers of hsm/: key algorithm names, reading a PIN, matching a token
 * against a label or an RFC 7512 pkcs11: URI.
 *
 * A PIN is read from a file or the environment, never argv (visible in ps). The copy we return
 * and every buffer it passed through are wiped with OPENSSL_cleanse(); the file is read without
 * stdio buffering so no second copy sits in a FILE buffer.
 *
 * Token references (RFC 7512 §2.3): "pkcs11:token=CA%20one;serial=1234" picks a token by its
 * CK_TOKEN_INFO fields. Only the four token attributes mean anything here; object=, id= and type=
 * name objects, and the key is named separately in struct hsm_config, so they are ignored, as is
 * the query part (?pin-value= would be a PIN in a config file: we never read it).
 */
#include "hsm/hsm.h"

#include "common/err.h"
#include "hsm/internal.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#define HSM_MAX_SECRET_LEN    256  /* bytes of a PIN, after the line end is stripped */
#define HSM_MAX_TOKEN_REF_LEN 1024 /* a whole token reference */
#define HSM_MAX_URI_VALUE_LEN 64   /* a decoded attribute; CK_TOKEN_INFO fields are <= 32 */

/* ---------------------------------------------------------------- key algorithms */

static const struct {
    enum hsm_key_alg alg;
    const char *name;
} key_alg_rows[] = {
    {HSM_KEY_EC_P256, "ec-p256"},   {HSM_KEY_EC_P384, "ec-p384"},   {HSM_KEY_RSA_2048, "rsa-2048"},
    {HSM_KEY_RSA_3072, "rsa-3072"}, {HSM_KEY_RSA_4096, "rsa-4096"},
};

int hsm_key_alg_parse(const char *name, enum hsm_key_alg *out)
{
    size_t i;

    if (name == NULL)
        return AGW_ERR_BAD_INPUT;
    for (i = 0; i < sizeof(key_alg_rows) / sizeof(key_alg_rows[0]); i++) {
        if (strcmp(name, key_alg_rows[i].name) == 0) {
            *out = key_alg_rows[i].alg;
            return 0;
        }
    }
    return AGW_ERR_BAD_INPUT;
}

const char *hsm_key_alg_name(enum hsm_key_alg alg)
{
    size_t i;

    for (i = 0; i < sizeof(key_alg_rows) / sizeof(key_alg_rows[0]); i++) {
        if (key_alg_rows[i].alg == alg)
            return key_alg_rows[i].name;
    }
    return "unknown";
}

/* ---------------------------------------------------------------- secrets */

/* Strips the line end of buf[0..len) and copies it out. buf is wiped by the caller. */
static int secret_copy(const char *buf, size_t len, char **out)
{
    char *s;

    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    if (len == 0 || len > HSM_MAX_SECRET_LEN || memchr(buf, '\0', len) != NULL)
        return AGW_ERR_BAD_INPUT;
    s = malloc(len + 1);
    if (s == NULL)
        return AGW_ERR_NOMEM;
    memcpy(s, buf, len);
    s[len] = '\0';
    *out = s;
    return 0;
}

int hsm_secret_read(const char *path, const char *env_name, char **out)
{
    char buf[HSM_MAX_SECRET_LEN + 2]; /* room for a '\r' and one byte to tell "too long" */
    const char *nl;
    size_t len;
    FILE *f = NULL;
    int err;

    *out = NULL;
    if (path == NULL) {
        const char *v = env_name != NULL ? getenv(env_name) : NULL;

        if (v == NULL)
            return AGW_ERR_BAD_INPUT;
        len = strnlen(v, sizeof(buf));
        if (len == sizeof(buf))
            return AGW_ERR_BAD_INPUT;
        return secret_copy(v, len, out);
    }
    f = fopen(path, "rb");
    if (f == NULL)
        return AGW_ERR_IO;
    err = AGW_ERR_IO;
    if (setvbuf(f, NULL, _IONBF, 0) != 0) /* no copy of the PIN in a stdio buffer */
        goto fail;
    len = fread(buf, 1, sizeof(buf), f);
    if (ferror(f))
        goto fail;
    nl = memchr(buf, '\n', len);
    err = AGW_ERR_BAD_INPUT;
    if (nl == NULL && len == sizeof(buf))
        goto fail; /* first line longer than the cap */
    if (nl != NULL)
        len = (size_t)(nl - buf);
    err = secret_copy(buf, len, out);
fail:
    OPENSSL_cleanse(buf, sizeof(buf));
    fclose(f);
    return err;
}

void hsm_secret_free(char *secret)
{
    if (secret == NULL)
        return;
    OPENSSL_cleanse(secret, strlen(secret));
    free(secret);
}

/* ---------------------------------------------------------------- token reference */

static size_t unpadded_len(const char *s, size_t len)
{
    while (len > 0 && s[len - 1] == ' ')
        len--;
    return len;
}

/* want[0..want_len) against a token field, both without PKCS#11 space padding. */
static bool field_eq(const char *want, size_t want_len, const char *have)
{
    size_t have_len;

    if (have == NULL)
        return false;
    have_len = unpadded_len(have, strlen(have));
    want_len = unpadded_len(want, want_len);
    return want_len == have_len && memcmp(want, have, want_len) == 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RFC 3986 percent-decoding of src[0..len) into out; %00 and overlong values are refused. */
static int pct_decode(const char *src, size_t len, char *out, size_t out_size, size_t *out_len)
{
    size_t i, n = 0;

    for (i = 0; i < len; i++) {
        int c = (unsigned char)src[i];

        if (c == '%') {
            int hi, lo;

            if (len - i < 3)
                return AGW_ERR_BAD_INPUT;
            hi = hex_digit(src[i + 1]);
            lo = hex_digit(src[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return AGW_ERR_BAD_INPUT;
            c = hi * 16 + lo;
            i += 2;
        }
        if (n == out_size)
            return AGW_ERR_BAD_INPUT;
        out[n++] = (char)c;
    }
    *out_len = n;
    return 0;
}

int hsm_token_match(const char *token_ref, const char *label, const char *serial,
                    const char *manufacturer, const char *model)
{
    static const char *const names[] = {"token", "serial", "manufacturer", "model"};
    const char *fields[] = {label, serial, manufacturer, model};
    bool seen[4] = {false, false, false, false};
    bool match = true;
    const char *p, *end;
    size_t ref_len;

    if (token_ref == NULL)
        return AGW_ERR_BAD_INPUT;
    ref_len = strnlen(token_ref, HSM_MAX_TOKEN_REF_LEN + 1);
    if (ref_len == 0 || ref_len > HSM_MAX_TOKEN_REF_LEN)
        return AGW_ERR_BAD_INPUT;
    if (strncasecmp(token_ref, "pkcs11:", 7) != 0) /* the scheme is case-insensitive */
        return field_eq(token_ref, ref_len, label) ? 1 : 0;

    p = token_ref + 7;
    end = p + strcspn(p, "?"); /* the query holds no token attributes */
    while (p < end) {
        const char *attr_end = memchr(p, ';', (size_t)(end - p));
        const char *eq;
        size_t i;

        if (attr_end == NULL)
            attr_end = end;
        eq = memchr(p, '=', (size_t)(attr_end - p));
        if (eq == NULL || eq == p)
            return AGW_ERR_BAD_INPUT;
        for (i = 0; i < 4; i++) {
            if ((size_t)(eq - p) == strlen(names[i]) && memcmp(p, names[i], strlen(names[i])) == 0)
                break;
        }
        if (i < 4) {
            char value[HSM_MAX_URI_VALUE_LEN];
            size_t value_len;
            int err;

            if (seen[i]) /* §2.3: an attribute may appear once */
                return AGW_ERR_BAD_INPUT;
            seen[i] = true;
            err = pct_decode(eq + 1, (size_t)(attr_end - eq - 1), value, sizeof(value), &value_len);
            if (err != 0)
                return err;
            if (!field_eq(value, value_len, fields[i]))
                match = false; /* keep parsing: a malformed tail is still an error */
        }
        p = attr_end < end ? attr_end + 1 : end;
    }
    return match ? 1 : 0;
}

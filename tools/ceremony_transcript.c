/*
 * tools/ceremony_transcript.c - the ceremony transcript: JSON lines, a hash chain, signed steps.
 *
 * Each line is one compact JSON object with sorted keys (so the line is canonical: parsing and
 * dumping it again gives the same bytes, which verify-transcript checks). Every line carries
 * "prev", the SHA-256 of the previous line (without its newline; 64 zeros on the first line).
 *
 * The last line of a step that used a key is a signature line:
 *   {"attestation": base64 DER certificate, "digest": SHA-256 of every byte before this line,
 *    "prev": ..., "step": ..., "timestamp": the attestation's notBefore, "type": "signature"}
 * hsm.h signs only certificates and CRLs, so the digest travels in a throwaway "attestation"
 * certificate: subject CN "acmegw transcript", issuer the same name (or, when the signer holds a
 * CA certificate, that certificate's subject, which the signer insists on), the step key's own
 * public key, one day
 * of validity, and the hex digest in a private extension (CER_DIGEST_OID, OCTET STRING). The token
 * signs it through the ordinary hsm_call(HSM_OP_SIGN_CERT) path. The certificate is never used for
 * anything else: its only reader is verify-transcript, which checks the extension against the
 * digest it recomputes and the signature against the public key recorded for that step.
 *
 * Because each line is hashed into the next and into every later signature digest, and the fields
 * of a signature line are each rederived during verification, a change of any byte fails.
 */
#include "tools/ceremony.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/err.h"

#define MAX_TRANSCRIPT (64u * 1024 * 1024)
#define JSON_FLAGS     (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)

void cer_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];

    EVP_Digest(data, len, md, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static int read_all(const char *path, unsigned char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0;

    *out = NULL;
    *len = 0;
    if (f == NULL)
        return -1;
    for (;;) {
        size_t got;
        if (n == cap) {
            unsigned char *nb;
            if (cap >= MAX_TRANSCRIPT)
                goto fail;
            cap = cap == 0 ? 65536 : cap * 2;
            nb = realloc(buf, cap);
            if (nb == NULL)
                goto fail;
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f))
        goto fail;
    fclose(f);
    *out = buf;
    *len = n;
    return 0;
fail:
    fclose(f);
    free(buf);
    return -1;
}

int cer_file_sha256(const char *path, char out[65])
{
    unsigned char *data;
    size_t len;

    if (read_all(path, &data, &len) != 0)
        return -1;
    cer_sha256_hex(data, len, out);
    free(data);
    return 0;
}

char *cer_b64(const unsigned char *data, size_t len)
{
    char *out;

    if (len > (size_t)INT32_MAX / 2)
        return NULL;
    out = malloc(4 * ((len + 2) / 3) + 1);
    if (out != NULL)
        EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* Strict base64 decode: the result must encode back to exactly s. *out malloc'd. */
static int unb64(const char *s, unsigned char **out, size_t *len)
{
    size_t sl = strlen(s);
    unsigned char *buf;
    char *again;
    int n, ok;

    *out = NULL;
    if (sl == 0 || sl % 4 != 0 || sl > MAX_TRANSCRIPT)
        return -1;
    buf = malloc(sl / 4 * 3 + 1);
    if (buf == NULL)
        return -1;
    n = EVP_DecodeBlock(buf, (const unsigned char *)s, (int)sl);
    if (n < 0) {
        free(buf);
        return -1;
    }
    /* EVP_DecodeBlock keeps the padding bytes: drop one per '=' */
    if (s[sl - 1] == '=')
        n--;
    if (s[sl - 2] == '=')
        n--;
    again = cer_b64(buf, (size_t)n);
    ok = again != NULL && strcmp(again, s) == 0;
    free(again);
    if (!ok) {
        free(buf);
        return -1;
    }
    *out = buf;
    *len = (size_t)n;
    return 0;
}

void cer_rfc3339(time_t t, char out[32])
{
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---------------------------------------------------------------- writing */

int cer_transcript_open(struct cer_transcript *t, const char *path)
{
    memset(t, 0, sizeof(*t));
    t->path = strdup(path);
    if (t->path == NULL) {
        cer_error("out of memory");
        return -1;
    }
    if (access(path, F_OK) == 0) {
        if (read_all(path, &t->data, &t->len) != 0) {
            cer_error("%s: cannot read transcript", path);
            return -1;
        }
        if (t->len > 0 && t->data[t->len - 1] != '\n') {
            cer_error("%s: transcript does not end with a newline (truncated?)", path);
            return -1;
        }
    }
    return 0;
}

void cer_transcript_close(struct cer_transcript *t)
{
    free(t->path);
    free(t->data);
    memset(t, 0, sizeof(*t));
}

/* SHA-256 hex of the last line of data (without its newline), or 64 zeros. */
static void last_line_hash(const unsigned char *data, size_t len, char out[65])
{
    size_t end, start;

    if (len == 0) {
        memset(out, '0', 64);
        out[64] = '\0';
        return;
    }
    end = len - 1; /* the '\n' */
    start = end;
    while (start > 0 && data[start - 1] != '\n')
        start--;
    cer_sha256_hex(data + start, end - start, out);
}

int cer_transcript_append(struct cer_transcript *t, json_t *obj)
{
    char prev[65];
    char *line = NULL;
    unsigned char *nd;
    size_t ll;
    int fd = -1, rc = -1;

    last_line_hash(t->data, t->len, prev);
    if (obj == NULL || json_object_set_new(obj, "prev", json_string(prev)) != 0)
        goto fail;
    line = json_dumps(obj, JSON_FLAGS);
    if (line == NULL)
        goto fail;
    ll = strlen(line);
    nd = realloc(t->data, t->len + ll + 1);
    if (nd == NULL)
        goto fail;
    t->data = nd;
    memcpy(t->data + t->len, line, ll);
    t->data[t->len + ll] = '\n';
    fd = open(t->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        cer_error("%s: cannot open transcript: %s", t->path, strerror(errno));
        goto out;
    }
    if (write(fd, t->data + t->len, ll + 1) != (ssize_t)(ll + 1) || fsync(fd) != 0) {
        cer_error("%s: cannot write transcript: %s", t->path, strerror(errno));
        goto out;
    }
    t->len += ll + 1;
    rc = 0;
    goto out;
fail:
    cer_error("out of memory writing the transcript");
out:
    if (fd >= 0)
        close(fd);
    free(line);
    json_decref(obj);
    return rc;
}

/* ---------------------------------------------------------------- attestation certificate */

static X509_NAME *attest_name(void)
{
    X509_NAME *n = X509_NAME_new();

    if (n != NULL &&
        !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                                    (const unsigned char *)"acmegw transcript", -1, -1, 0)) {
        X509_NAME_free(n);
        n = NULL;
    }
    return n;
}

static int add_digest_ext(X509 *x, const char *digest_hex)
{
    ASN1_OBJECT *obj = OBJ_txt2obj(CER_DIGEST_OID, 1);
    ASN1_OCTET_STRING *val = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING *wrapped = NULL;
    unsigned char *der = NULL;
    X509_EXTENSION *ext = NULL;
    int n, rc = -1;

    if (obj == NULL || val == NULL ||
        !ASN1_OCTET_STRING_set(val, (const unsigned char *)digest_hex, (int)strlen(digest_hex)))
        goto out;
    n = i2d_ASN1_OCTET_STRING(val, &der);
    wrapped = ASN1_OCTET_STRING_new();
    if (n <= 0 || wrapped == NULL || !ASN1_OCTET_STRING_set(wrapped, der, n))
        goto out;
    ext = X509_EXTENSION_create_by_OBJ(NULL, obj, 0, wrapped);
    if (ext != NULL && X509_add_ext(x, ext, -1))
        rc = 0;
out:
    X509_EXTENSION_free(ext);
    ASN1_OCTET_STRING_free(wrapped);
    OPENSSL_free(der);
    ASN1_OCTET_STRING_free(val);
    ASN1_OBJECT_free(obj);
    return rc;
}

/* The hex digest in the extension, copied to out; 0 or -1. */
static int read_digest_ext(const X509 *x, char out[65])
{
    ASN1_OBJECT *obj = OBJ_txt2obj(CER_DIGEST_OID, 1);
    int idx = obj != NULL ? X509_get_ext_by_OBJ(x, obj, -1) : -1;
    const ASN1_OCTET_STRING *data;
    ASN1_OCTET_STRING *inner = NULL;
    const unsigned char *p;
    int rc = -1;

    ASN1_OBJECT_free(obj);
    if (idx < 0)
        return -1;
    data = X509_EXTENSION_get_data(X509_get_ext(x, idx));
    p = ASN1_STRING_get0_data(data);
    inner = d2i_ASN1_OCTET_STRING(NULL, &p, ASN1_STRING_length(data));
    if (inner != NULL && ASN1_STRING_length(inner) == 64) {
        memcpy(out, ASN1_STRING_get0_data(inner), 64);
        out[64] = '\0';
        rc = 0;
    }
    ASN1_OCTET_STRING_free(inner);
    return rc;
}

int cer_transcript_sign(struct cer_transcript *t, const char *step, struct hsm_signer *s)
{
    struct hsm_request req = {HSM_OP_SIGN_CERT, NULL, NULL, 0};
    struct hsm_response resp = {0, NULL, 0};
    unsigned char *pub = NULL, *tbs = NULL, serial[16];
    const unsigned char *q;
    size_t pub_len = 0, tbs_len = 0;
    char digest[65], when[32];
    X509_NAME *name = NULL;
    EVP_PKEY *pkey = NULL;
    BIGNUM *bn = NULL;
    X509 *x = NULL;
    char *b64 = NULL;
    json_t *line;
    time_t now = time(NULL);
    int rc = -1;

    cer_sha256_hex(t->data, t->len, digest);
    if (hsm_signer_pubkey(s, &pub, &pub_len) != 0) {
        cer_error("transcript: cannot read the signing key's public key");
        goto out;
    }
    q = pub;
    pkey = d2i_PUBKEY(NULL, &q, (long)pub_len);
    x = X509_new();
    name = attest_name();
    bn = BN_new();
    if (pkey == NULL || x == NULL || name == NULL || bn == NULL ||
        RAND_bytes(serial, sizeof(serial)) != 1)
        goto oom;
    serial[0] &= 0x7f;
    if (!X509_set_version(x, X509_VERSION_3) || BN_bin2bn(serial, sizeof(serial), bn) == NULL ||
        BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL ||
        !X509_set_subject_name(x, name) ||
        /* the signer refuses a certificate not issued under its CA's name (when it has one) */
        !X509_set_issuer_name(
            x, hsm_ca_cert(s) != NULL ? X509_get_subject_name((X509 *)hsm_ca_cert(s)) : name) ||
        X509_time_adj_ex(X509_getm_notBefore(x), 0, 0, &now) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), 1, 0, &now) == NULL || !X509_set_pubkey(x, pkey) ||
        add_digest_ext(x, digest) != 0)
        goto oom;
    if (hsm_tbs_cert(s, x, &tbs, &tbs_len) != 0)
        goto oom;
    req.tbs_der = tbs;
    req.tbs_len = tbs_len;
    if (hsm_call(s, &req, &resp) != 0) {
        cer_error("transcript: signing the transcript digest failed: %s", agw_err_str(resp.err));
        goto out;
    }
    b64 = cer_b64(resp.der, resp.der_len);
    if (b64 == NULL)
        goto oom;
    cer_rfc3339(now, when);
    line = json_pack("{s:s, s:s, s:s, s:s, s:s}", "type", "signature", "step", step, "timestamp",
                     when, "digest", digest, "attestation", b64);
    rc = cer_transcript_append(t, line);
    goto out;
oom:
    cer_error("transcript: cannot build the attestation certificate");
out:
    free(b64);
    free(resp.der);
    OPENSSL_free(tbs);
    OPENSSL_free(pub);
    BN_free(bn);
    X509_NAME_free(name);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return rc;
}

/* ---------------------------------------------------------------- verify-transcript */

static int fail_line(const char *path, size_t lineno, const char *what)
{
    fprintf(stderr, "acmegw-ceremony: %s:%zu: %s\n", path, lineno, what);
    return 1;
}

/* Checks one signature line against digest (of all bytes before it) and the step's key. */
static const char *check_signature(json_t *o, const char *digest, const char *step,
                                   const char *pub_b64)
{
    const char *att = json_string_value(json_object_get(o, "attestation"));
    const char *d = json_string_value(json_object_get(o, "digest"));
    const char *st = json_string_value(json_object_get(o, "step"));
    const char *ts = json_string_value(json_object_get(o, "timestamp"));
    unsigned char *der = NULL, *pub = NULL;
    size_t der_len = 0, pub_len = 0;
    const unsigned char *q;
    const char *why = NULL;
    char ext_digest[65], nb[32];
    EVP_PKEY *pkey = NULL;
    X509 *x = NULL;
    struct tm tm;
    time_t t;

    if (att == NULL || d == NULL || st == NULL || ts == NULL || json_object_size(o) != 6)
        return "malformed signature line";
    if (step == NULL || strcmp(st, step) != 0)
        return "signature line does not follow an event of its step";
    if (pub_b64 == NULL)
        return "no public key recorded for this step";
    if (strcmp(d, digest) != 0)
        return "transcript digest mismatch (lines before the signature changed)";
    if (unb64(att, &der, &der_len) != 0 || unb64(pub_b64, &pub, &pub_len) != 0) {
        why = "bad base64";
        goto out;
    }
    q = der;
    x = d2i_X509(NULL, &q, (long)der_len);
    q = pub;
    pkey = d2i_PUBKEY(NULL, &q, (long)pub_len);
    if (x == NULL || pkey == NULL) {
        why = "cannot decode the attestation or the recorded public key";
        goto out;
    }
    if (read_digest_ext(x, ext_digest) != 0 || strcmp(ext_digest, digest) != 0) {
        why = "attestation does not carry the transcript digest";
        goto out;
    }
    if (X509_verify(x, pkey) != 1) {
        why = "attestation signature does not verify with the step's public key";
        goto out;
    }
    if (ASN1_TIME_to_tm(X509_get0_notBefore(x), &tm) != 1) {
        why = "attestation has a bad time";
        goto out;
    }
    t = timegm(&tm);
    cer_rfc3339(t, nb);
    if (strcmp(nb, ts) != 0)
        why = "signature timestamp does not match the attestation";
out:
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(pkey);
    free(der);
    free(pub);
    return why;
}

int cer_transcript_verify(const char *path)
{
    unsigned char *data = NULL;
    size_t len = 0, pos = 0, lineno = 0;
    size_t n_events = 0, n_sigs = 0, n_files = 0;
    char prev[65], *step = NULL, *pub = NULL;
    int rc = 0;

    if (read_all(path, &data, &len) != 0) {
        fprintf(stderr, "acmegw-ceremony: %s: cannot read transcript\n", path);
        return 1;
    }
    if (len == 0 || data[len - 1] != '\n') {
        free(data);
        fprintf(stderr, "acmegw-ceremony: %s: empty or truncated transcript\n", path);
        return 1;
    }
    memset(prev, '0', 64);
    prev[64] = '\0';
    while (pos < len && rc == 0) {
        unsigned char *nl = memchr(data + pos, '\n', len - pos);
        size_t ll = (size_t)(nl - (data + pos));
        char digest[65], here[65], *again = NULL;
        const char *type, *p, *why = NULL;
        json_error_t jerr;
        json_t *o;

        lineno++;
        cer_sha256_hex(data, pos, digest); /* everything before this line */
        o = json_loadb((const char *)data + pos, ll, JSON_REJECT_DUPLICATES, &jerr);
        if (o == NULL || !json_is_object(o)) {
            json_decref(o);
            rc = fail_line(path, lineno, "not a JSON object");
            break;
        }
        again = json_dumps(o, JSON_FLAGS);
        type = json_string_value(json_object_get(o, "type"));
        p = json_string_value(json_object_get(o, "prev"));
        if (again == NULL || strlen(again) != ll || memcmp(again, data + pos, ll) != 0)
            why = "line is not in canonical form (edited?)";
        else if (p == NULL || strcmp(p, prev) != 0)
            why = "hash chain broken: prev does not match the previous line";
        else if (type != NULL && strcmp(type, "event") == 0) {
            json_t *outs = json_object_get(o, "outputs"), *v;
            const char *st = json_string_value(json_object_get(o, "step"));
            const char *k =
                json_string_value(json_object_get(json_object_get(o, "key"), "public_key"));
            size_t i;

            free(step);
            free(pub);
            step = st != NULL ? strdup(st) : NULL;
            pub = k != NULL ? strdup(k) : NULL;
            n_events++;
            json_array_foreach(outs, i, v)
            {
                const char *fp = json_string_value(json_object_get(v, "path"));
                const char *fh = json_string_value(json_object_get(v, "sha256"));
                char got[65];

                if (fp == NULL || fh == NULL) {
                    why = "malformed outputs entry";
                    break;
                }
                if (cer_file_sha256(fp, got) != 0) {
                    fprintf(stderr,
                            "acmegw-ceremony: %s:%zu: note: %s no longer exists, not checked\n",
                            path, lineno, fp);
                    continue;
                }
                n_files++;
                if (strcmp(got, fh) != 0) {
                    fprintf(stderr, "acmegw-ceremony: %s:%zu: %s: SHA-256 mismatch\n", path, lineno,
                            fp);
                    rc = 1;
                }
            }
        } else if (type != NULL && strcmp(type, "signature") == 0) {
            why = check_signature(o, digest, step, pub);
            n_sigs++;
            free(step);
            step = NULL; /* one signature closes one step */
        } else {
            why = "unknown line type";
        }
        if (why != NULL)
            rc = fail_line(path, lineno, why);
        cer_sha256_hex(data + pos, ll, here);
        memcpy(prev, here, sizeof(prev));
        free(again);
        json_decref(o);
        pos += ll + 1;
    }
    if (rc == 0)
        printf("transcript OK: %zu lines, %zu events, %zu signatures verified, %zu files checked\n",
               lineno, n_events, n_sigs, n_files);
    else
        fprintf(stderr, "acmegw-ceremony: %s: transcript verification FAILED\n", path);
    free(step);
    free(pub);
    free(data);
    return rc;
}

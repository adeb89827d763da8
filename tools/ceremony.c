/*
 * tools/ceremony.c - acmegw-ceremony: key ceremony steps driven by one YAML file each.
 *
 *   acmegw-ceremony run FILE.yaml [--transcript PATH]
 *   acmegw-ceremony verify-transcript FILE
 *
 * Steps: init-token, root, intermediate, crl, verify (docs/ceremony.md walks through them).
 *
 * The order inside a step is fixed so that a mistake changes nothing:
 *   1. parse the file with a strict libcyaml schema (unknown keys are errors, with file:line);
 *   2. validate everything that needs no token: algorithm, id, subject, key usage, CIDRs, PIN
 *      sources readable, input certificates readable, output files absent;
 *   3. checks in the token that change nothing (issuer key and PIN for an intermediate);
 *   4. the one change (token init or key generation), then signing and O_EXCL writes.
 * Every error is one line on stderr and exit code 1 (2 for usage).
 *
 * PKCS#11 phases never overlap: hsm_token_init/hsm_key_generate/hsm_key_attrs_read each load and
 * unload the module on their own; an hsm_signer (libp11) is created only after them and freed
 * before the next raw phase (hsm/keygen.c explains why).
 *
 * PINs come only from files or the environment (hsm_secret_read), never from argv, and are wiped
 * as soon as the step is done. The transcript names the PIN source, never the PIN.
 */
#include "tools/ceremony.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cyaml/cyaml.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/err.h"
#include "common/log.h"

#define MAX_STR     1024
#define MAX_LIST    64
#define MAX_DAYS    36500
#define MAX_NC_CONF 16384

static const char *prog = "acmegw-ceremony";
static const char *cur_file; /* for error lines */

void cer_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    if (cur_file != NULL)
        fprintf(stderr, "%s: ", cur_file);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ---------------------------------------------------------------- schema */

#define STR_OPT(key, st, m)                                                                        \
    CYAML_FIELD_STRING_PTR(key, CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER, st, m, 1, MAX_STR)
#define STR_REQ(key, st, m) CYAML_FIELD_STRING_PTR(key, CYAML_FLAG_POINTER, st, m, 1, MAX_STR)

static const cyaml_schema_value_t str_entry = {
    CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 1, MAX_STR),
};

static const cyaml_schema_field_t rdn_fields[] = {
    STR_OPT("C", struct cer_subject_rdn, c),
    STR_OPT("ST", struct cer_subject_rdn, st),
    STR_OPT("L", struct cer_subject_rdn, l),
    STR_OPT("O", struct cer_subject_rdn, o),
    STR_OPT("OU", struct cer_subject_rdn, ou),
    STR_OPT("CN", struct cer_subject_rdn, cn),
    STR_OPT("DC", struct cer_subject_rdn, dc),
    STR_OPT("serialNumber", struct cer_subject_rdn, serial_number),
    STR_OPT("emailAddress", struct cer_subject_rdn, email),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t rdn_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct cer_subject_rdn, rdn_fields),
};

static const cyaml_schema_field_t nc_fields[] = {
    CYAML_FIELD_SEQUENCE("permitted_dns", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER,
                         struct cer_name_constraints, permitted_dns, &str_entry, 0, MAX_LIST),
    CYAML_FIELD_SEQUENCE("excluded_dns", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER,
                         struct cer_name_constraints, excluded_dns, &str_entry, 0, MAX_LIST),
    CYAML_FIELD_SEQUENCE("permitted_ip", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER,
                         struct cer_name_constraints, permitted_ip, &str_entry, 0, MAX_LIST),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t token_fields[] = {
    STR_REQ("module", struct cer_token, module),
    STR_OPT("label", struct cer_token, label),
    STR_OPT("uri", struct cer_token, uri),
    STR_OPT("pin_file", struct cer_token, pin_file),
    STR_OPT("pin_env", struct cer_token, pin_env),
    STR_OPT("so_pin_file", struct cer_token, so_pin_file),
    STR_OPT("so_pin_env", struct cer_token, so_pin_env),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t key_fields[] = {
    STR_OPT("algorithm", struct cer_key, algorithm),
    STR_REQ("label", struct cer_key, label),
    STR_OPT("id", struct cer_key, id),
    CYAML_FIELD_BOOL("allow_weak_test_key", CYAML_FLAG_OPTIONAL, struct cer_key,
                     allow_weak_test_key),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t profile_fields[] = {
    CYAML_FIELD_SEQUENCE("subject", CYAML_FLAG_POINTER, struct cer_profile, subject, &rdn_entry, 1,
                         MAX_LIST),
    CYAML_FIELD_UINT("validity_days", CYAML_FLAG_DEFAULT, struct cer_profile, validity_days),
    CYAML_FIELD_INT_PTR("path_length", CYAML_FLAG_OPTIONAL, struct cer_profile, path_length),
    CYAML_FIELD_SEQUENCE("key_usage", CYAML_FLAG_POINTER, struct cer_profile, key_usage, &str_entry,
                         1, MAX_LIST),
    CYAML_FIELD_MAPPING_PTR("name_constraints", CYAML_FLAG_OPTIONAL, struct cer_profile,
                            name_constraints, nc_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t issuer_fields[] = {
    CYAML_FIELD_MAPPING_PTR("token", CYAML_FLAG_DEFAULT, struct cer_issuer, token, token_fields),
    CYAML_FIELD_MAPPING_PTR("key", CYAML_FLAG_DEFAULT, struct cer_issuer, key, key_fields),
    STR_REQ("cert", struct cer_issuer, cert),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t file_fields[] = {
    STR_REQ("step", struct cer_file, step),
    CYAML_FIELD_MAPPING_PTR("token", CYAML_FLAG_DEFAULT, struct cer_file, token, token_fields),
    CYAML_FIELD_MAPPING_PTR("key", CYAML_FLAG_OPTIONAL, struct cer_file, key, key_fields),
    CYAML_FIELD_MAPPING_PTR("certificate", CYAML_FLAG_OPTIONAL, struct cer_file, certificate,
                            profile_fields),
    CYAML_FIELD_MAPPING_PTR("issuer", CYAML_FLAG_OPTIONAL, struct cer_file, issuer, issuer_fields),
    STR_OPT("cert", struct cer_file, cert),
    STR_OPT("cert_out", struct cer_file, cert_out),
    STR_OPT("crl_out", struct cer_file, crl_out),
    CYAML_FIELD_UINT("next_update_days", CYAML_FLAG_OPTIONAL, struct cer_file, next_update_days),
    STR_OPT("transcript", struct cer_file, transcript),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t file_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct cer_file, file_fields),
};

/* libcyaml reports an error as several log lines: the message, then a backtrace whose entries
 * carry "(line: N, column: M)". We keep the first message and the innermost line number. */
struct yaml_log {
    char msg[512];
    long line;
};

static void yaml_log_fn(cyaml_log_t level, void *ctx, const char *fmt, va_list args)
{
    struct yaml_log *yl = ctx;
    char buf[sizeof(yl->msg)];
    const char *p;
    size_t n;

    if (level < CYAML_LOG_ERROR)
        return;
    vsnprintf(buf, sizeof(buf), fmt, args);
    p = strstr(buf, "line: ");
    if (p != NULL && yl->line == 0)
        yl->line = strtol(p + 6, NULL, 10);
    if (yl->msg[0] != '\0' || strstr(buf, "Backtrace") != NULL || p != NULL)
        return;
    if (strncmp(buf, "Load: ", 6) == 0)
        memmove(buf, buf + 6, strlen(buf + 6) + 1);
    n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    snprintf(yl->msg, sizeof(yl->msg), "%s", buf);
}

/*
 * libcyaml 1.3.1 reports the line of the enclosing mapping, not of an unexpected key. Find the
 * key's own line: the first line at or after from that reads "KEY:" (or "- KEY:").
 */
static long key_line(const char *path, const char *key, long from)
{
    FILE *fp = fopen(path, "r");
    char line[1024];
    size_t kl = strlen(key);
    long n = 0, found = from;

    if (fp == NULL)
        return from;
    while (fgets(line, sizeof(line), fp) != NULL) {
        const char *p = line;

        if (++n < from)
            continue;
        while (*p == ' ' || *p == '-')
            p++;
        if (strncmp(p, key, kl) == 0 && (p[kl] == ':' || p[kl] == ' ')) {
            found = n;
            break;
        }
    }
    fclose(fp);
    return found;
}

static const cyaml_config_t yaml_base = {
    .log_fn = yaml_log_fn,
    .mem_fn = cyaml_mem,
    .log_level = CYAML_LOG_WARNING,
    .flags = CYAML_CFG_NO_ALIAS,
};

/* ---------------------------------------------------------------- validation */

enum step { STEP_INIT_TOKEN, STEP_ROOT, STEP_INTERMEDIATE, STEP_CRL, STEP_VERIFY };
static const char *const step_names[] = {"init-token", "root", "intermediate", "crl", "verify"};

struct key_spec {
    enum hsm_key_alg alg;
    unsigned char id[64];
    size_t id_len;
    bool have_id;
};

/* Everything a step needs, checked and loaded before the token is touched. */
struct plan {
    const char *path;
    struct cer_file *f;
    enum step step;
    struct hsm_token_ref ref;
    struct key_spec key;
    char *pin, *so_pin;
    struct hsm_token_ref issuer_ref;
    struct key_spec issuer_key;
    char *issuer_pin;
    X509 *issuer_cert; /* intermediate: the issuer; crl: the CA; verify: the cert to check */
    X509_NAME *subject;
    bool ku_digital_signature;
    char transcript[PATH_MAX];
    char file_sha256[65];
};

static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    cer_error("%s", buf);
    return -1;
}

static int parse_hex_id(const char *hex, struct key_spec *k)
{
    size_t n = strlen(hex);

    if (n == 0 || n % 2 != 0 || n / 2 > sizeof(k->id))
        return -1;
    for (size_t i = 0; i < n; i += 2) {
        char b[3] = {hex[i], hex[i + 1], '\0'};
        if (!isxdigit((unsigned char)b[0]) || !isxdigit((unsigned char)b[1]))
            return -1;
        k->id[i / 2] = (unsigned char)strtoul(b, NULL, 16);
    }
    k->id_len = n / 2;
    k->have_id = true;
    return 0;
}

static int check_token(const struct cer_token *t, const char *where, bool so,
                       struct hsm_token_ref *ref, char **pin, char **so_pin)
{
    int err;

    if ((t->label == NULL) == (t->uri == NULL))
        return bad("%s: give exactly one of 'label' or 'uri'", where);
    if (t->uri != NULL && strncmp(t->uri, "pkcs11:", 7) != 0)
        return bad("%s: uri must start with 'pkcs11:'", where);
    ref->module = t->module;
    ref->token = t->label != NULL ? t->label : t->uri;
    if ((t->pin_file == NULL) == (t->pin_env == NULL))
        return bad("%s: give exactly one of 'pin_file' or 'pin_env'", where);
    if (so && (t->so_pin_file == NULL) == (t->so_pin_env == NULL))
        return bad("%s: init-token needs exactly one of 'so_pin_file' or 'so_pin_env'", where);
    if (!so && (t->so_pin_file != NULL || t->so_pin_env != NULL))
        return bad("%s: 'so_pin_file'/'so_pin_env' belong to step init-token only", where);
    err = hsm_secret_read(t->pin_file, t->pin_env, pin);
    if (err != 0)
        return bad("%s: cannot read the PIN from %s '%s': %s", where,
                   t->pin_file != NULL ? "file" : "environment variable",
                   t->pin_file != NULL ? t->pin_file : t->pin_env,
                   t->pin_file == NULL && err == AGW_ERR_BAD_INPUT ? "unset or empty"
                                                                   : agw_err_str(err));
    if (so) {
        err = hsm_secret_read(t->so_pin_file, t->so_pin_env, so_pin);
        if (err != 0)
            return bad("%s: cannot read the SO PIN from %s '%s': %s", where,
                       t->so_pin_file != NULL ? "file" : "environment variable",
                       t->so_pin_file != NULL ? t->so_pin_file : t->so_pin_env,
                       t->so_pin_file == NULL && err == AGW_ERR_BAD_INPUT ? "unset or empty"
                                                                          : agw_err_str(err));
    }
    return 0;
}

static int check_key(const struct cer_key *k, const char *where, bool new_key, struct key_spec *ks)
{
    if (k == NULL)
        return bad("missing '%s' block", where);
    if (strlen(k->label) > 128)
        return bad("%s: label too long", where);
    if (k->id != NULL && parse_hex_id(k->id, ks) != 0)
        return bad("%s: id '%s' is not 1..64 bytes of hex", where, k->id);
    if (!new_key) {
        if (k->algorithm != NULL || k->allow_weak_test_key)
            return bad("%s: 'algorithm' only applies where a key is generated", where);
        return 0;
    }
    if (k->algorithm == NULL)
        return bad("%s: missing 'algorithm'", where);
    if (k->id == NULL)
        return bad("%s: missing 'id'", where);
    if (hsm_key_alg_parse(k->algorithm, &ks->alg) != 0)
        return bad("%s: unknown algorithm '%s' (ec-p256, ec-p384, rsa-3072, rsa-4096)", where,
                   k->algorithm);
    if (ks->alg == HSM_KEY_RSA_2048 && !k->allow_weak_test_key)
        return bad("%s: rsa-2048 is for test tokens only: set 'allow_weak_test_key: true'", where);
    return 0;
}

static int check_dns(const char *d)
{
    size_t n = strlen(d);

    if (n == 0 || n > 253)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)d[i]) && d[i] != '-' && d[i] != '.')
            return -1;
    return 0;
}

/* "10.0.0.0/8" or "fd00::/8" -> OpenSSL's "IP:addr/mask". */
static int cidr_conf(const char *cidr, char *out, size_t size)
{
    char addr[64], mask_txt[64];
    unsigned char a[16], m[16];
    const char *slash = strchr(cidr, '/');
    char *end;
    long bits;
    int fam, alen;

    if (slash == NULL || (size_t)(slash - cidr) >= sizeof(addr))
        return -1;
    memcpy(addr, cidr, (size_t)(slash - cidr));
    addr[slash - cidr] = '\0';
    fam = strchr(addr, ':') != NULL ? AF_INET6 : AF_INET;
    alen = fam == AF_INET6 ? 16 : 4;
    if (inet_pton(fam, addr, a) != 1)
        return -1;
    errno = 0;
    bits = strtol(slash + 1, &end, 10);
    if (errno != 0 || *end != '\0' || end == slash + 1 || bits < 0 || bits > alen * 8)
        return -1;
    memset(m, 0, sizeof(m));
    for (long i = 0; i < bits; i++)
        m[i / 8] |= (unsigned char)(0x80 >> (i % 8));
    for (int i = 0; i < alen; i++)
        if ((a[i] & ~m[i]) != 0)
            return -1; /* host bits set: almost certainly a typo */
    if (inet_ntop(fam, m, mask_txt, sizeof(mask_txt)) == NULL)
        return -1;
    return snprintf(out, size, "IP:%s/%s", addr, mask_txt) < (int)size ? 0 : -1;
}

static int check_profile(struct plan *pl)
{
    const struct cer_profile *c = pl->f->certificate;
    bool cert_sign = false, crl_sign = false;

    if (c == NULL)
        return bad("missing 'certificate' block");
    if (c->validity_days == 0 || c->validity_days > MAX_DAYS)
        return bad("certificate: validity_days must be 1..%d", MAX_DAYS);
    if (c->path_length != NULL && (*c->path_length < 0 || *c->path_length > 10))
        return bad("certificate: path_length must be 0..10");
    pl->subject = X509_NAME_new();
    if (pl->subject == NULL)
        return bad("out of memory");
    for (unsigned i = 0; i < c->subject_count; i++) {
        const struct cer_subject_rdn *r = &c->subject[i];
        const char *names[] = {"C",  "ST",           "L",           "O", "OU", "CN",
                               "DC", "serialNumber", "emailAddress"};
        const char *vals[] = {r->c,    r->st, r->l, r->o, r->ou, r->cn, r->dc, r->serial_number,
                              r->email};
        int set = -1, n_set = 0;

        for (int j = 0; j < 9; j++)
            if (vals[j] != NULL) {
                set = j;
                n_set++;
            }
        if (n_set != 1)
            return bad("certificate: subject entry %u must have exactly one attribute", i + 1);
        if (set == 0 && strlen(vals[0]) != 2)
            return bad("certificate: subject C must be a two-letter country code");
        if (!X509_NAME_add_entry_by_txt(pl->subject, names[set], MBSTRING_UTF8,
                                        (const unsigned char *)vals[set], -1, -1, 0)) {
            ERR_clear_error();
            return bad("certificate: subject %s value is not acceptable", names[set]);
        }
    }
    for (unsigned i = 0; i < c->key_usage_count; i++) {
        const char *u = c->key_usage[i];
        if (strcmp(u, "keyCertSign") == 0)
            cert_sign = true;
        else if (strcmp(u, "cRLSign") == 0)
            crl_sign = true;
        else if (strcmp(u, "digitalSignature") == 0)
            pl->ku_digital_signature = true;
        else
            return bad("certificate: unknown key_usage '%s' (keyCertSign, cRLSign, "
                       "digitalSignature)",
                       u);
    }
    if (!cert_sign || !crl_sign)
        return bad("certificate: key_usage of a CA must list keyCertSign and cRLSign");
    if (c->name_constraints != NULL) {
        const struct cer_name_constraints *nc = c->name_constraints;
        char tmp[128];

        if (pl->step == STEP_ROOT)
            return bad("certificate: name_constraints belong on the intermediate, not the root");
        for (unsigned i = 0; i < nc->permitted_dns_count; i++)
            if (check_dns(nc->permitted_dns[i]) != 0)
                return bad("name_constraints: bad DNS name '%s'", nc->permitted_dns[i]);
        for (unsigned i = 0; i < nc->excluded_dns_count; i++)
            if (check_dns(nc->excluded_dns[i]) != 0)
                return bad("name_constraints: bad DNS name '%s'", nc->excluded_dns[i]);
        for (unsigned i = 0; i < nc->permitted_ip_count; i++)
            if (cidr_conf(nc->permitted_ip[i], tmp, sizeof(tmp)) != 0)
                return bad("name_constraints: bad CIDR '%s'", nc->permitted_ip[i]);
        if (nc->permitted_dns_count + nc->excluded_dns_count + nc->permitted_ip_count == 0)
            return bad("name_constraints: empty");
    }
    return 0;
}

static int must_not_exist(const char *what, const char *path)
{
    if (path == NULL)
        return bad("missing '%s'", what);
    if (access(path, F_OK) == 0)
        return bad("%s '%s' exists: refusing to overwrite", what, path);
    return 0;
}

static X509 *load_cert(const char *path)
{
    FILE *fp = fopen(path, "r");
    X509 *x;

    if (fp == NULL)
        return NULL;
    x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    ERR_clear_error();
    return x;
}

static int need_cert(struct plan *pl, const char *what, const char *path)
{
    if (path == NULL)
        return bad("missing '%s'", what);
    pl->issuer_cert = load_cert(path);
    if (pl->issuer_cert == NULL)
        return bad("%s '%s': cannot read a PEM certificate", what, path);
    return 0;
}

static int forbid(bool present, const char *what, const char *step)
{
    return present ? bad("'%s' does not belong in step %s", what, step) : 0;
}

static int validate(struct plan *pl)
{
    struct cer_file *f = pl->f;
    const char *sn;
    int i;

    for (i = 0; i < 5; i++)
        if (strcmp(f->step, step_names[i]) == 0)
            break;
    if (i == 5)
        return bad("unknown step '%s' (init-token, root, intermediate, crl, verify)", f->step);
    pl->step = (enum step)i;
    sn = step_names[i];
    if (forbid(f->certificate != NULL && pl->step != STEP_ROOT && pl->step != STEP_INTERMEDIATE,
               "certificate", sn) ||
        forbid(f->issuer != NULL && pl->step != STEP_INTERMEDIATE, "issuer", sn) ||
        forbid(f->cert_out != NULL && pl->step != STEP_ROOT && pl->step != STEP_INTERMEDIATE,
               "cert_out", sn) ||
        forbid(f->crl_out != NULL && pl->step != STEP_CRL, "crl_out", sn) ||
        forbid(f->next_update_days != 0 && pl->step != STEP_CRL, "next_update_days", sn) ||
        forbid(f->cert != NULL && pl->step != STEP_CRL && pl->step != STEP_VERIFY, "cert", sn) ||
        forbid(f->key != NULL && pl->step == STEP_INIT_TOKEN, "key", sn))
        return -1;
    if (pl->step == STEP_INIT_TOKEN && f->token->label == NULL)
        return bad("token: init-token needs 'label' (a URI cannot name a new token)");
    if (check_token(f->token, "token", pl->step == STEP_INIT_TOKEN, &pl->ref, &pl->pin,
                    &pl->so_pin) != 0)
        return -1;
    switch (pl->step) {
    case STEP_INIT_TOKEN:
        if (strlen(f->token->label) > 32)
            return bad("token: label longer than 32 bytes");
        break;
    case STEP_ROOT:
    case STEP_INTERMEDIATE:
        if (check_key(f->key, "key", true, &pl->key) != 0 || check_profile(pl) != 0 ||
            must_not_exist("cert_out", f->cert_out) != 0)
            return -1;
        if (pl->step == STEP_INTERMEDIATE) {
            if (f->issuer == NULL)
                return bad("step intermediate needs an 'issuer' block");
            if (check_token(f->issuer->token, "issuer.token", false, &pl->issuer_ref,
                            &pl->issuer_pin, NULL) != 0 ||
                check_key(f->issuer->key, "issuer.key", false, &pl->issuer_key) != 0 ||
                need_cert(pl, "issuer.cert", f->issuer->cert) != 0)
                return -1;
            if (X509_get0_subject_key_id(pl->issuer_cert) == NULL)
                return bad("issuer.cert has no subjectKeyIdentifier");
        }
        break;
    case STEP_CRL:
        if (check_key(f->key, "key", false, &pl->key) != 0 || need_cert(pl, "cert", f->cert) != 0 ||
            must_not_exist("crl_out", f->crl_out) != 0)
            return -1;
        if (f->next_update_days == 0 || f->next_update_days > 3660)
            return bad("next_update_days must be 1..3660");
        if (X509_get0_subject_key_id(pl->issuer_cert) == NULL)
            return bad("cert has no subjectKeyIdentifier");
        break;
    case STEP_VERIFY:
        if (check_key(f->key, "key", false, &pl->key) != 0 || need_cert(pl, "cert", f->cert) != 0)
            return -1;
        break;
    }
    return 0;
}

/* ---------------------------------------------------------------- token error texts */

static int token_fail(const char *what, const struct hsm_token_ref *ref, int err)
{
    switch (err) {
    case AGW_ERR_UNAUTHORIZED:
    case AGW_ERR_PIN_INCORRECT:
        return bad("%s: token login failed: PIN incorrect", what);
    case AGW_ERR_HSM_UNAVAILABLE:
        return bad("%s: cannot load PKCS#11 module '%s' or token '%s' unavailable", what,
                   ref->module, ref->token);
    case AGW_ERR_NOT_FOUND:
        return bad("%s: token '%s' or key not found", what, ref->token);
    case AGW_ERR_EXISTS:
        return bad("%s: already exists in token '%s': refusing to overwrite", what, ref->token);
    case AGW_ERR_CONFLICT:
        return bad("%s: the token key does not match the certificate", what);
    default:
        return bad("%s: %s", what, agw_err_str(err));
    }
}

/* ---------------------------------------------------------------- certificates */

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;

    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    if (ext == NULL)
        return -1;
    ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

static int random_serial(ASN1_INTEGER *serial)
{
    unsigned char b[16];
    BIGNUM *bn = NULL;
    int rc = -1;

    if (RAND_bytes(b, sizeof(b)) != 1)
        return -1;
    b[0] |= 0x01; /* never zero */
    bn = BN_bin2bn(b, sizeof(b), NULL);
    if (bn != NULL && BN_to_ASN1_INTEGER(bn, serial) != NULL)
        rc = 0;
    BN_free(bn);
    return rc;
}

static int name_constraints_conf(const struct cer_name_constraints *nc, char *out, size_t size)
{
    size_t o = 0;
    int n;

    n = snprintf(out, size, "critical");
    o = (size_t)n;
    for (unsigned i = 0; i < nc->permitted_dns_count; i++) {
        n = snprintf(out + o, size - o, ",permitted;DNS:%s", nc->permitted_dns[i]);
        if (n < 0 || (size_t)n >= size - o)
            return -1;
        o += (size_t)n;
    }
    for (unsigned i = 0; i < nc->permitted_ip_count; i++) {
        char ip[128];
        if (cidr_conf(nc->permitted_ip[i], ip, sizeof(ip)) != 0)
            return -1;
        n = snprintf(out + o, size - o, ",permitted;%s", ip);
        if (n < 0 || (size_t)n >= size - o)
            return -1;
        o += (size_t)n;
    }
    for (unsigned i = 0; i < nc->excluded_dns_count; i++) {
        n = snprintf(out + o, size - o, ",excluded;DNS:%s", nc->excluded_dns[i]);
        if (n < 0 || (size_t)n >= size - o)
            return -1;
        o += (size_t)n;
    }
    return 0;
}

/* The to-be-signed CA certificate. issuer NULL: self-signed root. */
static X509 *build_ca_cert(const struct plan *pl, const unsigned char *spki, size_t spki_len,
                           X509 *issuer)
{
    const struct cer_profile *c = pl->f->certificate;
    const unsigned char *q = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &q, (long)spki_len);
    X509 *x = X509_new();
    time_t now = time(NULL);
    char bc[64], ku[64], *nc = NULL;
    bool ok;

    if (pkey == NULL || x == NULL)
        goto fail;
    if (c->path_length != NULL)
        snprintf(bc, sizeof(bc), "critical,CA:TRUE,pathlen:%d", *c->path_length);
    else
        snprintf(bc, sizeof(bc), "critical,CA:TRUE");
    snprintf(ku, sizeof(ku), "critical,keyCertSign,cRLSign%s",
             pl->ku_digital_signature ? ",digitalSignature" : "");
    ok = X509_set_version(x, X509_VERSION_3) && random_serial(X509_get_serialNumber(x)) == 0 &&
         X509_set_subject_name(x, pl->subject) &&
         X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : pl->subject) &&
         X509_time_adj_ex(X509_getm_notBefore(x), 0, 0, &now) != NULL &&
         X509_time_adj_ex(X509_getm_notAfter(x), (int)c->validity_days, 0, &now) != NULL &&
         X509_set_pubkey(x, pkey) && add_ext(x, NULL, NID_basic_constraints, bc) == 0 &&
         add_ext(x, NULL, NID_key_usage, ku) == 0 &&
         add_ext(x, NULL, NID_subject_key_identifier, "hash") == 0 &&
         add_ext(x, issuer != NULL ? issuer : x, NID_authority_key_identifier, "keyid:always") == 0;
    if (ok && c->name_constraints != NULL) {
        nc = malloc(MAX_NC_CONF);
        ok = nc != NULL && name_constraints_conf(c->name_constraints, nc, MAX_NC_CONF) == 0 &&
             add_ext(x, NULL, NID_name_constraints, nc) == 0;
    }
    free(nc);
    if (!ok)
        goto fail;
    EVP_PKEY_free(pkey);
    return x;
fail:
    ERR_clear_error();
    EVP_PKEY_free(pkey);
    X509_free(x);
    return NULL;
}

static X509_CRL *build_crl(const struct plan *pl)
{
    X509_CRL *crl = X509_CRL_new();
    ASN1_TIME *t1 = NULL, *t2 = NULL;
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    X509V3_CTX ctx;
    X509_EXTENSION *ext = NULL;
    time_t now = time(NULL);
    bool ok;

    t1 = X509_time_adj_ex(NULL, 0, 0, &now);
    t2 = X509_time_adj_ex(NULL, (int)pl->f->next_update_days, 0, &now);
    ok = crl != NULL && num != NULL && t1 != NULL && t2 != NULL &&
         X509_CRL_set_version(crl, X509_CRL_VERSION_2) &&
         X509_CRL_set_issuer_name(crl, X509_get_subject_name(pl->issuer_cert)) &&
         X509_CRL_set1_lastUpdate(crl, t1) && X509_CRL_set1_nextUpdate(crl, t2) &&
         ASN1_INTEGER_set(num, 1) && X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0);
    if (ok) {
        X509V3_set_ctx(&ctx, pl->issuer_cert, NULL, NULL, crl, 0);
        ext = X509V3_EXT_nconf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
        ok = ext != NULL && X509_CRL_add_ext(crl, ext, -1);
    }
    X509_EXTENSION_free(ext);
    ASN1_TIME_free(t1);
    ASN1_TIME_free(t2);
    ASN1_INTEGER_free(num);
    if (!ok) {
        ERR_clear_error();
        X509_CRL_free(crl);
        return NULL;
    }
    return crl;
}

/* Writes data to a new file (O_EXCL); 0 or one error line. */
static int write_new(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

    if (fd < 0)
        return bad("%s: cannot create: %s", path, strerror(errno));
    if (write(fd, data, len) != (ssize_t)len || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(path);
        return bad("%s: cannot write: %s", path, strerror(e));
    }
    close(fd);
    return 0;
}

/* DER of a certificate or CRL as PEM, written with O_EXCL. */
static int write_pem(const char *path, const char *label, const unsigned char *der, size_t len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *mem;
    long n;
    int rc;

    if (b == NULL || !PEM_write_bio(b, label, "", der, (long)len)) {
        BIO_free(b);
        return bad("out of memory");
    }
    n = BIO_get_mem_data(b, &mem);
    rc = write_new(path, mem, (size_t)n);
    BIO_free(b);
    return rc;
}

/* ---------------------------------------------------------------- signer helpers */

static int signer_open(const struct hsm_token_ref *ref, const char *label, const struct key_spec *k,
                       const char *chain, const char *pin, struct hsm_signer **s)
{
    char id_hex[129];
    struct hsm_config cfg;
    int err;

    memset(&cfg, 0, sizeof(cfg));
    cfg.ref = *ref;
    cfg.key_label = label;
    if (k->have_id) {
        for (size_t i = 0; i < k->id_len; i++)
            snprintf(id_hex + 2 * i, 3, "%02x", k->id[i]);
        cfg.key_id_hex = id_hex;
    }
    cfg.ca_chain_file = chain;
    cfg.n_workers = 1;
    cfg.timeout_ms = 60000; /* RSA-4096 on a slow network HSM */
    err = hsm_signer_new(&cfg, pin, s);
    return err != 0 ? token_fail("signing key", ref, err) : 0;
}

/* Signs tbs (cert when crl == NULL) and returns the signed DER (free()). */
static int sign_one(struct hsm_signer *s, X509 *x, X509_CRL *crl, unsigned char **der, size_t *len)
{
    struct hsm_request req;
    struct hsm_response resp = {0, NULL, 0};
    unsigned char *tbs = NULL;
    size_t tbs_len = 0;
    int err;

    memset(&req, 0, sizeof(req));
    err = x != NULL ? hsm_tbs_cert(s, x, &tbs, &tbs_len) : hsm_tbs_crl(s, crl, &tbs, &tbs_len);
    if (err != 0)
        return bad("cannot encode the to-be-signed %s: %s", x != NULL ? "certificate" : "CRL",
                   agw_err_str(err));
    req.op = x != NULL ? HSM_OP_SIGN_CERT : HSM_OP_SIGN_CRL;
    req.tbs_der = tbs;
    req.tbs_len = tbs_len;
    err = hsm_call(s, &req, &resp);
    OPENSSL_free(tbs);
    if (err != 0)
        return bad("signing in the token failed: %s", agw_err_str(err));
    *der = resp.der;
    *len = resp.der_len;
    return 0;
}

/* ---------------------------------------------------------------- transcript content */

static json_t *jstr(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

static json_t *jlist(char **v, unsigned n)
{
    json_t *a = json_array();
    for (unsigned i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static json_t *token_json(const struct cer_token *t)
{
    json_t *o = json_pack("{s:o, s:o, s:o}", "module", jstr(t->module), "label", jstr(t->label),
                          "uri", jstr(t->uri));
    /* PIN sources by name only: never the PIN. */
    if (t->pin_file != NULL)
        json_object_set_new(o, "pin_file", json_string(t->pin_file));
    if (t->pin_env != NULL)
        json_object_set_new(o, "pin_env", json_string(t->pin_env));
    if (t->so_pin_file != NULL)
        json_object_set_new(o, "so_pin_file", json_string(t->so_pin_file));
    if (t->so_pin_env != NULL)
        json_object_set_new(o, "so_pin_env", json_string(t->so_pin_env));
    return o;
}

static json_t *key_json(const struct cer_key *k)
{
    return k == NULL ? json_null()
                     : json_pack("{s:o, s:o, s:o, s:b}", "algorithm", jstr(k->algorithm), "label",
                                 jstr(k->label), "id", jstr(k->id), "allow_weak_test_key",
                                 k->allow_weak_test_key);
}

static json_t *inputs_json(const struct cer_file *f)
{
    json_t *o = json_object();

    json_object_set_new(o, "step", json_string(f->step));
    json_object_set_new(o, "token", token_json(f->token));
    json_object_set_new(o, "key", key_json(f->key));
    if (f->certificate != NULL) {
        const struct cer_profile *c = f->certificate;
        json_t *subj = json_array(), *p;

        for (unsigned i = 0; i < c->subject_count; i++) {
            const struct cer_subject_rdn *r = &c->subject[i];
            const char *names[] = {"C",  "ST",           "L",           "O", "OU", "CN",
                                   "DC", "serialNumber", "emailAddress"};
            const char *vals[] = {r->c,    r->st, r->l, r->o, r->ou, r->cn, r->dc, r->serial_number,
                                  r->email};
            for (int j = 0; j < 9; j++)
                if (vals[j] != NULL)
                    json_array_append_new(subj, json_pack("{s:s}", names[j], vals[j]));
        }
        p = json_pack("{s:o, s:I, s:o}", "subject", subj, "validity_days",
                      (json_int_t)c->validity_days, "key_usage",
                      jlist(c->key_usage, c->key_usage_count));
        if (c->path_length != NULL)
            json_object_set_new(p, "path_length", json_integer(*c->path_length));
        if (c->name_constraints != NULL) {
            const struct cer_name_constraints *nc = c->name_constraints;
            json_object_set_new(
                p, "name_constraints",
                json_pack("{s:o, s:o, s:o}", "permitted_dns",
                          jlist(nc->permitted_dns, nc->permitted_dns_count), "excluded_dns",
                          jlist(nc->excluded_dns, nc->excluded_dns_count), "permitted_ip",
                          jlist(nc->permitted_ip, nc->permitted_ip_count)));
        }
        json_object_set_new(o, "certificate", p);
    }
    if (f->issuer != NULL)
        json_object_set_new(o, "issuer",
                            json_pack("{s:o, s:o, s:s}", "token", token_json(f->issuer->token),
                                      "key", key_json(f->issuer->key), "cert", f->issuer->cert));
    if (f->cert != NULL)
        json_object_set_new(o, "cert", json_string(f->cert));
    if (f->cert_out != NULL)
        json_object_set_new(o, "cert_out", json_string(f->cert_out));
    if (f->crl_out != NULL)
        json_object_set_new(o, "crl_out", json_string(f->crl_out));
    if (f->next_update_days != 0)
        json_object_set_new(o, "next_update_days", json_integer(f->next_update_days));
    return o;
}

static json_t *attrs_json(const struct hsm_key_attrs *a)
{
    return json_pack("{s:b, s:b, s:b, s:b, s:b, s:b, s:b, s:b, s:b, s:b, s:b, s:b, s:s}", "token",
                     a->token, "private", a->is_private, "sensitive", a->sensitive, "extractable",
                     a->extractable, "always_sensitive", a->always_sensitive, "never_extractable",
                     a->never_extractable, "local", a->local, "sign", a->sign, "decrypt",
                     a->decrypt, "unwrap", a->unwrap, "derive", a->derive, "value_readable",
                     a->value_readable, "algorithm", hsm_key_alg_name(a->alg));
}

/* The event line: who, when, what was asked, what came out, which key. */
static json_t *event_json(const struct plan *pl, const char *const *outs, size_t n_outs,
                          const struct hsm_key_attrs *a, const unsigned char *spki, size_t spki_len)
{
    char when[32], host[256], *b64;
    struct passwd *pw = getpwuid(getuid());
    json_t *o = json_object(), *outputs = json_array();

    cer_rfc3339(time(NULL), when);
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "unknown");
    host[sizeof(host) - 1] = '\0';
    json_object_set_new(o, "type", json_string("event"));
    json_object_set_new(o, "timestamp", json_string(when));
    json_object_set_new(o, "step", json_string(step_names[pl->step]));
    json_object_set_new(o, "host", json_string(host));
    json_object_set_new(o, "user", json_string(pw != NULL ? pw->pw_name : "unknown"));
    json_object_set_new(o, "ceremony_file",
                        json_pack("{s:s, s:s}", "path", pl->path, "sha256", pl->file_sha256));
    json_object_set_new(o, "inputs", inputs_json(pl->f));
    for (size_t i = 0; i < n_outs; i++) {
        char h[65];
        if (cer_file_sha256(outs[i], h) == 0)
            json_array_append_new(outputs, json_pack("{s:s, s:s}", "path", outs[i], "sha256", h));
    }
    json_object_set_new(o, "outputs", outputs);
    if (a != NULL) {
        json_t *k = json_object();
        b64 = spki != NULL ? cer_b64(spki, spki_len) : NULL;
        json_object_set_new(k, "label", json_string(pl->f->key->label));
        json_object_set_new(k, "id", jstr(pl->f->key->id));
        json_object_set_new(k, "attributes", attrs_json(a));
        json_object_set_new(k, "public_key", jstr(b64));
        json_object_set_new(o, "key", k);
        free(b64);
    }
    return o;
}

/* ---------------------------------------------------------------- steps */

static int read_attrs(const struct plan *pl, struct hsm_key_attrs *a, unsigned char **spki,
                      size_t *spki_len)
{
    int err =
        hsm_key_attrs_read(&pl->ref, pl->pin, pl->f->key->label,
                           pl->key.have_id ? pl->key.id : NULL, pl->key.id_len, a, spki, spki_len);
    return err != 0 ? token_fail("key read-back", &pl->ref, err) : 0;
}

static int step_init_token(struct plan *pl, struct cer_transcript *t)
{
    int err = hsm_token_init(pl->ref.module, pl->f->token->label, pl->so_pin, pl->pin);

    if (err == AGW_ERR_EXISTS)
        return bad("token '%s' already exists: refusing to initialise it again",
                   pl->f->token->label);
    if (err != 0)
        return token_fail("token init", &pl->ref, err);
    return cer_transcript_append(t, event_json(pl, NULL, 0, NULL, NULL, 0));
}

/* root and intermediate: generate, read back, sign the certificate, write it, record, sign. */
static int step_ca(struct plan *pl, struct cer_transcript *t)
{
    const char *out = pl->f->cert_out;
    unsigned char *spki = NULL, *spki2 = NULL, *der = NULL;
    size_t spki_len = 0, spki2_len = 0, der_len = 0;
    struct hsm_signer *s = NULL;
    struct hsm_key_attrs a;
    X509 *x = NULL;
    int err, rc = -1;

    if (pl->step == STEP_INTERMEDIATE) {
        /* Prove the issuer key and PIN before creating anything. */
        struct hsm_key_attrs ia;
        err = hsm_key_attrs_read(&pl->issuer_ref, pl->issuer_pin, pl->f->issuer->key->label,
                                 pl->issuer_key.have_id ? pl->issuer_key.id : NULL,
                                 pl->issuer_key.id_len, &ia, NULL, NULL);
        if (err != 0)
            return token_fail("issuer key", &pl->issuer_ref, err);
    }
    err = hsm_key_generate(&pl->ref, pl->pin, pl->key.alg, pl->f->key->label, pl->key.id,
                           pl->key.id_len, &spki, &spki_len);
    if (err == AGW_ERR_EXISTS) {
        bad("key: a key with label '%s' or id %s already exists in token '%s': refusing to "
            "overwrite",
            pl->f->key->label, pl->f->key->id, pl->ref.token);
        goto out;
    }
    if (err != 0) {
        token_fail("key generation", &pl->ref, err);
        goto out;
    }
    if (read_attrs(pl, &a, &spki2, &spki2_len) != 0)
        goto out;
    x = build_ca_cert(pl, spki, spki_len, pl->step == STEP_INTERMEDIATE ? pl->issuer_cert : NULL);
    if (x == NULL) {
        bad("cannot build the certificate");
        goto out;
    }
    if (pl->step == STEP_ROOT) {
        if (signer_open(&pl->ref, pl->f->key->label, &pl->key, NULL, pl->pin, &s) != 0)
            goto out;
    } else if (signer_open(&pl->issuer_ref, pl->f->issuer->key->label, &pl->issuer_key,
                           pl->f->issuer->cert, pl->issuer_pin, &s) != 0) {
        goto out;
    }
    if (sign_one(s, x, NULL, &der, &der_len) != 0 ||
        write_pem(out, "CERTIFICATE", der, der_len) != 0)
        goto out;
    if (pl->step == STEP_INTERMEDIATE) {
        /* The transcript is signed by the step's new key: switch signers (never two at once). */
        hsm_signer_free(s);
        s = NULL;
        if (signer_open(&pl->ref, pl->f->key->label, &pl->key, out, pl->pin, &s) != 0)
            goto out;
    }
    if (cer_transcript_append(t, event_json(pl, &out, 1, &a, spki, spki_len)) != 0 ||
        cer_transcript_sign(t, step_names[pl->step], s) != 0)
        goto out;
    printf("%s: %s written (key '%s' in token '%s')\n", step_names[pl->step], out,
           pl->f->key->label, pl->ref.token);
    rc = 0;
out:
    hsm_signer_free(s);
    X509_free(x);
    free(der);
    OPENSSL_free(spki);
    OPENSSL_free(spki2);
    return rc;
}

static int step_crl(struct plan *pl, struct cer_transcript *t)
{
    const char *out = pl->f->crl_out;
    unsigned char *spki = NULL, *der = NULL;
    size_t spki_len = 0, der_len = 0;
    struct hsm_signer *s = NULL;
    struct hsm_key_attrs a;
    X509_CRL *crl = NULL;
    int rc = -1;

    if (read_attrs(pl, &a, &spki, &spki_len) != 0)
        goto out;
    crl = build_crl(pl);
    if (crl == NULL) {
        bad("cannot build the CRL");
        goto out;
    }
    if (signer_open(&pl->ref, pl->f->key->label, &pl->key, pl->f->cert, pl->pin, &s) != 0 ||
        sign_one(s, NULL, crl, &der, &der_len) != 0 ||
        write_pem(out, "X509 CRL", der, der_len) != 0 ||
        cer_transcript_append(t, event_json(pl, &out, 1, &a, spki, spki_len)) != 0 ||
        cer_transcript_sign(t, "crl", s) != 0)
        goto out;
    printf("crl: %s written\n", out);
    rc = 0;
out:
    hsm_signer_free(s);
    X509_CRL_free(crl);
    free(der);
    OPENSSL_free(spki);
    return rc;
}

static int step_verify(struct plan *pl, struct cer_transcript *t)
{
    unsigned char *spki = NULL, *cert_spki = NULL;
    size_t spki_len = 0;
    int cert_len;
    struct hsm_signer *s = NULL;
    struct hsm_key_attrs a;
    json_t *ev, *checks;
    const char *failed = NULL;
    int rc = -1;

    if (read_attrs(pl, &a, &spki, &spki_len) != 0)
        goto out;
    cert_len = i2d_PUBKEY(X509_get0_pubkey(pl->issuer_cert), &cert_spki);
    checks = json_object();
#define CHK(name, cond)                                                                            \
    do {                                                                                           \
        bool ok_ = (cond);                                                                         \
        json_object_set_new(checks, name, json_boolean(ok_));                                      \
        if (!ok_ && failed == NULL)                                                                \
            failed = name;                                                                         \
    } while (0)
    CHK("sensitive", a.sensitive && !a.extractable);
    CHK("always_sensitive", a.always_sensitive);
    CHK("never_extractable", a.never_extractable);
    CHK("local", a.local);
    CHK("token_private", a.token && a.is_private);
    CHK("sign_only", a.sign && !a.decrypt && !a.unwrap && !a.derive);
    CHK("value_not_readable", !a.value_readable);
    CHK("certificate_matches_key", cert_len > 0 && spki != NULL && (size_t)cert_len == spki_len &&
                                       memcmp(cert_spki, spki, spki_len) == 0);
#undef CHK
    ev = event_json(pl, NULL, 0, &a, spki, spki_len);
    json_object_set_new(ev, "checks", checks);
    json_object_set_new(ev, "result", json_string(failed == NULL ? "ok" : "failed"));
    if (cer_transcript_append(t, ev) != 0 ||
        signer_open(&pl->ref, pl->f->key->label, &pl->key, NULL, pl->pin, &s) != 0 ||
        cer_transcript_sign(t, "verify", s) != 0)
        goto out;
    if (failed != NULL) {
        bad("verify: key '%s' failed check '%s'", pl->f->key->label, failed);
        goto out;
    }
    printf("verify: key '%s' OK: sensitive, always sensitive, never extractable, local, "
           "sign only, value not readable, matches %s\n",
           pl->f->key->label, pl->f->cert);
    rc = 0;
out:
    hsm_signer_free(s);
    OPENSSL_free(spki);
    OPENSSL_free(cert_spki);
    return rc;
}

/* ---------------------------------------------------------------- run */

static void default_transcript(struct plan *pl, const char *opt)
{
    const struct cer_file *f = pl->f;
    const char *base;

    if (opt != NULL) {
        snprintf(pl->transcript, sizeof(pl->transcript), "%s", opt);
        return;
    }
    if (f->transcript != NULL) {
        snprintf(pl->transcript, sizeof(pl->transcript), "%s", f->transcript);
        return;
    }
    switch (pl->step) {
    case STEP_ROOT:
    case STEP_INTERMEDIATE:
        base = f->cert_out;
        break;
    case STEP_CRL:
        base = f->crl_out;
        break;
    case STEP_VERIFY:
        base = f->cert;
        break;
    default:
        base = f->token->label;
        break;
    }
    snprintf(pl->transcript, sizeof(pl->transcript), "%s.transcript.jsonl", base);
}

static int run(const char *path, const char *transcript_opt)
{
    cyaml_config_t cfg = yaml_base;
    struct yaml_log yl;
    struct cer_transcript t;
    struct plan pl;
    cyaml_err_t cerr;
    int rc = 1;

    memset(&yl, 0, sizeof(yl));
    memset(&pl, 0, sizeof(pl));
    memset(&t, 0, sizeof(t));
    cfg.log_ctx = &yl;
    pl.path = path;
    if (cer_file_sha256(path, pl.file_sha256) != 0) {
        fprintf(stderr, "%s: %s: cannot read: %s\n", prog, path, strerror(errno));
        return 1;
    }
    cerr = cyaml_load_file(path, &cfg, &file_schema, (cyaml_data_t **)&pl.f, NULL);
    if (cerr != CYAML_OK) {
        const char *what = yl.msg[0] != '\0' ? yl.msg : cyaml_strerror(cerr);
        char buf[600];
        const char *k = strstr(what, "Unexpected key: ");

        if (k != NULL) {
            snprintf(buf, sizeof(buf), "unknown key '%s'", k + 16);
            yl.line = key_line(path, k + 16, yl.line);
            what = buf;
        } else if (strncmp(what, "libyaml: ", 9) == 0) {
            snprintf(buf, sizeof(buf), "YAML syntax error: %s", what + 9);
            what = buf;
        }
        if (yl.line > 0)
            fprintf(stderr, "%s: %s:%ld: %s\n", prog, path, yl.line, what);
        else
            fprintf(stderr, "%s: %s: %s\n", prog, path, what);
        return 1;
    }
    cur_file = path;
    if (validate(&pl) != 0)
        goto out;
    default_transcript(&pl, transcript_opt);
    if (cer_transcript_open(&t, pl.transcript) != 0)
        goto out;
    switch (pl.step) {
    case STEP_INIT_TOKEN:
        rc = step_init_token(&pl, &t);
        break;
    case STEP_ROOT:
    case STEP_INTERMEDIATE:
        rc = step_ca(&pl, &t);
        break;
    case STEP_CRL:
        rc = step_crl(&pl, &t);
        break;
    case STEP_VERIFY:
        rc = step_verify(&pl, &t);
        break;
    }
    rc = rc == 0 ? 0 : 1;
    if (rc == 0)
        printf("%s: transcript %s\n", step_names[pl.step], pl.transcript);
out:
    cer_transcript_close(&t);
    hsm_secret_free(pl.pin);
    hsm_secret_free(pl.so_pin);
    hsm_secret_free(pl.issuer_pin);
    X509_free(pl.issuer_cert);
    X509_NAME_free(pl.subject);
    cyaml_free(&cfg, &file_schema, pl.f, 0);
    return rc;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: %s run FILE.yaml [--transcript PATH]\n"
            "       %s verify-transcript FILE\n",
            prog, prog);
    return 2;
}

int main(int argc, char **argv)
{
    FILE *devnull = NULL;
    int rc;

    /* hsm/ logs diagnostics; the tool's contract is one line per error on stderr, so the log is
     * silent unless ACMEGW_LOG_LEVEL asks for it. */
    if (getenv("ACMEGW_LOG_LEVEL") == NULL) {
        devnull = fopen("/dev/null", "w");
        if (devnull != NULL)
            agw_log_set_file(devnull);
    }
    if (argc == 3 && strcmp(argv[1], "run") == 0)
        rc = run(argv[2], NULL);
    else if (argc == 5 && strcmp(argv[1], "run") == 0 && strcmp(argv[3], "--transcript") == 0)
        rc = run(argv[2], argv[4]);
    else if (argc == 5 && strcmp(argv[1], "run") == 0 && strcmp(argv[2], "--transcript") == 0)
        rc = run(argv[4], argv[3]);
    else if (argc == 3 && strcmp(argv[1], "verify-transcript") == 0)
        rc = cer_transcript_verify(argv[2]);
    else
        rc = usage();
    if (devnull != NULL) {
        agw_log_set_file(NULL);
        fclose(devnull);
    }
    return rc;
}

/*
 * tools/ceremony.h - shared between tools/ceremony.c (YAML, steps) and tools/ceremony_transcript.c
 * (the JSON-lines transcript: hash chain, signature lines, verify-transcript).
 */
#ifndef AGW_TOOLS_CEREMONY_H
#define AGW_TOOLS_CEREMONY_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <jansson.h>

#include "hsm/hsm.h"

/* ---------------------------------------------------------------- the ceremony file (libcyaml) */

struct cer_subject_rdn { /* one "- CN: value" entry: exactly one member is set */
    char *c, *st, *l, *o, *ou, *cn, *dc, *serial_number, *email;
};

struct cer_name_constraints {
    char **permitted_dns;
    unsigned permitted_dns_count;
    char **excluded_dns;
    unsigned excluded_dns_count;
    char **permitted_ip;
    unsigned permitted_ip_count;
};

struct cer_token {
    char *module;
    char *label;
    char *uri;
    char *pin_file, *pin_env;
    char *so_pin_file, *so_pin_env; /* init-token only */
};

struct cer_key {
    char *algorithm; /* root, intermediate */
    char *label;
    char *id; /* hex */
    bool allow_weak_test_key;
};

struct cer_profile {
    struct cer_subject_rdn *subject;
    unsigned subject_count;
    unsigned validity_days;
    int *path_length; /* optional */
    char **key_usage;
    unsigned key_usage_count;
    struct cer_name_constraints *name_constraints; /* optional */
};

struct cer_issuer { /* intermediate: the key that signs */
    struct cer_token *token;
    struct cer_key *key;
    char *cert; /* the issuer's certificate (PEM) */
};

struct cer_file {
    char *step;
    struct cer_token *token;
    struct cer_key *key;
    struct cer_profile *certificate;
    struct cer_issuer *issuer;
    char *cert;     /* crl: the CA certificate of the key; verify: the certificate to check */
    char *cert_out; /* root, intermediate */
    char *crl_out;  /* crl */
    unsigned next_update_days;
    char *transcript; /* optional; --transcript overrides */
};

/* ---------------------------------------------------------------- transcript */

struct cer_transcript {
    char *path;
    unsigned char *data; /* the whole file as read + appended */
    size_t len;
};

/* Opens (or starts) the transcript: reads what exists and checks the file ends with a newline.
 * Prints one error line and returns non-zero on failure. */
int cer_transcript_open(struct cer_transcript *t, const char *path);
void cer_transcript_close(struct cer_transcript *t);

/* Appends obj (stolen) as one line; adds "prev" (SHA-256 of the previous line) and writes with
 * fsync. Returns 0 or prints one error line and returns -1. */
int cer_transcript_append(struct cer_transcript *t, json_t *obj);

/*
 * Appends the step's signature line: the SHA-256 of everything so far, carried in an attestation
 * certificate (CN "acmegw transcript", extension CER_DIGEST_OID) signed by s's key.
 */
int cer_transcript_sign(struct cer_transcript *t, const char *step, struct hsm_signer *s);

/* verify-transcript FILE: returns the process exit code (0 ok, 1 failed). */
int cer_transcript_verify(const char *path);

/* Helpers shared by both files. */
void cer_sha256_hex(const void *data, size_t len, char out[65]);
int cer_file_sha256(const char *path, char out[65]);  /* 0, or -1 if it cannot be read */
char *cer_b64(const unsigned char *data, size_t len); /* malloc'd, NUL-terminated, or NULL */
void cer_rfc3339(time_t t, char out[32]);

#define CER_DIGEST_OID "1.3.6.1.4.1.55555.1.1"

/* The one error line: "acmegw-ceremony: ..." */
void cer_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

/*
 * store/internal.h - shared between the files of store/ only; nobody else includes it.
 *
 * Sealed EAB HMAC key layout (a BLOB column of eab_keys):
 *   1 byte version (ST_SEAL_VERSION) || 12-byte random IV || ciphertext || 16-byte GCM tag
 * The AAD is the version byte followed by the kid, so a blob copied to another row (or a
 * different kid) fails to open instead of handing out another key's secret.
 */
#ifndef AGW_STORE_INTERNAL_H
#define AGW_STORE_INTERNAL_H

#include <stddef.h>

#define ST_SEAL_KEY_LEN  32
#define ST_SEAL_VERSION  1
#define ST_SEAL_IV_LEN   12
#define ST_SEAL_TAG_LEN  16
#define ST_SEAL_OVERHEAD (1 + ST_SEAL_IV_LEN + ST_SEAL_TAG_LEN)

/*
 * Encrypts pt (pt_len bytes) under key with AES-256-GCM, AAD bound to kid.
 *   out       caller's buffer of out_size >= pt_len + ST_SEAL_OVERHEAD; *out_len gets the length.
 * Returns 0, AGW_ERR_BAD_INPUT (buffer too small, kid NULL) or AGW_ERR_INTERNAL (OpenSSL).
 */
int st_seal(const unsigned char key[ST_SEAL_KEY_LEN], const char *kid, const unsigned char *pt,
            size_t pt_len, unsigned char *out, size_t out_size, size_t *out_len);

/*
 * Opens a blob made by st_seal() for the same kid. pt gets the plaintext (pt_size bytes room).
 * Returns 0; AGW_ERR_STORE if the blob is malformed, was sealed under another key or for another
 * kid, or was altered (pt is wiped then: no partial plaintext is left); AGW_ERR_BAD_INPUT if pt is
 * too small; AGW_ERR_INTERNAL (OpenSSL).
 */
int st_unseal(const unsigned char key[ST_SEAL_KEY_LEN], const char *kid, const unsigned char *blob,
              size_t blob_len, unsigned char *pt, size_t pt_size, size_t *pt_len);

#endif

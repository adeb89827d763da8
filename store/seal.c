/*
 * store/seal.c - the seal key file and AES-256-GCM sealing of EAB HMAC keys at rest.
 *
 * EAB HMAC keys are the one secret the database holds: whoever reads them can bind accounts to a
 * device class. They are stored encrypted under a 32-byte seal key that lives in its own file,
 * so a copied database file (backup, debug dump) reveals nothing. The key file must be private to
 * the service user: a file with any group or other permission bit is refused rather than used,
 * because a readable key defeats the seal and a writable one lets someone swap it.
 *
 * GCM with a random 96-bit IV per seal: keys are sealed a handful of times per day, far from the
 * 2^32 limit for random IVs under one key. The AAD carries the kid, so a blob moved to another
 * row does not open.
 */
#include "store/internal.h"
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "common/err.h"
#include "common/log.h"

static int write_all(int fd, const unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += (size_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* Makes a new key file; AGW_ERR_EXISTS if someone else created it first. */
static int seal_key_create(const char *path, unsigned char key[ST_SEAL_KEY_LEN])
{
    int fd, err = AGW_ERR_IO;

    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return AGW_ERR_EXISTS;
        LOG_ERROR("store.seal_key_create", "path=%s errno=%s", path, strerror(errno));
        return AGW_ERR_IO;
    }
    if (RAND_bytes(key, ST_SEAL_KEY_LEN) != 1) {
        LOG_ERROR("store.seal_key_create", "path=%s error=RAND_bytes", path);
        err = AGW_ERR_INTERNAL;
        goto fail;
    }
    /* open()'s mode is filtered by umask, which can only remove bits: 0600 or stricter. */
    if (write_all(fd, key, ST_SEAL_KEY_LEN) != 0 || fsync(fd) != 0) {
        LOG_ERROR("store.seal_key_create", "path=%s errno=%s", path, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    LOG_INFO("store.seal_key_created", "path=%s", path);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    OPENSSL_cleanse(key, ST_SEAL_KEY_LEN);
    unlink(path); /* never leave a half-written key behind for the next start to trust */
    return err;
}

int st_seal_key_load(const char *path, int create, unsigned char key[32])
{
    unsigned char buf[ST_SEAL_KEY_LEN + 1];
    struct stat sb;
    size_t got = 0;
    int fd, err;

    if (path == NULL || key == NULL)
        return AGW_ERR_BAD_INPUT;
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create != 0) {
        err = seal_key_create(path, key);
        if (err != AGW_ERR_EXISTS)
            return err;
        fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC); /* lost a creation race: read it */
    }
    if (fd < 0) {
        if (errno == ENOENT) {
            LOG_ERROR("store.seal_key", "path=%s error=missing", path);
            return AGW_ERR_NOT_FOUND;
        }
        LOG_ERROR("store.seal_key", "path=%s errno=%s", path, strerror(errno));
        return AGW_ERR_IO;
    }
    err = AGW_ERR_IO;
    if (fstat(fd, &sb) != 0)
        goto done;
    err = AGW_ERR_BAD_CONFIG;
    if (!S_ISREG(sb.st_mode)) {
        LOG_ERROR("store.seal_key", "path=%s error=not_a_regular_file", path);
        goto done;
    }
    if ((sb.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        LOG_ERROR("store.seal_key",
                  "path=%s mode=%04o error=group_or_other_access hint=\"chmod 600 the file\"", path,
                  (unsigned)(sb.st_mode & 07777));
        goto done;
    }
    /* Read one byte more than we want, so a longer file is noticed, not silently cut. */
    while (got < sizeof(buf)) {
        ssize_t n = read(fd, buf + got, sizeof(buf) - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            LOG_ERROR("store.seal_key", "path=%s errno=%s", path, strerror(errno));
            err = AGW_ERR_IO;
            goto done;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got != ST_SEAL_KEY_LEN) {
        LOG_ERROR("store.seal_key", "path=%s error=wrong_size want=%d", path, ST_SEAL_KEY_LEN);
        err = AGW_ERR_BAD_INPUT;
        goto done;
    }
    memcpy(key, buf, ST_SEAL_KEY_LEN);
    err = 0;
done:
    OPENSSL_cleanse(buf, sizeof(buf));
    close(fd);
    return err;
}

static int openssl_fail(const char *what)
{
    unsigned long e = ERR_get_error();

    LOG_ERROR("store.seal", "op=%s openssl=%s", what,
              e != 0 ? ERR_reason_error_string(e) : "unknown");
    ERR_clear_error();
    return AGW_ERR_INTERNAL;
}

/* AAD = version byte, then the kid: a blob opens only in the row it was made for. */
static int add_aad(EVP_CIPHER_CTX *ctx, int enc, const char *kid)
{
    static const unsigned char version = ST_SEAL_VERSION;
    size_t kid_len = strlen(kid);
    int n;

    if (kid_len > INT_MAX)
        return AGW_ERR_BAD_INPUT;
    if (EVP_CipherUpdate(ctx, NULL, &n, &version, 1) != 1 ||
        EVP_CipherUpdate(ctx, NULL, &n, (const unsigned char *)kid, (int)kid_len) != 1)
        return openssl_fail(enc ? "seal_aad" : "unseal_aad");
    return 0;
}

int st_seal(const unsigned char key[ST_SEAL_KEY_LEN], const char *kid, const unsigned char *pt,
            size_t pt_len, unsigned char *out, size_t out_size, size_t *out_len)
{
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char *iv = out + 1, *ct = out + 1 + ST_SEAL_IV_LEN;
    int n, fin, err;

    *out_len = 0;
    if (kid == NULL || pt_len > INT_MAX - ST_SEAL_OVERHEAD || out_size < pt_len + ST_SEAL_OVERHEAD)
        return AGW_ERR_BAD_INPUT;
    out[0] = ST_SEAL_VERSION;
    if (RAND_bytes(iv, ST_SEAL_IV_LEN) != 1)
        return openssl_fail("seal_iv");
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return AGW_ERR_NOMEM;
    /* 12 bytes is GCM's default IV length, so no EVP_CTRL_GCM_SET_IVLEN is needed. */
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, iv) != 1) {
        err = openssl_fail("seal_init");
        goto done;
    }
    err = add_aad(ctx, 1, kid);
    if (err != 0)
        goto done;
    if (EVP_EncryptUpdate(ctx, ct, &n, pt, (int)pt_len) != 1 ||
        EVP_EncryptFinal_ex(ctx, ct + n, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ST_SEAL_TAG_LEN, ct + pt_len) != 1) {
        err = openssl_fail("seal");
        goto done;
    }
    *out_len = pt_len + ST_SEAL_OVERHEAD;
    err = 0;
done:
    EVP_CIPHER_CTX_free(ctx); /* wipes the expanded key schedule */
    return err;
}

int st_unseal(const unsigned char key[ST_SEAL_KEY_LEN], const char *kid, const unsigned char *blob,
              size_t blob_len, unsigned char *pt, size_t pt_size, size_t *pt_len)
{
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char tag[ST_SEAL_TAG_LEN];
    size_t ct_len;
    int n, fin, err;

    *pt_len = 0;
    if (kid == NULL)
        return AGW_ERR_BAD_INPUT;
    if (blob == NULL || blob_len < ST_SEAL_OVERHEAD || blob_len > INT_MAX ||
        blob[0] != ST_SEAL_VERSION) {
        LOG_ERROR("store.unseal", "kid=%s error=malformed_blob", kid);
        return AGW_ERR_STORE;
    }
    ct_len = blob_len - ST_SEAL_OVERHEAD;
    if (pt_size < ct_len)
        return AGW_ERR_BAD_INPUT;
    memcpy(tag, blob + blob_len - ST_SEAL_TAG_LEN, ST_SEAL_TAG_LEN);
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return AGW_ERR_NOMEM;
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, blob + 1) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ST_SEAL_TAG_LEN, tag) != 1) {
        err = openssl_fail("unseal_init");
        goto done;
    }
    err = add_aad(ctx, 0, kid);
    if (err != 0)
        goto done;
    if (EVP_DecryptUpdate(ctx, pt, &n, blob + 1 + ST_SEAL_IV_LEN, (int)ct_len) != 1) {
        err = openssl_fail("unseal");
        goto done;
    }
    /* The tag is checked here: a wrong seal key, another row's blob or a flipped bit all fail. */
    if (EVP_DecryptFinal_ex(ctx, pt + n, &fin) != 1) {
        ERR_clear_error();
        LOG_ERROR("store.unseal",
                  "kid=%s error=authentication_failed "
                  "hint=\"wrong seal key, or the row was altered\"",
                  kid);
        OPENSSL_cleanse(pt, ct_len);
        err = AGW_ERR_STORE;
        goto done;
    }
    *pt_len = ct_len;
    err = 0;
done:
    EVP_CIPHER_CTX_free(ctx);
    return err;
}

/*
 * tests/p11shim.c - a PKCS#11 module for tests that wraps a real one (SoftHSM2) and can make it
 * fail the way a network HSM does: refuse new sessions, or hang inside a call.
 *
 *   P11SHIM_MODULE   the real module (dlopen'd by C_GetFunctionList)
 *   P11SHIM_CONTROL  a file whose first word is the mode, read at every call below:
 *     up     (or no file) pass everything through
 *     down   C_OpenSession answers CKR_DEVICE_ERROR: the HSM is unreachable (with libp11 0.4.12
 *            this makes PKCS11_login() wait forever when no session is pooled; notes §5)
 *     hang   C_OpenSession and C_SignInit block, as a dead TCP peer would, until the mode
 *            changes; then they answer CKR_DEVICE_ERROR (so a test ends with no thread stuck)
 *
 * Only C_OpenSession and C_SignInit are wrapped; every other entry is the real module's.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

enum mode { MODE_UP, MODE_DOWN, MODE_HANG };

static CK_FUNCTION_LIST shim;
static CK_FUNCTION_LIST_PTR real;

static enum mode mode_now(void)
{
    const char *path = getenv("P11SHIM_CONTROL");
    char word[16] = "";
    FILE *f = path != NULL ? fopen(path, "r") : NULL;

    if (f == NULL)
        return MODE_UP;
    if (fscanf(f, "%15s", word) != 1)
        word[0] = '\0';
    fclose(f);
    if (strcmp(word, "down") == 0)
        return MODE_DOWN;
    if (strcmp(word, "hang") == 0)
        return MODE_HANG;
    return MODE_UP;
}

/* CKR_OK to go on to the real module, else what to answer. */
static CK_RV gate(void)
{
    const struct timespec tick = {0, 50 * 1000 * 1000};
    enum mode m = mode_now();

    if (m == MODE_DOWN)
        return CKR_DEVICE_ERROR;
    if (m != MODE_HANG)
        return CKR_OK;
    while (mode_now() == MODE_HANG)
        nanosleep(&tick, NULL);
    return CKR_DEVICE_ERROR;
}

static CK_RV shim_open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                               CK_SESSION_HANDLE_PTR session)
{
    CK_RV rv = gate();

    return rv != CKR_OK ? rv : real->C_OpenSession(slot, flags, app, notify, session);
}

static CK_RV shim_sign_init(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
    CK_RV rv = gate();

    return rv != CKR_OK ? rv : real->C_SignInit(session, mech, key);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    const char *path = getenv("P11SHIM_MODULE");
    CK_C_GetFunctionList get;
    void *h, *sym;

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    if (real == NULL) {
        h = path != NULL ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
        sym = h != NULL ? dlsym(h, "C_GetFunctionList") : NULL;
        memcpy(&get, &sym, sizeof(get)); /* POSIX: a symbol's address as a function pointer */
        if (sym == NULL || get(&real) != CKR_OK || real == NULL) {
            fprintf(stderr, "p11shim: cannot load P11SHIM_MODULE=%s\n", path ? path : "(unset)");
            real = NULL;
            return CKR_GENERAL_ERROR;
        }
        shim = *real;
        shim.C_OpenSession = shim_open_session;
        shim.C_SignInit = shim_sign_init;
    }
    *out = &shim;
    return CKR_OK;
}

/*
 * tests/testlib.c - fixtures behind tests/testlib.h.
 */
#include "tests/testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int tl_tmpdir(char *buf, size_t size)
{
    const char *base = getenv("TMPDIR");
    int n = snprintf(buf, size, "%s/acmegw-test-XXXXXX", base != NULL ? base : "/tmp");

    if (n < 0 || (size_t)n >= size)
        return -1;
    return mkdtemp(buf) != NULL ? 0 : -1;
}

void tl_rmtree(const char *path)
{
    char cmd[4200];
    int n = snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);

    if (n > 0 && (size_t)n < sizeof(cmd) && strchr(path, '\'') == NULL)
        (void)!system(cmd);
}

int tl_softhsm_setup(const char *dir)
{
    char conf[4200], tokens[4200];
    FILE *f;

    snprintf(tokens, sizeof(tokens), "%s/tokens", dir);
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", dir);
    if (mkdir(tokens, 0700) != 0)
        return -1;
    f = fopen(conf, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens);
    fclose(f);
    return setenv("SOFTHSM2_CONF", conf, 1);
}

const char *tl_softhsm_module(void)
{
    const char *m = getenv("SOFTHSM2_MODULE");
    return m != NULL && m[0] != '\0' ? m : "/usr/lib/softhsm/libsofthsm2.so";
}

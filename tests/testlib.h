/*
 * tests/testlib.h - shared fixtures for unit tests: temporary directories and a fresh SoftHSM2
 * token per test (SOFTHSM2_CONF pointing into the temporary directory).
 */
#ifndef AGW_TESTS_TESTLIB_H
#define AGW_TESTS_TESTLIB_H

#include <stddef.h>

/* Creates a fresh directory under $TMPDIR (or /tmp); path copied into buf. Returns 0 or -1. */
int tl_tmpdir(char *buf, size_t size);
/* Removes the tree (rm -rf). */
void tl_rmtree(const char *path);
/* Writes dir/softhsm2.conf with tokendir dir/tokens and sets SOFTHSM2_CONF. Returns 0 or -1. */
int tl_softhsm_setup(const char *dir);
/* The SoftHSM2 module path ($SOFTHSM2_MODULE or the Debian default). */
const char *tl_softhsm_module(void);

#endif

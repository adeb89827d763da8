/*
 * policy/lint.c - `acmegw-admin policy lint` and CI: every problem in a policy file, with its
 * position, instead of only the first.
 *
 * The checks are load.c's, run in the same order with the same messages, so a file lint accepts
 * is a file pol_set_load_dir() loads. Lint goes on after a problem where a later pass still makes
 * sense: all schema problems are listed (unknown keys, wrong types, missing keys), and when the
 * schema holds, all problems of meaning (patterns, CIDRs, key types, contradictions).
 */
#include "policy/policy.h"

#include "common/err.h"
#include "policy/internal.h"

int pol_lint_file(const char *path, FILE *out)
{
    struct pol_class c;
    int rc;

    if (path == NULL || out == NULL)
        return AGW_ERR_BAD_INPUT;
    rc = pol_load_file(path, &c, out, NULL, 0);
    pol_class_clear(&c);
    return rc;
}

/*
 * tests/check.h - the unit-test harness: CHECK_* record a failure and go on; main() returns the
 * failure count, so meson marks the test failed. No timing assertions.
 */
#ifndef AGW_TESTS_CHECK_H
#define AGW_TESTS_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        check_count++;                                                                        \
        if (!(cond)) {                                                                        \
            check_failures++;                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);          \
        }                                                                                     \
    } while (0)

#define CHECK_INT(got, want)                                                                  \
    do {                                                                                      \
        long long check_g_ = (long long)(got), check_w_ = (long long)(want);                  \
        check_count++;                                                                        \
        if (check_g_ != check_w_) {                                                           \
            check_failures++;                                                                 \
            fprintf(stderr, "%s:%d: %s = %lld, want %lld\n", __FILE__, __LINE__, #got,        \
                    check_g_, check_w_);                                                      \
        }                                                                                     \
    } while (0)

#define CHECK_STR(got, want)                                                                  \
    do {                                                                                      \
        const char *check_g_ = (got), *check_w_ = (want);                                     \
        check_count++;                                                                        \
        if (check_g_ == NULL || strcmp(check_g_, check_w_) != 0) {                            \
            check_failures++;                                                                 \
            fprintf(stderr, "%s:%d: %s = \"%s\", want \"%s\"\n", __FILE__, __LINE__, #got,    \
                    check_g_ ? check_g_ : "(null)", check_w_);                                \
        }                                                                                     \
    } while (0)

#define RUN(fn)                                                                               \
    do {                                                                                      \
        int check_before_ = check_failures;                                                   \
        fn();                                                                                 \
        fprintf(stderr, "%s %s\n", check_failures == check_before_ ? "ok  " : "FAIL", #fn);   \
    } while (0)

#define CHECK_DONE()                                                                          \
    (fprintf(stderr, "%d checks, %d failed\n", check_count, check_failures),                  \
     check_failures == 0 && check_count > 0 ? 0 : 1)

#endif

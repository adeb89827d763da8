/*
 * tests/unit/test_ari.c - RFC 9773 renewal windows (gateway/ari.h): the last third of the
 * validity minus a sixth of margin, exact to the second for any length, and in the past for a
 * revoked certificate.
 */
#include "gateway/ari.h"

#include "tests/check.h"

#include <stdint.h>

static void window_of_90_days_is_day_60_to_75(void)
{
    int64_t nb = 1700000000, na = nb + 90 * 86400, s = 0, e = 0;

    gw_ari_window(nb, na, 0, &s, &e);
    CHECK_INT(s, nb + 60 * 86400);
    CHECK_INT(e, nb + 75 * 86400);
}

static void window_is_floor_of_exact_fractions(void)
{
    int64_t nb = 1000, s = 0, e = 0;

    /* v = 7: 2v/3 = 4.67 -> 4, 5v/6 = 5.83 -> 5 */
    gw_ari_window(nb, nb + 7, 0, &s, &e);
    CHECK_INT(s, nb + 4);
    CHECK_INT(e, nb + 5);
    for (int64_t v = 1; v < 5000; v += 37) {
        gw_ari_window(nb, nb + v, 0, &s, &e);
        CHECK_INT(s, nb + 2 * v / 3);
        CHECK_INT(e, nb + 5 * v / 6);
    }
}

static void window_starts_before_it_ends_and_before_expiry(void)
{
    int64_t nb = 1700000000, s = 0, e = 0;

    gw_ari_window(nb, nb + 3600, 0, &s, &e); /* a 1-hour lab certificate */
    CHECK(s > nb);
    CHECK(s < e);
    CHECK(e < nb + 3600);
    CHECK_INT(nb + 3600 - e, 600); /* a sixth of the lifetime is left for retries */
}

static void window_of_long_validity_does_not_overflow(void)
{
    int64_t nb = INT64_C(4000000000), na = nb + INT64_C(3650) * 86400, s = 0, e = 0;

    gw_ari_window(nb, na, 0, &s, &e);
    CHECK_INT(s, nb + (na - nb) / 3 * 2);
    CHECK(e > s && e < na);
}

static void revoked_window_is_in_the_past(void)
{
    int64_t nb = 1700000000, revoked = nb + 86400, s = 0, e = 0;

    gw_ari_window(nb, nb + 90 * 86400, revoked, &s, &e);
    CHECK_INT(e, revoked);
    CHECK_INT(s, revoked - 3600);
}

static void broken_validity_gives_an_immediate_window(void)
{
    int64_t s = 1, e = 1;

    gw_ari_window(2000, 1000, 0, &s, &e); /* notAfter before notBefore: renew at notBefore */
    CHECK_INT(s, 2000);
    CHECK_INT(e, 2000);
}

int main(void)
{
    RUN(window_of_90_days_is_day_60_to_75);
    RUN(window_is_floor_of_exact_fractions);
    RUN(window_starts_before_it_ends_and_before_expiry);
    RUN(window_of_long_validity_does_not_overflow);
    RUN(revoked_window_is_in_the_past);
    RUN(broken_validity_gives_an_immediate_window);
    return CHECK_DONE();
}

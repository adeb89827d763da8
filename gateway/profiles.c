/*
 * gateway/profiles.c - ACME profiles (draft-aaron-acme-profiles): what the directory advertises
 * and what newOrder accepts.
 *
 * A profile is a policy profile (policy/load.c: name, validity, key usages, CRL URLs, ...).
 * The directory lists the union over all classes, because the directory is the same for every
 * account; newOrder accepts only the profiles of the account's own class, so naming another
 * class's profile is invalidProfile like naming none that exists. The chosen name is stored on the
 * order (orders.profile) and finalize passes it to pol_build_cert(), which shapes the certificate.
 * The directory is built once at start-up: after a policy reload it lists the profiles of the
 * policy the gateway started with (newOrder always checks the current policy).
 */
#include "gateway/profiles.h"

#include "common/err.h"
#include "policy/policy.h"

#include <stdio.h>
#include <string.h>

json_t *gw_profiles_meta(const struct pol_set *p)
{
    json_t *m = json_object();

    if (m == NULL)
        return NULL;
    for (size_t i = 0; i < pol_set_n_classes(p); i++) {
        const struct pol_class *c = pol_set_class_at(p, i);
        const char *name;

        for (size_t k = 0; (name = pol_class_profile_name(c, k)) != NULL; k++) {
            const char *d = pol_class_profile_description(c, k);
            json_t *have = json_object_get(m, name);
            char fallback[GW_MAX_PROFILE_LEN + 16];

            if (have != NULL && (d == NULL || strncmp(json_string_value(have), "profile ", 8)))
                continue;
            snprintf(fallback, sizeof(fallback), "profile %.64s", name);
            json_object_set_new(m, name, json_string(d != NULL ? d : fallback));
        }
    }
    if (json_object_size(m) == 0) {
        json_decref(m);
        return NULL;
    }
    return m;
}

int gw_profile_check(const struct pol_class *cls, const json_t *v, char *out, size_t out_size,
                     const char **detail)
{
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    const char *name;

    out[0] = '\0';
    if (s == NULL || len == 0 || len > GW_MAX_PROFILE_LEN || len >= out_size || strlen(s) != len) {
        *detail = "profile must be a string of 1 to 64 characters";
        return AGW_ERR_INVALID_PROFILE;
    }
    for (size_t k = 0; (name = pol_class_profile_name(cls, k)) != NULL; k++) {
        if (strcmp(name, s) == 0) {
            memcpy(out, s, len + 1);
            return 0;
        }
    }
    *detail = "this profile is not offered to your device class (see meta.profiles)";
    return AGW_ERR_INVALID_PROFILE;
}

/*
 * gateway/profiles.h - ACME profiles (draft-aaron-acme-profiles) on top of policy profiles.
 */
#ifndef AGW_GATEWAY_PROFILES_H
#define AGW_GATEWAY_PROFILES_H

#include <stddef.h>

#include <jansson.h>

struct pol_set;
struct pol_class;

#define GW_MAX_PROFILE_LEN 64

/* The directory's meta.profiles: every profile name of every class -> its description (the
 * first class that describes it wins; a profile without one gets "profile <name>"). New
 * reference, or NULL when the set has no profiles (then meta.profiles is left out). */
json_t *gw_profiles_meta(const struct pol_set *p);

/*
 * newOrder "profile": v must be a string of 1..GW_MAX_PROFILE_LEN characters naming a profile
 * of the account's class cls. On 0 out (GW_MAX_PROFILE_LEN + 1 bytes) holds it. Else
 * AGW_ERR_INVALID_PROFILE with *detail set (static text).
 */
int gw_profile_check(const struct pol_class *cls, const json_t *v, char *out, size_t out_size,
                     const char **detail);

#endif

/*
 * hsm/internal.h - helpers shared by the files of hsm/ only (util.c, keygen.c, signer.c).
 * Included from nowhere outside hsm/ (tests/unit/test_signer.c excepted, to test them).
 */
#ifndef AGW_HSM_INTERNAL_H
#define AGW_HSM_INTERNAL_H

/*
 * Does this token match token_ref? token_ref is either a plain label or an RFC 7512 "pkcs11:" URI
 * whose path attributes token=, serial=, manufacturer= and model= must all match (percent-decoded);
 * other attributes (object=, id=, type=, slot-*, library-*) and the query part are ignored.
 * The fields are the token's CK_TOKEN_INFO strings, NUL-terminated; trailing spaces (PKCS#11
 * padding) are ignored on both sides. A NULL field never matches an attribute that names it.
 * Call it with all fields NULL to validate a reference.
 * Returns 1 (match), 0 (no match) or AGW_ERR_BAD_INPUT (empty or malformed reference).
 */
int hsm_token_match(const char *token_ref, const char *label, const char *serial,
                    const char *manufacturer, const char *model);

#endif

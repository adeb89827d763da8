/*
 * policy/certificate.c - building the to-be-signed certificate, and the last check on it before
 * the HSM signs (RFC 5280 profile).
 *
 * pol_build_cert() takes only the key and the names from the CSR; everything else comes from the
 * class's profile. The names are those pol_check_csr() compared with the order, so the gateway
 * must call pol_check_csr() first; we parse them again with the same code and lowercase and
 * deduplicate them, keeping the CSR's order.
 *
 * pol_check_final() does not trust pol_build_cert(): it decodes the finished TBS certificate and
 * re-derives every decision from the class, so a bug anywhere between the two (or in the gateway
 * that edits the template) cannot make the HSM sign what the policy forbids. It refuses any
 * extension it does not know, an extension present twice, a CA or a path length, KU/EKU other
 * than exactly the profile's, a validity longer than the profile's maximum (plus the backdate),
 * a notBefore more than POL_FINAL_SLACK_S away from now (less the backdate), a key the class does
 * not allow, a SAN type other than dNSName/iPAddress or a name pol_check_identifiers() would
 * refuse, and a subject other than empty or one CN that is one of the SANs. A class with several
 * profiles passes when the certificate matches one of them in full.
 */
#include "policy/policy.h"

#include "common/err.h"
#include "policy/internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

/* RFC 5280 §4.1.2.2: at most 20 octets, positive; CA/B BR ask for >= 64 bits of entropy. */
#define SERIAL_LEN      16
#define MIN_SERIAL_BITS 64
#define MAX_SERIAL_BITS 159
/* RFC 5280 upper bound for a CN (ub-common-name). */
#define MAX_CN_LEN 64

unsigned pol_expected_ku(const struct pol_profile *p, const EVP_PKEY *key)
{
    unsigned ku = p->ku;

    if (key != NULL && EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA)
        ku |= p->ku_rsa_extra;
    return ku;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t era;
    unsigned yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

int pol_asn1_time_to_time_t(const ASN1_TIME *t, int64_t *out)
{
    struct tm tm;

    *out = 0;
    if (t == NULL || ASN1_TIME_check(t) != 1 || ASN1_TIME_to_tm(t, &tm) != 1)
        return AGW_ERR_BAD_INPUT;
    if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31)
        return AGW_ERR_BAD_INPUT;
    *out =
        days_from_civil((int64_t)tm.tm_year + 1900, (unsigned)tm.tm_mon + 1, (unsigned)tm.tm_mday) *
            86400 +
        (int64_t)tm.tm_hour * 3600 + (int64_t)tm.tm_min * 60 + tm.tm_sec;
    return 0;
}

/* RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING value. */
static int key_id(const X509 *x, unsigned char md[EVP_MAX_MD_SIZE], unsigned *md_len)
{
    const ASN1_BIT_STRING *bits = X509_get0_pubkey_bitstr(x);
    const unsigned char *data = bits != NULL ? ASN1_STRING_get0_data(bits) : NULL;
    int len = bits != NULL ? ASN1_STRING_length(bits) : -1;

    if (data == NULL || len <= 0)
        return AGW_ERR_BAD_INPUT;
    if (EVP_Digest(data, (size_t)len, md, md_len, EVP_sha1(), NULL) != 1)
        return AGW_ERR_INTERNAL;
    return 0;
}

/*
 * The subject key, copied from the CSR as the CSR encoded it (algorithm, parameters, key bits).
 * X509_set_pubkey() would encode the decoded key again and decode the result, which in OpenSSL 3.0
 * runs the provider decoder chain: measured at ~7 % of a certificate's CPU. The key was already
 * decoded once, from these bytes, to check it (pol_check_key) and the CSR signature.
 */
static int copy_pubkey(X509 *x, const X509_REQ *req)
{
    X509_PUBKEY *dst = X509_get_X509_PUBKEY(x);
    X509_PUBKEY *src = X509_REQ_get_X509_PUBKEY((X509_REQ *)req); /* 3.0: not const */
    const unsigned char *bits = NULL;
    const void *pval = NULL;
    const ASN1_OBJECT *alg_obj = NULL;
    ASN1_OBJECT *obj = NULL;
    X509_ALGOR *alg = NULL;
    void *param = NULL;
    unsigned char *copy = NULL;
    int nbits = 0, ptype = V_ASN1_UNDEF;

    if (dst == NULL || src == NULL || X509_PUBKEY_get0_param(NULL, &bits, &nbits, &alg, src) != 1 ||
        alg == NULL || bits == NULL || nbits <= 0)
        return AGW_ERR_BAD_CSR;
    X509_ALGOR_get0(&alg_obj, &ptype, &pval, alg);
    if (ptype == V_ASN1_OBJECT)
        param = OBJ_dup(pval); /* EC: the named curve */
    else if (ptype == V_ASN1_SEQUENCE || ptype == V_ASN1_OCTET_STRING)
        param = ASN1_STRING_dup(pval); /* explicit parameters: pol_check_key refused them */
    else if (ptype != V_ASN1_NULL && ptype != V_ASN1_UNDEF)
        return AGW_ERR_BAD_CSR;
    obj = OBJ_dup(alg_obj);
    copy = OPENSSL_memdup(bits, (size_t)nbits);
    if (obj == NULL || copy == NULL || (param == NULL && ptype != V_ASN1_NULL && ptype != V_ASN1_UNDEF)) {
        ASN1_OBJECT_free(obj);
        if (ptype == V_ASN1_OBJECT)
            ASN1_OBJECT_free(param);
        else
            ASN1_STRING_free(param);
        OPENSSL_free(copy);
        return AGW_ERR_NOMEM;
    }
    /* takes obj, param and copy; in 3.0 it fails only where X509_ALGOR_set0 cannot allocate */
    return X509_PUBKEY_set0_param(dst, obj, ptype, param, copy, nbits) == 1 ? 0 : AGW_ERR_NOMEM;
}

static int set_serial(X509 *x)
{
    unsigned char b[SERIAL_LEN];
    BIGNUM *bn = NULL;
    ASN1_INTEGER *serial = NULL;
    int err = AGW_ERR_INTERNAL;

    if (RAND_bytes(b, sizeof(b)) != 1)
        goto fail;
    /* top bit clear: positive without a leading 0x00; next bit set: always 16 octets, so the
     * value keeps 126 random bits and never starts with a zero byte */
    b[0] = (unsigned char)((b[0] & 0x7fu) | 0x40u);
    err = AGW_ERR_NOMEM;
    bn = BN_bin2bn(b, sizeof(b), NULL);
    if (bn == NULL)
        goto fail;
    serial = BN_to_ASN1_INTEGER(bn, NULL);
    if (serial == NULL || X509_set_serialNumber(x, serial) != 1)
        goto fail;
    err = 0;
fail:
    OPENSSL_cleanse(b, sizeof(b));
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    return err;
}

static int set_time(X509 *x, int64_t t, bool not_after)
{
    ASN1_TIME *at = ASN1_TIME_set(NULL, (time_t)t); /* UTCTime until 2049, per §4.1.2.5 */
    int ok;

    if (at == NULL)
        return AGW_ERR_NOMEM;
    ok = not_after ? X509_set1_notAfter(x, at) : X509_set1_notBefore(x, at);
    ASN1_TIME_free(at);
    return ok == 1 ? 0 : AGW_ERR_NOMEM;
}

static int add_ext(X509 *x, int nid, void *value, int crit)
{
    X509_EXTENSION *ext = X509V3_EXT_i2d(nid, crit, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1) == 1;

    X509_EXTENSION_free(ext); /* X509_add_ext() adds a copy */
    return ok ? 0 : AGW_ERR_NOMEM;
}

static int add_basic_constraints(X509 *x)
{
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    int err;

    if (bc == NULL)
        return AGW_ERR_NOMEM;
    bc->ca = 0;
    err = add_ext(x, NID_basic_constraints, bc, 1);
    BASIC_CONSTRAINTS_free(bc);
    return err;
}

static int add_key_usage(X509 *x, unsigned ku)
{
    ASN1_BIT_STRING *bits;
    int err = AGW_ERR_NOMEM;

    if (ku == 0)
        return 0;
    bits = ASN1_BIT_STRING_new();
    if (bits == NULL)
        return AGW_ERR_NOMEM;
    for (int i = 0; i < POL_KU_NBITS; i++) {
        if ((ku & (1u << i)) != 0 && ASN1_BIT_STRING_set_bit(bits, i, 1) != 1)
            goto fail;
    }
    err = add_ext(x, NID_key_usage, bits, 1);
fail:
    ASN1_BIT_STRING_free(bits);
    return err;
}

static int add_ext_key_usage(X509 *x, unsigned eku)
{
    EXTENDED_KEY_USAGE *objs;
    int err = AGW_ERR_NOMEM;

    if (eku == 0)
        return 0;
    objs = sk_ASN1_OBJECT_new_null();
    if (objs == NULL)
        return AGW_ERR_NOMEM;
    for (unsigned i = 0; i < POL_EKU_NBITS; i++) {
        /* OBJ_nid2obj() returns the static table entry: nothing to free */
        if ((eku & (1u << i)) != 0 && sk_ASN1_OBJECT_push(objs, OBJ_nid2obj(pol_eku_nid(i))) <= 0)
            goto fail;
    }
    err = add_ext(x, NID_ext_key_usage, objs, 0);
fail:
    sk_ASN1_OBJECT_free(objs);
    return err;
}

static int add_key_ids(X509 *x, const X509 *issuer)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    ASN1_OCTET_STRING *ski = NULL, *issuer_ski = NULL;
    AUTHORITY_KEYID *akid = NULL;
    int crit = -1, err;

    err = key_id(x, md, &md_len);
    if (err != 0)
        goto fail;
    err = AGW_ERR_NOMEM;
    ski = ASN1_OCTET_STRING_new();
    if (ski == NULL || ASN1_OCTET_STRING_set(ski, md, (int)md_len) != 1)
        goto fail;
    err = add_ext(x, NID_subject_key_identifier, ski, 0);
    if (err != 0)
        goto fail;

    issuer_ski = X509_get_ext_d2i(issuer, NID_subject_key_identifier, &crit, NULL);
    if (issuer_ski == NULL && crit != -1) {
        err = AGW_ERR_BAD_INPUT; /* present but unparsable, or twice */
        goto fail;
    }
    err = AGW_ERR_NOMEM;
    if (issuer_ski == NULL) { /* §4.2.1.1: derive it the way the issuer should have */
        err = key_id(issuer, md, &md_len);
        if (err != 0)
            goto fail;
        err = AGW_ERR_NOMEM;
        issuer_ski = ASN1_OCTET_STRING_new();
        if (issuer_ski == NULL || ASN1_OCTET_STRING_set(issuer_ski, md, (int)md_len) != 1)
            goto fail;
    }
    akid = AUTHORITY_KEYID_new();
    if (akid == NULL)
        goto fail;
    akid->keyid = issuer_ski;
    issuer_ski = NULL; /* moved into akid */
    err = add_ext(x, NID_authority_key_identifier, akid, 0);
fail:
    AUTHORITY_KEYID_free(akid);
    ASN1_OCTET_STRING_free(issuer_ski);
    ASN1_OCTET_STRING_free(ski);
    return err;
}

static int add_san(X509 *x, const struct pol_name *names, size_t n, int crit)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    int err = AGW_ERR_NOMEM;

    if (gens == NULL)
        return AGW_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        GENERAL_NAME *gen = GENERAL_NAME_new();
        ASN1_STRING *value =
            names[i].type == POL_ID_DNS ? ASN1_IA5STRING_new() : ASN1_OCTET_STRING_new();
        int ok;

        if (names[i].type == POL_ID_DNS)
            ok = value != NULL && ASN1_STRING_set(value, names[i].text, -1) == 1;
        else
            ok = value != NULL && ASN1_STRING_set(value, names[i].ip, (int)names[i].ip_len) == 1;
        if (!ok || gen == NULL) {
            ASN1_STRING_free(value);
            GENERAL_NAME_free(gen);
            goto fail;
        }
        GENERAL_NAME_set0_value(gen, names[i].type == POL_ID_DNS ? GEN_DNS : GEN_IPADD, value);
        if (sk_GENERAL_NAME_push(gens, gen) <= 0) {
            GENERAL_NAME_free(gen);
            goto fail;
        }
    }
    err = add_ext(x, NID_subject_alt_name, gens, crit);
fail:
    GENERAL_NAMES_free(gens);
    return err;
}

static GENERAL_NAME *uri_name(const char *uri)
{
    GENERAL_NAME *gen = GENERAL_NAME_new();
    ASN1_IA5STRING *value = ASN1_IA5STRING_new();

    if (gen == NULL || value == NULL || ASN1_STRING_set(value, uri, -1) != 1) {
        GENERAL_NAME_free(gen);
        ASN1_IA5STRING_free(value);
        return NULL;
    }
    GENERAL_NAME_set0_value(gen, GEN_URI, value);
    return gen;
}

static int policies_value(const struct pol_profile *p, CERTIFICATEPOLICIES **out)
{
    CERTIFICATEPOLICIES *cp = sk_POLICYINFO_new_null();

    *out = NULL;
    if (cp == NULL)
        return AGW_ERR_NOMEM;
    for (size_t i = 0; i < p->n_policy_oids; i++) {
        POLICYINFO *pi = POLICYINFO_new();

        if (pi != NULL) {
            ASN1_OBJECT_free(pi->policyid);
            pi->policyid = OBJ_txt2obj(p->policy_oids[i], 1);
        }
        if (pi == NULL || pi->policyid == NULL || sk_POLICYINFO_push(cp, pi) <= 0) {
            POLICYINFO_free(pi);
            sk_POLICYINFO_pop_free(cp, POLICYINFO_free);
            return AGW_ERR_NOMEM;
        }
    }
    *out = cp;
    return 0;
}

static int crl_dp_value(const struct pol_profile *p, CRL_DIST_POINTS **out)
{
    CRL_DIST_POINTS *dps = sk_DIST_POINT_new_null();

    *out = NULL;
    if (dps == NULL)
        return AGW_ERR_NOMEM;
    for (size_t i = 0; i < p->n_crl_urls; i++) { /* one distribution point per URL */
        DIST_POINT *dp = DIST_POINT_new();
        GENERAL_NAME *gen = uri_name(p->crl_urls[i]);
        bool ok = dp != NULL && gen != NULL;

        if (ok) {
            dp->distpoint = DIST_POINT_NAME_new();
            ok = dp->distpoint != NULL;
        }
        if (ok) {
            dp->distpoint->type = 0; /* fullName */
            dp->distpoint->name.fullname = sk_GENERAL_NAME_new_null();
            ok = dp->distpoint->name.fullname != NULL &&
                 sk_GENERAL_NAME_push(dp->distpoint->name.fullname, gen) > 0;
        }
        if (ok)
            gen = NULL; /* owned by dp */
        if (ok)
            ok = sk_DIST_POINT_push(dps, dp) > 0;
        if (!ok) {
            GENERAL_NAME_free(gen);
            DIST_POINT_free(dp);
            sk_DIST_POINT_pop_free(dps, DIST_POINT_free);
            return AGW_ERR_NOMEM;
        }
    }
    *out = dps;
    return 0;
}

static int aia_push(AUTHORITY_INFO_ACCESS *aia, int method_nid, const char *uri)
{
    ACCESS_DESCRIPTION *ad = ACCESS_DESCRIPTION_new();
    GENERAL_NAME *gen = uri_name(uri);

    if (ad == NULL || gen == NULL) {
        ACCESS_DESCRIPTION_free(ad);
        GENERAL_NAME_free(gen);
        return AGW_ERR_NOMEM;
    }
    ASN1_OBJECT_free(ad->method);
    ad->method = OBJ_nid2obj(method_nid); /* static table entry */
    GENERAL_NAME_free(ad->location);
    ad->location = gen;
    if (sk_ACCESS_DESCRIPTION_push(aia, ad) <= 0) {
        ACCESS_DESCRIPTION_free(ad);
        return AGW_ERR_NOMEM;
    }
    return 0;
}

static int aia_value(const struct pol_profile *p, AUTHORITY_INFO_ACCESS **out)
{
    AUTHORITY_INFO_ACCESS *aia = sk_ACCESS_DESCRIPTION_new_null();
    int err = aia != NULL ? 0 : AGW_ERR_NOMEM;

    *out = NULL;
    for (size_t i = 0; err == 0 && i < p->n_ocsp_urls; i++)
        err = aia_push(aia, NID_ad_OCSP, p->ocsp_urls[i]);
    for (size_t i = 0; err == 0 && i < p->n_ca_issuer_urls; i++)
        err = aia_push(aia, NID_ad_ca_issuers, p->ca_issuer_urls[i]);
    if (err != 0) {
        sk_ACCESS_DESCRIPTION_pop_free(aia, ACCESS_DESCRIPTION_free);
        return err;
    }
    *out = aia;
    return 0;
}

/*
 * The profile's certificatePolicies, cRLDistributionPoints and authorityInfoAccess, all
 * non-critical, or *out NULL when the profile has none of that kind. Caller frees *out.
 */
static int profile_ext(const struct pol_profile *p, int nid, X509_EXTENSION **out)
{
    void *value = NULL;
    int err;

    *out = NULL;
    if (nid == NID_certificate_policies) {
        if (p->n_policy_oids == 0)
            return 0;
        err = policies_value(p, (CERTIFICATEPOLICIES **)&value);
    } else if (nid == NID_crl_distribution_points) {
        if (p->n_crl_urls == 0)
            return 0;
        err = crl_dp_value(p, (CRL_DIST_POINTS **)&value);
    } else {
        if (p->n_ocsp_urls == 0 && p->n_ca_issuer_urls == 0)
            return 0;
        err = aia_value(p, (AUTHORITY_INFO_ACCESS **)&value);
    }
    if (err != 0)
        return err;
    *out = X509V3_EXT_i2d(nid, 0, value);
    if (nid == NID_certificate_policies)
        sk_POLICYINFO_pop_free(value, POLICYINFO_free);
    else if (nid == NID_crl_distribution_points)
        sk_DIST_POINT_pop_free(value, DIST_POINT_free);
    else
        sk_ACCESS_DESCRIPTION_pop_free(value, ACCESS_DESCRIPTION_free);
    return *out != NULL ? 0 : AGW_ERR_NOMEM;
}

static const int profile_ext_nids[] = {NID_certificate_policies, NID_crl_distribution_points,
                                       NID_info_access};

static int add_profile_exts(X509 *x, const struct pol_profile *p)
{
    for (size_t i = 0; i < sizeof(profile_ext_nids) / sizeof(profile_ext_nids[0]); i++) {
        X509_EXTENSION *ext = NULL;
        int err = profile_ext(p, profile_ext_nids[i], &ext);

        if (err == 0 && ext != NULL && X509_add_ext(x, ext, -1) != 1)
            err = AGW_ERR_NOMEM;
        X509_EXTENSION_free(ext);
        if (err != 0)
            return err;
    }
    return 0;
}

/* Removes later duplicates in place, keeping the first spelling and the order. */
static size_t dedup_names(struct pol_name *names, size_t n)
{
    size_t kept = 0;

    for (size_t i = 0; i < n; i++) {
        if (!pol_name_in(&names[i], names, kept)) {
            if (kept != i)
                names[kept] = names[i];
            kept++;
        }
    }
    return kept;
}

int pol_build_cert(const struct pol_class *c, const char *profile, const X509_REQ *csr,
                   const X509 *issuer_cert, time_t now, X509 **out)
{
    X509_REQ *req = (X509_REQ *)csr; /* OpenSSL 3.0 getters are not const; nothing is modified */
    const struct pol_profile *prof;
    struct pol_name *names = NULL, cn;
    size_t n_names = 0;
    const struct pol_name *subject_name;
    X509_NAME *subject = NULL;
    X509 *x = NULL;
    const EVP_PKEY *key;
    EVP_PKEY *owned = NULL;
    bool have_cn = false;
    int64_t not_before, not_after, issuer_not_after;
    int err;

    if (out == NULL)
        return AGW_ERR_BAD_INPUT;
    *out = NULL;
    if (c == NULL || csr == NULL || issuer_cert == NULL)
        return AGW_ERR_BAD_INPUT;
    prof = pol_profile_find(c, profile);
    if (prof == NULL)
        return AGW_ERR_INVALID_PROFILE;
    key = pol_pubkey(X509_REQ_get_X509_PUBKEY(req), &owned);
    err = key == NULL ? AGW_ERR_BAD_CSR : pol_check_key(c, key, NULL, 0);
    if (err != 0)
        goto fail;
    err = pol_csr_names(req, &names, &n_names, NULL, 0);
    if (err != 0)
        goto fail;
    n_names = dedup_names(names, n_names);
    err = AGW_ERR_BAD_CSR;
    if (pol_subject_cn(X509_REQ_get_subject_name(csr), &cn, &have_cn, NULL, 0) != 0)
        goto fail;
    subject_name = &names[0];
    for (size_t i = 0; have_cn && i < n_names; i++) {
        if (pol_name_eq(&cn, &names[i]))
            subject_name = &names[i]; /* the CSR's choice, in our spelling */
    }

    err = pol_asn1_time_to_time_t(X509_get0_notAfter(issuer_cert), &issuer_not_after);
    if (err != 0)
        goto fail;
    not_before = (int64_t)now - POL_BACKDATE_S;
    not_after = (int64_t)now + prof->default_validity_s;
    if (issuer_not_after <= (int64_t)now) {
        err = AGW_ERR_BAD_CONFIG; /* the issuer has expired: nothing valid can be issued */
        goto fail;
    }
    if (not_after > issuer_not_after)
        not_after = issuer_not_after;

    err = AGW_ERR_NOMEM;
    x = X509_new();
    subject = X509_NAME_new();
    if (x == NULL || subject == NULL || X509_set_version(x, X509_VERSION_3) != 1)
        goto fail;
    err = set_serial(x);
    if (err != 0)
        goto fail;
    err = AGW_ERR_NOMEM;
    if (c->subject.cert_cn && strlen(subject_name->text) <= MAX_CN_LEN &&
        X509_NAME_add_entry_by_NID(subject, NID_commonName, MBSTRING_UTF8,
                                   (const unsigned char *)subject_name->text, -1, -1, 0) != 1)
        goto fail;
    if (X509_set_subject_name(x, subject) != 1 ||
        X509_set_issuer_name(x, X509_get_subject_name(issuer_cert)) != 1)
        goto fail;
    err = copy_pubkey(x, csr);
    if (err == 0)
        err = set_time(x, not_before, false);
    if (err == 0)
        err = set_time(x, not_after, true);
    if (err == 0)
        err = add_basic_constraints(x);
    if (err == 0)
        err = add_key_usage(x, pol_expected_ku(prof, key));
    if (err == 0)
        err = add_ext_key_usage(x, prof->eku);
    if (err == 0)
        err = add_key_ids(x, issuer_cert);
    if (err == 0) /* §4.2.1.6: critical when the subject is empty */
        err = add_san(x, names, n_names, X509_NAME_entry_count(subject) == 0 ? 1 : 0);
    if (err == 0)
        err = add_profile_exts(x, prof);
    if (err != 0)
        goto fail;
    *out = x;
    x = NULL;
fail:
    X509_free(x);
    X509_NAME_free(subject);
    free(names);
    EVP_PKEY_free(owned);
    return err;
}

/* ---- pol_check_final ---- */

static bool ext_known(int nid)
{
    switch (nid) {
    case NID_basic_constraints:
    case NID_key_usage:
    case NID_ext_key_usage:
    case NID_subject_key_identifier:
    case NID_authority_key_identifier:
    case NID_subject_alt_name:
    case NID_certificate_policies: /* profile_ext(): exact DER per profile */
    case NID_crl_distribution_points:
    case NID_info_access:
        return true;
    default:
        return false;
    }
}

static int final_extensions(const X509 *tbs, char *detail, size_t detail_size)
{
    int n = X509_get_ext_count(tbs);

    for (int i = 0; i < n; i++) {
        const ASN1_OBJECT *obj = X509_EXTENSION_get_object(X509_get_ext(tbs, i));
        char oid[80];

        if (!ext_known(OBJ_obj2nid(obj))) {
            if (OBJ_obj2txt(oid, sizeof(oid), obj, 1) <= 0)
                pol_detail(oid, sizeof(oid), "?");
            pol_detail(detail, detail_size, "extension %s is not allowed", oid);
            return AGW_ERR_POLICY_REJECTED;
        }
        for (int j = 0; j < i; j++) {
            if (OBJ_cmp(obj, X509_EXTENSION_get_object(X509_get_ext(tbs, j))) == 0) {
                pol_detail(detail, detail_size, "extension %s appears twice",
                           OBJ_nid2sn(OBJ_obj2nid(obj)));
                return AGW_ERR_POLICY_REJECTED;
            }
        }
    }
    return 0;
}

static int final_serial(const X509 *tbs, char *detail, size_t detail_size)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(tbs), NULL);
    int bits = bn != NULL ? BN_num_bits(bn) : 0;
    bool negative = bn != NULL && BN_is_negative(bn);

    BN_free(bn);
    if (bn == NULL || negative || bits < MIN_SERIAL_BITS || bits > MAX_SERIAL_BITS) {
        pol_detail(detail, detail_size, "serial number is not a positive %d..%d bit integer",
                   MIN_SERIAL_BITS, MAX_SERIAL_BITS);
        return AGW_ERR_POLICY_REJECTED;
    }
    return 0;
}

static int final_basic_constraints(const X509 *tbs, char *detail, size_t detail_size)
{
    int crit = -1;
    BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(tbs, NID_basic_constraints, &crit, NULL);
    int err = AGW_ERR_POLICY_REJECTED;

    if (bc == NULL)
        pol_detail(detail, detail_size, "basicConstraints missing or unparsable");
    else if (crit != 1)
        pol_detail(detail, detail_size, "basicConstraints is not critical");
    else if (bc->ca != 0 || bc->pathlen != NULL)
        pol_detail(detail, detail_size, "basicConstraints is not CA:FALSE");
    else
        err = 0;
    BASIC_CONSTRAINTS_free(bc);
    return err;
}

static int final_key_ids(const X509 *tbs, char *detail, size_t detail_size)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    int crit = -1;
    ASN1_OCTET_STRING *ski = X509_get_ext_d2i(tbs, NID_subject_key_identifier, &crit, NULL);
    AUTHORITY_KEYID *akid = NULL;
    int err = AGW_ERR_POLICY_REJECTED;

    if (ski == NULL || crit != 0 || key_id(tbs, md, &md_len) != 0 ||
        ASN1_STRING_length(ski) != (int)md_len ||
        memcmp(ASN1_STRING_get0_data(ski), md, md_len) != 0) {
        pol_detail(detail, detail_size, "subjectKeyIdentifier missing or not the key's");
        goto fail;
    }
    akid = X509_get_ext_d2i(tbs, NID_authority_key_identifier, &crit, NULL);
    if (akid == NULL || crit != 0 || akid->keyid == NULL || akid->issuer != NULL ||
        akid->serial != NULL) {
        pol_detail(detail, detail_size, "authorityKeyIdentifier missing or not a key id");
        goto fail;
    }
    err = 0;
fail:
    AUTHORITY_KEYID_free(akid);
    ASN1_OCTET_STRING_free(ski);
    return err;
}

/* SANs allowed by the class, subject empty or one CN naming a SAN. */
static int final_names(const struct pol_class *c, const X509 *tbs, char *detail, size_t detail_size)
{
    const X509_NAME *subject = X509_get_subject_name(tbs);
    int crit = -1;
    GENERAL_NAMES *gens = X509_get_ext_d2i(tbs, NID_subject_alt_name, &crit, NULL);
    struct pol_name *names = NULL, cn;
    size_t n_names = 0;
    bool have_cn = false;
    int n_entries = X509_NAME_entry_count(subject);
    int err = AGW_ERR_POLICY_REJECTED;

    if (gens == NULL) {
        pol_detail(detail, detail_size, "subjectAltName missing or unparsable");
        goto fail;
    }
    if (pol_names_from_gens(gens, &names, &n_names, detail, detail_size) != 0)
        goto fail;
    if (n_names == 0 || n_names > c->ids.max_identifiers) {
        pol_detail(detail, detail_size, "%zu subjectAltNames (class %s allows 1..%u)", n_names,
                   c->name, c->ids.max_identifiers);
        goto fail;
    }
    for (size_t i = 0; i < n_names; i++) {
        if (pol_check_one(c, names[i].type, names[i].text) != 0) {
            pol_detail(detail, detail_size, "subjectAltName %s %s not allowed for class %s",
                       names[i].type == POL_ID_DNS ? "dns" : "ip", names[i].text, c->name);
            goto fail;
        }
    }
    if (n_entries == 0 && crit != 1) {
        pol_detail(detail, detail_size, "subject is empty but subjectAltName is not critical");
        goto fail;
    }
    if (n_entries > 1 || (n_entries == 1 && !c->subject.cert_cn)) {
        pol_detail(detail, detail_size, "subject has attributes other than one commonName");
        goto fail;
    }
    if (pol_subject_cn(subject, &cn, &have_cn, detail, detail_size) != 0)
        goto fail;
    if (n_entries == 1) {
        if (!have_cn || !pol_name_in(&cn, names, n_names)) {
            pol_detail(detail, detail_size, "subject is not a commonName naming a SAN");
            goto fail;
        }
    }
    err = 0;
fail:
    free(names);
    GENERAL_NAMES_free(gens);
    return err;
}

static int final_validity(const struct pol_profile *p, const X509 *tbs, time_t now, char *detail,
                          size_t detail_size)
{
    int64_t nb, na, t = (int64_t)now;

    if (pol_asn1_time_to_time_t(X509_get0_notBefore(tbs), &nb) != 0 ||
        pol_asn1_time_to_time_t(X509_get0_notAfter(tbs), &na) != 0) {
        pol_detail(detail, detail_size, "validity times do not parse");
        return AGW_ERR_POLICY_REJECTED;
    }
    if (nb > t + POL_FINAL_SLACK_S) {
        pol_detail(detail, detail_size, "notBefore is more than %d s in the future",
                   POL_FINAL_SLACK_S);
        return AGW_ERR_POLICY_REJECTED;
    }
    if (nb < t - POL_BACKDATE_S - POL_FINAL_SLACK_S) {
        pol_detail(detail, detail_size, "notBefore is backdated more than %d s",
                   POL_BACKDATE_S + POL_FINAL_SLACK_S);
        return AGW_ERR_POLICY_REJECTED;
    }
    if (na <= nb || na - nb > p->max_validity_s + POL_BACKDATE_S) {
        pol_detail(detail, detail_size,
                   "validity of %lld s is outside profile %s (at most %lld s + %d s backdate)",
                   (long long)(na - nb), p->name, (long long)p->max_validity_s, POL_BACKDATE_S);
        return AGW_ERR_POLICY_REJECTED;
    }
    return 0;
}

static int final_key_usage(const struct pol_profile *p, const X509 *tbs, const EVP_PKEY *key,
                           char *detail, size_t detail_size)
{
    unsigned want = pol_expected_ku(p, key), got = 0;
    int crit = -1;
    ASN1_BIT_STRING *ku = X509_get_ext_d2i(tbs, NID_key_usage, &crit, NULL);
    int err = AGW_ERR_POLICY_REJECTED;

    if (ku == NULL) {
        if (want == 0 && crit == -1)
            return 0;
        pol_detail(detail, detail_size, "keyUsage missing or unparsable (profile %s)", p->name);
        return AGW_ERR_POLICY_REJECTED;
    }
    for (int i = 0; i < ASN1_STRING_length(ku) * 8; i++) {
        if (ASN1_BIT_STRING_get_bit(ku, i) == 1) {
            if (i >= POL_KU_NBITS)
                goto fail;
            got |= 1u << i;
        }
    }
    if (crit == 1 && got == want)
        err = 0;
fail:
    if (err != 0)
        pol_detail(detail, detail_size, "keyUsage is not exactly profile %s's (critical)", p->name);
    ASN1_BIT_STRING_free(ku);
    return err;
}

static int final_ext_key_usage(const struct pol_profile *p, const X509 *tbs, char *detail,
                               size_t detail_size)
{
    int crit = -1;
    EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(tbs, NID_ext_key_usage, &crit, NULL);
    unsigned got = 0;
    int err = AGW_ERR_POLICY_REJECTED;

    if (eku == NULL) {
        if (p->eku == 0 && crit == -1)
            return 0;
        pol_detail(detail, detail_size, "extendedKeyUsage missing or unparsable (profile %s)",
                   p->name);
        return AGW_ERR_POLICY_REJECTED;
    }
    for (int i = 0; i < sk_ASN1_OBJECT_num(eku); i++) {
        int nid = OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, i));
        unsigned bit = 0;

        while (bit < POL_EKU_NBITS && pol_eku_nid(bit) != nid)
            bit++;
        if (bit == POL_EKU_NBITS || (got & (1u << bit)) != 0)
            goto fail; /* unknown, or listed twice */
        got |= 1u << bit;
    }
    if (crit == 0 && got == p->eku)
        err = 0;
fail:
    if (err != 0)
        pol_detail(detail, detail_size, "extendedKeyUsage is not exactly profile %s's", p->name);
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    return err;
}

/* The URL and policy extensions carry no choice: they must be the profile's, byte for byte. */
static int final_profile_exts(const struct pol_profile *p, const X509 *tbs, char *detail,
                              size_t detail_size)
{
    for (size_t i = 0; i < sizeof(profile_ext_nids) / sizeof(profile_ext_nids[0]); i++) {
        int nid = profile_ext_nids[i];
        int idx = X509_get_ext_by_NID(tbs, nid, -1);
        X509_EXTENSION *got = idx >= 0 ? X509_get_ext(tbs, idx) : NULL;
        X509_EXTENSION *want = NULL;
        bool same;

        if (profile_ext(p, nid, &want) != 0) {
            pol_detail(detail, detail_size, "out of memory");
            return AGW_ERR_NOMEM;
        }
        same = (got == NULL && want == NULL) ||
               (got != NULL && want != NULL &&
                X509_EXTENSION_get_critical(got) == X509_EXTENSION_get_critical(want) &&
                ASN1_OCTET_STRING_cmp(X509_EXTENSION_get_data(got),
                                      X509_EXTENSION_get_data(want)) == 0);
        X509_EXTENSION_free(want);
        if (!same) {
            pol_detail(detail, detail_size, "%s is not exactly profile %s's", OBJ_nid2ln(nid),
                       p->name);
            return AGW_ERR_POLICY_REJECTED;
        }
    }
    return 0;
}

static int final_profile(const struct pol_profile *p, const X509 *tbs, const EVP_PKEY *key,
                         time_t now, char *detail,
                         size_t detail_size)
{
    int err = final_validity(p, tbs, now, detail, detail_size);

    if (err == 0)
        err = final_profile_exts(p, tbs, detail, detail_size);

    if (err == 0)
        err = final_key_usage(p, tbs, key, detail, detail_size);
    if (err == 0)
        err = final_ext_key_usage(p, tbs, detail, detail_size);
    return err;
}

int pol_check_final(const struct pol_class *c, const X509 *tbs, time_t now, char *detail,
                    size_t detail_size)
{
    EVP_PKEY *owned = NULL;
    const EVP_PKEY *key;
    int err;

    pol_detail(detail, detail_size, "%s", "");
    if (c == NULL || tbs == NULL)
        return AGW_ERR_BAD_INPUT;
    if (X509_get_version(tbs) != X509_VERSION_3) {
        pol_detail(detail, detail_size, "certificate is not version 3");
        return AGW_ERR_POLICY_REJECTED;
    }
    key = pol_pubkey(X509_get_X509_PUBKEY(tbs), &owned);
    err = final_serial(tbs, detail, detail_size);
    if (err == 0)
        err = final_extensions(tbs, detail, detail_size);
    if (err == 0)
        err = final_basic_constraints(tbs, detail, detail_size);
    if (err == 0 && pol_check_key(c, key, detail, detail_size) != 0)
        err = AGW_ERR_POLICY_REJECTED;
    if (err == 0)
        err = final_key_ids(tbs, detail, detail_size);
    if (err == 0)
        err = final_names(c, tbs, detail, detail_size);
    if (err == 0) {
        /* the default profile's reason is the one reported when no profile matches */
        err = final_profile(&c->profiles[c->default_profile], tbs, key, now, detail, detail_size);
        for (size_t i = 0; err != 0 && i < c->n_profiles; i++) {
            if (i != c->default_profile &&
                final_profile(&c->profiles[i], tbs, key, now, NULL, 0) == 0)
                err = 0;
        }
        if (err == 0)
            pol_detail(detail, detail_size, "%s", "");
    }
    EVP_PKEY_free(owned);
    return err;
}

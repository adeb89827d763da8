/*
 * policy/identifiers.c - newOrder identifier checks (RFC 8555 §7.4, RFC 8738 for ip).
 *
 * Two questions, answered in this order, with different errors (RFC 8555 §6.7):
 *   1. Is the identifier well formed?          no: AGW_ERR_BAD_INPUT ("malformed")
 *   2. Does this class allow it?               no: AGW_ERR_REJECTED_IDENTIFIER
 * and an identifier type we do not know is AGW_ERR_UNSUPPORTED_IDENTIFIER.
 *
 * DNS names are compared case-insensitively by the DNS (RFC 4343), but a certificate carries one
 * spelling. We do not normalise here: the gateway lowercases dns values before calling, and a
 * value with an uppercase letter reaching policy is malformed (AGW_ERR_BAD_INPUT). So the order,
 * the store and the certificate all hold the same bytes. A well-formed name is lowercase LDH
 * labels (RFC 952/1123: letters, digits, hyphen; not starting or ending with a hyphen), each 1..63
 * bytes, at most 253 in all, no trailing dot, and a last label that is not all digits (so no name
 * can be confused with an IPv4 address). A wildcard is "*." followed by such a name; a "*" in any
 * other place is malformed.
 *
 * ip values must be the canonical text RFC 8738 §3 asks for (RFC 1123 §2.1 dotted quad, RFC 5952
 * §4 for IPv6): we parse with inet_pton() and require inet_ntop() to give the same string back.
 */
#include "policy/policy.h"

#include "common/err.h"
#include "policy/internal.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static bool is_ldh(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
}

int pol_dns_syntax(const char *s, size_t len, bool *wildcard)
{
    size_t label_start, i;
    bool all_digits = true;

    *wildcard = false;
    if (s == NULL)
        return AGW_ERR_BAD_INPUT;
    if (len >= 2 && s[0] == '*' && s[1] == '.') {
        *wildcard = true;
        s += 2;
        len -= 2;
    }
    if (len == 0 || len > POL_DNS_MAX_LEN)
        return AGW_ERR_BAD_INPUT;
    label_start = 0;
    for (i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            size_t label_len = i - label_start;

            if (label_len == 0 || label_len > POL_DNS_MAX_LABEL_LEN)
                return AGW_ERR_BAD_INPUT; /* empty label, leading/trailing/double dot */
            if (s[label_start] == '-' || s[i - 1] == '-')
                return AGW_ERR_BAD_INPUT;
            if (i == len && all_digits)
                return AGW_ERR_BAD_INPUT; /* numeric TLD */
            label_start = i + 1;
            all_digits = true;
            continue;
        }
        if (!is_ldh(s[i]))
            return AGW_ERR_BAD_INPUT;
        if (s[i] < '0' || s[i] > '9')
            all_digits = false;
    }
    return 0;
}

int pol_ip_parse(const char *text, unsigned char out[16], size_t *out_len)
{
    char back[INET6_ADDRSTRLEN];
    int family;
    size_t len;

    *out_len = 0;
    if (text == NULL)
        return AGW_ERR_BAD_INPUT;
    len = strnlen(text, INET6_ADDRSTRLEN);
    if (len == 0 || len >= INET6_ADDRSTRLEN)
        return AGW_ERR_BAD_INPUT;
    family = memchr(text, ':', len) != NULL ? AF_INET6 : AF_INET;
    if (inet_pton(family, text, out) != 1)
        return AGW_ERR_BAD_INPUT;
    if (inet_ntop(family, out, back, sizeof(back)) == NULL || strcmp(back, text) != 0)
        return AGW_ERR_BAD_INPUT; /* not the canonical form */
    *out_len = family == AF_INET ? 4 : 16;
    return 0;
}

int pol_cidr_parse(const char *text, struct pol_cidr *out)
{
    char addr[INET6_ADDRSTRLEN];
    const char *slash;
    unsigned long prefix;
    char *end;
    size_t len, max_bits;

    memset(out, 0, sizeof(*out));
    if (text == NULL)
        return AGW_ERR_BAD_INPUT;
    slash = strchr(text, '/');
    if (slash == NULL || (size_t)(slash - text) >= sizeof(addr) || slash == text)
        return AGW_ERR_BAD_INPUT;
    len = (size_t)(slash - text);
    memcpy(addr, text, len);
    addr[len] = '\0';
    if (pol_ip_parse(addr, out->addr, &out->addr_len) != 0)
        return AGW_ERR_BAD_INPUT;
    out->family = out->addr_len == 4 ? AF_INET : AF_INET6;
    if (slash[1] < '0' || slash[1] > '9' || strlen(slash + 1) > 3)
        return AGW_ERR_BAD_INPUT;
    prefix = strtoul(slash + 1, &end, 10);
    max_bits = out->addr_len * 8;
    if (*end != '\0' || prefix > max_bits || (slash[1] == '0' && slash[2] != '\0'))
        return AGW_ERR_BAD_INPUT;
    out->prefix_len = (unsigned)prefix;
    for (size_t bit = prefix; bit < max_bits; bit++) {
        if (out->addr[bit / 8] & (0x80u >> (bit % 8)))
            return AGW_ERR_BAD_INPUT; /* host bits set: probably a typo */
    }
    return 0;
}

bool pol_cidr_contains(const struct pol_cidr *r, const unsigned char *addr, size_t addr_len)
{
    size_t full = r->prefix_len / 8;
    unsigned rest = r->prefix_len % 8;

    if (addr_len != r->addr_len)
        return false;
    if (memcmp(r->addr, addr, full) != 0)
        return false;
    if (rest != 0) {
        unsigned mask = (0xffu << (8 - rest)) & 0xffu;
        if ((addr[full] & mask) != r->addr[full])
            return false;
    }
    return true;
}

/* name (len bytes) is pattern->name or, for a subtree, ends in "." + pattern->name. */
static bool dns_pattern_matches(const struct pol_dns_pattern *pat, const char *name, size_t len)
{
    size_t plen = strlen(pat->name);

    if (!pat->subtree)
        return len == plen && memcmp(name, pat->name, len) == 0;
    return len > plen + 1 && name[len - plen - 1] == '.' &&
           memcmp(name + len - plen, pat->name, plen) == 0;
}

static int check_dns(const struct pol_class *c, const char *value)
{
    size_t len = strnlen(value, POL_DNS_MAX_LEN + 3);
    bool wildcard;

    if (pol_dns_syntax(value, len, &wildcard) != 0)
        return AGW_ERR_BAD_INPUT;
    if (!c->ids.allow_dns)
        return AGW_ERR_REJECTED_IDENTIFIER;
    if (wildcard && !c->ids.allow_wildcards)
        return AGW_ERR_REJECTED_IDENTIFIER;
    for (size_t i = 0; i < c->ids.n_dns; i++) {
        const struct pol_dns_pattern *pat = &c->ids.dns[i];

        if (!wildcard) {
            if (dns_pattern_matches(pat, value, len))
                return 0;
            continue;
        }
        /* "*.base": base must be the subtree's name or under it */
        if (pat->subtree &&
            (strcmp(value + 2, pat->name) == 0 || dns_pattern_matches(pat, value + 2, len - 2)))
            return 0;
    }
    return AGW_ERR_REJECTED_IDENTIFIER;
}

static int check_ip(const struct pol_class *c, const char *value)
{
    unsigned char addr[16];
    size_t addr_len;

    if (pol_ip_parse(value, addr, &addr_len) != 0)
        return AGW_ERR_BAD_INPUT;
    if (!c->ids.allow_ip)
        return AGW_ERR_REJECTED_IDENTIFIER;
    for (size_t i = 0; i < c->ids.n_ip_ranges; i++) {
        if (pol_cidr_contains(&c->ids.ip_ranges[i], addr, addr_len))
            return 0;
    }
    return AGW_ERR_REJECTED_IDENTIFIER;
}

int pol_check_one(const struct pol_class *c, enum pol_id_type type, const char *value)
{
    if (value == NULL)
        return AGW_ERR_BAD_INPUT;
    return type == POL_ID_DNS ? check_dns(c, value) : check_ip(c, value);
}

/* Pre-authorized classes may restrict where the ACME client connects from. */
static bool source_allowed(const struct pol_class *c, const char *client_ip)
{
    unsigned char addr[16];
    size_t addr_len;

    if (c->validation.method != POL_VALIDATE_PRE_AUTHORIZED || c->validation.n_sources == 0)
        return true;
    if (pol_ip_parse(client_ip, addr, &addr_len) != 0)
        return false;
    for (size_t i = 0; i < c->validation.n_sources; i++) {
        if (pol_cidr_contains(&c->validation.sources[i], addr, addr_len))
            return true;
    }
    return false;
}

int pol_check_identifiers(const struct pol_class *c, const struct pol_identifier *ids, size_t n,
                          const char *client_ip, int *results)
{
    bool from_allowed_source;
    int first = 0;

    if (c == NULL || results == NULL || (n > 0 && ids == NULL))
        return AGW_ERR_BAD_INPUT;
    if (n == 0)
        return AGW_ERR_BAD_INPUT; /* §7.4: an order names at least one identifier */
    from_allowed_source = source_allowed(c, client_ip);
    for (size_t i = 0; i < n; i++) {
        int r;

        if (ids[i].type == NULL || ids[i].value == NULL)
            r = AGW_ERR_BAD_INPUT;
        else if (strcmp(ids[i].type, "dns") == 0)
            r = check_dns(c, ids[i].value);
        else if (strcmp(ids[i].type, "ip") == 0)
            r = check_ip(c, ids[i].value);
        else
            r = AGW_ERR_UNSUPPORTED_IDENTIFIER;
        if (r == 0 && i >= c->ids.max_identifiers)
            r = AGW_ERR_REJECTED_IDENTIFIER; /* over the class's cap */
        if (r == 0 && !from_allowed_source)
            r = AGW_ERR_UNAUTHORIZED;
        results[i] = r;
        if (first == 0)
            first = r;
    }
    return first;
}

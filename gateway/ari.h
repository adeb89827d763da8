/*
 * gateway/ari.h - ACME Renewal Information (RFC 9773), worker side (gateway/ari.c).
 *
 * A certificate is named by its certID: base64url(AKI keyIdentifier) "." base64url(serial), the
 * serial being the content octets of its DER INTEGER (RFC 9773 §4.1).
 */
#ifndef AGW_GATEWAY_ARI_H
#define AGW_GATEWAY_ARI_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct gw_server;
struct gw_request;
struct gw_response;

#define GW_ARI_PATH          "/renewal-info"
#define GW_ARI_RETRY_AFTER_S (6 * 3600) /* how often clients should ask again */
#define GW_ARI_MAX_CERT_ID   128        /* fits st_order.replaces */

/*
 * The suggested renewal window (pure arithmetic; tested in tests/unit/test_ari.c).
 * With V = not_after - not_before: start = not_before + 2V/3, end = not_before + 5V/6. Clients
 * pick a time in the window, so renewals of a fleet spread over one sixth of the lifetime and
 * still leave V/6 (15 days of a 90-day certificate) for retries before expiry.
 * A revoked certificate (revoked_at != 0) gets [revoked_at - 1 h, revoked_at]: a window in the
 * past, which RFC 9773 §4.2 tells clients to treat as "renew now".
 */
static inline void gw_ari_window(int64_t not_before, int64_t not_after, int64_t revoked_at,
                                 int64_t *start, int64_t *end)
{
    int64_t v = not_after > not_before ? not_after - not_before : 0;

    if (revoked_at != 0) {
        *start = revoked_at - 3600;
        *end = revoked_at;
        return;
    }
    *start = not_before + v / 3 * 2 + (v % 3) * 2 / 3;
    *end = not_before + v / 6 * 5 + (v % 6) * 5 / 6;
}

/* 1 if path is the renewalInfo resource or under it. */
int gw_ari_is_path(const char *path);

/* GET /renewal-info/<certID>: 200 {"suggestedWindow":...} + Retry-After, 400 malformed for a bad
 * certID, 404 for a certificate we did not issue (or whose AKI names another issuer), 405 for
 * other methods. Worker thread. */
void gw_ari_handle(struct gw_server *srv, const struct gw_request *req, struct gw_response *resp);

/*
 * newOrder "replaces" (RFC 9773 §5): v must be a certID string naming a certificate of
 * account_id that no live order replaces yet. On success out gets the canonical certID and 0 is
 * returned. Otherwise *problem gets a new problem document (the caller owns it) and the return is
 * AGW_ERR_BAD_INPUT (malformed, unknown or another account's certificate), AGW_ERR_CONFLICT
 * (type alreadyReplaced, 409) or AGW_ERR_STORE.
 */
int gw_ari_check_replaces(struct gw_server *srv, const char *account_id, const json_t *v,
                          int64_t now, char out[GW_ARI_MAX_CERT_ID], json_t **problem);

/* The certID of a DER certificate into out; 0 or AGW_ERR_BAD_INPUT (no AKI keyIdentifier). */
int gw_ari_cert_id(const unsigned char *der, size_t der_len, char *out, size_t out_size);

#endif

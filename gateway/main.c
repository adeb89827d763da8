/*
 * gateway/main.c - acmegw: start-up and shutdown.
 *
 *   acmegw --config FILE        run the gateway
 *   acmegw --check-config FILE  validate the config (and the policy) and exit
 *
 * Start-up order: config -> logging -> store (migrations) -> policy -> issuers (HSM login, key
 * check against the CA certificate) -> nonces -> HTTP. Any failure stops start-up with one clear
 * log line; the PIN is read from its file or environment variable and never logged.
 */
#include "gateway/gateway.h"

#include "common/err.h"
#include "common/log.h"
#include "gateway/issue.h"
#include "hsm/hsm.h"
#include "policy/policy.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

static void usage(void)
{
    fprintf(stderr, "usage: acmegw --config FILE\n"
                    "       acmegw --check-config FILE\n"
                    "       acmegw --version\n");
}

static int policy_issuers_check(const struct gw_server *srv, const struct pol_set *set, char *err,
                                size_t err_size);

static int open_policy(struct gw_server *srv, char *err, size_t err_size)
{
    struct gw_config *cfg = srv->cfg;

    if (cfg->policy_dir != NULL) {
        char *dir = gw_config_path(cfg, cfg->policy_dir);
        int rc = dir != NULL ? pol_set_load_dir(dir, &srv->policy, err, err_size) : AGW_ERR_NOMEM;
        free(dir);
        if (rc == 0)
            rc = policy_issuers_check(srv, srv->policy, err, err_size);
        return rc;
    }
    snprintf(err, err_size, "default class");
    return pol_set_default(cfg->default_class->dns_suffix, cfg->default_class->validity_days,
                           cfg->issuers[0].name, &srv->policy);
}

/* Every class must name an issuer of the config: the gateway refuses to start, and a reload is
 * refused, with the class named. */
static int policy_issuers_check(const struct gw_server *srv, const struct pol_set *set, char *err,
                                size_t err_size)
{
    for (size_t i = 0; i < pol_set_n_classes(set); i++) {
        const struct pol_class *c = pol_set_class_at(set, i);
        const char *want = pol_class_issuer(c);
        int found = 0;
        for (unsigned k = 0; k < srv->cfg->issuers_count; k++)
            if (want != NULL && strcmp(srv->cfg->issuers[k].name, want) == 0)
                found = 1;
        if (!found) {
            snprintf(err, err_size, "class '%s' names issuer '%s', which the config does not have",
                     pol_class_name(c), want != NULL ? want : "");
            return AGW_ERR_BAD_CONFIG;
        }
    }
    return 0;
}

int gw_policy_reload(struct gw_server *srv)
{
    struct pol_set *fresh = NULL, *old;
    char err[600] = "";
    char *dir;
    int rc;

    if (srv->cfg->policy_dir == NULL) {
        LOG_WARN("policy.reload_skipped", "reason=\"no policy_dir: the default class is built in\"");
        return 0;
    }
    dir = gw_config_path(srv->cfg, srv->cfg->policy_dir);
    rc = dir != NULL ? pol_set_load_dir(dir, &fresh, err, sizeof(err)) : AGW_ERR_NOMEM;
    free(dir);
    if (rc == 0)
        rc = policy_issuers_check(srv, fresh, err, sizeof(err));
    if (rc == 0 && pol_set_default_crl_urls(fresh, srv->cfg->crl_url_base) != 0) {
        snprintf(err, sizeof(err), "cannot add crl_url_base to the profiles");
        rc = AGW_ERR_BAD_CONFIG;
    }
    if (rc != 0) {
        LOG_ERROR("policy.reload_failed", "error=\"%s\" kept=running", err);
        pol_set_unref(fresh);
        return AGW_ERR_BAD_CONFIG;
    }
    pthread_mutex_lock(&srv->policy_lock);
    old = srv->policy;
    srv->policy = fresh;
    pthread_mutex_unlock(&srv->policy_lock);
    pol_set_unref(old); /* requests in flight hold their own references */
    if (gw_acme_directory_build(srv) != 0) /* meta.profiles follows the policy */
        LOG_WARN("policy.directory_stale", "error=\"out of memory\"");
    LOG_INFO("policy.reloaded", "dir=%s", srv->cfg->policy_dir);
    return 0;
}

static int open_issuers(struct gw_server *srv)
{
    struct gw_config *cfg = srv->cfg;

    srv->issuers = calloc(cfg->issuers_count, sizeof(*srv->issuers));
    if (srv->issuers == NULL)
        return AGW_ERR_NOMEM;
    for (unsigned i = 0; i < cfg->issuers_count; i++) {
        struct gw_issuer_cfg *ic = &cfg->issuers[i];
        struct hsm_config hc;
        char *pin = NULL, *pin_path = gw_config_path(cfg, ic->pin_file);
        char *chain = gw_config_path(cfg, ic->ca_chain);
        int err;

        memset(&hc, 0, sizeof(hc));
        hc.ref.module = ic->module;
        hc.ref.token = ic->token;
        hc.key_label = ic->key_label;
        hc.key_id_hex = ic->key_id;
        hc.ca_chain_file = chain;
        hc.n_workers = ic->workers;
        hc.timeout_ms = ic->timeout_ms;
        hc.precheck = gw_issue_precheck;
        hc.precheck_arg = srv;
        hc.cert_libctx = pol_keyless_libctx(); /* pol_check_final() builds the key itself */
        hc.start_unavailable = true; /* serve, answer 503 for signing, connect when it answers */
        err = hsm_secret_read(pin_path, ic->pin_env, &pin);
        if (err != 0) {
            LOG_ERROR("hsm.pin", "issuer=%s error=\"cannot read the PIN from %s\"", ic->name,
                      ic->pin_file != NULL ? "pin_file" : "pin_env");
        } else {
            err = hsm_signer_new(&hc, pin, &srv->issuers[i].signer);
            if (err != 0)
                LOG_ERROR("hsm.open", "issuer=%s token=%s key=%s error=\"%s\"", ic->name,
                          ic->token, ic->key_label, agw_err_str(err));
        }
        hsm_secret_free(pin);
        free(pin_path);
        free(chain);
        if (err != 0)
            return err;
        snprintf(srv->issuers[i].name, sizeof(srv->issuers[i].name), "%s", ic->name);
        srv->n_issuers++;
        if (hsm_signer_ready(srv->issuers[i].signer) == 0)
            LOG_INFO("hsm.ready", "issuer=%s token=%s key=%s alg=%s", ic->name, ic->token,
                     ic->key_label, hsm_key_alg_name(hsm_signer_alg(srv->issuers[i].signer)));
        else
            LOG_WARN("hsm.not_ready", "issuer=%s token=%s key=%s: signing answers 503 until the "
                     "token answers (/ready says 503 meanwhile)", ic->name, ic->token,
                     ic->key_label);
    }
    return 0;
}

/* Shared nonces: the store's unique key decides, across instances, which use is the first. */
static int nonce_redeem_in_store(void *arg, const char *id, int64_t expires)
{
    static unsigned long n_redeemed; /* atomic */
    struct gw_server *srv = arg;
    int err = st_nonce_redeem(srv->store, id, expires);

    if (__atomic_add_fetch(&n_redeemed, 1, __ATOMIC_RELAXED) % 4096 == 0)
        (void)st_nonce_purge(srv->store, (int64_t)time(NULL)); /* expired records */
    if (err != 0 && err != AGW_ERR_CONFLICT)
        LOG_WARN("nonce.store_failed", "error=\"%s\"", agw_err_str(err));
    return err;
}

static int open_nonces(struct gw_server *srv)
{
    unsigned char key[32];
    char *path;
    int err = gw_nonces_new(0, 0, (uint8_t)srv->cfg->instance_id, &srv->nonces);

    if (err != 0 || srv->cfg->nonce_key_file == NULL)
        return err;
    path = gw_config_path(srv->cfg, srv->cfg->nonce_key_file);
    err = path != NULL ? st_seal_key_load(path, 1, key) : AGW_ERR_NOMEM; /* 32 bytes, 0600 */
    if (err == 0) {
        gw_nonces_share(srv->nonces, key, nonce_redeem_in_store, srv);
        LOG_INFO("nonce.shared", "instance=%u key_file=%s", srv->cfg->instance_id,
                 srv->cfg->nonce_key_file);
    } else {
        LOG_ERROR("nonce.key", "file=%s error=\"%s\"", srv->cfg->nonce_key_file,
                  agw_err_str(err));
    }
    OPENSSL_cleanse(key, sizeof(key));
    free(path);
    return err;
}

static void server_free(struct gw_server *srv)
{
    for (size_t i = 0; i < srv->n_issuers; i++)
        hsm_signer_free(srv->issuers[i].signer);
    free(srv->issuers);
    st_close(srv->store);
    pol_set_unref(srv->policy);
    gw_nonces_free(srv->nonces);
    gw_acme_directory_free(srv);
    gw_acme_cache_free();
    gw_config_free(srv->cfg);
    pthread_mutex_destroy(&srv->policy_lock);
}

int main(int argc, char **argv)
{
    static struct gw_server srv; /* static: reachable for the leak checker until exit */
    char err_text[600];
    unsigned char seal[32];
    const char *config_path = NULL;
    int check_only = 0, err;

    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("acmegw 0.1.0\n");
        return 0;
    }
    if (argc == 3 && (strcmp(argv[1], "--config") == 0 || strcmp(argv[1], "-c") == 0)) {
        config_path = argv[2];
    } else if (argc == 3 && strcmp(argv[1], "--check-config") == 0) {
        config_path = argv[2];
        check_only = 1;
    } else {
        usage();
        return 2;
    }
    gw_signals_block();
    pthread_mutex_init(&srv.policy_lock, NULL);
    err = gw_config_load(config_path, &srv.cfg, err_text, sizeof(err_text));
    if (err != 0) {
        fprintf(stderr, "acmegw: %s\n", err_text);
        return 1;
    }
    if (srv.cfg->log_level != NULL) {
        enum agw_log_level l;
        if (agw_log_level_parse(srv.cfg->log_level, &l) == 0)
            agw_log_set_level(l);
    }
    err = open_policy(&srv, err_text, sizeof(err_text));
    if (err == 0 && pol_set_default_crl_urls(srv.policy, srv.cfg->crl_url_base) != 0) {
        snprintf(err_text, sizeof(err_text), "cannot add crl_url_base to the profiles");
        err = AGW_ERR_BAD_CONFIG;
    }
    if (err != 0) {
        fprintf(stderr, "acmegw: policy: %s\n", err_text);
        server_free(&srv);
        return 1;
    }
    if (check_only) {
        printf("%s: OK\n", config_path);
        server_free(&srv);
        return 0;
    }
    {
        char *seal_path = gw_config_path(srv.cfg, srv.cfg->seal_key_file);
        struct st_config store_cfg;
        char *store_owned = NULL; /* the path, or the conninfo (secret) */
        err = seal_path != NULL ? st_seal_key_load(seal_path, 1, seal) : AGW_ERR_NOMEM;
        if (err != 0)
            LOG_ERROR("store.seal_key", "file=%s error=\"%s\"", srv.cfg->seal_key_file,
                      agw_err_str(err));
        if (err == 0)
            err = gw_config_store(srv.cfg, &store_cfg, &store_owned);
        if (err == 0) {
            err = st_open_config(&store_cfg, seal, &srv.store);
            if (err != 0)
                LOG_ERROR("store.open", "driver=%s path=%s error=\"%s\"", store_cfg.driver,
                          store_cfg.path != NULL ? store_cfg.path : "-", agw_err_str(err));
        }
        OPENSSL_cleanse(seal, sizeof(seal));
        free(seal_path);
        gw_config_store_free(store_owned);
    }
    if (err == 0)
        err = open_issuers(&srv);
    if (err == 0)
        err = open_nonces(&srv);
    if (err == 0)
        err = gw_acme_directory_build(&srv);
    if (err == 0)
        err = gw_server_run(&srv);
    if (err != 0)
        LOG_ERROR("server.exit", "error=\"%s\"", agw_err_str(err));
    else
        LOG_INFO("server.stopped", "clean=yes");
    server_free(&srv);
    return err == 0 ? 0 : 1;
}

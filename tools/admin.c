/*
 * tools/admin.c - acmegw-admin: operator commands on a gateway's store (running or stopped).
 *
 *   acmegw-admin [--config FILE] eab create --class NAME [--json]
 *   acmegw-admin [--config FILE] eab list [--json]
 *   acmegw-admin [--config FILE] eab revoke KID
 *   acmegw-admin [--config FILE] cert list [--class C] [--identifier S] [--status S]
 *                                         [--expiring-before DAYS] [--json|--csv]
 *   acmegw-admin [--config FILE] cert revoke SERIAL --reason R
 *   acmegw-admin policy lint FILE...           (no config needed)
 *   acmegw-admin [--config FILE] policy reload (lint policy_dir, then SIGHUP the gateway)
 *   acmegw-admin [--config FILE] crl generate  (SIGUSR1 the gateway, wait for new CRL numbers)
 *
 * The config file (default $ACMEGW_CONFIG) names the store and the seal key file. SQLite in WAL
 * mode lets this process read and write while the gateway runs; writes wait on SQLite's lock.
 * The EAB HMAC key is printed once, at creation, base64url-encoded as ACME clients expect it.
 */
#include "common/err.h"
#include "common/log.h"
#include "gateway/config.h"
#include "gateway/jws.h"
#include "policy/policy.h"
#include "store/store.h"

#include <errno.h>
#include <signal.h>
#include <sys/types.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>

static const char *const reason_names[] = {
    "unspecified",          "keyCompromise", "cACompromise",  "affiliationChanged",
    "superseded",           "cessationOfOperation", "certificateHold", "",
    "removeFromCRL",        "privilegeWithdrawn",   "aACompromise",
};

static int usage(void)
{
    fprintf(stderr,
            "usage: acmegw-admin [--config FILE] eab create --class NAME [--json]\n"
            "       acmegw-admin [--config FILE] eab list [--json]\n"
            "       acmegw-admin [--config FILE] eab revoke KID\n"
            "       acmegw-admin [--config FILE] cert list [--class C] [--identifier S]\n"
            "                    [--status valid|revoked|expired] [--expiring-before DAYS]\n"
            "                    [--json|--csv]\n"
            "       acmegw-admin [--config FILE] cert revoke SERIAL --reason R\n"
            "       acmegw-admin policy lint FILE...\n"
            "       acmegw-admin [--config FILE] policy reload\n"
            "       acmegw-admin [--config FILE] crl generate\n"
            "(FILE defaults to $ACMEGW_CONFIG; R is a number 0-10 or an RFC 5280 name)\n");
    return 2;
}

static void time_str(int64_t t, char *buf, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (t == 0) {
        snprintf(buf, size, "-");
        return;
    }
    gmtime_r(&tt, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int open_store(const char *config_path, struct st_store **st)
{
    struct gw_config *cfg = NULL;
    char err[600];
    unsigned char seal[32];
    char *seal_path, *store_owned = NULL; /* the path, or the conninfo (secret) */
    struct st_config store_cfg;
    int rc;

    rc = gw_config_load(config_path, &cfg, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "acmegw-admin: %s\n", err);
        return rc;
    }
    seal_path = gw_config_path(cfg, cfg->seal_key_file);
    rc = st_seal_key_load(seal_path, 1, seal);
    if (rc != 0)
        fprintf(stderr, "acmegw-admin: cannot read the seal key %s: %s\n", seal_path,
                agw_err_str(rc));
    if (rc == 0)
        rc = gw_config_store(cfg, &store_cfg, &store_owned);
    if (rc == 0) {
        rc = st_open_config(&store_cfg, seal, st);
        if (rc != 0) /* never the conninfo: it may hold the password */
            fprintf(stderr, "acmegw-admin: cannot open the %s store %s: %s\n", store_cfg.driver,
                    store_cfg.path != NULL ? store_cfg.path : "(conninfo)", agw_err_str(rc));
    }
    OPENSSL_cleanse(seal, sizeof(seal));
    free(seal_path);
    gw_config_store_free(store_owned);
    gw_config_free(cfg);
    return rc;
}

static const char *opt(int argc, char **argv, const char *name)
{
    for (int i = 0; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return NULL;
}

static int flag(int argc, char **argv, const char *name)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

static int eab_create(struct st_store *st, int argc, char **argv)
{
    const char *cls = opt(argc, argv, "--class");
    unsigned char hmac[32];
    char hmac_b64[64];
    struct st_eab e;
    int rc;

    if (cls == NULL)
        return usage();
    rc = st_eab_create(st, cls, (int64_t)time(NULL), &e, hmac);
    if (rc != 0) {
        fprintf(stderr, "acmegw-admin: cannot create the EAB key: %s\n", agw_err_str(rc));
        return 1;
    }
    gw_b64url_encode(hmac, sizeof(hmac), hmac_b64, sizeof(hmac_b64));
    OPENSSL_cleanse(hmac, sizeof(hmac));
    if (flag(argc, argv, "--json"))
        printf("{\"kid\":\"%s\",\"hmac\":\"%s\",\"class\":\"%s\"}\n", e.kid, hmac_b64,
               e.class_name);
    else
        printf("kid:   %s\nhmac:  %s\nclass: %s\n"
               "(the HMAC key is shown only now; store it where the client needs it)\n",
               e.kid, hmac_b64, e.class_name);
    OPENSSL_cleanse(hmac_b64, sizeof(hmac_b64));
    return 0;
}

static int eab_list(struct st_store *st, int argc, char **argv)
{
    struct st_eab *list = NULL;
    size_t n = 0;
    int json = flag(argc, argv, "--json");
    char created[32], revoked[32];
    json_t *arr = json ? json_array() : NULL;

    if (st_eab_list(st, &list, &n) != 0) {
        fprintf(stderr, "acmegw-admin: cannot list EAB keys\n");
        return 1;
    }
    if (!json)
        printf("%-28s %-20s %-8s %-21s %s\n", "KID", "CLASS", "ACCOUNTS", "CREATED", "REVOKED");
    for (size_t i = 0; i < n; i++) {
        time_str(list[i].created, created, sizeof(created));
        time_str(list[i].revoked, revoked, sizeof(revoked));
        if (json)
            json_array_append_new(arr, json_pack("{s:s, s:s, s:I, s:s, s:b}", "kid", list[i].kid,
                                                 "class", list[i].class_name, "accounts",
                                                 (json_int_t)list[i].n_accounts, "created",
                                                 created, "revoked", list[i].revoked != 0));
        else
            printf("%-28s %-20s %-8lld %-21s %s\n", list[i].kid, list[i].class_name,
                   (long long)list[i].n_accounts, created, revoked);
    }
    if (json) {
        char *s = json_dumps(arr, JSON_INDENT(2));
        printf("%s\n", s);
        free(s);
        json_decref(arr);
    }
    free(list);
    return 0;
}

static void csv_field(const char *s)
{
    putchar('"');
    for (; *s != '\0'; s++) {
        if (*s == '"')
            putchar('"');
        putchar(*s);
    }
    putchar('"');
}

static int cert_list(struct st_store *st, int argc, char **argv)
{
    struct st_cert_filter f;
    struct st_cert *list = NULL;
    size_t n = 0;
    const char *exp = opt(argc, argv, "--expiring-before");
    int json = flag(argc, argv, "--json"), csv = flag(argc, argv, "--csv");
    char nb[32], na[32], rv[32];
    json_t *arr = json ? json_array() : NULL;

    memset(&f, 0, sizeof(f));
    f.class_name = opt(argc, argv, "--class");
    f.identifier = opt(argc, argv, "--identifier");
    f.status = opt(argc, argv, "--status");
    f.now = (int64_t)time(NULL);
    if (f.status != NULL && strcmp(f.status, "valid") != 0 && strcmp(f.status, "revoked") != 0 &&
        strcmp(f.status, "expired") != 0)
        return usage();
    if (exp != NULL) {
        char *end;
        long days = strtol(exp, &end, 10);
        if (*end != '\0' || days < 0 || days > 36500)
            return usage();
        f.expiring_before = f.now + (int64_t)days * 86400;
    }
    if (st_cert_list(st, &f, &list, &n) != 0) {
        fprintf(stderr, "acmegw-admin: cannot list certificates\n");
        return 1;
    }
    if (csv)
        printf("serial,class,issuer,status,not_before,not_after,revoked_at,reason,"
               "identifiers,account\n");
    else if (!json)
        printf("%-34s %-12s %-8s %-21s %-21s %s\n", "SERIAL", "CLASS", "STATUS", "NOT_AFTER",
               "REVOKED", "IDENTIFIERS");
    for (size_t i = 0; i < n; i++) {
        struct st_cert *c = &list[i];
        const char *status =
            strcmp(c->status, "valid") == 0 && c->not_after < f.now ? "expired" : c->status;
        time_str(c->not_before, nb, sizeof(nb));
        time_str(c->not_after, na, sizeof(na));
        time_str(c->revoked_at, rv, sizeof(rv));
        if (json) {
            json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "serial", c->serial,
                                  "class", c->class_name, "issuer", c->issuer, "status", status,
                                  "not_before", nb, "not_after", na, "identifiers",
                                  c->identifiers != NULL ? c->identifiers : "", "account",
                                  c->account_id);
            if (c->revoked_at != 0) {
                json_object_set_new(o, "revoked_at", json_string(rv));
                json_object_set_new(o, "reason", json_integer(c->reason));
            }
            json_array_append_new(arr, o);
        } else if (csv) {
            printf("%s,", c->serial);
            csv_field(c->class_name);
            putchar(',');
            csv_field(c->issuer);
            printf(",%s,%s,%s,%s,%d,", status, nb, na, c->revoked_at != 0 ? rv : "",
                   c->revoked_at != 0 ? c->reason : -1);
            csv_field(c->identifiers != NULL ? c->identifiers : "");
            printf(",%s\n", c->account_id);
        } else {
            printf("%-34s %-12s %-8s %-21s %-21s %s\n", c->serial, c->class_name, status, na,
                   rv, c->identifiers != NULL ? c->identifiers : "");
        }
        st_cert_clear(c);
    }
    if (json) {
        char *s = json_dumps(arr, JSON_INDENT(2));
        printf("%s\n", s);
        free(s);
        json_decref(arr);
    }
    free(list);
    return 0;
}

static int parse_reason(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);

    if (*s != '\0' && *end == '\0' && v >= 0 && v <= 10 && v != 7) {
        *out = (int)v;
        return 0;
    }
    for (int i = 0; i <= 10; i++) {
        if (i != 7 && strcmp(s, reason_names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    return -1;
}

static int cert_revoke(struct st_store *st, int argc, char **argv)
{
    const char *reason_s = opt(argc, argv, "--reason");
    int reason = 0, rc;

    if (argc < 1 || argv[0][0] == '-' || reason_s == NULL || parse_reason(reason_s, &reason) != 0)
        return usage();
    rc = st_cert_revoke(st, argv[0], reason, (int64_t)time(NULL));
    if (rc != 0) {
        fprintf(stderr, "acmegw-admin: cannot revoke %s: %s\n", argv[0], agw_err_str(rc));
        return 1;
    }
    printf("revoked %s (reason %d %s)\n", argv[0], reason, reason_names[reason]);
    return 0;
}

static int policy_lint(int argc, char **argv)
{
    int bad = 0;

    if (argc < 1)
        return usage();
    for (int i = 0; i < argc; i++)
        if (pol_lint_file(argv[i], stdout) != 0)
            bad = 1;
    if (!bad)
        printf("%d file%s OK\n", argc, argc == 1 ? "" : "s");
    return bad;
}

/* Reads the gateway's pid from the config's pid_file; 0 or -1 (message printed). */
static int gateway_pid(const struct gw_config *cfg, long *pid)
{
    char *pidf = cfg->pid_file != NULL ? gw_config_path(cfg, cfg->pid_file) : NULL;
    FILE *f = pidf != NULL ? fopen(pidf, "r") : NULL;
    int rc = -1;

    *pid = 0;
    if (f != NULL && fscanf(f, "%ld", pid) == 1 && *pid > 1)
        rc = 0;
    else
        fprintf(stderr, "acmegw-admin: no gateway pid in %s\n",
                pidf != NULL ? pidf : "(the config has no pid_file)");
    if (f != NULL)
        fclose(f);
    free(pidf);
    return rc;
}

/* Lints the running config's policy directory with the gateway's own loader, and only if it is
 * valid signals the gateway (SIGHUP) to swap it in. */
static int policy_reload(const char *config_path)
{
    struct gw_config *cfg = NULL;
    struct pol_set *set = NULL;
    char err[600] = "", *dir = NULL;
    long pid = 0;
    int rc = 1;

    if (gw_config_load(config_path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "acmegw-admin: %s\n", err);
        return 1;
    }
    if (cfg->policy_dir == NULL || cfg->pid_file == NULL) {
        fprintf(stderr, "acmegw-admin: the config needs policy_dir and pid_file to reload\n");
        goto out;
    }
    dir = gw_config_path(cfg, cfg->policy_dir);
    if (pol_set_load_dir(dir, &set, err, sizeof(err)) != 0) {
        fprintf(stderr, "acmegw-admin: not reloading: %s\n", err);
        goto out;
    }
    if (gateway_pid(cfg, &pid) != 0)
        goto out;
    if (kill((pid_t)pid, SIGHUP) != 0) {
        fprintf(stderr, "acmegw-admin: cannot signal pid %ld: %s\n", pid, strerror(errno));
        goto out;
    }
    printf("policy in %s is valid; gateway pid %ld told to reload (see its log: "
           "policy.reloaded)\n", dir, pid);
    rc = 0;
out:
    pol_set_unref(set);
    free(dir);
    gw_config_free(cfg);
    return rc;
}

/* The gateway is another process: SIGUSR1 makes its signal thread kick the CRL thread for every
 * issuer; we then watch the CRL numbers in the store (taken just before signing) for up to 10 s.
 * (A multi-instance deployment would signal the one gateway that writes CRLs.) */
static int crl_generate(const char *config_path)
{
    struct gw_config *cfg = NULL;
    struct st_store *st = NULL;
    uint64_t before[16], now_n[16];
    char err[600] = "";
    long pid = 0;
    unsigned n, done = 0;
    int rc = 1;

    if (gw_config_load(config_path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "acmegw-admin: %s\n", err);
        return 1;
    }
    n = cfg->issuers_count < 16 ? cfg->issuers_count : 16;
    if (gateway_pid(cfg, &pid) != 0 || open_store(config_path, &st) != 0)
        goto out;
    for (unsigned i = 0; i < n; i++)
        if (st_crl_number(st, cfg->issuers[i].name, &before[i]) != 0)
            before[i] = 0;
    if (kill((pid_t)pid, SIGUSR1) != 0) {
        fprintf(stderr, "acmegw-admin: cannot signal pid %ld: %s\n", pid, strerror(errno));
        goto out;
    }
    for (int tries = 0; tries < 100 && done < n; tries++) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        done = 0;
        for (unsigned i = 0; i < n; i++)
            if (st_crl_number(st, cfg->issuers[i].name, &now_n[i]) == 0 && now_n[i] > before[i])
                done++;
    }
    for (unsigned i = 0; i < n; i++) {
        if (st_crl_number(st, cfg->issuers[i].name, &now_n[i]) != 0 || now_n[i] <= before[i])
            printf("issuer %s: no new CRL within 10 s (number still %llu; see the gateway log)\n",
                   cfg->issuers[i].name, (unsigned long long)before[i]);
        else
            printf("issuer %s: CRL number %llu (was %llu)\n", cfg->issuers[i].name,
                   (unsigned long long)now_n[i], (unsigned long long)before[i]);
    }
    rc = done == n ? 0 : 1;
out:
    st_close(st);
    gw_config_free(cfg);
    return rc;
}

int main(int argc, char **argv)
{
    const char *config = getenv("ACMEGW_CONFIG");
    struct st_store *st = NULL;
    int i = 1, rc;

    agw_log_set_level(AGW_LOG_WARN);
    if (argc > 2 && strcmp(argv[1], "--config") == 0) {
        config = argv[2];
        i = 3;
    }
    if (argc - i < 2)
        return usage();
    if (strcmp(argv[i], "policy") == 0 && strcmp(argv[i + 1], "lint") == 0)
        return policy_lint(argc - i - 2, argv + i + 2);
    if (config == NULL) {
        fprintf(stderr, "acmegw-admin: no config: pass --config FILE or set ACMEGW_CONFIG\n");
        return 2;
    }
    {
        const char *noun = argv[i], *verb = argv[i + 1];
        int known = (strcmp(noun, "eab") == 0 &&
                     (strcmp(verb, "create") == 0 || strcmp(verb, "list") == 0 ||
                      strcmp(verb, "revoke") == 0)) ||
                    (strcmp(noun, "cert") == 0 &&
                     (strcmp(verb, "list") == 0 || strcmp(verb, "revoke") == 0));
        if (strcmp(noun, "policy") == 0 && strcmp(verb, "reload") == 0)
            return policy_reload(config);
        if (strcmp(noun, "crl") == 0 && strcmp(verb, "generate") == 0)
            return crl_generate(config);
        if (!known)
            return usage();
        if (open_store(config, &st) != 0)
            return 1;
        argc -= i + 2;
        argv += i + 2;
        if (strcmp(noun, "eab") == 0 && strcmp(verb, "create") == 0)
            rc = eab_create(st, argc, argv);
        else if (strcmp(noun, "eab") == 0 && strcmp(verb, "list") == 0)
            rc = eab_list(st, argc, argv);
        else if (strcmp(noun, "eab") == 0) {
            rc = argc >= 1 ? st_eab_revoke(st, argv[0], (int64_t)time(NULL)) : AGW_ERR_BAD_INPUT;
            if (rc == 0)
                printf("revoked %s\n", argv[0]);
            else
                fprintf(stderr, "acmegw-admin: cannot revoke the EAB key: %s\n",
                        agw_err_str(rc));
            rc = rc == 0 ? 0 : 1;
        } else if (strcmp(verb, "list") == 0)
            rc = cert_list(st, argc, argv);
        else
            rc = cert_revoke(st, argc, argv);
    }
    st_close(st);
    return rc;
}

/*
 * common/log.h - one key=value line per event, to stderr (or a file).
 *
 *   LOG_INFO("order.finalized", "order=%s account=%s serial=%s", order_id, acct_id, serial_hex);
 *
 * Each line: RFC 3339 UTC time, level, event name, then the formatted fields. Control characters
 * in the formatted text are escaped (\xNN), so a client cannot forge log lines. Never log PINs,
 * HMAC keys, key material or JWS payloads: log the IDs that name them. Thread-safe.
 */
#ifndef AGW_COMMON_LOG_H
#define AGW_COMMON_LOG_H

#include <stdio.h>

enum agw_log_level { AGW_LOG_DEBUG = 0, AGW_LOG_INFO = 1, AGW_LOG_WARN = 2, AGW_LOG_ERROR = 3 };

/* Lines below level are dropped. Default AGW_LOG_INFO, or $ACMEGW_LOG_LEVEL (debug|info|warn|error). */
void agw_log_set_level(enum agw_log_level level);
/* Parses "debug", "info", "warn", "error"; returns 0 or -1. */
int agw_log_level_parse(const char *s, enum agw_log_level *out);
/* Lines go to f (borrowed, must outlive logging); NULL means stderr. */
void agw_log_set_file(FILE *f);
int agw_log_enabled(enum agw_log_level level);

void agw_log(enum agw_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_DEBUG(ev, ...) agw_log(AGW_LOG_DEBUG, ev, __VA_ARGS__)
#define LOG_INFO(ev, ...)  agw_log(AGW_LOG_INFO, ev, __VA_ARGS__)
#define LOG_WARN(ev, ...)  agw_log(AGW_LOG_WARN, ev, __VA_ARGS__)
#define LOG_ERROR(ev, ...) agw_log(AGW_LOG_ERROR, ev, __VA_ARGS__)

#endif

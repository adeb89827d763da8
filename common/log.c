/*
 * common/log.c - the logger behind common/log.h.
 *
 * The line is formatted into a stack buffer, control characters are escaped, and the whole line is
 * written with one fwrite under a lock so lines from several threads never interleave.
 */
#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static enum agw_log_level log_level = AGW_LOG_INFO;
static int log_level_from_env_done;
static FILE *log_file;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER; /* guards log_file writes */

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int agw_log_level_parse(const char *s, enum agw_log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum agw_log_level)i;
            return 0;
        }
    }
    return -1;
}

void agw_log_set_level(enum agw_log_level level)
{
    log_level = level;
    log_level_from_env_done = 1;
}

void agw_log_set_file(FILE *f)
{
    pthread_mutex_lock(&log_lock);
    log_file = f;
    pthread_mutex_unlock(&log_lock);
}

int agw_log_enabled(enum agw_log_level level)
{
    if (!log_level_from_env_done) {
        const char *env = getenv("ACMEGW_LOG_LEVEL");
        enum agw_log_level l;
        if (env != NULL && agw_log_level_parse(env, &l) == 0)
            log_level = l;
        log_level_from_env_done = 1;
    }
    return level >= log_level;
}

void agw_log(enum agw_log_level level, const char *event, const char *fmt, ...)
{
    char raw[2048], line[4096];
    size_t n = 0;
    struct timespec ts;
    struct tm tm;
    va_list ap;
    int r;

    if (!agw_log_enabled(level))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    va_start(ap, fmt);
    r = vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    if (r < 0)
        raw[0] = '\0';
    r = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                 level_names[level], event);
    if (r < 0)
        return;
    n = (size_t)r < sizeof(line) ? (size_t)r : sizeof(line) - 1;
    for (const unsigned char *p = (const unsigned char *)raw; *p != '\0' && n + 5 < sizeof(line);
         p++) {
        if (*p < 0x20 || *p == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            line[n++] = '\\';
            line[n++] = 'x';
            line[n++] = hex[*p >> 4];
            line[n++] = hex[*p & 15];
        } else {
            line[n++] = (char)*p;
        }
    }
    line[n++] = '\n';
    pthread_mutex_lock(&log_lock);
    fwrite(line, 1, n, log_file != NULL ? log_file : stderr);
    fflush(log_file != NULL ? log_file : stderr);
    pthread_mutex_unlock(&log_lock);
}

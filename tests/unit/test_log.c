/*
 * tests/unit/test_log.c - the logger escapes control characters (no forged lines) and levels work.
 */
#include "common/log.h"

#include "common/err.h"
#include "tests/check.h"

#include <stdlib.h>
#include <string.h>

static char *capture(enum agw_log_level level, const char *value)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    agw_log_set_file(f);
    agw_log(level, "test.event", "value=%s", value);
    agw_log_set_file(NULL);
    fclose(f);
    return buf;
}

static void log_escapes_newlines(void)
{
    char *line = capture(AGW_LOG_WARN, "a\nb 2026-01-01T00:00:00Z error forged");

    CHECK(strstr(line, "value=a\\x0ab") != NULL);
    CHECK(strchr(line, '\n') == line + strlen(line) - 1); /* exactly one newline, at the end */
    CHECK(strstr(line, " warn test.event ") != NULL);
    free(line);
}

static void log_drops_below_level(void)
{
    char *line;

    agw_log_set_level(AGW_LOG_WARN);
    line = capture(AGW_LOG_INFO, "x");
    CHECK_INT(strlen(line), 0);
    free(line);
    agw_log_set_level(AGW_LOG_INFO);
}

static void err_str_never_null(void)
{
    CHECK_STR(agw_err_str(AGW_ERR_HSM_UNAVAILABLE), "HSM unavailable");
    CHECK_STR(agw_err_str(-12345), "unknown error");
}

int main(void)
{
    RUN(log_escapes_newlines);
    RUN(log_drops_below_level);
    RUN(err_str_never_null);
    return CHECK_DONE();
}

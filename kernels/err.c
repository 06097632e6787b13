/* err.c: one thread-local error slot and the log hook (see err.h). */
#include "err.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char err_buf[1024];
static _Thread_local char err_loc[256];

void err_set(const char *file, int line, const char *fmt, ...)
{
    if (err_buf[0])
        return; /* keep the root cause */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    snprintf(err_loc, sizeof err_loc, "%s:%d", file, line);
}

void err_prefix(const char *fmt, ...)
{
    char pre[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    /* the message moves right by the prefix and ": ", cut to the slot */
    size_t n = strlen(pre) + 2, m = strlen(err_buf);
    if (m > sizeof err_buf - 1 - n)
        m = sizeof err_buf - 1 - n;
    memmove(err_buf + n, err_buf, m);
    err_buf[n + m] = 0;
    memcpy(err_buf, pre, n - 2);
    memcpy(err_buf + n - 2, ": ", 2);
}

const char *err_take(char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", err_buf);
    err_clear();
    return buf;
}

const char *err_msg(void) { return err_buf; }
const char *err_where(void) { return err_loc; }

void err_clear(void)
{
    err_buf[0] = 0;
    err_loc[0] = 0;
}

static void log_stderr(const char *msg, void *ud)
{
    (void)ud;
    fprintf(stderr, "%s\n", msg);
}

static err_log_fn log_fn = log_stderr;
static void *log_ud;

void err_set_log(err_log_fn fn, void *ud)
{
    log_fn = fn ? fn : log_stderr;
    log_ud = ud;
}

void err_log(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(buf, log_ud);
}

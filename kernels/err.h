/* err.h: the one log hook and the error-propagation macros of flexh2o.
 *
 * Library code never prints and never exits: it returns 0 (or a count) on
 * success and -errno on failure, and records one human-readable message
 * through err_set(). The CLI prints that message as the single error line.
 *
 *   RETURN_IF(cond, -EINVAL, "prompts.jsonl:%d: ...; do X", line);
 *   FORWARD_IF(ret);     // propagate a negative return unchanged
 */
#ifndef FH_ERR_H
#define FH_ERR_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus /* the CUDA kernels (the .cu files) record through it too */
extern "C" {
#endif

/* Record the message of the current failure (printf format). The first
 * message set since the last err_clear() wins: it is the root cause. */
void err_set(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Put "<fmt ...>: " before the recorded message (where it happened, as
 * a caller knows it: "p.jsonl line 3: cannot tokenize the prompt"); the
 * location stays the root cause's. */
void err_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The recorded message moved into buf (cut to cap bytes) and the slot
 * cleared, for a caller that reports it somewhere else (a line's error, a
 * usage error). @return buf. */
const char *err_take(char *buf, size_t cap);
/* The recorded message, or "" when none. Owned by err.c; valid until the
 * next err_clear(). */
const char *err_msg(void);
/* file:line where the message was recorded ("" when none). */
const char *err_where(void);
void err_clear(void);

/* Informational log hook: progress and warnings go through here. The
 * default writes to stderr; tests may install their own. */
typedef void (*err_log_fn)(const char *msg, void *ud);
void err_set_log(err_log_fn fn, void *ud);
void err_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#ifdef __cplusplus
}
#endif

#define RETURN_IF(cond, code, ...)                          \
    do {                                                    \
        if (cond) {                                         \
            err_set(__FILE__, __LINE__, __VA_ARGS__);       \
            return (code);                                  \
        }                                                   \
    } while (0)

#define FORWARD_IF(expr)                                    \
    do {                                                    \
        int fwd_ret_ = (expr);                              \
        if (fwd_ret_ < 0)                                   \
            return fwd_ret_;                                \
    } while (0)

#endif

/* sysio.c: the system calls that move bytes for offload/ and the job files,
 * and the fault-injection hook they all pass through (off.h, "System calls
 * and fault injection").
 *
 *   off_read / off_pread / off_pwrite / off_write / off_fsync / off_fdatasync
 *   off_fallocate / off_truncate
 *   io_uring completions (disk.c: off_fault_complete)
 *        │
 *        └─► fault_check: does an armed rule match this op, file and count?
 *              no  ─► the system call as asked
 *              yes ─► fail it with the rule's errno (nothing is done), or
 *                     do it for fewer bytes (a short transfer)
 *
 * Rules come from FLEXH2O_FAULT (read once, at the first call) or from
 * off_fault_set. Unarmed, a call costs one pthread_once and one atomic load
 * on top of the system call; built with -Dfault_inject=false the hook is
 * not compiled at all.
 */
#include "off.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "fh_config.h"

/* ------------------------------------------------------------ the hook */

#if FH_FAULT_INJECT

#define MAX_RULES 4

static const char *const op_names[OFF_FAULT_N_OPS] = {"read", "write", "fsync", "fallocate",
                                                      "complete", "truncate"};

typedef struct fault_rule {
    int op;              /* OFF_FAULT_* */
    long nth, times;     /* fault matching calls nth .. nth + times - 1 (times 0: all on) */
    int err;             /* errno to fail with, or 0 */
    long short_len;      /* bytes to transfer instead, or -1 */
    char path[256];      /* substring of the file's path ("": every file) */
    atomic_long seen;    /* matching calls so far */
    atomic_int logged;   /* its first fault was logged */
} fault_rule;

static fault_rule rules[MAX_RULES];
static atomic_int n_rules;       /* rules armed; 0: the hook is inert */
static atomic_long n_fired;

static const struct {
    const char *name;
    int code;
} errno_names[] = {
    {"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EAGAIN", EAGAIN},
    {"EINTR", EINTR},   {"EFBIG", EFBIG},   {"EBADF", EBADF},   {"EINVAL", EINVAL},
    {"EROFS", EROFS},   {"ENOMEM", ENOMEM}, {"EPERM", EPERM},   {"EACCES", EACCES},
    {"ENODEV", ENODEV}, {"ENXIO", ENXIO},   {"EOPNOTSUPP", EOPNOTSUPP},
};

static int parse_errno(const char *v)
{
    for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
        if (strcmp(v, errno_names[i].name) == 0)
            return errno_names[i].code;
    char *end;
    long n = strtol(v, &end, 10);
    return *v && !*end && n > 0 && n < 4096 ? (int)n : 0;
}

static int parse_long(const char *v, long lo, long *out)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < lo)
        return -1;
    *out = n;
    return 0;
}

/* One rule "op=write,nth=3,errno=ENOSPC,path=o.jsonl" (len bytes of s). */
static int parse_rule(const char *s, size_t len, fault_rule *r)
{
    char buf[512];
    RETURN_IF(len >= sizeof buf, -EINVAL, "FLEXH2O_FAULT: rule \"%.*s...\" is too long", 40, s);
    memcpy(buf, s, len);
    buf[len] = 0;
    *r = (fault_rule){.op = -1, .nth = 1, .times = 1, .short_len = -1};
    char *save = NULL;
    for (char *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        RETURN_IF(!eq, -EINVAL, "FLEXH2O_FAULT: \"%s\" is not key=value", kv);
        *eq = 0;
        const char *k = kv, *v = eq + 1;
        if (strcmp(k, "op") == 0) {
            for (int i = 0; i < OFF_FAULT_N_OPS; i++)
                if (strcmp(v, op_names[i]) == 0)
                    r->op = i;
            RETURN_IF(r->op < 0, -EINVAL, "FLEXH2O_FAULT: op=%s: give read, write, fsync, "
                      "fallocate, truncate or complete", v);
        } else if (strcmp(k, "nth") == 0) {
            RETURN_IF(parse_long(v, 1, &r->nth) < 0, -EINVAL,
                      "FLEXH2O_FAULT: nth=%s: give a count from 1", v);
        } else if (strcmp(k, "times") == 0) {
            RETURN_IF(parse_long(v, 0, &r->times) < 0, -EINVAL,
                      "FLEXH2O_FAULT: times=%s: give a count (0: every call from nth on)", v);
        } else if (strcmp(k, "errno") == 0) {
            r->err = parse_errno(v);
            RETURN_IF(!r->err, -EINVAL, "FLEXH2O_FAULT: errno=%s: give a name such as "
                      "ENOSPC or EIO, or a number", v);
        } else if (strcmp(k, "short") == 0) {
            RETURN_IF(parse_long(v, 0, &r->short_len) < 0, -EINVAL,
                      "FLEXH2O_FAULT: short=%s: give the bytes to transfer", v);
        } else if (strcmp(k, "path") == 0) {
            RETURN_IF(strlen(v) >= sizeof r->path, -EINVAL,
                      "FLEXH2O_FAULT: path=%s is too long", v);
            strcpy(r->path, v);
        } else {
            RETURN_IF(1, -EINVAL, "FLEXH2O_FAULT: unknown key \"%s\" (op, nth, times, errno, "
                      "short, path)", k);
        }
    }
    RETURN_IF(r->op < 0, -EINVAL, "FLEXH2O_FAULT: a rule needs op=read|write|fsync|fallocate|"
              "truncate|complete");
    RETURN_IF(!r->err == (r->short_len < 0), -EINVAL,
              "FLEXH2O_FAULT: a rule needs exactly one of errno=E and short=BYTES");
    RETURN_IF(r->short_len >= 0 && r->op != OFF_FAULT_READ && r->op != OFF_FAULT_WRITE &&
              r->op != OFF_FAULT_COMPLETE, -EINVAL,
              "FLEXH2O_FAULT: short= needs op=read, write or complete");
    return 0;
}

/* Parse spec and put its rules in place of the armed ones. */
static int fault_arm(const char *spec)
{
    fault_rule parsed[MAX_RULES];
    int n = 0;
    for (const char *s = spec ? spec : ""; *s;) {
        const char *end = strchr(s, ';');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (len > 0) {
            RETURN_IF(n == MAX_RULES, -EINVAL, "FLEXH2O_FAULT: at most %d rules", MAX_RULES);
            FORWARD_IF(parse_rule(s, len, &parsed[n]));
            n++;
        }
        s += len + (end ? 1 : 0);
    }
    atomic_store(&n_rules, 0); /* disarm while the table changes */
    for (int i = 0; i < n; i++) {
        fault_rule *r = &rules[i];
        r->op = parsed[i].op;
        r->nth = parsed[i].nth;
        r->times = parsed[i].times;
        r->err = parsed[i].err;
        r->short_len = parsed[i].short_len;
        memcpy(r->path, parsed[i].path, sizeof r->path);
        atomic_store(&r->seen, 0);
        atomic_store(&r->logged, 0);
    }
    atomic_store(&n_fired, 0);
    atomic_store(&n_rules, n);
    return 0;
}

static void env_init(void);
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

int off_fault_set(const char *spec)
{
    /* the environment is read first, so that it never arms itself later
     * over these rules */
    pthread_once(&env_once, env_init);
    return fault_arm(spec);
}

long off_fault_fired(void)
{
    return atomic_load(&n_fired);
}

static void env_init(void)
{
    const char *spec = getenv("FLEXH2O_FAULT");
    if (!spec || !*spec)
        return;
    if (fault_arm(spec) < 0) {
        /* no caller to return to: say it, and run without faults */
        err_log("[flexh2o] FLEXH2O_FAULT ignored: %s", err_msg());
        err_clear();
        return;
    }
    err_log("[flexh2o] fault injection armed: FLEXH2O_FAULT=%s", spec);
}

/* Does a rule fault this call of op on fd with n bytes? On yes: *err (a
 * positive errno) or *n cut to the rule's length (to a multiple of
 * OFF_ALIGN below it on an O_DIRECT file, as the kernel would cut it).
 * @return 1 or 0. */
static int fault_check(int op, int fd, size_t *n, int *err)
{
    pthread_once(&env_once, env_init);
    int nr = atomic_load_explicit(&n_rules, memory_order_acquire);
    fault_rule *r = NULL;
    long k = 0;
    for (int i = 0; i < nr; i++) { /* every matching rule counts the call; the first due fires */
        fault_rule *q = &rules[i];
        if (q->op != op || (q->path[0] && !strstr(off_file_path(fd), q->path)))
            continue;
        long kq = atomic_fetch_add(&q->seen, 1) + 1;
        if (!r && kq >= q->nth && (q->times == 0 || kq < q->nth + q->times)) {
            r = q;
            k = kq;
        }
    }
    if (r) {
        size_t want = n ? *n : 0;
        if (r->err) {
            *err = r->err;
        } else {
            size_t cut = (size_t)r->short_len;
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0 && (fl & O_DIRECT))
                cut -= cut % OFF_ALIGN;
            if (cut < *n)
                *n = cut;
        }
        atomic_fetch_add(&n_fired, 1);
        if (atomic_exchange(&r->logged, 1) == 0) {
            if (r->err)
                err_log("[flexh2o] FLEXH2O_FAULT: %s #%ld of %s fails with %s", op_names[op], k,
                        off_file_path(fd), strerror(r->err));
            else
                err_log("[flexh2o] FLEXH2O_FAULT: %s #%ld of %s moves %zu of %zu bytes",
                        op_names[op], k, off_file_path(fd), *n, want);
        }
        return 1;
    }
    return 0;
}

int off_fault_complete(int fd, int write, int res)
{
    if (res < 0)
        return res;
    /* a completion is a "complete" and a "read" or "write": both count it */
    size_t n1 = (size_t)res, n2 = (size_t)res;
    int e1 = 0, e2 = 0;
    int f1 = fault_check(OFF_FAULT_COMPLETE, fd, &n1, &e1);
    int f2 = fault_check(write ? OFF_FAULT_WRITE : OFF_FAULT_READ, fd, &n2, &e2);
    if (f1)
        return e1 ? -e1 : (int)n1;
    if (f2)
        return e2 ? -e2 : (int)n2;
    return res;
}

#else /* !FH_FAULT_INJECT: the hook compiles away */

static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void env_init(void)
{
    const char *spec = getenv("FLEXH2O_FAULT");
    if (spec && *spec)
        err_log("[flexh2o] FLEXH2O_FAULT ignored: this build has no fault injection "
                "(meson -Dfault_inject=true)");
}

int off_fault_set(const char *spec)
{
    RETURN_IF(spec && *spec, -ENOTSUP, "fault injection is not built in (meson "
              "-Dfault_inject=true)");
    return 0;
}

long off_fault_fired(void) { return 0; }

static int fault_check(int op, int fd, size_t *n, int *err)
{
    (void)op, (void)fd, (void)n, (void)err;
    pthread_once(&env_once, env_init);
    return 0;
}

int off_fault_complete(int fd, int write, int res)
{
    (void)fd, (void)write;
    return res;
}

#endif

int off_fault_built(void)
{
    return FH_FAULT_INJECT;
}

/* ------------------------------------------------------------ the calls */

ssize_t off_read(int fd, void *buf, size_t n)
{
    int err = 0;
    if (fault_check(OFF_FAULT_READ, fd, &n, &err) && err)
        return -err;
    for (int tries = 0;; tries++) {
        ssize_t r = read(fd, buf, n);
        if (r >= 0)
            return r;
        if (errno != EINTR || tries + 1 >= OFF_EINTR_MAX)
            return -errno;
    }
}

ssize_t off_pread(int fd, void *buf, size_t n, uint64_t off)
{
    int err = 0;
    if (fault_check(OFF_FAULT_READ, fd, &n, &err) && err)
        return -err;
    for (int tries = 0;; tries++) {
        ssize_t r = pread(fd, buf, n, (off_t)off);
        if (r >= 0)
            return r;
        if (errno != EINTR || tries + 1 >= OFF_EINTR_MAX)
            return -errno;
    }
}

ssize_t off_pwrite(int fd, const void *buf, size_t n, uint64_t off)
{
    int err = 0;
    if (fault_check(OFF_FAULT_WRITE, fd, &n, &err) && err)
        return -err;
    for (int tries = 0;; tries++) {
        ssize_t r = pwrite(fd, buf, n, (off_t)off);
        if (r >= 0)
            return r;
        if (errno != EINTR || tries + 1 >= OFF_EINTR_MAX)
            return -errno;
    }
}

ssize_t off_write(int fd, const void *buf, size_t n)
{
    int err = 0;
    if (fault_check(OFF_FAULT_WRITE, fd, &n, &err) && err)
        return -err;
    for (int tries = 0;; tries++) {
        ssize_t r = write(fd, buf, n);
        if (r >= 0)
            return r;
        if (errno != EINTR || tries + 1 >= OFF_EINTR_MAX)
            return -errno;
    }
}

int off_fsync(int fd)
{
    int err = 0;
    if (fault_check(OFF_FAULT_FSYNC, fd, NULL, &err))
        return -err;
    return fsync(fd) == 0 ? 0 : -errno;
}

int off_fdatasync(int fd)
{
    int err = 0;
    if (fault_check(OFF_FAULT_FSYNC, fd, NULL, &err))
        return -err;
    return fdatasync(fd) == 0 ? 0 : -errno;
}

int off_fallocate(int fd, uint64_t size)
{
    int err = 0;
    if (fault_check(OFF_FAULT_FALLOCATE, fd, NULL, &err))
        return -err;
    if (fallocate(fd, 0, 0, (off_t)size) == 0)
        return 0;
    if (errno != EOPNOTSUPP)
        return -errno;
    return -posix_fallocate(fd, 0, (off_t)size); /* file systems without fallocate */
}

int off_truncate(const char *path, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = off_file_name(fd, path); /* the fault hook's path= */
    int err = 0;
    if (rc == 0 && fault_check(OFF_FAULT_TRUNCATE, fd, NULL, &err))
        rc = -err;
    for (int tries = 0; rc == 0 && ftruncate(fd, (off_t)size) != 0; tries++)
        if (errno != EINTR || tries + 1 >= OFF_EINTR_MAX)
            rc = -errno;
    off_file_close(fd);
    return rc;
}

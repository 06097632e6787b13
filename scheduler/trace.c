/* trace.c: the Chrome trace-event recorder (scheduler.h). Events are kept in a
 * growable array under a mutex (a handful per layer and GPU batch, so the
 * lock is never hot) and written once at the end:
 *
 *   {"traceEvents": [
 *     {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "compute"}},
 *     ... one per track, then the process name ...
 *     {"name": "load weights", "cat": "load", "ph": "X", "ts": 12.5, "dur": 80.0,
 *      "pid": 1, "tid": 2, "args": {"tier": "cpu", "bytes": 4096, "layer": 3, ...}},
 *     ...],
 *    "displayTimeUnit": "ms"}
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "kern.h"
#include "off.h"
#include "scheduler.h"

struct sched_trace {
    pthread_mutex_t mu; /* guards ev, n, cap */
    sched_event *ev;    /* (cap), the first n recorded */
    size_t n, cap;
    double t0;          /* sched_trace_now() at creation: ts 0 */
};

double sched_trace_now(void)
{
    return kern_now_s();
}

int sched_trace_create(sched_trace **out)
{
    sched_trace *t = calloc(1, sizeof *t);
    RETURN_IF(!t, -ENOMEM, "out of memory creating the trace recorder");
    pthread_mutex_init(&t->mu, NULL);
    t->t0 = sched_trace_now();
    *out = t;
    return 0;
}

void sched_trace_destroy(sched_trace *t)
{
    if (!t)
        return;
    pthread_mutex_destroy(&t->mu);
    free(t->ev);
    free(t);
}

void sched_trace_add(sched_trace *t, const sched_event *e)
{
    if (!t || !e)
        return;
    pthread_mutex_lock(&t->mu);
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 1024;
        sched_event *ev = realloc(t->ev, cap * sizeof *ev);
        if (!ev) { /* drop the event rather than fail the run over a trace */
            pthread_mutex_unlock(&t->mu);
            return;
        }
        t->ev = ev;
        t->cap = cap;
    }
    t->ev[t->n++] = *e;
    pthread_mutex_unlock(&t->mu);
}

/* The recorder is const to readers, but they still take its lock: events may
 * be arriving from the I/O threads while the count is read. */
static pthread_mutex_t *trace_mu(const sched_trace *t)
{
    return (pthread_mutex_t *)&t->mu;
}

size_t sched_trace_count(const sched_trace *t)
{
    if (!t)
        return 0;
    pthread_mutex_lock(trace_mu(t));
    size_t n = t->n;
    pthread_mutex_unlock(trace_mu(t));
    return n;
}

/* A JSON string. Names are static ASCII by contract; escaping anyway keeps a
 * stray quote from breaking the whole file. */
static void put_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void put_event(FILE *f, const sched_event *e, double t0)
{
    fputs(",\n{\"name\": ", f);
    put_str(f, e->name ? e->name : "?");
    fputs(", \"cat\": ", f);
    put_str(f, e->cat ? e->cat : "");
    fprintf(f, ", \"ph\": \"X\", \"ts\": %.3f, \"dur\": %.3f, \"pid\": 1, \"tid\": %d, "
            "\"args\": {", (e->t0 - t0) * 1e6, e->t1 > e->t0 ? (e->t1 - e->t0) * 1e6 : 0.0,
            e->track);
    /* args: only what the event has (NULL tier, -1 indices and 0 bytes left out) */
    const char *sep = "";
    if (e->tier) {
        fputs("\"tier\": ", f);
        put_str(f, e->tier);
        sep = ", ";
    }
    if (e->bytes) {
        fprintf(f, "%s\"bytes\": %llu", sep, (unsigned long long)e->bytes);
        sep = ", ";
    }
    if (e->layer >= 0) {
        fprintf(f, "%s\"layer\": %d", sep, e->layer);
        sep = ", ";
    }
    if (e->batch >= 0) {
        fprintf(f, "%s\"batch\": %d", sep, e->batch);
        sep = ", ";
    }
    if (e->step >= 0)
        fprintf(f, "%s\"step\": %d", sep, e->step);
    fputs("}}", f);
}

int sched_trace_check(const char *path)
{
    int rc = off_probe_writable(path);
    RETURN_IF(rc == -ENAMETOOLONG, rc, "%s: the trace path is too long; pick a shorter "
              "--trace path", path);
    RETURN_IF(rc == -EISDIR, rc, "%s: is a directory; give --trace a file path", path);
    RETURN_IF(rc < 0, rc, "%s: cannot write the trace (%s); check that the directory exists "
              "and is writable", path, strerror(-rc));
    return 0;
}

int sched_trace_write(const sched_trace *t, const char *path)
{
    RETURN_IF(!t, -EINVAL, "%s: no trace was recorded (no recorder)", path);
    char tmp[4096];
    RETURN_IF((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp, -ENAMETOOLONG,
              "%s: the trace path is too long; pick a shorter --trace path", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        int e = errno; /* err_set may clobber errno */
        RETURN_IF(1, -e, "%s: cannot write the trace (%s); check that the directory exists "
                  "and is writable", path, strerror(e));
    }
    static const char *tracks[] = {"", "compute", "h2d (loads)", "d2h (stores)", "disk"};
    fputs("{\"traceEvents\": [\n", f);
    for (int i = TRACK_COMPUTE; i <= TRACK_DISK; i++)
        fprintf(f, "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": %d, "
                "\"args\": {\"name\": \"%s\"}},\n", i, tracks[i]);
    fputs("{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": 0, \"args\": "
          "{\"name\": \"flexh2o\"}}", f);
    pthread_mutex_lock(trace_mu(t));
    for (size_t i = 0; i < t->n; i++)
        put_event(f, &t->ev[i], t->t0);
    pthread_mutex_unlock(trace_mu(t));
    fputs("\n],\n\"displayTimeUnit\": \"ms\"}\n", f);
    int e = ferror(f) ? EIO : 0;
    if (fclose(f) != 0 && !e)
        e = errno;
    if (!e && rename(tmp, path) != 0)
        e = errno;
    if (e) {
        remove(tmp);
        RETURN_IF(1, -e, "%s: cannot write the trace (%s); check free space and that the "
                  "directory is writable", path, strerror(e));
    }
    return 0;
}

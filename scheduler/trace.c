/* trace.c: the Chrome trace-event recorder (sched.h). Events are kept in a
 * growable array under a mutex (a handful per layer and GPU batch, so the
 * lock is never hot) and written once at the end. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "sched.h"

struct sched_trace {
    pthread_mutex_t mu;
    sched_event *ev;
    size_t n, cap;
    double t0;
};

double sched_trace_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int sched_trace_create(sched_trace **out)
{
    sched_trace *t = calloc(1, sizeof *t);
    RETURN_IF(!t, -ENOMEM, "out of memory");
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
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 1024;
        sched_event *ev = realloc(t->ev, cap * sizeof *ev);
        if (!ev) { /* drop the event rather than fail the run */
            pthread_mutex_unlock(&t->mu);
            return;
        }
        t->ev = ev;
        t->cap = cap;
    }
    t->ev[t->n++] = *e;
    pthread_mutex_unlock(&t->mu);
}

size_t sched_trace_count(const sched_trace *t)
{
    return t ? t->n : 0;
}

int sched_trace_write(const sched_trace *t, const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    RETURN_IF(!f, -errno, "%s: cannot write the trace (%s); check the directory", path,
              strerror(errno));
    static const char *tracks[] = {"", "compute", "h2d (loads)", "d2h (stores)", "disk"};
    fprintf(f, "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n");
    for (int i = 1; i <= 4; i++)
        fprintf(f, "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": %d, "
                "\"args\": {\"name\": \"%s\"}},\n", i, tracks[i]);
    fprintf(f, "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 1, \"args\": {\"name\": "
            "\"flexh2o\"}}");
    for (size_t i = 0; i < t->n; i++) {
        const sched_event *e = &t->ev[i];
        fprintf(f, ",\n{\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"ts\": %.3f, "
                "\"dur\": %.3f, \"pid\": 1, \"tid\": %d, \"args\": {", e->name, e->cat,
                (e->t0 - t->t0) * 1e6, (e->t1 - e->t0) * 1e6, e->track);
        const char *sep = "";
        if (e->tier) {
            fprintf(f, "\"tier\": \"%s\"", e->tier);
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
        fprintf(f, "}}");
    }
    fprintf(f, "\n]}\n");
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        remove(tmp);
        RETURN_IF(1, -EIO, "%s: cannot write the trace (%s); check free space", path,
                  strerror(errno));
    }
    return 0;
}

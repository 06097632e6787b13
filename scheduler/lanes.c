/* lanes.c: the two I/O lanes of the scheduler.
 *
 *   compute thread ──submit──► lane 0 (loads):  [disk ─io_uring─► host stage] ─h2d─► GPU stage
 *                  ──submit──► lane 1 (stores): GPU stage ─d2h─► [host stage ─io_uring─► disk]
 *
 * (Where the scheduler orders CPU-tier transfers on the device, sched.c
 * issues those itself with copy_async and events; the lanes keep the disk.)
 *
 * Each lane is a thread with a FIFO of tasks and a "done" ticket counter;
 * the compute thread waits for the ticket of exactly the task it needs.
 * A task may first wait for a compute marker (the compute that last used
 * or produced its GPU buffer) and for a ticket of the other lane (a load
 * into a staging slot waits for the store that empties it). Without
 * --overlap a lane has no thread: submit runs the task at once.
 */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "sched_impl.h"

/* Count bytes moved over a link in secs (sched_links reports them). */
void sched_link_add(struct sched *s, int link, uint64_t bytes, double secs)
{
    pthread_mutex_lock(&s->link_mu);
    s->links[link].bytes += bytes;
    s->links[link].busy_s += secs;
    pthread_mutex_unlock(&s->link_mu);
}

static void trace_task(struct sched *s, const sched_task *t, int track, const char *name,
                       const char *cat, const char *tier, uint64_t bytes, double t0)
{
    sched_event e = {name, cat, track, t0, sched_trace_now(), tier, bytes, t->layer,
                     t->batch, t->step};
    sched_trace_add(s->trace, &e);
}

int64_t sched_task_copy(struct sched *s, const sched_task *t, void *dst, const void *src,
                        int wait)
{
    const backend_ops *o = s->be->ops;
    int load = t->kind == TASK_LOAD, queue = load ? BACKEND_Q_H2D : BACKEND_Q_D2H;
    if (t->kv_live) /* a decode step's slots in use */
        return sched_kv_copy_live(s, t->tier, queue, dst, src,
                                  sched_kv_live_slots(s, t->tier, t->batch, !load), wait);
    int rc = !wait ? o->copy_async(s->be->ctx, queue, dst, src, t->bytes)
           : load  ? o->copy_h2d(s->be->ctx, dst, src, t->bytes)
                   : o->copy_d2h(s->be->ctx, dst, src, t->bytes);
    return rc < 0 ? rc : (int64_t)t->bytes;
}

/* The bytes requests ios[0, n) move. */
static size_t ios_bytes(const off_io *ios, int n)
{
    size_t b = 0;
    for (int i = 0; i < n; i++)
        b += ios[i].len;
    return b;
}

/* Run one task in the calling thread (a lane's, or the compute thread's
 * without overlap). */
static int sched_task_run(struct sched *s, sched_lane *l, const sched_task *t)
{
    const backend_ops *o = s->be->ops;
    void *ctx = s->be->ctx;
    if (t->mark >= 0)
        FORWARD_IF(o->event_sync(ctx, t->mark)); /* compute is done with the GPU buffer */
    if (t->dep_lane >= 0)
        FORWARD_IF(sched_lane_wait(&s->lane[t->dep_lane], t->dep_ticket));
    const char *cat = t->kind == TASK_LOAD ? "load" : "store";
    const char *tier = t->tier == SCHED_CPU ? "cpu" : "disk";
    double t0 = sched_trace_now();
    if (t->tier == SCHED_CPU) { /* (CPU attention computes CPU-tier KV in place: no task) */
        int load = t->kind == TASK_LOAD;
        int64_t bytes = sched_task_copy(s, t, load ? t->stage : t->host,
                                        load ? t->host : t->stage, 1);
        FORWARD_IF((int)(bytes < 0 ? bytes : 0));
        sched_link_add(s, load ? SCHED_LINK_CPU_GPU : SCHED_LINK_GPU_CPU, (uint64_t)bytes,
                       sched_trace_now() - t0);
        trace_task(s, t, l->track, t->name, cat, tier, (uint64_t)bytes, t0);
        return 0;
    }
    /* disk: straight into / out of the stage where it is host memory and
     * aligned (the CPU backend; CPU attention's host stages, which are
     * always aligned), else through the lane's aligned host stage and a copy */
    size_t span = off_align_up(t->delta + t->bytes);
    char *direct = (char *)t->stage - t->delta;
    if (!(t->stage_host || o->host_visible) || ((uintptr_t)direct & (OFF_ALIGN - 1)))
        direct = NULL;
    RETURN_IF((t->stage_host || !l->stage) && !direct, -EINVAL,
              "internal: staging buffer of %s is not %u-aligned", t->name, OFF_ALIGN);
    off_io io = {t->fd, t->kind == TASK_STORE, direct ? direct : l->stage, span, t->file_off};
    char what[96];
    if (t->batch >= 0)
        snprintf(what, sizeof what, "%s of layer %d, batch %d", t->name, t->layer, t->batch);
    else /* a layer's weights serve every batch of the block */
        snprintf(what, sizeof what, "%s of layer %d", t->name, t->layer);
    if (t->kind == TASK_LOAD) {
        /* a disk KV record with its row log (a decode step reads the
         * slots in use), the log applied once it is in */
        const off_io *ios = &io;
        int n = 1;
        if (t->kv_disk) {
            n = sched_kv_load_runs(s, t->layer, t->batch, t->kv_live, io.buf, l->log, l->runs,
                                   l->pages);
            ios = l->runs;
            span = ios_bytes(ios, n);
        }
        if (n > 0)
            FORWARD_IF(off_disk_rw(s->disk, ios, n, what));
        if (t->kv_disk)
            sched_kv_log_apply(s, t->layer, t->batch, io.buf, l->log);
        double t1 = sched_trace_now();
        sched_link_add(s, SCHED_LINK_DISK_CPU, span, t1 - t0);
        trace_task(s, t, TRACK_DISK, "disk read", cat, tier, span, t0);
        if (!direct) {
            int64_t b = sched_task_copy(s, t, t->stage, (char *)l->stage + t->delta, 1);
            FORWARD_IF((int)(b < 0 ? b : 0));
            sched_link_add(s, SCHED_LINK_CPU_GPU, (uint64_t)b, sched_trace_now() - t1);
        }
    } else {
        /* stores are whole records (delta 0) or a decode step's pages; the
         * stage buffers are padded to OFF_ALIGN, and what the padding holds
         * is never read back */
        if (!direct) {
            /* (a decode step's slots in use: what the write-back below
             * writes of the rest is never read) */
            int64_t b = sched_task_copy(s, t, l->stage, t->stage, 1);
            FORWARD_IF((int)(b < 0 ? b : 0));
            sched_link_add(s, SCHED_LINK_GPU_CPU, (uint64_t)b, sched_trace_now() - t0);
            memset((char *)l->stage + t->bytes, 0, span - t->bytes);
        }
        /* a decode step writes what it changed to a disk KV record's row
         * log; a whole record empties the log */
        const off_io *ios = &io;
        int n = 1, log_n = 0;
        if (t->kv_seqs > 0) {
            n = sched_kv_store_runs(s, t->layer, t->batch, t->kv_seqs, io.buf, l->log, l->runs,
                                    l->pages, &log_n);
            ios = l->runs;
            span = ios_bytes(ios, n);
        }
        double t1 = sched_trace_now();
        FORWARD_IF(off_disk_rw(s->disk, ios, n, what));
        if (t->kv_disk) /* (the next load of the record waits for this store) */
            sched_kv_log_set(s, t->layer, t->batch, log_n);
        sched_link_add(s, SCHED_LINK_CPU_DISK, span, sched_trace_now() - t1);
        trace_task(s, t, TRACK_DISK, "disk write", cat, tier, span, t1);
    }
    trace_task(s, t, l->track, t->name, cat, tier, t->bytes, t0);
    return 0;
}

static void *lane_main(void *arg)
{
    sched_lane *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && l->done == l->issued)
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->stop && l->done == l->issued)
            break;
        sched_task t = l->q[l->done % LANE_QUEUE];
        int failed = l->failed;
        pthread_mutex_unlock(&l->mu);
        int rc = failed ? -EIO : sched_task_run(l->s, l, &t);
        pthread_mutex_lock(&l->mu);
        if (rc < 0 && !l->failed) {
            l->failed = rc;
            snprintf(l->msg, sizeof l->msg, "%s", err_msg()[0] ? err_msg() : "I/O failed");
        }
        l->done++;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

int sched_lanes_start(struct sched *s)
{
    for (int i = 0; i < 2; i++) {
        sched_lane *l = &s->lane[i];
        l->s = s;
        l->id = i;
        l->track = i == 0 ? TRACK_H2D : TRACK_D2H;
        pthread_mutex_init(&l->mu, NULL);
        pthread_cond_init(&l->cv, NULL);
        if (s->g.host_stage) {
            l->stage = NULL;
            FORWARD_IF(s->be->ops->host_alloc(s->be->ctx, s->g.host_stage, &l->stage));
            RETURN_IF(((uintptr_t)l->stage & (OFF_ALIGN - 1)) != 0, -EINVAL,
                      "internal: host staging buffer is not %u-aligned", OFF_ALIGN);
        }
        size_t n_pages = s->g.kv_disk_stride / OFF_ALIGN, log = sched_kv_log_bytes(&s->g);
        if (n_pages) {
            l->pages = malloc(n_pages);
            l->runs = malloc(sizeof(off_io) * sched_kv_max_runs(&s->g));
            RETURN_IF(!l->pages || !l->runs, -ENOMEM, "out of memory");
        }
        if (log) { /* (zeroed: an entry's unused rows are written as they are) */
            l->log = off_alloc_aligned(log);
            RETURN_IF(!l->log, -ENOMEM, "out of memory");
            memset(l->log, 0, log);
        }
        if (s->pol.overlap) {
            int e = pthread_create(&l->thread, NULL, lane_main, l);
            RETURN_IF(e != 0, -e, "cannot start an I/O thread (%s)", strerror(e));
            l->threaded = 1;
        }
    }
    return 0;
}

void sched_lanes_stop(struct sched *s)
{
    for (int i = 0; i < 2; i++) {
        sched_lane *l = &s->lane[i];
        if (!l->s)
            continue;
        if (l->threaded) {
            pthread_mutex_lock(&l->mu);
            l->stop = 1;
            pthread_cond_broadcast(&l->cv);
            pthread_mutex_unlock(&l->mu);
            pthread_join(l->thread, NULL);
            l->threaded = 0;
        }
        s->be->ops->host_free(s->be->ctx, l->stage);
        l->stage = NULL;
        free(l->pages);
        free(l->runs);
        free(l->log);
        l->pages = NULL;
        l->runs = NULL;
        l->log = NULL;
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
        l->s = NULL;
    }
}

int64_t sched_lane_submit(sched_lane *l, const sched_task *t)
{
    if (!l->threaded) {
        FORWARD_IF(sched_task_run(l->s, l, t));
        l->issued++;
        l->done++;
        return (int64_t)l->done;
    }
    pthread_mutex_lock(&l->mu);
    while (l->issued - l->done >= LANE_QUEUE) /* full: wait for the oldest */
        pthread_cond_wait(&l->cv, &l->mu);
    l->q[l->issued % LANE_QUEUE] = *t;
    uint64_t ticket = ++l->issued;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return (int64_t)ticket;
}

int sched_lane_wait(sched_lane *l, uint64_t ticket)
{
    if (!l->threaded)
        return 0; /* ran at submit */
    pthread_mutex_lock(&l->mu);
    while (l->done < ticket && !l->failed)
        pthread_cond_wait(&l->cv, &l->mu);
    int failed = l->failed;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", l->msg);
    pthread_mutex_unlock(&l->mu);
    RETURN_IF(failed, failed, "%s", msg);
    return 0;
}

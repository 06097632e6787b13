/* kv_copy.c: one sequence's KV cache copied onto other sequences of the
 * block (sched_kv_copy), so that n completions of a prompt share its
 * prefill instead of computing it n times.
 *
 * A sequence's cache in a layer is its share of four sub-arrays of the
 * record of its (layer, GPU batch, tier) (sched_impl.h): kc and vc, rows of
 * (kv_heads, cap) slots, then pos and scores, words of (kv_heads, cap).
 * Records of different tiers hold different numbers of sequences, so the
 * sub-arrays sit at other offsets: the copy goes sub-array by sub-array.
 * Per layer:
 *
 *   src:  GPU home | CPU home | disk record ─read─► lane 0's host stage
 *   each dst on the GPU or the CPU tier  ◄─ d2d / h2d / d2h / memcpy ─ src
 *   each GPU batch with dsts on disk: its record ─read─► lane 1's host stage
 *         (or lane 0's, when it is src's own record), dsts patched in,
 *         ─write─► back whole
 *
 * The lanes' host stages are aligned, registered with the disk engine and
 * at least one disk record long (sched_geom.host_stage): the plan already
 * has them, so the copy allocates nothing (a backend computing on host
 * memory has no lane stages: the two disk KV staging buffers serve). They
 * are idle between passes once the lanes have drained, which the copy
 * waits for first.
 */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "sched_impl.h"

/* Bytes that move over the link in the time a backend copy call costs
 * by itself (launch and wait, ~10 us at ~25 GB/s). */
#define KV_COPY_CALL_BYTES (256u << 10)

/* One sequence's cache in one layer. */
typedef struct kv_at {
    char *rec;           /* its record: a tier's home, or a disk record in host memory */
    int dev;             /* rec is backend memory that is not host memory */
    const kv_layout *kl; /* the record's layout */
    int j;               /* the sequence's index in the record */
} kv_at;

/* n bytes from src to dst, each host or backend memory. The backend's
 * copies block until the bytes are there. */
static int move_bytes(sched *s, char *dst, int dst_dev, const char *src, int src_dev, size_t n)
{
    const backend_ops *o = s->be->ops;
    void *ctx = s->be->ctx;
    if (n == 0)
        return 0;
    if (!dst_dev && !src_dev) {
        memcpy(dst, src, n);
        return 0;
    }
    if (dst_dev && src_dev)
        return o->copy_d2d(ctx, dst, src, n);
    double t0 = sched_trace_now();
    FORWARD_IF(dst_dev ? o->copy_h2d(ctx, dst, src, n) : o->copy_d2h(ctx, dst, src, n));
    sched_link_add(s, dst_dev ? SCHED_LINK_CPU_GPU : SCHED_LINK_GPU_CPU, n,
                   sched_trace_now() - t0);
    return 0;
}

/* Slots [0, n) of every KV head of one sub-array (at byte offset dpart of
 * d's record, fpart of f's), rows of rb bytes. @return bytes copied or
 * -errno. */
static int64_t copy_part(sched *s, const kv_at *d, size_t dpart, const kv_at *f, size_t fpart,
                         size_t rb, int n)
{
    size_t cap = (size_t)s->sh.cap, KVH = (size_t)s->g.KVH, per = KVH * cap * rb;
    char *to = d->rec + dpart + (size_t)d->j * per;
    const char *from = f->rec + fpart + (size_t)f->j * per;
    /* one span over every head when the unused tail of a head costs less
     * to move than another call would: a backend copy is a call of some
     * microseconds (about KV_COPY_CALL_BYTES over the link), a memcpy
     * nearly nothing; else one copy per head */
    int backend_copy = d->dev || f->dev;
    if ((size_t)n == cap || (backend_copy && (cap - (size_t)n) * rb <= KV_COPY_CALL_BYTES)) {
        size_t bytes = ((KVH - 1) * cap + (size_t)n) * rb;
        FORWARD_IF(move_bytes(s, to, d->dev, from, f->dev, bytes));
        return (int64_t)bytes;
    }
    for (size_t h = 0; h < KVH; h++)
        FORWARD_IF(move_bytes(s, to + h * cap * rb, d->dev, from + h * cap * rb, f->dev,
                              (size_t)n * rb));
    return (int64_t)(KVH * (size_t)n * rb);
}

/* Slots [0, n) of f's keys, values, positions and scores onto d's.
 * @return bytes copied or -errno. */
static int64_t copy_seq(sched *s, const kv_at *d, const kv_at *f, int n)
{
    const sched_geom *g = &s->g;
    size_t row = g->kv_row;
    size_t dp[4] = {d->kl->kc, d->kl->vc, d->kl->pos, d->kl->scores};
    size_t fp[4] = {f->kl->kc, f->kl->vc, f->kl->pos, f->kl->scores};
    size_t rb[4] = {row, row, 4, 4};
    int parts = f->kl->scores == SIZE_MAX ? 3 : 4; /* every tier keeps scores, or none */
    int64_t bytes = 0;
    for (int p = 0; p < parts; p++) {
        int64_t b = copy_part(s, d, dp[p], f, fp[p], rb[p], n);
        FORWARD_IF((int)(b < 0 ? b : 0));
        bytes += b;
    }
    return bytes;
}

/* Read (write = 0) or write the disk record of (layer l, GPU batch k)
 * from / to buf, whole. @return 0 or -errno. */
static int disk_record(sched *s, int write, void *buf, int l, int k)
{
    const sched_geom *g = &s->g;
    char what[64];
    snprintf(what, sizeof what, "KV copy of layer %d, batch %d", l, k);
    double t0 = sched_trace_now();
    int64_t bytes = g->kv_disk_stride;
    if (write) { /* whole: the record's row log starts over */
        off_io io = {s->kv_fd, 1, buf, g->kv_disk_stride,
                     ((uint64_t)l * g->K + k) * g->kv_disk_stride};
        FORWARD_IF(off_disk_rw(s->disk, &io, 1, what));
        sched_kv_log_set(s, l, k, 0);
    } else { /* with its row log (into lane 0's, idle) applied */
        bytes = sched_kv_read_record(s, l, k, buf, s->lane[0].log, what);
        FORWARD_IF((int)(bytes < 0 ? bytes : 0));
    }
    sched_link_add(s, write ? SCHED_LINK_CPU_DISK : SCHED_LINK_DISK_CPU, (uint64_t)bytes,
                   sched_trace_now() - t0);
    return 0;
}

/* Let everything that may still touch a KV home or a lane's host stage
 * finish: the lanes' tasks (the last pass's disk stores, the prefetch of
 * the next pass's weights through lane 0's stage), the compute queue (GPU-
 * tier caches written by the last layer) and the device-ordered stores of
 * CPU-tier homes. @return 0 or -errno. */
static int quiesce(sched *s)
{
    const backend_ops *o = s->be->ops;
    for (int i = 0; i < 2; i++)
        FORWARD_IF(sched_lane_wait(&s->lane[i], s->lane[i].issued));
    FORWARD_IF(o->sync(s->be->ctx));
    if (s->dev_order)
        FORWARD_IF(o->event_sync(s->be->ctx, EV_STORED));
    return 0;
}

/* Sequence seq's cache in layer l where it lives on the GPU or CPU tier. */
static kv_at at_home(sched *s, int seq, int l)
{
    int k, t, j;
    sched_kv_where(&s->g, seq, &k, &t, &j);
    return (kv_at){sched_kv_home(s, t, l, k), t == SCHED_GPU && !s->be->ops->host_visible,
                   &s->g.kv[t], j};
}

int sched_kv_copy(sched *s, int src, const int *dst, int n_dst, int n_slots)
{
    const sched_geom *g = &s->g;
    RETURN_IF(src < 0 || src >= g->block, -EINVAL,
              "internal: KV copy from sequence %d of a block of %d", src, g->block);
    RETURN_IF(n_slots < 0 || n_slots > s->sh.cap, -EINVAL,
              "internal: KV copy of %d slots, the plan has %d", n_slots, s->sh.cap);
    RETURN_IF(n_dst < 0 || (n_dst > 0 && !dst), -EINVAL, "internal: KV copy to %d sequences",
              n_dst);
    for (int i = 0; i < n_dst; i++)
        RETURN_IF(dst[i] < 0 || dst[i] >= g->block || dst[i] == src, -EINVAL,
                  "internal: KV copy from sequence %d to %d of a block of %d", src, dst[i],
                  g->block);
    if (n_dst == 0 || n_slots == 0)
        return 0;
    FORWARD_IF(quiesce(s));

    int ks, ts, js;
    sched_kv_where(g, src, &ks, &ts, &js);
    /* a disk tier of KV gives the lanes host stages of a record at least;
     * a backend computing on host memory has none, and its own KV staging
     * buffers are a record each, host memory and aligned */
    char *stage[2] = {s->lane[0].stage, s->lane[1].stage};
    if (!g->host_stage)
        for (int v = 0; v < 2; v++)
            stage[v] = s->kv_stage[v][SCHED_DISK];
    assert(g->kv_n[SCHED_DISK] == 0 ||
           (stage[0] && stage[1] && (g->host_stage >= g->kv_disk_stride || !g->host_stage)));
    for (int l = 0; l < g->L; l++) {
        double t0 = sched_trace_now();
        int64_t bytes = 0, b;
        kv_at f;
        if (ts == SCHED_DISK) {
            FORWARD_IF(disk_record(s, 0, stage[0], l, ks));
            f = (kv_at){stage[0], 0, &g->kv[SCHED_DISK], js};
        } else {
            f = at_home(s, src, l);
        }
        for (int i = 0; i < n_dst; i++) {
            int k, t, j;
            sched_kv_where(g, dst[i], &k, &t, &j);
            if (t == SCHED_DISK)
                continue;
            kv_at d = at_home(s, dst[i], l);
            b = copy_seq(s, &d, &f, n_slots);
            FORWARD_IF((int)(b < 0 ? b : 0));
            bytes += b;
        }
        /* the dsts on disk, one read-patch-write per record */
        for (int k = 0; k < g->K; k++) {
            char *rec = ts == SCHED_DISK && k == ks ? stage[0] : stage[1];
            int patched = 0;
            for (int i = 0; i < n_dst; i++) {
                int kd, t, j;
                sched_kv_where(g, dst[i], &kd, &t, &j);
                if (t != SCHED_DISK || kd != k)
                    continue;
                if (!patched && rec == stage[1])
                    FORWARD_IF(disk_record(s, 0, rec, l, k));
                patched = 1;
                kv_at d = {rec, 0, &g->kv[SCHED_DISK], j};
                b = copy_seq(s, &d, &f, n_slots);
                FORWARD_IF((int)(b < 0 ? b : 0));
                bytes += b;
            }
            if (patched)
                FORWARD_IF(disk_record(s, 1, rec, l, k));
        }
        sched_event e = {"copy KV", "copy", TRACK_COMPUTE, t0, sched_trace_now(), NULL,
                         (uint64_t)bytes, l, ks, -1};
        sched_trace_add(s->trace, &e);
    }
    return 0;
}

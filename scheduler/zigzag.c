/* zigzag.c: one pass of the zig-zag block scheduler.
 *
 * One pass (prefill, or one decode step) over a block of K GPU batches:
 *
 *   for layer j:                          weights of j: resident, or in slot w
 *     for GPU batch k (active ones):
 *        wait: weights of j, KV + activations of (j, k) in stage slot i % 2
 *        issue: weights of j + 1 (once per layer, into the other weight slot;
 *               their disk read a piece per batch, after that batch's loads)
 *               KV + activations of the next item into slot (i + 1) % 2
 *        compute layer j on batch k (embedding before layer 0, head after L-1)
 *        mark the compute; issue: store KV + activations of (j, k) home
 *
 * Items i run in that order; loads run on lane 0 and stores on lane 1
 * (lanes.c) while the compute thread works, so I/O of the neighbours
 * overlaps the compute of the current item. On a backend with its own
 * copy queues (CUDA) the transfers of CPU-tier homes are instead ordered on
 * the device: the compute thread enqueues them (copy_async) between events
 * (a load waits for the compute that last used its slot and for the
 * stores issued before it; a compute waits for its loads and for the store
 * that empties its slot; a store waits for its compute), so it never blocks on them and the compute queue runs ahead of
 * its inputs. Disk transfers stay on the lanes. The weights of layer 0 for
 * the next pass load during the last layer. Every buffer is allocated at
 * sched_create from the plan; a pass allocates nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "sched_impl.h"


/* Issue transfer t between a CPU-tier home and its GPU stage on the
 * device's copy queue (dev_order), recording event ev after the copy. A
 * load first waits (on the device) for the compute that last used its
 * stage (t->mark) and, unless it is a weight load (nothing stores weights),
 * for every store issued so far (EV_STORED): the home it reads may be what
 * an earlier item stored, from either stage slot, as the lanes' path
 * orders it by waiting for the stores of both slots. A store waits for the
 * compute that produced it. */
static int issue_async(sched *s, const sched_task *t, int ev, int after_stores)
{
    const backend_ops *o = s->be->ops;
    void *ctx = s->be->ctx;
    int load = t->kind == TASK_LOAD, q = load ? BACKEND_Q_H2D : BACKEND_Q_D2H;
    if (t->mark >= 0)
        FORWARD_IF(o->event_wait(ctx, q, t->mark));
    if (load && after_stores)
        FORWARD_IF(o->event_wait(ctx, q, EV_STORED));
    int64_t bytes = sched_task_copy(s, t, load ? t->stage : t->host, load ? t->host : t->stage, 0);
    FORWARD_IF((int)(bytes < 0 ? bytes : 0));
    FORWARD_IF(o->event_record(ctx, q, ev));
    if (!load)
        FORWARD_IF(o->event_record(ctx, q, EV_STORED));
    sched_link_add(s, load ? SCHED_LINK_CPU_GPU : SCHED_LINK_GPU_CPU, (uint64_t)bytes, 0);
    return 0;
}

/* Issue the next of the pending weight read's pieces (all of them with
 * all set): an equal share of what is left, in whole OFF_ALIGN blocks, as
 * one lane task. A load queued behind it waits for that piece only, not
 * for the whole layer: with several GPU batches the next layer's weights
 * load a piece per batch, after that batch's KV (FlexGen's order, where
 * they go with the layer's last batch, leaves the disk idle before). */
static int w_issue(sched *s, int all)
{
    const sched_task *w = &s->w_pend.t;
    while (s->w_pend.pieces) {
        size_t at = s->w_pend.at, left = s->w_pend.end - at;
        size_t n = s->w_pend.pieces == 1 ? left : left / (size_t)s->w_pend.pieces;
        n = (n + OFF_ALIGN - 1) & ~(size_t)(OFF_ALIGN - 1);
        if (n > left)
            n = left;
        s->w_pend.at += n;
        s->w_pend.pieces = s->w_pend.at == s->w_pend.end ? 0 : s->w_pend.pieces - 1;
        /* bytes [at, at + n) of the aligned span; the payload starts delta in */
        size_t p0 = at < w->delta ? w->delta : at;
        if (at + n > p0) {
            sched_task t = *w;
            t.delta = p0 - at;
            t.stage = (char *)w->stage + (p0 - w->delta);
            t.file_off = w->file_off + at;
            t.bytes = at + n - p0;
            int64_t ticket = sched_lane_submit(&s->lane[0], &t);
            FORWARD_IF((int)(ticket < 0 ? ticket : 0));
            s->w_ticket[s->w_pend.v] = (uint64_t)ticket;
        }
        if (!all)
            break;
    }
    return 0;
}

/* Issue the load of the weights of layer l into the next slot: its CPU
 * share now, its disk read in `pieces` parts that w_issue sends (0: all
 * now). */
static int load_weights(sched *s, int l, int step, int pieces)
{
    const sched_geom *g = &s->g;
    FORWARD_IF(w_issue(s, 1)); /* (the other slot's, should any be left) */
    int v = s->w_next;
    s->w_next ^= 1;
    s->w_slot_of[v] = l;
    sched_task t = {.kind = TASK_LOAD, .mark = EV_COMPUTE_W(v), .dep_lane = -1, .name = "weights",
                    .layer = l, .batch = -1, .step = step};
    int64_t ticket = 0;
    s->w_async[v] = 0;
    size_t wg = sched_w_gpu(g, l), wc = sched_w_cpu(g, l);
    if (wc > wg && !s->w_cpu_direct) { /* else the views read the CPU home */
        t.tier = SCHED_CPU;
        t.stage = (char *)s->w_stage[v] + (wg - g->w_stage_from);
        t.host = (char *)s->w_cpu_arena + s->w_cpu_at[l];
        t.bytes = wc - wg;
        if (s->dev_order) {
            FORWARD_IF(issue_async(s, &t, EV_LOAD_W(v), 0));
            s->w_async[v] = 1;
        } else {
            ticket = sched_lane_submit(&s->lane[0], &t);
            FORWARD_IF((int)(ticket < 0 ? ticket : 0));
        }
    }
    s->w_ticket[v] = (uint64_t)ticket;
    if (wc < g->blob) {
        size_t from = wc & ~(size_t)(OFF_ALIGN - 1);
        t.tier = SCHED_DISK;
        t.stage = (char *)s->w_stage[v] + (wc - g->w_stage_from);
        t.fd = s->w_fd;
        t.file_off = s->w_off[l];
        t.delta = wc - from; /* the bytes before w_cpu are the blob's own */
        t.bytes = g->blob - wc;
        s->w_pend.t = t;
        s->w_pend.at = 0;
        s->w_pend.end = t.delta + t.bytes;
        s->w_pend.v = v;
        s->w_pend.pieces = pieces < 1 ? 1 : pieces;
        if (pieces < 1)
            FORWARD_IF(w_issue(s, 1));
    }
    return 0;
}

/* The weight slot holding (or loading) layer l, issuing its load when no
 * slot has it (its disk read in `pieces`, load_weights). @return the slot
 * or -errno. */
static int weights_slot(sched *s, int l, int step, int pieces)
{
    if (s->w_slot_of[0] != l && s->w_slot_of[1] != l)
        FORWARD_IF(load_weights(s, l, step, pieces));
    return s->w_slot_of[0] == l ? 0 : 1;
}

/* The weights of layer l for compute: resident, or the slot holding it. */
static int weights_of(sched *s, int l, int step, const sched_layer **out)
{
    const sched_geom *g = &s->g;
    if (g->w_gpu_min == g->blob) { /* every layer resident */
        *out = &s->w_view[0][l];
        return 0;
    }
    int v = weights_slot(s, l, step, 0);
    FORWARD_IF(v);
    if (s->w_pend.pieces && s->w_pend.v == v)
        FORWARD_IF(w_issue(s, 1));
    FORWARD_IF(sched_lane_wait(&s->lane[0], s->w_ticket[v]));
    if (s->w_async[v])
        FORWARD_IF(s->be->ops->event_wait(s->be->ctx, BACKEND_Q_COMPUTE, EV_LOAD_W(v)));
    *out = &s->w_view[v][l];
    return 0;
}

/* Tickets of a stage slot: the load of the item it holds now, and the
 * last store issued from it by any item (an item without I/O must not
 * break the chain: the next load into the slot waits for that store). */
typedef struct item_io {
    uint64_t load, store;
    int has_store;
} item_io;

/* One transfer of stage slot v on lane `lane` (0: loads, 1: stores): a
 * CPU-tier one device-ordered where the scheduler does that (issue_async),
 * the others on the lane, whose ticket goes to *ticket. @return 0 or
 * -errno. */
static int submit_one(sched *s, int lane, const sched_task *t, int v, int64_t *ticket)
{
    if (s->dev_order && t->tier == SCHED_CPU)
        return issue_async(s, t, lane == 0 ? EV_LOAD_IO(v) : EV_STORE_IO(v), 1);
    int64_t k = sched_lane_submit(&s->lane[lane], t);
    if (k < 0)
        return (int)k;
    *ticket = k;
    return 0;
}

/* Submit the transfers of item (l, b) between stage slot v and the homes on
 * lane `lane` (0: loads, 1: stores), t carrying kind, marker and dependency:
 * the KV segments on the CPU (unless CPU attention computes them there) and
 * on disk, all active ones (want_kv 2) or those with idle sequences (1),
 * then the activations when they live off the GPU and cross this layer
 * boundary (want_act). @return the last ticket, 0 for none, or -errno. */
static int64_t submit_item(sched *s, int lane, sched_task *t, int l, const batch_desc *b,
                           int v, int want_kv, int want_act)
{
    const sched_geom *g = &s->g;
    int64_t ticket = 0;
    for (int tier = SCHED_CPU; want_kv && tier <= SCHED_DISK; tier++) {
        if (!b->active[tier] || (tier == SCHED_CPU && s->pol.cpu_attention) ||
            (want_kv == 1 && !b->idle[tier]))
            continue;
        t->name = "KV";
        t->tier = tier;
        t->stage = s->kv_stage[v][tier];
        t->stage_host = s->pol.cpu_attention;
        t->bytes = g->kv[tier].bytes;
        t->host = tier == SCHED_CPU ? sched_kv_home(s, tier, l, b->k) : NULL;
        t->fd = s->kv_fd;
        t->file_off = ((uint64_t)l * g->K + b->k) * g->kv_disk_stride;
        /* a decode step moves the slots in use of a record whose sequences
         * are all in the pass, and writes back what it changed on disk
         * (lanes.c) */
        int in_pass = b->n_seq - g->kv_seq0[tier], decode = s->pass_kind == SCHED_PASS_DECODE;
        t->kv_live = decode && in_pass >= g->kv_n[tier];
        t->kv_disk = tier == SCHED_DISK;
        t->kv_seqs = tier == SCHED_DISK && lane == 1 && decode
                         ? (in_pass < g->kv_n[tier] ? in_pass : g->kv_n[tier]) : 0;
        int rc = submit_one(s, lane, t, v, &ticket);
        if (rc < 0)
            return rc;
    }
    if (g->act_tier != SCHED_GPU && want_act) {
        t->name = "activations";
        t->kv_seqs = t->kv_live = t->kv_disk = 0;
        t->tier = g->act_tier;
        t->stage = s->x_stage[v];
        t->stage_host = 0;
        t->bytes = (size_t)b->n_rows * g->d * g->es;
        t->host = g->act_tier == SCHED_CPU ? sched_x_home(s, b->k) : NULL;
        t->fd = s->x_fd;
        t->file_off = (uint64_t)b->k * g->x_disk_stride;
        int rc = submit_one(s, lane, t, v, &ticket);
        if (rc < 0)
            return rc;
    }
    return ticket;
}

/* Issue the loads of item (l, b) into stage slot v. A prefill writes the
 * caches of its sequences whole, so it loads only the KV segments that
 * also hold sequences idle in this pass (the record goes home whole: a
 * sequence prefilled or copied before keeps its cache); a decode loads
 * every active one. Layer 0 embeds, so it loads no activations. */
static int load_item(sched *s, int l, const batch_desc *b, int v, int step, item_io *io,
                     const item_io *prev_in_slot)
{
    sched_task t = {.kind = TASK_LOAD, .mark = EV_COMPUTE_IO(v), .dep_lane = -1, .layer = l,
                    .batch = b->k, .step = step};
    if (prev_in_slot && prev_in_slot->has_store) {
        t.dep_lane = 1; /* the store that empties this slot comes first */
        t.dep_ticket = prev_in_slot->store;
    }
    int64_t ticket = submit_item(s, 0, &t, l, b, v, s->pass_kind == SCHED_PASS_DECODE ? 2 : 1,
                                 l > 0);
    FORWARD_IF((int)(ticket < 0 ? ticket : 0));
    io->load = (uint64_t)ticket;
    return 0;
}

/* Issue the stores of item (l, b) from stage slot v, after its compute
 * (the activations of the last layer go nowhere). */
static int store_item(sched *s, int l, const batch_desc *b, int v, int step, item_io *io)
{
    sched_task t = {.kind = TASK_STORE, .mark = EV_COMPUTE_IO(v), .dep_lane = -1, .layer = l,
                    .batch = b->k, .step = step};
    int64_t ticket = submit_item(s, 1, &t, l, b, v, 2, l + 1 < s->g.L);
    FORWARD_IF((int)(ticket < 0 ? ticket : 0));
    if (ticket > 0) {
        io->has_store = 1;
        io->store = (uint64_t)ticket;
    }
    return 0;
}

/* Compute item (l, b) whose inputs are in slot v. */
static int compute_item(sched *s, int l, const batch_desc *b, int v, int kind,
                        const int32_t *ids, const int32_t *pos, const int32_t *last_rows,
                        int step)
{
    const sched_geom *g = &s->g;
    const sched_model *m = &s->mdl;
    double t0 = sched_trace_now();
    void *x = g->act_tier == SCHED_GPU ? sched_x_home(s, b->k) : s->x_stage[v];
    const sched_layer *L;
    FORWARD_IF(weights_of(s, l, step, &L));
    kern_seq *seqs = s->bseq + (size_t)b->k * g->gbs;
    sched_kv kv[SCHED_TIERS];
    int n_kv = 0;
    for (int t = 0; t < SCHED_TIERS; t++) {
        int n = b->n_seq - g->kv_seq0[t];
        if (n > g->kv_n[t])
            n = g->kv_n[t];
        if (n <= 0 || !b->active[t])
            continue;
        char *base = t == SCHED_GPU || (t == SCHED_CPU && s->pol.cpu_attention)
                         ? sched_kv_home(s, t, l, b->k) : s->kv_stage[v][t];
        const kv_layout *kl = &g->kv[t];
        /* with CPU attention the CPU and disk segments are host memory: on a
         * backend whose buffers are not, CPU threads compute them */
        int host = t != SCHED_GPU && s->pol.cpu_attention && !s->be->ops->host_visible;
        kv[n_kv++] = (sched_kv){base + kl->kc, base + kl->vc, base + kl->pos,
                                kl->scores == SIZE_MAX ? NULL : base + kl->scores,
                                g->kv_seq0[t], n, host,
                                g->kv_fmt};
    }
    if (l == 0)
        FORWARD_IF(m->embed(m->ctx, x, ids + b->r0, pos + b->r0, b->n_rows));
    void *ev = s->evicted ? (char *)s->evicted +
                                ((size_t)l * g->block + (size_t)b->k * g->gbs) * g->KVH * 4
                          : NULL;
    sched_pass pass = {s->be, kind, b->n_rows, seqs, b->n_seq, g->H, g->KVH, g->hd, g->d,
                       s->sh.cap, &s->scr, kv, n_kv, ev, pos + b->r0};
    FORWARD_IF(m->layer(m->ctx, l, L, &pass, x));
    if (l == g->L - 1 && b->n_out > 0) {
        for (int i = 0; i < b->n_out; i++)
            s->blast[i] = last_rows[b->o0 + i] - b->r0;
        FORWARD_IF(m->head(m->ctx, (char *)s->logits + (size_t)b->o0 * g->V * g->es, s->last,
                           x, s->blast, b->n_out, &s->scr));
    }
    sched_event e = {"compute", "compute", TRACK_COMPUTE, t0, sched_trace_now(), "gpu", 0, l,
                     b->k, step};
    sched_trace_add(s->trace, &e);
    return 0;
}

int sched_forward(sched *s, const int32_t *ids, const int32_t *pos, int n_rows,
                  const kern_seq *seqs, int n_seq, const int32_t *last_rows, int n_out,
                  int step)
{
    const sched_geom *g = &s->g;
    RETURN_IF(n_seq > g->block || n_out > g->block, -EINVAL,
              "internal: pass of %d sequences for a block of %d", n_seq, g->block);
    RETURN_IF(!s->attached, -EINVAL, "internal: sched_forward before sched_attach");
    int kind = sched_pass_kind(seqs, n_seq, s->sh.cap);
    FORWARD_IF(kind);
    if (kind == SCHED_PASS_IDLE)
        return 0;
    s->pass_kind = kind;

    /* split the pass into its GPU batches: rows are packed in sequence order */
    batch_desc *bs = s->bdesc;
    int nb = 0, o_at = 0;
    for (int k = 0; k * g->gbs < n_seq; k++) {
        batch_desc b = {.k = k, .n_seq = n_seq - k * g->gbs};
        if (b.n_seq > g->gbs)
            b.n_seq = g->gbs;
        int r0 = n_rows, r1 = 0;
        for (int i = 0; i < g->gbs; i++) {
            const kern_seq *q = i < b.n_seq ? &seqs[k * g->gbs + i] : NULL;
            if (!q || q->n_new == 0) {
                for (int t = 0; t < SCHED_TIERS; t++)
                    if (i >= g->kv_seq0[t] && i < g->kv_seq0[t] + g->kv_n[t])
                        b.idle[t] = 1;
                continue;
            }
            if (q->row < r0)
                r0 = q->row;
            if (q->row + q->n_new > r1)
                r1 = q->row + q->n_new;
            for (int t = 0; t < SCHED_TIERS; t++)
                if (i >= g->kv_seq0[t] && i < g->kv_seq0[t] + g->kv_n[t])
                    b.active[t] = 1;
        }
        if (r1 == 0)
            continue; /* nothing of this batch in the pass */
        b.r0 = r0;
        b.n_rows = r1 - r0;
        RETURN_IF(b.n_rows > s->sh.max_rows, -EINVAL,
                  "internal: GPU batch %d brings %d rows, the plan has %d", k, b.n_rows,
                  s->sh.max_rows);
        for (int i = 0; i < b.n_seq; i++) {
            kern_seq q = seqs[k * g->gbs + i];
            q.row = q.n_new ? q.row - r0 : 0;
            s->bseq[k * g->gbs + i] = q;
        }
        b.o0 = o_at;
        while (o_at < n_out && last_rows[o_at] < r1)
            o_at++;
        b.n_out = o_at - b.o0;
        bs[nb++] = b;
    }

    /* the zig-zag walk over items (layer, batch) */
    int rc = 0, n_items = g->L * nb;
    item_io io[2] = {{0}};
    const backend_ops *o = s->be->ops;
    void *ctx = s->be->ctx;
    if (n_items > 0)
        rc = load_item(s, 0, &bs[0], 0, step, &io[0], NULL);
    for (int i = 0; rc == 0 && i < n_items; i++) {
        int l = i / nb, v = i % 2;
        const batch_desc *b = &bs[i % nb];
        /* the next layer's weights start loading with the first batch of a
         * layer, their disk read a piece after each batch's loads (w_issue);
         * during the last layer, layer 0 of the next pass */
        if (i % nb == 0 && g->w_gpu_min < g->blob) {
            rc = weights_slot(s, l, step, 0);
            if (rc >= 0)
                rc = weights_slot(s, l + 1 < g->L ? l + 1 : 0, step, nb);
            rc = rc < 0 ? rc : 0;
        }
        if (rc == 0)
            rc = sched_lane_wait(&s->lane[0], io[v].load);
        /* a compute that fills the slot without a load (prefill KV, the
         * embedding of layer 0) must not overwrite what a store still reads */
        if (rc == 0 && io[v].has_store)
            rc = sched_lane_wait(&s->lane[1], io[v].store);
        /* with one GPU batch the next item is the same batch one layer up:
         * its activations are what this item stores, so its load goes after
         * that store (below) */
        int late = nb == 1;
        if (rc == 0 && i + 1 < n_items && !late)
            rc = load_item(s, (i + 1) / nb, &bs[(i + 1) % nb], v ^ 1, step, &io[v ^ 1],
                           &io[v ^ 1]);
        if (rc == 0)
            rc = w_issue(s, i % nb == nb - 1);
        /* device-ordered: the compute waits for its loads and for the
         * stores that empty its slot, on the device */
        if (rc == 0 && s->dev_order)
            rc = o->event_wait(ctx, BACKEND_Q_COMPUTE, EV_LOAD_IO(v));
        if (rc == 0 && s->dev_order)
            rc = o->event_wait(ctx, BACKEND_Q_COMPUTE, EV_STORE_IO(v));
        if (rc == 0)
            rc = compute_item(s, l, b, v, kind, ids, pos, last_rows, step);
        if (rc == 0)
            rc = o->event_record(ctx, BACKEND_Q_COMPUTE, EV_COMPUTE_IO(v));
        if (rc == 0 && i % nb == nb - 1 && g->w_gpu_min < g->blob)
            rc = o->event_record(ctx, BACKEND_Q_COMPUTE,
                                 EV_COMPUTE_W(s->w_slot_of[0] == l ? 0 : 1));
        if (rc == 0)
            rc = store_item(s, l, b, v, step, &io[v]);
        /* the lane stores in order: waiting for this item's store covers
         * the older ones from slot v ^ 1 */
        if (rc == 0 && i + 1 < n_items && late)
            rc = load_item(s, (i + 1) / nb, &bs[(i + 1) % nb], v ^ 1, step, &io[v ^ 1],
                           &io[v]);
    }
    /* the pass ends when its stores are home (the next pass and the KV
     * readers see them); the prefetch of layer 0 may still run */
    if (rc == 0 && s->lane[1].issued)
        rc = sched_lane_wait(&s->lane[1], s->lane[1].issued);
    if (rc < 0) {
        /* let the lanes and the copy queues drain before the buffers may go */
        sched_lane_wait(&s->lane[0], s->lane[0].issued);
        sched_lane_wait(&s->lane[1], s->lane[1].issued);
        if (s->dev_order)
            o->sync(ctx);
    }
    return rc;
}

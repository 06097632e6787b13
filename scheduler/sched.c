/* sched.c: the zig-zag block scheduler.
 *
 * One pass (prefill, or one decode step) over a block of K GPU batches:
 *
 *   for layer j:                          weights of j: resident, or in slot w
 *     for GPU batch k (active ones):
 *        wait: weights of j, KV + activations of (j, k) in stage slot i % 2
 *        issue: weights of j + 1 (once per layer, into the other weight slot)
 *               KV + activations of the next item into slot (i + 1) % 2
 *        compute layer j on batch k (embedding before layer 0, head after L-1)
 *        mark the compute; issue: store KV + activations of (j, k) home
 *
 * Items i run in that order; loads run on lane 0 and stores on lane 1
 * (lanes.c) while the compute thread works, so I/O of the neighbours
 * overlaps the compute of the current item. The weights of layer 0 for
 * the next pass load during the last layer. Every buffer is allocated at
 * sched_create from the plan; a pass allocates nothing.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "sched_impl.h"

/* compute markers (backend mark / mark_wait) */
#define MARK_W(slot) (slot)         /* last compute reading weight slot */
#define MARK_IO(slot) (2 + (slot))  /* last compute on KV/activation stage slot */

/* What one GPU batch brings to this pass. */
typedef struct batch_desc {
    int k, n_seq;           /* batch index, sequences in it (of this block) */
    int r0, n_rows;         /* its rows of the packed pass */
    int o0, n_out;          /* its output rows */
    int active[SCHED_TIERS];/* any active sequence in that KV segment */
} batch_desc;

static int alloc_gpu(sched *s, size_t bytes, void **out)
{
    *out = NULL;
    if (bytes == 0)
        return 0;
    return s->be->ops->alloc_f32(s->be->ctx, (bytes + 3) / 4, out);
}

static int alloc_host(sched *s, size_t bytes, int pinned, void **out)
{
    *out = NULL;
    if (bytes == 0)
        return 0;
    if (pinned)
        return s->be->ops->host_alloc(s->be->ctx, bytes, out);
    *out = off_alloc_aligned(bytes);
    RETURN_IF(!*out, -ENOMEM, "cannot allocate %.2f GiB of host memory; lower --cpu-mem use "
              "(move weights or KV to disk)", (double)bytes / (1 << 30));
    return 0;
}

static int open_disk_file(sched *s, const char *name, uint64_t size, int *fd)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", s->pol.offload_dir, name);
    int direct = 0;
    *fd = off_file_open(path, 1, size, &direct);
    FORWARD_IF(*fd);
    return 0;
}

int sched_create(backend *be, const sched_model *m, const sched_policy *p,
                 const sched_shape *sh, sched_trace *trace, sched **out)
{
    sched_plan pl;
    sched_geom geom;
    FORWARD_IF(sched_plan_geom(m, be->ops->elem_size, p, sh, &geom, &pl));
    uint64_t disk_free = 0;
    if (pl.total[SCHED_DISK])
        FORWARD_IF(off_disk_free(p->offload_dir, &disk_free));
    uint64_t cpu_cap = p->cpu_mem ? p->cpu_mem : off_mem_available();
    FORWARD_IF(sched_plan_check(&pl, p, p->gpu_mem, cpu_cap, disk_free));
    const backend_ops *o = be->ops;
    RETURN_IF(p->compress_weight && !o->dequant_q4, -ENOTSUP, "--compress-weight is not "
              "available on the %s backend; drop it or use --device cpu", o->name);
    RETURN_IF(p->compress_cache && !(o->kv_prefill_q4 && o->attn_decode_q4 && o->kv_insert_q4),
              -ENOTSUP, "--compress-cache is not available on the %s backend; drop it or "
              "use --device cpu", o->name);

    sched *s = calloc(1, sizeof *s);
    RETURN_IF(!s, -ENOMEM, "out of memory");
    s->be = be;
    s->mdl = *m;
    s->mdl.ctx = NULL;
    s->mdl.embed = NULL;
    s->mdl.layer = NULL;
    s->mdl.head = NULL;
    s->pol = *p;
    s->sh = *sh;
    s->plan = pl;
    s->trace = trace;
    s->w_fd = s->kv_fd = s->x_fd = -1;
    s->w_slot_of[0] = s->w_slot_of[1] = -1;
    pthread_mutex_init(&s->link_mu, NULL);
    static const char *link_names[SCHED_LINKS] = {"disk->cpu", "cpu->gpu", "gpu->cpu",
                                                  "cpu->disk"};
    for (int i = 0; i < SCHED_LINKS; i++)
        s->links[i].name = link_names[i];
    s->g = geom;
    sched_geom *g = &s->g;
    int L = g->L, K = g->K, rc = 0;

    /* weights */
    s->w_gpu = calloc((size_t)L, sizeof(void *));
    s->w_off = calloc((size_t)L, sizeof(uint64_t));
    s->w_view[0] = calloc((size_t)L, sizeof(sched_layer));
    s->w_view[1] = calloc((size_t)L, sizeof(sched_layer));
    s->kv_gpu = calloc((size_t)L * K, sizeof(void *));
    s->bseq = calloc((size_t)g->block, sizeof(kern_seq));
    s->bdesc = calloc((size_t)K, sizeof(batch_desc));
    s->blast = calloc((size_t)g->block, sizeof(int32_t));
    if (!s->w_gpu || !s->w_off || !s->w_view[0] || !s->w_view[1] || !s->kv_gpu ||
        !s->bseq || !s->bdesc || !s->blast) {
        err_set(__FILE__, __LINE__, "out of memory");
        rc = -ENOMEM;
    }
    for (int l = 0; rc == 0 && l < L; l++)
        rc = alloc_gpu(s, g->w_gpu, &s->w_gpu[l]);
    s->w_cpu_pinned = p->pin_weight;
    if (rc == 0)
        rc = alloc_host(s, (size_t)L * (g->w_cpu - g->w_gpu), p->pin_weight, &s->w_cpu_arena);
    for (int i = 0; rc == 0 && i < 2 && g->w_gpu < g->blob; i++)
        rc = alloc_gpu(s, off_align_up(g->blob) - g->w_stage_from, &s->w_stage[i]);
    if (rc == 0 && g->w_cpu < g->blob && !sh->weights_on_disk_already) {
        rc = open_disk_file(s, "weights.bin", (uint64_t)L * off_align_up(g->blob), &s->w_fd);
        s->w_fd_owned = 1;
        for (int l = 0; rc == 0 && l < L; l++)
            s->w_off[l] = (uint64_t)l * off_align_up(g->blob);
    }
    /* the layer views: the fields of a resident share point at the GPU home,
     * the others into the weight slot, which holds the blob's bytes from
     * w_stage_from (w_gpu rounded down to OFF_ALIGN) so that the disk share
     * lands there aligned, straight from the disk where the slot is host
     * memory */
    size_t off[SCHED_MAX_TENSORS];
    sched_blob_layout(m, g->es, g->wq, off, NULL);
    for (int l = 0; rc == 0 && l < L; l++)
        for (int v = 0; v < 2; v++) {
            s->w_view[v][l].wq = g->wq;
            for (int t = 0; t < m->n_tensors; t++)
                s->w_view[v][l].t[t] =
                    off[t] < g->w_gpu ? (char *)s->w_gpu[l] + off[t]
                                      : (char *)s->w_stage[v] + (off[t] - g->w_stage_from);
        }
    /* compressed weights: each layer is quantized on the host as it loads */
    if (rc == 0 && g->wq) {
        s->q_blob = off_alloc_aligned(off_align_up(g->blob));
        if (!s->q_blob) {
            err_set(__FILE__, __LINE__, "out of host memory for a compressed layer");
            rc = -ENOMEM;
        }
    }

    /* KV */
    for (int i = 0; rc == 0 && i < L * K; i++)
        rc = alloc_gpu(s, g->kv[SCHED_GPU].bytes, &s->kv_gpu[i]);
    if (rc == 0)
        rc = alloc_host(s, (size_t)L * K * g->kv[SCHED_CPU].bytes, 1, &s->kv_cpu_arena);
    if (rc == 0 && g->kv_n[SCHED_DISK] > 0)
        rc = open_disk_file(s, "kv.bin", (uint64_t)L * K * g->kv_disk_stride, &s->kv_fd);
    for (int v = 0; rc == 0 && v < 2; v++) {
        if (!p->cpu_attention)
            rc = alloc_gpu(s, g->kv[SCHED_CPU].bytes, &s->kv_stage[v][SCHED_CPU]);
        if (rc == 0 && p->cpu_attention)
            rc = alloc_host(s, off_align_up(g->kv[SCHED_DISK].bytes), 1,
                            &s->kv_stage[v][SCHED_DISK]);
        else if (rc == 0)
            rc = alloc_gpu(s, off_align_up(g->kv[SCHED_DISK].bytes), &s->kv_stage[v][SCHED_DISK]);
    }

    /* activations */
    if (rc == 0 && g->act_tier == SCHED_GPU)
        rc = alloc_gpu(s, (size_t)K * g->x_bytes, &s->x_home_arena);
    if (rc == 0 && g->act_tier == SCHED_CPU)
        rc = alloc_host(s, (size_t)K * g->x_bytes, 1, &s->x_home_arena);
    if (rc == 0 && g->act_tier == SCHED_DISK)
        rc = open_disk_file(s, "act.bin", (uint64_t)K * g->x_disk_stride, &s->x_fd);
    for (int v = 0; rc == 0 && v < 2 && g->act_tier != SCHED_GPU; v++)
        rc = alloc_gpu(s, off_align_up(g->x_bytes), &s->x_stage[v]);

    /* work space */
    size_t R = (size_t)sh->max_rows, d = (size_t)g->d, H = (size_t)g->H, es = g->es;
    size_t KVH = (size_t)g->KVH, B = (size_t)g->block;
    if (rc == 0) rc = alloc_gpu(s, R * d * es, &s->scr.h);
    if (rc == 0) rc = alloc_gpu(s, R * g->qkv * es, &s->scr.qkv);
    if (rc == 0) rc = alloc_gpu(s, R * d * es, &s->scr.att);
    if (rc == 0) rc = alloc_gpu(s, R * (size_t)m->ffn * es, &s->scr.ffn);
    if (rc == 0) rc = alloc_gpu(s, g->w_exp * es, &s->scr.w);
    s->scr.w_all = g->K > 1;
    if (rc == 0) rc = alloc_gpu(s, B * d * es, &s->last);
    if (rc == 0) rc = alloc_gpu(s, B * (size_t)g->V * es, &s->logits);
    if (rc == 0 && sh->scores) rc = alloc_gpu(s, R * H * 4, &s->scr.colsum);
    if (rc == 0 && sh->scores) rc = alloc_gpu(s, B * H * 4, &s->scr.self_p);
    if (rc == 0 && sh->evicted) rc = alloc_gpu(s, (size_t)L * B * KVH * 4, &s->evicted);
    if (rc == 0 && p->cpu_attention && !be->ops->host_visible) {
        /* host scratch of CPU attention (sched_kv.host segments) */
        s->scr.h_qkv = malloc(sizeof(float) * R * g->qkv);
        s->scr.h_att = malloc(sizeof(float) * R * d);
        s->scr.h_colsum = malloc(sizeof(float) * R * H);
        s->scr.h_self = malloc(sizeof(float) * (size_t)g->gbs * H);
        s->scr.h_ev = malloc(sizeof(int32_t) * (size_t)g->gbs * KVH);
        s->scr.h_seqs = malloc(sizeof(kern_seq) * (size_t)g->gbs);
        if (!s->scr.h_qkv || !s->scr.h_att || !s->scr.h_colsum || !s->scr.h_self ||
            !s->scr.h_ev || !s->scr.h_seqs) {
            err_set(__FILE__, __LINE__, "out of host memory for CPU attention scratch");
            rc = -ENOMEM;
        }
    }

    /* the backend zeroes new buffers on its compute stream: let that finish
     * before the copy streams write into them */
    if (rc == 0)
        rc = be->ops->sync(be->ctx);

    /* the disk engine and the I/O lanes */
    if (rc == 0 && (s->w_fd >= 0 || s->kv_fd >= 0 || s->x_fd >= 0 ||
                    sh->weights_on_disk_already))
        rc = off_disk_create(64, &s->disk);
    if (rc == 0)
        rc = sched_lanes_start(s);
    if (rc == 0 && s->disk) {
        void *bufs[2] = {s->lane[0].stage, s->lane[1].stage};
        size_t lens[2] = {g->host_stage, g->host_stage};
        rc = off_disk_register(s->disk, bufs, lens, g->host_stage ? 2 : 0);
    }
    if (rc < 0) {
        sched_destroy(s);
        return rc;
    }
    *out = s;
    return 0;
}

void sched_destroy(sched *s)
{
    if (!s)
        return;
    sched_lanes_stop(s);
    off_disk_destroy(s->disk);
    const backend_ops *o = s->be->ops;
    void *ctx = s->be->ctx;
    int L = s->g.L, K = s->g.K;
    for (int l = 0; s->w_gpu && l < L; l++)
        o->free(ctx, s->w_gpu[l]);
    for (int i = 0; s->kv_gpu && i < L * K; i++)
        o->free(ctx, s->kv_gpu[i]);
    if (s->w_cpu_pinned)
        o->host_free(ctx, s->w_cpu_arena);
    else
        free(s->w_cpu_arena);
    o->host_free(ctx, s->kv_cpu_arena);
    for (int v = 0; v < 2; v++) {
        o->free(ctx, s->w_stage[v]);
        o->free(ctx, s->kv_stage[v][SCHED_CPU]);
        if (s->pol.cpu_attention)
            o->host_free(ctx, s->kv_stage[v][SCHED_DISK]);
        else
            o->free(ctx, s->kv_stage[v][SCHED_DISK]);
        o->free(ctx, s->x_stage[v]);
    }
    if (s->g.act_tier == SCHED_GPU)
        o->free(ctx, s->x_home_arena);
    else
        o->host_free(ctx, s->x_home_arena);
    free(s->q_blob);
    void *work[] = {s->scr.h, s->scr.qkv, s->scr.att, s->scr.ffn, s->scr.w, s->scr.colsum,
                    s->scr.self_p, s->last, s->logits, s->evicted};
    for (size_t i = 0; i < sizeof work / sizeof *work; i++)
        o->free(ctx, work[i]);
    free(s->scr.h_qkv);
    free(s->scr.h_att);
    free(s->scr.h_colsum);
    free(s->scr.h_self);
    free(s->scr.h_ev);
    free(s->scr.h_seqs);
    if (s->w_fd_owned)
        off_file_close(s->w_fd);
    off_file_close(s->kv_fd);
    off_file_close(s->x_fd);
    pthread_mutex_destroy(&s->link_mu);
    free(s->w_gpu);
    free(s->w_off);
    free(s->w_view[0]);
    free(s->w_view[1]);
    free(s->kv_gpu);
    free(s->bseq);
    free(s->bdesc);
    free(s->blast);
    free(s);
}

int sched_layer_sink(void *ptr, int l, const void *blob, int wq, int fd,
                     uint64_t file_offset)
{
    sched *s = ptr;
    const sched_geom *g = &s->g;
    const backend_ops *o = s->be->ops;
    const char *b = blob;
    RETURN_IF(wq && !g->wq, -EINVAL, "the weights are 4-bit (a store written by convert "
              "--compress-weight); run with --compress-weight");
    if (g->wq && !wq) { /* compress_weight: every tier holds the 4-bit blob */
        sched_blob_quantize(&s->mdl, g->es, s->q_blob, blob);
        b = s->q_blob;
        fd = -1; /* the store holds the plain blob */
    }
    if (g->w_gpu)
        FORWARD_IF(o->copy_h2d(s->be->ctx, s->w_gpu[l], b, g->w_gpu));
    if (g->w_cpu > g->w_gpu)
        memcpy((char *)s->w_cpu_arena + (size_t)l * (g->w_cpu - g->w_gpu), b + g->w_gpu,
               g->w_cpu - g->w_gpu);
    if (g->w_cpu == g->blob)
        return 0;
    if (fd >= 0 && s->sh.weights_on_disk_already) { /* streamed from the weight store */
        s->w_fd = fd;
        s->w_off[l] = file_offset;
        return 0;
    }
    RETURN_IF(s->w_fd < 0, -EINVAL, "internal: no file for the disk share of the weights");
    /* the blob is OFF_ALIGN-aligned and padded: write the aligned span that
     * holds the disk share */
    size_t from = g->w_cpu & ~(size_t)(OFF_ALIGN - 1);
    off_io io = {s->w_fd, 1, (void *)(b + from), off_align_up(g->blob) - from,
                 s->w_off[l] + from};
    char what[64];
    snprintf(what, sizeof what, "weights of layer %d", l);
    return off_disk_rw(s->disk, &io, 1, what);
}

int sched_attach(sched *s, const sched_model *m)
{
    const sched_model *c = &s->mdl;
    RETURN_IF(m->n_layer != c->n_layer || m->n_head != c->n_head ||
              m->n_kv_head != c->n_kv_head || m->head_dim != c->head_dim ||
              m->hidden != c->hidden || m->vocab != c->vocab || m->ffn != c->ffn ||
              m->n_tensors != c->n_tensors || !m->embed || !m->layer || !m->head, -EINVAL,
              "internal: the model attached is not the shape the scheduler was planned for");
    s->mdl = *m;
    s->attached = 1;
    return 0;
}
const sched_policy *sched_get_policy(const sched *s) { return &s->pol; }
const void *sched_logits(const sched *s) { return s->logits; }
int sched_max_rows(const sched *s) { return s->sh.max_rows; }
int sched_block(const sched *s) { return s->g.block; }
int sched_cap(const sched *s) { return s->sh.cap; }
/* "io_uring", "pread/pwrite threads" or "none" (no disk tier). */
static const char *sched_disk_kind(const sched *s)
{
    return s->disk ? off_disk_kind(s->disk) : "none";
}

/* ------------------------------------------------------------ one pass */

/* Issue the load of the weights of layer l into the next slot. */
static int load_weights(sched *s, int l, int step)
{
    const sched_geom *g = &s->g;
    int v = s->w_next;
    s->w_next ^= 1;
    s->w_slot_of[v] = l;
    sched_task t = {.kind = TASK_LOAD, .mark = MARK_W(v), .dep_lane = -1, .name = "weights",
                    .layer = l, .batch = -1, .step = step};
    int64_t ticket = 0;
    if (g->w_cpu > g->w_gpu) {
        t.tier = SCHED_CPU;
        t.stage = (char *)s->w_stage[v] + (g->w_gpu - g->w_stage_from);
        t.host = (char *)s->w_cpu_arena + (size_t)l * (g->w_cpu - g->w_gpu);
        t.bytes = g->w_cpu - g->w_gpu;
        ticket = sched_lane_submit(&s->lane[0], &t);
        FORWARD_IF((int)(ticket < 0 ? ticket : 0));
    }
    if (g->w_cpu < g->blob) {
        size_t from = g->w_cpu & ~(size_t)(OFF_ALIGN - 1);
        t.tier = SCHED_DISK;
        t.stage = (char *)s->w_stage[v] + (g->w_cpu - g->w_stage_from);
        t.fd = s->w_fd;
        t.file_off = s->w_off[l] + from;
        t.delta = g->w_cpu - from; /* the bytes before w_cpu are the blob's own */
        t.bytes = g->blob - g->w_cpu;
        ticket = sched_lane_submit(&s->lane[0], &t);
        FORWARD_IF((int)(ticket < 0 ? ticket : 0));
    }
    s->w_ticket[v] = (uint64_t)ticket;
    return 0;
}

/* The weight slot holding (or loading) layer l, issuing its load when no
 * slot has it. @return the slot or -errno. */
static int weights_slot(sched *s, int l, int step)
{
    if (s->w_slot_of[0] != l && s->w_slot_of[1] != l)
        FORWARD_IF(load_weights(s, l, step));
    return s->w_slot_of[0] == l ? 0 : 1;
}

/* The weights of layer l for compute: resident, or the slot holding it. */
static int weights_of(sched *s, int l, int step, const sched_layer **out)
{
    const sched_geom *g = &s->g;
    if (g->w_gpu == g->blob) {
        *out = &s->w_view[0][l];
        return 0;
    }
    int v = weights_slot(s, l, step);
    FORWARD_IF(v);
    FORWARD_IF(sched_lane_wait(&s->lane[0], s->w_ticket[v]));
    *out = &s->w_view[v][l];
    return 0;
}

/* The KV segment of tier t of (layer l, batch k) in stage slot v / home. */
static void *kv_home(sched *s, int t, int l, int k)
{
    const sched_geom *g = &s->g;
    size_t i = (size_t)l * g->K + k;
    if (t == SCHED_GPU)
        return s->kv_gpu[i];
    if (t == SCHED_CPU)
        return (char *)s->kv_cpu_arena + i * g->kv[SCHED_CPU].bytes;
    return NULL;
}

static void *x_home(sched *s, int k)
{
    return (char *)s->x_home_arena + (size_t)k * s->g.x_bytes;
}

/* Tickets of a stage slot: the load of the item it holds now, and the
 * last store issued from it by any item (an item without I/O must not
 * break the chain: the next load into the slot waits for that store). */
typedef struct item_io {
    uint64_t load, store;
    int has_store;
} item_io;

/* Submit the transfers of item (l, b) between stage slot v and the homes on
 * lane `lane` (0: loads, 1: stores), t carrying kind, marker and dependency:
 * the KV segments on the CPU (unless CPU attention computes them there) and
 * on disk, then the activations when they live off the GPU and cross this
 * layer boundary (want_act). @return the last ticket, 0 for none, or -errno. */
static int64_t submit_item(sched *s, int lane, sched_task *t, int l, const batch_desc *b,
                           int v, int want_kv, int want_act)
{
    const sched_geom *g = &s->g;
    int64_t ticket = 0;
    for (int tier = SCHED_CPU; want_kv && tier <= SCHED_DISK; tier++) {
        if (!b->active[tier] || (tier == SCHED_CPU && s->pol.cpu_attention))
            continue;
        t->name = "KV";
        t->tier = tier;
        t->stage = s->kv_stage[v][tier];
        t->stage_host = s->pol.cpu_attention;
        t->bytes = g->kv[tier].bytes;
        t->host = tier == SCHED_CPU ? kv_home(s, tier, l, b->k) : NULL;
        t->fd = s->kv_fd;
        t->file_off = ((uint64_t)l * g->K + b->k) * g->kv_disk_stride;
        if ((ticket = sched_lane_submit(&s->lane[lane], t)) < 0)
            return ticket;
    }
    if (g->act_tier != SCHED_GPU && want_act) {
        t->name = "activations";
        t->tier = g->act_tier;
        t->stage = s->x_stage[v];
        t->stage_host = 0;
        t->bytes = (size_t)b->n_rows * g->d * g->es;
        t->host = g->act_tier == SCHED_CPU ? x_home(s, b->k) : NULL;
        t->fd = s->x_fd;
        t->file_off = (uint64_t)b->k * g->x_disk_stride;
        if ((ticket = sched_lane_submit(&s->lane[lane], t)) < 0)
            return ticket;
    }
    return ticket;
}

/* Issue the loads of item (l, b) into stage slot v. A prefill writes the
 * whole cache, so only a decode loads KV; layer 0 embeds, so it loads no
 * activations. */
static int load_item(sched *s, int l, const batch_desc *b, int v, int step, item_io *io,
                     const item_io *prev_in_slot)
{
    sched_task t = {.kind = TASK_LOAD, .mark = MARK_IO(v), .dep_lane = -1, .layer = l,
                    .batch = b->k, .step = step};
    if (prev_in_slot && prev_in_slot->has_store) {
        t.dep_lane = 1; /* the store that empties this slot comes first */
        t.dep_ticket = prev_in_slot->store;
    }
    int64_t ticket = submit_item(s, 0, &t, l, b, v, s->pass_kind == SCHED_PASS_DECODE, l > 0);
    FORWARD_IF((int)(ticket < 0 ? ticket : 0));
    io->load = (uint64_t)ticket;
    return 0;
}

/* Issue the stores of item (l, b) from stage slot v, after its compute
 * (the activations of the last layer go nowhere). */
static int store_item(sched *s, int l, const batch_desc *b, int v, int step, item_io *io)
{
    sched_task t = {.kind = TASK_STORE, .mark = MARK_IO(v), .dep_lane = -1, .layer = l,
                    .batch = b->k, .step = step};
    int64_t ticket = submit_item(s, 1, &t, l, b, v, 1, l + 1 < s->g.L);
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
    void *x = g->act_tier == SCHED_GPU ? x_home(s, b->k) : s->x_stage[v];
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
                         ? kv_home(s, t, l, b->k) : s->kv_stage[v][t];
        const kv_layout *kl = &g->kv[t];
        /* with CPU attention the CPU and disk segments are host memory: on a
         * backend whose buffers are not, CPU threads compute them */
        int host = t != SCHED_GPU && s->pol.cpu_attention && !s->be->ops->host_visible;
        kv[n_kv++] = (sched_kv){base + kl->kc, base + kl->vc, base + kl->pos,
                                kl->scores == SIZE_MAX ? NULL : base + kl->scores,
                                g->kv_seq0[t], n, host, g->kvq};
    }
    if (l == 0)
        FORWARD_IF(m->embed(m->ctx, x, ids + b->r0, pos + b->r0, b->n_rows));
    void *ev = s->evicted ? (char *)s->evicted +
                                ((size_t)l * g->block + (size_t)b->k * g->gbs) * g->KVH * 4
                          : NULL;
    FORWARD_IF(m->layer(m->ctx, l, L, kind, x, b->n_rows, seqs, b->n_seq, kv, n_kv, s->sh.cap,
                        &s->scr, ev));
    if (l == g->L - 1 && b->n_out > 0) {
        for (int i = 0; i < b->n_out; i++)
            s->blast[i] = last_rows[b->o0 + i] - b->r0;
        FORWARD_IF(m->head(m->ctx, (char *)s->logits + (size_t)b->o0 * g->V * g->es, s->last,
                           x, s->blast, b->n_out));
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
        for (int i = 0; i < b.n_seq; i++) {
            const kern_seq *q = &seqs[k * g->gbs + i];
            if (q->n_new == 0)
                continue;
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
    if (n_items > 0)
        rc = load_item(s, 0, &bs[0], 0, step, &io[0], NULL);
    for (int i = 0; rc == 0 && i < n_items; i++) {
        int l = i / nb, v = i % 2;
        const batch_desc *b = &bs[i % nb];
        /* the next layer's weights start loading with the first batch of a
         * layer; during the last layer, layer 0 of the next pass */
        if (i % nb == 0 && g->w_gpu < g->blob) {
            rc = weights_slot(s, l, step);
            if (rc >= 0)
                rc = weights_slot(s, l + 1 < g->L ? l + 1 : 0, step);
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
            rc = compute_item(s, l, b, v, kind, ids, pos, last_rows, step);
        if (rc == 0)
            rc = s->be->ops->mark(s->be->ctx, MARK_IO(v));
        if (rc == 0 && i % nb == nb - 1 && g->w_gpu < g->blob)
            rc = s->be->ops->mark(s->be->ctx, MARK_W(s->w_slot_of[0] == l ? 0 : 1));
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
        /* let the lanes drain before the buffers may go */
        sched_lane_wait(&s->lane[0], s->lane[0].issued);
        sched_lane_wait(&s->lane[1], s->lane[1].issued);
    }
    return rc;
}

/* ------------------------------------------------------------ readers */

int sched_read_kv(sched *s, int l, int seq, int what, void *out)
{
    const sched_geom *g = &s->g;
    int k = seq / g->gbs, i = seq % g->gbs, t = 0;
    while (t < SCHED_TIERS - 1 && i >= g->kv_seq0[t] + g->kv_n[t])
        t++;
    const kv_layout *kl = &g->kv[t];
    RETURN_IF(what == 1 && kl->scores == SIZE_MAX, -EINVAL, "internal: no scores kept");
    size_t per = (size_t)g->KVH * s->sh.cap * 4;
    size_t at = (what == 0 ? kl->pos : kl->scores) + (size_t)(i - g->kv_seq0[t]) * per;
    if (t == SCHED_GPU)
        return s->be->ops->download_f32(s->be->ctx, out, (char *)kv_home(s, t, l, k) + at,
                                        per / 4);
    if (t == SCHED_CPU) {
        memcpy(out, (char *)kv_home(s, t, l, k) + at, per);
        return 0;
    }
    uint64_t foff = ((uint64_t)l * g->K + k) * g->kv_disk_stride;
    void *buf = off_alloc_aligned(g->kv_disk_stride);
    RETURN_IF(!buf, -ENOMEM, "out of memory");
    off_io io = {s->kv_fd, 0, buf, g->kv_disk_stride, foff};
    int rc = off_disk_rw(s->disk, &io, 1, "KV read back");
    if (rc == 0)
        memcpy(out, (char *)buf + at, per);
    free(buf);
    return rc;
}

int sched_read_evicted(sched *s, int32_t *out)
{
    RETURN_IF(!s->evicted, -EINVAL, "internal: evictions are not recorded");
    return s->be->ops->download_f32(s->be->ctx, (float *)out, s->evicted,
                                    (size_t)s->g.L * s->g.block * s->g.KVH);
}

/* ------------------------------------------------------------ summary */

void sched_links(const sched *s, sched_link out[SCHED_LINKS])
{
    pthread_mutex_lock((pthread_mutex_t *)&s->link_mu);
    memcpy(out, s->links, sizeof s->links);
    pthread_mutex_unlock((pthread_mutex_t *)&s->link_mu);
}

void sched_summary_print(const sched *s, FILE *f)
{
    char pol[256];
    sched_policy_describe(&s->pol, pol, sizeof pol);
    fprintf(f, "[flexh2o] policy: %s; disk I/O: %s\n", pol, sched_disk_kind(s));
    fprintf(f, "[flexh2o] peak memory: gpu %.3f GiB, cpu %.3f GiB, disk %.3f GiB\n",
            s->plan.total[SCHED_GPU] / 1073741824.0, s->plan.total[SCHED_CPU] / 1073741824.0,
            s->plan.total[SCHED_DISK] / 1073741824.0);
    sched_link ln[SCHED_LINKS];
    sched_links(s, ln);
    for (int i = 0; i < SCHED_LINKS; i++)
        if (ln[i].bytes)
            fprintf(f, "[flexh2o] link %-9s %10.3f GiB moved, %7.2f GB/s while busy (%.2f s)\n",
                    ln[i].name, ln[i].bytes / 1073741824.0,
                    ln[i].busy_s > 0 ? ln[i].bytes / ln[i].busy_s / 1e9 : 0.0, ln[i].busy_s);
}

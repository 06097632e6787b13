/* sched.c: the scheduler's set-up and tear-down (every buffer of the plan
 * allocated once, by part: weights, KV, activations, work), the layer sink
 * that places weights in their tiers while the model loads, the KV
 * readers and the end-of-run summary. The pass itself is zigzag.c.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "sched_impl.h"



static int alloc_gpu(sched *s, size_t bytes, void **out)
{
    *out = NULL;
    if (bytes == 0)
        return 0;
    return s->be->ops->alloc_words(s->be->ctx, (bytes + 3) / 4, out);
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

/* The weights' homes, staging slots and per-slot layer views, the disk
 * share's file, and the pass's bookkeeping arrays. @return 0 or -errno. */
static int alloc_weights(sched *s)
{
    const sched_geom *g = &s->g;
    const sched_policy *p = &s->pol;
    const backend *be = s->be;
    int L = g->L, K = g->K, rc = 0;
    s->w_gpu = calloc((size_t)L, sizeof(void *));
    s->w_off = calloc((size_t)L, sizeof(uint64_t));
    s->w_cpu_at = calloc((size_t)L, sizeof(size_t));
    s->w_view[0] = calloc((size_t)L, sizeof(sched_layer));
    s->w_view[1] = calloc((size_t)L, sizeof(sched_layer));
    s->kv_gpu = calloc((size_t)L * K, sizeof(void *));
    s->bseq = calloc((size_t)g->block, sizeof(kern_seq));
    s->bdesc = calloc((size_t)K, sizeof(batch_desc));
    s->blast = calloc((size_t)g->block, sizeof(int32_t));
    if (!s->w_gpu || !s->w_off || !s->w_cpu_at || !s->w_view[0] || !s->w_view[1] || !s->kv_gpu ||
        !s->bseq || !s->bdesc || !s->blast) {
        err_set(__FILE__, __LINE__, "out of memory");
        rc = -ENOMEM;
    }
    for (int l = 0; rc == 0 && l < L; l++)
        rc = alloc_gpu(s, sched_w_gpu(g, l), &s->w_gpu[l]);
    size_t cpu_at = 0;
    for (int l = 0; rc == 0 && l < L; l++) {
        s->w_cpu_at[l] = cpu_at;
        cpu_at += sched_w_cpu(g, l) - sched_w_gpu(g, l);
    }
    s->w_cpu_pinned = p->pin_weight;
    if (rc == 0)
        rc = alloc_host(s, g->w_cpu_all, p->pin_weight, &s->w_cpu_arena);
    for (int i = 0; rc == 0 && i < 2 && g->w_gpu_min < g->blob; i++)
        rc = alloc_gpu(s, off_align_up(g->blob) - g->w_stage_from, &s->w_stage[i]);
    if (rc == 0 && g->w_cpu_min < g->blob && !s->sh.weights_on_disk_already) {
        /* weights.bin holds each layer's disk span only, one after another */
        rc = open_disk_file(s, "weights.bin", g->w_disk_all, &s->w_fd);
        s->w_fd_owned = 1;
        uint64_t at = 0;
        for (int l = 0; rc == 0 && l < L; l++) {
            s->w_off[l] = at;
            at += sched_w_span(g, l);
        }
    }
    /* the layer views: the fields of a resident share point at the GPU home,
     * the others into the weight slot, which holds the blob's bytes from
     * w_stage_from (w_gpu rounded down to OFF_ALIGN) so that the disk share
     * lands there aligned, straight from the disk where the slot is host
     * memory. On a backend whose buffers are host memory (the CPU backend)
     * the CPU share's fields point into the CPU home instead: the compute
     * reads it where it lies, and no pass copies it (a copy of every
     * CPU-tier weight each step, 12% of a bf16-matmul run's CPU time on
     * the 2-core VM), so the slot starts at w_cpu rounded down and holds
     * the disk share only (sched_geom_init). The tiers cut a layer at tensor
     * boundaries, so a tensor lies in one home; with weight_layers the cuts
     * differ between layers (sched_w_gpu), and the slot holds the bytes from
     * the lowest of them. */
    s->w_cpu_direct = s->sh.host_visible && g->w_cpu_all > 0;
    size_t off[SCHED_MAX_TENSORS];
    sched_blob_layout(&s->mdl, g->wes, g->wq, off, NULL);
    /* bf16 matrices that stay in their home for the run (the GPU tier's,
     * and the CPU tier's where the compute reads it in place) go into the
     * layout the backend's bf16 matmul reads fastest, once, as they load
     * (sched_layer_sink); a slot's are read plain from the disk each load */
    s->w_packable = 0;
    int may_pack = be->ops->pack_h16 && g->wh == KERN_H16_BF16 && !g->wq;
    for (int t = 0; rc == 0 && may_pack && t < s->mdl.n_tensors; t++) {
        const sched_tensor *x = &s->mdl.tensors[t];
        if (!x->cols)
            continue;
        int r = be->ops->pack_h16(be->ctx, NULL, KERN_H16_BF16, (int)x->rows, x->cols);
        if (r < 0)
            rc = r;
        else if (r)
            s->w_packable |= 1u << t;
    }
    for (int l = 0; rc == 0 && l < L; l++) {
        size_t wg = sched_w_gpu(g, l), wc = sched_w_cpu(g, l);
        unsigned packed = 0;
        for (int t = 0; t < s->mdl.n_tensors; t++)
            if (off[t] < wg || (s->w_cpu_direct && off[t] < wc))
                packed |= s->w_packable & 1u << t;
        for (int v = 0; v < 2; v++) {
            s->w_view[v][l].wq = g->wq;
            s->w_view[v][l].wh = g->wh;
            s->w_view[v][l].packed = packed;
            for (int t = 0; t < s->mdl.n_tensors; t++)
                s->w_view[v][l].t[t] =
                    off[t] < wg ? (char *)s->w_gpu[l] + off[t]
                    : s->w_cpu_direct && off[t] < wc
                        ? (char *)s->w_cpu_arena + s->w_cpu_at[l] + (off[t] - wg)
                    : s->w_stage[v] ? (char *)s->w_stage[v] + (off[t] - g->w_stage_from)
                                    : NULL; /* no slot: every field is resident (NULL +
                                             * offset is undefined; clang's UBSan says so) */
        }
    }
    /* compressed weights: each layer is quantized on the host as it loads */
    if (rc == 0 && g->wq) {
        s->q_blob = off_alloc_aligned(off_align_up(g->blob));
        if (!s->q_blob) {
            err_set(__FILE__, __LINE__, "out of host memory for a compressed layer");
            rc = -ENOMEM;
        }
    }
    return rc;
}

/* The KV homes of every (layer, GPU batch) and the staging of the CPU
 * and disk segments. @return 0 or -errno. */
static int alloc_kv(sched *s)
{
    const sched_geom *g = &s->g;
    const sched_policy *p = &s->pol;
    int L = g->L, K = g->K, rc = 0;
    for (int i = 0; rc == 0 && i < L * K; i++)
        rc = alloc_gpu(s, g->kv[SCHED_GPU].bytes, &s->kv_gpu[i]);
    if (rc == 0)
        rc = alloc_host(s, (size_t)L * K * g->kv[SCHED_CPU].bytes, 1, &s->kv_cpu_arena);
    if (rc == 0 && g->kv_n[SCHED_DISK] > 0) {
        /* the records, then their row logs (kv_dirty.c) */
        rc = open_disk_file(s, "kv.bin",
                            (uint64_t)L * K * (g->kv_disk_stride + sched_kv_log_bytes(g)),
                            &s->kv_fd);
        s->kv_log_n = calloc((size_t)L * K, 1);
        if (rc == 0 && !s->kv_log_n) {
            err_set(__FILE__, __LINE__, "out of memory");
            rc = -ENOMEM;
        }
    }
    for (int v = 0; rc == 0 && v < 2; v++) {
        if (!p->cpu_attention)
            rc = alloc_gpu(s, g->kv[SCHED_CPU].bytes, &s->kv_stage[v][SCHED_CPU]);
        if (rc == 0 && p->cpu_attention)
            rc = alloc_host(s, off_align_up(g->kv[SCHED_DISK].bytes), 1,
                            &s->kv_stage[v][SCHED_DISK]);
        else if (rc == 0)
            rc = alloc_gpu(s, off_align_up(g->kv[SCHED_DISK].bytes), &s->kv_stage[v][SCHED_DISK]);
    }
    return rc;
}

/* The activations' home and staging. @return 0 or -errno. */
static int alloc_act(sched *s)
{
    const sched_geom *g = &s->g;
    int K = g->K, rc = 0;
    if (rc == 0 && g->act_tier == SCHED_GPU)
        rc = alloc_gpu(s, (size_t)K * g->x_bytes, &s->x_home_arena);
    if (rc == 0 && g->act_tier == SCHED_CPU)
        rc = alloc_host(s, (size_t)K * g->x_bytes, 1, &s->x_home_arena);
    if (rc == 0 && g->act_tier == SCHED_DISK)
        rc = open_disk_file(s, "act.bin", (uint64_t)K * g->x_disk_stride, &s->x_fd);
    for (int v = 0; rc == 0 && v < 2 && g->act_tier != SCHED_GPU; v++)
        rc = alloc_gpu(s, off_align_up(g->x_bytes), &s->x_stage[v]);
    return rc;
}

/* The edits of a sample call of block rows of at most row_edits each,
 * capped where an int ends (a reservation that large fails anyway). */
static int row_edits_of_block(int row_edits, int block)
{
    long long e = (long long)row_edits * block;
    return e < INT_MAX ? (int)e : INT_MAX;
}

/* The largest op calls of a pass and of the caller's sampling, for the
 * backend's reservation: a GPU batch's rows and sequences (an attention
 * op gets one KV segment's, at most a batch), the model's heads, the
 * plan's cap and prompt, and sample calls over the block's logits (with
 * the caller's logit edits and top logprobs). */
static backend_limits sched_limits(const sched *s)
{
    const sched_geom *g = &s->g;
    const sched_shape *sh = &s->sh;
    int sampled = sh->sample != SCHED_SAMPLE_NONE;
    return (backend_limits){
        .rows = sh->max_rows,
        .seqs = g->gbs,
        .heads = g->H,
        .kv_heads = g->KVH,
        .head_dim = g->hd,
        .cap = sh->cap,
        .prompt = sh->max_prompt > 0 && sh->max_prompt < sh->max_rows ? sh->max_prompt
                                                                      : sh->max_rows,
        .sample_rows = sampled ? g->block : 0,
        .vocab = sampled ? g->V : 0,
        .sample_draw = sh->sample == SCHED_SAMPLE_DRAW,
        .sample_edits = sampled ? row_edits_of_block(sh->sample_row_edits, g->block) : 0,
        .sample_top = sampled && sh->sample_top,
    };
}

/* Bytes of a carved sub-array, so that the next one starts 64-aligned. */
static size_t carve(size_t bytes)
{
    return (bytes + 63) & ~(size_t)63;
}

/* The host scratch of CPU attention over a backend whose buffers are not
 * host memory (attend.c's host segments): the words copied to and from
 * the backend (colsum, evictions) in pinned memory, the q/k/v rows, the
 * outputs, the rebased sequences and the kernels' per-thread scratch in
 * one plain block. The kernels run on the compute thread, which is the
 * one creating the scheduler: their thread count is this thread's.
 * @return 0 or -errno. */
static int alloc_host_scratch(sched *s)
{
    const sched_geom *g = &s->g;
    sched_scratch *sc = &s->scr;
    size_t R = (size_t)s->sh.max_rows, H = (size_t)g->H, gbs = (size_t)g->gbs;
    backend_limits lim = sched_limits(s); /* the same prompt and cap as the backend's */
    int nt = kern_cpu_threads();
    size_t work = kern_kv_prefill_scratch_bytes(lim.prompt, nt);
    size_t dec = kern_attn_decode_scratch_bytes(lim.cap, nt);
    sc->h_work_bytes = work > dec ? work : dec;
    size_t colsum = carve(sizeof(float) * R * H), ev = carve(sizeof(int32_t) * gbs * g->KVH);
    size_t qkv = carve(sizeof(float) * R * g->qkv), att = carve(sizeof(float) * R * g->att);
    size_t self = carve(sizeof(float) * gbs * H), seqs = carve(sizeof(kern_seq) * gbs);
    FORWARD_IF(alloc_host(s, colsum + ev, 1, &s->h_words));
    FORWARD_IF(alloc_host(s, qkv + att + self + seqs + sc->h_work_bytes, 0, &s->h_rest));
    char *words = s->h_words, *rest = s->h_rest;
    sc->h_colsum = (float *)words;
    sc->h_ev = (int32_t *)(words + colsum);
    sc->h_qkv = (float *)rest;
    sc->h_att = (float *)(rest + qkv);
    sc->h_self = (float *)(rest + qkv + att);
    sc->h_seqs = (kern_seq *)(rest + qkv + att + self);
    sc->h_work = rest + qkv + att + self + seqs;
    return 0;
}

/* The per-pass work space on the backend (and host scratch of CPU
 * attention). @return 0 or -errno. */
static int alloc_work(sched *s)
{
    const sched_geom *g = &s->g;
    int L = g->L, rc = 0;
    size_t R = (size_t)s->sh.max_rows, d = (size_t)g->d, H = (size_t)g->H, es = g->es;
    size_t KVH = (size_t)g->KVH, B = (size_t)g->block;
    if (rc == 0) rc = alloc_gpu(s, R * d * es, &s->scr.h);
    if (rc == 0) rc = alloc_gpu(s, R * g->qkv * es, &s->scr.qkv);
    if (rc == 0) rc = alloc_gpu(s, R * g->att * es, &s->scr.att);
    if (rc == 0) rc = alloc_gpu(s, R * (size_t)s->mdl.ffn * es, &s->scr.ffn);
    if (rc == 0) rc = alloc_gpu(s, g->wh ? g->w_scr : g->w_exp * es, &s->scr.w);
    s->scr.w_all = g->K > 1;
    if (rc == 0) rc = alloc_gpu(s, B * d * es, &s->last);
    if (rc == 0) rc = alloc_gpu(s, B * (size_t)g->V * es, &s->logits);
    if (rc == 0 && s->sh.scores) rc = alloc_gpu(s, R * H * 4, &s->scr.colsum);
    if (rc == 0 && s->sh.scores) rc = alloc_gpu(s, B * H * 4, &s->scr.self_p);
    if (rc == 0 && s->sh.evicted) rc = alloc_gpu(s, (size_t)L * B * KVH * 4, &s->evicted);
    if (rc == 0 && s->pol.cpu_attention && !s->be->ops->host_visible)
        rc = alloc_host_scratch(s);
    return rc;
}

int sched_io_order_device(const backend *be)
{
    const char *e = getenv("FLEXH2O_IO_ORDER");
    if (e && strcmp(e, "host") == 0)
        return 0;
    if (e && strcmp(e, "device") == 0)
        return 1;
    /* a backend whose buffers are host memory computes in the calling
     * thread: its lanes overlap the copies, the compute thread cannot */
    return !be->ops->host_visible;
}

int sched_create(backend *be, const sched_model *m, const sched_policy *p,
                 const sched_shape *shape, sched_trace *trace, sched **out)
{
    sched_plan pl;
    sched_geom geom;
    sched_shape shv = *shape, *sh = &shv;
    shv.host_visible = be->ops->host_visible; /* the backend's, whatever the caller said */
    FORWARD_IF(sched_plan_geom(m, be->ops->elem_size, p, sh, &geom, &pl));
    uint64_t disk_free = 0;
    if (pl.total[SCHED_DISK])
        FORWARD_IF(off_disk_free(p->offload_dir, &disk_free));
    uint64_t cpu_cap = p->cpu_mem ? p->cpu_mem : off_mem_available();
    FORWARD_IF(sched_plan_check(&pl, p, p->gpu_mem, cpu_cap, disk_free));
    const backend_ops *o = be->ops;
    RETURN_IF(p->compress_weight && !o->dequant_q4, -ENOTSUP, "--compress-weight is not "
              "available on the %s backend; drop it or use --device cpu", o->name);
    RETURN_IF(geom.wh && !o->widen, -ENOTSUP, "16-bit weights are not available on the %s "
              "backend", o->name);
    /* the plan sizes the scratch of 16-bit layers by what the model does
     * on a backend with linear_h16 (sched_plan.c fused_scratch) */
    RETURN_IF(geom.wh && geom.w_scr < geom.w_wide && !o->linear_h16, -ENOTSUP,
              "internal: 16-bit layers widened per GEMM on the %s backend, which has no "
              "linear_h16", o->name);
    RETURN_IF(geom.wdirect && !(o->h16_direct && o->h16_direct(be->ctx, (kern_h16)geom.wh)),
              -ENOTSUP, "internal: weights read by bf16 matmuls (sched_shape.weight_direct) "
              "on the %s backend, whose linear_h16 widens them", o->name);
    RETURN_IF(p->compress_cache && !backend_kv_fmt_has(o, KERN_KV_FMT_Q4), -ENOTSUP,
              "--compress-cache is not available on the %s backend; drop it or use --device cpu",
              o->name);
    RETURN_IF(geom.kv_fmt == KERN_KV_FMT_BF16 &&
              (!backend_kv_fmt_has(o, KERN_KV_FMT_BF16) || !o->host_visible), -ENOTSUP,
              "internal: bf16 weights read directly, with a bf16 KV cache, on the %s backend, "
              "which has no such cache", o->name);

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
    s->dev_order = sched_io_order_device(be);
    pthread_mutex_init(&s->link_mu, NULL);
    static const char *link_names[SCHED_LINKS] = {"disk->cpu", "cpu->gpu", "gpu->cpu",
                                                  "cpu->disk"};
    for (int i = 0; i < SCHED_LINKS; i++)
        s->links[i].name = link_names[i];
    s->g = geom;
    int rc = alloc_weights(s);
    if (rc == 0)
        rc = alloc_kv(s);
    if (rc == 0)
        rc = alloc_act(s);
    if (rc == 0)
        rc = alloc_work(s);
    if (rc == 0) {
        backend_limits lim = sched_limits(s);
        rc = be->ops->reserve(be->ctx, &lim);
        s->reserved = rc == 0;
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
        /* the buffers disk requests use: the lanes' host stages, or where
         * the backend computes on host memory (no lane stages: lanes.c reads
         * and writes the staging buffers themselves) those */
        const sched_geom *g = &s->g;
        void *bufs[8] = {0};
        size_t lens[8] = {0};
        int n = 0;
        for (int v = 0; v < 2; v++) {
            if (s->lane[v].log) { /* a disk KV record's row log */
                bufs[n] = s->lane[v].log;
                lens[n++] = sched_kv_log_bytes(g);
            }
            if (g->host_stage) {
                bufs[n] = s->lane[v].stage;
                lens[n++] = g->host_stage;
                continue;
            }
            if (s->w_stage[v] && s->w_fd >= 0) {
                bufs[n] = s->w_stage[v];
                lens[n++] = off_align_up(g->blob) - g->w_stage_from;
            }
            if (s->kv_fd >= 0) {
                bufs[n] = s->kv_stage[v][SCHED_DISK];
                lens[n++] = g->kv_disk_stride;
            }
            if (s->x_fd >= 0) {
                bufs[n] = s->x_stage[v];
                lens[n++] = g->x_disk_stride;
            }
        }
        rc = off_disk_register(s->disk, bufs, lens, n);
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
    o->sync(ctx); /* nothing queued may still use a buffer freed below */
    if (s->reserved)
        o->reserve(ctx, NULL);
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
    o->host_free(ctx, s->h_words);
    free(s->h_rest);
    if (s->w_fd_owned)
        off_file_close(s->w_fd);
    off_file_close(s->kv_fd);
    off_file_close(s->x_fd);
    pthread_mutex_destroy(&s->link_mu);
    free(s->w_gpu);
    free(s->w_cpu_at);
    free(s->w_off);
    free(s->w_view[0]);
    free(s->w_view[1]);
    free(s->kv_gpu);
    free(s->kv_log_n);
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
    size_t wg = sched_w_gpu(g, l), wc = sched_w_cpu(g, l);
    if (wg)
        FORWARD_IF(o->copy_h2d(s->be->ctx, s->w_gpu[l], b, wg));
    if (wc > wg)
        memcpy((char *)s->w_cpu_arena + s->w_cpu_at[l], b + wg, wc - wg);
    unsigned packed = s->w_view[0][l].packed;
    for (int t = 0; packed && t < s->mdl.n_tensors; t++)
        if (packed >> t & 1) {
            const sched_tensor *x = &s->mdl.tensors[t];
            int r = o->pack_h16(s->be->ctx, s->w_view[0][l].t[t], KERN_H16_BF16, (int)x->rows,
                                x->cols);
            FORWARD_IF(r);
            RETURN_IF(r != 1, -EIO, "internal: the backend packed tensor %d of layer %d's "
                      "shape at planning but not at loading", t, l);
        }
    if (wc == g->blob)
        return 0;
    /* the blob is OFF_ALIGN-aligned and padded: the disk share is read as
     * the aligned span [from, align_up(blob)) */
    size_t from = wc & ~(size_t)(OFF_ALIGN - 1);
    if (fd >= 0 && s->sh.weights_on_disk_already) { /* streamed from the weight store */
        s->w_fd = fd;
        s->w_off[l] = file_offset + from;
        return 0;
    }
    RETURN_IF(s->w_fd < 0, -EINVAL, "internal: no file for the disk share of the weights");
    off_io io = {s->w_fd, 1, (void *)(b + from), sched_w_span(g, l), s->w_off[l]};
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
int sched_weight_fmt(const sched *s) { return s->g.wh; }
int sched_table_fmt(const sched *s) { return s->sh.weight_direct ? KERN_H16_BF16 : 0; }
const void *sched_logits(const sched *s) { return s->logits; }
int sched_max_rows(const sched *s) { return s->sh.max_rows; }
int sched_block(const sched *s) { return s->g.block; }
int sched_cap(const sched *s) { return s->sh.cap; }
/* "io_uring", "pread/pwrite threads" or "none" (no disk tier). */
static const char *sched_disk_kind(const sched *s)
{
    return s->disk ? off_disk_kind(s->disk) : "none";
}

/* ------------------------------------------------------------ homes */

/* The KV segment of tier t of (layer l, batch k) in stage slot v / home. */
void *sched_kv_home(sched *s, int t, int l, int k)
{
    const sched_geom *g = &s->g;
    size_t i = (size_t)l * g->K + k;
    if (t == SCHED_GPU)
        return s->kv_gpu[i];
    if (t == SCHED_CPU)
        return (char *)s->kv_cpu_arena + i * g->kv[SCHED_CPU].bytes;
    return NULL;
}

void *sched_x_home(sched *s, int k)
{
    return (char *)s->x_home_arena + (size_t)k * s->g.x_bytes;
}

void sched_kv_where(const sched_geom *g, int seq, int *k, int *t, int *j)
{
    int i = seq % g->gbs, tier = 0;
    while (tier < SCHED_TIERS - 1 && i >= g->kv_seq0[tier] + g->kv_n[tier])
        tier++;
    *k = seq / g->gbs;
    *t = tier;
    *j = i - g->kv_seq0[tier];
}

/* ------------------------------------------------------------ readers */

int sched_read_kv(sched *s, int l, int seq, int what, void *out)
{
    const sched_geom *g = &s->g;
    if (s->dev_order) /* device-ordered stores are home */
        FORWARD_IF(s->be->ops->event_sync(s->be->ctx, EV_STORED));
    int k, t, j;
    sched_kv_where(g, seq, &k, &t, &j);
    const kv_layout *kl = &g->kv[t];
    RETURN_IF(what == 1 && kl->scores == SIZE_MAX, -EINVAL, "internal: no scores kept");
    size_t per = (size_t)g->KVH * s->sh.cap * 4;
    size_t at = (what == 0 ? kl->pos : kl->scores) + (size_t)j * per;
    if (t == SCHED_GPU)
        return s->be->ops->download_words(s->be->ctx, out,
                                          (char *)sched_kv_home(s, t, l, k) + at, per / 4);
    if (t == SCHED_CPU) {
        memcpy(out, (char *)sched_kv_home(s, t, l, k) + at, per);
        return 0;
    }
    void *buf = off_alloc_aligned(g->kv_disk_stride);
    void *log = off_alloc_aligned(sched_kv_log_bytes(g) + OFF_ALIGN);
    int64_t rc = buf && log ? sched_kv_read_record(s, l, k, buf, log, "KV read back") : -ENOMEM;
    if (!buf || !log)
        err_set(__FILE__, __LINE__, "out of memory");
    if (rc >= 0)
        memcpy(out, (char *)buf + at, per);
    free(buf);
    free(log);
    return rc < 0 ? (int)rc : 0;
}

int sched_read_evicted(sched *s, int32_t *out)
{
    RETURN_IF(!s->evicted, -EINVAL, "internal: evictions are not recorded");
    return s->be->ops->download_words(s->be->ctx, out, s->evicted,
                                      (size_t)s->g.L * s->g.block * s->g.KVH);
}

/* ------------------------------------------------------------ summary */

void sched_links(const sched *s, sched_link out[SCHED_LINKS])
{
    pthread_mutex_lock((pthread_mutex_t *)&s->link_mu);
    memcpy(out, s->links, sizeof s->links);
    pthread_mutex_unlock((pthread_mutex_t *)&s->link_mu);
}

void sched_links_reset(sched *s)
{
    pthread_mutex_lock(&s->link_mu);
    for (int i = 0; i < SCHED_LINKS; i++)
        s->links[i].bytes = 0, s->links[i].busy_s = 0;
    pthread_mutex_unlock(&s->link_mu);
}

void sched_summary_print(const sched *s, FILE *f)
{
    char pol[256];
    sched_policy_describe(&s->pol, pol, sizeof pol);
    fprintf(f, "[flexh2o] policy: %s; disk I/O: %s; CPU-tier copies: %s\n", pol,
            sched_disk_kind(s), s->dev_order ? "device-ordered" : "I/O threads");
    int packed = 0, mats = 0, alike = 1;
    for (int t = 0; t < s->mdl.n_tensors; t++)
        mats += s->mdl.tensors[t].cols > 0;
    for (int l = 0; l < s->g.L; l++) {
        packed += __builtin_popcount(s->w_view[0][l].packed);
        alike &= s->w_view[0][l].packed == s->w_view[0][0].packed;
    }
    if (packed && alike)
        fprintf(f, "[flexh2o] resident weights: %d of %d matrices per layer packed for the "
                "bf16 matmuls\n", packed / s->g.L, mats);
    else if (packed) /* weight_layers: the layers differ */
        fprintf(f, "[flexh2o] resident weights: %d of the layers' %d matrices packed for the "
                "bf16 matmuls\n", packed, mats * s->g.L);
    fprintf(f, "[flexh2o] peak memory: gpu %.3f GiB, cpu %.3f GiB, disk %.3f GiB\n",
            s->plan.total[SCHED_GPU] / 1073741824.0, s->plan.total[SCHED_CPU] / 1073741824.0,
            s->plan.total[SCHED_DISK] / 1073741824.0);
    sched_link ln[SCHED_LINKS];
    sched_links(s, ln);
    for (int i = 0; i < SCHED_LINKS; i++)
        if (ln[i].bytes && ln[i].busy_s > 0)
            fprintf(f, "[flexh2o] link %-9s %10.3f GiB moved, %7.2f GB/s while busy (%.2f s)\n",
                    ln[i].name, ln[i].bytes / 1073741824.0, ln[i].bytes / ln[i].busy_s / 1e9,
                    ln[i].busy_s);
        else if (ln[i].bytes) /* device-ordered copies only: the host did not time them */
            fprintf(f, "[flexh2o] link %-9s %10.3f GiB moved, not timed (device-ordered)\n",
                    ln[i].name, ln[i].bytes / 1073741824.0);
}

/* attend.c: attention of one layer of one GPU batch over its KV segments,
 * each computed where it lives.
 *
 * A segment on the GPU tier (or staged there) runs the backend's slot ops.
 * A segment whose cache is host memory on a backend whose buffers are not
 * (CPU attention on CUDA) runs the same ops as CPU threads over the cache
 * in place (kern_*_h16, or kern_*_q4 for 4-bit caches): the q/k/v rows of
 * its sequences come down, the attention output goes back up. This is a
 * scheduling decision (where the KV lives), so it is made here and not in
 * the model.
 */
#include <math.h>

#include "err.h"
#include "scheduler.h"

/* Width of the pass's fused q/k/v rows (sched_qkv_dim of its model). */
static int qkv_ld(const sched_pass *p)
{
    return (p->n_head + 2 * p->n_kv_head) * p->head_dim;
}

/* CPU attention for segment g whose cache is host memory. Rows of a
 * segment's active sequences are contiguous: rows are packed in sequence
 * order. */
static int host_segment(const sched_pass *p, const sched_kv *g, const void *qkv, void *att,
                        float scale)
{
    const backend_ops *o = p->be->ops;
    void *ctx = p->be->ctx;
    const sched_scratch *sc = p->scr;
    int H = p->n_head, KVH = p->n_kv_head, hd = p->head_dim, d = H * hd, r0 = -1, r1 = 0;
    int ld = qkv_ld(p), cap = p->cap;
    size_t es = o->elem_size;
    for (int i = 0; i < g->n; i++) {
        kern_seq q = p->seqs[g->seq0 + i];
        if (q.n_new && (r0 < 0 || q.row < r0))
            r0 = q.row;
        if (q.n_new && q.row + q.n_new > r1)
            r1 = q.row + q.n_new;
    }
    if (r0 < 0)
        return 0; /* nothing of this segment in the pass */
    RETURN_IF(g->fmt != KERN_KV_FMT_PLAIN && g->fmt != KERN_KV_FMT_Q4, -EINVAL,
              "internal: CPU attention over a host-resident %s cache", kern_kv_fmt_name(g->fmt));
    for (int i = 0; i < g->n; i++) {
        sc->h_seqs[i] = p->seqs[g->seq0 + i];
        sc->h_seqs[i].row = sc->h_seqs[i].n_new ? sc->h_seqs[i].row - r0 : 0;
    }
    size_t rows = (size_t)(r1 - r0);
    FORWARD_IF(o->download(ctx, sc->h_qkv, (const char *)qkv + (size_t)r0 * ld * es,
                           rows * ld));
    const float *q = sc->h_qkv, *k = q + (size_t)H * hd, *v = k + (size_t)p->n_kv_head * hd;
    if (p->kind == SCHED_PASS_PREFILL) {
        const float *cs = NULL;
        if (sc->colsum) {
            FORWARD_IF(o->download_words(ctx, sc->h_colsum,
                                         (const char *)sc->colsum + (size_t)r0 * KVH * 4,
                                         rows * KVH));
            cs = sc->h_colsum;
        }
        if (g->fmt == KERN_KV_FMT_Q4)
            return kern_kv_prefill_q4(g->kc, g->vc, g->scores, g->pos, k, v, ld, cs, sc->h_seqs,
                                      g->n, H, KVH, hd, cap, sc->h_work, sc->h_work_bytes);
        return kern_kv_prefill_h16(g->kc, g->vc, g->scores, g->pos, k, v, ld, cs, sc->h_seqs,
                                   g->n, H, KVH, hd, cap, sc->h_work, sc->h_work_bytes);
    }
    int32_t *ev = p->evicted ? sc->h_ev : NULL;
    if (g->fmt == KERN_KV_FMT_Q4)
        FORWARD_IF(kern_attn_decode_q4(sc->h_att, d, q, k, v, ld, g->kc, g->vc, sc->h_seqs, g->n,
                                       H, KVH, hd, cap, scale, g->scores, sc->h_self, sc->h_work,
                                       sc->h_work_bytes));
    else
        FORWARD_IF(kern_attn_decode_h16(sc->h_att, d, q, k, v, ld, g->kc, g->vc, sc->h_seqs,
                                        g->n, H, KVH, hd, cap, scale, g->scores, sc->h_self,
                                        sc->h_work, sc->h_work_bytes));
    if (g->fmt == KERN_KV_FMT_Q4)
        kern_kv_insert_q4(g->kc, g->vc, g->scores, g->pos, k, v, ld, sc->h_self, sc->h_seqs,
                          g->n, H, KVH, hd, cap, ev);
    else
        kern_kv_insert_h16(g->kc, g->vc, g->scores, g->pos, k, v, ld, sc->h_self, sc->h_seqs,
                           g->n, H, KVH, hd, cap, ev);
    if (p->evicted)
        FORWARD_IF(o->upload_words(ctx, (char *)p->evicted + (size_t)g->seq0 * KVH * 4, sc->h_ev,
                                   (size_t)g->n * KVH));
    return o->upload(ctx, (char *)att + (size_t)r0 * d * es, sc->h_att, rows * d);
}

int sched_attend(const sched_pass *p, const void *qkv, void *att)
{
    const backend_ops *o = p->be->ops;
    void *ctx = p->be->ctx;
    const sched_scratch *sc = p->scr;
    int H = p->n_head, KVH = p->n_kv_head, hd = p->head_dim, d = H * hd, cap = p->cap;
    int ld = qkv_ld(p);
    float scale = 1.0f / sqrtf((float)hd);
    size_t es = o->elem_size;
    const char *q = qkv, *k = q + (size_t)H * hd * es, *v = k + (size_t)p->n_kv_head * hd * es;
    if (p->kind == SCHED_PASS_PREFILL)
        FORWARD_IF(o->attn_prefill(ctx, att, d, q, k, v, ld, p->seqs, p->n_seq, H, KVH, hd,
                                   scale, sc->colsum));
    /* the cache updates (and decode attention) per KV segment: the ops
     * index sequences from the segment's first one, rows stay absolute */
    for (int i = 0; i < p->n_kv; i++) {
        const sched_kv *g = &p->kv[i];
        const kern_seq *sq = p->seqs + g->seq0;
        /* colsum, self_p and evicted are per KV head (kern.h) */
        char *self_p = sc->self_p ? (char *)sc->self_p + (size_t)g->seq0 * KVH * 4 : NULL;
        char *ev = p->evicted ? (char *)p->evicted + (size_t)g->seq0 * KVH * 4 : NULL;
        if (g->n == 0)
            continue;
        if (g->host) {
            FORWARD_IF(host_segment(p, g, qkv, att, scale));
            continue;
        }
        /* the segment's cache format (4-bit with compress_cache) goes with its caches */
        if (p->kind == SCHED_PASS_PREFILL) {
            FORWARD_IF(o->kv_prefill(ctx, g->fmt, g->kc, g->vc, g->scores, g->pos, k, v, ld,
                                     sc->colsum, sq, g->n, H, KVH, hd, cap));
        } else if (p->kind == SCHED_PASS_DECODE) {
            FORWARD_IF(o->attn_decode(ctx, att, d, q, k, v, ld, g->fmt, g->kc, g->vc, sq, g->n,
                                      H, KVH, hd, cap, scale, g->scores, self_p));
            FORWARD_IF(o->kv_insert(ctx, g->fmt, g->kc, g->vc, g->scores, g->pos, k, v, ld,
                                    self_p, sq, g->n, H, KVH, hd, cap, ev));
        }
    }
    return 0;
}

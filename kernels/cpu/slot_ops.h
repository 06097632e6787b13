/* slot_ops.h: decode attention over a slot cache and the cache writers, as
 * a template over the cache's row format (internal; included by slots.c):
 *
 *   SLOT_T           cache storage unit (float, uint16_t fp16 bits, or
 *                    uint8_t for 4-bit rows)
 *   SLOT_FN(n)       the function name for base name n
 *   SLOT_ROW(c, i, n) pointer to row i (n values) of cache c
 *   and, per row of n values, three static helpers named through SLOT_FN:
 *   dot_cache(q, row, n) = q . row,  axpy_row(o, p, row, n): o += p row,
 *   put_row(row, src, n): row = src
 *   SLOT_HAS_SLOT_LOOPS  defined when the instance also brings the slot
 *                    loops of a head, dot_slots and sum_slots (below: the
 *                    row-at-a-time ones), with the same bits
 *
 * Queries, new k/v rows, outputs, scores and column sums are fp32 whatever
 * the cache holds: the fp16 instance is what CPU attention runs over the
 * CUDA backend's host-resident KV, reading it in place (no fp32 copy of the
 * cache). One (sequence, KV head) pair per task, its group's query heads in
 * order, so the H2O scores need no atomics, and within a pair the sums run
 * in a fixed order (kern.h: grouped-query attention). Per-thread
 * scratch comes from the caller (kern.h: kern_*_scratch_bytes), checked
 * before the parallel region: -EINVAL when it is too small.
 */

/* Without an instance's own (the vector ones of slots.c), the slot loops of
 * a head: p[t] = q . K[t] * scale, and o = sum over t in order of p[t] V[t]
 * (o zeroed first), a row at a time. first: the head is its group's first
 * (the others find K and V in cache: a vector instance prefetches for the
 * first only). */
#ifndef SLOT_HAS_SLOT_LOOPS
static void SLOT_FN(dot_slots)(float *p, const float *q, const SLOT_T *kc, size_t base, int n,
                               int head_dim, float scale, int first)
{
    (void)first;
    for (int t = 0; t < n; t++)
        p[t] = SLOT_FN(dot_cache)(q, SLOT_ROW(kc, base + t, head_dim), head_dim) * scale;
}

static void SLOT_FN(sum_slots)(float *o, const float *p, const SLOT_T *vc, size_t base, int n,
                               int head_dim, int first)
{
    (void)first;
    memset(o, 0, sizeof(float) * head_dim);
    for (int t = 0; t < n; t++)
        SLOT_FN(axpy_row)(o, p[t], SLOT_ROW(vc, base + t, head_dim), head_dim);
}
#endif

#define SLOT_STR_(x) #x
#define SLOT_STR(x) SLOT_STR_(x) /* the instance's name, for messages */

int SLOT_FN(kern_attn_decode)(float *out, int ldo, const float *q, const float *k,
                              const float *v, int ld, const SLOT_T *kc, const SLOT_T *vc,
                              const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                              int head_dim, int cap, float scale, float *scores, float *self_p,
                              void *scratch, size_t scratch_bytes)
{
    FORWARD_IF(heads_check(SLOT_STR(SLOT_FN(kern_attn_decode)), n_head, n_kv_head));
    int n_pairs = n_seq * n_kv_head, group = n_head / n_kv_head, nt = omp_get_max_threads();
    size_t per = (size_t)cap + 1; /* a probability per slot and the new token */
    FORWARD_IF(scratch_check(SLOT_STR(SLOT_FN(kern_attn_decode)), scratch_bytes,
                             kern_attn_decode_scratch_bytes(cap, nt), nt));
    float *probs = scratch;
    #pragma omp parallel num_threads(nt)
    {
        float *p = probs + per * (size_t)omp_get_thread_num();
        #pragma omp for schedule(static)
        for (int pair = 0; pair < n_pairs; pair++) {
            int s = pair / n_kv_head, g = pair % n_kv_head;
            if (seqs[s].n_new == 0)
                continue;
            int n = seqs[s].n_slots, row = seqs[s].row;
            size_t gc = (size_t)g * head_dim, base = ((size_t)s * n_kv_head + g) * cap;
            const float *kr = k + (size_t)row * ld + gc, *vr = v + (size_t)row * ld + gc;
            float self = 0.0f;
            for (int h = g * group; h < (g + 1) * group; h++) {
                size_t hc = (size_t)h * head_dim;
                const float *qr = q + (size_t)row * ld + hc;
                int first = h == g * group; /* the group's first reads K, V from memory */
                SLOT_FN(dot_slots)(p, qr, kc, base, n, head_dim, scale, first);
                p[n] = dot(qr, kr, head_dim) * scale;
                softmax(p, n + 1);
                float *o = out + (size_t)row * ldo + hc;
                SLOT_FN(sum_slots)(o, p, vc, base, n, head_dim, first);
                if (scores)
                    for (int t = 0; t < n; t++)
                        scores[base + t] += p[t];
                for (int e = 0; e < head_dim; e++)
                    o[e] += p[n] * vr[e];
                self = h == g * group ? p[n] : self + p[n]; /* the group's sum, in order */
            }
            if (self_p)
                self_p[pair] = self;
        }
    }
    return 0;
}

int SLOT_FN(kern_kv_prefill)(SLOT_T *kc, SLOT_T *vc, float *scores, int32_t *pos,
                             const float *k, const float *v, int ld, const float *colsum,
                             const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                             int head_dim, int cap, void *scratch, size_t scratch_bytes)
{
    FORWARD_IF(heads_check(SLOT_STR(SLOT_FN(kern_kv_prefill)), n_head, n_kv_head));
    int n_pairs = n_seq * n_kv_head, max_new = 0, nt = omp_get_max_threads();
    for (int s = 0; s < n_seq; s++)
        max_new = seqs[s].n_new > max_new ? seqs[s].n_new : max_new;
    size_t per = (size_t)max_new + 1; /* a keep flag per prompt token */
    FORWARD_IF(scratch_check(SLOT_STR(SLOT_FN(kern_kv_prefill)), scratch_bytes,
                             kern_kv_prefill_scratch_bytes(max_new, nt), nt));
    unsigned char *flags = scratch;
    #pragma omp parallel num_threads(nt)
    {
        unsigned char *keep = flags + per * (size_t)omp_get_thread_num();
        #pragma omp for schedule(static)
        for (int pair = 0; pair < n_pairs; pair++) {
            int s = pair / n_kv_head, h = pair % n_kv_head, n = seqs[s].n_new;
            if (n == 0)
                continue;
            const float *cs = colsum ? colsum + (size_t)seqs[s].row * n_kv_head + h : NULL;
            if (n <= seqs[s].budget)
                memset(keep, 1, (size_t)n);
            else
                prefill_keep(keep, cs, n_kv_head, n, &seqs[s]);
            size_t base = ((size_t)s * n_kv_head + h) * cap;
            int slot = 0;
            for (int j = 0; j < n && slot < seqs[s].budget; j++) {
                if (!keep[j])
                    continue;
                size_t src = (size_t)(seqs[s].row + j) * ld + (size_t)h * head_dim;
                SLOT_FN(put_row)(SLOT_ROW(kc, base + slot, head_dim), k + src, head_dim);
                SLOT_FN(put_row)(SLOT_ROW(vc, base + slot, head_dim), v + src, head_dim);
                pos[base + slot] = j;
                if (scores)
                    scores[base + slot] = cs ? cs[(size_t)j * n_kv_head] : 0.0f;
                slot++;
            }
        }
    }
    return 0;
}

void SLOT_FN(kern_kv_insert)(SLOT_T *kc, SLOT_T *vc, float *scores, int32_t *pos,
                             const float *k, const float *v, int ld, const float *self_p,
                             const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                             int head_dim, int cap, int32_t *evicted)
{
    assert(n_kv_head >= 1 && n_head % n_kv_head == 0); /* the KV heads are what it stores */
    (void)n_head;
    int n_pairs = n_seq * n_kv_head;
    #pragma omp parallel for schedule(static)
    for (int pair = 0; pair < n_pairs; pair++) {
        int s = pair / n_kv_head, h = pair % n_kv_head;
        if (seqs[s].n_new == 0)
            continue;
        const kern_seq *sq = &seqs[s];
        size_t base = ((size_t)s * n_kv_head + h) * cap;
        int slot = sq->n_slots, gone = -1;
        if (slot >= sq->budget) {
            slot = kern_h2o_pick_ref(scores ? scores + base : NULL, pos + base, sq->n_slots,
                                     sq->sinks, sq->recent, sq->n_past);
            assert(slot >= 0); /* sinks + recent - 1 < budget slots are protected */
            gone = pos[base + slot];
        }
        size_t src = (size_t)sq->row * ld + (size_t)h * head_dim;
        SLOT_FN(put_row)(SLOT_ROW(kc, base + slot, head_dim), k + src, head_dim);
        SLOT_FN(put_row)(SLOT_ROW(vc, base + slot, head_dim), v + src, head_dim);
        pos[base + slot] = sq->n_past;
        if (scores)
            scores[base + slot] = self_p ? self_p[pair] : 0.0f;
        if (evicted)
            evicted[pair] = gone;
    }
}

/* attention.cu: prefill attention over fp16 K/V and decode attention over
 * a slot cache of either format (kern_kv_fmt: fp16, or 4-bit read in place),
 * fp32 math.
 *
 * Work is split into groups of G lanes that each own one key row; a lane
 * holds 8 of the head_dim values (one 16-byte load), so a warp reads 32/G
 * rows at once with fully used 16-byte accesses.
 *
 * Launch geometry: the (sequence, head) pairs are gridDim.x (up to 2^31 - 1);
 * blocks of query rows (prefill) or chunks of slots (decode) are the y index,
 * looped over with a stride of gridDim.y (at most 65535), so any batch and
 * any prompt or cache length fits.
 *
 * Grouped-query attention (kern.h): query head h reads KV head
 * g = h / group (group = n_head / n_kv_head). The kernels that produce a
 * query head's output run per (sequence, query head); what is per KV head
 * (the column sums, the H2O scores, self_p) is summed over the group's query
 * heads, in head order, by a block of the KV head alone, so no sum needs an
 * atomic and every result has a fixed order. With group 1 the KV head is
 * the query head and every kernel does exactly the per-head arithmetic.
 *
 * Prefill (per query row, one warp):     online softmax over keys j <= i,
 *   out_i = sum_j p_ij v_j                 (flash style, one pass)
 *   stats (m_i, l_i) kept when column sums are wanted, then
 * column sums (per key row of a KV head, one warp):
 *   colsum_j = sum over the group's heads h of sum_{i >= j} p^h_ij
 *
 * Decode (per (sequence, query head), split over chunks of CHUNK slots):
 *   pass 1: s_t = q.k_t * scale -> work; per-chunk (max, sum exp)
 *   pass 2: M, L from all chunks; p_t = exp(s_t - M) / L;
 *           group 1: scores[t] += p_t (slot t owned by one group of lanes:
 *           no atomics); partial out of the chunk = sum_t p_t v_t
 *   pass 3: out = sum over chunks of the partials, in chunk order
 *   group > 1, per (sequence, KV head): scores[t] += p^h_t for the group's
 *           heads h in order, p^h_t recomputed from pass 1's logits and
 *           statistics as pass 2 computes it (decode_scores)
 * The new token is virtual slot n_slots (its k, v come from the qkv rows).
 * The cache format changes only where a lane's 8 values of a row come from
 * (the row loaders h16_rows and q4_rows). Every sum has a fixed order, so
 * a sequence's result depends neither on the run nor on the rest of its
 * batch.
 */
#include <float.h>

#include "q4.cuh"

#define WARPS 4
#define CHUNK 256

/* Merge the online-softmax states of the groups of a warp (xor over group
 * offsets), so every lane ends with the state over all keys of the warp. */
template <int G>
__device__ __forceinline__ void warp_merge(float &m, float &l, float o[8])
{
#pragma unroll
    for (int off = G; off < 32; off *= 2) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, off);
        float l2 = __shfl_xor_sync(0xffffffffu, l, off);
        float mn = fmaxf(m, m2);
        float a = m == -INFINITY ? 0.0f : __expf(m - mn);
        float b = m2 == -INFINITY ? 0.0f : __expf(m2 - mn);
        l = l * a + l2 * b;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float o2 = __shfl_xor_sync(0xffffffffu, o[i], off);
            o[i] = o[i] * a + o2 * b;
        }
        m = mn;
    }
}

/* Query row i of pair (s, h), one warp: online softmax over keys j <= i of
 * KV head h / group. */
template <int G>
__device__ void prefill_row(__half *out, int ldo, const __half *q, const __half *k,
                            const __half *v, int ld, const kern_seq &sq, int n_head, int group,
                            int h, int hd, float scale, float *stats, int i)
{
    int lane = threadIdx.x % 32, grp = lane / G, gl = lane % G, hd8 = hd / 8;
    const int R = 32 / G;
    size_t hc = (size_t)h * hd, kc = (size_t)(h / group) * hd;
    float qf[8] = {0};
    if (gl < hd8)
        load8(q + (size_t)(sq.row + i) * ld + hc + gl * 8, qf);
    float m = -INFINITY, l = 0.0f, o[8] = {0};
    /* the loop bound is the same for the whole warp: group_dot shuffles
     * over all 32 lanes, so groups past the end compute on a valid row and
     * discard the result */
    for (int j0 = 0; j0 <= i; j0 += R) {
        int j = j0 + grp;
        size_t r = (size_t)(sq.row + (j <= i ? j : i)) * ld + kc;
        float sc = group_dot<G>(qf, k + r, gl, hd8) * scale;
        if (j > i)
            continue;
        float mn = fmaxf(m, sc), a = __expf(m - mn), p = __expf(sc - mn);
        l = l * a + p;
        float vf[8] = {0};
        if (gl < hd8)
            load8(v + r + gl * 8, vf);
#pragma unroll
        for (int e = 0; e < 8; e++)
            o[e] = o[e] * a + p * vf[e];
        m = mn;
    }
    warp_merge<G>(m, l, o);
    if (grp == 0 && gl < hd8) {
        float inv = 1.0f / l;
#pragma unroll
        for (int e = 0; e < 8; e++)
            o[e] *= inv;
        store8(out + (size_t)(sq.row + i) * ldo + hc + gl * 8, o);
    }
    if (stats && lane == 0) {
        stats[((size_t)(sq.row + i) * n_head + h) * 2] = m;
        stats[((size_t)(sq.row + i) * n_head + h) * 2 + 1] = l;
    }
}

/* Pair blockIdx.x; warp w of the block takes query row qb * WARPS + w for
 * the row blocks qb = blockIdx.y, blockIdx.y + gridDim.y, ... < n_qb. */
template <int G>
__global__ void prefill_attn(__half *out, int ldo, const __half *q, const __half *k,
                             const __half *v, int ld, const kern_seq *seqs, int n_head,
                             int group, int hd, float scale, float *stats, int n_qb)
{
    int pair = blockIdx.x, h = pair % n_head;
    kern_seq sq = seqs[pair / n_head];
    for (int qb = blockIdx.y; qb < n_qb; qb += gridDim.y) {
        int i = qb * WARPS + threadIdx.x / 32;
        if (i >= sq.n_new)
            break; /* the whole warp leaves together; later blocks have larger i */
        prefill_row<G>(out, ldo, q, k, v, ld, sq, n_head, group, h, hd, scale, stats, i);
    }
}

/* Column j of KV pair (s, g), one warp: colsum_j = the sum over the query
 * heads h of the group, in order, of sum_{i >= j} p^h_ij. */
template <int G>
__device__ void prefill_col(float *colsum, const __half *q, const __half *k, int ld,
                            const kern_seq &sq, int n_head, int n_kv_head, int g, int hd,
                            float scale, const float *stats, int j)
{
    int lane = threadIdx.x % 32, grp = lane / G, gl = lane % G, hd8 = hd / 8;
    const int R = 32 / G, group = n_head / n_kv_head;
    float kf[8] = {0};
    if (gl < hd8)
        load8(k + (size_t)(sq.row + j) * ld + (size_t)g * hd + gl * 8, kf);
    float total = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++) { /* warp-uniform */
        size_t hc = (size_t)h * hd;
        float sum = 0.0f;
        for (int i0 = j; i0 < sq.n_new; i0 += R) { /* warp-uniform bound, see prefill_row */
            int i = i0 + grp;
            size_t r = (size_t)(sq.row + (i < sq.n_new ? i : i0));
            float sc = group_dot<G>(kf, q + r * ld + hc, gl, hd8) * scale;
            const float *st = stats + (r * n_head + h) * 2;
            if (i < sq.n_new)
                sum += __expf(sc - st[0]) / st[1];
        }
        /* one value per group of lanes (lane gl == 0 holds it like the
         * others); add the groups in xor order */
#pragma unroll
        for (int off = G; off < 32; off *= 2)
            sum += __shfl_xor_sync(0xffffffffu, sum, off);
        total = h == g * group ? sum : total + sum;
    }
    if (lane == 0)
        colsum[(size_t)(sq.row + j) * n_kv_head + g] = total;
}

/* Block (sequence, KV head) blockIdx.x, one warp per key row j. */
template <int G>
__global__ void prefill_colsum(float *colsum, const __half *q, const __half *k, int ld,
                               const kern_seq *seqs, int n_head, int n_kv_head, int hd,
                               float scale, const float *stats, int n_qb)
{
    int pair = blockIdx.x, g = pair % n_kv_head;
    kern_seq sq = seqs[pair / n_kv_head];
    for (int qb = blockIdx.y; qb < n_qb; qb += gridDim.y) {
        int j = qb * WARPS + threadIdx.x / 32;
        if (j >= sq.n_new)
            break; /* the whole warp leaves together */
        prefill_col<G>(colsum, q, k, ld, sq, n_head, n_kv_head, g, hd, scale, stats, j);
    }
}

template <int G>
static int launch_prefill(void *out, int ldo, const void *q, const void *k, const void *v,
                          int ld, const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                          int hd, float scale, float *colsum, float *work, int max_new,
                          cudaStream_t st)
{
    int n_qb = (int)kblocks((size_t)max_new, WARPS);
    dim3 grid((unsigned)(n_seq * n_head), kgrid_y((size_t)n_qb));
    prefill_attn<G><<<grid, 32 * WARPS, 0, st>>>((__half *)out, ldo, (const __half *)q,
                                                 (const __half *)k, (const __half *)v, ld,
                                                 seqs, n_head, n_head / n_kv_head, hd, scale,
                                                 colsum ? work : NULL, n_qb);
    KLAUNCHED();
    if (colsum) {
        dim3 kv_grid((unsigned)(n_seq * n_kv_head), grid.y);
        prefill_colsum<G><<<kv_grid, 32 * WARPS, 0, st>>>(colsum, (const __half *)q,
                                                          (const __half *)k, ld, seqs, n_head,
                                                          n_kv_head, hd, scale, work, n_qb);
        KLAUNCHED();
    }
    return 0;
}

extern "C" int kern_attn_prefill_cuda(void *out, int ldo, const void *q, const void *k,
                                      const void *v, int ld, const kern_seq *seqs, int n_seq,
                                      int n_head, int n_kv_head, int head_dim, float scale,
                                      float *colsum, float *work, int max_new, void *stream)
{
    KCHECK_HEADS(n_head, n_kv_head);
    if (max_new == 0 || n_seq == 0)
        return 0;
    KCHECK_HEAD_DIM(head_dim);
    KCHECK_PAIRS(n_seq, n_head);
    return KERN_DISPATCH_G(head_dim, launch_prefill, out, ldo, q, k, v, ld, seqs, n_seq,
                           n_head, n_kv_head, head_dim, scale, colsum, work, max_new,
                           kstream(stream));
}

/* ------------------------------------------------------------- decode
 * One set of passes for every cache format, templated on a row loader that
 * gives a lane its 8 values of row t of the virtual cache: a slot (t < n)
 * or the new token's fp16 row (t == n). The fp16 loader is a 16-byte load
 * (load8); the 4-bit one reads the row's octet in place (q4.cuh). The
 * arithmetic after the load is the same for both. */

/* Work layout of one decode call, for n_pairs (sequence, query head)
 * pairs. */
struct decode_work {
    float *logit;   /* (n_pairs, cap + 1) */
    float *stat;    /* (n_pairs, n_chunks, 2) max, sum exp */
    float *partial; /* (n_pairs, n_chunks, hd) */
};

static int n_chunks_for(int cap) { return (cap + 1 + CHUNK - 1) / CHUNK; }

static decode_work carve(void *work, int n_pairs, int cap)
{
    decode_work w;
    size_t nc = (size_t)n_chunks_for(cap);
    w.logit = (float *)work;
    w.stat = w.logit + (size_t)n_pairs * (cap + 1);
    w.partial = w.stat + (size_t)n_pairs * nc * 2;
    return w;
}

extern "C" size_t kern_attn_decode_work(int n_seq, int n_head, int head_dim, int cap)
{
    size_t np = (size_t)n_seq * n_head, nc = (size_t)n_chunks_for(cap);
    return sizeof(float) * (np * (cap + 1) + np * nc * 2 + np * nc * head_dim);
}

/* Row loader of an fp16 cache (KERN_KV_FMT_PLAIN): rows of hd halves. */
struct h16_rows {
    const __half *c;
    int hd;
    __device__ __forceinline__ void get8(const __half *fresh, size_t base, int t, int n, int gl,
                                         float f[8]) const
    {
        load8((t < n ? c + (base + t) * hd : fresh) + gl * 8, f);
    }
};

/* Row loader of a 4-bit cache (KERN_KV_FMT_Q4): rows of rw 32-bit words;
 * lane gl's octet is code word gl % 8 of block gl / 8. */
struct q4_rows {
    const uint32_t *c;
    int rw;
    __device__ __forceinline__ void get8(const __half *fresh, size_t base, int t, int n, int gl,
                                         float f[8]) const
    {
        if (t < n) {
            const uint32_t *blk = c + (base + t) * rw + (gl / 8) * Q4_WORDS;
            q4_octet(blk[0], blk[1 + gl % 8], f);
        } else {
            load8(fresh + gl * 8, f);
        }
    }
};

/* The KV pair (s, g) of query pair (s, h): its index s * n_kv_head + g. */
__device__ __forceinline__ size_t kv_pair_of(int s, int h, int n_head, int group)
{
    return (size_t)s * (n_head / group) + h / group;
}

/* Pass 1, block (query pair, chunk c) for c = blockIdx.y, blockIdx.y +
 * gridDim.y, ... < n_chunks: the logits of the chunk's slots (of the KV
 * head of the pair's group) and its (max, sum exp). */
template <int G, class Rows>
__global__ void decode_pass1(const __half *q, const __half *k, int ld, Rows kc,
                             const kern_seq *seqs, int n_head, int group, int hd, int cap,
                             float scale, decode_work w, int n_chunks)
{
    __shared__ float red[WARPS][2];
    int pair = blockIdx.x, s = pair / n_head, h = pair % n_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return;
    int n = sq.n_slots, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int grp = lane / G, gl = lane % G, hd8 = hd / 8;
    const int R = 32 / G;
    size_t hc = (size_t)h * hd, base = kv_pair_of(s, h, n_head, group) * cap;
    float qf[8] = {0};
    if (gl < hd8)
        load8(q + (size_t)sq.row * ld + hc + gl * 8, qf);
    const __half *knew = k + (size_t)sq.row * ld + (size_t)(h / group) * hd;
    for (int c = blockIdx.y; c < n_chunks; c += gridDim.y) {
        float m = -INFINITY, l = 0.0f;
        int end = min(c * CHUNK + CHUNK, n + 1);
        for (int t0 = c * CHUNK + warp * R; t0 < end; t0 += WARPS * R) { /* warp-uniform */
            int t = t0 + grp;
            float d = 0.0f;
            if (gl < hd8) { /* groups past the end compute on row t0 and discard it */
                float kf[8];
                kc.get8(knew, base, t < end ? t : t0, n, gl, kf);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    d += qf[i] * kf[i];
            }
            float sc = group_sum<G>(d) * scale; /* group_sum shuffles over the whole warp */
            if (t >= end)
                continue;
            if (gl == 0)
                w.logit[(size_t)pair * (cap + 1) + t] = sc;
            float mn = fmaxf(m, sc);
            l = l * __expf(m - mn) + __expf(sc - mn);
            m = mn;
        }
        /* merge the groups of the warp, then the warps of the block */
#pragma unroll
        for (int off = G; off < 32; off *= 2) {
            float m2 = __shfl_xor_sync(0xffffffffu, m, off);
            float l2 = __shfl_xor_sync(0xffffffffu, l, off);
            float mn = fmaxf(m, m2);
            l = (m == -INFINITY ? 0.0f : l * __expf(m - mn)) +
                (m2 == -INFINITY ? 0.0f : l2 * __expf(m2 - mn));
            m = mn;
        }
        if (lane == 0) {
            red[warp][0] = m;
            red[warp][1] = l;
        }
        __syncthreads(); /* all warp states written */
        if (threadIdx.x == 0) {
            float M = -INFINITY, L = 0.0f;
            for (int i = 0; i < WARPS; i++)
                M = fmaxf(M, red[i][0]);
            for (int i = 0; i < WARPS; i++)
                L += red[i][0] == -INFINITY ? 0.0f : red[i][1] * __expf(red[i][0] - M);
            float *st = w.stat + ((size_t)pair * n_chunks + c) * 2;
            st[0] = M;
            st[1] = L;
        }
        if (c + gridDim.y < n_chunks) /* block-uniform */
            __syncthreads(); /* thread 0 has read red before the next chunk rewrites it */
    }
}

/* The softmax of query pair `pair` over its n + 1 tokens: the global max M
 * and 1 / sum exp from pass 1's statistics of its used chunks, in chunk
 * order. Pass 2 and decode_scores both take it from here, so both compute
 * the same probabilities. */
__device__ __forceinline__ void decode_norm(const decode_work &w, size_t pair, int n_chunks,
                                            int n, float *M_out, float *invL_out)
{
    float M = -INFINITY, L = 0.0f;
    const float *st = w.stat + pair * n_chunks * 2;
    int used = (n + 1 + CHUNK - 1) / CHUNK;
    for (int i = 0; i < used; i++)
        M = fmaxf(M, st[2 * i]);
    for (int i = 0; i < used; i++)
        L += st[2 * i + 1] * __expf(st[2 * i] - M);
    *M_out = M;
    *invL_out = 1.0f / L;
}

/* Pass 2, the grid of pass 1: probabilities, H2O scores (group 1 only:
 * scores and self_p NULL otherwise, decode_scores sums the group) and the
 * chunk's partial output. */
template <int G, class Rows>
__global__ void decode_pass2(const __half *v, int ld, Rows vc, const kern_seq *seqs, int n_head,
                             int group, int hd, int cap, float *scores, float *self_p,
                             decode_work w, int n_chunks)
{
    extern __shared__ float acc[]; /* (WARPS * 32 / G, hd) */
    int pair = blockIdx.x, s = pair / n_head, h = pair % n_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return;
    int n = sq.n_slots, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int grp = lane / G, gl = lane % G, hd8 = hd / 8;
    const int R = 32 / G;
    size_t kvp = kv_pair_of(s, h, n_head, group), base = kvp * cap;
    /* global max and sum over the chunks, the same order in every block */
    float M, invL;
    decode_norm(w, (size_t)pair, n_chunks, n, &M, &invL);
    const __half *vnew = v + (size_t)sq.row * ld + (size_t)(h / group) * hd;
    for (int c = blockIdx.y; c < n_chunks; c += gridDim.y) {
        float o[8] = {0};
        int end = min(c * CHUNK + CHUNK, n + 1);
        for (int t = c * CHUNK + warp * R + grp; t < end; t += WARPS * R) {
            float p = __expf(w.logit[(size_t)pair * (cap + 1) + t] - M) * invL;
            if (gl == 0) {
                if (t < n) {
                    if (scores)
                        scores[base + t] += p; /* slot t belongs to this group alone */
                } else if (self_p) {
                    self_p[kvp] = p;
                }
            }
            if (gl < hd8) {
                float vf[8];
                vc.get8(vnew, base, t, n, gl, vf);
#pragma unroll
                for (int e = 0; e < 8; e++)
                    o[e] += p * vf[e];
            }
        }
        int g_all = warp * R + grp;
        if (gl < hd8)
            for (int e = 0; e < 8; e++)
                acc[(size_t)g_all * hd + gl * 8 + e] = o[e];
        __syncthreads(); /* every group's partial is in acc */
        for (int e = threadIdx.x; e < hd; e += blockDim.x) {
            float sum = 0.0f;
            for (int g = 0; g < WARPS * R; g++)
                sum += acc[(size_t)g * hd + e];
            w.partial[((size_t)pair * n_chunks + c) * hd + e] = sum;
        }
        if (c + gridDim.y < n_chunks) /* block-uniform */
            __syncthreads(); /* acc read by all before the next chunk rewrites it */
    }
}

/* Pass 3, one block per pair: out = the chunks' partials in chunk order. */
__global__ void decode_pass3(__half *out, int ldo, const kern_seq *seqs, int n_head, int hd,
                             int n_chunks, decode_work w)
{
    int pair = blockIdx.x, s = pair / n_head, h = pair % n_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return;
    int used = (sq.n_slots + 1 + CHUNK - 1) / CHUNK;
    for (int e = threadIdx.x; e < hd; e += blockDim.x) {
        float sum = 0.0f;
        for (int c = 0; c < used; c++)
            sum += w.partial[((size_t)pair * n_chunks + c) * hd + e];
        out[(size_t)sq.row * ldo + (size_t)h * hd + e] = __float2half_rn(sum);
    }
}

/* Grouped-query attention's H2O sums, block (sequence, KV head g) and
 * chunk c = blockIdx.y, blockIdx.y + gridDim.y, ... < n_chunks, one thread
 * per slot t of the chunk: scores[t] += p^h_t for the group's query heads h
 * in order, self_p = the sum of their p^h of the new token (in the
 * reference's order: kern.h). p^h_t is pass 2's value: the same logits,
 * statistics (decode_norm) and expression. */
__global__ void decode_scores(const kern_seq *seqs, int n_kv_head, int group, int cap,
                              float *scores, float *self_p, decode_work w, int n_chunks)
{
    extern __shared__ float nrm[]; /* (group, 2): M and 1 / L of each query head */
    int kvp = blockIdx.x, s = kvp / n_kv_head, g = kvp % n_kv_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return; /* block-uniform */
    int n = sq.n_slots;
    size_t q0 = ((size_t)s * n_kv_head + g) * group; /* the group's first query pair */
    size_t base = (size_t)kvp * cap;
    for (int i = threadIdx.x; i < group; i += blockDim.x)
        decode_norm(w, q0 + i, n_chunks, n, &nrm[2 * i], &nrm[2 * i + 1]);
    __syncthreads(); /* every query head's M and 1 / L in nrm */
    for (int c = blockIdx.y; c < n_chunks; c += gridDim.y) {
        int end = min(c * CHUNK + CHUNK, n + 1);
        for (int t = c * CHUNK + threadIdx.x; t < end; t += blockDim.x) {
            bool slot = t < n;
            if (slot ? !scores : !self_p)
                continue;
            float sum = slot ? scores[base + t] : 0.0f;
            for (int i = 0; i < group; i++) {
                float p = __expf(w.logit[(q0 + i) * (cap + 1) + t] - nrm[2 * i]) *
                          nrm[2 * i + 1];
                sum = slot || i > 0 ? sum + p : p;
            }
            if (slot)
                scores[base + t] = sum; /* slot t belongs to this thread alone */
            else
                self_p[kvp] = sum;
        }
    }
}

template <int G, class Rows>
static int launch_decode(void *out, int ldo, const void *q, const void *k, const void *v,
                         int ld, Rows kc, Rows vc, const kern_seq *seqs, int n_seq, int n_head,
                         int n_kv_head, int hd, int cap, float scale, float *scores,
                         float *self_p, void *work, int max_slots, cudaStream_t st)
{
    unsigned pairs = (unsigned)(n_seq * n_head);
    int group = n_head / n_kv_head;
    decode_work w = carve(work, (int)pairs, cap);
    /* the grid covers the longest sequence (chunks past a shorter one's
     * slots do no work); stats and partials use n_chunks as their stride */
    int n_chunks = (max_slots + 1 + CHUNK - 1) / CHUNK;
    dim3 grid(pairs, kgrid_y((size_t)n_chunks));
    decode_pass1<G, Rows><<<grid, 32 * WARPS, 0, st>>>((const __half *)q, (const __half *)k, ld,
                                                       kc, seqs, n_head, group, hd, cap, scale,
                                                       w, n_chunks);
    KLAUNCHED();
    size_t smem = sizeof(float) * (size_t)WARPS * (32 / G) * hd;
    decode_pass2<G, Rows><<<grid, 32 * WARPS, smem, st>>>(
        (const __half *)v, ld, vc, seqs, n_head, group, hd, cap, group == 1 ? scores : NULL,
        group == 1 ? self_p : NULL, w, n_chunks);
    KLAUNCHED();
    if (group > 1 && (scores || self_p)) {
        dim3 kv_grid((unsigned)(n_seq * n_kv_head), grid.y);
        decode_scores<<<kv_grid, CHUNK, sizeof(float) * 2 * (size_t)group, st>>>(
            seqs, n_kv_head, group, cap, scores, self_p, w, n_chunks);
        KLAUNCHED();
    }
    decode_pass3<<<pairs, hd < 128 ? 128 : hd, 0, st>>>((__half *)out, ldo, seqs, n_head, hd,
                                                        n_chunks, w);
    KLAUNCHED();
    return 0;
}

extern "C" int kern_attn_decode_cuda(void *out, int ldo, const void *q, const void *k,
                                     const void *v, int ld, kern_kv_fmt fmt, const void *kc,
                                     const void *vc, const kern_seq *seqs, int n_seq, int n_head,
                                     int n_kv_head, int head_dim, int cap, float scale,
                                     float *scores, float *self_p, void *work, int max_slots,
                                     void *stream)
{
    KCHECK_KV_FMT(fmt);
    KCHECK_HEADS(n_head, n_kv_head);
    if (n_seq == 0)
        return 0;
    KCHECK_HEAD_DIM(head_dim);
    KCHECK_PAIRS(n_seq, n_head);
    if (fmt == KERN_KV_FMT_Q4)
        KCHECK_Q4_CACHES(kc, vc);
    RETURN_IF(max_slots > cap, -EINVAL, "max_slots %d > cap %d", max_slots, cap);
    cudaStream_t st = kstream(stream);
    if (fmt == KERN_KV_FMT_Q4) {
        int rw = q4_row_words(head_dim);
        q4_rows kr = {(const uint32_t *)kc, rw}, vr = {(const uint32_t *)vc, rw};
        return KERN_DISPATCH_G(head_dim, launch_decode, out, ldo, q, k, v, ld, kr, vr, seqs,
                               n_seq, n_head, n_kv_head, head_dim, cap, scale, scores, self_p,
                               work, max_slots, st);
    }
    h16_rows kr = {(const __half *)kc, head_dim}, vr = {(const __half *)vc, head_dim};
    return KERN_DISPATCH_G(head_dim, launch_decode, out, ldo, q, k, v, ld, kr, vr, seqs, n_seq,
                           n_head, n_kv_head, head_dim, cap, scale, scores, self_p, work,
                           max_slots, st);
}

/* ------------------------------------------- prefill through the GEMMs
 * The backend computes S = scale Q K^T per head with a batched GEMM into
 * fp32, then these two kernels make P = causal softmax(S) (fp16, zeros above
 * the diagonal, ready for the P V GEMM) and the column sums of P in fp32
 * from S itself, so the H2O scores do not see P's fp16 rounding. A long
 * prompt is done in blocks of query rows (S (rows, cols) holds the queries
 * i0 .. i0 + rows - 1 against the keys 0 .. cols - 1 = i0 + rows - 1); the
 * column sums then add up over the blocks, in block order. Under grouped-query
 * attention the caller batches the query heads of a KV head against its
 * one K (and V), and the column sums of a KV head add up over its query
 * heads, in head order, whichever calls they come in. */

#define SM_THREADS 256

/* Block (query row r, head h) for h = blockIdx.y, blockIdx.y + gridDim.y,
 * ...: P[r][j] = exp(S[r][j] - m) / l for keys j <= i = i0 + r, else 0. */
__global__ void prefill_softmax(const float *S, __half *P, float *stats, int rows, int cols,
                                int i0, int heads)
{
    __shared__ float red[SM_THREADS / 32];
    __shared__ float bc;
    int r = blockIdx.x, i = i0 + r;
    for (int h = blockIdx.y; h < heads; h += gridDim.y) {
        const float *s = S + ((size_t)h * rows + r) * cols;
        __half *p = P + ((size_t)h * rows + r) * cols;
        float m = -INFINITY;
        for (int j = threadIdx.x; j <= i; j += SM_THREADS)
            m = fmaxf(m, s[j]);
#pragma unroll
        for (int off = 16; off > 0; off /= 2)
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
        if (threadIdx.x % 32 == 0)
            red[threadIdx.x / 32] = m;
        __syncthreads(); /* warp maxima written */
        if (threadIdx.x == 0) {
            float t = -INFINITY;
            for (int w = 0; w < SM_THREADS / 32; w++)
                t = fmaxf(t, red[w]);
            bc = t;
        }
        __syncthreads(); /* the row max is in bc; red free again */
        m = bc;
        float l = 0.0f;
        for (int j = threadIdx.x; j <= i; j += SM_THREADS)
            l += __expf(s[j] - m);
        l = group_sum<32>(l);
        if (threadIdx.x % 32 == 0)
            red[threadIdx.x / 32] = l;
        __syncthreads(); /* warp sums written */
        if (threadIdx.x == 0) {
            float t = 0.0f;
            for (int w = 0; w < SM_THREADS / 32; w++)
                t += red[w];
            bc = t;
            if (stats) {
                stats[((size_t)h * rows + r) * 2] = m;
                stats[((size_t)h * rows + r) * 2 + 1] = t;
            }
        }
        __syncthreads(); /* the row sum is in bc */
        float inv = 1.0f / bc;
        for (int j = threadIdx.x; j < cols; j += SM_THREADS)
            p[j] = __float2half_rn(j <= i ? __expf(s[j] - m) * inv : 0.0f);
        if (h + gridDim.y < heads) /* block-uniform */
            __syncthreads(); /* bc read by all before the next head's thread 0 rewrites it */
    }
}

/* For the KV heads g = (h0 + h) / group of the call's query heads h0 + h,
 * h < heads (y index: g - h0 / group): colsum[(row0 + j) * n_kv_head + g]
 * gets, for each of those query heads in order, the sum over the block's
 * rows r with i0 + r >= j of exp(S[r][j] - m_r) / l_r. The first addend of
 * a column is stored, not added: that of the block where the column starts
 * (j >= i0) for the first query head of the group (h0 + h == g * group);
 * every other block and head adds to what is there. One thread per column
 * j (consecutive threads read consecutive columns). */
__global__ void prefill_colsum_gemm(const float *S, const float *stats, float *colsum, int rows,
                                    int cols, int i0, int heads, int row0, int n_kv_head,
                                    int group, int h0, int n_kv)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols)
        return;
    for (int y = blockIdx.y; y < n_kv; y += gridDim.y) {
        int g = h0 / group + y;
        int ha = max(h0, g * group), hb = min(h0 + heads, (g + 1) * group);
        float *cs = colsum + (size_t)(row0 + j) * n_kv_head + g;
        bool fresh = j >= i0 && ha == g * group;
        float acc = fresh ? 0.0f : *cs;
        for (int h = ha; h < hb; h++) {
            const float *s = S + (size_t)(h - h0) * rows * cols;
            const float *st = stats + (size_t)(h - h0) * rows * 2;
            float sum = 0.0f;
            for (int r = j > i0 ? j - i0 : 0; r < rows; r++)
                sum += __expf(s[(size_t)r * cols + j] - st[2 * r]) / st[2 * r + 1];
            acc = fresh ? sum : acc + sum;
            fresh = false;
        }
        *cs = acc;
    }
}

extern "C" int kern_prefill_softmax_cuda(const float *S, void *P, float *stats, int rows,
                                         int cols, int i0, int heads, void *stream)
{
    if (rows == 0 || heads == 0)
        return 0;
    RETURN_IF(i0 < 0 || cols < i0 + rows, -EINVAL,
              "prefill softmax: rows %d from query %d need %d key columns, S has %d", rows, i0,
              i0 + rows, cols);
    prefill_softmax<<<dim3((unsigned)rows, kgrid_y((size_t)heads)), SM_THREADS, 0,
                      kstream(stream)>>>(S, (__half *)P, stats, rows, cols, i0, heads);
    KLAUNCHED();
    return 0;
}

extern "C" int kern_prefill_colsum_cuda(const float *S, const float *stats, float *colsum,
                                        int rows, int cols, int i0, int heads, int row0,
                                        int n_head, int n_kv_head, int h0, void *stream)
{
    KCHECK_HEADS(n_head, n_kv_head);
    if (rows == 0 || heads == 0)
        return 0;
    RETURN_IF(i0 < 0 || cols < i0 + rows, -EINVAL,
              "prefill column sums: rows %d from query %d need %d key columns, S has %d",
              rows, i0, i0 + rows, cols);
    RETURN_IF(h0 < 0 || heads < 0 || h0 + heads > n_head, -EINVAL,
              "prefill column sums: query heads %d .. %d of %d", h0, h0 + heads - 1, n_head);
    int group = n_head / n_kv_head, n_kv = (h0 + heads - 1) / group - h0 / group + 1;
    prefill_colsum_gemm<<<dim3(kblocks((size_t)cols, 128), kgrid_y((size_t)n_kv)), 128, 0,
                          kstream(stream)>>>(S, stats, colsum, rows, cols, i0, heads, row0,
                                             n_kv_head, group, h0, n_kv);
    KLAUNCHED();
    return 0;
}

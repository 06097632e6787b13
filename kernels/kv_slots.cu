/* kv_slots.cu: writing the slot caches, in either format (kern_kv_fmt):
 * the prompt's kept tokens after prefill, and the new token of a decode
 * step into a free or evicted slot (H2O eviction, where the scores live:
 * no host round trip). Everything here is per (sequence, KV head): under
 * grouped-query attention the query heads only decide the scores and
 * column sums (attention.cu), which arrive summed over each KV head's
 * group. Which slots is kv_select.cuh's, the same for every
 * format; how a row is written is the format's writer below, which the
 * two kernels are templated on:
 *
 *   h16_slots      fp16 rows (KERN_KV_FMT_PLAIN): 16-byte copies
 *   q4_slots<L>    4-bit rows (KERN_KV_FMT_Q4): a group of L lanes quantizes
 *                  a row (q4.cuh), 8 lanes per block of the row
 *
 *   put_tile(kc, vc, ...)  the K and V rows of a tile's kept tokens, by a
 *                          block of threads
 *   put_row(c, ...)        one row, by a warp
 */
#include "kv_select.cuh"
#include "q4.cuh"

#define KVP_THREADS 256
/* Tokens whose slots a block holds at once (8 KiB of shared memory): a
 * prompt of any length is done tile by tile, the running slot count
 * carried from one tile to the next. */
#define KVP_TILE 2048

/* ------------------------------------------------------------ writers */

/* fp16 rows of hd values; row i at c + i * hd. */
struct h16_slots {
    __half *c;
    int hd;
};

/* 4-bit rows of hd values, rw 32-bit words each; row i at c + i * rw. L:
 * the lanes that write a row in put_tile (8 per block of the row). */
template <int L>
struct q4_slots {
    uint32_t *c;
    int hd, rw;
};

/* The kept tokens' rows of a tile (slot_of of kv_keep_tile, tn tokens)
 * into slots base + slot_of[jj], from the tile's first K and V rows k, v
 * (row stride ld): one thread per 16 bytes of a row. */
__device__ __forceinline__ void put_tile(h16_slots kc, h16_slots vc, const int *slot_of, int tn,
                                         const __half *k, const __half *v, int ld, size_t base)
{
    int hd8 = kc.hd / 8;
    for (int x = threadIdx.x; x < tn * hd8; x += blockDim.x) {
        int jj = x / hd8, c = x % hd8, slot = slot_of[jj];
        if (slot < 0)
            continue;
        size_t src = (size_t)jj * ld + c * 8, dst = (base + slot) * kc.hd + c * 8;
        *(uint4 *)(kc.c + dst) = *(const uint4 *)(k + src);
        *(uint4 *)(vc.c + dst) = *(const uint4 *)(v + src);
    }
}

/* The same for 4-bit rows: each group of L lanes quantizes a kept token's
 * K and V rows into its slot. */
template <int L>
__device__ __forceinline__ void put_tile(q4_slots<L> kc, q4_slots<L> vc, const int *slot_of,
                                         int tn, const __half *k, const __half *v, int ld,
                                         size_t base)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, grp = lane / L, gl = lane % L;
    const int R = 32 / L, NW = KVP_THREADS / 32;
    for (int j0 = warp * R; j0 < tn; j0 += NW * R) { /* warp-uniform: q4_put_row shuffles */
        int jj = j0 + grp, slot = jj < tn ? slot_of[jj] : -1;
        bool put = slot >= 0;
        size_t src = (size_t)(put ? jj : 0) * ld, dst = (base + (put ? slot : 0)) * kc.rw;
        q4_put_row<L>(kc.c + dst, k + src, kc.hd, gl, put);
        q4_put_row<L>(vc.c + dst, v + src, vc.hd, gl, put);
    }
}

/* Row `row` of c <- the fp16 row src, by the 32 lanes of a warp. */
__device__ __forceinline__ void put_row(h16_slots c, size_t row, const __half *src, int lane)
{
    for (int x = lane; x < c.hd / 8; x += 32)
        *(uint4 *)(c.c + row * c.hd + x * 8) = *(const uint4 *)(src + x * 8);
}

/* The same for a 4-bit row, quantized by the whole warp (lane o owns octet
 * o; head_dim <= 256 is at most 32 octets). */
template <int L>
__device__ __forceinline__ void put_row(q4_slots<L> c, size_t row, const __half *src, int lane)
{
    q4_put_row<32>(c.c + row * c.rw, src, c.hd, lane, true);
}

/* ------------------------------------------------------------- prefill */

/* One block per (sequence, KV head): tile by tile, the kept tokens and
 * their slots (kv_keep_tile), their K and V rows (put_tile), their
 * positions and scores (the column sums). */
template <class S>
__global__ void kv_prefill(S kc, S vc, float *scores, int32_t *pos, const __half *k,
                           const __half *v, int ld, const float *colsum, const kern_seq *seqs,
                           int n_kv_head, int cap)
{
    __shared__ int slot_of[KVP_TILE]; /* slot of token t0 + jj, or -1 */
    int pair = blockIdx.x, s = pair / n_kv_head, h = pair % n_kv_head;
    kern_seq sq = seqs[s];
    int n = sq.n_new;
    if (n == 0)
        return;
    const float *cs = colsum ? colsum + (size_t)sq.row * n_kv_head + h : NULL;
    size_t base = (size_t)pair * cap;
    int next = 0; /* slots taken so far (thread 0's count) */
    for (int t0 = 0; t0 < n; t0 += KVP_TILE) {
        int tn = min(KVP_TILE, n - t0);
        kv_keep_tile(slot_of, sq, cs, n_kv_head, t0, tn, &next);
        size_t row = (size_t)(sq.row + t0) * ld + (size_t)h * kc.hd;
        put_tile(kc, vc, slot_of, tn, k + row, v + row, ld, base);
        for (int jj = threadIdx.x; jj < tn; jj += blockDim.x) {
            int slot = slot_of[jj], j = t0 + jj;
            if (slot < 0)
                continue;
            pos[base + slot] = j;
            if (scores)
                scores[base + slot] = cs ? cs[(size_t)j * n_kv_head] : 0.0f;
        }
        if (t0 + KVP_TILE < n) /* block-uniform */
            __syncthreads(); /* slot_of read by all before the next tile rewrites it */
    }
}

template <class S>
static int launch_prefill(S kc, S vc, float *scores, int32_t *pos, const void *k, const void *v,
                          int ld, const float *colsum, const kern_seq *seqs, int n_seq,
                          int n_kv_head, int cap, cudaStream_t st)
{
    kv_prefill<S><<<(unsigned)(n_seq * n_kv_head), KVP_THREADS, 0, st>>>(
        kc, vc, scores, pos, (const __half *)k, (const __half *)v, ld, colsum, seqs, n_kv_head,
        cap);
    KLAUNCHED();
    return 0;
}

/* 4-bit caches: L lanes per row, 8 per block of the row (Q4_DISPATCH_L). */
template <int L>
static int launch_prefill_q4(void *kc, void *vc, float *scores, int32_t *pos, const void *k,
                             const void *v, int ld, const float *colsum, const kern_seq *seqs,
                             int n_seq, int n_kv_head, int hd, int cap, cudaStream_t st)
{
    int rw = q4_row_words(hd);
    q4_slots<L> ks = {(uint32_t *)kc, hd, rw}, vs = {(uint32_t *)vc, hd, rw};
    return launch_prefill(ks, vs, scores, pos, k, v, ld, colsum, seqs, n_seq, n_kv_head, cap,
                          st);
}

#define Q4_DISPATCH_L(hd, F, ...)                                                      \
    ((hd) <= 64 ? F<8>(__VA_ARGS__) : (hd) <= 128 ? F<16>(__VA_ARGS__) : F<32>(__VA_ARGS__))

extern "C" int kern_kv_prefill_cuda(kern_kv_fmt fmt, void *kc, void *vc, float *scores,
                                    int32_t *pos, const void *k, const void *v, int ld,
                                    const float *colsum, const kern_seq *seqs, int n_seq,
                                    int n_head, int n_kv_head, int head_dim, int cap, int max_new,
                                    void *stream)
{
    KCHECK_KV_FMT(fmt);
    KCHECK_HEADS(n_head, n_kv_head);
    if (n_seq == 0 || max_new == 0)
        return 0;
    cudaStream_t st = kstream(stream);
    if (fmt == KERN_KV_FMT_Q4) {
        KCHECK_HEAD_DIM(head_dim);
        KCHECK_PAIRS(n_seq, n_kv_head);
        KCHECK_Q4_CACHES(kc, vc);
        return Q4_DISPATCH_L(head_dim, launch_prefill_q4, kc, vc, scores, pos, k, v, ld, colsum,
                             seqs, n_seq, n_kv_head, head_dim, cap, st);
    }
    RETURN_IF(head_dim % 8, -EINVAL, "KV prefill: head_dim %d is not a multiple of 8", head_dim);
    KCHECK_PAIRS(n_seq, n_kv_head);
    h16_slots ks = {(__half *)kc, head_dim}, vs = {(__half *)vc, head_dim};
    return launch_prefill(ks, vs, scores, pos, k, v, ld, colsum, seqs, n_seq, n_kv_head, cap,
                          st);
}

/* -------------------------------------------------------------- insert */

/* One warp per (sequence, KV head): the slot (kv_insert_slot: free, or the
 * H2O victim), then the warp writes the new K and V rows there. */
template <class S>
__global__ void kv_insert(S kc, S vc, float *scores, int32_t *pos, const __half *k,
                          const __half *v, int ld, const float *self_p, const kern_seq *seqs,
                          int n_seq, int n_kv_head, int cap, int32_t *evicted)
{
    int pair = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (pair >= n_seq * n_kv_head)
        return; /* whole warp */
    int s = pair / n_kv_head, h = pair % n_kv_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return; /* whole warp */
    size_t base = (size_t)pair * cap;
    int gone, slot = kv_insert_slot(scores ? scores + base : NULL, pos + base, sq, lane, &gone);
    size_t src = (size_t)sq.row * ld + (size_t)h * kc.hd;
    put_row(kc, base + slot, k + src, lane);
    put_row(vc, base + slot, v + src, lane);
    if (lane == 0) {
        pos[base + slot] = sq.n_past;
        if (scores)
            scores[base + slot] = self_p ? self_p[pair] : 0.0f;
        if (evicted)
            evicted[pair] = gone;
    }
}

template <class S>
static int launch_insert(S kc, S vc, float *scores, int32_t *pos, const void *k, const void *v,
                         int ld, const float *self_p, const kern_seq *seqs, int n_seq,
                         int n_kv_head, int cap, int32_t *evicted, cudaStream_t st)
{
    int pairs = n_seq * n_kv_head;
    kv_insert<S><<<kblocks((size_t)pairs, 4), 128, 0, st>>>(
        kc, vc, scores, pos, (const __half *)k, (const __half *)v, ld, self_p, seqs, n_seq,
        n_kv_head, cap, evicted);
    KLAUNCHED();
    return 0;
}

extern "C" int kern_kv_insert_cuda(kern_kv_fmt fmt, void *kc, void *vc, float *scores,
                                   int32_t *pos, const void *k, const void *v, int ld,
                                   const float *self_p, const kern_seq *seqs, int n_seq,
                                   int n_head, int n_kv_head, int head_dim, int cap,
                                   int32_t *evicted, void *stream)
{
    KCHECK_KV_FMT(fmt);
    if (n_seq == 0 || n_head == 0)
        return 0;
    KCHECK_HEADS(n_head, n_kv_head);
    cudaStream_t st = kstream(stream);
    if (fmt == KERN_KV_FMT_Q4) {
        KCHECK_HEAD_DIM(head_dim);
        KCHECK_PAIRS(n_seq, n_kv_head);
        KCHECK_Q4_CACHES(kc, vc);
        int rw = q4_row_words(head_dim);
        q4_slots<32> ks = {(uint32_t *)kc, head_dim, rw}, vs = {(uint32_t *)vc, head_dim, rw};
        return launch_insert(ks, vs, scores, pos, k, v, ld, self_p, seqs, n_seq, n_kv_head, cap,
                             evicted, st);
    }
    RETURN_IF(head_dim % 8, -EINVAL, "KV insert: head_dim %d is not a multiple of 8", head_dim);
    KCHECK_PAIRS(n_seq, n_kv_head);
    h16_slots ks = {(__half *)kc, head_dim}, vs = {(__half *)vc, head_dim};
    return launch_insert(ks, vs, scores, pos, k, v, ld, self_p, seqs, n_seq, n_kv_head, cap,
                         evicted, st);
}

/* kv_slots.cu: writing the slot caches: the prompt's kept tokens after
 * prefill, and the new token of a decode step into a free or evicted slot
 * (H2O eviction, where the scores live: no host round trip). */
#include "cuda_util.cuh"

#define KVP_THREADS 256
/* Tokens whose slots a block holds at once (8 KiB of shared memory): a
 * prompt of any length is done tile by tile, the running slot count
 * carried from one tile to the next. */
#define KVP_TILE 2048

/* One block per (sequence, head). Which prompt tokens are kept: all when
 * they fit the budget, else the first sinks, the last recent, and the heavy
 * highest column sums of the rest, ties keeping the newer token (rank of j
 * = how many middle tokens beat it; it depends on no other token's flag, so
 * tiles of tokens are independent). Then each kept token j goes to slot
 * (number of kept tokens before j), in position order, as the reference. */
__global__ void kv_prefill(__half *kc, __half *vc, float *scores, int32_t *pos, const __half *k,
                           const __half *v, int ld, const float *colsum, const kern_seq *seqs,
                           int n_head, int hd, int cap)
{
    __shared__ int slot_of[KVP_TILE]; /* slot of token t0 + jj, or -1 */
    int pair = blockIdx.x, s = pair / n_head, h = pair % n_head;
    kern_seq sq = seqs[s];
    int n = sq.n_new;
    if (n == 0)
        return;
    int heavy = sq.budget - sq.sinks - sq.recent, lo = sq.sinks, hi = n - sq.recent;
    const float *cs = colsum ? colsum + (size_t)sq.row * n_head + h : NULL;
    size_t base = (size_t)pair * cap;
    int hd8 = hd / 8, next = 0; /* next: slots taken so far (thread 0's count) */
    for (int t0 = 0; t0 < n; t0 += KVP_TILE) {
        int tn = min(KVP_TILE, n - t0);
        for (int jj = threadIdx.x; jj < tn; jj += blockDim.x) {
            int j = t0 + jj, keep = n <= sq.budget || j < lo || j >= hi;
            if (!keep) {
                float cj = cs ? cs[(size_t)j * n_head] : 0.0f;
                int rank = 0;
                for (int i = lo; i < hi && rank < heavy; i++) {
                    float ci = cs ? cs[(size_t)i * n_head] : 0.0f;
                    rank += ci > cj || (ci == cj && i > j);
                }
                keep = rank < heavy;
            }
            slot_of[jj] = keep;
        }
        __syncthreads(); /* keep flags of the tile complete before the prefix count */
        if (threadIdx.x == 0)
            for (int jj = 0; jj < tn; jj++)
                slot_of[jj] = slot_of[jj] && next < sq.budget ? next++ : -1;
        __syncthreads(); /* slots assigned before the copies */
        for (int x = threadIdx.x; x < tn * hd8; x += blockDim.x) {
            int jj = x / hd8, c = x % hd8, slot = slot_of[jj], j = t0 + jj;
            if (slot < 0)
                continue;
            size_t src = (size_t)(sq.row + j) * ld + (size_t)h * hd + c * 8;
            size_t dst = (base + slot) * hd + c * 8;
            *(uint4 *)(kc + dst) = *(const uint4 *)(k + src);
            *(uint4 *)(vc + dst) = *(const uint4 *)(v + src);
            if (c == 0) {
                pos[base + slot] = j;
                if (scores)
                    scores[base + slot] = cs ? cs[(size_t)j * n_head] : 0.0f;
            }
        }
        if (t0 + KVP_TILE < n) /* block-uniform */
            __syncthreads(); /* slot_of read by all before the next tile rewrites it */
    }
}

extern "C" int kern_kv_prefill_cuda(void *kc, void *vc, float *scores, int32_t *pos,
                                    const void *k, const void *v, int ld, const float *colsum,
                                    const kern_seq *seqs, int n_seq, int n_head, int head_dim,
                                    int cap, int max_new, void *stream)
{
    if (n_seq == 0 || max_new == 0)
        return 0;
    RETURN_IF(head_dim % 8, -EINVAL, "KV prefill: head_dim %d is not a multiple of 8",
              head_dim);
    KCHECK_PAIRS(n_seq, n_head);
    kv_prefill<<<(unsigned)(n_seq * n_head), KVP_THREADS, 0, kstream(stream)>>>(
        (__half *)kc, (__half *)vc, scores, pos, (const __half *)k, (const __half *)v, ld, colsum,
        seqs, n_head, head_dim, cap);
    KLAUNCHED();
    return 0;
}

/* One warp per (sequence, head). The victim is the evictable slot (not a
 * sink, not among the recent newest) with the lowest score, ties to the
 * older position; a warp argmin, then the warp copies the new K/V row. */
__global__ void kv_insert(__half *kc, __half *vc, float *scores, int32_t *pos, const __half *k,
                          const __half *v, int ld, const float *self_p, const kern_seq *seqs,
                          int n_seq, int n_head, int hd, int cap, int32_t *evicted)
{
    int pair = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (pair >= n_seq * n_head)
        return;
    int s = pair / n_head, h = pair % n_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return;
    size_t base = (size_t)pair * cap;
    int slot = sq.n_slots, gone = -1;
    if (slot >= sq.budget) {
        int best = -1;
        float bs = 0.0f;
        int bp = 0;
        for (int i = lane; i < sq.n_slots; i += 32) {
            int p = pos[base + i];
            if (p < sq.sinks || p > sq.n_past - sq.recent)
                continue;
            float si = scores ? scores[base + i] : 0.0f;
            if (best < 0 || si < bs || (si == bs && p < bp)) {
                best = i;
                bs = si;
                bp = p;
            }
        }
        for (int off = 16; off > 0; off /= 2) {
            int ob = __shfl_xor_sync(0xffffffffu, best, off);
            float os = __shfl_xor_sync(0xffffffffu, bs, off);
            int op = __shfl_xor_sync(0xffffffffu, bp, off);
            if (ob >= 0 && (best < 0 || os < bs || (os == bs && op < bp))) {
                best = ob;
                bs = os;
                bp = op;
            }
        }
        slot = best; /* >= 0: sinks + recent - 1 < budget slots are protected */
        gone = bp;
    }
    size_t src = (size_t)sq.row * ld + (size_t)h * hd, dst = (base + slot) * hd;
    for (int c = lane; c < hd / 8; c += 32) {
        *(uint4 *)(kc + dst + c * 8) = *(const uint4 *)(k + src + c * 8);
        *(uint4 *)(vc + dst + c * 8) = *(const uint4 *)(v + src + c * 8);
    }
    if (lane == 0) {
        pos[base + slot] = sq.n_past;
        if (scores)
            scores[base + slot] = self_p ? self_p[pair] : 0.0f;
        if (evicted)
            evicted[pair] = gone;
    }
}

extern "C" int kern_kv_insert_cuda(void *kc, void *vc, float *scores, int32_t *pos,
                                   const void *k, const void *v, int ld, const float *self_p,
                                   const kern_seq *seqs, int n_seq, int n_head, int head_dim,
                                   int cap, int32_t *evicted, void *stream)
{
    if (n_seq == 0 || n_head == 0)
        return 0;
    RETURN_IF(head_dim % 8, -EINVAL, "KV insert: head_dim %d is not a multiple of 8",
              head_dim);
    KCHECK_PAIRS(n_seq, n_head);
    int pairs = n_seq * n_head;
    kv_insert<<<kblocks((size_t)pairs, 4), 128, 0, kstream(stream)>>>(
        (__half *)kc, (__half *)vc, scores, pos, (const __half *)k, (const __half *)v, ld,
        self_p, seqs, n_seq, n_head, head_dim, cap, evicted);
    KLAUNCHED();
    return 0;
}

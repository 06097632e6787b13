/* kv_select.cuh: which slots the KV writers of kv_slots.cu fill, for every
 * cache format: the prompt tokens a (sequence, KV head) keeps after prefill
 * and their slots, and the slot a decode step's new token takes (free, or
 * the H2O victim). The references are kernels/cpu/slots.c's prefill_keep
 * and kern_h2o_pick_ref (DESIGN.md "H2O KV policy").
 */
#ifndef FH_KV_SELECT_CUH
#define FH_KV_SELECT_CUH

#include "cuda_util.cuh"

/* The slots of prompt tokens t0 .. t0 + tn - 1 of sq (a tile), for a block
 * of threads: slot_of[jj] = the slot of token t0 + jj, or -1 when it is not
 * kept. Kept are all tokens when the prompt fits the budget, else the first
 * sinks, the last recent and the heavy = budget - sinks - recent highest
 * column sums cs[j * n_kv_head] of the rest (cs NULL: all equal), ties keeping
 * the newer token. The rank of j (how many middle tokens beat it) depends
 * on no other token's flag, so tiles are independent. Kept tokens go to
 * slots in position order: *next counts the slots taken so far (thread 0's
 * count, carried from tile to tile). Every thread of the block must call it
 * (barriers); slot_of is complete when it returns. */
__device__ __forceinline__ void kv_keep_tile(int *slot_of, const kern_seq &sq, const float *cs,
                                             int n_kv_head, int t0, int tn, int *next)
{
    int n = sq.n_new, heavy = sq.budget - sq.sinks - sq.recent, lo = sq.sinks;
    int hi = n - sq.recent;
    for (int jj = threadIdx.x; jj < tn; jj += blockDim.x) {
        int j = t0 + jj, keep = n <= sq.budget || j < lo || j >= hi;
        if (!keep) {
            float cj = cs ? cs[(size_t)j * n_kv_head] : 0.0f;
            int rank = 0;
            for (int i = lo; i < hi && rank < heavy; i++) {
                float ci = cs ? cs[(size_t)i * n_kv_head] : 0.0f;
                rank += ci > cj || (ci == cj && i > j);
            }
            keep = rank < heavy;
        }
        slot_of[jj] = keep;
    }
    __syncthreads(); /* keep flags of the tile complete before the prefix count */
    if (threadIdx.x == 0)
        for (int jj = 0; jj < tn; jj++)
            slot_of[jj] = slot_of[jj] && *next < sq.budget ? (*next)++ : -1;
    __syncthreads(); /* slots assigned before the writes */
}

/* The slot the new token of a warp's (sequence, KV head) goes to: n_slots
 * while the budget has room, else the evictable slot (not a sink, not
 * among the recent newest) of lowest score, ties to the older position; a
 * warp argmin over scores, pos (the pair's cap entries; scores NULL: all
 * zero). *gone = the evicted position, or -1. Every lane of the warp must
 * call it and gets the same answer. */
__device__ __forceinline__ int kv_insert_slot(const float *scores, const int32_t *pos,
                                              const kern_seq &sq, int lane, int *gone)
{
    *gone = -1;
    if (sq.n_slots < sq.budget)
        return sq.n_slots;
    int best = -1;
    float bs = 0.0f;
    int bp = 0;
    for (int i = lane; i < sq.n_slots; i += 32) {
        int p = pos[i];
        if (p < sq.sinks || p > sq.n_past - sq.recent)
            continue;
        float si = scores ? scores[i] : 0.0f;
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
    *gone = bp;
    return best; /* >= 0: sinks + recent - 1 < budget slots are protected */
}

#endif

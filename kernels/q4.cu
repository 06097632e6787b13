/* q4.cu: 4-bit group-wise compression on the GPU (kern.h's format; the
 * plain-C reference is kernels/cpu/q4.c, the slot-cache references
 * kernels/cpu/slot_ops.h's _q4 instance).
 *
 * Every kernel works in "octets": 8 consecutive values of a row, which are
 * one 32-bit code word of a block (value 8o + i in bits 4i..4i+3 of word
 * 1 + o, little-endian) plus the block's header word (scale | min << 16).
 * A block is 9 words, so rows and blocks are 4-byte aligned whenever the
 * buffer is, and all code/header accesses are 32-bit.
 *
 *   block  | w0: scale, min | w1: octet 0 | w2: octet 1 | ... | w8: octet 7 |
 *   lane o reads w0 and w(1 + o % 8) of block o / 8 -> 8 values
 *
 * Dequantize (weights, before each GEMM): one thread per octet, two 32-bit
 *   loads, one 16-byte store; a warp writes 512 contiguous bytes. The value
 *   is min + code * scale as __fmul_rn then __fadd_rn (no contraction), the
 *   fp32 value of q4.c, then rounded to fp16.
 * Decode attention reads the 4-bit cache in place: attention.cu's three
 *   passes (a group of G lanes per row, 8 values per lane), templated here
 *   on a row loader that gives a lane its octet of a slot, or of the new
 *   token's fp16 row; same fixed summation order, no atomics, same H2O
 *   score accumulation.
 * Writers (prefill's kept tokens, a decode step's new token) quantize an
 *   fp16 row from its fp32 value exactly as q4.c does: the 8 lanes of a
 *   block reduce min and max by xor shuffles, keeping the first index among
 *   equal values (what q4.c's sequential strict-compare scan keeps, which
 *   decides the sign of a zero min or max), then each lane writes its own
 *   code word with the same '/', rint and clamp (__fdiv_rn, so the bytes
 *   equal q4.c's whatever the nvcc math flags). For finite inputs the
 *   blocks are byte-identical to kern_q4_quantize_h16 of the same rows.
 *
 * The prefill selection, the eviction pick and the decode passes are
 * copies of kv_slots.cu's and attention.cu's (only the row reads and
 * writes differ); a change to one side must be made to both, which
 * tests/test_kern_cuda.c checks against the same CPU references.
 */
#include <limits.h>

#include "cuda_util.cuh"

#define Q4_WORDS (KERN_Q4_BLOCK / 4) /* 32-bit words per block */

static_assert(KERN_Q4_GROUP == 64 && KERN_Q4_BLOCK == 36,
              "q4.cu assumes 8 octets of codes + one header word per block");

/* The 4-bit caches are read and written in 32-bit words. */
#define KCHECK_Q4_CACHES(kc, vc)                                                       \
    RETURN_IF((uintptr_t)(kc) % 4 || (uintptr_t)(vc) % 4, -EINVAL,                     \
              "4-bit KV caches must be 4-byte aligned (K at %p, V at %p)", (kc), (vc))

/* The 8 values of an octet from its block's header word and code word. */
__device__ __forceinline__ void q4_octet(uint32_t head, uint32_t codes, float f[8])
{
    float sc = __half2float(__ushort_as_half((unsigned short)(head & 0xffffu)));
    float mn = __half2float(__ushort_as_half((unsigned short)(head >> 16)));
#pragma unroll
    for (int i = 0; i < 8; i++)
        f[i] = __fadd_rn(mn, __fmul_rn((float)((codes >> (4 * i)) & 15u), sc));
}

/* ---------------------------------------------------------- dequantize */

/* dst row r, octet j <- src row r (row_words words), octet j. N8 > 0 fixes
 * the octets per row at compile time (whole groups: the matrix is then one
 * flat run of blocks, see the host side); 0 takes n8 at run time. */
template <int N8>
__global__ void q4_dequant_vec(__half *dst, const uint32_t *src, size_t n_oct, int n8,
                               size_t n, size_t row_words)
{
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_oct; i += stride) {
        size_t per = N8 > 0 ? (size_t)N8 : (size_t)n8;
        size_t r = i / per;
        int j = (int)(i - r * per);
        const uint32_t *blk = src + r * row_words + (size_t)(j / 8) * Q4_WORDS;
        float f[8];
        q4_octet(blk[0], blk[1 + j % 8], f);
        store8(dst + r * n + (size_t)j * 8, f);
    }
}

/* Any n and alignment: one value per thread, byte loads, 2-byte stores. */
__global__ void q4_dequant_any(__half *dst, const uint8_t *src, size_t count, size_t n,
                               size_t row_bytes)
{
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        size_t r = i / n, e = i - r * n;
        const uint8_t *blk = src + r * row_bytes + (e / KERN_Q4_GROUP) * KERN_Q4_BLOCK;
        unsigned short hs = (unsigned short)(blk[0] | blk[1] << 8);
        unsigned short hm = (unsigned short)(blk[2] | blk[3] << 8);
        size_t g = e % KERN_Q4_GROUP;
        unsigned q = (blk[4 + g / 2] >> (4 * (g & 1))) & 15u;
        float v = __fadd_rn(__half2float(__ushort_as_half(hm)),
                            __fmul_rn((float)q, __half2float(__ushort_as_half(hs))));
        dst[i] = __float2half_rn(v);
    }
}

#define DQ_THREADS 256
#define DQ_MAX_BLOCKS (1u << 18) /* then each thread loops (grid stride) */

static unsigned dq_blocks(size_t work)
{
    unsigned b = kblocks(work, DQ_THREADS);
    return b < DQ_MAX_BLOCKS ? b : DQ_MAX_BLOCKS;
}

extern "C" int kern_q4_dequant_cuda(void *dst, const void *src, size_t rows, int n,
                                    void *stream)
{
    if (rows == 0 || n <= 0)
        return 0;
    cudaStream_t st = kstream(stream);
    size_t nb = (size_t)(n + KERN_Q4_GROUP - 1) / KERN_Q4_GROUP;
    int vec = n % 8 == 0 && (uintptr_t)dst % 16 == 0 && (uintptr_t)src % 4 == 0;
    if (vec && n % KERN_Q4_GROUP == 0) {
        /* whole groups: block b of the matrix expands to dst[64 b, 64 b + 64),
         * so rows and blocks are the same thing and no division is needed */
        size_t n_oct = rows * nb * 8;
        q4_dequant_vec<8><<<dq_blocks(n_oct), DQ_THREADS, 0, st>>>(
            (__half *)dst, (const uint32_t *)src, n_oct, 8, KERN_Q4_GROUP, Q4_WORDS);
    } else if (vec) {
        size_t n_oct = rows * (size_t)(n / 8);
        q4_dequant_vec<0><<<dq_blocks(n_oct), DQ_THREADS, 0, st>>>(
            (__half *)dst, (const uint32_t *)src, n_oct, n / 8, (size_t)n, nb * Q4_WORDS);
    } else {
        size_t count = rows * (size_t)n;
        q4_dequant_any<<<dq_blocks(count), DQ_THREADS, 0, st>>>(
            (__half *)dst, (const uint8_t *)src, count, (size_t)n, nb * KERN_Q4_BLOCK);
    }
    KLAUNCHED();
    return 0;
}

/* ------------------------------------------------------------ quantize */

/* A running min (or max) with the index of the value it came from; idx
 * INT_MAX: no value yet. */
struct q4_ext {
    float v;
    int idx;
};

/* Keep b over a when b is a value and beats a, or equals it from an earlier
 * index: the result is the first occurrence of the extreme, as q4.c's
 * sequential strict-compare scan gives (for non-NaN values). */
template <bool MAX>
__device__ __forceinline__ q4_ext q4_better(q4_ext a, q4_ext b)
{
    bool take = b.idx != INT_MAX &&
                (a.idx == INT_MAX || (MAX ? b.v > a.v : b.v < a.v) ||
                 (b.v == a.v && b.idx < a.idx));
    return take ? b : a;
}

/* Merge over the 8 lanes of a block (aligned within the warp). */
template <bool MAX>
__device__ __forceinline__ q4_ext q4_block_reduce(q4_ext e)
{
#pragma unroll
    for (int off = 1; off < 8; off *= 2) {
        q4_ext o;
        o.v = __shfl_xor_sync(0xffffffffu, e.v, off);
        o.idx = __shfl_xor_sync(0xffffffffu, e.idx, off);
        e = q4_better<MAX>(e, o);
    }
    return e;
}

/* Quantize one fp16 row src(hd) into the q4 row dst (kern_q4_row_bytes(hd)
 * bytes, 4-byte aligned) with the L lanes of a group (L >= 8 * blocks,
 * gl = lane % L): lane gl owns octet gl, i.e. code word gl % 8 of block
 * gl / 8, and writes it (zero for the unused octets of a short last group);
 * lane 8b writes block b's header. Every lane of the warp must call it (the
 * block reductions shuffle); a group with nothing to write this round
 * passes put = false. */
template <int L>
__device__ void q4_put_row(uint32_t *dst, const __half *src, int hd, int gl, bool put)
{
    int hd8 = hd / 8, n_words = (hd + KERN_Q4_GROUP - 1) / KERN_Q4_GROUP * 8;
    bool has = put && gl < hd8;
    float x[8] = {0};
    q4_ext mn = {0.0f, INT_MAX}, mx = {0.0f, INT_MAX};
    if (has) {
        load8(src + gl * 8, x);
        mn = mx = q4_ext{x[0], gl * 8};
#pragma unroll
        for (int i = 1; i < 8; i++) { /* in index order: strict compares keep the first */
            if (x[i] < mn.v)
                mn = q4_ext{x[i], gl * 8 + i};
            if (x[i] > mx.v)
                mx = q4_ext{x[i], gl * 8 + i};
        }
    }
    mn = q4_block_reduce<false>(mn);
    mx = q4_block_reduce<true>(mx);
    /* q4.c: scale = fp16((mx - mn) / 15), min = fp16(mn) */
    __half hs = __float2half_rn(__fdiv_rn(__fsub_rn(mx.v, mn.v), 15.0f));
    __half hm = __float2half_rn(mn.v);
    float sc = __half2float(hs), mr = __half2float(hm);
    uint32_t codes = 0;
    if (has && sc > 0.0f) { /* not > 0: a constant group, all codes 0 */
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float c = rintf(__fdiv_rn(__fsub_rn(x[i], mr), sc));
            uint32_t q = c < 0.0f ? 0u : c > 15.0f ? 15u : (uint32_t)c;
            codes |= q << (4 * i);
        }
    }
    if (put && gl < n_words) {
        uint32_t *blk = dst + (gl / 8) * Q4_WORDS;
        blk[1 + gl % 8] = codes;
        if (gl % 8 == 0)
            blk[0] = (uint32_t)__half_as_ushort(hs) | (uint32_t)__half_as_ushort(hm) << 16;
    }
}

/* Lanes per written row: 8 per block of the row. */
#define Q4_DISPATCH_L(hd, F, ...)                                                      \
    ((hd) <= 64 ? F<8>(__VA_ARGS__) : (hd) <= 128 ? F<16>(__VA_ARGS__) : F<32>(__VA_ARGS__))

/* ------------------------------------------------------------- prefill */

#define KVP_THREADS 256
#define KVP_TILE 2048 /* kv_slots.cu's tile of tokens */

/* kv_slots.cu's kv_prefill with 4-bit rows: one block per (sequence, head),
 * tiles of KVP_TILE tokens; the keep flags and the slot of each kept token
 * are computed by the same code (first sinks, last recent, heavy highest
 * column sums, ties keeping the newer token; slots in position order), then
 * each group of L lanes quantizes a kept token's K and V rows into its
 * slot. */
template <int L>
__global__ void kv_prefill_q4(uint32_t *kc, uint32_t *vc, float *scores, int32_t *pos,
                              const __half *k, const __half *v, int ld, const float *colsum,
                              const kern_seq *seqs, int n_head, int hd, int cap)
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
    size_t rw = (size_t)(hd + KERN_Q4_GROUP - 1) / KERN_Q4_GROUP * Q4_WORDS; /* words per row */
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, grp = lane / L, gl = lane % L;
    const int R = 32 / L, NW = KVP_THREADS / 32;
    int next = 0; /* slots taken so far (thread 0's count) */
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
        __syncthreads(); /* slots assigned before the writes */
        for (int j0 = warp * R; j0 < tn; j0 += NW * R) { /* warp-uniform: q4_put_row shuffles */
            int jj = j0 + grp, slot = jj < tn ? slot_of[jj] : -1, j = t0 + jj;
            bool put = slot >= 0;
            size_t src = (size_t)(sq.row + (put ? j : 0)) * ld + (size_t)h * hd;
            size_t dst = (base + (put ? slot : 0)) * rw;
            q4_put_row<L>(kc + dst, k + src, hd, gl, put);
            q4_put_row<L>(vc + dst, v + src, hd, gl, put);
            if (put && gl == 0) {
                pos[base + slot] = j;
                if (scores)
                    scores[base + slot] = cs ? cs[(size_t)j * n_head] : 0.0f;
            }
        }
        if (t0 + KVP_TILE < n) /* block-uniform */
            __syncthreads(); /* slot_of read by all before the next tile rewrites it */
    }
}

template <int L>
static int launch_kv_prefill_q4(void *kc, void *vc, float *scores, int32_t *pos, const void *k,
                                const void *v, int ld, const float *colsum, const kern_seq *seqs,
                                int n_seq, int n_head, int hd, int cap, cudaStream_t st)
{
    kv_prefill_q4<L><<<(unsigned)(n_seq * n_head), KVP_THREADS, 0, st>>>(
        (uint32_t *)kc, (uint32_t *)vc, scores, pos, (const __half *)k, (const __half *)v, ld,
        colsum, seqs, n_head, hd, cap);
    KLAUNCHED();
    return 0;
}

extern "C" int kern_kv_prefill_q4_cuda(void *kc, void *vc, float *scores, int32_t *pos,
                                       const void *k, const void *v, int ld,
                                       const float *colsum, const kern_seq *seqs, int n_seq,
                                       int n_head, int head_dim, int cap, int max_new,
                                       void *stream)
{
    if (n_seq == 0 || max_new == 0)
        return 0;
    KCHECK_HEAD_DIM(head_dim);
    KCHECK_PAIRS(n_seq, n_head);
    KCHECK_Q4_CACHES(kc, vc);
    return Q4_DISPATCH_L(head_dim, launch_kv_prefill_q4, kc, vc, scores, pos, k, v, ld, colsum,
                         seqs, n_seq, n_head, head_dim, cap, kstream(stream));
}

/* -------------------------------------------------------------- insert */

/* kv_slots.cu's kv_insert with a 4-bit row: one warp per (sequence,
 * head); the same warp argmin picks the slot (free, or the evictable one
 * of lowest score, ties to the older position), then the warp quantizes
 * the new K and V rows into it, lane o owning octet o. */
__global__ void kv_insert_q4(uint32_t *kc, uint32_t *vc, float *scores, int32_t *pos,
                             const __half *k, const __half *v, int ld, const float *self_p,
                             const kern_seq *seqs, int n_seq, int n_head, int hd, int cap,
                             int32_t *evicted)
{
    int pair = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (pair >= n_seq * n_head)
        return; /* whole warp */
    int s = pair / n_head, h = pair % n_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return; /* whole warp */
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
    size_t rw = (size_t)(hd + KERN_Q4_GROUP - 1) / KERN_Q4_GROUP * Q4_WORDS;
    size_t src = (size_t)sq.row * ld + (size_t)h * hd, dst = (base + slot) * rw;
    q4_put_row<32>(kc + dst, k + src, hd, lane, true);
    q4_put_row<32>(vc + dst, v + src, hd, lane, true);
    if (lane == 0) {
        pos[base + slot] = sq.n_past;
        if (scores)
            scores[base + slot] = self_p ? self_p[pair] : 0.0f;
        if (evicted)
            evicted[pair] = gone;
    }
}

extern "C" int kern_kv_insert_q4_cuda(void *kc, void *vc, float *scores, int32_t *pos,
                                      const void *k, const void *v, int ld, const float *self_p,
                                      const kern_seq *seqs, int n_seq, int n_head, int head_dim,
                                      int cap, int32_t *evicted, void *stream)
{
    if (n_seq == 0 || n_head == 0)
        return 0;
    KCHECK_HEAD_DIM(head_dim);
    KCHECK_PAIRS(n_seq, n_head);
    KCHECK_Q4_CACHES(kc, vc);
    int pairs = n_seq * n_head;
    kv_insert_q4<<<kblocks((size_t)pairs, 4), 128, 0, kstream(stream)>>>(
        (uint32_t *)kc, (uint32_t *)vc, scores, pos, (const __half *)k, (const __half *)v, ld,
        self_p, seqs, n_seq, n_head, head_dim, cap, evicted);
    KLAUNCHED();
    return 0;
}

/* -------------------------------------------------------------- decode
 * attention.cu's decode, passes 1-3 unchanged but for where a lane's 8
 * values of row t come from (the Rows loader below); the same launch
 * geometry (pairs on gridDim.x, chunks looped over gridDim.y). */

#define DEC_WARPS 4
#define DEC_CHUNK 256

/* Work layout of one decode call, for n_pairs (sequence, head) pairs. */
struct dec_work {
    float *logit;   /* (n_pairs, cap + 1) */
    float *stat;    /* (n_pairs, n_chunks, 2) max, sum exp */
    float *partial; /* (n_pairs, n_chunks, hd) */
};

static int dec_chunks(int cap) { return (cap + 1 + DEC_CHUNK - 1) / DEC_CHUNK; }

static dec_work dec_carve(void *work, int n_pairs, int cap)
{
    dec_work w;
    size_t nc = (size_t)dec_chunks(cap);
    w.logit = (float *)work;
    w.stat = w.logit + (size_t)n_pairs * (cap + 1);
    w.partial = w.stat + (size_t)n_pairs * nc * 2;
    return w;
}

extern "C" size_t kern_attn_decode_q4_work(int n_seq, int n_head, int head_dim, int cap)
{
    size_t np = (size_t)n_seq * n_head, nc = (size_t)dec_chunks(cap);
    return sizeof(float) * (np * (cap + 1) + np * nc * 2 + np * nc * head_dim);
}

/* Row loader of a 4-bit cache: lane gl's 8 values of row t of the virtual
 * cache, a slot (t < n) or the new token's fp16 row `fresh` (t == n). */
struct q4_rows {
    const uint32_t *c;
    int rw; /* words per row */
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

/* attention.cu's decode_pass1: block (pair, chunk c) for c = blockIdx.y,
 * blockIdx.y + gridDim.y, ... < n_chunks. */
template <int G, class Rows>
__global__ void dec_pass1(const __half *q, const __half *k, int ld, Rows kc,
                          const kern_seq *seqs, int n_head, int hd, int cap, float scale,
                          dec_work w, int n_chunks)
{
    __shared__ float red[DEC_WARPS][2];
    int pair = blockIdx.x, s = pair / n_head, h = pair % n_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return;
    int n = sq.n_slots, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int grp = lane / G, gl = lane % G, hd8 = hd / 8;
    const int R = 32 / G;
    size_t hc = (size_t)h * hd, base = (size_t)pair * cap;
    float qf[8] = {0};
    if (gl < hd8)
        load8(q + (size_t)sq.row * ld + hc + gl * 8, qf);
    const __half *knew = k + (size_t)sq.row * ld + hc;
    for (int c = blockIdx.y; c < n_chunks; c += gridDim.y) {
        float m = -INFINITY, l = 0.0f;
        int end = min(c * DEC_CHUNK + DEC_CHUNK, n + 1);
        for (int t0 = c * DEC_CHUNK + warp * R; t0 < end; t0 += DEC_WARPS * R) { /* warp-uniform */
            int t = t0 + grp;
            float d = 0.0f;
            if (gl < hd8) { /* groups past the end compute on row t0 and discard it */
                float kf[8];
                kc.get8(knew, base, t < end ? t : t0, n, gl, kf);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    d += qf[i] * kf[i];
            }
            float sc = group_sum<G>(d) * scale;
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
            for (int i = 0; i < DEC_WARPS; i++)
                M = fmaxf(M, red[i][0]);
            for (int i = 0; i < DEC_WARPS; i++)
                L += red[i][0] == -INFINITY ? 0.0f : red[i][1] * __expf(red[i][0] - M);
            float *st = w.stat + ((size_t)pair * n_chunks + c) * 2;
            st[0] = M;
            st[1] = L;
        }
        if (c + gridDim.y < n_chunks) /* block-uniform */
            __syncthreads(); /* thread 0 has read red before the next chunk rewrites it */
    }
}

/* attention.cu's decode_pass2, the grid of dec_pass1. */
template <int G, class Rows>
__global__ void dec_pass2(const __half *v, int ld, Rows vc, const kern_seq *seqs, int n_head,
                          int hd, int cap, float *scores, float *self_p, dec_work w,
                          int n_chunks)
{
    extern __shared__ float acc[]; /* (DEC_WARPS * 32 / G, hd) */
    int pair = blockIdx.x, s = pair / n_head, h = pair % n_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return;
    int n = sq.n_slots, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int grp = lane / G, gl = lane % G, hd8 = hd / 8;
    const int R = 32 / G;
    size_t base = (size_t)pair * cap;
    /* global max and sum over the chunks, the same order in every block */
    float M = -INFINITY, L = 0.0f;
    const float *st = w.stat + (size_t)pair * n_chunks * 2;
    int used = (n + 1 + DEC_CHUNK - 1) / DEC_CHUNK;
    for (int i = 0; i < used; i++)
        M = fmaxf(M, st[2 * i]);
    for (int i = 0; i < used; i++)
        L += st[2 * i + 1] * __expf(st[2 * i] - M);
    float invL = 1.0f / L;
    const __half *vnew = v + (size_t)sq.row * ld + (size_t)h * hd;
    for (int c = blockIdx.y; c < n_chunks; c += gridDim.y) {
        float o[8] = {0};
        int end = min(c * DEC_CHUNK + DEC_CHUNK, n + 1);
        for (int t = c * DEC_CHUNK + warp * R + grp; t < end; t += DEC_WARPS * R) {
            float p = __expf(w.logit[(size_t)pair * (cap + 1) + t] - M) * invL;
            if (gl == 0) {
                if (t < n) {
                    if (scores)
                        scores[base + t] += p; /* slot t belongs to this group alone */
                } else if (self_p) {
                    self_p[pair] = p;
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
            for (int g = 0; g < DEC_WARPS * R; g++)
                sum += acc[(size_t)g * hd + e];
            w.partial[((size_t)pair * n_chunks + c) * hd + e] = sum;
        }
        if (c + gridDim.y < n_chunks) /* block-uniform */
            __syncthreads(); /* acc read by all before the next chunk rewrites it */
    }
}

__global__ void dec_pass3(__half *out, int ldo, const kern_seq *seqs, int n_head, int hd,
                          int n_chunks, dec_work w)
{
    int pair = blockIdx.x, s = pair / n_head, h = pair % n_head;
    kern_seq sq = seqs[s];
    if (sq.n_new == 0)
        return;
    int used = (sq.n_slots + 1 + DEC_CHUNK - 1) / DEC_CHUNK;
    for (int e = threadIdx.x; e < hd; e += blockDim.x) {
        float sum = 0.0f;
        for (int c = 0; c < used; c++)
            sum += w.partial[((size_t)pair * n_chunks + c) * hd + e];
        out[(size_t)sq.row * ldo + (size_t)h * hd + e] = __float2half_rn(sum);
    }
}

template <int G>
static int launch_decode_q4(void *out, int ldo, const void *q, const void *k, const void *v,
                            int ld, const void *kc, const void *vc, const kern_seq *seqs,
                            int n_seq, int n_head, int hd, int cap, float scale, float *scores,
                            float *self_p, void *work, int max_slots, cudaStream_t st)
{
    unsigned pairs = (unsigned)(n_seq * n_head);
    dec_work w = dec_carve(work, (int)pairs, cap);
    int rw = (hd + KERN_Q4_GROUP - 1) / KERN_Q4_GROUP * Q4_WORDS;
    q4_rows kr = {(const uint32_t *)kc, rw}, vr = {(const uint32_t *)vc, rw};
    /* the grid covers the longest sequence (chunks past a shorter one's
     * slots do no work); stats and partials use n_chunks as their stride */
    int n_chunks = (max_slots + 1 + DEC_CHUNK - 1) / DEC_CHUNK;
    dim3 grid(pairs, kgrid_y((size_t)n_chunks));
    dec_pass1<G, q4_rows><<<grid, 32 * DEC_WARPS, 0, st>>>(
        (const __half *)q, (const __half *)k, ld, kr, seqs, n_head, hd, cap, scale, w, n_chunks);
    KLAUNCHED();
    size_t smem = sizeof(float) * (size_t)DEC_WARPS * (32 / G) * hd;
    dec_pass2<G, q4_rows><<<grid, 32 * DEC_WARPS, smem, st>>>(
        (const __half *)v, ld, vr, seqs, n_head, hd, cap, scores, self_p, w, n_chunks);
    KLAUNCHED();
    dec_pass3<<<pairs, hd < 128 ? 128 : hd, 0, st>>>((__half *)out, ldo, seqs, n_head, hd,
                                                     n_chunks, w);
    KLAUNCHED();
    return 0;
}

extern "C" int kern_attn_decode_q4_cuda(void *out, int ldo, const void *q, const void *k,
                                        const void *v, int ld, const void *kc, const void *vc,
                                        const kern_seq *seqs, int n_seq, int n_head,
                                        int head_dim, int cap, float scale, float *scores,
                                        float *self_p, void *work, int max_slots, void *stream)
{
    if (n_seq == 0)
        return 0;
    KCHECK_HEAD_DIM(head_dim);
    KCHECK_PAIRS(n_seq, n_head);
    KCHECK_Q4_CACHES(kc, vc);
    RETURN_IF(max_slots > cap, -EINVAL, "max_slots %d > cap %d", max_slots, cap);
    return KERN_DISPATCH_G(head_dim, launch_decode_q4, out, ldo, q, k, v, ld, kc, vc, seqs,
                           n_seq, n_head, head_dim, cap, scale, scores, self_p, work, max_slots,
                           kstream(stream));
}

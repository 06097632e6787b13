/* q4.cuh: kern.h's 4-bit group format on the GPU, for the kernels that
 * read or write it: weight expansion (q4.cu), decode attention over a 4-bit
 * KV cache (attention.cu) and the KV writers (kv_slots.cu). The plain-C
 * reference is kernels/cpu/q4.c.
 *
 * Kernels work in "octets": 8 consecutive values of a row, which are one
 * 32-bit code word of a block (value 8o + i in bits 4i..4i+3 of word
 * 1 + o, little-endian) plus the block's header word (scale | min << 16).
 * A block is 9 words, so rows and blocks are 4-byte aligned whenever the
 * buffer is, and all code/header accesses are 32-bit.
 *
 *   block  | w0: scale, min | w1: octet 0 | w2: octet 1 | ... | w8: octet 7 |
 *   lane o reads w0 and w(1 + o % 8) of block o / 8 -> 8 values
 *
 * A value is min + code * scale as __fmul_rn then __fadd_rn (no
 * contraction): the fp32 value of q4.c. A row is quantized from the fp32
 * value of its fp16 elements exactly as q4.c does (q4_put_row), so that
 * for finite inputs the blocks are byte-identical to
 * kern_q4_quantize_h16's.
 */
#ifndef FH_Q4_CUH
#define FH_Q4_CUH

#include <limits.h>

#include "cuda_util.cuh"

#define Q4_WORDS (KERN_Q4_BLOCK / 4) /* 32-bit words per block */

static_assert(KERN_Q4_GROUP == 64 && KERN_Q4_BLOCK == 36,
              "the 4-bit kernels assume 8 octets of codes + one header word per block");

/* 32-bit words of a row of hd values. */
static inline int q4_row_words(int hd)
{
    return (hd + KERN_Q4_GROUP - 1) / KERN_Q4_GROUP * Q4_WORDS;
}

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

/* ------------------------------------------------------------ quantize
 * The 8 lanes of a block reduce min and max by xor shuffles, keeping the
 * first index among equal values (what q4.c's sequential strict-compare
 * scan keeps, which decides the sign of a zero min or max), then each lane
 * writes its own code word with the same '/', rint and clamp (__fdiv_rn,
 * so the bytes equal q4.c's whatever the nvcc math flags). */

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

#endif

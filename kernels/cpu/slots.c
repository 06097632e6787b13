/* slots.c: the slot caches, plain-C reference of attention.cu's decode
 * attention and of kv_slots.cu: attention of each decode step over the kept
 * slots, the prompt's kept tokens after prefill, and each decode step's new
 * token into a free slot or over the H2O victim (kern_h2o_pick_ref). The
 * bodies are slot_ops.h, instantiated for fp32 caches (the _ref functions),
 * fp16 caches in host memory (the _h16 functions of CPU attention), bf16
 * caches (the _bf16 functions of the CPU backend under bf16 matmuls) and
 * 4-bit caches (the _q4 functions of compress_cache).
 */
#include "../kern.h"

#include <assert.h>
#include <errno.h>
#include <omp.h>
#include <string.h>

#include "cpu_common.h"

size_t kern_kv_prefill_scratch_bytes(int max_new, int n_threads)
{
    return ((size_t)max_new + 1) * (size_t)n_threads; /* a keep flag per prompt token */
}

size_t kern_attn_decode_scratch_bytes(int cap, int n_threads)
{
    /* a probability per slot and the new token */
    return sizeof(float) * ((size_t)cap + 1) * (size_t)n_threads;
}

/* Which prompt tokens a (sequence, head) keeps when the prompt exceeds the
 * budget: keep[j] = 1 for the first sinks, the last recent and the heavy
 * highest colsum of the rest; ties keep the newer token (the older one is
 * what H2O evicts). cs: colsum of the sequence's rows for this head,
 * stride n_kv_head, or NULL (all scores equal: the newest are kept). */
static void prefill_keep(unsigned char *keep, const float *cs, int stride,
                         int n, const kern_seq *sq)
{
    int heavy = sq->budget - sq->sinks - sq->recent;
    for (int j = 0; j < n; j++)
        keep[j] = j < sq->sinks || j >= n - sq->recent;
    for (int taken = 0; taken < heavy; taken++) {
        int best = -1;
        for (int j = sq->sinks; j < n - sq->recent; j++)
            if (!keep[j] && (best < 0 || (cs ? cs[(size_t)j * stride] >= cs[(size_t)best * stride]
                                               : 1)))
                best = j;
        if (best < 0)
            break;
        keep[best] = 1;
    }
}

/* Row helpers of a cache of plain elements read with LD and written with
 * ST (the fp32 and fp16 instances). */
#define SLOT_ELEMENT_HELPERS(FN, T, LD, ST)                                  \
    static float FN(dot_cache)(const float *q, const T *c, int n)             \
    {                                                                         \
        float acc[DOT_LANES] = {0};                                           \
        DOT_LANES_OF(acc, q, c, n, LD);                                       \
        return dot_lanes_sum(acc);                                            \
    }                                                                         \
    static void FN(axpy_row)(float *o, float p, const T *c, int n)            \
    {                                                                         \
        for (int e = 0; e < n; e++)                                           \
            o[e] += p * LD(&c[e]);                                            \
    }                                                                         \
    static void FN(put_row)(T *dst, const float *src, int n)                  \
    {                                                                         \
        for (int e = 0; e < n; e++)                                           \
            ST(&dst[e], src[e]);                                              \
    }

/* fp32 caches: the reference and the CPU backend */
#define SLOT_T float
#define SLOT_FN(n) n##_ref
#define SLOT_ROW(c, i, n) ((c) + (size_t)(i) * (size_t)(n))
SLOT_ELEMENT_HELPERS(SLOT_FN, float, f32_ld, f32_st)
#include "slot_ops.h"
#undef SLOT_T
#undef SLOT_FN

/* fp16 caches (the CUDA backend's storage type) in host memory */
static inline float h16_ld(const uint16_t *p) { return kern_f16_to_f32(*p); }
static inline void h16_st(uint16_t *p, float x) { *p = kern_f32_to_f16(x); }

#define SLOT_T uint16_t
#define SLOT_FN(n) n##_h16
SLOT_ELEMENT_HELPERS(SLOT_FN, uint16_t, h16_ld, h16_st)
#include "slot_ops.h"
#undef SLOT_T
#undef SLOT_FN

/* bf16 caches (the CPU backend under bf16 matmuls): read exactly, written
 * rounded to nearest even as kern_round_bf16_ref */
static inline float bf16_ld(const uint16_t *p)
{
    uint32_t u = (uint32_t)*p << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline void bf16_st(uint16_t *p, float x) { kern_round_bf16_ref(p, &x, 1); }

#define SLOT_T uint16_t
#define SLOT_FN(n) n##_bf16
SLOT_ELEMENT_HELPERS(SLOT_FN, uint16_t, bf16_ld, bf16_st)
#include "slot_ops.h"
#undef SLOT_T
#undef SLOT_FN
#undef SLOT_ROW

/* 4-bit caches (compress_cache): a row is dequantized into fp32 and then
 * used exactly as the fp32 instance uses a row, so the result is the fp32
 * op's over the dequantized cache; a written row is quantized. */
#define Q4_MAX_HD 1024

static float dot_cache_q4(const float *q, const uint8_t *c, int n)
{
    assert(n <= Q4_MAX_HD);
    float row[Q4_MAX_HD];
    kern_q4_dequant_row(row, c, n);
    return dot_cache_ref(q, row, n);
}

static void axpy_row_q4(float *o, float p, const uint8_t *c, int n)
{
    assert(n <= Q4_MAX_HD);
    float row[Q4_MAX_HD];
    kern_q4_dequant_row(row, c, n);
    axpy_row_ref(o, p, row, n);
}

static void put_row_q4(uint8_t *dst, const float *src, int n)
{
    kern_q4_quantize_row(dst, src, n);
}

#define SLOT_T uint8_t
#define SLOT_FN(n) n##_q4
#define SLOT_ROW(c, i, n) ((c) + (size_t)(i) * kern_q4_row_bytes(n))
#include "slot_ops.h"

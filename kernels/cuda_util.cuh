/* cuda_util.cuh: what every kernels/<op>.cu shares: the checking macro
 * that keeps the failing call as text, launch-geometry limits, fp16 vector
 * loads, the block-wide sum of the row norms, and the "group of lanes per
 * row" dot product used by the attention kernels. */
#ifndef FH_CUDA_UTIL_CUH
#define FH_CUDA_UTIL_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdint.h>

#include "err.h"
#include "kern.h"

/* The one check of a CUDA status in the kernels' host code: on failure
 * record, through err_set() like the rest of flexh2o, what failed (the call
 * as text), in which function and where, and the reason, and return
 * -ENOMEM (out of device memory) or -EIO. Arguments a kernel does not
 * support are refused with err.h's RETURN_IF. */
#define KCHECK_AS(call, what)                                                          \
    do {                                                                               \
        cudaError_t kc_e_ = (call);                                                    \
        RETURN_IF(kc_e_ != cudaSuccess, kc_e_ == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, \
                  "CUDA: %s in %s (%s:%d): %s", (what), __func__, __FILE__, __LINE__,  \
                  cudaGetErrorString(kc_e_));                                          \
    } while (0)
#define KCHECK(call) KCHECK_AS(call, #call)
/* After a <<<launch>>>: configuration errors show up here (and
 * cudaGetLastError clears them, so they do not resurface later). */
#define KLAUNCHED() KCHECK_AS(cudaGetLastError(), "the kernel launch")

/* Launch geometry. gridDim.x may reach 2^31 - 1, gridDim.y only 65535:
 * kernels put the (sequence, head) pairs on x and loop over the y index
 * (chunks of slots or of query rows) with a stride of gridDim.y, so any
 * batch fits. kgrid_y gives the y extent for n blocks' worth of work. */
#define KERN_GRID_Y_MAX 65535u
unsigned kern_grid_y_max(void); /* KERN_GRID_Y_MAX, or kern_cuda_set_grid_y_max's */
static inline unsigned kgrid_y(size_t n)
{
    unsigned mx = kern_grid_y_max();
    return n == 0 ? 1u : n < mx ? (unsigned)n : mx;
}
/* The (sequence, head) pairs of a call must fit gridDim.x and an int. */
#define KCHECK_PAIRS(n_seq, n_head)                                                    \
    RETURN_IF((long long)(n_seq) * (n_head) > 0x7fffffffLL, -EINVAL,                   \
              "%d sequences x %d heads is more than 2^31 - 1 (sequence, head) pairs "  \
              "in one call; lower the GPU batch size", (n_seq), (n_head))
/* The head counts of an attention or KV op: n_kv_head >= 1 KV heads, each
 * shared by n_head / n_kv_head query heads (grouped-query attention). */
#define KCHECK_HEADS(n_head, n_kv_head)                                                \
    RETURN_IF((n_kv_head) < 1 || (n_head) < (n_kv_head) || (n_head) % (n_kv_head),     \
              -EINVAL, "internal: %d query heads over %d KV heads (the CUDA attention " \
              "kernels need a positive multiple)", (n_head), (n_kv_head))
/* The head_dim limit of the attention kernels (a lane holds 8 values, a
 * warp at most 32 lanes per row). */
#define KCHECK_HEAD_DIM(hd)                                                            \
    RETURN_IF((hd) % 8 || (hd) < 8 || (hd) > 256, -EINVAL,                             \
              "head_dim %d is not supported by the CUDA attention kernels (a multiple "  \
              "of 8 from 8 to 256); use --device cpu", (hd))

/* The KV ops take the plain and 4-bit formats of kern_kv_fmt; any other
 * (bf16: the CPU backend's) is refused. */
#define KCHECK_KV_FMT(fmt)                                                             \
    RETURN_IF((fmt) != KERN_KV_FMT_PLAIN && (fmt) != KERN_KV_FMT_Q4, -ENOTSUP,          \
              "the CUDA kernels have no KV cache format %d (they take plain fp16 and "  \
              "4-bit caches)", (int)(fmt))

static inline cudaStream_t kstream(void *s) { return (cudaStream_t)s; }
static inline unsigned kblocks(size_t n, unsigned per) { return (unsigned)((n + per - 1) / per); }
/* Blocks of 256 threads for a grid-stride loop over n elements: one per 256
 * elements up to 65535 blocks (the loop takes the rest), at least one. */
static inline unsigned kgrid_flat(size_t n)
{
    size_t b = (n + 255) / 256;
    return (unsigned)(b > 65535 ? 65535 : (b ? b : 1));
}

/* 8 consecutive halves (16 bytes, 16-byte aligned) as floats. */
__device__ __forceinline__ void load8(const __half *p, float f[8])
{
    uint4 u = *(const uint4 *)p;
    const __half2 *h = (const __half2 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __half22float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

__device__ __forceinline__ void store8(__half *p, const float f[8])
{
    uint4 u;
    __half2 *h = (__half2 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++)
        h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
    *(uint4 *)p = u;
}

/* Sum over the G lanes of a group (G a power of two <= 32, groups aligned
 * within the warp); every lane of the group gets the total. The xor tree
 * fixes the order of the additions, so results are reproducible. */
template <int G> __device__ __forceinline__ float group_sum(float x)
{
#pragma unroll
    for (int off = G / 2; off > 0; off /= 2)
        x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

/* Sum over a block of THREADS threads (a multiple of 32); every thread gets
 * the total, added in a fixed order (warp xor trees, then the warps in
 * order). red: THREADS / 32 floats of shared memory, reusable by the next
 * call. Every thread of the block must call it (barriers). */
template <int THREADS> __device__ __forceinline__ float block_sum(float x, float *red)
{
    x = group_sum<32>(x);
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads(); /* red may still be read by the previous call */
    if (l == 0)
        red[w] = x;
    __syncthreads(); /* all warp totals written */
    float t = 0.0f;
    for (int i = 0; i < THREADS / 32; i++)
        t += red[i];
    return t;
}

/* q . row over head_dim = 8 * (active lanes of the group): each lane holds
 * 8 dims of q in qf and reads the same 8 of row (when lane < hd / 8). */
template <int G>
__device__ __forceinline__ float group_dot(const float qf[8], const __half *row, int gl, int hd8)
{
    float s = 0.0f;
    if (gl < hd8) {
        float kf[8];
        load8(row + gl * 8, kf);
#pragma unroll
        for (int i = 0; i < 8; i++)
            s += qf[i] * kf[i];
    }
    return group_sum<G>(s);
}

/* Call F<G>(...) with G = the power of two of lanes that covers head_dim/8. */
#define KERN_DISPATCH_G(hd, F, ...)                                                    \
    ((hd) <= 16    ? F<2>(__VA_ARGS__)                                                 \
     : (hd) <= 32  ? F<4>(__VA_ARGS__)                                                 \
     : (hd) <= 64  ? F<8>(__VA_ARGS__)                                                 \
     : (hd) <= 128 ? F<16>(__VA_ARGS__)                                                \
                   : F<32>(__VA_ARGS__))

#endif

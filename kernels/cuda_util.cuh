/* cuda_util.cuh: what every kernels/<op>.cu shares: the checking macro
 * that keeps the failing call as text, fp16 vector loads, and the
 * "group of lanes per row" dot product used by the attention kernels. */
#ifndef FH_CUDA_UTIL_CUH
#define FH_CUDA_UTIL_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdint.h>

#include "kern.h"

void kern_cuda_set_error(const char *file, int line, const char *call, cudaError_t e);

/* Check a CUDA runtime call; on failure record it and return -EIO (-ENOMEM
 * when the device is out of memory). */
#define KCHECK(call)                                                                   \
    do {                                                                               \
        cudaError_t kc_e_ = (call);                                                    \
        if (kc_e_ != cudaSuccess) {                                                    \
            kern_cuda_set_error(__FILE__, __LINE__, #call, kc_e_);                     \
            return kc_e_ == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;                \
        }                                                                              \
    } while (0)
/* After a <<<launch>>>: configuration errors show up here. */
#define KLAUNCHED() KCHECK(cudaGetLastError())

static inline cudaStream_t kstream(void *s) { return (cudaStream_t)s; }
static inline unsigned kblocks(size_t n, unsigned per) { return (unsigned)((n + per - 1) / per); }

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

/* layernorm.cu: LayerNorm over the last dimension, one block per row.
 * Two passes over the row (mean, then centred variance) in fp32, as the
 * reference does, rather than E[x^2] - mean^2, which cancels badly. */
#include "cuda_util.cuh"

#define LN_THREADS 256

/* Block-wide sum; every thread gets the total. red: LN_THREADS/32 floats. */
__device__ float block_sum(float x, float *red)
{
    x = group_sum<32>(x);
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads(); /* red may still be read by the previous call */
    if (l == 0)
        red[w] = x;
    __syncthreads(); /* all warp totals written */
    float t = 0.0f;
    for (int i = 0; i < LN_THREADS / 32; i++)
        t += red[i];
    return t;
}

__global__ void layernorm(__half *out, const __half *x, const __half *w, const __half *b, int d,
                          float eps)
{
    __shared__ float red[LN_THREADS / 32];
    const __half *xr = x + (size_t)blockIdx.x * d;
    __half *o = out + (size_t)blockIdx.x * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += LN_THREADS)
        s += __half2float(xr[i]);
    float mean = block_sum(s, red) / d;
    float v = 0.0f;
    for (int i = threadIdx.x; i < d; i += LN_THREADS) {
        float c = __half2float(xr[i]) - mean;
        v += c * c;
    }
    float rstd = rsqrtf(block_sum(v, red) / d + eps);
    /* out may alias x: each element is read and written by one thread. */
    for (int i = threadIdx.x; i < d; i += LN_THREADS)
        o[i] = __float2half_rn((__half2float(xr[i]) - mean) * rstd * __half2float(w[i]) +
                               __half2float(b[i]));
}

extern "C" int kern_layernorm_cuda(void *out, const void *x, const void *w, const void *b,
                                   int n, int d, float eps, void *stream)
{
    if (n == 0)
        return 0;
    layernorm<<<n, LN_THREADS, 0, kstream(stream)>>>((__half *)out, (const __half *)x,
                                                     (const __half *)w, (const __half *)b, d,
                                                     eps);
    KLAUNCHED();
    return 0;
}

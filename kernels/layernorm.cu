/* layernorm.cu: LayerNorm over the last dimension, one block per row.
 * Two passes over the row (mean, then centred variance) in fp32, as the
 * reference does, rather than E[x^2] - mean^2, which cancels badly. */
#include "cuda_util.cuh"

#define LN_THREADS 256

__global__ void layernorm(__half *out, const __half *x, const __half *w, const __half *b, int d,
                          float eps)
{
    __shared__ float red[LN_THREADS / 32];
    const __half *xr = x + (size_t)blockIdx.x * d;
    __half *o = out + (size_t)blockIdx.x * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += LN_THREADS)
        s += __half2float(xr[i]);
    float mean = block_sum<LN_THREADS>(s, red) / d;
    float v = 0.0f;
    for (int i = threadIdx.x; i < d; i += LN_THREADS) {
        float c = __half2float(xr[i]) - mean;
        v += c * c;
    }
    float rstd = rsqrtf(block_sum<LN_THREADS>(v, red) / d + eps);
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

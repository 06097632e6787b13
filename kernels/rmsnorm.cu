/* rmsnorm.cu: RMSNorm over the last dimension (Llama, Mistral, Qwen2), one
 * block per row; the reference is kernels/cpu/rmsnorm.c.
 *
 * Hugging Face's LlamaRMSNorm in fp32 and in its order: mean(x^2), then
 * x * (1 / sqrt(mean + eps)), then w * that, rounded once to fp16. The sum
 * of squares is a block tree in fp32 (the reference's is in double; both
 * are far closer to the exact sum than fp16 can show). */
#include "cuda_util.cuh"

#define RMS_THREADS 256

__global__ void rmsnorm(__half *out, const __half *x, const __half *w, int d, float eps)
{
    __shared__ float red[RMS_THREADS / 32];
    const __half *xr = x + (size_t)blockIdx.x * d;
    __half *o = out + (size_t)blockIdx.x * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += RMS_THREADS) {
        float v = __half2float(xr[i]);
        ss += v * v;
    }
    float var = block_sum<RMS_THREADS>(ss, red) / (float)d;
    float rstd = 1.0f / sqrtf(var + eps); /* IEEE division and root, as the reference */
    /* out may alias x: each element is read and written by one thread. */
    for (int i = threadIdx.x; i < d; i += RMS_THREADS)
        o[i] = __float2half_rn(__half2float(w[i]) * (__half2float(xr[i]) * rstd));
}

extern "C" int kern_rmsnorm_cuda(void *out, const void *x, const void *w, int n, int d, float eps,
                                 void *stream)
{
    if (n == 0 || d == 0)
        return 0;
    rmsnorm<<<n, RMS_THREADS, 0, kstream(stream)>>>((__half *)out, (const __half *)x,
                                                     (const __half *)w, d, eps);
    KLAUNCHED();
    return 0;
}

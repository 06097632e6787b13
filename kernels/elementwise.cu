/* elementwise.cu: fp16 <-> fp32 conversion, bias + ReLU, residual add and
 * row gather: memory-bound grid-stride loops, fp32 arithmetic. */
#include "cuda_util.cuh"

__global__ void f32_to_f16(__half *dst, const float *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2half_rn(src[i]);
}

__global__ void f16_to_f32(float *dst, const __half *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __half2float(src[i]);
}

extern "C" int kern_f32_to_f16_cuda(void *dst, const float *src, size_t n, void *stream)
{
    f32_to_f16<<<kgrid_flat(n), 256, 0, kstream(stream)>>>((__half *)dst, src, n);
    KLAUNCHED();
    return 0;
}

extern "C" int kern_f16_to_f32_cuda(float *dst, const void *src, size_t n, void *stream)
{
    f16_to_f32<<<kgrid_flat(n), 256, 0, kstream(stream)>>>(dst, (const __half *)src, n);
    KLAUNCHED();
    return 0;
}

/* x(n, d) += b(d), ReLU; two halves per thread (d is even for every OPT). */
__global__ void bias_act(__half *x, const __half *b, int n, int d, int relu)
{
    size_t total = (size_t)n * d;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = __half2float(x[i]) + (b ? __half2float(b[i % d]) : 0.0f);
        x[i] = __float2half_rn(relu && v < 0.0f ? 0.0f : v);
    }
}

extern "C" int kern_bias_act_cuda(void *x, const void *b, int n, int d, int relu, void *stream)
{
    size_t total = (size_t)n * d;
    bias_act<<<kgrid_flat(total), 256, 0, kstream(stream)>>>((__half *)x, (const __half *)b, n,
                                                           d, relu);
    KLAUNCHED();
    return 0;
}

__global__ void add_inplace(__half *y, const __half *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(__half2float(y[i]) + __half2float(x[i]));
}

extern "C" int kern_add_cuda(void *y, const void *x, size_t count, void *stream)
{
    add_inplace<<<kgrid_flat(count), 256, 0, kstream(stream)>>>((__half *)y, (const __half *)x,
                                                             count);
    KLAUNCHED();
    return 0;
}

__global__ void gather_rows(__half *dst, const __half *src, const int32_t *rows, int d)
{
    const __half *s = src + (size_t)rows[blockIdx.x] * d;
    __half *o = dst + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        o[i] = s[i];
}

extern "C" int kern_gather_rows_cuda(void *dst, const void *src, const int32_t *rows, int n,
                                     int d, void *stream)
{
    if (n == 0)
        return 0;
    gather_rows<<<n, 256, 0, kstream(stream)>>>((__half *)dst, (const __half *)src, rows, d);
    KLAUNCHED();
    return 0;
}

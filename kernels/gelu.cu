/* gelu.cu: exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (GPT-NeoX's hidden_act
 * "gelu", not the tanh form), on fp16 in fp32 math, in PyTorch's order
 * x * 0.5 * (1 + erf(x * (1 / sqrt 2))); the reference is
 * kernels/cpu/gelu.c. A grid-stride loop; out may be x. */
#include "cuda_util.cuh"

__global__ void gelu(__half *out, const __half *x, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = __half2float(x[i]);
        out[i] = __float2half_rn(v * 0.5f * (1.0f + erff(v * 0.70710678118654752440f)));
    }
}

extern "C" int kern_gelu_cuda(void *out, const void *x, size_t count, void *stream)
{
    if (count == 0)
        return 0;
    gelu<<<kgrid_flat(count), 256, 0, kstream(stream)>>>((__half *)out, (const __half *)x,
                                                          count);
    KLAUNCHED();
    return 0;
}

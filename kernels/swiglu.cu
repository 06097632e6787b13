/* swiglu.cu: SwiGLU, silu(gate) * up, the MLP activation of Llama, Mistral
 * and Qwen2, on fp16 rows in fp32 math; the reference is
 * kernels/cpu/swiglu.c. A grid-stride loop, one element per step:
 * silu(g) = g / (1 + exp(-g)) with the accurate expf and IEEE division, in
 * the reference's order (below g of about -88 exp(-g) is inf and the
 * quotient -0, its limit). */
#include "cuda_util.cuh"

__global__ void swiglu(__half *out, int ldo, const __half *gate, const __half *up, int ld, int d,
                       size_t total)
{
    for (size_t x = blockIdx.x * (size_t)blockDim.x + threadIdx.x; x < total;
         x += (size_t)gridDim.x * blockDim.x) {
        size_t i = x / d, j = x % d;
        float g = __half2float(gate[i * ld + j]), u = __half2float(up[i * ld + j]);
        out[i * ldo + j] = __float2half_rn(g / (1.0f + expf(-g)) * u);
    }
}

extern "C" int kern_swiglu_cuda(void *out, int ldo, const void *gate, const void *up, int ld,
                                int n, int d, void *stream)
{
    /* in place, element i of out is element i of gate only when the strides
     * agree; with another ldo a thread would overwrite gate or up elements
     * that another thread has still to read */
    RETURN_IF(out == gate && ldo != ld && n > 1, -EINVAL, "SwiGLU in place (out == gate) "
              "needs out's row stride %d to equal gate's %d", ldo, ld);
    size_t total = (size_t)n * d;
    if (total == 0)
        return 0;
    swiglu<<<kgrid_flat(total), 256, 0, kstream(stream)>>>((__half *)out, ldo,
                                                            (const __half *)gate,
                                                            (const __half *)up, ld, d, total);
    KLAUNCHED();
    return 0;
}

/* embed.cu: token + learned position embedding (OPT's offset of 2), one
 * block per row; the sum is taken in fp32. */
#include "cuda_util.cuh"

__global__ void embed(__half *out, const __half *tok, const __half *pe, const int32_t *ids,
                      const int32_t *pos, int d)
{
    int r = blockIdx.x;
    const __half *t = tok + (size_t)ids[r] * d;
    const __half *p = pe + (size_t)(pos[r] + KERN_OPT_POS_OFFSET) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        out[(size_t)r * d + i] = __float2half_rn(__half2float(t[i]) + __half2float(p[i]));
}

extern "C" int kern_embed_cuda(void *out, const void *tok_emb, const void *pos_emb,
                               const int32_t *ids, const int32_t *pos, int n, int d,
                               void *stream)
{
    if (n == 0)
        return 0;
    embed<<<n, 256, 0, kstream(stream)>>>((__half *)out, (const __half *)tok_emb,
                                          (const __half *)pos_emb, ids, pos, d);
    KLAUNCHED();
    return 0;
}

/* embed.cu: token embedding, plus the learned position embedding (OPT's
 * offset of 2) when there is one, one block per row; the sum is taken in
 * fp32. Without position embeddings (pe NULL: the RoPE families, whose
 * positions are rotated into q and k) a row is the token's row, copied
 * exactly (the fp16 -> fp32 -> fp16 round trip is the identity). */
#include "cuda_util.cuh"

__global__ void embed(__half *out, const __half *tok, const __half *pe, const int32_t *ids,
                      const int32_t *pos, int d)
{
    int r = blockIdx.x;
    const __half *t = tok + (size_t)ids[r] * d;
    if (!pe) { /* block-uniform */
        for (int i = threadIdx.x; i < d; i += blockDim.x)
            out[(size_t)r * d + i] = t[i];
        return;
    }
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
    RETURN_IF(pos_emb && !pos, -EINVAL, "embed: learned position embeddings need the "
              "positions (pos is NULL)");
    embed<<<n, 256, 0, kstream(stream)>>>((__half *)out, (const __half *)tok_emb,
                                          (const __half *)pos_emb, ids, pos, d);
    KLAUNCHED();
    return 0;
}

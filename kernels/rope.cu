/* rope.cu: rotary position embeddings on fp16 q and k rows, in place
 * (Llama, Mistral, Qwen2, GPT-NeoX); the reference is kernels/cpu/rope.c.
 *
 * Hugging Face's rotate_half convention: the rotated dimensions of a head
 * are two halves [x1 | x2] of r/2 each (r = rot_dims), and with the angle
 * a_i = pos * inv_freq[i] (the fp32 product, as the reference takes it)
 *
 *   x1'[i] = x1[i] cos a_i - x2[i] sin a_i
 *   x2'[i] = x2[i] cos a_i + x1[i] sin a_i          i in [0, r/2)
 *
 * One thread per (row, head, i): it reads the pair (x1[i], x2[i]) and writes
 * both, so no two threads touch one element and q, k are rotated in place.
 * Heads [0, n_head) of a row are q's, [n_head, n_head + n_kv_head) k's;
 * dimensions [r, head_dim) of a head are not touched (GPT-NeoX's
 * rotary_pct). sincosf is the accurate one (no --use_fast_math): the
 * positions of a long context make large angles. */
#include "cuda_util.cuh"

__global__ void rope(__half *q, __half *k, int ld, const int32_t *pos, const float *inv_freq,
                     int n, int n_head, int heads, int hd, int half)
{
    size_t total = (size_t)n * heads * half;
    for (size_t x = blockIdx.x * (size_t)blockDim.x + threadIdx.x; x < total;
         x += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(x % half);
        size_t rh = x / half;
        int h = (int)(rh % heads), r = (int)(rh / heads);
        __half *p = h < n_head ? q + (size_t)r * ld + (size_t)h * hd
                               : k + (size_t)r * ld + (size_t)(h - n_head) * hd;
        float a = (float)pos[r] * inv_freq[i], s, c;
        sincosf(a, &s, &c);
        float x1 = __half2float(p[i]), x2 = __half2float(p[i + half]);
        p[i] = __float2half_rn(x1 * c - x2 * s);
        p[i + half] = __float2half_rn(x2 * c + x1 * s);
    }
}

extern "C" int kern_rope_cuda(void *q, void *k, int ld, const int32_t *pos, int n, int n_head,
                              int n_kv_head, int head_dim, int rot_dims, const float *inv_freq,
                              void *stream)
{
    RETURN_IF(rot_dims <= 0 || rot_dims % 2 || rot_dims > head_dim, -EINVAL, "RoPE over %d "
              "of %d dimensions per head: the rotary dimensions must be even, positive and "
              "at most head_dim; check rotary_pct / partial_rotary_factor", rot_dims,
              head_dim);
    int heads = n_head + (k ? n_kv_head : 0);
    if (n == 0 || heads == 0)
        return 0;
    size_t total = (size_t)n * heads * (rot_dims / 2);
    rope<<<kgrid_flat(total), 256, 0, kstream(stream)>>>((__half *)q, (__half *)k, ld, pos,
                                                          inv_freq, n, n_head, heads, head_dim,
                                                          rot_dims / 2);
    KLAUNCHED();
    return 0;
}

/* embed.c: token (+ learned-position) embedding, plain-C reference, and
 * its instance over a 16-bit table (the CPU backend under --cpu-matmul
 * bf16 keeps the embedding in bf16). */
#include "../kern.h"

#include <string.h>

void kern_embed_ref(float *out, const float *tok_emb, const float *pos_emb,
                    const int32_t *ids, const int32_t *pos, int n, int d)
{
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *t = tok_emb + (size_t)ids[i] * d;
        float *o = out + (size_t)i * d;
        if (!pos_emb) {
            memcpy(o, t, sizeof(float) * (size_t)d);
            continue;
        }
        const float *p = pos_emb + (size_t)(pos[i] + KERN_OPT_POS_OFFSET) * d;
        for (int j = 0; j < d; j++)
            o[j] = t[j] + p[j];
    }
}

void kern_embed_h16(float *out, const uint16_t *tok_emb, kern_h16 fmt, const float *pos_emb,
                    const int32_t *ids, const int32_t *pos, int n, int d)
{
    #pragma omp parallel for schedule(static) if (n > 16)
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * d;
        kern_widen_row(o, tok_emb + (size_t)ids[i] * d, (size_t)d, fmt);
        if (!pos_emb)
            continue;
        const float *p = pos_emb + (size_t)(pos[i] + KERN_OPT_POS_OFFSET) * d;
        for (int j = 0; j < d; j++)
            o[j] += p[j];
    }
}

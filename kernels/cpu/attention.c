/* attention.c: KV-cache append and causal attention over a slot cache,
 * plain-C reference (also the CPU backend's kernel).
 *
 * One (sequence, head) pair per task, so accumulating H2O scores needs no
 * atomics; every query row of that pair runs in order:
 *
 *   for new token j:   p = softmax(q_j . K[0..n_past+j] * scale)
 *                      out_j = p . V[0..n_past+j];  scores[slot] += p[slot]
 */
#include "../kern.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void kern_kv_append_ref(float *kc, float *vc, const float *k, const float *v,
                        int ldk, const kern_seq *seqs, int n_seq, int n_head,
                        int head_dim, int cap)
{
    #pragma omp parallel for schedule(static)
    for (int s = 0; s < n_seq; s++) {
        for (int j = 0; j < seqs[s].n_new; j++) {
            const float *kr = k + (size_t)(seqs[s].row + j) * ldk;
            const float *vr = v + (size_t)(seqs[s].row + j) * ldk;
            int slot = seqs[s].n_past + j;
            for (int h = 0; h < n_head; h++) {
                size_t o = (((size_t)s * n_head + h) * cap + slot) * head_dim;
                memcpy(kc + o, kr + (size_t)h * head_dim, sizeof(float) * head_dim);
                memcpy(vc + o, vr + (size_t)h * head_dim, sizeof(float) * head_dim);
            }
        }
    }
}

void kern_attn_ref(float *out, int ldo, const float *q, int ldq,
                   const float *kc, const float *vc, const kern_seq *seqs,
                   int n_seq, int n_head, int head_dim, int cap, float scale,
                   float *scores)
{
    int n_pairs = n_seq * n_head;
    #pragma omp parallel
    {
        float *p = malloc(sizeof(float) * (size_t)cap);
        #pragma omp for schedule(dynamic, 1)
        for (int pair = 0; pair < n_pairs; pair++) {
            int s = pair / n_head, h = pair % n_head;
            const float *K = kc + ((size_t)s * n_head + h) * cap * head_dim;
            const float *V = vc + ((size_t)s * n_head + h) * cap * head_dim;
            float *sc = scores ? scores + ((size_t)s * n_head + h) * cap : NULL;
            for (int j = 0; j < seqs[s].n_new; j++) {
                int row = seqs[s].row + j;
                int n = seqs[s].n_past + j + 1;
                const float *qr = q + (size_t)row * ldq + (size_t)h * head_dim;
                float *o = out + (size_t)row * ldo + (size_t)h * head_dim;
                float mx = -INFINITY;
                for (int t = 0; t < n; t++) {
                    const float *kr = K + (size_t)t * head_dim;
                    float dot = 0.0f;
                    for (int e = 0; e < head_dim; e++)
                        dot += qr[e] * kr[e];
                    p[t] = dot * scale;
                    if (p[t] > mx)
                        mx = p[t];
                }
                float sum = 0.0f;
                for (int t = 0; t < n; t++) {
                    p[t] = expf(p[t] - mx);
                    sum += p[t];
                }
                float inv = 1.0f / sum;
                for (int e = 0; e < head_dim; e++)
                    o[e] = 0.0f;
                for (int t = 0; t < n; t++) {
                    float w = p[t] * inv;
                    const float *vr = V + (size_t)t * head_dim;
                    for (int e = 0; e < head_dim; e++)
                        o[e] += w * vr[e];
                    if (sc)
                        sc[t] += w;
                }
            }
        }
        free(p);
    }
}

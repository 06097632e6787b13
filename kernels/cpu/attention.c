/* attention.c: prefill and decode attention over slot caches, plain-C
 * reference (also the CPU backend's kernels). Decode attention and the
 * cache writers are in slots.c.
 *
 * One (sequence, head) pair per task, so accumulating H2O scores needs no
 * atomics. Within a pair the sums run in a fixed order, so a sequence's
 * result does not depend on the other sequences of its batch.
 */
#include "../kern.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu_common.h"

int kern_cpu_threads(void)
{
    return omp_get_max_threads();
}

size_t kern_attn_prefill_scratch_bytes(int max_new, int n_threads)
{
    return sizeof(float) * ((size_t)max_new + 1) * (size_t)n_threads;
}

int kern_attn_prefill_ref(float *out, int ldo, const float *q, const float *k,
                          const float *v, int ld, const kern_seq *seqs,
                          int n_seq, int n_head, int n_kv_head, int head_dim, float scale,
                          float *colsum, void *scratch, size_t scratch_bytes)
{
    FORWARD_IF(heads_check("kern_attn_prefill_ref", n_head, n_kv_head));
    int n_pairs = n_seq * n_kv_head, group = n_head / n_kv_head, max_new = 0;
    for (int s = 0; s < n_seq; s++)
        max_new = seqs[s].n_new > max_new ? seqs[s].n_new : max_new;
    /* one row of probabilities per thread, in the caller's scratch */
    int nt = omp_get_max_threads();
    size_t per = (size_t)max_new + 1;
    FORWARD_IF(scratch_check("kern_attn_prefill_ref", scratch_bytes,
                             kern_attn_prefill_scratch_bytes(max_new, nt), nt));
    float *rows = scratch;
    /* one (sequence, KV head) pair per task: its group's query heads in
     * order, so the column sums of the group need no atomics */
    #pragma omp parallel num_threads(nt)
    {
        float *p = rows + per * (size_t)omp_get_thread_num();
        #pragma omp for schedule(dynamic, 1)
        for (int pair = 0; pair < n_pairs; pair++) {
            int s = pair / n_kv_head, g = pair % n_kv_head, r0 = seqs[s].row;
            size_t kc = (size_t)g * head_dim;
            if (colsum)
                for (int j = 0; j < seqs[s].n_new; j++)
                    colsum[(size_t)(r0 + j) * n_kv_head + g] = 0.0f;
            for (int h = g * group; h < (g + 1) * group; h++) {
                size_t hc = (size_t)h * head_dim;
                for (int i = 0; i < seqs[s].n_new; i++) {
                    const float *qr = q + (size_t)(r0 + i) * ld + hc;
                    /* a sliding window: the keys i - window + 1 .. i */
                    int w = seqs[s].window, j0 = w > 0 && i - w + 1 > 0 ? i - w + 1 : 0;
                    for (int j = j0; j <= i; j++)
                        p[j] = dot(qr, k + (size_t)(r0 + j) * ld + kc, head_dim) * scale;
                    softmax(p + j0, i + 1 - j0);
                    float *o = out + (size_t)(r0 + i) * ldo + hc;
                    memset(o, 0, sizeof(float) * head_dim);
                    for (int j = j0; j <= i; j++) {
                        const float *vr = v + (size_t)(r0 + j) * ld + kc;
                        for (int e = 0; e < head_dim; e++)
                            o[e] += p[j] * vr[e];
                        if (colsum)
                            colsum[(size_t)(r0 + j) * n_kv_head + g] += p[j];
                    }
                }
            }
        }
    }
    return 0;
}

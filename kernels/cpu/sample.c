/* sample.c: greedy and temperature/top-p sampling with the raw-logit
 * log-probability, plain-C reference.
 *
 * Top-p follows Hugging Face's TopPLogitsWarper: sort descending, keep the
 * smallest prefix whose probability mass reaches top_p (always >= 1 token),
 * renormalise, then invert the CDF at u. */
#include "../kern.h"

#include <math.h>
#include <stdlib.h>

#include "cpu_common.h"

static float log_softmax_at(const float *x, int V, int idx)
{
    float mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (x[i] > mx)
            mx = x[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        sum += exp((double)x[i] - mx);
    return (float)((double)x[idx] - mx - log(sum));
}

/* qsort_r comparator over token ids: prob descending. */
static int cmp_desc(const void *a, const void *b, void *prob)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    const float *p = prob;
    float x = p[i], y = p[j];
    if (x != y)
        return x < y ? 1 : -1;
    return (i > j) - (i < j); /* stable: lower id first */
}

size_t kern_sample_scratch_bytes(int V)
{
    return (sizeof(float) + sizeof(int32_t)) * (size_t)V; /* prob, order */
}

int32_t kern_sample_ref(const float *logits, int V, float temperature,
                        float top_p, double u, float *logprob, void *scratch,
                        size_t scratch_bytes)
{
    int32_t tok = 0;
    if (temperature > 0.0f)
        FORWARD_IF(scratch_check("kern_sample_ref", scratch_bytes, kern_sample_scratch_bytes(V),
                                 1));
    if (temperature <= 0.0f) {
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[tok])
                tok = i;
    } else {
        float *prob = scratch;
        int32_t *order = (int32_t *)(prob + V);
        float mx = -INFINITY;
        for (int i = 0; i < V; i++)
            if (logits[i] / temperature > mx)
                mx = logits[i] / temperature;
        double sum = 0.0;
        for (int i = 0; i < V; i++) {
            prob[i] = expf(logits[i] / temperature - mx);
            sum += prob[i];
        }
        for (int i = 0; i < V; i++) {
            prob[i] = (float)(prob[i] / sum);
            order[i] = i;
        }
        qsort_r(order, (size_t)V, sizeof *order, cmp_desc, prob); /* glibc's */
        int keep = V;
        if (top_p < 1.0f) {
            double c = 0.0;
            for (int i = 0; i < V; i++) {
                c += prob[order[i]];
                if (c >= top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        double mass = 0.0;
        for (int i = 0; i < keep; i++)
            mass += prob[order[i]];
        double target = u * mass, c = 0.0;
        tok = order[keep - 1];
        for (int i = 0; i < keep; i++) {
            c += prob[order[i]];
            if (target < c) {
                tok = order[i];
                break;
            }
        }
    }
    *logprob = log_softmax_at(logits, V, tok);
    return tok;
}

/* kv_slots.c: writing the slot caches, plain-C reference of kv_slots.cu:
 * the prompt's kept tokens after prefill, and each decode step's new token
 * into a free slot or over the H2O victim (kern_h2o_pick_ref). */
#include "../kern.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* Which prompt tokens a (sequence, head) keeps when the prompt exceeds the
 * budget: keep[j] = 1 for the first sinks, the last recent and the heavy
 * highest colsum of the rest; ties keep the newer token (the older one is
 * what H2O evicts). cs: colsum of the sequence's rows for this head,
 * stride n_head, or NULL (all scores equal: the newest are kept). */
static void prefill_keep(unsigned char *keep, const float *cs, int n_head,
                         int n, const kern_seq *sq)
{
    int heavy = sq->budget - sq->sinks - sq->recent;
    for (int j = 0; j < n; j++)
        keep[j] = j < sq->sinks || j >= n - sq->recent;
    for (int taken = 0; taken < heavy; taken++) {
        int best = -1;
        for (int j = sq->sinks; j < n - sq->recent; j++)
            if (!keep[j] && (best < 0 || (cs ? cs[(size_t)j * n_head] >= cs[(size_t)best * n_head]
                                               : 1)))
                best = j;
        if (best < 0)
            break;
        keep[best] = 1;
    }
}

void kern_kv_prefill_ref(float *kc, float *vc, float *scores, int32_t *pos,
                         const float *k, const float *v, int ld,
                         const float *colsum, const kern_seq *seqs, int n_seq,
                         int n_head, int head_dim, int cap)
{
    int n_pairs = n_seq * n_head, max_new = 0;
    for (int s = 0; s < n_seq; s++)
        max_new = seqs[s].n_new > max_new ? seqs[s].n_new : max_new;
    #pragma omp parallel
    {
        unsigned char *keep = malloc((size_t)max_new + 1);
        #pragma omp for schedule(static)
        for (int pair = 0; pair < n_pairs; pair++) {
            int s = pair / n_head, h = pair % n_head, n = seqs[s].n_new;
            if (n == 0)
                continue;
            const float *cs = colsum ? colsum + (size_t)seqs[s].row * n_head + h : NULL;
            if (n <= seqs[s].budget)
                memset(keep, 1, (size_t)n);
            else
                prefill_keep(keep, cs, n_head, n, &seqs[s]);
            size_t base = ((size_t)s * n_head + h) * cap;
            int slot = 0;
            for (int j = 0; j < n && slot < seqs[s].budget; j++) {
                if (!keep[j])
                    continue;
                size_t src = (size_t)(seqs[s].row + j) * ld + (size_t)h * head_dim;
                memcpy(kc + (base + slot) * head_dim, k + src, sizeof(float) * head_dim);
                memcpy(vc + (base + slot) * head_dim, v + src, sizeof(float) * head_dim);
                pos[base + slot] = j;
                if (scores)
                    scores[base + slot] = cs ? cs[(size_t)j * n_head] : 0.0f;
                slot++;
            }
        }
        free(keep);
    }
}

void kern_kv_insert_ref(float *kc, float *vc, float *scores, int32_t *pos,
                        const float *k, const float *v, int ld,
                        const float *self_p, const kern_seq *seqs, int n_seq,
                        int n_head, int head_dim, int cap, int32_t *evicted)
{
    int n_pairs = n_seq * n_head;
    #pragma omp parallel for schedule(static)
    for (int pair = 0; pair < n_pairs; pair++) {
        int s = pair / n_head, h = pair % n_head;
        if (seqs[s].n_new == 0)
            continue;
        const kern_seq *sq = &seqs[s];
        size_t base = ((size_t)s * n_head + h) * cap;
        int slot = sq->n_slots, gone = -1;
        if (slot >= sq->budget) {
            slot = kern_h2o_pick_ref(scores ? scores + base : NULL, pos + base, sq->n_slots,
                                     sq->sinks, sq->recent, sq->n_past);
            assert(slot >= 0); /* sinks + recent - 1 < budget slots are protected */
            gone = pos[base + slot];
        }
        size_t src = (size_t)sq->row * ld + (size_t)h * head_dim;
        memcpy(kc + (base + slot) * head_dim, k + src, sizeof(float) * head_dim);
        memcpy(vc + (base + slot) * head_dim, v + src, sizeof(float) * head_dim);
        pos[base + slot] = sq->n_past;
        if (scores)
            scores[base + slot] = self_p ? self_p[pair] : 0.0f;
        if (evicted)
            evicted[pair] = gone;
    }
}

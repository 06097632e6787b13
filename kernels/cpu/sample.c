/* sample.c: next-token choice with vLLM's per-row controls (kern.h: logit
 * edits, greedy, temperature, min_p, top_k, top_p) and the raw-logit
 * log-probabilities, plain-C reference.
 *
 *   logits --edits--> edited (a copy in scratch; none without edits)
 *     greedy:  argmax, lowest id on ties
 *     sampled: prob = softmax(edited / T)       fp32, summed in double
 *              -> min_p: zero the tokens below min_p * max(prob)
 *              -> sort (prob desc, id asc)      zeros go last
 *              -> keep the positive ones, the first top_k of them
 *              -> top_p prefix (Hugging Face's TopPLogitsWarper, on the
 *                 renormalised rest) -> invert the kept CDF at u
 *   logprob, top logprobs: log softmax of the raw logits
 *
 * Without edits, min_p and top_k the arithmetic is that of the earlier
 * temperature / top-p sampler, operation for operation, so its tokens stay
 * the same. Compiled as ISO C (c_std=c11): GCC contracts no a * b + c into
 * a fused multiply-add, so an edit rounds as kern.h writes it. */
#include "../kern.h"

#include <math.h>
#include <stdlib.h>

#include "cpu_common.h"

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

static float edit_apply(float x, const kern_logit_edit *e)
{
    float y = x > 0.0f ? x * e->pos : x * e->neg;
    return y + e->add;
}

/* The first highest of x(V), lowest id on ties (all -inf: 0). */
static int32_t argmax(const float *x, int V)
{
    int32_t tok = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[tok])
            tok = i;
    return tok;
}

/* The n top raw logits (value descending, id ascending) into ids / vals,
 * in one pass: ids arrive in ascending order, so a new value goes after
 * the equal ones already held. */
static void top_raw(const float *x, int V, int n, int32_t *ids, float *vals)
{
    int have = 0;
    for (int i = 0; i < V && n > 0; i++) {
        if (have == n && !(x[i] > vals[n - 1]))
            continue;
        int at = have < n ? have++ : n - 1;
        while (at > 0 && x[i] > vals[at - 1]) {
            ids[at] = ids[at - 1];
            vals[at] = vals[at - 1];
            at--;
        }
        ids[at] = i;
        vals[at] = x[i];
    }
}

/* cmp_desc's order: a before b (prob descending, id ascending). A strict
 * total order over ids where no probability is NaN. */
static inline int before(int32_t a, int32_t b, const float *p)
{
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}

/* order[0..n) (token ids): its first m those that come first in cmp_desc's
 * order (quickselect, Hoare's partition around a median of three), the
 * rest after them in any order. No NaN in p (the partition's scans stop
 * only at an element that does not come first). */
static void select_first(int32_t *a, int n, int m, const float *p)
{
    int lo = 0, hi = n - 1, k = m - 1; /* a[k] ends as the k-th of the order */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int32_t x = a[lo], y = a[mid], z = a[hi], piv;
        if (before(x, y, p))
            piv = before(y, z, p) ? y : before(x, z, p) ? z : x;
        else
            piv = before(x, z, p) ? x : before(y, z, p) ? z : y;
        int i = lo, j = hi;
        while (i <= j) {
            while (before(a[i], piv, p))
                i++;
            while (before(piv, a[j], p))
                j--;
            if (i <= j) {
                int32_t t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break; /* a[k] is the pivot, in place */
    }
}

/* The first prefix ids of order (V) sorted in cmp_desc's order, as a sort
 * of the whole of order leaves them (the order is total where no
 * probability is NaN: the same prefix), given its first `from` so sorted
 * already (order holds a permutation of the ids, identity at the start).
 * Past a quarter of V: the whole rest sorted, as before. */
#define SORT_GUESS 512 /* top_p's first try: a nucleus is mostly far shorter */
static int sort_prefix(int32_t *order, int V, int from, int prefix, float *prob)
{
    if (prefix > V / 4)
        prefix = V;
    else
        select_first(order + from, V - from, prefix - from, prob);
    qsort_r(order + from, (size_t)(prefix - from), sizeof *order, cmp_desc, prob); /* glibc's */
    return prefix;
}

/* The sampled choice over prob (V), which holds the edited logits and is
 * turned into probabilities; order (V) is scratch. */
static int32_t draw(float *prob, int32_t *order, int V, const kern_sample_row *r)
{
    for (int i = 0; i < V; i++)
        prob[i] /= r->temperature;
    float mx = max_of(prob, V); /* as softmax's: the sign of a zero max is not seen */
    if (mx == -INFINITY)
        return 0; /* every token banned */
    kern_expf_sub(prob, prob, mx, (size_t)V);
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        sum += prob[i];
    int n_pos0 = 0, n_pos = 0; /* positive probabilities before and after min_p */
    float pmax = 0.0f;
    for (int i = 0; i < V; i++) {
        prob[i] = (float)(prob[i] / sum);
        order[i] = i;
        pmax = prob[i] > pmax ? prob[i] : pmax;
        n_pos0 += prob[i] > 0.0f;
    }
    if (r->min_p > 0.0f) {
        float thr = r->min_p * pmax;
        for (int i = 0; i < V; i++)
            if (prob[i] < thr)
                prob[i] = 0.0f;
    }
    for (int i = 0; i < V; i++)
        n_pos += prob[i] > 0.0f;
    if (n_pos == 0)
        return 0; /* a NaN (or +inf) logit made every probability NaN: token 0, no
                   * draw, as when every token is banned */
    /* the positive probabilities are the sorted order's first n_pos */
    int keep = n_pos;
    if (r->top_k > 0 && r->top_k < keep)
        keep = r->top_k;
    /* What follows reads the sorted order's first keep only, and top_p
     * alone (nothing cut before it) stops at its cut: sort a prefix that
     * holds it, first a short one, longer while the cut lies beyond it. */
    int top_p_alone = r->top_p < 1.0f && keep == n_pos0;
    int sorted = sort_prefix(order, V, 0, top_p_alone && keep > SORT_GUESS ? SORT_GUESS : keep,
                             prob);
    if (r->top_p < 1.0f) {
        double want = r->top_p;
        if (keep < n_pos0) { /* renormalised over what min_p and top_k kept */
            double kept = 0.0;
            for (int i = 0; i < keep; i++)
                kept += prob[order[i]];
            want *= kept;
        }
        double c = 0.0;
        for (int i = 0; i < keep; i++) {
            if (i == sorted) { /* the cut lies past the sorted prefix: 8 times as
                                * long, or all of keep when it held less than half */
                sorted = sort_prefix(order, V, sorted, keep - sorted > 7 * sorted &&
                                     c >= 0.5 * want ? 8 * sorted : keep, prob);
            }
            c += prob[order[i]];
            if (c >= want) {
                keep = i + 1;
                break;
            }
        }
    }
    double mass = 0.0;
    for (int i = 0; i < keep; i++)
        mass += prob[order[i]];
    double target = r->u * mass, c = 0.0;
    for (int i = 0; i < keep; i++) {
        c += prob[order[i]];
        if (target < c)
            return order[i];
    }
    return order[keep - 1]; /* u * mass rounded up to the mass */
}

int kern_sample_row_check(const kern_sample_row *r, const kern_logit_edit *edits, int V)
{
    RETURN_IF(V <= 0, -EINVAL, "sampling over a vocabulary of %d tokens", V);
    RETURN_IF(!(r->min_p >= 0.0f && r->min_p <= 1.0f), -EINVAL, "min_p %g: give a value in "
              "0 .. 1", r->min_p);
    RETURN_IF(r->top_k < 0, -EINVAL, "top_k %d: give 0 (off) or a positive count", r->top_k);
    RETURN_IF(r->n_top < 0 || r->n_top > KERN_TOP_LOGPROBS_MAX || r->n_top > V, -EINVAL,
              "%d top logprobs asked of a row; 0 .. %d are given (and at most the vocabulary, "
              "%d)", r->n_top, KERN_TOP_LOGPROBS_MAX, V);
    RETURN_IF(r->n_edit < 0 || (r->n_edit > 0 && (r->edit0 < 0 || !edits)), -EINVAL,
              "internal: a row's logit edits at %d, %d of them%s", r->edit0, r->n_edit,
              edits ? "" : ", without an edit array");
    for (int j = 0; j < r->n_edit; j++) {
        int32_t t = edits[r->edit0 + j].tok;
        RETURN_IF(t < 0 || t >= V, -EINVAL, "a logit edit of token %d, outside the vocabulary "
                  "of %d tokens", t, V);
    }
    return 0;
}

int32_t kern_sample_ref(const float *logits, int V, const kern_sample_row *r,
                        const kern_logit_edit *edits, float *logprob, int32_t *top_ids,
                        float *top_lps, void *scratch, size_t scratch_bytes)
{
    FORWARD_IF(kern_sample_row_check(r, edits, V));
    int n_edit = r->n_edit;
    const kern_logit_edit *ed = n_edit ? edits + r->edit0 : NULL;
    RETURN_IF(r->n_top && (!top_ids || !top_lps), -EINVAL, "internal: %d top logprobs asked "
              "of a row without arrays for them", r->n_top);
    int sampled = r->temperature > 0.0f;
    int32_t tok;
    if (!sampled && !n_edit) {
        tok = argmax(logits, V);
    } else {
        FORWARD_IF(scratch_check("kern_sample_ref", scratch_bytes, kern_sample_scratch_bytes(V),
                                 1));
        float *x = scratch;
        memcpy(x, logits, sizeof(float) * (size_t)V);
        for (int j = 0; j < n_edit; j++)
            x[ed[j].tok] = edit_apply(x[ed[j].tok], &ed[j]);
        tok = sampled ? draw(x, (int32_t *)(x + V), V, r) : argmax(x, V);
    }
    /* log softmax of the raw logits */
    float mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        sum += exp((double)logits[i] - mx);
    double lse = log(sum);
    *logprob = (float)((double)logits[tok] - mx - lse);
    if (r->n_top > 0) {
        top_raw(logits, V, r->n_top, top_ids, top_lps);
        for (int k = 0; k < r->n_top; k++)
            top_lps[k] = (float)((double)top_lps[k] - mx - lse);
    }
    return tok;
}

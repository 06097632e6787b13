/* blob.c: the layer blob format (the unit the scheduler moves between
 * tiers) over a model's tensor table, and the pass-kind check. */
#include <string.h>

#include "err.h"
#include "scheduler.h"

size_t sched_qkv_dim(const sched_model *m)
{
    return (size_t)(m->n_head + 2 * m->n_kv_head) * (size_t)m->head_dim;
}

size_t sched_att_dim(const sched_model *m)
{
    size_t a = (size_t)m->n_head * (size_t)m->head_dim;
    return a > (size_t)m->hidden ? a : (size_t)m->hidden;
}

size_t sched_blob_layout(const sched_model *m, size_t es, int wq, size_t *off, size_t *bytes)
{
    size_t at = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const sched_tensor *x = &m->tensors[t];
        size_t b = !x->cols ? x->rows * es
                 : wq       ? x->rows * kern_q4_row_bytes(x->cols)
                            : x->rows * (size_t)x->cols * es;
        if (off)
            off[t] = at;
        if (bytes)
            bytes[t] = b;
        at += (b + 255) & ~(size_t)255;
    }
    return at;
}

size_t sched_blob_matrix_elems(const sched_model *m, size_t *largest)
{
    size_t sum = 0, big = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        size_t n = m->tensors[t].rows * (size_t)m->tensors[t].cols;
        sum += n;
        big = n > big ? n : big;
    }
    if (largest)
        *largest = big;
    return sum;
}

void sched_blob_quantize(const sched_model *m, size_t es, void *dst, const void *src)
{
    size_t so[SCHED_MAX_TENSORS], sb[SCHED_MAX_TENSORS], qo[SCHED_MAX_TENSORS];
    sched_blob_layout(m, es, 0, so, sb);
    sched_blob_layout(m, es, 1, qo, NULL);
    for (int t = 0; t < m->n_tensors; t++) {
        const sched_tensor *x = &m->tensors[t];
        const char *s = (const char *)src + so[t];
        uint8_t *q = (uint8_t *)dst + qo[t];
        if (!x->cols)
            memcpy(q, s, sb[t]);
        else if (es == sizeof(float))
            kern_q4_quantize_ref(q, (const float *)s, x->rows, x->cols);
        else
            kern_q4_quantize_h16(q, (const uint16_t *)s, x->rows, x->cols);
    }
}

double sched_head_params(const sched_model *m)
{
    return (double)m->vocab * m->hidden;
}

double sched_matmul_params(const sched_model *m)
{
    return m->n_layer * (double)sched_blob_matrix_elems(m, NULL) + sched_head_params(m);
}

int sched_pass_kind(const kern_seq *seqs, int n_seq, int cap)
{
    int kind = SCHED_PASS_IDLE;
    for (int s = 0; s < n_seq; s++) {
        const kern_seq *q = &seqs[s];
        if (q->n_new == 0)
            continue;
        int k = q->n_past == 0 ? SCHED_PASS_PREFILL : SCHED_PASS_DECODE;
        RETURN_IF(kind != SCHED_PASS_IDLE && kind != k, -EINVAL,
                  "internal: prefill and decode sequences mixed in one pass");
        kind = k;
        RETURN_IF(k == SCHED_PASS_DECODE && q->n_new != 1, -EINVAL,
                  "internal: decode of %d rows", q->n_new);
        RETURN_IF(q->budget < 1 || q->budget > cap || q->n_slots > q->budget ||
                  q->recent < 1 || q->sinks + q->recent > q->budget, -EINVAL,
                  "internal: sequence %d has budget %d (sinks %d, recent %d) for %d slots",
                  s, q->budget, q->sinks, q->recent, cap);
    }
    return kind;
}

/* kern.h: the compute ops of flexh2o.
 *
 * Every op has a plain-C fp32 reference (kernels/cpu/<op>.c, suffix _ref),
 * which is also what the CPU backend runs, and, where CUDA is built, a CUDA
 * entry point (kernels/<op>.cu, suffix _cuda) that stores fp16 and
 * accumulates in fp32. The tests compare each CUDA op with its reference.
 *
 * Shapes are given in comments as (dim0, dim1, ...), row-major, last
 * dimension contiguous. "ld" arguments are row strides in elements.
 * kernels/ depends on nothing else of flexh2o.
 */
#ifndef FH_KERN_H
#define FH_KERN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* OPT's learned positions are stored with an offset of 2 rows. */
#define KERN_OPT_POS_OFFSET 2

/* One sequence of a packed batch: its new rows are rows
 * [row, row + n_new) of q/k/v/out, its cache already holds n_past tokens in
 * slots [0, n_past), and the new tokens go to slots [n_past, n_past+n_new). */
typedef struct kern_seq {
    int32_t row;    /* first packed row of this sequence */
    int32_t n_new;  /* new tokens this call (prompt length, or 1 in decode) */
    int32_t n_past; /* slots already filled in this sequence's cache */
} kern_seq;

/* ---------------------------------------------------------------- CPU refs */

/* out(n, d) = tok_emb[ids[i]] + pos_emb[pos[i] + KERN_OPT_POS_OFFSET].
 * tok_emb (V, d), pos_emb (P, d); pos is the 0-based token position. */
void kern_embed_ref(float *out, const float *tok_emb, const float *pos_emb,
                    const int32_t *ids, const int32_t *pos, int n, int d);

/* out(n, d) = LayerNorm(x) * w + b over the last dimension; out may be x. */
void kern_layernorm_ref(float *out, const float *x, const float *w,
                        const float *b, int n, int d, float eps);

/* x(n, d) += b(d), then ReLU when relu != 0. */
void kern_bias_act_ref(float *x, const float *b, int n, int d, int relu);

/* y(count) += x(count). */
void kern_add_ref(float *y, const float *x, size_t count);

/* Copy the new K and V rows of every sequence into its slot cache.
 * k, v: packed rows (rows, ldk) holding n_head*head_dim values each.
 * kc, vc: (n_seq, n_head, cap, head_dim); sequence s's new token j goes to
 * slot seqs[s].n_past + j. */
void kern_kv_append_ref(float *kc, float *vc, const float *k, const float *v,
                        int ldk, const kern_seq *seqs, int n_seq, int n_head,
                        int head_dim, int cap);

/* Causal attention of the new rows of each sequence over its cache.
 * New token j of sequence s sees slots [0, n_past + j] (its own K/V
 * included, so kern_kv_append_ref runs first). Softmax of q.k * scale.
 * q (rows, ldq), out (rows, ldo): head h occupies columns h*head_dim...
 * scores: NULL, or (n_seq, n_head, cap) fp32 to which every query adds the
 * post-softmax probability it gave each slot (H2O's accumulated attention;
 * in prefill this is the column sum of the causal softmax). */
void kern_attn_ref(float *out, int ldo, const float *q, int ldq,
                   const float *kc, const float *vc, const kern_seq *seqs,
                   int n_seq, int n_head, int head_dim, int cap, float scale,
                   float *scores);

/* Pick the next token from one row of logits (V).
 * temperature <= 0: greedy (lowest index wins ties). Otherwise the logits
 * are divided by temperature, softmaxed, cut to the smallest set of most
 * probable tokens whose mass reaches top_p (at least one), and u in [0, 1)
 * picks from that set. *logprob gets log softmax(logits)[token] of the raw
 * logits (before temperature). scratch: V floats + V int32 of workspace.
 * @return the token id. */
int32_t kern_sample_ref(const float *logits, int V, float temperature,
                        float top_p, double u, float *logprob, void *scratch);

/* H2O eviction for one (sequence, head): among slots [0, n_slots) with
 * token positions pos[], choose the slot to evict: not a sink
 * (pos >= sinks), not among the `recent` newest tokens
 * (pos <= newest_pos - recent), lowest score, ties to the older position.
 * @return the slot, or -1 when no slot is evictable. */
int kern_h2o_pick_ref(const float *scores, const int32_t *pos, int n_slots,
                      int sinks, int recent, int32_t newest_pos);

/* ---------------------------------------------------------------- CUDA */
/* Device pointers are void *: "h" = fp16 (__half), "f" = fp32. stream is a
 * cudaStream_t. Each returns 0, or -EIO with the CUDA error recorded. */

int kern_cuda_available(void);

#ifdef __cplusplus
}
#endif

#endif

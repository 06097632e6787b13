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
#include <string.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* OPT's learned positions are stored with an offset of 2 rows. */
#define KERN_OPT_POS_OFFSET 2

/* ------------------------------------------------------- scalar helpers */

/* Seconds on the monotonic clock (CLOCK_MONOTONIC): the one clock of
 * flexh2o's timings (generate's statistics, the disk engine's busy time,
 * the scheduler's trace). Only differences mean anything. */
static inline double kern_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* SplitMix64 (Steele, Lea, Flood 2014): advance *state and return the next
 * 64 random bits. Seeded streams (dummy weights, sampling) are sequences of
 * it, so they depend on the seed alone. */
static inline uint64_t kern_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#ifndef __cplusplus /* C only: _Float16 is a C type here; CUDA code uses __half */
/* IEEE binary16 <-> binary32, for fp16 data held as uint16_t on the host
 * (safetensors F16, the CUDA backend's storage type, the 4-bit group
 * scales). _Float16 is GCC's (x86-64: F16C instructions with -march
 * support, else libgcc): fp32 -> fp16 rounds to nearest even, as CUDA's
 * __float2half_rn does, and overflows to infinity; fp16 -> fp32 is exact.
 * A NaN stays a NaN (quieted, payload kept). The one converter of the tree. */
#if defined(__clang__) && __clang_major__ < 15
/* clang 14 (Debian 12's, the fuzz build's) has no _Float16 on x86-64: its
 * __fp16 is the same binary16 with the same conversions (round to nearest
 * even through compiler-rt or libgcc), as a storage-only type */
typedef __fp16 kern_f16_t;
#else
typedef _Float16 kern_f16_t;
#endif
static inline uint16_t kern_f32_to_f16(float x)
{
    kern_f16_t h = (kern_f16_t)x;
    uint16_t bits;
    memcpy(&bits, &h, sizeof bits);
    return bits;
}

static inline float kern_f16_to_f32(uint16_t bits)
{
    kern_f16_t h;
    memcpy(&h, &bits, sizeof h);
    return (float)h;
}
#endif

/* One sequence of a packed batch and the state of its KV slot cache.
 *
 * The cache of a sequence has `cap` slots per (layer, head); `budget` of them
 * may be used (B of DESIGN.md's H2O policy; cap for `full`). Slots hold
 * tokens in any order; each slot remembers its token position (pos arrays).
 * New rows of this call are rows [row, row + n_new) of q/k/v/out. */
typedef struct kern_seq {
    int32_t row;     /* first packed row of this sequence */
    int32_t n_new;   /* prefill: prompt length (n_past 0); decode: 1; 0: idle */
    int32_t n_past;  /* tokens seen before this call = position of the 1st new */
    int32_t n_slots; /* cache slots in use = min(n_past, budget) */
    int32_t budget;  /* slots this sequence may keep, <= cap */
    int32_t sinks;   /* first tokens never evicted */
    int32_t recent;  /* newest tokens never evicted (the new one included), >= 1 */
    int32_t window;  /* > 0: a sliding window (Mistral): prefill query i attends keys
                      * i - window + 1 .. i only; 0: every earlier key */
} kern_seq;

/* The row format of a KV slot cache: the `fmt` argument of the KV ops
 * (kv_prefill, attn_decode, kv_insert) of the backends (backend.h) and of
 * the CUDA kernels. A slot of a (sequence, head) is one row of head_dim
 * values; a backend says which formats it takes in backend_ops.kv_formats
 * and refuses the others (-ENOTSUP). */
typedef enum kern_kv_fmt {
    KERN_KV_FMT_PLAIN, /* head_dim elements of the backend's storage type (fp32 on
                        * the CPU backend, fp16 on CUDA) */
    KERN_KV_FMT_Q4,    /* kern_q4_row_bytes(head_dim) bytes of 4-bit groups
                        * (compress_cache, the format below) */
    KERN_KV_FMT_BF16,  /* head_dim bf16 values (uint16_t bits) on a backend whose
                        * storage type is fp32: the CPU backend under bf16 matmuls
                        * (sched_shape.weight_direct), as a bf16 model keeps its KV */
    KERN_KV_FMTS       /* how many formats there are */
} kern_kv_fmt;

/* "plain", "4-bit" or "bf16", for messages; "unknown" for anything else. */
static inline const char *kern_kv_fmt_name(int fmt)
{
    return fmt == KERN_KV_FMT_PLAIN ? "plain"
         : fmt == KERN_KV_FMT_Q4    ? "4-bit"
         : fmt == KERN_KV_FMT_BF16  ? "bf16"
                                    : "unknown";
}

/* ---------------------------------------------------------------- CPU refs */

/* out(n, d) = tok_emb[ids[i]] + pos_emb[pos[i] + KERN_OPT_POS_OFFSET].
 * tok_emb (V, d), pos_emb (P, d); pos is the 0-based token position.
 * pos_emb NULL (rotary families): out = tok_emb[ids[i]], pos unused. */
void kern_embed_ref(float *out, const float *tok_emb, const float *pos_emb,
                    const int32_t *ids, const int32_t *pos, int n, int d);

/* out(n, d) = LayerNorm(x) * w + b over the last dimension; out may be x. */
void kern_layernorm_ref(float *out, const float *x, const float *w,
                        const float *b, int n, int d, float eps);

/* x(n, d) += b(d) (b may be NULL: no bias), then ReLU when relu != 0. */
void kern_bias_act_ref(float *x, const float *b, int n, int d, int relu);

/* y(count) += x(count). */
void kern_add_ref(float *y, const float *x, size_t count);

/* y(m, n) = x(m, k) w(n, k)^T for a few rows m (a decode pass): each row of
 * w is read once; every output is the same fixed-order sum over k whatever
 * m, n and the thread count. The CPU backend's linear for m <=
 * KERN_LINEAR_ROWS_MAX, where OpenBLAS would repack all of w per call (and
 * a 16-bit or 4-bit w would first be expanded whole): up to 64 rows, a
 * decode pass of a block of 64, it is as fast as sgemm over fp32 and
 * faster over 16 and 4 bits (results/cpu-xeon-2026-12-03/rows-64). */
#define KERN_LINEAR_ROWS_MAX 64
void kern_linear_rows(float *y, const float *x, const float *w, int m, int n, int k);
/* kern_linear_rows over w = the 4-bit matrix wq (n rows of
 * kern_q4_row_bytes(k)) expanded, with the same bits; a chunk of rows of w
 * is expanded at a time, in cache, just before use. ws: n * k floats of
 * scratch (what expanding the whole matrix would take). */
void kern_linear_rows_q4(float *y, const float *x, const uint8_t *wq, int m, int n, int k,
                         float *ws);

/* ---- next-token sampling with the per-row controls of the OpenAI / vLLM
 * batch format. One row of logits (V) becomes one token, in vLLM V1's
 * sampler order:
 *
 *   1. edited = the raw logits with the row's edits applied (penalties,
 *      banned tokens; kern_logit_edit, computed in fp32 as written there).
 *   2. temperature <= 0 (greedy): the argmax of edited, the lowest id on
 *      ties; min_p, top_k and top_p are ignored (as vLLM).
 *   3. temperature > 0: p = softmax(edited / temperature), then
 *      - min_p > 0: drop the tokens with p < min_p * max(p);
 *      - top_k > 0: keep the top_k most probable of the rest;
 *      - top_p < 1: of what remains, renormalised, keep the smallest prefix
 *        whose mass reaches top_p (at least one token);
 *      - u picks from the kept set: the first token whose running mass
 *        exceeds u * (the kept mass).
 *      "Most probable", "prefix" and "first" follow one order: probability
 *      descending, token id ascending on ties. Tokens of probability 0 (a
 *      ban, or an underflow) are never kept. "Renormalised": the prefix
 *      must reach top_p * (the mass min_p and top_k kept) when they dropped
 *      a token of positive probability, top_p otherwise (the probabilities
 *      then sum to 1; so top_k >= V and a min_p that drops nothing equal
 *      the control off, bit for bit).
 *   4. The log-probability reported is log_softmax(RAW logits)[token]
 *      (before edits and temperature: vLLM's default raw_logprobs); the n_top
 *      top log-probabilities are those of the n_top tokens of highest raw
 *      logit, descending, the lower id first on ties.
 *
 * Banned tokens (add = -INFINITY) are never chosen unless every token of
 * the row is banned; then the row's token is 0 (the lowest id, as greedy's
 * tie rule gives). A sampled row with a NaN or +inf edited logit has no
 * positive probability (the softmax's sum is NaN): its token is 0 too. */

/* The most top log-probabilities of one row (the OpenAI API's limit). */
#define KERN_TOP_LOGPROBS_MAX 20

/* The sampling controls of one row of logits. */
typedef struct kern_sample_row {
    float temperature; /* <= 0: greedy */
    float top_p;       /* 1: off */
    float min_p;       /* 0: off */
    int top_k;         /* 0: off */
    double u;          /* the draw, in [0, 1) */
    int edit0, n_edit; /* this row's logit edits: edits[edit0, edit0 + n_edit) */
    int n_top;         /* top logprobs wanted, 0 .. KERN_TOP_LOGPROBS_MAX (and <= V) */
} kern_sample_row;

/* One edit of a row's logit before the choice (penalties, banned tokens),
 * built by the caller: x -> (x > 0 ? x * pos : x * neg) + add, in fp32 (a
 * product, then a sum: never fused); add = -INFINITY bans the token. A
 * token appears at most once per row. Repetition penalty r: pos = 1 / r,
 * neg = r; presence / frequency penalties: pos = neg = 1, add = -penalty. */
typedef struct kern_logit_edit {
    int32_t tok; /* 0 .. V - 1 */
    float pos, neg, add;
} kern_logit_edit;

/* Pick the next token from one row of logits (V) with the controls *r, as
 * the text above says. edits: the caller's edit array (r's edits are
 * edits[r->edit0, r->edit0 + r->n_edit); NULL when n_edit is 0).
 * *logprob gets the raw log-probability of the token; top_ids, top_lps
 * (r->n_top) the top log-probabilities (may be NULL when n_top is 0).
 * scratch: scratch_bytes of workspace, at least kern_sample_scratch_bytes(V)
 * when the row samples (temperature > 0) or has edits; a greedy row
 * without edits uses none (scratch may then be NULL).
 * @return the token id, or -EINVAL (message recorded) for too little
 * scratch or controls kern_sample_row_check refuses. */
int32_t kern_sample_ref(const float *logits, int V, const kern_sample_row *r,
                        const kern_logit_edit *edits, float *logprob, int32_t *top_ids,
                        float *top_lps, void *scratch, size_t scratch_bytes);
/* Bytes of kern_sample_ref's scratch for a vocabulary of V: V floats + V
 * int32. */
size_t kern_sample_scratch_bytes(int V);
/* Check the controls of one row over a vocabulary of V (what
 * kern_sample_ref checks first; the CUDA backend checks every row with it
 * before its kernels run): 0 <= min_p <= 1, top_k >= 0, 0 <= n_top <=
 * KERN_TOP_LOGPROBS_MAX and <= V, n_edit >= 0, edit0 >= 0 when n_edit > 0
 * (edits then not NULL), each edit's token in 0 .. V - 1.
 * @return 0, or -EINVAL with a message naming the control. */
int kern_sample_row_check(const kern_sample_row *r, const kern_logit_edit *edits, int V);

/* H2O eviction for one (sequence, head): among slots [0, n_slots) with
 * token positions pos[], choose the slot to evict: not a sink
 * (pos >= sinks), not among the `recent` newest tokens
 * (pos <= newest_pos - recent), lowest score, ties to the older position.
 * @return the slot, or -1 when no slot is evictable. */
int kern_h2o_pick_ref(const float *scores, const int32_t *pos, int n_slots,
                      int sinks, int recent, int32_t newest_pos);

/* ------------------------------------- the RoPE families' element-wise ops
 * DESIGN.md "Model families": Llama, Mistral, Qwen2 (RMSNorm, RoPE,
 * SwiGLU) and GPT-NeoX (RoPE on rotary_pct of head_dim, GELU). Each
 * follows Hugging Face's fp32 computation; plain-C references whose rows
 * (GELU: chunks) spread over the OpenMP threads, each value computed alone,
 * so the bits do not depend on the threads. e^x in SiLU (and in the CPU
 * kernels' softmax) is kernels/cpu/vexp.h's: glibc's expf as its FMA build
 * computes it, 16 values per vector. */

/* out(n, d) = x / sqrt(mean(x^2) + eps) * w over the last dimension
 * (LlamaRMSNorm, in fp32: w * (x * rsqrt(mean(x^2) + eps))); out may be x. */
void kern_rmsnorm_ref(float *out, const float *x, const float *w, int n, int d, float eps);

/* rope_scaling "rope_type" of a model's config. */
typedef enum kern_rope_type {
    KERN_ROPE_DEFAULT, /* no rope_scaling */
    KERN_ROPE_LINEAR,  /* "linear": every frequency / factor */
    KERN_ROPE_LLAMA3,  /* "llama3" (Llama 3.1+): by wavelength, see rope.c */
} kern_rope_type;

/* The RoPE parameters of a model's config. */
typedef struct kern_rope {
    float theta;            /* rope_theta (Llama) / rotary_emb_base (GPT-NeoX) */
    kern_rope_type type;
    float factor;           /* linear, llama3: rope_scaling factor */
    float low_freq_factor;  /* llama3 */
    float high_freq_factor; /* llama3 */
    int orig_max_pos;       /* llama3: original_max_position_embeddings */
} kern_rope;

/* inv_freq(rot_dims / 2) = the rotary inverse frequencies, as transformers'
 * _compute_default_rope_parameters (1 / theta^(2i / rot_dims)) followed by
 * linear scaling or _compute_llama3_parameters computes them, in fp32.
 * rot_dims: the rotated dimensions of a head (head_dim; GPT-NeoX:
 * head_dim * rotary_pct). Computed once per model, at load.
 * @return 0, or -EINVAL (message recorded) for odd or non-positive
 * rot_dims or parameters out of range. */
int kern_rope_inv_freq(float *inv_freq, int rot_dims, const kern_rope *r);

/* Rotate, in place, the first rot_dims dimensions of each head of n rows of
 * q (n_head heads) and k (n_kv_head heads; k may be NULL: q only) for the
 * positions pos(n), with Hugging Face's rotate_half convention (the two
 * halves of the rotated dimensions, not interleaved pairs); the other
 * head_dim - rot_dims dimensions stay. Head h of row r is at q + r * ld +
 * h * head_dim (k likewise: both share the row stride ld, as packed QKV
 * rows do). inv_freq(rot_dims / 2) from kern_rope_inv_freq. Keys are
 * rotated before they are cached (DESIGN.md), so pos is the absolute
 * token position.
 * @return 0, or -EINVAL (message recorded) when rot_dims is odd, not
 * positive or above head_dim. */
int kern_rope_ref(float *q, float *k, int ld, const int32_t *pos, int n, int n_head,
                  int n_kv_head, int head_dim, int rot_dims, const float *inv_freq);

/* out(n, d) = silu(gate) * up, silu(x) = x / (1 + exp(-x)) (the Llama MLP's
 * act_fn(gate_proj(x)) * up_proj(x)). gate, up: rows of stride ld (the two
 * halves of a fused gate_up row, or two buffers); out rows of stride ldo;
 * out may be gate. */
void kern_swiglu_ref(float *out, int ldo, const float *gate, const float *up, int ld, int n,
                     int d);

/* out(count) = exact GELU(x) = 0.5 x (1 + erf(x / sqrt(2))) (GPT-NeoX
 * hidden_act "gelu", not the tanh approximation); out may be x. */
void kern_gelu_ref(float *out, const float *x, size_t count);

/* ------------------------------------------------ attention + KV slots
 * One decode step of a layer, per (sequence, head):
 *
 *   kern_attn_decode:  p = softmax(q . [K_slots ; k_new] * scale)
 *                      out = p . [V_slots ; v_new]
 *                      scores[slot] += p[slot]; self_p = p[new]
 *   kern_kv_insert:    slot = n_slots < budget ? n_slots : H2O victim
 *                      K/V[slot] = k/v_new; scores[slot] = self_p; pos[slot] = n_past
 *
 * and prefill (n_past 0) is exact causal attention over the prompt's own
 * rows, whose softmax column sums seed the scores of the tokens kept.
 *
 * Grouped-query attention (DESIGN.md "H2O with grouped-query attention"):
 * n_head query heads share n_kv_head KV heads (n_head % n_kv_head == 0),
 * query head h reads KV head h / (n_head / n_kv_head). q rows hold n_head
 * heads (head h at columns h*head_dim), k and v rows n_kv_head (KV head g at
 * columns g*head_dim); the caches, pos, scores, colsum, self_p and evicted
 * are per KV head. A KV head's score of a token is the sum, over the query
 * heads of its group in order, of the probability each gave it (each query
 * head's softmax normalised on its own); prefill selection and decode
 * eviction run per KV head on those sums. With n_kv_head == n_head every
 * op computes exactly what the per-head rule does (the same arithmetic).
 *
 * The ops that need per-thread scratch (a row of probabilities, a row of
 * keep flags: attention and the KV prefill) take it from the caller, who
 * sizes it once, at set-up, for the largest call: `scratch` (4-byte
 * aligned) of `scratch_bytes` bytes, at least what the op's
 * kern_*_scratch_bytes() says for the shape and the kern_cpu_threads()
 * threads the op runs with. Nothing on the decode path allocates. An op
 * handed less refuses the call: -EINVAL with a message (a caller that
 * sized it wrong), before it touches anything; else it returns 0. */

/* Threads the OpenMP kernels run with when called from this thread
 * (omp_get_max_threads()): the n_threads to size their scratch for. */
int kern_cpu_threads(void);
/* Scratch bytes of kern_attn_prefill_ref for prompts of up to max_new
 * tokens, of the kern_kv_prefill ops (any cache format) likewise, and of
 * the kern_attn_decode ops (any format) over caches of cap slots, each on
 * n_threads threads. */
size_t kern_attn_prefill_scratch_bytes(int max_new, int n_threads);
size_t kern_kv_prefill_scratch_bytes(int max_new, int n_threads);
size_t kern_attn_decode_scratch_bytes(int cap, int n_threads);

/* Causal self-attention of each sequence's n_new prompt rows (n_past must be
 * 0). q, k, v: packed rows with stride ld (query head h at columns
 * h*head_dim of q, KV head g at columns g*head_dim of k and v).
 * out (rows, ldo), n_head heads. colsum: NULL, or (rows, n_kv_head) fp32
 * that receives, for the token of each row and each KV head, the sum over
 * the queries of its sequence and the query heads of the KV head's group of
 * the softmax probability they gave it (the column sum of the causal
 * softmax, summed over the group). A sequence with a sliding window
 * (kern_seq.window) attends only to its last `window` keys, itself
 * included. */
int kern_attn_prefill_ref(float *out, int ldo, const float *q, const float *k,
                          const float *v, int ld, const kern_seq *seqs,
                          int n_seq, int n_head, int n_kv_head, int head_dim, float scale,
                          float *colsum, void *scratch, size_t scratch_bytes);

/* Fill the slot caches from the prompt rows after prefill. Per (sequence,
 * head): when n_new <= budget every token is kept, in slot = position;
 * otherwise the first `sinks`, the last `recent` and the `heavy` = budget -
 * sinks - recent highest colsum of the rest (ties keep the newer token),
 * stored in position order in slots [0, budget).
 * kc, vc: (n_seq, n_kv_head, cap, head_dim); scores: NULL or (n_seq,
 * n_kv_head, cap) fp32 set from colsum (rows, n_kv_head); pos: (n_seq,
 * n_kv_head, cap) int32 (n_head: the query heads, a multiple of
 * n_kv_head). */
int kern_kv_prefill_ref(float *kc, float *vc, float *scores, int32_t *pos,
                        const float *k, const float *v, int ld,
                        const float *colsum, const kern_seq *seqs, int n_seq,
                        int n_head, int n_kv_head, int head_dim, int cap, void *scratch,
                        size_t scratch_bytes);

/* Decode attention of one new row per active sequence (n_new 1) over its
 * n_slots cached tokens plus its own new k/v row (not yet in the cache).
 * scores: NULL or (n_seq, n_kv_head, cap), += the probability of every slot
 * summed over the KV head's query heads; self_p: NULL or (n_seq,
 * n_kv_head), = the probability of the new token, summed likewise. */
int kern_attn_decode_ref(float *out, int ldo, const float *q, const float *k,
                         const float *v, int ld, const float *kc,
                         const float *vc, const kern_seq *seqs, int n_seq,
                         int n_head, int n_kv_head, int head_dim, int cap, float scale,
                         float *scores, float *self_p, void *scratch,
                         size_t scratch_bytes);

/* Store the new token of each active sequence (n_new 1) in its cache: slot
 * n_slots while n_slots < budget, else the H2O victim of kern_h2o_pick_ref
 * (newest_pos = n_past; scores NULL counts as all zero, which is window /
 * StreamingLLM eviction). Sets K/V, pos = n_past and scores = self_p there.
 * Per (sequence, KV head); self_p (n_seq, n_kv_head).
 * evicted: NULL or (n_seq, n_kv_head) int32 = the evicted position or -1.
 * The caller then sets n_slots = min(n_slots + 1, budget), n_past += 1. */
void kern_kv_insert_ref(float *kc, float *vc, float *scores, int32_t *pos,
                        const float *k, const float *v, int ld,
                        const float *self_p, const kern_seq *seqs, int n_seq,
                        int n_head, int n_kv_head, int head_dim, int cap, int32_t *evicted);

/* The same three ops over fp16 caches (uint16_t fp16 bits: the CUDA
 * backend's KV) in host memory, everything else fp32 and host: CPU
 * attention (--cpu-attention) over host-resident KV, reading the cache in
 * place. */
int kern_attn_decode_h16(float *out, int ldo, const float *q, const float *k,
                         const float *v, int ld, const uint16_t *kc, const uint16_t *vc,
                         const kern_seq *seqs, int n_seq, int n_head, int n_kv_head, int head_dim,
                         int cap, float scale, float *scores, float *self_p, void *scratch,
                         size_t scratch_bytes);
int kern_kv_prefill_h16(uint16_t *kc, uint16_t *vc, float *scores, int32_t *pos,
                        const float *k, const float *v, int ld, const float *colsum,
                        const kern_seq *seqs, int n_seq, int n_head, int n_kv_head, int head_dim, int cap,
                        void *scratch, size_t scratch_bytes);
void kern_kv_insert_h16(uint16_t *kc, uint16_t *vc, float *scores, int32_t *pos,
                        const float *k, const float *v, int ld, const float *self_p,
                        const kern_seq *seqs, int n_seq, int n_head, int n_kv_head, int head_dim, int cap,
                        int32_t *evicted);

/* The same three ops over bf16 caches (uint16_t bf16 bits) in host memory:
 * the CPU backend's KERN_KV_FMT_BF16. A row is read exactly (bf16 widens
 * to fp32) and written rounded to nearest even (kern_round_bf16_ref), so
 * each equals the fp32 op over the cache rounded to bf16. */
int kern_attn_decode_bf16(float *out, int ldo, const float *q, const float *k,
                          const float *v, int ld, const uint16_t *kc, const uint16_t *vc,
                          const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                          int head_dim, int cap, float scale, float *scores, float *self_p,
                          void *scratch, size_t scratch_bytes);
int kern_kv_prefill_bf16(uint16_t *kc, uint16_t *vc, float *scores, int32_t *pos,
                         const float *k, const float *v, int ld, const float *colsum,
                         const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                         int head_dim, int cap, void *scratch, size_t scratch_bytes);
void kern_kv_insert_bf16(uint16_t *kc, uint16_t *vc, float *scores, int32_t *pos,
                         const float *k, const float *v, int ld, const float *self_p,
                         const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                         int head_dim, int cap, int32_t *evicted);

/* ------------------------------------------------ 16-bit weights
 * The CPU backend's tiers may keep a layer's tensors as 16-bit bits
 * (sched_shape.weight_fmt) and widen them to fp32 just before the
 * compute. */
typedef enum kern_h16 {
    KERN_H16_F16 = 1,  /* IEEE half */
    KERN_H16_BF16 = 2, /* bfloat16: the top 16 bits of an fp32 */
    /* bf16 matrices that kern_bf16_pack rearranged into the matmul's own
     * blocked layout: an argument of linear_h16 only (backend.h pack_h16),
     * never widened or read as rows */
    KERN_H16_BF16_PACKED = 3,
} kern_h16;

/* dst(n) fp32 <- src(n) 16-bit bits of format fmt, exactly. _par splits n
 * over the OpenMP threads (same values). */
void kern_widen_ref(float *dst, const uint16_t *src, size_t n, kern_h16 fmt);
void kern_widen_par(float *dst, const uint16_t *src, size_t n, kern_h16 fmt);
/* What kern_widen_par runs per chunk, on the calling thread alone (F16C
 * where built): the bits of kern_widen_ref. */
void kern_widen_row(float *dst, const uint16_t *src, size_t n, kern_h16 fmt);
/* kern_embed_ref over a table of 16-bit rows of format fmt (kern_h16): each
 * row widened as kern_widen_row, exactly, then pos_emb's fp32 row added:
 * the bits of kern_embed_ref over the widened table. */
void kern_embed_h16(float *out, const uint16_t *tok_emb, kern_h16 fmt, const float *pos_emb,
                    const int32_t *ids, const int32_t *pos, int n, int d);
/* kern_linear_rows_q4 over w = n rows of k 16-bit values of format fmt,
 * widened a chunk of rows at a time (kern_widen_row): the bits of kern_widen_ref
 * then kern_linear_rows. ws: n * k floats. */
void kern_linear_rows_h16(float *y, const float *x, const uint16_t *w, kern_h16 fmt, int m,
                          int n, int k, float *ws);

/* ------------------------------------------------ host memory streaming
 * calibrate's host-memory rate (scheduler/calibrate.c): a read of every
 * byte, as the CPU-attention kernels read a host-resident KV cache. */
/* The XOR of the n 64-bit words of p. _par splits n over the OpenMP
 * threads (the same value: XOR is associative and commutative). */
uint64_t kern_xor64_ref(const uint64_t *p, size_t n);
uint64_t kern_xor64_par(const uint64_t *p, size_t n);

/* ------------------------------------------------ bf16 matmuls
 * The CPU backend's linear over bf16 weights under --cpu-matmul bf16
 * (backend_cpu_opts.bf16_matmul): the activations rounded to bf16, the
 * products summed in fp32, as transformers' bf16 models compute. Not the
 * CPU backend's exact fp32 numbers: an option, off by default. */
/* dst(n) <- src(n) rounded to bf16 bits: nearest, ties to even; a NaN stays
 * a NaN, a value past the largest bf16 becomes an infinity. */
void kern_round_bf16_ref(uint16_t *dst, const float *src, size_t n);
/* The same, n split over the OpenMP threads (kern_widen_par's chunks). */
void kern_round_bf16_par(uint16_t *dst, const float *src, size_t n);
/* y(m, n) = bf16(x)(m, k) . w(n, k)^T, w bf16 bits, each product exact and
 * the sum over k in double, rounded once to fp32: the reference. */
void kern_linear_bf16_ref(float *y, const float *x, const uint16_t *w, int m, int n, int k);
/* The same through oneDNN's matmul (AMX / AVX512-BF16 where the CPU has
 * them), the sum in fp32 in oneDNN's order. ws: ws_bytes of scratch, at
 * least k * 2 (x's rows are rounded into it a chunk at a time). @return 0,
 * or -ENOTSUP (no oneDNN in the build, or no bf16 matmul on this CPU but
 * oneDNN's reference) / -EIO (oneDNN failed) with a message. */
int kern_linear_bf16(float *y, const float *x, const uint16_t *w, int m, int n, int k,
                     void *ws, size_t ws_bytes);
/* w(n, k) bf16, Hugging Face's (out, in) layout, rearranged in place into
 * the blocked layout oneDNN's matmul reads its weights in (the layout a
 * matmul of plain weights copies them into on every call: a decode GEMM of
 * 4-64 rows on the Zen 4 VM of results/cpu-epyc-2026-12-03 ran 1.2-4.9x
 * faster from it); then only kern_linear_bf16_packed reads it. w NULL:
 * only whether it would. @return 1 packed (or would be), 0 not packable
 * here (no oneDNN matmul, or its layout of this shape is larger than the
 * matrix or the same as the plain one), -ENOMEM / -EIO with a message. */
int kern_bf16_pack(uint16_t *w, int n, int k);
/* kern_linear_bf16 over a matrix that kern_bf16_pack packed: the same
 * sums, in the same order. */
int kern_linear_bf16_packed(float *y, const float *x, const uint16_t *w, int m, int n, int k,
                            void *ws, size_t ws_bytes);
/* kern_embed_h16 (bf16) over a (v, d) table that kern_bf16_pack packed (a
 * tied embedding and LM head): each looked-up row gathered from the
 * blocked layout, widened exactly, pos_emb's row added: the same bits.
 * @return 0, or -EINVAL when (v, d) is not a shape kern_bf16_pack packs. */
int kern_bf16_packed_embed(float *out, const uint16_t *w, int v, int d, const float *pos_emb,
                           const int32_t *ids, const int32_t *pos, int n);
/* dst(rows, n) bf16 bits <- the 4-bit rows of src (kern_q4_row_bytes(n)
 * bytes each) dequantized as kern_q4_dequant_ref, then rounded as
 * kern_round_bf16_ref: a 4-bit matrix for kern_linear_bf16. stage: n floats
 * per OpenMP thread. */
void kern_q4_dequant_bf16(uint16_t *dst, const uint8_t *src, size_t rows, int n, float *stage);
/* y(m, n) = bf16(x)(m, k) . w(n, k)^T where w is the 4-bit matrix wq
 * dequantized and rounded as kern_q4_dequant_bf16: the bits of that then
 * kern_linear_bf16, without the bf16 matrix ever in memory. The threads
 * take tiles of w's rows, each expanded in the thread's cache into the
 * blocked layout oneDNN reads (plain where a tile's shape does not pack)
 * and multiplied there by one thread. ws: ws_bytes of scratch: per thread
 * a tile (256 Ki values, at least 64 rows) and its product, and x's rows
 * in bf16 (fewer threads take part in a smaller one); n * k floats
 * suffice from n = 8 and k = 16. oneDNN's scratchpads (one per thread)
 * are kept by the calling thread, grown to the largest it has needed and
 * freed when it ends: a pass allocates nothing once its shapes have run.
 * @return 0, or -ENOTSUP / -EIO as kern_linear_bf16,
 * -ENOMEM. */
int kern_linear_q4_bf16(float *y, const float *x, const uint8_t *wq, int m, int n, int k,
                        void *ws, size_t ws_bytes);
/* 1 when kern_linear_bf16 can run here; *why (may be NULL): the
 * implementation oneDNN picked, or why not. Thread-safe. */
int kern_bf16_matmul_available(const char **why);
/* 1 where kern_linear_bf16 runs on AMX tiles (oneDNN's implementation
 * names "amx"). oneDNN then picks its kernel by the product's shape (on
 * the Xeon VM of 2026-12-05: AMX tiles from 16 rows, AVX512-BF16 dot
 * products at 1 and 3) and blocks its sums by the matrix's shape and
 * layout, so products split differently (x in chunks, a matrix in tiles,
 * plain against packed weights at long rows) add in another order; with
 * AVX512-BF16 alone one kernel runs every shape the same way. 0 without
 * a bf16 matmul. */
int kern_bf16_matmul_amx(void);
/* From this many rows the CPU backend under bf16 matmuls runs a 4-bit
 * matrix as kern_linear_q4_bf16 rather than the fp32 rows kernel
 * (kern_linear_rows_q4): on the Zen 4 VM of results/cpu-epyc-2026-12-03
 * (bench_cpu_linear, one opt-1.3b layer) 9.6 ms against 11.8 at 8 rows,
 * 7.7 against 6.3 at 4. (At 16, when the whole matrix was still expanded
 * to bf16 in memory first, opt-1.3b H2O 20% + 4-bit 32+32 decoded at 45-53
 * tok/s instead of 31-32 on the Sapphire Rapids VM: results/cpu-xeon-
 * 2026-12-03/bf16, ab-q4-rows.txt.) */
#define KERN_Q4_BF16_ROWS_MIN 8

/* ------------------------------------------------ 4-bit group quantization
 * DESIGN.md "compress_weight / compress_cache": 4 bits, groups of
 * KERN_Q4_GROUP consecutive values of a row, asymmetric min/max, fp16 scale
 * and min per group. A row of n values is ceil(n / 64) blocks of
 * KERN_Q4_BLOCK bytes (the last group of a row may be short; its unused
 * codes are 0):
 *
 *   bytes 0-1  scale (fp16)    bytes 2-3  min (fp16)
 *   bytes 4-35 codes: value 2i in the low nibble of byte 4 + i, 2i + 1 in
 *              the high nibble
 *
 * Quantize a group: mn, mx = its min and max; scale = fp16((mx - mn) / 15),
 * min = fp16(mn); code = clamp(rint((x - min) / scale), 0, 15) (0 when scale
 * is 0). Dequantize: x = min + code * scale, in fp32 without contraction
 * (the CUDA kernels give the same bits). A slot of a 4-bit KV cache is one
 * row of head_dim values; a weight matrix (out, in) is `out` rows of `in`. */
#define KERN_Q4_GROUP 64
#define KERN_Q4_BLOCK 36

static inline size_t kern_q4_row_bytes(int n)
{
    return (size_t)((n + KERN_Q4_GROUP - 1) / KERN_Q4_GROUP) * KERN_Q4_BLOCK;
}

/* dst(rows, kern_q4_row_bytes(n)) <- src(rows, n): fp32 (_ref) or fp16 bits
 * (_h16), both quantized from the fp32 value. */
void kern_q4_quantize_ref(uint8_t *dst, const float *src, size_t rows, int n);
void kern_q4_quantize_h16(uint8_t *dst, const uint16_t *src, size_t rows, int n);
/* dst(rows, n) fp32 <- src(rows, kern_q4_row_bytes(n)): the plain-C
 * reference (_ref, one value at a time) and what the CPU backend runs
 * (_par: rows over the OpenMP threads, whole groups in SIMD where the
 * build has AVX2); the same bits (a NaN field gives NaN, payload aside). */
void kern_q4_dequant_ref(float *dst, const uint8_t *src, size_t rows, int n);
void kern_q4_dequant_par(float *dst, const uint8_t *src, size_t rows, int n);
/* One row of n values: dst(kern_q4_row_bytes(n)) <- src(n), and back
 * (the row of kern_q4_dequant_par). */
void kern_q4_quantize_row(uint8_t *dst, const float *src, int n);
void kern_q4_dequant_row(float *dst, const uint8_t *src, int n);

/* The slot-cache ops over 4-bit caches kc, vc ((n_seq, n_head, cap) rows of
 * kern_q4_row_bytes(head_dim) bytes) in host memory, everything else fp32
 * and host: the CPU backend's compressed KV, and CPU attention over the
 * CUDA backend's host-resident compressed KV. Each equals the fp32 op run
 * on the dequantized cache, with the rows it writes quantized
 * (head_dim <= 1024). */
int kern_attn_decode_q4(float *out, int ldo, const float *q, const float *k,
                        const float *v, int ld, const uint8_t *kc, const uint8_t *vc,
                        const kern_seq *seqs, int n_seq, int n_head, int n_kv_head, int head_dim,
                        int cap, float scale, float *scores, float *self_p, void *scratch,
                        size_t scratch_bytes);
int kern_kv_prefill_q4(uint8_t *kc, uint8_t *vc, float *scores, int32_t *pos,
                       const float *k, const float *v, int ld, const float *colsum,
                       const kern_seq *seqs, int n_seq, int n_head, int n_kv_head, int head_dim, int cap,
                       void *scratch, size_t scratch_bytes);
void kern_kv_insert_q4(uint8_t *kc, uint8_t *vc, float *scores, int32_t *pos,
                       const float *k, const float *v, int ld, const float *self_p,
                       const kern_seq *seqs, int n_seq, int n_head, int n_kv_head, int head_dim, int cap,
                       int32_t *evicted);

/* ---------------------------------------------------------------- CUDA */
/* Device pointers are void * for fp16 (__half) data, float * / int32_t *
 * for fp32 / int32 device data; `seqs` of the CUDA ops is a device copy of
 * the kern_seq array (the host copy's maxima are passed as arguments).
 * stream is a cudaStream_t. Each returns 0; -EINVAL for a shape or buffer
 * it does not support (the message says which), -ENOTSUP for a KV format
 * it does not know; -EIO, or -ENOMEM when the device is out of memory, for
 * a failed CUDA call. The reason is recorded through err_set() (err.h),
 * for a CUDA call as "CUDA: call in function (file:line): reason". Any
 * batch size fits the launch geometry: the ops take up to 2^31 - 1
 * (sequence, head) pairs and prompts and caches of any length. */

/* The CUDA devices this process sees (0: none, or no CUDA build). */
int kern_cuda_available(void);
/* Lower the y extent of the attention grids below CUDA's 65535 (0: back to
 * 65535). The kernels then loop over more y indices per block: the tests
 * run that loop with small shapes this way. Not thread-safe: set it before
 * launching. */
void kern_cuda_set_grid_y_max(unsigned max);

/* dst(n) fp16 <- src(n) fp32 and back, both on the device. */
int kern_f32_to_f16_cuda(void *dst, const float *src, size_t n, void *stream);
int kern_f16_to_f32_cuda(float *dst, const void *src, size_t n, void *stream);

/* kern_embed_ref; ids, pos: device (n). pos_emb NULL: out = tok_emb[ids]
 * only (the RoPE families, no learned positions); pos may then be NULL. */
int kern_embed_cuda(void *out, const void *tok_emb, const void *pos_emb,
                    const int32_t *ids, const int32_t *pos, int n, int d,
                    void *stream);
/* kern_layernorm_ref; out may be x. */
int kern_layernorm_cuda(void *out, const void *x, const void *w, const void *b,
                        int n, int d, float eps, void *stream);
/* The RoPE families' element-wise ops (kernels/rmsnorm.cu, rope.cu,
 * swiglu.cu, gelu.cu), fp16 in and out, fp32 math in the reference's order.
 * kern_rmsnorm_ref; out may be x. */
int kern_rmsnorm_cuda(void *out, const void *x, const void *w, int n, int d, float eps,
                      void *stream);
/* kern_rope_ref on q, k in place (k may be NULL); pos (n) and inv_freq
 * (rot_dims / 2): device. -EINVAL for the rot_dims the reference refuses. */
int kern_rope_cuda(void *q, void *k, int ld, const int32_t *pos, int n, int n_head,
                   int n_kv_head, int head_dim, int rot_dims, const float *inv_freq,
                   void *stream);
/* kern_swiglu_ref. out may be gate when ldo == ld (or n == 1): element for
 * element in place; out == gate with another row stride is refused
 * (-EINVAL), since the rows would overlap across threads. */
int kern_swiglu_cuda(void *out, int ldo, const void *gate, const void *up, int ld, int n,
                     int d, void *stream);
/* kern_gelu_ref; out may be x. */
int kern_gelu_cuda(void *out, const void *x, size_t count, void *stream);
/* kern_bias_act_ref (b may be NULL: ReLU only) and kern_add_ref. */
int kern_bias_act_cuda(void *x, const void *b, int n, int d, int relu, void *stream);
int kern_add_cuda(void *y, const void *x, size_t count, void *stream);
/* dst(n, d) = src rows rows[0..n); rows: device. */
int kern_gather_rows_cuda(void *dst, const void *src, const int32_t *rows, int n,
                          int d, void *stream);

/* The attention and slot-cache ops take kern.h's grouped-query attention:
 * n_head query heads over n_kv_head KV heads (n_head % n_kv_head == 0,
 * else -EINVAL), caches, pos, scores, colsum, self_p and evicted per KV
 * head, a KV head's score the sum over its group's query heads in head
 * order. With n_kv_head == n_head each does the per-head arithmetic.
 *
 * kern_attn_prefill_ref. max_new: the largest n_new; work: fp32 (rows,
 * n_head, 2) for the softmax statistics of every query row (used only
 * when colsum is not NULL); colsum (rows, n_kv_head). head_dim % 8 == 0,
 * head_dim <= 256. */
int kern_attn_prefill_cuda(void *out, int ldo, const void *q, const void *k,
                           const void *v, int ld, const kern_seq *seqs, int n_seq,
                           int n_head, int n_kv_head, int head_dim, float scale, float *colsum,
                           float *work, int max_new, void *stream);
/* kern_attn_prefill_ref in one launch for every sequence and head, on the
 * tensor cores with the scores kept on chip (flash_prefill.cu): out, and
 * colsum (rows, n_kv_head) when not NULL; sliding windows (kern_seq.window)
 * included. work as for kern_attn_prefill_cuda: fp32 (rows, n_head, 2), the
 * row statistics the column sums are recomputed from (used only when
 * colsum is not NULL). head_dim % 8 == 0, head_dim <= KERN_FLASH_HEAD_DIM_MAX. */
#define KERN_FLASH_HEAD_DIM_MAX 128
int kern_attn_prefill_flash_cuda(void *out, int ldo, const void *q, const void *k,
                                 const void *v, int ld, const kern_seq *seqs, int n_seq,
                                 int n_head, int n_kv_head, int head_dim, float scale,
                                 float *colsum, float *work, int max_new, void *stream);
/* The tensor-core form of prefill attention, per sequence of n tokens, a
 * run of `heads` query heads h0 .. h0 + heads - 1 and a block of `rows`
 * query rows i0 .. i0 + rows - 1 (the whole prompt: i0 0, rows n): the
 * caller forms S (heads, rows, cols) fp32 = scale Q K^T against the keys
 * 0 .. cols - 1 (cols = i0 + rows: the keys the block's causal rows see)
 * of each query head's KV head with batched GEMMs;
 * kern_prefill_softmax_cuda writes P (heads, rows, cols) fp16 = causal
 * softmax(S) (zeros above the diagonal) and, when stats is not NULL,
 * (heads, rows, 2) row max and sum; kern_prefill_colsum_cuda then adds the
 * block's column sums of the softmax, from S in fp32, to colsum[(row0 + j)
 * * n_kv_head + (h0 + h) / (n_head / n_kv_head)], the KV head's, head by
 * head in order (storing the first addend of a column: that of the block
 * where it starts, j >= i0, for the first query head of the KV head's
 * group); the caller forms the block's out = P V with a second GEMM. For
 * each KV head, its query heads must come in order and, for each, the
 * blocks in order of i0, each starting where the last ended. */
int kern_prefill_softmax_cuda(const float *S, void *P, float *stats, int rows, int cols,
                              int i0, int heads, void *stream);
int kern_prefill_colsum_cuda(const float *S, const float *stats, float *colsum, int rows,
                             int cols, int i0, int heads, int row0, int n_head, int n_kv_head,
                             int h0, void *stream);
/* The slot-cache ops over caches kc, vc of format fmt: KERN_KV_FMT_PLAIN
 * (n_seq, n_kv_head, cap, head_dim) fp16, or KERN_KV_FMT_Q4 (n_seq,
 * n_kv_head, cap) rows of kern_q4_row_bytes(head_dim) bytes, 4-byte
 * aligned. The
 * 4-bit forms make the same selections and evictions, read the cache in
 * place, and quantize new fp16 rows from their fp32 value: the blocks of
 * kern_q4_quantize_h16, byte for byte (finite values). head_dim % 8 == 0;
 * decode and the 4-bit writers also take head_dim <= 256 only (a short
 * last 4-bit group is fine).
 *
 * kern_kv_prefill_ref (kern_kv_prefill_q4). max_new: the largest n_new. */
int kern_kv_prefill_cuda(kern_kv_fmt fmt, void *kc, void *vc, float *scores, int32_t *pos,
                         const void *k, const void *v, int ld, const float *colsum,
                         const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                         int head_dim, int cap, int max_new, void *stream);
/* kern_attn_decode_ref (kern_attn_decode_q4), split over chunks of slots,
 * flash-decoding style. work: kern_attn_decode_work() bytes for the n_head
 * query heads, the same for both formats and any n_kv_head; max_slots: the
 * largest n_slots. */
size_t kern_attn_decode_work(int n_seq, int n_head, int head_dim, int cap);
int kern_attn_decode_cuda(void *out, int ldo, const void *q, const void *k,
                          const void *v, int ld, kern_kv_fmt fmt, const void *kc,
                          const void *vc, const kern_seq *seqs, int n_seq, int n_head,
                          int n_kv_head, int head_dim, int cap, float scale, float *scores,
                          float *self_p, void *work, int max_slots, void *stream);
/* kern_kv_insert_ref (kern_kv_insert_q4), one warp per (sequence, KV
 * head). */
int kern_kv_insert_cuda(kern_kv_fmt fmt, void *kc, void *vc, float *scores, int32_t *pos,
                        const void *k, const void *v, int ld, const float *self_p,
                        const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                        int head_dim, int cap, int32_t *evicted, void *stream);

/* What a kern_sample_cuda call does beyond the raw argmax, which decides
 * the work space it needs (each level's includes the one before). */
enum kern_sample_need {
    KERN_SAMPLE_ARGMAX, /* every row greedy without edits: row statistics only */
    KERN_SAMPLE_EDIT,   /* some row has edits, none samples: + an fp32 copy */
    KERN_SAMPLE_DRAW,   /* some row samples: + the sort of the vocabulary */
};
/* kern_sample_ref for n_rows rows of fp16 logits (n_rows, V). rows
 * (n_rows), edits (their edit0 index this array): device copies of the
 * host arrays. tokens, logprobs: device (n_rows); top_ids, top_lps: device
 * (n_rows, KERN_TOP_LOGPROBS_MAX), only the first n_top of a row written,
 * NULL when no row asks for any. need: the highest
 * kern_sample_need of the rows (a row beyond it is an error of the
 * caller). work: kern_sample_work(n_rows, V, need) bytes. */
size_t kern_sample_work(int n_rows, int V, int need);
int kern_sample_cuda(const void *logits, int n_rows, int V, const kern_sample_row *rows,
                     const kern_logit_edit *edits, int32_t *tokens, float *logprobs,
                     int32_t *top_ids, float *top_lps, void *work, int need, void *stream);

/* 4-bit weights (kernels/q4.cu): dst(rows, n) fp16 <- src(rows,
 * kern_q4_row_bytes(n)): the fp32 value of kern_q4_dequant_ref, bit for
 * bit, rounded to fp16 (a weight matrix before its GEMM). Any n and
 * alignment; fast when n % 8 == 0, dst 16- and src 4-byte aligned. */
int kern_q4_dequant_cuda(void *dst, const void *src, size_t rows, int n, void *stream);

#ifdef __cplusplus
}
#endif

#endif

/* backend.h: the compute-backend vtable (ggml-backend-impl style).
 *
 * The model code (src/model/), the scheduler and the KV policies call
 * only these ops, so they run unchanged on the CPU backend (fp32, OpenBLAS,
 * kernels/cpu/) and the CUDA backend (fp16 storage, fp32 accumulation,
 * cuBLAS, the kernels/<op>.cu files).
 *
 * Buffers ("dev" pointers) live in the backend's memory and hold elements of
 * the backend's storage type (elem_size bytes: 4 on CPU, 2 on CUDA). KV
 * caches and H2O scores are separate: scores are always fp32. Counts are in
 * elements. Host arrays (ids, positions, seqs) are plain host memory; a
 * backend copies what it needs. Every op returns 0 or -errno with the reason
 * recorded through err_set().
 */
#ifndef FH_BACKEND_IMPL_H
#define FH_BACKEND_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "kern.h"

/* The largest calls a caller will make (backend_ops.reserve): what a
 * backend sizes every work buffer and staging area for, once. A field of
 * 0 reserves nothing for what it bounds. */
typedef struct backend_limits {
    int rows;        /* rows (tokens) of one call: embed's ids and positions,
                      * gather_rows' rows, the packed q/k/v rows of an attention op */
    int seqs;        /* sequences (kern_seq entries) of one attention or KV op */
    int heads, kv_heads, head_dim;
    int cap;         /* KV slots per (sequence, KV head) */
    int prompt;      /* longest prompt (n_new) of an attn_prefill / kv_prefill call */
    int sample_rows; /* logit rows of one sample call (0: the caller does not sample) */
    int vocab;       /* V of those rows */
    int sample_draw; /* 1: a sample row may have temperature > 0 (top-p sorts the
                      * vocabulary: work for sample_rows x vocab); 0: greedy only */
    int sample_edits; /* logit edits (kern_logit_edit) of one sample call, all its
                       * rows together (> 0: an fp32 copy of the rows as well) */
    int sample_top;  /* 1: a sample row may ask for top logprobs (n_top > 0) */
} backend_limits;

typedef struct backend_ops {
    const char *name;  /* "cpu" or "cuda" */
    size_t elem_size;  /* bytes per stored activation/weight element */
    int host_visible;  /* 1: backend buffers are host memory (CPU backend), so
                        * the disk engine reads and writes them directly: a
                        * buffer of 4096 bytes or more is then 4096-aligned
                        * (O_DIRECT), and the scheduler gives its I/O lanes
                        * no host stages of their own */
    unsigned kv_formats; /* the KV cache formats the KV ops take: bit
                          * (1u << f) for each kern_kv_fmt f (backend_kv_fmt_has) */

    void (*destroy)(void *ctx);

    /* Allocate n elements (of elem_size), or n 4-byte words (fp32 or int32:
     * H2O scores, slot positions, evictions); zeroed. */
    int (*alloc)(void *ctx, size_t n, void **out);
    int (*alloc_words)(void *ctx, size_t n, void **out);
    void (*free)(void *ctx, void *p); /* accepts NULL */

    /* dst(n) <- fp32 host src, converted to the storage type. */
    int (*upload)(void *ctx, void *dst, const float *src, size_t n);
    /* fp32 host dst(n) <- src, converted from the storage type. */
    int (*download)(void *ctx, float *dst, const void *src, size_t n);
    /* n 4-byte words (fp32 or int32) both ways, unconverted. */
    int (*upload_words)(void *ctx, void *dst, const void *src, size_t n);
    int (*download_words)(void *ctx, void *dst, const void *src, size_t n);

    /* out(n, d) = tok_emb[ids] + pos_emb[pos + 2]; ids, pos: host (n).
     * pos_emb NULL (no learned positions: the RoPE families): out =
     * tok_emb[ids] only, and pos may be NULL. */
    int (*embed)(void *ctx, void *out, const void *tok_emb,
                 const void *pos_emb, const int32_t *ids, const int32_t *pos,
                 int n, int d);
    /* out(n, d) = LayerNorm(x) * w + b; out may equal x. */
    int (*layernorm)(void *ctx, void *out, const void *x, const void *w,
                     const void *b, int n, int d, float eps);
    /* y(m, n) = x(m, k) . w(n, k)^T (+ b(n) unless b is NULL), then ReLU
     * when relu != 0. w is a Hugging Face Linear weight, (out, in). */
    int (*linear)(void *ctx, void *y, const void *x, const void *w,
                  const void *b, int m, int n, int k, int relu);
    /* y(count) += x(count). */
    int (*add)(void *ctx, void *y, const void *x, size_t count);
    /* dst(n, d) = src rows rows[0..n) (host indices). */
    int (*gather_rows)(void *ctx, void *dst, const void *src,
                       const int32_t *rows, int n, int d);
    /* The attention and KV-slot ops of kern.h (kern_attn_prefill_ref,
     * kern_kv_prefill_ref, kern_attn_decode_ref, kern_kv_insert_ref) on
     * backend buffers. seqs is host memory; colsum, scores, self_p are fp32
     * buffers, pos and evicted int32 buffers (alloc_words); any of
     * colsum, scores, self_p, evicted may be NULL as in kern.h.
     * n_head query heads share n_kv_head KV heads (n_head % n_kv_head == 0,
     * grouped-query attention as kern.h states it): caches, scores, pos,
     * colsum, self_p and evicted are per KV head. Both backends have it; a
     * backend whose kernels did not would refuse n_kv_head != n_head with
     * -ENOTSUP and a message. Head counts that are not such a grouping are
     * refused with -EINVAL.
     *
     * The KV ops take the format of their caches kc, vc as an argument, fmt
     * (kern.h's kern_kv_fmt), right before them: KERN_KV_FMT_PLAIN caches
     * are (n_seq, n_kv_head, cap, head_dim) of the storage type;
     * KERN_KV_FMT_Q4 caches (compress_cache) are (n_seq, n_kv_head, cap) rows
     * of kern_q4_row_bytes(head_dim) bytes, and each op then equals the
     * plain op over the dequantized cache with the rows it writes
     * quantized. A format the backend does not have (kv_formats) is
     * refused with -ENOTSUP and a message that names it. */
    int (*attn_prefill)(void *ctx, void *out, int ldo, const void *q, const void *k,
                        const void *v, int ld, const kern_seq *seqs, int n_seq,
                        int n_head, int n_kv_head, int head_dim, float scale, void *colsum);
    int (*kv_prefill)(void *ctx, kern_kv_fmt fmt, void *kc, void *vc, void *scores, void *pos,
                      const void *k, const void *v, int ld, const void *colsum,
                      const kern_seq *seqs, int n_seq, int n_head, int n_kv_head, int head_dim,
                      int cap);
    int (*attn_decode)(void *ctx, void *out, int ldo, const void *q, const void *k,
                       const void *v, int ld, kern_kv_fmt fmt, const void *kc, const void *vc,
                       const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                       int head_dim, int cap, float scale, void *scores, void *self_p);
    int (*kv_insert)(void *ctx, kern_kv_fmt fmt, void *kc, void *vc, void *scores, void *pos,
                     const void *k, const void *v, int ld, const void *self_p,
                     const kern_seq *seqs, int n_seq, int n_head, int n_kv_head, int head_dim,
                     int cap, void *evicted);
    /* ---- 4-bit weights (DESIGN.md compress_weight) ----
     * dst(rows, n) in the storage type <- src: rows of kern_q4_row_bytes(n)
     * bytes (kern.h's format), both backend buffers (a compressed weight
     * matrix is expanded just before its GEMM). */
    int (*dequant_q4)(void *ctx, void *dst, const void *src, size_t rows, int n);
    /* linear over w = the 4-bit matrix wq (n rows of kern_q4_row_bytes(k)
     * bytes) expanded: the numbers of dequant_q4 then linear, without the
     * expanded matrix written out where the backend can (a decode pass's
     * few rows). ws: n * k storage elements of scratch. NULL: the caller
     * runs dequant_q4 into its scratch, then linear. The CPU backend under
     * bf16_matmul runs KERN_Q4_BF16_ROWS_MIN rows or more (a prefill, a
     * decode block of 8 or more) as a bf16 matmul over the expansion
     * rounded to bf16 instead (kern_linear_q4_bf16). */
    int (*linear_q4)(void *ctx, void *y, const void *x, const void *wq, const void *b, int m,
                     int n, int k, int relu, void *ws);
    /* ---- 16-bit weights on a backend whose storage type is fp32 ----
     * dst(n) in the storage type <- src(n) 16-bit bits of format fmt
     * (kern_h16), exactly; both backend buffers (a layer kept in 16 bits on
     * the tiers, sched_shape.weight_fmt, is widened once per block just
     * before its compute). NULL where the storage type is 16 bits (CUDA):
     * its tiers hold that type already. */
    int (*widen)(void *ctx, void *dst, const void *src, size_t n, kern_h16 fmt);
    /* linear over w = n rows of k 16-bit values of format fmt, widened:
     * the numbers of widen then linear, without the widened matrix written
     * out where the backend can (a decode pass's few rows). ws: n * k
     * storage elements of scratch, or where h16_direct(fmt) the smaller
     * of that and m * k 16-bit values (x rounded to bf16). NULL: the
     * caller widens, then linear. */
    int (*linear_h16)(void *ctx, void *y, const void *x, const void *w, kern_h16 fmt,
                      const void *b, int m, int n, int k, int relu, void *ws);
    /* 1 when linear_h16 over format fmt computes from the 16-bit matrix
     * itself at every row count (the CPU backend's bf16 matmuls), so a
     * layer is never widened for it, not even when a block's GPU batches
     * share it; 0 otherwise. NULL: always 0. */
    int (*h16_direct)(void *ctx, kern_h16 fmt);
    /* Rearrange w, n rows of k 16-bit values of format fmt that stay where
     * they are for the rest of the run (a resident weight), in place into
     * the layout linear_h16 reads fastest; linear_h16 then takes it as
     * KERN_H16_BF16_PACKED, and nothing else reads it. w NULL: only
     * whether it would. @return 1 packed (or would be), 0 not for this
     * format or shape, -errno. NULL: never. */
    int (*pack_h16)(void *ctx, void *w, kern_h16 fmt, int n, int k);
    /* embed over a token table of 16-bit rows of format fmt (kern.h
     * kern_embed_h16: each row widened exactly): where h16_direct, the
     * model keeps its embedding and head matrices in those 16 bits too,
     * written and read as host memory: a backend with h16_direct has
     * embed_h16 and is host_visible. v: the table's rows; fmt may be
     * KERN_H16_BF16_PACKED (a tied table that pack_h16 packed as the
     * head). NULL: no such tables. */
    int (*embed_h16)(void *ctx, void *out, const void *tok_emb, kern_h16 fmt, int v,
                     const void *pos_emb, const int32_t *ids, const int32_t *pos, int n, int d);
    /* ---- the RoPE families' element-wise ops (DESIGN.md "Model families") ----
     * kern.h's kern_rmsnorm_ref, kern_rope_ref, kern_swiglu_ref and
     * kern_gelu_ref on backend buffers; pos and inv_freq (rot_dims / 2,
     * from kern_rope_inv_freq) are host memory. Both backends have them; a
     * backend may leave one NULL, so a caller that loads a family needing
     * one checks first with backend_ops_check(), which refuses with a
     * message. swiglu in place (out == gate) takes ldo == ld. */
    int (*rmsnorm)(void *ctx, void *out, const void *x, const void *w, int n, int d,
                   float eps);
    int (*rope)(void *ctx, void *q, void *k, int ld, const int32_t *pos, int n, int n_head,
                int n_kv_head, int head_dim, int rot_dims, const float *inv_freq);
    int (*swiglu)(void *ctx, void *out, int ldo, const void *gate, const void *up, int ld,
                  int n, int d);
    int (*gelu)(void *ctx, void *out, const void *x, size_t count);
    /* Sample one token per row of logits (n_rows, V) (storage type), each
     * row as kern_sample_ref with its controls (kern.h: edits, greedy,
     * temperature, min_p, top_k, top_p, top logprobs). rows (n_rows) and
     * edits (what rows' edit0 / n_edit index; NULL when no row has one):
     * host. tokens, logprobs: host out (n_rows); top_ids, top_lps: host
     * out (n_rows, KERN_TOP_LOGPROBS_MAX) row-major, only the first n_top
     * of each row written; they may be NULL when no row has n_top > 0.
     * Within a reservation a call needs sample_rows >= n_rows, the sum of
     * the rows' n_edit <= sample_edits, and sample_draw / sample_top when a
     * row samples / asks for top logprobs (a greedy call without edits or
     * top logprobs sorts nothing and copies no logits). */
    int (*sample)(void *ctx, const void *logits, int n_rows, int V,
                  const kern_sample_row *rows, const kern_logit_edit *edits,
                  int32_t *tokens, float *logprobs, int32_t *top_ids, float *top_lps);
    /* Wait for all work issued so far (not used on the decode path). */
    int (*sync)(void *ctx);

    /* ---- work memory, sized once ----
     * Reserve every work buffer and staging area the ops need for calls
     * within *lim, before a run: sched_create calls it with its plan's
     * shapes and its caller's sampling, sched_destroy with NULL. The rule:
     * while a reservation is held no op allocates or frees (on CUDA that
     * would be a cudaFree / cudaMalloc, which synchronise the device); a
     * call beyond the limits fails with "internal: ... exceeds the
     * reserved ..." instead. Reservations nest: another one widens the
     * limits to cover both, reserve(ctx, NULL) ends the latest. With none
     * held (tests calling ops directly, calibration) an op still grows what
     * it needs on first use. Call it from the thread that issues the
     * compute ops, with none in flight. @return 0 or -errno (-ENOMEM: the
     * limits do not fit). */
    int (*reserve)(void *ctx, const backend_limits *lim);
    /* Allocations since the backend was created: buffers (alloc,
     * alloc_words, host_alloc) and work space an op grew outside a
     * reservation. A test reads it around a run: a pass allocates nothing.
     * Any thread may call it. */
    uint64_t (*allocs)(void *ctx);

    /* ---- raw byte movement for the offloading scheduler (scheduler/) ----
     * "Host tier" memory: pinned (page-locked) on CUDA so that copies can run
     * asynchronously at full link speed, plain 4096-aligned memory on the
     * CPU backend. bytes may be 0. Zeroed. Free with host_free. */
    int (*host_alloc)(void *ctx, size_t bytes, void **out);
    void (*host_free)(void *ctx, void *p); /* accepts NULL */
    /* Raw byte copies (no type conversion) between backend buffers (dev)
     * and host memory (pinned or not). They block the calling thread until
     * the bytes have arrived, run on the copy queue of their direction (not
     * the compute queue) and do NOT wait for compute issued by another
     * thread: a caller that reads or overwrites a buffer that compute uses
     * orders itself with the events below. Any thread may call them. */
    int (*copy_h2d)(void *ctx, void *dev, const void *host, size_t bytes);
    int (*copy_d2h)(void *ctx, void *host, const void *dev, size_t bytes);
    int (*copy_d2d)(void *ctx, void *dst, const void *src, size_t bytes);
    /* The same without waiting: enqueued on queue BACKEND_Q_H2D (host ->
     * dev) or BACKEND_Q_D2H (dev -> host) behind what that queue holds; the
     * host memory must stay as it is until an event recorded after the copy
     * has completed (pinned host memory makes it truly asynchronous). */
    int (*copy_async)(void *ctx, int queue, void *dst, const void *src, size_t bytes);
    /* A strided copy: rows rows of width bytes, dpitch bytes apart in dst
     * and spitch in src, host -> dev on queue BACKEND_Q_H2D or dev -> host
     * on BACKEND_Q_D2H; wait 1 blocks as copy_h2d / copy_d2h, 0 returns at
     * once as copy_async. (A KV record's slots in use: one row of slots per
     * (sequence, head), scheduler/kv_dirty.c.) */
    int (*copy_2d)(void *ctx, int queue, void *dst, size_t dpitch, const void *src,
                   size_t spitch, size_t width, size_t rows, int wait);
    /* Events, ordered on the device (CUDA events; ggml's event_record /
     * event_wait): event_record records event `ev` (0 .. BACKEND_EVENTS-1)
     * after everything issued so far to `queue`; event_wait makes `queue`
     * wait, on the device, for the last record of ev (a never-recorded event
     * is no wait); event_sync blocks the calling thread until the last
     * record of ev has completed. Recording an event again replaces it.
     * Compute ops are on BACKEND_Q_COMPUTE and are issued by one thread. On
     * the CPU backend every op has finished when it returns, so all three
     * are no-ops. */
    int (*event_record)(void *ctx, int queue, int ev);
    int (*event_wait)(void *ctx, int queue, int ev);
    int (*event_sync)(void *ctx, int ev);
} backend_ops;

/* The queues (CUDA streams) of event_record / event_wait and copy_async. */
enum { BACKEND_Q_COMPUTE, BACKEND_Q_H2D, BACKEND_Q_D2H, BACKEND_QUEUES };
/* Events a backend provides. */
#define BACKEND_EVENTS 16

typedef struct backend {
    const backend_ops *ops;
    void *ctx;
} backend;

/* 1 when the KV ops of o take caches of format fmt (a kern_kv_fmt), else
 * 0: what a caller checks before it lays out caches in that format. */
static inline int backend_kv_fmt_has(const backend_ops *o, int fmt)
{
    return fmt >= 0 && fmt < KERN_KV_FMTS && ((o->kv_formats >> fmt) & 1u);
}

/* The optional ops of backend_ops, as bits of a mask for backend_ops_check:
 * what a model family needs beyond OPT's ops. */
enum {
    BACKEND_OP_RMSNORM = 1u << 0,
    BACKEND_OP_ROPE = 1u << 1,
    BACKEND_OP_SWIGLU = 1u << 2,
    BACKEND_OP_GELU = 1u << 3,
};

/* Check, before a run, that o has every optional op of `need` (BACKEND_OP_*
 * bits) for `what` (a family or model name, for the message).
 * @return 0, or -ENOTSUP with a message that names the backend, the first
 * missing op and the way out (--device cpu). */
int backend_ops_check(const backend_ops *o, unsigned need, const char *what);

/* Create the CPU backend (OpenBLAS + OpenMP, n_threads 0 = all cores).
 * @return 0, or -errno; destroy with backend_destroy(). */
int backend_cpu_create(int n_threads, backend *out);
/* The CPU backend's options. */
typedef struct backend_cpu_opts {
    int n_threads;   /* 0: all cores */
    int bf16_matmul; /* 1: linear over bf16 weights as bf16 matmuls (kern_linear_bf16:
                      * the activations rounded to bf16; --cpu-matmul bf16); 0: widened
                      * to fp32, exact */
} backend_cpu_opts;
/* backend_cpu_create with options; -ENOTSUP with a message when bf16_matmul
 * cannot run here (kern_bf16_matmul_available). */
int backend_cpu_create_opts(const backend_cpu_opts *o, backend *out);
/* OpenBLAS's kernels for this CPU: the core it runs (openblas_get_corename)
 * and, where that is its generic fallback for a CPU it does not know
 * ("Prescott": SSE3 kernels; OpenBLAS 0.3.21 on a Xeon of family 6 model
 * 207 took 0.036 TFLOP/s at 2048 rows instead of 0.17), the core to ask
 * for with OPENBLAS_CORETYPE, which it reads only as it loads. */
const char *backend_cpu_blas_core(void);
const char *backend_cpu_blas_core_hint(void);
/* The rule of backend_cpu_blas_core_hint, over its inputs: "SkylakeX"
 * with AVX-512 F/BW/DQ/VL, "Haswell" with AVX2 + FMA, where core is
 * "Prescott" (any case); NULL otherwise. */
const char *backend_blas_core_rule(const char *core, int avx512, int avx2_fma);
/* Create the CUDA backend on device `device`. Without a GPU or without a
 * CUDA build it fails with a message that says to use --device cpu. */
int backend_cuda_create(int device, backend *out);
void backend_destroy(backend *b); /* accepts a zeroed struct */

#endif

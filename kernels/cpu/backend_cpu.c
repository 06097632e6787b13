/* backend_cpu.c: the CPU backend: fp32 storage, OpenBLAS sgemm for the
 * linear layers, kernels/cpu/ (OpenMP) for everything else. It is the
 * numerical reference of flexh2o. */
#include <cblas.h>
#include <strings.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "err.h"

typedef struct cpu_ctx {
    int n_threads;
    int bf16_matmul;      /* backend_cpu_opts.bf16_matmul: bf16 weights as bf16 matmuls */
    void *scratch;        /* the kernels' scratch (kern.h): attention's probabilities, the
                           * KV prefill's keep flags, sampling's sort; one op at a time */
    size_t scratch_bytes;
    int reserved;         /* reservations held (backend.h reserve): scratch does not grow */
    _Atomic uint64_t allocs; /* allocations so far (backend.h allocs) */
} cpu_ctx;

static void cpu_destroy(void *ctx)
{
    cpu_ctx *c = ctx;
    free(c->scratch);
    free(c);
}

/* Grow the kernels' scratch to `need` bytes (for op, in the message). */
static int scratch_grow(cpu_ctx *c, size_t need, const char *op)
{
    if (need <= c->scratch_bytes)
        return 0;
    c->allocs++;
    void *p = malloc(need);
    RETURN_IF(!p, -ENOMEM, "out of host memory for %.1f MiB of scratch for %s (%d threads); "
              "lower --batch-size or the prompt length", need / 1048576.0, op,
              kern_cpu_threads());
    free(c->scratch);
    c->scratch = p;
    c->scratch_bytes = need;
    return 0;
}

/* The kernels' scratch for an op that needs `need` bytes (kern_*_scratch_
 * bytes): within a reservation what reserve sized (a call beyond it is
 * refused), outside one grown when it is short. */
static int cpu_scratch(cpu_ctx *c, size_t need, const char *op, void **out)
{
    RETURN_IF(need > c->scratch_bytes && c->reserved, -EINVAL, "internal: %s needs %zu bytes "
              "of scratch (%d threads), exceeds the reserved %zu; the limits given to reserve "
              "are too small", op, need, kern_cpu_threads(), c->scratch_bytes);
    FORWARD_IF(scratch_grow(c, need, op));
    *out = c->scratch;
    return 0;
}

/* The largest n_new of seqs: what a prefill op's scratch is sized by. */
static int max_new_of(const kern_seq *seqs, int n_seq)
{
    int mx = 0;
    for (int s = 0; s < n_seq; s++)
        mx = seqs[s].n_new > mx ? seqs[s].n_new : mx;
    return mx;
}

static int cpu_alloc(void *ctx, size_t n, void **out)
{
    cpu_ctx *c = ctx;
    c->allocs++;
    /* 64-byte alignment for vector loads, 4096 for buffers of a page or
     * more (the disk engine reads O_DIRECT straight into the scheduler's
     * staging buffers, each whole pages: backend.h host_visible); zeroed
     * like the CUDA side. */
    size_t align = n * sizeof(float) >= 4096 ? 4096 : 64;
    size_t bytes = (n * sizeof(float) + align - 1) & ~(align - 1);
    void *p = aligned_alloc(align, bytes ? bytes : align);
    RETURN_IF(!p, -ENOMEM, "cannot allocate %.2f GiB of host memory; lower "
              "--batch-size or use a smaller model", (double)bytes / (1 << 30));
    memset(p, 0, bytes);
    *out = p;
    return 0;
}

static void cpu_free(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static int cpu_copy(void *ctx, void *dst, const float *src, size_t n)
{
    (void)ctx;
    memcpy(dst, src, n * sizeof(float));
    return 0;
}

static int cpu_copy_out(void *ctx, float *dst, const void *src, size_t n)
{
    (void)ctx;
    memcpy(dst, src, n * sizeof(float));
    return 0;
}

static int cpu_copy_words(void *ctx, void *dst, const void *src, size_t n)
{
    (void)ctx;
    memcpy(dst, src, n * 4);
    return 0;
}

static int cpu_embed(void *ctx, void *out, const void *tok_emb,
                     const void *pos_emb, const int32_t *ids,
                     const int32_t *pos, int n, int d)
{
    (void)ctx;
    kern_embed_ref(out, tok_emb, pos_emb, ids, pos, n, d);
    return 0;
}

static int cpu_embed_h16(void *ctx, void *out, const void *tok_emb, kern_h16 fmt, int v,
                         const void *pos_emb, const int32_t *ids, const int32_t *pos, int n,
                         int d)
{
    cpu_ctx *c = ctx;
    if (fmt == KERN_H16_BF16_PACKED && c->bf16_matmul)
        return kern_bf16_packed_embed(out, tok_emb, v, d, pos_emb, ids, pos, n);
    RETURN_IF(fmt != KERN_H16_F16 && fmt != KERN_H16_BF16, -EINVAL,
              "internal: 16-bit embedding format %d", (int)fmt);
    kern_embed_h16(out, tok_emb, fmt, pos_emb, ids, pos, n, d);
    return 0;
}

static int cpu_layernorm(void *ctx, void *out, const void *x, const void *w,
                         const void *b, int n, int d, float eps)
{
    (void)ctx;
    kern_layernorm_ref(out, x, w, b, n, d, eps);
    return 0;
}

static int cpu_linear(void *ctx, void *y, const void *x, const void *w,
                      const void *b, int m, int n, int k, int relu)
{
    (void)ctx;
    if (m <= KERN_LINEAR_ROWS_MAX)
        kern_linear_rows(y, x, w, m, n, k);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, 0.0f,
                    y, n);
    if (b || relu)
        kern_bias_act_ref(y, b, m, n, relu);
    return 0;
}

/* Few rows: each chunk of rows of w expanded in cache just before
 * use (kern_linear_rows_q4); more: the matrix expanded into ws, then
 * sgemm. Either way cpu_dequant_q4 then cpu_linear's numbers; but under
 * bf16_matmul more rows are a bf16 matmul over the expansion rounded to
 * bf16, expanded a tile at a time in each thread's cache
 * (kern_linear_q4_bf16). */
static int cpu_linear_q4(void *ctx, void *y, const void *x, const void *wq, const void *b,
                         int m, int n, int k, int relu, void *ws)
{
    cpu_ctx *c = ctx;
    /* (ws: n * k floats, which kern_linear_q4_bf16 fits from n = 8, k = 16) */
    if (c->bf16_matmul && m >= KERN_Q4_BF16_ROWS_MIN && n >= 8 && k >= 16) {
        FORWARD_IF(kern_linear_q4_bf16(y, x, wq, m, n, k, ws, (size_t)n * k * sizeof(float)));
        if (b || relu)
            kern_bias_act_ref(y, b, m, n, relu);
        return 0;
    }
    if (m <= KERN_LINEAR_ROWS_MAX) {
        kern_linear_rows_q4(y, x, wq, m, n, k, ws);
        if (b || relu)
            kern_bias_act_ref(y, b, m, n, relu);
        return 0;
    }
    kern_q4_dequant_par(ws, wq, (size_t)n, k);
    return cpu_linear(ctx, y, x, ws, b, m, n, k, relu);
}

/* As cpu_linear_q4, over 16-bit rows (kern_linear_rows_h16); bf16 rows
 * under bf16_matmul: one bf16 matmul at any row count (kern_linear_bf16,
 * x rounded into ws, which holds n * k floats). */
static int cpu_linear_h16(void *ctx, void *y, const void *x, const void *w, kern_h16 fmt,
                          const void *b, int m, int n, int k, int relu, void *ws)
{
    cpu_ctx *c = ctx;
    RETURN_IF(fmt != KERN_H16_F16 && fmt != KERN_H16_BF16 &&
                  !(fmt == KERN_H16_BF16_PACKED && c->bf16_matmul),
              -EINVAL, "internal: 16-bit weight format %d", (int)fmt);
    if (c->bf16_matmul && (fmt == KERN_H16_BF16 || fmt == KERN_H16_BF16_PACKED)) {
        /* x rounded to bf16 a chunk of rows at a time: all m rows when
         * they fit the n * k floats of ws, or when ws is sized by m alone
         * (backend.h: the head's scratch) */
        size_t xb = (size_t)m * k * sizeof(uint16_t), wsb = (size_t)n * k * sizeof(float);
        FORWARD_IF((fmt == KERN_H16_BF16_PACKED ? kern_linear_bf16_packed : kern_linear_bf16)(
            y, x, w, m, n, k, ws, xb < wsb ? xb : wsb));
        if (b || relu)
            kern_bias_act_ref(y, b, m, n, relu);
        return 0;
    }
    if (m <= KERN_LINEAR_ROWS_MAX) {
        kern_linear_rows_h16(y, x, w, fmt, m, n, k, ws);
        if (b || relu)
            kern_bias_act_ref(y, b, m, n, relu);
        return 0;
    }
    kern_widen_par(ws, w, (size_t)n * k, fmt);
    return cpu_linear(ctx, y, x, ws, b, m, n, k, relu);
}

static int cpu_h16_direct(void *ctx, kern_h16 fmt)
{
    cpu_ctx *c = ctx;
    return c->bf16_matmul && fmt == KERN_H16_BF16;
}

/* bf16 matrices that stay put, for bf16 matmuls: oneDNN's blocked layout
 * (kern_bf16_pack), which a matmul of plain weights copies them into on
 * every call. */
static int cpu_pack_h16(void *ctx, void *w, kern_h16 fmt, int n, int k)
{
    cpu_ctx *c = ctx;
    if (!c->bf16_matmul || fmt != KERN_H16_BF16)
        return 0;
    return kern_bf16_pack(w, n, k);
}

static int cpu_add(void *ctx, void *y, const void *x, size_t count)
{
    (void)ctx;
    kern_add_ref(y, x, count);
    return 0;
}

static int cpu_gather_rows(void *ctx, void *dst, const void *src,
                           const int32_t *rows, int n, int d)
{
    (void)ctx;
    for (int i = 0; i < n; i++)
        memcpy((float *)dst + (size_t)i * d, (const float *)src + (size_t)rows[i] * d,
               sizeof(float) * (size_t)d);
    return 0;
}

static int cpu_attn_prefill(void *ctx, void *out, int ldo, const void *q, const void *k,
                            const void *v, int ld, const kern_seq *seqs, int n_seq,
                            int n_head, int n_kv_head, int head_dim, float scale, void *colsum)
{
    cpu_ctx *c = ctx;
    void *ws = NULL;
    FORWARD_IF(cpu_scratch(c, kern_attn_prefill_scratch_bytes(max_new_of(seqs, n_seq),
                                                              kern_cpu_threads()),
                           "prefill attention", &ws));
    return kern_attn_prefill_ref(out, ldo, q, k, v, ld, seqs, n_seq, n_head, n_kv_head,
                                 head_dim, scale, colsum, ws, c->scratch_bytes);
}

/* The KV cache formats of the CPU backend: fp32 rows, 4-bit rows, bf16
 * rows. */
#define CPU_KV_FORMATS \
    ((1u << KERN_KV_FMT_PLAIN) | (1u << KERN_KV_FMT_Q4) | (1u << KERN_KV_FMT_BF16))

static int kv_fmt_check(kern_kv_fmt fmt)
{
    RETURN_IF((unsigned)fmt >= KERN_KV_FMTS || !((CPU_KV_FORMATS >> fmt) & 1u), -ENOTSUP,
              "the cpu backend has no KV cache format %d (it takes plain fp32, 4-bit and "
              "bf16 caches)", (int)fmt);
    return 0;
}

/* The KV ops: fp32 caches run the references (_ref), 4-bit and bf16 ones
 * their _q4 and _bf16 instances (kernels/cpu/slot_ops.h). */
static int cpu_kv_prefill(void *ctx, kern_kv_fmt fmt, void *kc, void *vc, void *scores,
                          void *pos, const void *k, const void *v, int ld, const void *colsum,
                          const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                          int head_dim, int cap)
{
    cpu_ctx *c = ctx;
    void *ws = NULL;
    FORWARD_IF(kv_fmt_check(fmt));
    FORWARD_IF(cpu_scratch(c, kern_kv_prefill_scratch_bytes(max_new_of(seqs, n_seq),
                                                            kern_cpu_threads()),
                           "the KV prefill", &ws));
    if (fmt == KERN_KV_FMT_Q4)
        return kern_kv_prefill_q4(kc, vc, scores, pos, k, v, ld, colsum, seqs, n_seq, n_head,
                                  n_kv_head, head_dim, cap, ws, c->scratch_bytes);
    if (fmt == KERN_KV_FMT_BF16)
        return kern_kv_prefill_bf16(kc, vc, scores, pos, k, v, ld, colsum, seqs, n_seq, n_head,
                                    n_kv_head, head_dim, cap, ws, c->scratch_bytes);
    return kern_kv_prefill_ref(kc, vc, scores, pos, k, v, ld, colsum, seqs, n_seq, n_head,
                               n_kv_head, head_dim, cap, ws, c->scratch_bytes);
}

static int cpu_attn_decode(void *ctx, void *out, int ldo, const void *q, const void *k,
                           const void *v, int ld, kern_kv_fmt fmt, const void *kc,
                           const void *vc, const kern_seq *seqs, int n_seq, int n_head,
                           int n_kv_head, int head_dim, int cap, float scale, void *scores,
                           void *self_p)
{
    cpu_ctx *c = ctx;
    void *ws = NULL;
    FORWARD_IF(kv_fmt_check(fmt));
    FORWARD_IF(cpu_scratch(c, kern_attn_decode_scratch_bytes(cap, kern_cpu_threads()),
                           "decode attention", &ws));
    if (fmt == KERN_KV_FMT_Q4)
        return kern_attn_decode_q4(out, ldo, q, k, v, ld, kc, vc, seqs, n_seq, n_head,
                                   n_kv_head, head_dim, cap, scale, scores, self_p, ws,
                                   c->scratch_bytes);
    if (fmt == KERN_KV_FMT_BF16)
        return kern_attn_decode_bf16(out, ldo, q, k, v, ld, kc, vc, seqs, n_seq, n_head,
                                     n_kv_head, head_dim, cap, scale, scores, self_p, ws,
                                     c->scratch_bytes);
    return kern_attn_decode_ref(out, ldo, q, k, v, ld, kc, vc, seqs, n_seq, n_head, n_kv_head,
                                head_dim, cap, scale, scores, self_p, ws, c->scratch_bytes);
}

static int cpu_kv_insert(void *ctx, kern_kv_fmt fmt, void *kc, void *vc, void *scores, void *pos,
                         const void *k, const void *v, int ld, const void *self_p,
                         const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                         int head_dim, int cap, void *evicted)
{
    (void)ctx;
    FORWARD_IF(kv_fmt_check(fmt));
    RETURN_IF(n_kv_head < 1 || n_head % n_kv_head, -EINVAL, "internal: the KV insert was "
              "handed %d query heads over %d KV heads", n_head, n_kv_head);
    if (fmt == KERN_KV_FMT_Q4)
        kern_kv_insert_q4(kc, vc, scores, pos, k, v, ld, self_p, seqs, n_seq, n_head, n_kv_head,
                          head_dim, cap, evicted);
    else if (fmt == KERN_KV_FMT_BF16)
        kern_kv_insert_bf16(kc, vc, scores, pos, k, v, ld, self_p, seqs, n_seq, n_head,
                            n_kv_head, head_dim, cap, evicted);
    else
        kern_kv_insert_ref(kc, vc, scores, pos, k, v, ld, self_p, seqs, n_seq, n_head,
                           n_kv_head, head_dim, cap, evicted);
    return 0;
}

static int cpu_dequant_q4(void *ctx, void *dst, const void *src, size_t rows, int n)
{
    (void)ctx;
    kern_q4_dequant_par(dst, src, rows, n);
    return 0;
}

static int cpu_widen(void *ctx, void *dst, const void *src, size_t n, kern_h16 fmt)
{
    (void)ctx;
    RETURN_IF(fmt != KERN_H16_F16 && fmt != KERN_H16_BF16, -EINVAL,
              "internal: 16-bit weight format %d", (int)fmt);
    kern_widen_par(dst, src, n, fmt);
    return 0;
}

static int cpu_rmsnorm(void *ctx, void *out, const void *x, const void *w, int n, int d,
                       float eps)
{
    (void)ctx;
    kern_rmsnorm_ref(out, x, w, n, d, eps);
    return 0;
}

static int cpu_rope(void *ctx, void *q, void *k, int ld, const int32_t *pos, int n, int n_head,
                    int n_kv_head, int head_dim, int rot_dims, const float *inv_freq)
{
    (void)ctx;
    return kern_rope_ref(q, k, ld, pos, n, n_head, n_kv_head, head_dim, rot_dims, inv_freq);
}

static int cpu_swiglu(void *ctx, void *out, int ldo, const void *gate, const void *up, int ld,
                      int n, int d)
{
    (void)ctx;
    kern_swiglu_ref(out, ldo, gate, up, ld, n, d);
    return 0;
}

static int cpu_gelu(void *ctx, void *out, const void *x, size_t count)
{
    (void)ctx;
    kern_gelu_ref(out, x, count);
    return 0;
}

static int cpu_sample(void *ctx, const void *logits, int n_rows, int V,
                      const kern_sample_row *rows, const kern_logit_edit *edits,
                      int32_t *tokens, float *logprobs, int32_t *top_ids, float *top_lps)
{
    cpu_ctx *c = ctx;
    int any = 0, nt = kern_cpu_threads();
    for (int r = 0; r < n_rows; r++)
        any |= rows[r].temperature > 0.0f || rows[r].n_edit > 0;
    /* rows spread over the threads, each with its own scratch (greedy rows
     * without edits need none): a row's choice reads that row alone */
    size_t per = any ? kern_sample_scratch_bytes(V) : 0;
    char *ws = NULL;
    if (any)
        FORWARD_IF(cpu_scratch(c, per * (size_t)nt, "sampling", (void **)&ws));
    int failed = -1; /* the first row that failed, told again below */
    #pragma omp parallel for schedule(dynamic) num_threads(nt) if (n_rows > 1)
    for (int r = 0; r < n_rows; r++) {
        size_t top = (size_t)r * KERN_TOP_LOGPROBS_MAX;
        int32_t tok = kern_sample_ref((const float *)logits + (size_t)r * V, V, &rows[r], edits,
                                      &logprobs[r], top_ids ? top_ids + top : NULL,
                                      top_lps ? top_lps + top : NULL,
                                      ws ? ws + per * (size_t)omp_get_thread_num() : NULL, per);
        tokens[r] = tok;
        if (tok < 0) {
            #pragma omp critical(cpu_sample_failed)
            failed = failed < 0 || r < failed ? r : failed;
        }
    }
    if (failed >= 0) { /* again on this thread, whose error record the caller reads */
        size_t top = (size_t)failed * KERN_TOP_LOGPROBS_MAX;
        FORWARD_IF(kern_sample_ref((const float *)logits + (size_t)failed * V, V, &rows[failed],
                                   edits, &logprobs[failed], top_ids ? top_ids + top : NULL,
                                   top_lps ? top_lps + top : NULL, ws, per));
        RETURN_IF(1, -EINVAL, "internal: sampling row %d failed on a worker thread only",
                  failed);
    }
    return 0;
}

static int cpu_sync(void *ctx)
{
    (void)ctx;
    return 0;
}

/* One scratch for every op (they run one at a time on the compute
 * thread), as large as the largest of them within *lim, on this thread's
 * kern_cpu_threads(). */
static int cpu_reserve(void *ctx, const backend_limits *lim)
{
    cpu_ctx *c = ctx;
    if (!lim) {
        c->reserved -= c->reserved > 0;
        return 0;
    }
    int nt = kern_cpu_threads();
    size_t need[] = {
        kern_attn_prefill_scratch_bytes(lim->prompt, nt),
        kern_kv_prefill_scratch_bytes(lim->prompt, nt),
        kern_attn_decode_scratch_bytes(lim->cap, nt),
        lim->sample_rows && (lim->sample_draw || lim->sample_edits)
            ? kern_sample_scratch_bytes(lim->vocab) * (size_t)nt : 0, /* a row per thread */
    };
    size_t most = 0;
    for (size_t i = 0; i < sizeof need / sizeof *need; i++)
        most = need[i] > most ? need[i] : most;
    FORWARD_IF(scratch_grow(c, most, "the reservation"));
    c->reserved++;
    return 0;
}

static uint64_t cpu_allocs(void *ctx)
{
    cpu_ctx *c = ctx;
    return c->allocs;
}

/* Host tier: 4096-aligned (O_DIRECT-ready) and zeroed. */
static int cpu_host_alloc(void *ctx, size_t bytes, void **out)
{
    cpu_ctx *c = ctx;
    c->allocs++;
    size_t n = (bytes + 4095) & ~(size_t)4095;
    void *p = aligned_alloc(4096, n ? n : 4096);
    RETURN_IF(!p, -ENOMEM, "cannot allocate %.2f GiB of host memory; lower "
              "--cpu-mem use (move KV or weights to disk) or the batch size",
              (double)n / (1 << 30));
    memset(p, 0, n);
    *out = p;
    return 0;
}

/* "GPU" and host are the same memory here: every direction is a memcpy. */
static int cpu_copy_bytes(void *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx;
    memcpy(dst, src, bytes);
    return 0;
}

static int cpu_copy_async(void *ctx, int queue, void *dst, const void *src, size_t bytes)
{
    (void)queue;
    return cpu_copy_bytes(ctx, dst, src, bytes);
}

static int cpu_copy_2d(void *ctx, int queue, void *dst, size_t dpitch, const void *src,
                       size_t spitch, size_t width, size_t rows, int wait)
{
    (void)ctx, (void)queue, (void)wait;
    for (size_t r = 0; r < rows; r++)
        memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return 0;
}

/* Compute and copies run synchronously in the calling thread: once an op
 * returned, its results are in memory, so there is nothing to record or
 * wait for. */
static int cpu_event(void *ctx, int queue, int ev)
{
    (void)ctx;
    (void)queue;
    (void)ev;
    return 0;
}

static int cpu_event_sync(void *ctx, int ev)
{
    return cpu_event(ctx, BACKEND_Q_COMPUTE, ev);
}

static const backend_ops cpu_ops = {
    .name = "cpu",
    .elem_size = sizeof(float),
    .host_visible = 1,
    .kv_formats = CPU_KV_FORMATS,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .alloc_words = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy_out,
    .upload_words = cpu_copy_words,
    .download_words = cpu_copy_words,
    .embed = cpu_embed,
    .layernorm = cpu_layernorm,
    .linear = cpu_linear,
    .add = cpu_add,
    .gather_rows = cpu_gather_rows,
    .attn_prefill = cpu_attn_prefill,
    .kv_prefill = cpu_kv_prefill,
    .attn_decode = cpu_attn_decode,
    .kv_insert = cpu_kv_insert,
    .dequant_q4 = cpu_dequant_q4,
    .linear_q4 = cpu_linear_q4,
    .widen = cpu_widen,
    .linear_h16 = cpu_linear_h16,
    .h16_direct = cpu_h16_direct,
    .pack_h16 = cpu_pack_h16,
    .embed_h16 = cpu_embed_h16,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .swiglu = cpu_swiglu,
    .gelu = cpu_gelu,
    .sample = cpu_sample,
    .sync = cpu_sync,
    .reserve = cpu_reserve,
    .allocs = cpu_allocs,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_free,
    .copy_h2d = cpu_copy_bytes,
    .copy_d2h = cpu_copy_bytes,
    .copy_d2d = cpu_copy_bytes,
    .copy_async = cpu_copy_async,
    .copy_2d = cpu_copy_2d,
    .event_record = cpu_event,
    .event_wait = cpu_event,
    .event_sync = cpu_event_sync,
};

const char *backend_blas_core_rule(const char *core, int avx512, int avx2_fma)
{
    if (!core || strcasecmp(core, "Prescott") != 0)
        return NULL;
    return avx512 ? "SkylakeX" : avx2_fma ? "Haswell" : NULL;
}

const char *backend_cpu_blas_core(void)
{
    const char *c = openblas_get_corename();
    return c ? c : "unknown";
}

const char *backend_cpu_blas_core_hint(void)
{
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    int avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return backend_blas_core_rule(openblas_get_corename(), avx512, avx2_fma);
}

int backend_cpu_create(int n_threads, backend *out)
{
    return backend_cpu_create_opts(&(backend_cpu_opts){.n_threads = n_threads}, out);
}

int backend_cpu_create_opts(const backend_cpu_opts *o, backend *out)
{
    const char *why;
    RETURN_IF(o->bf16_matmul && !kern_bf16_matmul_available(&why), -ENOTSUP,
              "--cpu-matmul bf16: %s; run without it (fp32 matmuls)", why);
    int n_threads = o->n_threads;
    cpu_ctx *c = calloc(1, sizeof *c);
    RETURN_IF(!c, -ENOMEM, "out of memory");
    c->bf16_matmul = o->bf16_matmul;
    if (n_threads > 0) {
        omp_set_num_threads(n_threads);
        openblas_set_num_threads(n_threads);
    }
    c->n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    out->ops = &cpu_ops;
    out->ctx = c;
    return 0;
}

void backend_destroy(backend *b)
{
    if (b && b->ops) {
        b->ops->destroy(b->ctx);
        b->ops = NULL;
        b->ctx = NULL;
    }
}

/* backend_cuda.c: the CUDA backend: fp16 storage, fp32 accumulation,
 * cuBLAS (tensor cores) for the linear layers, kernels/<op>.cu for the rest.
 *
 * Linear layers go through cuBLASLt with the bias (+ ReLU) fused into the
 * matrix product's epilogue; the plan of each (m, n, k, epilogue) is found
 * once by cuBLASLt's heuristic and cached. Where cuBLASLt offers no plan,
 * cublasGemmEx and a bias/ReLU kernel do the same.
 *
 * Everything runs on one compute stream in issue order. Host arrays the ops
 * take (ids, positions, kern_seq) are copied to device staging buffers on
 * that stream; a kern_seq array equal to the last one sent is not sent
 * again, so the layers of a decode step share one copy. Staging and work
 * buffers grow on first need and are then reused: the decode path does not
 * allocate after its first step. The only host wait per step is for the
 * sampled tokens.
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "err.h"

/* Check a CUDA runtime call, keeping the statement as text. */
#define CK(call)                                                                       \
    do {                                                                               \
        cudaError_t ck_e_ = (call);                                                    \
        RETURN_IF(ck_e_ != cudaSuccess, ck_e_ == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, \
                  "CUDA: %s: %s", #call, cudaGetErrorString(ck_e_));                   \
    } while (0)
/* Check a cuBLAS call. */
#define CB(call)                                                                       \
    do {                                                                               \
        cublasStatus_t cb_s_ = (call);                                                 \
        RETURN_IF(cb_s_ != CUBLAS_STATUS_SUCCESS, -EIO, "cuBLAS: %s: %s", #call,       \
                  cublasGetStatusString(cb_s_));                                       \
    } while (0)
/* Forward a kern_*_cuda failure with the kernel's own record. */
#define KF(call)                                                                       \
    do {                                                                               \
        int kf_rc_ = (call);                                                           \
        RETURN_IF(kf_rc_ < 0, kf_rc_, "CUDA kernel %s: %s", #call,                     \
                  kf_rc_ == -EINVAL ? "unsupported shape (head_dim must be a multiple " \
                                      "of 8, at most 256)" : kern_cuda_error());       \
    } while (0)

/* A device buffer that grows to the largest size asked. */
typedef struct grow_buf {
    void *p;
    size_t bytes;
} grow_buf;

/* A cached cuBLASLt plan for y(m, n) = x(m, k) w(n, k)^T (+ b, ReLU). */
typedef struct lt_plan {
    int m, n, k, epi, usable;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

#define LT_PLANS 64
#define LT_WORKSPACE ((size_t)32 << 20)

typedef struct cuda_ctx {
    int device;
    cublasLtHandle_t lt;
    lt_plan plans[LT_PLANS];
    int n_plans;
    void *lt_work;       /* LT_WORKSPACE bytes */
    cudaStream_t stream;
    cublasHandle_t blas;
    grow_buf ids, pos, rows, seqs, work, samp;
    kern_seq *seqs_host; /* what seqs holds now */
    size_t seqs_n;
    void *pinned;        /* PINNED_BYTES staging for upload/download */
    cudaStream_t h2d, d2h;            /* copy streams of the offloading scheduler */
    cudaEvent_t events[BACKEND_EVENTS]; /* event_record / event_wait / event_sync */
    grow_buf f32tmp;     /* device fp32 staging for conversions */
} cuda_ctx;

#define PINNED_BYTES ((size_t)32 << 20)

static int grow(grow_buf *b, size_t bytes)
{
    if (bytes <= b->bytes)
        return 0;
    cudaFree(b->p);
    b->p = NULL;
    b->bytes = 0;
    size_t free_b = 0, total_b = 0;
    cudaError_t e = cudaMalloc(&b->p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
        RETURN_IF(1, -ENOMEM, "out of GPU memory: asked %.1f MiB for work space, %.1f MiB "
                  "free of %.1f MiB; lower --batch-size or use --device cpu",
                  bytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0);
    }
    b->bytes = bytes;
    return 0;
}

static void cuda_destroy(void *ctx)
{
    cuda_ctx *c = ctx;
    if (!c)
        return;
    grow_buf *bufs[] = {&c->ids, &c->pos, &c->rows, &c->seqs, &c->work, &c->samp, &c->f32tmp};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        cudaFree(bufs[i]->p);
    cudaFreeHost(c->pinned);
    for (int i = 0; i < c->n_plans; i++) {
        lt_plan *p = &c->plans[i];
        cublasLtMatrixLayoutDestroy(p->a);
        cublasLtMatrixLayoutDestroy(p->b);
        cublasLtMatrixLayoutDestroy(p->c);
        cublasLtMatmulDescDestroy(p->op);
    }
    cudaFree(c->lt_work);
    if (c->lt)
        cublasLtDestroy(c->lt);
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    if (c->h2d)
        cudaStreamDestroy(c->h2d);
    if (c->d2h)
        cudaStreamDestroy(c->d2h);
    for (int i = 0; i < BACKEND_EVENTS; i++)
        if (c->events[i])
            cudaEventDestroy(c->events[i]);
    free(c->seqs_host);
    free(c);
}

/* The zeroing is queued on the compute stream: a plain cudaMemset would go
 * to the legacy stream, which a non-blocking stream does not wait for. */
static int cuda_alloc_bytes(cuda_ctx *c, size_t bytes, void **out)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        RETURN_IF(1, -ENOMEM, "out of GPU memory: asked %.1f MiB, %.1f MiB free of %.1f MiB; "
                  "lower --batch-size, use a smaller model or --device cpu",
                  bytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0);
    }
    CK(cudaMemsetAsync(p, 0, bytes ? bytes : 16, c->stream));
    *out = p;
    return 0;
}

static int cuda_alloc(void *ctx, size_t n, void **out)
{
    return cuda_alloc_bytes(ctx, n * 2, out);
}

static int cuda_alloc_f32(void *ctx, size_t n, void **out)
{
    return cuda_alloc_bytes(ctx, n * 4, out);
}

static void cuda_free(void *ctx, void *p)
{
    (void)ctx;
    if (p)
        cudaFree(p);
}

/* fp32 host -> fp16 device, through pinned fp32 chunks and a conversion
 * kernel (load time only). */
static int cuda_upload(void *ctx, void *dst, const float *src, size_t n)
{
    cuda_ctx *c = ctx;
    size_t chunk = PINNED_BYTES / sizeof(float);
    FORWARD_IF(grow(&c->f32tmp, PINNED_BYTES));
    for (size_t at = 0; at < n; at += chunk) {
        size_t len = n - at < chunk ? n - at : chunk;
        CK(cudaStreamSynchronize(c->stream)); /* pinned chunk free again */
        memcpy(c->pinned, src + at, len * sizeof(float));
        CK(cudaMemcpyAsync(c->f32tmp.p, c->pinned, len * sizeof(float),
                           cudaMemcpyHostToDevice, c->stream));
        KF(kern_f32_to_f16_cuda((char *)dst + at * 2, c->f32tmp.p, len, c->stream));
    }
    CK(cudaStreamSynchronize(c->stream));
    return 0;
}

static int cuda_download(void *ctx, float *dst, const void *src, size_t n)
{
    cuda_ctx *c = ctx;
    size_t chunk = PINNED_BYTES / sizeof(float);
    FORWARD_IF(grow(&c->f32tmp, PINNED_BYTES));
    for (size_t at = 0; at < n; at += chunk) {
        size_t len = n - at < chunk ? n - at : chunk;
        KF(kern_f16_to_f32_cuda(c->f32tmp.p, (const char *)src + at * 2, len, c->stream));
        CK(cudaMemcpyAsync(c->pinned, c->f32tmp.p, len * sizeof(float),
                           cudaMemcpyDeviceToHost, c->stream));
        CK(cudaStreamSynchronize(c->stream)); /* the chunk has arrived */
        memcpy(dst + at, c->pinned, len * sizeof(float));
    }
    return 0;
}

static int cuda_upload_f32(void *ctx, void *dst, const float *src, size_t n)
{
    cuda_ctx *c = ctx;
    CK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, c->stream));
    CK(cudaStreamSynchronize(c->stream));
    return 0;
}

static int cuda_download_f32(void *ctx, float *dst, const void *src, size_t n)
{
    cuda_ctx *c = ctx;
    CK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    CK(cudaStreamSynchronize(c->stream));
    return 0;
}

/* Copy a small host array to a staging buffer on the stream. Pageable
 * sources are staged by the driver before cudaMemcpyAsync returns, so the
 * caller may reuse its array at once. */
static int stage(cuda_ctx *c, grow_buf *b, const void *src, size_t bytes)
{
    FORWARD_IF(grow(b, bytes));
    CK(cudaMemcpyAsync(b->p, src, bytes, cudaMemcpyHostToDevice, c->stream));
    return 0;
}

static int stage_seqs(cuda_ctx *c, const kern_seq *seqs, int n_seq)
{
    size_t bytes = sizeof(kern_seq) * (size_t)n_seq;
    if (c->seqs_host && c->seqs_n == (size_t)n_seq && !memcmp(c->seqs_host, seqs, bytes))
        return 0;
    if ((size_t)n_seq > c->seqs_n || !c->seqs_host) {
        kern_seq *h = realloc(c->seqs_host, bytes ? bytes : sizeof(kern_seq));
        RETURN_IF(!h, -ENOMEM, "out of memory");
        c->seqs_host = h;
    }
    memcpy(c->seqs_host, seqs, bytes);
    c->seqs_n = (size_t)n_seq;
    return stage(c, &c->seqs, seqs, bytes);
}

static int cuda_embed(void *ctx, void *out, const void *tok_emb, const void *pos_emb,
                      const int32_t *ids, const int32_t *pos, int n, int d)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(stage(c, &c->ids, ids, sizeof(int32_t) * (size_t)n));
    FORWARD_IF(stage(c, &c->pos, pos, sizeof(int32_t) * (size_t)n));
    KF(kern_embed_cuda(out, tok_emb, pos_emb, c->ids.p, c->pos.p, n, d, c->stream));
    return 0;
}

static int cuda_layernorm(void *ctx, void *out, const void *x, const void *w, const void *b,
                          int n, int d, float eps)
{
    cuda_ctx *c = ctx;
    KF(kern_layernorm_cuda(out, x, w, b, n, d, eps, c->stream));
    return 0;
}

/* y(m, n) = x(m, k) w(n, k)^T: in cuBLAS's column-major terms
 * Y^T(n, m) = W^T . X^T, i.e. op(A) = T on w (ld k), B = x (ld k); the
 * bias runs along Y^T's rows, which is what cuBLASLt's bias epilogue adds.
 * fp16 in and out, fp32 compute (tensor cores). */
#define LK(call)                                                                       \
    do {                                                                               \
        cublasStatus_t lk_s_ = (call);                                                 \
        RETURN_IF(lk_s_ != CUBLAS_STATUS_SUCCESS, -EIO, "cuBLASLt: %s: %s", #call,     \
                  cublasGetStatusString(lk_s_));                                       \
    } while (0)

static int lt_plan_make(cuda_ctx *c, lt_plan *p)
{
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = p->epi == 3   ? CUBLASLT_EPILOGUE_RELU_BIAS
                             : p->epi == 1 ? CUBLASLT_EPILOGUE_BIAS
                             : p->epi == 2 ? CUBLASLT_EPILOGUE_RELU
                                           : CUBLASLT_EPILOGUE_DEFAULT;
    LK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    LK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16F, (uint64_t)p->k, (uint64_t)p->n, p->k));
    LK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16F, (uint64_t)p->k, (uint64_t)p->m, p->k));
    LK(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_16F, (uint64_t)p->n, (uint64_t)p->m, p->n));
    cublasLtMatmulPreference_t pref;
    LK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = LT_WORKSPACE;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &res,
                                            &found);
    cublasLtMatmulPreferenceDestroy(pref);
    p->usable = st == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p->usable)
        p->algo = res.algo;
    return 0;
}

static lt_plan *lt_plan_get(cuda_ctx *c, int m, int n, int k, int epi)
{
    for (int i = 0; i < c->n_plans; i++) {
        lt_plan *p = &c->plans[i];
        if (p->m == m && p->n == n && p->k == k && p->epi == epi)
            return p;
    }
    if (c->n_plans == LT_PLANS)
        return NULL; /* a job with this many shapes takes the GemmEx path */
    lt_plan *p = &c->plans[c->n_plans];
    memset(p, 0, sizeof *p);
    p->m = m, p->n = n, p->k = k, p->epi = epi;
    if (lt_plan_make(c, p) < 0) {
        err_clear();
        return NULL;
    }
    c->n_plans++;
    return p;
}

static int cuda_linear(void *ctx, void *y, const void *x, const void *w, const void *b, int m,
                       int n, int k, int relu)
{
    cuda_ctx *c = ctx;
    if (m == 0)
        return 0;
    const float one = 1.0f, zero = 0.0f;
    lt_plan *p = lt_plan_get(c, m, n, k, (b ? 1 : 0) | (relu ? 2 : 0));
    if (p && p->usable) {
        if (b)
            LK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b,
                                              sizeof b));
        LK(cublasLtMatmul(c->lt, p->op, &one, w, p->a, x, p->b, &zero, y, p->c, y, p->c,
                          &p->algo, c->lt_work, LT_WORKSPACE, c->stream));
        return 0;
    }
    CB(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w, CUDA_R_16F, k, x,
                    CUDA_R_16F, k, &zero, y, CUDA_R_16F, n, CUBLAS_COMPUTE_32F,
                    CUBLAS_GEMM_DEFAULT));
    if (b || relu)
        KF(kern_bias_act_cuda(y, b, m, n, relu, c->stream));
    return 0;
}

static int cuda_add(void *ctx, void *y, const void *x, size_t count)
{
    cuda_ctx *c = ctx;
    KF(kern_add_cuda(y, x, count, c->stream));
    return 0;
}

static int cuda_gather_rows(void *ctx, void *dst, const void *src, const int32_t *rows, int n,
                            int d)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(stage(c, &c->rows, rows, sizeof(int32_t) * (size_t)n));
    KF(kern_gather_rows_cuda(dst, src, c->rows.p, n, d, c->stream));
    return 0;
}

static int max_of(const kern_seq *seqs, int n_seq, int field_slots)
{
    int mx = 0;
    for (int s = 0; s < n_seq; s++) {
        int v = field_slots ? (seqs[s].n_new ? seqs[s].n_slots : 0) : seqs[s].n_new;
        mx = v > mx ? v : mx;
    }
    return mx;
}

/* Prefill attention. Prompts of PREFILL_GEMM_MIN tokens or more take the
 * tensor cores: per sequence and group of heads, S = scale Q K^T (batched
 * GEMM, fp32 out), P = causal softmax(S) and the column sums (kernels), out
 * = P V (batched GEMM); the groups keep S and P under PREFILL_WORK bytes.
 * Shorter prompts, where a GEMM launch costs more than it saves, take the
 * one-warp-per-query kernel. */
#define PREFILL_GEMM_MIN 64
#define PREFILL_WORK ((size_t)256 << 20)

static int prefill_gemm(cuda_ctx *c, void *out, int ldo, const void *q, const void *k,
                        const void *v, int ld, const kern_seq *sq, int n_head, int hd,
                        float scale, void *colsum)
{
    int n = sq->n_new;
    size_t per_head = (size_t)n * n * 6 + (size_t)n * 8;
    int hg = (int)(PREFILL_WORK / per_head);
    hg = hg < 1 ? 1 : hg > n_head ? n_head : hg;
    FORWARD_IF(grow(&c->work, per_head * (size_t)hg));
    float *S = c->work.p;
    void *P = S + (size_t)hg * n * n;
    float *stats = (float *)((char *)P + (size_t)hg * n * n * 2);
    const float one = 1.0f, zero = 0.0f;
    for (int h0 = 0; h0 < n_head; h0 += hg) {
        int g = n_head - h0 < hg ? n_head - h0 : hg;
        size_t at = ((size_t)sq->row * ld + (size_t)h0 * hd) * 2; /* bytes */
        /* S^cm(j, i) = k_j . q_i, i.e. row-major S[i][j] */
        CB(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, hd, &scale,
                                      (const char *)k + at, CUDA_R_16F, ld, hd,
                                      (const char *)q + at, CUDA_R_16F, ld, hd, &zero, S,
                                      CUDA_R_32F, n, (long long)n * n, g, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
        KF(kern_prefill_softmax_cuda(S, P, colsum ? stats : NULL, n, g, c->stream));
        if (colsum)
            KF(kern_prefill_colsum_cuda(S, stats, colsum, n, g, sq->row, n_head, h0,
                                        c->stream));
        /* out^cm(e, i) = sum_j v^cm(e, j) P^cm(j, i) */
        CB(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, n, n, &one,
                                      (const char *)v + at, CUDA_R_16F, ld, hd, P, CUDA_R_16F,
                                      n, (long long)n * n, &zero,
                                      (char *)out + ((size_t)sq->row * ldo + (size_t)h0 * hd) * 2,
                                      CUDA_R_16F, ldo, hd, g, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}

static int cuda_attn_prefill(void *ctx, void *out, int ldo, const void *q, const void *k,
                             const void *v, int ld, const kern_seq *seqs, int n_seq, int n_head,
                             int head_dim, float scale, void *colsum)
{
    cuda_ctx *c = ctx;
    int rows = 0, n_short = 0;
    kern_seq *sh = malloc(sizeof(kern_seq) * (size_t)(n_seq ? n_seq : 1));
    RETURN_IF(!sh, -ENOMEM, "out of memory");
    for (int s = 0; s < n_seq; s++) {
        if (seqs[s].row + seqs[s].n_new > rows)
            rows = seqs[s].row + seqs[s].n_new;
        sh[s] = seqs[s];
        if (seqs[s].n_new >= PREFILL_GEMM_MIN)
            sh[s].n_new = 0; /* the GEMM path's */
        else
            n_short += seqs[s].n_new > 0;
    }
    int rc = 0;
    for (int s = 0; rc == 0 && s < n_seq; s++)
        if (seqs[s].n_new >= PREFILL_GEMM_MIN)
            rc = prefill_gemm(c, out, ldo, q, k, v, ld, &seqs[s], n_head, head_dim, scale,
                              colsum);
    if (rc == 0 && n_short) {
        rc = stage_seqs(c, sh, n_seq);
        if (rc == 0 && colsum)
            rc = grow(&c->work, sizeof(float) * 2 * (size_t)rows * n_head);
        if (rc == 0 && kern_attn_prefill_cuda(out, ldo, q, k, v, ld, c->seqs.p, n_seq, n_head,
                                              head_dim, scale, colsum, c->work.p,
                                              max_of(sh, n_seq, 0), c->stream) < 0) {
            err_set(__FILE__, __LINE__, "CUDA prefill attention: %s", kern_cuda_error());
            rc = -EIO;
        }
    }
    free(sh);
    return rc;
}

static int cuda_kv_prefill(void *ctx, void *kc, void *vc, void *scores, void *pos,
                           const void *k, const void *v, int ld, const void *colsum,
                           const kern_seq *seqs, int n_seq, int n_head, int head_dim, int cap)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(stage_seqs(c, seqs, n_seq));
    KF(kern_kv_prefill_cuda(kc, vc, scores, pos, k, v, ld, colsum, c->seqs.p, n_seq, n_head,
                            head_dim, cap, max_of(seqs, n_seq, 0), c->stream));
    return 0;
}

static int cuda_attn_decode(void *ctx, void *out, int ldo, const void *q, const void *k,
                            const void *v, int ld, const void *kc, const void *vc,
                            const kern_seq *seqs, int n_seq, int n_head, int head_dim, int cap,
                            float scale, void *scores, void *self_p)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(stage_seqs(c, seqs, n_seq));
    FORWARD_IF(grow(&c->work, kern_attn_decode_work(n_seq, n_head, head_dim, cap)));
    KF(kern_attn_decode_cuda(out, ldo, q, k, v, ld, kc, vc, c->seqs.p, n_seq, n_head, head_dim,
                             cap, scale, scores, self_p, c->work.p, max_of(seqs, n_seq, 1),
                             c->stream));
    return 0;
}

static int cuda_kv_insert(void *ctx, void *kc, void *vc, void *scores, void *pos, const void *k,
                          const void *v, int ld, const void *self_p, const kern_seq *seqs,
                          int n_seq, int n_head, int head_dim, int cap, void *evicted)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(stage_seqs(c, seqs, n_seq));
    KF(kern_kv_insert_cuda(kc, vc, scores, pos, k, v, ld, self_p, c->seqs.p, n_seq, n_head,
                           head_dim, cap, evicted, c->stream));
    return 0;
}

/* 4-bit compression: a compressed weight matrix is expanded into fp16
 * just before its GEMM; 4-bit KV has its own slot ops (kernels/q4.cu). */
static int cuda_dequant_q4(void *ctx, void *dst, const void *src, size_t rows, int n)
{
    cuda_ctx *c = ctx;
    KF(kern_q4_dequant_cuda(dst, src, rows, n, c->stream));
    return 0;
}

static int cuda_kv_prefill_q4(void *ctx, void *kc, void *vc, void *scores, void *pos,
                              const void *k, const void *v, int ld, const void *colsum,
                              const kern_seq *seqs, int n_seq, int n_head, int head_dim, int cap)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(stage_seqs(c, seqs, n_seq));
    KF(kern_kv_prefill_q4_cuda(kc, vc, scores, pos, k, v, ld, colsum, c->seqs.p, n_seq, n_head,
                               head_dim, cap, max_of(seqs, n_seq, 0), c->stream));
    return 0;
}

static int cuda_attn_decode_q4(void *ctx, void *out, int ldo, const void *q, const void *k,
                               const void *v, int ld, const void *kc, const void *vc,
                               const kern_seq *seqs, int n_seq, int n_head, int head_dim,
                               int cap, float scale, void *scores, void *self_p)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(stage_seqs(c, seqs, n_seq));
    FORWARD_IF(grow(&c->work, kern_attn_decode_q4_work(n_seq, n_head, head_dim, cap)));
    KF(kern_attn_decode_q4_cuda(out, ldo, q, k, v, ld, kc, vc, c->seqs.p, n_seq, n_head,
                                head_dim, cap, scale, scores, self_p, c->work.p,
                                max_of(seqs, n_seq, 1), c->stream));
    return 0;
}

static int cuda_kv_insert_q4(void *ctx, void *kc, void *vc, void *scores, void *pos,
                             const void *k, const void *v, int ld, const void *self_p,
                             const kern_seq *seqs, int n_seq, int n_head, int head_dim, int cap,
                             void *evicted)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(stage_seqs(c, seqs, n_seq));
    KF(kern_kv_insert_q4_cuda(kc, vc, scores, pos, k, v, ld, self_p, c->seqs.p, n_seq, n_head,
                              head_dim, cap, evicted, c->stream));
    return 0;
}

/* Sampling: the per-row parameters go up, tokens and logprobs come back;
 * this is the decode step's one host wait. Layout of samp: temperature,
 * top_p (n floats each), u (n doubles), tokens (n int32), logprobs (n f32),
 * then the kernel's work space. */
static int cuda_sample(void *ctx, const void *logits, int n_rows, int V,
                       const float *temperature, const float *top_p, const double *u,
                       int32_t *tokens, float *logprobs)
{
    cuda_ctx *c = ctx;
    int any = 0;
    for (int i = 0; i < n_rows; i++)
        any |= temperature[i] > 0.0f;
    size_t n = (size_t)n_rows, head = (n * 8 + 255) / 256 * 256 * 4;
    size_t work = any ? kern_sample_work(n_rows, V) : kern_sample_work(n_rows, 1);
    FORWARD_IF(grow(&c->samp, head + work));
    char *p = c->samp.p;
    float *d_t = (float *)p, *d_p = (float *)(p + n * 4);
    double *d_u = (double *)(p + n * 8);
    int32_t *d_tok = (int32_t *)(p + n * 16);
    float *d_lp = (float *)(p + n * 20);
    CK(cudaMemcpyAsync(d_t, temperature, n * 4, cudaMemcpyHostToDevice, c->stream));
    CK(cudaMemcpyAsync(d_p, top_p, n * 4, cudaMemcpyHostToDevice, c->stream));
    CK(cudaMemcpyAsync(d_u, u, n * 8, cudaMemcpyHostToDevice, c->stream));
    KF(kern_sample_cuda(logits, n_rows, V, d_t, d_p, d_u, d_tok, d_lp, p + head, any,
                        c->stream));
    CK(cudaMemcpyAsync(tokens, d_tok, n * 4, cudaMemcpyDeviceToHost, c->stream));
    CK(cudaMemcpyAsync(logprobs, d_lp, n * 4, cudaMemcpyDeviceToHost, c->stream));
    CK(cudaStreamSynchronize(c->stream)); /* the host picks the next inputs from these */
    return 0;
}

static int cuda_sync(void *ctx)
{
    cuda_ctx *c = ctx;
    CK(cudaStreamSynchronize(c->stream));
    return 0;
}

/* ---- byte movement for the offloading scheduler ----
 * Copies run on a stream of their direction, so that a load, a store and
 * the compute of the current GPU batch proceed together; the calling thread
 * (the scheduler's loader or storer) waits for its own copy only. The CUDA
 * current device is per thread: each entry point sets it. */
static int cuda_host_alloc(void *ctx, size_t bytes, void **out)
{
    cuda_ctx *c = ctx;
    CK(cudaSetDevice(c->device));
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 16, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        RETURN_IF(1, -ENOMEM, "cannot pin %.2f GiB of host memory (%s); lower --cpu-mem use "
                  "(move KV or weights to disk) or pass --no-pin-weight",
                  (double)bytes / (1 << 30), cudaGetErrorString(e));
    }
    memset(p, 0, bytes);
    *out = p;
    return 0;
}

static void cuda_host_free(void *ctx, void *p)
{
    (void)ctx;
    if (p)
        cudaFreeHost(p);
}

static int cuda_copy_on(cuda_ctx *c, cudaStream_t st, void *dst, const void *src,
                        size_t bytes, enum cudaMemcpyKind kind)
{
    if (bytes == 0)
        return 0;
    CK(cudaSetDevice(c->device));
    CK(cudaMemcpyAsync(dst, src, bytes, kind, st));
    CK(cudaStreamSynchronize(st)); /* the caller hands the bytes on when it returns */
    return 0;
}

static int cuda_copy_h2d(void *ctx, void *dev, const void *host, size_t bytes)
{
    cuda_ctx *c = ctx;
    return cuda_copy_on(c, c->h2d, dev, host, bytes, cudaMemcpyHostToDevice);
}

static int cuda_copy_d2h(void *ctx, void *host, const void *dev, size_t bytes)
{
    cuda_ctx *c = ctx;
    return cuda_copy_on(c, c->d2h, host, dev, bytes, cudaMemcpyDeviceToHost);
}

static int cuda_copy_d2d(void *ctx, void *dst, const void *src, size_t bytes)
{
    cuda_ctx *c = ctx;
    return cuda_copy_on(c, c->h2d, dst, src, bytes, cudaMemcpyDeviceToDevice);
}

static cudaStream_t cuda_queue(cuda_ctx *c, int queue)
{
    return queue == BACKEND_Q_H2D ? c->h2d : queue == BACKEND_Q_D2H ? c->d2h : c->stream;
}

static int cuda_copy_async(void *ctx, int queue, void *dst, const void *src, size_t bytes)
{
    cuda_ctx *c = ctx;
    if (bytes == 0)
        return 0;
    CK(cudaSetDevice(c->device));
    CK(cudaMemcpyAsync(dst, src, bytes,
                       queue == BACKEND_Q_D2H ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice,
                       cuda_queue(c, queue)));
    return 0;
}

static int cuda_event_record(void *ctx, int queue, int ev)
{
    cuda_ctx *c = ctx;
    CK(cudaSetDevice(c->device));
    CK(cudaEventRecord(c->events[ev], cuda_queue(c, queue)));
    return 0;
}

static int cuda_event_wait(void *ctx, int queue, int ev)
{
    cuda_ctx *c = ctx;
    CK(cudaSetDevice(c->device));
    CK(cudaStreamWaitEvent(cuda_queue(c, queue), c->events[ev], 0));
    return 0;
}

static int cuda_event_sync(void *ctx, int ev)
{
    cuda_ctx *c = ctx;
    CK(cudaSetDevice(c->device));
    CK(cudaEventSynchronize(c->events[ev]));
    return 0;
}

static const backend_ops cuda_ops = {
    .name = "cuda",
    .elem_size = 2,
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .alloc_f32 = cuda_alloc_f32,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .upload_f32 = cuda_upload_f32,
    .download_f32 = cuda_download_f32,
    .embed = cuda_embed,
    .layernorm = cuda_layernorm,
    .linear = cuda_linear,
    .add = cuda_add,
    .gather_rows = cuda_gather_rows,
    .attn_prefill = cuda_attn_prefill,
    .kv_prefill = cuda_kv_prefill,
    .attn_decode = cuda_attn_decode,
    .kv_insert = cuda_kv_insert,
    .dequant_q4 = cuda_dequant_q4,
    .kv_prefill_q4 = cuda_kv_prefill_q4,
    .attn_decode_q4 = cuda_attn_decode_q4,
    .kv_insert_q4 = cuda_kv_insert_q4,
    .sample = cuda_sample,
    .sync = cuda_sync,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .copy_h2d = cuda_copy_h2d,
    .copy_d2h = cuda_copy_d2h,
    .copy_d2d = cuda_copy_d2d,
    .copy_async = cuda_copy_async,
    .event_record = cuda_event_record,
    .event_wait = cuda_event_wait,
    .event_sync = cuda_event_sync,
};

int backend_cuda_create(int device, backend *out)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        RETURN_IF(1, -ENODEV, "no CUDA GPU found (%s); use --device cpu",
                  cudaGetErrorString(e));
    }
    RETURN_IF(n == 0, -ENODEV, "no CUDA GPU found; use --device cpu");
    RETURN_IF(device < 0 || device >= n, -ENODEV, "CUDA device %d does not exist (%d found)",
              device, n);
    cuda_ctx *c = calloc(1, sizeof *c);
    RETURN_IF(!c, -ENOMEM, "out of memory");
    c->device = device;
    int rc = 0;
    e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&c->h2d, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&c->d2h, cudaStreamNonBlocking);
    for (int i = 0; e == cudaSuccess && i < BACKEND_EVENTS; i++)
        e = cudaEventCreateWithFlags(&c->events[i], cudaEventDisableTiming);
    if (e == cudaSuccess)
        e = cudaHostAlloc(&c->pinned, PINNED_BYTES, cudaHostAllocDefault);
    if (e == cudaSuccess)
        e = cudaMalloc(&c->lt_work, LT_WORKSPACE);
    if (e != cudaSuccess) {
        err_set(__FILE__, __LINE__, "CUDA set-up on device %d failed: %s", device,
                cudaGetErrorString(e));
        rc = -EIO;
    }
    if (rc == 0) {
        cublasStatus_t s = cublasCreate(&c->blas);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasSetStream(c->blas, c->stream);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtCreate(&c->lt);
        if (s != CUBLAS_STATUS_SUCCESS) {
            err_set(__FILE__, __LINE__, "cuBLAS set-up failed: %s", cublasGetStatusString(s));
            rc = -EIO;
        }
    }
    if (rc < 0) {
        cuda_destroy(c);
        return rc;
    }
    out->ops = &cuda_ops;
    out->ctx = c;
    return 0;
}

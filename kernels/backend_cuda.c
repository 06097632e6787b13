/* backend_cuda.c: the CUDA backend: fp16 storage, fp32 accumulation,
 * cuBLAS (tensor cores) for the linear layers, kernels/<op>.cu for the rest.
 *
 * Linear layers go through cuBLASLt with the bias (+ ReLU) fused into the
 * matrix product's epilogue. A plan holds the descriptors of one (n, k,
 * epilogue), whatever the row count m, which is set on the layouts per
 * call; the algorithm cuBLASLt's heuristic picks for each m is cached in the
 * plan (the last LT_ALGOS row counts). Plans and algorithms are replaced
 * when their tables are full, so a job with many shapes never loses the
 * fused epilogue. Only where cuBLASLt has no algorithm for a shape do
 * cublasGemmEx and a bias/ReLU kernel do the same.
 *
 * Prefill attention is one launch of the flash kernel (flash_prefill.cu)
 * for heads up to KERN_FLASH_HEAD_DIM_MAX; wider heads, or
 * FLEXH2O_CUDA_PREFILL=gemm, take per-sequence batched GEMMs around a
 * softmax kernel (prefill_split).
 *
 * Every CUDA, cuBLAS(Lt) and kernels/ status goes through one checking
 * macro, CK, which keeps the failing statement as text. Without a GPU this
 * file runs in CI against tests/cuda_emu's emulated runtime.
 *
 * Everything runs on one compute stream in issue order. The small host
 * arrays the ops take (ids, positions, gather rows, kern_seq, RoPE's
 * inverse frequencies, sampling's rows and logit edits) go through a ring of pinned
 * slots:
 *
 *   op:  wait for the event of slot i (the copy that last read it has run)
 *        -> write the arrays into slot i -> cudaMemcpyAsync to the device
 *        staging on the compute stream -> record slot i's event -> kernel
 *
 * so the copy is truly asynchronous (from pageable memory it may wait for
 * the stream) and, with RING_SLOTS slots, the host runs that many ops ahead
 * before it waits. A kern_seq array equal to the last one sent is not sent
 * again (its contents are compared, so any number of GPU batches and KV
 * segments is fine): a decode step's attention and cache write share one
 * copy. Staging, ring and work buffers are sized by reserve (backend.h);
 * within a reservation nothing is allocated or freed. The only host wait
 * per step is for the sampled tokens.
 */
#include <assert.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "err.h"

/* A failed status of a CUDA runtime, cuBLAS(Lt) or kernels/ call, for CK. */
typedef struct cu_status {
    int rc;          /* 0, or the -errno to return */
    const char *lib; /* which library failed */
    const char *why; /* its reason */
} cu_status;

static cu_status cu_runtime(cudaError_t e)
{
    if (e == cudaSuccess)
        return (cu_status){0, NULL, NULL};
    cudaGetLastError(); /* reported here: a non-sticky error must not resurface later */
    return (cu_status){e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, "CUDA",
                       cudaGetErrorString(e)};
}

static cu_status cu_blas(cublasStatus_t s)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return (cu_status){0, NULL, NULL};
    return (cu_status){s == CUBLAS_STATUS_ALLOC_FAILED ? -ENOMEM : -EIO, "cuBLAS",
                       cublasGetStatusString(s)};
}

/* kernels/ entry points return 0 or -errno and have recorded their reason
 * through err_set(), which keeps that first message: CK's own record is
 * then a no-op, and only stands in for a kernel that failed silently. */
static cu_status cu_kernel(int rc)
{
    if (rc >= 0)
        return (cu_status){0, NULL, NULL};
    return (cu_status){rc, "CUDA kernel", "failed without a message"};
}

/* The one check of a CUDA runtime (cudaError_t), cuBLAS or cuBLASLt
 * (cublasStatus_t) or kernels/ (int) status: on failure record "library:
 * statement: reason" and return its -errno. */
#define CK(call)                                                                       \
    do {                                                                               \
        cu_status ck_s_ = _Generic((call), cudaError_t: cu_runtime,                    \
                                   cublasStatus_t: cu_blas, int: cu_kernel)(call);     \
        RETURN_IF(ck_s_.rc < 0, ck_s_.rc, "%s: %s: %s", ck_s_.lib, #call, ck_s_.why);   \
    } while (0)

/* A device buffer that grows to the largest size asked. */
typedef struct grow_buf {
    void *p;
    size_t bytes;
} grow_buf;

#define RING_SLOTS 32

/* The pinned staging ring (see the top of this file). */
typedef struct stage_ring {
    char *host;                 /* (RING_SLOTS, slot) page-locked */
    size_t slot;                /* bytes per slot, 256-aligned */
    cudaEvent_t ev[RING_SLOTS]; /* recorded behind the last copy that read each slot */
    int recorded[RING_SLOTS];   /* ev[i] has been recorded since the ring was made */
    int next, cur;              /* the slot the next op takes; the one it took */
} stage_ring;

/* cuBLASLt's algorithm for one row count m of a plan. */
typedef struct lt_algo {
    int m, usable; /* usable 0: cuBLASLt has none for this shape */
    cublasLtMatmulAlgo_t algo;
} lt_algo;

#define LT_PLANS 32
#define LT_ALGOS 64
#define LT_WORKSPACE ((size_t)32 << 20)

/* A cuBLASLt plan for y(m, n) = x(m, k) w(n, k)^T (+ b, ReLU), any m: the
 * descriptors (a: w, b: x, c: y; b's and c's column count is m, set per
 * call) and the algorithms of the row counts seen. */
typedef struct lt_plan {
    int n, k, epi, live; /* live: the descriptors exist */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    lt_algo algos[LT_ALGOS];
    int n_algos, next_algo; /* entries filled; the one a new row count replaces */
} lt_plan;

typedef struct cuda_ctx {
    int device;
    cublasLtHandle_t lt;
    lt_plan plans[LT_PLANS];
    int next_plan;       /* the plan a new (n, k, epilogue) replaces */
    cublasLtMatmulPreference_t lt_pref; /* workspace limit of the heuristic */
    void *lt_work;       /* LT_WORKSPACE bytes */
    cudaStream_t stream;
    cublasHandle_t blas;
    grow_buf tok, rows, seqs, rope, work, samp; /* device staging: embed's ids and
                                                 * positions, gather rows, kern_seq,
                                                 * RoPE's positions and frequencies;
                                                 * work spaces */
    stage_ring ring;
    kern_seq *seqs_host; /* what seqs holds now: seqs_n of seqs_cap entries */
    kern_seq *seqs_tmp;  /* (seqs_cap) prefill's copy of a kern_seq array */
    size_t seqs_n, seqs_cap;
    void *pinned;        /* PINNED_BYTES staging for upload/download */
    cudaStream_t h2d, d2h;            /* copy streams of the offloading scheduler */
    cudaEvent_t events[BACKEND_EVENTS]; /* event_record / event_wait / event_sync */
    grow_buf f32tmp;     /* device fp32 staging for conversions (PINNED_BYTES) */
    int reserved;        /* reservations held (backend.h reserve): nothing grows */
    int prefill_gemm;    /* FLEXH2O_CUDA_PREFILL=gemm: prefill attention through
                          * prefill_split, never the flash kernel */
    backend_limits lim;  /* what they cover, field by field the widest */
    _Atomic uint64_t allocs; /* allocations so far (backend.h allocs) */
} cuda_ctx;

#define PINNED_BYTES ((size_t)32 << 20)

/* cudaMalloc with a message a user can act on: running out of memory
 * says how much `what` asked and how much is free, with `advice`; any other
 * failure says what failed. */
static int dev_malloc(void **p, size_t bytes, const char *what, const char *advice)
{
    cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError(); /* not sticky: clear it for the next check */
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        RETURN_IF(1, -ENOMEM, "out of GPU memory: asked %.1f MiB for %s, %.1f MiB free of "
                  "%.1f MiB; %s", bytes / 1048576.0, what, free_b / 1048576.0,
                  total_b / 1048576.0, advice);
    }
    /* any other failure as CK would put it, with the size and purpose */
    RETURN_IF(e != cudaSuccess, cu_runtime(e).rc, "CUDA: cudaMalloc(%zu bytes for %s): %s",
              bytes, what, cudaGetErrorString(e));
    return 0;
}

/* Make b hold `bytes` (for `what`, in messages). The cudaFree waits for
 * the whole device: set-up only, or outside a reservation. */
static int grow_to(cuda_ctx *c, grow_buf *b, size_t bytes, const char *what)
{
    if (bytes <= b->bytes)
        return 0;
    cudaFree(b->p);
    b->p = NULL;
    b->bytes = 0;
    c->allocs++;
    FORWARD_IF(dev_malloc(&b->p, bytes, what, "lower --batch-size or use --device cpu"));
    b->bytes = bytes;
    return 0;
}

/* b for an op that needs `bytes`: within a reservation what reserve sized
 * must do (a larger need is refused: no cudaFree / cudaMalloc on the
 * decode path), outside one it grows. */
static int grow(cuda_ctx *c, grow_buf *b, size_t bytes, const char *what)
{
    RETURN_IF(bytes > b->bytes && c->reserved, -EINVAL, "internal: %s needs %zu bytes, "
              "exceeds the reserved %zu; the limits given to reserve are too small", what,
              bytes, b->bytes);
    return grow_to(c, b, bytes, what);
}

/* The host kern_seq arrays hold n entries: sized by reserve, grown
 * outside a reservation. */
static int seqs_room(cuda_ctx *c, size_t n, int reserving)
{
    if (n <= c->seqs_cap)
        return 0;
    RETURN_IF(c->reserved && !reserving, -EINVAL, "internal: a call of %zu sequences exceeds "
              "the reserved %zu; the limits given to reserve are too small", n, c->seqs_cap);
    c->allocs++;
    kern_seq *h = realloc(c->seqs_host, sizeof(kern_seq) * n);
    if (h)
        c->seqs_host = h;
    kern_seq *t = h ? realloc(c->seqs_tmp, sizeof(kern_seq) * n) : NULL;
    if (t)
        c->seqs_tmp = t;
    RETURN_IF(!h || !t, -ENOMEM, "out of host memory for %zu sequences", n);
    c->seqs_cap = n;
    return 0;
}

static void lt_plan_drop(lt_plan *p);

static void cuda_destroy(void *ctx)
{
    cuda_ctx *c = ctx;
    if (!c)
        return;
    grow_buf *bufs[] = {&c->tok, &c->rows, &c->seqs, &c->rope, &c->work, &c->samp, &c->f32tmp};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        cudaFree(bufs[i]->p);
    cudaFreeHost(c->pinned);
    cudaFreeHost(c->ring.host);
    for (int i = 0; i < RING_SLOTS; i++)
        if (c->ring.ev[i])
            cudaEventDestroy(c->ring.ev[i]);
    for (int i = 0; i < LT_PLANS; i++)
        lt_plan_drop(&c->plans[i]);
    if (c->lt_pref)
        cublasLtMatmulPreferenceDestroy(c->lt_pref);
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
    free(c->seqs_tmp);
    free(c);
}

/* The zeroing is queued on the compute stream: a plain cudaMemset would go
 * to the legacy stream, which a non-blocking stream does not wait for. */
static int cuda_alloc_bytes(cuda_ctx *c, size_t bytes, void **out)
{
    void *p = NULL;
    c->allocs++;
    FORWARD_IF(dev_malloc(&p, bytes ? bytes : 16, "a buffer",
                          "lower --batch-size, use a smaller model or --device cpu"));
    CK(cudaMemsetAsync(p, 0, bytes ? bytes : 16, c->stream));
    *out = p;
    return 0;
}

static int cuda_alloc(void *ctx, size_t n, void **out)
{
    return cuda_alloc_bytes(ctx, n * 2, out);
}

static int cuda_alloc_words(void *ctx, size_t n, void **out)
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
    for (size_t at = 0; at < n; at += chunk) {
        size_t len = n - at < chunk ? n - at : chunk;
        CK(cudaStreamSynchronize(c->stream)); /* pinned chunk free again */
        memcpy(c->pinned, src + at, len * sizeof(float));
        CK(cudaMemcpyAsync(c->f32tmp.p, c->pinned, len * sizeof(float),
                           cudaMemcpyHostToDevice, c->stream));
        CK(kern_f32_to_f16_cuda((char *)dst + at * 2, c->f32tmp.p, len, c->stream));
    }
    CK(cudaStreamSynchronize(c->stream));
    return 0;
}

static int cuda_download(void *ctx, float *dst, const void *src, size_t n)
{
    cuda_ctx *c = ctx;
    size_t chunk = PINNED_BYTES / sizeof(float);
    for (size_t at = 0; at < n; at += chunk) {
        size_t len = n - at < chunk ? n - at : chunk;
        CK(kern_f16_to_f32_cuda(c->f32tmp.p, (const char *)src + at * 2, len, c->stream));
        CK(cudaMemcpyAsync(c->pinned, c->f32tmp.p, len * sizeof(float),
                           cudaMemcpyDeviceToHost, c->stream));
        CK(cudaStreamSynchronize(c->stream)); /* the chunk has arrived */
        memcpy(dst + at, c->pinned, len * sizeof(float));
    }
    return 0;
}

static int cuda_upload_words(void *ctx, void *dst, const void *src, size_t n)
{
    cuda_ctx *c = ctx;
    CK(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyHostToDevice, c->stream));
    CK(cudaStreamSynchronize(c->stream));
    return 0;
}

static int cuda_download_words(void *ctx, void *dst, const void *src, size_t n)
{
    cuda_ctx *c = ctx;
    CK(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyDeviceToHost, c->stream));
    CK(cudaStreamSynchronize(c->stream));
    return 0;
}

static size_t align_to(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

static int min_i(int a, int b)
{
    return a < b ? a : b;
}

static int max_i(int a, int b)
{
    return a > b ? a : b;
}

/* Make the ring's slots hold `slot` bytes: at reserve, or on first need
 * outside a reservation; a need beyond the reservation is refused. A new
 * ring waits for every copy from the old one (they are all on the compute
 * stream). */
static int ring_size(cuda_ctx *c, size_t slot, int reserving)
{
    stage_ring *r = &c->ring;
    slot = align_to(slot, 256);
    if (slot <= r->slot)
        return 0;
    RETURN_IF(c->reserved && !reserving, -EINVAL, "internal: %zu bytes of host arrays for one "
              "op exceed the reserved %zu of a staging slot; the limits given to reserve are "
              "too small", slot, r->slot);
    CK(cudaStreamSynchronize(c->stream));
    cudaFreeHost(r->host);
    r->host = NULL;
    r->slot = 0;
    memset(r->recorded, 0, sizeof r->recorded);
    c->allocs++;
    cudaError_t e = cudaHostAlloc((void **)&r->host, slot * RING_SLOTS, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        RETURN_IF(1, -ENOMEM, "cannot pin %.1f MiB of host memory for the staging ring (%s)",
                  slot * RING_SLOTS / 1048576.0, cudaGetErrorString(e));
    }
    r->slot = slot;
    return 0;
}

/* The next slot of the ring for `bytes` of host arrays, once the copy that
 * last read it has run. */
static int ring_take(cuda_ctx *c, size_t bytes, char **out)
{
    stage_ring *r = &c->ring;
    FORWARD_IF(ring_size(c, bytes, 0));
    int i = r->next;
    r->next = (i + 1) % RING_SLOTS;
    if (r->recorded[i])
        CK(cudaEventSynchronize(r->ev[i])); /* slot i's last copy has read it */
    r->cur = i;
    *out = r->host + (size_t)i * r->slot;
    return 0;
}

/* After the copies that read the slot ring_take gave: record its event. */
static int ring_done(cuda_ctx *c)
{
    stage_ring *r = &c->ring;
    CK(cudaEventRecord(r->ev[r->cur], c->stream));
    r->recorded[r->cur] = 1;
    return 0;
}

/* Copy n small host arrays (src[i], bytes[i]) into dev (`what`, in
 * messages), each at a 64-aligned offset, through one ring slot and one
 * copy on the compute stream; at[i] gets each one's device address. The
 * caller may reuse its arrays at once. */
#define STAGE_MAX 2
static int stage(cuda_ctx *c, grow_buf *dev, int n, const void *const src[],
                 const size_t bytes[], void *at[], const char *what)
{
    size_t off[STAGE_MAX], total = 0;
    assert(n <= STAGE_MAX);
    for (int i = 0; i < n; i++) {
        off[i] = total;
        total += align_to(bytes[i], 64);
    }
    FORWARD_IF(grow(c, dev, total, what));
    for (int i = 0; total == 0 && i < n; i++)
        at[i] = dev->p; /* empty arrays: nothing to send */
    if (total == 0)
        return 0;
    char *h;
    FORWARD_IF(ring_take(c, total, &h));
    for (int i = 0; i < n; i++) {
        memcpy(h + off[i], src[i], bytes[i]);
        at[i] = (char *)dev->p + off[i];
    }
    CK(cudaMemcpyAsync(dev->p, h, total, cudaMemcpyHostToDevice, c->stream));
    return ring_done(c);
}

/* The kern_seq array into c->seqs, unless it holds these contents already. */
static int stage_seqs(cuda_ctx *c, const kern_seq *seqs, int n_seq)
{
    size_t bytes = sizeof(kern_seq) * (size_t)n_seq;
    if (c->seqs_host && c->seqs_n == (size_t)n_seq && !memcmp(c->seqs_host, seqs, bytes))
        return 0;
    FORWARD_IF(seqs_room(c, (size_t)n_seq, 0));
    c->seqs_n = SIZE_MAX; /* nothing valid until the copy is queued */
    const void *src[1] = {seqs};
    void *at[1];
    FORWARD_IF(stage(c, &c->seqs, 1, src, &bytes, at, "the sequences' staging"));
    memcpy(c->seqs_host, seqs, bytes);
    c->seqs_n = (size_t)n_seq;
    return 0;
}

/* The ids and, with learned positions, the positions go up through the
 * ring; without (pos_emb NULL: the RoPE families) only the ids, and pos
 * may be NULL. */
static int cuda_embed(void *ctx, void *out, const void *tok_emb, const void *pos_emb,
                      const int32_t *ids, const int32_t *pos, int n, int d)
{
    cuda_ctx *c = ctx;
    const void *src[2] = {ids, pos};
    size_t bytes[2] = {sizeof(int32_t) * (size_t)n, sizeof(int32_t) * (size_t)n};
    void *at[2] = {NULL, NULL};
    FORWARD_IF(stage(c, &c->tok, pos_emb ? 2 : 1, src, bytes, at,
                     "the token ids' and positions' staging"));
    CK(kern_embed_cuda(out, tok_emb, pos_emb, at[0], pos_emb ? at[1] : NULL, n, d, c->stream));
    return 0;
}

static int cuda_layernorm(void *ctx, void *out, const void *x, const void *w, const void *b,
                          int n, int d, float eps)
{
    cuda_ctx *c = ctx;
    CK(kern_layernorm_cuda(out, x, w, b, n, d, eps, c->stream));
    return 0;
}

/* ---- the RoPE families' element-wise ops (backend.h) ---- */
static int cuda_rmsnorm(void *ctx, void *out, const void *x, const void *w, int n, int d,
                        float eps)
{
    cuda_ctx *c = ctx;
    CK(kern_rmsnorm_cuda(out, x, w, n, d, eps, c->stream));
    return 0;
}

/* The bytes of RoPE's staging for n positions and rot_dims / 2
 * frequencies, as stage() lays the two arrays out. */
static size_t rope_stage_bytes(int n, int rot_dims)
{
    return align_to(sizeof(int32_t) * (size_t)n, 64) +
           align_to(sizeof(float) * (size_t)(rot_dims / 2), 64);
}

/* The positions and the inverse frequencies (host arrays) go up through
 * the ring, like embed's; a rot_dims the kernel refuses is refused before
 * anything is staged. */
static int cuda_rope(void *ctx, void *q, void *k, int ld, const int32_t *pos, int n, int n_head,
                     int n_kv_head, int head_dim, int rot_dims, const float *inv_freq)
{
    cuda_ctx *c = ctx;
    if (n == 0 || rot_dims <= 0 || rot_dims % 2 || rot_dims > head_dim) {
        /* nothing to rotate, or refused (-EINVAL, the message says why) */
        CK(kern_rope_cuda(q, k, ld, NULL, n, n_head, n_kv_head, head_dim, rot_dims, NULL,
                          c->stream));
        return 0;
    }
    const void *src[2] = {pos, inv_freq};
    size_t bytes[2] = {sizeof(int32_t) * (size_t)n, sizeof(float) * (size_t)(rot_dims / 2)};
    void *at[2];
    FORWARD_IF(stage(c, &c->rope, 2, src, bytes, at, "RoPE's positions' and frequencies' "
                     "staging"));
    CK(kern_rope_cuda(q, k, ld, at[0], n, n_head, n_kv_head, head_dim, rot_dims, at[1],
                      c->stream));
    return 0;
}

static int cuda_swiglu(void *ctx, void *out, int ldo, const void *gate, const void *up, int ld,
                       int n, int d)
{
    cuda_ctx *c = ctx;
    CK(kern_swiglu_cuda(out, ldo, gate, up, ld, n, d, c->stream));
    return 0;
}

static int cuda_gelu(void *ctx, void *out, const void *x, size_t count)
{
    cuda_ctx *c = ctx;
    CK(kern_gelu_cuda(out, x, count, c->stream));
    return 0;
}

/* y(m, n) = x(m, k) w(n, k)^T: in cuBLAS's column-major terms
 * Y^T(n, m) = W^T . X^T, i.e. op(A) = T on w (ld k), B = x (ld k); the
 * bias runs along Y^T's rows, which is what cuBLASLt's bias epilogue adds.
 * fp16 in and out, fp32 compute (tensor cores). */

static void lt_plan_drop(lt_plan *p)
{
    /* the handles are NULL until created (the plans start zeroed) */
    if (p->a)
        cublasLtMatrixLayoutDestroy(p->a);
    if (p->b)
        cublasLtMatrixLayoutDestroy(p->b);
    if (p->c)
        cublasLtMatrixLayoutDestroy(p->c);
    if (p->op)
        cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

/* The descriptors of (n, k, epi) into p (zeroed); the row count is set per
 * call (lt_rows). On failure whatever was created is destroyed. */
static int lt_plan_create(lt_plan *p)
{
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = p->epi == 3   ? CUBLASLT_EPILOGUE_RELU_BIAS
                             : p->epi == 1 ? CUBLASLT_EPILOGUE_BIAS
                             : p->epi == 2 ? CUBLASLT_EPILOGUE_RELU
                                           : CUBLASLT_EPILOGUE_DEFAULT;
    CK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    CK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16F, (uint64_t)p->k, (uint64_t)p->n, p->k));
    CK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16F, (uint64_t)p->k, 1, p->k));
    CK(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_16F, (uint64_t)p->n, 1, p->n));
    return 0;
}

/* The plan of (n, k, epi), made on first use; when the table is full the
 * plan made longest ago is replaced. */
static int lt_plan_get(cuda_ctx *c, int n, int k, int epi, lt_plan **out)
{
    for (int i = 0; i < LT_PLANS; i++) {
        lt_plan *p = &c->plans[i];
        if (p->live && p->n == n && p->k == k && p->epi == epi) {
            *out = p;
            return 0;
        }
    }
    lt_plan *p = &c->plans[c->next_plan];
    c->next_plan = (c->next_plan + 1) % LT_PLANS;
    lt_plan_drop(p);
    p->n = n, p->k = k, p->epi = epi;
    int rc = lt_plan_create(p);
    if (rc < 0) {
        lt_plan_drop(p); /* no leak of a partly made plan; the reason stays recorded */
        return rc;
    }
    p->live = 1;
    *out = p;
    return 0;
}

/* Set the plan's row count to m (x's and y's columns in cuBLAS's terms)
 * and find cuBLASLt's algorithm for it: cached per row count, the
 * heuristic asked once per new m (the oldest entry replaced when all
 * LT_ALGOS are taken). */
static int lt_algo_get(cuda_ctx *c, lt_plan *p, int m, const lt_algo **out)
{
    uint64_t cols = (uint64_t)m;
    CK(cublasLtMatrixLayoutSetAttribute(p->b, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols));
    CK(cublasLtMatrixLayoutSetAttribute(p->c, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols));
    for (int i = 0; i < p->n_algos; i++)
        if (p->algos[i].m == m) {
            *out = &p->algos[i];
            return 0;
        }
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->c, p->c,
                                                       c->lt_pref, 1, &res, &found);
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) /* NOT_SUPPORTED: no algorithm, not a failure */
        CK(st);
    lt_algo *a = &p->algos[p->next_algo];
    p->next_algo = (p->next_algo + 1) % LT_ALGOS;
    if (p->n_algos < LT_ALGOS)
        p->n_algos++;
    a->m = m;
    a->usable = st == CUBLAS_STATUS_SUCCESS && found > 0;
    if (a->usable)
        a->algo = res.algo;
    *out = a;
    return 0;
}

static int cuda_linear(void *ctx, void *y, const void *x, const void *w, const void *b, int m,
                       int n, int k, int relu)
{
    cuda_ctx *c = ctx;
    if (m == 0)
        return 0;
    const float one = 1.0f, zero = 0.0f;
    lt_plan *p;
    const lt_algo *a;
    FORWARD_IF(lt_plan_get(c, n, k, (b ? 1 : 0) | (relu ? 2 : 0), &p));
    FORWARD_IF(lt_algo_get(c, p, m, &a));
    if (a->usable) {
        if (b)
            CK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b,
                                              sizeof b));
        CK(cublasLtMatmul(c->lt, p->op, &one, w, p->a, x, p->b, &zero, y, p->c, y, p->c,
                          &a->algo, c->lt_work, LT_WORKSPACE, c->stream));
        return 0;
    }
    /* cuBLASLt has no algorithm for this shape and epilogue */
    CK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w, CUDA_R_16F, k, x,
                    CUDA_R_16F, k, &zero, y, CUDA_R_16F, n, CUBLAS_COMPUTE_32F,
                    CUBLAS_GEMM_DEFAULT));
    if (b || relu)
        CK(kern_bias_act_cuda(y, b, m, n, relu, c->stream));
    return 0;
}

static int cuda_add(void *ctx, void *y, const void *x, size_t count)
{
    cuda_ctx *c = ctx;
    CK(kern_add_cuda(y, x, count, c->stream));
    return 0;
}

static int cuda_gather_rows(void *ctx, void *dst, const void *src, const int32_t *rows, int n,
                            int d)
{
    cuda_ctx *c = ctx;
    const void *in[1] = {rows};
    size_t bytes = sizeof(int32_t) * (size_t)n;
    void *at[1];
    FORWARD_IF(stage(c, &c->rows, 1, in, &bytes, at, "the gather rows' staging"));
    CK(kern_gather_rows_cuda(dst, src, at[0], n, d, c->stream));
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

/* Prefill attention. Heads of up to KERN_FLASH_HEAD_DIM_MAX take the flash
 * kernel (kern_attn_prefill_flash_cuda): every sequence and head in one
 * launch, scores on chip, sliding windows included. Wider heads, or every
 * head with FLEXH2O_CUDA_PREFILL=gemm (the A/B switch of the benchmarks),
 * take prefill_split: prompts of PREFILL_GEMM_MIN tokens or more on the
 * tensor cores: per sequence and run of query heads, S = scale Q K^T
 * (batched GEMM, fp32 out), P = causal softmax(S) and the column sums
 * (kernels), out = P V (batched GEMM); the runs keep S and P under
 * PREFILL_WORK bytes. Shorter prompts, where a GEMM launch costs more than
 * it saves, take the one-warp-per-query kernel.
 *
 * Grouped-query attention: the query heads of one KV head are a batch
 * whose K (and V) stride is 0, all against the KV head's rows; a run of
 * query heads that spans several KV heads is one such batch per KV head.
 * Without it (group 1) a run is one batch, K and V advancing with Q. */
#define PREFILL_GEMM_MIN 64
#define PREFILL_WORK ((size_t)256 << 20)

/* One query row of one head keeps a row of S (fp32) and of P (fp16) over
 * the n keys and its softmax max and sum: n * 6 + 8 bytes. A group of heads
 * whose whole S and P fit PREFILL_WORK is done at once; a prompt whose one
 * head does not fit (n > 6688) is done head by head in blocks of qb query
 * rows, each against only the keys its causal rows see, so the work stays
 * under PREFILL_WORK (and linear in n) for a prompt of any length. */
static size_t prefill_gemm_plan(int n, int n_head, int *hg_out, int *qb_out)
{
    int hg = 1, qb = n;
    size_t per_row = (size_t)n * 6 + 8, per_head = per_row * (size_t)n;
    if (per_head <= PREFILL_WORK) {
        size_t fit = PREFILL_WORK / per_head;
        hg = fit > (size_t)n_head ? n_head : (int)fit;
    } else {
        size_t fit = PREFILL_WORK / per_row;
        qb = fit < 1 ? 1 : (int)fit; /* < n here */
    }
    *hg_out = hg;
    *qb_out = qb;
    return per_row * (size_t)qb * (size_t)hg;
}

static int prefill_gemm(cuda_ctx *c, void *out, int ldo, const void *q, const void *k,
                        const void *v, int ld, const kern_seq *sq, int n_head, int n_kv_head,
                        int hd, float scale, void *colsum)
{
    int n = sq->n_new, hg, qb, group = n_head / n_kv_head;
    FORWARD_IF(grow(c, &c->work, prefill_gemm_plan(n, n_head, &hg, &qb),
                    "prefill attention's work space"));
    float *S = c->work.p;                                                  /* (hg, qb, <= n) */
    void *P = S + (size_t)hg * qb * n;                                     /* (hg, qb, <= n) */
    float *stats = (float *)((char *)P + (size_t)hg * qb * n * 2);         /* (hg, qb, 2) */
    const float one = 1.0f, zero = 0.0f;
    /* K and V advance with Q from one query head to the next, or (GQA)
     * stay on their KV head for the query heads of its group */
    long long kv_stride = group == 1 ? hd : 0;
    for (int h0 = 0; h0 < n_head; h0 += hg) {
        int g = n_head - h0 < hg ? n_head - h0 : hg;
        for (int i0 = 0; i0 < n; i0 += qb) {
            /* the block: queries i0 .. i0 + r - 1 against keys 0 .. L - 1 */
            int r = n - i0 < qb ? n - i0 : qb, L = i0 + r;
            /* query heads [a, b) share one batch: all g of them (group 1),
             * else those of one KV head */
            for (int a = h0, b; a < h0 + g; a = b) {
                b = group == 1 ? h0 + g : min_i(h0 + g, (a / group + 1) * group);
                size_t qat = (((size_t)sq->row + i0) * ld + (size_t)a * hd) * 2; /* bytes */
                size_t kat = ((size_t)sq->row * ld + (size_t)(a / group) * hd) * 2;
                /* S^cm(j, i) = k_j . q_(i0 + i), i.e. row-major S[i][j], (r, L) */
                CK(cublasGemmStridedBatchedEx(
                    c->blas, CUBLAS_OP_T, CUBLAS_OP_N, L, r, hd, &scale, (const char *)k + kat,
                    CUDA_R_16F, ld, kv_stride, (const char *)q + qat, CUDA_R_16F, ld, hd, &zero,
                    S + (size_t)(a - h0) * L * r, CUDA_R_32F, L, (long long)L * r, b - a,
                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            }
            CK(kern_prefill_softmax_cuda(S, P, colsum ? stats : NULL, r, L, i0, g, c->stream));
            if (colsum)
                CK(kern_prefill_colsum_cuda(S, stats, colsum, r, L, i0, g, sq->row, n_head,
                                            n_kv_head, h0, c->stream));
            for (int a = h0, b; a < h0 + g; a = b) {
                b = group == 1 ? h0 + g : min_i(h0 + g, (a / group + 1) * group);
                size_t vat = ((size_t)sq->row * ld + (size_t)(a / group) * hd) * 2;
                size_t oat = (((size_t)sq->row + i0) * ldo + (size_t)a * hd) * 2;
                /* out^cm(e, i) = sum_j v^cm(e, j) P^cm(j, i) */
                CK(cublasGemmStridedBatchedEx(
                    c->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, r, L, &one, (const char *)v + vat,
                    CUDA_R_16F, ld, kv_stride, (const char *)P + (size_t)(a - h0) * L * r * 2,
                    CUDA_R_16F, L, (long long)L * r, &zero, (char *)out + oat, CUDA_R_16F, ldo,
                    hd, b - a, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            }
        }
    }
    return 0;
}

/* The softmax statistics of the one-warp and flash prefill kernels, (rows,
 * n_head, 2) fp32 in c->work, for the packed rows of seqs: needed only
 * when the column sums are. */
static int prefill_stats_room(cuda_ctx *c, const kern_seq *seqs, int n_seq, int n_head)
{
    int rows = 0;
    for (int s = 0; s < n_seq; s++)
        rows = seqs[s].row + seqs[s].n_new > rows ? seqs[s].row + seqs[s].n_new : rows;
    return grow(c, &c->work, sizeof(float) * 2 * (size_t)rows * n_head,
                "prefill attention's work space");
}

/* Prompts of PREFILL_GEMM_MIN tokens or more through prefill_gemm, the
 * others (n_new set to 0 in sh's copy of seqs for the former) through one
 * launch of the one-warp-per-query kernel. */
static int prefill_split(cuda_ctx *c, kern_seq *sh, void *out, int ldo, const void *q,
                         const void *k, const void *v, int ld, const kern_seq *seqs, int n_seq,
                         int n_head, int n_kv_head, int head_dim, float scale, void *colsum)
{
    int n_short = 0;
    for (int s = 0; s < n_seq; s++) {
        sh[s] = seqs[s];
        if (seqs[s].n_new >= PREFILL_GEMM_MIN)
            sh[s].n_new = 0; /* the GEMM path's */
        else
            n_short += seqs[s].n_new > 0;
    }
    for (int s = 0; s < n_seq; s++)
        if (seqs[s].n_new >= PREFILL_GEMM_MIN)
            FORWARD_IF(prefill_gemm(c, out, ldo, q, k, v, ld, &seqs[s], n_head, n_kv_head,
                                    head_dim, scale, colsum));
    if (!n_short)
        return 0;
    FORWARD_IF(stage_seqs(c, sh, n_seq));
    if (colsum)
        FORWARD_IF(prefill_stats_room(c, seqs, n_seq, n_head));
    CK(kern_attn_prefill_cuda(out, ldo, q, k, v, ld, c->seqs.p, n_seq, n_head, n_kv_head,
                              head_dim, scale, colsum, c->work.p, max_of(sh, n_seq, 0),
                              c->stream));
    return 0;
}

/* The head counts of an attention op (grouped-query attention: n_kv_head
 * KV heads, each shared by n_head / n_kv_head query heads), checked before
 * anything is staged. */
static int cuda_heads_check(const char *op, int n_head, int n_kv_head)
{
    RETURN_IF(n_kv_head < 1 || n_head < n_kv_head || n_head % n_kv_head, -EINVAL,
              "internal: the cuda backend's %s was handed %d query heads over %d KV heads (a "
              "positive multiple is needed)", op, n_head, n_kv_head);
    return 0;
}

/* Whether prefill attention of heads of head_dim takes the flash kernel. */
static int flash_prefill(const cuda_ctx *c, int head_dim)
{
    return !c->prefill_gemm && head_dim <= KERN_FLASH_HEAD_DIM_MAX;
}

static int cuda_attn_prefill(void *ctx, void *out, int ldo, const void *q, const void *k,
                             const void *v, int ld, const kern_seq *seqs, int n_seq, int n_head,
                             int n_kv_head, int head_dim, float scale, void *colsum)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(cuda_heads_check("prefill attention", n_head, n_kv_head));
    if (flash_prefill(c, head_dim)) {
        if (colsum)
            FORWARD_IF(prefill_stats_room(c, seqs, n_seq, n_head));
        FORWARD_IF(stage_seqs(c, seqs, n_seq));
        CK(kern_attn_prefill_flash_cuda(out, ldo, q, k, v, ld, c->seqs.p, n_seq, n_head,
                                        n_kv_head, head_dim, scale, colsum, c->work.p,
                                        max_of(seqs, n_seq, 0), c->stream));
        return 0;
    }
    for (int s = 0; s < n_seq; s++)
        RETURN_IF(seqs[s].window > 0 && seqs[s].n_new > seqs[s].window, -ENOTSUP,
                  "the cuda backend's prefill attention has a sliding window only in its "
                  "flash kernel (head_dim up to %d, FLEXH2O_CUDA_PREFILL unset): a prompt of "
                  "%d tokens outgrows the model's sliding_window %d here; shorten it or use "
                  "--device cpu", KERN_FLASH_HEAD_DIM_MAX, seqs[s].n_new, seqs[s].window);
    FORWARD_IF(seqs_room(c, (size_t)n_seq, 0));
    return prefill_split(c, c->seqs_tmp, out, ldo, q, k, v, ld, seqs, n_seq, n_head, n_kv_head,
                         head_dim, scale, colsum);
}

/* The KV ops: the kernels take the format (kern_kv_fmt) and refuse one
 * they do not have. */
static int cuda_kv_prefill(void *ctx, kern_kv_fmt fmt, void *kc, void *vc, void *scores,
                           void *pos, const void *k, const void *v, int ld, const void *colsum,
                           const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                           int head_dim, int cap)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(cuda_heads_check("KV prefill", n_head, n_kv_head));
    FORWARD_IF(stage_seqs(c, seqs, n_seq));
    CK(kern_kv_prefill_cuda(fmt, kc, vc, scores, pos, k, v, ld, colsum, c->seqs.p, n_seq,
                            n_head, n_kv_head, head_dim, cap, max_of(seqs, n_seq, 0),
                            c->stream));
    return 0;
}

static int cuda_attn_decode(void *ctx, void *out, int ldo, const void *q, const void *k,
                            const void *v, int ld, kern_kv_fmt fmt, const void *kc,
                            const void *vc, const kern_seq *seqs, int n_seq, int n_head,
                            int n_kv_head, int head_dim, int cap, float scale, void *scores,
                            void *self_p)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(cuda_heads_check("decode attention", n_head, n_kv_head));
    FORWARD_IF(stage_seqs(c, seqs, n_seq));
    FORWARD_IF(grow(c, &c->work, kern_attn_decode_work(n_seq, n_head, head_dim, cap),
                    "decode attention's work space"));
    CK(kern_attn_decode_cuda(out, ldo, q, k, v, ld, fmt, kc, vc, c->seqs.p, n_seq, n_head,
                             n_kv_head, head_dim, cap, scale, scores, self_p, c->work.p,
                             max_of(seqs, n_seq, 1), c->stream));
    return 0;
}

static int cuda_kv_insert(void *ctx, kern_kv_fmt fmt, void *kc, void *vc, void *scores,
                          void *pos, const void *k, const void *v, int ld, const void *self_p,
                          const kern_seq *seqs, int n_seq, int n_head, int n_kv_head,
                          int head_dim, int cap, void *evicted)
{
    cuda_ctx *c = ctx;
    FORWARD_IF(cuda_heads_check("KV insert", n_head, n_kv_head));
    FORWARD_IF(stage_seqs(c, seqs, n_seq));
    CK(kern_kv_insert_cuda(fmt, kc, vc, scores, pos, k, v, ld, self_p, c->seqs.p, n_seq, n_head,
                           n_kv_head, head_dim, cap, evicted, c->stream));
    return 0;
}

/* 4-bit weights: a compressed weight matrix is expanded into fp16 just
 * before its GEMM. */
static int cuda_dequant_q4(void *ctx, void *dst, const void *src, size_t rows, int n)
{
    cuda_ctx *c = ctx;
    CK(kern_q4_dequant_cuda(dst, src, rows, n, c->stream));
    return 0;
}

/* The head of samp for n rows, e logit edits and (top) top logprobs,
 * mirrored in the op's ring slot: what goes up (the rows, their edits),
 * then what comes back (tokens, logprobs, top ids and log-probabilities);
 * the kernel's work space follows at `head`. Every offset grows with n, e
 * and top, so the reservation's layout holds any call within it. */
typedef struct samp_layout {
    size_t rows, edits, tok, lp, top_ids, top_lps, end, head;
} samp_layout;

static samp_layout sample_layout(size_t n, size_t e, int top)
{
    samp_layout l;
    size_t t = top ? align_to(n * KERN_TOP_LOGPROBS_MAX * 4, 64) : 0;
    l.rows = 0;
    l.edits = align_to(n * sizeof(kern_sample_row), 64);
    l.tok = l.edits + align_to(e * sizeof(kern_logit_edit), 64);
    l.lp = l.tok + align_to(n * 4, 64);
    l.top_ids = l.lp + align_to(n * 4, 64);
    l.top_lps = l.top_ids + t;
    l.end = l.top_lps + t;
    l.head = align_to(l.end, 256);
    return l;
}

/* Sampling: the rows and their edits go up and tokens, logprobs and top
 * logprobs come back through one ring slot; this is the decode step's one
 * host wait. The rows are checked here (kern_sample_row_check: the
 * kernels index by the edits' tokens) and their edits packed in row order,
 * each staged row's edit0 pointing into the packed array. */
static int cuda_sample(void *ctx, const void *logits, int n_rows, int V,
                       const kern_sample_row *rows, const kern_logit_edit *edits,
                       int32_t *tokens, float *logprobs, int32_t *top_ids, float *top_lps)
{
    cuda_ctx *c = ctx;
    if (n_rows == 0)
        return 0;
    int need = KERN_SAMPLE_ARGMAX, top = 0;
    size_t n_edit = 0;
    for (int i = 0; i < n_rows; i++) {
        const kern_sample_row *r = &rows[i];
        FORWARD_IF(kern_sample_row_check(r, edits, V));
        if (r->temperature > 0.0f)
            need = KERN_SAMPLE_DRAW;
        else if (r->n_edit > 0 && need < KERN_SAMPLE_EDIT)
            need = KERN_SAMPLE_EDIT;
        n_edit += (size_t)r->n_edit;
        top |= r->n_top > 0;
    }
    RETURN_IF(top && (!top_ids || !top_lps), -EINVAL, "internal: top logprobs asked of a "
              "sample call without arrays for them");
    size_t n = (size_t)n_rows;
    samp_layout ly = sample_layout(n, n_edit, top);
    FORWARD_IF(grow(c, &c->samp, ly.head + kern_sample_work(n_rows, V, need),
                    "sampling's work space"));
    char *h, *d = c->samp.p;
    FORWARD_IF(ring_take(c, ly.head, &h));
    kern_sample_row *hr = (kern_sample_row *)(h + ly.rows);
    kern_logit_edit *he = (kern_logit_edit *)(h + ly.edits);
    int at = 0;
    for (int i = 0; i < n_rows; i++) {
        hr[i] = rows[i];
        hr[i].edit0 = at;
        if (rows[i].n_edit > 0)
            memcpy(he + at, edits + rows[i].edit0, sizeof *he * (size_t)rows[i].n_edit);
        at += rows[i].n_edit;
    }
    CK(cudaMemcpyAsync(d, h, ly.tok, cudaMemcpyHostToDevice, c->stream));
    CK(kern_sample_cuda(logits, n_rows, V, (const kern_sample_row *)(d + ly.rows),
                        (const kern_logit_edit *)(d + ly.edits), (int32_t *)(d + ly.tok),
                        (float *)(d + ly.lp), top ? (int32_t *)(d + ly.top_ids) : NULL,
                        top ? (float *)(d + ly.top_lps) : NULL, d + ly.head, need, c->stream));
    CK(cudaMemcpyAsync(h + ly.tok, d + ly.tok, ly.end - ly.tok, cudaMemcpyDeviceToHost,
                       c->stream));
    FORWARD_IF(ring_done(c));
    CK(cudaStreamSynchronize(c->stream)); /* the host picks the next inputs from these */
    memcpy(tokens, h + ly.tok, n * 4);
    memcpy(logprobs, h + ly.lp, n * 4);
    for (int i = 0; top && i < n_rows; i++) {
        size_t o = (size_t)i * KERN_TOP_LOGPROBS_MAX, k = (size_t)rows[i].n_top;
        memcpy(top_ids + o, h + ly.top_ids + o * 4, k * 4);
        memcpy(top_lps + o, h + ly.top_lps + o * 4, k * 4);
    }
    return 0;
}

static int cuda_sync(void *ctx)
{
    cuda_ctx *c = ctx;
    CK(cudaStreamSynchronize(c->stream));
    return 0;
}

/* ---- the reservation (backend.h reserve) ----
 * Every buffer an op grows, sized for the widest limits: the staging of
 * ids, positions, gather rows, kern_seq arrays and RoPE's positions and
 * frequencies (at most head_dim / 2); the attention work
 * space (decode's chunks, prefill's softmax statistics and its tensor-core
 * S and P); sampling's rows, edits, top logprobs and sort. The largest is taken over every
 * prompt length and row count a call may bring, so no call within the
 * limits needs more (cub's sort space is not documented as monotone). */
static size_t reserve_work(const cuda_ctx *c, const backend_limits *l)
{
    size_t most = kern_attn_decode_work(l->seqs, l->heads, l->head_dim, l->cap);
    size_t stats = sizeof(float) * 2 * (size_t)l->rows * l->heads;
    most = stats > most ? stats : most;
    for (int n = PREFILL_GEMM_MIN; !flash_prefill(c, l->head_dim) && n <= l->prompt; n++) {
        int hg, qb;
        size_t b = prefill_gemm_plan(n, l->heads, &hg, &qb);
        most = b > most ? b : most;
    }
    return most;
}

static size_t reserve_samp(const backend_limits *l)
{
    int level = l->sample_draw    ? KERN_SAMPLE_DRAW
                : l->sample_edits ? KERN_SAMPLE_EDIT
                                  : KERN_SAMPLE_ARGMAX;
    size_t most = 0;
    for (int n = 1; n <= l->sample_rows; n++) {
        size_t w = 0;
        for (int need = KERN_SAMPLE_ARGMAX; need <= level; need++) {
            size_t b = kern_sample_work(n, need == KERN_SAMPLE_ARGMAX ? 1 : l->vocab, need);
            w = b > w ? b : w;
        }
        size_t b = sample_layout((size_t)n, (size_t)l->sample_edits, l->sample_top).head + w;
        most = b > most ? b : most;
    }
    return most;
}

static int cuda_reserve(void *ctx, const backend_limits *lim)
{
    cuda_ctx *c = ctx;
    if (!lim) {
        c->reserved -= c->reserved > 0;
        return 0;
    }
    CK(cudaSetDevice(c->device));
    backend_limits *w = &c->lim;
    w->rows = max_i(w->rows, lim->rows);
    w->seqs = max_i(w->seqs, lim->seqs);
    w->heads = max_i(w->heads, lim->heads);
    w->kv_heads = max_i(w->kv_heads, lim->kv_heads);
    w->head_dim = max_i(w->head_dim, lim->head_dim);
    w->cap = max_i(w->cap, lim->cap);
    w->prompt = max_i(w->prompt, lim->prompt);
    w->sample_rows = max_i(w->sample_rows, lim->sample_rows);
    w->vocab = max_i(w->vocab, lim->vocab);
    w->sample_draw = max_i(w->sample_draw, lim->sample_draw);
    w->sample_edits = max_i(w->sample_edits, lim->sample_edits);
    w->sample_top = max_i(w->sample_top, lim->sample_top);
    /* the staging as stage() and cuda_sample lay it out */
    size_t rows = align_to(sizeof(int32_t) * (size_t)w->rows, 64);
    size_t seqs = align_to(sizeof(kern_seq) * (size_t)w->seqs, 64);
    size_t rope = rope_stage_bytes(w->rows, w->head_dim);
    size_t slot =
        sample_layout((size_t)w->sample_rows, (size_t)w->sample_edits, w->sample_top).head;
    slot = 2 * rows > slot ? 2 * rows : slot;
    slot = seqs > slot ? seqs : slot;
    slot = rope > slot ? rope : slot;
    FORWARD_IF(ring_size(c, slot, 1));
    FORWARD_IF(grow_to(c, &c->tok, 2 * rows, "the token ids' and positions' staging"));
    FORWARD_IF(grow_to(c, &c->rows, rows, "the gather rows' staging"));
    FORWARD_IF(grow_to(c, &c->seqs, seqs, "the sequences' staging"));
    FORWARD_IF(grow_to(c, &c->rope, rope, "RoPE's positions' and frequencies' staging"));
    c->seqs_n = SIZE_MAX; /* a new c->seqs holds nothing yet */
    FORWARD_IF(seqs_room(c, (size_t)w->seqs, 1));
    FORWARD_IF(grow_to(c, &c->work, reserve_work(c, w), "attention's work space"));
    FORWARD_IF(grow_to(c, &c->samp, reserve_samp(w), "sampling's work space"));
    c->reserved++;
    return 0;
}

static uint64_t cuda_allocs(void *ctx)
{
    cuda_ctx *c = ctx;
    return c->allocs;
}

/* ---- byte movement for the offloading scheduler ----
 * Copies run on a stream of their direction, so that a load, a store and
 * the compute of the current GPU batch proceed together; the calling thread
 * (the scheduler's loader or storer) waits for its own copy only. The CUDA
 * current device is per thread: each entry point sets it. */
/* Host-tier memory is page-aligned (backend.h): the disk engine reads
 * O_DIRECT straight into it. cudaHostAlloc promises 256 bytes and
 * suballocates small requests (on an H200 a lane's host stage came back off
 * a page boundary), so each block is one page larger than asked and handed
 * out from its first page boundary past the start, the block's own address
 * stored in the word before. */
#define HOST_PAGE 4096

static int cuda_host_alloc(void *ctx, size_t bytes, void **out)
{
    cuda_ctx *c = ctx;
    CK(cudaSetDevice(c->device));
    void *base = NULL;
    c->allocs++;
    cudaError_t e = cudaHostAlloc(&base, bytes + HOST_PAGE, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        RETURN_IF(1, -ENOMEM, "cannot pin %.2f GiB of host memory (%s); lower --cpu-mem use "
                  "(move KV or weights to disk) or pass --no-pin-weight",
                  (double)bytes / (1 << 30), cudaGetErrorString(e));
    }
    /* strictly past base, so the word before p lies within the block */
    char *p = (char *)(((uintptr_t)base + HOST_PAGE) & ~(uintptr_t)(HOST_PAGE - 1));
    ((void **)p)[-1] = base;
    memset(p, 0, bytes);
    *out = p;
    return 0;
}

static void cuda_host_free(void *ctx, void *p)
{
    (void)ctx;
    if (p)
        cudaFreeHost(((void **)p)[-1]);
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

static int cuda_copy_2d(void *ctx, int queue, void *dst, size_t dpitch, const void *src,
                        size_t spitch, size_t width, size_t rows, int wait)
{
    cuda_ctx *c = ctx;
    if (width == 0 || rows == 0)
        return 0;
    cudaStream_t st = cuda_queue(c, queue);
    CK(cudaSetDevice(c->device));
    CK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows,
                         queue == BACKEND_Q_D2H ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice,
                         st));
    if (wait)
        CK(cudaStreamSynchronize(st));
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
    .kv_formats = (1u << KERN_KV_FMT_PLAIN) | (1u << KERN_KV_FMT_Q4),
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .alloc_words = cuda_alloc_words,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .upload_words = cuda_upload_words,
    .download_words = cuda_download_words,
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
    .rmsnorm = cuda_rmsnorm,
    .rope = cuda_rope,
    .swiglu = cuda_swiglu,
    .gelu = cuda_gelu,
    .sample = cuda_sample,
    .sync = cuda_sync,
    .reserve = cuda_reserve,
    .allocs = cuda_allocs,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .copy_h2d = cuda_copy_h2d,
    .copy_d2h = cuda_copy_d2h,
    .copy_d2d = cuda_copy_d2d,
    .copy_async = cuda_copy_async,
    .copy_2d = cuda_copy_2d,
    .event_record = cuda_event_record,
    .event_wait = cuda_event_wait,
    .event_sync = cuda_event_sync,
};

/* Streams, markers, the pinned staging buffer and the cuBLAS(Lt) handles
 * of c (zeroed, device set); cuda_destroy frees what exists on failure. */
static int cuda_setup(cuda_ctx *c)
{
    CK(cudaSetDevice(c->device));
    CK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&c->h2d, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&c->d2h, cudaStreamNonBlocking));
    for (int i = 0; i < BACKEND_EVENTS; i++)
        CK(cudaEventCreateWithFlags(&c->events[i], cudaEventDisableTiming));
    for (int i = 0; i < RING_SLOTS; i++)
        CK(cudaEventCreateWithFlags(&c->ring.ev[i], cudaEventDisableTiming));
    CK(cudaHostAlloc(&c->pinned, PINNED_BYTES, cudaHostAllocDefault));
    FORWARD_IF(grow_to(c, &c->f32tmp, PINNED_BYTES, "the fp32 conversion staging"));
    FORWARD_IF(dev_malloc(&c->lt_work, LT_WORKSPACE, "cuBLASLt's workspace",
                          "other processes hold the GPU's memory; free it or use --device cpu"));
    CK(cublasCreate(&c->blas));
    CK(cublasSetStream(c->blas, c->stream));
    CK(cublasLtCreate(&c->lt));
    CK(cublasLtMatmulPreferenceCreate(&c->lt_pref));
    size_t ws = LT_WORKSPACE;
    CK(cublasLtMatmulPreferenceSetAttribute(c->lt_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                            &ws, sizeof ws));
    return 0;
}

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
    /* the prefill attention route: the flash kernel unless told otherwise */
    const char *pf = getenv("FLEXH2O_CUDA_PREFILL");
    RETURN_IF(pf && *pf && strcmp(pf, "flash") && strcmp(pf, "gemm"), -EINVAL,
              "FLEXH2O_CUDA_PREFILL=%s: set it to flash (the default) or gemm, or unset it", pf);
    cuda_ctx *c = calloc(1, sizeof *c);
    RETURN_IF(!c, -ENOMEM, "out of memory");
    c->device = device;
    c->prefill_gemm = pf && !strcmp(pf, "gemm");
    c->seqs_n = SIZE_MAX; /* c->seqs holds nothing */
    int rc = cuda_setup(c);
    if (rc < 0) {
        cuda_destroy(c);
        return rc;
    }
    out->ops = &cuda_ops;
    out->ctx = c;
    return 0;
}

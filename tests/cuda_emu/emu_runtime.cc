/* emu_runtime.cc: the CUDA runtime, cuBLAS and cuBLASLt calls of
 * cuda_emu_api.h on host memory.
 *
 * Streams run as late as CUDA allows (FLEXH2O_EMU_STREAMS=lazy, the
 * default): an operation queued on a stream (kernel, async copy or memset,
 * GEMM, sort) runs only when something the host does needs it done -- a
 * synchronize of its stream, of an event recorded after it, or of the
 * device, a synchronous copy or memset, cudaFree, or another stream's
 * operation ordered after it by cudaStreamWaitEvent. So a host that reads
 * a copy's destination, or rewrites its source, without the
 * synchronization CUDA requires sees the wrong bytes, and the test that
 * checks them fails, where an eager emulation (and often a real GPU) would
 * let it pass. The legacy default stream (NULL) runs at once, after
 * everything queued. An async copy from pageable host memory takes its
 * source at the call, and one into pageable memory completes before it
 * returns, as CUDA documents. FLEXH2O_EMU_STREAMS=sync runs every
 * operation at once instead. One lock serialises the whole emulated
 * device.
 *
 * Device memory is counted against FLEXH2O_EMU_GPU_MEM and new allocations
 * of up to 64 MiB are filled with 0xff bytes (fp16 and fp32 NaNs), so a
 * read of memory nobody wrote shows up as NaN in a test instead of passing
 * on zeros. GEMMs are fp32 sums in
 * k order of fp16 or fp32 operands (one output per OpenMP iteration: the
 * same result on every run). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "cuda_emu.hpp"

#include <deque>
#include <functional>
#include <set>
#include <vector>

void emu_set_error(cudaError_t e); /* cuda_emu.cc: the sticky last error */

/* --------------------------------------------------- streams and events */
struct emu_stream {
    unsigned flags;
    std::deque<std::function<void()>> q; /* queued, not yet run */
    uint64_t enq, done;                  /* operations queued and run so far */
};
struct emu_event {
    unsigned flags;
    emu_stream *s; /* the stream of the last record (NULL: none, or the default) */
    uint64_t pos;  /* complete once s->done reaches it */
};

static std::recursive_mutex big_lock;
static std::set<emu_stream *> streams;

static bool lazy(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("FLEXH2O_EMU_STREAMS");
        v = !(e && !strcmp(e, "sync"));
    }
    return v;
}

static void drain(emu_stream *s, uint64_t upto)
{
    while (s->done < upto && !s->q.empty()) {
        std::function<void()> fn = std::move(s->q.front());
        s->q.pop_front();
        fn();
        s->done++;
    }
}

static void drain_all(void)
{
    for (bool more = true; more;) {
        more = false;
        for (emu_stream *s : streams)
            if (!s->q.empty()) {
                drain(s, s->enq);
                more = true;
            }
    }
}

void emu_enqueue(cudaStream_t st, std::function<void()> fn)
{
    std::lock_guard<std::recursive_mutex> g(big_lock);
    if (!st || !lazy()) {
        drain_all(); /* the legacy default stream waits for everything */
        fn();
        return;
    }
    st->q.push_back(std::move(fn));
    st->enq++;
}

/* Pinned host memory (cudaHostAlloc): async copies to and from it stay
 * asynchronous; any other host memory is pageable. Keyed by the address
 * handed out: its size and the block it lies in. */
struct pinned_block {
    size_t bytes;
    void *base;
};
static std::map<uintptr_t, pinned_block> pinned;

static bool is_pinned(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    auto it = pinned.upper_bound(a);
    if (it == pinned.begin())
        return false;
    --it;
    return a < it->first + it->second.bytes;
}

/* Device memory (cudaMalloc). */
static bool is_device(const void *p);

/* ------------------------------------------------------------- memory */
static std::mutex mem_lock;
static std::map<void *, size_t> allocs;
static size_t mem_used;

size_t emu_gpu_mem_total(void)
{
    static size_t total;
    if (!total) {
        const char *e = getenv("FLEXH2O_EMU_GPU_MEM");
        char *end = NULL;
        double v = e ? strtod(e, &end) : 16;
        char unit = e && end && *end ? *end : 'G';
        double mul = unit == 'K' || unit == 'k'   ? 1024.0
                     : unit == 'M' || unit == 'm' ? 1048576.0
                     : unit == 'G' || unit == 'g' ? 1073741824.0
                                                  : 1.0;
        total = v > 0 ? (size_t)(v * mul) : ((size_t)16 << 30);
    }
    return total;
}

#define EMU_POISON_MAX ((size_t)64 << 20) /* larger allocations stay untouched pages */

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    std::lock_guard<std::mutex> g(mem_lock);
    size_t sz = bytes ? (bytes + 255) / 256 * 256 : 256;
    if (mem_used + sz > emu_gpu_mem_total()) {
        emu_set_error(cudaErrorMemoryAllocation);
        return cudaErrorMemoryAllocation;
    }
    void *q = aligned_alloc(256, sz); /* cudaMalloc's alignment */
    if (!q) {
        emu_set_error(cudaErrorMemoryAllocation);
        return cudaErrorMemoryAllocation;
    }
    if (sz <= EMU_POISON_MAX)
        memset(q, 0xff, sz);
    allocs[q] = sz;
    mem_used += sz;
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    std::lock_guard<std::recursive_mutex> big(big_lock);
    drain_all(); /* cudaFree waits for the device */
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = allocs.find(p);
    if (it == allocs.end()) {
        fprintf(stderr, "cuda_emu: cudaFree(%p) of memory cudaMalloc did not give\n", p);
        abort();
    }
    mem_used -= it->second;
    allocs.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    std::lock_guard<std::mutex> g(mem_lock);
    *total_b = emu_gpu_mem_total();
    *free_b = *total_b - mem_used;
    return cudaSuccess;
}

static bool is_device(const void *p)
{
    std::lock_guard<std::mutex> g(mem_lock);
    uintptr_t a = (uintptr_t)p;
    auto it = allocs.upper_bound((void *)a);
    if (it == allocs.begin())
        return false;
    --it;
    return a < (uintptr_t)it->first + it->second;
}

/* The driver promises 256-byte alignment and no more: it suballocates
 * small requests from pinned pools (on an H200, a lane's host stage came
 * back off a page boundary, which O_DIRECT refuses). So every address
 * handed out here is 256 bytes past a page boundary: code that needs pages
 * must align for itself, here as there. */
enum { PINNED_SKEW = 256 };

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags)
{
    (void)flags;
    std::lock_guard<std::recursive_mutex> g(big_lock);
    size_t sz = (bytes + PINNED_SKEW + 4095) / 4096 * 4096;
    void *base = aligned_alloc(4096, sz);
    if (!base)
        return cudaErrorMemoryAllocation;
    *p = (char *)base + PINNED_SKEW;
    pinned[(uintptr_t)*p] = {sz - PINNED_SKEW, base};
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p)
{
    if (!p)
        return cudaSuccess;
    std::lock_guard<std::recursive_mutex> g(big_lock);
    drain_all(); /* as cudaFree */
    auto it = pinned.find((uintptr_t)p);
    if (it == pinned.end())
        return cudaErrorInvalidValue;
    free(it->second.base);
    pinned.erase(it);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    (void)kind;
    std::lock_guard<std::recursive_mutex> g(big_lock);
    drain_all(); /* a synchronous copy waits for the device */
    if (bytes)
        memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t st)
{
    (void)kind;
    if (!bytes)
        return cudaSuccess;
    std::lock_guard<std::recursive_mutex> g(big_lock);
    bool src_pageable = !is_pinned(src) && !is_device(src);
    bool dst_pageable = !is_pinned(dst) && !is_device(dst);
    if (dst_pageable) { /* into pageable memory: complete on return */
        if (st && lazy())
            drain(st, st->enq);
        else
            drain_all();
        memmove(dst, src, bytes);
        return cudaSuccess;
    }
    if (src_pageable) { /* from pageable memory: the source taken now */
        std::shared_ptr<std::vector<char>> copy =
            std::make_shared<std::vector<char>>((const char *)src, (const char *)src + bytes);
        emu_enqueue(st, [dst, copy] { memcpy(dst, copy->data(), copy->size()); });
        return cudaSuccess;
    }
    emu_enqueue(st, [dst, src, bytes] { memmove(dst, src, bytes); });
    return cudaSuccess;
}

/* Row by row, each as cudaMemcpyAsync: the same ordering on st, and the
 * same checks of the kinds of memory (real CUDA does one DMA). */
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind,
                              cudaStream_t st)
{
    if (width > dpitch || width > spitch)
        return cudaErrorInvalidValue;
    for (size_t r = 0; r < height; r++) {
        cudaError_t e = cudaMemcpyAsync((char *)dst + r * dpitch, (const char *)src + r * spitch,
                                        width, kind, st);
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int v, size_t bytes)
{
    std::lock_guard<std::recursive_mutex> g(big_lock);
    drain_all();
    if (bytes)
        memset(p, v, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t st)
{
    if (bytes)
        emu_enqueue(st, [p, v, bytes] { memset(p, v, bytes); });
    return cudaSuccess;
}

/* ------------------------------------------------- devices, streams, events */
/* One emulated device, hidden as CUDA hides devices: CUDA_VISIBLE_DEVICES
 * set to a list that does not start with 0 (e.g. -1, or empty) leaves none. */
cudaError_t cudaGetDeviceCount(int *n)
{
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    *n = !v || v[0] == '0' ? 1 : 0;
    if (!*n) {
        emu_set_error(cudaErrorNoDevice);
        return cudaErrorNoDevice;
    }
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    if (device != 0) {
        emu_set_error(cudaErrorInvalidDevice);
        return cudaErrorInvalidDevice;
    }
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    std::lock_guard<std::recursive_mutex> g(big_lock);
    drain_all();
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags)
{
    std::lock_guard<std::recursive_mutex> g(big_lock);
    *st = new emu_stream{flags, {}, 0, 0};
    streams.insert(*st);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t st)
{
    std::lock_guard<std::recursive_mutex> g(big_lock);
    drain(st, st->enq); /* its work still completes */
    streams.erase(st);
    delete st;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t st)
{
    std::lock_guard<std::recursive_mutex> g(big_lock);
    if (st)
        drain(st, st->enq);
    else
        drain_all();
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t st, cudaEvent_t ev, unsigned flags)
{
    (void)flags;
    std::lock_guard<std::recursive_mutex> g(big_lock);
    emu_stream *es = ev->s;
    uint64_t pos = ev->pos; /* the record as it is now */
    if (es)
        emu_enqueue(st, [es, pos] { drain(es, pos); });
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned flags)
{
    *ev = new emu_event{flags, NULL, 0};
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t ev)
{
    delete ev;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st)
{
    std::lock_guard<std::recursive_mutex> g(big_lock);
    if (!st || !lazy()) {
        drain_all();
        ev->s = NULL;
        ev->pos = 0;
    } else {
        ev->s = st;
        ev->pos = st->enq;
    }
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t ev)
{
    std::lock_guard<std::recursive_mutex> g(big_lock);
    if (ev->s)
        drain(ev->s, ev->pos);
    return cudaSuccess;
}

/* ------------------------------------------------------------- cuBLAS */
struct emu_blas {
    cudaStream_t st;
};

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new emu_blas{NULL};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t st)
{
    h->st = st;
    return CUBLAS_STATUS_SUCCESS;
}

static float ld_elem(const void *p, cudaDataType t, size_t i)
{
    return t == CUDA_R_16F ? emu_f16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
static void st_elem(void *p, cudaDataType t, size_t i, float v)
{
    if (t == CUDA_R_16F)
        ((uint16_t *)p)[i] = emu_f32_to_f16(v);
    else
        ((float *)p)[i] = v;
}

/* C(m, n) = alpha op(A) op(B) + beta C, column-major; bias (m, fp16) and
 * relu after, as cuBLASLt's epilogues. beta 0: C is not read. */
static void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const void *A,
                 cudaDataType at, long long lda, const void *B, cudaDataType bt, long long ldb,
                 float beta, const void *C, cudaDataType ct, long long ldc, void *D,
                 cudaDataType dt, long long ldd, const void *bias, bool relu)
{
#pragma omp parallel for schedule(static)
    for (long long j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float s = 0.0f;
            for (int l = 0; l < k; l++) {
                float a = ld_elem(A, at, ta ? (size_t)(l + i * lda) : (size_t)(i + l * lda));
                float b = ld_elem(B, bt, tb ? (size_t)(j + l * ldb) : (size_t)(l + j * ldb));
                s += a * b;
            }
            float v = alpha * s;
            if (beta != 0.0f)
                v += beta * ld_elem(C, ct, (size_t)(i + j * ldc));
            if (bias)
                v += emu_f16_to_f32(((const uint16_t *)bias)[i]);
            if (relu && v < 0.0f)
                v = 0.0f;
            st_elem(D, dt, (size_t)(i + j * ldd), v);
        }
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t algo)
{
    (void)h, (void)comp, (void)algo;
    if (m < 0 || n < 0 || k < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    float al = *(const float *)alpha, be = *(const float *)beta; /* host pointer mode */
    emu_enqueue(h->st, [=] {
        gemm(ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, al, A, at, lda, B, bt, ldb, be, C,
             ct, ldc, C, ct, ldc, NULL, false);
    });
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(
    cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
    const void *alpha, const void *A, cudaDataType at, int lda, long long sa, const void *B,
    cudaDataType bt, int ldb, long long sb, const void *beta, void *C, cudaDataType ct, int ldc,
    long long sc, int batch, cublasComputeType_t comp, cublasGemmAlgo_t algo)
{
    (void)h, (void)comp, (void)algo;
    size_t ea = at == CUDA_R_16F ? 2 : 4, eb = bt == CUDA_R_16F ? 2 : 4,
           ec = ct == CUDA_R_16F ? 2 : 4;
    float al = *(const float *)alpha, be = *(const float *)beta; /* host pointer mode */
    emu_enqueue(h->st, [=] {
        for (int b = 0; b < batch; b++) {
            void *Cb = (char *)C + (size_t)(b * sc) * ec;
            gemm(ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, al,
                 (const char *)A + (size_t)(b * sa) * ea, at, lda,
                 (const char *)B + (size_t)(b * sb) * eb, bt, ldb, be, Cb, ct, ldc, Cb, ct, ldc,
                 NULL, false);
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}

/* ------------------------------------------------------------ cuBLASLt */
struct emu_lt {
    int unused;
};
struct emu_lt_desc {
    cublasOperation_t ta, tb;
    cublasLtEpilogue_t epi;
    const void *bias;
};
struct emu_lt_layout {
    cudaDataType t;
    uint64_t rows, cols;
    int64_t ld;
};
struct emu_lt_pref {
    size_t ws;
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h)
{
    *h = new emu_lt{0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t comp,
                                        cudaDataType scale)
{
    (void)comp, (void)scale;
    *d = new emu_lt_desc{CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, NULL};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d)
{
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                              cublasLtMatmulDescAttributes_t a, const void *v,
                                              size_t bytes)
{
    switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
        if (bytes != sizeof(int32_t))
            return CUBLAS_STATUS_INVALID_VALUE;
        d->ta = (cublasOperation_t) * (const int32_t *)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_TRANSB:
        if (bytes != sizeof(int32_t))
            return CUBLAS_STATUS_INVALID_VALUE;
        d->tb = (cublasOperation_t) * (const int32_t *)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        if (bytes != sizeof(uint32_t))
            return CUBLAS_STATUS_INVALID_VALUE;
        d->epi = (cublasLtEpilogue_t) * (const uint32_t *)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        if (bytes != sizeof(void *))
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&d->bias, v, sizeof(void *));
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType t,
                                          uint64_t rows, uint64_t cols, int64_t ld)
{
    *l = new emu_lt_layout{t, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l)
{
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l,
                                                cublasLtMatrixLayoutAttribute_t a,
                                                const void *v, size_t bytes)
{
    if (a != CUBLASLT_MATRIX_LAYOUT_COLS || bytes != sizeof(uint64_t))
        return CUBLAS_STATUS_INVALID_VALUE;
    l->cols = *(const uint64_t *)v;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p)
{
    *p = new emu_lt_pref{0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p)
{
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *v, size_t bytes)
{
    if (a != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES || bytes != sizeof(uint64_t))
        return CUBLAS_STATUS_INVALID_VALUE;
    p->ws = *(const uint64_t *)v;
    return CUBLAS_STATUS_SUCCESS;
}

/* The shapes of a matmul: op(A) (m, k), op(B) (k, n), C and D (m, n). */
static bool lt_shapes(const emu_lt_desc *d, const emu_lt_layout *a, const emu_lt_layout *b,
                      const emu_lt_layout *c, uint64_t *m, uint64_t *n, uint64_t *k)
{
    uint64_t am = d->ta == CUBLAS_OP_T ? a->cols : a->rows;
    uint64_t ak = d->ta == CUBLAS_OP_T ? a->rows : a->cols;
    uint64_t bk = d->tb == CUBLAS_OP_T ? b->cols : b->rows;
    uint64_t bn = d->tb == CUBLAS_OP_T ? b->rows : b->cols;
    *m = am, *n = bn, *k = ak;
    return ak == bk && c->rows == am && c->cols == bn;
}

/* One algorithm for every shape whose sizes agree; FLEXH2O_EMU_LT_NONE=1
 * answers none, as cuBLASLt may for a shape and epilogue (the backend then
 * takes cublasGemmEx and its bias kernel). */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl,
                                              cublasLtMatmulPreference_t p, int requested,
                                              cublasLtMatmulHeuristicResult_t *res, int *found)
{
    (void)h, (void)dl, (void)p;
    uint64_t m, n, k;
    const char *none = getenv("FLEXH2O_EMU_LT_NONE");
    *found = 0;
    if (requested < 1 || !lt_shapes(d, a, b, c, &m, &n, &k) || (none && !strcmp(none, "1")))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    memset(res, 0, sizeof *res);
    res->algo.data[0] = 1;
    res->state = CUBLAS_STATUS_SUCCESS;
    *found = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t al, const void *B,
                              cublasLtMatrixLayout_t bl, const void *beta, const void *C,
                              cublasLtMatrixLayout_t cl, void *D, cublasLtMatrixLayout_t dl,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_bytes,
                              cudaStream_t st)
{
    (void)h, (void)ws, (void)ws_bytes, (void)st;
    uint64_t m, n, k;
    if (!algo || algo->data[0] != 1 || !lt_shapes(d, al, bl, cl, &m, &n, &k) ||
        dl->rows != cl->rows || dl->cols != cl->cols)
        return CUBLAS_STATUS_INVALID_VALUE;
    bool bias = d->epi == CUBLASLT_EPILOGUE_BIAS || d->epi == CUBLASLT_EPILOGUE_RELU_BIAS;
    bool relu = d->epi == CUBLASLT_EPILOGUE_RELU || d->epi == CUBLASLT_EPILOGUE_RELU_BIAS;
    if (bias && !d->bias)
        return CUBLAS_STATUS_INVALID_VALUE;
    /* the descriptors as they are at the call (the bias pointer is reset
     * per call), alpha and beta read now (host pointer mode) */
    float a = *(const float *)alpha, b = *(const float *)beta;
    bool ta = d->ta == CUBLAS_OP_T, tb = d->tb == CUBLAS_OP_T;
    const void *bp = bias ? d->bias : NULL;
    emu_lt_layout la = *al, lb = *bl, lc = *cl, ld = *dl;
    emu_enqueue(st, [=] {
        gemm(ta, tb, (int)m, (int)n, (int)k, a, A, la.t, la.ld, B, lb.t, lb.ld, b, C, lc.t, lc.ld,
             D, ld.t, ld.ld, bp, relu);
    });
    return CUBLAS_STATUS_SUCCESS;
}

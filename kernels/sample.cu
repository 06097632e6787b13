/* sample.cu: next-token choice on the device, one block per row.
 *
 *   row_stats:  max and sum exp of the raw logits (for the logprob);
 *               greedy rows finish here (argmax, lowest index on ties)
 *   sampled rows (temperature > 0), as the reference and Hugging Face's
 *   TopPLogitsWarper:  prob = softmax(logits / T)
 *               -> segmented radix sort, descending (stable: lower id first)
 *               -> prefix scan: keep the smallest prefix with mass >= top_p,
 *                  invert the CDF of the kept set at u
 *
 * cub counts items and segment offsets in int: the sort runs over groups of
 * at most INT_MAX / V rows, each group's offsets 0, V, 2 V, ... (the same
 * array for every group), so any number of rows fits.
 */
#include <limits.h>

#include <cub/cub.cuh>

#include "cuda_util.cuh"

#define SAMPLE_THREADS 1024

struct row_stat {
    float max, sum; /* raw logits */
};

/* Block reductions over SAMPLE_THREADS threads. */
typedef cub::BlockReduce<float, SAMPLE_THREADS> reduce_f;

struct argmax_t {
    float v;
    int i;
};

struct argmax_op {
    __device__ argmax_t operator()(const argmax_t &a, const argmax_t &b) const
    {
        return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
    }
};

/* Rows of one sort call (cub's int item count). */
static int rows_per_sort(int V) { return INT_MAX / V; }

/* One block per row. Also writes the segment offsets k V of one sort group
 * (k = 0 .. n_off, n_off = the rows of the largest group). */
__global__ void row_stats(const __half *logits, int V, const float *temperature,
                          row_stat *stat, int32_t *tokens, float *logprobs, float *prob,
                          int32_t *idx, int *offsets, int n_off)
{
    __shared__ union {
        reduce_f::TempStorage f;
        cub::BlockReduce<argmax_t, SAMPLE_THREADS>::TempStorage a;
    } tmp;
    __shared__ float bc[2];
    int r = blockIdx.x;
    const __half *x = logits + (size_t)r * V;
    argmax_t best = {-INFINITY, 0x7fffffff};
    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
        float f = __half2float(x[i]);
        if (f > best.v || (f == best.v && i < best.i))
            best = {f, i};
    }
    best = cub::BlockReduce<argmax_t, SAMPLE_THREADS>(tmp.a).Reduce(best, argmax_op());
    if (threadIdx.x == 0)
        bc[0] = best.v;
    __syncthreads(); /* broadcast of the max */
    float mx = bc[0], s = 0.0f;
    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS)
        s += __expf(__half2float(x[i]) - mx);
    __syncthreads(); /* tmp reused */
    s = reduce_f(tmp.f).Sum(s);
    float T = temperature[r];
    if (threadIdx.x == 0) {
        stat[r].max = mx;
        stat[r].sum = s;
        if (T <= 0.0f) {
            tokens[r] = best.i;
            logprobs[r] = -logf(s); /* x[best] - mx = 0 */
        }
        if (r == 0)
            offsets[n_off] = n_off * V; /* n_off <= INT_MAX / V */
        if (r < n_off)
            offsets[r] = r * V;
    }
    if (T <= 0.0f || !prob)
        return;
    /* softmax(x / T): max of x / T is mx / T since T > 0 */
    float tmx = mx / T, ts = 0.0f;
    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS)
        ts += __expf(__half2float(x[i]) / T - tmx);
    __syncthreads(); /* tmp reused */
    ts = reduce_f(tmp.f).Sum(ts);
    if (threadIdx.x == 0)
        bc[1] = ts;
    __syncthreads(); /* broadcast of the sum */
    float inv = 1.0f / bc[1];
    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
        prob[(size_t)r * V + i] = __expf(__half2float(x[i]) / T - tmx) * inv;
        idx[(size_t)r * V + i] = i;
    }
}

typedef cub::BlockScan<float, SAMPLE_THREADS> scan_f;

/* Index of the first element where the running sum of p reaches `target`
 * (strict: target < sum; else sum >= target), scanning in chunks. */
__device__ int first_reaching(const float *p, int V, float target, int strict,
                              scan_f::TempStorage &tmp, int *found)
{
    float carry = 0.0f;
    if (threadIdx.x == 0)
        *found = V;
    __syncthreads(); /* found initialised */
    for (int base = 0; base < V; base += SAMPLE_THREADS) {
        int i = base + threadIdx.x;
        float v = i < V ? p[i] : 0.0f, c, total;
        scan_f(tmp).InclusiveSum(v, c, total);
        c += carry;
        int hit = i < V && (strict ? target < c : c >= target);
        /* the lowest hitting index wins */
        if (hit)
            atomicMin(found, i);
        __syncthreads(); /* all hits recorded; tmp free again */
        if (*found < V)
            return *found;
        carry += total;
    }
    return V - 1;
}

__global__ void pick(const __half *logits, int V, const float *temperature, const float *top_p,
                     const double *u, const row_stat *stat, const float *sprob,
                     const int32_t *sidx, int32_t *tokens, float *logprobs)
{
    __shared__ scan_f::TempStorage tmp;
    __shared__ int found;
    __shared__ float red[SAMPLE_THREADS / 32];
    int r = blockIdx.x;
    if (temperature[r] <= 0.0f)
        return;
    const float *p = sprob + (size_t)r * V;
    int keep = V;
    if (top_p[r] < 1.0f)
        keep = first_reaching(p, V, top_p[r], 0, tmp, &found) + 1;
    /* mass of the kept prefix */
    float m = 0.0f;
    for (int i = threadIdx.x; i < keep; i += SAMPLE_THREADS)
        m += p[i];
    m = group_sum<32>(m);
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = m;
    __syncthreads(); /* warp sums written */
    float mass = 0.0f;
    for (int i = 0; i < SAMPLE_THREADS / 32; i++)
        mass += red[i];
    __syncthreads(); /* red read by all before first_reaching reuses smem */
    float target = (float)(u[r] * mass);
    int at = first_reaching(p, keep, target, 1, tmp, &found);
    if (at >= keep)
        at = keep - 1;
    if (threadIdx.x == 0) {
        int tok = sidx[(size_t)r * V + at];
        tokens[r] = tok;
        logprobs[r] = __half2float(logits[(size_t)r * V + tok]) - stat[r].max - logf(stat[r].sum);
    }
}

/* Work layout: stats, offsets (of one sort group), prob/idx in and out,
 * cub's temp storage (for one group). */
struct sample_work {
    row_stat *stat;
    int *offsets;
    float *prob, *prob_sorted;
    int32_t *idx, *idx_sorted;
    void *cub_tmp;
    size_t cub_bytes;
};

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* Rows of the largest sort group. */
static int group_rows(int n_rows, int V)
{
    int per = rows_per_sort(V);
    return n_rows < per ? n_rows : per;
}

static size_t cub_bytes_for(int n_rows, int V)
{
    int g = group_rows(n_rows, V);
    size_t bytes = 0;
    cub::DeviceSegmentedRadixSort::SortPairsDescending(
        NULL, bytes, (const float *)NULL, (float *)NULL, (const int32_t *)NULL, (int32_t *)NULL,
        g * V, g, (const int *)NULL, (const int *)NULL + 1);
    return bytes;
}

static sample_work carve_sample(void *work, int n_rows, int V)
{
    sample_work w;
    char *p = (char *)work;
    size_t n = (size_t)n_rows * V;
    w.stat = (row_stat *)p;
    p += align256(sizeof(row_stat) * n_rows);
    w.offsets = (int *)p;
    p += align256(sizeof(int) * ((size_t)group_rows(n_rows, V) + 1));
    w.prob = (float *)p;
    p += align256(sizeof(float) * n);
    w.prob_sorted = (float *)p;
    p += align256(sizeof(float) * n);
    w.idx = (int32_t *)p;
    p += align256(sizeof(int32_t) * n);
    w.idx_sorted = (int32_t *)p;
    p += align256(sizeof(int32_t) * n);
    w.cub_tmp = p;
    w.cub_bytes = cub_bytes_for(n_rows, V);
    return w;
}

extern "C" size_t kern_sample_work(int n_rows, int V)
{
    size_t n = (size_t)n_rows * V;
    return align256(sizeof(row_stat) * n_rows) +
           align256(sizeof(int) * ((size_t)group_rows(n_rows, V) + 1)) +
           2 * align256(sizeof(float) * n) + 2 * align256(sizeof(int32_t) * n) +
           align256(cub_bytes_for(n_rows, V));
}

extern "C" int kern_sample_cuda(const void *logits, int n_rows, int V, const float *temperature,
                                const float *top_p, const double *u, int32_t *tokens,
                                float *logprobs, void *work, int any_sampled, void *stream)
{
    if (n_rows == 0)
        return 0;
    RETURN_IF(V <= 0, -EINVAL, "sampling over a vocabulary of %d tokens", V);
    cudaStream_t st = kstream(stream);
    sample_work w = carve_sample(work, n_rows, V);
    int g_max = group_rows(n_rows, V);
    row_stats<<<n_rows, SAMPLE_THREADS, 0, st>>>((const __half *)logits, V, temperature, w.stat,
                                                 tokens, logprobs, any_sampled ? w.prob : NULL,
                                                 w.idx, w.offsets, g_max);
    KLAUNCHED();
    if (!any_sampled)
        return 0;
    for (int r0 = 0; r0 < n_rows; r0 += g_max) {
        int g = n_rows - r0 < g_max ? n_rows - r0 : g_max;
        size_t at = (size_t)r0 * V, bytes = w.cub_bytes;
        KCHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            w.cub_tmp, bytes, w.prob + at, w.prob_sorted + at, w.idx + at, w.idx_sorted + at,
            g * V, g, w.offsets, w.offsets + 1, 0, 32, st));
    }
    pick<<<n_rows, SAMPLE_THREADS, 0, st>>>((const __half *)logits, V, temperature, top_p, u,
                                            w.stat, w.prob_sorted, w.idx_sorted, tokens,
                                            logprobs);
    KLAUNCHED();
    return 0;
}

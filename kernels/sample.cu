/* sample.cu: next-token choice on the device with vLLM's per-row controls
 * (kern.h), one block per row.
 *
 *   row_stats:  max and sum exp of the raw logits (for the logprobs); raw
 *               greedy rows finish here (argmax, lowest index on ties).
 *               A row with edits copies its logits to fp32 (prob) and
 *               applies them: a greedy one finishes (edited argmax); a
 *               sampled row, as the reference:
 *                 prob = softmax(edited / T), min_p zeroes the tokens below
 *                 min_p * max(prob); counts the positive ones
 *   top_logprobs (rows with n_top): n_top rounds of a block argmax of the
 *               raw logits, each after the last pick in the order (value
 *               descending, id ascending): no list of exclusions needed
 *   sampled rows only (KERN_SAMPLE_DRAW):
 *               -> segmented radix sort, descending (stable: lower id first;
 *                  the zeros go last)
 *   pick:       keep the positive ones, the first top_k of them, the
 *               smallest prefix with mass >= top_p (x the kept mass when
 *               min_p / top_k dropped one), invert the CDF of the kept set
 *               at u
 *
 * Without edits, min_p and top_k the arithmetic is that of the earlier
 * temperature / top-p kernels, so their tokens stay the same. An edit is a
 * rounded product then a rounded sum (__fmul_rn, __fadd_rn: nvcc would
 * otherwise fuse them), as the reference computes it.
 *
 * cub counts items and segment offsets in int: the sort runs over groups of
 * at most INT_MAX / V rows, each group's offsets 0, V, 2 V, ... (the same
 * array for every group), so any number of rows fits.
 */
#include <limits.h>

#include <cub/cub.cuh>

#include "cuda_util.cuh"

/* Threads per row. Every kernel here is declared with __launch_bounds__ of
 * it: without, pick's double scans took 92 registers a thread, and 1024
 * threads of those exceed an SM's 65536 (the launch fails with "too many
 * resources requested", first seen on an H200). */
#define SAMPLE_THREADS 1024

struct row_stat {
    float max, sum;    /* raw logits */
    int n_pos0, n_pos; /* sampled rows: tokens of positive probability before and
                        * after min_p; n_pos 0: no draw (greedy, or all banned) */
};

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

struct max_op {
    __device__ float operator()(const float &a, const float &b) const { return fmaxf(a, b); }
};

/* Block reductions over SAMPLE_THREADS threads. */
typedef cub::BlockReduce<float, SAMPLE_THREADS> reduce_f;
typedef cub::BlockReduce<int, SAMPLE_THREADS> reduce_i;
typedef cub::BlockReduce<argmax_t, SAMPLE_THREADS> reduce_a;

/* Rows of one sort call (cub's int item count). */
static int rows_per_sort(int V) { return INT_MAX / V; }

__device__ __forceinline__ float edit_apply(float x, const kern_logit_edit &e)
{
    float y = x > 0.0f ? __fmul_rn(x, e.pos) : __fmul_rn(x, e.neg);
    return __fadd_rn(y, e.add);
}

/* Logit i of a row: the edited fp32 copy e when the row has one, else the
 * fp16 logit itself. */
__device__ __forceinline__ float logit_at(const __half *x, const float *e, int i)
{
    return e ? e[i] : __half2float(x[i]);
}

/* One block per row. prob (n_rows, V): NULL when no row has edits or
 * samples (KERN_SAMPLE_ARGMAX); idx and offsets: NULL unless a row samples
 * (KERN_SAMPLE_DRAW). Also writes the segment offsets k V of one sort group
 * (k = 0 .. n_off, n_off = the rows of the largest group). */
__global__ void __launch_bounds__(SAMPLE_THREADS)
row_stats(const __half *logits, int V, const kern_sample_row *rows,
          const kern_logit_edit *edits, row_stat *stat, int32_t *tokens,
          float *logprobs, float *prob, int32_t *idx, int *offsets, int n_off)
{
    __shared__ union {
        reduce_f::TempStorage f;
        reduce_i::TempStorage i;
        reduce_a::TempStorage a;
    } tmp;
    __shared__ float bc[2];
    int r = blockIdx.x;
    const __half *x = logits + (size_t)r * V;
    const kern_sample_row rw = rows[r];
    float T = rw.temperature;
    int n_edit = rw.n_edit > 0 ? rw.n_edit : 0;
    argmax_t best = {-INFINITY, INT_MAX};
    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
        float f = __half2float(x[i]);
        if (f > best.v || (f == best.v && i < best.i))
            best = {f, i};
    }
    best = reduce_a(tmp.a).Reduce(best, argmax_op());
    if (threadIdx.x == 0)
        bc[0] = best.v;
    __syncthreads(); /* broadcast of the max */
    float mx = bc[0], s = 0.0f;
    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS)
        s += __expf(__half2float(x[i]) - mx);
    __syncthreads(); /* tmp reused */
    s = reduce_f(tmp.f).Sum(s);
    if (threadIdx.x == 0) {
        stat[r] = {mx, s, 0, 0};
        if (T <= 0.0f && !n_edit) {
            tokens[r] = best.i;
            logprobs[r] = -logf(s); /* x[best] - mx = 0 */
        }
        if (offsets && r == 0)
            offsets[n_off] = n_off * V; /* n_off <= INT_MAX / V */
        if (offsets && r < n_off)
            offsets[r] = r * V;
    }
    if ((T <= 0.0f && !n_edit) || !prob || (T > 0.0f && !idx))
        return; /* (the last two: a need below the rows', the caller's error) */
    float *e = NULL;
    if (n_edit) {
        e = prob + (size_t)r * V;
        for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS)
            e[i] = __half2float(x[i]);
        __syncthreads(); /* the copy is whole before an edit rewrites an entry */
        for (int j = threadIdx.x; j < n_edit; j += SAMPLE_THREADS) {
            kern_logit_edit ed = edits[rw.edit0 + j];
            e[ed.tok] = edit_apply(e[ed.tok], ed); /* a token once per row: no race */
        }
        __syncthreads(); /* every edit visible to the block */
    }
    if (T <= 0.0f) { /* greedy over the edited logits */
        argmax_t b = {-INFINITY, INT_MAX};
        for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
            float f = e[i];
            if (f > b.v || (f == b.v && i < b.i))
                b = {f, i};
        }
        __syncthreads(); /* tmp reused */
        b = reduce_a(tmp.a).Reduce(b, argmax_op());
        if (threadIdx.x == 0) {
            tokens[r] = b.i;
            logprobs[r] = __half2float(x[b.i]) - mx - logf(s);
        }
        return;
    }
    float emx = mx; /* the max of the edited logits */
    if (e) {
        float m = -INFINITY;
        for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS)
            m = fmaxf(m, e[i]);
        __syncthreads(); /* tmp reused */
        m = reduce_f(tmp.f).Reduce(m, max_op());
        if (threadIdx.x == 0)
            bc[0] = m;
        __syncthreads(); /* broadcast of the edited max (every thread read mx long since) */
        emx = bc[0];
    }
    /* softmax(x / T): max of x / T is emx / T since T > 0 */
    float tmx = emx / T, ts = 0.0f;
    if (tmx == -INFINITY) { /* every token banned: token 0, no draw */
        if (threadIdx.x == 0) {
            tokens[r] = 0;
            logprobs[r] = __half2float(x[0]) - mx - logf(s);
        }
        return;
    }
    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS)
        ts += __expf(logit_at(x, e, i) / T - tmx);
    __syncthreads(); /* tmp reused */
    ts = reduce_f(tmp.f).Sum(ts);
    if (threadIdx.x == 0)
        bc[1] = ts;
    __syncthreads(); /* broadcast of the sum */
    float inv = 1.0f / bc[1];
    /* the most probable token's probability is __expf(0) * inv */
    float thr = rw.min_p > 0.0f ? rw.min_p * (__expf(0.0f) * inv) : 0.0f;
    int pos0 = 0, pos = 0;
    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
        /* in place over e: each thread reads and writes its own entries */
        float p = __expf(logit_at(x, e, i) / T - tmx) * inv;
        pos0 += p > 0.0f;
        if (p < thr)
            p = 0.0f;
        pos += p > 0.0f;
        prob[(size_t)r * V + i] = p;
        idx[(size_t)r * V + i] = i;
    }
    __syncthreads(); /* tmp reused */
    pos0 = reduce_i(tmp.i).Sum(pos0);
    __syncthreads(); /* tmp reused */
    pos = reduce_i(tmp.i).Sum(pos);
    if (threadIdx.x == 0) {
        stat[r].n_pos0 = pos0;
        stat[r].n_pos = pos;
    }
}

/* The n_top highest raw logits of each row that asks, with their
 * log-probabilities: round k takes the block argmax of the tokens after
 * round k - 1's pick in the order (value descending, id ascending). */
__global__ void __launch_bounds__(SAMPLE_THREADS)
top_logprobs(const __half *logits, int V, const kern_sample_row *rows,
             const row_stat *stat, int32_t *top_ids, float *top_lps)
{
    __shared__ reduce_a::TempStorage tmp;
    __shared__ argmax_t prev;
    int r = blockIdx.x, n = rows[r].n_top;
    if (n <= 0)
        return;
    const __half *x = logits + (size_t)r * V;
    float mx = stat[r].max, ls = logf(stat[r].sum);
    if (threadIdx.x == 0)
        prev = {INFINITY, -1};
    __syncthreads(); /* prev set */
    for (int k = 0; k < n; k++) {
        argmax_t pv = prev, best = {-INFINITY, INT_MAX};
        for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
            float f = __half2float(x[i]);
            int after = f < pv.v || (f == pv.v && i > pv.i);
            if (after && (f > best.v || (f == best.v && i < best.i)))
                best = {f, i};
        }
        best = reduce_a(tmp).Reduce(best, argmax_op());
        __syncthreads(); /* every thread has read prev; tmp free again */
        if (threadIdx.x == 0) {
            prev = best;
            top_ids[(size_t)r * KERN_TOP_LOGPROBS_MAX + k] = best.i;
            top_lps[(size_t)r * KERN_TOP_LOGPROBS_MAX + k] = best.v - mx - ls;
        }
        __syncthreads(); /* the new prev visible */
    }
}

/* The draw's running sums are doubles, as kern_sample_ref's: a float sum
 * over a vocabulary of 50k drifts by more than a tail token's probability
 * (~1e-5 of the mass against ~2e-6 at u = 0.99 over logits of scale 6),
 * which moved the drawn token; in double the two samplers agree. */
typedef cub::BlockScan<double, SAMPLE_THREADS> scan_d;
typedef cub::BlockReduce<double, SAMPLE_THREADS> reduce_d;
union draw_tmp {
    scan_d::TempStorage scan;
    reduce_d::TempStorage reduce;
};

/* Index of the first of p(n) where the running sum reaches `target`
 * (strict: target < sum; else sum >= target), scanning in chunks; n - 1
 * when none does. */
__device__ int first_reaching(const float *p, int n, double target, int strict, draw_tmp &tmp,
                              int *found)
{
    double carry = 0.0;
    __syncthreads(); /* every thread has read the previous call's *found; tmp free */
    if (threadIdx.x == 0)
        *found = n;
    __syncthreads(); /* found initialised */
    for (int base = 0; base < n; base += SAMPLE_THREADS) {
        int i = base + threadIdx.x;
        double v = i < n ? (double)p[i] : 0.0, c, total;
        scan_d(tmp.scan).InclusiveSum(v, c, total);
        c += carry;
        int hit = i < n && (strict ? target < c : c >= target);
        /* the lowest hitting index wins */
        if (hit)
            atomicMin(found, i);
        __syncthreads(); /* all hits recorded; tmp free again */
        if (*found < n)
            return *found;
        carry += total;
    }
    return n - 1;
}

/* The sum of p(n) in double, the same in every thread. bc: shared. */
__device__ double prefix_mass(const float *p, int n, draw_tmp &tmp, double *bc)
{
    double m = 0.0;
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS)
        m += p[i];
    __syncthreads(); /* tmp free: the last scan's readers are done */
    m = reduce_d(tmp.reduce).Sum(m);
    if (threadIdx.x == 0)
        *bc = m;
    __syncthreads(); /* bc written */
    return *bc;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
pick(const __half *logits, int V, const kern_sample_row *rows, const row_stat *stat,
     const float *sprob, const int32_t *sidx, int32_t *tokens, float *logprobs)
{
    __shared__ draw_tmp tmp;
    __shared__ int found;
    __shared__ double bc;
    int r = blockIdx.x;
    const kern_sample_row rw = rows[r];
    const row_stat st = stat[r];
    if (rw.temperature <= 0.0f)
        return;
    if (st.n_pos == 0) { /* every token banned (row_stats wrote token 0), or every
                          * probability NaN (a NaN or +inf logit): token 0, as
                          * kern.h says, not the token this buffer held before */
        if (threadIdx.x == 0) {
            tokens[r] = 0;
            logprobs[r] = __half2float(logits[(size_t)r * V]) - st.max - logf(st.sum);
        }
        return;
    }
    const float *p = sprob + (size_t)r * V;
    /* the positive probabilities are the sorted row's first n_pos */
    int keep = st.n_pos;
    if (rw.top_k > 0 && rw.top_k < keep)
        keep = rw.top_k;
    if (rw.top_p < 1.0f) {
        double want = rw.top_p;
        if (keep < st.n_pos0) /* renormalised over what min_p and top_k kept */
            want *= prefix_mass(p, keep, tmp, &bc);
        keep = first_reaching(p, keep, want, 0, tmp, &found) + 1;
    }
    double mass = prefix_mass(p, keep, tmp, &bc);
    double target = rw.u * mass;
    int at = first_reaching(p, keep, target, 1, tmp, &found);
    if (threadIdx.x == 0) {
        int tok = sidx[(size_t)r * V + at];
        tokens[r] = tok;
        logprobs[r] = __half2float(logits[(size_t)r * V + tok]) - st.max - logf(st.sum);
    }
}

/* Work layout, each level of kern_sample_need adding to the one before:
 * stats | prob (the fp32 copy) | offsets (of one sort group), sorted prob,
 * idx in and out, cub's temp storage (for one group). */
struct sample_work {
    row_stat *stat;
    float *prob, *prob_sorted;
    int *offsets;
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

/* Carve work for `need`; with bytes non-NULL measure only (work may be
 * NULL). */
static sample_work carve_sample(void *work, int n_rows, int V, int need, size_t *bytes)
{
    sample_work w = {};
    char *base = (char *)work, *p = base;
    size_t n = (size_t)n_rows * V;
    w.stat = (row_stat *)p;
    p += align256(sizeof(row_stat) * n_rows);
    if (need >= KERN_SAMPLE_EDIT) {
        w.prob = (float *)p;
        p += align256(sizeof(float) * n);
    }
    if (need >= KERN_SAMPLE_DRAW) {
        w.offsets = (int *)p;
        p += align256(sizeof(int) * ((size_t)group_rows(n_rows, V) + 1));
        w.prob_sorted = (float *)p;
        p += align256(sizeof(float) * n);
        w.idx = (int32_t *)p;
        p += align256(sizeof(int32_t) * n);
        w.idx_sorted = (int32_t *)p;
        p += align256(sizeof(int32_t) * n);
        w.cub_tmp = p;
        w.cub_bytes = cub_bytes_for(n_rows, V);
        p += align256(w.cub_bytes);
    }
    if (bytes)
        *bytes = (size_t)(p - base);
    return w;
}

extern "C" size_t kern_sample_work(int n_rows, int V, int need)
{
    size_t bytes = 0;
    carve_sample(NULL, n_rows, V, need, &bytes);
    return bytes;
}

extern "C" int kern_sample_cuda(const void *logits, int n_rows, int V,
                                const kern_sample_row *rows, const kern_logit_edit *edits,
                                int32_t *tokens, float *logprobs, int32_t *top_ids,
                                float *top_lps, void *work, int need, void *stream)
{
    if (n_rows == 0)
        return 0;
    RETURN_IF(V <= 0, -EINVAL, "sampling over a vocabulary of %d tokens", V);
    RETURN_IF(need < KERN_SAMPLE_ARGMAX || need > KERN_SAMPLE_DRAW, -EINVAL,
              "internal: sampling's work level %d", need);
    cudaStream_t st = kstream(stream);
    sample_work w = carve_sample(work, n_rows, V, need, NULL);
    int g_max = group_rows(n_rows, V);
    const __half *x = (const __half *)logits;
    row_stats<<<n_rows, SAMPLE_THREADS, 0, st>>>(x, V, rows, edits, w.stat, tokens, logprobs,
                                                 w.prob, w.idx, w.offsets, g_max);
    KLAUNCHED();
    if (top_ids && top_lps) {
        top_logprobs<<<n_rows, SAMPLE_THREADS, 0, st>>>(x, V, rows, w.stat, top_ids, top_lps);
        KLAUNCHED();
    }
    if (need < KERN_SAMPLE_DRAW)
        return 0;
    for (int r0 = 0; r0 < n_rows; r0 += g_max) {
        int g = n_rows - r0 < g_max ? n_rows - r0 : g_max;
        size_t at = (size_t)r0 * V, bytes = w.cub_bytes;
        KCHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            w.cub_tmp, bytes, w.prob + at, w.prob_sorted + at, w.idx + at, w.idx_sorted + at,
            g * V, g, w.offsets, w.offsets + 1, 0, 32, st));
    }
    pick<<<n_rows, SAMPLE_THREADS, 0, st>>>(x, V, rows, w.stat, w.prob_sorted, w.idx_sorted,
                                            tokens, logprobs);
    KLAUNCHED();
    return 0;
}

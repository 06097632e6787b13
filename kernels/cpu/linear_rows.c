/* linear_rows.c: y(m, n) = x(m, k) w(n, k)^T for the few rows of a decode
 * pass, reading each row of w once.
 *
 * OpenBLAS's sgemm packs the whole of w into its panel layout on every
 * call; with a handful of rows of x that copy costs more than the product,
 * and a decode step is nothing but such calls (a Llama-3.2-1B decode step
 * of 8 rows spent two thirds of its time packing). Here a chunk of rows
 * of w at a time (eight with AVX-512, four without) meets every row of x,
 * which stays in cache: w crosses the memory bus once. Each output is the
 * same 16-lane sum over k whatever m, n or the thread count, so a
 * sequence's numbers do not depend on its batch.
 * kern_linear_rows_q4 and _h16 are the same over a 4-bit or 16-bit matrix,
 * expanded a chunk at a time in cache rather than written out whole and
 * read back (which up to 64 rows costs more than the product itself). */
#include "../kern.h"

#include <omp.h>
#include <string.h>

#define LANES 16

/* The fixed-order total of an output's 16 lane sums plus the tail k16 .. k
 * (k16: k rounded down to a multiple of LANES). */
static inline float total(const float acc[LANES], const float *w, const float *x, int k16,
                          int k)
{
    float s = 0.0f;
    for (int l = 0; l < LANES; l++)
        s += acc[l];
    for (int i = k16; i < k; i++)
        s += w[i] * x[i];
    return s;
}

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>

/* With AVX-512 every output is 16 lanes of fused multiply-adds over k in
 * order, summed by total(). Blocks of up to three rows of x meet the eight
 * rows of w of a chunk: 24 accumulators, the three x vectors and one w
 * vector at a time are 28 of the 32 zmm registers. k is walked in passes
 * of KC values so that the pass's rows of w (8 KC floats, 16 KB) stay in
 * the L1 cache while every block of x meets them; x comes from L2, three
 * loads per 24 products (blocks of 6 x 4, this file's before 2026-12-03:
 * six, and no faster than sgemm past 32 rows). Between passes a block's
 * accumulators wait in `part`. Stores and loads of the accumulators are
 * exact, and a row of x is the same sequence of operations in any block,
 * so an output does not depend on m, on its row's place among them, on n
 * or on the threads: the blocking is speed only.
 *
 * With AVX2 and FMA (16 ymm registers of 8 lanes) the same chains are
 * walked in two halves: over a pass the blocks run once for lanes 0-7 of
 * every 16 values of k and once for lanes 8-15 (the second half reads the
 * pass's rows of w, 4 KC floats, from L1), so a block holds one register
 * per output: three rows of x against chunks of four rows of w, 12
 * accumulators + three x vectors + one w vector, all 16. Every lane is the
 * same fused multiply-add chain as under AVX-512: the two paths give the
 * same bits (2026-12-05, an AVX2-only Zen 2: 1.6-2x the plain-C path). */
#if defined(__AVX512F__)
typedef __m512 vec;
#define VW 16   /* lanes of a vector */
#define CHUNK 8 /* rows of w per chunk */
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vfma _mm512_fmadd_ps
#else
typedef __m256 vec;
#define VW 8
#define CHUNK 4
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vfma _mm256_fmadd_ps
#endif
/* With AVX-512, u is loaded once per row of w and kept in a register:
 * left to itself GCC folds the load into each of the RB multiply-adds (RB
 * loads per vector of w, 27 loads per 24 multiply-adds), and the loads
 * bound the loop. Kept: 1.25-1.75x at 8 to 64 rows on the AMX Xeon VM
 * (2026-12-05, results/cpu-xeon-2026-12-05/rows-vkeep: the variants
 * interleaved in one binary), the same operations in the same order, so
 * the same bits. Not under AVX2: with 16 registers GCC then folds the
 * loads of x instead (from L2, not L1). */
#if defined(__AVX512F__)
#define VKEEP(u) __asm__("" : "+v"(u))
#else
#define VKEEP(u) (void)(u)
#endif
#define KC 512
#define ROWS_GROUP 32 /* rows of x per group: part is at most 16 KB on the stack */

/* lanes h .. h + VW - 1 of part[e][j] += x row e times w row j over i0 .. i1. */
#define DEFINE_BLOCK(RB)                                                                    \
    static void block##RB(float (*part)[CHUNK][LANES], const float *const *xr,              \
                          const float *const *wr, int i0, int i1, int h)                   \
    {                                                                                       \
        vec a[RB][CHUNK];                                                                   \
        for (int e = 0; e < RB; e++)                                                        \
            for (int j = 0; j < CHUNK; j++)                                                 \
                a[e][j] = vload(part[e][j] + h);                                            \
        for (int i = i0 + h; i < i1; i += LANES) {                                          \
            vec v[RB];                                                                      \
            for (int e = 0; e < RB; e++)                                                    \
                v[e] = vload(xr[e] + i);                                                    \
            for (int j = 0; j < CHUNK; j++) {                                               \
                vec u = vload(wr[j] + i);                                                   \
                VKEEP(u);                                                                   \
                for (int e = 0; e < RB; e++)                                                \
                    a[e][j] = vfma(u, v[e], a[e][j]);                                       \
            }                                                                               \
        }                                                                                   \
        for (int e = 0; e < RB; e++)                                                        \
            for (int j = 0; j < CHUNK; j++)                                                 \
                vstore(part[e][j] + h, a[e][j]);                                            \
    }
DEFINE_BLOCK(3)
DEFINE_BLOCK(2)
DEFINE_BLOCK(1)

/* Outputs j0 .. j0 + nw - 1 (nw <= CHUNK) of every row of x, from those rows of
 * w at w0 (row stride k). With fewer than CHUNK rows of w the block reads
 * the first one in place of the missing ones and drops their sums. */
static void rows_chunk(float *y, const float *x, const float *w0, int m, int n, int k, int j0,
                       int nw)
{
    int k16 = k / LANES * LANES;
    const float *wr[CHUNK];
    for (int j = 0; j < CHUNK; j++)
        wr[j] = w0 + (size_t)(j < nw ? j : 0) * k;
    float part[ROWS_GROUP][CHUNK][LANES];
    for (int g = 0; g < m; g += ROWS_GROUP) {
        int mg = m - g < ROWS_GROUP ? m - g : ROWS_GROUP;
        const float *xr[ROWS_GROUP];
        for (int e = 0; e < mg; e++)
            xr[e] = x + (size_t)(g + e) * k;
        memset(part, 0, sizeof(float) * CHUNK * LANES * (size_t)mg);
        for (int i0 = 0; i0 < k16; i0 += KC) {
            int i1 = k16 - i0 < KC ? k16 : i0 + KC;
            for (int h = 0; h < LANES; h += VW) {
                int r = 0;
                for (; r + 3 <= mg; r += 3)
                    block3(part + r, xr + r, wr, i0, i1, h);
                for (; r + 2 <= mg; r += 2)
                    block2(part + r, xr + r, wr, i0, i1, h);
                for (; r < mg; r++)
                    block1(part + r, xr + r, wr, i0, i1, h);
            }
        }
        for (int e = 0; e < mg; e++)
            for (int j = 0; j < nw; j++)
                y[(size_t)(g + e) * n + j0 + j] = total(part[e][j], wr[j], xr[e], k16, k);
    }
}

#else /* without AVX-512 or AVX2: the compiler's vectors, a multiply and an add */
#define CHUNK 4

/* 16 partial sums of w[i] * x[i] over i < k16 (a multiple of LANES). */
static inline void dot16(float acc[LANES], const float *w, const float *x, int k16)
{
    for (int i = 0; i < k16; i += LANES)
        for (int l = 0; l < LANES; l++)
            acc[l] += w[i + l] * x[i + l];
}

/* Outputs j0 .. j0 + nw - 1 (nw <= 4) of every row of x, from those rows of
 * w at w0 (row stride k): four rows of w meet two rows of x at a time. */
static void rows_chunk(float *y, const float *x, const float *w0, int m, int n, int k, int j0,
                       int nw)
{
    int k16 = k / LANES * LANES;
    if (nw < 4) { /* the last 1 to 3 rows of w */
        for (int j = 0; j < nw; j++)
            for (int r = 0; r < m; r++) {
                float acc[LANES] = {0};
                dot16(acc, w0 + (size_t)j * k, x + (size_t)r * k, k16);
                y[(size_t)r * n + j0 + j] = total(acc, w0 + (size_t)j * k, x + (size_t)r * k,
                                                  k16, k);
            }
        return;
    }
    int r = 0;
    for (; r + 2 <= m; r += 2) { /* two rows of x against the four of w */
        const float *xa = x + (size_t)r * k, *xb = xa + k;
        float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
        float b0[LANES] = {0}, b1[LANES] = {0}, b2[LANES] = {0}, b3[LANES] = {0};
        for (int i = 0; i < k16; i += LANES)
            for (int l = 0; l < LANES; l++) {
                float u = xa[i + l], v = xb[i + l];
                float w0v = w0[i + l], w1v = w0[(size_t)k + i + l];
                float w2v = w0[2 * (size_t)k + i + l], w3v = w0[3 * (size_t)k + i + l];
                a0[l] += w0v * u;
                a1[l] += w1v * u;
                a2[l] += w2v * u;
                a3[l] += w3v * u;
                b0[l] += w0v * v;
                b1[l] += w1v * v;
                b2[l] += w2v * v;
                b3[l] += w3v * v;
            }
        float *ya = y + (size_t)r * n + j0, *yb = ya + n;
        ya[0] = total(a0, w0, xa, k16, k);
        ya[1] = total(a1, w0 + (size_t)k, xa, k16, k);
        ya[2] = total(a2, w0 + 2 * (size_t)k, xa, k16, k);
        ya[3] = total(a3, w0 + 3 * (size_t)k, xa, k16, k);
        yb[0] = total(b0, w0, xb, k16, k);
        yb[1] = total(b1, w0 + (size_t)k, xb, k16, k);
        yb[2] = total(b2, w0 + 2 * (size_t)k, xb, k16, k);
        yb[3] = total(b3, w0 + 3 * (size_t)k, xb, k16, k);
    }
    for (; r < m; r++) {
        const float *xr = x + (size_t)r * k;
        float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
        for (int i = 0; i < k16; i += LANES)
            for (int l = 0; l < LANES; l++) {
                float xv = xr[i + l];
                a0[l] += w0[i + l] * xv;
                a1[l] += w0[(size_t)k + i + l] * xv;
                a2[l] += w0[2 * (size_t)k + i + l] * xv;
                a3[l] += w0[3 * (size_t)k + i + l] * xv;
            }
        float *yr = y + (size_t)r * n + j0;
        yr[0] = total(a0, w0, xr, k16, k);
        yr[1] = total(a1, w0 + (size_t)k, xr, k16, k);
        yr[2] = total(a2, w0 + 2 * (size_t)k, xr, k16, k);
        yr[3] = total(a3, w0 + 3 * (size_t)k, xr, k16, k);
    }
}
#endif

/* Products smaller than this run on the calling thread: a parallel region
 * costs a wake-up of every thread, more than the work (a tiny model's
 * GEMMs), and under contention a wait for a preempted one. */
#define PAR_MIN_MACS ((size_t)1 << 18)

void kern_linear_rows(float *y, const float *x, const float *w, int m, int n, int k)
{
    #pragma omp parallel for schedule(static) if ((size_t)m * n * k >= PAR_MIN_MACS)
    for (int j0 = 0; j0 < n; j0 += CHUNK)
        rows_chunk(y, x, w + (size_t)j0 * k, m, n, k, j0, n - j0 < CHUNK ? n - j0 : CHUNK);
}

/* Row j of a stored matrix w of k columns, expanded to fp32. */
typedef void (*row_expand)(float *dst, const void *w, size_t j, int k, kern_h16 fmt);

static void q4_row(float *dst, const void *w, size_t j, int k, kern_h16 fmt)
{
    (void)fmt;
    kern_q4_dequant_row(dst, (const uint8_t *)w + j * kern_q4_row_bytes(k), k);
}

static void h16_row(float *dst, const void *w, size_t j, int k, kern_h16 fmt)
{
    kern_widen_row(dst, (const uint16_t *)w + j * (size_t)k, (size_t)k, fmt);
}

/* The rows of a chunk are expanded into the thread's CHUNK k floats of ws
 * just before they meet x: they are in cache when read, and the fp32
 * matrix is never written out (4-bit rows are 9/64 of its bytes, 16-bit
 * ones half). */
static void linear_rows_expanded(float *y, const float *x, const void *w, row_expand ex,
                                 kern_h16 fmt, int m, int n, int k, float *ws)
{
    int nt = kern_cpu_threads();
    if (n < CHUNK * nt) { /* ws holds fewer than a chunk per thread: expand it all */
        for (int j = 0; j < n; j++)
            ex(ws + (size_t)j * k, w, (size_t)j, k, fmt);
        kern_linear_rows(y, x, ws, m, n, k);
        return;
    }
    #pragma omp parallel num_threads(nt) if ((size_t)m * n * k >= PAR_MIN_MACS)
    {
        float *buf = ws + (size_t)omp_get_thread_num() * CHUNK * (size_t)k;
        #pragma omp for schedule(static)
        for (int j0 = 0; j0 < n; j0 += CHUNK) {
            int nw = n - j0 < CHUNK ? n - j0 : CHUNK;
            for (int j = 0; j < nw; j++)
                ex(buf + (size_t)j * k, w, (size_t)(j0 + j), k, fmt);
            rows_chunk(y, x, buf, m, n, k, j0, nw);
        }
    }
}

void kern_linear_rows_q4(float *y, const float *x, const uint8_t *wq, int m, int n, int k,
                         float *ws)
{
    linear_rows_expanded(y, x, wq, q4_row, KERN_H16_F16, m, n, k, ws);
}

void kern_linear_rows_h16(float *y, const float *x, const uint16_t *w, kern_h16 fmt, int m,
                          int n, int k, float *ws)
{
    linear_rows_expanded(y, x, w, h16_row, fmt, m, n, k, ws);
}

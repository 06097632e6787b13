/* linear_bf16.c: y(m, n) = bf16(x)(m, k) . w(n, k)^T over bf16 weights with
 * fp32 accumulation: the CPU backend's linear over bf16 weights under
 * --cpu-matmul bf16 (backend_cpu_opts.bf16_matmul).
 *
 * The matrix product is oneDNN's matmul primitive (Debian's libdnnl), which
 * runs it on AMX tiles or AVX512-BF16 dot products where the CPU has them:
 * on the Sapphire Rapids VM of results/cpu-xeon-2026-12-03/bf16 about twice
 * OpenBLAS's sgemm rate at prefill sizes, 2.7-3.3x at 64 rows. x is rounded to bf16
 * (round to nearest even, kern_round_bf16_ref) in chunks of rows into the
 * caller's scratch; w is read as it lies on the tiers (Hugging Face's
 * (out, in) layout, oneDNN's "ba" weights), never widened. The numbers are
 * those of kern_linear_bf16_ref up to the order of the fp32 sums.
 *
 * Primitives are created once per shape (m, n, k) and kept in a small
 * table: creation costs a JIT dispatch, a call then only binds pointers.
 */
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cpu_common.h"
#include "err.h"
#include "fh_config.h"
#include "kern.h"

void kern_round_bf16_ref(uint16_t *dst, const float *src, size_t n)
{
    /* without branches, so that the loop vectorizes */
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], sizeof u);
        /* round to nearest, ties to even; overflow rounds to infinity */
        uint16_t r = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        uint16_t q = (uint16_t)((u >> 16) | 0x40); /* a NaN stays a (quiet) NaN */
        dst[i] = (u & 0x7fffffffu) > 0x7f800000u ? q : r;
    }
}

void kern_round_bf16_par(uint16_t *dst, const float *src, size_t n)
{
    PAR_CHUNKS(n, at, len, kern_round_bf16_ref(dst + at, src + at, len));
}

void kern_linear_bf16_ref(float *y, const float *x, const uint16_t *w, int m, int n, int k)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++) {
                uint16_t xb;
                kern_round_bf16_ref(&xb, &x[(size_t)i * k + p], 1);
                uint32_t ux = (uint32_t)xb << 16, uw = (uint32_t)w[(size_t)j * k + p] << 16;
                float fx, fw;
                memcpy(&fx, &ux, sizeof fx);
                memcpy(&fw, &uw, sizeof fw);
                s += (double)fx * fw; /* exact: 8-bit significands */
            }
            y[(size_t)i * n + j] = (float)s;
        }
}

void kern_q4_dequant_bf16(uint16_t *dst, const uint8_t *src, size_t rows, int n, float *stage)
{
    size_t rb = kern_q4_row_bytes(n);
    #pragma omp parallel
    {
        float *st = stage + (size_t)omp_get_thread_num() * n;
        #pragma omp for schedule(static)
        for (long r = 0; r < (long)rows; r++) {
            kern_q4_dequant_row(st, src + (size_t)r * rb, n);
            kern_round_bf16_ref(dst + (size_t)r * n, st, (size_t)n);
        }
    }
}

#if FH_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>

/* One primitive per shape; the table is small (a model has a handful of
 * (n, k), a run a handful of row counts) and replaced round robin. */
#define PRIMS 64
typedef struct prim {
    int m, n, k;
    dnnl_primitive_t p;
} prim;

static struct {
    pthread_once_t once;
    pthread_mutex_t mu;
    dnnl_engine_t eng;
    int ok;             /* 1: a bf16 matmul that is not the reference implementation */
    char why[160];      /* else the reason */
    char impl[64];      /* the implementation oneDNN picked (a 64x4096x4096 probe) */
    prim tab[PRIMS];
    int next;
} g = {.once = PTHREAD_ONCE_INIT, .mu = PTHREAD_MUTEX_INITIALIZER};

static dnnl_status_t create(int m, int n, int k, dnnl_primitive_t *out, const char **impl)
{
    dnnl_memory_desc_t a, b, c;
    dnnl_dims_t da = {m, k}, db = {k, n}, dc = {m, n};
    dnnl_status_t s;
    if ((s = dnnl_memory_desc_init_by_tag(&a, 2, da, dnnl_bf16, dnnl_ab)) ||
        (s = dnnl_memory_desc_init_by_tag(&b, 2, db, dnnl_bf16, dnnl_ba)) ||
        (s = dnnl_memory_desc_init_by_tag(&c, 2, dc, dnnl_f32, dnnl_ab)))
        return s;
    dnnl_matmul_desc_t md;
    if ((s = dnnl_matmul_desc_init(&md, &a, &b, NULL, &c)))
        return s;
    dnnl_primitive_desc_t pd;
    if ((s = dnnl_primitive_desc_create(&pd, &md, NULL, g.eng, NULL)))
        return s;
    if (impl)
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, impl);
    s = dnnl_primitive_create(out, pd);
    if (impl && !s) { /* the string belongs to pd: copy it first */
        strncpy(g.impl, *impl, sizeof g.impl - 1);
        *impl = g.impl;
    }
    dnnl_primitive_desc_destroy(pd);
    return s;
}

static void init(void)
{
    if (dnnl_engine_create(&g.eng, dnnl_cpu, 0)) {
        strcpy(g.why, "oneDNN has no CPU engine");
        return;
    }
    dnnl_primitive_t p;
    const char *impl = "";
    dnnl_status_t s = create(64, 4096, 4096, &p, &impl);
    if (s) {
        snprintf(g.why, sizeof g.why, "oneDNN has no bf16 matmul for this CPU (status %d)",
                 (int)s);
        return;
    }
    dnnl_primitive_destroy(p);
    /* "ref:any" is oneDNN's scalar reference: far slower than the fp32 path */
    if (strncmp(impl, "ref", 3) == 0) {
        snprintf(g.why, sizeof g.why, "oneDNN runs bf16 matmuls on this CPU only through "
                 "its reference code (%s); it needs AVX-512", impl);
        return;
    }
    g.ok = 1;
}

int kern_bf16_matmul_available(const char **why)
{
    pthread_once(&g.once, init);
    if (why)
        *why = g.ok ? g.impl : g.why;
    return g.ok;
}

/* The primitive of shape (m, n, k), created on first use. */
static int get_prim(int m, int n, int k, dnnl_primitive_t *out)
{
    pthread_mutex_lock(&g.mu);
    for (int i = 0; i < PRIMS; i++)
        if (g.tab[i].p && g.tab[i].m == m && g.tab[i].n == n && g.tab[i].k == k) {
            *out = g.tab[i].p;
            pthread_mutex_unlock(&g.mu);
            return 0;
        }
    prim *e = &g.tab[g.next];
    g.next = (g.next + 1) % PRIMS;
    if (e->p)
        dnnl_primitive_destroy(e->p);
    e->p = NULL;
    dnnl_status_t s = create(m, n, k, &e->p, NULL);
    if (!s) {
        e->m = m, e->n = n, e->k = k;
        *out = e->p;
    }
    pthread_mutex_unlock(&g.mu);
    RETURN_IF(s, -EIO, "oneDNN cannot create a bf16 matmul of %d x %d x %d (status %d)", m,
              n, k, (int)s);
    return 0;
}

/* One matmul: xb(m, k) bf16, w(n, k) bf16 -> y(m, n) fp32. */
static int run(float *y, const uint16_t *xb, const uint16_t *w, int m, int n, int k)
{
    dnnl_primitive_t p;
    FORWARD_IF(get_prim(m, n, k, &p));
    const_dnnl_primitive_desc_t pd;
    dnnl_primitive_get_primitive_desc(p, &pd);
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    dnnl_stream_t st = NULL;
    dnnl_status_t s;
    if (!(s = dnnl_memory_create(&ma, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0),
                                 g.eng, (void *)xb)) &&
        !(s = dnnl_memory_create(&mb, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0),
                                 g.eng, (void *)w)) &&
        !(s = dnnl_memory_create(&mc, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0),
                                 g.eng, y)) &&
        !(s = dnnl_stream_create(&st, g.eng, dnnl_stream_default_flags))) {
        dnnl_exec_arg_t args[3] = {
            {DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        if (!(s = dnnl_primitive_execute(p, st, 3, args)))
            s = dnnl_stream_wait(st);
    }
    dnnl_stream_destroy(st);
    dnnl_memory_destroy(ma);
    dnnl_memory_destroy(mb);
    dnnl_memory_destroy(mc);
    RETURN_IF(s, -EIO, "oneDNN bf16 matmul of %d x %d x %d failed (status %d)", m, n, k,
              (int)s);
    return 0;
}

int kern_linear_bf16(float *y, const float *x, const uint16_t *w, int m, int n, int k,
                     void *ws, size_t ws_bytes)
{
    const char *why;
    RETURN_IF(!kern_bf16_matmul_available(&why), -ENOTSUP, "bf16 matmul: %s; run without "
              "--cpu-matmul bf16", why);
    /* x in chunks of rows that fit the scratch: at least 2n rows, what
     * widening the matrix would take (backend.h linear_h16) */
    size_t rows = ws_bytes / ((size_t)k * sizeof(uint16_t));
    RETURN_IF(rows < 1, -EINVAL, "internal: %zu bytes of scratch for a bf16 row of %d",
              ws_bytes, k);
    uint16_t *xb = ws;
    for (int at = 0; at < m;) {
        int r = m - at < (long)rows ? m - at : (int)rows;
        kern_round_bf16_par(xb, x + (size_t)at * k, (size_t)r * k);
        FORWARD_IF(run(y + (size_t)at * n, xb, w, r, n, k));
        at += r;
    }
    return 0;
}

#else /* !FH_HAVE_ONEDNN */

int kern_bf16_matmul_available(const char **why)
{
    if (why)
        *why = "this build has no oneDNN (Debian: libdnnl-dev; meson -Donednn=enabled)";
    return 0;
}

int kern_linear_bf16(float *y, const float *x, const uint16_t *w, int m, int n, int k,
                     void *ws, size_t ws_bytes)
{
    (void)y, (void)x, (void)w, (void)m, (void)n, (void)k, (void)ws, (void)ws_bytes;
    const char *why;
    kern_bf16_matmul_available(&why);
    RETURN_IF(1, -ENOTSUP, "bf16 matmul: %s; run without --cpu-matmul bf16", why);
}
#endif

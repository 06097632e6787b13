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
 * Primitives are created once per shape (m, n, k) and weight layout and
 * kept in a small table: creation costs a JIT dispatch, a call then only
 * binds pointers.
 *
 * A matmul over plain weights copies them into its blocked layout on every
 * call, which costs as much as the products at decode row counts. Weights
 * that stay where they are for a whole run (the CPU backend's resident
 * tiers, backend.h pack_h16) are rearranged into that layout once, in
 * place, by kern_bf16_pack: the layout oneDNN asks for (format "any") for
 * a (64, n, k) product, which is the one it asks for at every row count
 * (checked on AVX512-BF16 for 1-4096 rows), used only where it takes
 * exactly the matrix's bytes and where oneDNN has a kernel over it (not its
 * reference code) at 1 to 2048 rows.
 */
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
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
    int m, n, k, packed;
    dnnl_primitive_t p;
} prim;

/* The packed layout of each (n, k) asked about. */
#define PACKS 32
typedef struct pack {
    int n, k, ok; /* ok: the layout below packs in place */
    dnnl_memory_desc_t md;
    int64_t *col; /* (k) each column's share of an element's offset in md, made
                   * on the first kern_bf16_packed_embed of the shape, kept */
} pack;

static struct {
    pthread_once_t once;
    pthread_mutex_t mu;
    dnnl_engine_t eng;
    int ok;             /* 1: a bf16 matmul that is not the reference implementation */
    char why[160];      /* else the reason */
    char impl[64];      /* the implementation oneDNN picked (a 64x4096x4096 probe) */
    prim tab[PRIMS];
    int next;
    pack packs[PACKS];
    int n_packs;
} g = {.once = PTHREAD_ONCE_INIT, .mu = PTHREAD_MUTEX_INITIALIZER};

/* The primitive descriptor of y(m, n) = x(m, k) . w^T with w's layout b
 * (NULL: format "any", oneDNN's choice). */
static dnnl_status_t describe(int m, int n, int k, const dnnl_memory_desc_t *b,
                              dnnl_primitive_desc_t *pd)
{
    dnnl_memory_desc_t a, bb, c;
    dnnl_dims_t da = {m, k}, db = {k, n}, dc = {m, n};
    dnnl_status_t s;
    if ((s = dnnl_memory_desc_init_by_tag(&a, 2, da, dnnl_bf16, dnnl_ab)) ||
        (s = dnnl_memory_desc_init_by_tag(&c, 2, dc, dnnl_f32, dnnl_ab)))
        return s;
    if (b)
        bb = *b;
    else if ((s = dnnl_memory_desc_init_by_tag(&bb, 2, db, dnnl_bf16, dnnl_format_tag_any)))
        return s;
    dnnl_matmul_desc_t md;
    if ((s = dnnl_matmul_desc_init(&md, &a, &bb, NULL, &c)))
        return s;
    return dnnl_primitive_desc_create(pd, &md, NULL, g.eng, NULL);
}

/* w(n, k) in Hugging Face's (out, in) layout: oneDNN's "ba" of (k, n). */
static dnnl_status_t plain_md(int n, int k, dnnl_memory_desc_t *out)
{
    dnnl_dims_t db = {k, n};
    return dnnl_memory_desc_init_by_tag(out, 2, db, dnnl_bf16, dnnl_ba);
}

/* The packed layout of (n, k), looked up or worked out (g.mu held).
 * @return the entry (its ok 0 where it does not pack in place), or NULL
 * when the table is full. */
static pack *pack_of(int n, int k)
{
    for (int i = 0; i < g.n_packs; i++)
        if (g.packs[i].n == n && g.packs[i].k == k)
            return &g.packs[i];
    if (g.n_packs == PACKS)
        return NULL;
    pack *e = &g.packs[g.n_packs++];
    *e = (pack){.n = n, .k = k};
    dnnl_memory_desc_t plain;
    dnnl_primitive_desc_t pd;
    if (plain_md(n, k, &plain) || describe(64, n, k, NULL, &pd))
        return e;
    e->md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const char *impl = "ref";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    e->ok = strncmp(impl, "ref", 3) != 0 &&
            dnnl_memory_desc_get_size(&e->md) == (size_t)n * k * sizeof(uint16_t) &&
            !dnnl_memory_desc_equal(&e->md, &plain);
    dnnl_primitive_desc_destroy(pd);
    /* and oneDNN runs products of other row counts over that layout as it
     * lies, not through its reference code (a packed matrix has no plain
     * copy to fall back on) */
    static const int rows[] = {1, 4, 16, 256, 2048};
    for (size_t i = 0; e->ok && i < sizeof rows / sizeof *rows; i++) {
        if (describe(rows[i], n, k, &e->md, &pd)) {
            e->ok = 0;
            break;
        }
        impl = "ref";
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
        e->ok = strncmp(impl, "ref", 3) != 0;
        dnnl_primitive_desc_destroy(pd);
    }
    return e;
}

/* pack_of(n, k) under g.mu, where oneDNN has a bf16 matmul: the entry if
 * it packs in place, else NULL. Entries are never moved or freed. */
static pack *packed_layout(int n, int k)
{
    if (!kern_bf16_matmul_available(NULL))
        return NULL;
    pthread_mutex_lock(&g.mu);
    pack *e = pack_of(n, k);
    pthread_mutex_unlock(&g.mu);
    return e && e->ok ? e : NULL;
}

static dnnl_status_t create(int m, int n, int k, int packed, dnnl_primitive_t *out,
                            const char **impl)
{
    dnnl_memory_desc_t b;
    dnnl_status_t s;
    if (packed) {
        const pack *e = pack_of(n, k);
        if (!e || !e->ok)
            return dnnl_invalid_arguments;
        b = e->md;
    } else if ((s = plain_md(n, k, &b))) {
        return s;
    }
    dnnl_primitive_desc_t pd;
    if ((s = describe(m, n, k, &b, &pd)))
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
    dnnl_status_t s = create(64, 4096, 4096, 0, &p, &impl);
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

/* The primitive of shape (m, n, k) over plain or packed weights, created
 * on first use. */
static int get_prim(int m, int n, int k, int packed, dnnl_primitive_t *out)
{
    pthread_mutex_lock(&g.mu);
    for (int i = 0; i < PRIMS; i++)
        if (g.tab[i].p && g.tab[i].m == m && g.tab[i].n == n && g.tab[i].k == k &&
            g.tab[i].packed == packed) {
            *out = g.tab[i].p;
            pthread_mutex_unlock(&g.mu);
            return 0;
        }
    prim *e = &g.tab[g.next];
    g.next = (g.next + 1) % PRIMS;
    if (e->p)
        dnnl_primitive_destroy(e->p);
    e->p = NULL;
    dnnl_status_t s = create(m, n, k, packed, &e->p, NULL);
    if (!s) {
        e->m = m, e->n = n, e->k = k, e->packed = packed;
        *out = e->p;
    }
    pthread_mutex_unlock(&g.mu);
    RETURN_IF(s, -EIO, "oneDNN cannot create a bf16 matmul of %d x %d x %d%s (status %d)", m,
              n, k, packed ? " over packed weights" : "", (int)s);
    return 0;
}

/* One matmul: xb(m, k) bf16, w(n, k) bf16 (packed: kern_bf16_pack's
 * layout) -> y(m, n) fp32. */
static int run(float *y, const uint16_t *xb, const uint16_t *w, int m, int n, int k, int packed)
{
    dnnl_primitive_t p;
    FORWARD_IF(get_prim(m, n, k, packed, &p));
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

static int linear(float *y, const float *x, const uint16_t *w, int m, int n, int k, void *ws,
                  size_t ws_bytes, int packed)
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
        FORWARD_IF(run(y + (size_t)at * n, xb, w, r, n, k, packed));
        at += r;
    }
    return 0;
}

int kern_linear_bf16(float *y, const float *x, const uint16_t *w, int m, int n, int k,
                     void *ws, size_t ws_bytes)
{
    return linear(y, x, w, m, n, k, ws, ws_bytes, 0);
}

int kern_linear_bf16_packed(float *y, const float *x, const uint16_t *w, int m, int n, int k,
                            void *ws, size_t ws_bytes)
{
    return linear(y, x, w, m, n, k, ws, ws_bytes, 1);
}

/* The offset, in elements, of w's (row, col) in a blocked layout md of
 * dims (k, n) ("ba": dim 0 the columns, dim 1 the rows): each dim's outer
 * index times its stride, plus its share of the inner blocks, which oneDNN
 * lists outermost first. The sum splits by dim: col's share plus row's. */
static int64_t blocked_share(const dnnl_memory_desc_t *md, int dim, int64_t idx)
{
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    int64_t in = 1;
    for (int i = 0; i < b->inner_nblks; i++)
        if (b->inner_idxs[i] == dim)
            in *= b->inner_blks[i];
    int64_t off = idx / in * b->strides[dim], rem = idx % in, mult = 1;
    for (int i = b->inner_nblks - 1; i >= 0; i--) {
        if (b->inner_idxs[i] == dim) {
            off += rem % b->inner_blks[i] * mult;
            rem /= b->inner_blks[i];
        }
        mult *= b->inner_blks[i];
    }
    return off;
}

int kern_bf16_packed_embed(float *out, const uint16_t *w, int v, int d, const float *pos_emb,
                           const int32_t *ids, const int32_t *pos, int n)
{
    pack *e = packed_layout(v, d);
    RETURN_IF(!e || e->md.format_kind != dnnl_blocked, -EINVAL, "internal: a %d x %d bf16 "
              "table that oneDNN does not pack", v, d);
    pthread_mutex_lock(&g.mu); /* the column offsets once per shape, not per pass */
    if (!e->col && (e->col = malloc(sizeof(int64_t) * (size_t)d)))
        for (int j = 0; j < d; j++)
            e->col[j] = e->md.offset0 + blocked_share(&e->md, 0, j);
    pthread_mutex_unlock(&g.mu);
    RETURN_IF(!e->col, -ENOMEM, "out of memory");
    const int64_t *col = e->col;
    #pragma omp parallel for schedule(static) if (n > 16)
    for (int i = 0; i < n; i++) {
        const uint16_t *r = w + blocked_share(&e->md, 1, ids[i]);
        float *o = out + (size_t)i * d;
        for (int j = 0; j < d; j++) {
            uint32_t u = (uint32_t)r[col[j]] << 16;
            memcpy(&o[j], &u, sizeof u);
        }
        if (!pos_emb)
            continue;
        const float *p = pos_emb + (size_t)(pos[i] + KERN_OPT_POS_OFFSET) * d;
        for (int j = 0; j < d; j++)
            o[j] += p[j];
    }
    return 0;
}

int kern_bf16_pack(uint16_t *w, int n, int k)
{
    const pack *e = packed_layout(n, k);
    if (!e || !w)
        return e != NULL;
    const dnnl_memory_desc_t to = e->md;
    size_t bytes = (size_t)n * k * sizeof(uint16_t);
    void *tmp = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    RETURN_IF(!tmp, -ENOMEM, "out of memory packing a %d x %d bf16 matrix", n, k);
    dnnl_memory_desc_t from;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t r = NULL;
    dnnl_memory_t ms = NULL, md = NULL;
    dnnl_stream_t st = NULL;
    dnnl_status_t s;
    if (!(s = plain_md(n, k, &from)) &&
        !(s = dnnl_reorder_primitive_desc_create(&pd, &from, g.eng, &to, g.eng, NULL)) &&
        !(s = dnnl_primitive_create(&r, pd)) &&
        !(s = dnnl_memory_create(&ms, &from, g.eng, w)) &&
        !(s = dnnl_memory_create(&md, &to, g.eng, tmp)) &&
        !(s = dnnl_stream_create(&st, g.eng, dnnl_stream_default_flags))) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, ms}, {DNNL_ARG_TO, md}};
        if (!(s = dnnl_primitive_execute(r, st, 2, args)))
            s = dnnl_stream_wait(st);
    }
    if (!s)
        memcpy(w, tmp, bytes);
    dnnl_stream_destroy(st);
    dnnl_memory_destroy(ms);
    dnnl_memory_destroy(md);
    dnnl_primitive_destroy(r);
    dnnl_primitive_desc_destroy(pd);
    free(tmp);
    RETURN_IF(s, -EIO, "oneDNN cannot pack a %d x %d bf16 matrix (status %d)", n, k, (int)s);
    return 1;
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

int kern_bf16_pack(uint16_t *w, int n, int k)
{
    (void)w, (void)n, (void)k;
    return 0;
}

int kern_linear_bf16_packed(float *y, const float *x, const uint16_t *w, int m, int n, int k,
                            void *ws, size_t ws_bytes)
{
    return kern_linear_bf16(y, x, w, m, n, k, ws, ws_bytes);
}

int kern_bf16_packed_embed(float *out, const uint16_t *w, int v, int d, const float *pos_emb,
                           const int32_t *ids, const int32_t *pos, int n)
{
    (void)out, (void)w, (void)pos_emb, (void)ids, (void)pos, (void)n;
    RETURN_IF(1, -EINVAL, "internal: a %d x %d bf16 table that oneDNN does not pack", v, d);
}
#endif

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
 * Packed and plain give the same bits on AVX512-BF16; with AMX they may
 * not (tests/test_bf16.c packed_and_plain_over_long_rows): oneDNN copies
 * plain weights into its layout in blocks of its own and sums in another
 * order at long rows.
 *
 * 4-bit matrices (kern_linear_q4_bf16) are never expanded whole: each
 * OpenMP thread takes tiles of 64-256 rows, expands one at a time into
 * that blocked layout in its own cache (with AVX-512, 16 rows x 64 values
 * at once, transposed in registers into the layout's 64-byte runs) and
 * multiplies it there with a primitive run on that thread alone, with a
 * scratchpad of its own. On the Zen 4 VM this took a decode block of 64
 * from 32 to 24 ms per opt-1.3b layer (bf16 packed: 18 ms).
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

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

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
    int own_sp;      /* 1: the caller passes its scratchpad (kern_linear_q4_bf16's
                      * threads run one primitive at once: oneDNN's own
                      * scratchpad is one per primitive, and they raced on it) */
    size_t sp_bytes; /* its size */
    dnnl_primitive_t p;
} prim;

/* kern_linear_q4_bf16's tiles: at most this many rows of at most this
 * many values (512 KiB of bf16: half of Zen 4's L2, a quarter of Sapphire
 * Rapids'), 64 rows at the least. */
#define Q4_TILE_ROWS 256
#define Q4_TILE_VALUES (256 * 1024)

/* The packed layout of each (n, k) asked about. */
#define PACKS 32
typedef struct pack {
    int n, k, ok; /* ok: the layout below packs in place */
    dnnl_memory_desc_t md;
    int64_t *col; /* (k) each column's share of an element's offset in md, made
                   * on the first packed_cols of the shape, kept */
    int lines;    /* 1: md keeps each pair of columns (2j, 2j + 1) of a row
                   * together, and that pair of 16 consecutive rows (from a
                   * multiple of 16) in one run of 16 pairs */
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
 * (NULL: format "any", oneDNN's choice); own_sp: a scratchpad the caller
 * passes. */
static dnnl_status_t describe(int m, int n, int k, int own_sp, const dnnl_memory_desc_t *b,
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
    dnnl_primitive_attr_t attr = NULL;
    if (own_sp && ((s = dnnl_primitive_attr_create(&attr)) ||
                   (s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user)))) {
        dnnl_primitive_attr_destroy(attr);
        return s;
    }
    s = dnnl_primitive_desc_create(pd, &md, attr, g.eng, NULL);
    dnnl_primitive_attr_destroy(attr);
    return s;
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
    if (plain_md(n, k, &plain) || describe(64, n, k, 0, NULL, &pd))
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
        if (describe(rows[i], n, k, 0, &e->md, &pd)) {
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

static dnnl_status_t create(int m, int n, int k, int own_sp, int packed, dnnl_primitive_t *out,
                            size_t *sp_bytes, const char **impl)
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
    if ((s = describe(m, n, k, own_sp, &b, &pd)))
        return s;
    if (sp_bytes)
        *sp_bytes = dnnl_memory_desc_get_size(
            dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0));
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
    dnnl_status_t s = create(64, 4096, 4096, 0, 0, &p, NULL, &impl);
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

int kern_bf16_matmul_amx(void)
{
    const char *impl;
    return kern_bf16_matmul_available(&impl) && strstr(impl, "amx") != NULL;
}

/* The primitive of shape (m, n, k) over plain or packed weights, with or
 * without a scratchpad of the caller's (own_sp; *sp_bytes its size),
 * created on first use. */
static int get_prim(int m, int n, int k, int own_sp, int packed, dnnl_primitive_t *out,
                    size_t *sp_bytes)
{
    pthread_mutex_lock(&g.mu);
    for (int i = 0; i < PRIMS; i++)
        if (g.tab[i].p && g.tab[i].m == m && g.tab[i].n == n && g.tab[i].k == k &&
            g.tab[i].own_sp == own_sp && g.tab[i].packed == packed) {
            *out = g.tab[i].p;
            if (sp_bytes)
                *sp_bytes = g.tab[i].sp_bytes;
            pthread_mutex_unlock(&g.mu);
            return 0;
        }
    prim *e = &g.tab[g.next];
    g.next = (g.next + 1) % PRIMS;
    if (e->p)
        dnnl_primitive_destroy(e->p);
    e->p = NULL;
    dnnl_status_t s = create(m, n, k, own_sp, packed, &e->p, &e->sp_bytes, NULL);
    if (!s) {
        e->m = m, e->n = n, e->k = k, e->own_sp = own_sp, e->packed = packed;
        *out = e->p;
        if (sp_bytes)
            *sp_bytes = e->sp_bytes;
    }
    pthread_mutex_unlock(&g.mu);
    RETURN_IF(s, -EIO, "oneDNN cannot create a bf16 matmul of %d x %d x %d%s (status %d)", m,
              n, k, packed ? " over packed weights" : "", (int)s);
    return 0;
}

/* One matmul of primitive p: xb(m, k) bf16, w(n, k) bf16 (packed:
 * kern_bf16_pack's layout) -> y(m, n) fp32; sp: its scratchpad where the
 * caller owns it. @return oneDNN's status. */
static dnnl_status_t execute(dnnl_primitive_t p, float *y, const uint16_t *xb, const uint16_t *w,
                             void *sp)
{
    const_dnnl_primitive_desc_t pd;
    dnnl_primitive_get_primitive_desc(p, &pd);
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, ms = NULL;
    dnnl_stream_t st = NULL;
    dnnl_status_t s;
    if (!(s = dnnl_memory_create(&ma, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0),
                                 g.eng, (void *)xb)) &&
        !(s = dnnl_memory_create(&mb, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0),
                                 g.eng, (void *)w)) &&
        !(s = dnnl_memory_create(&mc, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0),
                                 g.eng, y)) &&
        !(s = sp ? dnnl_memory_create(&ms, dnnl_primitive_desc_query_md(
                                                pd, dnnl_query_scratchpad_md, 0), g.eng, sp)
                 : dnnl_success) &&
        !(s = dnnl_stream_create(&st, g.eng, dnnl_stream_default_flags))) {
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb},
                                   {DNNL_ARG_DST, mc}, {DNNL_ARG_SCRATCHPAD, ms}};
        if (!(s = dnnl_primitive_execute(p, st, sp ? 4 : 3, args)))
            s = dnnl_stream_wait(st);
    }
    dnnl_stream_destroy(st);
    dnnl_memory_destroy(ma);
    dnnl_memory_destroy(mb);
    dnnl_memory_destroy(mc);
    dnnl_memory_destroy(ms);
    return s;
}

static int run(float *y, const uint16_t *xb, const uint16_t *w, int m, int n, int k, int packed)
{
    dnnl_primitive_t p;
    FORWARD_IF(get_prim(m, n, k, 0, packed, &p, NULL));
    dnnl_status_t s = execute(p, y, xb, w, NULL);
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

/* The packed layout of (n, k) with its column offsets (worked out once
 * per shape, kept), or NULL where (n, k) does not pack (*nomem: 1 when it
 * packs but the offsets found no memory). */
static const pack *packed_cols(int n, int k, int *nomem)
{
    pack *e = packed_layout(n, k);
    *nomem = 0;
    if (!e || e->md.format_kind != dnnl_blocked)
        return NULL;
    pthread_mutex_lock(&g.mu);
    if (!e->col && (e->col = malloc(sizeof(int64_t) * (size_t)k))) {
        for (int j = 0; j < k; j++)
            e->col[j] = e->md.offset0 + blocked_share(&e->md, 0, j);
        e->lines = k % 2 == 0 && n % 16 == 0;
        for (int j = 0; e->lines && j < k; j += 2)
            e->lines = e->col[j] % 2 == 0 && e->col[j + 1] == e->col[j] + 1;
        for (int c = 0; e->lines && c < n; c++)
            e->lines = blocked_share(&e->md, 1, c) ==
                       blocked_share(&e->md, 1, c / 16 * 16) + 2 * (c % 16);
    }
    pthread_mutex_unlock(&g.mu);
    *nomem = !e->col;
    return e->col ? e : NULL;
}

int kern_bf16_packed_embed(float *out, const uint16_t *w, int v, int d, const float *pos_emb,
                           const int32_t *ids, const int32_t *pos, int n)
{
    int nomem;
    const pack *e = packed_cols(v, d, &nomem);
    RETURN_IF(nomem, -ENOMEM, "out of memory");
    RETURN_IF(!e, -EINVAL, "internal: a %d x %d bf16 table that oneDNN does not pack", v, d);
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

#if defined(__AVX512F__) && defined(__AVX512BW__)
/* A group's 16 values in bf16 (words 0-15; min + q * sc for q = 0..15, the
 * reference's product then sum, then rounded as kern_round_bf16_ref), from
 * its block's fp16 scale and min. Every value of the group is one of them,
 * so rounding the table is rounding each value. Rounded with
 * vcvtneps2bf16 where the CPU has it, which rounds to nearest even as the
 * reference does and flushes denormals, but these values have none (a sum
 * of multiples of 2^-24, fp16's smallest step, is 0 or at least 2^-24) and
 * no NaN (finite min and scale: q4_group_lines' caller checks). */
static inline __m512i q4_bf16_table(const uint8_t *blk)
{
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    uint16_t hs, hm;
    memcpy(&hs, blk, 2);
    memcpy(&hm, blk + 2, 2);
    __m512 v = _mm512_add_ps(_mm512_set1_ps(kern_f16_to_f32(hm)),
                             _mm512_mul_ps(iota, _mm512_set1_ps(kern_f16_to_f32(hs))));
#if defined(__AVX512BF16__)
    return _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(v));
#else
    __m512i u = _mm512_castps_si512(v);
    u = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                           _mm512_and_si512(_mm512_srli_epi32(u, 16),
                                                            _mm512_set1_epi32(1))),
                          16);
    return _mm512_castsi256_si512(_mm512_cvtepi32_epi16(u));
#endif
}

/* 32 values of a group (codes: 16 bytes, two values each, low nibble
 * first) in bf16, in order: the group's table (q4_bf16_table) looked up
 * by code, 32 words in one permute. */
static inline __m512i q4_bf16x32(__m128i codes, __m512i tab)
{
    __m128i lo = _mm_and_si128(codes, _mm_set1_epi8(15));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(codes, 4), _mm_set1_epi8(15));
    __m256i idx = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
    return _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(idx), tab);
}

/* A whole group of 64 values of 16 rows (blk[c]: row c's block, its min
 * and scale finite) into a layout that keeps runs of 16 pairs
 * (pack.lines): to[p] = pair p of the group for rows 0-15, a 64-byte run. */
static void q4_group_lines(uint32_t *const *to, const uint8_t *const *blk)
{
    __m512i tab[16];
    for (int c = 0; c < 16; c++)
        tab[c] = q4_bf16_table(blk[c]);
    for (int h = 0; h < 2; h++) { /* values 32h .. 32h + 31: pairs 16h .. 16h + 15 */
        __m512i a[16], b[16];
        for (int c = 0; c < 16; c++)
            b[c] = q4_bf16x32(_mm_loadu_si128((const __m128i *)(blk[c] + 4 + 16 * h)), tab[c]);
        /* transpose 16 x 16 pairs: rows into runs */
        for (int j = 0; j < 8; j++) {
            a[2 * j] = _mm512_unpacklo_epi32(b[2 * j], b[2 * j + 1]);
            a[2 * j + 1] = _mm512_unpackhi_epi32(b[2 * j], b[2 * j + 1]);
        }
        for (int j = 0; j < 4; j++) { /* b[4j + q], lane L: rows 4j .. 4j + 3, pair 4L + q */
            b[4 * j] = _mm512_unpacklo_epi64(a[4 * j], a[4 * j + 2]);
            b[4 * j + 1] = _mm512_unpackhi_epi64(a[4 * j], a[4 * j + 2]);
            b[4 * j + 2] = _mm512_unpacklo_epi64(a[4 * j + 1], a[4 * j + 3]);
            b[4 * j + 3] = _mm512_unpackhi_epi64(a[4 * j + 1], a[4 * j + 3]);
        }
        for (int q = 0; q < 4; q++) {
            __m512i c0 = _mm512_shuffle_i32x4(b[q], b[4 + q], 0x88);
            __m512i c1 = _mm512_shuffle_i32x4(b[q], b[4 + q], 0xdd);
            __m512i c2 = _mm512_shuffle_i32x4(b[8 + q], b[12 + q], 0x88);
            __m512i c3 = _mm512_shuffle_i32x4(b[8 + q], b[12 + q], 0xdd);
            _mm512_storeu_si512(to[16 * h + q], _mm512_shuffle_i32x4(c0, c2, 0x88));
            _mm512_storeu_si512(to[16 * h + 4 + q], _mm512_shuffle_i32x4(c1, c3, 0x88));
            _mm512_storeu_si512(to[16 * h + 8 + q], _mm512_shuffle_i32x4(c0, c2, 0xdd));
            _mm512_storeu_si512(to[16 * h + 12 + q], _mm512_shuffle_i32x4(c1, c3, 0xdd));
        }
    }
}
#endif

/* Rows [r0, r0 + cnt) of the 4-bit matrix wq (k columns), dequantized and
 * rounded as kern_q4_dequant_bf16, into dst: in the packed layout e of a
 * (cnt, k) matrix, or plain where e is NULL. stage: k floats, then k bf16
 * (at least 16 * 64 of each). */
static void expand_q4_rows(uint16_t *dst, const pack *e, const uint8_t *wq, int r0, int cnt,
                           int k, float *stage)
{
    size_t rb = kern_q4_row_bytes(k);
    uint16_t *bf = (uint16_t *)(stage + k);
    if (e && e->lines) {
        /* a group of 64 columns of 16 rows at a time, written out as runs
         * of 16 pairs (whole cache lines where oneDNN's runs are 64-byte
         * aligned) rather than a pair here and there */
        uint32_t pairs[16][KERN_Q4_GROUP / 2];
        for (int c0 = 0; c0 < cnt; c0 += 16) {
            uint32_t *run = (uint32_t *)(dst + blocked_share(&e->md, 1, c0));
            for (int g0 = 0, b = 0; g0 < k; g0 += KERN_Q4_GROUP, b++) {
                int len = k - g0 < KERN_Q4_GROUP ? k - g0 : KERN_Q4_GROUP;
#if defined(__AVX512F__) && defined(__AVX512BW__)
                const uint8_t *blk[16];
                int finite = 1; /* no min or scale an infinity or a NaN (exponent all ones) */
                for (int c = 0; c < 16; c++) {
                    blk[c] = wq + (size_t)(r0 + c0 + c) * rb + (size_t)b * KERN_Q4_BLOCK;
                    uint16_t hs, hm;
                    memcpy(&hs, blk[c], 2);
                    memcpy(&hm, blk[c] + 2, 2);
                    finite &= (hs & 0x7c00) != 0x7c00 && (hm & 0x7c00) != 0x7c00;
                }
                if (len == KERN_Q4_GROUP && finite) {
                    uint32_t *to[KERN_Q4_GROUP / 2];
                    for (int j = 0; j < KERN_Q4_GROUP / 2; j++)
                        to[j] = run + e->col[g0 + 2 * j] / 2;
                    q4_group_lines(to, blk);
                    continue;
                }
#endif
                for (int c = 0; c < 16; c++) {
                    kern_q4_dequant_row(stage, wq + (size_t)(r0 + c0 + c) * rb +
                                                   (size_t)b * KERN_Q4_BLOCK, len);
                    kern_round_bf16_ref(bf, stage, (size_t)len);
                    memcpy(pairs[c], bf, sizeof(uint16_t) * len);
                }
                for (int j = 0; j < len / 2; j++) {
                    uint32_t *to = run + e->col[g0 + 2 * j] / 2;
                    for (int c = 0; c < 16; c++)
                        to[c] = pairs[c][j];
                }
            }
        }
        return;
    }
    for (int c = 0; c < cnt; c++) {
        kern_q4_dequant_row(stage, wq + (size_t)(r0 + c) * rb, k);
        if (!e) {
            kern_round_bf16_ref(dst + (size_t)c * k, stage, (size_t)k);
            continue;
        }
        kern_round_bf16_ref(bf, stage, (size_t)k);
        uint16_t *d = dst + blocked_share(&e->md, 1, c);
        const int64_t *col = e->col;
        for (int j = 0; j < k; j++)
            d[col[j]] = bf[j];
    }
}

/* kern_linear_q4_bf16's scratchpads (one per OpenMP thread, oneDNN's
 * user-managed scratchpad), kept per calling thread and grown to the
 * largest asked for, so that a pass allocates nothing once each shape has
 * run; freed when the calling thread ends. */
typedef struct sp_buf {
    char *p;
    size_t bytes;
} sp_buf;
static pthread_key_t sp_key;
static pthread_once_t sp_once = PTHREAD_ONCE_INIT;
static int sp_key_ok;

static void sp_free(void *v)
{
    sp_buf *b = v;
    free(b->p);
    free(b);
}

static void sp_make_key(void)
{
    sp_key_ok = pthread_key_create(&sp_key, sp_free) == 0;
}

/* The calling thread's scratchpad of at least `bytes`, NULL when out of
 * memory. */
static char *thread_scratchpad(size_t bytes)
{
    pthread_once(&sp_once, sp_make_key);
    if (!sp_key_ok)
        return NULL;
    sp_buf *b = pthread_getspecific(sp_key);
    if (!b) {
        if (!(b = calloc(1, sizeof *b)))
            return NULL;
        if (pthread_setspecific(sp_key, b)) {
            free(b);
            return NULL;
        }
    }
    if (b->bytes < bytes) {
        char *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        if (!p)
            return NULL;
        free(b->p);
        b->p = p;
        b->bytes = bytes;
    }
    return b->p;
}

int kern_linear_q4_bf16(float *y, const float *x, const uint8_t *wq, int m, int n, int k,
                        void *ws, size_t ws_bytes)
{
    const char *why;
    RETURN_IF(!kern_bf16_matmul_available(&why), -ENOTSUP, "bf16 matmul: %s; run without "
              "--cpu-matmul bf16", why);
    /* tiles of Q4_TILE_ROWS rows, fewer where k is long, at least 64 (oneDNN's
     * packed layouts hold 64 rows together) */
    int tile = Q4_TILE_VALUES / k / 64 * 64;
    tile = tile < 64 ? 64 : tile > Q4_TILE_ROWS ? Q4_TILE_ROWS : tile;
    tile = tile > n ? n : tile;
    int n_tiles = (n + tile - 1) / tile, last = n - (n_tiles - 1) * tile, threads =
        omp_get_max_threads();
    threads = threads > n_tiles ? n_tiles : threads;
    /* the scratch: per thread a tile, its stage and its product (oneDNN's
     * kernels write only a dense y: a strided one runs its reference code),
     * then x's rows in bf16; rows: how many of x's rows at a time */
    size_t w_bytes = ((size_t)tile * k * sizeof(uint16_t) + (size_t)k * 6 + 63) & ~(size_t)63;
    size_t row_bytes = (size_t)tile * sizeof(float); /* per row of x, per thread */
    size_t rows = 0;
    for (; threads >= 1; threads--) { /* a small scratch: fewer threads */
        size_t fixed = (w_bytes + 64) * threads; /* + the rounding of per_thread below */
        if (ws_bytes > fixed && (rows = (ws_bytes - fixed) / (row_bytes * threads +
                                                            (size_t)k * sizeof(uint16_t))))
            break;
    }
    RETURN_IF(!rows, -EINVAL, "internal: %zu bytes of scratch for a 4-bit %d x %d matrix in "
              "tiles of %d rows", ws_bytes, n, k, tile);
    rows = rows > (size_t)m ? (size_t)m : rows;
    size_t per_thread = (w_bytes + rows * row_bytes + 63) & ~(size_t)63;
    uint16_t *xb = (uint16_t *)((char *)ws + per_thread * threads);
    /* each tile's layout: packed where its shape packs, else plain */
    int nomem;
    const pack *lay[2];
    for (int i = 0; i < 2; i++) {
        int cnt = i ? last : tile;
        lay[i] = cnt % 64 == 0 ? packed_cols(cnt, k, &nomem) : NULL;
        RETURN_IF(lay[i] == NULL && cnt % 64 == 0 && nomem, -ENOMEM, "out of memory");
    }
    for (int at = 0; at < m;) {
        int r = m - at < (long)rows ? m - at : (int)rows;
        kern_round_bf16_par(xb, x + (size_t)at * k, (size_t)r * k);
        dnnl_primitive_t p[2];
        size_t sp_bytes[2], sp_max = 64;
        for (int i = 0; i < 2; i++) {
            FORWARD_IF(get_prim(r, i ? last : tile, k, 1, lay[i] != NULL, &p[i], &sp_bytes[i]));
            sp_max = sp_bytes[i] > sp_max ? sp_bytes[i] : sp_max;
        }
        sp_max = (sp_max + 63) & ~(size_t)63;
        char *sp = thread_scratchpad(sp_max * threads); /* a scratchpad per thread */
        RETURN_IF(!sp, -ENOMEM, "out of memory for %zu bytes of oneDNN scratchpads",
                  sp_max * threads);
        dnnl_status_t bad = dnnl_success;
        /* each thread expands its tiles in its cache, then multiplies them
         * (oneDNN runs a primitive on the calling thread alone inside a
         * parallel region) */
        #pragma omp parallel num_threads(threads)
        {
            int me = omp_get_thread_num();
            char *mine = (char *)ws + per_thread * (size_t)me;
            uint16_t *wt = (uint16_t *)mine;
            float *stage = (float *)(mine + (size_t)tile * k * sizeof(uint16_t));
            float *yt = (float *)(mine + w_bytes);
            #pragma omp for schedule(static)
            for (int t = 0; t < n_tiles; t++) {
                int is_last = t == n_tiles - 1, cnt = is_last ? last : tile;
                expand_q4_rows(wt, lay[is_last], wq, t * tile, cnt, k, stage);
                dnnl_status_t s = execute(p[is_last], yt, xb, wt,
                                          sp_bytes[is_last] ? sp + sp_max * me : NULL);
                if (s) {
                    #pragma omp atomic write
                    bad = s;
                }
                for (int i = 0; i < r; i++)
                    memcpy(y + (size_t)(at + i) * n + (size_t)t * tile, yt + (size_t)i * cnt,
                           sizeof(float) * cnt);
            }
        }
        RETURN_IF(bad, -EIO, "oneDNN bf16 matmul of %d x %d x %d failed (status %d)", r, n, k,
                  (int)bad);
        at += r;
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

int kern_bf16_matmul_amx(void)
{
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

int kern_linear_q4_bf16(float *y, const float *x, const uint8_t *wq, int m, int n, int k,
                        void *ws, size_t ws_bytes)
{
    (void)wq;
    return kern_linear_bf16(y, x, NULL, m, n, k, ws, ws_bytes);
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

/* model.c: OPT weights: Hugging Face loading (with shape checks), random
 * dummy weights, and writing a random model directory. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "kern.h"
#include "off.h"
#include "safetensors.h"
#include "tok.h"

/* ------------------------------------------------------------ layer blobs */

size_t model_tensor_rows(const model_config *c, int t, int *cols)
{
    size_t d = (size_t)c->hidden, f = (size_t)c->ffn;
    switch (t) {
    case MT_WQKV: *cols = c->hidden; return 3 * d;
    case MT_WO: *cols = c->hidden; return d;
    case MT_W1: *cols = c->hidden; return f;
    case MT_W2: *cols = c->ffn; return d;
    default: *cols = 0; return 0;
    }
}

void model_sched_shape(const model_config *c, sched_model *out)
{
    memset(out, 0, sizeof *out);
    size_t d = (size_t)c->hidden, f = (size_t)c->ffn;
    out->n_layer = c->n_layer;
    out->n_head = c->n_head;
    out->n_kv_head = c->n_head;
    out->head_dim = c->head_dim;
    out->hidden = c->hidden;
    out->vocab = c->vocab_size;
    out->ffn = c->ffn;
    out->globals = (size_t)c->vocab_size * d * (c->tie_lm_head ? 1 : 2) +
                   (size_t)(c->max_pos + 2) * d + 2 * d;
    /* the vectors; the matrices' shapes are model_tensor_rows' */
    const size_t cnt[MT_COUNT] = {
        [MT_LN1_W] = d, [MT_LN1_B] = d, [MT_BQKV] = 3 * d, [MT_BO] = d,
        [MT_LN2_W] = d, [MT_LN2_B] = d, [MT_B1] = f, [MT_B2] = d,
    };
    out->n_tensors = MT_COUNT;
    for (int t = 0; t < MT_COUNT; t++) {
        int cols;
        size_t rows = model_tensor_rows(c, t, &cols);
        out->tensors[t] = rows ? (sched_tensor){rows, cols} : (sched_tensor){cnt[t], 0};
    }
}

void model_sched_bind(model *m, sched_model *out)
{
    model_sched_shape(&m->cfg, out);
    out->ctx = m;
    out->embed = model_embed;
    out->layer = model_layer_forward;
    out->head = model_head;
}

size_t model_layer_layout_q(const model_config *c, size_t es, int wq, size_t off[MT_COUNT],
                            size_t bytes[MT_COUNT])
{
    sched_model sm;
    model_sched_shape(c, &sm);
    return sched_blob_layout(&sm, es, wq, off, bytes);
}

size_t model_layer_layout(const model_config *c, size_t es, size_t off[MT_COUNT],
                          size_t n[MT_COUNT])
{
    size_t bytes[MT_COUNT], at = model_layer_layout_q(c, es, 0, off, bytes);
    for (int t = 0; n && t < MT_COUNT; t++)
        n[t] = bytes[t] / es;
    return at;
}

void model_layer_quantize(const model_config *c, size_t es, void *dst, const void *src)
{
    sched_model sm;
    model_sched_shape(c, &sm);
    sched_blob_quantize(&sm, es, dst, src);
}

void **model_layer_field(model_layer *L, int t) { return &L->t[t]; }

void model_layer_bind(model_layer *L, const model_config *c, size_t es, void *base)
{
    size_t off[MT_COUNT];
    model_layer_layout(c, es, off, NULL);
    for (int t = 0; t < MT_COUNT; t++)
        *model_layer_field(L, t) = (char *)base + off[t];
}

/* dst + offset (elements) <- n fp32 values: through the backend, or, for a
 * layer tensor of a model loaded with a sink, into the host blob in the
 * backend's storage type. */
static int put_f32(model *m, void *dst, size_t offset, const float *src, size_t n)
{
    const backend_ops *o = m->be->ops;
    char *p = (char *)dst + offset * o->elem_size;
    char *b = m->blob;
    if (!(m->sink && p >= b && p < b + m->blob_bytes))
        return o->upload(m->be->ctx, p, src, n);
    model_convert_elems(p, o->elem_size, src, sizeof(float), n);
    return 0;
}

void model_convert_elems(void *dst, size_t dst_es, const void *src, size_t src_es, size_t n)
{
    if (dst_es == src_es) {
        memcpy(dst, src, n * dst_es);
    } else if (dst_es == 2) {
        const float *f = src;
        uint16_t *h = dst;
        for (size_t i = 0; i < n; i++)
            h[i] = kern_f32_to_f16(f[i]);
    } else {
        const uint16_t *h = src;
        float *f = dst;
        for (size_t i = 0; i < n; i++)
            f[i] = kern_f16_to_f32(h[i]);
    }
}

/* ------------------------------------------------------------ allocation */

int model_alloc_weights(model *m)
{
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    size_t d = (size_t)c->hidden;
    m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
    RETURN_IF(!m->layers, -ENOMEM, "out of memory");
    FORWARD_IF(o->alloc(ctx, (size_t)c->vocab_size * d, &m->tok_emb));
    FORWARD_IF(o->alloc(ctx, (size_t)(c->max_pos + 2) * d, &m->pos_emb));
    FORWARD_IF(o->alloc(ctx, d, &m->lnf_w));
    FORWARD_IF(o->alloc(ctx, d, &m->lnf_b));
    if (c->tie_lm_head)
        m->lm_head = m->tok_emb;
    else
        FORWARD_IF(o->alloc(ctx, (size_t)c->vocab_size * d, &m->lm_head));
    if (m->sink) {
        /* one host blob, reused by every layer; handed to the sink */
        m->blob_bytes = (model_layer_layout(c, o->elem_size, NULL, NULL) + 4095) & ~(size_t)4095;
        m->blob = aligned_alloc(4096, m->blob_bytes);
        RETURN_IF(!m->blob, -ENOMEM, "out of host memory for a layer (%.1f MiB)",
                  m->blob_bytes / 1048576.0);
        memset(m->blob, 0, m->blob_bytes);
        for (int l = 0; l < c->n_layer; l++)
            model_layer_bind(&m->layers[l], c, o->elem_size, m->blob);
        return 0;
    }
    sched_model sm;
    model_sched_shape(c, &sm);
    for (int l = 0; l < c->n_layer; l++)
        for (int t = 0; t < sm.n_tensors; t++)
            FORWARD_IF(o->alloc(ctx, sm.tensors[t].rows * (size_t)(sm.tensors[t].cols ? sm.tensors[t].cols : 1),
                                &m->layers[l].t[t]));
    return 0;
}

void model_destroy(model *m)
{
    if (!m)
        return;
    const backend_ops *o = m->be ? m->be->ops : NULL;
    if (o) {
        void *ctx = m->be->ctx;
        if (m->lm_head != m->tok_emb)
            o->free(ctx, m->lm_head);
        o->free(ctx, m->tok_emb);
        o->free(ctx, m->pos_emb);
        o->free(ctx, m->lnf_w);
        o->free(ctx, m->lnf_b);
        for (int l = 0; !m->sink && m->layers && l < m->cfg.n_layer; l++) {
            for (int t = 0; t < MT_COUNT; t++)
                o->free(ctx, m->layers[l].t[t]);
        }
    }
    free(m->layers);
    free(m->blob);
    if (m->store) {
        off_store_close(m->store);
        free(m->store);
    }
    free(m);
}

/* ------------------------------------------------------------ HF loading */

typedef struct loader {
    model *m;
    st_set *st;
    const char *prefix; /* "model.decoder." or "decoder." */
    float *buf;         /* host staging, largest tensor */
} loader;

/* Load tensor `name` (under the prefix unless absolute) of the expected
 * shape into dst + offset (elements). */
static int load_tensor(loader *ld, const char *name, int absolute, int64_t r,
                       int64_t cdim, void *dst, size_t offset)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", absolute ? "" : ld->prefix, name);
    const st_tensor *t = st_find(ld->st, full);
    RETURN_IF(!t, -EINVAL, "tensor %s missing from the checkpoint; is this an "
              "OPT model matching config.json?", full);
    int64_t want[2] = {r, cdim};
    int nd = cdim > 0 ? 2 : 1;
    int ok = t->n_dim == nd;
    for (int i = 0; ok && i < nd; i++)
        ok = t->shape[i] == want[i];
    if (!ok) {
        char got[96] = "", exp[64];
        for (int i = 0; i < t->n_dim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld",
                     i ? ", " : "", (long long)t->shape[i]);
        if (nd == 2)
            snprintf(exp, sizeof exp, "%lld, %lld", (long long)r, (long long)cdim);
        else
            snprintf(exp, sizeof exp, "%lld", (long long)r);
        RETURN_IF(1, -EINVAL, "%s: tensor %s has shape [%s] but config.json implies "
                  "[%s]; the checkpoint and config.json disagree", t->file, full,
                  got, exp);
    }
    size_t n = (size_t)r * (size_t)(cdim > 0 ? cdim : 1);
    st_to_f32(t, ld->buf, n);
    return put_f32(ld->m, dst, offset, ld->buf, n);
}

int model_load_hf(const char *dir, backend *be, model **out)
{
    return model_load_hf_sink(dir, be, NULL, NULL, out);
}

int model_load_hf_sink(const char *dir, backend *be, model_layer_sink sink, void *ud,
                       model **out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    model_config cfg;
    struct stat st;
    RETURN_IF(stat(dir, &st) != 0 || !S_ISDIR(st.st_mode), -ENOENT,
              "%s: model directory not found; pass a Hugging Face OPT directory "
              "or create one with flexh2o make-model", dir);
    FORWARD_IF(model_config_load(path, &cfg));
    st_set *sts = NULL;
    FORWARD_IF(st_open_dir(dir, &sts));
    model *m = calloc(1, sizeof *m);
    loader ld = {m, sts, "model.decoder.", NULL};
    int rc = m ? 0 : -ENOMEM;
    if (rc == 0) {
        m->cfg = cfg;
        m->be = be;
        m->sink = sink;
        m->sink_ud = ud;
        if (!st_find(sts, "model.decoder.embed_tokens.weight") &&
            st_find(sts, "decoder.embed_tokens.weight"))
            ld.prefix = "decoder.";
        size_t d = (size_t)cfg.hidden;
        size_t big = (size_t)cfg.vocab_size * d;
        if ((size_t)cfg.ffn * d > big)
            big = (size_t)cfg.ffn * d;
        ld.buf = malloc(sizeof(float) * big);
        rc = ld.buf ? model_alloc_weights(m) : -ENOMEM;
    }
    int64_t d = cfg.hidden, f = cfg.ffn;
    if (rc == 0)
        rc = load_tensor(&ld, "embed_tokens.weight", 0, cfg.vocab_size, d, m->tok_emb, 0);
    if (rc == 0)
        rc = load_tensor(&ld, "embed_positions.weight", 0, cfg.max_pos + 2, d, m->pos_emb, 0);
    if (rc == 0)
        rc = load_tensor(&ld, "final_layer_norm.weight", 0, d, 0, m->lnf_w, 0);
    if (rc == 0)
        rc = load_tensor(&ld, "final_layer_norm.bias", 0, d, 0, m->lnf_b, 0);
    if (rc == 0 && !cfg.tie_lm_head)
        rc = load_tensor(&ld, "lm_head.weight", 1, cfg.vocab_size, d, m->lm_head, 0);
    for (int l = 0; rc == 0 && l < cfg.n_layer; l++) {
        model_layer *L = &m->layers[l];
        char n[128];
#define LT(suffix, r, c, dst, off)                                           \
        do {                                                                 \
            snprintf(n, sizeof n, "layers.%d.%s", l, suffix);                \
            if (rc == 0)                                                     \
                rc = load_tensor(&ld, n, 0, r, c, dst, off);                 \
        } while (0)
        LT("self_attn_layer_norm.weight", d, 0, L->t[MT_LN1_W], 0);
        LT("self_attn_layer_norm.bias", d, 0, L->t[MT_LN1_B], 0);
        LT("self_attn.q_proj.weight", d, d, L->t[MT_WQKV], 0);
        LT("self_attn.k_proj.weight", d, d, L->t[MT_WQKV], (size_t)(d * d));
        LT("self_attn.v_proj.weight", d, d, L->t[MT_WQKV], (size_t)(2 * d * d));
        LT("self_attn.q_proj.bias", d, 0, L->t[MT_BQKV], 0);
        LT("self_attn.k_proj.bias", d, 0, L->t[MT_BQKV], (size_t)d);
        LT("self_attn.v_proj.bias", d, 0, L->t[MT_BQKV], (size_t)(2 * d));
        LT("self_attn.out_proj.weight", d, d, L->t[MT_WO], 0);
        LT("self_attn.out_proj.bias", d, 0, L->t[MT_BO], 0);
        LT("final_layer_norm.weight", d, 0, L->t[MT_LN2_W], 0);
        LT("final_layer_norm.bias", d, 0, L->t[MT_LN2_B], 0);
        LT("fc1.weight", f, d, L->t[MT_W1], 0);
        LT("fc1.bias", f, 0, L->t[MT_B1], 0);
        LT("fc2.weight", d, f, L->t[MT_W2], 0);
        LT("fc2.bias", d, 0, L->t[MT_B2], 0);
#undef LT
        if (rc == 0 && sink)
            rc = sink(ud, l, m->blob, 0, -1, 0);
    }
    free(ld.buf);
    st_close(sts);
    if (rc < 0) {
        model_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* ------------------------------------------------------------ random */

/* Uniform(-a, a) with a = std * sqrt(3) (so the standard deviation is std),
 * in parallel blocks each seeded by (seed, block): the values depend only on
 * the seed, not on the thread count, and an OPT-30B fills in seconds. */
static void fill_random(float *x, size_t n, float std, uint64_t seed)
{
    const size_t blk = 1 << 16;
    float a = std * 1.7320508f;
    #pragma omp parallel for schedule(static)
    for (size_t b = 0; b < (n + blk - 1) / blk; b++) {
        uint64_t s = seed ^ (b * 0xd1b54a32d192ed03ull);
        size_t end = (b + 1) * blk < n ? (b + 1) * blk : n;
        for (size_t i = b * blk; i < end; i++)
            x[i] = a * (float)((int64_t)(kern_splitmix64(&s) >> 11) * 0x1.0p-52 - 1.0);
    }
}

static void fill_const(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

/* The tensors of a model as (name, shape, init) triples, in the order of a
 * Hugging Face OPTForCausalLM state dict. init: 'n' normal, '1' ones,
 * '0' zeros. dst: where model_create_dummy puts it (may be NULL). */
typedef struct wspec {
    char name[96];
    int64_t r, c;
    char init;
    void *dst;
    size_t off;
} wspec;

static int weight_specs(const model_config *cfg, model *m, wspec **out)
{
    int n = 4 + 16 * cfg->n_layer;
    wspec *w = calloc((size_t)n, sizeof *w);
    RETURN_IF(!w, -ENOMEM, "out of memory");
    int64_t d = cfg->hidden, f = cfg->ffn;
    int i = 0;
#define W(nm, rr, cc, in, ds, of)                                            \
    do {                                                                     \
        snprintf(w[i].name, sizeof w[i].name, "model.decoder.%s", nm);       \
        w[i].r = rr; w[i].c = cc; w[i].init = in;                            \
        w[i].dst = m ? ds : NULL; w[i].off = of; i++;                        \
    } while (0)
    W("embed_tokens.weight", cfg->vocab_size, d, 'n', m->tok_emb, 0);
    W("embed_positions.weight", cfg->max_pos + 2, d, 'n', m->pos_emb, 0);
    W("final_layer_norm.weight", d, 0, '1', m->lnf_w, 0);
    W("final_layer_norm.bias", d, 0, '0', m->lnf_b, 0);
    for (int l = 0; l < cfg->n_layer; l++) {
        model_layer *L = m ? &m->layers[l] : NULL;
        char nm[64];
#define LW(sfx, rr, cc, in, fld, of)                                         \
        do {                                                                 \
            snprintf(nm, sizeof nm, "layers.%d.%s", l, sfx);                 \
            W(nm, rr, cc, in, L->fld, of);                                   \
        } while (0)
        LW("self_attn.k_proj.weight", d, d, 'n', t[MT_WQKV], (size_t)(d * d));
        LW("self_attn.k_proj.bias", d, 0, '0', t[MT_BQKV], (size_t)d);
        LW("self_attn.v_proj.weight", d, d, 'n', t[MT_WQKV], (size_t)(2 * d * d));
        LW("self_attn.v_proj.bias", d, 0, '0', t[MT_BQKV], (size_t)(2 * d));
        LW("self_attn.q_proj.weight", d, d, 'n', t[MT_WQKV], 0);
        LW("self_attn.q_proj.bias", d, 0, '0', t[MT_BQKV], 0);
        LW("self_attn.out_proj.weight", d, d, 'n', t[MT_WO], 0);
        LW("self_attn.out_proj.bias", d, 0, '0', t[MT_BO], 0);
        LW("self_attn_layer_norm.weight", d, 0, '1', t[MT_LN1_W], 0);
        LW("self_attn_layer_norm.bias", d, 0, '0', t[MT_LN1_B], 0);
        LW("fc1.weight", f, d, 'n', t[MT_W1], 0);
        LW("fc1.bias", f, 0, '0', t[MT_B1], 0);
        LW("fc2.weight", d, f, 'n', t[MT_W2], 0);
        LW("fc2.bias", d, 0, '0', t[MT_B2], 0);
        LW("final_layer_norm.weight", d, 0, '1', t[MT_LN2_W], 0);
        LW("final_layer_norm.bias", d, 0, '0', t[MT_LN2_B], 0);
#undef LW
    }
#undef W
    *out = w;
    return i;
}

static void fill_spec(const wspec *w, float *x, uint64_t *s)
{
    size_t n = (size_t)w->r * (size_t)(w->c > 0 ? w->c : 1);
    if (w->init == 'n')
        fill_random(x, n, 0.02f, kern_splitmix64(s));
    else
        fill_const(x, n, w->init == '1' ? 1.0f : 0.0f);
}

int model_create_dummy(const model_config *cfg, backend *be, uint64_t seed,
                       model **out)
{
    return model_create_dummy_sink(cfg, be, seed, NULL, NULL, out);
}

int model_create_dummy_sink(const model_config *cfg, backend *be, uint64_t seed,
                            model_layer_sink sink, void *ud, model **out)
{
    model *m = calloc(1, sizeof *m);
    RETURN_IF(!m, -ENOMEM, "out of memory");
    m->cfg = *cfg;
    m->cfg.tie_lm_head = 1;
    m->be = be;
    m->sink = sink;
    m->sink_ud = ud;
    int rc = model_alloc_weights(m);
    wspec *w = NULL;
    int n = rc < 0 ? rc : weight_specs(cfg, m, &w);
    rc = n < 0 ? n : 0;
    /* Upload in chunks so a big model needs no second full copy. */
    size_t chunk = (size_t)1 << 22;
    float *buf = rc == 0 ? malloc(sizeof(float) * chunk) : NULL;
    if (rc == 0 && !buf)
        rc = -ENOMEM;
    uint64_t s = seed;
    for (int i = 0; rc == 0 && i < n; i++) {
        size_t total = (size_t)w[i].r * (size_t)(w[i].c > 0 ? w[i].c : 1);
        for (size_t at = 0; rc == 0 && at < total; at += chunk) {
            wspec part = w[i];
            size_t len = total - at < chunk ? total - at : chunk;
            part.r = (int64_t)len;
            part.c = 0;
            fill_spec(&part, buf, &s);
            rc = put_f32(m, w[i].dst, w[i].off + at, buf, len);
        }
        /* the 16 tensors of each layer follow the 4 global ones */
        if (rc == 0 && sink && i >= 4 && (i - 4) % 16 == 15)
            rc = sink(ud, (i - 4) / 16, m->blob, 0, -1, 0);
    }
    free(buf);
    free(w);
    if (rc < 0) {
        model_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

static int write_text(const char *dir, const char *name, const char *text, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    RETURN_IF(!f, -errno, "%s: cannot create (%s)", path, strerror(errno));
    int ok = fwrite(text, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    RETURN_IF(!ok, -EIO, "%s: write failed; check free disk space", path);
    return 0;
}

int model_write_random(const model_config *cfg, const char *dir, uint64_t seed)
{
    RETURN_IF(mkdir(dir, 0755) != 0 && errno != EEXIST, -errno,
              "%s: cannot create directory (%s)", dir, strerror(errno));
    wspec *w;
    int n = weight_specs(cfg, NULL, &w);
    FORWARD_IF(n);
    st_out *t = calloc((size_t)n, sizeof *t);
    int rc = t ? 0 : -ENOMEM;
    uint64_t s = seed;
    for (int i = 0; rc == 0 && i < n; i++) {
        size_t cnt = (size_t)w[i].r * (size_t)(w[i].c > 0 ? w[i].c : 1);
        float *x = malloc(sizeof(float) * cnt);
        if (!x) {
            err_set(__FILE__, __LINE__, "out of memory for tensor %s", w[i].name);
            rc = -ENOMEM;
            break;
        }
        fill_spec(&w[i], x, &s);
        t[i].name = w[i].name;
        t[i].n_dim = w[i].c > 0 ? 2 : 1;
        t[i].shape[0] = w[i].r;
        t[i].shape[1] = w[i].c;
        t[i].data = x;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (rc == 0)
        rc = st_write(path, t, n, ST_F32);
    for (int i = 0; t && i < n; i++)
        free((float *)t[i].data);
    free(t);
    free(w);
    FORWARD_IF(rc);

    char cj[2048];
    int len = snprintf(cj, sizeof cj,
        "{\n  \"_name_or_path\": \"%s\",\n  \"model_type\": \"opt\",\n"
        "  \"architectures\": [\"OPTForCausalLM\"],\n  \"vocab_size\": %d,\n"
        "  \"hidden_size\": %d,\n  \"num_hidden_layers\": %d,\n"
        "  \"num_attention_heads\": %d,\n  \"ffn_dim\": %d,\n"
        "  \"max_position_embeddings\": %d,\n  \"word_embed_proj_dim\": %d,\n"
        "  \"do_layer_norm_before\": true,\n  \"activation_function\": \"relu\",\n"
        "  \"enable_bias\": true,\n  \"layer_norm_elementwise_affine\": true,\n"
        "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"pad_token_id\": %d,\n"
        "  \"tie_word_embeddings\": true,\n  \"dropout\": 0.0,\n"
        "  \"attention_dropout\": 0.0,\n  \"torch_dtype\": \"float32\"\n}\n",
        cfg->name, cfg->vocab_size, cfg->hidden, cfg->n_layer, cfg->n_head,
        cfg->ffn, cfg->max_pos, cfg->hidden, cfg->bos_id, cfg->eos_id, cfg->pad_id);
    FORWARD_IF(write_text(dir, "config.json", cj, (size_t)len));
    FORWARD_IF(write_text(dir, "vocab.json", tok_embedded_vocab_json,
                          tok_embedded_vocab_json_len));
    FORWARD_IF(write_text(dir, "merges.txt", tok_embedded_merges_txt,
                          tok_embedded_merges_txt_len));
    return 0;
}

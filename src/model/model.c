/* model.c: OPT weights: Hugging Face loading (with shape checks), random
 * dummy weights, and writing a random model directory. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "off.h"
#include "safetensors.h"
#include "tok.h"

/* ------------------------------------------------------------ layer blobs */

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

void model_convert_elems(void *dst, size_t dst_es, const void *src, size_t src_es, size_t n)
{
    if (dst_es == src_es) {
        memcpy(dst, src, n * dst_es);
    } else if (dst_es == 2) {
        const float *f = src;
        uint16_t *h = dst;
        for (size_t i = 0; i < n; i++)
            h[i] = st_f32_to_f16(f[i]);
    } else {
        const uint16_t *h = src;
        float *f = dst;
        for (size_t i = 0; i < n; i++)
            f[i] = st_f16_to_f32(h[i]);
    }
}

void **model_global(model *m, int g)
{
    switch (g) {
    case MODEL_G_TOK_EMB: return &m->tok_emb;
    case MODEL_G_POS_EMB: return &m->pos_emb;
    case MODEL_G_NORM_W: return &m->lnf_w;
    case MODEL_G_NORM_B: return &m->lnf_b;
    default: return &m->lm_head;
    }
}

/* ------------------------------------------------------------ allocation */

int model_alloc_weights(model *m)
{
    const model_config *c = &m->cfg;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    RETURN_IF(!m->sink, -EINVAL, "internal: a model loads its layers into a sink");
    model_sched_shape(c, &m->shape);
    /* the global tensors, as the family's checkpoint table has them */
    int n = model_arch_of(c)->tensors(c, NULL);
    model_hf_tensor *w = calloc((size_t)n, sizeof *w);
    RETURN_IF(!w, -ENOMEM, "out of memory");
    model_arch_of(c)->tensors(c, w);
    int rc = 0;
    for (int i = 0; rc == 0 && i < n; i++)
        if (w[i].layer < 0 && !*model_global(m, w[i].dst))
            rc = o->alloc(ctx, (size_t)w[i].rows * (size_t)(w[i].cols ? w[i].cols : 1),
                          model_global(m, w[i].dst));
    free(w);
    FORWARD_IF(rc);
    if (c->tie_lm_head)
        m->lm_head = m->tok_emb;
    /* one host blob, reused by every layer; handed to the sink */
    m->blob_bytes = (model_layer_layout(c, o->elem_size, NULL, NULL) + 4095) & ~(size_t)4095;
    m->blob = aligned_alloc(4096, m->blob_bytes);
    RETURN_IF(!m->blob, -ENOMEM, "out of host memory for a layer (%.1f MiB)",
              m->blob_bytes / 1048576.0);
    memset(m->blob, 0, m->blob_bytes);
    size_t off[MT_COUNT];
    model_layer_layout(c, o->elem_size, off, NULL);
    for (int t = 0; t < m->shape.n_tensors; t++)
        m->blob_view.t[t] = (char *)m->blob + off[t];
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
    }
    free(m->blob);
    if (m->store) {
        off_store_close(m->store);
        free(m->store);
    }
    free(m);
}

/* dst + offset (elements) <- n fp32 values of tensor w: a global through
 * the backend, a layer tensor into the host blob in the backend's storage
 * type. */
static int put_f32(model *m, const model_hf_tensor *w, size_t offset, const float *src,
                   size_t n)
{
    const backend_ops *o = m->be->ops;
    size_t at = (w->offset + offset) * o->elem_size;
    if (w->layer < 0)
        return o->upload(m->be->ctx, (char *)*model_global(m, w->dst) + at, src, n);
    model_convert_elems((char *)m->blob_view.t[w->dst] + at, o->elem_size, src, sizeof(float),
                        n);
    return 0;
}

/* A new model of config c loading into sink, with its tensor table. */
static int model_begin(const model_config *c, backend *be, model_layer_sink sink, void *ud,
                       model **out, model_hf_tensor **w, int *n)
{
    model *m = calloc(1, sizeof *m);
    RETURN_IF(!m, -ENOMEM, "out of memory");
    m->cfg = *c;
    m->be = be;
    m->sink = sink;
    m->sink_ud = ud;
    *out = m;
    FORWARD_IF(model_alloc_weights(m));
    *n = model_arch_of(c)->tensors(c, NULL);
    *w = calloc((size_t)*n, sizeof **w);
    RETURN_IF(!*w, -ENOMEM, "out of memory");
    model_arch_of(c)->tensors(c, *w);
    return 0;
}

/* After tensor i of the table: hand the layer to the sink when it was the
 * last tensor of its layer. */
static int layer_done(model *m, const model_hf_tensor *w, int n, int i)
{
    if (w[i].layer < 0 || (i + 1 < n && w[i + 1].layer == w[i].layer))
        return 0;
    return m->sink(m->sink_ud, w[i].layer, m->blob, 0, -1, 0);
}

/* ------------------------------------------------------------ HF loading */

typedef struct loader {
    model *m;
    st_set *st;
    const char *prefix; /* what "model.decoder." is in this checkpoint ("decoder.") */
    float *buf;         /* host staging, largest tensor */
} loader;

/* Load checkpoint tensor w (its name under the checkpoint's prefix), of
 * the shape w gives, into its destination. */
static int load_tensor(loader *ld, const model_hf_tensor *w)
{
    char full[256];
    const char *std = "model.decoder.";
    if (strncmp(w->name, std, strlen(std)) == 0)
        snprintf(full, sizeof full, "%s%s", ld->prefix, w->name + strlen(std));
    else
        snprintf(full, sizeof full, "%s", w->name);
    const st_tensor *t = st_find(ld->st, full);
    RETURN_IF(!t, -EINVAL, "tensor %s missing from the checkpoint; is this an "
              "%s model matching config.json?", full, model_arch_of(&ld->m->cfg)->name);
    int64_t want[2] = {w->rows, w->cols};
    int nd = w->cols > 0 ? 2 : 1;
    int ok = t->n_dim == nd;
    for (int i = 0; ok && i < nd; i++)
        ok = t->shape[i] == want[i];
    if (!ok) {
        char got[96] = "", exp[64];
        for (int i = 0; i < t->n_dim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld",
                     i ? ", " : "", (long long)t->shape[i]);
        if (nd == 2)
            snprintf(exp, sizeof exp, "%lld, %lld", (long long)w->rows, (long long)w->cols);
        else
            snprintf(exp, sizeof exp, "%lld", (long long)w->rows);
        RETURN_IF(1, -EINVAL, "%s: tensor %s has shape [%s] but config.json implies "
                  "[%s]; the checkpoint and config.json disagree", t->file, full,
                  got, exp);
    }
    size_t n = (size_t)w->rows * (size_t)(w->cols > 0 ? w->cols : 1);
    st_to_f32(t, ld->buf, n);
    return put_f32(ld->m, w, 0, ld->buf, n);
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
    model *m = NULL;
    model_hf_tensor *w = NULL;
    int n = 0;
    int rc = model_begin(&cfg, be, sink, ud, &m, &w, &n);
    loader ld = {m, sts, "model.decoder.", NULL};
    if (rc == 0) {
        if (!st_find(sts, "model.decoder.embed_tokens.weight") &&
            st_find(sts, "decoder.embed_tokens.weight"))
            ld.prefix = "decoder.";
        size_t big = 0;
        for (int i = 0; i < n; i++) {
            size_t c = (size_t)w[i].rows * (size_t)(w[i].cols ? w[i].cols : 1);
            big = c > big ? c : big;
        }
        ld.buf = malloc(sizeof(float) * big);
        if (!ld.buf) {
            err_set(__FILE__, __LINE__, "out of memory for a tensor of %zu values", big);
            rc = -ENOMEM;
        }
    }
    for (int i = 0; rc == 0 && i < n; i++) {
        rc = load_tensor(&ld, &w[i]);
        if (rc == 0)
            rc = layer_done(m, w, n, i);
    }
    free(ld.buf);
    free(w);
    st_close(sts);
    if (rc < 0) {
        model_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* ------------------------------------------------------------ random */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

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
            x[i] = a * (float)((int64_t)(splitmix(&s) >> 11) * 0x1.0p-52 - 1.0);
    }
}

static void fill_const(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

/* n values of a tensor with fill `init`: random ones draw one seed from s. */
static void fill_init(char init, float *x, size_t n, uint64_t *s)
{
    if (init == 'n')
        fill_random(x, n, 0.02f, splitmix(s));
    else
        fill_const(x, n, init == '1' ? 1.0f : 0.0f);
}

int model_create_dummy_sink(const model_config *cfg, backend *be, uint64_t seed,
                            model_layer_sink sink, void *ud, model **out)
{
    model_config c = *cfg;
    c.tie_lm_head = 1;
    model *m = NULL;
    model_hf_tensor *w = NULL;
    int n = 0;
    int rc = model_begin(&c, be, sink, ud, &m, &w, &n);
    /* Upload in chunks so a big model needs no second full copy. */
    size_t chunk = (size_t)1 << 22;
    float *buf = rc == 0 ? malloc(sizeof(float) * chunk) : NULL;
    if (rc == 0 && !buf) {
        err_set(__FILE__, __LINE__, "out of memory");
        rc = -ENOMEM;
    }
    uint64_t s = seed;
    for (int i = 0; rc == 0 && i < n; i++) {
        size_t total = (size_t)w[i].rows * (size_t)(w[i].cols > 0 ? w[i].cols : 1);
        for (size_t at = 0; rc == 0 && at < total; at += chunk) {
            size_t len = total - at < chunk ? total - at : chunk;
            fill_init(w[i].init, buf, len, &s);
            rc = put_f32(m, &w[i], at, buf, len);
        }
        if (rc == 0)
            rc = layer_done(m, w, n, i);
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
    model_config c = *cfg;
    c.tie_lm_head = 1; /* the config.json written below says so */
    int n = model_arch_of(&c)->tensors(&c, NULL);
    model_hf_tensor *w = calloc((size_t)n, sizeof *w);
    st_out *t = calloc((size_t)n, sizeof *t);
    int rc = t && w ? 0 : -ENOMEM;
    if (rc < 0)
        err_set(__FILE__, __LINE__, "out of memory");
    else
        model_arch_of(&c)->tensors(&c, w);
    uint64_t s = seed;
    for (int i = 0; rc == 0 && i < n; i++) {
        size_t cnt = (size_t)w[i].rows * (size_t)(w[i].cols > 0 ? w[i].cols : 1);
        float *x = malloc(sizeof(float) * cnt);
        if (!x) {
            err_set(__FILE__, __LINE__, "out of memory for tensor %s", w[i].name);
            rc = -ENOMEM;
            break;
        }
        fill_init(w[i].init, x, cnt, &s);
        t[i].name = w[i].name;
        t[i].n_dim = w[i].cols > 0 ? 2 : 1;
        t[i].shape[0] = w[i].rows;
        t[i].shape[1] = w[i].cols;
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

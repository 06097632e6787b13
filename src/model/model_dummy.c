/* model_dummy.c: random weights of a model's real shape (--dummy, the way
 * FlexGen's benchmarks run) and writing a random model as a Hugging Face
 * directory (`flexh2o make-model`). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "err.h"
#include "model_impl.h"
#include "safetensors.h"
#include "tok.h"

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

/* n values of a tensor with fill `init`: random ones draw one seed from s. */
static void fill_init(char init, float *x, size_t n, uint64_t *s)
{
    if (init == 'n')
        fill_random(x, n, 0.02f, kern_splitmix64(s));
    else
        fill_const(x, n, init == '1' ? 1.0f : 0.0f);
}

int model_create_dummy_sink(const model_config *cfg, backend *be, uint64_t seed,
                            model_layer_sink sink, void *ud, model **out)
{
    model_config c = *cfg;
    model *m = NULL;
    model_hf_tensor *w = NULL;
    int n = 0;
    int rc = model_begin(&c, be, 0, 0, sink, ud, &m, &w, &n);
    /* Upload in chunks so a big model needs no second full copy. */
    size_t chunk = (size_t)1 << 22;
    float *buf = rc == 0 ? malloc(sizeof(float) * chunk) : NULL;
    if (rc == 0 && !buf) {
        err_set(__FILE__, __LINE__, "out of memory");
        rc = -ENOMEM;
    }
    uint64_t s = seed;
    for (int i = 0; rc == 0 && i < n; i++) {
        size_t total = model_hf_count(&w[i]);
        for (size_t at = 0; rc == 0 && at < total; at += chunk) {
            size_t len = total - at < chunk ? total - at : chunk;
            fill_init(w[i].init, buf, len, &s);
            rc = model_put_f32(m, &w[i], at, buf, len);
        }
        if (rc == 0)
            rc = model_layer_done(m, w, n, i);
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

/* vocab.json: the embedded toy tokenizer's (ids 0-511), plus an entry for
 * each of the config's BOS / EOS / PAD ids past it (a real shape's, such
 * as Llama-3's 128000), so that the tokenizer knows every id the model
 * emits or prepends and generate does not refuse the pair as mismatched */
static int write_vocab(const char *dir, const model_config *c)
{
    cJSON *v = cJSON_ParseWithLength(tok_embedded_vocab_json, tok_embedded_vocab_json_len);
    RETURN_IF(!v, -ENOMEM, "out of memory");
    int n = cJSON_GetArraySize(v);
    const struct { const char *name; int id; } sp[] = {
        {"<|bos|>", c->bos_id}, {"<|eos|>", c->eos_id}, {"<|pad|>", c->pad_id}};
    int ok = 1;
    for (size_t i = 0; ok && i < sizeof sp / sizeof *sp; i++) {
        int dup = 0;
        for (size_t j = 0; j < i; j++)
            dup |= sp[j].id == sp[i].id;
        if (sp[i].id >= n && !dup)
            ok = cJSON_AddNumberToObject(v, sp[i].name, sp[i].id) != NULL;
    }
    char *text = ok ? cJSON_PrintUnformatted(v) : NULL;
    cJSON_Delete(v);
    RETURN_IF(!text, -ENOMEM, "out of memory");
    int rc = write_text(dir, "vocab.json", text, strlen(text));
    cJSON_free(text);
    return rc;
}

int model_write_random(const model_config *cfg, const char *dir, uint64_t seed)
{
    RETURN_IF(mkdir(dir, 0755) != 0 && errno != EEXIST, -errno,
              "%s: cannot create directory (%s)", dir, strerror(errno));
    model_config c = *cfg;
    model_hf_tensor *w;
    int n = model_hf_tensors(&c, &w);
    FORWARD_IF(n);
    st_out *t = calloc((size_t)n, sizeof *t);
    int rc = t ? 0 : -ENOMEM;
    if (rc < 0)
        err_set(__FILE__, __LINE__, "out of memory");
    uint64_t s = seed;
    for (int i = 0; rc == 0 && i < n; i++) {
        size_t cnt = model_hf_count(&w[i]);
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

    char cj[4096];
    int len = model_config_json(&c, cj, sizeof cj);
    FORWARD_IF(len);
    FORWARD_IF(write_text(dir, "config.json", cj, (size_t)len));
    FORWARD_IF(write_vocab(dir, &c));
    FORWARD_IF(write_text(dir, "merges.txt", tok_embedded_merges_txt,
                          tok_embedded_merges_txt_len));
    return 0;
}

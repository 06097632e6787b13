/* model_hf.c: loading a Hugging Face checkpoint directory (config.json +
 * model.safetensors or shards), every tensor checked against the shape
 * config.json implies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "model_impl.h"
#include "safetensors.h"

/* ------------------------------------------------------------ HF loading */

typedef struct loader {
    model *m;
    st_set *st;
    int strip;          /* the checkpoint's names lack the leading "model." */
    float *buf, *perm;  /* host staging, largest tensor (perm: for regrouped rows) */
} loader;

/* rows of src (cols values each; a vector: 1) regrouped into dst as perm
 * says (model_family.h). */
static void permute_rows(float *dst, const float *src, const model_hf_tensor *w,
                         const model_config *c)
{
    size_t cols = w->cols > 0 ? (size_t)w->cols : 1, hd = (size_t)c->head_dim;
    size_t H = (size_t)c->n_head;
    for (size_t r = 0; r < (size_t)w->rows; r++) {
        size_t h = r / (3 * hd), part = r % (3 * hd) / hd, j = r % hd;
        memcpy(dst + ((part * H + h) * hd + j) * cols, src + r * cols, sizeof(float) * cols);
    }
}

/* Load checkpoint tensor w, of the shape w gives, into its destination. */
static int load_tensor(loader *ld, const model_hf_tensor *w)
{
    char full[256];
    const char *std = "model.";
    if (ld->strip && strncmp(w->name, std, strlen(std)) == 0)
        snprintf(full, sizeof full, "%s", w->name + strlen(std));
    else
        snprintf(full, sizeof full, "%s", w->name);
    const st_tensor *t = st_find(ld->st, full);
    RETURN_IF(!t, -EINVAL, "tensor %s missing from the checkpoint; is this a "
              "%s model matching config.json?", full, ld->m->cfg.family->name);
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
    size_t n = model_hf_count(w);
    st_to_f32(t, ld->buf, n);
    if (w->perm == MODEL_PERM_QKV_PER_HEAD) {
        permute_rows(ld->perm, ld->buf, w, &ld->m->cfg);
        return model_put_f32(ld->m, w, 0, ld->perm, n);
    }
    return model_put_f32(ld->m, w, 0, ld->buf, n);
}

int model_load_hf_sink(const char *dir, backend *be, model_layer_sink sink, void *ud,
                       model **out)
{
    return model_load_hf_h16(dir, be, 0, 0, sink, ud, out);
}

int model_hf_h16(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    model_config cfg;
    FORWARD_IF(model_config_load(path, &cfg));
    st_set *sts = NULL;
    FORWARD_IF(st_open_dir(dir, &sts));
    model_hf_tensor *w = NULL;
    int n = model_hf_tensors(&cfg, &w), fmt = -1;
    /* the layer tensors only: they are what the tiers hold; a name the
     * checkpoint lacks leaves the verdict to the load, which says so */
    for (int i = 0; i < n && fmt != 0; i++) {
        if (w[i].layer < 0)
            continue;
        const st_tensor *t = st_find(sts, w[i].name);
        if (!t && strncmp(w[i].name, "model.", 6) == 0)
            t = st_find(sts, w[i].name + 6);
        int f = !t ? 0 : t->dtype == ST_F16 ? KERN_H16_F16 : t->dtype == ST_BF16 ? KERN_H16_BF16 : 0;
        fmt = fmt < 0 || fmt == f ? f : 0;
    }
    free(w);
    st_close(sts);
    FORWARD_IF(n);
    return fmt < 0 ? 0 : fmt;
}

int model_load_hf_h16(const char *dir, backend *be, int h16, int t16, model_layer_sink sink,
                      void *ud, model **out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    model_config cfg;
    struct stat st;
    RETURN_IF(stat(dir, &st) != 0 || !S_ISDIR(st.st_mode), -ENOENT,
              "%s: model directory not found; pass a Hugging Face model directory "
              "or create one with flexh2o make-model", dir);
    FORWARD_IF(model_config_load(path, &cfg));
    st_set *sts = NULL;
    FORWARD_IF(st_open_dir(dir, &sts));
    model *m = NULL;
    model_hf_tensor *w = NULL;
    int n = 0;
    int rc = model_begin(&cfg, be, h16, t16, sink, ud, &m, &w, &n);
    loader ld = {m, sts, 0, NULL, NULL};
    if (rc == 0) {
        /* some checkpoints (OPT's, saved from the bare decoder) name their
         * tensors without the leading "model." */
        const char *first = w[0].name;
        ld.strip = !st_find(sts, first) && strncmp(first, "model.", 6) == 0 &&
                   st_find(sts, first + 6);
        size_t big = 0, big_perm = 0;
        for (int i = 0; i < n; i++) {
            size_t c = model_hf_count(&w[i]);
            big = c > big ? c : big;
            if (w[i].perm && c > big_perm)
                big_perm = c;
        }
        ld.buf = malloc(sizeof(float) * big);
        ld.perm = big_perm ? malloc(sizeof(float) * big_perm) : NULL;
        if (!ld.buf || (big_perm && !ld.perm)) {
            err_set(__FILE__, __LINE__, "out of memory for a tensor of %zu values", big);
            rc = -ENOMEM;
        }
    }
    for (int i = 0; rc == 0 && i < n; i++) {
        rc = load_tensor(&ld, &w[i]);
        if (rc == 0)
            rc = model_layer_done(m, w, n, i);
    }
    free(ld.buf);
    free(ld.perm);
    free(w);
    st_close(sts);
    if (rc < 0) {
        model_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

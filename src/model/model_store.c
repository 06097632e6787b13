/* model_store.c: the flexh2o weight store of a model (`flexh2o convert`)
 * and loading from it.
 *
 * A store is a directory: model.flxh2o (offload/off.h's segment file, one
 * segment per global tensor and one layer blob per layer, model_layer_layout
 * order, in fp16 or fp32, the matrices optionally 4-bit) beside copies of
 * config.json and the tokenizer files, so that `generate --model STORE`
 * needs nothing else. The disk share of a layer streams straight from the
 * segment with O_DIRECT when the store's dtype is the backend's storage
 * type.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "model_impl.h"
#include "off.h"
#include "safetensors.h"

#define STORE_FILE "model.flxh2o"

static const char *const global_names[MODEL_G_COUNT] = {"tok_emb", "pos_emb", "lnf_w", "lnf_b",
                                                         "lm_head"};

/* The global tensors config c's family has, in MODEL_G_* order: g[i] the
 * index and len[i] the elements of the i-th. @return the count. */
static int store_globals(const model_config *c, int g[MODEL_G_COUNT],
                         size_t len[MODEL_G_COUNT])
{
    model_hf_tensor *w;
    int n = model_hf_tensors(c, &w), k = 0;
    FORWARD_IF(n);
    size_t have[MODEL_G_COUNT] = {0};
    for (int i = 0; i < n; i++)
        if (w[i].layer < 0)
            have[w[i].dst] = model_hf_count(&w[i]);
    free(w);
    for (int i = 0; i < MODEL_G_COUNT; i++)
        if (have[i]) {
            g[k] = i;
            len[k++] = have[i];
        }
    return k;
}

/* A layer blob of one element type (OFF_DTYPE_*) in the layout of another;
 * with wq both are 4-bit blobs, whose matrices are copied as they are. */
static void convert_blob(const model_config *c, int wq, void *dst, uint32_t dst_t,
                         const void *src, uint32_t src_t)
{
    size_t dst_es = off_dtype_size(dst_t), src_es = off_dtype_size(src_t);
    size_t od[MT_COUNT], os[MT_COUNT], nb[MT_COUNT], n[MT_COUNT];
    sched_model sm;
    model_sched_shape(c, &sm);
    model_layer_layout(c, dst_es, NULL, n);
    model_layer_layout_q(c, dst_es, wq, od, nb);
    model_layer_layout_q(c, src_es, wq, os, NULL);
    for (int t = 0; t < sm.n_tensors; t++) {
        if (wq && sm.tensors[t].cols)
            memcpy((char *)dst + od[t], (const char *)src + os[t], nb[t]);
        else
            model_convert_elems((char *)dst + od[t], dst_t, (const char *)src + os[t],
                                src_t, n[t]);
    }
}

/* 1 when dir holds a weight store file: a file named model.flxh2o, whole
 * or not (a damaged one is refused by off_store_open, not taken for a
 * Hugging Face directory). */
static int has_store(const char *dir, char *p, size_t cap)
{
    struct stat st;
    return snprintf(p, cap, "%s/%s", dir, STORE_FILE) < (int)cap && stat(p, &st) == 0 &&
           !S_ISDIR(st.st_mode);
}

int model_config_of(const char *path, model_config *out)
{
    char p[4096];
    if (has_store(path, p, sizeof p)) {
        off_store s = {0};
        FORWARD_IF(off_store_open(p, &s));
        int rc = model_config_parse(s.config_json, strlen(s.config_json), p, out);
        off_store_close(&s);
        return rc;
    }
    struct stat st;
    RETURN_IF(stat(path, &st) != 0 || !S_ISDIR(st.st_mode), -ENOENT,
              "%s: model directory not found; pass a Hugging Face model directory, a store "
              "from flexh2o convert, or create one with flexh2o make-model", path);
    snprintf(p, sizeof p, "%s/config.json", path);
    return model_config_load(p, out);
}

int model_store_dtype(const char *path, uint32_t *dtype)
{
    char p[4096];
    if (!has_store(path, p, sizeof p))
        return 0;
    off_store s = {0};
    FORWARD_IF(off_store_open(p, &s));
    *dtype = s.dtype;
    off_store_close(&s);
    return 1;
}

/* ------------------------------------------------------------ convert */

typedef struct conv {
    off_store_writer *w;
    const model_config *c;
    uint32_t dtype;
    void *blob;       /* (layer blob in dtype) */
    void *qblob;      /* (the same, 4-bit) with OFF_DTYPE_Q4, else NULL */
    int first_layer;  /* segment index of layer 0 */
} conv;

static int conv_sink(void *ud, int layer, const void *blob, int wq, int fd, uint64_t off)
{
    (void)wq; /* fp32 blobs from the Hugging Face loader */
    (void)fd;
    (void)off;
    conv *cv = ud;
    size_t es = off_dtype_size(cv->dtype);
    convert_blob(cv->c, 0, cv->blob, cv->dtype & ~OFF_DTYPE_Q4, blob, OFF_DTYPE_F32);
    if (cv->qblob)
        model_layer_quantize(cv->c, es, cv->qblob, cv->blob);
    return off_store_writer_put(cv->w, cv->first_layer + layer,
                                cv->qblob ? cv->qblob : cv->blob);
}

static int copy_file(const char *from_dir, const char *to_dir, const char *name)
{
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/%s", from_dir, name);
    snprintf(b, sizeof b, "%s/%s", to_dir, name);
    char *buf = NULL;
    size_t len = 0;
    struct stat st;
    if (stat(a, &st) != 0)
        return 0; /* optional */
    FORWARD_IF(off_read_file(a, &buf, &len));
    FILE *f = fopen(b, "wb");
    int ok = f && fwrite(buf, 1, len, f) == len;
    ok = f && fclose(f) == 0 && ok;
    free(buf);
    RETURN_IF(!ok, -EIO, "%s: cannot write (%s); check the --out directory and free space", b,
              strerror(errno));
    return 0;
}

int model_convert(const char *hf_dir, const char *out_dir, uint32_t dtype)
{
    model_config c;
    char path[4096];
    RETURN_IF(!st_dir_has(hf_dir) && has_store(hf_dir, path, sizeof path), -EINVAL,
              "%s is a weight store already, not a Hugging Face checkpoint: generate, eval, "
              "score and search take it as it is; convert the checkpoint it was made from "
              "for another --dtype", hf_dir);
    snprintf(path, sizeof path, "%s/config.json", hf_dir);
    FORWARD_IF(model_config_of(hf_dir, &c));
    RETURN_IF(mkdir(out_dir, 0755) != 0 && errno != EEXIST, -errno,
              "%s: cannot create the store directory (%s)", out_dir, strerror(errno));
    char *cj = NULL;
    size_t cj_len = 0;
    FORWARD_IF(off_read_file(path, &cj, &cj_len));
    size_t es = off_dtype_size(dtype), glen[MODEL_G_COUNT];
    int gid[MODEL_G_COUNT], n_glob = store_globals(&c, gid, glen);
    if (n_glob < 0) {
        free(cj);
        return n_glob;
    }
    int n_seg = n_glob + c.n_layer;
    const char **names = calloc((size_t)n_seg, sizeof *names);
    char (*lnames)[OFF_SEG_NAME] = calloc((size_t)c.n_layer, OFF_SEG_NAME);
    uint64_t *lens = calloc((size_t)n_seg, sizeof *lens);
    conv cv = {.c = &c, .dtype = dtype, .first_layer = n_glob};
    size_t blob = model_layer_layout(&c, es, NULL, NULL);
    size_t qblob = model_layer_layout_q(&c, es, 1, NULL, NULL);
    cv.blob = off_alloc_aligned(off_align_up(blob));
    if (dtype & OFF_DTYPE_Q4)
        cv.qblob = off_alloc_aligned(off_align_up(qblob));
    int rc = names && lnames && lens && cv.blob && (cv.qblob || !(dtype & OFF_DTYPE_Q4))
                 ? 0 : -ENOMEM;
    if (rc == -ENOMEM)
        err_set(__FILE__, __LINE__, "out of memory");
    for (int i = 0; rc == 0 && i < n_seg; i++) {
        if (i < n_glob) {
            names[i] = global_names[gid[i]];
            lens[i] = glen[i] * es;
        } else {
            snprintf(lnames[i - n_glob], OFF_SEG_NAME, "layer.%d", i - n_glob);
            names[i] = lnames[i - n_glob];
            lens[i] = dtype & OFF_DTYPE_Q4 ? qblob : blob;
        }
    }
    snprintf(path, sizeof path, "%s/%s", out_dir, STORE_FILE);
    if (rc == 0)
        rc = off_store_writer_open(path, dtype, cj, n_seg, names, lens, &cv.w);
    /* load through the CPU backend: layers arrive as fp32 blobs, the
     * global tensors stay on it and are read back */
    backend be = {0};
    model *m = NULL;
    if (rc == 0)
        rc = backend_cpu_create(0, &be);
    if (rc == 0)
        rc = model_load_hf_sink(hf_dir, &be, conv_sink, &cv, &m);
    for (int i = 0; rc == 0 && i < n_glob; i++) {
        void *buf = malloc(glen[i] * es);
        if (!buf) {
            err_set(__FILE__, __LINE__, "out of memory");
            rc = -ENOMEM;
            break;
        }
        /* the CPU backend holds fp32 in host memory */
        int g16 = model_global_h16(m, gid[i]);
        model_convert_elems(buf, dtype & ~OFF_DTYPE_Q4, *model_global(m, gid[i]),
                            g16 ? model_h16_dtype(g16) : OFF_DTYPE_F32, glen[i]);
        rc = off_store_writer_put(cv.w, i, buf);
        free(buf);
    }
    if (rc == 0) {
        rc = off_store_writer_finish(cv.w);
        cv.w = NULL;
    }
    off_store_writer_abort(cv.w);
    model_destroy(m);
    backend_destroy(&be);
    const char *files[] = {"config.json", "vocab.json", "merges.txt", "tokenizer.json"};
    for (size_t i = 0; rc == 0 && i < sizeof files / sizeof *files; i++)
        rc = copy_file(hf_dir, out_dir, files[i]);
    free(cj);
    free(names);
    free(lnames);
    free(lens);
    free(cv.blob);
    free(cv.qblob);
    return rc;
}

/* ------------------------------------------------------------ loading */

/* Every segment the config of store st (at path) implies, with the length
 * it implies, and no others: checked before anything is read or copied, so
 * a store whose header and config disagree (a header rewritten with its
 * checksum) cannot make a copy overrun. ses: the store's element size;
 * wq: its layers are 4-bit. @return 0 or -EINVAL (message). */
static int check_segments(const off_store *st, const model_config *c, const int *gid,
                          const size_t *glen, int n_glob, size_t ses, int wq,
                          const char *path)
{
    size_t layer = model_layer_layout_q(c, ses, wq, NULL, NULL);
    for (int i = 0; i < n_glob + c->n_layer; i++) {
        char name[OFF_SEG_NAME];
        if (i < n_glob)
            snprintf(name, sizeof name, "%s", global_names[gid[i]]);
        else
            snprintf(name, sizeof name, "layer.%d", i - n_glob);
        uint64_t want = i < n_glob ? glen[i] * ses : layer;
        int k = off_store_find(st, name);
        RETURN_IF(k < 0, -EINVAL, "%s: segment %s is missing, but its config.json needs it; "
                  "the store is damaged: run flexh2o convert again", path, name);
        RETURN_IF(st->seg[k].length != want, -EINVAL,
                  "%s: segment %s has %" PRIu64 " bytes, but its config.json gives %" PRIu64
                  "; the store is damaged: run flexh2o convert again", path, name,
                  st->seg[k].length, want);
    }
    RETURN_IF(st->n_seg != n_glob + c->n_layer, -EINVAL,
              "%s: %d segments, but its config.json gives %d (%d layers); the store is "
              "damaged: run flexh2o convert again", path, st->n_seg, n_glob + c->n_layer,
              c->n_layer);
    return 0;
}

int model_load_store(const char *dir, backend *be, struct off_disk *disk, int h16, int t16,
                     model_layer_sink sink, void *ud, model **out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, STORE_FILE);
    model *m = calloc(1, sizeof *m);
    off_store *st = calloc(1, sizeof *st);
    if (!m || !st) {
        free(m);
        free(st);
        RETURN_IF(1, -ENOMEM, "out of memory loading %s", path);
    }
    m->store = st;
    int rc = off_store_open(path, st);
    if (rc == 0)
        rc = model_config_parse(st->config_json, strlen(st->config_json), path, &m->cfg);
    const model_config *c = &m->cfg;
    size_t ses = off_dtype_size(st->dtype), bes = be->ops->elem_size;
    uint32_t base = st->dtype & ~OFF_DTYPE_Q4, bt = model_backend_dtype(bes);
    int wq = (st->dtype & OFF_DTYPE_Q4) != 0;
    /* the type the sink takes layers in: a 16-bit store goes as it is to a
     * sink keeping layers in its 16 bits, else the backend's */
    uint32_t h16t = model_h16_dtype(h16);
    uint32_t lt = h16t && base == h16t && !wq ? h16t : bt;
    if (rc == 0 && h16 && lt != h16t) {
        err_set(__FILE__, __LINE__, "internal: %s is not a plain %s store, but its layers "
                "are to stay in those 16 bits", path, h16t == OFF_DTYPE_BF16 ? "bf16" : "fp16");
        rc = -EINVAL;
    }
    if (rc == 0 && base != OFF_DTYPE_F16 && base != OFF_DTYPE_F32 && base != OFF_DTYPE_BF16) {
        err_set(__FILE__, __LINE__, "%s: unknown dtype %u; run flexh2o convert again", path,
                st->dtype);
        rc = -EINVAL;
    }
    if (rc == 0) {
        m->be = be;
        m->h16 = h16;
        m->t16 = t16;
        m->sink = sink;
        m->sink_ud = ud;
        rc = model_alloc_weights(m);
    }
    size_t glen[MODEL_G_COUNT];
    int gid[MODEL_G_COUNT], n_glob = rc == 0 ? store_globals(c, gid, glen) : 0;
    if (n_glob < 0)
        rc = n_glob;
    if (rc == 0)
        rc = check_segments(st, c, gid, glen, n_glob, ses, wq, path);
    size_t seg_max = 0;
    for (int i = 0; rc == 0 && i < st->n_seg; i++)
        if (st->seg[i].length > seg_max)
            seg_max = st->seg[i].length;
    void *buf = rc == 0 ? off_alloc_aligned(off_align_up(seg_max)) : NULL;
    float *f32 = NULL;
    if (rc == 0 && !buf) {
        err_set(__FILE__, __LINE__, "out of memory for a segment of %s", path);
        rc = -ENOMEM;
    }
    /* the globals go up through an fp32 window of GLOBAL_CHUNK values: a
     * whole fp32 copy of a 128 k-token embedding beside the segment and the
     * backend's own would be 1 GiB more at the peak of the load */
    enum { GLOBAL_CHUNK = 1 << 16 };
    if (rc == 0 && n_glob > 0 && !(f32 = malloc(GLOBAL_CHUNK * sizeof(float)))) {
        err_set(__FILE__, __LINE__, "out of memory");
        rc = -ENOMEM;
    }
    for (int i = 0; rc == 0 && i < n_glob; i++) {
        int s = off_store_find(st, global_names[gid[i]]); /* check_segments: there */
        size_t n = st->seg[s].length / ses;
        rc = off_store_read_seg(st, disk, s, buf);
        for (size_t at = 0; rc == 0 && at < n; at += GLOBAL_CHUNK) {
            size_t k = n - at < GLOBAL_CHUNK ? n - at : GLOBAL_CHUNK;
            const char *src = (const char *)buf + at * ses;
            int g16 = model_global_h16(m, gid[i]); /* host-visible: straight in */
            if (g16) {
                model_convert_elems((uint16_t *)*model_global(m, gid[i]) + at,
                                    model_h16_dtype(g16), src, base, k);
                continue;
            }
            model_convert_elems(f32, OFF_DTYPE_F32, src, base, k);
            rc = be->ops->upload(be->ctx, (char *)*model_global(m, gid[i]) + at * bes, f32, k);
        }
    }
    /* a layer converted to the backend's element size goes to m->blob,
     * sized for plain layers; a 4-bit layer whose rows are shorter than a
     * group pads out past that (found by tests/fuzz/fuzz_store.c) */
    void *cbuf = NULL;
    if (rc == 0 && base != lt) {
        size_t need = model_layer_layout_q(c, bes, wq, NULL, NULL);
        cbuf = need <= m->blob_bytes ? m->blob : off_alloc_aligned(off_align_up(need));
        if (!cbuf) {
            err_set(__FILE__, __LINE__, "out of memory for a layer of %s", path);
            rc = -ENOMEM;
        }
    }
    for (int l = 0; rc == 0 && l < c->n_layer; l++) {
        char name[OFF_SEG_NAME];
        snprintf(name, sizeof name, "layer.%d", l);
        int s = off_store_find(st, name); /* check_segments: there, of the right size */
        rc = off_store_read_seg(st, disk, s, buf);
        if (rc == 0 && base == lt) {
            rc = sink(ud, l, buf, wq, st->fd, st->seg[s].offset);
        } else if (rc == 0) {
            convert_blob(c, wq, cbuf, bt, buf, base);
            rc = sink(ud, l, cbuf, wq, -1, 0);
        }
    }
    if (m && cbuf != m->blob)
        free(cbuf);
    free(buf);
    free(f32);
    if (rc < 0) {
        model_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* fuzz_safetensors.c: a safetensors file (src/model/safetensors.c: the
 * u64 header length, the JSON header, the tensors' dtypes, shapes and
 * offsets), then, when it opens, the Hugging Face loader over it
 * (model_load_hf_sink: every tensor checked against the shape of
 * tests/fuzz/micro-opt.json and converted to fp32).
 *
 * Checked for any input: every tensor st_open_file accepts lies inside
 * the file and holds exactly the elements its shape says. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"
#include "err.h"
#include "fh_config.h"
#include "fuzz_common.h"
#include "model.h"
#include "off.h"
#include "safetensors.h"

static backend be;

static int sink(void *ud, int layer, const void *blob, int wq, int fd, uint64_t off)
{
    (void)ud, (void)layer, (void)blob, (void)wq, (void)fd, (void)off;
    return 0;
}

static void setup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    char *cfg;
    size_t len;
    FUZZ_CHECK(off_read_file(FH_SOURCE_ROOT "/tests/fuzz/micro-opt.json", &cfg, &len) == 0,
               "tests/fuzz/micro-opt.json: %s", err_msg());
    fuzz_write("config.json", cfg, len);
    free(cfg);
    FUZZ_CHECK(backend_cpu_create(1, &be) == 0, "%s", err_msg());
}

/* The element count of t's shape, or -1 when it overflows 2^62. */
static int64_t elements(const st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->n_dim; i++) {
        if (t->shape[i] < 0 || (t->shape[i] && n > (INT64_C(1) << 62) / t->shape[i]))
            return -1;
        n *= t->shape[i];
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    setup();
    fuzz_write("model.safetensors", data, size);
    char path[512];
    st_set *s = NULL;
    if (st_open_file(fuzz_path(path, sizeof path, "model.safetensors"), &s) < 0)
        return 0;
    /* every tensor the header names, found as the loader finds them; its
     * bytes located from the header here, independently of the parser */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | data[i];
    cJSON *h = cJSON_ParseWithLength((const char *)data + 8, (size_t)hlen);
    FUZZ_CHECK(cJSON_IsObject(h), "st_open_file took a header that is not a JSON object");
    size_t es[] = {[ST_F32] = 4, [ST_F16] = 2, [ST_BF16] = 2};
    float *buf = NULL;
    const cJSON *e;
    cJSON_ArrayForEach(e, h) {
        const st_tensor *t = st_find(s, e->string);
        if (cJSON_GetObjectItemCaseSensitive(h, e->string) != e)
            continue; /* a repeated name: st_find gives the first */
        if (strcmp(e->string, "__metadata__") == 0) {
            FUZZ_CHECK(!t, "__metadata__ taken for a tensor");
            continue;
        }
        FUZZ_CHECK(t != NULL, "tensor %s accepted but not found", e->string);
        int64_t n = elements(t);
        FUZZ_CHECK(n >= 0 && (uint64_t)n * es[t->dtype] == t->bytes,
                   "tensor %s: %d dims, %zu bytes of %zu-byte elements", t->name, t->n_dim,
                   t->bytes, es[t->dtype]);
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        double beg = cJSON_GetArrayItem(off, 0)->valuedouble;
        FUZZ_CHECK(beg >= 0 && 8 + hlen + beg + t->bytes <= size,
                   "tensor %s: bytes %g + %zu past the end of a %zu-byte file", t->name,
                   8 + hlen + beg, t->bytes, size);
        FUZZ_CHECK(memcmp(t->data, data + 8 + hlen + (size_t)beg, t->bytes) == 0,
                   "tensor %s: data not where data_offsets says", t->name);
        buf = realloc(buf, (size_t)n * sizeof(float) + 1);
        FUZZ_CHECK(buf != NULL, "out of memory");
        st_to_f32(t, buf, (size_t)n);
    }
    cJSON_Delete(h);
    free(buf);
    st_close(s);
    model *m = NULL;
    if (model_load_hf_sink(fuzz_dir(), &be, sink, NULL, &m) == 0)
        model_destroy(m);
    return 0;
}

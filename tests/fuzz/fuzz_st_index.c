/* fuzz_st_index.c: model.safetensors.index.json (st_open_dir: the
 * "weight_map" of tensor -> shard file, each shard opened once), beside
 * two valid shards, a.safetensors (tensor "x") and b.safetensors ("y").
 *
 * Checked for any input: an index naming a file outside the directory
 * (absolute, or through "..") is refused; what opens holds only tensors of
 * those shards, with their shapes. */
#include <cjson/cJSON.h>
#include <string.h>

#include "err.h"
#include "fuzz_common.h"
#include "safetensors.h"

static void setup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    static const float x[6] = {1, 2, 3, 4, 5, 6}, y[3] = {7, 8, 9};
    st_out a = {"x", 2, {2, 3}, x}, b = {"y", 1, {3}, y};
    char p[512];
    FUZZ_CHECK(st_write(fuzz_path(p, sizeof p, "a.safetensors"), &a, 1, ST_F16) == 0, "%s",
               err_msg());
    FUZZ_CHECK(st_write(fuzz_path(p, sizeof p, "b.safetensors"), &b, 1, ST_BF16) == 0, "%s",
               err_msg());
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    setup();
    fuzz_write("model.safetensors.index.json", data, size);
    /* the harness's own reading of which files the index names */
    int outside = 0;
    cJSON *idx = cJSON_ParseWithLength((const char *)data, size);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    for (const cJSON *e = cJSON_IsObject(wm) ? wm->child : NULL; e; e = e->next) {
        const char *f = cJSON_GetStringValue(e);
        size_t n = f ? strlen(f) : 0;
        outside |= f && (f[0] == '/' || strcmp(f, "..") == 0 || strncmp(f, "../", 3) == 0 ||
                         strstr(f, "/../") || (n >= 3 && strcmp(f + n - 3, "/..") == 0));
    }
    cJSON_Delete(idx);
    st_set *s = NULL;
    int rc = st_open_dir(fuzz_dir(), &s);
    FUZZ_CHECK(rc < 0 || !outside, "an index naming a file outside the directory opened");
    if (rc < 0)
        return 0;
    const st_tensor *x = st_find(s, "x"), *y = st_find(s, "y");
    float v[6];
    if (x) {
        FUZZ_CHECK(x->n_dim == 2 && x->shape[0] == 2 && x->shape[1] == 3 && x->bytes == 12,
                   "x has the wrong shape");
        st_to_f32(x, v, 6);
        FUZZ_CHECK(v[0] == 1 && v[5] == 6, "x has the wrong values");
    }
    if (y) {
        FUZZ_CHECK(y->n_dim == 1 && y->shape[0] == 3 && y->bytes == 6, "y has the wrong shape");
        st_to_f32(y, v, 3);
        FUZZ_CHECK(v[0] == 7 && v[2] == 9, "y has the wrong values");
    }
    st_close(s);
    return 0;
}

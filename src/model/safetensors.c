/* safetensors.c: safetensors reader (mmap) and writer.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F16", "shape": [..], "data_offsets": [b, e]}, ...,
 *    "__metadata__": {...}}
 * then the data; offsets are relative to the first byte after the header.
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "kern.h"
#include "off.h"
#include "model_config.h"

typedef struct st_file {
    char *path;
    void *map;
    size_t size;
} st_file;

struct st_set {
    st_file *files;
    int n_files;
    st_tensor *tensors;
    int n_tensors, cap_tensors;
};

static size_t dtype_size(st_dtype d) { return d == ST_F32 ? 4 : 2; }

/* Bounds of a tensor: 2^53 bytes, where doubles stop holding every integer. */
#define ST_MAX_BYTES ((size_t)1 << 53)

/* 1 when v is a number holding a whole value in [0, ST_MAX_BYTES]. */
static int whole(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 &&
           v->valuedouble <= (double)ST_MAX_BYTES && v->valuedouble == floor(v->valuedouble);
}

static int add_file(st_set *s, const char *path)
{
    int fd = open(path, O_RDONLY);
    RETURN_IF(fd < 0, -errno, "%s: cannot open (%s); check the model directory",
              path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        RETURN_IF(1, -errno, "%s: cannot stat (%s)", path, strerror(errno));
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        RETURN_IF(1, -EINVAL, "%s: truncated safetensors file (%zu bytes); "
                  "re-download it", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    RETURN_IF(map == MAP_FAILED, -errno, "%s: mmap failed (%s)", path, strerror(errno));
    st_file *nf = realloc(s->files, sizeof *nf * (size_t)(s->n_files + 1));
    if (!nf) {
        munmap(map, size);
        RETURN_IF(1, -ENOMEM, "out of memory");
    }
    s->files = nf;
    s->files[s->n_files++] = (st_file){strdup(path), map, size};

    const uint8_t *b = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | b[i];
    RETURN_IF(hlen > size - 8, -EINVAL,
              "%s: truncated safetensors file (header says %llu bytes, file has %zu); "
              "re-download it", path, (unsigned long long)hlen, size);
    cJSON *h = cJSON_ParseWithLength((const char *)b + 8, (size_t)hlen);
    if (!cJSON_IsObject(h)) {
        int parsed = h != NULL;
        cJSON_Delete(h); /* valid JSON of another kind (found by tests/fuzz/fuzz_safetensors.c) */
        RETURN_IF(1, -EINVAL, "%s: corrupt safetensors header (%s); re-download it", path,
                  parsed ? "not a JSON object" : "not JSON");
    }
    size_t data0 = 8 + (size_t)hlen, avail = size - data0;
    int rc = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, h) {
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) ||
            cJSON_GetArraySize(off) != 2 || cJSON_GetArraySize(sh) > 4) {
            err_set(__FILE__, __LINE__, "%s: tensor %s has a malformed header entry; "
                    "re-download the file", path, e->string);
            rc = -EINVAL;
            break;
        }
        st_tensor t = {0};
        if (strcmp(dt->valuestring, "F32") == 0)
            t.dtype = ST_F32;
        else if (strcmp(dt->valuestring, "F16") == 0)
            t.dtype = ST_F16;
        else if (strcmp(dt->valuestring, "BF16") == 0)
            t.dtype = ST_BF16;
        else {
            err_set(__FILE__, __LINE__, "%s: tensor %s has dtype %s; flexh2o reads "
                    "F32, F16 and BF16 (convert the checkpoint)", path, e->string,
                    dt->valuestring);
            rc = -EINVAL;
            break;
        }
        /* every dimension and offset a whole number in [0, 2^53] before any
         * cast (a negative or huge double converts to garbage, undefined),
         * and the element count without wrapping: [-1, -1] or [2^32, 2^32]
         * passed for 1 and 0 elements (found by tests/fuzz/fuzz_safetensors.c) */
        size_t n = 1;
        int ok = 1;
        t.n_dim = cJSON_GetArraySize(sh);
        for (int i = 0; i < t.n_dim && ok; i++) {
            ok = whole(cJSON_GetArrayItem(sh, i));
            t.shape[i] = ok ? (int64_t)cJSON_GetArrayItem(sh, i)->valuedouble : 0;
            ok = ok && (t.shape[i] == 0 || n <= ST_MAX_BYTES / 4 / (size_t)t.shape[i]);
            n *= (size_t)t.shape[i];
        }
        ok = ok && whole(cJSON_GetArrayItem(off, 0)) && whole(cJSON_GetArrayItem(off, 1));
        size_t beg = ok ? (size_t)cJSON_GetArrayItem(off, 0)->valuedouble : 0;
        size_t end = ok ? (size_t)cJSON_GetArrayItem(off, 1)->valuedouble : 0;
        if (!ok) {
            err_set(__FILE__, __LINE__, "%s: tensor %s: its shape or data_offsets are not "
                    "whole numbers from 0 to 2^53 (or the shape holds over 2^51 elements); "
                    "the file is corrupt, re-download it", path, e->string);
            rc = -EINVAL;
            break;
        }
        if (end < beg || end - beg != n * dtype_size(t.dtype)) {
            err_set(__FILE__, __LINE__, "%s: tensor %s: %zu bytes for %zu elements "
                    "of %s; the file is corrupt, re-download it", path, e->string,
                    end - beg, n, dt->valuestring);
            rc = -EINVAL;
            break;
        }
        if (end > avail) {
            err_set(__FILE__, __LINE__, "%s: truncated: tensor %s ends at byte %zu "
                    "but the file has %zu; re-download it", path, e->string,
                    data0 + end, size);
            rc = -EINVAL;
            break;
        }
        t.name = strdup(e->string);
        t.data = b + data0 + beg;
        t.bytes = end - beg;
        t.file = s->files[s->n_files - 1].path;
        if (s->n_tensors == s->cap_tensors) {
            int cap = s->cap_tensors ? 2 * s->cap_tensors : 64;
            st_tensor *nt = realloc(s->tensors, sizeof *nt * (size_t)cap);
            if (!nt) {
                free((char *)t.name);
                rc = -ENOMEM;
                break;
            }
            s->tensors = nt;
            s->cap_tensors = cap;
        }
        s->tensors[s->n_tensors++] = t;
    }
    cJSON_Delete(h);
    return rc;
}

int st_open_file(const char *path, st_set **out)
{
    st_set *s = calloc(1, sizeof *s);
    RETURN_IF(!s, -ENOMEM, "out of memory");
    int rc = add_file(s, path);
    if (rc < 0) {
        st_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int st_shard_name_ok(const char *name)
{
    /* a shard lives in the model directory: an index naming "/etc/x" or
     * "../x" would read any file the user can (found by reading, checked
     * by tests/fuzz/fuzz_st_index.c) */
    if (!name[0] || name[0] == '/')
        return 0;
    for (const char *c = name; *c;) {
        size_t k = strcspn(c, "/");
        if (k == 2 && c[0] == '.' && c[1] == '.')
            return 0;
        c += k + (c[k] == '/');
    }
    return 1;
}

int st_open_dir(const char *dir, st_set **out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (access(path, F_OK) == 0)
        return st_open_file(path, out);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    RETURN_IF(access(path, F_OK) != 0, -ENOENT,
              "%s: no model.safetensors or model.safetensors.index.json; "
              "convert the checkpoint to safetensors (pytorch_model.bin is not read)",
              dir);
    char *buf;
    size_t len;
    FORWARD_IF(off_read_file(path, &buf, &len));
    cJSON *idx = cJSON_ParseWithLength(buf, len);
    free(buf);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(idx);
        RETURN_IF(1, -EINVAL, "%s: no \"weight_map\" object; re-download the index", path);
    }
    st_set *s = calloc(1, sizeof *s);
    int rc = s ? 0 : -ENOMEM;
    /* each shard once, in order of first mention */
    char **seen = NULL;
    int n_seen = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (rc < 0)
            break;
        if (!cJSON_IsString(e)) {
            err_set(__FILE__, __LINE__, "%s: weight_map entry %s is not a file name",
                    path, e->string);
            rc = -EINVAL;
            break;
        }
        if (!st_shard_name_ok(e->valuestring)) {
            err_set(__FILE__, __LINE__, "%s: weight_map entry %s names the file \"%s\", "
                    "outside the model directory; the index is damaged or not this model's",
                    path, e->string, e->valuestring);
            rc = -EINVAL;
            break;
        }
        int dup = 0;
        for (int i = 0; i < n_seen && !dup; i++)
            dup = strcmp(seen[i], e->valuestring) == 0;
        if (dup)
            continue;
        char **ns = realloc(seen, sizeof *ns * (size_t)(n_seen + 1));
        if (!ns) {
            rc = -ENOMEM;
            break;
        }
        seen = ns;
        seen[n_seen++] = e->valuestring;
        char shard[4096];
        snprintf(shard, sizeof shard, "%s/%s", dir, e->valuestring);
        rc = add_file(s, shard);
    }
    free(seen);
    cJSON_Delete(idx);
    if (rc < 0) {
        st_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void st_close(st_set *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_tensors; i++)
        free((char *)s->tensors[i].name);
    for (int i = 0; i < s->n_files; i++) {
        munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    free(s->tensors);
    free(s->files);
    free(s);
}

const st_tensor *st_find(const st_set *s, const char *name)
{
    for (int i = 0; i < s->n_tensors; i++)
        if (strcmp(s->tensors[i].name, name) == 0)
            return &s->tensors[i];
    return NULL;
}

uint16_t st_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(x >> 16 | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

float st_bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

void st_to_f32(const st_tensor *t, float *dst, size_t n)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, p, n * 4);
        break;
    case ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = kern_f16_to_f32(h);
        }
        break;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = st_bf16_to_f32(h);
        }
        break;
    }
}

int st_write(const char *path, const st_out *tensors, int n, st_dtype dtype)
{
    static const char *names[] = {"F32", "F16", "BF16"};
    size_t es = dtype_size(dtype), off = 0;
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    for (int i = 0; i < n; i++) {
        size_t cnt = 1;
        cJSON *e = cJSON_AddObjectToObject(h, tensors[i].name);
        cJSON_AddStringToObject(e, "dtype", names[dtype]);
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < tensors[i].n_dim; d++) {
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)tensors[i].shape[d]));
            cnt *= (size_t)tensors[i].shape[d];
        }
        cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        off += cnt * es;
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
    }
    char *js = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    RETURN_IF(!js, -ENOMEM, "out of memory");
    size_t jl = strlen(js), pad = (8 - jl % 8) % 8; /* align data to 8 bytes */
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(js);
        RETURN_IF(1, -errno, "%s: cannot create (%s)", path, strerror(errno));
    }
    uint64_t hl = jl + pad;
    uint8_t hb[8];
    for (int i = 0; i < 8; i++)
        hb[i] = (uint8_t)(hl >> (8 * i));
    int ok = fwrite(hb, 1, 8, f) == 8 && fwrite(js, 1, jl, f) == jl &&
             fwrite("        ", 1, pad, f) == pad;
    free(js);
    for (int i = 0; i < n && ok; i++) {
        size_t cnt = 1;
        for (int d = 0; d < tensors[i].n_dim; d++)
            cnt *= (size_t)tensors[i].shape[d];
        if (dtype == ST_F32) {
            ok = fwrite(tensors[i].data, 4, cnt, f) == cnt;
            continue;
        }
        uint16_t buf[4096];
        for (size_t j = 0; j < cnt && ok; j += 4096) {
            size_t m = cnt - j < 4096 ? cnt - j : 4096;
            for (size_t k = 0; k < m; k++)
                buf[k] = dtype == ST_F16 ? kern_f32_to_f16(tensors[i].data[j + k])
                                         : st_f32_to_bf16(tensors[i].data[j + k]);
            ok = fwrite(buf, 2, m, f) == m;
        }
    }
    if (fclose(f) != 0)
        ok = 0;
    RETURN_IF(!ok, -EIO, "%s: write failed (%s); check free disk space", path,
              strerror(errno));
    return 0;
}

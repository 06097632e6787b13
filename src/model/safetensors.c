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
#include <stdint.h>
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

/* The byte range [*beg, *end) of tensor name in the data section (avail
 * bytes from file offset data0), from its data_offsets: two integers,
 * 0 <= beg <= end <= avail (checked as doubles, before any cast).
 * @return 0 or -EINVAL (message). */
static int data_range(const cJSON *off, const char *path, const char *name, size_t data0,
                      size_t avail, size_t *beg, size_t *end)
{
    const cJSON *b = cJSON_GetArrayItem(off, 0), *e = cJSON_GetArrayItem(off, 1);
    double db = cJSON_IsNumber(b) ? b->valuedouble : -1;
    double de = cJSON_IsNumber(e) ? e->valuedouble : -1;
    RETURN_IF(!(db >= 0 && de >= 0) || db != floor(db) || de != floor(de), -EINVAL,
              "%s: tensor %s has data_offsets [%.17g, %.17g]; they must be two byte offsets "
              "(whole numbers from 0); the file is corrupt, re-download it", path, name,
              cJSON_IsNumber(b) ? db : NAN, cJSON_IsNumber(e) ? de : NAN);
    RETURN_IF(db > de, -EINVAL, "%s: tensor %s has data_offsets [%.17g, %.17g]: the end is "
              "before the start; the file is corrupt, re-download it", path, name, db, de);
    RETURN_IF(de > (double)avail, -EINVAL,
              "%s: truncated: tensor %s ends at byte %.17g but the file has %zu; re-download "
              "it", path, name, (double)data0 + de, data0 + avail);
    *beg = (size_t)db;
    *end = (size_t)de;
    return 0;
}

/* The element count of shape sh (up to 4 dimensions, each a whole number
 * from 0; the product at most SIZE_MAX / 4) into *n and t->shape.
 * @return 0 or -EINVAL (message). */
static int tensor_shape(const cJSON *sh, const char *path, const char *name, st_tensor *t,
                        size_t *n)
{
    double count = 1;
    t->n_dim = cJSON_GetArraySize(sh);
    for (int i = 0; i < t->n_dim; i++) {
        const cJSON *v = cJSON_GetArrayItem(sh, i);
        double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
        count *= d;
        /* each dimension bounded too: a 0 elsewhere keeps the product small
         * while a dimension past int64_t would not survive the cast */
        RETURN_IF(!(d >= 0 && d <= (double)(SIZE_MAX / 8) && count <= (double)(SIZE_MAX / 8)) ||
                  d != floor(d), -EINVAL,
                  "%s: tensor %s has a bad shape (dimension %d is not a whole number or the "
                  "tensor is too large); the file is corrupt, re-download it", path, name, i);
        t->shape[i] = (int64_t)d;
    }
    *n = (size_t)count;
    return 0;
}

static int by_begin(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    return x->data < y->data ? -1 : x->data > y->data;
}

/* Tensors [first, n) of s (one file's): no two may share bytes. */
static int check_overlap(st_set *s, int first, const char *path)
{
    int n = s->n_tensors - first;
    if (n < 2)
        return 0; /* and s->tensors may be NULL: no pointer arithmetic on it */
    st_tensor *t = s->tensors + first;
    qsort(t, (size_t)n, sizeof *t, by_begin);
    for (int i = 1; i < n; i++)
        RETURN_IF((const char *)t[i - 1].data + t[i - 1].bytes > (const char *)t[i].data,
                  -EINVAL, "%s: tensors %s and %s overlap in the data section; the file is "
                  "corrupt, re-download it", path, t[i - 1].name, t[i].name);
    return 0;
}

/* Map the safetensors file at path and add its tensors to s. Every header
 * entry is checked against the file: a known dtype, a shape whose size is
 * the entry's byte range, the range inside the data section, no two
 * ranges overlapping. @return 0 or -errno (message). */
static int add_file(st_set *s, const char *path)
{
    int fd = open(path, O_RDONLY);
    RETURN_IF(fd < 0, -errno, "%s: cannot open (%s); check the model directory",
              path, strerror(errno));
    struct stat st;
    int bad = fstat(fd, &st) != 0 ? errno : S_ISREG(st.st_mode) ? 0 : EISDIR;
    if (bad) {
        close(fd);
        RETURN_IF(1, -bad, "%s: %s; it must be a safetensors file", path,
                  bad == EISDIR ? "not a regular file" : strerror(bad));
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
    char *owned = nf ? strdup(path) : NULL;
    if (nf)
        s->files = nf;
    if (!owned) {
        munmap(map, size);
        RETURN_IF(1, -ENOMEM, "out of memory opening %s", path);
    }
    s->files[s->n_files++] = (st_file){owned, map, size};

    const uint8_t *b = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | b[i];
    RETURN_IF(hlen > size - 8, -EINVAL,
              "%s: truncated safetensors file (header says %llu bytes, file has %zu); "
              "re-download it", path, (unsigned long long)hlen, size);
    cJSON *h = cJSON_ParseWithLength((const char *)b + 8, (size_t)hlen);
    if (!h || !cJSON_IsObject(h)) {
        cJSON_Delete(h);
        RETURN_IF(1, -EINVAL, "%s: corrupt safetensors header (not a JSON object); "
                  "re-download it", path);
    }
    size_t data0 = 8 + (size_t)hlen, avail = size - data0;
    int rc = 0, first = s->n_tensors;
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
        size_t n = 0, beg = 0, end = 0;
        rc = tensor_shape(sh, path, e->string, &t, &n);
        if (rc == 0)
            rc = data_range(off, path, e->string, data0, avail, &beg, &end);
        if (rc < 0)
            break;
        if (end - beg != n * dtype_size(t.dtype)) {
            err_set(__FILE__, __LINE__, "%s: tensor %s: %zu bytes for %zu elements "
                    "of %s; the file is corrupt, re-download it", path, e->string,
                    end - beg, n, dt->valuestring);
            rc = -EINVAL;
            break;
        }
        t.data = b + data0 + beg;
        t.bytes = end - beg;
        t.file = s->files[s->n_files - 1].path;
        if (s->n_tensors == s->cap_tensors) {
            int cap = s->cap_tensors ? 2 * s->cap_tensors : 64;
            st_tensor *nt = realloc(s->tensors, sizeof *nt * (size_t)cap);
            if (!nt) {
                err_set(__FILE__, __LINE__, "out of memory reading %s", path);
                rc = -ENOMEM;
                break;
            }
            s->tensors = nt;
            s->cap_tensors = cap;
        }
        t.name = strdup(e->string);
        if (!t.name) {
            err_set(__FILE__, __LINE__, "out of memory reading %s", path);
            rc = -ENOMEM;
            break;
        }
        s->tensors[s->n_tensors++] = t;
    }
    cJSON_Delete(h);
    FORWARD_IF(rc);
    return check_overlap(s, first, path);
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
    return name[0] && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

/* the files st_open_dir reads, in the order it tries them */
static const char *const st_dir_files[] = {"model.safetensors", "model.safetensors.index.json"};

int st_dir_has(const char *dir)
{
    char path[4096];
    for (size_t i = 0; i < sizeof st_dir_files / sizeof *st_dir_files; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, st_dir_files[i]);
        if (access(path, F_OK) == 0)
            return 1;
    }
    return 0;
}

int st_open_dir(const char *dir, st_set **out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, st_dir_files[0]);
    if (access(path, F_OK) == 0)
        return st_open_file(path, out);
    snprintf(path, sizeof path, "%s/%s", dir, st_dir_files[1]);
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
    if (rc < 0)
        err_set(__FILE__, __LINE__, "out of memory reading %s", path);
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
        /* a shard is a file of the model directory: a name like
         * "../../etc/passwd" or "/abs/path" would open another one */
        const char *sn = e->valuestring;
        if (!st_shard_name_ok(sn)) {
            err_set(__FILE__, __LINE__, "%s: weight_map gives tensor %s the shard \"%s\", "
                    "which is not a file name in %s; shards are plain file names (no '/'): "
                    "fix or re-download the index", path, e->string, sn, dir);
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
            err_set(__FILE__, __LINE__, "out of memory reading %s", path);
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

/* fuzz_store.c: a weight store (offload/store.c: the header's magic,
 * version, dtype, segment table and config; src/model/model_store.c: the
 * config it carries, its dtype, the segments a model of that config
 * needs), then every segment read, and, for a model of at most a million
 * parameters, the whole model loaded from it on the CPU backend
 * (model_load_store).
 *
 * The harness rewrites the checksums (each segment's xxh64 where it lies
 * inside the file, then the header's) so that a mutated header or payload
 * reaches the parsers behind them, not only the checksum test.
 *
 * Checked for any input: every segment of an accepted header lies inside
 * the file, padding included, and reads back with its checksum. */
#include <string.h>
#include <xxhash.h>

#include "backend.h"
#include "err.h"
#include "fuzz_common.h"
#include "model.h"
#include "off.h"

#define FIXED 24                        /* magic + version, dtype, n_seg, config length */
#define SEG (OFF_SEG_NAME + 24)         /* name, offset, length, xxh64 */

static backend be;

static int sink(void *ud, int layer, const void *blob, int wq, int fd, uint64_t off)
{
    (void)ud, (void)layer, (void)blob, (void)wq, (void)fd, (void)off;
    return 0;
}

static uint32_t u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t u64(const uint8_t *p)
{
    return u32(p) | (uint64_t)u32(p + 4) << 32;
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The checksums of f (size bytes) made right, where the fields say where
 * they are. */
static void fix_checksums(uint8_t *f, size_t size)
{
    if (size < FIXED)
        return;
    uint64_t n_seg = u32(f + 16), cfg = u32(f + 20);
    uint64_t hlen = FIXED + cfg + n_seg * SEG + 8;
    if (hlen > size)
        return;
    for (uint64_t i = 0; i < n_seg; i++) {
        uint8_t *e = f + FIXED + cfg + i * SEG;
        uint64_t off = u64(e + OFF_SEG_NAME), len = u64(e + OFF_SEG_NAME + 8);
        if (off <= size && len <= size - off)
            put64(e + OFF_SEG_NAME + 16, XXH64(f + off, (size_t)len, 0));
    }
    put64(f + hlen - 8, XXH64(f, (size_t)(hlen - 8), 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    if (!be.ops)
        FUZZ_CHECK(backend_cpu_create(1, &be) == 0, "%s", err_msg());
    uint8_t *f = malloc(size ? size : 1);
    FUZZ_CHECK(f != NULL, "out of memory");
    memcpy(f, data, size);
    fix_checksums(f, size);
    fuzz_write("model.flxh2o", f, size);
    free(f);
    char path[512];
    off_store s;
    if (off_store_open(fuzz_path(path, sizeof path, "model.flxh2o"), &s) < 0)
        return 0;
    for (int i = 0; i < s.n_seg; i++) {
        const off_seg *g = &s.seg[i];
        FUZZ_CHECK(g->offset % OFF_ALIGN == 0 && g->offset <= size &&
                       off_align_up(g->length) <= size - g->offset,
                   "segment %d (%s) at %llu + %llu outside a file of %zu bytes", i, g->name,
                   (unsigned long long)g->offset, (unsigned long long)g->length, size);
        FUZZ_CHECK(off_store_find(&s, g->name) <= i, "segment %s found past itself", g->name);
        void *buf = off_alloc_aligned((size_t)off_align_up(g->length) + OFF_ALIGN);
        FUZZ_CHECK(buf != NULL, "out of memory");
        FUZZ_CHECK(off_store_read_seg(&s, NULL, i, buf) == 0, "segment %d: %s", i, err_msg());
        free(buf);
    }
    off_store_close(&s);
    model_config c;
    uint32_t dtype;
    FUZZ_CHECK(model_store_dtype(fuzz_dir(), &dtype) == 1, "%s", err_msg());
    if (model_config_of(fuzz_dir(), &c) < 0 || model_config_params(&c) > 1000000)
        return 0;
    model *m = NULL;
    if (model_load_store(fuzz_dir(), &be, NULL, 0, 0, sink, NULL, &m) == 0)
        model_destroy(m);
    return 0;
}

/* test_store.c: the weight store file (offload/store.c): round trip of odd
 * segment lengths, aligned layout, and every kind of damage refused with a
 * message that names the file (and the segment) and says what to do. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "cli_harness.h"
#include "err.h"
#include "off.h"

static char scratch[64];
static char path[128];

static void setup(void)
{
    strcpy(scratch, "/tmp/fh_store_XXXXXX");
    cr_assert(mkdtemp(scratch), "mkdtemp in /tmp failed");
    snprintf(path, sizeof path, "%s/model.flxh2o", scratch);
    err_clear();
}

static void teardown(void) { scratch_remove(scratch); }

TestSuite(store, .init = setup, .fini = teardown);

#define N_SEG 5
static const char *names[N_SEG] = {"tok_embed", "layers.0.attn.qkv", "layers.0.ln.bias", "empty",
                                   "lm_head.weight.with.a.name.of.exactly.47.bytes_"};
/* the last name is 47 bytes: the longest that fits name[48] */
static const uint64_t lengths[N_SEG] = {10007, 3 * 4096, 1, 0, 5 * 1048576 + 3};
static const char *config = "{\"model_type\": \"opt\", \"hidden_size\": 16}";

static uint8_t *payload(int i)
{
    uint8_t *p = malloc(lengths[i] + 1);
    for (uint64_t k = 0; k < lengths[i]; k++)
        p[k] = (uint8_t)(k * 131 + (uint64_t)i * 17 + (k >> 9));
    return p;
}

/* Write the test store to path; payloads put in reverse order. */
static void write_store(void)
{
    off_store_writer *w;
    int rc = off_store_writer_open(path, OFF_DTYPE_F16, config, N_SEG, names, lengths, &w);
    cr_assert_eq(rc, 0, "%s", err_msg());
    for (int i = N_SEG - 1; i >= 0; i--) {
        uint8_t *p = payload(i);
        /* an unaligned source pointer: the writer copies through its own buffer */
        memmove(p + 1, p, lengths[i]);
        cr_assert_eq(off_store_writer_put(w, i, p + 1), 0, "%s", err_msg());
        free(p);
    }
    cr_assert_eq(access(path, F_OK), -1, "the store appeared before finish");
    cr_assert_eq(off_store_writer_finish(w), 0, "%s", err_msg());
}

static void read_all(off_store *s, off_disk *d)
{
    for (int i = 0; i < N_SEG; i++) {
        int k = off_store_find(s, names[i]);
        cr_assert_eq(k, i, "segment %s found at %d", names[i], k);
        uint8_t *buf = off_alloc_aligned(off_align_up(lengths[i]));
        cr_assert_eq(off_store_read_seg(s, d, k, buf), 0, "%s", err_msg());
        uint8_t *want = payload(i);
        cr_assert_eq(memcmp(buf, want, lengths[i]), 0, "segment %s differs", names[i]);
        for (uint64_t j = lengths[i]; j < off_align_up(lengths[i]); j++)
            cr_assert_eq(buf[j], 0, "segment %s: padding byte %llu not zero", names[i],
                         (unsigned long long)j);
        free(want);
        free(buf);
    }
}

Test(store, round_trip)
{
    write_store();
    cr_assert_eq(off_store_probe(path), 1);
    off_store s;
    cr_assert_eq(off_store_open(path, &s), 0, "%s", err_msg());
    cr_assert_eq(s.version, OFF_STORE_VERSION);
    cr_assert_eq(s.dtype, OFF_DTYPE_F16);
    cr_assert_str_eq(s.config_json, config);
    cr_assert_eq(s.n_seg, N_SEG);
    cr_assert_eq(off_store_find(&s, "no such tensor"), -1);

    /* Layout: header size aligned, segments in order, aligned and padded. */
    uint64_t hdr = off_align_up(8 + 16 + strlen(config) + N_SEG * (48 + 24) + 8);
    uint64_t at = hdr;
    for (int i = 0; i < N_SEG; i++) {
        cr_assert_str_eq(s.seg[i].name, names[i]);
        cr_assert_eq(s.seg[i].length, lengths[i]);
        cr_assert_eq(s.seg[i].offset % OFF_ALIGN, 0);
        cr_assert_eq(s.seg[i].offset, at, "segment %d at %llu, expected %llu", i,
                     (unsigned long long)s.seg[i].offset, (unsigned long long)at);
        at += off_align_up(lengths[i]);
        uint8_t *p = payload(i);
        cr_assert_eq(s.seg[i].xxh, XXH64(p, lengths[i], 0));
        free(p);
    }
    cr_assert_eq(s.file_size, at);

    read_all(&s, NULL); /* pread */
    off_disk *d;
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    read_all(&s, d); /* the disk engine */
    off_disk_destroy(d);
    off_store_close(&s);
    off_store_close(&s); /* twice: the struct is zeroed */

    /* The header bytes, little endian, as off.h documents them. */
    FILE *f = fopen(path, "rb");
    uint8_t h[32];
    cr_assert_eq(fread(h, 1, sizeof h, f), sizeof h);
    fclose(f);
    cr_assert_eq(memcmp(h, "FLXH2OST", 8), 0);
    cr_assert(h[8] == 1 && h[9] == 0 && h[10] == 0 && h[11] == 0, "version not LE u32 1");
    cr_assert(h[12] == OFF_DTYPE_F16 && h[16] == N_SEG && h[20] == strlen(config));
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cr_assert_neq(access(tmp, F_OK), 0, "%s left behind", tmp);
}

/* Overwrite n bytes at off in the store file. */
static void poke(uint64_t off, const void *bytes, size_t n)
{
    int fd = open(path, O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, bytes, n, (off_t)off), (ssize_t)n);
    close(fd);
}

Test(store, corrupt_segment_named)
{
    write_store();
    off_store s;
    cr_assert_eq(off_store_open(path, &s), 0, "%s", err_msg());
    int k = off_store_find(&s, "layers.0.attn.qkv");
    uint64_t off = s.seg[k].offset + 5000;
    off_store_close(&s);
    uint8_t b;
    int fd = open(path, O_RDONLY);
    cr_assert_eq(pread(fd, &b, 1, (off_t)off), 1);
    close(fd);
    b ^= 0x10;
    poke(off, &b, 1);

    cr_assert_eq(off_store_open(path, &s), 0, "payload damage must not fail open: %s",
                 err_msg());
    uint8_t *buf = off_alloc_aligned(5 * 1048576 + 4096);
    /* the other segments still read */
    cr_assert_eq(off_store_read_seg(&s, NULL, off_store_find(&s, "tok_embed"), buf), 0, "%s",
                 err_msg());
    off_disk *d;
    cr_assert_eq(off_disk_create(32, &d), 0, "%s", err_msg());
    for (int pass = 0; pass < 2; pass++) {
        err_clear();
        int rc = off_store_read_seg(&s, pass ? d : NULL, k, buf);
        cr_assert_lt(rc, 0, "a flipped byte was not noticed");
        const char *m = err_msg();
        cr_assert(strstr(m, path) && strstr(m, "segment layers.0.attn.qkv is corrupt") &&
                      strstr(m, "flexh2o convert"),
                  "unclear message: %s", m);
    }
    off_disk_destroy(d);
    free(buf);
    off_store_close(&s);
}

Test(store, corrupt_header_refused)
{
    write_store();
    uint8_t x = 'X';
    poke(8 + 16 + 3, &x, 1); /* inside the config text */
    off_store s;
    cr_assert_lt(off_store_open(path, &s), 0);
    cr_assert(strstr(err_msg(), path) && strstr(err_msg(), "header is corrupt") &&
                  strstr(err_msg(), "flexh2o convert"),
              "unclear message: %s", err_msg());
    cr_assert_null(s.path, "a failed open left state behind");
    off_store_close(&s);
}

Test(store, bad_magic_and_versions)
{
    write_store();
    off_store s;
    uint8_t v[4] = {2, 0, 0, 0};
    poke(8, v, 4);
    cr_assert_eq(off_store_open(path, &s), -EPROTONOSUPPORT);
    cr_assert(strstr(err_msg(), "made by a newer flexh2o"), "%s", err_msg());
    err_clear();
    v[0] = 0;
    poke(8, v, 4);
    cr_assert_lt(off_store_open(path, &s), 0);
    cr_assert(strstr(err_msg(), "unknown version"), "%s", err_msg());
    err_clear();
    poke(0, "NOTASTOR", 8);
    cr_assert_lt(off_store_open(path, &s), 0);
    cr_assert(strstr(err_msg(), "not a flexh2o weight store"), "%s", err_msg());
    cr_assert_eq(off_store_probe(path), 0);
}

Test(store, truncated_refused)
{
    write_store();
    off_store s;
    cr_assert_eq(off_store_open(path, &s), 0, "%s", err_msg());
    uint64_t size = s.file_size;
    off_store_close(&s);
    cr_assert_eq(truncate(path, (off_t)(size - 4096)), 0);
    cr_assert_lt(off_store_open(path, &s), 0, "a truncated store was accepted");
    cr_assert(strstr(err_msg(), path) && strstr(err_msg(), "truncated") &&
                  strstr(err_msg(), "lm_head") && strstr(err_msg(), "flexh2o convert"),
              "unclear message: %s", err_msg());
    err_clear();
    cr_assert_eq(truncate(path, 100), 0); /* not even the header */
    cr_assert_lt(off_store_open(path, &s), 0);
    cr_assert(strstr(err_msg(), "flexh2o convert"), "unclear message: %s", err_msg());
    err_clear();
    cr_assert_eq(truncate(path, 0), 0);
    cr_assert_lt(off_store_open(path, &s), 0);
    cr_assert(strstr(err_msg(), "not a flexh2o weight store"), "%s", err_msg());
}

Test(store, probe)
{
    cr_assert_eq(off_store_probe(scratch), 0, "a directory is not a store");
    cr_assert_eq(off_store_probe("/nonexistent/x"), 0);
    char json[160];
    snprintf(json, sizeof json, "%s/config.json", scratch);
    FILE *f = fopen(json, "wb");
    fputs("{\"not\": \"a store\"}", f);
    fclose(f);
    cr_assert_eq(off_store_probe(json), 0);
    cr_assert_eq(off_store_probe(path), 0, "no file yet");
    write_store();
    cr_assert_eq(off_store_probe(path), 1);
    off_store s;
    cr_assert_lt(off_store_open(scratch, &s), 0);
}

Test(store, aborted_writer_leaves_nothing)
{
    off_store_writer *w;
    cr_assert_eq(off_store_writer_open(path, OFF_DTYPE_F32, config, N_SEG, names, lengths, &w),
                 0, "%s", err_msg());
    uint8_t *p = payload(0);
    cr_assert_eq(off_store_writer_put(w, 0, p), 0, "%s", err_msg());
    free(p);
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cr_assert_eq(access(tmp, F_OK), 0, "the writer does not write %s", tmp);
    off_store_writer_abort(w);
    off_store_writer_abort(NULL);
    cr_assert_neq(access(path, F_OK), 0);
    cr_assert_neq(access(tmp, F_OK), 0, "abort left %s", tmp);

    /* finish with a segment missing fails, and also leaves nothing */
    cr_assert_eq(off_store_writer_open(path, OFF_DTYPE_F32, config, N_SEG, names, lengths, &w),
                 0, "%s", err_msg());
    cr_assert_lt(off_store_writer_finish(w), 0);
    cr_assert(strstr(err_msg(), "tok_embed"), "%s", err_msg());
    cr_assert_neq(access(path, F_OK), 0);
    cr_assert_neq(access(tmp, F_OK), 0);
}

Test(store, long_name_refused)
{
    const char *bad[1] = {"a.segment.name.that.is.far.too.long.for.the.48.byte.field"};
    uint64_t len[1] = {1};
    off_store_writer *w = NULL;
    cr_assert_eq(off_store_writer_open(path, OFF_DTYPE_F32, "", 1, bad, len, &w), -ENAMETOOLONG);
    cr_assert_null(w);
    cr_assert(strstr(err_msg(), "longer than 47 bytes"), "%s", err_msg());
}

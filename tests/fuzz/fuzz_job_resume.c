/* fuzz_job_resume.c: --resume over an existing completions file of any
 * content (job_out_open with resume: job_file_good_end finds the end of
 * the last complete record, plain or zstd (src/gen/job_file.c), the ids of
 * the records before it are read, the torn rest is cut), then a record
 * appended and the file resumed again.
 *
 * Input: one byte of options, then the file's content. Options, bits 0-1:
 * 0 a plain file; 1 a .zst file of exactly these bytes (left out when they
 * decode to more than 256 KiB); 2 (and 3) a .zst file the harness writes,
 * each part of the content (split at 0x1e) its own zstd frame with its
 * checksum, so that mutated lines get past the frames to the record
 * parser; bits 2-5 cut that many bytes off the end of the last frame (a
 * torn write).
 *
 * Checked for any input: after a resume, a record appended is found by
 * the next resume, with every id the first one found. */
#include <string.h>
#include <zstd.h>

#include "err.h"
#include "fuzz_common.h"
#include "job.h"

#define NEW_ID "\"fuzz-appended-record\""

static void write_frames(const char *name, const uint8_t *data, size_t size, size_t cut)
{
    fuzz_part p[16];
    size_t n = fuzz_split(data, size, 0x1e, p, 16);
    size_t cap = ZSTD_compressBound(size) + 64 * n;
    uint8_t *z = malloc(cap);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    FUZZ_CHECK(z && cc, "out of memory");
    ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = ZSTD_compress2(cc, z + at, cap - at, p[i].data, p[i].len);
        FUZZ_CHECK(!ZSTD_isError(k), "%s", ZSTD_getErrorName(k));
        at += k;
    }
    fuzz_write(name, z, at > cut ? at - cut : 0);
    ZSTD_freeCCtx(cc);
    free(z);
}

/* Bytes that zstd data decodes to, counted up to `cap` (then cap + 1);
 * damaged data counts what decoded before the damage. */
static size_t zst_decoded(const uint8_t *z, size_t size, size_t cap)
{
    static char sink[1 << 16];
    ZSTD_DCtx *d = ZSTD_createDCtx();
    FUZZ_CHECK(d != NULL, "out of memory");
    ZSTD_inBuffer in = {z, size, 0};
    size_t total = 0;
    while (total <= cap) {
        ZSTD_outBuffer out = {sink, sizeof sink, 0};
        size_t r = ZSTD_decompressStream(d, &out, &in);
        total += out.pos;
        if (ZSTD_isError(r) || (in.pos == in.size && out.pos < out.size))
            break;
    }
    ZSTD_freeDCtx(d);
    return total;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    if (size < 1)
        return 0;
    unsigned mode = data[0] & 3, cut = (data[0] >> 2) & 15;
    /* a few hundred bytes of zstd can decode to megabytes of newlines, which
     * a resume reads line by line (four passes here): about a second an
     * input, a hundredth of the fuzzer's rate, for no line the small files
     * lack. Those decoding past 256 KiB are left out: past the reader's
     * buffers (zstd's 128 KiB out, 64 KiB plain in), so their refills stay
     * covered (at 1 MiB the fuzzer ran 424 exec/s from session 19's corpus,
     * at 256 KiB 779, same seed, same minute) */
    if (mode == 1 && zst_decoded(data + 1, size - 1, (size_t)1 << 18) > ((size_t)1 << 18))
        return 0;
    const char *name = mode ? "out.jsonl.zst" : "out.jsonl";
    if (mode >= 2)
        write_frames(name, data + 1, size - 1, cut);
    else
        fuzz_write(name, data + 1, size - 1);
    char path[512];
    fuzz_path(path, sizeof path, name);
    job_out o;
    if (job_out_open(path, 1, &o) < 0)
        return 0;
    /* the ids found, to look for after the second resume */
    int n0 = o.done.n, had = job_out_has(&o, NEW_ID);
    char **ids = calloc((size_t)n0 + 1, sizeof *ids);
    FUZZ_CHECK(ids != NULL, "out of memory");
    int k = 0;
    for (size_t i = 0; i <= o.done.mask; i++)
        if (o.done.slot && o.done.slot[i])
            ids[k++] = o.done.slot[i];
    FUZZ_CHECK(k == n0, "%d ids in a set of %d", k, n0);
    int32_t tok = 5;
    float lp = -1.0f;
    FUZZ_CHECK(job_out_write(&o, NEW_ID, "appended", 8, &tok, &lp, 1, "length") == 0, "%s",
               err_msg());
    job_out second;
    /* the first stays open (its ids alive) until the second has read the file */
    FUZZ_CHECK(job_file_flush(o.f) == 0, "flush");
    FUZZ_CHECK(job_out_open(path, 1, &second) == 0, "resuming after an append: %s",
               err_msg());
    FUZZ_CHECK(second.done.n == n0 + !had, "%d ids after the append, %d before",
               second.done.n, n0);
    FUZZ_CHECK(job_out_has(&second, NEW_ID), "the appended record is lost");
    for (int i = 0; i < n0; i++)
        FUZZ_CHECK(job_out_has(&second, ids[i]), "id %s lost", ids[i]);
    job_out_close(&second);
    job_out_close(&o);
    free(ids);
    return 0;
}

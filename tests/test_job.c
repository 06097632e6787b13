/* test_job.c: the job files (src/gen/job.c, job_file.c) on their own:
 * UTF-8 sanitising of completions, the completions file's resume set (many
 * ids, string and number ids kept apart, torn last line, duplicates), and
 * .zst files: any framing read, the torn tail found, a torn frame cut on
 * resume, damaged files refused with one line. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "job.h"
#include "job_file.h"
#include "off.h"

#define FFFD "\xef\xbf\xbd"

TestSuite(job, .init = cli_setup, .fini = cli_teardown);

Test(job, utf8_sanitize_replaces_each_bad_byte)
{
    static const struct {
        const char *in;
        size_t len;
        const char *out;
    } cases[] = {
        {"", 0, ""},
        {"a\xc3\xa9\xe4\xb8\xad\xf0\x9f\xa6\x80", 10, "a\xc3\xa9\xe4\xb8\xad\xf0\x9f\xa6\x80"},
        {"\xef\xbf\xbf\xf4\x8f\xbf\xbf", 7, "\xef\xbf\xbf\xf4\x8f\xbf\xbf"}, /* U+FFFF, U+10FFFF */
        {"\xc0\x80", 2, FFFD FFFD},                  /* overlong NUL */
        {"\xc1\xbfx", 3, FFFD FFFD "x"},             /* overlong U+007F */
        {"\xe0\x80\xaf", 3, FFFD FFFD FFFD},         /* overlong '/' */
        {"\xf0\x8f\xbf\xbf", 4, FFFD FFFD FFFD FFFD}, /* overlong U+FFFF */
        {"\xed\xa0\x80", 3, FFFD FFFD FFFD},         /* surrogate U+D800 */
        {"a\xed\xbf\xbf" "b", 5, "a" FFFD FFFD FFFD "b"}, /* surrogate U+DFFF */
        {"\xf4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD}, /* U+110000 */
        {"\xf5\x80\x80\x80", 4, FFFD FFFD FFFD FFFD}, /* lead byte past U+10FFFF */
        {"ab\xe4\xb8", 4, "ab" FFFD FFFD},           /* cut at the end (length limit) */
        {"ab\xf0\x9f\xa6", 5, "ab" FFFD FFFD FFFD},
        {"\xe4\xb8x\xc3\xa9", 5, FFFD FFFD "x\xc3\xa9"}, /* cut mid-text, then valid */
        {"a\x80z", 3, "a" FFFD "z"},                 /* stray continuation */
        {"\xff\xfe", 2, FFFD FFFD},
        {"a\0b", 3, "a" FFFD "b"},                   /* NUL cannot travel in a C string */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = 12345;
        char *s = job_utf8_sanitize(cases[i].in, cases[i].len, &n);
        cr_assert_not_null(s);
        cr_assert_str_eq(s, cases[i].out, "case %zu", i);
        cr_assert_eq(n, strlen(cases[i].out), "case %zu: length %zu", i, n);
        free(s);
    }
    char *s = job_utf8_sanitize("ok", 2, NULL);
    cr_assert_str_eq(s, "ok");
    free(s);
}

/* id i as compact JSON: strings and numbers alternate ("\"p0\"", "1", ...) */
static const char *id_of(int i, char *buf)
{
    if (i % 2)
        sprintf(buf, "%d", i);
    else
        sprintf(buf, "\"p%d\"", i);
    return buf;
}

Test(job, resume_set_of_many_ids)
{
    enum { N = 20000 };
    char path[512], id[32];
    snprintf(path, sizeof path, "%s/o.jsonl", cli_dir);
    job_out o;
    cr_assert_eq(job_out_open(path, 0, &o), 0, "%s", err_msg());
    int32_t tok = 5;
    float lp = -1.0f;
    for (int i = 0; i < N; i++)
        cr_assert_eq(job_out_write(&o, id_of(i, id), "x", 1, &tok, &lp, 1, "length"), 0,
                     "%s", err_msg());
    cr_assert_eq(job_out_close(&o), 0, "%s", err_msg());
    /* a duplicate record and a torn last line, as a killed rerun could leave */
    FILE *f = fopen(path, "a");
    cr_assert(f);
    fputs("{\"id\":\"p0\",\"completion\":\"\",\"tokens\":[],\"logprobs\":[],"
          "\"finish_reason\":\"length\"}\n{\"id\":\"torn\",\"compl", f);
    fclose(f);

    cr_assert_eq(job_out_open(path, 1, &o), 0, "%s", err_msg());
    cr_assert_eq(o.done.n, N);
    for (int i = 0; i < N; i++)
        cr_assert(job_out_has(&o, id_of(i, id)), "%s was not read back", id);
    /* absent: past the end, the other kind of id, the torn record */
    const char *absent[] = {"\"p20000\"", "20001", "\"p1\"", "2", "\"1\"", "\"torn\"",
                            "\"\"", "null"};
    for (size_t i = 0; i < sizeof absent / sizeof *absent; i++)
        cr_assert(!job_out_has(&o, absent[i]), "%s is not in the file", absent[i]);
    /* a record written now is in the set too */
    cr_assert_eq(job_out_write(&o, "\"new\"", "y", 1, &tok, &lp, 1, "eos"), 0, "%s", err_msg());
    cr_assert(job_out_has(&o, "\"new\"") && o.done.n == N + 1);
    cr_assert_eq(job_out_close(&o), 0, "%s", err_msg());

    /* an empty set answers no */
    job_out e;
    snprintf(path, sizeof path, "%s/none.jsonl", cli_dir);
    cr_assert_eq(job_out_open(path, 1, &e), 0, "%s", err_msg());
    cr_assert(!job_out_has(&e, "\"p0\"") && e.done.n == 0);
    cr_assert_eq(job_out_close(&e), 0, "%s", err_msg());
}

/* ------------------------------------------------- .zst job files */

/* Every line of cli_dir/name through the job_file reader, concatenated;
 * ends[i] (the caller's, room for max) gets line i's record end. @return
 * the text (the caller frees); *n the lines read. */
static char *read_lines(const char *name, int64_t *ends, int max, int *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    job_file_rd *r;
    cr_assert_eq(job_file_rd_open(path, "test file", -1, &r), 0, "%s", err_msg());
    size_t cap = 1 << 16, len = 0;
    char *all = malloc(cap), *line;
    ssize_t k;
    int64_t end;
    *n = 0;
    while ((k = job_file_rd_line(r, &line, &end)) > 0) {
        cr_assert_eq((size_t)k, strlen(line), "%s: the line holds a NUL", name);
        while (len + (size_t)k + 1 > cap)
            all = realloc(all, cap *= 2);
        memcpy(all + len, line, (size_t)k);
        len += (size_t)k;
        cr_assert_lt(*n, max);
        ends[(*n)++] = end;
    }
    cr_assert_eq(k, 0, "%s: %s", name, err_msg());
    job_file_rd_close(r);
    all[len] = 0;
    return all;
}

static long file_size(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s", path);
    return (long)st.st_size;
}

/* The same lines come out of a plain file, a .zst of one frame, of frames
 * cut anywhere (mid-line, several lines each, a frame per byte) and of a
 * frame per line; a line's record ends where its frame does when the
 * frame ends right after its '\n', and nowhere (-1) otherwise. One line is
 * longer than the reader's buffers (ZSTD_DStreamOutSize). */
Test(job, zst_reader_reads_any_framing)
{
    enum { LONG = 300000 };
    char *text = malloc(LONG + 256);
    strcpy(text, "{\"id\": 1}\n\n{\"id\": \"two\", \"prompt\": \"");
    size_t at = strlen(text);
    for (int i = 0; i < LONG; i++)
        text[at++] = (char)('a' + i % 26);
    strcpy(text + at, "\"}\nshort\nno newline at the end");
    int64_t ends[16];
    int n;

    cli_write("t.jsonl", text);
    char *got = read_lines("t.jsonl", ends, 16, &n);
    cr_assert_str_eq(got, text);
    cr_assert_eq(n, 5);
    cr_assert(ends[0] == 10 && ends[1] == 11 && ends[4] == -1, "plain record ends");
    free(got);

    static const size_t chunks[] = {0, 1, 7, 4096, 200000};
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
        cli_write_zst("t.jsonl.zst", text, chunks[c]);
        got = read_lines("t.jsonl.zst", ends, 16, &n);
        cr_assert_str_eq(got, text, "frames of %zu bytes", chunks[c]);
        cr_assert_eq(n, 5, "frames of %zu bytes", chunks[c]);
        cr_assert_eq(ends[4], -1, "a last line without '\\n' ends no record");
        free(got);
        int frames;
        long *fe;
        free(cli_read_zst("t.jsonl.zst", &frames, &fe));
        /* which frame end follows each '\n' right away */
        size_t off = 0;
        for (int i = 0; i < 4; i++) {
            off += strcspn(text + off, "\n") + 1;
            size_t chunk = chunks[c] ? chunks[c] : strlen(text);
            int64_t want = off % chunk == 0 ? fe[off / chunk - 1] : -1;
            cr_assert_eq(ends[i], want, "frames of %zu bytes, line %d", chunks[c], i);
        }
        free(fe);
    }

    /* a frame per line, from the writer: every line ends its record */
    char path[512];
    snprintf(path, sizeof path, "%s/w.jsonl.zst", cli_dir);
    job_file_wr *w;
    cr_assert_eq(job_file_wr_open(path, "wbx", &w), 0, "%s", err_msg());
    cr_assert_eq(job_file_write(w, "first\n", 6), 0);
    cr_assert_eq(job_file_flush(w), 0);
    cr_assert_eq(job_file_printf(w, "%s %d\n", "second", 2), 0);
    cr_assert_eq(job_file_write(w, "third, same record\n", 19), 0);
    cr_assert_eq(job_file_flush(w), 0);
    cr_assert_eq(job_file_write(w, text, strlen(text)), 0); /* a long one */
    cr_assert_eq(job_file_write(w, "\n", 1), 0);
    cr_assert_eq(job_file_wr_close(w), 0); /* ends the pending record */
    cr_assert_eq(job_file_wr_open(path, "wbx", &w), -EEXIST);
    cr_assert_null(w);
    err_clear();
    int frames;
    long *fe;
    got = cli_read_zst("w.jsonl.zst", &frames, &fe);
    cr_assert_eq(frames, 3);
    cr_assert_eq(strncmp(got, "first\nsecond 2\nthird, same record\n", 34), 0, "%s", got);
    free(got);
    got = read_lines("w.jsonl.zst", ends, 16, &n);
    cr_assert_eq(n, 8);
    cr_assert(ends[0] == fe[0] && ends[1] == -1 && ends[2] == fe[1] && ends[3] == -1 &&
              ends[6] == -1 && ends[7] == fe[2] && fe[2] == file_size("w.jsonl.zst"),
              "record ends %lld %lld %lld", (long long)ends[0], (long long)ends[2],
              (long long)ends[7]);
    free(got);
    free(fe);
    free(text);
}

/* Append bytes to cli_dir/name. */
static void append_bytes(const char *name, const void *b, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    FILE *f = fopen(path, "ab");
    cr_assert(f);
    cr_assert_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

static int64_t good_end(const char *name, int *rc)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    int64_t e = -7;
    *rc = job_file_good_end(path, &e);
    return e;
}

/* The end of the last complete record: a truncated frame, garbage or
 * zeros after the last frame, and a frame whose content does not end in
 * '\n' are torn; a file that is not zstd at all is refused, not cut. */
Test(job, zst_good_end_finds_the_torn_tail)
{
    int rc;
    cli_write("p.jsonl", "a\nb\nc");
    cr_assert(good_end("p.jsonl", &rc) == 4 && rc == 0);
    cli_write("p.jsonl", "");
    cr_assert(good_end("p.jsonl", &rc) == 0 && rc == 0);

    char path[512];
    snprintf(path, sizeof path, "%s/o.jsonl.zst", cli_dir);
    job_file_wr *w;
    cr_assert_eq(job_file_wr_open(path, "wb", &w), 0, "%s", err_msg());
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(job_file_printf(w, "{\"id\": %d, \"text\": \"record %d\"}\n", i, i), 0);
        cr_assert_eq(job_file_flush(w), 0);
    }
    cr_assert_eq(job_file_wr_close(w), 0);
    char *raw;
    size_t len;
    cr_assert_eq(off_read_file(path, &raw, &len), 0);
    int frames;
    long *fe;
    free(cli_read_zst("o.jsonl.zst", &frames, &fe));
    cr_assert_eq(frames, 3);
    cr_assert(good_end("o.jsonl.zst", &rc) == (int64_t)len && rc == 0);

    static const struct {
        const char *what;
        size_t keep;      /* bytes of the intact file kept (0: all) */
        const char *tail; /* then appended */
        size_t tail_len;
    } torn[] = {
        {"cut in the last frame", 1, "", 0},
        {"cut in the last frame's header", 2, "", 0},
        {"cut in the last frame's checksum", 3, "", 0},
        {"garbage after the last frame", 0, "garbage!", 8},
        {"three bytes after the last frame", 0, "xyz", 3},
        {"zeros after the last frame", 0, "\0\0\0\0\0\0\0\0\0\0\0\0", 12},
        {"a new frame's magic, then nothing", 0, "\x28\xb5\x2f\xfd", 4},
    };
    for (size_t i = 0; i < sizeof torn / sizeof *torn; i++) {
        /* keep 1: half of frame 3; 2: frame 3's first 5 bytes; 3: all
         * but its last 2 */
        size_t keep = torn[i].keep == 1 ? (size_t)(fe[1] + fe[2]) / 2
                      : torn[i].keep == 2 ? (size_t)fe[1] + 5
                      : torn[i].keep == 3 ? len - 2 : len;
        FILE *f = fopen(path, "wb");
        fwrite(raw, 1, keep, f);
        fwrite(torn[i].tail, 1, torn[i].tail_len, f);
        fclose(f);
        int64_t want = keep < len ? fe[1] : (int64_t)len;
        int64_t got = good_end("o.jsonl.zst", &rc);
        cr_assert(got == want && rc == 0, "%s: good end %lld, not %lld (rc %d: %s)",
                  torn[i].what, (long long)got, (long long)want, rc, err_msg());
    }
    /* a frame without a final '\n' */
    FILE *f = fopen(path, "wb");
    fwrite(raw, 1, len, f);
    fclose(f);
    char z[64];
    size_t zn = ZSTD_compress(z, sizeof z, "{\"id\": 9", 8, 3);
    append_bytes("o.jsonl.zst", z, zn);
    cr_assert(good_end("o.jsonl.zst", &rc) == (int64_t)len && rc == 0);
    /* an empty file holds no record, and nothing torn */
    cli_write("e.jsonl.zst", "");
    cr_assert(good_end("e.jsonl.zst", &rc) == 0 && rc == 0);
    /* plain text named .zst: refused with a message, never cut */
    cli_write("plain.jsonl.zst", "{\"id\": 1}\n");
    good_end("plain.jsonl.zst", &rc);
    cr_assert_eq(rc, -EILSEQ);
    cr_assert(strstr(err_msg(), "plain.jsonl.zst: not a zstd file") &&
              !strchr(err_msg(), '\n'), "%s", err_msg());
    err_clear();
    free(raw);
    free(fe);
}

static char logged[1024];
static void keep_log(const char *msg, void *ud)
{
    (void)ud;
    snprintf(logged, sizeof logged, "%s", msg);
}

/* Resume over a .zst completions file torn by a kill: the torn frame is
 * cut with the plain file's message, the ids before it are read, and the
 * records written on are frames that continue the file. A plain file
 * still resumes as before (resume_set_of_many_ids). */
Test(job, zst_resume_cuts_a_torn_frame)
{
    enum { N = 300 };
    char path[512], id[32];
    snprintf(path, sizeof path, "%s/o.jsonl.zst", cli_dir);
    job_out o;
    int32_t tok = 5;
    float lp = -1.0f;
    cr_assert_eq(job_out_open(path, 0, &o), 0, "%s", err_msg());
    for (int i = 0; i < N; i++)
        cr_assert_eq(job_out_write(&o, id_of(i, id), "x", 1, &tok, &lp, 1, "length"), 0,
                     "%s", err_msg());
    cr_assert_eq(job_out_close(&o), 0, "%s", err_msg());
    int frames;
    long *fe;
    char *full = cli_read_zst("o.jsonl.zst", &frames, &fe);
    cr_assert_eq(frames, N, "one frame per record");
    /* killed while writing record N-1: half of its frame is there */
    cr_assert_eq(truncate(path, (fe[N - 2] + fe[N - 1]) / 2), 0);
    err_set_log(keep_log, NULL);
    cr_assert_eq(job_out_open(path, 1, &o), 0, "%s", err_msg());
    err_set_log(NULL, NULL);
    char want[256];
    snprintf(want, sizeof want, "o.jsonl.zst: dropping a torn last record (%ld bytes)",
             (fe[N - 1] - fe[N - 2]) / 2);
    cr_assert(strstr(logged, want), "%s", logged);
    cr_assert_eq(o.done.n, N - 1);
    cr_assert(!job_out_has(&o, id_of(N - 1, id)) && job_out_has(&o, id_of(N - 2, id)));
    cr_assert_eq(file_size("o.jsonl.zst"), fe[N - 2]);
    cr_assert_eq(job_out_write(&o, id_of(N - 1, id), "x", 1, &tok, &lp, 1, "length"), 0);
    cr_assert_eq(job_out_close(&o), 0, "%s", err_msg());
    char *again = cli_read_zst("o.jsonl.zst", &frames, NULL);
    cr_assert_str_eq(again, full);
    cr_assert_eq(frames, N);
    free(again);
    /* not a completions file: refused, the file untouched */
    cli_write("x.jsonl.zst", "{\"id\": 1}\n");
    snprintf(path, sizeof path, "%s/x.jsonl.zst", cli_dir);
    cr_assert_eq(job_out_open(path, 1, &o), -EILSEQ);
    cr_assert(strstr(err_msg(), "x.jsonl.zst: not a zstd file"), "%s", err_msg());
    cr_assert_eq(file_size("x.jsonl.zst"), 10);
    err_clear();
    free(full);
    free(fe);
}

/* A .zst prompt file reads as its plain text does, whatever its framing;
 * a damaged one is one line of error naming the file and what to do. */
Test(job, zst_prompt_files)
{
    static const char text[] = "{\"id\": \"a\", \"prompt_ids\": [2, 5, 6]}\n"
                               "\n"
                               "{\"prompt_ids\": [2, 9], \"max_new_tokens\": 3}\n"
                               "{\"id\": 4, \"prompt_ids\": [1]}";
    char path[512];
    job_prompts plain, z;
    job_load_opts lo = {.bos = -1, .vocab = 100, .max_len = 50, .strict = 1, .chat_template = -1};
    cli_write("p.jsonl", text);
    snprintf(path, sizeof path, "%s/p.jsonl", cli_dir);
    cr_assert_eq(job_prompts_load(path, &lo, &plain), 0, "%s", err_msg());
    cr_assert_eq(plain.n, 3);
    snprintf(path, sizeof path, "%s/p.jsonl.zst", cli_dir);
    static const size_t chunks[] = {0, 5, 40};
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
        cli_write_zst("p.jsonl.zst", text, chunks[c]);
        cr_assert_eq(job_prompts_load(path, &lo, &z), 0, "%s", err_msg());
        cr_assert_eq(z.n, plain.n);
        for (int i = 0; i < z.n; i++) {
            cr_assert_str_eq(z.p[i].id, plain.p[i].id);
            cr_assert_eq(z.p[i].line, plain.p[i].line);
            cr_assert_eq(z.p[i].max_new, plain.p[i].max_new);
            cr_assert_eq(z.p[i].n_ids, plain.p[i].n_ids);
            cr_assert_arr_eq(z.p[i].ids, plain.p[i].ids, sizeof(int32_t) * (size_t)z.p[i].n_ids);
        }
        job_prompts_free(&z);
    }
    job_prompts_free(&plain);

    /* plain text named .zst, and a truncated .zst */
    cli_write("p.jsonl.zst", text);
    cr_assert_eq(job_prompts_load(path, &lo, &z), -EILSEQ);
    cr_assert(strstr(err_msg(), "p.jsonl.zst: not a zstd file (or corrupt at byte 0); ") &&
              strstr(err_msg(), "drop .zst") && !strchr(err_msg(), '\n'), "%s", err_msg());
    cr_assert_eq(z.n, 0);
    err_clear();
    cli_write_zst("p.jsonl.zst", text, 40);
    cr_assert_eq(truncate(path, file_size("p.jsonl.zst") - 3), 0);
    cr_assert_eq(job_prompts_load(path, &lo, &z), -EBADMSG);
    cr_assert(strstr(err_msg(), "p.jsonl.zst: not a zstd file (or corrupt at byte ") &&
              strstr(err_msg(), "zstd -t") && !strchr(err_msg(), '\n'), "%s", err_msg());
    err_clear();
}

/* Job-file integrity (issue 15): --out may not be --prompts (or the
 * eviction trace), also through a link; a repeated id is a bad line
 * (reported, skipped, exit 3) so that --resume is unambiguous; a line
 * without an id gets {"line": N}, which no given id (7, "7") equals; a
 * prompt file that cannot be read (a directory) is an error, not an empty
 * job; ids and messages with invalid UTF-8 come out as valid JSON. */
Test(job, integrity_of_the_job_files)
{
    const char *model = FH_SOURCE_ROOT "/tests/fixtures/tiny-opt";
    cli_write("p.jsonl", "{\"id\": 7, \"prompt_ids\": [2, 5], \"max_new_tokens\": 2}\n"
                         "{\"prompt_ids\": [2, 6], \"max_new_tokens\": 2}\n"
                         "{\"id\": \"7\", \"prompt_ids\": [2, 7], \"max_new_tokens\": 2}\n"
                         "{\"id\": 7.0, \"prompt_ids\": [2, 8], \"max_new_tokens\": 2}\n"
                         "{\"id\": \"a\xff\xfe\", \"prompt_ids\": [2, 9], "
                         "\"max_new_tokens\": 2}\n");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "ln -s p.jsonl %s/link.jsonl", cli_dir);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(cli_run("generate --model %s --prompts p.jsonl --out link.jsonl --resume",
                         model), 2);
    cr_assert(strstr(cli_err, "must be different files"), "%s", cli_err);
    cr_assert_eq(cli_run("generate --model %s --prompts p.jsonl --out o.jsonl "
                         "--trace-evictions p.jsonl --kv-policy window --kv-budget 2", model), 2);
    char *p = cli_read("p.jsonl");
    cr_assert(strstr(p, "[2, 9]"), "the prompt file was written to");
    free(p);
    int rc = cli_run("generate --model %s --prompts p.jsonl --out o.jsonl --quiet", model);
    cr_assert_eq(rc, 3, "%s", cli_err);
    cr_assert(strstr(cli_err, "p.jsonl:4: id 7 is also on line 1; ids must be unique"), "%s",
              cli_err);
    char *o = cli_read("o.jsonl");
    cr_assert(strstr(o, "{\"id\":7,"), "%s", o);
    cr_assert(strstr(o, "{\"id\":{\"line\":2},"), "%s", o);
    cr_assert(strstr(o, "{\"id\":\"7\","), "%s", o);
    cr_assert(strstr(o, "{\"id\":\"a\xef\xbf\xbd\xef\xbf\xbd\","), "%s", o); /* valid UTF-8 */
    int lines = 0;
    for (char *c = o; *c; c++)
        lines += *c == '\n';
    cr_assert_eq(lines, 4);
    free(o);
    /* a resume recognises all four, the id-less one included */
    cr_assert_eq(cli_run("generate --model %s --prompts p.jsonl --out o.jsonl --quiet --resume",
                         model), 3, "%s", cli_err);
    o = cli_read("o.jsonl");
    lines = 0;
    for (char *c = o; *c; c++)
        lines += *c == '\n';
    cr_assert_eq(lines, 4, "resume wrote again: %s", o);
    free(o);
    snprintf(cmd, sizeof cmd, "mkdir %s/dir", cli_dir);
    cr_assert_eq(system(cmd), 0);
    rc = cli_run("generate --model %s --prompts dir --out d.jsonl --quiet", model);
    cr_assert_neq(rc, 0);
    cr_assert(strstr(cli_err, "dir: a directory, not the prompt file; give the file itself"),
              "%s", cli_err);
    cr_assert(!cli_exists("d.jsonl") || !*cli_read("d.jsonl"));
    rc = cli_run("search --model %s --prompts dir --gpu-mem 1G --device cpu", model);
    cr_assert_neq(rc, 0);
    cr_assert(strstr(cli_err, "dir: a directory, not the prompt file"), "%s", cli_err);
    /* a number past a double's range would be written as "id": null */
    cli_write("inf.jsonl", "{\"id\": 1e400, \"prompt_ids\": [2, 5], \"max_new_tokens\": 1}\n"
                           "{\"id\": 1, \"prompt_ids\": [2, 5], \"max_new_tokens\": 1}\n");
    rc = cli_run("generate --model %s --prompts inf.jsonl --out inf.out --quiet", model);
    cr_assert_eq(rc, 3, "%s", cli_err);
    cr_assert(strstr(cli_err, "inf.jsonl:1: \"id\" must be a string or a finite number"), "%s",
              cli_err);
    o = cli_read("inf.out");
    cr_assert(!strstr(o, "null") && strstr(o, "{\"id\":1,"), "%s", o);
    free(o);
}

/* A prompt file read in windows (--window N: N requests tokenized at a
 * time): the output equals the one-window run's, a bad line is reported
 * once (not again in the generating pass), a repeated id is caught across
 * windows, a request of n completions and OpenAI error requests keep
 * their places, and a resume skips done requests in every window. */
Test(job, windows_of_the_prompt_file)
{
    const char *model = FH_SOURCE_ROOT "/tests/fixtures/tiny-opt";
    char job[8192] = "";
    for (int i = 0; i < 23; i++) {
        char line[256];
        if (i == 5)
            snprintf(line, sizeof line, "{\"id\": %d, \"prompt_ids\": [2, 99999]}\n", i);
        else if (i == 17)
            snprintf(line, sizeof line, "{\"id\": 3, \"prompt_ids\": [2, 8]}\n");
        else if (i == 9)
            snprintf(line, sizeof line, "{\"id\": %d, \"prompt_ids\": [2, %d], \"n\": 2, "
                     "\"temperature\": 0.7, \"max_new_tokens\": 3}\n", i, 10 + i);
        else
            snprintf(line, sizeof line, "{\"id\": %d, \"prompt_ids\": [2, %d, %d], "
                     "\"max_new_tokens\": %d}\n", i, 10 + i, 40 + i, 1 + i % 4);
        strcat(job, line);
    }
    cli_write("w.jsonl", job);
    cr_assert_eq(cli_run("generate --model %s --prompts w.jsonl --out one.jsonl --batch-size 1 --num-gpu-batches 2 "
                         "--no-summary", model), 3, "%s", cli_err);
    for (int w = 1; w <= 4; w += 3) {
        char out[32];
        snprintf(out, sizeof out, "w%d.jsonl", w);
        cr_assert_eq(cli_run("generate --model %s --prompts w.jsonl --out %s --batch-size 1 --num-gpu-batches 2 "
                             "--window %d --no-summary", model, out, w), 3, "%s", cli_err);
        const char *at = strstr(cli_err, "w.jsonl:6: prompt_ids[1] is not a token id");
        cr_assert(at && !strstr(at + 1, "w.jsonl:6:"), "reported once: %s", cli_err);
        cr_assert(strstr(cli_err, "w.jsonl:18: id 3 is also on line 4"), "%s", cli_err);
        char *a = cli_read("one.jsonl"), *b = cli_read(out);
        cr_assert_str_eq(b, a, "--window %d", w);
        free(a);
        free(b);
    }
    /* a resume over windows of 4: the first 9 records kept */
    char *full = cli_read("one.jsonl"), *cut = full;
    for (int i = 0; i < 9; i++)
        cut = strchr(cut, '\n') + 1;
    char part[8192];
    snprintf(part, sizeof part, "%.*s", (int)(cut - full), full);
    cli_write("r.jsonl", part);
    cr_assert_eq(cli_run("generate --model %s --prompts w.jsonl --out r.jsonl --batch-size 1 --num-gpu-batches 2 "
                         "--window 4 --resume --quiet", model), 3, "%s", cli_err);
    char *r = cli_read("r.jsonl");
    cr_assert_str_eq(r, full);
    free(r);
    free(full);
}

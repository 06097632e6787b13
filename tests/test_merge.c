/* test_merge.c: `flexh2o merge` (src/gen/job_merge.c, src/cli/cmd_merge.c)
 * and the key rule it shares with the prompt reader (job_line_key).
 *
 * Each test makes one run's output with `flexh2o generate` over a prompt
 * file with the awkward lines (no id, string and number ids, a bad line, a
 * repeated id), cuts it into shard files as generate --shard I/N would
 * leave them (each a subsequence of the output, by several assignments),
 * merges them, and compares OUT with the one run byte for byte; then the
 * refusals: a torn shard, a record out of order, a missing record, an OUT
 * that exists. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "job.h"

#define MODEL FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"

TestSuite(merge, .init = cli_setup, .fini = cli_teardown);

/* The native prompt file: 9 requests with records (a string id, an
 * id-less line, a number, a string id with an escape, another id-less
 * line, 7 and "7" kept apart), a blank line, a line that is no JSON and a
 * repeat of "a" (both skipped by generate: no record). */
static const char native_prompts[] =
    "{\"id\": \"a\", \"prompt_ids\": [2, 5, 6], \"max_new_tokens\": 3}\n"
    "{\"prompt_ids\": [2, 7], \"max_new_tokens\": 2}\n"
    "{\"id\": 3, \"prompt_ids\": [2, 9, 10], \"max_new_tokens\": 2}\n"
    "\n"
    "this is not JSON\n"
    "{\"id\": \"a\", \"prompt_ids\": [2, 11], \"max_new_tokens\": 2}\n"
    "{\"id\": 4.5, \"prompt_ids\": [2, 12], \"max_new_tokens\": 4}\n"
    "{\"id\": \"q\\\"u\", \"prompt\": \"hello there\", \"max_new_tokens\": 3}\n"
    "{\"prompt_ids\": [2, 13], \"max_new_tokens\": 1}\n"
    "{\"id\": 7, \"prompt_ids\": [2, 14], \"max_new_tokens\": 2}\n"
    "{\"id\": \"7\", \"prompt_ids\": [2, 15], \"max_new_tokens\": 2}\n"
    "{\"id\": \"last\", \"prompt_ids\": [2, 16, 17], \"max_new_tokens\": 2, "
    "\"temperature\": 0.8, \"seed\": 4}\n";
enum { N_REC = 9 };

/* Records (lines) in text. */
static int count_lines(const char *text)
{
    int n = 0;
    for (const char *c = text; *c; c++)
        n += *c == '\n';
    return n;
}

/* One run over the whole of native_prompts (p.jsonl) into one.jsonl:
 * exit 3 for the two skipped lines, N_REC records. @return its text
 * (the caller frees). */
static char *one_run(void)
{
    cli_write("p.jsonl", native_prompts);
    int rc = cli_run("generate --model " MODEL " --prompts p.jsonl --out one.jsonl --quiet "
                     "--no-summary");
    cr_assert_eq(rc, 3, "exit %d: %s", rc, cli_err);
    char *all = cli_read("one.jsonl");
    cr_assert_eq(count_lines(all), N_REC, "%s", all);
    return all;
}

/* Write the records of all into shard files names[0..n): record i to
 * names[assign[i]] (-1: to none, a lost record), each file a subsequence
 * of all as generate --shard writes it; a name ending in .zst is written
 * in zstd frames of chunk bytes (0: one frame). *args gets the names
 * joined by spaces, for the command line. */
static void write_shards(const char *all, const int *assign, int n, const char *const *names,
                         size_t chunk, char *args, size_t args_len)
{
    size_t len = strlen(all);
    char **buf = calloc((size_t)n, sizeof *buf);
    for (int k = 0; k < n; k++)
        buf[k] = calloc(1, len + 1);
    int i = 0;
    for (const char *line = all; *line; i++) {
        const char *end = strchr(line, '\n') + 1;
        if (assign[i] >= 0)
            strncat(buf[assign[i]], line, (size_t)(end - line));
        line = end;
    }
    args[0] = 0;
    for (int k = 0; k < n; k++) {
        size_t nl = strlen(names[k]);
        if (nl > 4 && strcmp(names[k] + nl - 4, ".zst") == 0)
            cli_write_zst(names[k], buf[k], chunk);
        else
            cli_write(names[k], buf[k]);
        free(buf[k]);
        snprintf(args + strlen(args), args_len - strlen(args), "%s%s", k ? " " : "", names[k]);
    }
    free(buf);
}

/* Whole-file merges with exit 0 by several assignments of the records to
 * 1, 2 and 3 shards (interleaved, contiguous, uneven, one shard empty,
 * the shards named in any order) give OUT byte-identical to the one run,
 * and the summary line counts them. */
Test(merge, shards_join_into_the_one_run_byte_for_byte)
{
    char *all = one_run();
    static const struct {
        int n;
        int assign[N_REC];
        const char *what;
    } cases[] = {
        {2, {0, 1, 0, 1, 0, 1, 0, 1, 0}, "2 interleaved"},
        {2, {0, 0, 0, 0, 1, 1, 1, 1, 1}, "2 contiguous"},
        {2, {1, 1, 1, 1, 1, 1, 1, 1, 0}, "2, the last record alone"},
        {3, {0, 1, 2, 0, 1, 2, 0, 1, 2}, "3 interleaved"},
        {3, {0, 0, 0, 2, 2, 2, 2, 2, 0}, "3, the middle one empty"},
        {3, {2, 2, 1, 0, 0, 1, 2, 2, 0}, "3 uneven"},
        {1, {0, 0, 0, 0, 0, 0, 0, 0, 0}, "1 shard"},
    };
    static const char *const fwd[] = {"s0.jsonl", "s1.jsonl", "s2.jsonl"};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char args[256], out[32];
        write_shards(all, cases[c].assign, cases[c].n, fwd, 0, args, sizeof args);
        snprintf(out, sizeof out, "m%zu.jsonl", c);
        int rc = cli_run("merge --prompts p.jsonl --out %s %s", out, args);
        cr_assert_eq(rc, 0, "%s: exit %d: %s", cases[c].what, rc, cli_err);
        char *got = cli_read(out);
        cr_assert_str_eq(got, all, "%s", cases[c].what);
        free(got);
        char want[128];
        snprintf(want, sizeof want, "[flexh2o] merge: %d records from %d shard%s into %s\n",
                 N_REC, cases[c].n, cases[c].n > 1 ? "s" : "", out);
        cr_assert_str_eq(cli_err, want, "%s", cases[c].what);
        /* the shards named backwards, flags after them: the same file */
        if (cases[c].n == 3) {
            snprintf(out, sizeof out, "r%zu.jsonl", c);
            rc = cli_run("merge s2.jsonl s1.jsonl s0.jsonl --prompts p.jsonl --out %s --quiet",
                         out);
            cr_assert_eq(rc, 0, "%s backwards: exit %d: %s", cases[c].what, rc, cli_err);
            cr_assert_str_eq(cli_err, "", "--quiet");
            got = cli_read(out);
            cr_assert_str_eq(got, all, "%s backwards", cases[c].what);
            free(got);
        }
    }
    free(all);
}

/* .zst shards (one frame, frames cutting lines anywhere, and an empty
 * one) beside a plain one merge as the plain ones do; a .zst OUT holds
 * the same bytes, one frame per record; a .zst prompt file reads the
 * same. */
Test(merge, zst_shards_zst_out_and_zst_prompts)
{
    char *all = one_run();
    static const int assign[N_REC] = {0, 1, 3, 0, 1, 3, 3, 1, 0};
    static const char *const names[] = {"s0.jsonl.zst", "s1.jsonl.zst", "e.jsonl.zst",
                                        "s3.jsonl"};
    static const size_t chunks[] = {0, 29};
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
        char args[256], out[32];
        write_shards(all, assign, 4, names, chunks[c], args, sizeof args);
        snprintf(out, sizeof out, "m%zu.jsonl.zst", c);
        int rc = cli_run("merge --prompts p.jsonl --out %s %s", out, args);
        cr_assert_eq(rc, 0, "chunk %zu: exit %d: %s", chunks[c], rc, cli_err);
        int frames = 0;
        char *got = cli_read_zst(out, &frames, NULL);
        cr_assert_str_eq(got, all, "chunk %zu", chunks[c]);
        cr_assert_eq(frames, N_REC, "one frame per record");
        free(got);
        snprintf(out, sizeof out, "m%zu.jsonl", c);
        cr_assert_eq(cli_run("merge --prompts p.jsonl --out %s %s", out, args), 0, "%s",
                     cli_err);
        got = cli_read(out);
        cr_assert_str_eq(got, all, "chunk %zu, plain out", chunks[c]);
        free(got);
    }
    cli_write_zst("p.jsonl.zst", native_prompts, 50);
    cr_assert_eq(cli_run("merge --prompts p.jsonl.zst --out z.jsonl s0.jsonl.zst s1.jsonl.zst "
                         "e.jsonl.zst s3.jsonl"), 0, "%s", cli_err);
    char *got = cli_read("z.jsonl");
    cr_assert_str_eq(got, all, ".zst prompt file");
    free(got);
    free(all);
}

/* A shard whose last record is torn (a killed generate --shard: a plain
 * line without its '\n', a .zst frame cut short) is refused before OUT is
 * created, naming the shard and --resume. */
Test(merge, a_torn_shard_is_refused_before_anything_is_written)
{
    char *all = one_run();
    static const int assign[N_REC] = {0, 1, 0, 1, 0, 1, 0, 1, 0};
    static const char *const plain[] = {"s0.jsonl", "s1.jsonl"};
    static const char *const zst[] = {"s0.jsonl", "s1.jsonl.zst"};
    char args[256], path[512];
    write_shards(all, assign, 2, plain, 0, args, sizeof args);
    struct stat st;
    snprintf(path, sizeof path, "%s/s1.jsonl", cli_dir);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size - 7), 0); /* the last line loses its end */
    int rc = cli_run("merge --prompts p.jsonl --out m.jsonl s0.jsonl s1.jsonl");
    cr_assert_eq(rc, 1, "exit %d: %s", rc, cli_err);
    cr_assert(strstr(cli_err, "flexh2o: s1.jsonl: its last record is torn (an interrupted "
                     "shard); finish it with generate --shard I/N --resume"), "%s", cli_err);
    cr_assert(!cli_exists("m.jsonl"), "OUT was created");

    write_shards(all, assign, 2, zst, 0, args, sizeof args);
    snprintf(path, sizeof path, "%s/s1.jsonl.zst", cli_dir);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size - 3), 0); /* the frame cut short */
    rc = cli_run("merge --prompts p.jsonl --out m.jsonl %s", args);
    cr_assert_eq(rc, 1, "exit %d: %s", rc, cli_err);
    cr_assert(strstr(cli_err, "s1.jsonl.zst: its last record is torn"), "%s", cli_err);
    cr_assert(!cli_exists("m.jsonl"), "OUT was created");
    free(all);
}

/* A shard record out of the prompt file's order, or with a key the file
 * does not hold, is an error naming the shard, its line and the key; the
 * half-joined OUT is removed. A line that is no record at all is refused
 * too. */
Test(merge, a_record_out_of_order_is_refused)
{
    char *all = one_run();
    /* records 0 and 2 swapped in s0: "a" comes after 3 */
    const char *r0 = all, *r1 = strchr(r0, '\n') + 1, *r2 = strchr(r1, '\n') + 1,
               *r3 = strchr(r2, '\n') + 1;
    char s0[8192], s1[8192];
    snprintf(s0, sizeof s0, "%.*s%.*s%s", (int)(r3 - r2), r2, (int)(r1 - r0), r0, r3);
    snprintf(s1, sizeof s1, "%.*s", (int)(r2 - r1), r1);
    cli_write("s0.jsonl", s0);
    cli_write("s1.jsonl", s1);
    int rc = cli_run("merge --prompts p.jsonl --out m.jsonl s1.jsonl s0.jsonl");
    cr_assert_eq(rc, 1, "exit %d: %s", rc, cli_err);
    cr_assert(strstr(cli_err, "flexh2o: s0.jsonl:2: record \"a\" is not in the order of "
                     "p.jsonl (or not in p.jsonl at all): was it written for this prompt "
                     "file?"), "%s", cli_err);
    cr_assert(!cli_exists("m.jsonl"), "the half-joined OUT is left");

    /* a key the prompt file does not hold, at the end of a shard */
    snprintf(s0, sizeof s0, "%.*s{\"id\":\"nope\",\"completion\":\"x\"}\n", (int)(r1 - r0), r0);
    snprintf(s1, sizeof s1, "%s", r1);
    cli_write("s0.jsonl", s0);
    cli_write("s1.jsonl", s1);
    rc = cli_run("merge --prompts p.jsonl --out m.jsonl s0.jsonl s1.jsonl");
    cr_assert_eq(rc, 1, "exit %d: %s", rc, cli_err);
    cr_assert(strstr(cli_err, "s0.jsonl:2: record \"nope\" is not in the order of p.jsonl"),
              "%s", cli_err);
    cr_assert(!cli_exists("m.jsonl"));

    /* a line that is no record */
    snprintf(s0, sizeof s0, "%.*s{\"text\": 1}\n", (int)(r1 - r0), r0);
    cli_write("s0.jsonl", s0);
    rc = cli_run("merge --prompts p.jsonl --out m.jsonl s0.jsonl s1.jsonl");
    cr_assert_eq(rc, 1, "exit %d: %s", rc, cli_err);
    cr_assert(strstr(cli_err, "s0.jsonl:2: not a flexh2o completion record"), "%s", cli_err);
    cr_assert(!cli_exists("m.jsonl"));
    free(all);
}

/* Requests no shard has (a lost record; a line generate skipped for a bad
 * prompt, which merge cannot tell from one) are counted: exit 3 with one
 * line, and every other record written in order. */
Test(merge, missing_records_exit_3_with_the_rest_in_order)
{
    char *all = one_run();
    static const int assign[N_REC] = {0, 1, -1, 0, 1, 0, 1, -1, 0};
    static const char *const names[] = {"s0.jsonl", "s1.jsonl"};
    char args[256], want[8192] = "";
    write_shards(all, assign, 2, names, 0, args, sizeof args);
    int i = 0;
    for (const char *line = all; *line; i++) {
        const char *end = strchr(line, '\n') + 1;
        if (assign[i] >= 0)
            strncat(want, line, (size_t)(end - line));
        line = end;
    }
    int rc = cli_run("merge --prompts p.jsonl --out m.jsonl --quiet %s", args);
    cr_assert_eq(rc, 3, "exit %d: %s", rc, cli_err);
    cr_assert_str_eq(cli_err, "[flexh2o] merge: 2 requests of p.jsonl have no record in any "
                     "shard (bad prompt lines, or a shard not finished: rerun it with "
                     "--resume)\n");
    char *got = cli_read("m.jsonl");
    cr_assert_str_eq(got, want);
    free(got);

    /* a prompt line with an id but a prompt generate refused: no record */
    char prompts[4096];
    snprintf(prompts, sizeof prompts, "%s{\"id\": \"big\", \"prompt_ids\": [2, 99999]}\n",
             native_prompts);
    cli_write("p2.jsonl", prompts);
    static const int every[N_REC] = {0, 1, 0, 1, 0, 1, 0, 1, 0};
    write_shards(all, every, 2, names, 0, args, sizeof args);
    rc = cli_run("merge --prompts p2.jsonl --out m2.jsonl %s", args);
    cr_assert_eq(rc, 3, "exit %d: %s", rc, cli_err);
    cr_assert(strstr(cli_err, "[flexh2o] merge: 1 request of p2.jsonl has no record in any "
                     "shard"), "%s", cli_err);
    got = cli_read("m2.jsonl");
    cr_assert_str_eq(got, all);
    free(got);
    free(all);
}

/* An OUT that exists is never written over; OUT as the prompt file or a
 * shard (also through a link), a shard given twice, no shard or no
 * --prompts are usage errors. */
Test(merge, out_exists_and_usage_errors)
{
    char *all = one_run();
    static const int assign[N_REC] = {0, 1, 0, 1, 0, 1, 0, 1, 0};
    static const char *const names[] = {"s0.jsonl", "s1.jsonl"};
    char args[256], cmd[1024];
    write_shards(all, assign, 2, names, 0, args, sizeof args);
    cli_write("m.jsonl", "keep me\n");
    int rc = cli_run("merge --prompts p.jsonl --out m.jsonl %s", args);
    cr_assert_eq(rc, 1, "exit %d: %s", rc, cli_err);
    cr_assert_str_eq(cli_err, "flexh2o: m.jsonl already exists; remove it or choose another "
                     "--out\n");
    char *kept = cli_read("m.jsonl");
    cr_assert_str_eq(kept, "keep me\n");
    free(kept);

    snprintf(cmd, sizeof cmd, "ln -s s1.jsonl %s/link.jsonl", cli_dir);
    cr_assert_eq(system(cmd), 0);
    static const struct {
        const char *args, *msg;
    } usage[] = {
        {"--prompts p.jsonl --out p.jsonl s0.jsonl", "--out is the prompt file p.jsonl"},
        {"--prompts p.jsonl --out link.jsonl s0.jsonl s1.jsonl", "--out is the shard s1.jsonl"},
        {"--prompts p.jsonl --out n.jsonl s0.jsonl s1.jsonl link.jsonl",
         "the shard link.jsonl is given twice (also as s1.jsonl)"},
        {"--prompts p.jsonl --out n.jsonl", "give the shards' output files"},
        {"--out n.jsonl s0.jsonl", "--prompts and --out are required"},
        {"--prompts p.jsonl --out n.jsonl --resume s0.jsonl", "unknown flag --resume"},
        {"--prompts p.jsonl s0.jsonl --out", "--out needs a value"},
    };
    for (size_t u = 0; u < sizeof usage / sizeof *usage; u++) {
        rc = cli_run("merge %s", usage[u].args);
        cr_assert_eq(rc, 2, "%s: exit %d: %s", usage[u].args, rc, cli_err);
        cr_assert(strstr(cli_err, usage[u].msg) && strstr(cli_err, "see flexh2o merge --help"),
                  "%s: %s", usage[u].args, cli_err);
    }
    cr_assert(!cli_exists("n.jsonl"));
    kept = cli_read("p.jsonl");
    cr_assert_str_eq(kept, native_prompts);
    free(kept);
    cr_assert_eq(cli_run("merge --help"), 0);
    kept = cli_read("stdout.txt");
    cr_assert(strstr(kept, "usage: flexh2o merge --prompts IN.jsonl --out OUT.jsonl"), "%s",
              kept);
    free(kept);
    free(all);
}

/* A bad line's id (or custom_id) is taken as a good line's is: a later
 * line with it is a repeat, so an id's record can only be at its first
 * line, where merge puts it. Here "x" is bad on line 1 and good on line
 * 3: generate writes no record of "x" (not one after "y"'s), and the
 * merge of any split has the one run's bytes and counts "x" missing. */
Test(merge, a_bad_lines_id_is_not_run_by_a_later_line)
{
    cli_write("p.jsonl", "{\"id\": \"x\", \"prompt_ids\": [2, 5], \"colour\": 1}\n"
                         "{\"id\": \"y\", \"prompt_ids\": [2, 6], \"max_new_tokens\": 2}\n"
                         "{\"id\": \"x\", \"prompt_ids\": [2, 7], \"max_new_tokens\": 2}\n"
                         "{\"id\": \"z\", \"prompt_ids\": [2, 8], \"max_new_tokens\": 2}\n");
    int rc = cli_run("generate --model " MODEL " --prompts p.jsonl --out one.jsonl --quiet "
                     "--no-summary");
    cr_assert_eq(rc, 3, "exit %d: %s", rc, cli_err);
    cr_assert(strstr(cli_err, "p.jsonl:1: unknown field \"colour\""), "%s", cli_err);
    cr_assert(strstr(cli_err, "p.jsonl:3: id \"x\" is also on line 1"), "%s", cli_err);
    char *all = cli_read("one.jsonl");
    cr_assert_eq(count_lines(all), 2, "%s", all);
    cr_assert(!strstr(all, "\"x\""), "a record of x: %s", all);
    static const int assign[][2] = {{0, 1}, {1, 0}};
    static const char *const names[] = {"s0.jsonl", "s1.jsonl"};
    for (size_t c = 0; c < sizeof assign / sizeof *assign; c++) {
        char args[256], out[32];
        write_shards(all, assign[c], 2, names, 0, args, sizeof args);
        snprintf(out, sizeof out, "m%zu.jsonl", c);
        rc = cli_run("merge --prompts p.jsonl --out %s %s", out, args);
        cr_assert_eq(rc, 3, "exit %d: %s", rc, cli_err);
        cr_assert(strstr(cli_err, "merge: 1 request of p.jsonl has no record"), "%s", cli_err);
        char *got = cli_read(out);
        cr_assert_str_eq(got, all, "assignment %zu", c);
        free(got);
    }
    free(all);
}

/* An OpenAI batch file (error requests with their lines, a line without
 * custom_id and a repeated custom_id skipped) split and merged is the one
 * run's file byte for byte. */
Test(merge, openai_batch_output_split_and_merged)
{
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    cli_write("b.jsonl",
              "{\"custom_id\": \"r1\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
              "\"body\": {\"prompt\": [2, 5, 6], \"max_tokens\": 3, \"logprobs\": 2}}\n"
              "{\"custom_id\": \"r2\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
              "\"body\": {\"prompt\": \"hello\", \"max_tokens\": 2, \"temperature\": -1}}\n"
              "{\"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": {}}\n"
              "{\"custom_id\": \"r3\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
              "\"body\": {\"prompt\": \"hello there\", \"max_tokens\": 4, \"n\": 2, "
              "\"temperature\": 0.7}}\n"
              "{\"custom_id\": \"r1\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
              "\"body\": {\"prompt\": [2, 8], \"max_tokens\": 2}}\n"
              "{\"custom_id\": \"r4\", \"method\": \"GET\", \"url\": \"/v1/completions\", "
              "\"body\": {}}\n"
              "{\"custom_id\": \"r5\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
              "\"body\": {\"prompt\": [2, 9], \"max_tokens\": 2}}\n");
    int rc = cli_run("generate --model " MODEL " --prompts b.jsonl --out one.jsonl --quiet "
                     "--no-summary");
    cr_assert_eq(rc, 3, "exit %d: %s", rc, cli_err);
    char *all = cli_read("one.jsonl");
    cr_assert_eq(count_lines(all), 5, "%s", all);
    cr_assert(strstr(all, "\"created\":1700000000"), "%s", all);
    cr_assert(strstr(all, "\"status_code\":400"), "an error line: %s", all);
    static const int assign[][5] = {{0, 1, 0, 1, 0}, {1, 1, 1, 0, 0}};
    static const char *const names[] = {"s0.jsonl", "s1.jsonl.zst"};
    for (size_t c = 0; c < sizeof assign / sizeof *assign; c++) {
        char args[256], out[32];
        write_shards(all, assign[c], 2, names, 0, args, sizeof args);
        snprintf(out, sizeof out, "m%zu.jsonl", c);
        rc = cli_run("merge --prompts b.jsonl --out %s %s", out, args);
        cr_assert_eq(rc, 0, "exit %d: %s", rc, cli_err);
        char *got = cli_read(out);
        cr_assert_str_eq(got, all, "assignment %zu", c);
        free(got);
    }
    unsetenv("SOURCE_DATE_EPOCH");
    free(all);
}

/* job_line_key gives every line the key the reader gives its request
 * (job_prompt.id), and 1 for the lines that are no request at all. */
Test(merge, line_keys_are_the_readers_ids)
{
    static const char *const lines[] = {
        "{\"id\": \"a\\u00e9\", \"prompt_ids\": [1]}\n",
        "{\"prompt_ids\": [1]}\n",
        "{\"id\": 7.0, \"prompt_ids\": [1]}",
        "{\"id\": 1e3, \"prompt_ids\": [1]}\n",
        "{\"id\": \"x\\ty\", \"prompt_ids\": [1]}\n",
        ("{\"custom_id\": \"c1\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
         "\"body\": {\"prompt\": [1]}}\n"),
    };
    static const char *const none[] = {
        "\n", "   \n", "nope\n", "[1, 2]\n", "\"id\"\n",
        "{\"id\": [1], \"prompt_ids\": [1]}\n", "{\"id\": null, \"prompt_ids\": [1]}\n",
        "{\"custom_id\": 5, \"body\": {}}\n", "{\"custom_id\": \"\", \"body\": {}}\n",
        "{\"url\": \"/v1/completions\", \"body\": {}}\n",
    };
    job_load_opts lo = {.bos = -1, .vocab = 100, .max_len = 50, .chat_template = -1};
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
        char name[32], path[512];
        snprintf(name, sizeof name, "k%zu.jsonl", i);
        snprintf(path, sizeof path, "%s/%s", cli_dir, name);
        /* the line on line 3, as in a file: the id-less key names it */
        char text[1024];
        snprintf(text, sizeof text, "\n\n%s", lines[i]);
        cli_write(name, text);
        job_prompts ps;
        cr_assert_eq(job_prompts_load(path, &lo, &ps), 0, "%s", err_msg());
        cr_assert_eq(ps.n, 1, "%s", lines[i]);
        char *key = NULL;
        cr_assert_eq(job_line_key(lines[i], strlen(lines[i]), 3, &key), 0, "%s", lines[i]);
        cr_assert_str_eq(key, ps.p[0].id, "%s", lines[i]);
        free(key);
        job_prompts_free(&ps);
    }
    for (size_t i = 0; i < sizeof none / sizeof *none; i++) {
        char *key = (char *)1;
        cr_assert_eq(job_line_key(none[i], strlen(none[i]), 1, &key), 1, "%s", none[i]);
        cr_assert_null(key, "%s", none[i]);
    }
    err_clear();
}

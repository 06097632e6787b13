/* test_job.c: the job files (src/gen/job.c) on their own: UTF-8
 * sanitising of completions and the completions file's resume set (many
 * ids, string and number ids kept apart, torn last line, duplicates). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_harness.h"
#include "err.h"
#include "job.h"

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
    cr_assert_eq(o.n_done, N);
    for (int i = 0; i < N; i++)
        cr_assert(job_out_has(&o, id_of(i, id)), "%s was not read back", id);
    /* absent: past the end, the other kind of id, the torn record */
    const char *absent[] = {"\"p20000\"", "20001", "\"p1\"", "2", "\"1\"", "\"torn\"",
                            "\"\"", "null"};
    for (size_t i = 0; i < sizeof absent / sizeof *absent; i++)
        cr_assert(!job_out_has(&o, absent[i]), "%s is not in the file", absent[i]);
    /* a record written now is in the set too */
    cr_assert_eq(job_out_write(&o, "\"new\"", "y", 1, &tok, &lp, 1, "eos"), 0, "%s", err_msg());
    cr_assert(job_out_has(&o, "\"new\"") && o.n_done == N + 1);
    cr_assert_eq(job_out_close(&o), 0, "%s", err_msg());

    /* an empty set answers no */
    job_out e;
    snprintf(path, sizeof path, "%s/none.jsonl", cli_dir);
    cr_assert_eq(job_out_open(path, 1, &e), 0, "%s", err_msg());
    cr_assert(!job_out_has(&e, "\"p0\"") && e.n_done == 0);
    cr_assert_eq(job_out_close(&e), 0, "%s", err_msg());
}

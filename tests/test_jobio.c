/* test_jobio.c: the job files (src/gen/jobio.c) on their own: UTF-8
 * sanitising of completions and the completions file's resume set. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobio.h"

#define FFFD "\xef\xbf\xbd"

Test(jobio, utf8_sanitize_replaces_each_bad_byte)
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
        char *s = utf8_sanitize(cases[i].in, cases[i].len, &n);
        cr_assert_not_null(s);
        cr_assert_str_eq(s, cases[i].out, "case %zu", i);
        cr_assert_eq(n, strlen(cases[i].out), "case %zu: length %zu", i, n);
        free(s);
    }
    char *s = utf8_sanitize("ok", 2, NULL);
    cr_assert_str_eq(s, "ok");
    free(s);
}

/* gpu_main.c: main() of the gpu-suite test programs. It is Criterion's own
 * main, except that a run in which every test skipped exits 77, which meson
 * reports as SKIP rather than OK: a machine without a GPU shows the gpu
 * suite as skipped (each test says why), and a GPU machine on which the
 * suite did not run cannot pass for one on which it did. And
 * FLEXH2O_TEST_TIMEOUT_SCALE (a factor, > 0) multiplies every test's
 * timeout: under compute-sanitizer's memcheck the end-to-end tests run
 * ten times slower than their limits allow for a plain run (Criterion's own
 * --timeout yields to a test's .timeout). */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <criterion/internal/ordered-set.h>
#include <stdio.h>
#include <stdlib.h>

static size_t n_tests, n_skipped;

ReportHook(POST_ALL)(struct criterion_global_stats *st)
{
    n_tests = st->nb_tests;
    n_skipped = st->tests_skipped;
}

/* Every test's timeout times FLEXH2O_TEST_TIMEOUT_SCALE; 0 when it is unset,
 * -1 (with a message) when it is not a positive number. */
static int scale_timeouts(struct criterion_test_set *tests)
{
    const char *v = getenv("FLEXH2O_TEST_TIMEOUT_SCALE");
    if (!v || !*v)
        return 0;
    char *end;
    double k = strtod(v, &end);
    if (*end || !(k > 0)) {
        fprintf(stderr, "FLEXH2O_TEST_TIMEOUT_SCALE=%s: give a positive factor, e.g. 10\n", v);
        return -1;
    }
    struct criterion_suite_set *suite;
    FOREACH_SET(suite, tests->suites) {
        struct criterion_test *test;
        FOREACH_SET(test, suite->tests) {
            if (test->data->timeout > 0)
                test->data->timeout *= k;
        }
    }
    return 0;
}

int main(int argc, char *argv[])
{
    struct criterion_test_set *tests = criterion_initialize();
    if (scale_timeouts(tests) < 0) {
        criterion_finalize(tests);
        return 2;
    }
    int rc = 0;
    if (criterion_handle_args(argc, argv, true))
        rc = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    if (rc == 0 && n_tests > 0 && n_skipped == n_tests)
        rc = 77; /* meson's "skipped" exit status */
    return rc;
}

/* gpu_main.c: main() of the gpu-suite test programs. It is Criterion's own
 * main, except that a run in which every test skipped exits 77, which meson
 * reports as SKIP rather than OK: a machine without a GPU shows the gpu
 * suite as skipped (each test says why), and a GPU machine on which the
 * suite did not run cannot pass for one on which it did. */
#include <criterion/criterion.h>
#include <criterion/hooks.h>

static size_t n_tests, n_skipped;

ReportHook(POST_ALL)(struct criterion_global_stats *st)
{
    n_tests = st->nb_tests;
    n_skipped = st->tests_skipped;
}

int main(int argc, char *argv[])
{
    struct criterion_test_set *tests = criterion_initialize();
    int rc = 0;
    if (criterion_handle_args(argc, argv, true))
        rc = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    if (rc == 0 && n_tests > 0 && n_skipped == n_tests)
        rc = 77; /* meson's "skipped" exit status */
    return rc;
}

/* gen_harness.c: see gen_harness.h. */
#include "gen_harness.h"

#include <criterion/criterion.h>

#include "err.h"
#include "model.h"
#include "model_config.h"

uint64_t gen_harness_allocs(backend *be, const char *model_dir, const char *prompts_path,
                            const char *out_path, const sched_policy *pol, const gen_opts *go,
                            uint64_t *made_before)
{
    model_config cfg;
    cr_assert_eq(model_config_of(model_dir, &cfg), 0, "%s", err_msg());
    job_prompts ps = {0};
    cr_assert_eq(job_prompts_load(prompts_path, NULL, cfg.bos_id, cfg.vocab_size,
                                  cfg.max_pos - 1, 1, &ps), 0, "%s", err_msg());
    sched_shape sh;
    gen_shape(&cfg, &ps, NULL, go, pol->gpu_batch_size, &sh);
    sched_model shape, bound;
    model_sched_shape(&cfg, &shape);
    sched *sc = NULL;
    model *m = NULL;
    uint64_t at_start = be->ops->allocs(be->ctx);
    cr_assert_eq(sched_create(be, &shape, pol, &sh, NULL, &sc), 0, "%s", err_msg());
    cr_assert_eq(model_load_hf_sink(model_dir, be, sched_layer_sink, sc, &m), 0, "%s",
                 err_msg());
    model_sched_bind(m, &bound);
    cr_assert_eq(sched_attach(sc, &bound), 0, "%s", err_msg());
    job_out out = {0};
    cr_assert_eq(job_out_open(out_path, 0, &out), 0, "%s", err_msg());
    uint64_t before = be->ops->allocs(be->ctx);
    *made_before = before - at_start;
    gen_stats st;
    int rc = gen_run(m, sc, NULL, &ps, &out, go, &st);
    uint64_t during = be->ops->allocs(be->ctx) - before;
    cr_assert_eq(rc, 0, "%s", err_msg());
    gen_stats_free(&st);
    cr_assert_eq(job_out_close(&out), 0, "%s", err_msg());
    sched_destroy(sc);
    model_destroy(m);
    job_prompts_free(&ps);
    return during;
}

/* fuzz_calib.c: a hardware profile (sched_calib_load: the link rates, the
 * GEMM rates and their shapes, the disk fields: what `flexh2o calibrate
 * --out` writes and `search --hardware` reads), then what the search does
 * with it: the cost model (sched_cost_eval) and a small policy search
 * (sched_search, GLPK linear programs) for the built-in tiny model.
 *
 * Checked for any input: a profile that loads is printed back
 * (sched_calib_print) and loads again to the same profile, and the
 * throughput bounds it gives are numbers (never NaN). */
#include <math.h>
#include <string.h>

#include "err.h"
#include "fuzz_common.h"
#include "model.h"
#include "scheduler.h"

static int same(const sched_calib *a, const sched_calib *b)
{
    /* sched_calib_print keeps 3 decimals of the rates, 4 of TFLOP/s */
#define NEAR(x, y, d) (fabs((x) - (y)) <= (d) + 1e-9 * fabs(x))
    int ok = strcmp(a->device, b->device) == 0 && NEAR(a->h2d, b->h2d, 5e-4) &&
             NEAR(a->d2h, b->d2h, 5e-4) && NEAR(a->dram, b->dram, 5e-4) &&
             NEAR(a->dev_mem, b->dev_mem, 5e-4) && NEAR(a->gemm, b->gemm, 5e-5) &&
             NEAR(a->disk_read, b->disk_read, 5e-4) &&
             (a->disk_read == 0 || (NEAR(a->disk_write, b->disk_write, 5e-4) &&
                                    strcmp(a->disk_kind, b->disk_kind) == 0 &&
                                    a->direct == b->direct)) &&
             a->n_gemm == b->n_gemm;
    for (int i = 0; ok && i < a->n_gemm; i++)
        ok = a->gemm_rows[i] == b->gemm_rows[i] && NEAR(a->gemm_at[i], b->gemm_at[i], 5e-5);
    return ok;
#undef NEAR
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    static model_config cfg;
    if (!cfg.family)
        FUZZ_CHECK(model_config_by_name("tiny", &cfg) == 0, "%s", err_msg());
    fuzz_write("hw.json", data, size);
    char path[512], back[512];
    sched_calib hw, hw2;
    if (sched_calib_load(fuzz_path(path, sizeof path, "hw.json"), &hw) < 0)
        return 0;
    /* printed back (rates rounded to 3 decimals, TFLOP/s to 4: what a
     * profile holds at least) */
    FUZZ_CHECK(sched_calib_write(fuzz_path(back, sizeof back, "back.json"), &hw) == 0, "%s",
               err_msg());
    FUZZ_CHECK(sched_calib_load(back, &hw2) == 0, "the profile printed back does not load: %s",
               err_msg());
    FUZZ_CHECK(same(&hw, &hw2), "the profile printed back loads to another profile");
    err_clear();

    sched_model m;
    model_sched_shape(&cfg, &m);
    size_t es = strcmp(hw.device, "cuda") == 0 ? 2 : 4;
    sched_policy base;
    sched_policy_default(&base);
    snprintf(base.offload_dir, sizeof base.offload_dir, "%s", fuzz_dir());
    sched_shape sh = {.max_rows = 4096, .cap = 64 + 16};
    sched_cost c;
    if (sched_cost_eval(&m, es, &base, &sh, 64, 16, &hw, &c) == 0)
        FUZZ_CHECK(!isnan(c.tok_s), "the all-GPU policy costs NaN tokens/s");
    /* one block shape, CPU attention both ways, the three activation
     * tiers: a few linear programs, so the run stays fast */
    static const int gbs[] = {4};
    sched_search_opts o = {.prompt_len = 64, .gen_len = 16, .prefill_rows = 4096,
                           .kv_cap = 80, .max_block = 4, .max_gpu_batches = 1,
                           .gbs_list = gbs, .n_gbs = 1, .cpu_attention = -1,
                           .gpu_cap = 1 << 20, .cpu_cap = 4 << 20, .disk_cap = 1 << 30};
    sched_candidate best[2];
    int n = 0;
    if (sched_search(&m, es, &base, &o, &hw, best, 2, &n) == 0)
        for (int i = 0; i < n; i++)
            FUZZ_CHECK(!isnan(best[i].cost.tok_s), "candidate %d costs NaN tokens/s", i);
    return 0;
}

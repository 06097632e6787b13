/* test_search.c: the cost model and the policy search (scheduler/search.c),
 * hardware profiles (scheduler/calibrate.c) and policy files written by the
 * search (scheduler/policy.c):
 *   - the cost terms of two policies worked out from plan bytes by hand;
 *   - the search against a brute-force reference: every policy on a grid of
 *     percentages, block shapes, activation tiers and CPU-attention choices,
 *     planned exactly and scored by the same cost model; the LP's pick must
 *     fit its caps and be within 2 % of the grid's best, over four cap
 *     settings (GPU tight, GPU and CPU tight with a disk, no disk, H2O);
 *   - what the search must do in plain cases (everything fits: all on the
 *     GPU; no disk tier: nothing on disk; an H2O budget: faster; nothing
 *     fits: a message with the numbers);
 *   - profiles and policy files written and read back, bad ones refused;
 *     a host's profile shared by ranks (sched_calib_share);
 *   - the CLI: calibrate --out, search --out, generate --policy of the pick;
 *     --ranks: one rank is no flag, ranks on hosts of their own each plan as
 *     one alone, ranks on one host plan in its share of the CPU memory, the
 *     prompts split over the ranks, bad counts refused.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_harness.h"
#include "err.h"
#include "model_config.h"
#include "scheduler.h"

TestSuite(search, .init = cli_setup, .fini = cli_teardown);

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"
#define GiB (1ull << 30)
#define MiB (1ull << 20)

/* A T4-like machine in round numbers (the tests need rates, not this host's) */
static sched_calib t4_like(void)
{
    sched_calib hw = {.device = "cuda", .h2d = 12, .d2h = 12, .dram = 40, .dev_mem = 250,
                      .gemm = 40, .disk_read = 2, .disk_write = 1.5,
                      .disk_kind = "io_uring", .direct = 1};
    return hw;
}

/* A CPU backend's rates in round numbers: GEMM TFLOP/s and disk GB/s given */
static sched_calib cpu_like(double gemm, double disk)
{
    sched_calib hw = {.device = "cpu", .h2d = 20, .d2h = 20, .dram = 20, .dev_mem = 20,
                      .gemm = gemm, .disk_read = disk, .disk_write = disk,
                      .disk_kind = "io_uring"};
    return hw;
}

static model_config opt(const char *name)
{
    model_config c;
    cr_assert_eq(model_config_by_name(name, &c), 0, "%s", err_msg());
    return c;
}

static sched_policy pol(int gbs, int K, double wg, double wc, double cg, double cc, double hg,
                        double hc, int attn)
{
    sched_policy p;
    sched_policy_default(&p);
    p.gpu_batch_size = gbs;
    p.num_gpu_batches = K;
    p.wg = wg, p.wc = wc, p.cg = cg, p.cc = cc, p.hg = hg, p.hc = hc;
    p.cpu_attention = attn;
    snprintf(p.offload_dir, sizeof p.offload_dir, "/tmp");
    return p;
}

/* The shape generate plans (gen_plan.c gen_shape) for prompts of s tokens. */
static sched_shape shape(int gbs, int s, int cap, int scores)
{
    sched_shape sh = {0};
    sh.max_rows = sched_prefill_rows(4096, s, gbs);
    sh.cap = cap;
    sh.scores = scores;
    return sh;
}

static int fits(const sched_plan *pl, uint64_t g, uint64_t c, uint64_t d)
{
    return pl->total[SCHED_GPU] <= g && pl->total[SCHED_CPU] <= c &&
           (!d ? pl->total[SCHED_DISK] == 0 : pl->total[SCHED_DISK] <= d);
}

/* ------------------------------------------------------------ cost model */

Test(search, cost_terms_from_plan_bytes)
{
    model_config c = opt("opt-1.3b");
    sched_calib hw = t4_like();
    const int s = 64, n = 16;
    sched_shape sh = shape(8, s, s + n, 0);
    sched_plan all, disk;
    sched_policy pa = pol(8, 2, 100, 0, 100, 0, 100, 0, 0);
    sched_policy pd = pol(8, 2, 0, 0, 100, 0, 100, 0, 0);
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &pa, &sh, &all), 0);
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &pd, &sh, &disk), 0);
    /* the layer weights: what leaves the GPU tier when they go to disk */
    double W = (double)all.bytes[SCHED_GPU][SCHED_WEIGHTS] -
               (double)disk.bytes[SCHED_GPU][SCHED_WEIGHTS];
    cr_assert(W > 2.0 * GiB, "opt-1.3b fp16 layers are 2.4 GB, got %.0f", W);

    sched_cost ca, cd;
    cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &pa, &sh, s, n, &hw, &ca), 0, "%s", err_msg());
    cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &pd, &sh, s, n, &hw, &cd), 0, "%s", err_msg());
    /* all resident: nothing crosses a link */
    for (int t = COST_H2D; t <= COST_DRAM; t++)
        cr_assert_eq(ca.step[t], 0, "term %s = %g", sched_cost_term_name(t), ca.step[t]);
    cr_assert(ca.step[COST_FLOPS] > 0 && ca.step[COST_DEV_MEM] > 0);
    /* weights on disk: every step reads them (a whole aligned blob a layer,
     * which is what the disk tier reserves) and moves them to the GPU */
    double rd = (double)disk.bytes[SCHED_DISK][SCHED_WEIGHTS] / (hw.disk_read * 1e9);
    cr_assert(fabs(cd.step[COST_DISK_READ] - rd) < 1e-9 * rd, "%g vs %g",
              cd.step[COST_DISK_READ], rd);
    double up = W / (hw.h2d * 1e9);
    cr_assert(fabs(cd.step[COST_H2D] - up) < 1e-9 * up, "%g vs %g", cd.step[COST_H2D], up);
    cr_assert_eq(cd.step[COST_DISK_WRITE], 0, "weights are never written back");
    cr_assert_eq(cd.step_limit, COST_DISK_READ, "2 GB/s disk bounds it, got %s",
                 sched_cost_term_name(cd.step_limit));
    cr_assert_eq(cd.step_s, cd.step[COST_DISK_READ]);
    /* the same compute either way, and the throughput formula of DESIGN.md */
    cr_assert_eq(ca.step[COST_FLOPS], cd.step[COST_FLOPS]);
    double N = 16;
    cr_assert(fabs(cd.tok_s - N * n / (cd.prefill_s + (n - 1) * cd.step_s)) < 1e-9 * cd.tok_s);
    cr_assert(ca.tok_s > 5 * cd.tok_s, "resident %g vs disk %g tok/s", ca.tok_s, cd.tok_s);

    /* KV on disk: every step appends its new tokens' rows (2 x 256
     * (sequence, head) pairs x 128 bytes a layer and batch) to each
     * record's row log, and where a log is full writes back the slots in use
     * instead (kv_dirty.c): a disk-write term, a fraction of the records */
    sched_policy pk = pol(8, 2, 100, 0, 0, 0, 100, 0, 0);
    sched_plan kd;
    sched_cost ck;
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &pk, &sh, &kd), 0);
    cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &pk, &sh, s, n, &hw, &ck), 0);
    double wr = ck.step[COST_DISK_WRITE] * hw.disk_write * 1e9;
    double new_rows = 24 * 2 * 2 * 256 * 128.0, kv_all = (double)kd.bytes[SCHED_DISK][SCHED_KV];
    cr_assert(wr > new_rows && wr < kv_all / 4, "a step writes %.0f of %.0f bytes", wr, kv_all);
    /* one disk reads the KV and writes it back in turn: the two times add
     * up (a disk that only reads is limited by its reads) */
    cr_assert(ck.step[COST_DISK_READ] > 0);
    cr_assert_eq(ck.step[COST_DISK], ck.step[COST_DISK_READ] + ck.step[COST_DISK_WRITE]);
    cr_assert_eq(ck.prefill[COST_DISK], ck.prefill[COST_DISK_READ] + ck.prefill[COST_DISK_WRITE]);
    cr_assert_eq(ck.step_limit, COST_DISK, "got %s", sched_cost_term_name(ck.step_limit));
    cr_assert_eq(cd.step[COST_DISK], cd.step[COST_DISK_READ]);
    /* a long cache: 15 steps append to logs that hold about 32 entries, an
     * entry of 17 pages a layer and batch (the rows, a slot and a
     * position per pair) and its request's KV_MERGE_GAP pages, against
     * records of 2 x 256 pairs x 544 rows and 256 x 544 positions */
    sched_shape sl = shape(8, 512, 544, 0);
    sched_plan kl;
    sched_cost cl;
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &pk, &sl, &kl), 0);
    cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &pk, &sl, 512, n, &hw, &cl), 0);
    double whole = 24 * 2 * (2 * 256 * 544 * 128.0 + 256 * 544 * 4.0);
    double step_w = cl.step[COST_DISK_WRITE] * hw.disk_write * 1e9;
    cr_assert(fabs(step_w - 24 * 2 * (17 + 8) * 4096.0) < 1, "a step writes %.0f of %.0f bytes",
              step_w, whole);
    cr_assert((double)kl.bytes[SCHED_DISK][SCHED_KV] > whole &&
                  (double)kl.bytes[SCHED_DISK][SCHED_KV] < 1.1 * whole,
              "the records and their logs: %.0f bytes", (double)kl.bytes[SCHED_DISK][SCHED_KV]);
    cr_assert(fabs(cl.prefill[COST_DISK_WRITE] * hw.disk_write * 1e9 - whole) < 1e-6 * whole,
              "the prefill writes the records whole");
    /* a step reads the slots in use (kv_dirty.c) and its record's log: the
     * whole record at the end of a 512 + 32 cache, and the log's entries
     * and their request (step i of the 15: i - 1 entries); of 2048 slots
     * (rows of 256 KiB a pair), on average about half plus a request's cost
     * a pair over 32 + 2016, and nearly all over 2000 + 48, with logs of a
     * percent or two of a record */
    double step_r = cl.step[COST_DISK_READ] * hw.disk_read * 1e9;
    double logs = 24 * 2 * (105 * 17 + 14 * 8) * 4096.0 / 15;
    cr_assert(fabs(step_r - whole - logs) < 1e-6 * whole, "a step reads %.0f of %.0f bytes",
              step_r, whole);
    sched_shape s2k = shape(8, 512, 2048, 0);
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &pk, &s2k, &kl), 0);
    whole = 24 * 2 * (2 * 256 * 2048 * 128.0 + 256 * 2048 * 4.0);
    int lens[2][2] = {{32, 2016}, {2000, 48}};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &pk, &s2k, lens[i][0], lens[i][1], &hw, &cl),
                     0);
        step_r = cl.step[COST_DISK_READ] * hw.disk_read * 1e9;
        double lo = i ? 0.97 : 0.5, hi = i ? 1.02 : 0.77;
        cr_assert(step_r > lo * whole && step_r < hi * whole + 1,
                  "%d + %d: a step reads %.0f of %.0f bytes", lens[i][0], lens[i][1], step_r, whole);
    }
    /* a step reads the slots in use of each record: step i of n - 1 reads
     * s + i - 1 of the s + n slots and stores one more. With CPU attention,
     * CPU-tier KV does not cross the link but is read from host memory */
    double live = 0;
    for (int i = 1; i < n; i++)
        live += (s + i - 0.5) / (s + n);
    live /= n - 1;
    sched_policy pc = pol(8, 2, 100, 0, 0, 100, 100, 0, 1);
    sched_plan kc;
    sched_cost cc;
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &pc, &sh, &kc), 0);
    cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &pc, &sh, s, n, &hw, &cc), 0);
    double host = live * (double)kc.bytes[SCHED_CPU][SCHED_KV] / (hw.dram * 1e9);
    cr_assert(fabs(cc.step[COST_DRAM] - host) < 1e-9 * host, "%g vs %g", cc.step[COST_DRAM],
              host);
    pc.cpu_attention = 0;
    cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &pc, &sh, s, n, &hw, &cc), 0);
    cr_assert_eq(cc.step[COST_DRAM], 0);
    /* without it, a step copies those slots to the GPU and back */
    double kv_up = live * (double)kc.bytes[SCHED_CPU][SCHED_KV] / (hw.h2d * 1e9);
    cr_assert(fabs(cc.step[COST_H2D] - kv_up) < 1e-9 * kv_up, "%g vs %g", cc.step[COST_H2D],
              kv_up);
    double kv_down = live * (double)kc.bytes[SCHED_CPU][SCHED_KV] / (hw.d2h * 1e9);
    cr_assert(fabs(cc.step[COST_D2H] - kv_down) < 1e-9 * kv_down, "%g vs %g",
              cc.step[COST_D2H], kv_down);
}

Test(search, compute_term_uses_the_rate_at_the_batch_rows)
{
    model_config c = opt("opt-1.3b");
    sched_calib hw = t4_like();
    hw.n_gemm = 3;
    int rows[] = {1, 16, 256};
    double at[] = {0.5, 8, 40};
    memcpy(hw.gemm_rows, rows, sizeof rows);
    memcpy(hw.gemm_at, at, sizeof at);
    double d = c.hidden, f = c.ffn;
    double P = c.n_layer * (4 * d * d + 2 * d * f) + (double)c.vocab_size * d;
    /* gbs 16: a measured shape; 4: halfway in log(rows) between 1 and 16;
     * 512: past the last shape */
    const int gbs[] = {16, 4, 512};
    const double rate[] = {8e12, 4.25e12, 40e12};
    for (int i = 0; i < 3; i++) {
        sched_policy p = pol(gbs[i], 1, 100, 0, 100, 0, 100, 0, 0);
        sched_shape sh = shape(gbs[i], 64, 80, 0);
        sched_cost q;
        cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &p, &sh, 64, 16, &hw, &q), 0, "%s", err_msg());
        double want = 2 * P * gbs[i] / rate[i];
        cr_assert(fabs(q.step[COST_FLOPS] - want) < 1e-9 * want, "gbs %d: %g vs %g s", gbs[i],
                  q.step[COST_FLOPS], want);
        /* the prefill's layer GEMMs have the pass's rows: gbs x 64 >= 256
         * here; the LM head multiplies each sequence's last row only, the
         * batch's gbs rows */
        double head = (double)c.vocab_size * d;
        double pw = 2 * (P - head) * gbs[i] * 64 / 40e12 + 2 * head * gbs[i] / rate[i];
        cr_assert(fabs(q.prefill[COST_FLOPS] - pw) < 1e-9 * pw, "gbs %d prefill: %g vs %g s",
                  gbs[i], q.prefill[COST_FLOPS], pw);
    }
}

/* ------------------------------------------------------------ vs brute force */

typedef struct scenario {
    const char *model;
    int s, n, cap, scores;
    uint64_t gpu, cpu, disk;
    int host; /* sched_shape.host_visible */
} scenario;

static const int grid_gbs[] = {4, 16};

/* The best policy of the grid: weights in 5 % steps, KV in 10 % steps. */
static double grid_best(const scenario *sc, const sched_calib *hw, sched_policy *best)
{
    model_config c = opt(sc->model);
    double top = 0;
    for (int gi = 0; gi < 2; gi++)
        for (int K = 1; K <= 2; K++) {
            int gbs = grid_gbs[gi];
            sched_shape sh = shape(gbs, sc->s, sc->cap, sc->scores);
            sh.host_visible = sc->host;
            for (int act = 0; act < (sc->disk ? 3 : 2); act++)
                for (int attn = 0; attn <= 1; attn++)
                    for (int wg = 0; wg <= 100; wg += 5)
                        for (int wc = 0; wg + wc <= 100; wc += 5) {
                            if (!sc->disk && wg + wc != 100)
                                continue;
                            for (int cg = 0; cg <= 100; cg += 10)
                                for (int cc = 0; cg + cc <= 100; cc += 10) {
                                    if (!sc->disk && cg + cc != 100)
                                        continue;
                                    sched_policy p = pol(gbs, K, wg, wc, cg, cc,
                                                         act == 0 ? 100 : 0,
                                                         act == 1 ? 100 : 0, attn);
                                    sched_plan pl;
                                    sched_cost q;
                                    if (sched_plan_compute(shape_of(&c), 2, &p, &sh, &pl) < 0 ||
                                        !fits(&pl, sc->gpu, sc->cpu, sc->disk))
                                        continue;
                                    cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &p, &sh, sc->s, sc->n,
                                                                 hw, &q), 0);
                                    if (q.tok_s > top) {
                                        top = q.tok_s;
                                        *best = p;
                                    }
                                }
                        }
        }
    return top;
}

static void check_against_grid(const scenario *sc)
{
    model_config c = opt(sc->model);
    sched_calib hw = t4_like();
    sched_policy base = pol(1, 1, 100, 0, 100, 0, 100, 0, 0);
    if (!sc->disk)
        base.offload_dir[0] = '\0';
    sched_search_opts o = {.prompt_len = sc->s, .gen_len = sc->n, .prefill_rows = 4096,
                           .kv_cap = sc->cap, .scores = sc->scores, .max_block = 64,
                           .max_gpu_batches = 2, .gbs_list = grid_gbs, .n_gbs = 2,
                           .cpu_attention = -1, .gpu_cap = sc->gpu, .cpu_cap = sc->cpu,
                           .disk_cap = sc->disk, .host_visible = sc->host};
    sched_candidate cand[4];
    int n = 0;
    cr_assert_eq(sched_search(shape_of(&c), 2, &base, &o, &hw, cand, 4, &n), 0, "%s", err_msg());
    cr_assert(n >= 1);
    sched_policy gp;
    double ref = grid_best(sc, &hw, &gp);
    cr_assert(ref > 0, "the grid found nothing that fits: a bad scenario");
    const sched_candidate *b = &cand[0];
    char got[256], want[256];
    sched_policy_describe(&b->pol, got, sizeof got);
    sched_policy_describe(&gp, want, sizeof want);
    /* the pick fits, is scored by the model, and is as good as brute force */
    sched_shape sh = shape(b->pol.gpu_batch_size, sc->s, sc->cap, sc->scores);
    sh.host_visible = sc->host;
    sched_plan pl;
    sched_cost q;
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &b->pol, &sh, &pl), 0);
    cr_assert(fits(&pl, sc->gpu, sc->cpu, sc->disk), "the pick (%s) does not fit", got);
    cr_assert_eq(sched_policy_check(&b->pol), 0, "%s", err_msg());
    cr_assert_eq(sched_cost_eval(shape_of(&c), 2, &b->pol, &sh, sc->s, sc->n, &hw, &q), 0);
    cr_assert(fabs(q.tok_s - b->cost.tok_s) <= 1e-12 * q.tok_s);
    cr_assert(b->cost.tok_s >= 0.98 * ref, "search %.3f tok/s (%s) < grid %.3f tok/s (%s)",
              b->cost.tok_s, got, ref, want);
    for (int i = 1; i < n; i++)
        cr_assert(cand[i].cost.tok_s * (1 - SCHED_SEARCH_NEAR) <= cand[i - 1].cost.tok_s,
                  "not best first");
}

Test(search, matches_brute_force_gpu_tight)
{
    /* opt-125m fp16 (0.25 GB): half of it fits beside the KV */
    scenario sc = {"opt-125m", 128, 32, 160, 0, 200 * MiB, 4 * GiB, 64 * GiB, 0};
    check_against_grid(&sc);
}

Test(search, matches_brute_force_gpu_and_cpu_tight)
{
    scenario sc = {"opt-1.3b", 256, 32, 288, 0, 1 * GiB, 1536 * MiB, 64 * GiB, 0};
    check_against_grid(&sc);
}

/* A backend computing on host memory (the CPU backend): its weight slots
 * hold the disk share only and its I/O lanes no stages, which the LP's
 * tiers must count as the plan does */
Test(search, matches_brute_force_host_visible)
{
    scenario sc = {"opt-1.3b", 256, 32, 288, 0, 1 * GiB, 1 * GiB, 64 * GiB, 1};
    check_against_grid(&sc);
}

Test(search, matches_brute_force_without_disk)
{
    scenario sc = {"opt-125m", 128, 64, 192, 0, 160 * MiB, 1 * GiB, 0, 0};
    check_against_grid(&sc);
}

Test(search, matches_brute_force_h2o)
{
    scenario sc = {"opt-1.3b", 256, 32, 58, 1, 1 * GiB, 2 * GiB, 64 * GiB, 0};
    check_against_grid(&sc);
}

/* ------------------------------------------------------------ plain cases */

static int run_search(const char *model, uint64_t gpu, uint64_t cpu, uint64_t disk, int cap,
                      int scores, sched_candidate *best)
{
    model_config c = opt(model);
    sched_calib hw = t4_like();
    sched_policy base = pol(1, 1, 100, 0, 100, 0, 100, 0, 0);
    if (!disk)
        base.offload_dir[0] = '\0';
    sched_search_opts o = {.prompt_len = 512, .gen_len = 32, .prefill_rows = 4096,
                           .kv_cap = cap, .scores = scores, .max_block = 256,
                           .max_gpu_batches = 8, .cpu_attention = -1, .gpu_cap = gpu,
                           .cpu_cap = cpu, .disk_cap = disk};
    int n = 0;
    int rc = sched_search(shape_of(&c), 2, &base, &o, &hw, best, 1, &n);
    if (rc == 0)
        cr_assert_eq(n, 1);
    return rc;
}

Test(search, everything_fits_stays_on_the_gpu)
{
    sched_candidate b;
    cr_assert_eq(run_search("opt-125m", 64 * GiB, 64 * GiB, 0, 544, 0, &b), 0, "%s", err_msg());
    cr_assert(b.pol.wg == 100 && b.pol.cg == 100 && b.pol.hg == 100 && !b.pol.cpu_attention,
              "wg %g cg %g hg %g attn %d", b.pol.wg, b.pol.cg, b.pol.hg, b.pol.cpu_attention);
    cr_assert_eq(b.plan.total[SCHED_CPU], 0);
}

/* --max-prefill-seconds: without it the bound keeps rising with the block,
 * and the search takes the largest the caps allow; with it, the best block
 * whose estimated prefill fits, whose tok/s is at most the unlimited one's.
 * A limit no block meets says so. */
Test(search, prefill_time_limits_the_block)
{
    model_config c = opt("opt-1.3b");
    sched_calib hw; /* the CI machine's CPU: a large block's prefill takes minutes */
    cr_assert_eq(sched_calib_load(FH_SOURCE_ROOT "/configs/hardware/ci-2vcpu-epyc-cpu.json",
                                  &hw), 0, "%s", err_msg());
    sched_policy base = pol(1, 1, 100, 0, 100, 0, 100, 0, 0);
    base.offload_dir[0] = '\0';
    sched_search_opts o = {.prompt_len = 32, .gen_len = 8, .prefill_rows = 4096, .kv_cap = 40,
                           .max_block = 1024, .max_gpu_batches = 8, .cpu_attention = -1,
                           .gpu_cap = 4 * GiB, .cpu_cap = 64 * GiB};
    sched_candidate any, lim;
    int n = 0;
    cr_assert_eq(sched_search(shape_of(&c), 4, &base, &o, &hw, &any, 1, &n), 0, "%s",
                 err_msg());
    o.max_prefill_s = 60;
    cr_assert_gt(any.cost.prefill_s, 4 * o.max_prefill_s, "prefill %g s", any.cost.prefill_s);
    cr_assert_eq(sched_search(shape_of(&c), 4, &base, &o, &hw, &lim, 1, &n), 0, "%s",
                 err_msg());
    int b_any = any.pol.gpu_batch_size * any.pol.num_gpu_batches;
    int b_lim = lim.pol.gpu_batch_size * lim.pol.num_gpu_batches;
    cr_assert_leq(lim.cost.prefill_s, o.max_prefill_s, "prefill %g s over %g s",
                  lim.cost.prefill_s, o.max_prefill_s);
    cr_assert_lt(b_lim, b_any, "block %d with the limit, %d without", b_lim, b_any);
    cr_assert_leq(lim.cost.tok_s, any.cost.tok_s * (1 + 1e-9));
    o.max_prefill_s = 1e-9;
    cr_assert_eq(sched_search(shape_of(&c), 4, &base, &o, &hw, &lim, 1, &n), -ENOSPC);
    cr_assert(strstr(err_msg(), "--max-prefill-seconds"), "%s", err_msg());
    err_clear();
}

Test(search, no_disk_tier_puts_nothing_on_disk)
{
    /* opt-1.3b fp16 is 2.6 GB: the GPU cap holds a fraction */
    sched_candidate b;
    cr_assert_eq(run_search("opt-1.3b", 1 * GiB, 16 * GiB, 0, 544, 0, &b), 0, "%s", err_msg());
    cr_assert(b.pol.wg + b.pol.wc == 100 && b.pol.cg + b.pol.cc == 100 && b.pol.hg + b.pol.hc ==
              100, "disk shares with no disk tier");
    cr_assert(b.pol.wc > 0, "the weights cannot all fit on a 1 GiB GPU");
    cr_assert_eq(b.plan.total[SCHED_DISK], 0);
    cr_assert_eq(b.pol.offload_dir[0], 0);
    cr_assert(b.plan.total[SCHED_GPU] <= 1 * GiB);
}

Test(search, cpu_too_small_spills_weights_to_disk)
{
    sched_candidate b;
    cr_assert_eq(run_search("opt-1.3b", 1 * GiB, 1536 * MiB, 64 * GiB, 544, 0, &b), 0, "%s",
                 err_msg());
    cr_assert(b.pol.wg + b.pol.wc < 100, "2.6 GB of weights in 1 + 1.5 GiB caps: some on disk");
    cr_assert(b.plan.total[SCHED_CPU] <= 1536 * MiB && b.plan.total[SCHED_GPU] <= 1 * GiB);
    cr_assert_str_eq(b.pol.offload_dir, "/tmp");
}

/* An fp16 source on the CPU backend (4-byte elements): the search plans
 * what generate then does (sched_shape.weight_fmt): the tiers hold 2-byte
 * layers, so the same caps keep more of them resident; with the disk share
 * in a weight store, offload_dir needs no room for it. */
Test(search, plans_16_bit_weights_on_a_wider_backend)
{
    model_config c = opt("opt-1.3b");
    sched_calib hw = cpu_like(0.2, 1);
    sched_policy base = pol(1, 1, 100, 0, 100, 0, 100, 0, 0);
    sched_search_opts o = {.prompt_len = 32, .gen_len = 8, .prefill_rows = 4096,
                           .kv_cap = 40, .max_block = 8, .max_gpu_batches = 1,
                           .cpu_attention = 0, .gpu_cap = 1 * GiB, .cpu_cap = 1 * GiB,
                           .disk_cap = 64 * GiB, .host_visible = 1};
    sched_candidate f32, f16, st16;
    int n = 0;
    const sched_model *m = shape_of(&c);
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &f32, 1, &n), 0, "%s", err_msg());
    o.weight_fmt = KERN_H16_F16;
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &f16, 1, &n), 0, "%s", err_msg());
    cr_assert_eq(f32.plan.weight_fmt, 0);
    cr_assert_eq(f16.plan.weight_fmt, KERN_H16_F16);
    /* 5.3 GB fp32 / 2.6 GB fp16 in 1 + 1 GiB: more of it resident, less read per step */
    double res32 = f32.pol.wg + f32.pol.wc, res16 = f16.pol.wg + f16.pol.wc;
    cr_assert_gt(res16, res32, "resident %g %% fp16 vs %g %% fp32", res16, res32);
    cr_assert_gt(f16.cost.tok_s, f32.cost.tok_s);
    /* the plan is the one generate computes for that policy and shape */
    sched_shape sh = {.max_rows = sched_prefill_rows(4096, 32, f16.pol.gpu_batch_size),
                      .cap = 40, .weight_fmt = KERN_H16_F16, .host_visible = 1};
    sched_plan again;
    cr_assert_eq(sched_plan_compute(m, 4, &f16.pol, &sh, &again), 0, "%s", err_msg());
    cr_assert_eq(memcmp(again.total, f16.plan.total, sizeof again.total), 0);
    cr_assert_gt(f16.plan.bytes[SCHED_DISK][SCHED_WEIGHTS], 0);
    /* the disk share in a weight store: no weights.bin, so a disk of 64 MiB
     * (the KV's) does */
    o.weights_on_disk_already = 1;
    o.disk_cap = 64 * MiB;
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &st16, 1, &n), 0, "%s", err_msg());
    cr_assert_eq(st16.plan.bytes[SCHED_DISK][SCHED_WEIGHTS], 0);
    cr_assert_lt(st16.pol.wg + st16.pol.wc, 100);
    o.weights_on_disk_already = 0;
    cr_assert_neq(sched_search(m, 4, &base, &o, &hw, &st16, 1, &n), 0,
                  "2.6 GB of weights cannot spill into 64 MiB of weights.bin");
    err_clear();
}

/* Caps that hold every weight, but not with every layer cut alike: the
 * GPU tier takes half the layers' bytes and the CPU tier the other half,
 * where OPT's levels (a quarter of a layer per projection pair, a third
 * per MLP matrix) leave a tensor of every layer on disk. The search then
 * offers the mixed cuts of weight_layers, which read nothing from disk and
 * do better; --no-weight-layers (0) keeps FlexGen's rule, and the policy
 * it writes is the FlexGen one. */
Test(search, weight_layers_keep_on_the_tiers_what_the_levels_cannot)
{
    model_config c = opt("opt-1.3b");
    const sched_model *m = shape_of(&c);
    sched_calib hw = {.device = "cpu", .h2d = 20, .d2h = 20, .dram = 20, .dev_mem = 20,
                      .gemm = 0.2, .disk_read = 1, .disk_write = 1, .disk_kind = "io_uring"};
    sched_policy base = pol(1, 1, 100, 0, 100, 0, 100, 0, 0);
    /* the caps: those of the 50 / 50 mixed policy at 8 x 1, plus a little */
    sched_policy mix = pol(8, 1, 50, 50, 100, 0, 100, 0, 0);
    mix.weight_layers = 1;
    sched_shape sh = {.max_rows = sched_prefill_rows(4096, 32, 8), .cap = 40, .host_visible = 1};
    sched_plan mp;
    cr_assert_eq(sched_plan_compute(m, 4, &mix, &sh, &mp), 0, "%s", err_msg());
    cr_assert_eq(mp.bytes[SCHED_DISK][SCHED_WEIGHTS], 0);
    sched_search_opts o = {.prompt_len = 32, .gen_len = 8, .prefill_rows = 4096,
                           .kv_cap = 40, .max_block = 8, .max_gpu_batches = 1,
                           .cpu_attention = 0, .weight_layers = -1,
                           .gpu_cap = mp.total[SCHED_GPU] + 8 * MiB,
                           .cpu_cap = mp.total[SCHED_CPU] + 8 * MiB, .disk_cap = 64 * GiB,
                           .host_visible = 1, .gbs_list = (const int[]){8}, .n_gbs = 1};
    sched_candidate both, flex, only;
    int n = 0;
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &both, 1, &n), 0, "%s", err_msg());
    o.weight_layers = 0;
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &flex, 1, &n), 0, "%s", err_msg());
    o.weight_layers = 1;
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &only, 1, &n), 0, "%s", err_msg());
    cr_assert_eq(both.pol.weight_layers, 1);
    cr_assert_eq(both.plan.bytes[SCHED_DISK][SCHED_WEIGHTS], 0, "%g %g", both.pol.wg,
                 both.pol.wc);
    cr_assert_eq(flex.pol.weight_layers, 0);
    cr_assert_gt(flex.plan.bytes[SCHED_DISK][SCHED_WEIGHTS], 0);
    cr_assert_gt(both.cost.tok_s, flex.cost.tok_s, "%g vs %g", both.cost.tok_s,
                 flex.cost.tok_s);
    cr_assert_eq(only.pol.weight_layers, 1);
    cr_assert_float_eq(only.cost.tok_s, both.cost.tok_s, 1e-9 * both.cost.tok_s);
    /* within the caps, and the plan generate computes for it */
    cr_assert_leq(both.plan.total[SCHED_GPU], o.gpu_cap);
    cr_assert_leq(both.plan.total[SCHED_CPU], o.cpu_cap);
    sched_plan again;
    cr_assert_eq(sched_plan_compute(m, 4, &both.pol, &sh, &again), 0, "%s", err_msg());
    cr_assert_eq(memcmp(again.total, both.plan.total, sizeof again.total), 0);
    /* every layer cut alike (all on the GPU tier here): the FlexGen policy,
     * whichever way the search found it */
    o.gpu_cap = 64 * GiB;
    o.weight_layers = 1;
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &only, 1, &n), 0, "%s", err_msg());
    cr_assert_eq(only.pol.weight_layers, 0);
    cr_assert_eq(only.pol.wg, 100);
    cr_assert_eq(only.plan.bytes[SCHED_CPU][SCHED_WEIGHTS], 0);
}

/* Where the GPU tier is tight, the prefill's work buffers (its rows of
 * every activation) take room the block needs: the search tries shorter
 * prefill passes, and in this case a block of 64 only fits with them. The
 * pick records its rows; the plan of the written policy is the pick's. With
 * --prefill-rows given (pick_prefill_rows 0) the rows stay those. */
Test(search, tight_gpu_tier_picks_shorter_prefill_passes)
{
    model_config c = opt("opt-1.3b");
    const sched_model *m = shape_of(&c);
    sched_calib hw = cpu_like(1, 2);
    sched_policy base = pol(1, 1, 100, 0, 100, 0, 100, 0, 0);
    /* the GPU cap: a block of 64 with 1024-row passes, its weights and KV off the
     * tier (the embedding, the work buffers and the KV staging stay) */
    sched_policy want = pol(64, 1, 0, 100, 0, 100, 100, 0, 0);
    want.prefill_rows = 1024;
    sched_shape sh = {.max_rows = sched_prefill_rows(1024, 128, 64), .cap = 160,
                      .host_visible = 1};
    sched_plan wp;
    cr_assert_eq(sched_plan_compute(m, 4, &want, &sh, &wp), 0, "%s", err_msg());
    sched_search_opts o = {.prompt_len = 128, .gen_len = 32, .prefill_rows = SCHED_PREFILL_ROWS,
                           .pick_prefill_rows = 1, .kv_cap = 160, .max_block = 64,
                           .max_gpu_batches = 1, .cpu_attention = 0, .weight_layers = 0,
                           .gpu_cap = wp.total[SCHED_GPU] + 8 * MiB, .cpu_cap = 16 * GiB,
                           .disk_cap = 64 * GiB, .host_visible = 1,
                           .gbs_list = (const int[]){16, 32, 64}, .n_gbs = 3};
    sched_candidate pick, fixed;
    int n = 0;
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &pick, 1, &n), 0, "%s", err_msg());
    o.pick_prefill_rows = 0;
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &fixed, 1, &n), 0, "%s", err_msg());
    cr_assert_eq(fixed.pol.prefill_rows, 0, "the rows given stay the default");
    cr_assert_lt(fixed.pol.gpu_batch_size, 64, "4096-row passes leave no room for 64");
    cr_assert_eq(pick.pol.gpu_batch_size, 64);
    cr_assert(pick.pol.prefill_rows > 0 && pick.pol.prefill_rows <= 1024, "rows %d",
              pick.pol.prefill_rows);
    cr_assert_gt(pick.cost.tok_s, fixed.cost.tok_s, "%g vs %g", pick.cost.tok_s,
                 fixed.cost.tok_s);
    /* within the cap, and what generate plans for the written policy */
    cr_assert_leq(pick.plan.total[SCHED_GPU], o.gpu_cap);
    sched_shape ps = sh;
    ps.max_rows = sched_prefill_rows(sched_policy_prefill_rows(&pick.pol), 128, 64);
    sched_plan again;
    cr_assert_eq(sched_plan_compute(m, 4, &pick.pol, &ps, &again), 0, "%s", err_msg());
    cr_assert_eq(memcmp(again.total, pick.plan.total, sizeof again.total), 0);
    char line[256];
    sched_policy_describe(&pick.pol, line, sizeof line);
    cr_assert(strstr(line, "prefill") && strstr(line, "rows"), "%s", line);

    /* a GPU batch whose prompts are fewer rows than a pass takes (8 x 128 =
     * 1024 < 4096, 2048): the halves go on below its own rows, down to a
     * prompt; here only 256-row passes fit */
    sched_policy small = want;
    small.gpu_batch_size = 8;
    small.prefill_rows = 256;
    sh.max_rows = sched_prefill_rows(256, 128, 8);
    cr_assert_eq(sched_plan_compute(m, 4, &small, &sh, &wp), 0, "%s", err_msg());
    o.gpu_cap = wp.total[SCHED_GPU] + 1 * MiB;
    o.gbs_list = (const int[]){8};
    o.n_gbs = 1;
    o.pick_prefill_rows = 1;
    cr_assert_eq(sched_search(m, 4, &base, &o, &hw, &pick, 1, &n), 0, "%s", err_msg());
    cr_assert(pick.pol.prefill_rows >= 128 && pick.pol.prefill_rows <= 256, "rows %d",
              pick.pol.prefill_rows);
    cr_assert_leq(pick.plan.total[SCHED_GPU], o.gpu_cap);
}

Test(search, h2o_budget_raises_the_bound)
{
    /* KV-bound: OPT-1.3B with 512 + 32 tokens, no disk; H2O keeps 20 % */
    sched_candidate full, h2o;
    cr_assert_eq(run_search("opt-1.3b", 4 * GiB, 8 * GiB, 0, 544, 0, &full), 0, "%s",
                 err_msg());
    cr_assert_eq(run_search("opt-1.3b", 4 * GiB, 8 * GiB, 0, 109, 1, &h2o), 0, "%s",
                 err_msg());
    cr_assert(h2o.cost.tok_s > 1.5 * full.cost.tok_s, "h2o %.2f vs full %.2f tok/s",
              h2o.cost.tok_s, full.cost.tok_s);
    cr_assert(h2o.plan.block > full.plan.block, "h2o block %d vs full %d", h2o.plan.block,
              full.plan.block);
}

Test(search, print_lists_the_candidates_best_first)
{
    model_config c = opt("opt-1.3b");
    sched_calib hw = t4_like();
    sched_policy base = pol(1, 1, 100, 0, 100, 0, 100, 0, 0);
    base.offload_dir[0] = '\0';
    sched_search_opts o = {.prompt_len = 512, .gen_len = 32, .prefill_rows = 4096,
                           .kv_cap = 544, .max_block = 64, .max_gpu_batches = 4,
                           .cpu_attention = -1, .gpu_cap = 1 * GiB, .cpu_cap = 16 * GiB};
    sched_candidate best[3];
    int n = 0;
    cr_assert_eq(sched_search(shape_of(&c), 2, &base, &o, &hw, best, 3, &n), 0, "%s",
                 err_msg());
    cr_assert_eq(n, 3);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert(f);
    sched_search_print(f, best, n);
    fclose(f);
    const char *head = " rank  gbs x K    block     wg     wc     cg     cc   hg   hc  cpu-attn  "
                       "bound tok/s   step s  prefill s  step limited by\n";
    cr_assert_eq(strncmp(text, head, strlen(head)), 0, "%s", text);
    const char *line = text + strlen(head);
    for (int i = 0; i < n; i++) {
        const sched_policy *p = &best[i].pol;
        char want[256];
        snprintf(want, sizeof want, " %4d  %4d x %-3d %6d %6.4g %6.4g %6.4g %6.4g %4g %4g  %-8s"
                 "  %11.2f  %7.3f  %9.2f  %s\n", i + 1, p->gpu_batch_size, p->num_gpu_batches,
                 best[i].plan.block, p->wg, p->wc, p->cg, p->cc, p->hg, p->hc,
                 p->cpu_attention ? "yes" : "no", best[i].cost.tok_s, best[i].cost.step_s,
                 best[i].cost.prefill_s, sched_cost_term_name(best[i].cost.step_limit));
        cr_assert_eq(strncmp(line, want, strlen(want)), 0, "line %d: \"%s\" in\n%s", i + 1,
                     want, text);
        line += strlen(want);
        /* best first, bounds within SCHED_SEARCH_NEAR counting as equal */
        if (i > 0)
            cr_assert_geq(best[i - 1].cost.tok_s, best[i].cost.tok_s * (1 - SCHED_SEARCH_NEAR),
                          "not best first");
    }
    cr_assert_eq(*line, '\0', "more than %d lines:\n%s", n, text);
    free(text);
}

Test(search, nothing_fits_says_what_it_needs)
{
    sched_candidate b;
    err_clear();
    cr_assert_eq(run_search("opt-1.3b", 8 * MiB, 64 * GiB, 64 * GiB, 544, 0, &b), -ENOSPC);
    cr_assert(strstr(err_msg(), "no policy fits: even one sequence with everything offloaded "
                                "needs"), "%s", err_msg());
    cr_assert(strstr(err_msg(), "(--gpu-mem 0.01 GiB)"), "%s", err_msg());
}

Test(search, refuses_a_profile_without_disk_rates)
{
    model_config c = opt("opt-125m");
    sched_calib hw = t4_like();
    hw.disk_read = hw.disk_write = 0;
    sched_policy base = pol(1, 1, 100, 0, 100, 0, 100, 0, 0);
    sched_search_opts o = {.prompt_len = 8, .gen_len = 8, .prefill_rows = 4096, .kv_cap = 16,
                           .max_block = 8, .max_gpu_batches = 1, .cpu_attention = -1,
                           .gpu_cap = GiB, .cpu_cap = GiB, .disk_cap = GiB};
    sched_candidate b;
    int n;
    cr_assert_eq(sched_search(shape_of(&c), 2, &base, &o, &hw, &b, 1, &n), -EINVAL);
    cr_assert(strstr(err_msg(), "the hardware profile has no disk rates; calibrate with "
                                "--offload-dir"), "%s", err_msg());
}

/* ------------------------------------------------------------ files */

/* A profile file with text must be refused with msg in the message. */
static void refused_profile(const char *name, const char *text, const char *msg)
{
    char path[512];
    sched_calib back;
    cli_write(name, text);
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    err_clear();
    cr_assert_eq(sched_calib_load(path, &back), -EINVAL, "%s was accepted", name);
    cr_assert(strstr(err_msg(), msg), "%s: \"%s\" lacks \"%s\"", name, err_msg(), msg);
}

Test(search, profile_round_trip_and_refusals)
{
    sched_calib hw = t4_like(), back;
    hw.n_gemm = 2;
    hw.gemm_rows[0] = 1, hw.gemm_rows[1] = 64;
    hw.gemm_at[0] = 0.25, hw.gemm_at[1] = 12.5;
    char path[512];
    snprintf(path, sizeof path, "%s/hw.json", cli_dir);
    cr_assert_eq(sched_calib_write(path, &hw), 0, "%s", err_msg());
    cr_assert_eq(sched_calib_load(path, &back), 0, "%s", err_msg());
    cr_assert_str_eq(back.device, "cuda");
    cr_assert_str_eq(back.disk_kind, "io_uring");
    double a[] = {hw.h2d, hw.d2h, hw.dram, hw.dev_mem, hw.gemm, hw.disk_read, hw.disk_write};
    double b[] = {back.h2d, back.d2h, back.dram, back.dev_mem, back.gemm, back.disk_read,
                  back.disk_write};
    for (int i = 0; i < 7; i++)
        cr_assert(fabs(a[i] - b[i]) < 1e-3, "rate %d: %g vs %g", i, a[i], b[i]);
    cr_assert(back.n_gemm == 2 && back.gemm_rows[1] == 64 && back.gemm_at[1] == 12.5);

    refused_profile("rows.json", "{\"device\": \"cpu\", \"h2d_GBps\": 1, \"d2h_GBps\": 1, "
                    "\"dram_GBps\": 1, \"dev_mem_GBps\": 1, \"gemm_TFLOPs\": 1, "
                    "\"gemm_rows\": [1, 64, 16], \"gemm_TFLOPs_at\": [1, 2, 3]}",
                    "\"gemm_rows\" must increase from 1");
    refused_profile("nogemm.json", "{\"device\": \"cpu\", \"h2d_GBps\": 1, \"d2h_GBps\": 1, "
                    "\"dram_GBps\": 1, \"dev_mem_GBps\": 1}",
                    "nogemm.json: no field \"gemm_TFLOPs\"; a hardware profile is what "
                    "`flexh2o calibrate --out FILE` writes");
    refused_profile("neg.json", "{\"device\": \"cpu\", \"h2d_GBps\": -1, \"d2h_GBps\": 1, "
                    "\"dram_GBps\": 1, \"dev_mem_GBps\": 1, \"gemm_TFLOPs\": 1}",
                    "neg.json: field \"h2d_GBps\" must be a positive number");
    refused_profile("tpu.json", "{\"device\": \"tpu\"}",
                    "field \"device\" must be \"cpu\" or \"cuda\"");
    refused_profile("junk.json", "[1, 2", "junk.json: not a JSON object");
    err_clear();
    cr_assert_eq(sched_calib_write("/nonexistent/dir/hw.json", &hw), -ENOENT);
    cr_assert(strstr(err_msg(), "/nonexistent/dir/hw.json: cannot write the profile (No such "
                                "file or directory); choose a writable path"), "%s", err_msg());
}

/* The rates of a profile with two GEMM shapes, in one array. */
static void rates_of(const sched_calib *hw, double r[9])
{
    double v[] = {hw->h2d, hw->d2h, hw->dram, hw->dev_mem, hw->gemm, hw->disk_read,
                  hw->disk_write, hw->gemm_at[0], hw->gemm_at[1]};
    memcpy(r, v, sizeof v);
}

Test(search, profile_share_divides_what_ranks_share)
{
    sched_calib hw = t4_like(), sh;
    hw.n_gemm = 2;
    hw.gemm_rows[0] = 1, hw.gemm_rows[1] = 64;
    hw.gemm_at[0] = 0.25, hw.gemm_at[1] = 12.5;
    double a[9], b[9];
    rates_of(&hw, a);
    /* a GPU host: the disk and host memory are shared, each GPU and its
     * link are not (h2d, d2h, dev_mem, gemm, gemm_at: 0, 1, 3, 4, 7, 8) */
    const int shared_gpu[9] = {0, 0, 1, 0, 0, 1, 1, 0, 0};
    sh = hw;
    cr_assert_eq(sched_calib_share(&sh, 4), 0, "%s", err_msg());
    rates_of(&sh, b);
    for (int i = 0; i < 9; i++)
        cr_assert_eq(b[i], shared_gpu[i] ? a[i] / 4 : a[i], "cuda rate %d: %g of %g", i, b[i],
                     a[i]);
    /* a CPU host: its "device" is the host, all of it shared */
    snprintf(hw.device, sizeof hw.device, "cpu");
    sh = hw;
    cr_assert_eq(sched_calib_share(&sh, 4), 0, "%s", err_msg());
    rates_of(&sh, b);
    for (int i = 0; i < 9; i++)
        cr_assert_eq(b[i], a[i] / 4, "cpu rate %d: %g, want %g", i, b[i], a[i] / 4);
    cr_assert(sh.n_gemm == 2 && sh.gemm_rows[1] == 64, "the shapes stay");
    cr_assert_str_eq(sh.device, "cpu");
    /* one rank alone: nothing changes; no ranks: refused, nothing changes */
    sh = hw;
    cr_assert_eq(sched_calib_share(&sh, 1), 0);
    rates_of(&sh, b);
    cr_assert_eq(memcmp(a, b, sizeof a), 0, "k = 1 changed a rate");
    cr_assert_eq(sched_calib_share(&sh, 0), -EINVAL);
    rates_of(&sh, b);
    cr_assert_eq(memcmp(a, b, sizeof a), 0, "k = 0 changed a rate");
}

Test(search, policy_file_round_trip)
{
    sched_policy p = pol(48, 3, 20, 80, 0, 100, 0, 100, 1), q;
    p.overlap = 0;
    p.gpu_mem = 16 * GiB;
    p.cpu_mem = 200 * GiB;
    snprintf(p.offload_dir, sizeof p.offload_dir, "/nvme/with \"quotes\"");
    char path[512];
    snprintf(path, sizeof path, "%s/p.json", cli_dir);
    cr_assert_eq(sched_policy_write(path, &p), 0, "%s", err_msg());
    sched_policy_default(&q);
    cr_assert_eq(sched_policy_load(path, &q), 0, "%s", err_msg());
    cr_assert(p.gpu_batch_size == q.gpu_batch_size && p.num_gpu_batches == q.num_gpu_batches);
    cr_assert(p.wg == q.wg && p.wc == q.wc && p.cg == q.cg && p.cc == q.cc && p.hg == q.hg &&
              p.hc == q.hc);
    cr_assert(p.overlap == q.overlap && p.pin_weight == q.pin_weight &&
              p.cpu_attention == q.cpu_attention);
    cr_assert(p.gpu_mem == q.gpu_mem && p.cpu_mem == q.cpu_mem);
    cr_assert_str_eq(q.offload_dir, p.offload_dir);
    cr_assert_eq(q.weight_layers, 0);
    /* weight_layers is written only where set (a FlexGen policy file stays one) */
    p.weight_layers = 1;
    p.wg = 47.25;
    cr_assert_eq(sched_policy_write(path, &p), 0, "%s", err_msg());
    sched_policy_default(&q);
    cr_assert_eq(sched_policy_load(path, &q), 0, "%s", err_msg());
    cr_assert(q.weight_layers == 1 && q.wg == 47.25);
    cr_assert_eq(q.prefill_rows, 0, "prefill_rows is written only where set");
    /* the prefill rows the search picked; out of range refused, naming the field */
    p.prefill_rows = 512;
    cr_assert_eq(sched_policy_write(path, &p), 0, "%s", err_msg());
    cr_assert_eq(sched_policy_load(path, &q), 0, "%s", err_msg());
    cr_assert_eq(q.prefill_rows, 512);
    cr_assert_eq(sched_policy_prefill_rows(&q), 512);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs("{\"gpu_batch_size\": 4, \"prefill_rows\": 0}\n", f);
    fclose(f);
    cr_assert_eq(sched_policy_load(path, &q), -EINVAL);
    cr_assert(strstr(err_msg(), "\"prefill_rows\" is 0; expected an integer in [1, 16777216]"),
              "%s", err_msg());
    err_clear();
    cr_assert(sched_policy_write("/nonexistent/dir/p.json", &p) < 0);
    cr_assert(strstr(err_msg(), "cannot write the policy"), "%s", err_msg());
}

/* ------------------------------------------------------------ CLI */

Test(search, cli_calibrate_search_generate)
{
    cr_assert_eq(cli_run("calibrate --device cpu --bytes 64M --offload-dir . --out hw.json"), 0,
                 "%s", cli_err);
    char *hw = cli_read("hw.json");
    cr_assert(strstr(hw, "\"gemm_TFLOPs\"") && strstr(hw, "\"disk_read_GBps\"") &&
              strstr(hw, "\"gemm_rows\":[1,4,16,64,256,1024,2048]"), "%s", hw);
    free(hw);
    /* opt-125m fp32 is 0.5 GB: a 300 MiB GPU tier forces offloading */
    cr_assert_eq(cli_run("search --dummy opt-125m --device cpu --hardware hw.json "
                         "--prompt-len 8 --gen-len 4 --gpu-mem 300M --cpu-mem 2G "
                         "--max-block 8 --top 3 --out pol.json"), 0, "%s", cli_err);
    char *out = cli_read("stdout.txt");
    cr_assert(strstr(out, " rank  gbs x K"), "%s", out);
    cr_assert(strstr(out, "[flexh2o] plan        gpu"), "%s", out);
    cr_assert(strstr(out, "[flexh2o] wrote pol.json"), "%s", out);
    free(out);
    cli_write("p.jsonl", "{\"prompt_ids\": [2, 9, 30, 31, 32, 33, 34, 35]}\n"
                         "{\"prompt_ids\": [2, 7, 8]}\n");
    cr_assert_eq(cli_run("generate --dummy opt-125m --policy pol.json --prompts p.jsonl "
                         "--out o.jsonl --max-new-tokens 4 --ignore-eos --quiet --plan"), 0,
                 "%s", cli_err);
    cr_assert_eq(cli_run("generate --dummy opt-125m --policy pol.json --prompts p.jsonl "
                         "--out o.jsonl --max-new-tokens 4 --ignore-eos --quiet"), 0,
                 "%s", cli_err);
    char *o = cli_read("o.jsonl");
    int lines = 0;
    for (const char *c = o; *c; c++)
        lines += *c == '\n';
    cr_assert_eq(lines, 2, "%s", o);
    free(o);
}

/* Bounds within SCHED_SEARCH_NEAR rank by what the policy moves: here the
 * step is bound by device memory whatever the weights' placement, and a
 * policy reading half the layers from disk every step has a bound a hair
 * higher than one keeping them all in RAM; the RAM one ranks first. */
Test(search, near_equal_bounds_rank_the_policy_that_moves_less_first)
{
    cli_write("hw.json", "{\"device\": \"cpu\", \"h2d_GBps\": 12, \"d2h_GBps\": 12, "
              "\"dram_GBps\": 25, \"dev_mem_GBps\": 10, \"gemm_TFLOPs\": 1, "
              "\"disk_read_GBps\": 2, \"disk_write_GBps\": 2, \"disk_engine\": \"io_uring\", "
              "\"o_direct\": true}\n");
    cr_assert_eq(cli_run("search --dummy opt-1.3b --device cpu --hardware hw.json --prompt-len 128 "
                         "--gen-len 32 --gpu-mem 768M --cpu-mem 4G --offload-dir . --max-block 64 "
                         "--top 8 --kv-policy h2o --kv-ratio 0.2 --compress-weight "
                         "--compress-cache"), 0, "%s", cli_err);
    char *out = cli_read("stdout.txt");
    const char *l = strstr(out, " rank  gbs x K");
    cr_assert(l, "%s", out);
    double first = 0, disk_best = 0;
    int rows = 0;
    for (l = strchr(l, '\n'); l && l[1] == ' '; l = strchr(l + 1, '\n')) {
        int rank, gbs, K, block;
        double wg, wc, cg, cc, tok_s;
        char attn[8];
        cr_assert_eq(sscanf(l + 1, "%d %d x %d %d %lf %lf %lf %lf %*g %*g %7s %lf", &rank, &gbs,
                            &K, &block, &wg, &wc, &cg, &cc, attn, &tok_s), 10, "%.120s", l + 1);
        if (rank == 1) {
            first = tok_s;
            cr_assert(wg + wc > 99.99, "the first policy reads layers from disk: %.120s", l + 1);
        } else if (wg + wc < 99.99 && tok_s > disk_best) {
            disk_best = tok_s;
        }
        rows++;
    }
    free(out);
    cr_assert_eq(rows, 8);
    cr_assert(disk_best >= first && disk_best <= first * (1 + SCHED_SEARCH_NEAR),
              "a disk policy of a bound %g, near the first's %g, ranks after it", disk_best,
              first);
}

/* The GPU tier's work column of `generate ... --plan` in GiB. */
static double plan_gpu_work(void)
{
    char *out = cli_read("stdout.txt");
    cr_assert(out);
    const char *l = strstr(out, "[flexh2o] plan        gpu");
    cr_assert(l, "%s", out);
    double w[6];
    cr_assert_eq(sscanf(l, "[flexh2o] plan        gpu %lf %lf %lf %lf %lf %lf", &w[0], &w[1],
                        &w[2], &w[3], &w[4], &w[5]), 6, "%s", l);
    free(out);
    return w[4];
}

/* A policy file's prefill_rows sizes generate's prefill passes (the work
 * buffers of the plan), and --prefill-rows on the command line overrides it. */
Test(search, cli_generate_takes_the_policys_prefill_rows)
{
    char *p = malloc(16384), *at = p;
    cr_assert(p);
    for (int i = 0; i < 4; i++) {
        at += sprintf(at, "{\"prompt_ids\": [2");
        for (int j = 1; j < 300; j++)
            at += sprintf(at, ", %d", 3 + (i * 300 + j) % 500);
        at += sprintf(at, "]}\n");
    }
    cli_write("p.jsonl", p);
    free(p);
    cli_write("rows.json", "{\"gpu_batch_size\": 4, \"prefill_rows\": 300}\n");
    cli_write("plain.json", "{\"gpu_batch_size\": 4}\n");
    const char *run = "generate --dummy opt-125m --prompts p.jsonl --out o.jsonl "
                      "--max-new-tokens 4 --plan";
    cr_assert_eq(cli_run("%s --policy plain.json", run), 0, "%s", cli_err);
    double whole = plan_gpu_work(); /* 1200 rows: the four prompts in one pass */
    cr_assert_eq(cli_run("%s --policy rows.json", run), 0, "%s", cli_err);
    double short_ = plan_gpu_work(); /* 300 rows a pass */
    cr_assert_eq(cli_run("%s --policy rows.json --prefill-rows 4096", run), 0, "%s", cli_err);
    double flag = plan_gpu_work();
    cr_assert(short_ < 0.5 * whole, "work %g GiB with 300-row passes, %g with 1200", short_,
              whole);
    cr_assert_eq(flag, whole, "--prefill-rows over the file's");
}

/* search --model on an fp16 weight store plans the 16-bit tiers generate
 * uses, and its policy runs on that store. */
Test(search, cli_plans_an_fp16_store_as_generate_runs_it)
{
    cli_write("hw.json", "{\"device\": \"cpu\", \"h2d_GBps\": 10, \"d2h_GBps\": 10, "
                         "\"dram_GBps\": 20, \"dev_mem_GBps\": 20, \"gemm_TFLOPs\": 0.1, "
                         "\"disk_read_GBps\": 1, \"disk_write_GBps\": 1}");
    cr_assert_eq(cli_run("convert --model " TINY " --out st16"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("convert --model " TINY " --out st32 --dtype f32"), 0, "%s", cli_err);
    cr_assert_eq(cli_run("search --model st32 --device cpu --hardware hw.json --prompt-len 8 "
                         "--gen-len 4 --gpu-mem 600K --cpu-mem 1G --max-block 4"), 0, "%s",
                 cli_err);
    char *out = cli_read("stdout.txt");
    cr_assert(strstr(out, "(4-byte elements), prompt 8"), "%s", out);
    free(out);
    cr_assert_eq(cli_run("search --model st16 --device cpu --hardware hw.json --prompt-len 8 "
                         "--gen-len 4 --gpu-mem 600K --cpu-mem 1G --max-block 4 "
                         "--offload-dir . --out pol.json"), 0, "%s", cli_err);
    out = cli_read("stdout.txt");
    cr_assert(strstr(out, "(4-byte elements, fp16 weights widened per block)"), "%s", out);
    free(out);
    cli_write("p.jsonl", "{\"prompt_ids\": [2, 9, 30, 31, 32, 33, 34, 35]}\n");
    cr_assert_eq(cli_run("generate --model st16 --policy pol.json --prompts p.jsonl "
                         "--out o.jsonl --max-new-tokens 4 --ignore-eos --quiet --device cpu"),
                 0, "%s", cli_err);
    out = cli_read("o.jsonl");
    cr_assert(strstr(out, "\"finish_reason\":\"length\"}"), "%s", out);
    free(out);
}

Test(search, cli_takes_the_lengths_from_the_prompt_file)
{
    cli_write("hw.json", "{\"device\": \"cpu\", \"h2d_GBps\": 10, \"d2h_GBps\": 10, "
                         "\"dram_GBps\": 20, \"dev_mem_GBps\": 20, \"gemm_TFLOPs\": 0.1}");
    cli_write("p.jsonl", "{\"prompt_ids\": [2, 9, 30, 31, 32]}\n"
                         "{\"prompt_ids\": [2, 9, 30, 31, 32, 33, 34, 35, 36], "
                         "\"max_new_tokens\": 3}\n"
                         "{\"prompt_ids\": [2, 7, 8], \"max_new_tokens\": 6}\n");
    /* longest prompt 9, longest generation max(4, 3, 6) = 6; H2O 50 %: the
     * largest budget is ceil(0.5 x 12) = 6 (9 + 3) */
    cr_assert_eq(cli_run("search --dummy opt-125m --device cpu --hardware hw.json --prompts "
                         "p.jsonl --max-new-tokens 4 --gpu-mem 4G --cpu-mem 4G "
                         "--kv-policy h2o --kv-ratio 0.5"), 0, "%s", cli_err);
    char *out = cli_read("stdout.txt");
    cr_assert(strstr(out, "prompt 9 + gen 6, 6 KV slots per sequence (h2o)"), "%s", out);
    cr_assert(strstr(out, "[flexh2o] job: 3 prompts in p.jsonl"), "%s", out);
    /* everything fits: the whole job (3 prompts, a size not in the default
     * list) as one GPU batch, and no block larger than the job */
    cr_assert(strstr(out, "\n    1     3 x 1        3 "), "%s", out);
    cr_assert(!strstr(out, "    4 x ") && !strstr(out, " x 4 "), "%s", out);
    free(out);
    cr_assert_eq(cli_run("search --dummy opt-125m --hardware hw.json --prompts p.jsonl "
                         "--prompt-len 8 --gpu-mem 1G"), 2);
    cr_assert(strstr(cli_err, "give --prompts FILE or --prompt-len and --gen-len, not both"),
              "%s", cli_err);
    /* chat requests are planned as generate renders them: with the template
     * generate is given (without one this model's chat lines are error
     * lines, planned for nothing) */
    cli_write("c.jsonl", "{\"prompt_ids\": [2, 9, 30]}\n"
                         "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief "
                         "and kind.\"}, {\"role\": \"user\", \"content\": \"Hello there\"}]}\n");
    const char *llama = FH_SOURCE_ROOT "/tests/fixtures/tiny-llama";
    cr_assert_eq(cli_run("search --model %s --device cpu --hardware hw.json --prompts c.jsonl "
                         "--max-new-tokens 4 --gpu-mem 1G --cpu-mem 1G", llama), 0, "%s",
                 cli_err);
    out = cli_read("stdout.txt");
    cr_assert(strstr(out, "prompt 3 + gen 4,"), "%s", out);
    free(out);
    cr_assert_eq(cli_run("search --model %s --device cpu --hardware hw.json --prompts c.jsonl "
                         "--max-new-tokens 4 --gpu-mem 1G --cpu-mem 1G --chat-template llama3",
                         llama), 0, "%s", cli_err);
    out = cli_read("stdout.txt");
    int plen = 0;
    const char *at = strstr(out, "prompt ");
    cr_assert(at && sscanf(at, "prompt %d + gen 4,", &plen) == 1 && plen > 20, "%s", out);
    free(out);
    cr_assert_eq(cli_run("search --model %s --device cpu --hardware hw.json --prompt-len 8 "
                         "--gen-len 4 --gpu-mem 1G --chat-template llama3", llama), 2);
    cr_assert(strstr(cli_err, "--chat-template renders the chat requests of --prompts"), "%s",
              cli_err);
    cr_assert_eq(cli_run("search --model %s --device cpu --hardware hw.json --prompts c.jsonl "
                         "--gpu-mem 1G --chat-template llama9", llama), 2);
    cr_assert(strstr(cli_err, "unknown chat template \"llama9\""), "%s", cli_err);
    cli_write("bad.jsonl", "{\"nothing\": 1}\n");
    cr_assert_eq(cli_run("search --dummy opt-125m --hardware hw.json --prompts bad.jsonl "
                         "--gpu-mem 1G"), 1);
    cr_assert(strstr(cli_err, "bad.jsonl: no valid prompt to plan for"), "%s", cli_err);
}

Test(search, cli_refusals)
{
    /* an output path that cannot be written is refused before the measuring
     * and the search, not after them */
    cr_assert_eq(cli_run("calibrate --device cpu --bytes 16M --out nowhere/hw.json"), 2);
    cr_assert(strstr(cli_err, "flexh2o calibrate: --out nowhere/hw.json: cannot write there (No "
                              "such file or directory)"), "%s", cli_err);
    cr_assert(!strstr(cli_err, "[flexh2o]"), "it measured first: %s", cli_err);
    cr_assert_eq(cli_run("calibrate --device cpu --bytes 16M --out ."), 2);
    cr_assert(strstr(cli_err, "--out .: a directory; give a file path"), "%s", cli_err);
    cr_assert_eq(cli_run("search --dummy opt-125m --gpu-mem 1G --prompt-len 8 --gen-len 4 "
                         "--out nowhere/p.json"), 2);
    cr_assert(strstr(cli_err, "flexh2o search: --out nowhere/p.json: cannot write there"), "%s",
              cli_err);
    cr_assert(!strstr(cli_err, "measuring"), "it measured first: %s", cli_err);
    cr_assert_eq(cli_run("search --dummy opt-125m --prompt-len 8 --gen-len 4"), 2);
    cr_assert(strstr(cli_err, "flexh2o search: --gpu-mem is required"), "%s", cli_err);
    cr_assert_eq(cli_run("search --dummy opt-125m --gpu-mem 1G"), 2);
    cr_assert(strstr(cli_err, "--prompt-len and --gen-len are required"), "%s", cli_err);
    cr_assert_eq(cli_run("search --dummy opt-125m --gpu-mem 1G --prompt-len 8 --gen-len 4 "
                         "--hardware missing.json"), 2);
    cr_assert(strstr(cli_err, "missing.json"), "%s", cli_err);
    cli_write("hw.json", "{\"device\": \"cuda\", \"h2d_GBps\": 1, \"d2h_GBps\": 1, "
                         "\"dram_GBps\": 1, \"dev_mem_GBps\": 1, \"gemm_TFLOPs\": 1}");
    cr_assert_eq(cli_run("search --dummy opt-125m --gpu-mem 1G --prompt-len 8 --gen-len 4 "
                         "--hardware hw.json --device cpu"), 2);
    cr_assert(strstr(cli_err, "--device cpu but hw.json was measured on cuda"), "%s", cli_err);
    cr_assert_eq(cli_run("search --dummy opt-125m --gpu-mem 1G --prompt-len 8 --gen-len 4 "
                         "--hardware hw.json --offload-dir nowhere"), 2);
    cr_assert(strstr(cli_err, "--offload-dir nowhere is not a directory"), "%s", cli_err);
    cr_assert_eq(cli_run("search --dummy opt-125m --gpu-mem 1G --prompt-len 8 --gen-len 4 "
                         "--hardware hw.json --kv-policy h2o"), 2);
    cr_assert(strstr(cli_err, "--kv-ratio"), "%s", cli_err);
    cr_assert_eq(cli_run("search --dummy opt-125m --gpu-mem 1M --cpu-mem 1G --prompt-len 8 "
                         "--gen-len 4 --hardware hw.json"), 1);
    cr_assert(strstr(cli_err, "flexh2o: no policy fits"), "%s", cli_err);
}

/* ------------------------------------------------------------ CLI: ranks */

/* A GPU host in round numbers with a disk (no GPU needed to search for it),
 * and the search every ranks test runs: opt-125m fp16 (0.25 GB) with a
 * 150 MiB GPU tier, so that about half of the layer weights live off the
 * GPU; extra: the ranks flags. */
#define RANKS_HW "{\"device\": \"cuda\", \"h2d_GBps\": 12, \"d2h_GBps\": 12, \"dram_GBps\": " \
                 "40, \"dev_mem_GBps\": 250, \"gemm_TFLOPs\": 40, \"disk_read_GBps\": 2, "    \
                 "\"disk_write_GBps\": 1.5}"
#define RANKS_CPU_MEM (400 * MiB)

static int ranks_search(const char *out, const char *extra)
{
    return cli_run("search --dummy opt-125m --hardware hw.json --prompt-len 64 --gen-len 16 "
                   "--gpu-mem 150M --cpu-mem 400M --offload-dir . --max-block 16 --top 3 "
                   "--out %s %s", out, extra);
}

/* The bound of the first candidate of a search's table. */
static double first_bound(const char *out)
{
    const char *row = strstr(out, "\n    1 ");
    cr_assert(row, "no candidate in\n%s", out);
    int r, gbs, k, block;
    double pct[6], tok_s;
    char attn[8];
    cr_assert_eq(sscanf(row, "%d %d x %d %d %lf %lf %lf %lf %lf %lf %7s %lf", &r, &gbs, &k,
                        &block, &pct[0], &pct[1], &pct[2], &pct[3], &pct[4], &pct[5], attn,
                        &tok_s), 12, "%s", row);
    return tok_s;
}

/* The ranks line: the job's bound, the ranks counted, the rank's bound.
 * @return 1 when the output has one. */
static int ranks_line(const char *out, double *job, int *n, double *rank)
{
    const char *l = strstr(out, "job throughput bound ");
    return l && sscanf(l, "job throughput bound %lf tok/s = %d x %lf tok/s per rank", job, n,
                       rank) == 3;
}

/* The policy a search wrote, planned as the search plans it. */
static sched_policy ranks_policy(const char *name, sched_plan *pl)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cli_dir, name);
    sched_policy p;
    sched_policy_default(&p);
    cr_assert_eq(sched_policy_load(path, &p), 0, "%s", err_msg());
    model_config c = opt("opt-125m");
    sched_shape sh = shape(p.gpu_batch_size, 64, 80, 0);
    cr_assert_eq(sched_plan_compute(shape_of(&c), 2, &p, &sh, pl), 0, "%s", err_msg());
    return p;
}

Test(search, cli_one_rank_is_no_flag)
{
    cli_write("hw.json", RANKS_HW);
    cr_assert_eq(ranks_search("p0.json", ""), 0, "%s", cli_err);
    char *plain = cli_read("stdout.txt");
    cr_assert_eq(ranks_search("p1.json", "--ranks 1"), 0, "%s", cli_err);
    char *one = cli_read("stdout.txt");
    /* the same search, the same lines, but for the file --out names */
    char *w = strstr(plain, "[flexh2o] wrote p0.json");
    cr_assert(w, "%s", plain);
    w[strlen("[flexh2o] wrote p")] = '1';
    w = strstr(w, "--policy p0.json");
    cr_assert(w, "%s", plain);
    w[strlen("--policy p")] = '1';
    cr_assert_str_eq(one, plain);
    cr_assert(!strstr(one, "ranks:"), "%s", one);
    free(plain);
    free(one);
    char *a = cli_read("p0.json"), *b = cli_read("p1.json");
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
}

Test(search, cli_ranks_on_hosts_of_their_own)
{
    cli_write("hw.json", RANKS_HW);
    cr_assert_eq(ranks_search("p1.json", ""), 0, "%s", cli_err);
    char *one = cli_read("stdout.txt");
    double alone = first_bound(one);
    cr_assert_eq(ranks_search("p4.json", "--ranks 4 --ranks-per-node 1"), 0, "%s", cli_err);
    char *four = cli_read("stdout.txt");
    double job, rank;
    int n;
    cr_assert(ranks_line(four, &job, &n, &rank), "no ranks line in\n%s", four);
    /* nothing shared: each rank plans as one alone, and the job is 4 of them */
    cr_assert_eq(n, 4, "%s", four);
    cr_assert_eq(rank, alone, "rank %.2f vs alone %.2f tok/s\n%s", rank, alone, four);
    cr_assert_eq(first_bound(four), alone);
    cr_assert(fabs(job - 4 * rank) <= 0.03, "job %.2f vs 4 x %.2f", job, rank);
    cr_assert(strstr(four, "[flexh2o] ranks: 4 (1 per node): "), "%s", four);
    cr_assert(strstr(four, "[flexh2o] each rank: alone on its host: cpu-mem 0.39 GiB, "),
              "%s", four);
    free(one);
    free(four);
    char *a = cli_read("p1.json"), *b = cli_read("p4.json");
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
}

Test(search, cli_ranks_on_one_host_share_its_cpu_memory)
{
    cli_write("hw.json", RANKS_HW);
    cr_assert_eq(ranks_search("p1.json", ""), 0, "%s", cli_err);
    char *one = cli_read("stdout.txt");
    double alone = first_bound(one);
    sched_plan pl1, pl4;
    sched_policy p1 = ranks_policy("p1.json", &pl1);
    /* alone, the rank keeps more off-GPU weights and KV in CPU memory than a
     * quarter of the host's (else this test could not tell) */
    cr_assert(pl1.total[SCHED_CPU] <= RANKS_CPU_MEM, "the scenario no longer fits 400M");
    cr_assert(pl1.total[SCHED_CPU] > RANKS_CPU_MEM / 4, "alone the rank uses %.1f MiB of "
              "CPU memory: a quarter of 400M would fit it", pl1.total[SCHED_CPU] / (double)MiB);

    cr_assert_eq(ranks_search("p4.json", "--ranks 4"), 0, "%s", cli_err);
    char *four = cli_read("stdout.txt");
    double job, rank;
    int n;
    cr_assert(ranks_line(four, &job, &n, &rank), "no ranks line in\n%s", four);
    cr_assert(strstr(four, "[flexh2o] ranks: 4 (4 per node): "), "%s", four);
    cr_assert(strstr(four, "cpu-mem 0.10 GiB (of 0.39)"), "%s", four);
    cr_assert(strstr(four, "caps gpu 0.15 GiB, cpu 0.10 GiB"), "%s", four);
    /* the disk's rates are shared too: 2 and 1.5 GB/s over 4 */
    cr_assert(strstr(four, "disk read 0.50 / write 0.38 GB/s, host memory 10.00 GB/s; its "
                           "own: gpu-mem 0.15 GiB, h2d 12.00"), "%s", four);
    /* one rank's policy, planned in a quarter of the CPU memory: another
     * one, no faster, that fits there */
    sched_policy p4 = ranks_policy("p4.json", &pl4);
    cr_assert(pl4.total[SCHED_CPU] <= RANKS_CPU_MEM / 4, "the rank's plan needs %.1f MiB of "
              "CPU memory, a quarter of 400M is 100", pl4.total[SCHED_CPU] / (double)MiB);
    cr_assert(pl4.total[SCHED_GPU] <= 150 * MiB);
    cr_assert_eq(p4.cpu_mem, RANKS_CPU_MEM / 4, "the policy file's cap is the rank's");
    cr_assert_eq(p4.gpu_mem, 150 * MiB);
    cr_assert(p4.wc != p1.wc || p4.cc != p1.cc, "the same placement as alone");
    cr_assert(rank <= alone, "rank %.2f > alone %.2f tok/s", rank, alone);
    cr_assert_eq(first_bound(four), rank);
    cr_assert(fabs(job - 4 * rank) <= 0.03, "job %.2f vs 4 x %.2f", job, rank);
    free(one);
    free(four);
}

Test(search, cli_ranks_split_the_prompts)
{
    cli_write("hw.json", RANKS_HW);
    char text[4096] = "";
    for (int i = 0; i < 10; i++)
        strcat(text, "{\"prompt_ids\": [2, 9, 30, 31, 32, 33, 34, 35]}\n");
    cli_write("p.jsonl", text);
    const char *cmd = "search --dummy opt-125m --hardware hw.json --prompts p.jsonl "
                      "--max-new-tokens 4 --gpu-mem 4G --cpu-mem 4G --top 3 %s";
    /* 10 prompts over 4 ranks: 3, 3, 2, 2, so no block of more than 3 */
    cr_assert_eq(cli_run(cmd, "--ranks 4"), 0, "%s", cli_err);
    char *out = cli_read("stdout.txt");
    cr_assert(strstr(out, "[flexh2o] job: 10 prompts in p.jsonl; the longest prompt and "
                          "generation above, blocks of at most 3\n"), "%s", out);
    cr_assert(strstr(out, "[flexh2o] each rank: 3 of the 10 prompts (blocks of at most 3); "),
              "%s", out);
    cr_assert(strstr(out, "\n    1     3 x 1        3 "), "%s", out);
    double job, rank;
    int n;
    cr_assert(ranks_line(out, &job, &n, &rank) && n == 4, "%s", out);
    free(out);
    /* fewer prompts than ranks: only those with one count */
    cli_write("p.jsonl", "{\"prompt_ids\": [2, 9, 30]}\n{\"prompt_ids\": [2, 7, 8]}\n"
                         "{\"prompt_ids\": [2, 7]}\n");
    cr_assert_eq(cli_run(cmd, "--ranks 4"), 0, "%s", cli_err);
    out = cli_read("stdout.txt");
    cr_assert(ranks_line(out, &job, &n, &rank) && n == 3, "%s", out);
    cr_assert(fabs(job - 3 * rank) <= 0.03, "job %.2f vs 3 x %.2f", job, rank);
    cr_assert(strstr(out, " (3 of the 4 ranks get a prompt)"), "%s", out);
    cr_assert(strstr(out, "each rank: 1 of the 3 prompts (blocks of at most 1)"), "%s", out);
    free(out);
}

Test(search, cli_ranks_refusals)
{
    cli_write("hw.json", RANKS_HW);
    cr_assert_eq(ranks_search("p.json", "--ranks-per-node 3 --ranks 2"), 2);
    cr_assert(strstr(cli_err, "flexh2o search: --ranks-per-node 3 is more than the job's "
                              "--ranks 2"), "%s", cli_err);
    cr_assert_eq(ranks_search("p.json", "--ranks-per-node 2"), 2);
    cr_assert(strstr(cli_err, "--ranks-per-node 2 is more than the job's --ranks 1"), "%s",
              cli_err);
    cr_assert_eq(ranks_search("p.json", "--ranks 0"), 2);
    cr_assert(strstr(cli_err, "--ranks expects an integer in [1, 65536], got \"0\""), "%s",
              cli_err);
    cr_assert_eq(ranks_search("p.json", "--ranks 4 --ranks-per-node 0"), 2);
    cr_assert(strstr(cli_err, "--ranks-per-node expects an integer in [1, 65536]"), "%s",
              cli_err);
    cr_assert(!cli_exists("p.json"), "a refused search wrote its policy");
}

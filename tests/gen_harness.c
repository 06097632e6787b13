/* gen_harness.c: see gen_harness.h. */
#include "gen_harness.h"

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "gen.h"
#include "model.h"
#include "model_config.h"

#define TINY FH_SOURCE_ROOT "/tests/fixtures/tiny-opt"

void gen_harness_job(void)
{
    cli_write("ids.jsonl", "{\"prompt_ids\": [2, 37, 101, 5, 300, 8, 41]}\n"
                           "{\"prompt_ids\": [2, 9]}\n"
                           "{\"prompt_ids\": [2, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]}\n"
                           "{\"prompt_ids\": [2, 500]}\n"
                           "{\"prompt_ids\": [2, 7, 7, 7, 7]}\n");
    char off[300];
    snprintf(off, sizeof off, "%s/off", cli_dir);
    cr_assert_eq(mkdir(off, 0755), 0, "cannot make %s", off);
}

uint64_t gen_harness_run(backend *be, const char *percent, int cpu_attention, const char *out,
                         const char *trace)
{
    char ids[300], out_path[300], trace_path[300];
    snprintf(ids, sizeof ids, "%s/ids.jsonl", cli_dir);
    snprintf(out_path, sizeof out_path, "%s/%s", cli_dir, out);
    sched_policy pol;
    sched_policy_default(&pol);
    pol.gpu_batch_size = 2;
    pol.num_gpu_batches = 2;
    cr_assert_eq(sched_policy_parse_percent(&percent, 1, &pol), 0, "%s", err_msg());
    pol.cpu_attention = cpu_attention;
    snprintf(pol.offload_dir, sizeof pol.offload_dir, "%s/off", cli_dir);
    gen_opts go = {.batch_size = 2, .max_new = 9, .temperature = 0.8f, .top_p = 0.9f, .seed = 7,
                   .prefill_rows = 4096,
                   .kv = {.kind = KV_POLICY_H2O, .ratio = 0.5, .sinks = 1, .hh_share = 0.5}};
    if (trace) {
        snprintf(trace_path, sizeof trace_path, "%s/%s", cli_dir, trace);
        cr_assert_eq(job_file_wr_open(trace_path, "wb", &go.trace), 0, "%s", err_msg());
        go.kv_stats = 1;
    }

    model_config cfg;
    cr_assert_eq(model_config_of(TINY, &cfg), 0, "%s", err_msg());
    job_prompts ps = {0};
    job_load_opts lo = {.bos = cfg.bos_id, .vocab = cfg.vocab_size, .max_len = cfg.max_pos - 1,
                        .strict = 1, .chat_template = -1};
    cr_assert_eq(job_prompts_load(ids, &lo, &ps), 0, "%s", err_msg());
    job_reader *rd;
    cr_assert_eq(job_reader_open(ids, &lo, &rd), 0, "%s", err_msg());
    sched_shape sh;
    gen_shape(&cfg, NULL, &ps, NULL, &go, pol.gpu_batch_size, &sh);
    sched_model shape, bound;
    model_sched_shape(&cfg, &shape);
    sched *sc = NULL;
    model *m = NULL;
    uint64_t at_start = be->ops->allocs(be->ctx);
    cr_assert_eq(sched_create(be, &shape, &pol, &sh, NULL, &sc), 0, "%s", err_msg());
    cr_assert_eq(model_load_hf_sink(TINY, be, sched_layer_sink, sc, &m), 0, "%s", err_msg());
    model_sched_bind(m, &bound);
    cr_assert_eq(sched_attach(sc, &bound), 0, "%s", err_msg());
    job_out jo = {0};
    cr_assert_eq(job_out_open(out_path, 0, &jo), 0, "%s", err_msg());
    uint64_t before = be->ops->allocs(be->ctx);
    cr_assert_gt(before, at_start, "the set-up allocated, and was counted");
    gen_stats st;
    int rc = gen_run(m, sc, NULL, rd, &jo, &go, &st);
    uint64_t during = be->ops->allocs(be->ctx) - before;
    cr_assert_eq(rc, 0, "%s", err_msg());
    gen_stats_free(&st);
    cr_assert_eq(job_out_close(&jo), 0, "%s", err_msg());
    cr_assert_eq(job_file_wr_close(go.trace), 0);
    sched_destroy(sc);
    model_destroy(m);
    job_prompts_free(&ps);
    job_reader_close(rd);
    return during;
}

void gen_harness_wide_model(void)
{
    cli_write("wide.json", "{\"architectures\": [\"OPTForCausalLM\"], \"model_type\": \"opt\", "
              "\"activation_function\": \"relu\", \"do_layer_norm_before\": true, "
              "\"enable_bias\": true, \"ffn_dim\": 128, \"hidden_size\": 256, "
              "\"num_attention_heads\": 2, \"num_hidden_layers\": 2, "
              "\"max_position_embeddings\": 256, \"vocab_size\": 512, "
              "\"word_embed_proj_dim\": 256, \"bos_token_id\": 2, \"eos_token_id\": 2, "
              "\"pad_token_id\": 1, \"dtype\": \"float32\", \"tie_word_embeddings\": true}\n");
    cr_assert_eq(cli_run("make-model --config wide.json --out wide"), 0, "%s", cli_err);
    cli_write("pw.jsonl", "{\"id\": 1, \"prompt_ids\": [5, 6, 7]}\n"
                          "{\"id\": 2, \"prompt_ids\": [9]}\n"
                          "{\"id\": 3, \"prompt_ids\": [11, 12, 13, 14, 15, 16, 17, 18, 19]}\n"
                          "{\"id\": 4, \"prompt_ids\": [20, 21, 22, 23, 24]}\n");
}

gen_trace_io gen_harness_trace_io(const char *trace, const char *event, const char *cat)
{
    char *text = cli_read(trace);
    cr_assert(text, "%s missing", trace);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cr_assert(root, "%s is not JSON", trace);
    gen_trace_io io = {0};
    const cJSON *e;
    for (int pass = 0; pass < 2; pass++) { /* (the second counts the large decode events) */
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(root, "traceEvents")) {
            const cJSON *name = cJSON_GetObjectItem(e, "name");
            const cJSON *args = cJSON_GetObjectItem(e, "args"), *c = cJSON_GetObjectItem(e, "cat");
            if (!cJSON_IsString(name) || strcmp(name->valuestring, event) != 0 ||
                (cat && (!cJSON_IsString(c) || strcmp(c->valuestring, cat) != 0)))
                continue;
            double b = cJSON_GetObjectItem(args, "bytes")->valuedouble;
            int step = cJSON_GetObjectItem(args, "step")->valueint;
            if (pass == 1) {
                io.n_large += step != 0 && b > io.prefill / 4;
                continue;
            }
            if (step == 0) {
                io.prefill = b > io.prefill ? b : io.prefill;
            } else {
                io.decode_max = b > io.decode_max ? b : io.decode_max;
                io.decode_min = io.n_decode == 0 || b < io.decode_min ? b : io.decode_min;
                io.decode_sum += b;
                io.n_decode++;
            }
            io.n++;
        }
    }
    cJSON_Delete(root);
    return io;
}


gen_trace_io gen_harness_disk_kv_moves(const char *trace, const char *what)
{
    gen_trace_io w = gen_harness_trace_io(trace, "disk write", NULL);
    gen_trace_io r = gen_harness_trace_io(trace, "disk read", NULL);
    /* 2 layers x 2 batches, a prefill and 199 decode steps; the prefill
     * reads nothing (it writes its records whole) */
    cr_assert_eq(w.n, 2 * 2 * 200, "%s: %d disk writes", what, w.n);
    cr_assert(w.decode_min > 0 && w.decode_min <= w.prefill / 16 && w.n_large <= w.n_decode / 8 &&
                  w.decode_sum / w.n_decode < w.prefill / 4,
              "%s: decode steps wrote %.0f-%.0f bytes (%.0f on average, %d of %d steps over a "
              "quarter) of a record of %.0f", what, w.decode_min, w.decode_max,
              w.decode_sum / w.n_decode, w.n_large, w.n_decode, w.prefill);
    cr_assert_eq(r.n, 2 * 2 * 199, "%s: %d disk reads", what, r.n);
    /* (at most the record and a full log: sqrt(2 record / entry) entries, an
     * entry what a decode step writes at least) */
    cr_assert(r.decode_min > 0 && r.decode_min < w.prefill / 4 &&
                  r.decode_max <= w.prefill + sqrt(2 * w.prefill * w.decode_min),
              "%s: decode reads of %.0f-%.0f bytes of a record of %.0f", what, r.decode_min,
              r.decode_max, w.prefill);
    return r;
}

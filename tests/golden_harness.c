/* golden_harness.c: see golden_harness.h. */
#include "golden_harness.h"

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_harness.h"
#include "err.h"
#include "fh_config.h"
#include "model.h"
#include "off.h"
#include "scheduler.h"

void golden_load(golden *g, const char *path)
{
    char *buf;
    size_t len;
    cr_assert_eq(off_read_file(path, &buf, &len), 0, "%s", err_msg());
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    cr_assert(j, "%s: not JSON", path);
    memset(g, 0, sizeof *g);
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        cr_assert_lt(g->n_cases, GOLDEN_MAX_CASES);
        golden_case *k = &g->cases[g->n_cases++];
        const cJSON *e, *st;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "prompt_ids"))
            k->ids[k->n_ids++] = e->valueint;
        cJSON_ArrayForEach(st, cJSON_GetObjectItem(c, "steps")) {
            cr_assert_lt(k->n_new, GOLDEN_MAX_NEW);
            const cJSON *lg = cJSON_GetObjectItem(st, "logits");
            g->vocab = cJSON_GetArraySize(lg);
            if (!k->logits)
                k->logits = malloc(sizeof(float) * GOLDEN_MAX_NEW * (size_t)g->vocab);
            int i = 0;
            cJSON_ArrayForEach(e, lg)
                k->logits[(size_t)k->n_new * g->vocab + i++] = (float)e->valuedouble;
            k->tok[k->n_new] = cJSON_GetObjectItem(st, "token")->valueint;
            k->lp[k->n_new] = cJSON_GetObjectItem(st, "logprob")->valuedouble;
            k->n_new++;
        }
    }
    cJSON_Delete(j);
    cr_assert_geq(g->n_cases, 4, "%s: fewer than 4 cases", path);
}

void golden_free(golden *g)
{
    for (int i = 0; i < g->n_cases; i++) {
        free(g->cases[i].logits);
        g->cases[i].logits = NULL;
    }
}

typedef struct engine {
    sched *s;
    model *m;
} engine;

/* A scheduler with everything on the "GPU" tier for a block of `block`
 * sequences, the model loaded through its sink. */
static void engine_open(backend *be, const char *dir, int block, engine *e)
{
    model_config c;
    cr_assert_eq(model_config_of(dir, &c), 0, "%s", err_msg());
    sched_model shape, bound;
    model_sched_shape(&c, &shape);
    sched_policy p;
    sched_policy_default(&p);
    p.gpu_batch_size = block;
    sched_shape sh = {.max_rows = 512, .cap = 128};
    cr_assert_eq(sched_create(be, &shape, &p, &sh, NULL, &e->s), 0, "%s", err_msg());
    cr_assert_eq(model_load_hf_sink(dir, be, sched_layer_sink, e->s, &e->m), 0, "%s",
                 err_msg());
    model_sched_bind(e->m, &bound);
    cr_assert_eq(sched_attach(e->s, &bound), 0, "%s", err_msg());
}

double golden_run(backend *be, const golden *g, const char *dir, int batched, float *got,
                  double tol)
{
    int B = batched ? g->n_cases : 1, V = g->vocab;
    engine e;
    engine_open(be, dir, B, &e);
    int W = e.m->cfg.sliding_window;
    float *lg = malloc(sizeof(float) * (size_t)B * V);
    double worst = 0;
    for (int first = 0; first < g->n_cases; first += B) {
        int32_t ids[512], pos[512], last[GOLDEN_MAX_CASES], cur[GOLDEN_MAX_CASES];
        kern_seq seqs[GOLDEN_MAX_CASES];
        int rows = 0;
        for (int s = 0; s < B; s++) {
            const golden_case *k = &g->cases[first + s];
            int budget = W > 1 && k->n_ids + k->n_new > W ? W - 1 : 128;
            /* full: nothing is evicted; window: every slot is a recent one */
            seqs[s] = (kern_seq){.row = rows, .n_new = k->n_ids, .budget = budget,
                                 .recent = budget < 128 ? budget : 1, .window = W};
            for (int j = 0; j < k->n_ids; j++) {
                ids[rows] = k->ids[j];
                pos[rows++] = j;
            }
            last[s] = rows - 1;
        }
        for (int step = 0; step < g->cases[first].n_new; step++) {
            cr_assert_eq(sched_forward(e.s, ids, pos, rows, seqs, B, last, B, step), 0, "%s",
                         err_msg());
            be->ops->download(be->ctx, lg, sched_logits(e.s), (size_t)B * V);
            rows = 0;
            for (int s = 0; s < B; s++) {
                const golden_case *k = &g->cases[first + s];
                const float *ref = k->logits + (size_t)step * V;
                const float *out = lg + (size_t)s * V;
                int arg = 0;
                for (int v = 0; v < V; v++) {
                    double err = fabs((double)out[v] - ref[v]);
                    worst = err > worst ? err : worst;
                    cr_assert_leq(err, tol, "%s case %d step %d logit %d: got %.7g want %.7g",
                                  dir, first + s, step, v, out[v], ref[v]);
                    if (out[v] > out[arg])
                        arg = v;
                }
                if (got)
                    memcpy(got + ((size_t)(first + s) * GOLDEN_MAX_NEW + step) * V, out,
                           sizeof(float) * V);
                cr_assert_eq(arg, k->tok[step], "%s case %d step %d: greedy %d want %d", dir,
                             first + s, step, arg, k->tok[step]);
                cur[s] = arg;
                seqs[s].n_past += seqs[s].n_new;
                seqs[s].n_slots = seqs[s].n_past < seqs[s].budget ? seqs[s].n_past
                                                                  : seqs[s].budget;
                seqs[s].row = rows;
                seqs[s].n_new = 1;
                ids[rows] = cur[s];
                pos[rows] = seqs[s].n_past;
                last[s] = rows++;
            }
        }
    }
    free(lg);
    sched_destroy(e.s);
    model_destroy(e.m);
    return worst;
}

void golden_logits(backend *be, const char *dir, const int32_t *ids, int n, float *out)
{
    cr_assert(n >= 1 && n <= 128);
    engine e;
    engine_open(be, dir, n, &e); /* a block of n: n output rows */
    int32_t pos[128], last[128];
    for (int i = 0; i < n; i++)
        pos[i] = last[i] = i;
    kern_seq seq = {.row = 0, .n_new = n, .budget = 128, .recent = 1};
    cr_assert_eq(sched_forward(e.s, ids, pos, n, &seq, 1, last, n, 0), 0, "%s", err_msg());
    be->ops->download(be->ctx, out, sched_logits(e.s), (size_t)n * e.m->cfg.vocab_size);
    sched_destroy(e.s);
    model_destroy(e.m);
}

struct cJSON *golden_eval_load(void)
{
    char *buf;
    size_t len;
    cr_assert_eq(off_read_file(FH_SOURCE_ROOT "/tests/fixtures/eval-golden.json", &buf, &len),
                 0, "%s", err_msg());
    cJSON *g = cJSON_ParseWithLength(buf, len);
    free(buf);
    cr_assert(g, "tests/fixtures/eval-golden.json: not JSON");
    return g;
}

void golden_score_job(const struct cJSON *g, const char *name)
{
    const cJSON *rq, *reqs = cJSON_GetObjectItem(g, "requests");
    cr_assert(cJSON_IsArray(reqs), "no \"requests\" in the eval golden");
    char job[8192];
    size_t at = 0;
    cJSON_ArrayForEach(rq, reqs) {
        cJSON *o = cJSON_CreateObject();
        cr_assert(o);
        cJSON_AddItemReferenceToObject(o, "id", cJSON_GetObjectItem(rq, "id"));
        cJSON_AddItemReferenceToObject(o, "context_ids", cJSON_GetObjectItem(rq, "context_ids"));
        cJSON_AddItemReferenceToObject(o, "continuation_ids",
                                       cJSON_GetObjectItem(rq, "continuation_ids"));
        char *line = cJSON_PrintUnformatted(o);
        cr_assert(line);
        at += (size_t)snprintf(job + at, sizeof job - at, "%s\n", line);
        cr_assert_lt(at, sizeof job, "the golden's requests outgrow the job buffer");
        free(line);
        cJSON_Delete(o);
    }
    cli_write(name, job);
}

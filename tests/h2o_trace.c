/* h2o_trace.c: see h2o_trace.h. */
#include "h2o_trace.h"

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_harness.h"

const h2o_prompt h2o_prompts[H2O_N_PROMPTS] = {
    {"p1", {2, 37, 101, 5, 300, 44, 17, 250, 9, 61, 480, 33}, 12, 14},
    {"p2", {2, 410, 7, 7, 99}, 5, 12},
    {"p3", {2, 15, 52, 89, 126, 163, 200, 237, 274, 311, 348, 385, 422, 459, 496, 29, 66,
            103, 140, 177}, 20, 9},
};

void h2o_write_prompts(const char *name)
{
    char buf[4096];
    size_t o = 0;
    for (int i = 0; i < H2O_N_PROMPTS; i++) {
        o += (size_t)snprintf(buf + o, sizeof buf - o, "{\"id\": \"%s\", \"prompt_ids\": [",
                              h2o_prompts[i].id);
        for (int j = 0; j < h2o_prompts[i].n; j++)
            o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%d", j ? ", " : "",
                                  h2o_prompts[i].ids[j]);
        o += (size_t)snprintf(buf + o, sizeof buf - o, "], \"max_new_tokens\": %d}\n",
                              h2o_prompts[i].max_new);
    }
    cli_write(name, buf);
}

int h2o_ev_cmp(const void *pa, const void *pb)
{
    const h2o_ev *a = pa, *b = pb;
    int c = strcmp(a->id, b->id);
    if (c)
        return c;
    if (a->layer != b->layer)
        return a->layer - b->layer;
    if (a->head != b->head)
        return a->head - b->head;
    if (a->step != b->step)
        return a->step - b->step;
    return a->pos - b->pos;
}

h2o_ev *h2o_read_trace(const char *name, int n_layer, int n_head, int *n_out)
{
    char *buf = cli_read(name);
    int cap = 256, n = 0;
    h2o_ev *ev = malloc(sizeof(h2o_ev) * (size_t)cap);
    int lineno = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        lineno++;
        cJSON *r = cJSON_Parse(line);
        cr_assert(r && cJSON_IsObject(r), "%s:%d: not a JSON object: %s", name, lineno, line);
        cr_assert_eq(cJSON_GetArraySize(r), 5, "%s:%d: want 5 keys: %s", name, lineno, line);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(r, "id");
        cr_assert(cJSON_IsString(id), "%s:%d: id", name, lineno);
        const char *keys[] = {"layer", "head", "step", "pos"};
        int val[4];
        for (int k = 0; k < 4; k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, keys[k]);
            cr_assert(cJSON_IsNumber(v) && v->valuedouble == (int)v->valuedouble &&
                      v->valueint >= 0, "%s:%d: %s must be an integer >= 0: %s", name,
                      lineno, keys[k], line);
            val[k] = v->valueint;
        }
        cr_assert_lt(val[0], n_layer);
        cr_assert_lt(val[1], n_head);
        if (n == cap) {
            cap *= 2;
            ev = realloc(ev, sizeof(h2o_ev) * (size_t)cap);
        }
        snprintf(ev[n].id, sizeof ev[n].id, "%s", id->valuestring);
        ev[n].layer = val[0];
        ev[n].head = val[1];
        ev[n].step = val[2];
        ev[n].pos = val[3];
        n++;
        cJSON_Delete(r);
    }
    free(buf);
    *n_out = n;
    return ev;
}

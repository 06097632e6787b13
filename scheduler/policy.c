/* policy.c: the offloading policy: defaults, command-line values, JSON
 * policy files (configs/policies/), and the checks that keep a policy
 * runnable. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "model_config.h"
#include "sched.h"

void sched_policy_default(sched_policy *p)
{
    memset(p, 0, sizeof *p);
    p->gpu_batch_size = 8;
    p->num_gpu_batches = 1;
    p->wg = 100;
    p->cg = 100;
    p->hg = 100;
    p->overlap = 1;
    p->pin_weight = 1;
}

int sched_parse_size(const char *flag, const char *s, uint64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    double mul = 1;
    if (end != s) {
        char u = *end;
        if (u == 'K' || u == 'k')
            mul = 1024.0;
        else if (u == 'M' || u == 'm')
            mul = 1024.0 * 1024;
        else if (u == 'G' || u == 'g')
            mul = 1024.0 * 1024 * 1024;
        else if (u == 'T' || u == 't')
            mul = 1024.0 * 1024 * 1024 * 1024;
        if (mul > 1) {
            end++;
            if (strcasecmp(end, "iB") == 0 || strcasecmp(end, "B") == 0)
                end += strlen(end);
        } else if (strcasecmp(end, "B") == 0) {
            end++;
        }
    }
    RETURN_IF(end == s || *end != 0 || !(v >= 0) || v * mul > 1.8e19, -EINVAL,
              "%s must be a size like 16G, 512M or 1.5GiB, got \"%s\"", flag, s);
    *out = (uint64_t)(v * mul);
    return 0;
}

static int parse_pct(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    RETURN_IF(end == s || *end != 0 || !(v >= 0 && v <= 100), -EINVAL,
              "--percent takes six numbers in [0, 100] (WG WC CG CC HG HC), got \"%s\"", s);
    *out = v;
    return 0;
}

int sched_policy_parse_percent(const char *const *args, int n, sched_policy *p)
{
    double v[6];
    int got = 0;
    if (n == 1) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", args[0]);
        for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok;
             tok = strtok_r(NULL, ", ", &save)) {
            RETURN_IF(got == 6, -EINVAL, "--percent takes six numbers (WG WC CG CC HG HC), "
                      "got more in \"%s\"", args[0]);
            FORWARD_IF(parse_pct(tok, &v[got++]));
        }
    } else {
        for (int i = 0; i < n && i < 6; i++)
            FORWARD_IF(parse_pct(args[i], &v[got++]));
    }
    RETURN_IF(got != 6, -EINVAL, "--percent takes six numbers (WG WC CG CC HG HC), got %d",
              got);
    p->wg = v[0];
    p->wc = v[1];
    p->cg = v[2];
    p->cc = v[3];
    p->hg = v[4];
    p->hc = v[5];
    return 0;
}

/* JSON fields, one table so that load and the unknown-field check agree. */
static int load_bool(const char *path, const cJSON *it, int *out)
{
    RETURN_IF(!cJSON_IsBool(it), -EINVAL, "%s: field \"%s\" must be true or false", path,
              it->string);
    *out = cJSON_IsTrue(it);
    return 0;
}

static int load_int(const char *path, const cJSON *it, int *out)
{
    RETURN_IF(!cJSON_IsNumber(it) || it->valuedouble < 1 || it->valuedouble > 65536 ||
                  it->valuedouble != floor(it->valuedouble),
              -EINVAL, "%s: field \"%s\" must be an integer in [1, 65536]", path, it->string);
    *out = (int)it->valuedouble;
    return 0;
}

static int load_size(const char *path, const cJSON *it, uint64_t *out)
{
    if (cJSON_IsNumber(it) && it->valuedouble >= 0) {
        *out = (uint64_t)it->valuedouble;
        return 0;
    }
    RETURN_IF(!cJSON_IsString(it), -EINVAL, "%s: field \"%s\" must be a size (\"16G\" or a "
              "number of bytes)", path, it->string);
    char flag[128];
    snprintf(flag, sizeof flag, "%s: field \"%s\"", path, it->string);
    return sched_parse_size(flag, it->valuestring, out);
}

int sched_policy_load(const char *path, sched_policy *p)
{
    char *text = NULL;
    size_t len = 0;
    FORWARD_IF(fh_read_file(path, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    RETURN_IF(!cJSON_IsObject(root), -EINVAL, "%s is not a JSON object; see "
              "configs/policies/ for examples", path);
    int rc = 0;
    sched_policy q = *p;
    for (const cJSON *it = root->child; rc == 0 && it; it = it->next) {
        const char *k = it->string;
        if (strcmp(k, "gpu_batch_size") == 0) {
            rc = load_int(path, it, &q.gpu_batch_size);
        } else if (strcmp(k, "num_gpu_batches") == 0) {
            rc = load_int(path, it, &q.num_gpu_batches);
        } else if (strcmp(k, "percent") == 0) {
            double *dst[6] = {&q.wg, &q.wc, &q.cg, &q.cc, &q.hg, &q.hc};
            int ok = cJSON_IsArray(it) && cJSON_GetArraySize(it) == 6;
            for (int i = 0; ok && i < 6; i++) {
                const cJSON *v = cJSON_GetArrayItem(it, i);
                ok = cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 100;
                if (ok)
                    *dst[i] = v->valuedouble;
            }
            if (!ok) {
                err_set(__FILE__, __LINE__, "%s: field \"percent\" must be six numbers in "
                        "[0, 100]: [WG, WC, CG, CC, HG, HC]", path);
                rc = -EINVAL;
            }
        } else if (strcmp(k, "overlap") == 0) {
            rc = load_bool(path, it, &q.overlap);
        } else if (strcmp(k, "pin_weight") == 0) {
            rc = load_bool(path, it, &q.pin_weight);
        } else if (strcmp(k, "cpu_attention") == 0) {
            rc = load_bool(path, it, &q.cpu_attention);
        } else if (strcmp(k, "gpu_mem") == 0) {
            rc = load_size(path, it, &q.gpu_mem);
        } else if (strcmp(k, "cpu_mem") == 0) {
            rc = load_size(path, it, &q.cpu_mem);
        } else if (strcmp(k, "offload_dir") == 0) {
            if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof q.offload_dir) {
                err_set(__FILE__, __LINE__, "%s: field \"offload_dir\" must be a directory "
                        "path (a string)", path);
                rc = -EINVAL;
            } else {
                snprintf(q.offload_dir, sizeof q.offload_dir, "%s", it->valuestring);
            }
        } else if (k[0] != '_') { /* "_comment" and the like are allowed */
            err_set(__FILE__, __LINE__, "%s: unknown field \"%s\"; known: gpu_batch_size, "
                    "num_gpu_batches, percent, overlap, pin_weight, cpu_attention, gpu_mem, "
                    "cpu_mem, offload_dir", path, k);
            rc = -EINVAL;
        }
    }
    cJSON_Delete(root);
    if (rc == 0)
        *p = q;
    return rc;
}

int sched_policy_check(const sched_policy *p)
{
    RETURN_IF(p->gpu_batch_size < 1 || p->num_gpu_batches < 1, -EINVAL,
              "--gpu-batch-size and --num-gpu-batches must be at least 1");
    const double v[6] = {p->wg, p->wc, p->cg, p->cc, p->hg, p->hc};
    for (int i = 0; i < 6; i++)
        RETURN_IF(!(v[i] >= 0 && v[i] <= 100), -EINVAL,
                  "--percent: every value must be in [0, 100], got %g", v[i]);
    static const char *what[3] = {"weights", "KV cache", "activations"};
    for (int i = 0; i < 3; i++)
        RETURN_IF(v[2 * i] + v[2 * i + 1] > 100 + 1e-9, -EINVAL,
                  "--percent: %s on GPU + CPU is %g%%; the two must add up to at most 100",
                  what[i], v[2 * i] + v[2 * i + 1]);
    RETURN_IF((p->hg != 0 && p->hg != 100) || (p->hc != 0 && p->hc != 100), -EINVAL,
              "--percent: activations cannot be split across tiers (hg %g, hc %g); use "
              "100 0, 0 100 or 0 0", p->hg, p->hc);
    for (int i = 0; i < 3; i++) {
        double disk = 100 - v[2 * i] - v[2 * i + 1];
        RETURN_IF(disk > 1e-9 && !p->offload_dir[0], -EINVAL,
                  "--percent puts %g%% of the %s on disk but no --offload-dir was given; "
                  "pass --offload-dir DIR on a fast local disk", disk, what[i]);
    }
    return 0;
}

void sched_policy_describe(const sched_policy *p, char *buf, size_t len)
{
    snprintf(buf, len, "block %dx%d, weights %g/%g/%g, KV %g/%g/%g, act %g/%g/%g%s%s%s",
             p->gpu_batch_size, p->num_gpu_batches, p->wg, p->wc, 100 - p->wg - p->wc, p->cg,
             p->cc, 100 - p->cg - p->cc, p->hg, p->hc, 100 - p->hg - p->hc,
             p->overlap ? ", overlap" : ", no overlap",
             p->cpu_attention ? ", cpu-attention" : "",
             p->wc > 0 && !p->pin_weight ? ", unpinned weights" : "");
}

void sched_split(int n, double g, double c, int *n_gpu, int *n_cpu, int *n_disk)
{
    int a = (int)floor(n * g / 100.0 + 0.5);
    int b = (int)floor(n * (g + c) / 100.0 + 0.5);
    if (a > n)
        a = n;
    if (b > n)
        b = n;
    if (b < a)
        b = a;
    *n_gpu = a;
    *n_cpu = b - a;
    *n_disk = n - b;
}

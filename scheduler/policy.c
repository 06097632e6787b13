/* policy.c: the offloading policy: defaults, command-line values, JSON
 * policy files (configs/policies/), and the checks that keep a policy
 * runnable.
 *
 * Parsing (sizes, --percent, JSON) only checks that each value is well
 * formed; how the values fit together (sums, the disk directory, the
 * activation split) is sched_policy_check's job, so that a policy file and
 * command-line flags layered over it are judged once, as a whole. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "err.h"
#include "off.h"
#include "scheduler.h"

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

/* Binary multiplier of a unit suffix ("", "B", "K", "KiB", "KB", ... "T"),
 * or 0 when the suffix is not one. "GB" means 2^30 like "GiB": memory caps
 * are compared against binary sizes everywhere, and a user writing 16GB for
 * a 16 GiB card means the card. */
static double size_unit(const char *u)
{
    static const char letters[] = "KMGT";
    double mul = 1;
    if (*u == 0 || strcasecmp(u, "B") == 0)
        return 1;
    const char *l = strchr(letters, u[0] & ~0x20); /* upper case */
    if (!l || !*l)
        return 0;
    for (const char *k = letters; k <= l; k++)
        mul *= 1024;
    u++;
    if (*u == 0 || strcasecmp(u, "B") == 0 || strcasecmp(u, "iB") == 0)
        return mul;
    return 0;
}

int sched_parse_size(const char *flag, const char *s, uint64_t *out)
{
    /* strtod alone would also take " 16G", "0x10G", "inf" and "nan": a size
     * starts with a digit or a point */
    int ok = s && ((s[0] >= '0' && s[0] <= '9') || s[0] == '.') &&
             !(s[0] == '0' && (s[1] == 'x' || s[1] == 'X'));
    char *end = NULL;
    double v = ok ? strtod(s, &end) : 0;
    double mul = ok && end != s ? size_unit(end) : 0;
    ok = ok && end != s && mul > 0 && isfinite(v) && v >= 0 && v * mul < 18446744073709549568.0;
    RETURN_IF(!ok, -EINVAL, "%s must be a size like 16G, 512M or 1.5GiB, got \"%s\"", flag,
              s ? s : "(null)");
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
    if (n == 1 && args[0]) {
        char buf[512];
        RETURN_IF(strlen(args[0]) >= sizeof buf, -EINVAL,
                  "--percent takes six numbers (WG WC CG CC HG HC), got a %zu-byte string",
                  strlen(args[0]));
        memcpy(buf, args[0], strlen(args[0]) + 1);
        for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok;
             tok = strtok_r(NULL, ", \t", &save)) {
            RETURN_IF(got == 6, -EINVAL, "--percent takes six numbers (WG WC CG CC HG HC), "
                      "got more in \"%s\"", args[0]);
            FORWARD_IF(parse_pct(tok, &v[got++]));
        }
    } else {
        RETURN_IF(n != 6, -EINVAL, "--percent takes six numbers (WG WC CG CC HG HC), got %d",
                  n);
        for (int i = 0; i < 6; i++) {
            RETURN_IF(!args[i], -EINVAL, "--percent takes six numbers (WG WC CG CC HG HC)");
            FORWARD_IF(parse_pct(args[i], &v[got++]));
        }
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

/* ------------------------------------------------------------ JSON */

/* What a JSON value is, for "field "x" is a string; expected ..." */
static const char *json_kind(const cJSON *it)
{
    if (cJSON_IsBool(it))
        return "a boolean";
    if (cJSON_IsNumber(it))
        return "a number";
    if (cJSON_IsString(it))
        return "a string";
    if (cJSON_IsArray(it))
        return "an array";
    if (cJSON_IsObject(it))
        return "an object";
    return "null";
}

static int load_bool(const char *path, const cJSON *it, int *out)
{
    RETURN_IF(!cJSON_IsBool(it), -EINVAL, "%s: field \"%s\" is %s; expected true or false",
              path, it->string, json_kind(it));
    *out = cJSON_IsTrue(it);
    return 0;
}

static int load_int(const char *path, const cJSON *it, int hi, int *out)
{
    RETURN_IF(!cJSON_IsNumber(it), -EINVAL, "%s: field \"%s\" is %s; expected an integer "
              "in [1, %d]", path, it->string, json_kind(it), hi);
    double v = it->valuedouble;
    RETURN_IF(!(v >= 1 && v <= hi) || v != floor(v), -EINVAL, "%s: field \"%s\" is %g; "
              "expected an integer in [1, %d]", path, it->string, v, hi);
    *out = (int)v;
    return 0;
}

static int load_size(const char *path, const cJSON *it, uint64_t *out)
{
    if (cJSON_IsNumber(it)) {
        double v = it->valuedouble;
        RETURN_IF(!(v >= 0 && v < 18446744073709549568.0) || v != floor(v), -EINVAL,
                  "%s: field \"%s\" is %g; expected a whole number of bytes or a size "
                  "string like \"16G\"", path, it->string, v);
        *out = (uint64_t)v;
        return 0;
    }
    RETURN_IF(!cJSON_IsString(it), -EINVAL, "%s: field \"%s\" is %s; expected a size like "
              "\"16G\" or a number of bytes", path, it->string, json_kind(it));
    char flag[1200];
    snprintf(flag, sizeof flag, "%s: field \"%s\"", path, it->string);
    return sched_parse_size(flag, it->valuestring, out);
}

static int load_percent(const char *path, const cJSON *it, sched_policy *q)
{
    RETURN_IF(!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 6, -EINVAL,
              "%s: field \"percent\" is %s%s; expected six numbers in [0, 100]: "
              "[WG, WC, CG, CC, HG, HC]", path, json_kind(it),
              cJSON_IsArray(it) ? " of another length" : "");
    double *dst[6] = {&q->wg, &q->wc, &q->cg, &q->cc, &q->hg, &q->hc};
    int i = 0;
    for (const cJSON *v = it->child; v; v = v->next, i++) {
        RETURN_IF(!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= 100),
                  -EINVAL, "%s: field \"percent\" item %d is not a number in [0, 100]; "
                  "expected six numbers in [0, 100]: [WG, WC, CG, CC, HG, HC]", path, i + 1);
        *dst[i] = v->valuedouble;
    }
    return 0;
}

static int load_dir(const char *path, const cJSON *it, char *dst, size_t cap)
{
    RETURN_IF(!cJSON_IsString(it), -EINVAL, "%s: field \"%s\" is %s; expected a directory "
              "path (a string)", path, it->string, json_kind(it));
    RETURN_IF(strlen(it->valuestring) >= cap, -EINVAL, "%s: field \"%s\" is %zu bytes long; "
              "expected a directory path of at most %zu bytes", path, it->string,
              strlen(it->valuestring), cap - 1);
    memcpy(dst, it->valuestring, strlen(it->valuestring) + 1);
    return 0;
}

/* One field of the policy object into q. */
static int load_field(const char *path, const cJSON *it, sched_policy *q)
{
    const char *k = it->string;
    if (strcmp(k, "gpu_batch_size") == 0)
        return load_int(path, it, 65536, &q->gpu_batch_size);
    if (strcmp(k, "num_gpu_batches") == 0)
        return load_int(path, it, 65536, &q->num_gpu_batches);
    if (strcmp(k, "percent") == 0)
        return load_percent(path, it, q);
    if (strcmp(k, "overlap") == 0)
        return load_bool(path, it, &q->overlap);
    if (strcmp(k, "pin_weight") == 0)
        return load_bool(path, it, &q->pin_weight);
    if (strcmp(k, "cpu_attention") == 0)
        return load_bool(path, it, &q->cpu_attention);
    if (strcmp(k, "compress_weight") == 0)
        return load_bool(path, it, &q->compress_weight);
    if (strcmp(k, "compress_cache") == 0)
        return load_bool(path, it, &q->compress_cache);
    if (strcmp(k, "weight_layers") == 0)
        return load_bool(path, it, &q->weight_layers);
    if (strcmp(k, "gpu_mem") == 0)
        return load_size(path, it, &q->gpu_mem);
    if (strcmp(k, "cpu_mem") == 0)
        return load_size(path, it, &q->cpu_mem);
    if (strcmp(k, "offload_dir") == 0)
        return load_dir(path, it, q->offload_dir, sizeof q->offload_dir);
    if (strcmp(k, "prefill_rows") == 0)
        return load_int(path, it, SCHED_PREFILL_ROWS_MAX, &q->prefill_rows);
    if (k[0] == '_') /* "_comment" and the like: notes for the reader */
        return 0;
    RETURN_IF(1, -EINVAL, "%s: unknown field \"%s\"; expected one of gpu_batch_size, "
              "num_gpu_batches, percent, overlap, pin_weight, cpu_attention, "
              "compress_weight, compress_cache, weight_layers, gpu_mem, cpu_mem, offload_dir, "
              "prefill_rows (or a \"_comment\")", path, k);
}

int sched_policy_load(const char *path, sched_policy *p)
{
    char *text = NULL;
    size_t len = 0;
    FORWARD_IF(off_read_file(path, &text, &len));
    const char *errp = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &errp, 0);
    size_t at = root || !errp ? 0 : (size_t)(errp - text);
    free(text);
    RETURN_IF(!root, -EINVAL, "%s: not valid JSON (error near byte %zu); a policy is one "
              "JSON object, see configs/policies/ for examples", path, at);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        RETURN_IF(1, -EINVAL, "%s: expected a JSON object {\"gpu_batch_size\": ..}, got "
                  "another JSON value; see configs/policies/ for examples", path);
    }
    /* fields go to a copy: a refused file leaves *p as it was */
    sched_policy q = *p;
    int rc = 0;
    for (const cJSON *it = root->child; rc == 0 && it; it = it->next)
        rc = load_field(path, it, &q);
    cJSON_Delete(root);
    if (rc == 0)
        *p = q;
    return rc;
}

/* ------------------------------------------------------------ apply */

int sched_policy_apply(sched_policy *p, const sched_policy *flags, unsigned given)
{
    RETURN_IF(given & ~(unsigned)SCHED_POLICY_ALL, -EINVAL,
              "sched_policy_apply: unknown field bits 0x%x", given & ~(unsigned)SCHED_POLICY_ALL);
    if (given & SCHED_POLICY_GPU_BATCH_SIZE)
        p->gpu_batch_size = flags->gpu_batch_size;
    if (given & SCHED_POLICY_NUM_GPU_BATCHES)
        p->num_gpu_batches = flags->num_gpu_batches;
    if (given & SCHED_POLICY_PERCENT) {
        p->wg = flags->wg;
        p->wc = flags->wc;
        p->cg = flags->cg;
        p->cc = flags->cc;
        p->hg = flags->hg;
        p->hc = flags->hc;
    }
    if (given & SCHED_POLICY_GPU_MEM)
        p->gpu_mem = flags->gpu_mem;
    if (given & SCHED_POLICY_CPU_MEM)
        p->cpu_mem = flags->cpu_mem;
    if (given & SCHED_POLICY_OFFLOAD_DIR)
        memcpy(p->offload_dir, flags->offload_dir, sizeof p->offload_dir);
    if (given & SCHED_POLICY_OVERLAP)
        p->overlap = flags->overlap;
    if (given & SCHED_POLICY_PIN_WEIGHT)
        p->pin_weight = flags->pin_weight;
    if (given & SCHED_POLICY_CPU_ATTENTION)
        p->cpu_attention = flags->cpu_attention;
    if (given & SCHED_POLICY_COMPRESS_WEIGHT)
        p->compress_weight = flags->compress_weight;
    if (given & SCHED_POLICY_COMPRESS_CACHE)
        p->compress_cache = flags->compress_cache;
    if (given & SCHED_POLICY_WEIGHT_LAYERS)
        p->weight_layers = flags->weight_layers;
    if (given & SCHED_POLICY_PREFILL_ROWS)
        p->prefill_rows = flags->prefill_rows;
    return 0;
}

/* ------------------------------------------------------------ check */

int sched_policy_check(const sched_policy *p)
{
    RETURN_IF(p->gpu_batch_size < 1, -EINVAL, "--gpu-batch-size must be at least 1, got %d",
              p->gpu_batch_size);
    RETURN_IF(p->num_gpu_batches < 1, -EINVAL, "--num-gpu-batches must be at least 1, got %d",
              p->num_gpu_batches);
    RETURN_IF(p->prefill_rows < 0 || p->prefill_rows > SCHED_PREFILL_ROWS_MAX, -EINVAL,
              "--prefill-rows must be in [1, %d], got %d", SCHED_PREFILL_ROWS_MAX,
              p->prefill_rows);
    RETURN_IF((long long)p->gpu_batch_size * p->num_gpu_batches > INT_MAX, -EINVAL,
              "block %dx%d is too large; lower --gpu-batch-size or --num-gpu-batches",
              p->gpu_batch_size, p->num_gpu_batches);
    static const char *field[6] = {"wg", "wc", "cg", "cc", "hg", "hc"};
    const double v[6] = {p->wg, p->wc, p->cg, p->cc, p->hg, p->hc};
    for (int i = 0; i < 6; i++)
        RETURN_IF(!(v[i] >= 0 && v[i] <= 100), -EINVAL,
                  "--percent: %s is %g; every value must be in [0, 100]", field[i], v[i]);
    /* a small tolerance: 33.3 + 66.7 must not count as over 100 */
    static const char *what[3] = {"weights", "KV cache", "activations"};
    for (int i = 0; i < 3; i++)
        RETURN_IF(v[2 * i] + v[2 * i + 1] > 100 + 1e-9, -EINVAL,
                  "--percent: %s on GPU + CPU is %g%%; the two must add up to at most 100",
                  what[i], v[2 * i] + v[2 * i + 1]);
    /* the activations of a GPU batch are one tensor that moves as a whole */
    RETURN_IF(p->hg != 0 && p->hg != 100, -EINVAL, "--percent: activations cannot be split "
              "across tiers (hg %g); use 100 0, 0 100 or 0 0", p->hg);
    RETURN_IF(p->hc != 0 && p->hc != 100, -EINVAL, "--percent: activations cannot be split "
              "across tiers (hc %g); use 100 0, 0 100 or 0 0", p->hc);
    for (int i = 0; i < 3; i++) {
        double disk = 100 - v[2 * i] - v[2 * i + 1];
        RETURN_IF(disk > 1e-9 && !p->offload_dir[0], -EINVAL,
                  "--percent puts %g%% of the %s on disk but no --offload-dir was given; "
                  "pass --offload-dir DIR on a fast local disk", disk, what[i]);
    }
    return 0;
}

/* The disk share as printed: 100 - g - c, with a rounding residue such as
 * 1e-14 (or -0) shown as 0. */
static double disk_share(double g, double c)
{
    double d = 100 - g - c;
    return fabs(d) < 1e-9 ? 0 : d;
}

void sched_policy_describe(const sched_policy *p, char *buf, size_t len)
{
    char rows[48] = "";
    if (p->prefill_rows > 0)
        snprintf(rows, sizeof rows, ", prefill %d rows", p->prefill_rows);
    snprintf(buf, len, "block %dx%d, weights %g/%g/%g%s, KV %g/%g/%g, act %g/%g/%g%s%s%s%s%s%s",
             p->gpu_batch_size, p->num_gpu_batches, p->wg, p->wc, disk_share(p->wg, p->wc),
             p->weight_layers ? " of all layers" : "",
             p->cg, p->cc, disk_share(p->cg, p->cc), p->hg, p->hc, disk_share(p->hg, p->hc),
             p->overlap ? ", overlap" : ", no overlap",
             p->cpu_attention ? ", cpu-attention" : "",
             p->wc > 0 && !p->pin_weight ? ", unpinned weights" : "",
             p->compress_weight ? ", 4-bit weights" : "",
             p->compress_cache ? ", 4-bit KV" : "", rows);
}

/* Rounding a cumulative share (GPU, then GPU + CPU) rather than each share
 * on its own keeps the three counts summing to n: 33/33/34 of 3 is 1/1/1,
 * where rounding each would give 1/1/1 for 3 but 2/2/2 for 7 (6 != 7). */
void sched_split(int n, double g, double c, int *n_gpu, int *n_cpu, int *n_disk)
{
    if (n < 0)
        n = 0;
    double a = floor(n * g / 100.0 + 0.5);
    double b = floor(n * (g + c) / 100.0 + 0.5);
    /* clamp in double: NaN or out-of-range shares must not reach the int cast */
    a = a >= 0 ? (a <= n ? a : n) : 0;
    b = b >= a ? (b <= n ? b : n) : a;
    *n_gpu = (int)a;
    *n_cpu = (int)b - (int)a;
    *n_disk = n - (int)b;
}

/* ------------------------------------------------------------ write */

/* v as JSON text that reads back as exactly v: cJSON prints 15 digits
 * whenever they come within an ulp or so of v, which loses the last bits
 * of a percentage like 100/3 or of a size above 2^50 (found by
 * tests/fuzz/fuzz_policy.c). */
static cJSON *exact_number(double v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%.17g", v);
    return cJSON_CreateRaw(buf);
}

/* The six percentages as a JSON array of exact numbers. */
static cJSON *exact_percent(const double pct[6])
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < 6; i++)
        if (!cJSON_AddItemToArray(a, exact_number(pct[i]))) {
            cJSON_Delete(a);
            return NULL;
        }
    return a;
}

int sched_policy_write(const char *path, const sched_policy *p)
{
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    /* the fields sched_policy_load reads; sizes in bytes (doubles when read, so
     * %.17g gives them back exactly) */
    const double pct[6] = {p->wg, p->wc, p->cg, p->cc, p->hg, p->hc};
    cJSON *r = cJSON_CreateObject();
    int ok = r && cJSON_AddNumberToObject(r, "gpu_batch_size", p->gpu_batch_size) &&
             cJSON_AddNumberToObject(r, "num_gpu_batches", p->num_gpu_batches) &&
             cJSON_AddItemToObject(r, "percent", exact_percent(pct)) &&
             cJSON_AddBoolToObject(r, "overlap", p->overlap) &&
             cJSON_AddBoolToObject(r, "pin_weight", p->pin_weight) &&
             cJSON_AddBoolToObject(r, "cpu_attention", p->cpu_attention) &&
             cJSON_AddBoolToObject(r, "compress_weight", p->compress_weight) &&
             cJSON_AddBoolToObject(r, "compress_cache", p->compress_cache) &&
             (!p->weight_layers || cJSON_AddBoolToObject(r, "weight_layers", 1)) &&
             (!p->gpu_mem ||
              cJSON_AddItemToObject(r, "gpu_mem", exact_number((double)p->gpu_mem))) &&
             (!p->cpu_mem ||
              cJSON_AddItemToObject(r, "cpu_mem", exact_number((double)p->cpu_mem))) &&
             (!p->offload_dir[0] || cJSON_AddStringToObject(r, "offload_dir", p->offload_dir)) &&
             (!p->prefill_rows || cJSON_AddNumberToObject(r, "prefill_rows", p->prefill_rows));
    char *js = ok ? cJSON_Print(r) : NULL;
    cJSON_Delete(r);
    RETURN_IF(!js, -ENOMEM, "out of memory writing the policy %s", path);
    FILE *f = fopen(tmp, "w");
    int e = errno;
    if (f)
        fprintf(f, "%s\n", js);
    cJSON_free(js);
    RETURN_IF(!f, -e, "%s: cannot write the policy (%s)", tmp, strerror(e));
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        RETURN_IF(1, -EIO, "%s: cannot write the policy (%s)", path, strerror(e));
    }
    return 0;
}

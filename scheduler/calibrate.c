/* calibrate.c: the hardware profile behind the throughput bound of
 * DESIGN.md and the policy search (`flexh2o calibrate`): disk read and
 * write through the disk engine (O_DIRECT, the engine's queue depth, 1 MiB
 * chunks), host -> GPU and GPU -> host through the backend's copy ops,
 * host memory and device memory bandwidth, and the backend's GEMM rate.
 * Each figure is the best of a few repetitions. Profiles are saved and
 * read back as one JSON object (configs/hardware/). sched_calib_share
 * turns a host's profile into one rank's share of it (search --ranks).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "err.h"
#include "kern.h"
#include "off.h"
#include "scheduler.h"

static double best(double a, double b) { return a > b ? a : b; }

/* What the host-memory reads XOR to, kept so that they are not optimised
 * away. */
static volatile uint64_t sink;

/* Device memory (a device-to-device copy reads and writes every byte) and
 * the rate of the backend's linear y(m, S) = x(m, S) . w(S, S)^T for m from
 * one row (a decode GEMV, bound by reading w) up to m = S: S = 8192 in fp16
 * on a GPU, 2048 in fp32 on the CPU. Each shape is timed over at least 20 ms. */
static int measure_device(struct backend *be, void *dev, uint64_t bytes, sched_calib *out)
{
    const backend_ops *o = be->ops;
    size_t half = (size_t)(bytes / 2) & ~(size_t)255;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = sched_trace_now();
        FORWARD_IF(o->copy_d2d(be->ctx, (char *)dev + half, dev, half));
        out->dev_mem = best(out->dev_mem, 2.0 * half / (sched_trace_now() - t0) / 1e9);
    }
    int S = o->elem_size == 2 ? 8192 : 2048;
    const int rows[SCHED_GEMM_SHAPES] = {1, 4, 16, 64, 256, 1024, S};
    void *x = NULL, *w = NULL, *y = NULL, *ws = NULL;
    size_t n = (size_t)S * S;
    /* a backend with bf16 matmuls (--cpu-matmul bf16): their rate, over
     * bf16 weights (n halves of w; ws the scratch linear_h16 takes) packed
     * as the engine packs its resident weights (pack_h16) where the
     * backend does: the bound's rate. (Weights streamed from the disk tier
     * stay plain, which oneDNN copies into its layout on every call: at a
     * decode block of 4-64 rows 1.03-1.4x slower, results/cpu-epyc-
     * 2026-12-03/bf16-pack; the cost model does not tell them apart.) */
    int bf16 = o->h16_direct && o->h16_direct(be->ctx, KERN_H16_BF16);
    kern_h16 fmt = KERN_H16_BF16;
    snprintf(out->matmul, sizeof out->matmul, "%s", bf16 ? "bf16" : "");
    int rc = o->alloc(be->ctx, n, &x);
    if (rc == 0)
        rc = o->alloc(be->ctx, n, &w);
    if (rc == 0)
        rc = o->alloc(be->ctx, n, &y);
    if (rc == 0 && bf16)
        rc = o->alloc(be->ctx, n, &ws);
    if (rc == 0 && bf16) /* w: bf16 values of about one (0x3f80 | low bits) */
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)w)[i] = (uint16_t)(0x3f80 | (i & 0x3f));
    if (rc == 0 && bf16 && o->pack_h16) {
        int packed = o->pack_h16(be->ctx, w, KERN_H16_BF16, S, S);
        rc = packed < 0 ? packed : 0;
        fmt = packed > 0 ? KERN_H16_BF16_PACKED : fmt;
    }
#define GEMM(m) (bf16 ? o->linear_h16(be->ctx, y, x, w, fmt, NULL, m, S, S, 0, ws) \
                      : o->linear(be->ctx, y, x, w, NULL, m, S, S, 0))
    if (rc == 0) /* warm-up: library start-up, plans, clocks */
        rc = GEMM(S);
    if (rc == 0)
        rc = o->sync(be->ctx);
    out->n_gemm = 0;
    for (int i = 0; rc == 0 && i < SCHED_GEMM_SHAPES; i++) {
        int m = rows[i], reps = 0;
        double t0 = sched_trace_now(), t = 0;
        while (rc == 0 && (reps < 3 || t < 0.02)) {
            rc = GEMM(m);
            if (rc == 0)
                rc = o->sync(be->ctx);
            reps++;
            t = sched_trace_now() - t0;
        }
        out->gemm_rows[out->n_gemm] = m;
        out->gemm_at[out->n_gemm++] = 2.0 * m * S * (double)S * reps / t / 1e12;
    }
#undef GEMM
    if (rc == 0)
        out->gemm = out->gemm_at[out->n_gemm - 1];
    o->free(be->ctx, ws);
    o->free(be->ctx, x);
    o->free(be->ctx, w);
    o->free(be->ctx, y);
    return rc;
}

int sched_calibrate(struct backend *be, const char *dir, uint64_t bytes, sched_calib *out)
{
    memset(out, 0, sizeof *out);
    bytes = off_align_up(bytes ? bytes : (uint64_t)1 << 30);
    const backend_ops *o = be->ops;
    snprintf(out->device, sizeof out->device, "%s", o->name);
    void *host = NULL, *dev = NULL, *host2 = off_alloc_aligned(bytes);
    RETURN_IF(!host2, -ENOMEM, "out of memory for %.1f GiB of calibration buffers",
              bytes / 1073741824.0);
    int rc = o->host_alloc(be->ctx, bytes, &host);
    if (rc == 0)
        rc = o->alloc_words(be->ctx, bytes / 4, &dev);
    memset(host2, 0x5a, bytes);
    for (int rep = 0; rc == 0 && rep < 3; rep++) {
        double t0 = sched_trace_now();
        rc = o->copy_h2d(be->ctx, dev, host, bytes);
        double t1 = sched_trace_now();
        if (rc == 0)
            rc = o->copy_d2h(be->ctx, host, dev, bytes);
        double t2 = sched_trace_now();
        /* host memory as CPU attention streams a host-resident KV cache:
         * read by every thread (one thread's memcpy gave 19.6 GB/s on the
         * 16-core H200 machine, a fraction of what its threads read) */
        sink ^= kern_xor64_par(host2, bytes / 8);
        double t3 = sched_trace_now();
        out->h2d = best(out->h2d, bytes / (t1 - t0) / 1e9);
        out->d2h = best(out->d2h, bytes / (t2 - t1) / 1e9);
        out->dram = best(out->dram, bytes / (t3 - t2) / 1e9);
    }
    if (rc == 0)
        rc = measure_device(be, dev, bytes, out);
    if (rc == 0 && dir) {
        char path[1200];
        snprintf(path, sizeof path, "%s/calibrate.bin", dir);
        off_disk *d = NULL;
        int direct = 0, fd = off_file_open(path, 1, bytes, &direct);
        rc = fd < 0 ? fd : off_disk_create(64, &d);
        if (rc == 0) {
            snprintf(out->disk_kind, sizeof out->disk_kind, "%s", off_disk_kind(d));
            out->direct = direct;
        }
        for (int rep = 0; rc == 0 && rep < 3; rep++) {
            off_io w = {fd, 1, host2, bytes, 0}, r = {fd, 0, host2, bytes, 0};
            double t0 = sched_trace_now();
            rc = off_disk_rw(d, &w, 1, "calibration write");
            if (rc == 0) {
                rc = off_fdatasync(fd);
                if (rc < 0)
                    err_set(__FILE__, __LINE__, "%s: fdatasync failed (%s); check the disk "
                            "under --offload-dir, or calibrate without it", path, strerror(-rc));
            }
            double t1 = sched_trace_now();
            if (rc == 0)
                rc = off_disk_rw(d, &r, 1, "calibration read");
            double t2 = sched_trace_now();
            out->disk_write = best(out->disk_write, bytes / (t1 - t0) / 1e9);
            out->disk_read = best(out->disk_read, bytes / (t2 - t1) / 1e9);
        }
        off_disk_destroy(d);
        off_file_close(fd);
        unlink(path);
    }
    o->host_free(be->ctx, host);
    o->free(be->ctx, dev);
    free(host2);
    return rc;
}

/* A measured rate as written: to `digits` decimals (a profile carries no
 * more precision than the measurement has; cJSON prints the shortest form). */
static cJSON *rate(double x, int digits)
{
    double u = digits == 3 ? 1e3 : 1e4;
    return cJSON_CreateNumber(round(x * u) / u);
}

int sched_calib_print(FILE *f, const sched_calib *cb)
{
    cJSON *r = cJSON_CreateObject();
    int ok = r && cJSON_AddStringToObject(r, "device", cb->device) &&
             cJSON_AddItemToObject(r, "h2d_GBps", rate(cb->h2d, 3)) &&
             cJSON_AddItemToObject(r, "d2h_GBps", rate(cb->d2h, 3)) &&
             cJSON_AddItemToObject(r, "dram_GBps", rate(cb->dram, 3)) &&
             cJSON_AddItemToObject(r, "dev_mem_GBps", rate(cb->dev_mem, 3)) &&
             cJSON_AddItemToObject(r, "gemm_TFLOPs", rate(cb->gemm, 4));
    if (ok && cb->matmul[0])
        ok = cJSON_AddStringToObject(r, "matmul", cb->matmul) != NULL;
    if (ok && cb->n_gemm > 0) {
        cJSON *rows = cJSON_AddArrayToObject(r, "gemm_rows");
        cJSON *at = cJSON_AddArrayToObject(r, "gemm_TFLOPs_at");
        ok = rows && at;
        for (int i = 0; ok && i < cb->n_gemm; i++)
            ok = cJSON_AddItemToArray(rows, cJSON_CreateNumber(cb->gemm_rows[i])) &&
                 cJSON_AddItemToArray(at, rate(cb->gemm_at[i], 4));
    }
    if (ok && cb->disk_read > 0)
        ok = cJSON_AddItemToObject(r, "disk_read_GBps", rate(cb->disk_read, 3)) &&
             cJSON_AddItemToObject(r, "disk_write_GBps", rate(cb->disk_write, 3)) &&
             cJSON_AddStringToObject(r, "disk_engine", cb->disk_kind) &&
             cJSON_AddBoolToObject(r, "o_direct", cb->direct);
    char *js = ok ? cJSON_PrintUnformatted(r) : NULL;
    cJSON_Delete(r);
    RETURN_IF(!js, -ENOMEM, "out of memory writing the hardware profile");
    fprintf(f, "%s\n", js);
    cJSON_free(js);
    return 0;
}

int sched_calib_write(const char *path, const sched_calib *cb)
{
    /* in place, not path.tmp + rename: the profile is small and regenerated
     * by rerunning calibrate, and --out /dev/stdout should work */
    errno = 0;
    FILE *f = fopen(path, "w");
    int bad = !f;
    if (f) {
        int rc = sched_calib_print(f, cb);
        if (rc < 0) {
            fclose(f);
            return rc;
        }
        bad = ferror(f);
        bad |= fclose(f) != 0;
    }
    int e = errno ? errno : EIO;
    RETURN_IF(bad, -e, "%s: cannot write the profile (%s); choose a writable path", path,
              strerror(e));
    return 0;
}

/* The smallest rates a profile holds: what sched_calib_print's 3 decimals
 * of GB/s and 4 of TFLOP/s show. Below them a rate printed back is 0; and a
 * rate of 1e-320 made the search's time bounds infinite, which aborts GLPK
 * (found by tests/fuzz/fuzz_calib.c). */
#define MIN_GBPS 1e-3
#define MIN_TFLOPS 1e-4

static int load_rate(const char *path, const cJSON *root, const char *key, int required,
                     double *out)
{
    double min = strstr(key, "TFLOPs") ? MIN_TFLOPS : MIN_GBPS;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    RETURN_IF(!it && required, -EINVAL, "%s: no field \"%s\"; a hardware profile is what "
              "`flexh2o calibrate --out FILE` writes", path, key);
    if (!it)
        return 0;
    RETURN_IF(!cJSON_IsNumber(it) || !(it->valuedouble >= min) || it->valuedouble > 1e9,
              -EINVAL, "%s: field \"%s\" must be a positive number (%g to 1e9); measure it "
              "again with `flexh2o calibrate --out FILE`", path, key, min);
    *out = it->valuedouble;
    return 0;
}

/* "gemm_rows" and "gemm_TFLOPs_at": optional, together, increasing rows. */
static int load_gemm_shapes(const char *path, const cJSON *root, sched_calib *cb)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "gemm_rows");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "gemm_TFLOPs_at");
    if (!r && !v)
        return 0;
    int n = cJSON_IsArray(r) ? cJSON_GetArraySize(r) : -1;
    RETURN_IF(n < 1 || n > SCHED_GEMM_SHAPES || !cJSON_IsArray(v) ||
              cJSON_GetArraySize(v) != n, -EINVAL, "%s: \"gemm_rows\" and \"gemm_TFLOPs_at\" "
              "must be arrays of the same length (1 to %d); measure again with `flexh2o "
              "calibrate --out FILE`", path, SCHED_GEMM_SHAPES);
    const cJSON *a = r->child, *b = v->child;
    for (int i = 0; i < n; i++, a = a->next, b = b->next) {
        /* whole rows (1.5 and 1.7 both became row 1) and finite rates (1e400
         * is inf, printed back as null) like the other rates' (found by
         * tests/fuzz/fuzz_calib.c) */
        RETURN_IF(!cJSON_IsNumber(a) || a->valuedouble < 1 || a->valuedouble > 1e7 ||
                  a->valuedouble != floor(a->valuedouble) ||
                  (i > 0 && a->valuedouble <= cb->gemm_rows[i - 1]) ||
                  !cJSON_IsNumber(b) || !(b->valuedouble >= MIN_TFLOPS) || b->valuedouble > 1e9,
                  -EINVAL,
                  "%s: \"gemm_rows\" must increase from 1 in whole rows and every rate in "
                  "\"gemm_TFLOPs_at\" must be a positive number (item %d)", path, i + 1);
        cb->gemm_rows[i] = (int)a->valuedouble;
        cb->gemm_at[i] = b->valuedouble;
    }
    cb->n_gemm = n;
    return 0;
}

int sched_calib_load(const char *path, sched_calib *out)
{
    char *text = NULL;
    size_t len = 0;
    FORWARD_IF(off_read_file(path, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    int is_obj = cJSON_IsObject(root);
    if (!is_obj)
        cJSON_Delete(root); /* valid JSON of another kind */
    RETURN_IF(!is_obj, -EINVAL, "%s: not a JSON object; a hardware "
              "profile is what `flexh2o calibrate --out FILE` writes", path);
    sched_calib cb;
    memset(&cb, 0, sizeof cb);
    const cJSON *dev = cJSON_GetObjectItemCaseSensitive(root, "device");
    int rc = 0;
    if (!cJSON_IsString(dev) || (strcmp(dev->valuestring, "cpu") != 0 &&
                                 strcmp(dev->valuestring, "cuda") != 0)) {
        err_set(__FILE__, __LINE__, "%s: field \"device\" must be \"cpu\" or \"cuda\"",
                path);
        rc = -EINVAL;
    } else {
        snprintf(cb.device, sizeof cb.device, "%s", dev->valuestring);
    }
    static const char *req[] = {"h2d_GBps", "d2h_GBps", "dram_GBps", "dev_mem_GBps",
                                "gemm_TFLOPs"};
    double *dst[] = {&cb.h2d, &cb.d2h, &cb.dram, &cb.dev_mem, &cb.gemm};
    for (int i = 0; rc == 0 && i < 5; i++)
        rc = load_rate(path, root, req[i], 1, dst[i]);
    if (rc == 0)
        rc = load_rate(path, root, "disk_read_GBps", 0, &cb.disk_read);
    if (rc == 0 && cb.disk_read > 0)
        rc = load_rate(path, root, "disk_write_GBps", 1, &cb.disk_write);
    if (rc == 0)
        rc = load_gemm_shapes(path, root, &cb);
    const cJSON *eng = cJSON_GetObjectItemCaseSensitive(root, "disk_engine");
    if (rc == 0 && cJSON_IsString(eng))
        snprintf(cb.disk_kind, sizeof cb.disk_kind, "%s", eng->valuestring);
    cb.direct = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "o_direct"));
    const cJSON *mm = cJSON_GetObjectItemCaseSensitive(root, "matmul");
    if (rc == 0 && mm && !(cJSON_IsString(mm) && strcmp(mm->valuestring, "bf16") == 0)) {
        err_set(__FILE__, __LINE__, "%s: field \"matmul\" must be \"bf16\" (the GEMM rate "
                "of --cpu-matmul bf16) or absent (fp32)", path);
        rc = -EINVAL;
    } else if (mm) {
        snprintf(cb.matmul, sizeof cb.matmul, "bf16");
    }
    cJSON_Delete(root);
    if (rc == 0)
        *out = cb;
    return rc;
}

int sched_calib_share(sched_calib *hw, int k)
{
    RETURN_IF(k < 1, -EINVAL, "internal: a host shared by %d ranks", k);
    /* a fair share of each shared resource: the ranks run the same schedule
     * at once, so each gets 1/k of the rate the profile measured alone */
    double f = 1.0 / k;
    hw->disk_read *= f;
    hw->disk_write *= f;
    hw->dram *= f;
    if (strcmp(hw->device, "cpu") == 0) {
        hw->h2d *= f;
        hw->d2h *= f;
        hw->dev_mem *= f;
        hw->gemm *= f;
        for (int i = 0; i < hw->n_gemm; i++)
            hw->gemm_at[i] *= f;
    }
    return 0;
}

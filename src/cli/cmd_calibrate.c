/* cmd_calibrate.c: `flexh2o calibrate`, the hardware profile behind the
 * throughput bound and `flexh2o search` (scheduler/calibrate.c measures,
 * prints and saves it). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_args.h"
#include "err.h"
#include "off.h"
#include "scheduler.h"

static const char calibrate_help[] =
    "usage: flexh2o calibrate [--offload-dir DIR] [--device cpu|cuda] [--bytes 1G]\n"
    "                         [--cpu-matmul fp32|bf16] [--out PROFILE.json]\n"
    "  prints the hardware profile the throughput bound and `flexh2o search` use,\n"
    "  as JSON: host->device, device->host, host memory and device memory\n"
    "  (GB/s), the backend's GEMM rate (TFLOP/s), and disk read/write (disk\n"
    "  engine, O_DIRECT) when --offload-dir is given; --out also saves it\n"
    "  (configs/hardware/ keeps measured profiles); --cpu-matmul bf16: the GEMM\n"
    "  rate of bf16 matmuls over bf16 weights, for runs with that flag";

int cli_calibrate(int argc, char **argv)
{
    const char *dir = NULL, *device = NULL, *outp = NULL;
    uint64_t bytes = 0;
    int bf16_matmul = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--offload-dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            outp = argv[++i];
        } else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            device = argv[++i];
        } else if (strcmp(argv[i], "--cpu-matmul") == 0 && i + 1 < argc) {
            int rc = cli_parse_matmul("calibrate", argv[++i], &bf16_matmul);
            if (rc)
                return rc;
        } else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc) {
            if (sched_parse_size("--bytes", argv[++i], &bytes) < 0)
                return cli_usage_err("calibrate");
        } else if (strcmp(argv[i], "--help") == 0) {
            puts(calibrate_help);
            return 0;
        } else {
            return cli_unknown_flag("calibrate", argv[i]);
        }
    }
    if (outp) { /* before the minute of measuring, not after it */
        int rc = cli_out_check("calibrate", "--out", outp);
        if (rc)
            return rc;
    }
    backend be = {0};
    int rc = cli_open_backend("calibrate", device, 0, bf16_matmul, &be);
    if (rc)
        return rc;
    sched_calib cb;
    off_cpu_load before, after;
    int sampled = off_cpu_sample(&before) == 0;
    rc = sched_calibrate(&be, dir, bytes, &cb);
    backend_destroy(&be);
    if (rc < 0)
        return cli_fail();
    /* a profile measured beside other work understates the machine */
    double others = sampled && off_cpu_sample(&after) == 0 ? off_cpu_others(&before, &after) : 0;
    if (others >= 0.5)
        err_log("[flexh2o] calibrate: other processes kept %.1f of the %d cores busy while it "
                "measured: the rates are likely low; measure again on a quiet machine",
                others, after.cores);
    if (sched_calib_print(stdout, &cb) < 0 || (outp && sched_calib_write(outp, &cb) < 0))
        return cli_fail();
    return 0;
}

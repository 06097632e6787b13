/* calibrate.c: measured link speeds for the throughput bound of DESIGN.md
 * (`flexh2o calibrate`): disk read and write through the disk engine
 * (O_DIRECT, the engine's queue depth, 1 MiB chunks), host -> GPU and
 * GPU -> host through the backend's copy ops, and host memory bandwidth.
 * Each figure is the best of a few repetitions of a transfer of `bytes`.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_impl.h"
#include "err.h"
#include "off.h"
#include "sched.h"

static double best(double a, double b) { return a > b ? a : b; }

int sched_calibrate(struct backend *be, const char *dir, uint64_t bytes, sched_calib *out)
{
    memset(out, 0, sizeof *out);
    bytes = off_align_up(bytes ? bytes : (uint64_t)1 << 30);
    const backend_ops *o = be->ops;
    void *host = NULL, *dev = NULL, *host2 = off_alloc_aligned(bytes);
    RETURN_IF(!host2, -ENOMEM, "out of memory for %.1f GiB of calibration buffers",
              bytes / 1073741824.0);
    int rc = o->host_alloc(be->ctx, bytes, &host);
    if (rc == 0)
        rc = o->alloc_f32(be->ctx, bytes / 4, &dev);
    memset(host2, 0x5a, bytes);
    for (int rep = 0; rc == 0 && rep < 3; rep++) {
        double t0 = sched_trace_now();
        rc = o->copy_h2d(be->ctx, dev, host, bytes);
        double t1 = sched_trace_now();
        if (rc == 0)
            rc = o->copy_d2h(be->ctx, host, dev, bytes);
        double t2 = sched_trace_now();
        memcpy(host, host2, bytes);
        double t3 = sched_trace_now();
        out->h2d = best(out->h2d, bytes / (t1 - t0) / 1e9);
        out->d2h = best(out->d2h, bytes / (t2 - t1) / 1e9);
        out->dram = best(out->dram, 2.0 * bytes / (t3 - t2) / 1e9); /* read + write */
    }
    if (rc == 0 && dir) {
        char path[1200];
        snprintf(path, sizeof path, "%s/calibrate.bin", dir);
        off_disk *d = NULL;
        int direct = 0, fd = off_file_open(path, 1, bytes, &direct);
        rc = fd < 0 ? fd : off_disk_create(64, &d);
        if (rc == 0) {
            out->disk_kind = off_disk_kind(d);
            out->direct = direct;
        }
        for (int rep = 0; rc == 0 && rep < 3; rep++) {
            off_io w = {fd, 1, host2, bytes, 0}, r = {fd, 0, host2, bytes, 0};
            double t0 = sched_trace_now();
            rc = off_disk_rw(d, &w, 1, "calibration write");
            if (rc == 0)
                rc = fdatasync(fd) == 0 ? 0 : -errno;
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

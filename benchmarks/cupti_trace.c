/* cupti_trace.c: the device's own timeline of kernels and copies for any CUDA
 * program, where no profiler can write a report (Nsight Systems is not on the
 * lent GPU machines' PATH, and the copy there could not export one). A CUDA
 * injection library: the driver loads it at cuInit and calls
 * InitializeInjection, which turns on CUPTI's kernel and memcpy activity
 * records; at exit they are written as CSV.
 *
 *   CUDA_INJECTION64_PATH=$PWD/build/benchmarks/libflexh2o-cupti-trace.so \
 *   FLEXH2O_CUPTI_OUT=trace.csv flexh2o generate ... --device cuda
 *   python3 benchmarks/nsys_overlap.py trace.csv
 *
 * Columns: kind (kernel, memcpy), start_ns, end_ns (the GPU's clock), stream,
 * bytes and copy_kind (CUPTI_ActivityMemcpyKind: 1 host to device, 2 device
 * to host, 8 device to device; 0 for kernels), name (kernels: mangled, last
 * so that nothing in it can shift a column). A line on stderr at exit says
 * how many records were written and how many CUPTI dropped. */
#include <cupti.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define TRACE_BUF_BYTES ((size_t)8 << 20)

static FILE *trace_out;
static pthread_mutex_t trace_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long n_kernels, n_copies, n_dropped;

static void CUPTIAPI buffer_requested(uint8_t **buf, size_t *size, size_t *max_records)
{
    *buf = aligned_alloc(8, TRACE_BUF_BYTES);
    *size = *buf ? TRACE_BUF_BYTES : 0;
    *max_records = 0; /* as many as fit */
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buf,
                                      size_t size, size_t valid)
{
    (void)size;
    CUpti_Activity *r = NULL;
    pthread_mutex_lock(&trace_mu);
    while (trace_out && cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
        if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ||
            r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            /* later record versions append fields: these offsets hold */
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)r;
            fprintf(trace_out, "kernel,%llu,%llu,%u,0,0,%s\n", (unsigned long long)k->start,
                    (unsigned long long)k->end, k->streamId, k->name ? k->name : "?");
            n_kernels++;
        } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const CUpti_ActivityMemcpy6 *m = (const CUpti_ActivityMemcpy6 *)r;
            fprintf(trace_out, "memcpy,%llu,%llu,%u,%llu,%u,\n", (unsigned long long)m->start,
                    (unsigned long long)m->end, m->streamId, (unsigned long long)m->bytes,
                    (unsigned)m->copyKind);
            n_copies++;
        }
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS)
        n_dropped += dropped;
    pthread_mutex_unlock(&trace_mu);
    free(buf);
}

static void trace_finish(void)
{
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    pthread_mutex_lock(&trace_mu);
    if (trace_out) {
        int bad = fclose(trace_out) != 0;
        trace_out = NULL;
        fprintf(stderr, "[cupti-trace] %llu kernels, %llu copies written%s; %llu records "
                "dropped by CUPTI\n", n_kernels, n_copies, bad ? " (close failed)" : "",
                n_dropped);
    }
    pthread_mutex_unlock(&trace_mu);
}

/* Called by the CUDA driver once, during cuInit. @return 1 when tracing. */
int InitializeInjection(void);
int InitializeInjection(void)
{
    const char *path = getenv("FLEXH2O_CUPTI_OUT");
    if (!path || !*path)
        path = "cupti-trace.csv";
    trace_out = fopen(path, "w");
    if (!trace_out) {
        fprintf(stderr, "[cupti-trace] %s: cannot create it; no trace\n", path);
        return 0;
    }
    fprintf(trace_out, "kind,start_ns,end_ns,stream,bytes,copy_kind,name\n");
    const char *what = NULL;
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS)
        what = "registering the buffer callbacks";
    else if (cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS)
        what = "enabling kernel records";
    else if (cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS)
        what = "enabling memcpy records";
    if (what) {
        fprintf(stderr, "[cupti-trace] CUPTI failed %s; no trace\n", what);
        fclose(trace_out);
        trace_out = NULL;
        remove(path);
        return 0;
    }
    atexit(trace_finish);
    return 1;
}

/* stream.c: reading host memory as fast as the machine's threads can, the
 * rate calibrate reports for host memory (scheduler/calibrate.c) and the
 * cost model charges CPU attention with: the attention kernels stream a
 * host-resident KV cache on every OpenMP thread, so one thread's memcpy
 * understates them on a many-core host (19.6 GB/s on the 16-core H200
 * machine).
 */
#include "kern.h"

uint64_t kern_xor64_ref(const uint64_t *p, size_t n)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x ^= p[i];
    return x;
}

uint64_t kern_xor64_par(const uint64_t *p, size_t n)
{
    uint64_t x = 0;
    #pragma omp parallel for schedule(static) reduction(^ : x)
    for (size_t i = 0; i < n; i++)
        x ^= p[i];
    return x;
}

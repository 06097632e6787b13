/* cuda_emu.cc: the scheduler of cuda_emu.hpp's emulated blocks. */
#include "cuda_emu.hpp"

dim3 threadIdx, blockIdx, gridDim, blockDim;
emu_state emu;

void emu_check_wmma(const void *p, unsigned ldm, unsigned multiple, const char *what)
{
    if ((uintptr_t)p % 32 || ldm % multiple) {
        fprintf(stderr, "cuda_emu: wmma %s at %p with ldm %u: wmma needs a 32-byte aligned "
                "pointer and ldm a multiple of %u (block %u,%u thread %u)\n", what, p, ldm,
                multiple, blockIdx.x, blockIdx.y, threadIdx.x);
        abort();
    }
}

static void emu_entry(void)
{
    emu.body();
    emu.done[emu.cur] = 1;
    /* uc_link returns to emu.main */
}

int emu_launch(dim3 grid, int threads, std::function<void()> body)
{
    if (threads % 32 || threads > EMU_THREADS_MAX) {
        fprintf(stderr, "cuda_emu: %d threads per block\n", threads);
        return -1;
    }
    emu.n = threads;
    emu.body = body;
    gridDim = grid;
    blockDim = dim3{(unsigned)threads, 1, 1};
    for (int t = 0; t < threads; t++)
        if (!emu.stack[t] && !(emu.stack[t] = (char *)malloc(EMU_STACK)))
            return -1;
    for (unsigned bx = 0; bx < grid.x; bx++)
        for (unsigned by = 0; by < grid.y; by++) {
            blockIdx = dim3{bx, by, 0};
            memset(emu.count, 0, sizeof emu.count);
            for (int t = 0; t < threads; t++) {
                emu.done[t] = 0;
                emu.wait_b[t] = -1;
                getcontext(&emu.ctx[t]);
                emu.ctx[t].uc_stack.ss_sp = emu.stack[t];
                emu.ctx[t].uc_stack.ss_size = EMU_STACK;
                emu.ctx[t].uc_link = &emu.main;
                makecontext(&emu.ctx[t], emu_entry, 0);
            }
            for (int left = threads; left > 0;) {
                int ran = 0;
                for (int t = 0; t < threads; t++) {
                    if (emu.done[t] || (emu.wait_b[t] >= 0 && emu.gen[emu.wait_b[t]] ==
                                                                  emu.wait_g[t]))
                        continue; /* finished, or its barrier has not opened */
                    emu.cur = t;
                    threadIdx = dim3{(unsigned)t, 0, 0};
                    swapcontext(&emu.main, &emu.ctx[t]);
                    left -= emu.done[t];
                    ran++;
                }
                if (!ran && left > 0) {
                    fprintf(stderr, "cuda_emu: block (%u, %u) cannot finish: %d threads wait "
                            "at barriers the others never reach\n", bx, by, left);
                    return -1;
                }
            }
        }
    return 0;
}

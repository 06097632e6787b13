/* cuda_emu.cc: the scheduler of cuda_emu.hpp's emulated blocks.
 *
 * A thread's coroutine starts through makecontext / swapcontext; from then
 * on the switches are _setjmp / _longjmp between the scheduler's frame and
 * the coroutines' stacks (swapcontext makes a sigprocmask system call per
 * switch: 50x slower over the millions of switches of a test), except
 * under AddressSanitizer, which understands swapcontext but not a longjmp
 * to another stack. _FORTIFY_SOURCE's longjmp check would take such a jump
 * for a corrupt stack frame: it is off in this file. */
#undef _FORTIFY_SOURCE
#include "cuda_emu.hpp"

#ifdef EMU_ASAN
#define EMU_SWAPCONTEXT 1
#include <sanitizer/asan_interface.h>
#endif

dim3 threadIdx, blockIdx, gridDim, blockDim;
emu_state emu;
static cudaError_t last_error = cudaSuccess; /* sticky until cudaGetLastError */
static void *dyn_smem;
static size_t dyn_smem_bytes;

void emu_set_error(cudaError_t e) { last_error = e; }

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

void *emu_dyn_smem(void) { return dyn_smem; }

void emu_launch_cfg(dim3 grid, dim3 block, size_t smem, cudaStream_t st, unsigned bound,
                    std::function<void()> body)
{
    if (block.x == 0 || block.x > 1024 || block.y != 1 || block.z != 1 ||
        grid.x == 0 || grid.x > 0x7fffffffu || grid.y == 0 || grid.y > 65535 ||
        grid.z != 1 || smem > 48 * 1024) {
        fprintf(stderr, "cuda_emu: launch <<<(%u, %u, %u), (%u, %u, %u), %zu>>> refused\n",
                grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    unsigned threads = block.x * block.y * block.z;
    if (threads > 256 && (bound == 0 || threads > bound)) {
        char decl[64] = "no __launch_bounds__";
        if (bound)
            snprintf(decl, sizeof decl, "__launch_bounds__(%u)", bound);
        fprintf(stderr, "cuda_emu: a block of %u threads from a kernel declared with %s: past "
                "256 threads a kernel needs __launch_bounds__ covering its blocks, or the "
                "compiler may give each thread more registers than the SM holds for them\n",
                threads, decl);
        last_error = cudaErrorLaunchOutOfResources;
        return;
    }
    emu_enqueue(st, [grid, block, smem, body] {
        if (smem > dyn_smem_bytes) {
            free(dyn_smem);
            dyn_smem = aligned_alloc(128, (smem + 127) / 128 * 128);
            dyn_smem_bytes = smem;
        }
        if (smem)
            memset(dyn_smem, 0xa5, smem); /* never zero by chance */
        if (emu_launch(grid, (int)block.x, body) < 0)
            abort();
    });
}

void emu_check_wmma(const void *p, unsigned ldm, unsigned multiple, const char *what)
{
    if ((uintptr_t)p % 32 || ldm % multiple) {
        fprintf(stderr, "cuda_emu: wmma %s at %p with ldm %u: wmma needs a 32-byte aligned "
                "pointer and ldm a multiple of %u (block %u,%u thread %u)\n", what, p, ldm,
                multiple, blockIdx.x, blockIdx.y, threadIdx.x);
        abort();
    }
}

void emu_yield(void)
{
#ifdef EMU_SWAPCONTEXT
    swapcontext(&emu.ctx[emu.cur], &emu.main);
#else
    if (!_setjmp(emu.jmp[emu.cur]))
        _longjmp(emu.sched_jmp, 1);
#endif
}

static void emu_entry(void)
{
    emu.body();
    emu.done[emu.cur] = 1;
#ifndef EMU_SWAPCONTEXT
    _longjmp(emu.sched_jmp, 1);
#endif
    /* else uc_link returns to emu.main */
}

/* Run thread t until it yields or ends. */
static void emu_resume(int t)
{
#ifdef EMU_SWAPCONTEXT
    swapcontext(&emu.main, &emu.ctx[t]);
#else
    if (_setjmp(emu.sched_jmp))
        return; /* t yielded or ended */
    if (!emu.started[t]) {
        emu.started[t] = 1;
        swapcontext(&emu.main, &emu.ctx[t]); /* never returns here: t jumps back */
    }
    _longjmp(emu.jmp[t], 1);
#endif
}

int emu_launch(dim3 grid, int threads, std::function<void()> body)
{
    if (threads < 1 || threads > EMU_THREADS_MAX) {
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
                emu.started[t] = 0;
                emu.wait_b[t] = -1;
                getcontext(&emu.ctx[t]);
                emu.ctx[t].uc_stack.ss_sp = emu.stack[t];
                emu.ctx[t].uc_stack.ss_size = EMU_STACK;
                emu.ctx[t].uc_link = &emu.main;
                makecontext(&emu.ctx[t], emu_entry, 0);
#ifdef EMU_SWAPCONTEXT
                /* ASan's swapcontext clears the shadow of the stack a context
                 * names (uc_stack) on each switch to it and back: the live
                 * frames' redzones of a thread waiting at a barrier were
                 * wiped (an overflow after it went unseen), at a 32 KiB
                 * memset per switch (72% of kern_emu's time under ASan).
                 * makecontext has used the stack: the context names none. A
                 * finished thread has returned from every frame (their
                 * shadow is clean); an abandoned block's is cleared below. */
                emu.ctx[t].uc_stack.ss_size = 0;
#endif
            }
            for (int left = threads; left > 0;) {
                int ran = 0;
                for (int t = 0; t < threads; t++) {
                    if (emu.done[t] || (emu.wait_b[t] >= 0 && emu.gen[emu.wait_b[t]] ==
                                                                  emu.wait_g[t]))
                        continue; /* finished, or its barrier has not opened */
                    emu.cur = t;
                    threadIdx = dim3{(unsigned)t, 0, 0};
                    emu_resume(t);
                    left -= emu.done[t];
                    ran++;
                }
                if (!ran && left > 0) {
                    fprintf(stderr, "cuda_emu: block (%u, %u) cannot finish: %d threads wait "
                            "at barriers the others never reach\n", bx, by, left);
#ifdef EMU_SWAPCONTEXT
                    for (int u = 0; u < threads; u++) /* their frames stay poisoned */
                        ASAN_UNPOISON_MEMORY_REGION(emu.stack[u], EMU_STACK);
#endif
                    return -1;
                }
            }
        }
    return 0;
}

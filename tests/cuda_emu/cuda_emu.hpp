/* cuda_emu.hpp: enough of CUDA to run a kernel's own text on the CPU, one
 * block at a time, for the tests that need no GPU (tests/meson.build).
 *
 * Every thread of a block is a coroutine on one OS thread (started with
 * makecontext, switched with _setjmp / _longjmp, which make no system
 * call; with swapcontext alone under AddressSanitizer, which follows it);
 * __syncthreads and __syncwarp are counting barriers (a thread waits by
 * yielding until its barrier's generation moves), warp shuffles and votes
 * go through a per-warp exchange between two warp barriers. The scheduler
 * runs the threads round-robin and stops with a message when none can move
 * (a barrier some thread never reaches): a deadlock the GPU would show as
 * a hang. __shared__ is `static`: one block runs at a time.
 *
 * nvcuda::wmma: an operand fragment holds the whole 16 x 16 tile in every
 * lane, an accumulator 8 elements per lane (the layout is opaque to the
 * kernels, which only load, store, fill and multiply fragments); halves
 * are widened exactly, products and sums are
 * fp32, as on the tensor cores (the order of the sums may differ). Every
 * load and store checks what wmma requires: a 32-byte aligned pointer, a
 * leading dimension that is a multiple of 8 halves or 4 floats.
 *
 * What it cannot show: races between lanes (the GPU run's racecheck), the
 * hardware's fragment layouts, timing. What it shows: the kernel's
 * indexing, masks, tile and block bounds, barrier structure and
 * arithmetic, against the plain-C reference, in CI. */
#ifndef FH_CUDA_EMU_HPP
#define FH_CUDA_EMU_HPP

/* EMU_ASAN: built under AddressSanitizer (gcc's macro, clang's feature) */
#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <ucontext.h>

#include <functional>

#include "cuda_emu_api.h"

extern "C" {
#include "kern.h"
uint16_t emu_f32_to_f16(float x);
float emu_f16_to_f32(uint16_t h);
}

/* ---- types and qualifiers ---- */
struct __half {
    uint16_t x;
    __half() = default;
    __half(float f) : x(emu_f32_to_f16(f)) {}
    operator float() const { return emu_f16_to_f32(x); }
};
struct __half2 {
    __half x, y;
};
struct float2 {
    float x, y;
};
static inline __half __float2half_rn(float f) { return __half(f); }
static inline float __half2float(__half h) { return emu_f16_to_f32(h.x); }
static inline __half __ushort_as_half(unsigned short u)
{
    __half h;
    h.x = u;
    return h;
}
static inline unsigned short __half_as_ushort(__half h) { return h.x; }
static inline float2 __half22float2(__half2 h) { return float2{(float)h.x, (float)h.y}; }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
struct alignas(16) uint4 { /* CUDA's alignment: UBSan checks the 16-byte loads */
    uint32_t x, y, z, w;
};
static inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w)
{
    return uint4{x, y, z, w};
}
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
static inline float emu_expf(float x) { return expf(x); }
#define __expf emu_expf /* glibc declares a __expf of its own */
/* the round-to-nearest forms: the host's float arithmetic (the emulation
 * is compiled with -ffp-contract=off, so nothing fuses) */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

static inline int atomicMin(int *p, int v) /* one OS thread runs a block */
{
    int old = *p;
    if (v < old)
        *p = v;
    return old;
}

/* ---- the block's threads ---- */
#define EMU_THREADS_MAX 1024
#define EMU_STACK (256 * 1024)
extern dim3 threadIdx, blockIdx, gridDim, blockDim;

struct emu_state {
    ucontext_t main, ctx[EMU_THREADS_MAX];
    jmp_buf sched_jmp, jmp[EMU_THREADS_MAX]; /* the fast switch (cuda_emu.cc) */
    int started[EMU_THREADS_MAX];
    char *stack[EMU_THREADS_MAX];
    int done[EMU_THREADS_MAX];
    int wait_b[EMU_THREADS_MAX], wait_g[EMU_THREADS_MAX]; /* the barrier a thread waits
                                                           * at and its generation; -1 */
    int n, cur;
    int count[EMU_THREADS_MAX / 32 + 1], gen[EMU_THREADS_MAX / 32 + 1]; /* warps, then block */
    uint64_t xw[EMU_THREADS_MAX]; /* shuffles and votes: each lane's value */
    std::function<void()> body;
};
extern emu_state emu;

/* Back to the scheduler; returns when the scheduler resumes this thread. */
void emu_yield(void);

/* barrier b (warp b, or the block: b = EMU_THREADS_MAX / 32) of `size` threads; the
 * scheduler resumes a waiting thread only once the generation moved */
static inline void emu_barrier(int b, int size)
{
    int g = emu.gen[b];
    if (++emu.count[b] == size) {
        emu.count[b] = 0;
        emu.gen[b]++;
        return;
    }
    emu.wait_b[emu.cur] = b;
    emu.wait_g[emu.cur] = g;
    emu_yield();
    emu.wait_b[emu.cur] = -1;
}
static inline void __syncthreads(void) { emu_barrier(EMU_THREADS_MAX / 32, emu.n); }
static inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    (void)mask;
    int w = threadIdx.x / 32; /* the last warp may be partial */
    emu_barrier(w, emu.n - w * 32 < 32 ? emu.n - w * 32 : 32);
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int off)
{
    static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffle moves at most 8 bytes here");
    int t = threadIdx.x, w0 = t / 32 * 32;
    memcpy(&emu.xw[t], &v, sizeof v);
    __syncwarp(mask);
    T r;
    memcpy(&r, &emu.xw[w0 + ((t % 32) ^ off)], sizeof r);
    __syncwarp(mask);
    return r;
}
static inline bool __any_sync(unsigned mask, bool p)
{
    int t = threadIdx.x, w0 = t / 32 * 32, lanes = emu.n - w0 < 32 ? emu.n - w0 : 32;
    emu.xw[t] = p;
    __syncwarp(mask);
    bool any = false;
    for (int l = 0; l < lanes; l++)
        any = any || emu.xw[w0 + l];
    __syncwarp(mask);
    return any;
}

/* Run body() as every thread of every block of grid (blocks in order, y
 * fastest), with `threads` threads (the last warp may be partial). Returns 0, or -1
 * after printing the blocked threads when a block cannot finish. */
int emu_launch(dim3 grid, int threads, std::function<void()> body);

/* A <<<grid, block, smem, stream>>> launch (emu_cu.py's rewrite, the
 * kernel call captured by value): the configuration checked at once as
 * the GPU would (a bad one is the sticky error cudaGetLastError returns,
 * and nothing runs), then the launch queued on the stream: smem bytes of
 * dynamic shared memory (emu_dyn_smem), emu_launch. A block that cannot
 * finish aborts the test program. bound: the kernel's __launch_bounds__
 * (0: none). The emulator has no registers to count, so it keeps a rule
 * that makes the GPU's limit unreachable: a block of more than 256 threads
 * needs a bound that covers it (at most 255 registers a thread, 256
 * threads always fit an SM's 65536; past that only a declared bound makes
 * the compiler fit them), else the launch fails as on the GPU with "too
 * many resources requested for launch" (sampling's pick kernel, 92
 * registers at 1024 threads, did on an H200). */
void emu_launch_cfg(dim3 grid, dim3 block, size_t smem, cudaStream_t st, unsigned bound,
                    std::function<void()> body);
void *emu_dyn_smem(void);

/* Queue fn on stream st (emu_runtime.cc): it runs when the host needs it
 * done; st NULL (the legacy default stream) runs it at once, after all
 * queued work. */
void emu_enqueue(cudaStream_t st, std::function<void()> fn);

/* ---- nvcuda::wmma, m16n16k16 ---- */
void emu_check_wmma(const void *p, unsigned ldm, unsigned multiple, const char *what);

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

/* matrix_a / matrix_b fragments: the whole tile in every lane (loads read
 * it all); accumulators: lane L holds elements L, L + 32, ... of the
 * row-major tile, so a lane that reads a stored tile before the warp's
 * other lanes stored theirs (a missing __syncwarp) reads stale values, as
 * on the GPU. */
template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    float v[16][16];
};
template <int M, int N, int K> struct fragment<accumulator, M, N, K, float, void> {
    float v[8];
};
#define EMU_OWN(i, e, r, c)                                                            \
    for (int i = 0, e = (int)(threadIdx.x % 32), r = e / 16, c = e % 16; i < 8;         \
         i++, e += 32, r = e / 16, c = e % 16)

template <typename Use, typename T, typename L>
static inline void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, float x)
{
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.v[r][c] = x;
}
static inline void fill_fragment(fragment<accumulator, 16, 16, 16, float> &f, float x)
{
    for (int i = 0; i < 8; i++)
        f.v[i] = x;
}
template <typename Use>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, __half, row_major> &f,
                                    const __half *p, unsigned ldm)
{
    emu_check_wmma(p, ldm, 8, "load (row major halves)");
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.v[r][c] = __half2float(p[(size_t)r * ldm + c]);
}
template <typename Use>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, __half, col_major> &f,
                                    const __half *p, unsigned ldm)
{
    emu_check_wmma(p, ldm, 8, "load (column major halves)");
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.v[r][c] = __half2float(p[(size_t)c * ldm + r]);
}
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p,
                                    unsigned ldm, layout_t l)
{
    emu_check_wmma(p, ldm, 4, "load (floats)");
    EMU_OWN(i, e, r, c)
        f.v[i] = l == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                                     unsigned ldm, layout_t l)
{
    emu_check_wmma(p, ldm, 4, "store (floats)");
    EMU_OWN(i, e, r, c)
        (l == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]) = f.v[i];
}
template <typename LA, typename LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                            const fragment<matrix_a, 16, 16, 16, __half, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, __half, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c)
{
    float t[8];
    EMU_OWN(i, e, r, col) {
        float s = c.v[i];
        for (int k = 0; k < 16; k++)
            s += a.v[r][k] * b.v[k][col];
        t[i] = s;
    }
    memcpy(d.v, t, sizeof t);
}
} // namespace wmma
} // namespace nvcuda

#endif

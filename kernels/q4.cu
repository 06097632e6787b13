/* q4.cu: expansion of 4-bit weight matrices on the GPU, just before their
 * GEMM (kern.h's format; q4.cuh holds the device side of the format, also
 * used by the 4-bit KV cache in attention.cu and kv_slots.cu; the plain-C
 * reference is kernels/cpu/q4.c).
 *
 * One thread per octet: two 32-bit loads, one 16-byte store; a warp writes
 * 512 contiguous bytes. The value is q4_octet's fp32 value of q4.c, then
 * rounded to fp16. Other widths and alignments take one value per thread.
 */
#include "q4.cuh"

/* dst row r, octet j <- src row r (row_words words), octet j. N8 > 0 fixes
 * the octets per row at compile time (whole groups: the matrix is then one
 * flat run of blocks, see the host side); 0 takes n8 at run time. */
template <int N8>
__global__ void q4_dequant_vec(__half *dst, const uint32_t *src, size_t n_oct, int n8,
                               size_t n, size_t row_words)
{
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_oct; i += stride) {
        size_t per = N8 > 0 ? (size_t)N8 : (size_t)n8;
        size_t r = i / per;
        int j = (int)(i - r * per);
        const uint32_t *blk = src + r * row_words + (size_t)(j / 8) * Q4_WORDS;
        float f[8];
        q4_octet(blk[0], blk[1 + j % 8], f);
        store8(dst + r * n + (size_t)j * 8, f);
    }
}

/* Any n and alignment: one value per thread, byte loads, 2-byte stores. */
__global__ void q4_dequant_any(__half *dst, const uint8_t *src, size_t count, size_t n,
                               size_t row_bytes)
{
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        size_t r = i / n, e = i - r * n;
        const uint8_t *blk = src + r * row_bytes + (e / KERN_Q4_GROUP) * KERN_Q4_BLOCK;
        unsigned short hs = (unsigned short)(blk[0] | blk[1] << 8);
        unsigned short hm = (unsigned short)(blk[2] | blk[3] << 8);
        size_t g = e % KERN_Q4_GROUP;
        unsigned q = (blk[4 + g / 2] >> (4 * (g & 1))) & 15u;
        float v = __fadd_rn(__half2float(__ushort_as_half(hm)),
                            __fmul_rn((float)q, __half2float(__ushort_as_half(hs))));
        dst[i] = __float2half_rn(v);
    }
}

#define DQ_THREADS 256
#define DQ_MAX_BLOCKS (1u << 18) /* then each thread loops (grid stride) */

static unsigned dq_blocks(size_t work)
{
    unsigned b = kblocks(work, DQ_THREADS);
    return b < DQ_MAX_BLOCKS ? b : DQ_MAX_BLOCKS;
}

extern "C" int kern_q4_dequant_cuda(void *dst, const void *src, size_t rows, int n,
                                    void *stream)
{
    if (rows == 0 || n <= 0)
        return 0;
    cudaStream_t st = kstream(stream);
    size_t nb = (size_t)(n + KERN_Q4_GROUP - 1) / KERN_Q4_GROUP;
    int vec = n % 8 == 0 && (uintptr_t)dst % 16 == 0 && (uintptr_t)src % 4 == 0;
    if (vec && n % KERN_Q4_GROUP == 0) {
        /* whole groups: block b of the matrix expands to dst[64 b, 64 b + 64),
         * so rows and blocks are the same thing and no division is needed */
        size_t n_oct = rows * nb * 8;
        q4_dequant_vec<8><<<dq_blocks(n_oct), DQ_THREADS, 0, st>>>(
            (__half *)dst, (const uint32_t *)src, n_oct, 8, KERN_Q4_GROUP, Q4_WORDS);
    } else if (vec) {
        size_t n_oct = rows * (size_t)(n / 8);
        q4_dequant_vec<0><<<dq_blocks(n_oct), DQ_THREADS, 0, st>>>(
            (__half *)dst, (const uint32_t *)src, n_oct, n / 8, (size_t)n, nb * Q4_WORDS);
    } else {
        size_t count = rows * (size_t)n;
        q4_dequant_any<<<dq_blocks(count), DQ_THREADS, 0, st>>>(
            (__half *)dst, (const uint8_t *)src, count, (size_t)n, nb * KERN_Q4_BLOCK);
    }
    KLAUNCHED();
    return 0;
}

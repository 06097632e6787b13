/* q4.c: 4-bit group-wise quantization (kern.h), plain-C reference, also
 * what the CPU backend runs for compressed weights and KV.
 *
 * The arithmetic is written so that the CUDA kernels (kernels/q4.cuh) give
 * the same bits: the code is a division and a rint, the dequantized value
 * a product then a sum (this file is ISO C11, where GCC does not contract
 * a * b + c into an FMA; the CUDA side uses __fmul_rn / __fadd_rn).
 */
#include "../kern.h"

#include <math.h>
#include <string.h>

/* Quantize m <= 64 values into one block. */
static void quantize_group(uint8_t *blk, const float *x, int m)
{
    float mn = x[0], mx = x[0];
    for (int i = 1; i < m; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    uint16_t hs = kern_f32_to_f16((mx - mn) / 15.0f), hm = kern_f32_to_f16(mn);
    float sc = kern_f16_to_f32(hs), mnr = kern_f16_to_f32(hm);
    memcpy(blk, &hs, 2);
    memcpy(blk + 2, &hm, 2);
    uint8_t *codes = blk + 4;
    memset(codes, 0, KERN_Q4_GROUP / 2);
    if (!(sc > 0.0f))
        return; /* constant group (or a scale below fp16's range): all at min */
    for (int i = 0; i < m; i++) {
        float c = rintf((x[i] - mnr) / sc);
        int q = c > 0.0f ? (c < 15.0f ? (int)c : 15) : 0; /* NaN: 0 */
        codes[i / 2] |= (uint8_t)(q << (4 * (i & 1)));
    }
}

void kern_q4_dequant_row(float *dst, const uint8_t *src, int n)
{
    for (int g0 = 0; g0 < n; g0 += KERN_Q4_GROUP, src += KERN_Q4_BLOCK) {
        uint16_t hs, hm;
        memcpy(&hs, src, 2);
        memcpy(&hm, src + 2, 2);
        float sc = kern_f16_to_f32(hs), mn = kern_f16_to_f32(hm);
        int m = n - g0 < KERN_Q4_GROUP ? n - g0 : KERN_Q4_GROUP;
        for (int i = 0; i < m; i++) {
            int q = (src[4 + i / 2] >> (4 * (i & 1))) & 15;
            float p = (float)q * sc;
            dst[g0 + i] = mn + p;
        }
    }
}

void kern_q4_quantize_row(uint8_t *dst, const float *src, int n)
{
    for (int g0 = 0; g0 < n; g0 += KERN_Q4_GROUP, dst += KERN_Q4_BLOCK)
        quantize_group(dst, src + g0, n - g0 < KERN_Q4_GROUP ? n - g0 : KERN_Q4_GROUP);
}

void kern_q4_quantize_ref(uint8_t *dst, const float *src, size_t rows, int n)
{
    size_t rb = kern_q4_row_bytes(n);
    #pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++)
        kern_q4_quantize_row(dst + r * rb, src + r * (size_t)n, n);
}

void kern_q4_quantize_h16(uint8_t *dst, const uint16_t *src, size_t rows, int n)
{
    size_t rb = kern_q4_row_bytes(n);
    #pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++)
        for (int g0 = 0; g0 < n; g0 += KERN_Q4_GROUP) {
            int m = n - g0 < KERN_Q4_GROUP ? n - g0 : KERN_Q4_GROUP;
            float x[KERN_Q4_GROUP];
            for (int i = 0; i < m; i++)
                x[i] = kern_f16_to_f32(src[r * (size_t)n + g0 + i]);
            quantize_group(dst + r * rb + (size_t)(g0 / KERN_Q4_GROUP) * KERN_Q4_BLOCK, x, m);
        }
}

void kern_q4_dequant_ref(float *dst, const uint8_t *src, size_t rows, int n)
{
    size_t rb = kern_q4_row_bytes(n);
    #pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++)
        kern_q4_dequant_row(dst + r * (size_t)n, src + r * rb, n);
}

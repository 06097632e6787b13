/* flash_prefill.cu: prefill attention on the tensor cores with the scores
 * kept on chip (FlashAttention, Dao et al. 2022), and the H2O column sums
 * from a second on-chip pass. One launch covers every sequence and head of
 * a call, whatever the prompts' lengths; nothing of size n^2 touches device
 * memory.
 *
 * Forward (flash_fwd), block = (sequence, query head, block of BR = 64
 * query rows), 4 warps of 16 rows each:
 *   Q's 64 x DP tile is staged through shared memory into each warp's
 *   matrix_a fragments (DP = head_dim rounded up to 32, 64 or 128; the
 *   padding columns are zero). For each tile of BC keys the rows can see
 *   (causal, and a sliding window's lower bound):
 *     K, V tiles -> shared (rows past the prompt zero);
 *     S = Q K^T (wmma, fp32) -> the warp's rows of shared S;
 *     online softmax, two lanes per row (each half the tile's columns):
 *       m' = max(m, max_j s_j), a = exp(m - m'), p_j = exp(s_j - m'),
 *       l = a l + sum_j p_j; P (fp16) -> shared;
 *     O = a O + P V: O lives in accumulator fragments; the rescale goes
 *       through a 16 x 16 scratch (the warp's S rows, consumed by then),
 *       where lane L holds row L / 2 -- the row whose a it computed -- and
 *       is skipped when no row of the warp moved its maximum.
 *   out = O / l; the row statistics (m, l) go to `stats` when the column
 *   sums are wanted.
 *
 * Column sums (flash_colsum), block = (sequence, KV head, block of 64
 * keys), 4 warps of 16 keys: the key tile stays in matrix_a fragments; for
 * each query head of the KV head's group in order, and each tile of BC
 * queries that can see one of the keys, S^T = K Q^T (wmma) and
 *   colsum_j += exp(s_ij - m_i) / l_i
 * with the final (m_i, l_i) of the forward pass. The sum needs each row's
 * final normaliser, which no single pass knows before the row's last key,
 * so the scores are recomputed on chip (as FlashAttention's backward does)
 * rather than kept: the same tensor-core work as a third GEMM, no n^2
 * memory, and every column summed by one block in a fixed order (per lane
 * over its half of each tile, the two halves, then the heads in order): no
 * atomics, the same result on every run.
 *
 * Tile sizes keep the static shared memory under 48 KiB for every DP (the
 * most any architecture gives without opting in): BC = 64 keys up to DP 64,
 * 32 at DP 128. Rows are padded (+8 halves, +4 floats) against bank
 * conflicts; every wmma pointer is 32-byte aligned and every leading
 * dimension a multiple of 8 halves / 4 floats, as wmma requires.
 */
#include <float.h>
#include <mma.h>

#include "cuda_util.cuh"

using namespace nvcuda;

#include "flash_prefill.cuh"

template <int DP>
static int launch_flash(void *out, int ldo, const void *q, const void *k, const void *v, int ld,
                        const kern_seq *seqs, int n_seq, int n_head, int n_kv_head, int hd,
                        float scale, float *colsum, float *work, int max_new, cudaStream_t st)
{
    int n_qb = (int)kblocks((size_t)max_new, FL_BR);
    dim3 grid((unsigned)(n_seq * n_head), kgrid_y((size_t)n_qb));
    flash_fwd<DP><<<grid, FL_THREADS, 0, st>>>((__half *)out, ldo, (const __half *)q,
                                               (const __half *)k, (const __half *)v, ld, seqs,
                                               n_head, n_head / n_kv_head, hd, scale,
                                               colsum ? work : NULL, n_qb);
    KLAUNCHED();
    if (colsum) {
        dim3 kv_grid((unsigned)(n_seq * n_kv_head), grid.y);
        flash_colsum<DP><<<kv_grid, FL_THREADS, 0, st>>>(colsum, (const __half *)q,
                                                         (const __half *)k, ld, seqs, n_head,
                                                         n_kv_head, hd, scale, work, n_qb);
        KLAUNCHED();
    }
    return 0;
}

extern "C" int kern_attn_prefill_flash_cuda(void *out, int ldo, const void *q, const void *k,
                                            const void *v, int ld, const kern_seq *seqs,
                                            int n_seq, int n_head, int n_kv_head, int head_dim,
                                            float scale, float *colsum, float *work,
                                            int max_new, void *stream)
{
    KCHECK_HEADS(n_head, n_kv_head);
    if (max_new == 0 || n_seq == 0)
        return 0;
    RETURN_IF(head_dim % 8 || head_dim < 8 || head_dim > KERN_FLASH_HEAD_DIM_MAX, -EINVAL,
              "internal: the flash prefill kernel takes head_dim a multiple of 8 up to %d, "
              "not %d", KERN_FLASH_HEAD_DIM_MAX, head_dim);
    KCHECK_PAIRS(n_seq, n_head);
    cudaStream_t st = kstream(stream);
    if (head_dim <= 32)
        return launch_flash<32>(out, ldo, q, k, v, ld, seqs, n_seq, n_head, n_kv_head, head_dim,
                                scale, colsum, work, max_new, st);
    if (head_dim <= 64)
        return launch_flash<64>(out, ldo, q, k, v, ld, seqs, n_seq, n_head, n_kv_head, head_dim,
                                scale, colsum, work, max_new, st);
    return launch_flash<128>(out, ldo, q, k, v, ld, seqs, n_seq, n_head, n_kv_head, head_dim,
                             scale, colsum, work, max_new, st);
}

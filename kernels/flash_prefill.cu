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

#define FL_WARPS 4
#define FL_THREADS (32 * FL_WARPS)
#define FL_BR (16 * FL_WARPS) /* query rows (forward) or keys (column sums) per block */

template <int DP> struct fl_shape {
    static constexpr int BC = DP <= 64 ? 64 : 32; /* keys (queries) per tile */
    static constexpr int LDH = DP + 8;            /* halves per staged row */
    static constexpr int LDS = BC + 4;            /* floats per S row */
    static constexpr int LDP = BC + 8;            /* halves per P row */
    static constexpr int KD = DP / 16;            /* 16-wide steps of head_dim */
    static constexpr int NC = BC / 16;            /* 16-wide steps of a tile */
};

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a_frag;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bt_frag; /* X^T */
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b_frag;

/* Rows r0 .. r0 + cnt - 1 of one head (columns col .. col + hd - 1 of the
 * packed rows from `row`, stride ld) into dst (cnt, DP + 8): 16-byte
 * chunks, zero past the prompt (r0 + rr >= n) and past head_dim. Every
 * thread of the block takes part. */
template <int DP>
__device__ __forceinline__ void stage_rows(__half *dst, const __half *src, int ld, int row,
                                           size_t col, int r0, int cnt, int n, int hd)
{
    constexpr int C8 = DP / 8, LDH = fl_shape<DP>::LDH;
    for (int u = threadIdx.x; u < cnt * C8; u += FL_THREADS) {
        int rr = u / C8, c8 = (u % C8) * 8;
        uint4 x = make_uint4(0, 0, 0, 0);
        if (r0 + rr < n && c8 < hd)
            x = *(const uint4 *)(src + (size_t)(row + r0 + rr) * ld + col + c8);
        *(uint4 *)(dst + rr * LDH + c8) = x;
    }
}

/* One warp's 16 rows of scores against a staged tile of BC rows:
 * sw[r][c] = A_r . T_c over DP (A in the warp's matrix_a fragments, T
 * (BC, DP + 8) in shared memory, read as T^T), fp32, row stride BC + 4. */
template <int DP>
__device__ __forceinline__ void score_tile(float *sw, const a_frag *af, const __half *tile)
{
    typedef fl_shape<DP> F;
#pragma unroll
    for (int c = 0; c < F::NC; c++) {
        acc_frag sf;
        wmma::fill_fragment(sf, 0.0f);
#pragma unroll
        for (int d = 0; d < F::KD; d++) {
            bt_frag tf;
            wmma::load_matrix_sync(tf, tile + c * 16 * F::LDH + d * 16, F::LDH);
            wmma::mma_sync(sf, af[d], tf, sf);
        }
        wmma::store_matrix_sync(sw + c * 16, sf, F::LDS, wmma::mem_row_major);
    }
}

/* Whether key j is visible to query i (causal; window > 0: the last
 * `window` keys, i's own included). */
__device__ __forceinline__ bool fl_sees(int i, int j, int window)
{
    return j <= i && (window <= 0 || i - j < window);
}

/* Pair blockIdx.x = (sequence, query head); query blocks qb = blockIdx.y,
 * blockIdx.y + gridDim.y, ... < n_qb. */
template <int DP>
__global__ void __launch_bounds__(FL_THREADS)
    flash_fwd(__half *out, int ldo, const __half *q, const __half *k, const __half *v, int ld,
              const kern_seq *seqs, int n_head, int group, int hd, float scale, float *stats,
              int n_qb)
{
    typedef fl_shape<DP> F;
    constexpr int BC = F::BC, LDH = F::LDH, LDS = F::LDS, LDP = F::LDP, KD = F::KD, NC = F::NC;
    constexpr int HC = BC / 2; /* columns of a tile per lane */
    /* Q's tile (FL_BR rows) first, then K (BC rows) and V (BC rows):
     * 2 BC >= FL_BR for both tile sizes */
    __shared__ __align__(128) __half stage[2 * BC * LDH];
    __shared__ __align__(128) float sbuf[FL_BR * LDS];
    __shared__ __align__(128) __half pbuf[FL_BR * LDP];
    static_assert(2 * BC >= FL_BR, "the staging area holds Q's tile");
    __half *ks = stage, *vs = stage + BC * LDH;
    const int pair = blockIdx.x, h = pair % n_head, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int r = lane / 2, hf = lane % 2; /* the lane's row of the warp's 16, its half of a tile */
    const kern_seq sq = seqs[pair / n_head];
    const int n = sq.n_new, win = sq.window;
    const size_t qc = (size_t)h * hd, kvc = (size_t)(h / group) * hd;
    float *sw = sbuf + w * 16 * LDS; /* the warp's S rows; its O scratch */
    __half *pw = pbuf + w * 16 * LDP;
    for (int qb = blockIdx.y; qb < n_qb; qb += gridDim.y) {
        const int i0 = qb * FL_BR;
        if (i0 >= n)
            break; /* block-uniform; later blocks have larger i0 */
        const int i_end = min(i0 + FL_BR, n);
        const int wi0 = i0 + w * 16, wi1 = min(wi0 + 16, n) - 1; /* wi1 < wi0: no rows */
        const int i = wi0 + r;                                    /* the lane's row */
        __syncthreads(); /* the last query block's readers of stage are done */
        stage_rows<DP>(stage, q, ld, sq.row, qc, i0, FL_BR, n, hd);
        __syncthreads();
        a_frag qf[KD];
#pragma unroll
        for (int d = 0; d < KD; d++)
            wmma::load_matrix_sync(qf[d], stage + w * 16 * LDH + d * 16, LDH);
        acc_frag of[KD];
#pragma unroll
        for (int d = 0; d < KD; d++)
            wmma::fill_fragment(of[d], 0.0f);
        float m = -INFINITY, l = 0.0f;
        const int j_lo = win > 0 ? max(0, i0 - win + 1) : 0;
        for (int j0 = j_lo / BC * BC; j0 < i_end; j0 += BC) { /* block-uniform bounds */
            __syncthreads(); /* Q's fragments loaded / the last tile's K, V reads done */
            stage_rows<DP>(ks, k, ld, sq.row, kvc, j0, BC, n, hd);
            stage_rows<DP>(vs, v, ld, sq.row, kvc, j0, BC, n, hd);
            __syncthreads();
            /* does any of the warp's rows see a key of the tile? */
            if (wi1 < wi0 || j0 > wi1 || (win > 0 && wi0 - (j0 + BC - 1) >= win))
                continue; /* warp-uniform; the rest of the body has no block barrier */
            score_tile<DP>(sw, qf, ks); /* S = Q K^T */
            __syncwarp();
            float sv[HC], mt = -INFINITY;
#pragma unroll
            for (int e = 0; e < HC; e++) {
                int jj = hf * HC + e;
                sv[e] = i < n && fl_sees(i, j0 + jj, win) ? sw[r * LDS + jj] * scale : -INFINITY;
                mt = fmaxf(mt, sv[e]);
            }
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
            const float mn = fmaxf(m, mt);
            /* mn -inf: the row has seen no key yet (its O is zero) */
            const float a = mn == -INFINITY ? 1.0f : __expf(m - mn);
            float ps = 0.0f;
#pragma unroll
            for (int e = 0; e < HC; e++) {
                float p = sv[e] == -INFINITY ? 0.0f : __expf(sv[e] - mn);
                ps += p;
                pw[r * LDP + hf * HC + e] = __float2half_rn(p);
            }
            ps += __shfl_xor_sync(0xffffffffu, ps, 1);
            l = l * a + ps;
            m = mn;
            const bool rescale = __any_sync(0xffffffffu, a != 1.0f);
            __syncwarp(); /* P written, S read: the scratch is free */
            a_frag pf[NC];
#pragma unroll
            for (int c = 0; c < NC; c++)
                wmma::load_matrix_sync(pf[c], pw + c * 16, LDP);
#pragma unroll
            for (int d = 0; d < KD; d++) {
                if (rescale) {
                    /* element L * 8 + e of the row-major 16 x 16 is row L / 2 = r */
                    wmma::store_matrix_sync(sw, of[d], 16, wmma::mem_row_major);
                    __syncwarp();
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        sw[lane * 8 + e] *= a;
                    __syncwarp();
                    wmma::load_matrix_sync(of[d], sw, 16, wmma::mem_row_major);
                    __syncwarp(); /* read before the next d's store */
                }
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    b_frag vf;
                    wmma::load_matrix_sync(vf, vs + c * 16 * LDH + d * 16, LDH);
                    wmma::mma_sync(of[d], pf[c], vf, of[d]);
                }
            }
            __syncwarp(); /* P read before the next tile writes it */
        }
        if (wi1 >= wi0) { /* warp-uniform */
            const float inv = i < n ? 1.0f / l : 0.0f;
#pragma unroll
            for (int d = 0; d < KD; d++) {
                wmma::store_matrix_sync(sw, of[d], 16, wmma::mem_row_major);
                __syncwarp();
                int col = d * 16 + hf * 8; /* the lane's 8 values: row r, col .. col + 7 */
                if (i < n && col < hd) {
                    float o[8];
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        o[e] = sw[lane * 8 + e] * inv;
                    store8(out + (size_t)(sq.row + i) * ldo + qc + col, o);
                }
                __syncwarp();
            }
            if (stats && hf == 0 && i < n) {
                stats[((size_t)(sq.row + i) * n_head + h) * 2] = m;
                stats[((size_t)(sq.row + i) * n_head + h) * 2 + 1] = l;
            }
        }
    }
}

/* Pair blockIdx.x = (sequence, KV head g); key blocks kb = blockIdx.y,
 * ... < n_kb. colsum[(row + j) * n_kv_head + g] = the sum over the group's
 * query heads in order of sum_i exp(s_ij - m_i) / l_i. */
template <int DP>
__global__ void __launch_bounds__(FL_THREADS)
    flash_colsum(float *colsum, const __half *q, const __half *k, int ld, const kern_seq *seqs,
                 int n_head, int n_kv_head, int hd, float scale, const float *stats, int n_kb)
{
    typedef fl_shape<DP> F;
    constexpr int BQ = F::BC, LDH = F::LDH, LDS = F::LDS, KD = F::KD;
    constexpr int HC = BQ / 2;
    __shared__ __align__(128) __half stage[FL_BR * LDH]; /* K's tile, then Q's */
    __shared__ __align__(128) float sbuf[FL_BR * LDS];
    __shared__ float mst[BQ], ist[BQ]; /* a Q tile's row max and 1 / sum */
    static_assert(BQ <= FL_BR, "the staging area holds a Q tile");
    const int pair = blockIdx.x, g = pair % n_kv_head, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int r = lane / 2, hf = lane % 2, group = n_head / n_kv_head;
    const kern_seq sq = seqs[pair / n_kv_head];
    const int n = sq.n_new, win = sq.window;
    float *sw = sbuf + w * 16 * LDS;
    for (int kb = blockIdx.y; kb < n_kb; kb += gridDim.y) {
        const int j0 = kb * FL_BR;
        if (j0 >= n)
            break; /* block-uniform */
        const int wj0 = j0 + w * 16, wj1 = min(wj0 + 16, n) - 1; /* the warp's keys */
        const int j = wj0 + r;                                    /* the lane's key */
        __syncthreads(); /* the last key block's readers of stage are done */
        stage_rows<DP>(stage, k, ld, sq.row, (size_t)g * hd, j0, FL_BR, n, hd);
        __syncthreads();
        a_frag kf[KD];
#pragma unroll
        for (int d = 0; d < KD; d++)
            wmma::load_matrix_sync(kf[d], stage + w * 16 * LDH + d * 16, LDH);
        /* the queries that see a key of the block: j0 <= i < last key + window */
        const int i_hi = win > 0 ? min(n, min(j0 + FL_BR, n) - 1 + win) : n;
        float total = 0.0f;
        for (int h = g * group; h < (g + 1) * group; h++) { /* block-uniform */
            float sum = 0.0f;
            for (int i0 = j0 / BQ * BQ; i0 < i_hi; i0 += BQ) {
                __syncthreads(); /* K's fragments loaded / the last Q tile read */
                stage_rows<DP>(stage, q, ld, sq.row, (size_t)h * hd, i0, BQ, n, hd);
                for (int t = threadIdx.x; t < BQ; t += FL_THREADS) {
                    const float *st = stats + ((size_t)(sq.row + i0 + t) * n_head + h) * 2;
                    mst[t] = i0 + t < n ? st[0] : 0.0f;
                    ist[t] = i0 + t < n ? 1.0f / st[1] : 0.0f;
                }
                __syncthreads();
                if (wj1 < wj0 || i0 + BQ - 1 < wj0 || (win > 0 && i0 - wj1 >= win))
                    continue; /* warp-uniform: no query of the tile sees the warp's keys */
                score_tile<DP>(sw, kf, stage); /* S^T = K Q^T */
                __syncwarp();
#pragma unroll
                for (int e = 0; e < HC; e++) {
                    int ii = hf * HC + e, iq = i0 + ii;
                    if (j < n && iq < n && fl_sees(iq, j, win))
                        sum += __expf(sw[r * LDS + ii] * scale - mst[ii]) * ist[ii];
                }
                __syncwarp(); /* S read before the next tile's store */
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            total = h == g * group ? sum : total + sum;
        }
        if (hf == 0 && j < n)
            colsum[(size_t)(sq.row + j) * n_kv_head + g] = total;
    }
}

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

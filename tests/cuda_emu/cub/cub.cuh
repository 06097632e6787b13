/* cub/cub.cuh: the part of CUB kernels/sample.cu uses, as tests/cuda_emu
 * emulates it. Block collectives keep CUB's contract: every thread calls,
 * the reduction's result is valid in thread 0 only (the others get a
 * poison where the type has one), and temporary storage reused without a
 * __syncthreads() in between gives wrong results, as it may on the GPU.
 * The segmented sort is a stable sort of each segment by key, descending
 * (CUB's radix sort is stable). */
#ifndef FH_EMU_CUB_CUH
#define FH_EMU_CUB_CUH

#include <algorithm>
#include <limits>
#include <vector>

#include "cuda_emu.hpp"

namespace cub {

template <typename T> static inline T emu_poison() { return T(); }
template <> inline float emu_poison<float>() { return std::numeric_limits<float>::quiet_NaN(); }
template <> inline int emu_poison<int>() { return std::numeric_limits<int>::min(); }

template <typename T, int THREADS> class BlockReduce {
  public:
    struct TempStorage {
        T v[THREADS];
    };
    explicit BlockReduce(TempStorage &t) : tmp(t) {}
    template <typename Op> T Reduce(T x, Op op)
    {
        tmp.v[threadIdx.x] = x;
        __syncthreads();
        if (threadIdx.x != 0)
            return emu_poison<T>();
        T acc = tmp.v[0];
        for (int i = 1; i < THREADS; i++)
            acc = op(acc, tmp.v[i]);
        return acc;
    }
    T Sum(T x)
    {
        return Reduce(x, [](const T &a, const T &b) { return a + b; });
    }

  private:
    TempStorage &tmp;
};

template <typename T, int THREADS> class BlockScan {
  public:
    struct TempStorage {
        T v[THREADS];
    };
    explicit BlockScan(TempStorage &t) : tmp(t) {}
    void InclusiveSum(T x, T &out, T &aggregate)
    {
        tmp.v[threadIdx.x] = x;
        __syncthreads();
        T acc = T(), all = T();
        for (int i = 0; i < THREADS; i++) {
            all = all + tmp.v[i];
            if (i == (int)threadIdx.x)
                acc = all;
        }
        out = acc;
        aggregate = all;
    }

  private:
    TempStorage &tmp;
};

struct DeviceSegmentedRadixSort {
    template <typename K, typename V>
    static cudaError_t SortPairsDescending(void *tmp, size_t &bytes, const K *keys_in,
                                           K *keys_out, const V *vals_in, V *vals_out,
                                           int num_items, int num_segments, const int *begin,
                                           const int *end, int begin_bit = 0,
                                           int end_bit = sizeof(K) * 8, cudaStream_t st = 0)
    {
        (void)num_items, (void)begin_bit, (void)end_bit;
        if (!tmp) {
            bytes = 256;
            return cudaSuccess;
        }
        emu_enqueue(st, [=] { sort(keys_in, keys_out, vals_in, vals_out, num_segments, begin,
                                   end); });
        return cudaSuccess;
    }

  private:
    template <typename K, typename V>
    static void sort(const K *keys_in, K *keys_out, const V *vals_in, V *vals_out,
                     int num_segments, const int *begin, const int *end)
    {
        std::vector<std::pair<K, V>> seg;
        for (int s = 0; s < num_segments; s++) {
            seg.clear();
            for (int i = begin[s]; i < end[s]; i++)
                seg.push_back({keys_in[i], vals_in[i]});
            std::stable_sort(seg.begin(), seg.end(),
                             [](const std::pair<K, V> &a, const std::pair<K, V> &b) {
                                 return a.first > b.first;
                             });
            for (int i = begin[s]; i < end[s]; i++) {
                keys_out[i] = seg[i - begin[s]].first;
                vals_out[i] = seg[i - begin[s]].second;
            }
        }
    }
};

} // namespace cub

#endif

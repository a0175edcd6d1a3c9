// The seams where operands enter and leave the kernels' buffers, and the only places that
// convert between the storage type S and the compute type T (core/types.h): queries transposed
// into panels (PackPanels), K/V and query rows gathered into contiguous, zero-padded rows
// (PackRows, GatherKvRows), results narrowed back to storage (Narrow).

#if defined(SDPA_CPU_PACK_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_PACK_INL_H_
#undef SDPA_CPU_PACK_INL_H_
#else
#define SDPA_CPU_PACK_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>

#include "core/problem.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// A compute-type value as the storage type S (a result leaving the kernel).
template <typename S, typename T>
HWY_INLINE S Narrow(T x) {
  return static_cast<S>(x);
}

// Transposed panels of `count` rows: dst[panel][k][x] = row(panel·width + x)[k·stride] · factor
// for k < depth; rows count..rp-1 are 0. dst holds rp·depth elements. row(r) points to storage.
template <typename T, class RowPtr>
void PackPanels(std::int64_t count, std::int64_t rp, std::int64_t width, std::int64_t depth,
                std::int64_t stride, T factor, const RowPtr& row, T* dst) {
  std::fill(dst, dst + rp * depth, T(0));
  for (std::int64_t r = 0; r < count; ++r) {
    const auto* src = row(r);
    T* col = dst + (r / width) * depth * width + r % width;
    for (std::int64_t k = 0; k < depth; ++k)
      col[k * width] = static_cast<T>(src[k * stride]) * factor;
  }
}

// Rows [0, count) of `width` elements, gathered with element stride `stride` from rows `ld`
// apart, into dst [count][padded] with zeros after `width`.
template <typename S, typename T>
void PackRows(const S* src, std::int64_t ld, std::int64_t stride, std::int64_t count,
              std::int64_t width, std::int64_t padded, T* dst) {
  for (std::int64_t c = 0; c < count; ++c) {
    T* row = dst + c * padded;
    for (std::int64_t x = 0; x < width; ++x) row[x] = static_cast<T>(src[c * ld + x * stride]);
    std::fill(row + width, row + padded, T(0));
  }
}

// Keys [j0, j0 + count) of (b, kv head h), key rows (or value rows when `values`) of `width`
// elements from the K/V source, into dst [count][padded]: run by run (core/problem.h KvSource),
// so a tile that crosses runs (pages) is gathered whole.
template <typename S, typename T>
void GatherKvRows(const internal::KvSource& kv, bool values, std::int64_t b, std::int64_t h,
                  std::int64_t j0, std::int64_t count, std::int64_t width, std::int64_t padded,
                  T* dst) {
  for (std::int64_t j = j0; j < j0 + count;) {
    const std::int64_t end = std::min(j0 + count, kv.RunEnd(b, j));
    const S* src = values ? kv.ValueRow<S>(b, h, j) : kv.KeyRow<S>(b, h, j);
    PackRows(src, values ? kv.value_ld() : kv.key_ld(), values ? kv.value_step() : kv.key_step(),
             end - j, width, padded, dst + (j - j0) * padded);
    j = end;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_PACK_INL_H_

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
#include <type_traits>

#include "core/problem.h"
#include "core/types.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using internal::Narrow;
using internal::Widen;

// Transposed panels of `count` rows: dst[panel][k][x] = row(panel·width + x)[k·stride] · factor
// for k < depth; rows count..rp-1 are 0. dst holds rp·depth elements. row(r) points to a row
// stored as `dtype`.
template <typename T, class RowPtr>
void PackPanels(std::int64_t count, std::int64_t rp, std::int64_t width, std::int64_t depth,
                std::int64_t stride, T factor, DType dtype, const RowPtr& row, T* dst) {
  std::fill(dst, dst + rp * depth, T(0));
  internal::WithStorage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    for (std::int64_t r = 0; r < count; ++r) {
      const S* src = static_cast<const S*>(row(r));
      T* col = dst + (r / width) * depth * width + r % width;
      for (std::int64_t k = 0; k < depth; ++k) col[k * width] = Widen<T>(src[k * stride]) * factor;
    }
  });
}

// One row of `width` elements stored as `dtype` (element stride `stride`), widened into dst
// [padded] with zeros after `width`.
template <typename T>
void PackRow(const void* src, DType dtype, std::int64_t stride, std::int64_t width,
             std::int64_t padded, T* dst) {
  internal::WithStorage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    const S* row = static_cast<const S*>(src);
    for (std::int64_t x = 0; x < width; ++x) dst[x] = Widen<T>(row[x * stride]);
  });
  std::fill(dst + width, dst + padded, T(0));
}

// Stores `width` compute-type values (each times `factor`) into a row of `dtype` (element stride
// `stride`), rounding to nearest even.
template <typename T>
void StoreRow(const T* src, T factor, std::int64_t width, void* dst, DType dtype,
              std::int64_t stride) {
  internal::WithStorage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    S* row = static_cast<S*>(dst);
    for (std::int64_t x = 0; x < width; ++x) row[x * stride] = Narrow<S>(src[x] * factor);
  });
}

// Element (b, h, i, 0) of an operand stored as op.dtype, as a pointer to its bytes.
template <class Op>
auto* RowOf(const Op& op, std::int64_t b, std::int64_t h, std::int64_t i) {
  using Byte = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(op.data)>>,
                                  const char, char>;
  return static_cast<Byte*>(op.data) + (b * op.stride[0] + h * op.stride[1] + i * op.stride[2]) *
                                           static_cast<std::int64_t>(DTypeSize(op.dtype));
}

// Rows [0, count) of `width` elements, gathered with element stride `stride` from rows `ld`
// apart, into dst [count][padded] with zeros after `width`.
template <typename S, typename T>
void PackRows(const S* src, std::int64_t ld, std::int64_t stride, std::int64_t count,
              std::int64_t width, std::int64_t padded, T* dst) {
  for (std::int64_t c = 0; c < count; ++c) {
    T* row = dst + c * padded;
    for (std::int64_t x = 0; x < width; ++x) row[x] = Widen<T>(src[c * ld + x * stride]);
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

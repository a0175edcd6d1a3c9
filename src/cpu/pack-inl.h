// The seams where operands enter and leave the kernels' buffers: queries transposed into panels
// (PackPanels), K/V and query rows gathered into contiguous, zero-padded rows (PackRows).

#if defined(SDPA_CPU_PACK_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_PACK_INL_H_
#undef SDPA_CPU_PACK_INL_H_
#else
#define SDPA_CPU_PACK_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Transposed panels of `count` rows: dst[panel][k][x] = row(panel·width + x)[k·stride] · factor
// for k < depth; rows count..rp-1 are 0. dst holds rp·depth elements.
template <typename T, class RowPtr>
void PackPanels(std::int64_t count, std::int64_t rp, std::int64_t width, std::int64_t depth,
                std::int64_t stride, T factor, const RowPtr& row, T* dst) {
  std::fill(dst, dst + rp * depth, T(0));
  for (std::int64_t r = 0; r < count; ++r) {
    const T* src = row(r);
    T* col = dst + (r / width) * depth * width + r % width;
    for (std::int64_t k = 0; k < depth; ++k) col[k * width] = src[k * stride] * factor;
  }
}

// Rows [0, count) of `width` elements, gathered with element stride `stride` from rows `ld`
// apart, into dst [count][padded] with zeros after `width`.
template <typename T>
void PackRows(const T* src, std::int64_t ld, std::int64_t stride, std::int64_t count,
              std::int64_t width, std::int64_t padded, T* dst) {
  for (std::int64_t c = 0; c < count; ++c) {
    T* row = dst + c * padded;
    for (std::int64_t x = 0; x < width; ++x) row[x] = src[c * ld + x * stride];
    std::fill(row + width, row + padded, T(0));
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_PACK_INL_H_

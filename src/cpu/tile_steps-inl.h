// Steps shared by the forward and backward kernels: per-thread scratch, the rows of a task, and
// the tile operations both passes apply to Sᵀ (scores, masking) and to K/V tiles.
//
// Layouts (see forward-inl.h for the legend): a task's rows are described by RowRef; score tiles
// are transposed, Sᵀ[key][row] with row stride rp (a multiple of the 2N panel width).

#if defined(SDPA_CPU_TILE_STEPS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_TILE_STEPS_INL_H_
#undef SDPA_CPU_TILE_STEPS_INL_H_
#else
#define SDPA_CPU_TILE_STEPS_INL_H_
#endif

#include <hwy/aligned_allocator.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "api/problem.h"
#include "cpu/micro_kernels-inl.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using internal::MaskKind;
using internal::Problem;

inline constexpr double kLog2e = 1.442695040888963407359924681001892137;

inline std::int64_t RoundUp(std::int64_t x, std::int64_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

// Per-thread buffers, grown on demand and kept for the next call.
template <typename T>
class Arena {
 public:
  // Returns `count` elements, 64-byte aligned, valid until the next Reset.
  T* Take(std::int64_t count) {
    T* p = base_.get() + used_;
    used_ += RoundUp(count, 64 / static_cast<std::int64_t>(sizeof(T)));
    return p;
  }
  void Reset(std::int64_t total) {
    if (total > capacity_) {
      base_ = hwy::AllocateAligned<T>(static_cast<std::size_t>(total));
      capacity_ = total;
    }
    used_ = 0;
  }
  // Elements Take(count) consumes.
  static std::int64_t Footprint(std::int64_t count) {
    return RoundUp(count, 64 / static_cast<std::int64_t>(sizeof(T)));
  }

 private:
  hwy::AlignedFreeUniquePtr<T[]> base_;
  std::int64_t capacity_ = 0, used_ = 0;
};

// One query row of a task: where it reads, and its causal end.
template <typename T>
struct RowRef {
  const T* q;
  const void* mask;         // mask(b, h, i, 0), nullptr without a mask
  std::int64_t head;        // query head h
  std::int64_t pos;         // query position i
  std::int64_t end;         // keys [0, end) pass the causal rule
  std::int64_t global_row;  // (b·H + h)·Lq + i, the row's index in [B, H, Lq] arrays
};

// Rows [row_begin, row_end) of the query rows sharing kv head `kv_head` (schedule.h): row r is
// position i = r / G of head h = kv_head·G + r % G.
template <typename T>
void DescribeRows(const Problem& p, std::int64_t group, std::int64_t batch, std::int64_t kv_head,
                  std::int64_t row_begin, std::int64_t row_end, std::vector<RowRef<T>>& rows) {
  rows.resize(static_cast<std::size_t>(row_end - row_begin));
  const auto mask_elem =
      static_cast<std::int64_t>(p.mask_kind == MaskKind::kBool ? sizeof(bool) : sizeof(T));
  for (std::int64_t row = row_begin; row < row_end; ++row) {
    const std::int64_t i = row / group, h = kv_head * group + row % group;
    RowRef<T>& ref = rows[static_cast<std::size_t>(row - row_begin)];
    ref.q = internal::As<T>(p.q).Row(batch, h, i);
    ref.mask = p.mask_kind == MaskKind::kNone
                   ? nullptr
                   : static_cast<const char*>(p.mask.data) +
                         (batch * p.mask.stride[0] + h * p.mask.stride[1] + i * p.mask.stride[2]) *
                             mask_elem;
    ref.head = h;
    ref.pos = i;
    ref.end = p.Visible(p.Seq(0), i).end;
    ref.global_row = (batch * p.heads + h) * p.q_len + i;
  }
}

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

// Sᵀ[c][r] = A[c] · panels[:, r] for all rp rows (panels of 2N) and the keys c each panel
// needs, keys_for(first row, end row) <= keys: the scores K·Qᵀ (forward and backward) and
// dPᵀ = V·dOᵀ (backward). A rows are `lda` apart. On a causal diagonal tile a panel's keys stop
// at its last row's end, so the part of the tile above the diagonal is not computed.
template <class D, class KeysFor, typename T = hn::TFromD<D>>
void ScoreTile(D d, const T* panels, std::int64_t depth, std::int64_t rp, const T* a,
               std::int64_t lda, const KeysFor& keys_for, T* st) {
  const std::int64_t width = 2 * static_cast<std::int64_t>(hn::Lanes(d));
  for (std::int64_t panel = 0; panel < rp / width; ++panel) {
    const T* b = panels + panel * depth * width;
    const std::int64_t keys = keys_for(panel * width, (panel + 1) * width);
    for (std::int64_t c = 0; c < keys; c += kMicroRows) {
      WithMicroRows(keys - c, [&](auto rows) {
        MulAddMicroTile<decltype(rows)::value, false>(d, a + c * lda, lda, 1, depth, b, width,
                                                      nullptr, st + c * rp + panel * width, rp);
      });
    }
  }
}

// Sets the scores of invisible keys to -inf (causal rule, bool mask) and adds an additive mask,
// for keys [j0, j0 + keys) and the task's rows. Only tiles that contain an invisible key or a
// mask come here. The score is overwritten, never combined, so NaN/Inf from masked K rows
// cannot survive.
template <typename T>
void ApplyMask(const Problem& p, const std::vector<RowRef<T>>& rows, std::int64_t j0,
               std::int64_t keys, T* st, std::int64_t rp) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const std::int64_t ms = p.mask.stride[3];
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const RowRef<T>& row = rows[r];
    T* s = st + r;
    const std::int64_t visible = std::clamp<std::int64_t>(row.end - j0, 0, keys);
    for (std::int64_t c = visible; c < keys; ++c) s[c * rp] = kNegInf;
    if (p.mask_kind == MaskKind::kBool) {
      const bool* mask = static_cast<const bool*>(row.mask) + j0 * ms;
      for (std::int64_t c = 0; c < visible; ++c) {
        if (!mask[c * ms]) s[c * rp] = kNegInf;
      }
    } else if (p.mask_kind == MaskKind::kAdditive) {
      const T* mask = static_cast<const T*>(row.mask) + j0 * ms;
      for (std::int64_t c = 0; c < visible; ++c) {
        const T bias = mask[c * ms];
        s[c * rp] = bias == kNegInf ? kNegInf : s[c * rp] + bias;
      }
    }
  }
}

// True when rows [0, keys) of `width` elements (a multiple of N), `ld` apart, are all finite.
template <class D, typename T = hn::TFromD<D>>
bool AllFinite(D d, const T* x, std::int64_t ld, std::int64_t keys, std::int64_t width) {
  // x·0 is 0 for finite x and NaN for NaN/±Inf.
  const auto zero = hn::Zero(d);
  auto bad = hn::Zero(d);
  const std::int64_t n = static_cast<std::int64_t>(hn::Lanes(d));
  for (std::int64_t c = 0; c < keys; ++c) {
    for (std::int64_t e = 0; e < width; e += n)
      bad = hn::Or(bad, hn::Mul(hn::LoadU(d, x + c * ld + e), zero));
  }
  return hn::AllTrue(d, hn::Eq(bad, zero));
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_TILE_STEPS_INL_H_

// What both passes do to a tile of scores Sᵀ[key][row] (row stride rp, a multiple of the
// panel width W; see forward-inl.h for the legend): compute it (ScoreTile), apply the variants'
// per-score steps (ScoreSteps: softcap, ALiBi, score_mod), and mask it (ApplyMask: key ranges,
// bool and additive masks; ApplyMaskMod). AllFinite guards the products against NaN/Inf in
// masked V or K rows.

#if defined(SDPA_CPU_SCORE_STEPS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_SCORE_STEPS_INL_H_
#undef SDPA_CPU_SCORE_STEPS_INL_H_
#else
#define SDPA_CPU_SCORE_STEPS_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/problem.h"
#include "core/types.h"
#include "cpu/masks-inl.h"
#include "cpu/micro_kernels-inl.h"
#include "cpu/rows-inl.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using internal::MaskKind;
using internal::Problem;

inline constexpr double kLog2e = 1.442695040888963407359924681001892137;

// Sᵀ[c][r] = A[c] · panels[:, r] for all rp rows (panels of Shape::kVecs·N) and the keys each panel
// needs, keys_for(first row, end row) -> TileKeys within [0, keys): the scores K·Qᵀ (forward and
// backward) and dPᵀ = V·dOᵀ (backward). A rows are `lda` apart. On a causal diagonal tile a
// panel's keys stop at its last row's end, and under a window they start at its first row's
// begin, so the parts of the tile outside the band are not computed (their Sᵀ entries are left
// as they were; the caller masks them).
template <class Shape, class D, class KeysFor, typename T = hn::TFromD<D>>
void ScoreTile(D d, const T* panels, std::int64_t depth, std::int64_t rp, const T* a,
               std::int64_t lda, const KeysFor& keys_for, T* st) {
  const std::int64_t width = Shape::kVecs * static_cast<std::int64_t>(hn::Lanes(d));
  for (std::int64_t panel = 0; panel < rp / width; ++panel) {
    const T* b = panels + panel * depth * width;
    const TileKeys range = keys_for(panel * width, (panel + 1) * width);
    for (std::int64_t c = range.from; c < range.to; c += Shape::kRows) {
      WithMicroRows<Shape>(range.to - c, [&](auto rows) {
        MulAddMicroTile<decltype(rows)::value, Shape::kVecs, false>(
            d, a + c * lda, lda, 1, depth, b, width, nullptr, st + c * rp + panel * width, rp);
      });
    }
  }
}

// The per-score steps before masking (options.h order): softcap, ALiBi, score_mod, applied to
// Sᵀ tiles of one task's rows. Holds the rows' heads, positions and ALiBi terms as arrays, so
// that each step is lane-wise over rows.
template <typename T>
class ScoreSteps {
 public:
  // For the rows of a task (DescribeRows); rp is the padded row count of the Sᵀ tiles.
  void Prepare(const Problem& p, const internal::Sequence& seq, const std::vector<RowRef>& rows,
               std::int64_t rp) {
    p_ = &p;
    seq_ = seq;
    rows_ = static_cast<std::int64_t>(rows.size());
    active_ = p.softcap > 0 || !p.alibi_slopes.empty() || p.has_score_mod();
    if (!active_ && !p.has_mask_mod()) return;
    head_.assign(static_cast<std::size_t>(rp), 0);
    pos_.assign(static_cast<std::size_t>(rp), 0);
    neg_slope_.assign(static_cast<std::size_t>(rp), T(0));
    diagonal_.assign(static_cast<std::size_t>(rp), 0);
    for (std::int64_t r = 0; r < rows_; ++r) {
      const RowRef& row = rows[static_cast<std::size_t>(r)];
      const auto at = static_cast<std::size_t>(r);
      head_[at] = row.head;
      pos_[at] = row.local;
      if (!p.alibi_slopes.empty()) {
        neg_slope_[at] = static_cast<T>(-p.alibi_slopes[static_cast<std::size_t>(row.head)]);
        diagonal_[at] = row.local + seq.k_len - seq.q_len;
      }
    }
    offset_.resize(static_cast<std::size_t>(rp));
  }

  bool active() const { return active_; }

  // Sᵀ[c][r] ← steps(Sᵀ[c][r]) for keys [j0, j0 + keys) (packed) and all rp rows; with `slope`
  // non-null also slope[c][r] = d steps / d score (the backward's chain rule).
  template <class D>
  void Apply(D d, std::int64_t j0, std::int64_t keys, T* st, std::int64_t rp, T* slope) {
    if (!active_) return;
    const std::int64_t n = static_cast<std::int64_t>(hn::Lanes(d));
    const Problem& p = *p_;
    if (slope != nullptr) std::fill(slope, slope + keys * rp, T(1));
    if (p.softcap > 0) {
      const auto cap = hn::Set(d, static_cast<T>(p.softcap));
      const auto inv_cap = hn::Set(d, static_cast<T>(1.0 / p.softcap));
      const auto one = hn::Set(d, T(1));
      for (std::int64_t c = 0; c < keys; ++c) {
        for (std::int64_t x = 0; x < rp; x += n) {
          const auto t = hn::Tanh(d, hn::Mul(hn::Load(d, st + c * rp + x), inv_cap));
          hn::Store(hn::Mul(cap, t), d, st + c * rp + x);
          if (slope != nullptr) hn::Store(hn::NegMulAdd(t, t, one), d, slope + c * rp + x);
        }
      }
    }
    if (!p.alibi_slopes.empty()) {
      // -slope·|diagonal - j|, with diagonal - j0 exact in int64 before the conversion.
      const std::int64_t local_j0 = j0 - seq_.k_begin;
      for (std::int64_t r = 0; r < rp; ++r) {
        offset_[static_cast<std::size_t>(r)] =
            static_cast<T>(diagonal_[static_cast<std::size_t>(r)] - local_j0);
      }
      for (std::int64_t c = 0; c < keys; ++c) {
        const auto key = hn::Set(d, static_cast<T>(c));
        for (std::int64_t x = 0; x < rp; x += n) {
          const auto distance = hn::Abs(hn::Sub(hn::LoadU(d, offset_.data() + x), key));
          T* s = st + c * rp + x;
          hn::Store(hn::MulAdd(hn::LoadU(d, neg_slope_.data() + x), distance, hn::Load(d, s)), d,
                    s);
        }
      }
    }
    if (p.has_score_mod()) {
      const ScoreBlock block = Block(j0, keys, rp);
      if constexpr (sizeof(T) == sizeof(float)) {
        p.custom->score_f32(p.custom->context, block, st, slope);
      } else {
        p.custom->score_f64(p.custom->context, block, st, slope);
      }
    }
  }

  // The block of the task's rows and keys [j0, j0 + keys) (packed) of an Sᵀ tile.
  ScoreBlock Block(std::int64_t j0, std::int64_t keys, std::int64_t rp) const {
    ScoreBlock block;
    block.batch = seq_.index;
    block.head = head_.data();
    block.pos = pos_.data();
    block.rows = rows_;
    block.key_begin = j0 - seq_.k_begin;
    block.keys = keys;
    block.row_stride = 1;
    block.key_stride = rp;
    return block;
  }

 private:
  const Problem* p_ = nullptr;
  internal::Sequence seq_;
  std::int64_t rows_ = 0;
  bool active_ = false;
  std::vector<std::int64_t> head_, pos_, diagonal_;
  std::vector<T> neg_slope_, offset_;
};

// The custom mask_mod over a tile (block from ScoreSteps::Block).
template <typename T>
void ApplyMaskMod(const Problem& p, const ScoreBlock& block, T* st) {
  if constexpr (sizeof(T) == sizeof(float)) {
    p.custom->mask_f32(p.custom->context, block, st);
  } else {
    p.custom->mask_f64(p.custom->context, block, st);
  }
}

// Sᵀ[c][r] = -inf for the keys j0 + c outside row r's range [begin, end), lane-wise over rows
// (each Sᵀ row of the tile is one key for all rows). Padded rows are left as they are.
template <class D, typename T = hn::TFromD<D>>
void MaskOutsideRanges(D d, const std::vector<RowRef>& rows, std::int64_t j0, std::int64_t keys,
                       T* st, std::int64_t rp) {
  // Range ends relative to the tile, as T: small integers, exact.
  thread_local std::vector<T> bounds;
  bounds.resize(static_cast<std::size_t>(2 * rp));
  T* first = bounds.data();
  T* last = first + rp;
  for (std::int64_t r = 0; r < rp; ++r) {
    const bool real = r < static_cast<std::int64_t>(rows.size());
    const RowRef& row = rows[static_cast<std::size_t>(real ? r : 0)];
    const std::int64_t begin = real ? std::clamp<std::int64_t>(row.begin - j0, 0, keys) : 0;
    first[r] = static_cast<T>(begin);
    last[r] = static_cast<T>(real ? std::clamp<std::int64_t>(row.end - j0, begin, keys) : keys);
  }
  const std::int64_t n = static_cast<std::int64_t>(hn::Lanes(d));
  const auto neg_inf = hn::Set(d, -std::numeric_limits<T>::infinity());
  for (std::int64_t c = 0; c < keys; ++c) {
    const auto key = hn::Set(d, static_cast<T>(c));
    for (std::int64_t x = 0; x < rp; x += n) {
      const auto outside =
          hn::Or(hn::Lt(key, hn::LoadU(d, first + x)), hn::Ge(key, hn::LoadU(d, last + x)));
      T* s = st + c * rp + x;
      hn::Store(hn::IfThenElse(outside, neg_inf, hn::Load(d, s)), d, s);
    }
  }
}

// ApplyMask's bool / additive mask when every row of the task reads the same mask row (a
// key-padding mask [B, 1, 1, Lkv] broadcast over heads and queries): one mask value per key,
// applied to the whole Sᵀ row of that key at once. Keys outside a row's range are already -inf
// and stay so (-inf + finite bias = -inf; a -inf bias or false writes -inf). Whole vectors: the
// padded rows in the last one may become -inf, which the softmax steps handle (no -inf - -inf).
// M is the additive mask's storage type (any, for a bool mask).
template <typename M, class D, typename T = hn::TFromD<D>>
void ApplySharedMaskRow(D d, const Problem& p, const std::vector<RowRef>& rows, std::int64_t j0,
                        std::int64_t keys, T* st, std::int64_t rp) {
  const std::int64_t n = static_cast<std::int64_t>(hn::Lanes(d));
  const std::int64_t ms = p.mask.stride[3];
  const auto neg_inf = hn::Set(d, -std::numeric_limits<T>::infinity());
  const auto real_rows = static_cast<std::int64_t>(rows.size());
  for (std::int64_t c = 0; c < keys; ++c) {
    T* s = st + c * rp;
    if (p.mask_kind == MaskKind::kBool) {
      if (static_cast<const bool*>(rows[0].mask)[(j0 + c) * ms]) continue;
      for (std::int64_t x = 0; x < real_rows; x += n) hn::Store(neg_inf, d, s + x);
    } else {
      const T bias = internal::Widen<T>(static_cast<const M*>(rows[0].mask)[(j0 + c) * ms]);
      if (bias == -std::numeric_limits<T>::infinity()) {
        for (std::int64_t x = 0; x < real_rows; x += n) hn::Store(neg_inf, d, s + x);
        continue;
      }
      const auto add = hn::Set(d, bias);
      for (std::int64_t x = 0; x < real_rows; x += n) {
        hn::Store(hn::Add(hn::Load(d, s + x), add), d, s + x);
      }
    }
  }
}

// ApplyMask's bool mask (M = bool) or additive mask stored as M.
template <typename M, class D, typename T = hn::TFromD<D>>
void ApplyMaskOf(D d, const Problem& p, const std::vector<RowRef>& rows, std::int64_t j0,
                 std::int64_t keys, T* st, std::int64_t rp) {
  if (p.mask.stride[1] == 0 && p.mask.stride[2] == 0) {
    ApplySharedMaskRow<M>(d, p, rows, j0, keys, st, rp);
    return;
  }
  if (RowMasksVectorWide(d, p, rp)) {
    ApplyRowMasks<M>(d, p, rows, j0, keys, st, rp);
    return;
  }
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const std::int64_t ms = p.mask.stride[3];
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const RowRef& row = rows[r];
    T* s = st + r;
    const std::int64_t first = std::clamp<std::int64_t>(row.begin - j0, 0, keys);
    const std::int64_t last = std::clamp<std::int64_t>(row.end - j0, first, keys);
    if (p.mask_kind == MaskKind::kBool) {
      const bool* mask = static_cast<const bool*>(row.mask) + j0 * ms;
      for (std::int64_t c = first; c < last; ++c) {
        if (!mask[c * ms]) s[c * rp] = kNegInf;
      }
    } else {
      const M* mask = static_cast<const M*>(row.mask) + j0 * ms;
      for (std::int64_t c = first; c < last; ++c) {
        const T bias = internal::Widen<T>(mask[c * ms]);
        s[c * rp] = bias == kNegInf ? kNegInf : s[c * rp] + bias;
      }
    }
  }
}

// Sets the scores of invisible keys to -inf (causal rule, window, sequence bounds, bool mask)
// and adds an additive mask, for keys [j0, j0 + keys) and the task's rows. Only tiles that
// contain an invisible key or a mask come here (mask_mod is applied by the caller). The score
// is overwritten, never combined, so NaN/Inf from masked K rows cannot survive.
// `with_mask` false: the mask is known to keep every key of the tile (MaskBlock), so only the
// ranges apply. Rows with their own mask rows take ApplyRowMasks (masks-inl.h) where it applies.
template <class D, typename T = hn::TFromD<D>>
void ApplyMask(D d, const Problem& p, const std::vector<RowRef>& rows, std::int64_t j0,
               std::int64_t keys, T* st, std::int64_t rp, bool with_mask = true) {
  // Ranges grow with the row: the last row has the largest begin, the first the smallest end.
  if (j0 < rows.back().begin || j0 + keys > rows.front().end) {
    MaskOutsideRanges(d, rows, j0, keys, st, rp);
  }
  if (p.mask_kind == MaskKind::kNone || !with_mask) return;
  if (p.mask_kind == MaskKind::kBool) {
    ApplyMaskOf<bool>(d, p, rows, j0, keys, st, rp);
  } else {
    internal::WithStorage(p.mask.dtype, [&](auto m) {
      ApplyMaskOf<typename decltype(m)::Type>(d, p, rows, j0, keys, st, rp);
    });
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

#endif  // SDPA_CPU_SCORE_STEPS_INL_H_

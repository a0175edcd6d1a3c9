// Per-row masks, read vector-wide: a bool or additive mask whose rows differ ([Lq, Lkv], or any
// view of [B, H, Lq, Lkv] with broadcast dimensions of stride 0), applied to a tile of scores
// Sᵀ[key][row] (key-major, rows in lanes; score_steps-inl.h).
//
// A mask row is key-contiguous (stride 1 along keys in the usual layouts) while Sᵀ has rows in
// the lanes, so the tile's block of the mask is transposed first, by 16 × 16 byte transposes
// (four rounds of 128-bit interleaves, 64 shuffles per 256 entries): straight from the mask for
// 16 rows that see the whole tile, else from a copy of the rows' key bytes clamped to their key
// ranges (keys outside are masked by the range anyway). Then every key is one vector load,
// widening and select per N rows.
// Per score that is ~0.6 instructions against the ~8 FMAs of the products at D = 64 (AVX-512),
// where the score-by-score loop it replaces cost 2x the unmasked call (a branch per entry on a
// random mask). Additive masks are transposed by a branchless scalar copy (~2 instructions per
// score), then added vector-wide. Strided keys, float64 and targets with fewer than 16 byte lanes
// keep the score-by-score loop.
//
// MaskBlock classifies the tile's block of a bool mask before any score is computed: all false
// (the tile is skipped, as if outside every range), all true (no mask step), or mixed.

#if defined(SDPA_CPU_MASKS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_MASKS_INL_H_
#undef SDPA_CPU_MASKS_INL_H_
#else
#define SDPA_CPU_MASKS_INL_H_
#endif

#include <hwy/aligned_allocator.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/problem.h"
#include "core/types.h"
#include "cpu/arena.h"
#include "cpu/rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// What a bool mask says about keys [j0, j0 + keys) for the task's rows: kEmpty if false for all,
// kFull if true for all (also without a mask), kPartial otherwise or when it cannot tell cheaply
// (additive masks, strided keys). Rows that share a mask row (broadcast) are read once.
inline BlockKind MaskBlock(const Problem& p, const std::vector<RowRef>& rows, std::int64_t j0,
                           std::int64_t keys) {
  if (p.mask_kind == MaskKind::kNone) return BlockKind::kFull;
  if (p.mask_kind != MaskKind::kBool || p.mask.stride[3] != 1 || keys <= 0) {
    return BlockKind::kPartial;
  }
  const hn::ScalableTag<std::uint8_t> du;
  const auto lanes = static_cast<std::int64_t>(hn::Lanes(du));
  auto any = hn::Zero(du), all = hn::Set(du, 1);
  bool any_tail = false, all_tail = true;
  const void* previous = nullptr;
  for (const RowRef& row : rows) {
    if (row.mask == previous) continue;
    previous = row.mask;
    const auto* m = static_cast<const std::uint8_t*>(row.mask) + j0;
    std::int64_t c = 0;
    for (; c + lanes <= keys; c += lanes) {
      const auto v = hn::LoadU(du, m + c);
      any = hn::Or(any, v);
      all = hn::And(all, v);
    }
    for (; c < keys; ++c) {
      any_tail = any_tail || m[c] != 0;
      all_tail = all_tail && m[c] != 0;
    }
  }
  const bool none_set = !any_tail && hn::AllTrue(du, hn::Eq(any, hn::Zero(du)));
  if (none_set) return BlockKind::kEmpty;
  const bool all_set = all_tail && (keys < lanes || hn::AllFalse(du, hn::Eq(all, hn::Zero(du))));
  return all_set ? BlockKind::kFull : BlockKind::kPartial;
}

#if HWY_TARGET != HWY_SCALAR
// dst[c·ld_dst + r] = src[r·ld_src + c] for a 16 × 16 block of bytes (rows r, keys c).
HWY_INLINE void Transpose16x16(const std::uint8_t* src, std::int64_t ld_src, std::uint8_t* dst,
                               std::int64_t ld_dst) {
  const hn::Full128<std::uint8_t> d8;
  const hn::Full128<std::uint16_t> d16;
  const hn::Full128<std::uint32_t> d32;
  const hn::Full128<std::uint64_t> d64;
  hn::Vec128<std::uint8_t> v[16], t[16];
  for (int r = 0; r < 16; ++r) v[r] = hn::LoadU(d8, src + r * ld_src);
  // t[i]: keys 0-7 of rows 2i, 2i+1 in 16-bit units; t[8 + i]: keys 8-15.
  for (int i = 0; i < 8; ++i) {
    t[i] = hn::InterleaveLower(d8, v[2 * i], v[2 * i + 1]);
    t[8 + i] = hn::InterleaveUpper(d8, v[2 * i], v[2 * i + 1]);
  }
  // v[4g + i]: keys 4g .. 4g+3 of rows 4i .. 4i+3 in 32-bit units.
  for (int half = 0; half < 2; ++half) {
    for (int i = 0; i < 4; ++i) {
      const auto a = hn::BitCast(d16, t[8 * half + 2 * i]);
      const auto b = hn::BitCast(d16, t[8 * half + 2 * i + 1]);
      v[8 * half + i] = hn::BitCast(d8, hn::InterleaveLower(d16, a, b));
      v[8 * half + 4 + i] = hn::BitCast(d8, hn::InterleaveUpper(d16, a, b));
    }
  }
  // t[4g + 2h + k]: keys 4g + 2k, 4g + 2k + 1 of rows 8h .. 8h+7 in 64-bit units.
  for (int g = 0; g < 4; ++g) {
    for (int h = 0; h < 2; ++h) {
      const auto a = hn::BitCast(d32, v[4 * g + 2 * h]);
      const auto b = hn::BitCast(d32, v[4 * g + 2 * h + 1]);
      t[4 * g + 2 * h] = hn::BitCast(d8, hn::InterleaveLower(d32, a, b));
      t[4 * g + 2 * h + 1] = hn::BitCast(d8, hn::InterleaveUpper(d32, a, b));
    }
  }
  // Key 4g + 2k + e: 64-bit unit e of t[4g + k] (rows 0-7) and of t[4g + 2 + k] (rows 8-15).
  for (int g = 0; g < 4; ++g) {
    for (int k = 0; k < 2; ++k) {
      const auto lo = hn::BitCast(d64, t[4 * g + k]), hi = hn::BitCast(d64, t[4 * g + 2 + k]);
      hn::StoreU(hn::BitCast(d8, hn::InterleaveLower(d64, lo, hi)), d8,
                 dst + (4 * g + 2 * k) * ld_dst);
      hn::StoreU(hn::BitCast(d8, hn::InterleaveUpper(d64, lo, hi)), d8,
                 dst + (4 * g + 2 * k + 1) * ld_dst);
    }
  }
}

// True when the vector-wide path below handles this mask and tile (see the header comment).
template <class D>
bool RowMasksVectorWide(D d, const Problem& p, std::int64_t rp) {
  return std::is_same_v<hn::TFromD<D>, float> && p.mask.stride[3] == 1 && rp % 16 == 0 &&
         hn::Lanes(d) <= 16;
}

// Sᵀ[c][r] = -inf where row r's bool mask is false at key j0 + c, or += its additive bias (-inf
// bias: -inf; stored as M, any float type), for the keys inside the row's range;
// RowMasksVectorWide must hold.
template <typename M, class D, typename T = hn::TFromD<D>>
void ApplyRowMasksF32(D d, const Problem& p, const std::vector<RowRef>& rows, std::int64_t j0,
                      std::int64_t keys, T* st, std::int64_t rp) {
  const std::int64_t n = static_cast<std::int64_t>(hn::Lanes(d));
  const auto real_rows = static_cast<std::int64_t>(rows.size());
  const auto neg_inf = hn::Set(d, -std::numeric_limits<T>::infinity());
  const auto range = [&](std::int64_t r, std::int64_t& first, std::int64_t& last) {
    const RowRef& row = rows[static_cast<std::size_t>(r)];
    first = std::clamp<std::int64_t>(row.begin - j0, 0, keys);
    last = std::clamp<std::int64_t>(row.end - j0, first, keys);
  };
  if (p.mask_kind == MaskKind::kBool) {
    // Row-major block [rp][kp] (1 = keep outside ranges and for padded rows), then key-major.
    const std::int64_t kp = RoundUp(keys, 16);
    thread_local hwy::AlignedFreeUniquePtr<std::uint8_t[]> buffer;
    thread_local std::int64_t capacity = 0;
    if (2 * rp * kp > capacity) {
      capacity = 2 * rp * kp;
      buffer = hwy::AllocateAligned<std::uint8_t>(static_cast<std::size_t>(capacity));
    }
    std::uint8_t* block = buffer.get();
    std::uint8_t* keyed = block + rp * kp;
    const auto mask_row = [&](std::int64_t r) {
      return static_cast<const std::uint8_t*>(rows[static_cast<std::size_t>(r)].mask) + j0;
    };
    for (std::int64_t r0 = 0; r0 < rp; r0 += 16) {
      // 16 rows that see every key of the tile, with mask rows equally far apart (the usual
      // [.., Lq, Lkv] layouts): transposed straight from the mask.
      if (r0 + 16 <= real_rows && keys % 16 == 0 &&
          rows[static_cast<std::size_t>(r0 + 15)].begin <= j0 &&
          rows[static_cast<std::size_t>(r0)].end >= j0 + keys) {
        const std::int64_t spacing = mask_row(r0 + 1) - mask_row(r0);
        bool even = true;
        for (std::int64_t r = r0 + 2; r < r0 + 16 && even; ++r) {
          even = mask_row(r) - mask_row(r - 1) == spacing;
        }
        if (even) {
          for (std::int64_t c = 0; c < keys; c += 16) {
            Transpose16x16(mask_row(r0) + c, spacing, keyed + c * rp + r0, rp);
          }
          continue;
        }
      }
      for (std::int64_t r = r0; r < r0 + 16; ++r) {
        std::uint8_t* dst = block + r * kp;
        std::int64_t first = 0, last = 0;
        if (r < real_rows) range(r, first, last);
        std::memset(dst, 1, static_cast<std::size_t>(first));
        if (last > first) {
          std::memcpy(dst + first, mask_row(r) + first, static_cast<std::size_t>(last - first));
        }
        std::memset(dst + last, 1, static_cast<std::size_t>(kp - last));
      }
      for (std::int64_t c = 0; c < kp; c += 16) {
        Transpose16x16(block + r0 * kp + c, kp, keyed + c * rp + r0, rp);
      }
    }
    const hn::Rebind<std::uint8_t, D> du8;
    const hn::Rebind<std::int32_t, D> di;
    for (std::int64_t c = 0; c < keys; ++c) {
      for (std::int64_t x = 0; x < rp; x += n) {
        const auto keep = hn::PromoteTo(di, hn::LoadU(du8, keyed + c * rp + x));
        T* s = st + c * rp + x;
        hn::Store(
            hn::IfThenElse(hn::RebindMask(d, hn::Eq(keep, hn::Zero(di))), neg_inf, hn::Load(d, s)),
            d, s);
      }
    }
    return;
  }
  // Additive: biases key-major (0 outside ranges and for padded rows), then added.
  thread_local hwy::AlignedFreeUniquePtr<T[]> biases;
  thread_local std::int64_t capacity = 0;
  if (rp * keys > capacity) {
    capacity = rp * keys;
    biases = hwy::AllocateAligned<T>(static_cast<std::size_t>(capacity));
  }
  T* bt = biases.get();
  std::fill(bt, bt + rp * keys, T(0));
  for (std::int64_t r = 0; r < real_rows; ++r) {
    std::int64_t first = 0, last = 0;
    range(r, first, last);
    const M* mask = static_cast<const M*>(rows[static_cast<std::size_t>(r)].mask) + j0;
    for (std::int64_t c = first; c < last; ++c) bt[c * rp + r] = internal::Widen<T>(mask[c]);
  }
  for (std::int64_t c = 0; c < keys; ++c) {
    for (std::int64_t x = 0; x < rp; x += n) {
      T* s = st + c * rp + x;
      const auto bias = hn::Load(d, bt + c * rp + x);
      hn::Store(hn::IfThenElse(hn::Eq(bias, neg_inf), neg_inf, hn::Add(hn::Load(d, s), bias)), d,
                s);
    }
  }
}

template <typename M, class D, typename T = hn::TFromD<D>>
void ApplyRowMasks(D d, const Problem& p, const std::vector<RowRef>& rows, std::int64_t j0,
                   std::int64_t keys, T* st, std::int64_t rp) {
  if constexpr (std::is_same_v<T, float>) ApplyRowMasksF32<M>(d, p, rows, j0, keys, st, rp);
}

#else   // HWY_TARGET == HWY_SCALAR: one lane, so the score-by-score loop is as wide.
template <class D>
bool RowMasksVectorWide(D, const Problem&, std::int64_t) {
  return false;
}
template <typename M, class D, typename T = hn::TFromD<D>>
void ApplyRowMasks(D, const Problem&, const std::vector<RowRef>&, std::int64_t, std::int64_t, T*,
                   std::int64_t) {}
#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_MASKS_INL_H_

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

#include "core/dropout.h"
#include "core/problem.h"
#include "cpu/micro_kernels-inl.h"
#include "hwy/contrib/math/math-inl.h"

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

// One query row of a task: where it reads, and which keys it may see.
template <typename T>
struct RowRef {
  const T* q;
  const void* mask;         // mask(b, h, i, 0), nullptr without a mask
  std::int64_t head;        // query head h
  std::int64_t pos;         // packed query position (= local without varlen)
  std::int64_t local;       // query position within its sequence
  std::int64_t begin, end;  // keys [begin, end) (packed) pass the causal, window, sequence rules
  std::int64_t global_row;  // (b·H + h)·Lq + pos, the row's index in [B, H, Lq] arrays
};

// Rows [row_begin, row_end) of the query rows of `seq` sharing kv head `kv_head` (schedule.h):
// row r is position i = r / G (within the sequence) of head h = kv_head·G + r % G. Both key-range
// ends are non-decreasing along the rows.
template <typename T>
void DescribeRows(const Problem& p, std::int64_t group, const internal::Sequence& seq,
                  std::int64_t kv_head, std::int64_t row_begin, std::int64_t row_end,
                  std::vector<RowRef<T>>& rows) {
  rows.resize(static_cast<std::size_t>(row_end - row_begin));
  const auto mask_elem =
      static_cast<std::int64_t>(p.mask_kind == MaskKind::kBool ? sizeof(bool) : sizeof(T));
  const std::int64_t b = seq.batch;
  for (std::int64_t row = row_begin; row < row_end; ++row) {
    const std::int64_t local = row / group, i = seq.q_begin + local;
    const std::int64_t h = kv_head * group + row % group;
    RowRef<T>& ref = rows[static_cast<std::size_t>(row - row_begin)];
    ref.q = internal::As<T>(p.q).Row(b, h, i);
    ref.mask =
        p.mask_kind == MaskKind::kNone
            ? nullptr
            : static_cast<const char*>(p.mask.data) +
                  (b * p.mask.stride[0] + h * p.mask.stride[1] + i * p.mask.stride[2]) * mask_elem;
    ref.head = h;
    ref.pos = i;
    ref.local = local;
    const internal::KeyRange range = p.Visible(seq, local);
    ref.begin = seq.k_begin + range.begin;
    ref.end = seq.k_begin + range.end;
    ref.global_row = (b * p.heads + h) * p.q_len + i;
  }
}

// What a custom block_mask says about keys [j0, j0 + keys) (packed) for the task's rows: kEmpty
// only if empty for every head among the rows, kFull only if full for all; kPartial without a
// block_mask or mask_mod.
template <typename T>
BlockKind ClassifyTile(const Problem& p, const internal::Sequence& seq,
                       const std::vector<RowRef<T>>& rows, std::int64_t group, std::int64_t j0,
                       std::int64_t keys) {
  if (!p.has_mask_mod()) return BlockKind::kFull;
  if (p.custom->block == nullptr || rows.empty()) return BlockKind::kPartial;
  const std::int64_t heads = std::min<std::int64_t>(group, static_cast<std::int64_t>(rows.size()));
  const std::int64_t q_begin = rows.front().local, q_end = rows.back().local + 1;
  const std::int64_t k_begin = j0 - seq.k_begin;
  bool all_empty = true, all_full = true;
  for (std::int64_t r = 0; r < heads; ++r) {
    const BlockKind kind = p.custom->block(p.custom->context, seq.index, rows[r].head, q_begin,
                                           q_end, k_begin, k_begin + keys);
    all_empty = all_empty && kind == BlockKind::kEmpty;
    all_full = all_full && kind == BlockKind::kFull;
  }
  return all_empty ? BlockKind::kEmpty : all_full ? BlockKind::kFull : BlockKind::kPartial;
}

// True when some score of the tile [j0, j0 + keys) needs masking for the task's rows: a mask,
// a mask_mod the block hint did not settle, or a key outside some row's range (the first row
// has the smallest range end, the last row the largest begin).
template <typename T>
bool TileNeedsMask(const Problem& p, const std::vector<RowRef<T>>& rows, BlockKind kind,
                   std::int64_t j0, std::int64_t keys) {
  return p.mask_kind != MaskKind::kNone || kind == BlockKind::kPartial || j0 < rows.back().begin ||
         j0 + keys > rows.front().end;
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

// The keys [from, to) of a tile that a group of rows needs computed: none outside them is
// visible to any of those rows.
struct TileKeys {
  std::int64_t from = 0, to = 0;
};

// Sᵀ[c][r] = A[c] · panels[:, r] for all rp rows (panels of 2N) and the keys each panel needs,
// keys_for(first row, end row) -> TileKeys within [0, keys): the scores K·Qᵀ (forward and
// backward) and dPᵀ = V·dOᵀ (backward). A rows are `lda` apart. On a causal diagonal tile a
// panel's keys stop at its last row's end, and under a window they start at its first row's
// begin, so the parts of the tile outside the band are not computed (their Sᵀ entries are left
// as they were; the caller masks them).
template <class D, class KeysFor, typename T = hn::TFromD<D>>
void ScoreTile(D d, const T* panels, std::int64_t depth, std::int64_t rp, const T* a,
               std::int64_t lda, const KeysFor& keys_for, T* st) {
  const std::int64_t width = 2 * static_cast<std::int64_t>(hn::Lanes(d));
  for (std::int64_t panel = 0; panel < rp / width; ++panel) {
    const T* b = panels + panel * depth * width;
    const TileKeys range = keys_for(panel * width, (panel + 1) * width);
    for (std::int64_t c = range.from; c < range.to; c += kMicroRows) {
      WithMicroRows(range.to - c, [&](auto rows) {
        MulAddMicroTile<decltype(rows)::value, false>(d, a + c * lda, lda, 1, depth, b, width,
                                                      nullptr, st + c * rp + panel * width, rp);
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
  void Prepare(const Problem& p, const internal::Sequence& seq, const std::vector<RowRef<T>>& rows,
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
      const RowRef<T>& row = rows[static_cast<std::size_t>(r)];
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
void MaskOutsideRanges(D d, const std::vector<RowRef<T>>& rows, std::int64_t j0, std::int64_t keys,
                       T* st, std::int64_t rp) {
  // Range ends relative to the tile, as T: small integers, exact.
  thread_local std::vector<T> bounds;
  bounds.resize(static_cast<std::size_t>(2 * rp));
  T* first = bounds.data();
  T* last = first + rp;
  for (std::int64_t r = 0; r < rp; ++r) {
    const bool real = r < static_cast<std::int64_t>(rows.size());
    const RowRef<T>& row = rows[static_cast<std::size_t>(real ? r : 0)];
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
template <class D, typename T = hn::TFromD<D>>
void ApplySharedMaskRow(D d, const Problem& p, const std::vector<RowRef<T>>& rows, std::int64_t j0,
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
      const T bias = static_cast<const T*>(rows[0].mask)[(j0 + c) * ms];
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

// Sets the scores of invisible keys to -inf (causal rule, window, sequence bounds, bool mask)
// and adds an additive mask, for keys [j0, j0 + keys) and the task's rows. Only tiles that
// contain an invisible key or a mask come here (mask_mod is applied by the caller). The score
// is overwritten, never combined, so NaN/Inf from masked K rows cannot survive.
template <class D, typename T = hn::TFromD<D>>
void ApplyMask(D d, const Problem& p, const std::vector<RowRef<T>>& rows, std::int64_t j0,
               std::int64_t keys, T* st, std::int64_t rp) {
  MaskOutsideRanges(d, rows, j0, keys, st, rp);
  if (p.mask_kind == MaskKind::kNone) return;
  if (p.mask.stride[1] == 0 && p.mask.stride[2] == 0) {
    ApplySharedMaskRow(d, p, rows, j0, keys, st, rp);
    return;
  }
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const std::int64_t ms = p.mask.stride[3];
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const RowRef<T>& row = rows[r];
    T* s = st + r;
    const std::int64_t first = std::clamp<std::int64_t>(row.begin - j0, 0, keys);
    const std::int64_t last = std::clamp<std::int64_t>(row.end - j0, first, keys);
    if (p.mask_kind == MaskKind::kBool) {
      const bool* mask = static_cast<const bool*>(row.mask) + j0 * ms;
      for (std::int64_t c = first; c < last; ++c) {
        if (!mask[c * ms]) s[c * rp] = kNegInf;
      }
    } else {
      const T* mask = static_cast<const T*>(row.mask) + j0 * ms;
      for (std::int64_t c = first; c < last; ++c) {
        const T bias = mask[c * ms];
        s[c * rp] = bias == kNegInf ? kNegInf : s[c * rp] + bias;
      }
    }
  }
}

// Philox4x32-10 (api/dropout.h) for a vector of rows at once: u64 lanes hold the 32-bit words,
// so that MulEven gives each lane's full 64-bit product (Highway 1.0 has no 32-bit MulHigh).
template <class D64, class V64 = hn::Vec<D64>>
void PhiloxRows(D64 d64, V64 (&c)[4], std::uint32_t key0, std::uint32_t key1) {
#if HWY_TARGET == HWY_SCALAR  // one lane, and no 32-bit view of it: the scalar generator
  const internal::PhiloxWords words = internal::Philox4x32(
      {static_cast<std::uint32_t>(hn::GetLane(c[0])), static_cast<std::uint32_t>(hn::GetLane(c[1])),
       static_cast<std::uint32_t>(hn::GetLane(c[2])),
       static_cast<std::uint32_t>(hn::GetLane(c[3]))},
      key0, key1);
  for (int w = 0; w < 4; ++w) c[w] = hn::Set(d64, words[static_cast<std::size_t>(w)]);
#else
  const hn::Repartition<std::uint32_t, D64> d32;
  const V64 mul0 = hn::Set(d64, 0xD2511F53u), mul1 = hn::Set(d64, 0xCD9E8D57u);
  const V64 low = hn::Set(d64, 0xFFFFFFFFu);
  for (int round = 0; round < 10; ++round) {
    const V64 p0 = hn::MulEven(hn::BitCast(d32, mul0), hn::BitCast(d32, c[0]));
    const V64 p1 = hn::MulEven(hn::BitCast(d32, mul1), hn::BitCast(d32, c[2]));
    const V64 k0 = hn::Set(d64, key0), k1 = hn::Set(d64, key1);
    c[0] = hn::Xor(hn::Xor(hn::ShiftRight<32>(p1), c[1]), k0);
    c[1] = hn::And(p1, low);
    c[2] = hn::Xor(hn::Xor(hn::ShiftRight<32>(p0), c[3]), k1);
    c[3] = hn::And(p0, low);
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
#endif
}

// z[c][r] = 1 / (1 - p) where dropout keeps element (row r, key j0 + c) and 0 where it drops it
// (api/dropout.h); padded rows get 0. One vector Philox call decides 4 keys for a vector of rows.
template <typename T>
void DropoutTile(const Problem& p, const internal::Sequence& seq,
                 const std::vector<RowRef<T>>& rows, std::int64_t j0, std::int64_t keys, T* z,
                 std::int64_t rp) {
  const hn::ScalableTag<std::uint64_t> d64;
  using V64 = hn::Vec<decltype(d64)>;
  const auto n = static_cast<std::int64_t>(hn::Lanes(d64));
  const internal::Dropout dropout(p.dropout_p, p.seed);
  const T kept = static_cast<T>(dropout.scale());
  const std::uint64_t threshold = dropout.threshold();
  std::fill(z, z + keys * rp, T(0));
  HWY_ALIGN std::uint64_t pos[HWY_MAX_BYTES / 8];
  HWY_ALIGN std::uint64_t head[HWY_MAX_BYTES / 8];
  HWY_ALIGN std::uint64_t words[4][HWY_MAX_BYTES / 8];
  const auto count = static_cast<std::int64_t>(rows.size());
  for (std::int64_t r0 = 0; r0 < count; r0 += n) {
    const std::int64_t lanes = std::min(n, count - r0);
    for (std::int64_t x = 0; x < n; ++x) {
      const RowRef<T>& row = rows[static_cast<std::size_t>(r0 + std::min(x, lanes - 1))];
      pos[x] = static_cast<std::uint32_t>(row.local);
      head[x] = static_cast<std::uint32_t>(row.head);
    }
    for (std::int64_t c = 0; c < keys; ++c) {
      const std::int64_t j = j0 - seq.k_begin + c;
      if (c == 0 || (j & 3) == 0) {
        V64 counter[4] = {hn::Set(d64, static_cast<std::uint32_t>(j >> 2)), hn::Load(d64, pos),
                          hn::Load(d64, head), hn::Set(d64, static_cast<std::uint32_t>(seq.index))};
        PhiloxRows(d64, counter, dropout.key0(), dropout.key1());
        for (int w = 0; w < 4; ++w) hn::Store(counter[w], d64, words[w]);
      }
      const std::uint64_t* word = words[j & 3];
      T* zc = z + c * rp + r0;
      for (std::int64_t x = 0; x < lanes; ++x) zc[x] = word[x] >= threshold ? kept : T(0);
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

// The tiled backward pass (FlashAttention-2, Algorithm 2) for one SIMD target.
//
// What it computes, for each query row i with visible keys j (forward: P = softmax(S),
// S = scale·Q Kᵀ + mask, O = P V):
//   P_ij = exp(S_ij - lse_i)                 recomputed from the saved lse, never stored whole
//   Δ_i  = Σ_e dO_ie O_ie                    (= Σ_j P_ij dP_ij), once per row before the pass
//   dV_j = Σ_i P_ij dO_i                     (inverts the forward's AccumulatePv)
//   dP_ij = dO_i · V_j;  dS_ij = P_ij (dP_ij - Δ_i)   (inverts OnlineSoftmaxUpdate)
//   dQ_i = scale Σ_j dS_ij K_j;  dK_j = scale Σ_i dS_ij Q_i   (invert ScoreTile)
//
// Loop order: a task owns one (batch, kv head, key chunk). For each K/V tile of Bc keys it keeps
// dK_j, dV_j in L1/L2 and streams the group's query rows past them in tiles of Br, skipping rows
// whose causal range ends before the tile; dQ accumulates per task in a [G·Lq][Dkp] buffer (per
// chunk when keys are chunked, summed in chunk order at the end). Every gradient element is
// written by exactly one task in a fixed order: no atomics, bitwise identical for any thread
// count. Five products per tile, all on the forward's micro-kernel (MulAddMicroTile).
//
// Legend (W = the register tile's panel width, as in forward-inl.h): Qᵀ, dOᵀ [Rp/W][D or Dv][W]
// transposed panels; Q, dO rows [Br][Dkp or Dvp]; K, V rows
// [Bc][Dkp or Dvp] (packed, zero-padded); Pᵀ, dSᵀ [Bc][Rp]; dK, dV accumulators [Bc][Dkp, Dvp].
//
// Zeros stay zeros: P is exactly 0 for masked keys, padded rows and rows with no visible key
// (lse = -inf), dS is set to 0 wherever P is 0 (so NaN/Inf in a masked V row cannot reach dS),
// and dQ skips zero dS when a masked K row is not finite.
//
// Variants: rows and keys follow the forward's ranges (a key tile meets only the rows whose
// range reaches it: RowsSeeing); the score steps run again with their derivative d s / d x
// (x = scale·q·k; softcap and score_mod change it), which multiplies dS; sinks are already in
// lse, and ∂L/∂sink_h = -Σ_rows exp(sink_h - lse)·Δ; dropout's factor Z (regenerated, dropout.h)
// gives dV = Σ (P∘Z)ᵀ dO and dS = P∘(Z∘dP - Δ).

#if defined(SDPA_CPU_BACKWARD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_BACKWARD_INL_H_
#undef SDPA_CPU_BACKWARD_INL_H_
#else
#define SDPA_CPU_BACKWARD_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/interrupt.h"
#include "core/problem.h"
#include "core/types.h"
#include "cpu/arena.h"
#include "cpu/dropout-inl.h"
#include "cpu/exp2-inl.h"
#include "cpu/micro_kernels-inl.h"
#include "cpu/pack-inl.h"
#include "cpu/parallel.h"
#include "cpu/rows-inl.h"
#include "cpu/schedule.h"
#include "cpu/score_steps-inl.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using internal::BackwardProblem;

// Per-call state shared by the tasks: Δ per output row and the dQ accumulators.
template <typename T>
struct BackwardShared {
  std::vector<T> delta;               // [B·H·Lq], by RowRef::global_row
  hwy::AlignedFreeUniquePtr<T[]> dq;  // [chunks][B·Hkv][G·Lq][Dkp]
  std::int64_t dkp = 0;

  // dQ rows of a task's sequence: its group list (schedule.h) inside the batch entry's.
  T* DqRows(const internal::Problem& p, const Schedule& s, const Task& t) const {
    const std::int64_t rows = s.group * p.q_len;
    const std::int64_t first = s.group * p.Seq(t.seq).q_begin;
    return dq.get() +
           (((t.split * p.batch + t.batch) * p.kv_heads + t.kv_head) * rows + first) * dkp;
  }
};

// True when a row of query head h with this forward lse saw no key: lse = -inf, or with a
// sink, lse = the sink (the forward starts the row at m = sink, l = 1 and adds nothing). A row
// whose keys carry less than a rounding error of the sink's weight has that lse too; its
// gradients are below rounding as well, and it is treated alike (docs/semantics.md §13.5).
template <typename T>
bool RowIsEmpty(const internal::Problem& p, std::int64_t h, T lse) {
  if (lse == -std::numeric_limits<T>::infinity()) return true;
  return !p.sinks.empty() && lse == static_cast<T>(p.sinks[static_cast<std::size_t>(h)]);
}

// Rows [first, last) of a sequence's group list (i-major, see schedule.h) whose key ranges reach
// keys [j0, j0 + keys) (packed). Both range ends grow with the row, so two binary searches.
inline std::pair<std::int64_t, std::int64_t> RowsSeeing(const internal::Problem& p,
                                                        const internal::Sequence& seq,
                                                        std::int64_t group, std::int64_t j0,
                                                        std::int64_t keys) {
  const auto first_where = [&](auto&& reached) {
    std::int64_t lo = 0, hi = seq.q_len;  // first position with reached(i), q_len if none
    while (lo < hi) {
      const std::int64_t mid = lo + (hi - lo) / 2;
      if (reached(p.Visible(seq, mid))) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return lo;
  };
  const std::int64_t first =
      first_where([&](const internal::KeyRange& r) { return seq.k_begin + r.end > j0; });
  const std::int64_t last =
      first_where([&](const internal::KeyRange& r) { return seq.k_begin + r.begin >= j0 + keys; });
  return {first * group, std::max(first, last) * group};
}

// S is the operands' storage type, T the compute type (core/types.h), Shape the register tile.
template <typename S, typename T, class Shape>
class BackwardTask {
 public:
  using D = hn::ScalableTag<T>;
  using V = hn::Vec<D>;

  BackwardTask(const BackwardProblem& bp, const Schedule& s, const Task& t,
               const BackwardShared<T>& shared, internal::StopFlag& stop, Arena<T>& arena,
               std::vector<RowRef>& rows)
      : bp_(bp), p_(bp.forward), s_(s), t_(t), shared_(shared), stop_(stop), rows_(rows) {
    n_ = static_cast<std::int64_t>(hn::Lanes(d_));
    width_ = Shape::kVecs * n_;
    rp_ = RoundUp(s.q_tile, width_);
    dkp_ = shared.dkp;
    dvp_ = RoundUp(p_.v_dim, width_);
    const std::int64_t bc = s.kv_tile;
    using A = Arena<T>;
    has_slope_ = p_.softcap > 0 || p_.has_score_mod();
    dropout_ = p_.dropout_p > 0;
    const std::int64_t slot_size = A::Footprint(rp_ * p_.head_dim) + A::Footprint(rp_ * p_.v_dim) +
                                   A::Footprint(rp_ * dkp_) + A::Footprint(rp_ * dvp_) +
                                   2 * A::Footprint(rp_);
    slots_.resize(static_cast<std::size_t>(RowSlots(slot_size)));
    arena.Reset(static_cast<std::int64_t>(slots_.size()) * slot_size + 4 * A::Footprint(bc * rp_) +
                2 * A::Footprint(bc * dkp_) + 2 * A::Footprint(bc * dvp_));
    for (RowSlot& slot : slots_) {
      slot.qt = arena.Take(rp_ * p_.head_dim);
      slot.dot = arena.Take(rp_ * p_.v_dim);
      slot.q_rows = arena.Take(rp_ * dkp_);
      slot.do_rows = arena.Take(rp_ * dvp_);
      slot.lse = arena.Take(rp_);
      slot.delta = arena.Take(rp_);
    }
    pt_ = arena.Take(bc * rp_);
    dst_ = arena.Take(bc * rp_);
    k_rows_ = arena.Take(bc * dkp_);
    v_rows_ = arena.Take(bc * dvp_);
    dk_ = arena.Take(bc * dkp_);
    dv_ = arena.Take(bc * dvp_);
    slope_ = has_slope_ ? arena.Take(bc * rp_) : nullptr;
    z_ = dropout_ ? arena.Take(bc * rp_) : nullptr;
  }

  // The tile loop: for each K/V tile of the chunk, every query tile that can see it. Query tiles
  // lie on a fixed grid of q_tile rows, so that consecutive K/V tiles of a band (window, short
  // varlen sequences) meet the same query tiles, whose packed operands are then kept (RowSlots).
  void Run() {
    const internal::Sequence seq = p_.Seq(t_.seq);
    T* dq = shared_.DqRows(p_, s_, t_);
    const std::int64_t group_rows = s_.group * seq.q_len;
    for (std::int64_t j0 = t_.kv_begin; j0 < t_.kv_end; j0 += s_.kv_tile) {
      const std::int64_t keys = std::min(s_.kv_tile, t_.kv_end - j0);
      LoadKvTile(j0, keys);
      std::fill(dk_, dk_ + keys * dkp_, T(0));
      std::fill(dv_, dv_ + keys * dvp_, T(0));
      const auto [first_row, last_row] = RowsSeeing(p_, seq, s_.group, j0, keys);
      for (std::int64_t r0 = first_row - first_row % s_.q_tile; r0 < last_row; r0 += s_.q_tile) {
        if (stop_.Stopped()) return;  // the caller throws sdpa::Interrupted
        const std::int64_t rows = std::min(s_.q_tile, group_rows - r0);
        UseQueryTile(seq, r0, rows);
        const BlockKind kind = ClassifyTile(p_, seq, rows_, s_.group, j0, keys);
        const BlockKind mask = MaskBlock(p_, rows_, j0, keys);
        if (kind == BlockKind::kEmpty || mask == BlockKind::kEmpty) continue;
        Tile(seq, j0, keys, rows, TileNeedsMask(rows_, kind, mask, j0, keys),
             kind == BlockKind::kPartial, mask != BlockKind::kFull, dq + r0 * dkp_);
      }
      StoreKeyGradients(j0, keys);
    }
  }

  // One tile: the query rows described in rows_ against the loaded K/V tile [j0, j0 + keys).
  // `partial`, `mask_mod` and `mask_values` as in the forward's Tile; dq holds the rows' dQ.
  //
  // Under causal, window and varlen bounds the rows' key ranges cut the tile into a band, and
  // only the band is computed, as the forward does: S and dP per panel of rows, P and dS per
  // vector of rows, over KeysComputed (the rows' keys widened by a micro-tile on both sides, so
  // that every entry a product reads is written); dV, dK per micro-tile of keys over the rows that
  // see them (RowsSeeingKeys), dQ per micro-tile of rows over the keys they see (KeysSeenBy).
  // Entries outside the band are never read. The products' order is fixed by the shape alone, so
  // results stay bitwise identical for any thread count.
  void Tile(const internal::Sequence& seq, std::int64_t j0, std::int64_t keys, std::int64_t rows,
            bool partial, bool mask_mod, bool mask_values, T* dq) {
    steps_.Prepare(p_, seq, rows_, rp_);
    const auto computed = [&](std::int64_t row_begin, std::int64_t row_end) {
      return KeysComputed(j0, keys, rows, row_begin, row_end);
    };
    ScoreTile<Shape>(d_, qt_, p_.head_dim, rp_, k_rows_, dkp_, computed, pt_);
    steps_.Apply(d_, j0, keys, pt_, rp_, slope_);
    if (partial) ApplyMask(d_, p_, rows_, j0, keys, pt_, rp_, mask_values);
    if (mask_mod) ApplyMaskMod(p_, steps_.Block(j0, keys, rp_), pt_);
    Probabilities(computed);
    ScoreTile<Shape>(d_, dot_, p_.v_dim, rp_, v_rows_, dvp_, computed, dst_);
    if (dropout_) DropoutTile(p_, seq, rows_, j0, keys, z_, rp_);
    ScoreGradients(computed);
    AccumulateKeyGradients(j0, keys, rows);
    const bool k_finite = !partial || AllFinite(d_, k_rows_, dkp_, keys, dkp_);
    AccumulateQueryGradients(j0, keys, rows, k_finite, dq);
  }

  // The packed operands of one query tile (LoadQueryTile), kept across K/V tiles.
  struct RowSlot {
    std::int64_t r0 = -1;  // first group row of the tile held, -1 for none
    std::vector<RowRef> rows;
    T *qt = nullptr, *dot = nullptr, *q_rows = nullptr, *do_rows = nullptr, *lse = nullptr,
      *delta = nullptr;
  };

  // How many query tiles to keep (each slot_size elements): all of the task's if they fit the
  // budget; else, if the most tiles any K/V tile meets (a band's width) fit, one more than that,
  // so that a band's tiles stay while it slides; else 1 (full or causal attention at long L
  // meets almost every query tile for every K/V tile, and keeping some would not save a pack).
  std::int64_t RowSlots(std::int64_t slot_size) const {
    constexpr std::int64_t kBudgetBytes = 768 * 1024;
    const std::int64_t budget = kBudgetBytes / static_cast<std::int64_t>(sizeof(T)) / slot_size;
    const internal::Sequence seq = p_.Seq(t_.seq);
    const std::int64_t tiles = (s_.group * seq.q_len + s_.q_tile - 1) / s_.q_tile;
    if (tiles <= budget) return std::max<std::int64_t>(tiles, 1);
    std::int64_t widest = 1;
    for (std::int64_t j0 = t_.kv_begin; j0 < t_.kv_end; j0 += s_.kv_tile) {
      const auto [first, last] =
          RowsSeeing(p_, seq, s_.group, j0, std::min(s_.kv_tile, t_.kv_end - j0));
      if (last <= first) continue;
      widest = std::max(widest, (last - 1) / s_.q_tile - first / s_.q_tile + 1);
    }
    return widest + 1 <= budget && widest < tiles ? widest + 1 : 1;
  }

  // Makes rows_ and the query-side buffers those of tile rows [r0, r0 + rows), packing them
  // unless a slot holds them already (slots are direct-mapped by tile index).
  void UseQueryTile(const internal::Sequence& seq, std::int64_t r0, std::int64_t rows) {
    RowSlot& slot = slots_[static_cast<std::size_t>((r0 / s_.q_tile) %
                                                    static_cast<std::int64_t>(slots_.size()))];
    qt_ = slot.qt;
    dot_ = slot.dot;
    q_rows_ = slot.q_rows;
    do_rows_ = slot.do_rows;
    lse_ = slot.lse;
    delta_ = slot.delta;
    if (slot.r0 == r0) {
      rows_ = slot.rows;
      return;
    }
    DescribeRows(p_, s_.group, seq, t_.kv_head, r0, r0 + rows, rows_);
    LoadQueryTile(rows);
    slot.rows = rows_;
    slot.r0 = r0;
  }

  // Keys [from, to) of the tile whose S, P, dP and dS are computed for tile rows [row_begin,
  // row_end) (a vector or a panel of rows), R = Shape::kRows. Every entry a product reads must
  // be written: a dQ micro-tile (R rows) reads the keys its rows see, a dK/dV micro-tile (R keys
  // from a multiple of R) reads its keys for every row that sees one of them.
  //  - R divides N (8 or 4 rows on AVX-512): dQ micro-tiles lie inside one vector, so the rows'
  //    own keys, rounded out to the dK/dV micro-tiles' grid of R keys, suffice.
  //  - otherwise (6 rows): the keys of rows row_begin - (R-1) .. row_end + (R-2), widened by
  //    R-1 keys on both sides.
  // Rows past `rows` (padding) count as the last row; ranges grow with the row.
  TileKeys KeysComputed(std::int64_t j0, std::int64_t keys, std::int64_t rows,
                        std::int64_t row_begin, std::int64_t row_end) const {
    if (row_begin >= rows) return {0, 0};
    constexpr std::int64_t kRows = Shape::kRows;
    if (n_ % kRows == 0) {
      const RowRef& first = rows_[static_cast<std::size_t>(row_begin)];
      const RowRef& last = rows_[static_cast<std::size_t>(std::min(row_end, rows) - 1)];
      const std::int64_t from = std::clamp<std::int64_t>(first.begin - j0, 0, keys) / kRows * kRows;
      const std::int64_t to = RoundUp(std::clamp<std::int64_t>(last.end - j0, from, keys), kRows);
      return {from, std::min(to, keys)};
    }
    constexpr std::int64_t kWiden = kRows - 1;
    const RowRef& first =
        rows_[static_cast<std::size_t>(std::max<std::int64_t>(0, row_begin - kWiden))];
    const RowRef& last = rows_[static_cast<std::size_t>(std::min(row_end + kWiden, rows) - 1)];
    const std::int64_t from = std::clamp<std::int64_t>(first.begin - j0 - kWiden, 0, keys);
    return {from, std::clamp<std::int64_t>(last.end - j0 + kWiden, from, keys)};
  }

  // Keys [from, to) of the tile that tile rows [row_begin, row_end) see.
  TileKeys KeysSeenBy(std::int64_t j0, std::int64_t keys, std::int64_t row_begin,
                      std::int64_t row_end) const {
    const std::int64_t from =
        std::clamp<std::int64_t>(rows_[static_cast<std::size_t>(row_begin)].begin - j0, 0, keys);
    return {from, std::clamp<std::int64_t>(rows_[static_cast<std::size_t>(row_end - 1)].end - j0,
                                           from, keys)};
  }

  // Tile rows [first, last) that see some key of [j0 + c, j0 + c + count), out of `rows`.
  std::pair<std::int64_t, std::int64_t> RowsSeeingKeys(std::int64_t j0, std::int64_t c,
                                                       std::int64_t count,
                                                       std::int64_t rows) const {
    const auto begin = rows_.begin(), end = rows_.begin() + rows;
    const auto first =
        std::partition_point(begin, end, [&](const RowRef& r) { return r.end <= j0 + c; });
    const auto last =
        std::partition_point(first, end, [&](const RowRef& r) { return r.begin < j0 + c + count; });
    return {first - begin, last - begin};
  }

 private:
  // K and V rows of the tile, packed and zero-padded to Dkp / Dvp (both are B operands of
  // MulAddMicroTile, which reads whole W-wide vectors).
  void LoadKvTile(std::int64_t j0, std::int64_t keys) {
    GatherKvRows<S>(p_.kv, false, t_.batch, t_.kv_head, j0, keys, p_.head_dim, dkp_, k_rows_);
    GatherKvRows<S>(p_.kv, true, t_.batch, t_.kv_head, j0, keys, p_.v_dim, dvp_, v_rows_);
  }

  // Qᵀ (scaled) and dOᵀ panels, Q and dO rows, and each row's lse and Δ. Padded rows get
  // lse = -inf, which makes their P exactly 0 like a row with no visible key.
  void LoadQueryTile(std::int64_t rows) {
    const auto q_row = [&](std::int64_t r) { return rows_[static_cast<std::size_t>(r)].q; };
    const auto do_row = [&](std::int64_t r) -> const void* {
      const RowRef& row = rows_[static_cast<std::size_t>(r)];
      return RowOf(bp_.grad_out, t_.batch, row.head, row.pos);
    };
    PackPanels(rows, rp_, width_, p_.head_dim, p_.q.stride[3], static_cast<T>(p_.scale), p_.q.dtype,
               q_row, qt_);
    PackPanels(rows, rp_, width_, p_.v_dim, bp_.grad_out.stride[3], T(1), bp_.grad_out.dtype,
               do_row, dot_);
    for (std::int64_t r = 0; r < rows; ++r) {
      PackRow(q_row(r), p_.q.dtype, p_.q.stride[3], p_.head_dim, dkp_, q_rows_ + r * dkp_);
      PackRow(do_row(r), bp_.grad_out.dtype, bp_.grad_out.stride[3], p_.v_dim, dvp_,
              do_rows_ + r * dvp_);
      const RowRef& row = rows_[static_cast<std::size_t>(r)];
      lse_[r] = *internal::As<T>(p_.lse).Row(t_.batch, row.head, row.pos);
      delta_[r] = shared_.delta[static_cast<std::size_t>(row.global_row)];
      if (RowIsEmpty(p_, row.head, lse_[r])) {
        // No visible key: the row contributes nothing, even when its q or dO is not finite
        // (padding rows); its P is 0 and 0·NaN in dK or dV would leak, so pack zeros.
        lse_[r] = -std::numeric_limits<T>::infinity();
        std::fill(q_rows_ + r * dkp_, q_rows_ + (r + 1) * dkp_, T(0));
        std::fill(do_rows_ + r * dvp_, do_rows_ + (r + 1) * dvp_, T(0));
      }
    }
    std::fill(lse_ + rows, lse_ + rp_, -std::numeric_limits<T>::infinity());
    std::fill(delta_ + rows, delta_ + rp_, T(0));
  }

  // Pᵀ[c][r] = exp(Sᵀ[c][r] - lse[r]), exactly 0 where the score is -inf (masked) or lse is
  // -inf (no visible key, or a padded row), for the keys computed(x, x + N) of each vector x.
  template <class KeysFor>
  void Probabilities(const KeysFor& computed) {
    const V neg_inf = hn::Set(d_, -std::numeric_limits<T>::infinity());
    const V log2e = hn::Set(d_, static_cast<T>(kLog2e));
    for (std::int64_t x = 0; x < rp_; x += n_) {
      const TileKeys range = computed(x, x + n_);
      const V lse = hn::Load(d_, lse_ + x);
      const auto empty = hn::Eq(lse, neg_inf);
      for (std::int64_t c = range.from; c < range.to; ++c) {
        T* s = pt_ + c * rp_ + x;
        const V score = hn::Load(d_, s);
        const V prob = Exp2(d_, hn::Mul(hn::Sub(score, lse), log2e));
        hn::Store(hn::IfThenZeroElse(hn::Or(empty, hn::Eq(score, neg_inf)), prob), d_, s);
      }
    }
  }

  // dSᵀ[c][r] = Pᵀ[c][r]·(Z·dPᵀ[c][r] - Δ[r])·slope in place of dPᵀ, 0 wherever P is 0; then
  // Pᵀ ← Pᵀ·Z for dV. Z (dropout factors) and the slope d s / d x are 1 when absent. Over the
  // keys Probabilities computed.
  template <class KeysFor>
  void ScoreGradients(const KeysFor& computed) {
    for (std::int64_t x = 0; x < rp_; x += n_) {
      const TileKeys range = computed(x, x + n_);
      const V delta = hn::Load(d_, delta_ + x);
      for (std::int64_t c = range.from; c < range.to; ++c) {
        const std::int64_t at = c * rp_ + x;
        const V prob = hn::Load(d_, pt_ + at);
        V dp = hn::Load(d_, dst_ + at);
        if (dropout_) dp = hn::Mul(dp, hn::Load(d_, z_ + at));
        V grad = hn::Mul(prob, hn::Sub(dp, delta));
        if (has_slope_) grad = hn::Mul(grad, hn::Load(d_, slope_ + at));
        hn::Store(hn::IfThenZeroElse(hn::Eq(prob, hn::Zero(d_)), grad), d_, dst_ + at);
        if (dropout_) hn::Store(hn::Mul(prob, hn::Load(d_, z_ + at)), d_, pt_ + at);
      }
    }
  }

  // dV[c] += Σ_r Pᵀ[c][r] dO[r];  dK[c] += Σ_r dSᵀ[c][r] Q[r] (scale applied on store), over
  // the rows r that see some key of each micro-tile of keys.
  void AccumulateKeyGradients(std::int64_t j0, std::int64_t keys, std::int64_t rows) {
    for (std::int64_t c = 0; c < keys; c += Shape::kRows) {
      const auto [first, last] =
          RowsSeeingKeys(j0, c, std::min<std::int64_t>(Shape::kRows, keys - c), rows);
      if (first == last) continue;
      WithMicroRows<Shape>(keys - c, [&, first = first, last = last](auto tile) {
        constexpr int kRows = decltype(tile)::value;
        for (std::int64_t col = 0; col < dvp_; col += width_) {
          MulAddMicroTile<kRows, Shape::kVecs, true>(d_, pt_ + c * rp_ + first, rp_, 1,
                                                     last - first, do_rows_ + first * dvp_ + col,
                                                     dvp_, nullptr, dv_ + c * dvp_ + col, dvp_);
        }
        for (std::int64_t col = 0; col < dkp_; col += width_) {
          MulAddMicroTile<kRows, Shape::kVecs, true>(d_, dst_ + c * rp_ + first, rp_, 1,
                                                     last - first, q_rows_ + first * dkp_ + col,
                                                     dkp_, nullptr, dk_ + c * dkp_ + col, dkp_);
        }
      });
    }
  }

  // dQ[r] += Σ_c dSᵀ[c][r] K[c] (scale applied on store), over the keys each micro-tile of rows
  // sees. When a masked K row is not finite, 0·NaN would leak, so zero dS entries are skipped.
  void AccumulateQueryGradients(std::int64_t j0, std::int64_t keys, std::int64_t rows,
                                bool k_finite, T* dq) {
    if (!k_finite) {
      for (std::int64_t r = 0; r < rows; ++r) {
        const TileKeys range = KeysSeenBy(j0, keys, r, r + 1);
        for (std::int64_t c = range.from; c < range.to; ++c) {
          const T ds = dst_[c * rp_ + r];
          if (ds == T(0)) continue;
          for (std::int64_t x = 0; x < dkp_; x += n_) {
            hn::Store(hn::MulAdd(hn::Set(d_, ds), hn::Load(d_, k_rows_ + c * dkp_ + x),
                                 hn::Load(d_, dq + r * dkp_ + x)),
                      d_, dq + r * dkp_ + x);
          }
        }
      }
      return;
    }
    for (std::int64_t r = 0; r < rows; r += Shape::kRows) {
      const TileKeys range =
          KeysSeenBy(j0, keys, r, std::min<std::int64_t>(r + Shape::kRows, rows));
      if (range.to == range.from) continue;
      WithMicroRows<Shape>(rows - r, [&](auto tile) {
        for (std::int64_t col = 0; col < dkp_; col += width_) {
          MulAddMicroTile<decltype(tile)::value, Shape::kVecs, true>(
              d_, dst_ + range.from * rp_ + r, 1, rp_, range.to - range.from,
              k_rows_ + range.from * dkp_ + col, dkp_, nullptr, dq + r * dkp_ + col, dkp_);
        }
      });
    }
  }

  // grad_k = scale·dK and grad_v = dV for the tile's keys (this task owns them).
  void StoreKeyGradients(std::int64_t j0, std::int64_t keys) {
    const T scale = static_cast<T>(p_.scale);
    const std::int64_t k_step = bp_.grad_k.stride[3], v_step = bp_.grad_v.stride[3];
    for (std::int64_t c = 0; c < keys; ++c) {
      StoreRow(dk_ + c * dkp_, scale, p_.head_dim, RowOf(bp_.grad_k, t_.batch, t_.kv_head, j0 + c),
               bp_.grad_k.dtype, k_step);
      StoreRow(dv_ + c * dvp_, T(1), p_.v_dim, RowOf(bp_.grad_v, t_.batch, t_.kv_head, j0 + c),
               bp_.grad_v.dtype, v_step);
    }
  }

  const BackwardProblem& bp_;
  const internal::Problem& p_;
  const Schedule& s_;
  const Task& t_;
  const BackwardShared<T>& shared_;
  internal::StopFlag& stop_;
  std::vector<RowRef>& rows_;
  std::vector<RowSlot> slots_;
  ScoreSteps<T> steps_;
  D d_;
  std::int64_t n_ = 0, width_ = 0, rp_ = 0, dkp_ = 0, dvp_ = 0;
  bool has_slope_ = false, dropout_ = false;
  T *qt_ = nullptr, *dot_ = nullptr, *q_rows_ = nullptr, *do_rows_ = nullptr, *pt_ = nullptr,
    *dst_ = nullptr, *k_rows_ = nullptr, *v_rows_ = nullptr, *dk_ = nullptr, *dv_ = nullptr,
    *lse_ = nullptr, *delta_ = nullptr, *slope_ = nullptr, *z_ = nullptr;
};

// grad_sinks[h] = -Σ_{b, i} exp(sink_h - lse_bhi)·Δ_bhi, in float64 and a fixed order, over the
// rows that saw a key: an empty row's output is 0 whatever the sink, so it adds nothing (and
// its grad_out, which may be anything, is never read).
template <typename T>
void StoreSinkGradients(const BackwardProblem& bp, const std::vector<T>& delta) {
  const internal::Problem& p = bp.forward;
  for (std::int64_t h = 0; h < p.heads; ++h) {
    const double sink = p.sinks[static_cast<std::size_t>(h)];
    double sum = 0;
    for (std::int64_t b = 0; b < p.batch && sink != -std::numeric_limits<double>::infinity(); ++b) {
      for (std::int64_t i = 0; i < p.q_len; ++i) {
        const T row_lse = *internal::As<T>(p.lse).Row(b, h, i);
        if (RowIsEmpty(p, h, row_lse)) continue;
        const double lse = static_cast<double>(row_lse);
        const auto row = static_cast<std::size_t>((b * p.heads + h) * p.q_len + i);
        sum -= std::exp(sink - lse) * static_cast<double>(delta[row]);
      }
    }
    StoreRow(
        &sum, 1.0, 1,
        static_cast<char*>(bp.grad_sinks.data) +
            h * bp.grad_sinks.stride[0] * static_cast<std::int64_t>(DTypeSize(bp.grad_sinks.dtype)),
        bp.grad_sinks.dtype, 0);
  }
}

// Δ_i = Σ_e dO_ie·O_ie for every output row, in float64: with vectors of doubles when both rows
// are unit-stride float or double of one dtype (the lanes' partial sums, then their sum), else
// one by one.
template <typename S>
double RowDot(const S* o, std::int64_t o_step, const S* g, std::int64_t g_step, std::int64_t n) {
  std::int64_t e = 0;
  double sum = 0;
  if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>) {
    const hn::ScalableTag<double> dd;
    const hn::Rebind<S, decltype(dd)> ds;
    const auto lanes = static_cast<std::int64_t>(hn::Lanes(dd));
    if (o_step == 1 && g_step == 1 && n >= lanes) {
      auto acc = hn::Zero(dd);
      for (; e + lanes <= n; e += lanes) {
        const auto ov = hn::LoadU(ds, o + e), gv = hn::LoadU(ds, g + e);
        if constexpr (std::is_same_v<S, double>) {
          acc = hn::MulAdd(ov, gv, acc);
        } else {
          acc = hn::MulAdd(hn::PromoteTo(dd, ov), hn::PromoteTo(dd, gv), acc);
        }
      }
      sum = hn::GetLane(hn::SumOfLanes(dd, acc));
    }
  }
  for (; e < n; ++e) {
    sum += internal::Widen<double>(o[e * o_step]) * internal::Widen<double>(g[e * g_step]);
  }
  return sum;
}

template <typename T>
void ComputeDelta(const BackwardProblem& bp, const Schedule& s, std::vector<T>& delta) {
  const internal::Problem& p = bp.forward;
  const std::int64_t rows = p.batch * p.heads * p.q_len, per_task = 1024;
  delta.assign(static_cast<std::size_t>(rows), T(0));
  ParallelFor((rows + per_task - 1) / per_task, s.threads, [&](std::int64_t task, int) {
    std::vector<double> o(static_cast<std::size_t>(p.v_dim)), g(o.size());
    for (std::int64_t row = task * per_task; row < std::min(rows, (task + 1) * per_task); ++row) {
      const std::int64_t i = row % p.q_len, h = (row / p.q_len) % p.heads,
                         b = row / (p.q_len * p.heads);
      if (p.out.dtype == bp.grad_out.dtype) {
        internal::WithStorage(p.out.dtype, [&](auto tag) {
          using S = typename decltype(tag)::Type;
          delta[static_cast<std::size_t>(row)] = static_cast<T>(
              RowDot(reinterpret_cast<const S*>(RowOf(p.out, b, h, i)), p.out.stride[3],
                     reinterpret_cast<const S*>(RowOf(bp.grad_out, b, h, i)), bp.grad_out.stride[3],
                     p.v_dim));
        });
      } else {
        internal::ReadRow(p.out, b, h, i, p.v_dim, o.data());
        internal::ReadRow(bp.grad_out, b, h, i, p.v_dim, g.data());
        double sum = 0;
        for (std::size_t e = 0; e < o.size(); ++e) sum += o[e] * g[e];
        delta[static_cast<std::size_t>(row)] = static_cast<T>(sum);
      }
    }
  });
}

// grad_q = scale·Σ_chunks dQ, chunks summed in order, mapped from group rows to (h, i).
template <typename T>
void StoreQueryGradients(const BackwardProblem& bp, const Schedule& s,
                         const BackwardShared<T>& shared) {
  const internal::Problem& p = bp.forward;
  const std::int64_t group_rows = s.group * p.q_len, pairs = p.batch * p.kv_heads;
  const T scale = static_cast<T>(p.scale);
  ParallelFor(pairs, s.threads, [&](std::int64_t pair, int) {
    const std::int64_t b = pair / p.kv_heads, kvh = pair % p.kv_heads;
    const std::int64_t chunk_step = p.batch * p.kv_heads * group_rows * shared.dkp;
    std::vector<T> sum(static_cast<std::size_t>(p.head_dim));
    for (std::int64_t row = 0; row < group_rows; ++row) {
      const std::int64_t i = row / s.group, h = kvh * s.group + row % s.group;
      const T* dq = shared.dq.get() + ((b * p.kv_heads + kvh) * group_rows + row) * shared.dkp;
      // Chunk by chunk over the whole row (0 + the first chunk, then the others in order), so
      // that each pass is a plain vectorisable loop.
      std::fill(sum.begin(), sum.end(), T(0));
      for (std::int64_t chunk = 0; chunk < s.kv_splits; ++chunk) {
        const T* part = dq + chunk * chunk_step;
        for (std::int64_t x = 0; x < p.head_dim; ++x) sum[static_cast<std::size_t>(x)] += part[x];
      }
      StoreRow(sum.data(), scale, p.head_dim, RowOf(bp.grad_q, b, h, i), bp.grad_q.dtype,
               bp.grad_q.stride[3]);
    }
  });
}

template <typename S, typename T, class Shape>
void RunBackwardShaped(const BackwardProblem& bp, const Schedule& s, internal::StopFlag& stop) {
  const internal::Problem& p = bp.forward;
  BackwardShared<T> shared;
  shared.dkp = RoundUp(p.head_dim,
                       Shape::kVecs * static_cast<std::int64_t>(hn::Lanes(hn::ScalableTag<T>())));
  ComputeDelta(bp, s, shared.delta);
  const std::int64_t dq_size = s.kv_splits * p.batch * p.heads * p.q_len * shared.dkp;
  // Zeroed here, not per task: rows of a problem without keys have no task but need dQ = 0.
  shared.dq = hwy::AllocateAligned<T>(static_cast<std::size_t>(std::max<std::int64_t>(dq_size, 1)));
  std::fill(shared.dq.get(), shared.dq.get() + dq_size, T(0));
  ParallelFor(static_cast<std::int64_t>(s.tasks.size()), s.threads, [&](std::int64_t index, int) {
    static thread_local Arena<T> arena;
    static thread_local std::vector<RowRef> rows;
    BackwardTask<S, T, Shape>(bp, s, s.tasks[static_cast<std::size_t>(index)], shared, stop, arena,
                              rows)
        .Run();
  });
  stop.ThrowIfStopped();
  StoreQueryGradients(bp, s, shared);
  if (bp.grad_sinks.data != nullptr) StoreSinkGradients(bp, shared.delta);
}

template <typename S, typename T>
void RunBackwardTyped(const BackwardProblem& bp, const Schedule& s, internal::StopFlag& stop) {
  WithShape<T>(s.micro_rows, s.micro_vectors,
               [&](auto shape) { RunBackwardShaped<S, T, decltype(shape)>(bp, s, stop); });
}

// The per-target entry point (HWY_EXPORT-ed by backward.cc).
inline void RunBackward(const BackwardProblem& bp, const Schedule& s, internal::StopFlag& stop) {
  internal::WithTypes(bp.forward, [&](auto types) {
    using Types = decltype(types);
    RunBackwardTyped<typename Types::Storage, typename Types::Compute>(bp, s, stop);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_BACKWARD_INL_H_

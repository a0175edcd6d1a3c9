// The tiled online-softmax forward pass (FlashAttention-2 loop order) for one SIMD target.
//
// What it computes: for each query row, out = Σ_j softmax_j(scale·q·k_j + mask_j) v_j and
// lse = log Σ_j exp(scale·q·k_j + mask_j), over the keys j visible to the row, without ever
// holding more than one Br × Bc tile of scores (Dao, "FlashAttention-2", 2023).
//
// Legend (per task; see schedule.h for how rows and keys are assigned):
//   W    the panel width, kVecs·N lanes of the register tile (MicroShape, tuning.h; 2N by default)
//   Br   query rows of the task (q_tile, 96 by default), padded to Rp, a multiple of W
//   Bc   keys per tile (kv_tile, 128); D head_dim; Dv v_dim, padded to Dvp (a multiple of W)
//   Qᵀ   [Rp/W][D][W]    the task's queries, transposed into panels, pre-multiplied by scale
//   Sᵀ   [Bc][Rp]        scores of one tile, transposed: key-major, so that the row max, the
//                        exponentials and the row sums are all vertical (lane-wise) operations
//   O    [Rp][Dvp]       unnormalised output accumulator; m, l [Rp] running max and sum
//
// Memory traffic: K and V are read once per task (Br = 96 rows reuse each K/V tile), Q once;
// K and V are read in place (natural layout, any row stride) unless their last dimension is
// strided. The working set per thread (Qᵀ 48 KiB + Sᵀ 48 KiB + O 48 KiB + K/V tiles 128 KiB
// at D = Dv = 128, float32) fits the 512 KiB-1 MiB L2.
//
// Invariants after each tile, for each row r: m[r] = max of the scores seen (-inf if none),
// l[r] = Σ exp(s - m[r]), O[r] = Σ exp(s - m[r]) v. exp(x) is computed as 2^(x·log2 e) (exp2 is
// cheaper), with log2 e applied after subtracting the max: s - m is exact for nearby scores,
// so logits of 1e4 lose no more accuracy than their own float32 rounding. Masked scores are exactly
// -inf and their probabilities exactly 0; a row whose every score is masked keeps m = -inf and is
// written as out = 0, lse = -inf. A tile whose keys are all invisible to all rows is never touched.
//
// Variants (options.h) plug into the same loop: the causal rule, the window and varlen sequence
// bounds give each row a key range [begin, end) whose ends grow with the row, so the loop visits
// only keys from the first row's begin to the last row's end, each panel of rows computes only
// the keys between its first row's begin and its last row's end, and only tiles crossing a range
// edge are masked; a custom block_mask can skip more tiles, and so can a bool mask whose block is
// all false (MaskBlock, masks-inl.h; an all-true block needs no mask step). Softcap, ALiBi and
// score_mod are steps on every tile (ScoreSteps); sinks start each row's softmax with m = sink, l =
// 1 (no value); dropout multiplies P after the row sums are taken.
//
// Steps of one tile: ScoreTile → ScoreSteps → ApplyMask (partial tiles only) →
// OnlineSoftmaxUpdate → dropout → AccumulatePV; after the last tile, FinalizeRows (or
// StorePartial when keys are split).

#if defined(SDPA_CPU_FORWARD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_FORWARD_INL_H_
#undef SDPA_CPU_FORWARD_INL_H_
#else
#define SDPA_CPU_FORWARD_INL_H_
#endif

#include <hwy/aligned_allocator.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/interrupt.h"
#include "core/merge.h"
#include "core/problem.h"
#include "core/types.h"
#include "cpu/arena.h"
#include "cpu/bf16_kernels.h"
#include "cpu/dropout-inl.h"
#include "cpu/exp2-inl.h"
#include "cpu/micro_kernels-inl.h"
#include "cpu/pack-inl.h"
#include "cpu/parallel.h"
#include "cpu/partials.h"
#include "cpu/rows-inl.h"
#include "cpu/schedule.h"
#include "cpu/score_steps-inl.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One task: a block of query rows of one (batch, kv head) against a range of keys. S is the
// operands' storage type, T the compute type (core/types.h), Shape the register tile.
template <typename S, typename T, class Shape>
class ForwardTask {
 public:
  using D = hn::ScalableTag<T>;
  using V = hn::Vec<D>;

  ForwardTask(const Problem& p, const Schedule& s, const Task& t, internal::StopFlag& stop,
              Arena<T>& arena, std::vector<RowRef>& rows)
      : p_(p), s_(s), t_(t), stop_(stop), rows_(rows) {
    n_ = static_cast<std::int64_t>(hn::Lanes(d_));
    width_ = Shape::kVecs * n_;
    br_ = t.row_end - t.row_begin;
    rp_ = RoundUp(br_, width_);
    dvp_ = RoundUp(p.v_dim, width_);
    dot_form_ = br_ < n_;
    dp_ = dot_form_ ? RoundUp(p.head_dim, n_) : p.head_dim;
    // K/V rows are read in place when they already are compute-typed, unit-stride rows.
    constexpr bool kInPlace = std::is_same_v<S, T>;
    k_unit_ = kInPlace && p.kv.key_step() == 1 && dp_ == p.head_dim;
    v_unit_ = kInPlace && p.kv.value_step() == 1 && p.v_dim % width_ == 0;
    // A paged source reads in place only the tiles inside one block: the others are gathered.
    k_always_ = k_unit_ && !p.kv.paged();
    v_always_ = v_unit_ && !p.kv.paged();
    // Decode reads the cache's unit-stride rows where they are (whole vectors only), key by key
    // through the K/V source, so a paged cache needs no gathering: always for compute-typed rows,
    // and for a 16-bit or int8 cache when one row reads them (widening in registers). With more
    // rows each would widen the same K/V row again, so the tile is widened once into the pack
    // buffer instead (callgrind, AVX2, 4 rows: 2.3x the instructions of float32, against 1.9x).
    const bool stored = dot_form_ && (kInPlace || br_ <= kMaxStoredRows);
    k_stored_ = stored && p.kv.key_step() == 1 && p.head_dim % n_ == 0;
    v_stored_ = stored && p.kv.value_step() == 1 && p.v_dim % n_ == 0;
    dropout_ = p.dropout_p > 0;
    native_ = NativeBf16(p, dot_form_, rp_);
    const std::int64_t pair_rows = s.kv_tile / 2 + 1;
    arena.Reset(Arena<T>::Footprint(rp_ * dp_) + Arena<T>::Footprint(s.kv_tile * rp_) +
                (native_
                     ? Arena<T>::Footprint(pair_rows * rp_) + Arena<T>::Footprint(pair_rows * dvp_)
                     : 0) +
                Arena<T>::Footprint(rp_ * dvp_) + 3 * Arena<T>::Footprint(rp_) +
                (k_always_ ? 0 : Arena<T>::Footprint(s.kv_tile * dp_)) +
                (v_always_ ? 0 : Arena<T>::Footprint(s.kv_tile * dvp_)) +
                (dropout_ ? Arena<T>::Footprint(s.kv_tile * rp_) : 0));
    qt_ = arena.Take(rp_ * dp_);
    st_ = arena.Take(s.kv_tile * rp_);
    o_ = arena.Take(rp_ * dvp_);
    m_ = arena.Take(rp_);
    l_ = arena.Take(rp_);
    alpha_ = arena.Take(rp_);
    k_pack_ = k_always_ ? nullptr : arena.Take(s.kv_tile * dp_);
    v_pack_ = v_always_ ? nullptr : arena.Take(s.kv_tile * dvp_);
    z_ = dropout_ ? arena.Take(s.kv_tile * rp_) : nullptr;
    if (native_) {  // uint32 pairs in float-sized slots
      qp_ = reinterpret_cast<std::uint32_t*>(qt_);
      pp_ = reinterpret_cast<std::uint32_t*>(arena.Take(pair_rows * rp_));
      vp_ = reinterpret_cast<std::uint32_t*>(arena.Take(pair_rows * dvp_));
    }
  }

  // Whether this task multiplies bfloat16 pairs with vdpbf16ps (cpu/bf16_kernels.h), twice the
  // float32 FMA's multiply-adds per instruction: bfloat16 queries, keys and values, the AVX-512
  // target on a CPU with AVX512-BF16, contiguous unit-stride K/V rows with an even head_dim, and
  // the tiled form (panels of 32 rows).
  static bool NativeBf16(const Problem& p, bool dot_form, std::int64_t rp) {
#if HWY_TARGET == HWY_AVX3
    if constexpr (std::is_same_v<S, bfloat16> && std::is_same_v<T, float>) {
      return !dot_form && rp % 32 == 0 && p.q.dtype == DType::kBFloat16 && !p.kv.paged() &&
             p.kv.key_step() == 1 && p.kv.value_step() == 1 && p.head_dim % 2 == 0 &&
             p.head_dim > 0 && bf16::Available();
    }
#endif
    (void)p, (void)dot_form, (void)rp;
    return false;
  }

  // The tile loop: stream the visible K/V tiles of the task's key range through the rows.
  void Run(Partials<T>* partials) {
    const internal::Sequence seq = p_.Seq(t_.seq);
    StartRows(seq, /*with_sinks=*/partials == nullptr);  // split keys: the merge adds the sink

    // Rows are ordered by position, so both ends of their key ranges grow: keys before the
    // first row's begin and past the last row's end are skipped without a look, and tiles
    // inside every row's range need no mask (TileNeedsMask).
    const std::int64_t start = std::max(t_.kv_begin, rows_[0].begin);
    const std::int64_t stop = std::min(t_.kv_end, rows_[static_cast<std::size_t>(br_ - 1)].end);
    for (std::int64_t j0 = start; j0 < stop; j0 += s_.kv_tile) {
      if (stop_.Stopped()) return;  // the caller throws sdpa::Interrupted
      const std::int64_t keys = std::min(s_.kv_tile, stop - j0);
      const BlockKind kind = ClassifyTile(p_, seq, rows_, s_.group, j0, keys);
      const BlockKind mask = MaskBlock(p_, rows_, j0, keys);
      if (kind == BlockKind::kEmpty || mask == BlockKind::kEmpty) continue;
      Tile(seq, j0, keys, TileNeedsMask(rows_, kind, mask, j0, keys), kind == BlockKind::kPartial,
           mask != BlockKind::kFull);
    }
    if (partials != nullptr) {
      StorePartial(*partials);
    } else {
      FinalizeRows();
    }
  }

  // What happens to one tile of keys [j0, j0 + keys). `partial`: some key is invisible to some
  // row (or a mask applies); `mask_mod`: the custom mask_mod must be evaluated; `mask_values`:
  // the mask may hide some key of the tile.
  void Tile(const internal::Sequence& seq, std::int64_t j0, std::int64_t keys, bool partial,
            bool mask_mod, bool mask_values) {
    if (native_) return NativeTile(seq, j0, keys, partial, mask_mod, mask_values);
    std::int64_t ldk = 0;
    if (dot_form_ && k_stored_) {
      ScoreTileByDots(StoredRows<S>{p_.kv, false, t_.batch, t_.kv_head, j0}, keys);
    } else {
      const T* k = KeyTile(j0, keys, ldk);
      if (dot_form_) {
        ScoreTileByDots(PackedRows<T>{k, ldk}, keys);
      } else {
        ScoreTile<Shape>(d_, qt_, p_.head_dim, rp_, k, ldk, KeysSeen(j0, keys), st_);
      }
    }
    steps_.Apply(d_, j0, keys, st_, rp_, nullptr);
    if (partial) ApplyMask(d_, p_, rows_, j0, keys, st_, rp_, mask_values);
    if (mask_mod) ApplyMaskMod(p_, steps_.Block(j0, keys, rp_), st_);
    OnlineSoftmaxUpdate(KeysSeen(j0, keys));
    if (dropout_) DropProbabilities(seq, j0, keys);
    if constexpr (kIs16Bit<S>) RoundProbabilities(keys);  // (NativeTile rounds as it packs)
    // Decode reads V straight from its storage unless some key is masked or dropped (below).
    if (dot_form_ && v_stored_ && !partial && !dropout_) {
      AccumulatePvByDots(StoredRows<S>{p_.kv, true, t_.batch, t_.kv_head, j0}, KeysSeen(j0, keys));
      return;
    }
    std::int64_t ldv = 0;
    const T* v = ValueTile(j0, keys, ldv);
    // 0 · NaN = NaN: a masked or dropped key whose V row is not finite would poison rows that
    // do not use it, so such tiles take the path that skips zero probabilities.
    if ((partial || dropout_) && !AllFinite(d_, v, ldv, keys, p_.v_dim)) {
      AccumulatePvSkippingZeros(v, ldv, KeysSeen(j0, keys));
    } else {
      AccumulatePv(v, ldv, KeysSeen(j0, keys));
    }
  }

  // The task's rows, their queries and a fresh softmax state (m = -inf, l = 0, O = 0), or the
  // sinks' state when `with_sinks`.
  void StartRows(const internal::Sequence& seq, bool with_sinks) {
    DescribeRows(p_, s_.group, seq, t_.kv_head, t_.row_begin, t_.row_end, rows_);
    steps_.Prepare(p_, seq, rows_, rp_);
    if (dot_form_) {
      PackQueryRows();
      std::fill(st_, st_ + s_.kv_tile * rp_, T(0));  // padded rows stay finite
    } else if (native_) {
      bf16::PackQueryPairs(br_, rp_, p_.head_dim, p_.q.stride[3], QueryRows(), qp_);
    } else {
      PackQueries();
    }
    std::fill(o_, o_ + rp_ * dvp_, T(0));
    std::fill(m_, m_ + rp_, -std::numeric_limits<T>::infinity());
    std::fill(l_, l_ + rp_, T(0));
    if (with_sinks) StartWithSinks();
  }

  // The tile with vdpbf16ps (NativeBf16): Sᵀ of the whole tile from the query pairs and K read in
  // place (then scaled: the queries stay unscaled bfloat16, as rounding a scaled query would add
  // an error), the usual score steps, masks and online softmax over every key of the tile (the
  // per-panel key bands of ScoreTile are not used here, so no P entry is left stale), then P and V
  // as pairs (P rounded to nearest even, as RoundProbabilities does) and P·V.
  void NativeTile(const internal::Sequence& seq, std::int64_t j0, std::int64_t keys, bool partial,
                  bool mask_mod, bool mask_values) {
    if constexpr (std::is_same_v<S, bfloat16> && std::is_same_v<T, float>) {
      const auto all_keys = [keys](std::int64_t, std::int64_t) { return TileKeys{0, keys}; };
      const bfloat16* k = p_.kv.KeyRow<bfloat16>(t_.batch, t_.kv_head, j0);
      for (std::int64_t panel = 0; panel < rp_ / 32; ++panel) {
        bf16::ScorePanel(qp_, p_.head_dim / 2, panel, k, p_.kv.key_ld(), 0, keys, st_, rp_);
      }
      const V scale = hn::Set(d_, static_cast<T>(p_.scale));
      for (std::int64_t e = 0; e < keys * rp_; e += n_) {
        hn::Store(hn::Mul(hn::Load(d_, st_ + e), scale), d_, st_ + e);
      }
      steps_.Apply(d_, j0, keys, st_, rp_, nullptr);
      if (partial) ApplyMask(d_, p_, rows_, j0, keys, st_, rp_, mask_values);
      if (mask_mod) ApplyMaskMod(p_, steps_.Block(j0, keys, rp_), st_);
      OnlineSoftmaxUpdate(all_keys);
      if (dropout_) DropProbabilities(seq, j0, keys);
      const bfloat16* v = p_.kv.ValueRow<bfloat16>(t_.batch, t_.kv_head, j0);
      if ((partial || dropout_) && !AllFiniteBf16(v, p_.kv.value_ld(), keys, p_.v_dim)) {
        std::int64_t ldv = 0;  // rare (NaN/Inf in V): the widened tile and the zero-skipping path
        const T* wide = ValueTile(j0, keys, ldv);
        AccumulatePvSkippingZeros(wide, ldv, all_keys);
        return;
      }
      bf16::PackProbabilityPairs(st_, rp_, keys, pp_);
      bf16::PackValuePairs(v, p_.kv.value_ld(), keys, p_.v_dim, dvp_, vp_);
      for (std::int64_t r = 0; r < br_; r += 6) {
        bf16::AccumulateRows(pp_, rp_, r, std::min<std::int64_t>(6, br_ - r), 0, (keys + 1) / 2,
                             vp_, dvp_, rescaled_ ? alpha_ : nullptr, o_, dvp_);
      }
    } else {
      (void)seq, (void)j0, (void)keys, (void)partial, (void)mask_mod, (void)mask_values;
    }
  }

  // True when keys rows of `width` bfloat16 values, `ld` apart, are all finite (exponent bits
  // not all ones).
  static bool AllFiniteBf16(const bfloat16* x, std::int64_t ld, std::int64_t keys,
                            std::int64_t width) {
    for (std::int64_t c = 0; c < keys; ++c) {
      for (std::int64_t e = 0; e < width; ++e) {
        if ((x[c * ld + e].bits & 0x7F80u) == 0x7F80u) return false;
      }
    }
    return true;
  }

  // The task's query rows as pointers of their storage type, for the pair packing.
  const bfloat16* const* QueryRows() {
    query_rows_.resize(static_cast<std::size_t>(br_));
    for (std::int64_t r = 0; r < br_; ++r) {
      query_rows_[static_cast<std::size_t>(r)] =
          static_cast<const bfloat16*>(rows_[static_cast<std::size_t>(r)].q);
    }
    return query_rows_.data();
  }

  // P rounded to the 16-bit type of V before P·V (pack-inl.h RoundToStorage); the row sums
  // were taken from the unrounded P.
  void RoundProbabilities(std::int64_t keys) {
    for (std::int64_t e = 0; e < keys * rp_; e += n_) {
      hn::Store(RoundToStorage<S>(d_, hn::Load(d_, st_ + e)), d_, st_ + e);
    }
  }

  // P ← P·Z after the row sums were taken (the softmax normalises the undropped P).
  void DropProbabilities(const internal::Sequence& seq, std::int64_t j0, std::int64_t keys) {
    DropoutTile(p_, seq, rows_, j0, keys, z_, rp_);
    for (std::int64_t e = 0; e < keys * rp_; e += n_) {
      hn::Store(hn::Mul(hn::Load(d_, st_ + e), hn::Load(d_, z_ + e)), d_, st_ + e);
    }
  }

  // Sinks join each row's softmax as a score with no value: m = sink, l = exp(sink - m) = 1.
  void StartWithSinks() {
    if (p_.sinks.empty()) return;
    for (std::int64_t r = 0; r < br_; ++r) {
      const double sink =
          p_.sinks[static_cast<std::size_t>(rows_[static_cast<std::size_t>(r)].head)];
      if (sink == -std::numeric_limits<double>::infinity()) continue;
      m_[r] = static_cast<T>(sink);
      l_[r] = T(1);
    }
  }

  // For the tile [j0, j0 + keys): a function giving, for task rows [begin, end), the keys of
  // the tile any of them can see: from the first row's range begin to the last row's range end
  // (both grow with the row). Rows past the task's last row count as the last row. The dot form
  // computes every key of the tile, so its range starts at 0.
  auto KeysSeen(std::int64_t j0, std::int64_t keys) const {
    return [this, j0, keys](std::int64_t begin, std::int64_t end) {
      const std::int64_t last = std::min(end, br_) - 1;
      if (last < begin) return TileKeys{0, 0};
      const RowRef& first_row = rows_[static_cast<std::size_t>(std::min(begin, br_ - 1))];
      const std::int64_t from =
          dot_form_ ? 0 : std::clamp<std::int64_t>(first_row.begin - j0, 0, keys);
      return TileKeys{
          from, std::clamp<std::int64_t>(rows_[static_cast<std::size_t>(last)].end - j0, 0, keys)};
    };
  }

  // Qᵀ panels of the task's rows, pre-multiplied by scale; padded rows are 0.
  void PackQueries() {
    PackPanels(
        br_, rp_, width_, p_.head_dim, p_.q.stride[3], static_cast<T>(p_.scale), p_.q.dtype,
        [&](std::int64_t r) { return rows_[static_cast<std::size_t>(r)].q; }, qt_);
  }

  // Query rows for the dot form: q[r][k] · scale in rows of Dp (zero-padded).
  void PackQueryRows() {
    const T factor = static_cast<T>(p_.scale);
    for (std::int64_t r = 0; r < br_; ++r) {
      T* row = qt_ + r * dp_;
      PackRow(rows_[static_cast<std::size_t>(r)].q, p_.q.dtype, p_.q.stride[3], p_.head_dim, dp_,
              row);
      for (std::int64_t k = 0; k < p_.head_dim; ++k) row[k] *= factor;
    }
  }

  // K rows of the tile with unit element stride, `ld` apart: in place when they are compute-typed
  // rows of one run of the K/V source, else packed (converted, and padded to Dp).
  const T* KeyTile(std::int64_t j0, std::int64_t keys, std::int64_t& ld) {
    if constexpr (std::is_same_v<S, T>) {
      if (k_unit_ && p_.kv.RunEnd(t_.batch, j0) >= j0 + keys) {
        ld = p_.kv.key_ld();
        return p_.kv.KeyRow<S>(t_.batch, t_.kv_head, j0);
      }
    }
    GatherKvRows<S>(p_.kv, false, t_.batch, t_.kv_head, j0, keys, p_.head_dim, dp_, k_pack_);
    ld = dp_;
    return k_pack_;
  }

  // V rows of the tile, Dv a multiple of W: in place, or packed and zero-padded to Dvp.
  const T* ValueTile(std::int64_t j0, std::int64_t keys, std::int64_t& ld) {
    if constexpr (std::is_same_v<S, T>) {
      if (v_unit_ && p_.kv.RunEnd(t_.batch, j0) >= j0 + keys) {
        ld = p_.kv.value_ld();
        return p_.kv.ValueRow<S>(t_.batch, t_.kv_head, j0);
      }
    }
    GatherKvRows<S>(p_.kv, true, t_.batch, t_.kv_head, j0, keys, p_.v_dim, dvp_, v_pack_);
    ld = dvp_;
    return v_pack_;
  }

  // The same Sᵀ for a task with fewer rows than vector lanes (decode): padding the rows to a
  // 2N-wide panel would waste most lanes (31 of 32 for one row on AVX-512), so each score is a
  // dot product over D instead, 4 keys at a time, reduced across lanes. K is read once, in
  // full vectors, which is what the memory-bound decode needs.
  // K rows come as PackedRows or StoredRows (pack-inl.h): a 16-bit or int8 cache is widened in
  // registers as it is read, and an int8 row's scale multiplies its score.
  template <class Rows>
  void ScoreTileByDots(const Rows& k, std::int64_t keys) {
    const auto scaled = [&](std::int64_t c, V sum) {
      T score = hn::GetLane(hn::SumOfLanes(d_, sum));
      if constexpr (Rows::kScaled) score *= static_cast<T>(k.Scale(c));
      return score;
    };
    for (std::int64_t r = 0; r < br_; ++r) {
      const T* q = qt_ + r * dp_;
      std::int64_t c = 0;
      for (; c + 4 <= keys; c += 4) {
        const auto *k0 = k.Row(c), *k1 = k.Row(c + 1), *k2 = k.Row(c + 2), *k3 = k.Row(c + 3);
        V a0 = hn::Zero(d_), a1 = hn::Zero(d_), a2 = hn::Zero(d_), a3 = hn::Zero(d_);
        for (std::int64_t x = 0; x < dp_; x += n_) {
          const V qv = hn::Load(d_, q + x);
          a0 = hn::MulAdd(qv, Rows::Load(d_, k0 + x), a0);
          a1 = hn::MulAdd(qv, Rows::Load(d_, k1 + x), a1);
          a2 = hn::MulAdd(qv, Rows::Load(d_, k2 + x), a2);
          a3 = hn::MulAdd(qv, Rows::Load(d_, k3 + x), a3);
        }
        st_[c * rp_ + r] = scaled(c, a0);
        st_[(c + 1) * rp_ + r] = scaled(c + 1, a1);
        st_[(c + 2) * rp_ + r] = scaled(c + 2, a2);
        st_[(c + 3) * rp_ + r] = scaled(c + 3, a3);
      }
      for (; c < keys; ++c) {
        const auto* row = k.Row(c);
        V a = hn::Zero(d_);
        for (std::int64_t x = 0; x < dp_; x += n_) {
          a = hn::MulAdd(hn::Load(d_, q + x), Rows::Load(d_, row + x), a);
        }
        st_[c * rp_ + r] = scaled(c, a);
      }
    }
  }

  // Online softmax, lane-wise over rows: m_new = max(m, max_c Sᵀ[c]); α = exp(m - m_new);
  // Sᵀ[c] ← P = exp(Sᵀ[c] - m_new) (exactly 0 where Sᵀ = -inf: Exp2(-inf) = 0); l ← α·l + Σ_c P.
  // Lazy rescaling (FlashAttention-4): where m is finite and the tile raises it by at most
  // 2^lazy_rescale (in base 2), m is kept stale, so α = 1 and P <= 2^lazy_rescale; exact, since l
  // and O carry the same stale m to FinalizeRows' division and to lse = m + ln l. When no row of
  // the task moved its m, AccumulatePv skips the α multiply.
  // Rows with no visible score yet keep m = -inf and subtract 0 instead (avoiding -inf - -inf).
  // Keys are limited per vector of rows by keys_for, widened by a micro-tile of rows on both
  // sides so that every P entry AccumulatePv reads is written.
  template <class KeysFor>
  void OnlineSoftmaxUpdate(const KeysFor& keys_for) {
    if (s_.exp2 == Exp2Form::kEstrin) {
      SoftmaxRows<Exp2Form::kEstrin>(keys_for);
    } else {
      SoftmaxRows<Exp2Form::kHorner>(keys_for);
    }
  }

  template <Exp2Form kForm, class KeysFor>
  void SoftmaxRows(const KeysFor& keys_for) {
    const V neg_inf = hn::Set(d_, -std::numeric_limits<T>::infinity());
    const V log2e = hn::Set(d_, static_cast<T>(kLog2e));
    const V threshold = hn::Set(d_, static_cast<T>(s_.lazy_rescale));
    const bool lazy = s_.lazy_rescale > 0;
    T* const st = st_;
    const std::int64_t rp = rp_;
    rescaled_ = false;
    for (std::int64_t x = 0; x < br_; x += n_) {
      const TileKeys range =
          keys_for(std::max<std::int64_t>(0, x - Shape::kRows + 1), x + n_ + Shape::kRows - 1);
      // Pass 1: the tile's max, in four chains (one chain waits 4 cycles per key for vmaxps).
      V max0 = neg_inf, max1 = neg_inf, max2 = neg_inf, max3 = neg_inf;
      std::int64_t c = range.from;
      for (; c + 4 <= range.to; c += 4) {
        max0 = hn::Max(max0, hn::Load(d_, st + c * rp + x));
        max1 = hn::Max(max1, hn::Load(d_, st + (c + 1) * rp + x));
        max2 = hn::Max(max2, hn::Load(d_, st + (c + 2) * rp + x));
        max3 = hn::Max(max3, hn::Load(d_, st + (c + 3) * rp + x));
      }
      for (; c < range.to; ++c) max0 = hn::Max(max0, hn::Load(d_, st + c * rp + x));
      const V m_old = hn::Load(d_, m_ + x);
      V m_new = hn::Max(m_old, hn::Max(hn::Max(max0, max1), hn::Max(max2, max3)));
      if (lazy) {
        const auto keep = hn::And(hn::Ne(m_old, neg_inf),
                                  hn::Le(hn::Mul(hn::Sub(m_new, m_old), log2e), threshold));
        m_new = hn::IfThenElse(keep, m_old, m_new);
      }
      rescaled_ = rescaled_ || !hn::AllTrue(d_, hn::Eq(m_new, m_old));
      const V shift = hn::IfThenZeroElse(hn::Eq(m_new, neg_inf), m_new);
      const V alpha = Exp2<kForm>(d_, hn::Mul(hn::Sub(m_old, shift), log2e));
      // Pass 2: P, stored over S, and its row sums.
      V sum0 = hn::Zero(d_), sum1 = hn::Zero(d_);
      c = range.from;
      for (; c + 2 <= range.to; c += 2) {
        T* s0 = st + c * rp + x;
        const V p0 = Exp2<kForm>(d_, hn::Mul(hn::Sub(hn::Load(d_, s0), shift), log2e));
        const V p1 = Exp2<kForm>(d_, hn::Mul(hn::Sub(hn::Load(d_, s0 + rp), shift), log2e));
        hn::Store(p0, d_, s0);
        hn::Store(p1, d_, s0 + rp);
        sum0 = hn::Add(sum0, p0);
        sum1 = hn::Add(sum1, p1);
      }
      if (c < range.to) {
        T* s0 = st + c * rp + x;
        const V p0 = Exp2<kForm>(d_, hn::Mul(hn::Sub(hn::Load(d_, s0), shift), log2e));
        hn::Store(p0, d_, s0);
        sum0 = hn::Add(sum0, p0);
      }
      hn::Store(m_new, d_, m_ + x);
      hn::Store(alpha, d_, alpha_ + x);
      hn::Store(hn::MulAdd(hn::Load(d_, l_ + x), alpha, hn::Add(sum0, sum1)), d_, l_ + x);
    }
  }

  // O[r] = α[r]·O[r] + Σ_c P[r][c]·V[c] over the task's rows, in micro-tiles of Shape::kRows rows
  // × kVecs·N (or, for the few rows of the dot form, one row at a time across up to 8 vectors of
  // Dv).
  template <class KeysFor>
  void AccumulatePv(const T* v, std::int64_t ldv, const KeysFor& keys_for) {
    if (dot_form_) {
      AccumulatePvByDots(PackedRows<T>{v, ldv}, keys_for);
      return;
    }
    for (std::int64_t col = 0; col < p_.v_dim; col += width_) {
      for (std::int64_t r = 0; r < br_; r += Shape::kRows) {
        const TileKeys range = keys_for(r, r + Shape::kRows);
        // Zero keys still apply the α rescale.
        const std::int64_t keys = std::max<std::int64_t>(0, range.to - range.from);
        WithMicroRows<Shape>(br_ - r, [&](auto rows) {
          MulAddMicroTile<decltype(rows)::value, Shape::kVecs, true>(
              d_, st_ + range.from * rp_ + r, 1, rp_, keys, v + range.from * ldv + col, ldv,
              rescaled_ ? alpha_ + r : nullptr, o_ + r * dvp_ + col, dvp_);
        });
      }
    }
  }

  // The dot form's P·V: one row at a time across up to 8 vectors of Dv, V rows as PackedRows or
  // StoredRows (pack-inl.h).
  template <class Rows, class KeysFor>
  void AccumulatePvByDots(const Rows& v, const KeysFor& keys_for) {
    const std::int64_t keys = keys_for(0, br_).to;  // from = 0 in the dot form
    const std::int64_t vectors = (p_.v_dim + n_ - 1) / n_;
    for (std::int64_t r = 0; r < br_; ++r) {
      for (std::int64_t x = 0; x < vectors; x += 8) {
        WithRowVectors(vectors - x, [&](auto count) {
          PvRowKernel<decltype(count)::value>(d_, st_ + r, rp_, keys, v, x * n_, alpha_[r],
                                              o_ + r * dvp_ + x * n_);
        });
      }
    }
  }

  // Same as AccumulatePv, skipping zero probabilities, for tiles where a masked V row is not
  // finite. Rare (NaN/Inf in V), so plainly written.
  template <class KeysFor>
  void AccumulatePvSkippingZeros(const T* v, std::int64_t ldv, const KeysFor& keys_for) {
    for (std::int64_t r = 0; r < br_; ++r) {
      const TileKeys range = keys_for(r, r + 1);
      T* o = o_ + r * dvp_;
      const V alpha = hn::Set(d_, alpha_[r]);
      for (std::int64_t x = 0; x < dvp_; x += n_)
        hn::Store(hn::Mul(hn::Load(d_, o + x), alpha), d_, o + x);
      for (std::int64_t c = range.from; c < range.to; ++c) {
        const T prob = st_[c * rp_ + r];
        if (prob == T(0)) continue;
        for (std::int64_t x = 0; x < p_.v_dim; x += n_) {
          hn::Store(
              hn::MulAdd(hn::Set(d_, prob), hn::LoadU(d_, v + c * ldv + x), hn::Load(d_, o + x)),
              d_, o + x);
        }
      }
    }
  }

  // out[r] = O[r] / l[r]; lse[r] = m[r] + ln l[r]. Rows that never saw a visible score
  // (m = -inf) get out = 0 and lse = -inf.
  void FinalizeRows() {
    for (std::int64_t r = 0; r < br_; ++r) {
      const RowRef& row = rows_[static_cast<std::size_t>(r)];
      const T m = m_[r], l = l_[r];
      const bool empty = m == -std::numeric_limits<T>::infinity();
      const T inv = empty ? T(0) : T(1) / l;
      StoreRow(o_ + r * dvp_, inv, p_.v_dim, RowOf(p_.out, t_.batch, row.head, row.pos),
               p_.out.dtype, p_.out.stride[3]);
      if (p_.lse.data != nullptr) {
        *internal::As<T>(p_.lse).Row(t_.batch, row.head, row.pos) =
            empty ? m : static_cast<T>(static_cast<double>(m) + std::log(static_cast<double>(l)));
      }
    }
  }

  // Keeps (O, m, l) of this key chunk for the merge.
  void StorePartial(Partials<T>& partials) {
    for (std::int64_t r = 0; r < br_; ++r) {
      const std::int64_t row = rows_[static_cast<std::size_t>(r)].global_row;
      std::copy(o_ + r * dvp_, o_ + r * dvp_ + p_.v_dim, partials.O(t_.split, row));
      *partials.M(t_.split, row) = m_[r];
      *partials.L(t_.split, row) = l_[r];
    }
  }

  const Problem& p_;
  const Schedule& s_;
  const Task& t_;
  internal::StopFlag& stop_;
  std::vector<RowRef>& rows_;
  ScoreSteps<T> steps_;
  D d_;
  std::int64_t n_ = 0, width_ = 0, br_ = 0, rp_ = 0, dp_ = 0, dvp_ = 0;
  bool dot_form_ = false;  // few rows: scores as dot products (ScoreTileByDots)
  bool k_unit_ = true, v_unit_ = true, dropout_ = false;
  bool rescaled_ = true;  // some row's m moved in the last OnlineSoftmaxUpdate (α != 1)
  bool native_ = false;   // vdpbf16ps products (NativeBf16)
  std::uint32_t *qp_ = nullptr, *pp_ = nullptr, *vp_ = nullptr;  // pairs (bf16_kernels.h)
  std::vector<const bfloat16*> query_rows_;
  bool k_always_ = true, v_always_ = true;    // every tile is read in place (no pack buffer)
  bool k_stored_ = false, v_stored_ = false;  // dot form reads 16-bit / int8 rows directly
  static constexpr std::int64_t kMaxStoredRows = 1;
  T *qt_ = nullptr, *st_ = nullptr, *o_ = nullptr, *m_ = nullptr, *l_ = nullptr, *alpha_ = nullptr,
    *k_pack_ = nullptr, *v_pack_ = nullptr, *z_ = nullptr;
};

// Combines the key chunks of every row in split order with the log-sum-exp merge of
// core/merge.h, in double: chunk s is the partial lse_s = m_s + ln l_s, out_s = O_s / l_s (an
// unwritten or fully masked chunk has m = -inf: empty), and the row's sink joins as one more
// partial with lse = sink and out = 0.
template <typename T>
void MergePartials(const Problem& p, const Schedule& s, const Partials<T>& partials) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  const std::int64_t rows = p.batch * p.heads * p.q_len;
  const std::int64_t per_task = 256;
  const std::int64_t parts = s.kv_splits + (p.sinks.empty() ? 0 : 1);
  ParallelFor((rows + per_task - 1) / per_task, s.threads, [&](std::int64_t task, int) {
    std::vector<double> acc(static_cast<std::size_t>(p.v_dim));
    const std::int64_t end = std::min(rows, (task + 1) * per_task);
    for (std::int64_t row = task * per_task; row < end; ++row) {
      const std::int64_t i = row % p.q_len, h = (row / p.q_len) % p.heads,
                         b = row / (p.q_len * p.heads);
      const auto part_lse = [&](std::int64_t split) {
        if (split == s.kv_splits) return static_cast<double>(p.sinks[static_cast<std::size_t>(h)]);
        const double m = static_cast<double>(*partials.M(split, row));
        return m == kNegInf ? m : m + std::log(static_cast<double>(*partials.L(split, row)));
      };
      const auto add_part = [&](std::int64_t split, double w, double* sum) {
        if (split == s.kv_splits) return;  // the sink has no value
        const T* o = partials.O(split, row);
        const double factor = w / static_cast<double>(*partials.L(split, row));
        for (std::int64_t x = 0; x < p.v_dim; ++x) sum[x] += factor * static_cast<double>(o[x]);
      };
      const double lse = internal::MergeRow(parts, p.v_dim, add_part, part_lse, acc.data());
      StoreRow(acc.data(), 1.0, p.v_dim, RowOf(p.out, b, h, i), p.out.dtype, p.out.stride[3]);
      if (p.lse.data != nullptr) *internal::As<T>(p.lse).Row(b, h, i) = static_cast<T>(lse);
    }
  });
}

template <typename S, typename T>
void RunForwardTyped(const Problem& p, const Schedule& s, internal::StopFlag& stop) {
  Partials<T> partials;
  if (s.split()) partials.Allocate(s.kv_splits, p.batch * p.heads * p.q_len, p.v_dim);
  WithShape<T>(s.micro_rows, s.micro_vectors, [&](auto shape) {
    ParallelFor(static_cast<std::int64_t>(s.tasks.size()), s.threads, [&](std::int64_t index, int) {
      static thread_local Arena<T> arena;
      static thread_local std::vector<RowRef> rows;
      ForwardTask<S, T, decltype(shape)> task(p, s, s.tasks[static_cast<std::size_t>(index)], stop,
                                              arena, rows);
      task.Run(s.split() ? &partials : nullptr);
    });
  });
  stop.ThrowIfStopped();
  if (s.split()) MergePartials(p, s, partials);
}

// y[i] = Exp2(x[i]) for n values (whole vectors plus a scalar tail), so tests can measure the
// accuracy of exactly the exp2 the kernel uses, on every target.
template <Exp2Form kForm, typename T>
void Exp2Array(const T* x, T* y, std::int64_t n) {
  const hn::ScalableTag<T> d;
  const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(d));
  std::int64_t i = 0;
  for (; i + lanes <= n; i += lanes) hn::StoreU(Exp2<kForm>(d, hn::LoadU(d, x + i)), d, y + i);
  const hn::CappedTag<T, 1> d1;
  for (; i < n; ++i) hn::StoreU(Exp2<kForm>(d1, hn::LoadU(d1, x + i)), d1, y + i);
}
inline void Exp2ArrayF32(const float* x, float* y, std::int64_t n, Exp2Form form) {
  if (form == Exp2Form::kEstrin) {
    Exp2Array<Exp2Form::kEstrin>(x, y, n);
  } else {
    Exp2Array<Exp2Form::kHorner>(x, y, n);
  }
}
inline void Exp2ArrayF64(const double* x, double* y, std::int64_t n) {
  Exp2Array<Exp2Form::kHorner>(x, y, n);
}

// The register tile RunForward runs for a requested shape, as 16·rows + vectors (for tests).
inline int DispatchedShapeF32(int rows, int vectors) {
  return DispatchedShape<float>(rows, vectors);
}
inline int DispatchedShapeF64(int rows, int vectors) {
  return DispatchedShape<double>(rows, vectors);
}

// The per-target entry point (HWY_EXPORT-ed by forward.cc).
inline void RunForward(const Problem& p, const Schedule& s, internal::StopFlag& stop) {
  internal::WithTypes(p, [&](auto types) {
    using Types = decltype(types);
    RunForwardTyped<typename Types::Storage, typename Types::Compute>(p, s, stop);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_FORWARD_INL_H_

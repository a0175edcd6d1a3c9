// Custom score and mask functions (FlexAttention's idea, Dong et al. 2024), compiled into the
// engine's tile loop.
//
//   score_mod(score, b, h, i, j) -> new score     applied after scaling, softcap and ALiBi
//   mask_mod(b, h, i, j)         -> bool          false removes key j from query row i
//   block_mask(b, h, q_begin, q_end, k_begin, k_end) -> BlockKind   optional hint
//
// b is the batch index (the sequence with varlen), h the query head, i and j positions within
// the sequence. The engine hands a whole tile of scores to one instantiation of the loops below,
// compiled in the caller's translation unit, so the callables are inlined per element and cost
// one indirect call per tile. With a block_mask, tiles it calls kEmpty are skipped without
// computing a score (the cost then scales with the visible part) and kFull tiles skip mask_mod.
//
// Backward: the gradient needs d score_mod / d score. Write score_mod as a generic lambda
// (`[](auto s, auto b, auto h, auto i, auto j) { ... }`); it is then also evaluated on
// sdpa::Dual numbers, which carry the derivative (use unqualified tanh/exp/log/sqrt/abs so the
// Dual overloads below are found). A score_mod that cannot take a Dual works in the forward;
// the backward then throws sdpa::Error.
//
//   auto doc = sdpa::MakeCustom(sdpa::NoScoreMod{},
//                               [&](auto b, auto h, auto i, auto j) { return id[i] == id[j]; });
//   sdpa::Tensor out = sdpa::Attention(q, k, v, doc.With(options));   // doc must outlive the call
//   sdpa::Tensor out2 = sdpa::CustomAttention(q, k, v, score_mod, mask_mod, options);
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "sdpa/attention.h"
#include "sdpa/options.h"
#include "sdpa/tensor.h"

namespace sdpa {

// A block of scores: rows × keys, element (r, c) at scores[r·row_stride + c·key_stride].
struct ScoreBlock {
  std::int64_t batch = 0;              // batch index, or the sequence with varlen
  const std::int64_t* head = nullptr;  // query head of each row
  const std::int64_t* pos = nullptr;   // query position of each row, within its sequence
  std::int64_t rows = 0;
  std::int64_t key_begin = 0;  // position of the first key, within its sequence
  std::int64_t keys = 0;
  std::int64_t row_stride = 0, key_stride = 0;
};

// What a block_mask says about every (i, j) of a block of query rows and keys.
enum class BlockKind { kEmpty, kPartial, kFull };

// The type-erased form the engine calls (built by Custom below; not meant to be filled by hand).
struct CustomScore {
  const void* context = nullptr;
  // score ← score_mod(score); with `derivative` non-null, also derivative ·= d score_mod / d score
  // (the caller starts it at 1, or at the derivative of the steps before).
  void (*score_f32)(const void* context, const ScoreBlock& block, float* scores,
                    float* derivative) = nullptr;
  void (*score_f64)(const void* context, const ScoreBlock& block, double* scores,
                    double* derivative) = nullptr;
  bool differentiable = false;  // score_mod accepts Dual (needed by the backward)
  // score ← -inf where mask_mod is false.
  void (*mask_f32)(const void* context, const ScoreBlock& block, float* scores) = nullptr;
  void (*mask_f64)(const void* context, const ScoreBlock& block, double* scores) = nullptr;
  BlockKind (*block)(const void* context, std::int64_t b, std::int64_t h, std::int64_t q_begin,
                     std::int64_t q_end, std::int64_t k_begin, std::int64_t k_end) = nullptr;
};

// A number with its derivative with respect to the score (forward-mode differentiation).
template <typename T>
struct Dual {
  T value = 0, grad = 0;
};
template <typename T>
Dual<T> operator+(Dual<T> a, Dual<T> b) {
  return {a.value + b.value, a.grad + b.grad};
}
template <typename T>
Dual<T> operator-(Dual<T> a, Dual<T> b) {
  return {a.value - b.value, a.grad - b.grad};
}
template <typename T>
Dual<T> operator*(Dual<T> a, Dual<T> b) {
  return {a.value * b.value, a.grad * b.value + a.value * b.grad};
}
template <typename T>
Dual<T> operator/(Dual<T> a, Dual<T> b) {
  return {a.value / b.value, (a.grad * b.value - a.value * b.grad) / (b.value * b.value)};
}
template <typename T>
Dual<T> operator-(Dual<T> a) {
  return {-a.value, -a.grad};
}
// Mixed with plain numbers (positions, constants): those have derivative 0.
#define SDPA_DUAL_MIXED(op)                                                               \
  template <typename T, typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>> \
  Dual<T> operator op(Dual<T> a, S b) {                                                   \
    return a op Dual<T>{static_cast<T>(b), T(0)};                                         \
  }                                                                                       \
  template <typename T, typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>> \
  Dual<T> operator op(S a, Dual<T> b) {                                                   \
    return Dual<T>{static_cast<T>(a), T(0)} op b;                                         \
  }
SDPA_DUAL_MIXED(+)
SDPA_DUAL_MIXED(-)
SDPA_DUAL_MIXED(*)
SDPA_DUAL_MIXED(/)
#undef SDPA_DUAL_MIXED
template <typename T>
Dual<T> tanh(Dual<T> a) {
  const T t = std::tanh(a.value);
  return {t, a.grad * (T(1) - t * t)};
}
template <typename T>
Dual<T> exp(Dual<T> a) {
  const T e = std::exp(a.value);
  return {e, a.grad * e};
}
template <typename T>
Dual<T> log(Dual<T> a) {
  return {std::log(a.value), a.grad / a.value};
}
template <typename T>
Dual<T> sqrt(Dual<T> a) {
  const T r = std::sqrt(a.value);
  return {r, a.grad / (T(2) * r)};
}
template <typename T>
Dual<T> abs(Dual<T> a) {
  return {std::abs(a.value), a.value < T(0) ? -a.grad : a.grad};
}

struct NoScoreMod {};
struct NoMaskMod {};
struct NoBlockMask {};

// Owns the callables and the type-erased CustomScore pointing at them. Not copyable or movable
// (the CustomScore points into it); must outlive every call made with With(options).
template <class ScoreMod, class MaskMod = NoMaskMod, class BlockMask = NoBlockMask>
class Custom {
 public:
  explicit Custom(ScoreMod score_mod, MaskMod mask_mod = {}, BlockMask block_mask = {})
      : score_mod_(std::move(score_mod)),
        mask_mod_(std::move(mask_mod)),
        block_mask_(std::move(block_mask)) {
    erased_.context = this;
    if constexpr (!std::is_same_v<ScoreMod, NoScoreMod>) {
      erased_.score_f32 = &ApplyScore<float>;
      erased_.score_f64 = &ApplyScore<double>;
      erased_.differentiable = kDifferentiable;
    }
    if constexpr (!std::is_same_v<MaskMod, NoMaskMod>) {
      erased_.mask_f32 = &ApplyMask<float>;
      erased_.mask_f64 = &ApplyMask<double>;
    }
    if constexpr (!std::is_same_v<BlockMask, NoBlockMask>) erased_.block = &Classify;
  }
  Custom(const Custom&) = delete;
  Custom& operator=(const Custom&) = delete;

  // `options` with these functions attached.
  Options With(Options options) const {
    options.custom = &erased_;
    return options;
  }
  const CustomScore& erased() const { return erased_; }

 private:
  using Index = std::int64_t;
  static constexpr bool kDifferentiable =
      std::is_invocable_v<const ScoreMod&, Dual<float>, Index, Index, Index, Index> &&
      std::is_invocable_v<const ScoreMod&, Dual<double>, Index, Index, Index, Index>;

  // Calls f(args...) where a parameter may be narrower than its argument (a score_mod taking
  // float runs on float64 problems too, a mask_mod may take int positions): the caller chose
  // that type, so no warning.
  template <class F, class... Args>
  static auto CallNarrowing(const F& f, const Args&... args) {
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wfloat-conversion"
#endif
    return f(args...);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
  }

  // The per-element loop the caller's compiler inlines score_mod into.
  template <typename T>
  static void ApplyScore(const void* context, const ScoreBlock& b, T* scores, T* derivative) {
    const auto& self = *static_cast<const Custom*>(context);
    // Keys outer, rows inner: the engine's tiles are key-major (row_stride 1), so the inner loop
    // walks contiguous scores and the compiler may vectorise it.
    for (Index c = 0; c < b.keys; ++c) {
      const Index j = b.key_begin + c;
      for (Index r = 0; r < b.rows; ++r) {
        const Index at = r * b.row_stride + c * b.key_stride;
        if constexpr (kDifferentiable) {
          if (derivative != nullptr) {
            const Dual<T> out =
                self.score_mod_(Dual<T>{scores[at], T(1)}, b.batch, b.head[r], b.pos[r], j);
            scores[at] = out.value;
            derivative[at] *= out.grad;
            continue;
          }
        }
        scores[at] = static_cast<T>(
            CallNarrowing(self.score_mod_, scores[at], b.batch, b.head[r], b.pos[r], j));
      }
    }
  }
  template <typename T>
  static void ApplyMask(const void* context, const ScoreBlock& b, T* scores) {
    const auto& self = *static_cast<const Custom*>(context);
    for (Index c = 0; c < b.keys; ++c) {  // keys outer, as in ApplyScore
      const Index j = b.key_begin + c;
      for (Index r = 0; r < b.rows; ++r) {
        if (!CallNarrowing(self.mask_mod_, b.batch, b.head[r], b.pos[r], j)) {
          scores[r * b.row_stride + c * b.key_stride] = -std::numeric_limits<T>::infinity();
        }
      }
    }
  }
  static BlockKind Classify(const void* context, Index b, Index h, Index q_begin, Index q_end,
                            Index k_begin, Index k_end) {
    return CallNarrowing(static_cast<const Custom*>(context)->block_mask_, b, h, q_begin, q_end,
                         k_begin, k_end);
  }

  ScoreMod score_mod_;
  MaskMod mask_mod_;
  BlockMask block_mask_;
  CustomScore erased_;
};

template <class ScoreMod, class MaskMod = NoMaskMod, class BlockMask = NoBlockMask>
Custom<ScoreMod, MaskMod, BlockMask> MakeCustom(ScoreMod score_mod, MaskMod mask_mod = {},
                                                BlockMask block_mask = {}) {
  return Custom<ScoreMod, MaskMod, BlockMask>(std::move(score_mod), std::move(mask_mod),
                                              std::move(block_mask));
}

// One-shot forms: attention with score_mod / mask_mod (pass NoScoreMod{} or NoMaskMod{} to omit
// one) and an optional block_mask.
template <class ScoreMod, class MaskMod, class BlockMask = NoBlockMask>
Tensor CustomAttention(const TensorView& query, const TensorView& key, const TensorView& value,
                       ScoreMod score_mod, MaskMod mask_mod, const Options& options = {},
                       BlockMask block_mask = {}) {
  const Custom<ScoreMod, MaskMod, BlockMask> custom(std::move(score_mod), std::move(mask_mod),
                                                    std::move(block_mask));
  return Attention(query, key, value, custom.With(options));
}

}  // namespace sdpa

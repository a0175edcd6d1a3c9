// The backward of every attention variant (issue 7): sliding window, ALiBi, softcap, sinks (with
// grad_sinks), packed varlen, dropout and custom score_mod / mask_mod, alone and with causal
// (both alignments), bool and additive masks and GQA/MQA, on each backend.
//
// 1. Finite differences in float64. For the loss L = Σ out ∘ W (W random, so ∂L/∂out = W is the
//    grad_out), each element x of q, k, v and options.sinks gets the central difference
//    (L(x + ε) - L(x - ε)) / 2ε with ε = 1e-6, where out comes from the float64 reference forward
//    (kReference), so the check is that the backward is the derivative of the forward with the
//    same options. Dropout with a fixed seed is a fixed function of q, k, v, so it is checked the
//    same way. Error of the difference, as in backward_gradcheck_test.cc: truncation
//    ε²·|L'''|/6 plus the rounding of the float64 outputs, (elements touched)·1e-16 / 2ε ≈ 1e-10
//    (the largest difference seen is 2.6e-10); the tolerance |analytic - fd| <= 1e-8 + 1e-6·|fd|
//    is far below a real error: the backward given sinks or softcap off by 0.1%, or the dropout
//    seed + 1, fails every case that uses them.
// 2. float32: the CPU backend within the float32 bound of tests/cpu/backward_test.cc (3x the
//    error of a plain float32 implementation, PlainBackward<float> below, plus a floor of a few
//    ulp, here grown with |lse| and measured on the sums' terms; see WithinFloat32Bound) of the
//    float64 reference, on random combinations of variants.
// 3. Bitwise identical gradients for 1, 2 and 3 threads with dropout, window and varlen.
// 4. The API around them: a score_mod that cannot take sdpa::Dual is refused by the backward;
//    grad_sinks is [heads] with sinks and empty without.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "api/validate.h"
#include "core/dropout.h"
#include "cpu/schedule.h"
#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/finite_differences.h"
#include "testing/harness.h"
#include "testing/naive_attention.h"
#include "testing/problems.h"
#include "testing/tensors.h"

namespace {

using sdpa::Backend;
using sdpa::Causal;
using sdpa_test::Array;
using sdpa_test::Buffer;
using sdpa_test::MaskType;
using sdpa_test::NaiveProblem;
using sdpa_test::Tolerance;

constexpr double kEpsilon = 1e-6;
constexpr Tolerance kFiniteDifference{1e-8, 1e-6};
constexpr double kInf = std::numeric_limits<double>::infinity();

// ---------------------------------------------------------------------------------------------
// Custom score and mask functions, written as generic lambdas so the backward can differentiate
// them on sdpa::Dual. Each Custom lives for the whole test program (options point at it).

// Gemma's softcap at 0.7, by hand.
const sdpa::CustomScore& TanhScoreMod() {
  static const auto custom = sdpa::MakeCustom([](auto s, auto, auto, auto, auto) {
    using std::tanh;
    return 0.7 * tanh(s / 0.7);
  });
  return custom.erased();
}

// A bias quadratic in the distance, per head, plus a term quadratic in the score itself
// (d/ds = 1 + 0.2·s), so the derivative the backward needs is not constant.
const sdpa::CustomScore& QuadraticScoreMod() {
  static const auto custom = sdpa::MakeCustom([](auto s, auto, auto h, auto i, auto j) {
    const double distance = static_cast<double>(i - j);
    return s + 0.1 * s * s - 0.05 * static_cast<double>(h + 1) * distance * distance;
  });
  return custom.erased();
}

// Removes about a quarter of the keys, differently per batch entry (sequence) and head.
const sdpa::CustomScore& MaskMod() {
  static const auto custom =
      sdpa::MakeCustom(sdpa::NoScoreMod{},
                       [](auto b, auto h, auto i, auto j) { return (i + 2 * j + h + b) % 4 != 1; });
  return custom.erased();
}

// The tanh score_mod and the mask_mod together.
const sdpa::CustomScore& TanhAndMaskMod() {
  static const auto custom = sdpa::MakeCustom(
      [](auto s, auto, auto, auto, auto) {
        using std::tanh;
        return 0.7 * tanh(s / 0.7);
      },
      [](auto b, auto h, auto i, auto j) { return (i + 2 * j + h + b) % 4 != 1; });
  return custom.erased();
}

// ---------------------------------------------------------------------------------------------
// Cases: one combination of variants on one shape.

struct VariantCase {
  std::string name;
  std::int64_t batch = 2, heads = 2, kv_heads = 2, q_len = 4, kv_len = 6, head_dim = 3, v_dim = 2;
  Causal causal = Causal::kNone;
  MaskType mask_type = MaskType::kNone;
  std::optional<sdpa::Window> window;
  bool alibi = false;
  std::optional<double> softcap;
  bool sinks = false;
  std::vector<std::int64_t> cu_seqlens_q, cu_seqlens_k;  // empty: no varlen
  double dropout_p = 0;
  const sdpa::CustomScore* custom = nullptr;
  double query_range = 1.5;  // q uniform in [-query_range, query_range)
  std::uint64_t seed = 0;
};

// Per-head values; ALiBi slopes of both signs, and one head (2) without a sink.
const std::vector<double> kSlopes = {0.5, -0.3, 0.125, 1.0};
const std::vector<double> kSinks = {0.3, 1.2, -kInf, -0.7};

std::vector<double> PerHead(const std::vector<double>& values, std::int64_t heads) {
  return std::vector<double>(values.begin(), values.begin() + heads);
}

sdpa::Options OptionsFor(const VariantCase& c, Backend backend) {
  sdpa::Options o;
  o.backend = backend;
  o.causal = c.causal;
  o.window = c.window;
  if (c.alibi) o.alibi_slopes = PerHead(kSlopes, c.heads);
  o.softcap = c.softcap;
  if (c.sinks) o.sinks = PerHead(kSinks, c.heads);
  o.cu_seqlens_q = c.cu_seqlens_q;
  o.cu_seqlens_k = c.cu_seqlens_k;
  o.dropout_p = c.dropout_p;
  o.seed = 1234 + c.seed;
  o.custom = c.custom;
  return o;
}

// Random q, k, v and, when asked for, a full [B, H, Lq, Lkv] mask keeping 75% of the keys, with
// query row 1 of batch 0, head 0 seeing no key.
NaiveProblem MakeProblem(const VariantCase& c) {
  NaiveProblem p;
  p.query = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, c.seed, -c.query_range,
                           c.query_range);
  p.key = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, c.seed + 1, -1.5, 1.5);
  p.value = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.v_dim}, c.seed + 2);
  p.scale = sdpa_test::DefaultScale(c.head_dim);
  p.causal = c.causal;
  p.mask_type = c.mask_type;
  if (c.mask_type == MaskType::kNone) return p;
  sdpa_test::Random random(c.seed + 3);
  p.mask = Array({c.batch, c.heads, c.q_len, c.kv_len});
  for (double& x : p.mask.values) {
    const bool keep = random.Bernoulli(0.75);
    if (c.mask_type == MaskType::kBool) {
      x = keep ? 1.0 : 0.0;
    } else {
      x = keep ? random.Uniform(-2, 1) : -kInf;
    }
  }
  if (c.q_len > 1) {
    for (std::int64_t j = 0; j < c.kv_len; ++j) {
      p.mask({0, 0, 1, j}) = c.mask_type == MaskType::kBool ? 0.0 : -kInf;
    }
  }
  return p;
}

Array GradOut(const VariantCase& c) {
  return Array::Uniform({c.batch, c.heads, c.q_len, c.v_dim}, c.seed + 7);
}

// ---------------------------------------------------------------------------------------------
// Running the library.

struct Grads {
  Array query, key, value;
  Array sinks;  // [H] with sinks, else empty
};

// The mask of `p` as a view of `bool_mask` or `additive_mask`, in options.mask.
template <typename T>
void AttachMask(const NaiveProblem& p, sdpa::Options& options,
                std::optional<Buffer<bool>>& bool_mask, std::optional<Buffer<T>>& additive_mask) {
  if (p.mask_type == MaskType::kBool) {
    options.mask = bool_mask.emplace(p.mask).view();
  } else if (p.mask_type == MaskType::kAdditive) {
    options.mask = additive_mask.emplace(p.mask).view();
  } else {
    options.mask.reset();
  }
}

// sdpa::Backward in element type T on `p` (mask from `p`, everything else from `options`), with
// out and lse from sdpa::Forward with the same options. With sinks, through the grad_sinks
// overload, checking that the overload without it gives the same bits for q, k and v.
template <typename T>
Grads RunBackward(const NaiveProblem& p, const Array& grad_out, sdpa::Options options) {
  const sdpa_test::NaiveResult forward = sdpa_test::RunForward<T>(p, options);
  Buffer<T> q(p.query), k(p.key), v(p.value), out(forward.out), lse(forward.lse);
  Buffer<T> dout(grad_out);
  Buffer<T> dq(Array(p.query.shape, sdpa_test::kSentinel));
  Buffer<T> dk(Array(p.key.shape, sdpa_test::kSentinel));
  Buffer<T> dv(Array(p.value.shape, sdpa_test::kSentinel));
  std::optional<Buffer<bool>> bool_mask;
  std::optional<Buffer<T>> additive_mask;
  AttachMask(p, options, bool_mask, additive_mask);
  if (options.sinks.empty()) {
    sdpa::Backward(q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(),
                   dq.mutable_view(), dk.mutable_view(), dv.mutable_view(), options);
    return {dq.Read(), dk.Read(), dv.Read(), Array({0})};
  }
  const auto heads = static_cast<std::int64_t>(options.sinks.size());
  Buffer<T> dsinks(Array({heads}, sdpa_test::kSentinel));
  sdpa::Backward(q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(),
                 dq.mutable_view(), dk.mutable_view(), dv.mutable_view(), dsinks.mutable_view(),
                 options);
  Grads got{dq.Read(), dk.Read(), dv.Read(), dsinks.Read()};
  Buffer<T> dq2(Array(p.query.shape)), dk2(Array(p.key.shape)), dv2(Array(p.value.shape));
  sdpa::Backward(q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(),
                 dq2.mutable_view(), dk2.mutable_view(), dv2.mutable_view(), options);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(dq2.Read(), got.query)) << "grad_query without grad_sinks";
  EXPECT_TRUE(sdpa_test::BitwiseEqual(dk2.Read(), got.key)) << "grad_key without grad_sinks";
  EXPECT_TRUE(sdpa_test::BitwiseEqual(dv2.Read(), got.value)) << "grad_value without grad_sinks";
  return got;
}

// L = Σ out ∘ W in long double, out from the float64 reference forward with `options`.
long double Loss(const NaiveProblem& p, const sdpa::Options& options, const Array& weights) {
  return sdpa_test::WeightedSum(sdpa_test::RunForward<double>(p, options).out, weights);
}

// (L(x + ε) - L(x - ε)) / 2ε for every element x that `at(n)` reaches in a copy of p, options.
template <typename At>
Array CentralDifferences(NaiveProblem p, sdpa::Options options, const Array& weights,
                         const std::vector<std::int64_t>& shape, At at) {
  Array grad(shape);
  for (std::size_t n = 0; n < grad.values.size(); ++n) {
    double& x = at(p, options, n);
    if (std::isinf(x)) continue;  // a sink of -inf (none): L does not depend on it
    grad.values[n] =
        sdpa_test::CentralDifference(x, kEpsilon, [&] { return Loss(p, options, weights); });
  }
  return grad;
}

Array OperandDifferences(const NaiveProblem& p, const sdpa::Options& options, const Array& weights,
                         Array NaiveProblem::*operand) {
  return CentralDifferences(p, options, weights, (p.*operand).shape,
                            [operand](NaiveProblem& q, sdpa::Options&, std::size_t n) -> double& {
                              return (q.*operand).values[n];
                            });
}

Array SinkDifferences(const NaiveProblem& p, const sdpa::Options& options, const Array& weights) {
  return CentralDifferences(
      p, options, weights, {static_cast<std::int64_t>(options.sinks.size())},
      [](NaiveProblem&, sdpa::Options& o, std::size_t n) -> double& { return o.sinks[n]; });
}

// ---------------------------------------------------------------------------------------------
// 1. Finite differences on every variant × combination.

struct Variant {
  const char* name;
  void (*apply)(VariantCase&);
};
struct Combination {
  const char* name;
  void (*apply)(VariantCase&);
};

// Packed sequences (q, k): (2, 3), (0, 1), (3, 2), (1, 0), (2, 2): an empty query sequence, a
// query without keys, and q_len < k_len, > and =.
void Varlen(VariantCase& c) {
  c.batch = 1;
  c.q_len = 8;
  c.kv_len = 8;
  c.cu_seqlens_q = {0, 2, 2, 5, 6, 8};
  c.cu_seqlens_k = {0, 3, 4, 6, 6, 8};
}

const Variant kVariants[] = {
    {"window",
     [](VariantCase& c) {
       c.window = sdpa::Window{2, 1};
     }},
    {"window_left_unbounded",
     [](VariantCase& c) {
       c.window = sdpa::Window{std::nullopt, 1};
     }},
    {"window_right_unbounded",
     [](VariantCase& c) {
       c.window = sdpa::Window{1, std::nullopt};
     }},
    {"alibi", [](VariantCase& c) { c.alibi = true; }},
    {"softcap", [](VariantCase& c) { c.softcap = 2.0; }},
    // |scale·q·k| up to 31·softcap, typically about 10-20·softcap: tanh saturates.
    {"softcap_saturated",
     [](VariantCase& c) {
       c.softcap = 0.25;
       c.query_range = 3.0;
     }},
    {"sinks", [](VariantCase& c) { c.sinks = true; }},
    {"varlen", Varlen},
    {"dropout", [](VariantCase& c) { c.dropout_p = 0.3; }},
    {"score_mod_tanh", [](VariantCase& c) { c.custom = &TanhScoreMod(); }},
    {"score_mod_quadratic", [](VariantCase& c) { c.custom = &QuadraticScoreMod(); }},
    {"mask_mod", [](VariantCase& c) { c.custom = &MaskMod(); }},
    {"score_and_mask_mod", [](VariantCase& c) { c.custom = &TanhAndMaskMod(); }},
    {"everything",
     [](VariantCase& c) {
       c.window = sdpa::Window{3, std::nullopt};
       c.alibi = true;
       c.softcap = 2.0;
       c.sinks = true;
       c.dropout_p = 0.2;
       c.custom = &QuadraticScoreMod();
     }},
    {"everything_varlen",
     [](VariantCase& c) {
       Varlen(c);
       c.window = sdpa::Window{1, 2};
       c.alibi = true;
       c.softcap = 1.0;
       c.sinks = true;
       c.dropout_p = 0.4;
       c.custom = &TanhAndMaskMod();
     }},
};

const Combination kCombinations[] = {
    {"alone", [](VariantCase&) {}},
    {"top_left",
     [](VariantCase& c) {
       c.causal = Causal::kTopLeft;
       c.q_len = 6;
       c.kv_len = 4;
     }},
    {"bottom_right", [](VariantCase& c) { c.causal = Causal::kBottomRight; }},
    // Lq > Lkv: the first two rows see no key.
    {"bottom_right_long_q",
     [](VariantCase& c) {
       c.causal = Causal::kBottomRight;
       c.q_len = 6;
       c.kv_len = 4;
     }},
    {"bool_mask", [](VariantCase& c) { c.mask_type = MaskType::kBool; }},
    {"additive_mask",
     [](VariantCase& c) {
       c.mask_type = MaskType::kAdditive;
       c.q_len = 6;
       c.kv_len = 4;
     }},
    {"gqa",
     [](VariantCase& c) {
       c.heads = 4;
       c.kv_heads = 2;
       c.q_len = c.kv_len = 5;
       c.causal = Causal::kBottomRight;
     }},
    {"mqa_bool_mask_top_left",
     [](VariantCase& c) {
       c.heads = 3;
       c.kv_heads = 1;
       c.causal = Causal::kTopLeft;
       c.mask_type = MaskType::kBool;
     }},
};

std::vector<VariantCase> FiniteDifferenceCases() {
  std::vector<VariantCase> cases;
  for (const Variant& variant : kVariants) {
    for (const Combination& combination : kCombinations) {
      VariantCase c;
      c.name = std::string(variant.name) + "_" + combination.name;
      combination.apply(c);
      variant.apply(c);  // after: varlen sets its own shape
      c.seed = 7000 + 10 * cases.size();
      cases.push_back(c);
    }
  }
  return cases;
}

class VariantFiniteDifferences : public ::testing::TestWithParam<std::tuple<VariantCase, Backend>> {
};

TEST_P(VariantFiniteDifferences, MatchAnalyticGradients) {
  const auto& [c, backend] = GetParam();
  const NaiveProblem p = MakeProblem(c);
  const Array weights = GradOut(c);
  const Grads got = RunBackward<double>(p, weights, OptionsFor(c, backend));
  const sdpa::Options reference = OptionsFor(c, Backend::kReference);
  EXPECT_TRUE(sdpa_test::AllClose(got.query,
                                  OperandDifferences(p, reference, weights, &NaiveProblem::query),
                                  kFiniteDifference))
      << "grad_query";
  EXPECT_TRUE(sdpa_test::AllClose(
      got.key, OperandDifferences(p, reference, weights, &NaiveProblem::key), kFiniteDifference))
      << "grad_key";
  EXPECT_TRUE(sdpa_test::AllClose(got.value,
                                  OperandDifferences(p, reference, weights, &NaiveProblem::value),
                                  kFiniteDifference))
      << "grad_value";
  if (c.sinks) {
    EXPECT_TRUE(
        sdpa_test::AllClose(got.sinks, SinkDifferences(p, reference, weights), kFiniteDifference))
        << "grad_sinks";
  }
}

std::string CaseName(const ::testing::TestParamInfo<std::tuple<VariantCase, Backend>>& info) {
  return std::get<0>(info.param).name + "_" + sdpa::BackendName(std::get<1>(info.param));
}

void PrintTo(const VariantCase& c, std::ostream* os) { *os << c.name; }

INSTANTIATE_TEST_SUITE_P(Backward, VariantFiniteDifferences,
                         ::testing::Combine(::testing::ValuesIn(FiniteDifferenceCases()),
                                            ::testing::Values(Backend::kReference, Backend::kCpu)),
                         CaseName);

// ---------------------------------------------------------------------------------------------
// 2. float32: the CPU backend against the float64 reference on random combinations.

// A query row's place: its batch entry, its sequence (the batch entry without varlen) and the
// packed offsets of the sequence's queries and keys.
struct Sequence {
  std::int64_t batch, index, q_begin, q_len, k_begin, k_len;
};

std::vector<Sequence> Sequences(const NaiveProblem& p, const sdpa::Options& o) {
  std::vector<Sequence> sequences;
  if (o.cu_seqlens_q.empty()) {
    for (std::int64_t b = 0; b < p.query.shape[0]; ++b) {
      sequences.push_back({b, b, 0, p.query.shape[2], 0, p.key.shape[2]});
    }
    return sequences;
  }
  for (std::size_t s = 0; s + 1 < o.cu_seqlens_q.size(); ++s) {
    sequences.push_back({0, static_cast<std::int64_t>(s), o.cu_seqlens_q[s],
                         o.cu_seqlens_q[s + 1] - o.cu_seqlens_q[s], o.cu_seqlens_k[s],
                         o.cu_seqlens_k[s + 1] - o.cu_seqlens_k[s]});
  }
  return sequences;
}

// The backward of every variant written from options.h, every operation in `Real`: float for
// "a plain float32 implementation" (the yardstick of the float32 bound), long double to check
// it against the reference. For each query row (sequence, head h, position i) and each key j
// of its sequence not removed by the causal rule, the window (around diag = i, or
// i + k_len - q_len unless top-left), the masks or mask_mod:
//   x_j = scale·q·k_j; s_j = softcap·tanh(x_j / softcap) - slope_h·|i + k_len - q_len - j|,
//   then score_mod, then + the additive mask; σ_j = ds_j / dx_j;
//   P = softmax over {s_j} ∪ {sink_h}; Z_j the dropout factor (kept: 1 / (1 - p), else 0);
//   dP_j = dO·v_j, Δ = Σ_j P_j Z_j dP_j, dS_j = P_j (Z_j dP_j - Δ) σ_j;
//   dq += scale Σ_j dS_j k_j, dk_j += scale dS_j q, dv_j += P_j Z_j dO, dsink_h -= P_sink Δ.
// The dropout decisions come from the library's Philox rule (core/dropout.h): this is a
// yardstick of rounding, not an oracle for them. The custom functions are called through the
// public type-erased CustomScore, one element at a time.
// With `magnitudes`, every sum adds the absolute values of its terms instead (|dP_j| = Σ|dO v|,
// Δ = Σ_j P_j Z_j |dP_j|, |dS_j| = P_j (Z_j |dP_j| + Δ) |σ_j|, ...): the scale against which the
// rounding of each gradient element is measured, also where its terms cancel to 0.
template <typename Real>
Grads PlainBackward(const NaiveProblem& p, const Array& grad_out, const sdpa::Options& o,
                    bool magnitudes = false) {
  const std::int64_t B = p.query.shape[0], H = p.query.shape[1], Lq = p.query.shape[2],
                     D = p.query.shape[3];
  const std::int64_t Hkv = p.key.shape[1], Lkv = p.key.shape[2], Dv = p.value.shape[3];
  const Real kNegInf = -std::numeric_limits<Real>::infinity();
  Array mask;
  if (p.mask_type != MaskType::kNone) mask = sdpa_test::BroadcastTo(p.mask, {B, H, Lq, Lkv});
  const auto real = [](double x) { return static_cast<Real>(x); };
  const auto term = [magnitudes](Real x) { return magnitudes ? std::fabs(x) : x; };
  const Real scale = real(o.scale ? *o.scale : sdpa_test::DefaultScale(D));
  const sdpa::internal::Dropout dropout(o.dropout_p, o.seed);

  std::vector<Real> dq(static_cast<std::size_t>(p.query.size()), Real(0));
  std::vector<Real> dk(static_cast<std::size_t>(p.key.size()), Real(0));
  std::vector<Real> dv(static_cast<std::size_t>(p.value.size()), Real(0));
  std::vector<Real> dsinks(static_cast<std::size_t>(H), Real(0));
  for (const Sequence& seq : Sequences(p, o)) {
    const std::int64_t b = seq.batch;
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t g = h / (H / Hkv);
      for (std::int64_t i = 0; i < seq.q_len; ++i) {
        const std::int64_t gi = seq.q_begin + i;
        const std::int64_t diag = o.causal == Causal::kTopLeft ? i : i + seq.k_len - seq.q_len;
        sdpa::ScoreBlock block;
        block.batch = seq.index;
        block.head = &h;
        block.pos = &i;
        block.rows = block.keys = 1;
        std::vector<std::int64_t> keys;
        std::vector<Real> probs, slopes;
        for (std::int64_t j = 0; j < seq.k_len; ++j) {
          const std::int64_t gj = seq.k_begin + j;
          if (o.causal != Causal::kNone && j > diag) continue;
          if (o.window && o.window->left && j < diag - *o.window->left) continue;
          if (o.window && o.window->right && j > diag + *o.window->right) continue;
          Real bias = 0;
          if (p.mask_type == MaskType::kBool && mask({b, h, gi, gj}) == 0.0) continue;
          if (p.mask_type == MaskType::kAdditive) {
            if (mask({b, h, gi, gj}) == -kInf) continue;
            bias = real(mask({b, h, gi, gj}));
          }
          block.key_begin = j;
          if (o.custom != nullptr && o.custom->mask_f64 != nullptr) {
            double probe = 0;
            o.custom->mask_f64(o.custom->context, block, &probe);
            if (probe == -kInf) continue;
          }
          Real dot = 0;
          for (std::int64_t d = 0; d < D; ++d) {
            dot += real(p.query({b, h, gi, d})) * real(p.key({b, g, gj, d}));
          }
          Real s = scale * dot, slope = 1;
          if (o.softcap) {
            const Real t = std::tanh(s / real(*o.softcap));
            s = real(*o.softcap) * t;
            slope *= 1 - t * t;
          }
          if (!o.alibi_slopes.empty()) {
            const std::int64_t distance = i + seq.k_len - seq.q_len - j;
            s -= real(o.alibi_slopes[static_cast<std::size_t>(h)]) *
                 static_cast<Real>(distance < 0 ? -distance : distance);
          }
          if (o.custom != nullptr && o.custom->score_f64 != nullptr) {
            if constexpr (std::is_same_v<Real, float>) {
              float derivative = 1;  // score_f32 multiplies it by d score_mod / d score
              o.custom->score_f32(o.custom->context, block, &s, &derivative);
              slope *= derivative;
            } else {
              double score = static_cast<double>(s), derivative = 1;
              o.custom->score_f64(o.custom->context, block, &score, &derivative);
              s = real(score);
              slope *= real(derivative);
            }
          }
          keys.push_back(j);
          probs.push_back(s + bias);
          slopes.push_back(slope);
        }
        const Real sink = o.sinks.empty() ? kNegInf : real(o.sinks[static_cast<std::size_t>(h)]);
        if (keys.empty() && sink == kNegInf) continue;
        Real m = sink;
        for (Real s : probs) m = s > m ? s : m;
        Real sum = sink == kNegInf ? Real(0) : std::exp(sink - m);
        for (Real& s : probs) sum += (s = std::exp(s - m));
        for (Real& s : probs) s /= sum;
        const Real sink_prob = sink == kNegInf ? Real(0) : std::exp(sink - m) / sum;

        std::vector<Real> dp(keys.size()), factor(keys.size(), Real(1));
        Real delta = 0;
        for (std::size_t n = 0; n < keys.size(); ++n) {
          if (o.dropout_p > 0) {
            factor[n] = dropout.Kept(seq.index, h, i, keys[n]) ? real(dropout.scale()) : Real(0);
          }
          Real acc = 0;
          for (std::int64_t e = 0; e < Dv; ++e) {
            acc += term(real(grad_out({b, h, gi, e})) *
                        real(p.value({b, g, seq.k_begin + keys[n], e})));
          }
          dp[n] = acc;
          delta += probs[n] * factor[n] * acc;
        }
        for (std::size_t n = 0; n < keys.size(); ++n) {
          const std::int64_t gj = seq.k_begin + keys[n];
          const Real ds = magnitudes ? probs[n] * (factor[n] * dp[n] + delta) * term(slopes[n])
                                     : probs[n] * (factor[n] * dp[n] - delta) * slopes[n];
          for (std::int64_t d = 0; d < D; ++d) {
            dq[p.query.Flat({b, h, gi, d})] += scale * ds * term(real(p.key({b, g, gj, d})));
            dk[p.key.Flat({b, g, gj, d})] += scale * ds * term(real(p.query({b, h, gi, d})));
          }
          for (std::int64_t e = 0; e < Dv; ++e) {
            dv[p.value.Flat({b, g, gj, e})] +=
                probs[n] * factor[n] * term(real(grad_out({b, h, gi, e})));
          }
        }
        dsinks[static_cast<std::size_t>(h)] += magnitudes ? sink_prob * delta : -sink_prob * delta;
      }
    }
  }
  const auto store = [](const std::vector<Real>& from, Array to) {
    for (std::size_t n = 0; n < from.size(); ++n) to.values[n] = static_cast<double>(from[n]);
    return to;
  };
  return {store(dq, Array(p.query.shape)), store(dk, Array(p.key.shape)),
          store(dv, Array(p.value.shape)),
          o.sinks.empty() ? Array({0}) : store(dsinks, Array({H}))};
}

double MaxAbsDiff(const Array& a, const Array& b) {
  double m = 0;
  for (std::size_t n = 0; n < a.values.size(); ++n) {
    m = std::max(m, std::fabs(a.values[n] - b.values[n]));
  }
  return m;
}

// tests/cpu/backward_test.cc's float32 bound, with its floor measured on the sums' terms and
// scaled by the size of the logits. The engine's largest error against the float64 reference
// (on the same float32 inputs) is at most 3 times the plain float32 implementation's, plus
// max(4, 2·|lse|max) ulp of the gradient's scale: the largest element of `magnitude` (the
// gradient summed with absolute values, PlainBackward's `magnitudes`), at least 1.
// The floor is for errors the plain implementation does not make. Where one key dominates a row,
// the plain P = exp(s - m) / Σ is exactly 1 and dS = P (dP - Δ) exactly 0; the engine recomputes
// P = exp(s - lse) from float32 scores and the forward's float32 lse (each rounded to ½ ulp(|lse|):
// s, its base-2 form and lse), and takes Δ = dO·out from the forward's rounded out, so dS is a few
// ulp of dP instead of 0, and dK, dV add that over every row (Lkv = 1 with 200 rows: |dK| 1.3e-6
// where the reference has 0). backward_test.cc's floor, 4 ulp of the largest gradient element, is
// this for |lse| <= 2 and no cancellation; ALiBi at long distances and score_mod biases give
// |lse| of 100 to 6000 here. Over 800 random cases (RandomCase with 8 seeds) the engine's error
// reached at most 0.59 of this bound, and 1.2·2^-23·max(1, |lse|max)·scale where the floor
// decided.
::testing::AssertionResult WithinFloat32Bound(const Array& engine, const Array& plain32,
                                              const Array& reference, const Array& magnitude,
                                              double lse_magnitude) {
  double scale = 1;
  for (double x : magnitude.values) scale = std::max(scale, std::fabs(x));
  const double plain_error = MaxAbsDiff(plain32, reference);
  const double bound = 3 * plain_error + std::max(4.0, 2 * lse_magnitude) * 0x1.0p-23 * scale;
  ::testing::AssertionResult result = sdpa_test::AllClose(engine, reference, Tolerance{bound, 0});
  if (!result) {
    result << "\n  (the plain float32 error is " << plain_error << ", the largest |lse| "
           << lse_magnitude << ", the magnitude " << scale << ")";
  }
  return result;
}

// The largest finite |lse| of the problem, from the float64 reference forward.
double LseMagnitude(const NaiveProblem& p, const sdpa::Options& reference) {
  double magnitude = 0;
  for (double x : sdpa_test::RunForward<double>(p, reference).lse.values) {
    if (std::isfinite(x)) magnitude = std::max(magnitude, std::fabs(x));
  }
  return magnitude;
}

// Sizes around the engine's tiles (96 query rows, 128 keys) and small ones.
const std::int64_t kLengths[] = {1, 2, 3, 17, 95, 96, 97, 127, 128, 129, 200};

// Offsets of `sequences` packed lengths of up to `max_len`, some of them 0.
std::vector<std::int64_t> RandomOffsets(sdpa_test::Random& random, std::int64_t sequences,
                                        std::int64_t max_len) {
  std::vector<std::int64_t> offsets = {0};
  for (std::int64_t s = 0; s < sequences; ++s) {
    const std::int64_t len =
        random.Bernoulli(0.15)
            ? 0
            : static_cast<std::int64_t>(random.Uniform(1, static_cast<double>(max_len + 1)));
    offsets.push_back(offsets.back() + len);
  }
  return offsets;
}

VariantCase RandomCase(sdpa_test::Random& random, std::uint64_t seed) {
  const auto pick = [&random](std::int64_t count) {
    return static_cast<std::int64_t>(random.Uniform(0, static_cast<double>(count)));
  };
  const std::pair<std::int64_t, std::int64_t> heads[] = {{1, 1}, {2, 2}, {4, 2}, {3, 1}};
  const std::int64_t dims[] = {3, 8, 16, 32};
  VariantCase c;
  c.seed = seed;
  c.batch = 1 + pick(2);
  std::tie(c.heads, c.kv_heads) = heads[pick(4)];
  c.q_len = kLengths[pick(11)];
  c.kv_len = kLengths[pick(11)];
  c.head_dim = dims[pick(4)];
  c.v_dim = dims[pick(4)];
  c.causal = static_cast<Causal>(pick(3));
  c.mask_type = random.Bernoulli(0.3) ? static_cast<MaskType>(1 + pick(2)) : MaskType::kNone;
  if (random.Bernoulli(0.5)) {
    sdpa::Window w;
    if (random.Bernoulli(0.7)) w.left = pick(40);
    if (random.Bernoulli(0.7)) w.right = pick(40);
    c.window = w;
  }
  c.alibi = random.Bernoulli(0.5);
  if (random.Bernoulli(0.5)) c.softcap = random.Bernoulli(0.5) ? 0.3 : 5.0;
  c.sinks = random.Bernoulli(0.5);
  if (random.Bernoulli(0.4)) {
    const std::int64_t sequences = 1 + pick(4);
    c.batch = 1;
    c.cu_seqlens_q = RandomOffsets(random, sequences, 120);
    c.cu_seqlens_k = RandomOffsets(random, sequences, 150);
    c.q_len = c.cu_seqlens_q.back();
    c.kv_len = c.cu_seqlens_k.back();
  }
  if (random.Bernoulli(0.4)) c.dropout_p = random.Bernoulli(0.5) ? 0.1 : 0.5;
  const sdpa::CustomScore* customs[] = {nullptr, &TanhScoreMod(), &QuadraticScoreMod(), &MaskMod(),
                                        &TanhAndMaskMod()};
  c.custom = customs[pick(5)];
  c.query_range = random.Bernoulli(0.2) ? 4.0 : 1.5;
  c.name = "random_" + std::to_string(seed);
  return c;
}

std::string Describe(const VariantCase& c) {
  std::string s = c.name + ": B=" + std::to_string(c.batch) + " H=" + std::to_string(c.heads) +
                  "/" + std::to_string(c.kv_heads) + " Lq=" + std::to_string(c.q_len) +
                  " Lkv=" + std::to_string(c.kv_len) + " D=" + std::to_string(c.head_dim) +
                  " Dv=" + std::to_string(c.v_dim) + " causal=" + sdpa::CausalName(c.causal) +
                  " mask=" + std::to_string(static_cast<int>(c.mask_type));
  if (c.window) {
    s += " window=(" + (c.window->left ? std::to_string(*c.window->left) : "inf") + "," +
         (c.window->right ? std::to_string(*c.window->right) : "inf") + ")";
  }
  if (c.alibi) s += " alibi";
  if (c.softcap) s += " softcap=" + std::to_string(*c.softcap);
  if (c.sinks) s += " sinks";
  if (!c.cu_seqlens_q.empty()) s += " varlen(" + std::to_string(c.cu_seqlens_q.size() - 1) + ")";
  if (c.dropout_p > 0) s += " dropout=" + std::to_string(c.dropout_p);
  if (c.custom == &TanhScoreMod()) s += " score_mod_tanh";
  if (c.custom == &QuadraticScoreMod()) s += " score_mod_quadratic";
  if (c.custom == &MaskMod()) s += " mask_mod";
  if (c.custom == &TanhAndMaskMod()) s += " score_and_mask_mod";
  return s;
}

TEST(VariantBackward, CpuFloat32WithinPlainFloat32BoundOfReference) {
  sdpa_test::Random random(2024);
  for (std::uint64_t n = 0; n < 40; ++n) {
    const VariantCase c = RandomCase(random, 8000 + 10 * n);
    SCOPED_TRACE(Describe(c));
    const NaiveProblem p = sdpa_test::RoundedToFloat(MakeProblem(c));
    const Array dout = GradOut(c).RoundedToFloat();
    const Grads want = RunBackward<double>(p, dout, OptionsFor(c, Backend::kReference));
    const Grads got = RunBackward<float>(p, dout, OptionsFor(c, Backend::kCpu));
    const sdpa::Options options = OptionsFor(c, Backend::kReference);
    const Grads plain = PlainBackward<float>(p, dout, options);
    // The yardstick computes the same thing: in long double it agrees with the reference.
    const Grads exact = PlainBackward<long double>(p, dout, options);
    constexpr Tolerance kSameMath{1e-9, 1e-9};
    ASSERT_TRUE(sdpa_test::AllClose(exact.query, want.query, kSameMath)) << "plain grad_query";
    ASSERT_TRUE(sdpa_test::AllClose(exact.key, want.key, kSameMath)) << "plain grad_key";
    ASSERT_TRUE(sdpa_test::AllClose(exact.value, want.value, kSameMath)) << "plain grad_value";
    ASSERT_TRUE(sdpa_test::AllClose(exact.sinks, want.sinks, kSameMath)) << "plain grad_sinks";
    const double lse = LseMagnitude(p, options);
    const Grads magnitude = PlainBackward<double>(p, dout, options, /*magnitudes=*/true);
    EXPECT_TRUE(WithinFloat32Bound(got.query, plain.query, want.query, magnitude.query, lse))
        << "grad_query";
    EXPECT_TRUE(WithinFloat32Bound(got.key, plain.key, want.key, magnitude.key, lse)) << "grad_key";
    EXPECT_TRUE(WithinFloat32Bound(got.value, plain.value, want.value, magnitude.value, lse))
        << "grad_value";
    EXPECT_TRUE(WithinFloat32Bound(got.sinks, plain.sinks, want.sinks, magnitude.sinks, lse))
        << "grad_sinks";
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Determinism across thread counts.

void ExpectSameBits(const Grads& got, const Grads& want, const std::string& what) {
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.query, want.query)) << "grad_query, " << what;
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.key, want.key)) << "grad_key, " << what;
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.value, want.value)) << "grad_value, " << what;
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.sinks, want.sinks)) << "grad_sinks, " << what;
}

// The engine's backward schedule for `p` with `threads` threads.
sdpa::cpu::Schedule BackwardSchedule(const NaiveProblem& p, const sdpa::Options& options,
                                     int threads) {
  Buffer<float> q(p.query), k(p.key), v(p.value);
  return sdpa::cpu::MakeBackwardSchedule(
      sdpa::internal::ValidateInputs(q.view(), k.view(), v.view(), options), threads);
}

// Bitwise identical gradients (and grad_sinks) for 1, 2 and 3 threads on the CPU backend, in
// float32 and float64, with dropout, a window and packed sequences (one of them empty): one case
// with many (sequence, kv head) tasks, one with a single kv head and 1100 keys in one sequence,
// where the engine's backward splits the keys into chunks.
TEST(VariantBackward, BitwiseIdenticalForAnyThreadCount) {
  VariantCase many;
  many.name = "many_pairs";
  many.batch = 1;
  many.heads = 4;
  many.kv_heads = 2;
  many.head_dim = many.v_dim = 32;
  many.cu_seqlens_q = {0, 100, 100, 260, 300};
  many.cu_seqlens_k = {0, 130, 170, 330, 330};
  many.window = sdpa::Window{60, 10};
  many.dropout_p = 0.25;
  many.causal = Causal::kBottomRight;
  many.sinks = true;
  VariantCase chunked;
  chunked.name = "chunked_keys";
  chunked.batch = 1;
  chunked.heads = 2;
  chunked.kv_heads = 1;
  chunked.head_dim = chunked.v_dim = 32;
  chunked.cu_seqlens_q = {0, 64, 128};
  chunked.cu_seqlens_k = {0, 1100, 1400};
  chunked.window = sdpa::Window{500, std::nullopt};
  chunked.dropout_p = 0.1;
  chunked.alibi = true;
  for (VariantCase c : {many, chunked}) {
    c.q_len = c.cu_seqlens_q.back();
    c.kv_len = c.cu_seqlens_k.back();
    c.seed = 9100;
    SCOPED_TRACE(c.name);
    const NaiveProblem p = sdpa_test::RoundedToFloat(MakeProblem(c));
    const Array dout = GradOut(c).RoundedToFloat();
    const sdpa::Options options = OptionsFor(c, Backend::kCpu);
    const sdpa::cpu::Schedule schedule = BackwardSchedule(p, options, 8);
    ASSERT_GE(schedule.threads, 3) << "too small to use several threads: " << schedule.reason;
    if (c.name == "chunked_keys") {
      ASSERT_GT(schedule.kv_splits, 1) << schedule.reason;
    }
    sdpa::SetNumThreads(1);
    const Grads one = RunBackward<float>(p, dout, options);
    const Grads one64 = RunBackward<double>(p, dout, options);
    for (int threads : {2, 3}) {
      sdpa::SetNumThreads(threads);
      const Grads got = RunBackward<float>(p, dout, options);
      const Grads got64 = RunBackward<double>(p, dout, options);
      ExpectSameBits(got, one, "float32, " + std::to_string(threads) + " threads");
      ExpectSameBits(got64, one64, "float64, " + std::to_string(threads) + " threads");
    }
    sdpa::SetNumThreads(0);
  }
}

// ---------------------------------------------------------------------------------------------
// 4. The API around the variants' backward.

// A score_mod taking a plain number works in the forward, but the backward cannot differentiate
// it: sdpa::Error naming Dual, on both backends and through both entry points. (It takes a
// double: with a float parameter, custom.h's float64 path converts double to float implicitly,
// which -Wconversion reports inside the header.)
TEST(VariantBackward, NonGenericScoreModIsRefusedByTheBackward) {
  const auto custom = sdpa::MakeCustom(
      [](double s, std::int64_t, std::int64_t, std::int64_t, std::int64_t) { return 0.5 * s; });
  EXPECT_FALSE(custom.erased().differentiable);
  VariantCase c;
  c.seed = 9300;
  const NaiveProblem p = MakeProblem(c);
  Buffer<double> q(p.query), k(p.key), v(p.value), dout(GradOut(c));
  Buffer<double> dq(Array(p.query.shape)), dk(Array(p.key.shape)), dv(Array(p.value.shape));
  for (Backend backend : {Backend::kReference, Backend::kCpu}) {
    SCOPED_TRACE(sdpa::BackendName(backend));
    sdpa::Options options;
    options.backend = backend;
    options = custom.With(options);
    const sdpa::AttentionResult forward =
        sdpa::AttentionWithLse(q.view(), k.view(), v.view(), options);
    // The forward works: halving every score is halving the scale.
    sdpa::Options halved;
    halved.backend = backend;
    halved.scale = 0.5 * sdpa_test::DefaultScale(c.head_dim);
    const sdpa::Tensor want = sdpa::Attention(q.view(), k.view(), v.view(), halved);
    EXPECT_TRUE(sdpa_test::AllClose(sdpa_test::ReadView(forward.out.view()),
                                    sdpa_test::ReadView(want.view()), Tolerance{1e-14, 1e-14}));
    EXPECT_TRUE(sdpa_test::ThrowsError(
        [&] {
          sdpa::Backward(q.view(), k.view(), v.view(), forward.out.view(), forward.lse.view(),
                         dout.view(), dq.mutable_view(), dk.mutable_view(), dv.mutable_view(),
                         options);
        },
        "sdpa::Dual"));
    EXPECT_TRUE(sdpa_test::ThrowsError(
        [&] {
          sdpa::AttentionBackward(q.view(), k.view(), v.view(), forward.out.view(),
                                  forward.lse.view(), dout.view(), options);
        },
        "sdpa::Dual"));
  }
}

// Gradients.grad_sinks: [heads] in the query's dtype with sinks, the same values as the
// grad_sinks overload; shape [0] without sinks.
TEST(VariantBackward, GradSinksHasOneValuePerHeadAndIsEmptyWithoutSinks) {
  VariantCase c;
  c.heads = 4;
  c.kv_heads = 2;
  c.sinks = true;
  c.seed = 9400;
  const NaiveProblem p = MakeProblem(c);
  Buffer<float> q(p.query.RoundedToFloat()), k(p.key.RoundedToFloat()), v(p.value.RoundedToFloat()),
      dout(GradOut(c).RoundedToFloat());
  for (Backend backend : {Backend::kReference, Backend::kCpu}) {
    SCOPED_TRACE(sdpa::BackendName(backend));
    for (bool sinks : {true, false}) {
      c.sinks = sinks;
      const sdpa::Options options = OptionsFor(c, backend);
      const sdpa::AttentionResult forward =
          sdpa::AttentionWithLse(q.view(), k.view(), v.view(), options);
      const sdpa::Gradients grads =
          sdpa::AttentionBackward(q.view(), k.view(), v.view(), forward.out.view(),
                                  forward.lse.view(), dout.view(), options);
      if (!sinks) {
        EXPECT_EQ(grads.grad_sinks.size(), 0);
        EXPECT_EQ(grads.grad_sinks.shape(), std::vector<std::int64_t>{0});
        continue;
      }
      EXPECT_EQ(grads.grad_sinks.shape(), std::vector<std::int64_t>{c.heads});
      EXPECT_EQ(grads.grad_sinks.dtype(), sdpa::DType::kFloat32);
      const Grads direct =
          RunBackward<float>(RoundedToFloat(p), GradOut(c).RoundedToFloat(), options);
      EXPECT_TRUE(
          sdpa_test::BitwiseEqual(sdpa_test::ReadView(grads.grad_sinks.view()), direct.sinks));
      // Head 2 has no sink (-inf): its gradient is 0.
      EXPECT_EQ(grads.grad_sinks.at<float>({2}), 0.0f);
    }
  }
}

}  // namespace

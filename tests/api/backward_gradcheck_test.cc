// The backward against finite differences of the forward, in float64, on every combination of
// heads (MHA, GQA, MQA), causal rule (none, top-left, bottom-right) and mask (none, bool,
// additive) with Lq < Lkv and Lq > Lkv, Dv != D, on each backend.
//
// For the loss L = Σ out ∘ W (W random, so ∂L/∂out = W is the grad_out), each element x of q, k
// and v gets the central difference (L(x + ε) - L(x - ε)) / 2ε with ε = 1e-6, where L is computed
// by the tests' independent long-double NaiveAttention. Error of the difference: truncation
// ε²·|L'''|/6 ≈ 1e-12·|L'''| plus the rounding of the float64 outputs, ≈ (elements touched) ·
// 1e-16 / 2ε ≈ 1e-10 (the largest difference seen is 8e-11). The tolerance
// |analytic - fd| <= 1e-8 + 1e-6·|fd| is 100x above that and far below any real error (a wrong
// or missing term changes a gradient by 1e-3 to 1).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/backward_harness.h"
#include "testing/expect.h"
#include "testing/finite_differences.h"
#include "testing/naive_attention.h"
#include "testing/naive_backward.h"
#include "testing/tensors.h"

namespace {

using sdpa::Backend;
using sdpa::Causal;
using sdpa_test::Array;
using sdpa_test::MaskType;
using sdpa_test::NaiveGradients;
using sdpa_test::NaiveProblem;
using sdpa_test::Tolerance;

constexpr double kEpsilon = 1e-6;
constexpr Tolerance kFiniteDifference{1e-8, 1e-6};

struct GradCase {
  std::string name;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  Causal causal;
  MaskType mask_type;
  std::vector<std::int64_t> mask_shape;  // broadcastable to [B, H, Lq, Lkv]
  std::optional<double> scale;           // nullopt: the default 1/sqrt(D)
  std::uint64_t seed = 0;
};

// Every heads × causal × mask combination, with a short and a long query. Masks are full
// [B, H, Lq, Lkv] with the short query and rank-2 [Lq, Lkv] (broadcast over batch and heads)
// with the long one; each fully masks query row 1 (of batch 0, head 0 for the full shape) so that
// rows without keys are covered too. MQA uses an explicit scale.
std::vector<GradCase> GradCases() {
  struct Heads {
    const char* name;
    std::int64_t heads, kv_heads;
  };
  const Heads head_kinds[] = {{"mha", 2, 2}, {"gqa", 4, 2}, {"mqa", 3, 1}};
  const std::pair<Causal, const char*> causals[] = {{Causal::kNone, "none"},
                                                    {Causal::kTopLeft, "top_left"},
                                                    {Causal::kBottomRight, "bottom_right"}};
  const std::pair<MaskType, const char*> masks[] = {
      {MaskType::kNone, "no_mask"}, {MaskType::kBool, "bool"}, {MaskType::kAdditive, "additive"}};
  const std::pair<std::int64_t, std::int64_t> lengths[] = {{3, 5}, {5, 3}};
  std::vector<GradCase> cases;
  for (const Heads& heads : head_kinds) {
    for (const auto& [causal, causal_name] : causals) {
      for (const auto& [mask, mask_name] : masks) {
        for (const auto& [q_len, kv_len] : lengths) {
          GradCase c;
          c.name = std::string(heads.name) + "_" + causal_name + "_" + mask_name + "_q" +
                   std::to_string(q_len) + "_kv" + std::to_string(kv_len);
          c.batch = 2;
          c.heads = heads.heads;
          c.kv_heads = heads.kv_heads;
          c.q_len = q_len;
          c.kv_len = kv_len;
          c.head_dim = 3;
          c.v_dim = 2;
          c.causal = causal;
          c.mask_type = mask;
          if (q_len < kv_len) {
            c.mask_shape = {c.batch, c.heads, q_len, kv_len};
          } else {
            c.mask_shape = {q_len, kv_len};
          }
          if (heads.kv_heads == 1) c.scale = 0.8;
          c.seed = 4000 + 10 * cases.size();
          cases.push_back(c);
        }
      }
    }
  }
  return cases;
}

NaiveProblem MakeProblem(const GradCase& c, std::uint64_t seed) {
  NaiveProblem p;
  p.query = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, seed, -1.5, 1.5);
  p.key = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, seed + 1, -1.5, 1.5);
  p.value = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.v_dim}, seed + 2);
  p.scale = c.scale ? *c.scale : sdpa_test::DefaultScale(c.head_dim);
  p.causal = c.causal;
  p.mask_type = c.mask_type;
  if (c.mask_type == MaskType::kNone) return p;
  sdpa_test::Random random(seed + 3);
  p.mask = Array(c.mask_shape);
  for (double& x : p.mask.values) {
    const bool keep = random.Bernoulli(0.75);
    if (c.mask_type == MaskType::kBool) {
      x = keep ? 1.0 : 0.0;
    } else {
      x = keep ? random.Uniform(-2, 1) : -std::numeric_limits<double>::infinity();
    }
  }
  // Row 1 sees no key (of batch 0, head 0 only when the mask has those dimensions).
  const std::int64_t kv_len = c.mask_shape.back();
  for (std::int64_t j = 0; j < kv_len; ++j) {
    const double hidden =
        c.mask_type == MaskType::kBool ? 0.0 : -std::numeric_limits<double>::infinity();
    if (p.mask.rank() == 4) {
      p.mask({0, 0, 1, j}) = hidden;
    } else {
      p.mask({1, j}) = hidden;
    }
  }
  return p;
}

// L = Σ out ∘ W in long double, out from the independent NaiveAttention.
long double Loss(const NaiveProblem& p, const Array& weights) {
  return sdpa_test::WeightedSum(sdpa_test::NaiveAttention(p).out, weights);
}

// Central differences of Loss for every element of `operand` (one of p's arrays).
Array CentralDifferences(const NaiveProblem& p, const Array& weights,
                         Array NaiveProblem::*operand) {
  NaiveProblem moved = p;
  Array grad((p.*operand).shape);
  for (std::size_t n = 0; n < grad.values.size(); ++n) {
    grad.values[n] = sdpa_test::CentralDifference((moved.*operand).values[n], kEpsilon,
                                                  [&] { return Loss(moved, weights); });
  }
  return grad;
}

class FiniteDifferences : public ::testing::TestWithParam<std::tuple<GradCase, Backend>> {};

TEST_P(FiniteDifferences, MatchAnalyticGradients) {
  const auto& [c, backend] = GetParam();
  const NaiveProblem p = MakeProblem(c, c.seed);
  const Array weights = Array::Uniform({c.batch, c.heads, c.q_len, c.v_dim}, 77);
  sdpa::Options options;
  options.backend = backend;
  options.causal = c.causal;
  options.scale = c.scale;
  const NaiveGradients got = sdpa_test::RunBackward<double>(p, weights, options);
  EXPECT_TRUE(sdpa_test::AllClose(got.query, CentralDifferences(p, weights, &NaiveProblem::query),
                                  kFiniteDifference))
      << "grad_query";
  EXPECT_TRUE(sdpa_test::AllClose(got.key, CentralDifferences(p, weights, &NaiveProblem::key),
                                  kFiniteDifference))
      << "grad_key";
  EXPECT_TRUE(sdpa_test::AllClose(got.value, CentralDifferences(p, weights, &NaiveProblem::value),
                                  kFiniteDifference))
      << "grad_value";
}

// The finite differences check the tests' own naive backward too, so that it can serve as an
// oracle elsewhere (backward_semantics_test.cc, tests/cpu/backward_test.cc).
TEST(FiniteDifferencesOfNaiveBackward, MatchOnEveryCombination) {
  for (const GradCase& c : GradCases()) {
    SCOPED_TRACE(c.name);
    const NaiveProblem p = MakeProblem(c, c.seed);
    const Array weights = Array::Uniform({c.batch, c.heads, c.q_len, c.v_dim}, 77);
    const NaiveGradients naive = sdpa_test::NaiveBackward<long double>(p, weights);
    EXPECT_TRUE(sdpa_test::AllClose(
        naive.query, CentralDifferences(p, weights, &NaiveProblem::query), kFiniteDifference));
    EXPECT_TRUE(sdpa_test::AllClose(naive.key, CentralDifferences(p, weights, &NaiveProblem::key),
                                    kFiniteDifference));
    EXPECT_TRUE(sdpa_test::AllClose(
        naive.value, CentralDifferences(p, weights, &NaiveProblem::value), kFiniteDifference));
  }
}

std::string CaseName(const ::testing::TestParamInfo<std::tuple<GradCase, Backend>>& info) {
  return std::get<0>(info.param).name + "_" + sdpa::BackendName(std::get<1>(info.param));
}

void PrintTo(const GradCase& c, std::ostream* os) { *os << c.name; }

INSTANTIATE_TEST_SUITE_P(Backward, FiniteDifferences,
                         ::testing::Combine(::testing::ValuesIn(GradCases()),
                                            ::testing::Values(Backend::kReference, Backend::kCpu)),
                         CaseName);

}  // namespace

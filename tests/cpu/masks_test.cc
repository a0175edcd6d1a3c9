// Per-row masks on the engine (masks-inl.h): bool and additive masks whose rows differ, read
// vector-wide, and bool masks whose block of a tile is all false (the tile is skipped) or all
// true (no mask step), against the float64 reference on every SIMD target and tuning, forward and
// backward. The masks are built so that each kind of block occurs at the tile sizes in use.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cpu/on_tuning.h"
#include "sdpa/sdpa.h"
#include "testing/backward_harness.h"
#include "testing/expect.h"
#include "testing/harness.h"
#include "testing/naive_attention.h"
#include "testing/naive_backward.h"
#include "testing/problems.h"

namespace {

using sdpa::Causal;
using sdpa_test::Array;
using sdpa_test::MaskType;
using sdpa_test::NaiveProblem;
using sdpa_test::Tolerance;

// How the mask's values are laid out over (query i, key j).
enum class Pattern {
  kRandom,     // Bernoulli(0.7) per entry
  kDocuments,  // block-diagonal documents of uneven length: whole tiles false or true
  kEmptyRows,  // random, with some rows false everywhere and a stripe of keys true for all
};

struct MaskCase {
  const char* name;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim;
  Causal causal;
  MaskType type;
  std::vector<std::int64_t> mask_shape;  // broadcastable to [B, H, Lq, Lkv]
  Pattern pattern;
};

const std::vector<MaskCase>& Cases() {
  static const std::vector<MaskCase> cases = {
      {"rows_random",
       1,
       2,
       2,
       130,
       300,
       16,
       Causal::kNone,
       MaskType::kBool,
       {130, 300},
       Pattern::kRandom},
      {"rows_documents",
       1,
       2,
       1,
       400,
       400,
       32,
       Causal::kTopLeft,
       MaskType::kBool,
       {400, 400},
       Pattern::kDocuments},
      {"heads_documents",
       2,
       2,
       2,
       260,
       260,
       16,
       Causal::kNone,
       MaskType::kBool,
       {2, 1, 260, 260},
       Pattern::kDocuments},
      {"full_empty_rows",
       1,
       3,
       1,
       97,
       129,
       8,
       Causal::kBottomRight,
       MaskType::kBool,
       {1, 3, 97, 129},
       Pattern::kEmptyRows},
      {"odd_keys", 1, 1, 1, 50, 77, 24, Causal::kNone, MaskType::kBool, {50, 77}, Pattern::kRandom},
      {"additive_rows",
       1,
       2,
       2,
       140,
       200,
       16,
       Causal::kTopLeft,
       MaskType::kAdditive,
       {140, 200},
       Pattern::kRandom},
      {"additive_documents",
       1,
       2,
       2,
       300,
       300,
       16,
       Causal::kNone,
       MaskType::kAdditive,
       {1, 2, 300, 300},
       Pattern::kDocuments},
  };
  return cases;
}

// Document of position x in a sequence of n: uneven lengths, about 0.37·n, 0.15·n, 0.48·n.
int Document(std::int64_t x, std::int64_t n) {
  const double at = static_cast<double>(x) / static_cast<double>(n);
  return at < 0.37 ? 0 : at < 0.52 ? 1 : 2;
}

NaiveProblem MakeProblem(const MaskCase& c, std::uint64_t seed) {
  NaiveProblem p;
  p.query = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, seed, -2, 2);
  p.key = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, seed + 1, -2, 2);
  p.value = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, seed + 2);
  p.scale = sdpa_test::DefaultScale(c.head_dim);
  p.causal = c.causal;
  p.mask_type = c.type;
  p.mask = Array(c.mask_shape);
  const std::int64_t lq = c.mask_shape[c.mask_shape.size() - 2];
  const std::int64_t lkv = c.mask_shape.back();
  sdpa_test::Random random(seed + 3);
  const double hidden = c.type == MaskType::kBool ? 0.0 : -std::numeric_limits<double>::infinity();
  for (std::size_t e = 0; e < p.mask.values.size(); ++e) {
    const std::int64_t j = static_cast<std::int64_t>(e) % lkv;
    const std::int64_t i = static_cast<std::int64_t>(e) / lkv % lq;
    bool keep = true;
    switch (c.pattern) {
      case Pattern::kRandom:
        keep = random.Bernoulli(0.7);
        break;
      case Pattern::kDocuments:
        keep = Document(i, lq) == Document(j, lkv);
        break;
      case Pattern::kEmptyRows:
        keep = i % 11 != 3 && (j >= 40 && j < 90 ? true : random.Bernoulli(0.5));
        break;
    }
    const double bias = c.type == MaskType::kBool ? 1.0 : random.Uniform(-2, 1);
    p.mask.values[e] = keep ? bias : hidden;
  }
  return p;
}

sdpa::Options OptionsFor(const NaiveProblem& p, sdpa::Backend backend) {
  sdpa::Options options;
  options.scale = p.scale;
  options.causal = p.causal;
  options.backend = backend;
  return options;
}

double MaxAbs(const Array& a) {
  double m = 0;
  for (double x : a.values) m = std::max(m, std::fabs(x));
  return m;
}

class RowMasks : public sdpa_test::OnTargetAndTuning {};

TEST_P(RowMasks, ForwardMatchesReference) {
  std::uint64_t seed = 3000;
  for (const MaskCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const NaiveProblem p = sdpa_test::RoundedToFloat(MakeProblem(c, seed += 10));
    const auto want = sdpa_test::RunForward<double>(p, OptionsFor(p, sdpa::Backend::kReference));
    const auto got64 = sdpa_test::RunForward<double>(p, OptionsFor(p, sdpa::Backend::kCpu));
    EXPECT_TRUE(sdpa_test::AllClose(got64.out, want.out, Tolerance{1e-12, 0}));
    EXPECT_TRUE(sdpa_test::AllClose(got64.lse, want.lse, Tolerance{1e-12, 1e-12}));
    const auto got32 = sdpa_test::RunForward<float>(p, OptionsFor(p, sdpa::Backend::kCpu));
    EXPECT_TRUE(sdpa_test::AllClose(got32.out, want.out, Tolerance{2e-5 * MaxAbs(p.value), 0}));
    EXPECT_TRUE(sdpa_test::AllClose(got32.lse, want.lse, Tolerance{2e-5, 2e-6}));
  }
}

TEST_P(RowMasks, BackwardMatchesReference) {
  std::uint64_t seed = 4000;
  for (const MaskCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const NaiveProblem p = sdpa_test::RoundedToFloat(MakeProblem(c, seed += 10));
    const Array dout =
        Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, seed + 5).RoundedToFloat();
    const auto want =
        sdpa_test::RunBackward<double>(p, dout, OptionsFor(p, sdpa::Backend::kReference));
    const auto got = sdpa_test::RunBackward<double>(p, dout, OptionsFor(p, sdpa::Backend::kCpu));
    const Tolerance tol{1e-11, 1e-11};
    EXPECT_TRUE(sdpa_test::AllClose(got.query, want.query, tol)) << "grad_query";
    EXPECT_TRUE(sdpa_test::AllClose(got.key, want.key, tol)) << "grad_key";
    EXPECT_TRUE(sdpa_test::AllClose(got.value, want.value, tol)) << "grad_value";
    // float32: within the float32 forward bound scaled by the gradients' size.
    const auto got32 = sdpa_test::RunBackward<float>(p, dout, OptionsFor(p, sdpa::Backend::kCpu));
    const auto plain = sdpa_test::NaiveBackward<float>(p, dout);
    for (const auto& [engine, naive, reference, name] :
         {std::tuple{&got32.query, &plain.query, &want.query, "grad_query"},
          std::tuple{&got32.key, &plain.key, &want.key, "grad_key"},
          std::tuple{&got32.value, &plain.value, &want.value, "grad_value"}}) {
      double plain_error = 0;
      for (std::size_t e = 0; e < reference->values.size(); ++e) {
        plain_error = std::max(plain_error, std::fabs(naive->values[e] - reference->values[e]));
      }
      const double bound = 3 * plain_error + 4 * 0x1.0p-23 * std::max(1.0, MaxAbs(*reference));
      EXPECT_TRUE(sdpa_test::AllClose(*engine, *reference, Tolerance{bound, 0})) << name;
    }
  }
}

// A mask whose every entry is true gives the unmasked result bit for bit (every tile is
// classified all-true and skips the mask step), and an all-false one gives out = 0, lse = -inf.
TEST_P(RowMasks, AllTrueIsUnmaskedAndAllFalseIsEmpty) {
  MaskCase c = Cases()[0];
  NaiveProblem p = sdpa_test::RoundedToFloat(MakeProblem(c, 77));
  NaiveProblem plain = p;
  plain.mask_type = MaskType::kNone;
  for (double& x : p.mask.values) x = 1.0;
  const auto want = sdpa_test::RunForward<float>(plain, OptionsFor(plain, sdpa::Backend::kCpu));
  const auto got = sdpa_test::RunForward<float>(p, OptionsFor(p, sdpa::Backend::kCpu));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.out, want.out));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.lse, want.lse));
  for (double& x : p.mask.values) x = 0.0;
  const auto empty = sdpa_test::RunForward<float>(p, OptionsFor(p, sdpa::Backend::kCpu));
  for (double x : empty.out.values) ASSERT_EQ(x, 0.0);
  for (double x : empty.lse.values) ASSERT_EQ(x, -std::numeric_limits<double>::infinity());
}

INSTANTIATE_TEST_SUITE_P(AllTargets, RowMasks, ::testing::ValuesIn(sdpa::cpu::SimdTargets()),
                         sdpa_test::ParamName);
INSTANTIATE_TEST_SUITE_P(Tunings, RowMasks, ::testing::ValuesIn(sdpa_test::TunedTargets()),
                         sdpa_test::ParamName);

}  // namespace

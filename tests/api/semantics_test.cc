// The rules of docs/semantics.md, one test each, on hand-checked or constructed inputs.
//
// Every test runs on each backend listed in INSTANTIATE_TEST_SUITE_P at the bottom.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/harness.h"
#include "testing/naive_attention.h"
#include "testing/problems.h"
#include "testing/tensors.h"

namespace {

using sdpa::Backend;
using sdpa::Causal;
using sdpa_test::Array;
using sdpa_test::MaskType;
using sdpa_test::NaiveProblem;
using sdpa_test::NaiveResult;
using sdpa_test::Tolerance;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Hand-computed values are exact to double precision; float32 results are rounded once.
constexpr Tolerance kExact64{1e-15, 1e-15};
constexpr Tolerance kExact32{1e-7, 2e-7};

class Semantics : public ::testing::TestWithParam<Backend> {
 public:
  sdpa::Options Opts(Causal causal = Causal::kNone) const {
    sdpa::Options options;
    options.backend = GetParam();
    options.causal = causal;
    return options;
  }
  // The problem's causal rule and scale come from `p`.
  sdpa::Options OptsFor(const NaiveProblem& p) const {
    sdpa::Options options = Opts(p.causal);
    options.scale = p.scale;
    return options;
  }
  template <typename T>
  NaiveResult Run(const NaiveProblem& p) const {
    return sdpa_test::RunForward<T>(p, OptsFor(p));
  }

  // The keys each query row attends to, read back from the result (sdpa_test::VisibleKeysOf).
  // `mask` must be bool or 0/-inf additive.
  std::vector<std::vector<int>> VisibleKeys(std::int64_t q_len, std::int64_t kv_len, Causal causal,
                                            MaskType mask_type = MaskType::kNone,
                                            const Array& mask = {}) const {
    NaiveProblem p;
    sdpa_test::UseKeyIdentifyingOperands(p, q_len, kv_len);
    p.causal = causal;
    p.mask_type = mask_type;
    p.mask = mask;
    return sdpa_test::VisibleKeysOf(Run<double>(p));
  }
};

using sdpa_test::Keys;
using sdpa_test::RandomProblem;

// ---- Hand-checked small cases -------------------------------------------------------------

TEST_P(Semantics, OneKeyGivesItsValueRow) {
  NaiveProblem p = RandomProblem(1, 2, 2, 3, 1, 5, 4, 11);
  for (auto run : {&Semantics::Run<float>, &Semantics::Run<double>}) {
    const NaiveResult r = (this->*run)(p);
    for (std::int64_t h = 0; h < 2; ++h) {
      for (std::int64_t i = 0; i < 3; ++i) {
        double dot = 0;
        for (std::int64_t d = 0; d < 5; ++d) dot += p.query({0, h, i, d}) * p.key({0, h, 0, d});
        EXPECT_NEAR(r.lse({0, h, i}), p.scale * dot, 1e-6) << "lse = the only score";
        for (std::int64_t e = 0; e < 4; ++e) {
          EXPECT_EQ(r.out({0, h, i, e}), p.value({0, h, 0, e})) << h << "," << i << "," << e;
        }
      }
    }
  }
}

TEST_P(Semantics, IdenticalKeysGiveMeanOfValues) {
  NaiveProblem p = RandomProblem(1, 1, 1, 2, 5, 3, 2, 12);
  for (std::int64_t j = 1; j < 5; ++j) {
    for (std::int64_t d = 0; d < 3; ++d) p.key({0, 0, j, d}) = p.key({0, 0, 0, d});
  }
  Array expected_out({1, 1, 2, 2}), expected_lse({1, 1, 2});
  for (std::int64_t i = 0; i < 2; ++i) {
    double dot = 0;
    for (std::int64_t d = 0; d < 3; ++d) dot += p.query({0, 0, i, d}) * p.key({0, 0, 0, d});
    expected_lse({0, 0, i}) = p.scale * dot + std::log(5.0);
    for (std::int64_t e = 0; e < 2; ++e) {
      for (std::int64_t j = 0; j < 5; ++j) expected_out({0, 0, i, e}) += p.value({0, 0, j, e}) / 5;
    }
  }
  EXPECT_TRUE(sdpa_test::AllClose(Run<double>(p).out, expected_out, kExact64));
  EXPECT_TRUE(sdpa_test::AllClose(Run<double>(p).lse, expected_lse, kExact64));
  EXPECT_TRUE(sdpa_test::AllClose(Run<float>(p).out, expected_out, kExact32));
  EXPECT_TRUE(sdpa_test::AllClose(Run<float>(p).lse, expected_lse, kExact32));
}

// scale 1, Q = [[1, 0], [0, 2]], K = I, V = [[1, 2], [3, 4]]:
//   row 0: scores (1, 0), out = (e·[1, 2] + [3, 4]) / (e + 1),       lse = log(e + 1)
//   row 1: scores (0, 2), out = ([1, 2] + e²·[3, 4]) / (1 + e²),     lse = log(1 + e²)
TEST_P(Semantics, HandComputedTwoByTwo) {
  NaiveProblem p;
  p.query = Array({1, 1, 2, 2}, {1, 0, 0, 2});
  p.key = Array({1, 1, 2, 2}, {1, 0, 0, 1});
  p.value = Array({1, 1, 2, 2}, {1, 2, 3, 4});
  p.scale = 1.0;
  const double e = std::exp(1.0), e2 = std::exp(2.0);
  const Array out({1, 1, 2, 2}, {(e + 3) / (e + 1), (2 * e + 4) / (e + 1), (1 + 3 * e2) / (1 + e2),
                                 (2 + 4 * e2) / (1 + e2)});
  const Array lse({1, 1, 2}, {std::log(e + 1), std::log(1 + e2)});
  EXPECT_TRUE(sdpa_test::AllClose(Run<double>(p).out, out, kExact64));
  EXPECT_TRUE(sdpa_test::AllClose(Run<double>(p).lse, lse, kExact64));
  EXPECT_TRUE(sdpa_test::AllClose(Run<float>(p).out, out, kExact32));
  EXPECT_TRUE(sdpa_test::AllClose(Run<float>(p).lse, lse, kExact32));
}

TEST_P(Semantics, ValueDimMayDifferFromHeadDim) {
  // D = 2, Dv = 3; one query, scores (1, 0) as above.
  NaiveProblem p;
  p.query = Array({1, 1, 1, 2}, {1, 0});
  p.key = Array({1, 1, 2, 2}, {1, 0, 0, 1});
  p.value = Array({1, 1, 2, 3}, {1, 2, 3, 4, 5, 6});
  p.scale = 1.0;
  const double e = std::exp(1.0);
  const Array out({1, 1, 1, 3}, {(e + 4) / (e + 1), (2 * e + 5) / (e + 1), (3 * e + 6) / (e + 1)});
  EXPECT_TRUE(sdpa_test::AllClose(Run<double>(p).out, out, kExact64));
  EXPECT_TRUE(sdpa_test::AllClose(Run<float>(p).out, out, kExact32));
}

// ---- Scale ----------------------------------------------------------------------------------

TEST_P(Semantics, DefaultScaleIsInverseSqrtHeadDim) {
  // head_dim 9: the default scale is exactly 1/3.
  const NaiveProblem p = RandomProblem(1, 2, 2, 3, 4, 9, 2, 13);
  sdpa::Options explicit_scale = Opts(), default_scale = Opts();
  explicit_scale.scale = 1.0 / 3.0;
  const NaiveResult with_default = sdpa_test::RunForward<double>(p, default_scale);
  const NaiveResult with_explicit = sdpa_test::RunForward<double>(p, explicit_scale);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(with_default.out, with_explicit.out));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(with_default.lse, with_explicit.lse));
  NaiveProblem third = p;
  third.scale = 1.0 / 3.0;
  EXPECT_TRUE(
      sdpa_test::AllClose(with_default.lse, sdpa_test::NaiveAttention(third).lse, {1e-14, 1e-14}));
}

TEST_P(Semantics, ExplicitScaleMultipliesScores) {
  NaiveProblem p = RandomProblem(1, 2, 2, 3, 4, 8, 2, 14);
  for (double scale : {0.5, 2.0, -1.25}) {
    p.scale = scale;
    const NaiveResult expected = sdpa_test::NaiveAttention(p);
    EXPECT_TRUE(sdpa_test::AllClose(Run<double>(p).out, expected.out, {1e-14, 1e-14})) << scale;
    EXPECT_TRUE(sdpa_test::AllClose(Run<double>(p).lse, expected.lse, {1e-14, 1e-14})) << scale;
  }
}

TEST_P(Semantics, ZeroScaleAveragesValues) {
  NaiveProblem p = RandomProblem(1, 1, 1, 2, 4, 3, 2, 15);
  p.scale = 0.0;
  const NaiveResult r = Run<double>(p);
  for (std::int64_t i = 0; i < 2; ++i) {
    EXPECT_NEAR(r.lse({0, 0, i}), std::log(4.0), 1e-15);
    for (std::int64_t e = 0; e < 2; ++e) {
      double mean = 0;
      for (std::int64_t j = 0; j < 4; ++j) mean += p.value({0, 0, j, e}) / 4;
      EXPECT_NEAR(r.out({0, 0, i, e}), mean, 1e-15);
    }
  }
}

// ---- Causal alignment -----------------------------------------------------------------------

TEST_P(Semantics, TopLeftCausalSquare) {
  EXPECT_EQ(VisibleKeys(3, 3, Causal::kTopLeft), (Keys{{0}, {0, 1}, {0, 1, 2}}));
}

TEST_P(Semantics, TopLeftCausalShortQuery) {
  // Lq < Lkv: j <= i; keys 2 and 3 are seen by no query.
  EXPECT_EQ(VisibleKeys(2, 4, Causal::kTopLeft), (Keys{{0}, {0, 1}}));
}

TEST_P(Semantics, TopLeftCausalLongQuery) {
  // Lq > Lkv: rows past Lkv see every key.
  EXPECT_EQ(VisibleKeys(4, 2, Causal::kTopLeft), (Keys{{0}, {0, 1}, {0, 1}, {0, 1}}));
}

TEST_P(Semantics, BottomRightCausalSquare) {
  EXPECT_EQ(VisibleKeys(3, 3, Causal::kBottomRight), (Keys{{0}, {0, 1}, {0, 1, 2}}));
}

TEST_P(Semantics, BottomRightCausalShortQuery) {
  // Lq < Lkv: j <= i + 2; the last query sees every key.
  EXPECT_EQ(VisibleKeys(2, 4, Causal::kBottomRight), (Keys{{0, 1, 2}, {0, 1, 2, 3}}));
}

TEST_P(Semantics, BottomRightCausalLongQuery) {
  // Lq > Lkv: j <= i - 2; rows 0 and 1 see no key (out 0, lse -inf, checked by VisibleKeys).
  EXPECT_EQ(VisibleKeys(4, 2, Causal::kBottomRight), (Keys{{}, {}, {0}, {0, 1}}));
}

TEST_P(Semantics, NoCausalSeesEveryKey) {
  EXPECT_EQ(VisibleKeys(2, 3, Causal::kNone), (Keys{{0, 1, 2}, {0, 1, 2}}));
}

// ---- Masks ----------------------------------------------------------------------------------

TEST_P(Semantics, BoolMaskTrueMeansAttend) {
  const Array mask({3, 4}, {1, 0, 1, 0,  //
                            0, 0, 0, 1,  //
                            1, 1, 1, 1});
  EXPECT_EQ(VisibleKeys(3, 4, Causal::kNone, MaskType::kBool, mask),
            (Keys{{0, 2}, {3}, {0, 1, 2, 3}}));
}

TEST_P(Semantics, AdditiveMaskNegativeInfinityRemovesKey) {
  const Array mask({3, 4}, {0, -kInf, 0, -kInf,      //
                            -kInf, -kInf, -kInf, 0,  //
                            0, 0, 0, 0});
  EXPECT_EQ(VisibleKeys(3, 4, Causal::kNone, MaskType::kAdditive, mask),
            (Keys{{0, 2}, {3}, {0, 1, 2, 3}}));
}

TEST_P(Semantics, AdditiveMaskIsAddedToScaledScores) {
  // One query, keys with scores (0, 0) before the mask; bias (log 3, 0) gives weights (3/4, 1/4).
  NaiveProblem p;
  p.query = Array({1, 1, 1, 1}, {0});
  p.key = Array({1, 1, 2, 1}, {1, 1});
  p.value = Array({1, 1, 2, 1}, {4, 8});
  p.mask_type = MaskType::kAdditive;
  p.mask = Array({2}, {std::log(3.0), 0});
  const NaiveResult r = Run<double>(p);
  EXPECT_NEAR(r.out({0, 0, 0, 0}), 0.75 * 4 + 0.25 * 8, 1e-15);
  EXPECT_NEAR(r.lse({0, 0, 0}), std::log(4.0), 1e-15);
}

TEST_P(Semantics, CausalCombinesWithBoolMask) {
  // Visible = causal AND mask.
  const Array mask({4}, {0, 1, 1, 1});
  EXPECT_EQ(VisibleKeys(3, 4, Causal::kTopLeft, MaskType::kBool, mask), (Keys{{}, {1}, {1, 2}}));
  EXPECT_EQ(VisibleKeys(3, 4, Causal::kBottomRight, MaskType::kBool, mask),
            (Keys{{1}, {1, 2}, {1, 2, 3}}));
}

TEST_P(Semantics, CausalCombinesWithAdditiveMask) {
  const Array mask({3, 1}, {0, -kInf, 0});  // broadcast over keys: row 1 is removed entirely
  EXPECT_EQ(VisibleKeys(3, 4, Causal::kTopLeft, MaskType::kAdditive, mask),
            (Keys{{0}, {}, {0, 1, 2}}));
}

// A mask of every broadcastable shape gives the same bits as the same mask expanded to
// [B, H, Lq, Lkv].
TEST_P(Semantics, MaskBroadcastsOverBatchHeadsAndRows) {
  const NaiveProblem base = RandomProblem(2, 3, 3, 4, 5, 8, 4, 16);
  const std::vector<std::vector<std::int64_t>> shapes = {
      {5}, {4, 5}, {3, 1, 5}, {1, 4, 5}, {2, 1, 1, 5}, {1, 3, 4, 1}, {2, 3, 4, 5}, {1, 1, 1, 1}};
  for (MaskType type : {MaskType::kBool, MaskType::kAdditive}) {
    for (const auto& shape : shapes) {
      NaiveProblem small = base, expanded = base;
      small.mask_type = expanded.mask_type = type;
      small.mask = Array::Uniform(shape, 17, -1.0, 2.0);
      for (double& x : small.mask.values) {
        if (type == MaskType::kBool) x = x > 0 ? 1 : 0;
        if (type == MaskType::kAdditive && x < -0.5) x = -kInf;
      }
      expanded.mask = sdpa_test::BroadcastTo(small.mask, {2, 3, 4, 5});
      const NaiveResult a = Run<double>(small), b = Run<double>(expanded);
      const std::string where = ::testing::PrintToString(shape);
      EXPECT_TRUE(sdpa_test::BitwiseEqual(a.out, b.out)) << where;
      EXPECT_TRUE(sdpa_test::BitwiseEqual(a.lse, b.lse)) << where;
      const NaiveResult expected = sdpa_test::NaiveAttention(expanded);
      EXPECT_TRUE(sdpa_test::AllClose(a.out, expected.out, {1e-14, 1e-14})) << where;
      EXPECT_TRUE(sdpa_test::AllClose(a.lse, expected.lse, {1e-14, 1e-14})) << where;
    }
  }
}

// A full-shape mask whose batch and head strides are 0 reads like a broadcast mask.
TEST_P(Semantics, MaskWithZeroStridesBroadcasts) {
  const NaiveProblem p = RandomProblem(2, 3, 3, 4, 5, 8, 4, 18);
  Array rows = Array::Uniform({4, 5}, 19);
  std::unique_ptr<bool[]> mask(new bool[20]);
  for (std::size_t n = 0; n < 20; ++n) mask[n] = rows.values[n] > -0.3;
  sdpa::Options options = Opts();
  options.mask = sdpa::TensorView(mask.get(), {2, 3, 4, 5}, {0, 0, 5, 1});
  sdpa_test::Buffer<double> q(p.query), k(p.key), v(p.value);
  sdpa::Tensor out(sdpa::DType::kFloat64, {2, 3, 4, 4});
  sdpa::Forward(q.view(), k.view(), v.view(), out.mutable_view(), options);

  NaiveProblem expected = p;
  expected.mask_type = MaskType::kBool;
  expected.mask = Array({4, 5});
  for (std::size_t n = 0; n < 20; ++n) expected.mask.values[n] = mask[n] ? 1 : 0;
  EXPECT_TRUE(sdpa_test::AllClose(sdpa_test::ReadView(out.view()),
                                  sdpa_test::NaiveAttention(expected).out, {1e-14, 1e-14}));
}

// ---- Grouped-query attention ------------------------------------------------------------------

// Query head h reads kv head h / (H / Hkv): with one key and V of kv head g equal to g, the
// output of query head h is h / (H / Hkv) (and not, say, h % Hkv).
TEST_P(Semantics, QueryHeadReadsKvHeadByIntegerDivision) {
  for (std::int64_t kv_heads : {1, 2, 3, 6}) {
    NaiveProblem p = RandomProblem(2, 6, kv_heads, 3, 1, 4, 1, 20);
    for (std::int64_t b = 0; b < 2; ++b) {
      for (std::int64_t g = 0; g < kv_heads; ++g) p.value({b, g, 0, 0}) = static_cast<double>(g);
    }
    const NaiveResult r = Run<double>(p);
    for (std::int64_t b = 0; b < 2; ++b) {
      for (std::int64_t h = 0; h < 6; ++h) {
        for (std::int64_t i = 0; i < 3; ++i) {
          EXPECT_EQ(r.out({b, h, i, 0}), static_cast<double>(h / (6 / kv_heads)))
              << "kv_heads " << kv_heads << " head " << h;
        }
      }
    }
  }
}

// GQA and MQA give the result of multi-head attention on K and V repeated per query head (up to
// rounding: a backend may order its sums differently for the two layouts).
TEST_P(Semantics, GroupedHeadsEqualRepeatedKeyValue) {
  for (std::int64_t kv_heads : {1, 2}) {
    NaiveProblem grouped = RandomProblem(2, 4, kv_heads, 5, 7, 8, 3, 21);
    grouped.causal = Causal::kBottomRight;
    grouped.mask_type = MaskType::kBool;
    grouped.mask = Array::Uniform({1, 4, 5, 7}, 22);
    for (double& x : grouped.mask.values) x = x > -0.6 ? 1 : 0;
    NaiveProblem repeated = grouped;
    repeated.key = Array({2, 4, 7, 8});
    repeated.value = Array({2, 4, 7, 3});
    for (std::int64_t b = 0; b < 2; ++b) {
      for (std::int64_t h = 0; h < 4; ++h) {
        const std::int64_t g = h / (4 / kv_heads);
        for (std::int64_t j = 0; j < 7; ++j) {
          for (std::int64_t d = 0; d < 8; ++d)
            repeated.key({b, h, j, d}) = grouped.key({b, g, j, d});
          for (std::int64_t d = 0; d < 3; ++d) {
            repeated.value({b, h, j, d}) = grouped.value({b, g, j, d});
          }
        }
      }
    }
    const NaiveResult a64 = Run<double>(grouped), b64 = Run<double>(repeated);
    EXPECT_TRUE(sdpa_test::AllClose(a64.out, b64.out, {1e-14, 1e-14})) << "kv_heads " << kv_heads;
    EXPECT_TRUE(sdpa_test::AllClose(a64.lse, b64.lse, {1e-14, 1e-14})) << "kv_heads " << kv_heads;
    const NaiveResult a32 = Run<float>(grouped), b32 = Run<float>(repeated);
    EXPECT_TRUE(sdpa_test::AllClose(a32.out, b32.out, {1e-6, 1e-6})) << "kv_heads " << kv_heads;
    EXPECT_TRUE(sdpa_test::AllClose(a32.lse, b32.lse, {1e-6, 1e-6})) << "kv_heads " << kv_heads;
    const NaiveResult expected = sdpa_test::NaiveAttention(grouped);
    EXPECT_TRUE(sdpa_test::AllClose(a64.out, expected.out, {1e-14, 1e-14}));
  }
}

// ---- Rows with no visible key -------------------------------------------------------------

TEST_P(Semantics, FullyMaskedRowGivesZeroAndNegativeInfinityLse) {
  NaiveProblem p = RandomProblem(1, 2, 1, 3, 4, 8, 5, 23);
  for (MaskType type : {MaskType::kBool, MaskType::kAdditive}) {
    p.mask_type = type;
    const double hidden = type == MaskType::kBool ? 0.0 : -kInf;
    p.mask = Array({1, 2, 3, 4}, type == MaskType::kBool ? 1.0 : 0.0);
    for (std::int64_t j = 0; j < 4; ++j) {
      p.mask({0, 0, 1, j}) = hidden;  // head 0, row 1
      p.mask({0, 1, 2, j}) = hidden;  // head 1, row 2
    }
    for (auto run : {&Semantics::Run<float>, &Semantics::Run<double>}) {
      const NaiveResult r = (this->*run)(p);
      EXPECT_EQ(r.lse({0, 0, 1}), -kInf);
      EXPECT_EQ(r.lse({0, 1, 2}), -kInf);
      for (std::int64_t e = 0; e < 5; ++e) {
        EXPECT_EQ(r.out({0, 0, 1, e}), 0.0);
        EXPECT_EQ(r.out({0, 1, 2, e}), 0.0);
      }
      // The other rows are ordinary.
      const NaiveResult expected = sdpa_test::NaiveAttention(p);
      EXPECT_TRUE(sdpa_test::AllClose(r.out, expected.out, {2e-7, 2e-7}));
      EXPECT_TRUE(std::isfinite(r.lse({0, 0, 0})));
    }
  }
}

TEST_P(Semantics, CausalRowWithNoKeyGivesZeroAndNegativeInfinityLse) {
  // Bottom-right with Lq = 5 > Lkv = 3: rows 0 and 1 see no key.
  NaiveProblem p = RandomProblem(1, 1, 1, 5, 3, 4, 2, 24);
  p.causal = Causal::kBottomRight;
  const NaiveResult r = Run<double>(p);
  for (std::int64_t i : {0, 1}) {
    EXPECT_EQ(r.lse({0, 0, i}), -kInf);
    EXPECT_EQ(r.out({0, 0, i, 0}), 0.0);
    EXPECT_EQ(r.out({0, 0, i, 1}), 0.0);
  }
  EXPECT_TRUE(std::isfinite(r.lse({0, 0, 2})));
}

// ---- Masked positions are never read ----------------------------------------------------------

// Runs `p` as given and with the K and V rows `hidden` (kv_len indices, every batch and kv head
// unless `kv_head` >= 0) overwritten by `garbage`. No bit of out or lse may change.
void ExpectRowsNotRead(const Semantics& test, const NaiveProblem& p,
                       const std::vector<std::int64_t>& hidden, double garbage,
                       NaiveResult (Semantics::*run)(const NaiveProblem&) const,
                       std::int64_t kv_head = -1) {
  NaiveProblem dirty = p;
  for (std::int64_t b = 0; b < p.key.shape[0]; ++b) {
    for (std::int64_t g = 0; g < p.key.shape[1]; ++g) {
      if (kv_head >= 0 && g != kv_head) continue;
      for (std::int64_t j : hidden) {
        for (std::int64_t d = 0; d < p.key.shape[3]; ++d) dirty.key({b, g, j, d}) = garbage;
        for (std::int64_t d = 0; d < p.value.shape[3]; ++d) dirty.value({b, g, j, d}) = garbage;
      }
    }
  }
  const NaiveResult clean = (test.*run)(p), got = (test.*run)(dirty);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.out, clean.out)) << "garbage " << garbage;
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.lse, clean.lse)) << "garbage " << garbage;
  for (double x : got.out.values) ASSERT_FALSE(std::isnan(x)) << "garbage " << garbage;
}

TEST_P(Semantics, NaNInBoolMaskedKeysDoesNotLeak) {
  NaiveProblem p = RandomProblem(2, 2, 2, 3, 6, 4, 3, 25);
  p.mask_type = MaskType::kBool;
  p.mask = Array({2, 1, 1, 6}, {1, 0, 1, 1, 0, 1,  //
                                1, 0, 1, 1, 0, 1});
  for (double garbage : {kNaN, kInf, -kInf}) {
    ExpectRowsNotRead(*this, p, {1, 4}, garbage, &Semantics::Run<double>);
    ExpectRowsNotRead(*this, p, {1, 4}, garbage, &Semantics::Run<float>);
  }
}

TEST_P(Semantics, NaNInAdditiveMaskedKeysDoesNotLeak) {
  NaiveProblem p = RandomProblem(2, 2, 2, 3, 6, 4, 3, 26);
  p.mask_type = MaskType::kAdditive;
  p.mask = Array({3, 6}, {-kInf, 0.5, 0, -kInf, 1, -2,  //
                          -kInf, 0, 0, -kInf, 0, 0,     //
                          -kInf, 3, 0, -kInf, 0, 0.25});
  for (double garbage : {kNaN, kInf, -kInf}) {
    ExpectRowsNotRead(*this, p, {0, 3}, garbage, &Semantics::Run<double>);
    ExpectRowsNotRead(*this, p, {0, 3}, garbage, &Semantics::Run<float>);
  }
}

TEST_P(Semantics, NaNInCausallyHiddenKeysDoesNotLeak) {
  // Top-left with Lq = 3 < Lkv = 6: keys 3, 4, 5 are visible to no query.
  NaiveProblem p = RandomProblem(1, 2, 1, 3, 6, 4, 3, 27);
  p.causal = Causal::kTopLeft;
  for (double garbage : {kNaN, kInf}) {
    ExpectRowsNotRead(*this, p, {3, 4, 5}, garbage, &Semantics::Run<double>);
    ExpectRowsNotRead(*this, p, {3, 4, 5}, garbage, &Semantics::Run<float>);
  }
}

TEST_P(Semantics, NaNInKeysOfRowsWithNoVisibleKeyDoesNotLeak) {
  // Bottom-right with Lq = 5 > Lkv = 3: rows 0 and 1 see no key, so they stay 0 and -inf even
  // when every key and value is NaN.
  NaiveProblem p = RandomProblem(1, 1, 1, 5, 3, 4, 2, 28);
  p.causal = Causal::kBottomRight;
  for (double& x : p.key.values) x = kNaN;
  for (double& x : p.value.values) x = kNaN;
  const NaiveResult r = Run<double>(p);
  for (std::int64_t i : {0, 1}) {
    EXPECT_EQ(r.lse({0, 0, i}), -kInf);
    EXPECT_EQ(r.out({0, 0, i, 0}), 0.0);
  }
}

TEST_P(Semantics, NaNInKvHeadMaskedPerQueryHeadDoesNotLeak) {
  // H = 4, Hkv = 2: query heads 2 and 3 read kv head 1 and hide its key 0 with a per-head mask;
  // heads 0 and 1 see key 0 of kv head 0, which is clean.
  NaiveProblem p = RandomProblem(1, 4, 2, 3, 4, 4, 2, 29);
  p.mask_type = MaskType::kBool;
  p.mask = Array({4, 1, 4}, {1, 1, 1, 1,  //
                             1, 1, 1, 1,  //
                             0, 1, 1, 1,  //
                             0, 1, 1, 1});
  ExpectRowsNotRead(*this, p, {0}, kNaN, &Semantics::Run<double>, /*kv_head=*/1);
  ExpectRowsNotRead(*this, p, {0}, kNaN, &Semantics::Run<float>, /*kv_head=*/1);
}

// A mask entry at a position the causal rule hides is not read either.
TEST_P(Semantics, AdditiveMaskIsNotReadAtCausallyHiddenPositions) {
  NaiveProblem p = RandomProblem(1, 1, 1, 3, 3, 4, 2, 30);
  p.causal = Causal::kTopLeft;
  p.mask_type = MaskType::kAdditive;
  p.mask = Array({3, 3}, 0.0);
  const NaiveResult clean = Run<double>(p);
  p.mask = Array({3, 3}, {0, kNaN, kInf,  //
                          0, 0, kNaN,     //
                          0, 0, 0});
  const NaiveResult dirty = Run<double>(p);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(dirty.out, clean.out));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(dirty.lse, clean.lse));
}

// ---- Non-finite additive masks at visible positions --------------------------------------------

TEST_P(Semantics, PositiveInfinityOrNaNInAdditiveMaskGivesNaNRow) {
  NaiveProblem p = RandomProblem(1, 1, 1, 3, 4, 4, 2, 31);
  p.mask_type = MaskType::kAdditive;
  for (double bad : {kInf, kNaN}) {
    p.mask = Array({3, 4}, 0.0);
    p.mask({1, 2}) = bad;  // row 1 only
    for (auto run : {&Semantics::Run<float>, &Semantics::Run<double>}) {
      const NaiveResult r = (this->*run)(p);
      EXPECT_TRUE(std::isnan(r.lse({0, 0, 1}))) << bad;
      EXPECT_TRUE(std::isnan(r.out({0, 0, 1, 0})) && std::isnan(r.out({0, 0, 1, 1}))) << bad;
      for (std::int64_t i : {0, 2}) {
        EXPECT_TRUE(std::isfinite(r.lse({0, 0, i}))) << bad;
        EXPECT_TRUE(std::isfinite(r.out({0, 0, i, 0}))) << bad;
      }
    }
  }
}

// ---- Empty sizes ----------------------------------------------------------------------------

TEST_P(Semantics, EmptyQueryGivesEmptyOutput) {
  // Lq = 0: every view with no element may have a null data pointer.
  const float kv[2 * 3 * 4] = {};
  const sdpa::TensorView q(static_cast<const float*>(nullptr), {2, 0, 4});
  const sdpa::TensorView k(kv, {2, 3, 4}), v(kv, {2, 3, 2});
  sdpa::Forward(q, k, v, sdpa::MutableTensorView(static_cast<float*>(nullptr), {2, 0, 2}),
                sdpa::MutableTensorView(static_cast<float*>(nullptr), {2, 0}), Opts());
  const sdpa::AttentionResult r = sdpa::AttentionWithLse(q, k, v, Opts());
  EXPECT_EQ(r.out.shape(), (std::vector<std::int64_t>{2, 0, 2}));
  EXPECT_EQ(r.lse.shape(), (std::vector<std::int64_t>{2, 0}));
}

TEST_P(Semantics, EmptyKeysGiveZeroRowsAndNegativeInfinityLse) {
  // Lkv = 0: key and value have no element (null data); every row has no visible key.
  for (Causal causal : {Causal::kNone, Causal::kTopLeft, Causal::kBottomRight}) {
    const double q[2 * 3] = {1, 2, 3, 4, 5, 6};
    double out[2 * 4], lse[2];
    std::fill(out, out + 8, sdpa_test::kSentinel);
    std::fill(lse, lse + 2, sdpa_test::kSentinel);
    const sdpa::TensorView k(static_cast<const double*>(nullptr), {0, 3});
    const sdpa::TensorView v(static_cast<const double*>(nullptr), {0, 4});
    sdpa::Forward(sdpa::TensorView(q, {2, 3}), k, v, sdpa::MutableTensorView(out, {2, 4}),
                  sdpa::MutableTensorView(lse, {2}), Opts(causal));
    for (double x : out) EXPECT_EQ(x, 0.0) << sdpa::CausalName(causal);
    for (double x : lse) EXPECT_EQ(x, -kInf) << sdpa::CausalName(causal);
  }
}

TEST_P(Semantics, EmptyBatchOrHeadsIsAccepted) {
  const NaiveProblem no_batch = RandomProblem(0, 2, 1, 3, 4, 4, 2, 32);
  EXPECT_EQ(Run<double>(no_batch).out.size(), 0);
  const NaiveProblem no_heads = RandomProblem(2, 0, 1, 3, 4, 4, 2, 33);
  EXPECT_EQ(Run<double>(no_heads).out.size(), 0);
}

TEST_P(Semantics, ZeroHeadDimAttendsUniformly) {
  // D = 0: every score is 0 (and the default scale is 1), so out = mean(V), lse = log(Lkv).
  NaiveProblem p = RandomProblem(1, 1, 1, 2, 4, 0, 3, 34);
  p.scale = 1.0;
  const NaiveResult r = sdpa_test::RunForward<double>(p, Opts());
  for (std::int64_t i = 0; i < 2; ++i) {
    EXPECT_NEAR(r.lse({0, 0, i}), std::log(4.0), 1e-15);
    for (std::int64_t e = 0; e < 3; ++e) {
      double mean = 0;
      for (std::int64_t j = 0; j < 4; ++j) mean += p.value({0, 0, j, e}) / 4;
      EXPECT_NEAR(r.out({0, 0, i, e}), mean, 1e-15);
    }
  }
}

TEST_P(Semantics, ZeroValueDimStillGivesLse) {
  const NaiveProblem p = RandomProblem(1, 2, 2, 3, 4, 5, 0, 35);
  const NaiveResult r = Run<double>(p);
  EXPECT_EQ(r.out.size(), 0);
  EXPECT_TRUE(sdpa_test::AllClose(r.lse, sdpa_test::NaiveAttention(p).lse, {1e-14, 1e-14}));
}

// ---- Max-subtracted softmax: no overflow ---------------------------------------------------

// Scores 1e4 and 1e4 - 1 (exact in float32): weights 1/(1 + e^-1) and e^-1/(1 + e^-1),
// lse = 1e4 + log(1 + e^-1). A softmax without max subtraction overflows exp(1e4).
TEST_P(Semantics, LogitsOfMagnitude1e4AreStable) {
  for (double sign : {1.0, -1.0}) {
    NaiveProblem p;
    p.query = Array({1, 1, 1, 1}, {sign * 1e4});
    p.key = Array({1, 1, 2, 1}, {1, 1});
    p.value = Array({1, 1, 2, 2}, {1, -1, 3, 5});
    p.scale = 1.0;
    p.mask_type = MaskType::kAdditive;
    p.mask = Array({2}, {0, -1});
    const double top = sign * 1e4, w0 = 1 / (1 + std::exp(-1.0)), w1 = 1 - w0;
    const Array out({1, 1, 1, 2}, {w0 * 1 + w1 * 3, w0 * -1 + w1 * 5});
    const Array lse({1, 1, 1}, {top + std::log1p(std::exp(-1.0))});
    EXPECT_TRUE(sdpa_test::AllClose(Run<double>(p).out, out, {1e-12, 1e-12})) << sign;
    EXPECT_TRUE(sdpa_test::AllClose(Run<double>(p).lse, lse, {0, 1e-15})) << sign;
    EXPECT_TRUE(sdpa_test::AllClose(Run<float>(p).out, out, {1e-6, 1e-6})) << sign;
    EXPECT_TRUE(sdpa_test::AllClose(Run<float>(p).lse, lse, {0, 1e-7})) << sign;
  }
}

TEST_P(Semantics, HugeFiniteLogitsStayFinite) {
  // Logits of +-1e300 in float64 and +-1e36 in float32 (two equal keys: weights 1/2 each).
  struct Huge {
    double q, k;
    bool float32;
  };
  for (const Huge& c : {Huge{1e150, 1e150, false}, Huge{-1e150, 1e150, false},
                        Huge{1e18, 1e18, true}, Huge{-1e18, 1e18, true}}) {
    NaiveProblem p;
    p.query = Array({1, 1, 1, 1}, {c.q});
    p.key = Array({1, 1, 2, 1}, {c.k, c.k});
    p.value = Array({1, 1, 2, 1}, {2, 4});
    p.scale = 1.0;
    if (c.float32) {
      p.query = p.query.RoundedToFloat();
      p.key = p.key.RoundedToFloat();
    }
    const NaiveResult r = c.float32 ? Run<float>(p) : Run<double>(p);
    EXPECT_EQ(r.out({0, 0, 0, 0}), 3.0) << c.q;
    const double logit = p.query.values[0] * p.key.values[0];
    EXPECT_TRUE(std::isfinite(r.lse({0, 0, 0}))) << c.q;
    EXPECT_NEAR(r.lse({0, 0, 0}), logit, std::fabs(logit) * 1e-6) << c.q;
  }
}

// ---- Owned-result overloads -------------------------------------------------------------------

TEST_P(Semantics, OwnedOverloadsMatchForward) {
  const NaiveProblem p = RandomProblem(2, 4, 2, 3, 5, 8, 6, 36);
  sdpa_test::Buffer<float> q(p.query), k(p.key), v(p.value);
  const sdpa::Options options = Opts(Causal::kBottomRight);

  const sdpa::Tensor out = sdpa::Attention(q.view(), k.view(), v.view(), options);
  EXPECT_EQ(out.dtype(), sdpa::DType::kFloat32);
  EXPECT_EQ(out.shape(), (std::vector<std::int64_t>{2, 4, 3, 6}));
  const sdpa::AttentionResult both = sdpa::AttentionWithLse(q.view(), k.view(), v.view(), options);
  EXPECT_EQ(both.out.shape(), (std::vector<std::int64_t>{2, 4, 3, 6}));
  EXPECT_EQ(both.lse.shape(), (std::vector<std::int64_t>{2, 4, 3}));
  EXPECT_EQ(both.lse.dtype(), sdpa::DType::kFloat32);

  sdpa::Tensor out2(sdpa::DType::kFloat32, {2, 4, 3, 6}), lse2(sdpa::DType::kFloat32, {2, 4, 3});
  sdpa::Forward(q.view(), k.view(), v.view(), out2.mutable_view(), lse2.mutable_view(), options);
  EXPECT_TRUE(
      sdpa_test::BitwiseEqual(sdpa_test::ReadView(out.view()), sdpa_test::ReadView(out2.view())));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(both.out.view()),
                                      sdpa_test::ReadView(out2.view())));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(both.lse.view()),
                                      sdpa_test::ReadView(lse2.view())));
  // Forward without lse writes the same out.
  sdpa::Tensor out3(sdpa::DType::kFloat32, {2, 4, 3, 6});
  sdpa::Forward(q.view(), k.view(), v.view(), out3.mutable_view(), options);
  EXPECT_TRUE(
      sdpa_test::BitwiseEqual(sdpa_test::ReadView(out3.view()), sdpa_test::ReadView(out2.view())));
}

std::string BackendParamName(const ::testing::TestParamInfo<Backend>& info) {
  return sdpa::BackendName(info.param);
}

INSTANTIATE_TEST_SUITE_P(Backends, Semantics, ::testing::Values(Backend::kReference, Backend::kCpu),
                         BackendParamName);

}  // namespace

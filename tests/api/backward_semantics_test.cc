// The rules of docs/semantics.md's "Backward" section, one test each, on each backend: gradients
// against the tests' independent naive backward, rows without keys, non-finite values in hidden
// K/V rows, empty sizes, GQA sums, what out and lse are used for, views and the owned overload.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/backward_harness.h"
#include "testing/expect.h"
#include "testing/harness.h"
#include "testing/naive_attention.h"
#include "testing/naive_backward.h"
#include "testing/problems.h"
#include "testing/tensors.h"

namespace {

using sdpa::Backend;
using sdpa::Causal;
using sdpa_test::Array;
using sdpa_test::MaskType;
using sdpa_test::NaiveGradients;
using sdpa_test::NaiveProblem;
using sdpa_test::NaiveResult;
using sdpa_test::Tolerance;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// float64 gradients of O(1) inputs against a long-double oracle: a few hundred roundings of
// 1.1e-16 each at most.
constexpr Tolerance kTol64{1e-13, 1e-12};

// Backward calls on one backend, with the problem's causal rule and scale.
struct On {
  Backend backend;

  sdpa::Options Opts(const NaiveProblem& p) const {
    sdpa::Options options;
    options.backend = backend;
    options.causal = p.causal;
    options.scale = p.scale;
    return options;
  }
  template <typename T>
  NaiveGradients Run(const NaiveProblem& p, const Array& grad_out) const {
    return sdpa_test::RunBackward<T>(p, grad_out, Opts(p));
  }
};

class BackwardSemantics : public ::testing::TestWithParam<Backend> {
 public:
  sdpa::Options Opts(const NaiveProblem& p) const { return On{GetParam()}.Opts(p); }
  template <typename T>
  NaiveGradients Run(const NaiveProblem& p, const Array& grad_out) const {
    return On{GetParam()}.Run<T>(p, grad_out);
  }
};

// Random Q, K in [-2, 2) and V, float32-representable so both types see the same values.
NaiveProblem RandomProblem(std::int64_t batch, std::int64_t heads, std::int64_t kv_heads,
                           std::int64_t q_len, std::int64_t kv_len, std::int64_t head_dim,
                           std::int64_t v_dim, std::uint64_t seed) {
  return sdpa_test::RandomProblem(batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim, seed,
                                  /*qk_range=*/2.0);
}
// A random grad_out for `p`.
Array GradOut(const NaiveProblem& p, std::uint64_t seed) {
  return Array::Uniform({p.query.shape[0], p.query.shape[1], p.query.shape[2], p.value.shape[3]},
                        seed)
      .RoundedToFloat();
}

double MaxAbs(const Array& a) {
  double m = 0;
  for (double x : a.values) m = std::max(m, std::fabs(x));
  return m;
}
bool AllFinite(const NaiveGradients& g) {
  for (const Array* a : {&g.query, &g.key, &g.value}) {
    for (double x : a->values) {
      if (!std::isfinite(x)) return false;
    }
  }
  return true;
}

// ---- The formulas ----------------------------------------------------------------------------

struct Case {
  const char* name;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  Causal causal = Causal::kNone;
  MaskType mask_type = MaskType::kNone;
  std::vector<std::int64_t> mask_shape = {};  // empty: [B, H, Lq, Lkv]
};

TEST_P(BackwardSemantics, GradientsMatchNaiveBackward) {
  const std::vector<Case> cases = {
      {"single", 1, 1, 1, 1, 1, 1, 1},
      {"odd_dims", 2, 3, 3, 7, 9, 5, 3},
      {"gqa_top_left", 2, 4, 2, 6, 6, 4, 4, Causal::kTopLeft},
      {"mqa_bottom_right_long_kv", 1, 3, 1, 4, 9, 3, 5, Causal::kBottomRight},
      {"bottom_right_long_q", 1, 2, 2, 9, 4, 4, 2, Causal::kBottomRight},
      {"top_left_long_q", 1, 2, 1, 9, 4, 4, 2, Causal::kTopLeft},
      {"bool_mask_broadcast", 2, 4, 2, 5, 7, 4, 4, Causal::kNone, MaskType::kBool, {2, 1, 1, 7}},
      {"additive_mask_rows", 1, 3, 1, 5, 7, 4, 6, Causal::kNone, MaskType::kAdditive, {5, 7}},
      {"causal_and_bool", 1, 2, 2, 8, 8, 4, 4, Causal::kBottomRight, MaskType::kBool},
      {"causal_and_additive", 2, 2, 1, 6, 9, 3, 3, Causal::kTopLeft, MaskType::kAdditive},
  };
  std::uint64_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    NaiveProblem p = RandomProblem(c.batch, c.heads, c.kv_heads, c.q_len, c.kv_len, c.head_dim,
                                   c.v_dim, seed += 10);
    p.causal = c.causal;
    p.mask_type = c.mask_type;
    const std::vector<std::int64_t> mask_shape =
        c.mask_shape.empty() ? std::vector<std::int64_t>{c.batch, c.heads, c.q_len, c.kv_len}
                             : c.mask_shape;
    if (c.mask_type != MaskType::kNone) {
      p.mask = Array::Uniform(mask_shape, seed + 5, -1, 1);
      sdpa_test::Random random(seed + 6);
      for (double& x : p.mask.values) {
        const bool keep = random.Bernoulli(0.7);
        if (c.mask_type == MaskType::kBool) x = keep ? 1.0 : 0.0;
        if (c.mask_type == MaskType::kAdditive && !keep) x = -kInf;
      }
    }
    const Array dout = GradOut(p, seed + 7);
    const NaiveGradients want = sdpa_test::NaiveBackward<long double>(p, dout);
    const NaiveGradients got = Run<double>(p, dout);
    EXPECT_TRUE(sdpa_test::AllClose(got.query, want.query, kTol64)) << "grad_query";
    EXPECT_TRUE(sdpa_test::AllClose(got.key, want.key, kTol64)) << "grad_key";
    EXPECT_TRUE(sdpa_test::AllClose(got.value, want.value, kTol64)) << "grad_value";
  }
}

// An explicit scale multiplies the scores, so it multiplies dq and dk too; scale 0 makes every
// visible key equally likely: dq = dk = 0 and dv_j = Σ_i dO_i / (keys row i sees).
TEST_P(BackwardSemantics, ZeroScaleGivesZeroQueryAndKeyGradients) {
  NaiveProblem p = RandomProblem(1, 2, 1, 3, 4, 5, 2, 40);
  p.scale = 0.0;
  const Array dout = GradOut(p, 41);
  for (auto run : {&BackwardSemantics::Run<float>, &BackwardSemantics::Run<double>}) {
    const NaiveGradients g = (this->*run)(p, dout);
    EXPECT_TRUE(sdpa_test::AllClose(g.query, Array(p.query.shape), {0, 0}));
    EXPECT_TRUE(sdpa_test::AllClose(g.key, Array(p.key.shape), {0, 0}));
    Array dv(p.value.shape);
    for (std::int64_t j = 0; j < 4; ++j) {
      for (std::int64_t e = 0; e < 2; ++e) {
        for (std::int64_t h = 0; h < 2; ++h) {
          for (std::int64_t i = 0; i < 3; ++i) dv({0, 0, j, e}) += dout({0, h, i, e}) / 4;
        }
      }
    }
    EXPECT_TRUE(sdpa_test::AllClose(g.value, dv, {1e-6, 1e-6}));
  }
}

// ---- Rows with no visible key ------------------------------------------------------------------

// Runs `p` and the same problem with the query and grad_out rows `rows` (of batch 0, head
// `head`) replaced by other values, finite or not (padding rows may hold anything). dq of those
// rows must be exactly 0 and no other gradient bit may change: such rows contribute nothing.
template <typename T>
void ExpectRowsContributeNothing(const BackwardSemantics& test, const NaiveProblem& p,
                                 const std::vector<std::int64_t>& rows, std::int64_t head) {
  const Array dout = GradOut(p, 50);
  const NaiveGradients clean = test.Run<T>(p, dout);
  for (double garbage : {1e3, kNaN, kInf}) {
    NaiveProblem moved = p;
    Array moved_dout = dout;
    for (std::int64_t i : rows) {
      for (std::int64_t d = 0; d < p.query.shape[3]; ++d) moved.query({0, head, i, d}) = garbage;
      for (std::int64_t e = 0; e < p.value.shape[3]; ++e) moved_dout({0, head, i, e}) = -garbage;
    }
    const NaiveGradients got = test.Run<T>(moved, moved_dout);
    for (std::int64_t i : rows) {
      for (std::int64_t d = 0; d < p.query.shape[3]; ++d) {
        EXPECT_EQ(clean.query({0, head, i, d}), 0.0) << "row " << i;
        EXPECT_EQ(got.query({0, head, i, d}), 0.0) << "row " << i << ", garbage " << garbage;
      }
    }
    EXPECT_TRUE(sdpa_test::BitwiseEqual(got.query, clean.query)) << "garbage " << garbage;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(got.key, clean.key)) << "garbage " << garbage;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(got.value, clean.value)) << "garbage " << garbage;
  }
}

TEST_P(BackwardSemantics, FullyMaskedRowContributesNothing) {
  NaiveProblem p = RandomProblem(1, 2, 1, 4, 6, 4, 3, 51);
  p.mask_type = MaskType::kBool;
  p.mask = Array({1, 2, 4, 6}, 1.0);
  for (std::int64_t j = 0; j < 6; ++j) p.mask({0, 1, 2, j}) = 0.0;  // head 1, row 2
  ExpectRowsContributeNothing<double>(*this, p, {2}, 1);
  ExpectRowsContributeNothing<float>(*this, p, {2}, 1);

  p.mask_type = MaskType::kAdditive;
  p.mask = Array::Uniform({1, 2, 4, 6}, 52);
  for (std::int64_t j = 0; j < 6; ++j) p.mask({0, 0, 3, j}) = -kInf;  // head 0, row 3
  ExpectRowsContributeNothing<double>(*this, p, {3}, 0);
  ExpectRowsContributeNothing<float>(*this, p, {3}, 0);
}

TEST_P(BackwardSemantics, CausalRowWithNoKeyContributesNothing) {
  // Bottom-right with Lq = 5 > Lkv = 3: rows 0 and 1 see no key.
  NaiveProblem p = RandomProblem(1, 2, 2, 5, 3, 4, 2, 53);
  p.causal = Causal::kBottomRight;
  ExpectRowsContributeNothing<double>(*this, p, {0, 1}, 1);
  ExpectRowsContributeNothing<float>(*this, p, {0, 1}, 0);
}

// ---- Non-finite values in hidden K/V rows --------------------------------------------------

// Runs `p` as given and with the K and V rows `hidden` (kv_len indices, every batch and kv head
// unless `kv_head` >= 0) overwritten by `garbage`; no query may see those rows. The gradients of
// the hidden keys and values are exactly 0, every gradient is finite, and the others keep their
// bits.
template <typename T>
void ExpectHiddenRowsDoNotLeak(const BackwardSemantics& test, const NaiveProblem& p,
                               const std::vector<std::int64_t>& hidden, double garbage,
                               std::int64_t kv_head = -1) {
  NaiveProblem dirty = p;
  for (std::int64_t b = 0; b < p.key.shape[0]; ++b) {
    for (std::int64_t g = 0; g < p.key.shape[1]; ++g) {
      if (kv_head >= 0 && g != kv_head) continue;
      for (std::int64_t j : hidden) {
        for (std::int64_t d = 0; d < p.key.shape[3]; ++d) dirty.key({b, g, j, d}) = garbage;
        for (std::int64_t e = 0; e < p.value.shape[3]; ++e) dirty.value({b, g, j, e}) = garbage;
      }
    }
  }
  const Array dout = GradOut(p, 60);
  const NaiveGradients clean = test.Run<T>(p, dout), got = test.Run<T>(dirty, dout);
  EXPECT_TRUE(AllFinite(got)) << "garbage " << garbage;
  for (std::int64_t b = 0; b < p.key.shape[0]; ++b) {
    for (std::int64_t g = 0; g < p.key.shape[1]; ++g) {
      if (kv_head >= 0 && g != kv_head) continue;
      for (std::int64_t j : hidden) {
        for (std::int64_t d = 0; d < p.key.shape[3]; ++d) {
          EXPECT_EQ(got.key({b, g, j, d}), 0.0) << "grad_key row " << j;
        }
        for (std::int64_t e = 0; e < p.value.shape[3]; ++e) {
          EXPECT_EQ(got.value({b, g, j, e}), 0.0) << "grad_value row " << j;
        }
      }
    }
  }
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.query, clean.query)) << "garbage " << garbage;
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.key, clean.key)) << "garbage " << garbage;
  EXPECT_TRUE(sdpa_test::BitwiseEqual(got.value, clean.value)) << "garbage " << garbage;
}

TEST_P(BackwardSemantics, NaNInBoolMaskedKeysDoesNotLeak) {
  NaiveProblem p = RandomProblem(2, 2, 2, 3, 6, 4, 3, 61);
  p.mask_type = MaskType::kBool;
  p.mask = Array({2, 1, 1, 6}, {1, 0, 1, 1, 0, 1,  //
                                1, 0, 1, 1, 0, 1});
  for (double garbage : {kNaN, kInf, -kInf}) {
    ExpectHiddenRowsDoNotLeak<double>(*this, p, {1, 4}, garbage);
    ExpectHiddenRowsDoNotLeak<float>(*this, p, {1, 4}, garbage);
  }
}

TEST_P(BackwardSemantics, NaNInAdditiveMaskedKeysDoesNotLeak) {
  NaiveProblem p = RandomProblem(2, 2, 2, 3, 6, 4, 3, 62);
  p.mask_type = MaskType::kAdditive;
  p.mask = Array({3, 6}, {-kInf, 0.5, 0, -kInf, 1, -2,  //
                          -kInf, 0, 0, -kInf, 0, 0,     //
                          -kInf, 3, 0, -kInf, 0, 0.25});
  for (double garbage : {kNaN, kInf, -kInf}) {
    ExpectHiddenRowsDoNotLeak<double>(*this, p, {0, 3}, garbage);
    ExpectHiddenRowsDoNotLeak<float>(*this, p, {0, 3}, garbage);
  }
}

TEST_P(BackwardSemantics, NaNInCausallyHiddenKeysDoesNotLeak) {
  // Top-left with Lq = 3 < Lkv = 6: keys 3, 4, 5 are visible to no query.
  NaiveProblem p = RandomProblem(1, 2, 1, 3, 6, 4, 3, 63);
  p.causal = Causal::kTopLeft;
  for (double garbage : {kNaN, kInf, -kInf}) {
    ExpectHiddenRowsDoNotLeak<double>(*this, p, {3, 4, 5}, garbage);
    ExpectHiddenRowsDoNotLeak<float>(*this, p, {3, 4, 5}, garbage);
  }
}

TEST_P(BackwardSemantics, NaNInKvHeadMaskedPerQueryHeadDoesNotLeak) {
  // H = 4, Hkv = 2: query heads 2 and 3 read kv head 1 and hide its key 0 with a per-head mask;
  // heads 0 and 1 see key 0 of kv head 0, which is clean.
  NaiveProblem p = RandomProblem(1, 4, 2, 3, 4, 4, 2, 64);
  p.mask_type = MaskType::kBool;
  p.mask = Array({4, 1, 4}, {1, 1, 1, 1,  //
                             1, 1, 1, 1,  //
                             0, 1, 1, 1,  //
                             0, 1, 1, 1});
  for (double garbage : {kNaN, kInf}) {
    ExpectHiddenRowsDoNotLeak<double>(*this, p, {0}, garbage, /*kv_head=*/1);
    ExpectHiddenRowsDoNotLeak<float>(*this, p, {0}, garbage, /*kv_head=*/1);
  }
}

// Keys hidden by a long mask in a tile of the CPU engine (more than one micro-tile of keys),
// with the first and last keys of the row hidden.
TEST_P(BackwardSemantics, NaNInManyMaskedKeysDoesNotLeak) {
  NaiveProblem p = RandomProblem(1, 2, 1, 20, 40, 8, 8, 65);
  p.mask_type = MaskType::kAdditive;
  p.mask = Array::Uniform({40}, 66);
  std::vector<std::int64_t> hidden;
  for (std::int64_t j = 0; j < 40; ++j) {
    if (j % 3 == 0 || j == 39) {
      p.mask({j}) = -kInf;
      hidden.push_back(j);
    }
  }
  ExpectHiddenRowsDoNotLeak<double>(*this, p, hidden, kNaN);
  ExpectHiddenRowsDoNotLeak<float>(*this, p, hidden, kNaN);
}

// An additive mask entry at a position the causal rule hides is not read by the backward either.
TEST_P(BackwardSemantics, AdditiveMaskIsNotReadAtCausallyHiddenPositions) {
  NaiveProblem p = RandomProblem(1, 1, 1, 3, 3, 4, 2, 67);
  p.causal = Causal::kTopLeft;
  p.mask_type = MaskType::kAdditive;
  p.mask = Array({3, 3}, 0.0);
  const Array dout = GradOut(p, 68);
  const NaiveGradients clean = Run<double>(p, dout);
  p.mask = Array({3, 3}, {0, kNaN, kInf,  //
                          0, 0, kNaN,     //
                          0, 0, 0});
  const NaiveGradients dirty = Run<double>(p, dout);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(dirty.query, clean.query));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(dirty.key, clean.key));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(dirty.value, clean.value));
}

// ---- Empty sizes ---------------------------------------------------------------------------

TEST_P(BackwardSemantics, EmptyQueryGivesZeroKeyAndValueGradients) {
  // Lq = 0: no query sees any key; dk and dv are written as 0 (over the harness's sentinel).
  for (Causal causal : {Causal::kNone, Causal::kTopLeft, Causal::kBottomRight}) {
    NaiveProblem p = RandomProblem(2, 2, 1, 0, 5, 4, 3, 70);
    p.causal = causal;
    const NaiveGradients g = Run<double>(p, GradOut(p, 71));
    EXPECT_EQ(g.query.size(), 0);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(g.key, Array(p.key.shape))) << sdpa::CausalName(causal);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(g.value, Array(p.value.shape))) << sdpa::CausalName(causal);
  }
  // Views with no element may have null data.
  const float kv[3 * 4] = {};
  float dk[3 * 4], dv[3 * 2];
  std::fill(dk, dk + 12, 777.0f);
  std::fill(dv, dv + 6, 777.0f);
  const sdpa::TensorView empty_q(static_cast<const float*>(nullptr), {0, 4});
  const sdpa::TensorView empty_o(static_cast<const float*>(nullptr), {0, 2});
  sdpa::Options options;
  options.backend = GetParam();
  sdpa::Backward(empty_q, sdpa::TensorView(kv, {3, 4}), sdpa::TensorView(kv, {3, 2}), empty_o,
                 sdpa::TensorView(static_cast<const float*>(nullptr), {0}), empty_o,
                 sdpa::MutableTensorView(static_cast<float*>(nullptr), {0, 4}),
                 sdpa::MutableTensorView(dk, {3, 4}), sdpa::MutableTensorView(dv, {3, 2}), options);
  for (float x : dk) EXPECT_EQ(x, 0.0f);
  for (float x : dv) EXPECT_EQ(x, 0.0f);
}

TEST_P(BackwardSemantics, EmptyKeysGiveZeroQueryGradients) {
  // Lkv = 0: every row has no visible key, so dq = 0; dk and dv are empty.
  for (Causal causal : {Causal::kNone, Causal::kTopLeft, Causal::kBottomRight}) {
    NaiveProblem p = RandomProblem(2, 2, 1, 3, 0, 4, 3, 72);
    p.causal = causal;
    const NaiveGradients g = Run<float>(p, GradOut(p, 73));
    EXPECT_TRUE(sdpa_test::BitwiseEqual(g.query, Array(p.query.shape))) << sdpa::CausalName(causal);
    EXPECT_EQ(g.key.size(), 0);
    EXPECT_EQ(g.value.size(), 0);
  }
}

TEST_P(BackwardSemantics, EmptyBatchOrHeadsIsAccepted) {
  const NaiveProblem no_batch = RandomProblem(0, 2, 1, 3, 4, 4, 2, 74);
  const NaiveGradients a = Run<double>(no_batch, GradOut(no_batch, 75));
  EXPECT_EQ(a.query.size() + a.key.size() + a.value.size(), 0);
  // No query head reads the one kv head: its gradients are 0.
  const NaiveProblem no_heads = RandomProblem(2, 0, 1, 3, 4, 4, 2, 76);
  const NaiveGradients b = Run<double>(no_heads, GradOut(no_heads, 77));
  EXPECT_EQ(b.query.size(), 0);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(b.key, Array(no_heads.key.shape)));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(b.value, Array(no_heads.value.shape)));
  const NaiveProblem no_kv_heads = RandomProblem(2, 0, 0, 3, 4, 4, 2, 78);
  const NaiveGradients c = Run<double>(no_kv_heads, GradOut(no_kv_heads, 79));
  EXPECT_EQ(c.query.size() + c.key.size() + c.value.size(), 0);
}

TEST_P(BackwardSemantics, ZeroValueDimGivesZeroQueryAndKeyGradients) {
  // Dv = 0: out has no element, so L does not depend on q or k: dP = Δ = dS = 0.
  const NaiveProblem p = RandomProblem(1, 2, 2, 3, 4, 5, 0, 78);
  const NaiveGradients g = Run<double>(p, GradOut(p, 79));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(g.query, Array(p.query.shape)));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(g.key, Array(p.key.shape)));
  EXPECT_EQ(g.value.size(), 0);
}

TEST_P(BackwardSemantics, ZeroHeadDimGivesUniformValueGradients) {
  // D = 0: every score is 0, so P = 1/Lkv and dv_j = Σ_i dO_i / Lkv; dq and dk are empty.
  NaiveProblem p = RandomProblem(1, 1, 1, 2, 4, 0, 3, 80);
  p.scale = 1.0;
  const Array dout = GradOut(p, 81);
  const NaiveGradients g = Run<double>(p, dout);
  EXPECT_EQ(g.query.size() + g.key.size(), 0);
  Array dv(p.value.shape);
  for (std::int64_t j = 0; j < 4; ++j) {
    for (std::int64_t e = 0; e < 3; ++e)
      dv({0, 0, j, e}) = (dout({0, 0, 0, e}) + dout({0, 0, 1, e})) / 4;
  }
  EXPECT_TRUE(sdpa_test::AllClose(g.value, dv, {1e-15, 1e-15}));
}

// ---- Grouped-query heads -----------------------------------------------------------------------

// dk and dv of kv head g are the sums over the query heads h with g(h) = g of the per-head
// gradients, which a call with K and V repeated per query head (H = Hkv) computes separately;
// dq is that call's dq.
TEST_P(BackwardSemantics, GroupedKeyGradientsSumOverQueryHeads) {
  for (std::int64_t kv_heads : {2, 1}) {  // GQA, MQA
    SCOPED_TRACE(kv_heads == 1 ? "mqa" : "gqa");
    constexpr std::int64_t B = 2, H = 6, Lq = 5, Lkv = 7, D = 4, Dv = 3;
    NaiveProblem grouped = RandomProblem(B, H, kv_heads, Lq, Lkv, D, Dv, 90);
    grouped.causal = Causal::kBottomRight;
    grouped.mask_type = MaskType::kBool;
    grouped.mask = Array({B, H, Lq, Lkv});
    sdpa_test::Random random(91);
    for (double& x : grouped.mask.values) x = random.Bernoulli(0.8) ? 1.0 : 0.0;
    NaiveProblem repeated = grouped;
    repeated.key = Array({B, H, Lkv, D});
    repeated.value = Array({B, H, Lkv, Dv});
    const std::int64_t group = H / kv_heads;
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t h = 0; h < H; ++h) {
        for (std::int64_t j = 0; j < Lkv; ++j) {
          for (std::int64_t d = 0; d < D; ++d) {
            repeated.key({b, h, j, d}) = grouped.key({b, h / group, j, d});
          }
          for (std::int64_t e = 0; e < Dv; ++e) {
            repeated.value({b, h, j, e}) = grouped.value({b, h / group, j, e});
          }
        }
      }
    }
    const Array dout = GradOut(grouped, 92);
    const NaiveGradients got = Run<double>(grouped, dout), per_head = Run<double>(repeated, dout);
    Array dk(grouped.key.shape), dv(grouped.value.shape);
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t h = 0; h < H; ++h) {
        for (std::int64_t j = 0; j < Lkv; ++j) {
          for (std::int64_t d = 0; d < D; ++d) {
            dk({b, h / group, j, d}) += per_head.key({b, h, j, d});
          }
          for (std::int64_t e = 0; e < Dv; ++e) {
            dv({b, h / group, j, e}) += per_head.value({b, h, j, e});
          }
        }
      }
    }
    // The sums differ from the engine's only in rounding order (<= 6 terms of O(1)).
    EXPECT_TRUE(sdpa_test::AllClose(got.query, per_head.query, {1e-14, 1e-14}));
    EXPECT_TRUE(sdpa_test::AllClose(got.key, dk, {1e-14, 1e-14}));
    EXPECT_TRUE(sdpa_test::AllClose(got.value, dv, {1e-14, 1e-14}));
  }
}

// ---- What out and lse are -----------------------------------------------------------------

// The reference recomputes P from q, k, v and the mask: the out and lse it is given are
// validated but not read.
TEST(BackwardReference, RecomputesProbabilities) {
  const On reference{Backend::kReference};
  NaiveProblem p = RandomProblem(1, 2, 2, 4, 5, 3, 2, 100);
  p.causal = Causal::kBottomRight;
  const Array dout = GradOut(p, 101);
  NaiveResult garbage{Array({1, 2, 4, 2}, kNaN), Array({1, 2, 4}, 5.0)};
  const NaiveGradients given =
      sdpa_test::RunBackward<double>(p, dout, reference.Opts(p), {}, 4, &garbage);
  const NaiveGradients computed = reference.Run<double>(p, dout);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(given.query, computed.query));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(given.key, computed.key));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(given.value, computed.value));
}

// out and lse from the Forward of either backend serve (they agree to float64 rounding).
TEST_P(BackwardSemantics, OutAndLseFromEitherForward) {
  NaiveProblem p = RandomProblem(2, 4, 2, 6, 9, 4, 3, 102);
  p.causal = Causal::kTopLeft;
  const Array dout = GradOut(p, 103);
  const NaiveGradients want = sdpa_test::NaiveBackward<long double>(p, dout);
  for (Backend forward_backend : {Backend::kReference, Backend::kCpu}) {
    sdpa::Options forward_options = Opts(p);
    forward_options.backend = forward_backend;
    const NaiveResult forward = sdpa_test::RunForward<double>(p, forward_options);
    const NaiveGradients got = sdpa_test::RunBackward<double>(p, dout, Opts(p), {}, 4, &forward);
    EXPECT_TRUE(sdpa_test::AllClose(got.query, want.query, kTol64));
    EXPECT_TRUE(sdpa_test::AllClose(got.key, want.key, kTol64));
    EXPECT_TRUE(sdpa_test::AllClose(got.value, want.value, kTol64));
  }
}

// float32 in, float32 out; the reference accumulates in float64 and rounds each gradient once.
TEST(BackwardReference, Float32RoundsFloat64Once) {
  const On reference{Backend::kReference};
  NaiveProblem p = RandomProblem(1, 2, 1, 5, 6, 4, 3, 104);
  p.mask_type = MaskType::kAdditive;
  p.mask = Array::Uniform({5, 6}, 105).RoundedToFloat();
  const Array dout = GradOut(p, 106);
  const NaiveGradients f32 = reference.Run<float>(p, dout), f64 = reference.Run<double>(p, dout);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(f32.query, f64.query.RoundedToFloat()));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(f32.key, f64.key.RoundedToFloat()));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(f32.value, f64.value.RoundedToFloat()));
}

// ---- Large logits ---------------------------------------------------------------------------

// Scores 1e4 + x·y (x, y in [-1, 1]) and -1e4 + x·y: a softmax over the first kind only, whose
// gradients stay finite and, in float64, accurate (an error δ in a score is an error δ in P, so
// float64's 1e4·1e-16 per score is a 1e-12 relative error). In float32 the scores themselves are
// only known to ulp(1e4) = 1e-3, so only finiteness is a rule there (tests/cpu/backward_test.cc
// bounds the float32 error against a plain float32 implementation).
TEST_P(BackwardSemantics, LogitsOfMagnitude1e4GiveFiniteGradients) {
  NaiveProblem p = RandomProblem(1, 1, 1, 3, 6, 2, 2, 110);
  p.scale = 1.0;
  for (std::int64_t i = 0; i < 3; ++i) p.query({0, 0, i, 0}) = 100;
  for (std::int64_t j = 0; j < 6; ++j) p.key({0, 0, j, 0}) = j % 2 == 0 ? 100 : -100;
  const Array dout = GradOut(p, 111);
  const NaiveGradients want = sdpa_test::NaiveBackward<long double>(p, dout);
  const NaiveGradients f64 = Run<double>(p, dout);
  EXPECT_TRUE(sdpa_test::AllClose(f64.query, want.query, {1e-10, 1e-10}));
  EXPECT_TRUE(sdpa_test::AllClose(f64.key, want.key, {1e-10, 1e-10}));
  EXPECT_TRUE(sdpa_test::AllClose(f64.value, want.value, {1e-10, 1e-10}));
  EXPECT_TRUE(AllFinite(Run<float>(p, dout)));
  EXPECT_GT(MaxAbs(want.query), 0.01) << "the case should not be trivial";
}

// ---- Views and overloads --------------------------------------------------------------------

// Ranks 2 and 3 read as rank 4 with leading size-1 dimensions, and strided, padded, transposed
// and reversed views of every operand and gradient give the same bits as contiguous ones.
TEST_P(BackwardSemantics, RanksAndLayoutsDoNotChangeGradients) {
  NaiveProblem p = RandomProblem(1, 1, 1, 5, 7, 3, 4, 120);
  p.causal = Causal::kBottomRight;
  p.mask_type = MaskType::kAdditive;
  p.mask = Array::Uniform({5, 7}, 121).RoundedToFloat();
  p.mask({2, 3}) = -kInf;
  const Array dout = GradOut(p, 122);
  const NaiveGradients rank4 = sdpa_test::RunBackward<float>(p, dout, Opts(p), {}, 4);
  for (int rank : {2, 3}) {
    const NaiveGradients g = sdpa_test::RunBackward<float>(p, dout, Opts(p), {}, rank);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(g.query, rank4.query)) << "rank " << rank;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(g.key, rank4.key)) << "rank " << rank;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(g.value, rank4.value)) << "rank " << rank;
  }
  sdpa_test::BackwardLayouts strided;
  strided.query = {{1, 0}, 2, 1, {}};  // (seq, dim) stored dim-major, every other element
  strided.key.reversed = {0, 1};
  strided.value = {{}, 3, 0, {0}};
  strided.mask = {{1, 0}, 1, 2, {1}};
  strided.out.reversed = {0};
  strided.lse = {{}, 4, 0, {0}};
  strided.grad_out = {{1, 0}, 1, 0, {0, 1}};
  strided.grad_query = {{}, 2, 5, {1}};
  strided.grad_key = {{1, 0}, 1, 3, {0}};
  strided.grad_value.reversed = {0, 1};
  for (int rank : {2, 4}) {
    // The same layouts at rank 4: leading dimensions of size 1 come first in memory.
    sdpa_test::BackwardLayouts layouts = strided;
    if (rank == 4) {
      for (sdpa_test::LayoutSpec* spec :
           {&layouts.query, &layouts.key, &layouts.value, &layouts.mask, &layouts.out,
            &layouts.grad_out, &layouts.grad_query, &layouts.grad_key, &layouts.grad_value}) {
        if (!spec->order.empty()) spec->order = {0, 1, spec->order[0] + 2, spec->order[1] + 2};
        for (int& d : spec->reversed) d += 2;
      }
      layouts.mask = strided.mask;  // the mask keeps its rank 2
      for (int& d : layouts.lse.reversed) d += 2;
    }
    const NaiveGradients g = sdpa_test::RunBackward<float>(p, dout, Opts(p), layouts, rank);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(g.query, rank4.query)) << "strided rank " << rank;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(g.key, rank4.key)) << "strided rank " << rank;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(g.value, rank4.value)) << "strided rank " << rank;
  }
}

// AttentionBackward returns owned gradients of the inputs' shapes, rank and dtype, with the bits
// Backward writes.
TEST_P(BackwardSemantics, OwnedOverloadMatchesBackward) {
  NaiveProblem p = RandomProblem(1, 4, 2, 3, 5, 8, 6, 130);
  p.causal = Causal::kTopLeft;
  const Array dout = GradOut(p, 131);
  const NaiveGradients want = sdpa_test::RunBackward<float>(p, dout, Opts(p), {}, 3);
  sdpa_test::Buffer<float> q(sdpa_test::DropLeading(p.query, 3)),
      k(sdpa_test::DropLeading(p.key, 3)), v(sdpa_test::DropLeading(p.value, 3)),
      g(sdpa_test::DropLeading(dout, 3));
  const sdpa::AttentionResult forward =
      sdpa::AttentionWithLse(q.view(), k.view(), v.view(), Opts(p));
  const sdpa::Gradients got = sdpa::AttentionBackward(
      q.view(), k.view(), v.view(), forward.out.view(), forward.lse.view(), g.view(), Opts(p));
  EXPECT_EQ(got.grad_query.shape(), (std::vector<std::int64_t>{4, 3, 8}));
  EXPECT_EQ(got.grad_key.shape(), (std::vector<std::int64_t>{2, 5, 8}));
  EXPECT_EQ(got.grad_value.shape(), (std::vector<std::int64_t>{2, 5, 6}));
  EXPECT_EQ(got.grad_query.dtype(), sdpa::DType::kFloat32);
  EXPECT_TRUE(
      sdpa_test::BitwiseEqual(sdpa_test::ReadView(got.grad_query.view()).AsRank4(), want.query));
  EXPECT_TRUE(
      sdpa_test::BitwiseEqual(sdpa_test::ReadView(got.grad_key.view()).AsRank4(), want.key));
  EXPECT_TRUE(
      sdpa_test::BitwiseEqual(sdpa_test::ReadView(got.grad_value.view()).AsRank4(), want.value));
}

std::string BackendParamName(const ::testing::TestParamInfo<Backend>& info) {
  return sdpa::BackendName(info.param);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackwardSemantics,
                         ::testing::Values(Backend::kReference, Backend::kCpu), BackendParamName);

}  // namespace

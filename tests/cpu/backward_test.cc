// The CPU backward against the float64 reference backward on every SIMD target: random shapes
// around the tile sizes with every feature, in float64 and float32 (with a tolerance derived from
// a plain float32 implementation), strided and reversed views of every operand at ranks 2, 3 and
// 4, and bitwise determinism across thread counts, with and without key chunks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "api/validate.h"
#include "cpu/on_tuning.h"
#include "cpu/schedule.h"
#include "cpu/simd.h"
#include "sdpa/sdpa.h"
#include "testing/backward_harness.h"
#include "testing/expect.h"
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
using sdpa_test::Tolerance;

struct Case {
  const char* name;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  Causal causal = Causal::kNone;
  MaskType mask_type = MaskType::kNone;
  std::vector<std::int64_t> mask_shape = {};  // empty: full [B, H, Lq, Lkv]
  // > 1: q multiplied by it and the keys of a head moved to within 1/logit_scale of each other,
  // so that the scores are of order 1e4 while their differences (the softmax) stay of order 1.
  double logit_scale = 1.0;
};

// Shapes around the tiles (96 query rows, 128 keys, 2N-wide panels), every feature.
const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"single", 1, 1, 1, 1, 1, 1, 1},
      {"odd", 2, 3, 3, 17, 19, 3, 5},
      {"tiles", 1, 2, 2, 97, 129, 16, 16},
      {"tile_exact", 1, 1, 1, 96, 128, 32, 32},
      {"several_tiles", 1, 2, 1, 200, 300, 32, 24, Causal::kTopLeft},
      {"dv_differs", 1, 2, 2, 33, 70, 48, 20},
      {"head_dim_128", 1, 1, 1, 50, 140, 128, 128},
      {"bottom_right", 1, 2, 2, 100, 300, 16, 16, Causal::kBottomRight},
      {"bottom_right_short_kv", 1, 2, 2, 150, 60, 16, 16, Causal::kBottomRight},
      {"top_left_short_kv", 1, 2, 1, 150, 60, 8, 8, Causal::kTopLeft},
      {"gqa", 2, 6, 2, 40, 50, 8, 8},
      {"mqa_causal", 1, 5, 1, 30, 130, 8, 12, Causal::kBottomRight},
      {"bool_mask", 1, 2, 2, 50, 140, 16, 16, Causal::kNone, MaskType::kBool},
      {"bool_mask_broadcast",
       2,
       4,
       2,
       40,
       150,
       16,
       16,
       Causal::kNone,
       MaskType::kBool,
       {2, 1, 1, 150}},
      {"additive_mask_causal", 1, 2, 1, 130, 130, 16, 16, Causal::kTopLeft, MaskType::kAdditive},
      {"additive_mask_rows",
       1,
       3,
       1,
       50,
       140,
       16,
       16,
       Causal::kNone,
       MaskType::kAdditive,
       {50, 140}},
      {"mask_and_bottom_right", 1, 2, 2, 130, 100, 16, 16, Causal::kBottomRight, MaskType::kBool},
      {"chunked", 1, 1, 1, 20, 3000, 16, 16},
      {"chunked_gqa_top_left", 1, 2, 1, 20, 1500, 16, 8, Causal::kTopLeft},
      {"chunked_bottom_right_mask", 1, 3, 3, 5, 1100, 8, 8, Causal::kBottomRight, MaskType::kBool},
      {"decode", 1, 4, 4, 1, 700, 64, 64},
      {"large_logits", 1, 2, 2, 40, 60, 8, 8, Causal::kNone, MaskType::kNone, {}, 2e3},
      {"empty_q", 1, 2, 2, 0, 5, 4, 4},
      {"empty_kv", 1, 4, 2, 5, 0, 4, 4},
  };
  return cases;
}

NaiveProblem MakeProblem(const Case& c, std::uint64_t seed) {
  NaiveProblem p;
  p.query = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, seed, -2, 2);
  for (double& x : p.query.values) x *= c.logit_scale;
  p.key = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, seed + 1, -2, 2);
  for (std::int64_t b = 0; b < c.batch; ++b) {
    for (std::int64_t g = 0; g < c.kv_heads; ++g) {
      for (std::int64_t j = 1; j < c.kv_len; ++j) {
        for (std::int64_t d = 0; d < c.head_dim; ++d) {
          p.key({b, g, j, d}) =
              p.key({b, g, 0, d}) + (p.key({b, g, j, d}) - p.key({b, g, 0, d})) / c.logit_scale;
        }
      }
    }
  }
  p.value = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.v_dim}, seed + 2);
  p.scale = sdpa_test::DefaultScale(c.head_dim);
  p.causal = c.causal;
  p.mask_type = c.mask_type;
  const std::vector<std::int64_t> mask_shape =
      c.mask_shape.empty() ? std::vector<std::int64_t>{c.batch, c.heads, c.q_len, c.kv_len}
                           : c.mask_shape;
  if (c.mask_type != MaskType::kNone) {
    p.mask = Array::Uniform(mask_shape, seed + 3, -1, 1);
    sdpa_test::Random random(seed + 4);
    for (double& x : p.mask.values) {
      const bool keep = random.Bernoulli(0.7);
      if (c.mask_type == MaskType::kBool) x = keep ? 1.0 : 0.0;
      if (c.mask_type == MaskType::kAdditive && !keep) x = -std::numeric_limits<double>::infinity();
    }
  }
  return p;
}

Array GradOut(const NaiveProblem& p, std::uint64_t seed) {
  return Array::Uniform({p.query.shape[0], p.query.shape[1], p.query.shape[2], p.value.shape[3]},
                        seed);
}

sdpa::Options OptionsFor(const NaiveProblem& p, Backend backend) {
  sdpa::Options options;
  options.backend = backend;
  options.causal = p.causal;
  options.scale = p.scale;
  return options;
}

double MaxAbsDiff(const Array& a, const Array& b) {
  double m = 0;
  for (std::size_t n = 0; n < a.values.size(); ++n) {
    m = std::max(m, std::fabs(a.values[n] - b.values[n]));
  }
  return m;
}

class BackwardMatches : public sdpa_test::OnTargetAndTuning {};

// float64: the engine within 1e-11 of the reference (the reference rounds once; the engine's
// exp2 is within 2e-14 and its sums over at most a few thousand terms add a few 1e-13).
TEST_P(BackwardMatches, ReferenceInFloat64) {
  std::uint64_t seed = 500;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    const NaiveProblem p = MakeProblem(c, seed += 10);
    const Array dout = GradOut(p, seed + 5);
    const NaiveGradients want =
        sdpa_test::RunBackward<double>(p, dout, OptionsFor(p, Backend::kReference));
    const NaiveGradients got =
        sdpa_test::RunBackward<double>(p, dout, OptionsFor(p, Backend::kCpu));
    const Tolerance tol = c.logit_scale > 1 ? Tolerance{1e-9, 1e-9} : Tolerance{1e-11, 1e-11};
    EXPECT_TRUE(sdpa_test::AllClose(got.query, want.query, tol)) << "grad_query";
    EXPECT_TRUE(sdpa_test::AllClose(got.key, want.key, tol)) << "grad_key";
    EXPECT_TRUE(sdpa_test::AllClose(got.value, want.value, tol)) << "grad_value";
  }
}

// The float32 tolerance, FlashAttention's principle: a gradient's largest error against the
// float64 reference (on the same float32 inputs) is at most 3 times the largest error of a plain
// float32 implementation (NaiveBackward<float>: the textbook formulas, every operation in
// float32), plus 4 ulp of the gradient's scale (its largest element, at least 1 as inputs are
// O(1)). That floor covers two roundings the plain implementation happens not to make: where it
// is exact by cancellation (one dominant key: dS = P(dP - Δ) with P = 1 and Δ = dP is exactly 0,
// while the engine takes Δ = dO·O from the forward), and the float32 rounding of the saved lse,
// which the engine's P = exp(s - lse) carries as a relative error of ½ ulp(|lse|) (5e-7 at
// |lse| = 10) and the plain implementation, normalising by its own sum, does not.
::testing::AssertionResult WithinFloat32Bound(const Array& engine, const Array& plain32,
                                              const Array& reference) {
  double scale = 1;
  for (double x : reference.values) scale = std::max(scale, std::fabs(x));
  const double plain_error = MaxAbsDiff(plain32, reference);
  const double bound = 3 * plain_error + 4 * 0x1.0p-23 * scale;
  ::testing::AssertionResult result = sdpa_test::AllClose(engine, reference, Tolerance{bound, 0});
  if (!result) result << "\n  (the plain float32 error is " << plain_error << ")";
  return result;
}

TEST_P(BackwardMatches, Float32WithinThreeTimesPlainFloat32Error) {
  std::uint64_t seed = 900;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    const NaiveProblem p = sdpa_test::RoundedToFloat(MakeProblem(c, seed += 10));
    const Array dout = GradOut(p, seed + 5).RoundedToFloat();
    const NaiveGradients want =
        sdpa_test::RunBackward<double>(p, dout, OptionsFor(p, Backend::kReference));
    const NaiveGradients plain = sdpa_test::NaiveBackward<float>(p, dout);
    const NaiveGradients got = sdpa_test::RunBackward<float>(p, dout, OptionsFor(p, Backend::kCpu));
    EXPECT_TRUE(WithinFloat32Bound(got.query, plain.query, want.query)) << "grad_query";
    EXPECT_TRUE(WithinFloat32Bound(got.key, plain.key, want.key)) << "grad_key";
    EXPECT_TRUE(WithinFloat32Bound(got.value, plain.value, want.value)) << "grad_value";
  }
}

// Every operand and gradient in a strided, padded, transposed or reversed view, at ranks 2, 3
// and 4: the same bits as contiguous views (the engine packs tiles before computing), which are
// within the float32 bound of the reference.
TEST_P(BackwardMatches, StridedViewsOfEveryOperand) {
  struct Shape {
    int rank;
    std::int64_t heads, kv_heads;
  };
  for (const Shape& shape : {Shape{2, 1, 1}, Shape{3, 4, 2}, Shape{4, 3, 1}}) {
    SCOPED_TRACE("rank " + std::to_string(shape.rank));
    const std::int64_t batch = shape.rank == 4 ? 2 : 1;
    Case c = {"strided", batch, shape.heads, shape.kv_heads, 100, 130, 20, 12};
    c.causal = Causal::kBottomRight;
    c.mask_type = MaskType::kAdditive;
    c.mask_shape = {100, 130};
    const NaiveProblem p =
        sdpa_test::RoundedToFloat(MakeProblem(c, 1000 + static_cast<std::uint64_t>(shape.rank)));
    const Array dout = GradOut(p, 1100).RoundedToFloat();
    const sdpa::Options options = OptionsFor(p, Backend::kCpu);

    // Innermost dimensions of rank r are r - 2 (seq) and r - 1 (dim); lse's is r - 2.
    const int r = shape.rank, seq = r - 2, dim = r - 1;
    std::vector<int> dim_major(static_cast<std::size_t>(r));
    for (int d = 0; d < r; ++d) dim_major[static_cast<std::size_t>(d)] = d;
    std::swap(dim_major[static_cast<std::size_t>(seq)], dim_major[static_cast<std::size_t>(dim)]);
    sdpa_test::BackwardLayouts layouts;
    layouts.query = {dim_major, 2, 1, {}};
    layouts.key = {{}, 1, 3, {seq, dim}};
    layouts.value = {{}, 3, 0, {0}};
    layouts.mask = {{1, 0}, 1, 2, {1}};
    layouts.out = {{}, 1, 0, {seq}};
    layouts.lse = {{}, 4, 0, {r - 2}};
    layouts.grad_out = {dim_major, 1, 0, {dim}};
    layouts.grad_query = {{}, 2, 5, {seq}};
    layouts.grad_key = {dim_major, 1, 3, {0}};
    layouts.grad_value = {{}, 1, 1, {seq, dim}};

    const NaiveGradients contiguous = sdpa_test::RunBackward<float>(p, dout, options, {}, r);
    const NaiveGradients strided = sdpa_test::RunBackward<float>(p, dout, options, layouts, r);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(strided.query, contiguous.query)) << "grad_query";
    EXPECT_TRUE(sdpa_test::BitwiseEqual(strided.key, contiguous.key)) << "grad_key";
    EXPECT_TRUE(sdpa_test::BitwiseEqual(strided.value, contiguous.value)) << "grad_value";

    const NaiveGradients want =
        sdpa_test::RunBackward<double>(p, dout, OptionsFor(p, Backend::kReference), layouts, r);
    const NaiveGradients plain = sdpa_test::NaiveBackward<float>(p, dout);
    EXPECT_TRUE(WithinFloat32Bound(strided.query, plain.query, want.query)) << "grad_query";
    EXPECT_TRUE(WithinFloat32Bound(strided.key, plain.key, want.key)) << "grad_key";
    EXPECT_TRUE(WithinFloat32Bound(strided.value, plain.value, want.value)) << "grad_value";
  }
}

// The backward schedule of `c` with `threads` threads, as the engine builds it.
sdpa::cpu::Schedule BackwardSchedule(const NaiveProblem& p, int threads) {
  sdpa_test::Buffer<float> q(p.query), k(p.key), v(p.value);
  return sdpa::cpu::MakeBackwardSchedule(
      sdpa::internal::ValidateInputs(q.view(), k.view(), v.view(), OptionsFor(p, Backend::kCpu)),
      threads);
}

// Bitwise identical gradients for 1, 2, 3 and 8 threads: one task per (batch, kv head) owns
// its keys' dK and dV; with few such pairs and >= 1024 keys the keys are chunked, each chunk
// keeping its own dQ, summed in chunk order.
TEST_P(BackwardMatches, BitwiseIdenticalForAnyThreadCount) {
  const std::vector<Case> cases = {
      {"chunked", 1, 2, 1, 32, 1100, 32, 32, Causal::kBottomRight},
      {"pairs", 2, 8, 4, 160, 256, 16, 16, Causal::kTopLeft, MaskType::kBool},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const NaiveProblem p = sdpa_test::RoundedToFloat(MakeProblem(c, 1200));
    const Array dout = GradOut(p, 1201).RoundedToFloat();
    const sdpa::cpu::Schedule schedule = BackwardSchedule(p, 8);
    ASSERT_GE(schedule.threads, 4) << "too small to use several threads: " << schedule.reason;
    if (std::string(c.name) == "chunked") {
      ASSERT_GT(schedule.kv_splits, 1) << schedule.reason;
    }
    const sdpa::Options options = OptionsFor(p, Backend::kCpu);
    sdpa::SetNumThreads(1);
    const NaiveGradients one = sdpa_test::RunBackward<float>(p, dout, options);
    const NaiveGradients one64 = sdpa_test::RunBackward<double>(p, dout, options);
    for (int threads : {2, 3, 8}) {
      sdpa::SetNumThreads(threads);
      const NaiveGradients many = sdpa_test::RunBackward<float>(p, dout, options);
      EXPECT_TRUE(sdpa_test::BitwiseEqual(many.query, one.query)) << threads << " threads";
      EXPECT_TRUE(sdpa_test::BitwiseEqual(many.key, one.key)) << threads << " threads";
      EXPECT_TRUE(sdpa_test::BitwiseEqual(many.value, one.value)) << threads << " threads";
      const NaiveGradients many64 = sdpa_test::RunBackward<double>(p, dout, options);
      EXPECT_TRUE(sdpa_test::BitwiseEqual(many64.query, one64.query)) << threads << " threads";
      EXPECT_TRUE(sdpa_test::BitwiseEqual(many64.key, one64.key)) << threads << " threads";
      EXPECT_TRUE(sdpa_test::BitwiseEqual(many64.value, one64.value)) << threads << " threads";
    }
    sdpa::SetNumThreads(0);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, BackwardMatches, ::testing::ValuesIn(sdpa::cpu::SimdTargets()),
                         sdpa_test::ParamName);
INSTANTIATE_TEST_SUITE_P(Tunings, BackwardMatches, ::testing::ValuesIn(sdpa_test::TunedTargets()),
                         sdpa_test::ParamName);

// Keys are chunked only when there are fewer than kMinBackwardTasks (batch, kv head) pairs and
// enough keys; the chunks depend on the shape, never on the thread count.
TEST(BackwardSchedule, ChunksKeysOnlyWhenPairsAreFew) {
  sdpa::internal::Problem p;
  p.batch = 1;
  p.heads = 4;
  p.kv_heads = 1;
  p.q_len = 64;
  p.kv_len = 4096;
  p.head_dim = p.v_dim = 64;
  const sdpa::cpu::Schedule few = sdpa::cpu::MakeBackwardSchedule(p, 2);
  EXPECT_GT(few.kv_splits, 1);
  EXPECT_EQ(few.group, 4);
  EXPECT_EQ(few.tasks.size(), static_cast<std::size_t>(few.kv_splits));
  EXPECT_EQ(sdpa::cpu::MakeBackwardSchedule(p, 64).kv_splits, few.kv_splits);
  p.batch = 2;
  p.heads = p.kv_heads = 4;  // 8 pairs
  EXPECT_EQ(sdpa::cpu::MakeBackwardSchedule(p, 2).kv_splits, 1);
  p.batch = 1;
  p.kv_len = 1000;  // too few keys to chunk
  EXPECT_EQ(sdpa::cpu::MakeBackwardSchedule(p, 2).kv_splits, 1);
  p.kv_len = 0;  // no keys: no task, but the group still maps rows to heads for dQ = 0
  p.heads = 8;
  p.kv_heads = 2;
  EXPECT_EQ(sdpa::cpu::MakeBackwardSchedule(p, 2).group, 4);
}

}  // namespace

// The CPU engine against the float64 reference and the tests' independent naive attention, on
// every SIMD target compiled into this binary: random shapes around the tile sizes, every
// feature, the exp2 accuracy bound, and bitwise determinism across thread counts.
#include "cpu/forward.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "cpu/on_tuning.h"
#include "cpu/schedule.h"
#include "cpu/simd.h"
#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/harness.h"
#include "testing/naive_attention.h"

namespace {

using sdpa::Causal;
using sdpa_test::Array;
using sdpa_test::MaskType;
using sdpa_test::NaiveProblem;
using sdpa_test::NaiveResult;
using sdpa_test::Tolerance;

struct Case {
  const char* name;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  Causal causal = Causal::kNone;
  MaskType mask_type = MaskType::kNone;
  std::vector<std::int64_t> mask_shape = {};  // empty: full [B, H, Lq, Lkv]
};

NaiveProblem MakeProblem(const Case& c, std::uint64_t seed) {
  NaiveProblem p;
  p.query = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, seed, -2, 2);
  p.key = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, seed + 1, -2, 2);
  p.value = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.v_dim}, seed + 2);
  p.scale = sdpa_test::DefaultScale(c.head_dim);
  p.causal = c.causal;
  p.mask_type = c.mask_type;
  std::vector<std::int64_t> mask_shape = c.mask_shape;
  if (mask_shape.empty()) mask_shape = {c.batch, c.heads, c.q_len, c.kv_len};
  if (c.mask_type == MaskType::kBool) {
    p.mask = Array(mask_shape);
    sdpa_test::Random random(seed + 3);
    for (double& x : p.mask.values) x = random.Bernoulli(0.7) ? 1.0 : 0.0;
  } else if (c.mask_type == MaskType::kAdditive) {
    p.mask = Array::Uniform(mask_shape, seed + 3, -3, 1);
    sdpa_test::Random random(seed + 4);
    for (double& x : p.mask.values) {
      if (random.Bernoulli(0.2)) x = -std::numeric_limits<double>::infinity();
    }
  }
  return p;
}

// Options that describe `p` (the harness takes the mask from the problem itself).
sdpa::Options OptionsFor(const NaiveProblem& p, sdpa::Backend backend) {
  sdpa::Options options;
  options.scale = p.scale;
  options.causal = p.causal;
  options.backend = backend;
  return options;
}

// Max |V| over the problem, the scale of the output's absolute error.
double MaxAbs(const Array& a) {
  double m = 0;
  for (double x : a.values) m = std::max(m, std::fabs(x));
  return m;
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"single", 1, 1, 1, 1, 1, 1, 1},
      {"tiny", 1, 1, 1, 2, 3, 2, 2},
      {"odd_dims", 2, 3, 3, 17, 17, 3, 5},
      {"tile_minus_one", 1, 2, 2, 95, 127, 16, 16},
      {"tile_exact", 1, 1, 1, 96, 128, 32, 32},
      {"tile_plus_one", 1, 2, 1, 97, 129, 64, 64},
      {"several_tiles", 1, 2, 2, 200, 300, 64, 64},
      {"dv_differs", 1, 2, 2, 33, 70, 48, 24},
      {"head_dim_128", 1, 1, 1, 100, 260, 128, 128},
      {"gqa", 2, 8, 2, 37, 50, 16, 16},
      {"mqa", 1, 6, 1, 20, 45, 8, 12},
      {"causal_top_left", 1, 2, 2, 150, 150, 32, 32, Causal::kTopLeft},
      {"causal_top_left_long_kv", 1, 2, 2, 100, 300, 32, 32, Causal::kTopLeft},
      {"causal_bottom_right", 1, 2, 2, 100, 300, 32, 32, Causal::kBottomRight},
      {"causal_bottom_right_short_kv", 1, 2, 2, 200, 70, 16, 16, Causal::kBottomRight},
      {"causal_gqa", 1, 4, 2, 130, 130, 16, 16, Causal::kTopLeft},
      {"bool_mask", 2, 2, 2, 40, 150, 16, 16, Causal::kNone, MaskType::kBool},
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
      {"additive_mask", 1, 3, 3, 50, 140, 16, 16, Causal::kNone, MaskType::kAdditive},
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
      {"mask_and_causal", 1, 2, 2, 130, 130, 16, 16, Causal::kBottomRight, MaskType::kBool},
      {"decode", 1, 4, 4, 1, 3000, 32, 32},
      {"decode_gqa_split", 1, 8, 2, 3, 5000, 64, 64, Causal::kBottomRight},
      {"empty_q", 1, 2, 2, 0, 5, 4, 4},
      {"empty_kv", 1, 2, 2, 5, 0, 4, 4},
  };
  return cases;
}

class EngineMatches : public sdpa_test::OnTargetAndTuning {};

// float64: the engine within 1e-12 of the reference (issue 3's bound).
TEST_P(EngineMatches, ReferenceInFloat64) {
  std::uint64_t seed = 100;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    const NaiveProblem p = MakeProblem(c, seed += 10);
    const sdpa::Options reference = OptionsFor(p, sdpa::Backend::kReference);
    const sdpa::Options engine = OptionsFor(p, sdpa::Backend::kCpu);
    const NaiveResult want = sdpa_test::RunForward<double>(p, reference);
    const NaiveResult got = sdpa_test::RunForward<double>(p, engine);
    EXPECT_TRUE(sdpa_test::AllClose(got.out, want.out, Tolerance{1e-12, 0}));
    EXPECT_TRUE(sdpa_test::AllClose(got.lse, want.lse, Tolerance{1e-12, 1e-12}));
  }
}

// float32: within 2e-5·max|V| of the float64 result on the same (float32-rounded) inputs.
TEST_P(EngineMatches, NaiveInFloat32) {
  std::uint64_t seed = 900;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    NaiveProblem p = MakeProblem(c, seed += 10);
    p.query = p.query.RoundedToFloat();
    p.key = p.key.RoundedToFloat();
    p.value = p.value.RoundedToFloat();
    p.mask = p.mask.RoundedToFloat();
    const sdpa::Options engine = OptionsFor(p, sdpa::Backend::kCpu);
    const NaiveResult got = sdpa_test::RunForward<float>(p, engine);
    const NaiveResult want = sdpa_test::NaiveAttention(p);
    EXPECT_TRUE(sdpa_test::AllClose(got.out, want.out, Tolerance{2e-5 * MaxAbs(p.value), 0}));
    EXPECT_TRUE(sdpa_test::AllClose(got.lse, want.lse, Tolerance{2e-5, 2e-6}));
  }
}

// Standard-normal entries (Box-Muller on the tests' portable generator).
Array Normal(std::vector<std::int64_t> shape, std::uint64_t seed) {
  Array a(std::move(shape));
  sdpa_test::Random random(seed);
  for (double& x : a.values) {
    const double u = 1.0 - random.Uniform(0, 1), w = random.Uniform(0, 1);
    x = std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * w);
  }
  return a;
}

// Issue 3's accuracy bounds at long sequences, on standard-normal inputs: float32 within
// 2e-5·max|V| and float64 within 1e-12 of the float64 reference, for 16384 keys (the error grows
// with the number of keys a row sums over, so a block of 97 query rows at both ends of the causal
// range covers it without the reference's O(L²) cost).
struct LongCase {
  NaiveProblem problem;  // float32-representable inputs
  NaiveResult want;      // the reference in float64
};
// Built once per head_dim: the reference does not depend on the SIMD target.
const LongCase& LongSequence(std::int64_t head_dim) {
  static std::map<std::int64_t, LongCase> cache;
  auto it = cache.find(head_dim);
  if (it != cache.end()) return it->second;
  LongCase c;
  c.problem.query = Normal({1, 2, 97, head_dim}, 31).RoundedToFloat();
  c.problem.key = Normal({1, 1, 16384, head_dim}, 32).RoundedToFloat();
  c.problem.value = Normal({1, 1, 16384, head_dim}, 33).RoundedToFloat();
  c.problem.scale = sdpa_test::DefaultScale(head_dim);
  c.problem.causal = Causal::kBottomRight;
  c.want =
      sdpa_test::RunForward<double>(c.problem, OptionsFor(c.problem, sdpa::Backend::kReference));
  return cache.emplace(head_dim, std::move(c)).first->second;
}

TEST_P(EngineMatches, LongSequenceAccuracy) {
  for (const std::int64_t head_dim : {64, 128}) {
    SCOPED_TRACE(head_dim);
    const LongCase& c = LongSequence(head_dim);
    const sdpa::Options engine = OptionsFor(c.problem, sdpa::Backend::kCpu);
    const NaiveResult got64 = sdpa_test::RunForward<double>(c.problem, engine);
    EXPECT_TRUE(sdpa_test::AllClose(got64.out, c.want.out, Tolerance{1e-12, 0}));
    const NaiveResult got32 = sdpa_test::RunForward<float>(c.problem, engine);
    EXPECT_TRUE(
        sdpa_test::AllClose(got32.out, c.want.out, Tolerance{2e-5 * MaxAbs(c.problem.value), 0}));
  }
}

// Strided and reversed operands, written into a strided output.
TEST_P(EngineMatches, StridedViews) {
  const Case c = {"strided", 2, 4, 2, 50, 140, 24, 16, Causal::kTopLeft, MaskType::kBool};
  const NaiveProblem p = MakeProblem(c, 7);
  sdpa_test::Layouts layouts;
  layouts.query.order = {2, 0, 1, 3};  // [L, B, H, D] memory order (packed-QKV-like)
  layouts.query.pad = 3;
  layouts.key.step = 2;                // head_dim not contiguous: the engine packs K
  layouts.value.order = {0, 1, 3, 2};  // V transposed in memory: packed V
  layouts.value.reversed = {2};
  layouts.mask.order = {3, 0, 1, 2};
  layouts.out.order = {2, 1, 0, 3};
  layouts.out.pad = 1;
  const sdpa::Options reference = OptionsFor(p, sdpa::Backend::kReference);
  const sdpa::Options engine = OptionsFor(p, sdpa::Backend::kCpu);
  const NaiveResult want = sdpa_test::RunForward<double>(p, reference);
  const NaiveResult got = sdpa_test::RunForward<double>(p, engine, layouts);
  EXPECT_TRUE(sdpa_test::AllClose(got.out, want.out, Tolerance{1e-12, 0}));
  EXPECT_TRUE(sdpa_test::AllClose(got.lse, want.lse, Tolerance{1e-12, 1e-12}));
}

// Logits of magnitude ~1e4 (q·k up to 4e4 before scaling): no overflow, rows still sum to 1.
TEST_P(EngineMatches, HugeLogits) {
  const Case c = {"huge", 1, 2, 2, 40, 200, 8, 8, Causal::kTopLeft};
  NaiveProblem p = MakeProblem(c, 11);
  for (double& x : p.query.values) x *= 100;
  for (double& x : p.key.values) x *= 100;
  p.query = p.query.RoundedToFloat();
  p.key = p.key.RoundedToFloat();
  p.value = p.value.RoundedToFloat();
  const sdpa::Options engine = OptionsFor(p, sdpa::Backend::kCpu);
  const NaiveResult want = sdpa_test::NaiveAttention(p);
  const NaiveResult got64 = sdpa_test::RunForward<double>(p, engine);
  EXPECT_TRUE(sdpa_test::AllClose(got64.out, want.out, Tolerance{1e-12, 0}));
  const NaiveResult got32 = sdpa_test::RunForward<float>(p, engine);
  // A float32 dot product of D terms is off by at most ~D·u·Σ|q_d k_d| (u = 2^-24), and lse and
  // out move by at most that logit error (times 2·max|V| for out): the error any float32
  // implementation has, here ~1e-3 because the logits are ~1e4. Allow 4x that.
  const double logit_error = 4.0 * 8 * 0x1.0p-24 * p.scale * 8 * MaxAbs(p.query) * MaxAbs(p.key);
  EXPECT_GT(logit_error, 1e-4);  // the case is as hard as intended
  EXPECT_TRUE(sdpa_test::AllClose(got32.lse, want.lse, Tolerance{logit_error + 2e-5, 0}));
  EXPECT_TRUE(sdpa_test::AllClose(got32.out, want.out,
                                  Tolerance{(2 * logit_error + 2e-5) * MaxAbs(p.value), 0}));
}

// NaN and Inf in K/V rows that are masked (bool, additive -inf, causal) never reach the output;
// NaN in a visible key does.
TEST_P(EngineMatches, NonFiniteOnlyWhereVisible) {
  const Case c = {"nan", 1, 1, 1, 20, 150, 16, 16, Causal::kTopLeft, MaskType::kBool, {1, 150}};
  NaiveProblem p = MakeProblem(c, 13);
  for (double& x : p.mask.values) x = 1.0;
  p.mask({0, 7}) = 0.0;  // key 7 hidden from every row
  for (std::int64_t d = 0; d < 16; ++d) {
    p.key({0, 0, 7, d}) = std::nan("");
    p.value({0, 0, 7, d}) = std::numeric_limits<double>::infinity();
    p.key({0, 0, 140, d}) = std::nan("");   // beyond every causal end (rows < 20)
    p.value({0, 0, 30, d}) = std::nan("");  // beyond every causal end, same tile as visible keys
  }
  const sdpa::Options engine = OptionsFor(p, sdpa::Backend::kCpu);
  for (const bool use_float : {false, true}) {
    const NaiveResult got = use_float ? sdpa_test::RunForward<float>(p, engine)
                                      : sdpa_test::RunForward<double>(p, engine);
    for (double x : got.out.values) ASSERT_TRUE(std::isfinite(x)) << "float32: " << use_float;
  }
  // Row 10 can see key 3: a NaN there must show.
  p.key({0, 0, 3, 0}) = std::nan("");
  const NaiveResult got = sdpa_test::RunForward<float>(p, engine);
  EXPECT_TRUE(std::isnan(got.out({0, 0, 10, 0})));
  EXPECT_FALSE(std::isnan(got.out({0, 0, 2, 0})));  // row 2 cannot see key 3
}

// Every row fully masked in some rows: out 0, lse -inf.
TEST_P(EngineMatches, FullyMaskedRows) {
  const Case c = {"masked", 1, 2, 2, 30, 200, 8, 8, Causal::kNone, MaskType::kAdditive};
  NaiveProblem p = MakeProblem(c, 17);
  for (std::int64_t h = 0; h < 2; ++h) {
    for (std::int64_t j = 0; j < 200; ++j)
      p.mask({0, h, 5, j}) = -std::numeric_limits<double>::infinity();
  }
  const sdpa::Options engine = OptionsFor(p, sdpa::Backend::kCpu);
  const NaiveResult got = sdpa_test::RunForward<float>(p, engine);
  for (std::int64_t h = 0; h < 2; ++h) {
    EXPECT_EQ(got.lse({0, h, 5}), -std::numeric_limits<double>::infinity());
    for (std::int64_t e = 0; e < 8; ++e) EXPECT_EQ(got.out({0, h, 5, e}), 0.0);
  }
}

// The result does not depend on the number of threads, bit for bit, with and without a split.
TEST_P(EngineMatches, BitwiseIdenticalForAnyThreadCount) {
  const std::vector<Case> cases = {
      {"rows", 2, 4, 2, 300, 300, 32, 32, Causal::kTopLeft},
      {"split", 1, 4, 1, 2, 40000, 32, 32},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    NaiveProblem p = MakeProblem(c, 19);
    const sdpa::Options engine = OptionsFor(p, sdpa::Backend::kCpu);
    // Large enough that the schedule really uses several threads.
    sdpa::SetNumThreads(8);
    sdpa_test::Buffer<float> q(p.query), k(p.key), v(p.value);
    ASSERT_GE(sdpa::Explain(q.view(), k.view(), v.view(), engine).threads, 4);
    sdpa::SetNumThreads(1);
    const NaiveResult one = sdpa_test::RunForward<float>(p, engine);
    for (int threads : {2, 3, 8}) {
      sdpa::SetNumThreads(threads);
      const NaiveResult many = sdpa_test::RunForward<float>(p, engine);
      EXPECT_TRUE(sdpa_test::BitwiseEqual(many.out, one.out)) << threads << " threads";
      EXPECT_TRUE(sdpa_test::BitwiseEqual(many.lse, one.lse)) << threads << " threads";
    }
    sdpa::SetNumThreads(0);
  }
}

// The forced target is the one that runs.
TEST_P(EngineMatches, ForcedTargetTakesEffect) {
  EXPECT_EQ(sdpa::cpu::ActiveSimdTarget(), Target());
  const Array q = Array::Uniform({1, 1, 4, 4}, 1);
  sdpa_test::Buffer<float> qb(q);
  const sdpa::Plan plan = sdpa::Explain(qb.view(), qb.view(), qb.view());
  EXPECT_EQ(plan.simd_target, Target());
  EXPECT_EQ(plan.backend, sdpa::Backend::kCpu);
}

// exp2 as the kernel computes it, in both polynomial forms: relative error <= 4e-7 (float32) and
// 2e-14 (float64) over [-125, 8] (scores minus a stale max reach up to the lazy rescaling
// threshold, 2^8), exactly 1 at 0, exactly 0 at -inf and below -127, NaN for NaN.
TEST_P(EngineMatches, Exp2Accuracy) {
  const std::int64_t n = 200001;
  const double lo = -125, hi = 8;
  std::vector<float> x(static_cast<std::size_t>(n)), y(x.size());
  std::vector<double> xd(x.size()), yd(x.size());
  for (std::int64_t i = 0; i < n; ++i) {
    const double at = lo + (hi - lo) * static_cast<double>(i) / static_cast<double>(n - 1);
    x[static_cast<std::size_t>(i)] = static_cast<float>(at);
    xd[static_cast<std::size_t>(i)] = at;
  }
  sdpa::cpu::Exp2Array(xd.data(), yd.data(), n);
  double worst_d = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    worst_d = std::max(worst_d, std::fabs(yd[i] / std::exp2(xd[i]) - 1));
  }
  EXPECT_LE(worst_d, 2e-14);
  for (const auto form : {sdpa::cpu::Exp2Form::kHorner, sdpa::cpu::Exp2Form::kEstrin}) {
    SCOPED_TRACE(form == sdpa::cpu::Exp2Form::kHorner ? "horner" : "estrin");
    sdpa::cpu::Exp2Array(x.data(), y.data(), n, form);
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double want = std::exp2(static_cast<double>(x[i]));
      worst = std::max(worst, std::fabs(static_cast<double>(y[i]) / want - 1));
    }
    EXPECT_LE(worst, 4e-7);
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> special = {0.0f, std::nanf(""), -0.5f, -1.0f, -inf, -127.0f, -1e30f};
    std::vector<float> out(special.size());
    sdpa::cpu::Exp2Array(special.data(), out.data(), static_cast<std::int64_t>(special.size()),
                         form);
    EXPECT_EQ(out[0], 1.0f);
    EXPECT_TRUE(std::isnan(out[1]));
    EXPECT_EQ(out[3], 0.5f);
    EXPECT_EQ(out[4], 0.0f);
    EXPECT_EQ(out[5], 0.0f);
    EXPECT_EQ(out[6], 0.0f);
  }
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> special = {0.0, -inf, std::nan("")};
  std::vector<double> out(special.size());
  sdpa::cpu::Exp2Array(special.data(), out.data(), 3);
  EXPECT_EQ(out[0], 1.0);
  EXPECT_EQ(out[1], 0.0);
  EXPECT_TRUE(std::isnan(out[2]));
}

INSTANTIATE_TEST_SUITE_P(AllTargets, EngineMatches, ::testing::ValuesIn(sdpa::cpu::SimdTargets()),
                         sdpa_test::ParamName);
INSTANTIATE_TEST_SUITE_P(Tunings, EngineMatches, ::testing::ValuesIn(sdpa_test::TunedTargets()),
                         sdpa_test::ParamName);

// SDPA_SIMD_TARGET names a target that must exist.
TEST(SimdTarget, UnknownNameIsAnError) {
  EXPECT_TRUE(sdpa_test::ThrowsError([] { sdpa::cpu::ForceSimdTarget("NOPE"); },
                                     "SIMD target 'NOPE' is not available; available: "));
}

// Split-KV is chosen from the shape alone.
TEST(Schedule, SplitsKeysOnlyWhenRowsAreFew) {
  sdpa::internal::Problem p;
  p.batch = 1;
  p.heads = p.kv_heads = 1;
  p.q_len = 1;
  p.kv_len = 32768;
  p.head_dim = p.v_dim = 128;
  const sdpa::cpu::Schedule decode = sdpa::cpu::MakeSchedule(p, 2);
  EXPECT_GT(decode.kv_splits, 1);
  EXPECT_EQ(decode.tasks.size(), static_cast<std::size_t>(decode.kv_splits));
  EXPECT_EQ(sdpa::cpu::MakeSchedule(p, 64).kv_splits, decode.kv_splits);
  p.heads = p.kv_heads = 8;
  p.q_len = 4096;
  p.kv_len = 4096;
  EXPECT_EQ(sdpa::cpu::MakeSchedule(p, 2).kv_splits, 1);
}

}  // namespace

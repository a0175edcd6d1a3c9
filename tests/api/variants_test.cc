// The attention variants of issue 7 (sdpa/options.h, sdpa/custom.h) in the forward: sliding
// window, ALiBi, softcap, sinks, packed varlen sequences, dropout and custom score/mask
// functions, alone and combined with causal, masks and GQA, compared (out and lse) with the
// independent NaiveAttention, plus the rules that a table of cases cannot show (which keys a
// window keeps, ALiBi's paper form, sinks of fully masked rows, varlen = separate calls, dropout's
// keep rate, scaling and reproducibility, custom functions = the built-in options, Dual numbers).
//
// Every test runs on each backend listed in the INSTANTIATE_TEST_SUITE_P calls at the bottom.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "sdpa/custom.h"
#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/harness.h"
#include "testing/naive_attention.h"
#include "testing/problems.h"
#include "testing/tensors.h"

namespace {

using sdpa::Backend;
using sdpa::Causal;
using sdpa::DType;
using sdpa_test::Array;
using sdpa_test::MaskType;
using sdpa_test::NaiveProblem;
using sdpa_test::NaiveResult;
using sdpa_test::Tolerance;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
using Side = std::optional<std::int64_t>;
constexpr Side kUnbounded = std::nullopt;

// Tolerances, as in cases_test.cc: inputs are exactly representable in the tested type, so the
// error is the backend's arithmetic. float64: a few hundred ulps. float32: a logit of magnitude M
// computed in float32 is off by a few M·2^-24, which the softmax turns into the same relative
// error of each probability, so |out - ref| <= 2·max|v|·that (|v| <= 1 here); 2e-6 covers logits
// up to about 4 (the default), larger logits (ALiBi biases, softcaps) get kF32For(M).
constexpr Tolerance kF64{1e-13, 1e-13};
constexpr Tolerance kF32{2e-6, 2e-6};
constexpr Tolerance kF32For(double max_logit) {
  const double bound = 2e-6 + 2 * 4 * max_logit * 0x1.0p-24;
  return {bound, bound};
}

// The library's options for a naive problem: everything but the mask (RunForward passes it) and
// the custom functions (which need the callables' types; see VariantSemantics' custom tests).
sdpa::Options OptionsFor(const NaiveProblem& p, Backend backend) {
  sdpa::Options o;
  o.backend = backend;
  o.scale = p.scale;
  o.causal = p.causal;
  if (p.window_left || p.window_right) o.window = sdpa::Window{p.window_left, p.window_right};
  o.alibi_slopes = p.alibi_slopes;
  o.softcap = p.softcap;
  o.sinks = p.sinks;
  o.cu_seqlens_q = p.cu_seqlens_q;
  o.cu_seqlens_k = p.cu_seqlens_k;
  o.dropout_p = p.dropout_p;
  o.seed = p.seed;
  return o;
}

// The slopes of the ALiBi paper for `heads` heads: 2^(-8·(h+1)/heads).
std::vector<double> PaperSlopes(std::int64_t heads) {
  std::vector<double> slopes;
  for (std::int64_t h = 0; h < heads; ++h) {
    slopes.push_back(std::exp2(-8.0 * static_cast<double>(h + 1) / static_cast<double>(heads)));
  }
  return slopes;
}

std::uint64_t SeedOf(const std::string& name) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

// ---- A table of cases ---------------------------------------------------------------------

struct Case {
  std::string name;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  Causal causal = Causal::kNone;
  MaskType mask_type = MaskType::kNone;
  std::vector<std::int64_t> mask_shape;  // right-aligned against [B, H, Lq, Lkv]
  double mask_keep = 0.75;
  Side left, right;
  bool window = false;
  bool alibi = false;
  std::optional<double> softcap;
  std::vector<double> sinks;  // explicit values, or random ones when random_sinks
  bool random_sinks = false;
  std::vector<std::int64_t> cu_q, cu_k;
  double dropout_p = 0;
  std::uint64_t seed = 0;
  std::optional<double> scale;
  double qk_lo = -1.0, qk_hi = 1.0;
  bool integers = false;  // Q and K rounded to integers: exact logits in float32 too
  Tolerance f32 = kF32, f64 = kF64;

  Case With(std::function<void(Case&)> change) const {
    Case r = *this;
    change(r);
    return r;
  }
  Case WithCausal(Causal c) const {
    return With([&](Case& r) { r.causal = c; });
  }
  Case WithMask(MaskType type, std::vector<std::int64_t> shape, double keep = 0.75) const {
    return With([&](Case& r) {
      r.mask_type = type;
      r.mask_shape = shape;
      r.mask_keep = keep;
    });
  }
  Case WithWindow(Side l, Side r_) const {
    return With([&](Case& r) {
      r.window = true;
      r.left = l;
      r.right = r_;
    });
  }
  // ALiBi with the paper's slopes; biases reach slope·L, so float32 gets kF32For of it (up to
  // 40: keys 40 below the row's best have weights below e^-36 and add no visible error).
  Case WithAlibi() const {
    return With([&](Case& r) {
      r.alibi = true;
      const double reach = PaperSlopes(r.heads)[0] * static_cast<double>(r.q_len + r.kv_len);
      r.f32 = kF32For(std::min(reach, 40.0) + 4);
    });
  }
  Case WithSoftcap(double c) const {
    return With([&](Case& r) {
      r.softcap = c;
      r.f32 = kF32For(c + 4);
    });
  }
  Case WithSinks(std::vector<double> values = {}) const {
    return With([&](Case& r) {
      r.sinks = values;
      r.random_sinks = values.empty();
    });
  }
  Case WithVarlen(std::vector<std::int64_t> q, std::vector<std::int64_t> k) const {
    return With([&](Case& r) {
      r.cu_q = q;
      r.cu_k = k;
    });
  }
  Case WithDropout(double p, std::uint64_t dropout_seed) const {
    return With([&](Case& r) {
      r.dropout_p = p;
      r.seed = dropout_seed;
    });
  }
  Case WithIntegerQK(double lo, double hi, double qk_scale) const {
    return With([&](Case& r) {
      r.qk_lo = lo;
      r.qk_hi = hi;
      r.integers = true;
      r.scale = qk_scale;
    });
  }
};

Case Sizes(std::string name, std::int64_t batch, std::int64_t heads, std::int64_t kv_heads,
           std::int64_t q_len, std::int64_t kv_len, std::int64_t head_dim, std::int64_t v_dim) {
  Case c;
  c.name = std::move(name);
  c.batch = batch;
  c.heads = heads;
  c.kv_heads = kv_heads;
  c.q_len = q_len;
  c.kv_len = kv_len;
  c.head_dim = head_dim;
  c.v_dim = v_dim;
  return c;
}

std::vector<Case> Cases() {
  const MaskType kBool = MaskType::kBool, kAdd = MaskType::kAdditive;
  const Causal kTopLeft = Causal::kTopLeft, kBottomRight = Causal::kBottomRight;
  const std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  // Packed sequences of lengths (q, k): (3, 4), (0, 2), (5, 0), (1, 5), (3, 4): an empty query
  // side, an empty key side, Lq < Lk and Lq > Lk.
  const std::vector<std::int64_t> kManyQ = {0, 3, 3, 8, 9, 12}, kManyK = {0, 4, 6, 6, 11, 15};
  return {
      // ---- Sliding window
      //    name                         B  H  Hkv Lq   Lkv  D   Dv
      Sizes("window", /*               */ 2, 4, 2, 9, 13, 8, 8).WithWindow(2, 3),
      Sizes("window_left_only", /*     */ 1, 2, 2, 9, 13, 8, 8).WithWindow(3, kUnbounded),
      Sizes("window_right_only", /*    */ 1, 2, 2, 9, 13, 8, 8).WithWindow(kUnbounded, 2),
      Sizes("window_both_unbounded", /**/ 1, 2, 2, 9, 13, 8, 8).WithWindow(kUnbounded, kUnbounded),
      Sizes("window_left_zero", /*     */ 1, 2, 2, 9, 9, 8, 8).WithWindow(0, 2),
      Sizes("window_left_zero_only", /**/ 1, 2, 2, 9, 12, 8, 8).WithWindow(0, kUnbounded),
      Sizes("window_diagonal_only", /* */ 1, 2, 2, 9, 9, 8, 8).WithWindow(0, 0),
      Sizes("window_larger_than_l", /* */ 1, 2, 2, 9, 13, 8, 8).WithWindow(100, 100),
      Sizes("window_int64_max", /*     */ 1, 2, 2, 9, 13, 8, 8).WithWindow(kMax, kMax),
      Sizes("window_long_q", /*        */ 1, 2, 2, 11, 5, 8, 8).WithWindow(1, 1),
      Sizes("window_top_left", 1, 2, 2, 7, 11, 8, 8).WithCausal(kTopLeft).WithWindow(2, kUnbounded),
      Sizes("window_top_left_long_q", 1, 2, 2, 11, 7, 8, 8).WithCausal(kTopLeft).WithWindow(3, 1),
      Sizes("window_bottom_right", 1, 2, 2, 7, 11, 8, 8)
          .WithCausal(kBottomRight)
          .WithWindow(2, kUnbounded),
      Sizes("window_bottom_right_long_q", 1, 2, 2, 11, 7, 8, 8)
          .WithCausal(kBottomRight)
          .WithWindow(1, 0),
      Sizes("window_gqa_bool_mask", 2, 4, 2, 8, 10, 8, 8)
          .WithWindow(2, 2)
          .WithMask(kBool, {2, 1, 8, 10}),
      Sizes("window_mqa_additive_mask", 2, 4, 1, 8, 10, 8, 8)
          .WithWindow(3, 0)
          .WithMask(kAdd, {8, 10}),
      Sizes("window_long", 1, 2, 1, 200, 300, 16, 16).WithWindow(32, 8),
      Sizes("window_long_top_left", 1, 2, 1, 257, 257, 16, 16)
          .WithCausal(kTopLeft)
          .WithWindow(40, kUnbounded),

      // ---- ALiBi
      Sizes("alibi", /*                */ 2, 4, 4, 9, 13, 8, 8).WithAlibi(),
      Sizes("alibi_long_q", /*         */ 1, 4, 4, 13, 9, 8, 8).WithAlibi(),
      Sizes("alibi_top_left", 1, 4, 2, 9, 13, 8, 8).WithCausal(kTopLeft).WithAlibi(),
      Sizes("alibi_bottom_right", 1, 4, 2, 9, 13, 8, 8).WithCausal(kBottomRight).WithAlibi(),
      Sizes("alibi_gqa_bool_mask", 2, 4, 2, 8, 10, 8, 8).WithAlibi().WithMask(kBool, {2, 4, 8, 10}),
      Sizes("alibi_mqa_additive_mask", 2, 4, 1, 8, 10, 8, 8)
          .WithAlibi()
          .WithMask(kAdd, {2, 1, 8, 10}),
      Sizes("alibi_window", 1, 4, 2, 9, 13, 8, 8).WithAlibi().WithWindow(3, 1),
      Sizes("alibi_long", 1, 2, 2, 150, 190, 16, 16).WithCausal(kBottomRight).WithAlibi(),

      // ---- Softcap
      Sizes("softcap", /*              */ 2, 4, 2, 9, 13, 8, 8).WithSoftcap(0.5),
      // scale·q·k up to ~1e3 (integers in [-16, 16], D = 16, scale 1/4), capped at ±20.
      Sizes("softcap_large_logits", 1, 4, 2, 9, 13, 16, 8)
          .WithIntegerQK(-16, 17, 0.25)
          .WithSoftcap(20),
      // Every logit in [1.6e3, 4.1e3]: all saturate near the cap.
      Sizes("softcap_large_positive_logits", 1, 2, 2, 6, 9, 16, 8)
          .WithIntegerQK(20, 33, 0.25)
          .WithSoftcap(30),
      Sizes("softcap_top_left_additive_mask", 2, 4, 2, 8, 10, 8, 8)
          .WithCausal(kTopLeft)
          .WithSoftcap(0.5)
          .WithMask(kAdd, {2, 4, 8, 10}),
      Sizes("softcap_alibi", 1, 4, 2, 9, 13, 8, 8).WithSoftcap(0.7).WithAlibi(),
      Sizes("softcap_mqa", 2, 4, 1, 9, 13, 8, 8).WithSoftcap(1.5),

      // ---- Sinks
      Sizes("sinks", /*                */ 2, 4, 2, 9, 13, 8, 8).WithSinks(),
      Sizes("sinks_some_minus_inf", 1, 4, 4, 9, 13, 8, 8).WithSinks({0.5, -kInf, 2.0, -kInf}),
      Sizes("sinks_dominant", 1, 4, 4, 9, 13, 8, 8).WithSinks({30, -30, 5, 0}),
      Sizes("sinks_bottom_right_long_q", 1, 4, 2, 11, 7, 8, 8).WithCausal(kBottomRight).WithSinks(),
      Sizes("sinks_sparse_bool_mask", 2, 4, 2, 9, 4, 8, 8)
          .WithMask(kBool, {2, 4, 9, 4}, 0.15)
          .WithSinks(),
      Sizes("sinks_empty_kv", 1, 4, 2, 5, 0, 8, 8).WithSinks(),
      Sizes("sinks_window_top_left", 1, 4, 1, 9, 13, 8, 8)
          .WithCausal(kTopLeft)
          .WithWindow(1, kUnbounded)
          .WithSinks(),

      // ---- Packed sequences
      Sizes("varlen_one_sequence", 1, 2, 2, 7, 9, 8, 8).WithVarlen({0, 7}, {0, 9}),
      Sizes("varlen_many", /*          */ 1, 4, 2, 12, 15, 8, 8).WithVarlen(kManyQ, kManyK),
      Sizes("varlen_all_empty", /*     */ 1, 2, 2, 0, 0, 8, 8).WithVarlen({0, 0, 0}, {0, 0, 0}),
      Sizes("varlen_no_keys", /*       */ 1, 2, 2, 5, 0, 8, 8).WithVarlen({0, 2, 5}, {0, 0, 0}),
      Sizes("varlen_top_left", 1, 4, 2, 12, 15, 8, 8)
          .WithCausal(kTopLeft)
          .WithVarlen(kManyQ, kManyK),
      Sizes("varlen_bottom_right", 1, 4, 2, 12, 15, 8, 8)
          .WithCausal(kBottomRight)
          .WithVarlen(kManyQ, kManyK),
      Sizes("varlen_window", 1, 4, 2, 12, 15, 8, 8).WithWindow(1, 2).WithVarlen(kManyQ, kManyK),
      Sizes("varlen_alibi_sinks", 1, 4, 2, 12, 15, 8, 8)
          .WithAlibi()
          .WithSinks()
          .WithVarlen(kManyQ, kManyK),
      Sizes("varlen_softcap", 1, 4, 2, 12, 15, 8, 8).WithSoftcap(0.5).WithVarlen(kManyQ, kManyK),
      Sizes("varlen_bool_mask", 1, 4, 2, 12, 15, 8, 8)
          .WithMask(kBool, {1, 4, 12, 15})
          .WithVarlen(kManyQ, kManyK),
      Sizes("varlen_additive_mask", 1, 4, 2, 12, 15, 8, 8)
          .WithMask(kAdd, {12, 15})
          .WithVarlen(kManyQ, kManyK),
      Sizes("varlen_mqa", 1, 4, 1, 12, 15, 8, 8).WithVarlen(kManyQ, kManyK),
      Sizes("varlen_long", 1, 2, 1, 200, 300, 16, 16)
          .WithCausal(kBottomRight)
          .WithWindow(20, kUnbounded)
          .WithVarlen({0, 70, 70, 200}, {0, 100, 150, 300}),

      // ---- Dropout (seeds with high bits set too: both key words matter)
      Sizes("dropout", /*              */ 2, 4, 2, 9, 13, 8, 8)
          .WithDropout(0.3, 0x0123456789ABCDEF),
      Sizes("dropout_high_p", /*       */ 2, 4, 2, 9, 13, 8, 8).WithDropout(0.9, 7),
      Sizes("dropout_top_left_gqa", 2, 4, 2, 9, 13, 8, 8).WithCausal(kTopLeft).WithDropout(0.2, 42),
      Sizes("dropout_bool_mask", 2, 4, 2, 9, 13, 8, 8)
          .WithMask(kBool, {2, 1, 9, 13})
          .WithDropout(0.5, std::uint64_t{1} << 32),
      Sizes("dropout_varlen", 1, 4, 2, 12, 15, 8, 8)
          .WithVarlen(kManyQ, kManyK)
          .WithDropout(0.4, 99),
      Sizes("dropout_sinks", 2, 4, 2, 9, 13, 8, 8).WithSinks().WithDropout(0.25, 5),
      Sizes("dropout_long", 1, 2, 1, 130, 150, 16, 16).WithDropout(0.25, 0xFFFFFFFFFFFFFFFF),

      // ---- Decoding: few query rows, many keys (the engine splits the keys into chunks merged
      // by their lse; sinks, windows and causal rules can leave a whole chunk empty)
      Sizes("decode_sinks", /*         */ 1, 4, 1, 3, 1500, 16, 16).WithSinks(),
      Sizes("decode_window", 1, 4, 1, 3, 1500, 16, 16).WithWindow(700, kUnbounded).WithSinks(),
      Sizes("decode_window_last_chunk", 1, 4, 1, 3, 1500, 16, 16).WithWindow(100, 0).WithSinks(),
      Sizes("decode_top_left_first_chunk", 1, 4, 1, 3, 1500, 16, 16)
          .WithCausal(kTopLeft)
          .WithSoftcap(0.5)
          .WithSinks(),
      Sizes("decode_alibi", /*         */ 1, 4, 1, 3, 1500, 16, 16).WithAlibi(),
      Sizes("decode_dropout", 1, 4, 1, 3, 1500, 16, 16).WithSinks().WithDropout(0.3, 8),
      Sizes("decode_varlen", 1, 4, 1, 3, 2300, 16, 16)
          .WithCausal(kBottomRight)
          .WithSinks()
          .WithVarlen({0, 1, 3}, {0, 1100, 2300}),

      // ---- Everything at once
      Sizes("everything_varlen", 1, 4, 2, 12, 15, 8, 8)
          .WithCausal(kBottomRight)
          .WithWindow(3, kUnbounded)
          .WithSoftcap(2)
          .WithAlibi()
          .WithSinks()
          .WithMask(kAdd, {1, 4, 12, 15}, 0.8)
          .WithVarlen(kManyQ, kManyK)
          .WithDropout(0.2, 3),
      Sizes("everything_batched", 2, 4, 1, 9, 13, 8, 8)
          .WithCausal(kTopLeft)
          .WithWindow(4, 1)
          .WithSoftcap(1)
          .WithAlibi()
          .WithSinks()
          .WithMask(kBool, {2, 1, 9, 13})
          .WithDropout(0.1, 11),
  };
}

// The case's operands and variants; float32 cases hold float32-representable values.
NaiveProblem MakeProblem(const Case& c, DType dtype) {
  const std::uint64_t seed = SeedOf(c.name);
  NaiveProblem p;
  p.query = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, seed, c.qk_lo, c.qk_hi);
  p.key = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, seed + 1, c.qk_lo, c.qk_hi);
  if (c.integers) {
    for (double& x : p.query.values) x = std::floor(x);
    for (double& x : p.key.values) x = std::floor(x);
  }
  p.value = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.v_dim}, seed + 2);
  p.scale = c.scale ? *c.scale : sdpa_test::DefaultScale(c.head_dim);
  p.causal = c.causal;
  p.mask_type = c.mask_type;
  if (c.mask_type != MaskType::kNone) {
    p.mask = sdpa_test::RandomMask(c.mask_type, c.mask_shape, c.mask_keep, seed + 3);
  }
  if (c.window) {
    p.window_left = c.left;
    p.window_right = c.right;
  }
  if (c.alibi) p.alibi_slopes = PaperSlopes(c.heads);
  p.softcap = c.softcap;
  p.sinks = c.sinks;
  if (c.random_sinks) {
    sdpa_test::Random random(seed + 4);
    for (std::int64_t h = 0; h < c.heads; ++h) p.sinks.push_back(random.Uniform(-1.0, 3.0));
  }
  p.cu_seqlens_q = c.cu_q;
  p.cu_seqlens_k = c.cu_k;
  p.dropout_p = c.dropout_p;
  p.seed = c.seed;
  return dtype == DType::kFloat32 ? sdpa_test::RoundedToFloat(p) : p;
}

// Contiguous operands, or every operand in an unusual layout (sdpa_test::LayoutsFor).
using Memory = sdpa_test::Storage;

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

using CaseParam = std::tuple<Case, DType, Memory, Backend>;

class VariantCase : public ::testing::TestWithParam<CaseParam> {};

TEST_P(VariantCase, MatchesNaiveAttention) {
  const auto& [c, dtype, memory, backend] = GetParam();
  const NaiveProblem p = MakeProblem(c, dtype);
  const sdpa::Options options = OptionsFor(p, backend);
  const sdpa_test::Layouts layouts = sdpa_test::LayoutsFor(memory, c.mask_shape.size());
  const NaiveResult expected = sdpa_test::NaiveAttention(p);
  const NaiveResult got = dtype == DType::kFloat32
                              ? sdpa_test::RunForward<float>(p, options, layouts)
                              : sdpa_test::RunForward<double>(p, options, layouts);
  const Tolerance tol = dtype == DType::kFloat32 ? c.f32 : c.f64;
  EXPECT_TRUE(sdpa_test::AllClose(got.out, expected.out, tol)) << "out";
  EXPECT_TRUE(sdpa_test::AllClose(got.lse, expected.lse, tol)) << "lse";
}

std::string CaseParamName(const ::testing::TestParamInfo<CaseParam>& info) {
  const auto& [c, dtype, memory, backend] = info.param;
  return sdpa_test::CaseTestName(c.name, dtype, memory, backend);
}

// ---- Rules, one test each -------------------------------------------------------------------

using sdpa_test::Keys;
using sdpa_test::RandomProblem;

class VariantSemantics : public ::testing::TestWithParam<Backend> {
 public:
  void TearDown() override { sdpa::SetNumThreads(0); }
  void ExpectSameForAnyThreadCount(const NaiveProblem& p) const;

  sdpa::Options Opts(const NaiveProblem& p) const { return OptionsFor(p, GetParam()); }
  template <typename T>
  NaiveResult Run(const NaiveProblem& p) const {
    return sdpa_test::RunForward<T>(p, Opts(p));
  }
  template <typename T>
  NaiveResult Run(const NaiveProblem& p, const sdpa::Options& options) const {
    return sdpa_test::RunForward<T>(p, options);
  }
  // Compares both types with NaiveAttention (float32 on the float32-rounded problem).
  void ExpectMatchesNaive(const NaiveProblem& p, Tolerance f32 = kF32) const {
    const NaiveResult expected = sdpa_test::NaiveAttention(p);
    const NaiveResult r64 = Run<double>(p), r32 = Run<float>(p);
    EXPECT_TRUE(sdpa_test::AllClose(r64.out, expected.out, kF64)) << "float64 out";
    EXPECT_TRUE(sdpa_test::AllClose(r64.lse, expected.lse, kF64)) << "float64 lse";
    EXPECT_TRUE(sdpa_test::AllClose(r32.out, expected.out, f32)) << "float32 out";
    EXPECT_TRUE(sdpa_test::AllClose(r32.lse, expected.lse, f32)) << "float32 lse";
  }

  // The keys each query row attends to, read back from the result (sdpa_test::VisibleKeysOf).
  // `p` gives q_len and kv_len through its query and key shapes; its values are replaced.
  Keys VisibleKeys(NaiveProblem p) const {
    sdpa_test::UseKeyIdentifyingOperands(p, p.query.shape[2], p.key.shape[2]);
    return sdpa_test::VisibleKeysOf(Run<double>(p));
  }
  static NaiveProblem Shape(std::int64_t q_len, std::int64_t kv_len, Causal causal, Side left,
                            Side right) {
    NaiveProblem p;
    p.query = Array({1, 1, q_len, 1});
    p.key = Array({1, 1, kv_len, 1});
    p.causal = causal;
    p.window_left = left;
    p.window_right = right;
    return p;
  }
};

// ---- Sliding window

TEST_P(VariantSemantics, WindowKeepsTheBandAroundTheBottomRightDiagonal) {
  // Lq 4, Lkv 6, no causal mode: diag(i) = i + 2.
  EXPECT_EQ(VisibleKeys(Shape(4, 6, Causal::kNone, 1, 0)), (Keys{{1, 2}, {2, 3}, {3, 4}, {4, 5}}));
  EXPECT_EQ(VisibleKeys(Shape(4, 6, Causal::kNone, 0, 1)), (Keys{{2, 3}, {3, 4}, {4, 5}, {5}}));
  // One side unbounded.
  EXPECT_EQ(VisibleKeys(Shape(4, 6, Causal::kNone, kUnbounded, 0)),
            (Keys{{0, 1, 2}, {0, 1, 2, 3}, {0, 1, 2, 3, 4}, {0, 1, 2, 3, 4, 5}}));
  EXPECT_EQ(VisibleKeys(Shape(4, 6, Causal::kNone, 0, kUnbounded)),
            (Keys{{2, 3, 4, 5}, {3, 4, 5}, {4, 5}, {5}}));
  // Lq 6 > Lkv 3: diag(i) = i - 3, so the first rows see nothing.
  EXPECT_EQ(VisibleKeys(Shape(6, 3, Causal::kNone, 1, 1)),
            (Keys{{}, {}, {0}, {0, 1}, {0, 1, 2}, {1, 2}}));
  // Larger than the sequence: every key.
  EXPECT_EQ(VisibleKeys(Shape(2, 3, Causal::kNone, 100, 100)), (Keys{{0, 1, 2}, {0, 1, 2}}));
}

TEST_P(VariantSemantics, WindowFollowsTheCausalAlignment) {
  // Top-left: diag(i) = i.
  EXPECT_EQ(VisibleKeys(Shape(4, 6, Causal::kTopLeft, 1, kUnbounded)),
            (Keys{{0}, {0, 1}, {1, 2}, {2, 3}}));
  EXPECT_EQ(VisibleKeys(Shape(3, 3, Causal::kTopLeft, 0, 5)), (Keys{{0}, {1}, {2}}));
  // Without causal, a top-left window is not possible: the window alone is bottom-right.
  EXPECT_EQ(VisibleKeys(Shape(4, 6, Causal::kNone, 1, kUnbounded)),
            (Keys{{1, 2, 3, 4, 5}, {2, 3, 4, 5}, {3, 4, 5}, {4, 5}}));
  // Bottom-right: diag(i) = i + 2; the right side cannot widen the causal rule.
  EXPECT_EQ(VisibleKeys(Shape(4, 6, Causal::kBottomRight, 0, kUnbounded)),
            (Keys{{2}, {3}, {4}, {5}}));
  EXPECT_EQ(VisibleKeys(Shape(4, 6, Causal::kBottomRight, 1, 3)),
            (Keys{{1, 2}, {2, 3}, {3, 4}, {4, 5}}));
}

TEST_P(VariantSemantics, WindowUsesPositionsWithinEachPackedSequence) {
  // Sequences (Lq, Lk) = (2, 3) and (3, 1); window (0, 0) keeps key diag(i) = i + Lk - Lq only.
  NaiveProblem p = Shape(5, 4, Causal::kNone, 0, 0);
  p.cu_seqlens_q = {0, 2, 5};
  p.cu_seqlens_k = {0, 3, 4};
  // Sequence 0: rows 0, 1 see keys 1, 2. Sequence 1: diag = i - 2, only its last row (packed
  // row 4) sees its key (packed key 3).
  EXPECT_EQ(VisibleKeys(p), (Keys{{1}, {2}, {}, {}, {3}}));
}

TEST_P(VariantSemantics, WindowLargerThanTheSequenceEqualsNoWindow) {
  NaiveProblem p = RandomProblem(2, 4, 2, 9, 13, 8, 8, 101);
  p.causal = Causal::kBottomRight;
  const NaiveResult expected = sdpa_test::NaiveAttention(p);
  for (const auto& [left, right] : {std::pair<Side, Side>{13, 13},
                                    {1000, kUnbounded},
                                    {kUnbounded, 1000},
                                    {kUnbounded, kUnbounded}}) {
    p.window_left = left;
    p.window_right = right;
    const NaiveResult r = Run<double>(p);
    EXPECT_TRUE(sdpa_test::AllClose(r.out, expected.out, kF64));
    EXPECT_TRUE(sdpa_test::AllClose(r.lse, expected.lse, kF64));
  }
}

// ---- ALiBi

// Under causal masking with the last query aligned to the last key, FlashAttention's bias
// -slope·|i + Lkv - Lq - j| is the ALiBi paper's slope·(j - i'), i' = i + Lkv - Lq the query's
// position among the keys: passed as an additive mask instead, the result is the same.
TEST_P(VariantSemantics, AlibiUnderCausalIsThePapersSlopeTimesJMinusI) {
  for (const auto& [q_len, kv_len, causal] :
       {std::tuple{9, 9, Causal::kTopLeft}, std::tuple{9, 9, Causal::kBottomRight},
        std::tuple{6, 11, Causal::kBottomRight}}) {
    NaiveProblem p = RandomProblem(2, 4, 2, q_len, kv_len, 8, 8, 102);
    p.causal = causal;
    const std::vector<double> slopes = PaperSlopes(4);
    NaiveProblem with_mask = p;
    with_mask.mask_type = MaskType::kAdditive;
    with_mask.mask = Array({4, q_len, kv_len});
    for (std::int64_t h = 0; h < 4; ++h) {
      for (std::int64_t i = 0; i < q_len; ++i) {
        for (std::int64_t j = 0; j < kv_len; ++j) {
          const std::int64_t position = i + kv_len - q_len;
          // Hidden by the causal rule where j > position: any value, never read.
          with_mask.mask({h, i, j}) = j <= position ? slopes[static_cast<std::size_t>(h)] *
                                                          static_cast<double>(j - position)
                                                    : 1e6;
        }
      }
    }
    p.alibi_slopes = slopes;
    const NaiveResult alibi = Run<double>(p);
    const NaiveResult paper = Run<double>(with_mask);
    EXPECT_TRUE(sdpa_test::AllClose(alibi.out, paper.out, kF64)) << q_len << "x" << kv_len;
    EXPECT_TRUE(sdpa_test::AllClose(alibi.lse, paper.lse, kF64)) << q_len << "x" << kv_len;
    ExpectMatchesNaive(p, kF32For(8));
  }
}

TEST_P(VariantSemantics, AlibiWithoutCausalPenalizesBothSidesOfTheDiagonal) {
  // One query row, q = 0: lse = log Σ_j exp(-slope·|Lkv - 1 - j|) with v = 1.
  NaiveProblem p = RandomProblem(1, 2, 1, 1, 5, 4, 1, 103);
  p.query = Array({1, 2, 1, 4});
  p.value = Array({1, 1, 5, 1}, 1.0);
  p.alibi_slopes = {0.5, -0.25};  // a negative slope is allowed: it rewards distance
  const NaiveResult r = Run<double>(p);
  for (std::int64_t h = 0; h < 2; ++h) {
    double sum = 0;
    for (int j = 0; j < 5; ++j) {
      sum += std::exp(-p.alibi_slopes[static_cast<std::size_t>(h)] * std::abs(4 - j));
    }
    EXPECT_NEAR(r.lse({0, h, 0}), std::log(sum), 1e-14) << "head " << h;
    EXPECT_NEAR(r.out({0, h, 0, 0}), 1.0, 1e-15);
  }
}

// ---- Softcap

TEST_P(VariantSemantics, SoftcapKeepsHugeLogitsFinite) {
  // scale·q·k of ±1e3 to ±1e4 (also 1e300 in float64), capped at 10: every result is finite and
  // each lse is at most cap + log(Lkv).
  for (double magnitude : {1e3, 1e4, 1e300}) {
    NaiveProblem p = RandomProblem(1, 2, 2, 6, 9, 8, 8, 104);
    p.scale = magnitude;
    p.softcap = 10.0;
    const NaiveResult expected = sdpa_test::NaiveAttention(p);
    const NaiveResult r64 = Run<double>(p);
    // A float64 dot product of 8 terms |q_d k_d| <= 1 is off by up to 8·2^-53 of 8, which the
    // scale multiplies; a logit below the cap passes that error on to its probability.
    const double error = 1e-13 + magnitude * 64 * 0x1.0p-53;
    const Tolerance tol{magnitude < 1e30 ? error : 1e-13, magnitude < 1e30 ? error : 1e-13};
    EXPECT_TRUE(sdpa_test::AllClose(r64.out, expected.out, tol)) << magnitude;
    EXPECT_TRUE(sdpa_test::AllClose(r64.lse, expected.lse, tol)) << magnitude;
    if (magnitude < 1e30) {
      // In float32 the logits are no longer exact, as scale·q·k rounds to 2^-24 of 1e4; only
      // finiteness and the cap are checked.
      const NaiveResult r32 = Run<float>(p);
      for (double x : r32.out.values) EXPECT_TRUE(std::isfinite(x)) << magnitude;
      for (double x : r32.lse.values) {
        EXPECT_TRUE(std::isfinite(x)) << magnitude;
        EXPECT_LE(x, 10.0 + std::log(9.0) + 1e-5) << magnitude;
      }
    }
    for (double x : r64.lse.values) EXPECT_LE(x, 10.0 + std::log(9.0) + 1e-12);
  }
}

TEST_P(VariantSemantics, SoftcapIsAppliedAfterScalingAndBeforeTheMask) {
  // One key per row: the score is c·tanh(scale·q·k / c) + additive mask, so lse equals it.
  NaiveProblem p = RandomProblem(1, 1, 1, 3, 1, 4, 2, 105);
  p.scale = 3.0;
  p.softcap = 0.75;
  p.mask_type = MaskType::kAdditive;
  p.mask = Array({3, 1}, {0.5, -2.0, 4.0});
  const NaiveResult r = Run<double>(p);
  for (std::int64_t i = 0; i < 3; ++i) {
    double dot = 0;
    for (std::int64_t d = 0; d < 4; ++d) dot += p.query({0, 0, i, d}) * p.key({0, 0, 0, d});
    EXPECT_NEAR(r.lse({0, 0, i}), 0.75 * std::tanh(3.0 * dot / 0.75) + p.mask({i, 0}), 1e-15);
  }
}

// ---- Sinks

TEST_P(VariantSemantics, SinkJoinsTheDenominatorWithoutAValue) {
  // One key of score s and a sink σ: out = v·e^s / (e^s + e^σ), lse = log(e^s + e^σ).
  NaiveProblem p = RandomProblem(1, 2, 1, 3, 1, 4, 3, 106);
  p.sinks = {0.75, -1.5};
  const NaiveResult r64 = Run<double>(p), r32 = Run<float>(p);
  for (std::int64_t h = 0; h < 2; ++h) {
    for (std::int64_t i = 0; i < 3; ++i) {
      double dot = 0;
      for (std::int64_t d = 0; d < 4; ++d) dot += p.query({0, h, i, d}) * p.key({0, 0, 0, d});
      const double s = p.scale * dot, sink = p.sinks[static_cast<std::size_t>(h)];
      const double weight = std::exp(s) / (std::exp(s) + std::exp(sink));
      EXPECT_NEAR(r64.lse({0, h, i}), std::log(std::exp(s) + std::exp(sink)), 1e-15);
      EXPECT_NEAR(r32.lse({0, h, i}), std::log(std::exp(s) + std::exp(sink)), 2e-7);
      for (std::int64_t e = 0; e < 3; ++e) {
        EXPECT_NEAR(r64.out({0, h, i, e}), weight * p.value({0, 0, 0, e}), 1e-15);
        EXPECT_NEAR(r32.out({0, h, i, e}), weight * p.value({0, 0, 0, e}), 2e-7);
      }
    }
  }
}

TEST_P(VariantSemantics, MinusInfinitySinkEqualsNoSink) {
  NaiveProblem p = RandomProblem(2, 4, 2, 7, 9, 8, 8, 107);
  p.causal = Causal::kBottomRight;
  const NaiveResult expected = sdpa_test::NaiveAttention(p);
  p.sinks = {-kInf, -kInf, -kInf, -kInf};
  const NaiveResult r64 = Run<double>(p), r32 = Run<float>(p);
  EXPECT_TRUE(sdpa_test::AllClose(r64.out, expected.out, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(r64.lse, expected.lse, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(r32.out, expected.out, kF32));
  EXPECT_TRUE(sdpa_test::AllClose(r32.lse, expected.lse, kF32));
}

TEST_P(VariantSemantics, RowsWithNoVisibleKeyHaveTheSinkAsLse) {
  // Row 1 fully masked, row 2 hidden by nothing; heads 0, 1 with finite sinks, head 2 with -inf.
  NaiveProblem p = RandomProblem(1, 3, 3, 3, 4, 8, 5, 108);
  p.mask_type = MaskType::kBool;
  p.mask = Array({3, 4}, {1, 0, 1, 0,  //
                          0, 0, 0, 0,  //
                          1, 1, 1, 1});
  p.sinks = {0.3, -2.5, -kInf};
  const NaiveResult r64 = Run<double>(p), r32 = Run<float>(p);
  for (std::int64_t h = 0; h < 3; ++h) {
    const double sink = p.sinks[static_cast<std::size_t>(h)];
    EXPECT_EQ(r64.lse({0, h, 1}), sink) << "head " << h;
    EXPECT_EQ(r32.lse({0, h, 1}), static_cast<double>(static_cast<float>(sink))) << "head " << h;
    for (std::int64_t e = 0; e < 5; ++e) {
      EXPECT_EQ(r64.out({0, h, 1, e}), 0.0);
      EXPECT_EQ(r32.out({0, h, 1, e}), 0.0);
    }
  }
  ExpectMatchesNaive(p);
  // No key at all (kv_len 0) and causal rows before the first key behave the same.
  NaiveProblem empty = RandomProblem(1, 3, 3, 2, 0, 8, 5, 109);
  empty.sinks = p.sinks;
  const NaiveResult e64 = Run<double>(empty);
  for (std::int64_t h = 0; h < 3; ++h) {
    for (std::int64_t i = 0; i < 2; ++i) {
      EXPECT_EQ(e64.lse({0, h, i}), p.sinks[static_cast<std::size_t>(h)]);
    }
  }
  NaiveProblem causal = RandomProblem(1, 3, 3, 6, 3, 8, 5, 110);
  causal.causal = Causal::kBottomRight;
  causal.sinks = p.sinks;
  const NaiveResult c64 = Run<double>(causal);
  for (std::int64_t h = 0; h < 3; ++h) {
    for (std::int64_t i = 0; i < 3; ++i) {
      EXPECT_EQ(c64.lse({0, h, i}), p.sinks[static_cast<std::size_t>(h)]) << i;
    }
  }
  ExpectMatchesNaive(causal);
}

// ---- Packed sequences

// Rows [q0, q1) and keys [k0, k1) of a batch-1 problem as a problem of their own.
NaiveProblem Slice(const NaiveProblem& p, std::int64_t q0, std::int64_t q1, std::int64_t k0,
                   std::int64_t k1) {
  const auto rows = [](const Array& a, std::int64_t begin, std::int64_t end) {
    Array r({a.shape[0], a.shape[1], end - begin, a.shape[3]});
    for (std::int64_t h = 0; h < a.shape[1]; ++h) {
      for (std::int64_t i = begin; i < end; ++i) {
        for (std::int64_t d = 0; d < a.shape[3]; ++d) r({0, h, i - begin, d}) = a({0, h, i, d});
      }
    }
    return r;
  };
  NaiveProblem s = p;
  s.query = rows(p.query, q0, q1);
  s.key = rows(p.key, k0, k1);
  s.value = rows(p.value, k0, k1);
  s.cu_seqlens_q.clear();
  s.cu_seqlens_k.clear();
  if (p.mask_type != MaskType::kNone) {  // mask [H, Lq, Lkv]
    s.mask = Array({p.mask.shape[0], q1 - q0, k1 - k0});
    for (std::int64_t h = 0; h < p.mask.shape[0]; ++h) {
      for (std::int64_t i = q0; i < q1; ++i) {
        for (std::int64_t j = k0; j < k1; ++j) s.mask({h, i - q0, j - k0}) = p.mask({h, i, j});
      }
    }
  }
  return s;
}

TEST_P(VariantSemantics, VarlenEqualsEachSequenceAlone) {
  // Every per-sequence option (causal, window, ALiBi, softcap, sinks, a packed mask) at once;
  // dropout is left out because its counter holds the sequence index, which a call of its own
  // would see as batch entry 0.
  const std::vector<std::int64_t> cu_q = {0, 4, 4, 9, 10, 16}, cu_k = {0, 6, 8, 8, 13, 17};
  for (Causal causal : {Causal::kNone, Causal::kTopLeft, Causal::kBottomRight}) {
    NaiveProblem p = RandomProblem(1, 4, 2, 16, 17, 8, 6, 111);
    p.causal = causal;
    p.cu_seqlens_q = cu_q;
    p.cu_seqlens_k = cu_k;
    p.window_left = 3;
    p.alibi_slopes = PaperSlopes(4);
    p.softcap = 1.5;
    p.sinks = {0.1, -0.4, 1.0, -kInf};
    p.mask_type = MaskType::kAdditive;
    p.mask = Array::Uniform({4, 16, 17}, 112, -1.0, 1.0);
    for (std::size_t n = 0; n < p.mask.values.size(); n += 5) p.mask.values[n] = -kInf;
    const NaiveResult packed = Run<double>(p);
    for (std::size_t s = 0; s + 1 < cu_q.size(); ++s) {
      const NaiveProblem alone = Slice(p, cu_q[s], cu_q[s + 1], cu_k[s], cu_k[s + 1]);
      const NaiveResult r = Run<double>(alone);
      const std::int64_t rows = cu_q[s + 1] - cu_q[s];
      NaiveResult part{Array({1, 4, rows, 6}), Array({1, 4, rows})};
      for (std::int64_t h = 0; h < 4; ++h) {
        for (std::int64_t i = 0; i < rows; ++i) {
          part.lse({0, h, i}) = packed.lse({0, h, cu_q[s] + i});
          for (std::int64_t e = 0; e < 6; ++e) {
            part.out({0, h, i, e}) = packed.out({0, h, cu_q[s] + i, e});
          }
        }
      }
      EXPECT_TRUE(sdpa_test::AllClose(part.out, r.out, kF64)) << "sequence " << s;
      EXPECT_TRUE(sdpa_test::AllClose(part.lse, r.lse, kF64)) << "sequence " << s;
    }
    ExpectMatchesNaive(p, kF32For(8));
  }
}

TEST_P(VariantSemantics, VarlenSequencesDoNotReadEachOther) {
  // Sequence 1 has keys but no query: NaN in its keys and values reaches no row. Sequence 2 has
  // queries but no key: its rows give out 0 and lse -inf.
  NaiveProblem p = RandomProblem(1, 2, 1, 7, 9, 4, 3, 113);
  p.cu_seqlens_q = {0, 3, 3, 5, 7};
  p.cu_seqlens_k = {0, 4, 7, 7, 9};
  const NaiveResult clean = Run<double>(p);
  for (std::int64_t j = 4; j < 7; ++j) {
    for (std::int64_t d = 0; d < 4; ++d) p.key({0, 0, j, d}) = kNaN;
    for (std::int64_t e = 0; e < 3; ++e) p.value({0, 0, j, e}) = kNaN;
  }
  const NaiveResult r64 = Run<double>(p), r32 = Run<float>(p);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(r64.out, clean.out));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(r64.lse, clean.lse));
  for (double x : r32.out.values) EXPECT_FALSE(std::isnan(x));
  for (std::int64_t h = 0; h < 2; ++h) {
    for (std::int64_t i = 3; i < 5; ++i) {
      EXPECT_EQ(r64.lse({0, h, i}), -kInf);
      EXPECT_EQ(r32.lse({0, h, i}), -kInf);
      for (std::int64_t e = 0; e < 3; ++e) EXPECT_EQ(r64.out({0, h, i, e}), 0.0);
    }
  }
}

// ---- Dropout

// V = identity (Dv = Lkv) makes out[i, j] = P_ij · keep_ij / (1 - p): every element shows its
// own decision. Compared with the output without dropout (P), each is 0 or P / (1 - p), and the
// decisions are NaiveDropoutKept's.
TEST_P(VariantSemantics, DropoutKeepRateScalingAndDecisions) {
  constexpr std::int64_t kHeads = 4, kQLen = 128, kKvLen = 256;  // 131072 probabilities
  NaiveProblem p = RandomProblem(1, kHeads, 2, kQLen, kKvLen, 8, kKvLen, 114);
  p.value = Array({1, 2, kKvLen, kKvLen});
  for (std::int64_t g = 0; g < 2; ++g) {
    for (std::int64_t j = 0; j < kKvLen; ++j) p.value({0, g, j, j}) = 1.0;
  }
  const NaiveResult plain = Run<double>(p);
  for (double dropout : {0.1, 0.5, 0.875}) {
    p.dropout_p = dropout;
    p.seed = 0x9E3779B97F4A7C15ull;
    const NaiveResult r = Run<double>(p);
    const double scale = 1.0 / (1.0 - dropout);
    EXPECT_TRUE(sdpa_test::AllClose(r.lse, plain.lse, kF64)) << "dropout changes no lse";
    std::int64_t kept = 0, total = 0, wrong_decision = 0, wrong_value = 0;
    for (std::int64_t h = 0; h < kHeads; ++h) {
      for (std::int64_t i = 0; i < kQLen; ++i) {
        for (std::int64_t j = 0; j < kKvLen; ++j) {
          const double x = r.out({0, h, i, j}), probability = plain.out({0, h, i, j});
          ASSERT_GT(probability, 0.0);
          const bool is_kept = x != 0.0;
          kept += is_kept;
          ++total;
          wrong_decision += is_kept != sdpa_test::NaiveDropoutKept(dropout, p.seed, 0, h, i, j);
          if (is_kept && std::fabs(x - scale * probability) > 1e-13 * scale * probability) {
            ++wrong_value;
          }
        }
      }
    }
    const double rate = static_cast<double>(kept) / static_cast<double>(total);
    const double sigma = std::sqrt(dropout * (1 - dropout) / static_cast<double>(total));
    EXPECT_NEAR(rate, 1.0 - dropout, 4 * sigma) << "p " << dropout;
    EXPECT_EQ(wrong_decision, 0) << "p " << dropout;
    EXPECT_EQ(wrong_value, 0) << "kept probabilities are scaled by 1 / (1 - p), p " << dropout;
  }
}

// A problem with dropout big enough to be split over threads and tiles.
NaiveProblem DropoutProblem(std::uint64_t seed) {
  NaiveProblem p = RandomProblem(2, 4, 2, 150, 170, 16, 16, 115);
  p.causal = Causal::kBottomRight;
  p.dropout_p = 0.3;
  p.seed = seed;
  return p;
}

TEST_P(VariantSemantics, DropoutIsReproducibleForAnyThreadCount) {
  // Decoding: 32 rows of one kv head, keys split into chunks, enough work for three threads.
  NaiveProblem decode = RandomProblem(1, 8, 1, 4, 3000, 32, 32, 117);
  decode.sinks = {0.5, -1.0, 2.0, -kInf, 0.0, 1.0, -2.0, 3.0};
  decode.dropout_p = 0.3;
  decode.seed = 1234;
  for (const NaiveProblem& p : {DropoutProblem(1234), decode}) {
    ExpectSameForAnyThreadCount(p);
  }
}

void VariantSemantics::ExpectSameForAnyThreadCount(const NaiveProblem& p) const {
  sdpa::SetNumThreads(1);
  const NaiveResult one64 = Run<double>(p), one32 = Run<float>(p);
  for (int threads : {2, 3}) {
    sdpa::SetNumThreads(threads);
    const NaiveResult r64 = Run<double>(p), r32 = Run<float>(p);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(r64.out, one64.out)) << threads << " threads";
    EXPECT_TRUE(sdpa_test::BitwiseEqual(r64.lse, one64.lse)) << threads << " threads";
    EXPECT_TRUE(sdpa_test::BitwiseEqual(r32.out, one32.out)) << threads << " threads";
    EXPECT_TRUE(sdpa_test::BitwiseEqual(r32.lse, one32.lse)) << threads << " threads";
  }
  // Twice on one thread count: bit for bit again.
  EXPECT_TRUE(sdpa_test::BitwiseEqual(Run<double>(p).out, one64.out));
  const NaiveResult expected = sdpa_test::NaiveAttention(p);
  EXPECT_TRUE(sdpa_test::AllClose(one64.out, expected.out, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(one32.out, expected.out, kF32));
}

TEST_P(VariantSemantics, DropoutDecisionsAreTheSameOnEveryBackend) {
  // This backend against the reference: the same elements are dropped (exact zeros in the
  // one-hot layout of DropoutKeepRateScalingAndDecisions), the rest agree to rounding.
  NaiveProblem p = RandomProblem(2, 2, 1, 40, 64, 8, 64, 116);
  p.value = Array({2, 1, 64, 64});
  for (std::int64_t b = 0; b < 2; ++b) {
    for (std::int64_t j = 0; j < 64; ++j) p.value({b, 0, j, j}) = 1.0;
  }
  p.dropout_p = 0.5;
  p.seed = 77;
  sdpa::Options reference_options = Opts(p);
  reference_options.backend = Backend::kReference;
  for (bool f32 : {false, true}) {
    const NaiveResult mine = f32 ? Run<float>(p) : Run<double>(p);
    const NaiveResult reference =
        f32 ? Run<float>(p, reference_options) : Run<double>(p, reference_options);
    const NaiveResult again =
        f32 ? Run<float>(p, reference_options) : Run<double>(p, reference_options);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(again.out, reference.out)) << "reference twice";
    EXPECT_TRUE(sdpa_test::BitwiseEqual(again.lse, reference.lse)) << "reference twice";
    std::int64_t differ = 0;
    for (std::size_t n = 0; n < mine.out.values.size(); ++n) {
      differ += (mine.out.values[n] == 0.0) != (reference.out.values[n] == 0.0);
    }
    EXPECT_EQ(differ, 0) << (f32 ? "float32" : "float64");
    EXPECT_TRUE(sdpa_test::AllClose(mine.out, reference.out, f32 ? kF32 : kF64));
  }
}

TEST_P(VariantSemantics, DifferentSeedsDropDifferentElements) {
  NaiveProblem a = DropoutProblem(1), b = DropoutProblem(2),
               high = DropoutProblem((std::uint64_t{1} << 32) | 1);
  const NaiveResult ra = Run<double>(a), rb = Run<double>(b), rhigh = Run<double>(high);
  std::int64_t differ_b = 0, differ_high = 0;
  for (std::size_t n = 0; n < ra.out.values.size(); ++n) {
    differ_b += ra.out.values[n] != rb.out.values[n];
    differ_high += ra.out.values[n] != rhigh.out.values[n];
  }
  const auto total = static_cast<std::int64_t>(ra.out.values.size());
  EXPECT_GT(differ_b, total / 2) << "seeds 1 and 2";
  EXPECT_GT(differ_high, total / 2) << "the seed's high 32 bits are part of the key";
  EXPECT_TRUE(sdpa_test::AllClose(rb.out, sdpa_test::NaiveAttention(b).out, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(rhigh.out, sdpa_test::NaiveAttention(high).out, kF64));
}

TEST_P(VariantSemantics, ZeroDropoutEqualsNoDropout) {
  NaiveProblem p = DropoutProblem(99);
  p.dropout_p = 0;
  sdpa::Options none = Opts(p);
  none.seed = 0;
  for (std::uint64_t seed : {std::uint64_t{0}, std::uint64_t{99}, ~std::uint64_t{0}}) {
    p.seed = seed;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(Run<double>(p).out, Run<double>(p, none).out)) << seed;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(Run<float>(p).out, Run<float>(p, none).out)) << seed;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(Run<float>(p).lse, Run<float>(p, none).lse)) << seed;
  }
}

TEST(VariantPhilox, MatchesRandom123KnownAnswers) {
  using sdpa_test::NaivePhilox;
  using sdpa_test::PhiloxBlock;
  EXPECT_EQ(NaivePhilox({0, 0, 0, 0}, {0, 0}),
            (PhiloxBlock{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(NaivePhilox({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
            (PhiloxBlock{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(NaivePhilox({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
            (PhiloxBlock{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(VariantPhilox, KeepRuleUsesTheDocumentedCounterAndThreshold) {
  // Counter (j / 4, i, h, b), key (low, high) of the seed, word j % 4, dropped below
  // round(p·2^32): with the known-answer key, element (b, h, i, j) = (0x03707344, 0x13198a2e,
  // 0x85a308d3, 4·0x243f6a88 + 2) reads word 2, 0x5001e420 = 0.3125...·2^32.
  const std::uint64_t seed = (std::uint64_t{0x299f31d0} << 32) | 0xa4093822;
  const std::int64_t b = 0x03707344, h = 0x13198a2e, i = 0x85a308d3,
                     j = std::int64_t{4} * 0x243f6a88 + 2;
  const double word = static_cast<double>(0x5001e420u) / 4294967296.0;
  EXPECT_TRUE(sdpa_test::NaiveDropoutKept(word - 1e-9, seed, b, h, i, j));
  EXPECT_FALSE(sdpa_test::NaiveDropoutKept(word + 1e-9, seed, b, h, i, j));
  EXPECT_TRUE(sdpa_test::NaiveDropoutKept(0.0, seed, b, h, i, j));
}

// ---- Custom score and mask functions

// The built-in variants, as custom functions of a sequence of Lq rows and Lk keys. Generic
// (taking auto) so that they also run on long double in NaiveAttention and on sdpa::Dual.
struct AlibiMod {
  std::vector<double> slopes;
  std::int64_t offset;  // Lk - Lq
  template <typename S, typename I>
  S operator()(S score, I, I h, I i, I j) const {
    const I distance = i + offset - j;
    return static_cast<S>(score - slopes[static_cast<std::size_t>(h)] *
                                      static_cast<double>(distance < 0 ? -distance : distance));
  }
};
struct SoftcapMod {
  double cap;
  template <typename S, typename I>
  S operator()(S score, I, I, I, I) const {
    using std::tanh;
    return static_cast<S>(cap * tanh(score / cap));
  }
};

class CustomVariant : public VariantSemantics {
 public:
  // Runs `custom` (which holds its own score_mod / mask_mod) with p's other options in both
  // types, compares with NaiveAttention of `naive` and with `builtin`'s library result.
  template <class Custom>
  void ExpectEqualsBuiltIn(const Custom& custom, const NaiveProblem& naive,
                           const NaiveProblem& builtin, const NaiveProblem& base,
                           Tolerance f32 = kF32) const {
    const NaiveResult expected = sdpa_test::NaiveAttention(naive);
    const sdpa::Options options = custom.With(Opts(base));
    const NaiveResult c64 = Run<double>(base, options), c32 = Run<float>(base, options);
    const NaiveResult b64 = Run<double>(builtin), b32 = Run<float>(builtin);
    EXPECT_TRUE(sdpa_test::AllClose(c64.out, expected.out, kF64)) << "custom float64 out";
    EXPECT_TRUE(sdpa_test::AllClose(c64.lse, expected.lse, kF64)) << "custom float64 lse";
    EXPECT_TRUE(sdpa_test::AllClose(c32.out, expected.out, f32)) << "custom float32 out";
    EXPECT_TRUE(sdpa_test::AllClose(c32.lse, expected.lse, f32)) << "custom float32 lse";
    EXPECT_TRUE(sdpa_test::AllClose(b64.out, expected.out, kF64)) << "built-in float64 out";
    EXPECT_TRUE(sdpa_test::AllClose(b64.lse, expected.lse, kF64)) << "built-in float64 lse";
    EXPECT_TRUE(sdpa_test::AllClose(c64.out, b64.out, kF64)) << "custom vs built-in, float64";
    EXPECT_TRUE(sdpa_test::AllClose(c64.lse, b64.lse, kF64)) << "custom vs built-in, float64";
    EXPECT_TRUE(sdpa_test::AllClose(c32.out, b32.out, f32)) << "custom vs built-in, float32";
    EXPECT_TRUE(sdpa_test::AllClose(c32.lse, b32.lse, f32)) << "custom vs built-in, float32";
  }
};

TEST_P(CustomVariant, ScoreModExpressingAlibiEqualsTheOption) {
  NaiveProblem base = RandomProblem(2, 4, 2, 9, 13, 8, 8, 120);
  base.causal = Causal::kBottomRight;
  const AlibiMod mod{PaperSlopes(4), 13 - 9};
  NaiveProblem builtin = base, naive = base;
  builtin.alibi_slopes = mod.slopes;
  naive.score_mod = mod;
  const auto custom = sdpa::MakeCustom(mod);
  ExpectEqualsBuiltIn(custom, naive, builtin, base, kF32For(8));
}

TEST_P(CustomVariant, ScoreModExpressingSoftcapEqualsTheOption) {
  NaiveProblem base = RandomProblem(2, 4, 2, 9, 13, 8, 8, 121);
  base.scale = 4.0;
  const SoftcapMod mod{0.8};
  NaiveProblem builtin = base, naive = base;
  builtin.softcap = mod.cap;
  naive.score_mod = mod;
  const auto custom = sdpa::MakeCustom(mod);
  ExpectEqualsBuiltIn(custom, naive, builtin, base, kF32For(5));
}

TEST_P(CustomVariant, MaskModExpressingCausalEqualsTheOption) {
  for (Causal causal : {Causal::kTopLeft, Causal::kBottomRight}) {
    for (const auto& [q_len, kv_len] : {std::pair{7, 11}, std::pair{11, 7}}) {
      const NaiveProblem base = RandomProblem(2, 4, 1, q_len, kv_len, 8, 8, 122);
      const std::int64_t offset = causal == Causal::kTopLeft ? 0 : kv_len - q_len;
      const auto mask_mod = [offset](auto, auto, auto i, auto j) { return j <= i + offset; };
      NaiveProblem builtin = base, naive = base;
      builtin.causal = causal;
      naive.mask_mod = mask_mod;
      const auto custom = sdpa::MakeCustom(sdpa::NoScoreMod{}, mask_mod);
      ExpectEqualsBuiltIn(custom, naive, builtin, base);
    }
  }
}

TEST_P(CustomVariant, MaskModExpressingAWindowEqualsTheOption) {
  const NaiveProblem base = RandomProblem(2, 4, 2, 9, 13, 8, 8, 123);
  const auto mask_mod = [](auto, auto, auto i, auto j) {
    const auto diag = i + 13 - 9;
    return diag - 3 <= j && j <= diag + 1;
  };
  NaiveProblem builtin = base, naive = base;
  builtin.window_left = 3;
  builtin.window_right = 1;
  naive.mask_mod = mask_mod;
  const auto custom = sdpa::MakeCustom(sdpa::NoScoreMod{}, mask_mod);
  ExpectEqualsBuiltIn(custom, naive, builtin, base);
}

TEST_P(CustomVariant, DocumentMaskModEqualsAnExplicitBoolMask) {
  // Documents of lengths 3, 5, 1, 4 in one sequence of 13 tokens, bottom-right causal.
  const std::vector<int> document = {0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3};
  const NaiveProblem base = RandomProblem(1, 4, 2, 13, 13, 8, 8, 124);
  const auto mask_mod = [&document](auto, auto, auto i, auto j) {
    return document[static_cast<std::size_t>(i)] == document[static_cast<std::size_t>(j)];
  };
  NaiveProblem builtin = base, naive = base;
  builtin.mask_type = MaskType::kBool;
  builtin.mask = Array({13, 13});
  for (std::int64_t i = 0; i < 13; ++i) {
    for (std::int64_t j = 0; j < 13; ++j) {
      const auto at = [&document](std::int64_t n) { return document[static_cast<std::size_t>(n)]; };
      builtin.mask({i, j}) = at(i) == at(j) ? 1.0 : 0.0;
    }
  }
  naive.mask_mod = mask_mod;
  const auto custom = sdpa::MakeCustom(sdpa::NoScoreMod{}, mask_mod);
  ExpectEqualsBuiltIn(custom, naive, builtin, base);
}

TEST_P(CustomVariant, CorrectBlockMaskGivesTheSameResultAsNone) {
  // Causal (top-left) by mask_mod, on sequences long enough for many blocks; the block_mask
  // calls a block of rows [q_begin, q_end) and keys [k_begin, k_end) empty when every key is
  // after every row and full when every key is at or before every row.
  for (const auto& [q_len, kv_len] :
       {std::pair{150, 200}, std::pair{200, 150}, std::pair{3, 1500}}) {
    const NaiveProblem base = RandomProblem(1, 2, 1, q_len, kv_len, 16, 16, 125);
    const auto mask_mod = [](auto, auto, auto i, auto j) { return j <= i; };
    const auto block_mask = [](auto, auto, std::int64_t q_begin, std::int64_t q_end,
                               std::int64_t k_begin, std::int64_t k_end) {
      if (k_begin > q_end - 1) return sdpa::BlockKind::kEmpty;
      if (k_end - 1 <= q_begin) return sdpa::BlockKind::kFull;
      return sdpa::BlockKind::kPartial;
    };
    NaiveProblem builtin = base, naive = base;
    builtin.causal = Causal::kTopLeft;
    naive.mask_mod = mask_mod;
    const auto hinted = sdpa::MakeCustom(sdpa::NoScoreMod{}, mask_mod, block_mask);
    ExpectEqualsBuiltIn(hinted, naive, builtin, base);
    const auto unhinted = sdpa::MakeCustom(sdpa::NoScoreMod{}, mask_mod);
    const NaiveResult with = Run<double>(base, hinted.With(Opts(base)));
    const NaiveResult without = Run<double>(base, unhinted.With(Opts(base)));
    EXPECT_TRUE(sdpa_test::AllClose(with.out, without.out, kF64));
    EXPECT_TRUE(sdpa_test::AllClose(with.lse, without.lse, kF64));
  }
}

// A score_mod taking plain numbers only (not sdpa::Dual): fine in the forward. It has a double
// overload too: with a float one alone, the float64 instantiation in sdpa/custom.h converts the
// score to float implicitly, which -Wconversion -Werror builds reject.
struct HalveFloat {
  float operator()(float score, std::int64_t, std::int64_t, std::int64_t, std::int64_t) const {
    return 0.5f * score;
  }
  double operator()(double score, std::int64_t, std::int64_t, std::int64_t, std::int64_t) const {
    return static_cast<double>(0.5f * static_cast<float>(score));  // float arithmetic here too
  }
};

TEST_P(CustomVariant, NonGenericScoreModWorksInTheForward) {
  const NaiveProblem base = RandomProblem(2, 4, 2, 9, 13, 8, 8, 126);
  NaiveProblem builtin = base, naive = base;
  builtin.scale = base.scale / 2;  // halving every score = halving the scale
  naive.score_mod = [](long double s, std::int64_t, std::int64_t, std::int64_t, std::int64_t) {
    return 0.5L * s;
  };
  const auto custom = sdpa::MakeCustom(HalveFloat{});
  // float64 scores pass through float: only float32 accuracy is expected of them.
  const NaiveResult expected = sdpa_test::NaiveAttention(naive);
  const sdpa::Options options = custom.With(Opts(base));
  const NaiveResult c64 = Run<double>(base, options), c32 = Run<float>(base, options);
  EXPECT_TRUE(sdpa_test::AllClose(c32.out, expected.out, kF32));
  EXPECT_TRUE(sdpa_test::AllClose(c32.lse, expected.lse, kF32));
  EXPECT_TRUE(sdpa_test::AllClose(c64.out, expected.out, kF32));
  EXPECT_TRUE(sdpa_test::AllClose(c64.lse, expected.lse, kF32));
  // A lambda taking double works the same way, with float64 accuracy.
  const auto halve = [](double score, std::int64_t, std::int64_t, std::int64_t, std::int64_t) {
    return 0.5 * score;
  };
  const auto custom64 = sdpa::MakeCustom(halve);
  const NaiveResult d64 = Run<double>(base, custom64.With(Opts(base)));
  EXPECT_TRUE(sdpa_test::AllClose(d64.out, expected.out, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(d64.lse, expected.lse, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(d64.out, Run<double>(builtin).out, kF64));
}

TEST_P(CustomVariant, ScoreModComesAfterSoftcapAndAlibiAndBeforeTheMask) {
  // The score_mod doubles the score: applied after softcap and ALiBi (which it then doubles too)
  // and before the additive mask (which it does not). Only that order matches NaiveAttention.
  NaiveProblem base = RandomProblem(2, 4, 2, 9, 13, 8, 8, 127);
  base.softcap = 0.5;
  base.alibi_slopes = PaperSlopes(4);
  base.mask_type = MaskType::kAdditive;
  base.mask = Array::Uniform({2, 4, 9, 13}, 128, -2.0, 2.0);
  const auto mod = [](auto s, auto, auto, auto, auto) { return s * 2; };
  NaiveProblem naive = base;
  naive.score_mod = mod;
  const auto custom = sdpa::MakeCustom(mod);
  const NaiveResult expected = sdpa_test::NaiveAttention(naive);
  const sdpa::Options options = custom.With(Opts(base));
  const NaiveResult r64 = Run<double>(base, options), r32 = Run<float>(base, options);
  EXPECT_TRUE(sdpa_test::AllClose(r64.out, expected.out, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(r64.lse, expected.lse, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(r32.out, expected.out, kF32For(12)));
  EXPECT_TRUE(sdpa_test::AllClose(r32.lse, expected.lse, kF32For(12)));
}

TEST_P(CustomVariant, FunctionsSeeTheSequenceHeadAndPositionsWithinIt) {
  // With varlen, b is the sequence and i, j positions within it; mask_mod removes what a
  // mistaken index would keep, score_mod adds a bias that depends on every argument.
  NaiveProblem base = RandomProblem(1, 4, 2, 12, 15, 8, 8, 129);
  base.cu_seqlens_q = {0, 3, 3, 8, 9, 12};
  base.cu_seqlens_k = {0, 4, 6, 6, 11, 15};
  base.sinks = {0.2, -kInf, 1.0, -1.0};
  base.dropout_p = 0.25;
  base.seed = 2024;
  const auto score_mod = [](auto s, auto b, auto h, auto i, auto j) {
    return s + 0.25 * static_cast<double>(b) - 0.125 * static_cast<double>(h) +
           0.0625 * static_cast<double>(i - j);
  };
  const auto mask_mod = [](auto b, auto h, auto i, auto j) { return (b + h + i + j) % 3 != 0; };
  NaiveProblem naive = base;
  naive.score_mod = score_mod;
  naive.mask_mod = mask_mod;
  const auto custom = sdpa::MakeCustom(score_mod, mask_mod);
  const NaiveResult expected = sdpa_test::NaiveAttention(naive);
  const sdpa::Options options = custom.With(Opts(base));
  const NaiveResult r64 = Run<double>(base, options), r32 = Run<float>(base, options);
  EXPECT_TRUE(sdpa_test::AllClose(r64.out, expected.out, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(r64.lse, expected.lse, kF64));
  EXPECT_TRUE(sdpa_test::AllClose(r32.out, expected.out, kF32For(6)));
  EXPECT_TRUE(sdpa_test::AllClose(r32.lse, expected.lse, kF32For(6)));
  // The one-shot CustomAttention gives the same out as Forward with With(options).
  sdpa_test::Buffer<double> q(base.query), k(base.key), v(base.value);
  const sdpa::Tensor once =
      sdpa::CustomAttention(q.view(), k.view(), v.view(), score_mod, mask_mod, Opts(base));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(once.view()), r64.out));
}

// ---- Dual numbers

// Central differences of f at x in long double (step 1e-6: truncation ~1e-12 relative).
template <typename F>
long double FiniteDifference(const F& f, long double x) {
  constexpr long double kStep = 1e-6L;
  return (f(x + kStep) - f(x - kStep)) / (2 * kStep);
}

TEST(VariantDual, DerivativesMatchFiniteDifferences) {
  using std::abs;
  using std::exp;
  using std::log;
  using std::sqrt;
  using std::tanh;
  // Each function mixes Duals with ints and doubles; evaluated on Dual{x, 1}, grad = f'(x).
  const auto f1 = [](auto s) { return 3 * tanh(s / 2.5) + 1; };
  const auto f2 = [](auto s) { return exp(s * 0.5) - 2 * s; };
  const auto f3 = [](auto s) { return log(s * s + 1) / (s - 7); };
  const auto f4 = [](auto s) { return sqrt(abs(s) + 2) * (1 - s); };
  const auto f5 = [](auto s) { return 2 / (1 + exp(-s)) - s / 4; };
  const auto f6 = [](auto s) { return -abs(s - 0.5) + tanh(s) * tanh(s) * 3.0; };
  const auto check = [](const auto& f, const char* name) {
    for (double x : {-2.3, -0.7, 0.3, 1.1, 4.2}) {
      const long double fd = FiniteDifference(f, static_cast<long double>(x));
      const sdpa::Dual<double> d = f(sdpa::Dual<double>{x, 1.0});
      EXPECT_NEAR(d.value, static_cast<double>(f(static_cast<long double>(x))), 1e-14) << name;
      EXPECT_NEAR(d.grad, static_cast<double>(fd), 1e-8 * (1 + std::fabs(d.grad)))
          << name << " at " << x;
      const sdpa::Dual<float> g = f(sdpa::Dual<float>{static_cast<float>(x), 1.0f});
      EXPECT_NEAR(g.grad, static_cast<double>(fd), 1e-5 * (1 + std::fabs(d.grad)))
          << name << " (float) at " << x;
      // The seed's grad scales the derivative (chain rule through an inner function).
      const sdpa::Dual<double> scaled = f(sdpa::Dual<double>{x, -2.0});
      EXPECT_NEAR(scaled.grad, -2 * d.grad, 1e-14 * (1 + std::fabs(d.grad))) << name;
    }
  };
  check(f1, "3 tanh(s / 2.5) + 1");
  check(f2, "exp(s / 2) - 2 s");
  check(f3, "log(s^2 + 1) / (s - 7)");
  check(f4, "sqrt(|s| + 2) (1 - s)");
  check(f5, "2 / (1 + exp(-s)) - s / 4");
  check(f6, "-|s - 0.5| + 3 tanh(s)^2");
  // Positions are plain integers: mixed arithmetic with them has derivative 0 in them.
  const sdpa::Dual<double> s{1.5, 1.0};
  const std::int64_t i = 7, j = 3;
  const sdpa::Dual<double> biased = s - 0.25 * static_cast<double>(i - j) + (i * j);
  EXPECT_EQ(biased.value, 1.5 - 1.0 + 21.0);
  EXPECT_EQ(biased.grad, 1.0);
  const sdpa::Dual<double> product = s * i - j / s;
  EXPECT_DOUBLE_EQ(product.value, 1.5 * 7 - 3 / 1.5);
  EXPECT_DOUBLE_EQ(product.grad, 7 + 3 / (1.5 * 1.5));
}

std::string BackendParamName(const ::testing::TestParamInfo<Backend>& info) {
  return sdpa::BackendName(info.param);
}

INSTANTIATE_TEST_SUITE_P(Backends, VariantCase,
                         ::testing::Combine(::testing::ValuesIn(Cases()),
                                            ::testing::Values(DType::kFloat32, DType::kFloat64),
                                            ::testing::Values(Memory::kContiguous,
                                                              Memory::kStrided),
                                            ::testing::Values(Backend::kReference, Backend::kCpu)),
                         CaseParamName);
INSTANTIATE_TEST_SUITE_P(Backends, VariantSemantics,
                         ::testing::Values(Backend::kReference, Backend::kCpu), BackendParamName);
INSTANTIATE_TEST_SUITE_P(Backends, CustomVariant,
                         ::testing::Values(Backend::kReference, Backend::kCpu), BackendParamName);

}  // namespace

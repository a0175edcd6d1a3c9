// A table of attention problems, each run in float32 and float64, with contiguous and with
// strided operands, and compared (out and lse) with the independent NaiveAttention.
//
// Backends under test are listed in INSTANTIATE_TEST_SUITE_P at the bottom: every backend must
// pass every case.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
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
using sdpa::DType;
using sdpa_test::Array;
using sdpa_test::MaskType;
using sdpa_test::Tolerance;

struct MaskSpec {
  MaskType type = MaskType::kNone;
  std::vector<std::int64_t> shape;  // as passed: right-aligned against [B, H, Lq, Lkv]
  double keep = 0.75;               // probability that a position is attended
};

// One problem. Tolerances: the inputs are exactly representable in the tested type, so the error
// is that of the backend's arithmetic. float32: a few ulps of float32 on values of order 1 (a
// float64-accumulating backend only rounds the result, 6e-8). float64: a few hundred ulps.
struct Case {
  std::string name;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  Causal causal = Causal::kNone;
  MaskSpec mask;
  std::optional<double> scale;
  // Entries of Q and K are uniform in [qk_lo, qk_hi), rounded to integers when `integers` (then
  // every logit is exact in float32 too, so large logits keep tight tolerances).
  double qk_lo = -1.0, qk_hi = 1.0;
  bool integers = false;
  Tolerance f32{2e-6, 2e-6};
  Tolerance f64{1e-13, 1e-13};

  Case WithCausal(Causal c) const {
    Case r = *this;
    r.causal = c;
    return r;
  }
  Case WithMask(MaskType type, std::vector<std::int64_t> shape, double keep = 0.75) const {
    Case r = *this;
    r.mask = {type, std::move(shape), keep};
    return r;
  }
  Case WithScale(double s) const {
    Case r = *this;
    r.scale = s;
    return r;
  }
  Case WithIntegerQK(double lo, double hi) const {
    Case r = *this;
    r.qk_lo = lo;
    r.qk_hi = hi;
    r.integers = true;
    return r;
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
  return {
      //    name                    B  H  Hkv Lq   Lkv  D   Dv
      Sizes("one_by_one", /*     */ 1, 1, 1, 1, 1, 1, 1),
      Sizes("seed_sized", /*     */ 1, 1, 1, 2, 2, 2, 2),
      Sizes("odd_sizes", /*      */ 2, 3, 3, 3, 17, 5, 7),
      Sizes("v_dim_larger", /*   */ 1, 2, 2, 5, 9, 3, 11),
      Sizes("v_dim_smaller", /*  */ 1, 2, 2, 5, 9, 16, 1),
      Sizes("tile_plus_one", /*  */ 1, 1, 1, 65, 129, 33, 17),
      Sizes("tile_minus_one", /* */ 1, 1, 1, 63, 127, 64, 64),
      Sizes("gqa", /*            */ 2, 6, 2, 7, 11, 8, 8),
      Sizes("mqa", /*            */ 2, 4, 1, 7, 11, 8, 8),
      Sizes("top_left_square", /**/ 2, 2, 2, 9, 9, 8, 8).WithCausal(Causal::kTopLeft),
      Sizes("top_left_short_q", 1, 2, 2, 5, 12, 8, 4).WithCausal(Causal::kTopLeft),
      Sizes("top_left_long_q", 1, 2, 2, 12, 5, 8, 4).WithCausal(Causal::kTopLeft),
      Sizes("bottom_right_short_q", 1, 2, 2, 5, 12, 8, 4).WithCausal(Causal::kBottomRight),
      Sizes("bottom_right_long_q", 1, 2, 2, 12, 5, 8, 4).WithCausal(Causal::kBottomRight),
      Sizes("bottom_right_gqa", 2, 4, 2, 3, 17, 8, 8).WithCausal(Causal::kBottomRight),
      Sizes("bool_mask_full", 2, 3, 3, 6, 10, 8, 8).WithMask(kBool, {2, 3, 6, 10}),
      Sizes("bool_mask_key_padding", 2, 3, 3, 6, 10, 8, 8).WithMask(kBool, {2, 1, 1, 10}),
      Sizes("bool_mask_per_head", 2, 4, 2, 6, 10, 8, 8).WithMask(kBool, {1, 4, 6, 10}),
      Sizes("bool_mask_rank3", 2, 3, 3, 6, 10, 8, 8).WithMask(kBool, {3, 1, 10}),
      Sizes("bool_mask_rank2", 2, 3, 3, 6, 10, 8, 8).WithMask(kBool, {6, 10}),
      Sizes("bool_mask_rank1", 2, 3, 3, 6, 10, 8, 8).WithMask(kBool, {10}),
      Sizes("bool_mask_sparse", 2, 2, 2, 9, 4, 8, 8).WithMask(kBool, {2, 2, 9, 4}, 0.15),
      Sizes("additive_mask_full", 2, 3, 3, 6, 10, 8, 8).WithMask(kAdd, {2, 3, 6, 10}),
      Sizes("additive_mask_finite", 2, 3, 3, 6, 10, 8, 8).WithMask(kAdd, {2, 3, 6, 10}, 1.0),
      Sizes("additive_mask_per_row", 2, 3, 3, 6, 10, 8, 8).WithMask(kAdd, {2, 1, 6, 1}, 1.0),
      Sizes("additive_mask_rank2", 2, 3, 3, 6, 10, 8, 8).WithMask(kAdd, {6, 10}),
      Sizes("additive_mask_sparse", 1, 2, 1, 9, 4, 8, 8).WithMask(kAdd, {1, 2, 9, 4}, 0.15),
      Sizes("top_left_and_bool_mask", 2, 2, 1, 7, 9, 8, 8)
          .WithCausal(Causal::kTopLeft)
          .WithMask(kBool, {2, 1, 7, 9}, 0.6),
      Sizes("bottom_right_and_additive_mask", 2, 2, 2, 9, 7, 8, 8)
          .WithCausal(Causal::kBottomRight)
          .WithMask(kAdd, {9, 7}, 0.6),
      Sizes("explicit_scale", 1, 2, 2, 5, 7, 8, 8).WithScale(0.3),
      Sizes("zero_scale", 1, 2, 2, 5, 7, 8, 8).WithScale(0.0),
      Sizes("negative_scale", 1, 2, 2, 5, 7, 8, 8).WithScale(-0.7),
      Sizes("empty_q", /*        */ 2, 2, 1, 0, 7, 8, 8),
      Sizes("empty_kv", /*       */ 2, 2, 1, 5, 0, 8, 8),
      Sizes("empty_kv_causal", 2, 2, 1, 5, 0, 8, 8).WithCausal(Causal::kBottomRight),
      Sizes("empty_batch", /*    */ 0, 2, 1, 5, 7, 8, 8),
      Sizes("empty_heads", /*    */ 2, 0, 1, 5, 7, 8, 8),
      Sizes("head_dim_zero", /*  */ 1, 2, 2, 3, 5, 0, 4),
      Sizes("v_dim_zero", /*     */ 1, 2, 2, 3, 5, 4, 0),
      // Logits around +8e3, -8e3 and spread over [-1e4, 1e4] (scale 1/4, integer entries).
      Sizes("large_positive_logits", 1, 2, 2, 6, 9, 16, 8).WithIntegerQK(40, 51),
      Sizes("large_negative_logits", 1, 2, 2, 6, 9, 16, 8).WithIntegerQK(-51, -40),
      Sizes("large_mixed_logits", 1, 2, 2, 6, 9, 16, 8).WithIntegerQK(-50, 51),
  };
}

std::uint64_t SeedOf(const std::string& name) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

// The case's operands; float32 cases hold float32-representable values.
sdpa_test::NaiveProblem MakeProblem(const Case& c, DType dtype) {
  const std::uint64_t seed = SeedOf(c.name);
  sdpa_test::NaiveProblem p;
  p.query = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, seed, c.qk_lo, c.qk_hi);
  p.key = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, seed + 1, c.qk_lo, c.qk_hi);
  if (c.integers) {
    for (double& x : p.query.values) x = std::floor(x);
    for (double& x : p.key.values) x = std::floor(x);
  }
  p.value = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.v_dim}, seed + 2);
  p.scale = c.scale ? *c.scale : sdpa_test::DefaultScale(c.head_dim);
  p.causal = c.causal;
  p.mask_type = c.mask.type;
  if (c.mask.type != MaskType::kNone) {
    p.mask = sdpa_test::RandomMask(c.mask.type, c.mask.shape, c.mask.keep, seed + 3);
  }
  return dtype == DType::kFloat32 ? sdpa_test::RoundedToFloat(p) : p;
}

// Contiguous operands, or every operand in an unusual layout (sdpa_test::LayoutsFor).
using Memory = sdpa_test::Storage;

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

using Param = std::tuple<Case, DType, Memory, Backend>;

class CaseTest : public ::testing::TestWithParam<Param> {};

TEST_P(CaseTest, MatchesNaiveAttention) {
  const auto& [c, dtype, memory, backend] = GetParam();
  const sdpa_test::NaiveProblem p = MakeProblem(c, dtype);
  sdpa::Options options;
  options.scale = c.scale;
  options.causal = c.causal;
  options.backend = backend;
  const sdpa_test::Layouts layouts = sdpa_test::LayoutsFor(memory, c.mask.shape.size());

  const sdpa_test::NaiveResult expected = sdpa_test::NaiveAttention(p);
  const sdpa_test::NaiveResult got = dtype == DType::kFloat32
                                         ? sdpa_test::RunForward<float>(p, options, layouts)
                                         : sdpa_test::RunForward<double>(p, options, layouts);
  const Tolerance tol = dtype == DType::kFloat32 ? c.f32 : c.f64;
  EXPECT_TRUE(sdpa_test::AllClose(got.out, expected.out, tol)) << "out";
  EXPECT_TRUE(sdpa_test::AllClose(got.lse, expected.lse, tol)) << "lse";
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  const auto& [c, dtype, memory, backend] = info.param;
  return sdpa_test::CaseTestName(c.name, dtype, memory, backend);
}

INSTANTIATE_TEST_SUITE_P(Backends, CaseTest,
                         ::testing::Combine(::testing::ValuesIn(Cases()),
                                            ::testing::Values(DType::kFloat32, DType::kFloat64),
                                            ::testing::Values(Memory::kContiguous,
                                                              Memory::kStrided),
                                            ::testing::Values(Backend::kReference, Backend::kCpu)),
                         ParamName);

}  // namespace

// bfloat16 and float16 storage (issue 13): the conversions (round to nearest even, checked
// against an independent nearest-value search over every 16-bit value), and attention forward and
// backward on 16-bit operands against the float64 reference on the same (rounded) inputs, with the
// accuracy bounds docs/semantics.md §13.9 states.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/half_cases.h"
#include "testing/tensors.h"

namespace {

using sdpa::bfloat16;
using sdpa::DType;
using sdpa::float16;
using sdpa_test::Array;
using sdpa_test::Buffer;

constexpr double kInf = std::numeric_limits<double>::infinity();

float FloatOfBits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// ---- Conversions ------------------------------------------------------------------------------

template <typename H>
H FromBits(std::uint16_t bits) {
  return H{bits};
}
template <typename H>
H Round(float x) {
  if constexpr (std::is_same_v<H, bfloat16>) {
    return sdpa::ToBFloat16(x);
  } else {
    return sdpa::ToFloat16(x);
  }
}

// The oracle: every finite non-negative value of H in increasing order (bit patterns 0, 1, ...
// are increasing for non-negative values), plus the value one step past the largest, standing for
// infinity (a float beyond the halfway point to it rounds to inf, as IEEE rounding does).
template <typename H>
struct Ladder {
  std::vector<double> value;
  std::vector<std::uint16_t> bits;
  Ladder() {
    for (std::uint32_t b = 0; b < 0x8000u; ++b) {
      const float x = sdpa::ToFloat(FromBits<H>(static_cast<std::uint16_t>(b)));
      if (!std::isfinite(x)) break;
      value.push_back(x);
      bits.push_back(static_cast<std::uint16_t>(b));
    }
    const double step = value.back() - value[value.size() - 2];
    value.push_back(value.back() + step);
    bits.push_back(std::is_same_v<H, bfloat16> ? 0x7F80u : 0x7C00u);  // +inf
  }
  // The bits of the value nearest |x|, ties to the even bit pattern.
  std::uint16_t Nearest(double magnitude) const {
    const auto above = std::lower_bound(value.begin(), value.end(), magnitude);
    if (above == value.end()) return bits.back();
    const auto at = static_cast<std::size_t>(above - value.begin());
    if (*above == magnitude || at == 0) return bits[at];
    const double up = *above - magnitude, down = magnitude - value[at - 1];
    if (up < down) return bits[at];
    if (down < up) return bits[at - 1];
    return (bits[at] & 1u) == 0 ? bits[at] : bits[at - 1];
  }
};

template <typename H>
void CheckConversions() {
  // Every 16-bit pattern survives the round trip (NaN stays NaN).
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const H h = FromBits<H>(static_cast<std::uint16_t>(b));
    const float x = sdpa::ToFloat(h);
    const H back = Round<H>(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(sdpa::ToFloat(back))) << b;
    } else {
      ASSERT_EQ(back.bits, h.bits) << "pattern " << b;
    }
  }
  // Random floats of every magnitude, and every halfway point between neighbours (ties), agree
  // with the nearest-value search.
  const Ladder<H> ladder;
  sdpa_test::Random random(11);
  std::vector<float> samples;
  for (int n = 0; n < 200000; ++n) {
    samples.push_back(FloatOfBits(static_cast<std::uint32_t>(random.NextBits())));
  }
  for (std::size_t i = 0; i + 1 < ladder.value.size(); ++i) {
    const double mid = 0.5 * (ladder.value[i] + ladder.value[i + 1]);
    const auto f = static_cast<float>(mid);
    if (static_cast<double>(f) == mid) samples.push_back(f);  // exact ties only
    samples.push_back(std::nextafter(f, 0.0f));
    samples.push_back(std::nextafter(f, 1e30f));
  }
  int ties = 0;
  for (const float x : samples) {
    if (std::isnan(x)) continue;
    const std::uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
    const std::uint16_t expected =
        static_cast<std::uint16_t>(sign | ladder.Nearest(std::fabs(static_cast<double>(x))));
    ASSERT_EQ(Round<H>(x).bits, expected) << "x = " << x;
    const auto above = std::lower_bound(ladder.value.begin(), ladder.value.end(),
                                        std::fabs(static_cast<double>(x)));
    if (above != ladder.value.begin() && above != ladder.value.end() &&
        2 * std::fabs(static_cast<double>(x)) == *above + *(above - 1)) {
      ++ties;
    }
  }
  EXPECT_GT(ties, 1000) << "the ties were not exercised";
}

TEST(HalfConversions, BFloat16RoundsToNearestEven) { CheckConversions<bfloat16>(); }
TEST(HalfConversions, Float16RoundsToNearestEven) { CheckConversions<float16>(); }

TEST(HalfConversions, SpecialValues) {
  EXPECT_EQ(sdpa::ToBFloat16(1.0f + 0x1.0p-8f).bits, sdpa::ToBFloat16(1.0f).bits);  // tie: even
  EXPECT_EQ(sdpa::ToBFloat16(1.0f + 3 * 0x1.0p-8f).bits, 0x3F82u);  // tie: up to the even one
  EXPECT_EQ(sdpa::ToFloat16(65519.0f).bits, 0x7BFFu);               // 65504, the largest
  EXPECT_EQ(sdpa::ToFloat16(65520.0f).bits, 0x7C00u);               // halfway: inf
  EXPECT_EQ(sdpa::ToFloat16(-1e9f).bits, 0xFC00u);
  EXPECT_EQ(sdpa::ToFloat16(0x1.0p-24f).bits, 0x0001u);  // smallest subnormal
  EXPECT_EQ(sdpa::ToFloat16(0x1.0p-25f).bits, 0x0000u);  // tie with 0: even
  EXPECT_EQ(sdpa::ToFloat16(0x1.8p-25f).bits, 0x0001u);
  EXPECT_EQ(sdpa::ToBFloat16(std::numeric_limits<float>::infinity()).bits, 0x7F80u);
  EXPECT_TRUE(std::isnan(sdpa::ToFloat(sdpa::ToBFloat16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(sdpa::ToFloat(sdpa::ToFloat16(std::nanf("")))));
  EXPECT_STREQ(sdpa::DTypeName(DType::kBFloat16), "bfloat16");
  EXPECT_STREQ(sdpa::DTypeName(DType::kFloat16), "float16");
  EXPECT_EQ(sdpa::DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(sdpa::DTypeSize(DType::kFloat16), 2u);
}

// ---- Attention on 16-bit operands -----------------------------------------------------------

using sdpa_test::CheckBackward;
using sdpa_test::CheckForward;
using sdpa_test::HalfProblem;
using sdpa_test::Inputs;
using sdpa_test::kGradBound;
using sdpa_test::kMixedBound;
using sdpa_test::kOutBound;
using sdpa_test::MaxAbs;
using sdpa_test::MaxError;
using sdpa_test::Shape;

TEST(HalfForward, BFloat16MatchesTheReference) {
  CheckForward<bfloat16, bfloat16>(kOutBound<bfloat16>);
}
TEST(HalfForward, Float16MatchesTheReference) {
  CheckForward<float16, float16>(kOutBound<float16>);
}
TEST(HalfForward, Float32QueriesOnBFloat16Cache) { CheckForward<float, bfloat16>(kMixedBound); }
TEST(HalfForward, Float32QueriesOnFloat16Cache) { CheckForward<float, float16>(kMixedBound); }
TEST(HalfForward, BFloat16QueriesOnFloat32Cache) {
  CheckForward<bfloat16, float>(kOutBound<bfloat16>);
}

// Long sequences: the last 64 causal rows of L = 16384 (they see the most keys) and 64 rows
// against 16384 keys without a mask.
template <typename H>
void CheckLong() {
  const std::int64_t L = 16384, rows = 64, D = 64;
  const Array q = Inputs<H>({1, 1, L, D}, 5), k = Inputs<H>({1, 1, L, D}, 6),
              v = Inputs<H>({1, 1, L, D}, 7);
  const Buffer<H> bq(q), bk(k), bv(v);
  sdpa::Options causal;
  causal.causal = sdpa::Causal::kTopLeft;
  const sdpa::Tensor out = sdpa::Attention(bq.view(), bk.view(), bv.view(), causal);
  // The reference on the last rows only (bottom-right aligned: they are the full call's last rows).
  Array tail({1, 1, rows, D});
  std::copy(q.values.end() - rows * D, q.values.end(), tail.values.begin());
  const Buffer<H> btail(tail);
  Buffer<float> expected(Array({1, 1, rows, D}));
  sdpa::Options reference;
  reference.causal = sdpa::Causal::kBottomRight;
  reference.backend = sdpa::Backend::kReference;
  sdpa::Forward(btail.view(), bk.view(), bv.view(), expected.mutable_view(), reference);
  const Array got = sdpa_test::ReadView(out.view());
  Array got_tail({1, 1, rows, D});
  std::copy(got.values.end() - rows * D, got.values.end(), got_tail.values.begin());
  const double error = MaxError(got_tail, expected.Read()) / MaxAbs(v);
  EXPECT_LE(error, kOutBound<H>);
  std::printf("  L=16384 causal, last rows: %.3g (bound %.3g)\n", error, kOutBound<H>);
  // 64 rows against all keys.
  reference.causal = sdpa::Causal::kNone;
  sdpa::Forward(btail.view(), bk.view(), bv.view(), expected.mutable_view(), reference);
  const Array full =
      sdpa_test::ReadView(sdpa::Attention(btail.view(), bk.view(), bv.view()).view());
  const double full_error = MaxError(full, expected.Read()) / MaxAbs(v);
  EXPECT_LE(full_error, kOutBound<H>);
  std::printf("  Lkv=16384: %.3g\n", full_error);
}

TEST(HalfForward, BFloat16LongSequence) { CheckLong<bfloat16>(); }
TEST(HalfForward, Float16LongSequence) { CheckLong<float16>(); }

// Rounding of results is to nearest even, not truncation: two keys of equal score give out =
// (v0 + v1) / 2 exactly, a tie between two 16-bit values.
template <typename H>
void CheckOutputTie(double v0, double v1, double expected) {
  const Buffer<H> q(Array({1, 1, 1, 1}, 0.0)), k(Array({1, 1, 2, 1}, 0.0));
  const Buffer<H> v(Array({1, 1, 2, 1}, std::vector<double>{v0, v1}));
  for (const sdpa::Backend backend : {sdpa::Backend::kCpu, sdpa::Backend::kReference}) {
    sdpa::Options o;
    o.backend = backend;
    const Array out = sdpa_test::ReadView(sdpa::Attention(q.view(), k.view(), v.view(), o).view());
    EXPECT_EQ(out.values[0], expected) << sdpa::BackendName(backend);
  }
}
TEST(HalfForward, ResultsRoundToNearestEven) {
  // bfloat16: 1 + 3·2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
  CheckOutputTie<bfloat16>(1.0 + 0x1.0p-7, 1.0 + 0x1.0p-6, 1.0 + 0x1.0p-6);
  // float16: 1 + 3·2^-11 between 1 + 2^-10 (odd) and 1 + 2^-9 (even): up.
  CheckOutputTie<float16>(1.0 + 0x1.0p-10, 1.0 + 0x1.0p-9, 1.0 + 0x1.0p-9);
}

// P is rounded to the 16-bit type of V before P·V (docs §13.9), the row sum is not: two keys
// with scores 0 and -0.001 (with q·k scaled by 1) give P = (1, 0.9990005), the second of which
// rounds to 1 in bfloat16; V = (0, 1). Then out = 1 / (1 + 0.9990005) = 0.50025, where the
// unrounded P would give 0.49975.
TEST(HalfForward, ProbabilitiesAreRoundedBeforeTheValueProduct) {
  const Buffer<bfloat16> q(Array({1, 1, 1, 1}, 1.0));
  const Buffer<bfloat16> k(Array({1, 1, 2, 1}, std::vector<double>{0.0, 0.0}));
  const Buffer<bfloat16> v(Array({1, 1, 2, 1}, std::vector<double>{0.0, 1.0}));
  Buffer<float> bias(Array({1, 2}, std::vector<double>{0.0, -0.001}));
  Buffer<float> out(Array({1, 1, 1, 1}));
  sdpa::Options o;
  o.scale = 1.0;
  o.mask = bias.view();
  sdpa::Forward(q.view(), k.view(), v.view(), out.mutable_view(), o);
  const double p1 = std::exp(-0.001);
  EXPECT_NEAR(out.Read().values[0], 1.0 / (1.0 + p1), 2e-7);
}

TEST(HalfForward, ThreadCountDoesNotChangeTheBits) {
  const Shape s{2, 8, 2, 200, 333, 64, 64, sdpa::Causal::kTopLeft};
  const HalfProblem<bfloat16, bfloat16> p(s);
  sdpa::SetNumThreads(1);
  const auto one = p.Run<bfloat16>(sdpa::Backend::kCpu);
  for (const int threads : {2, 3}) {
    sdpa::SetNumThreads(threads);
    const auto many = p.Run<bfloat16>(sdpa::Backend::kCpu);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(many.first, one.first)) << threads;
    EXPECT_TRUE(sdpa_test::BitwiseEqual(many.second, one.second)) << threads;
  }
  sdpa::SetNumThreads(0);
}

// Masked K/V rows holding NaN never reach the result, and rows with no visible key give 0 / -inf.
template <typename H>
void CheckHiddenNaN() {
  Array k = Inputs<H>({1, 1, 40, 16}, 8), v = Inputs<H>({1, 1, 40, 16}, 9);
  Array mask({20, 40}, 1.0);
  for (std::int64_t i = 0; i < 20; ++i) {
    for (std::int64_t j = 30; j < 40; ++j) mask({i, j}) = 0;  // keys 30.. are hidden
  }
  for (std::int64_t j = 0; j < 40; ++j) mask({7, j}) = 0;  // row 7 sees nothing
  for (std::int64_t j = 30; j < 40; ++j) {
    for (std::int64_t d = 0; d < 16; ++d) {
      k({0, 0, j, d}) = std::nan("");
      v({0, 0, j, d}) = std::nan("");
    }
  }
  const Buffer<H> bq(Inputs<H>({1, 1, 20, 16}, 10)), bk(k), bv(v);
  const Buffer<bool> bmask(mask);
  for (const sdpa::Backend backend : {sdpa::Backend::kCpu, sdpa::Backend::kReference}) {
    sdpa::Options o;
    o.mask = bmask.view();
    o.backend = backend;
    const sdpa::AttentionResult r = sdpa::AttentionWithLse(bq.view(), bk.view(), bv.view(), o);
    EXPECT_EQ(r.out.dtype(), sdpa::DTypeOf<H>());
    EXPECT_EQ(r.lse.dtype(), DType::kFloat32);
    const Array out = sdpa_test::ReadView(r.out.view()), lse = sdpa_test::ReadView(r.lse.view());
    for (const double x : out.values) ASSERT_TRUE(std::isfinite(x));
    for (std::int64_t d = 0; d < 16; ++d) EXPECT_EQ(out({0, 0, 7, d}), 0.0);
    EXPECT_EQ(lse({0, 0, 7}), -kInf);
  }
}
TEST(HalfForward, HiddenNaNAndEmptyRowsBFloat16) { CheckHiddenNaN<bfloat16>(); }
TEST(HalfForward, HiddenNaNAndEmptyRowsFloat16) { CheckHiddenNaN<float16>(); }

// ---- Backward -------------------------------------------------------------------------------

TEST(HalfBackward, BFloat16MatchesTheReference) { CheckBackward<bfloat16>(); }
TEST(HalfBackward, Float16MatchesTheReference) { CheckBackward<float16>(); }

TEST(HalfBackward, ThreadCountDoesNotChangeTheBits) {
  const Shape s{1, 4, 2, 150, 260, 64, 64, sdpa::Causal::kBottomRight};
  const HalfProblem<float16, float16> p(s);
  const sdpa::AttentionResult r =
      sdpa::AttentionWithLse(p.bq.view(), p.bk.view(), p.bv.view(), p.options);
  const Buffer<float16> dout(Inputs<float16>({1, 4, 150, 64}, 13));
  const auto run = [&](int threads) {
    sdpa::SetNumThreads(threads);
    return sdpa::AttentionBackward(p.bq.view(), p.bk.view(), p.bv.view(), r.out.view(),
                                   r.lse.view(), dout.view(), p.options);
  };
  const sdpa::Gradients one = run(1);
  for (const int threads : {2, 3}) {
    const sdpa::Gradients many = run(threads);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(many.grad_query.view()),
                                        sdpa_test::ReadView(one.grad_query.view())));
    EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(many.grad_key.view()),
                                        sdpa_test::ReadView(one.grad_key.view())));
    EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(many.grad_value.view()),
                                        sdpa_test::ReadView(one.grad_value.view())));
  }
  sdpa::SetNumThreads(0);
}

}  // namespace

// The AVX512-BF16 products (cpu/bf16_kernels.h) against plain loops on the same bfloat16 values:
// layouts bit for bit, products within float32 accumulation error. Skipped, with the reason
// printed, on CPUs without AVX512-BF16.
#include "cpu/bf16_kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "testing/tensors.h"

namespace {

using sdpa::bfloat16;

class Bf16Kernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!sdpa::cpu::bf16::Available()) {
      GTEST_SKIP() << "this CPU has no AVX512-BF16 (or SDPA_BF16_DOT=0): the native bfloat16 "
                      "kernels are not used here";
    }
  }
};

std::vector<bfloat16> Random(std::size_t n, std::uint64_t seed) {
  sdpa_test::Random random(seed);
  std::vector<bfloat16> v(n);
  for (bfloat16& x : v) x = sdpa::ToBFloat16(static_cast<float>(random.Uniform(-2, 2)));
  return v;
}
double F(bfloat16 x) { return static_cast<double>(sdpa::ToFloat(x)); }
std::uint16_t Lo(std::uint32_t pair) { return static_cast<std::uint16_t>(pair & 0xFFFFu); }
std::uint16_t Hi(std::uint32_t pair) { return static_cast<std::uint16_t>(pair >> 16); }

TEST_F(Bf16Kernels, ScoresMatchPlainDotProducts) {
  for (const std::int64_t depth : {2, 64, 80, 128, 7}) {
    const std::int64_t rows = 45, rp = 64, keys = 23, ldk = depth + 3;
    const std::vector<bfloat16> q = Random(static_cast<std::size_t>(rows * depth), 1);
    const std::vector<bfloat16> k = Random(static_cast<std::size_t>(keys * ldk), 2);
    std::vector<const bfloat16*> row_ptrs;
    for (std::int64_t r = 0; r < rows; ++r) row_ptrs.push_back(q.data() + r * depth);
    const std::int64_t pairs = (depth + 1) / 2;
    std::vector<std::uint32_t> qp(static_cast<std::size_t>(rp * pairs));
    sdpa::cpu::bf16::PackQueryPairs(rows, rp, depth, 1, row_ptrs.data(), qp.data());
    // Layout: row r's pair k in panel r / 32, lane r % 32; padding 0.
    for (std::int64_t r = 0; r < rp; ++r) {
      for (std::int64_t p = 0; p < pairs; ++p) {
        const std::uint32_t w = qp[static_cast<std::size_t>(((r / 32) * pairs + p) * 32 + r % 32)];
        const std::uint16_t lo = r < rows ? q[static_cast<std::size_t>(r * depth + 2 * p)].bits : 0;
        const std::uint16_t hi = r < rows && 2 * p + 1 < depth
                                     ? q[static_cast<std::size_t>(r * depth + 2 * p + 1)].bits
                                     : 0;
        ASSERT_EQ(Lo(w), lo);
        ASSERT_EQ(Hi(w), hi);
      }
    }
    if (depth % 2) continue;  // ScorePanel reads K pairs in place: even depth only
    std::vector<float> st(static_cast<std::size_t>(keys * rp), -7.0f);
    for (std::int64_t panel = 0; panel < rp / 32; ++panel) {
      sdpa::cpu::bf16::ScorePanel(qp.data(), pairs, panel, k.data(), ldk, 3, keys, st.data(), rp);
    }
    for (std::int64_t c = 0; c < keys; ++c) {
      for (std::int64_t r = 0; r < rp; ++r) {
        const float got = st[static_cast<std::size_t>(c * rp + r)];
        if (c < 3) {
          ASSERT_EQ(got, -7.0f) << "keys before `from` are not written";
          continue;
        }
        double want = 0, magnitude = 0;
        for (std::int64_t d = 0; d < depth && r < rows; ++d) {
          const double x = F(q[static_cast<std::size_t>(r * depth + d)]) *
                           F(k[static_cast<std::size_t>(c * ldk + d)]);
          want += x;
          magnitude += std::fabs(x);
        }
        ASSERT_NEAR(got, want, 1e-6 * magnitude + 1e-30) << depth << " " << c << " " << r;
      }
    }
  }
}

TEST_F(Bf16Kernels, ProbabilityPairsRoundToNearestEven) {
  const std::int64_t rp = 32, keys = 7;
  std::vector<float> st(static_cast<std::size_t>(keys * rp));
  sdpa_test::Random random(3);
  for (float& x : st) x = static_cast<float>(random.Uniform(0, 1));
  st[5] = 1.0f + 3 * 0x1.0p-8f;  // a tie: rounds up to the even 1 + 2^-6
  std::vector<std::uint32_t> pp(static_cast<std::size_t>((keys + 1) / 2 * rp));
  sdpa::cpu::bf16::PackProbabilityPairs(st.data(), rp, keys, pp.data());
  for (std::int64_t c = 0; c < keys + 1; ++c) {
    for (std::int64_t r = 0; r < rp; ++r) {
      const std::uint32_t w = pp[static_cast<std::size_t>((c / 2) * rp + r)];
      const std::uint16_t half = c % 2 ? Hi(w) : Lo(w);
      const std::uint16_t want =
          c < keys ? sdpa::ToBFloat16(st[static_cast<std::size_t>(c * rp + r)]).bits : 0;
      ASSERT_EQ(half, want) << c << " " << r;
    }
  }
  EXPECT_EQ(Lo(pp[5]), 0x3F82u);
}

TEST_F(Bf16Kernels, ValuePairsAndTheirProductMatchPlainLoops) {
  for (const std::int64_t dv : {32, 64, 80, 128}) {
    const std::int64_t keys = 13, ldv = dv + 5, dvp = (dv + 31) / 32 * 32, rp = 32, rows = 10;
    const std::vector<bfloat16> v = Random(static_cast<std::size_t>(keys * ldv), 4);
    std::vector<std::uint32_t> vp(static_cast<std::size_t>((keys + 1) / 2 * dvp));
    sdpa::cpu::bf16::PackValuePairs(v.data(), ldv, keys, dv, dvp, vp.data());
    for (std::int64_t c = 0; c < keys + 1; ++c) {
      for (std::int64_t x = 0; x < dvp; ++x) {
        const std::uint32_t w = vp[static_cast<std::size_t>((c / 2) * dvp + x)];
        const std::uint16_t want =
            c < keys && x < dv ? v[static_cast<std::size_t>(c * ldv + x)].bits : 0;
        ASSERT_EQ(c % 2 ? Hi(w) : Lo(w), want) << dv << " " << c << " " << x;
      }
    }
    std::vector<float> st(static_cast<std::size_t>(keys * rp));
    sdpa_test::Random random(5);
    for (float& x : st) x = static_cast<float>(random.Uniform(0, 1));
    std::vector<std::uint32_t> pp(static_cast<std::size_t>((keys + 1) / 2 * rp));
    sdpa::cpu::bf16::PackProbabilityPairs(st.data(), rp, keys, pp.data());
    std::vector<float> o(static_cast<std::size_t>(rows * dvp), 0.5f),
        alpha(static_cast<std::size_t>(rp), 0.25f);
    for (std::int64_t r = 0; r < rows; r += 6) {
      sdpa::cpu::bf16::AccumulateRows(pp.data(), rp, r, std::min<std::int64_t>(6, rows - r), 1,
                                      (keys + 1) / 2, vp.data(), dvp, alpha.data(), o.data(), dvp);
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t x = 0; x < dvp; ++x) {
        double want = 0.5 * 0.25, magnitude = want;
        for (std::int64_t c = 2; c < keys && x < dv; ++c) {  // pairs from 1: keys 2..
          const double term = F(sdpa::ToBFloat16(st[static_cast<std::size_t>(c * rp + r)])) *
                              F(v[static_cast<std::size_t>(c * ldv + x)]);
          want += term;
          magnitude += std::fabs(term);
        }
        ASSERT_NEAR(o[static_cast<std::size_t>(r * dvp + x)], want, 1e-6 * magnitude)
            << r << " " << x;
      }
    }
  }
}

TEST_F(Bf16Kernels, PeakIsMeasured) {
  const double one = sdpa::cpu::bf16::MeasurePeakGflops(1, 0.1);
  std::printf("  vdpbf16ps peak: %.1f GFLOP/s on 1 thread\n", one);
  EXPECT_GT(one, 0);
}

}  // namespace

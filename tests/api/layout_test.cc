// Views: ranks 2, 3 and 4, strided slices of one packed buffer, negative and zero strides,
// outputs written through strided views. Layout never changes a result.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/harness.h"
#include "testing/naive_attention.h"
#include "testing/tensors.h"

namespace {

using sdpa::Backend;
using sdpa::Causal;
using sdpa_test::Array;
using sdpa_test::NaiveProblem;
using sdpa_test::NaiveResult;

constexpr sdpa_test::Tolerance kTol64{1e-14, 1e-14};

class Layout : public ::testing::TestWithParam<Backend> {
 public:
  sdpa::Options Opts(Causal causal = Causal::kNone) const {
    sdpa::Options options;
    options.backend = GetParam();
    options.causal = causal;
    return options;
  }
};

NaiveProblem RandomProblem(std::int64_t batch, std::int64_t heads, std::int64_t kv_heads,
                           std::int64_t q_len, std::int64_t kv_len, std::int64_t head_dim,
                           std::int64_t v_dim, std::uint64_t seed) {
  NaiveProblem p;
  p.query = Array::Uniform({batch, heads, q_len, head_dim}, seed);
  p.key = Array::Uniform({batch, kv_heads, kv_len, head_dim}, seed + 1);
  p.value = Array::Uniform({batch, kv_heads, kv_len, v_dim}, seed + 2);
  p.scale = sdpa_test::DefaultScale(head_dim);
  return p;
}

// The same problem passed as rank 2 (seq, dim), rank 3 (heads, seq, dim) and rank 4 gives the
// same bits; out has the query's rank and lse one less.
TEST_P(Layout, Ranks2And3ReadAsLeadingSizeOneDims) {
  NaiveProblem p = RandomProblem(1, 1, 1, 4, 6, 5, 3, 40);
  p.causal = Causal::kBottomRight;
  const sdpa::Options options = Opts(Causal::kBottomRight);
  const NaiveResult rank4 = sdpa_test::RunForward<double>(p, options, {}, 4);
  const NaiveResult rank3 = sdpa_test::RunForward<double>(p, options, {}, 3);
  const NaiveResult rank2 = sdpa_test::RunForward<double>(p, options, {}, 2);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(rank3.out, rank4.out));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(rank2.out, rank4.out));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(rank3.lse, rank4.lse));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(rank2.lse, rank4.lse));
  EXPECT_TRUE(sdpa_test::AllClose(rank2.out, sdpa_test::NaiveAttention(p).out, kTol64));

  // Owned results keep the query's rank.
  sdpa_test::Buffer<double> q(sdpa_test::DropLeading(p.query, 2)),
      k(sdpa_test::DropLeading(p.key, 2)), v(sdpa_test::DropLeading(p.value, 2));
  const sdpa::AttentionResult r = sdpa::AttentionWithLse(q.view(), k.view(), v.view(), options);
  EXPECT_EQ(r.out.shape(), (std::vector<std::int64_t>{4, 3}));
  EXPECT_EQ(r.lse.shape(), (std::vector<std::int64_t>{4}));
}

TEST_P(Layout, Rank3WithSeveralHeads) {
  const NaiveProblem p = RandomProblem(1, 4, 2, 3, 5, 8, 8, 41);
  const NaiveResult rank3 = sdpa_test::RunForward<float>(p, Opts(), {}, 3);
  const NaiveResult rank4 = sdpa_test::RunForward<float>(p, Opts(), {}, 4);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(rank3.out, rank4.out));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(rank3.lse, rank4.lse));
}

// Q, K and V as slices of one packed [B, L, 3, H, D] buffer (the output of a fused QKV
// projection), read without copies; out written into a [B, L, H, Dv] buffer, lse into [L, B, H].
TEST_P(Layout, PackedQkvSlicesAndStridedOutputs) {
  constexpr std::int64_t B = 2, L = 5, H = 3, D = 4;
  const Array packed = Array::Uniform({B, L, 3, H, D}, 42);
  const std::vector<std::int64_t> shape = {B, H, L, D};
  const std::vector<std::int64_t> strides = {L * 3 * H * D, D, 3 * H * D, 1};
  const double* base = packed.values.data();
  const sdpa::TensorView q(base, shape, strides), k(base + H * D, shape, strides),
      v(base + 2 * H * D, shape, strides);

  std::vector<double> out_memory(B * L * H * D, sdpa_test::kSentinel), lse_memory(L * B * H);
  const sdpa::MutableTensorView out(out_memory.data(), shape, {L * H * D, D, H * D, 1});
  const sdpa::MutableTensorView lse(lse_memory.data(), {B, H, L}, {H, 1, B * H});
  sdpa::Forward(q, k, v, out, lse, Opts(Causal::kTopLeft));

  // The same problem, copied into contiguous arrays.
  NaiveProblem p;
  p.query = Array({B, H, L, D});
  p.key = Array({B, H, L, D});
  p.value = Array({B, H, L, D});
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < H; ++h) {
      for (std::int64_t i = 0; i < L; ++i) {
        for (std::int64_t d = 0; d < D; ++d) {
          p.query({b, h, i, d}) = packed.values[packed.Flat({b, i, 0, h, d})];
          p.key({b, h, i, d}) = packed.values[packed.Flat({b, i, 1, h, d})];
          p.value({b, h, i, d}) = packed.values[packed.Flat({b, i, 2, h, d})];
        }
      }
    }
  }
  p.scale = sdpa_test::DefaultScale(D);
  p.causal = Causal::kTopLeft;
  const NaiveResult contiguous = sdpa_test::RunForward<double>(p, Opts(Causal::kTopLeft));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(out), contiguous.out));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(lse), contiguous.lse));
  EXPECT_TRUE(sdpa_test::AllClose(contiguous.out, sdpa_test::NaiveAttention(p).out, kTol64));
}

// Keys and values stored back to front (negative strides along kv_len and dim) are the same
// keys; attention without causal or mask does not depend on key order.
TEST_P(Layout, NegativeStrides) {
  NaiveProblem p = RandomProblem(2, 2, 1, 3, 7, 4, 5, 43);
  sdpa_test::Layouts reversed;
  reversed.key.reversed = {2, 3};
  reversed.value.reversed = {2};
  reversed.query.reversed = {0, 1, 2, 3};
  reversed.out.reversed = {1, 2};
  reversed.lse.reversed = {2};
  const NaiveResult got = sdpa_test::RunForward<double>(p, Opts(), reversed);
  const NaiveResult expected = sdpa_test::NaiveAttention(p);
  EXPECT_TRUE(sdpa_test::AllClose(got.out, expected.out, kTol64));
  EXPECT_TRUE(sdpa_test::AllClose(got.lse, expected.lse, kTol64));

  // With causal, row order matters: row i of a view with a negative q_len stride is its i-th
  // index (stored at the far end of memory), and the causal rule follows the view's index.
  p.causal = Causal::kTopLeft;
  sdpa_test::Layouts reversed_rows;
  reversed_rows.query.reversed = {2};
  const NaiveResult causal =
      sdpa_test::RunForward<double>(p, Opts(Causal::kTopLeft), reversed_rows);
  EXPECT_TRUE(sdpa_test::AllClose(causal.out, sdpa_test::NaiveAttention(p).out, kTol64));
}

TEST_P(Layout, NonUnitInnerStridesAndPadding) {
  NaiveProblem p = RandomProblem(2, 4, 2, 5, 6, 3, 7, 44);
  p.query = p.query.RoundedToFloat();
  p.key = p.key.RoundedToFloat();
  p.value = p.value.RoundedToFloat();
  sdpa_test::Layouts l;
  l.query.step = 3;
  l.key.step = 2;
  l.key.pad = 5;
  l.value.order = {3, 2, 1, 0};  // column-major
  l.out.step = 2;
  l.out.pad = 1;
  l.lse.step = 4;
  const NaiveResult got = sdpa_test::RunForward<float>(p, Opts(), l);
  const NaiveResult expected = sdpa_test::NaiveAttention(p);
  EXPECT_TRUE(sdpa_test::AllClose(got.out, expected.out, {2e-7, 2e-7}));
  EXPECT_TRUE(sdpa_test::AllClose(got.lse, expected.lse, {2e-7, 2e-7}));
}

// Inputs may repeat memory through zero strides (here one K and V shared by every batch).
TEST_P(Layout, ZeroStrideInputsBroadcast) {
  constexpr std::int64_t B = 3, H = 2, L = 4, D = 4;
  const Array kv = Array::Uniform({H, L, D}, 45);
  const NaiveProblem base = RandomProblem(B, H, H, L, L, D, D, 46);
  sdpa_test::Buffer<double> q(base.query);
  const sdpa::TensorView shared(kv.values.data(), {B, H, L, D}, {0, L * D, D, 1});
  sdpa::Tensor out(sdpa::DType::kFloat64, {B, H, L, D});
  sdpa::Forward(q.view(), shared, shared, out.mutable_view(), Opts());

  NaiveProblem p = base;
  p.key = sdpa_test::BroadcastTo(kv, {B, H, L, D});
  p.value = p.key;
  EXPECT_TRUE(sdpa_test::AllClose(sdpa_test::ReadView(out.view()), sdpa_test::NaiveAttention(p).out,
                                  kTol64));
}

// An output right next to an input (sharing no byte), before or after it, is fine.
TEST_P(Layout, OutputAdjacentToInputIsAccepted) {
  constexpr std::ptrdiff_t kInputAt = 6;  // q, k and v are memory[6, 12)
  for (std::ptrdiff_t out_at : {0, 12}) {
    std::vector<float> memory(18, -1.0f);
    std::fill(memory.begin() + kInputAt, memory.begin() + kInputAt + 6, 0.5f);
    const sdpa::TensorView qkv(memory.data() + kInputAt, {2, 3});
    const sdpa::MutableTensorView out(memory.data() + out_at, {2, 3});
    EXPECT_NO_THROW(sdpa::Forward(qkv, qkv, qkv, out, Opts())) << out_at;
    for (std::ptrdiff_t n = out_at; n < out_at + 6; ++n) {
      EXPECT_EQ(memory[static_cast<std::size_t>(n)], 0.5f) << n;
    }
  }
}

std::string BackendParamName(const ::testing::TestParamInfo<Backend>& info) {
  return sdpa::BackendName(info.param);
}

INSTANTIATE_TEST_SUITE_P(Backends, Layout, ::testing::Values(Backend::kReference, Backend::kCpu),
                         BackendParamName);

}  // namespace

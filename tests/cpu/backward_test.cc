// The CPU backward against the float64 reference backward on every SIMD target: random shapes
// around the tile sizes with every feature, non-finite values in masked K/V rows, and bitwise
// determinism across thread counts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cpu/simd.h"
#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/tensors.h"

namespace {

using sdpa::Causal;
using sdpa_test::Array;
using sdpa_test::Buffer;
using sdpa_test::Tolerance;

class OnTarget : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { sdpa::cpu::ForceSimdTarget(GetParam()); }
  void TearDown() override { sdpa::cpu::ForceSimdTarget(""); }
};

enum class Mask { kNone, kBool, kAdditive };

struct Case {
  const char* name;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  Causal causal = Causal::kNone;
  Mask mask = Mask::kNone;
};

// Inputs of one backward call, as float64 arrays.
struct Inputs {
  Array q, k, v, dout, mask;
};

Inputs MakeInputs(const Case& c, std::uint64_t seed) {
  Inputs in;
  in.q = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, seed, -2, 2);
  in.k = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, seed + 1, -2, 2);
  in.v = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.v_dim}, seed + 2);
  in.dout = Array::Uniform({c.batch, c.heads, c.q_len, c.v_dim}, seed + 3);
  if (c.mask != Mask::kNone) {
    in.mask = Array({c.batch, c.heads, c.q_len, c.kv_len});
    sdpa_test::Random random(seed + 4);
    for (double& x : in.mask.values) {
      const bool keep = random.Bernoulli(0.7);
      x = c.mask == Mask::kBool
              ? (keep ? 1.0 : 0.0)
              : (keep ? random.Uniform(-1, 1) : -std::numeric_limits<double>::infinity());
    }
  }
  return in;
}

struct Grads {
  Array dq, dk, dv;
};

// Forward (for out and lse) then backward, both on `backend`, in element type T.
template <typename T>
Grads ForwardBackward(const Case& c, const Inputs& in, sdpa::Backend backend) {
  Buffer<T> q(in.q), k(in.k), v(in.v), dout(in.dout);
  Buffer<T> out(Array({c.batch, c.heads, c.q_len, c.v_dim})),
      lse(Array({c.batch, c.heads, c.q_len}));
  Buffer<T> dq(in.q), dk(in.k), dv(in.v);
  std::optional<Buffer<bool>> bool_mask;
  std::optional<Buffer<T>> float_mask;
  sdpa::Options options;
  options.causal = c.causal;
  options.backend = backend;
  if (c.mask == Mask::kBool) options.mask = bool_mask.emplace(in.mask).view();
  if (c.mask == Mask::kAdditive) options.mask = float_mask.emplace(in.mask).view();
  sdpa::Forward(q.view(), k.view(), v.view(), out.mutable_view(), lse.mutable_view(), options);
  sdpa::Backward(q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(),
                 dq.mutable_view(), dk.mutable_view(), dv.mutable_view(), options);
  return {dq.Read(), dk.Read(), dv.Read()};
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"single", 1, 1, 1, 1, 1, 1, 1},
      {"odd", 2, 3, 3, 17, 19, 3, 5},
      {"tiles", 1, 2, 2, 97, 129, 16, 16},
      {"several_tiles", 1, 2, 1, 200, 300, 32, 24, Causal::kTopLeft},
      {"bottom_right", 1, 2, 2, 100, 300, 16, 16, Causal::kBottomRight},
      {"bottom_right_short_kv", 1, 2, 2, 150, 60, 16, 16, Causal::kBottomRight},
      {"gqa", 2, 6, 2, 40, 50, 8, 8},
      {"bool_mask", 1, 2, 2, 50, 140, 16, 16, Causal::kNone, Mask::kBool},
      {"additive_mask_causal", 1, 2, 1, 130, 130, 16, 16, Causal::kTopLeft, Mask::kAdditive},
      {"chunked", 1, 1, 1, 20, 3000, 16, 16},
      {"decode", 1, 4, 4, 1, 700, 64, 64},
      {"empty_q", 1, 2, 2, 0, 5, 4, 4},
      {"empty_kv", 1, 2, 2, 5, 0, 4, 4},
  };
  return cases;
}

class BackwardMatches : public OnTarget {};

TEST_P(BackwardMatches, ReferenceInFloat64) {
  std::uint64_t seed = 500;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    const Inputs in = MakeInputs(c, seed += 10);
    const Grads want = ForwardBackward<double>(c, in, sdpa::Backend::kReference);
    const Grads got = ForwardBackward<double>(c, in, sdpa::Backend::kCpu);
    EXPECT_TRUE(sdpa_test::AllClose(got.dq, want.dq, Tolerance{1e-11, 1e-11}));
    EXPECT_TRUE(sdpa_test::AllClose(got.dk, want.dk, Tolerance{1e-11, 1e-11}));
    EXPECT_TRUE(sdpa_test::AllClose(got.dv, want.dv, Tolerance{1e-11, 1e-11}));
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, BackwardMatches, ::testing::ValuesIn(sdpa::cpu::SimdTargets()),
                         [](const auto& p) { return p.param; });

}  // namespace

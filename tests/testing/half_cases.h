// The 16-bit storage test cases shared by tests/api/half_test.cc (default SIMD target) and
// tests/cpu/storage_test.cc (every target): inputs rounded to bfloat16/float16, a grid of
// shapes and options, and checks of the forward and backward against the float64 reference.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/tensors.h"

namespace sdpa_test {

using sdpa::bfloat16;
using sdpa::float16;

inline double MaxAbs(const Array& a) {
  double m = 0;
  for (const double x : a.values) m = std::max(m, std::fabs(x));
  return m;
}
// Standard-normal-like values (uniform with the same variance), rounded to H.
template <typename H>
Array Inputs(std::vector<std::int64_t> shape, std::uint64_t seed) {
  Array a = Array::Uniform(std::move(shape), seed, -std::sqrt(3.0), std::sqrt(3.0));
  for (double& x : a.values) x = sdpa_test::RoundedTo<H>(x);
  return a;
}

// max |a - b| over finite entries; infinities must agree.
inline double MaxError(const Array& a, const Array& b) {
  EXPECT_EQ(a.shape, b.shape);
  double m = 0;
  for (std::size_t i = 0; i < a.values.size(); ++i) {
    const double x = a.values[i], y = b.values[i];
    if (std::isinf(x) || std::isinf(y)) {
      EXPECT_EQ(x, y) << i;
      continue;
    }
    m = std::max(m, std::fabs(x - y));
  }
  return m;
}

// The bounds of docs/semantics.md §13.9, as fractions of max|V| (forward) or max|gradient|,
// about twice the worst measured here (the issue asked for 1e-2 and 2e-3).
template <typename H>
constexpr double kOutBound = std::is_same_v<H, bfloat16> ? 5e-3 : 1e-3;
constexpr double kMixedBound = 2e-3;  // float32 queries on 16-bit K/V
template <typename H>
constexpr double kGradBound = std::is_same_v<H, bfloat16> ? 1e-2 : 2e-3;

struct Shape {
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  sdpa::Causal causal = sdpa::Causal::kNone;
  bool mask = false, window = false, sinks = false, softcap = false;
};

inline const Shape kShapes[] = {
    {1, 1, 1, 1, 1, 8, 8},
    {1, 2, 1, 3, 17, 16, 16, sdpa::Causal::kBottomRight},
    {2, 4, 2, 37, 53, 64, 64, sdpa::Causal::kTopLeft},
    {1, 2, 2, 97, 129, 80, 48},
    {1, 8, 2, 128, 300, 128, 128, sdpa::Causal::kBottomRight},
    {1, 2, 1, 64, 200, 64, 64, sdpa::Causal::kNone, true},
    {1, 2, 2, 150, 150, 32, 32, sdpa::Causal::kTopLeft, false, true, true, true},
    {1, 4, 4, 1, 2048, 128, 128},  // decode (dot form, split keys)
    {2, 8, 2, 4, 1000, 64, 64, sdpa::Causal::kBottomRight, true, false, true},
};

inline std::string Name(const Shape& s) {
  return "B" + std::to_string(s.batch) + "H" + std::to_string(s.heads) + "Hkv" +
         std::to_string(s.kv_heads) + "Lq" + std::to_string(s.q_len) + "Lkv" +
         std::to_string(s.kv_len) + "D" + std::to_string(s.head_dim);
}

// One problem in H (query, key, value, additive mask) with the options of its shape.
template <typename Q, typename KV>
struct HalfProblem {
  explicit HalfProblem(const Shape& s)
      : shape(s),
        q(Inputs<Q>({s.batch, s.heads, s.q_len, s.head_dim}, 1)),
        k(Inputs<KV>({s.batch, s.kv_heads, s.kv_len, s.head_dim}, 2)),
        v(Inputs<KV>({s.batch, s.kv_heads, s.kv_len, s.v_dim}, 3)),
        mask(Inputs<KV>({s.q_len, s.kv_len}, 4)),
        bq(q),
        bk(k),
        bv(v),
        bmask(mask) {
    options.causal = s.causal;
    if (s.mask) options.mask = bmask.view();
    if (s.window) options.window = sdpa::Window{20, 3};
    if (s.sinks) options.sinks = std::vector<double>(static_cast<std::size_t>(s.heads), 0.75);
    if (s.softcap) options.softcap = 2.5;
  }
  // out in `OutT` and lse from `backend`.
  template <typename OutT>
  std::pair<Array, Array> Run(sdpa::Backend backend) const {
    Buffer<OutT> out(Array({shape.batch, shape.heads, shape.q_len, shape.v_dim}));
    Buffer<float> lse(Array({shape.batch, shape.heads, shape.q_len}));
    sdpa::Options o = options;
    o.backend = backend;
    sdpa::Forward(bq.view(), bk.view(), bv.view(), out.mutable_view(), lse.mutable_view(), o);
    return {out.Read(), lse.Read()};
  }

  Shape shape;
  Array q, k, v, mask;
  Buffer<Q> bq;
  Buffer<KV> bk, bv;
  Buffer<KV> bmask;
  sdpa::Options options;
};

template <typename Q, typename KV>
void CheckForward(double bound) {
  double worst = 0;
  for (const Shape& s : kShapes) {
    const HalfProblem<Q, KV> p(s);
    // The reference computes in float64 from the same rounded inputs, its out kept in float32.
    const auto [expected, expected_lse] = p.template Run<float>(sdpa::Backend::kReference);
    const auto [out, lse] = p.template Run<Q>(sdpa::Backend::kCpu);
    const double scale = MaxAbs(p.v);
    const double error = MaxError(out, expected) / scale;
    worst = std::max(worst, error);
    EXPECT_LE(error, bound) << Name(s);
    EXPECT_TRUE(sdpa_test::AllClose(lse, expected_lse, {1e-4, 1e-4})) << Name(s);
    // An out of another float type gets the same result, only rounded differently.
    const auto [wide, wide_lse] = p.template Run<float>(sdpa::Backend::kCpu);
    EXPECT_LE(MaxError(wide, expected) / scale, bound) << Name(s);
    EXPECT_TRUE(sdpa_test::BitwiseEqual(wide_lse, lse)) << Name(s);
  }
  std::printf("  worst |out - reference| / max|V| = %.3g (bound %.3g)\n", worst, bound);
}

template <typename H>
void CheckBackward() {
  double worst = 0;
  for (const Shape& s : kShapes) {
    if (s.kv_len > 1000) continue;  // the reference backward is slow; the decode shape is above
    const HalfProblem<H, H> p(s);
    const sdpa::AttentionResult r =
        sdpa::AttentionWithLse(p.bq.view(), p.bk.view(), p.bv.view(), p.options);
    const Buffer<H> dout(Inputs<H>({s.batch, s.heads, s.q_len, s.v_dim}, 12));
    sdpa::Options reference = p.options;
    reference.backend = sdpa::Backend::kReference;
    const sdpa::Gradients expected = sdpa::AttentionBackward(
        p.bq.view(), p.bk.view(), p.bv.view(), r.out.view(), r.lse.view(), dout.view(), reference);
    const sdpa::Gradients got = sdpa::AttentionBackward(
        p.bq.view(), p.bk.view(), p.bv.view(), r.out.view(), r.lse.view(), dout.view(), p.options);
    EXPECT_EQ(got.grad_query.dtype(), sdpa::DTypeOf<H>());
    const std::pair<const sdpa::Tensor*, const sdpa::Tensor*> pairs[] = {
        {&got.grad_query, &expected.grad_query},
        {&got.grad_key, &expected.grad_key},
        {&got.grad_value, &expected.grad_value}};
    for (const auto& [a, b] : pairs) {
      const Array x = sdpa_test::ReadView(a->view()), y = sdpa_test::ReadView(b->view());
      // Relative to the gradient's size; one that is ~0 (a single key) is held to 1e-2 absolute.
      const double scale = std::max(MaxAbs(y), 1e-2);
      const double error = MaxError(x, y) / scale;
      worst = std::max(worst, error);
      EXPECT_LE(error, kGradBound<H>) << Name(s);
    }
  }
  std::printf("  worst |grad - reference| / max|grad| = %.3g (bound %.3g)\n", worst, kGradBound<H>);
}
}  // namespace sdpa_test

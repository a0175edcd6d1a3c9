// Runs sdpa::Forward on a NaiveProblem: places the arrays in typed buffers of any layout and
// rank, calls the library, reads out and lse back as arrays. The harness only moves data; the
// expected values come from NaiveAttention.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/naive_attention.h"
#include "testing/tensors.h"

namespace sdpa_test {

// Memory layout of every operand of one call.
struct Layouts {
  LayoutSpec query, key, value, mask, out, lse;
};

// The value out and lse are filled with before a call: any element left unwritten shows up.
inline constexpr double kSentinel = 777.0;

// The trailing `rank` dimensions of a rank-4 array whose leading dimensions are 1.
inline Array DropLeading(const Array& a, int rank) {
  Array r = a;
  const std::size_t drop = a.shape.size() - static_cast<std::size_t>(rank);
  for (std::size_t d = 0; d < drop; ++d) EXPECT_EQ(a.shape[d], 1) << "cannot drop dimension " << d;
  r.shape.erase(r.shape.begin(), r.shape.begin() + static_cast<std::ptrdiff_t>(drop));
  return r;
}

// Runs the library with element type T on `p` (whose values should already be representable
// in T), with `options` except for the mask, which comes from `p`. Operands are passed with rank
// `rank` (2, 3 or 4; leading dimensions must be 1), out and lse are returned at rank 4 and 3.
// Checks that nothing outside the out and lse views was written.
template <typename T>
NaiveResult RunForward(const NaiveProblem& p, sdpa::Options options, const Layouts& layouts = {},
                       int rank = 4) {
  const std::int64_t B = p.query.shape[0], H = p.query.shape[1], Lq = p.query.shape[2];
  const std::int64_t Dv = p.value.shape[3];
  Buffer<T> q(DropLeading(p.query, rank), layouts.query);
  Buffer<T> k(DropLeading(p.key, rank), layouts.key);
  Buffer<T> v(DropLeading(p.value, rank), layouts.value);
  Buffer<T> out(DropLeading(Array({B, H, Lq, Dv}, kSentinel), rank), layouts.out);
  Buffer<T> lse(DropLeading(Array({B, H, Lq}, kSentinel), rank - 1), layouts.lse);
  std::optional<Buffer<bool>> bool_mask;
  std::optional<Buffer<T>> additive_mask;
  if (p.mask_type == MaskType::kBool) {
    bool_mask.emplace(p.mask, layouts.mask);
    options.mask = bool_mask->view();
  } else if (p.mask_type == MaskType::kAdditive) {
    additive_mask.emplace(p.mask, layouts.mask);
    options.mask = additive_mask->view();
  } else {
    options.mask.reset();
  }
  sdpa::Forward(q.view(), k.view(), v.view(), out.mutable_view(), lse.mutable_view(), options);
  EXPECT_TRUE(out.OutsideUntouched()) << "out was written outside its view";
  EXPECT_TRUE(lse.OutsideUntouched()) << "lse was written outside its view";
  NaiveResult r{out.Read().AsRank4(), lse.Read()};
  while (r.lse.shape.size() < 3) r.lse.shape.insert(r.lse.shape.begin(), 1);
  return r;
}

// The scale the library uses when options.scale is not set.
inline double DefaultScale(std::int64_t head_dim) {
  return head_dim == 0 ? 1.0 : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

}  // namespace sdpa_test

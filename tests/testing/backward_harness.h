// Runs sdpa::Backward on a NaiveProblem: places every operand (q, k, v, mask, out, lse,
// grad_out and the three gradients) in typed buffers of any layout and rank, calls the library,
// reads the gradients back as rank-4 arrays. Like harness.h it only moves data; expected values
// come from NaiveBackward or finite differences of NaiveAttention.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/harness.h"
#include "testing/naive_attention.h"
#include "testing/naive_backward.h"
#include "testing/tensors.h"

namespace sdpa_test {

// Memory layout of every operand of one backward call.
struct BackwardLayouts {
  LayoutSpec query, key, value, mask, out, lse, grad_out, grad_query, grad_key, grad_value;
};

// True when two buffers' whole memory (views, gaps and guards) holds the same bytes.
template <typename T>
bool SameBytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Runs the library's backward with element type T on `p` and `grad_out` ([B, H, Lq, Dv]), with
// `options` except for the mask, which comes from `p`. out and lse come from `forward` when
// given (rank 4 and 3), else from sdpa::Forward with the same options and type. Operands are
// passed with rank `rank` (2, 3 or 4; leading dimensions must be 1). The gradients start as
// kSentinel, so an element left unwritten shows up. Checks that nothing outside the gradient
// views was written and that no input changed.
template <typename T>
NaiveGradients RunBackward(const NaiveProblem& p, const Array& grad_out, sdpa::Options options,
                           const BackwardLayouts& layouts = {}, int rank = 4,
                           const NaiveResult* forward = nullptr) {
  NaiveResult computed;
  if (forward == nullptr) {
    Layouts forward_layouts;
    forward_layouts.query = layouts.query;
    forward_layouts.key = layouts.key;
    forward_layouts.value = layouts.value;
    forward_layouts.mask = layouts.mask;
    computed = RunForward<T>(p, options, forward_layouts, rank);
    forward = &computed;
  }
  Buffer<T> q(DropLeading(p.query, rank), layouts.query);
  Buffer<T> k(DropLeading(p.key, rank), layouts.key);
  Buffer<T> v(DropLeading(p.value, rank), layouts.value);
  Buffer<T> out(DropLeading(forward->out, rank), layouts.out);
  Buffer<T> lse(DropLeading(forward->lse, rank - 1), layouts.lse);
  Buffer<T> dout(DropLeading(grad_out, rank), layouts.grad_out);
  Buffer<T> dq(DropLeading(Array(p.query.shape, kSentinel), rank), layouts.grad_query);
  Buffer<T> dk(DropLeading(Array(p.key.shape, kSentinel), rank), layouts.grad_key);
  Buffer<T> dv(DropLeading(Array(p.value.shape, kSentinel), rank), layouts.grad_value);
  std::optional<Buffer<bool>> bool_mask;
  std::optional<Buffer<T>> additive_mask;
  if (p.mask_type == MaskType::kBool) {
    options.mask = bool_mask.emplace(p.mask, layouts.mask).view();
  } else if (p.mask_type == MaskType::kAdditive) {
    options.mask = additive_mask.emplace(p.mask, layouts.mask).view();
  } else {
    options.mask.reset();
  }
  const std::vector<std::vector<T>> inputs_before = {
      q.Snapshot(), k.Snapshot(), v.Snapshot(), out.Snapshot(), lse.Snapshot(), dout.Snapshot()};
  sdpa::Backward(q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(),
                 dq.mutable_view(), dk.mutable_view(), dv.mutable_view(), options);
  EXPECT_TRUE(dq.OutsideUntouched()) << "grad_query was written outside its view";
  EXPECT_TRUE(dk.OutsideUntouched()) << "grad_key was written outside its view";
  EXPECT_TRUE(dv.OutsideUntouched()) << "grad_value was written outside its view";
  const std::vector<std::vector<T>> inputs_after = {
      q.Snapshot(), k.Snapshot(), v.Snapshot(), out.Snapshot(), lse.Snapshot(), dout.Snapshot()};
  for (std::size_t n = 0; n < inputs_before.size(); ++n) {
    EXPECT_TRUE(SameBytes(inputs_before[n], inputs_after[n])) << "input " << n << " was written";
  }
  return {dq.Read().AsRank4(), dk.Read().AsRank4(), dv.Read().AsRank4()};
}

}  // namespace sdpa_test

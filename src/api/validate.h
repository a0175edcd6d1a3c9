// The one place that checks arguments. Every public entry point calls these before it allocates
// or computes; they throw sdpa::Error (sdpa::DTypeError for element types) with a message that
// names the argument, the expected and the actual value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/fail.h"
#include "core/problem.h"
#include "sdpa/error.h"
#include "sdpa/options.h"
#include "sdpa/tensor.h"

namespace sdpa::internal {

// "[2, 3, 4]"
std::string ShapeString(const Layout& layout);
std::string ShapeString(const std::vector<std::int64_t>& shape);

// Checks a layout: rank in [min_rank, max_rank], sizes >= 0, every reachable byte offset
// representable. Returns the number of elements.
std::int64_t CheckLayout(const char* name, DType dtype, const Layout& layout, int min_rank,
                         int max_rank);
// Checks a single view: rank in [min_rank, max_rank], sizes >= 0, data non-null when non-empty,
// every reachable byte offset representable. `name` is used in messages ("query", "options.mask").
void CheckView(const char* name, const void* data, DType dtype, const Layout& layout, int min_rank,
               int max_rank);

// Checks query, key, value and options; returns the problem without outputs attached.
Problem ValidateInputs(const TensorView& query, const TensorView& key, const TensorView& value,
                       const Options& options);

// What a call costs, for the work limits (options.h max_flops / max_bytes): its floating-point
// operations and the bytes the library allocates for it (returned tensors when `owned_outputs`,
// and scratch).
struct Work {
  double flops = 0, bytes = 0;
};
Work ForwardWork(const Problem& problem, bool owned_outputs);
Work BackwardWork(const Problem& problem, bool owned_outputs);
// Throws sdpa::Error saying what was asked when `work` exceeds the problem's limits.
void CheckWork(const Problem& problem, const Work& work);

// Expected output shapes for a validated problem, in the query's rank: out [.., Lq, Dv] and
// lse [.., Lq] (one rank lower).
std::vector<std::int64_t> OutShape(const Problem& problem, int query_rank);
std::vector<std::int64_t> LseShape(const Problem& problem, int query_rank);

// Checks `out` (and `lse` if non-null) against the problem and attaches them. `inputs` are the
// views outputs must not overlap.
void AttachOutputs(Problem& problem, int query_rank, const MutableTensorView& out,
                   const MutableTensorView* lse, const std::vector<TensorView>& inputs,
                   const std::vector<const char*>& input_names);

// Checks the backward's extra inputs: out, lse and grad_out (shapes of out, lse, out).
void CheckBackwardInputs(const Problem& problem, int query_rank, const TensorView& out,
                         const TensorView& lse, const TensorView& grad_out);

// Checks the backward's extra arguments against a problem from ValidateInputs and attaches them:
// out, lse and grad_out are inputs here (shapes of out, lse, out), the gradients outputs (shapes
// of query, key, value; grad_sinks [heads] when non-null) that must not overlap any input or each
// other.
BackwardProblem ValidateBackward(Problem problem, int query_rank,
                                 const std::vector<TensorView>& forward_inputs,
                                 const TensorView& out, const TensorView& lse,
                                 const TensorView& grad_out, const MutableTensorView& grad_query,
                                 const MutableTensorView& grad_key,
                                 const MutableTensorView& grad_value,
                                 const MutableTensorView* grad_sinks = nullptr);

// True when two distinct indices of the layout can address the same element.
bool SelfOverlapping(const Layout& layout);

// True when two views share at least one byte of memory (conservative: compares byte ranges).
bool Overlaps(const void* a_data, DType a_dtype, const Layout& a, const void* b_data, DType b_dtype,
              const Layout& b);

}  // namespace sdpa::internal

// Merging partial attention results: attention over disjoint key sets, combined exactly.
//
// Forward with lse over keys B_1, .., B_S separately gives partials (out_s, lse_s); MergePartials
// combines them into what one Forward over all the keys gives (split-KV, cascade / shared-prefix
// attention, ring attention):
//   M = max_s lse_s,   out = Σ_s exp(lse_s - M) · out_s / Σ_s exp(lse_s - M),
//   lse = M + log Σ_s exp(lse_s - M)          (natural log, as everywhere in sdpa)
// An empty partial (no visible key) is lse = -inf, whatever its out holds; a row whose partials
// are all empty gives out = 0 and lse = -inf, as Forward does for a row with no visible key.
// lse = +inf or NaN in a partial gives NaN in that row.
//
// Shapes (names used in error messages):
//   outs[s]  [batch, heads, q_len, v_dim]   every partial the same shape and float dtype
//   lses[s]  [batch, heads, q_len]          float32 (float64 when outs are float64)
//   out      [batch, heads, q_len, v_dim]   the dtype of outs
//   lse      [batch, heads, q_len]          the dtype of lses (optional)
// Rank-2 `(q_len, v_dim)` and rank-3 `(heads, q_len, v_dim)` views are accepted (lses one rank
// lower), all of one rank. Any strides. Accumulation is in float32 (float64 for float64
// partials), in the order of `outs`, so results are bitwise reproducible. `out` (and `lse`) may be
// exactly one of the partials (same data, dtype and layout) to merge in place; otherwise they must
// not overlap any input or each other. Throws sdpa::Error naming the argument before writing.
#pragma once

#include <vector>

#include "sdpa/tensor.h"

namespace sdpa {

void MergePartials(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
                   const MutableTensorView& out, const MutableTensorView* lse = nullptr);

struct MergedPartials {
  Tensor out;  // [.., q_len, v_dim], the dtype of outs
  Tensor lse;  // [.., q_len], the dtype of lses
};
// Same, returning owned results. At least one partial is needed (its shape is the result's).
MergedPartials MergePartials(const std::vector<TensorView>& outs,
                             const std::vector<TensorView>& lses);

}  // namespace sdpa

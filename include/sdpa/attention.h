// Scaled dot-product attention: out = softmax(scale · Q Kᵀ + mask) V, row by row.
//
// Shapes (names used in every error message):
//   query [batch, heads,    q_len,  head_dim]
//   key   [batch, kv_heads, kv_len, head_dim]
//   value [batch, kv_heads, kv_len, v_dim]
//   out   [batch, heads,    q_len,  v_dim]      same float type as query
//   lse   [batch, heads,    q_len]              log-sum-exp of each row's scaled, masked scores
// Rank-2 `(seq, dim)` and rank-3 `(heads, seq, dim)` views are accepted (query, key, value and out
// of one rank; lse one rank lower). GQA/MQA: heads % kv_heads == 0 and query head h reads kv head
// h / (heads / kv_heads); K and V are never copied.
//
// Rules (docs/semantics.md states them with formulas):
//   * A row with no visible key (masked out, or causal with no key in range, or kv_len == 0) gives
//     out = 0 and lse = -inf.
//   * Masked positions are never read into the result: NaN or Inf in masked K/V rows cannot leak.
//   * Softmax is max-subtracted: logits of any finite magnitude give finite results.
#pragma once

#include <string>

#include "sdpa/options.h"
#include "sdpa/tensor.h"

namespace sdpa {

// Writes the attention output into `out` (caller-owned). Throws sdpa::Error on invalid input,
// before touching `out`. `out` must not overlap any input.
void Forward(const TensorView& query, const TensorView& key, const TensorView& value,
             const MutableTensorView& out, const Options& options = {});
// Same, also writing the log-sum-exp of each query row into `lse`.
void Forward(const TensorView& query, const TensorView& key, const TensorView& value,
             const MutableTensorView& out, const MutableTensorView& lse,
             const Options& options = {});

// Convenience overloads returning owned tensors of the query's rank and dtype.
Tensor Attention(const TensorView& query, const TensorView& key, const TensorView& value,
                 const Options& options = {});
struct AttentionResult {
  Tensor out;
  Tensor lse;
};
AttentionResult AttentionWithLse(const TensorView& query, const TensorView& key,
                                 const TensorView& value, const Options& options = {});

// Gradients of Forward (FlashAttention-2's backward): given the forward's inputs and options,
// its `out` and `lse` (from Forward with lse), and grad_out = ∂L/∂out, writes
//   grad_query ∂L/∂query [.., heads, q_len, head_dim], grad_key ∂L/∂key [.., kv_heads, kv_len,
//   head_dim], grad_value ∂L/∂value [.., kv_heads, kv_len, v_dim]
// (caller-owned, the query's dtype and rank). With GQA, grad_key and grad_value sum over the
// query heads of each group. Rows with no visible key contribute nothing (their gradients are 0).
// Results are bitwise identical for any thread count. Throws sdpa::Error on invalid input before
// touching the outputs, which must not overlap any input or each other.
void Backward(const TensorView& query, const TensorView& key, const TensorView& value,
              const TensorView& out, const TensorView& lse, const TensorView& grad_out,
              const MutableTensorView& grad_query, const MutableTensorView& grad_key,
              const MutableTensorView& grad_value, const Options& options = {});
// Same, also writing grad_sinks ∂L/∂options.sinks [heads] (the query's dtype; summed over batch
// and rows). options.sinks must be set.
void Backward(const TensorView& query, const TensorView& key, const TensorView& value,
              const TensorView& out, const TensorView& lse, const TensorView& grad_out,
              const MutableTensorView& grad_query, const MutableTensorView& grad_key,
              const MutableTensorView& grad_value, const MutableTensorView& grad_sinks,
              const Options& options);
struct Gradients {
  Tensor grad_query, grad_key, grad_value;
  Tensor grad_sinks;  // [heads] when options.sinks is set, else empty (shape [0])
};
Gradients AttentionBackward(const TensorView& query, const TensorView& key, const TensorView& value,
                            const TensorView& out, const TensorView& lse,
                            const TensorView& grad_out, const Options& options = {});

// What a call with these arguments would do, and why: the backend, the kernel path, its tile
// sizes, the SIMD target and the thread split. Validates like Forward (throws sdpa::Error).
// Setting the environment variable SDPA_VERBOSE=1 prints this to stderr on every call.
struct Plan {
  Backend backend = Backend::kReference;
  std::string path;         // e.g. "reference", "tiled", "split_kv"
  std::string simd_target;  // e.g. "AVX2", "AVX3", "scalar"; empty for the reference
  long long q_tile = 0;     // query rows per tile
  long long kv_tile = 0;    // keys per tile
  long long kv_splits = 1;  // K/V chunks merged by LSE (1 = no split)
  int threads = 1;
  std::string reason;  // one sentence per decision
  std::string ToString() const;
};
Plan Explain(const TensorView& query, const TensorView& key, const TensorView& value,
             const Options& options = {});

// Threads used by the CPU engine. 0 (the default) means all hardware threads (or the
// SDPA_NUM_THREADS environment variable when set). Results do not depend on the thread count.
// SetNumThreads throws sdpa::Error for values outside [0, kMaxThreads]. The threads are the
// library's own pool (started on first use, kept across calls, started afresh in a child
// process after fork()); a call that cannot start the threads it needs throws sdpa::Error.
inline constexpr int kMaxThreads = 1024;
void SetNumThreads(int num_threads);
int GetNumThreads();

}  // namespace sdpa

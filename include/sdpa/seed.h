// The two functions of the task that started the project (shared/seed), in C++.
// They keep the seed's snake_case names so that code ported from it reads the same.
#pragma once

#include <vector>

#include "sdpa/tensor.h"

namespace sdpa {

// A row-major matrix as nested rows, like the seed's numpy arrays. Rows must all have the same
// length (else sdpa::Error).
using Matrix = std::vector<std::vector<double>>;

// softmax(Q Kᵀ / sqrt(d_k)) V for Q (seq_len, d_k), K (seq_len_kv, d_k), V (seq_len_kv, d_v).
// Returns (seq_len, d_v). Computed by the library's attention engine in float64.
Matrix self_attention(const Matrix& Q, const Matrix& K, const Matrix& V);
// The same on rank-2 float32/float64 views; returns a tensor of the query's dtype.
Tensor self_attention(const TensorView& Q, const TensorView& K, const TensorView& V);

// Q = X W_q, K = X W_k, V = X W_v for X (seq_len, d_model) and W_* (d_model, d_*).
struct QKV {
  Matrix Q, K, V;
};
QKV compute_qkv(const Matrix& X, const Matrix& W_q, const Matrix& W_k, const Matrix& W_v);
// The same on rank-2 float32/float64 views (one dtype for all four); float32 accumulates in
// float64.
struct QKVTensors {
  Tensor Q, K, V;
};
QKVTensors compute_qkv(const TensorView& X, const TensorView& W_q, const TensorView& W_k,
                       const TensorView& W_v);

}  // namespace sdpa

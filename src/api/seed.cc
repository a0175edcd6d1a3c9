// The seed's self_attention and compute_qkv on top of the attention API.
#include "sdpa/seed.h"

#include <cstdint>
#include <vector>

#include "api/validate.h"
#include "sdpa/attention.h"

namespace sdpa {
namespace {

// A Matrix copied into a contiguous row-major float64 tensor; rows must have equal length.
// A matrix with no rows has `empty_cols` columns.
Tensor ToTensor(const char* name, const Matrix& m, std::int64_t empty_cols) {
  const std::int64_t rows = static_cast<std::int64_t>(m.size());
  const std::int64_t cols = m.empty() ? empty_cols : static_cast<std::int64_t>(m[0].size());
  for (std::size_t r = 0; r < m.size(); ++r) {
    if (static_cast<std::int64_t>(m[r].size()) != cols) {
      internal::Fail(name, "[", r, "] has ", m[r].size(), " columns but ", name, "[0] has ", cols);
    }
  }
  Tensor t(DType::kFloat64, {rows, cols});
  double* data = t.data<double>();
  for (const auto& row : m) data = std::copy(row.begin(), row.end(), data);
  return t;
}

Matrix ToMatrix(const Tensor& t) {
  Matrix m(static_cast<std::size_t>(t.dim(0)));
  const double* data = t.data<double>();
  for (auto& row : m) {
    row.assign(data, data + t.dim(1));
    data += t.dim(1);
  }
  return m;
}

void CheckRank2(const char* name, const TensorView& view, const char* dims) {
  if (view.rank() != 2) {
    internal::Fail(name, " has rank ", view.rank(), " but must have rank 2 ", dims);
  }
}

// out[n, c] = sum_r x[n, r] w[r, c], accumulated in float64.
template <typename T>
Tensor MatMul(const TensorView& x, const TensorView& w) {
  const std::int64_t n = x.dim(0), r = x.dim(1), c = w.dim(1);
  Tensor out(DTypeOf<T>(), {n, c});
  const T* xs = static_cast<const T*>(x.data);
  const T* ws = static_cast<const T*>(w.data);
  T* os = out.data<T>();
  std::vector<double> acc(static_cast<std::size_t>(c));
  for (std::int64_t row = 0; row < n; ++row) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (std::int64_t k = 0; k < r; ++k) {
      const double xv = static_cast<double>(xs[row * x.stride(0) + k * x.stride(1)]);
      const T* w_row = ws + k * w.stride(0);
      for (std::int64_t col = 0; col < c; ++col) {
        acc[static_cast<std::size_t>(col)] += xv * static_cast<double>(w_row[col * w.stride(1)]);
      }
    }
    for (std::int64_t col = 0; col < c; ++col) {
      os[row * c + col] = static_cast<T>(acc[static_cast<std::size_t>(col)]);
    }
  }
  return out;
}

}  // namespace

Tensor self_attention(const TensorView& Q, const TensorView& K, const TensorView& V) {
  CheckRank2("Q", Q, "(seq_len, d_k)");
  CheckRank2("K", K, "(seq_len, d_k)");
  CheckRank2("V", V, "(seq_len, d_v)");
  return Attention(Q, K, V);
}

Matrix self_attention(const Matrix& Q, const Matrix& K, const Matrix& V) {
  const std::int64_t d_k = Q.empty() ? 0 : static_cast<std::int64_t>(Q[0].size());
  const Tensor q = ToTensor("Q", Q, d_k), k = ToTensor("K", K, d_k), v = ToTensor("V", V, 0);
  return ToMatrix(self_attention(q.view(), k.view(), v.view()));
}

QKVTensors compute_qkv(const TensorView& X, const TensorView& W_q, const TensorView& W_k,
                       const TensorView& W_v) {
  const TensorView* weights[3] = {&W_q, &W_k, &W_v};
  const char* names[3] = {"W_q", "W_k", "W_v"};
  internal::CheckView("X", X.data, X.dtype, X.layout, 2, 2);
  if (X.dtype != DType::kFloat32 && X.dtype != DType::kFloat64) {
    internal::FailDType("X.dtype is ", DTypeName(X.dtype), " but must be float32 or float64");
  }
  for (int i = 0; i < 3; ++i) {
    const TensorView& w = *weights[i];
    internal::CheckView(names[i], w.data, w.dtype, w.layout, 2, 2);
    if (w.dtype != X.dtype) {
      internal::FailDType(names[i], ".dtype is ", DTypeName(w.dtype), " but X.dtype is ",
                          DTypeName(X.dtype));
    }
    if (w.dim(0) != X.dim(1)) {
      internal::Fail(names[i], ".shape[0] is ", w.dim(0), " but X.shape[1] (d_model) is ",
                     X.dim(1));
    }
  }
  if (X.dtype == DType::kFloat64) {
    return {MatMul<double>(X, W_q), MatMul<double>(X, W_k), MatMul<double>(X, W_v)};
  }
  return {MatMul<float>(X, W_q), MatMul<float>(X, W_k), MatMul<float>(X, W_v)};
}

QKV compute_qkv(const Matrix& X, const Matrix& W_q, const Matrix& W_k, const Matrix& W_v) {
  const Tensor x = ToTensor("X", X, 0);
  const auto cols = [](const Matrix& w) {
    return w.empty() ? std::int64_t{0} : static_cast<std::int64_t>(w[0].size());
  };
  const Tensor wq = ToTensor("W_q", W_q, cols(W_q)), wk = ToTensor("W_k", W_k, cols(W_k)),
               wv = ToTensor("W_v", W_v, cols(W_v));
  QKVTensors t = compute_qkv(x.view(), wq.view(), wk.view(), wv.view());
  return {ToMatrix(t.Q), ToMatrix(t.K), ToMatrix(t.V)};
}

}  // namespace sdpa

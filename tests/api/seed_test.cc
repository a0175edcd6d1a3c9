// The task that started the project (shared/seed/self-attention-task.txt): self_attention and
// compute_qkv, on nested-vector matrices and on views.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/naive_attention.h"
#include "testing/tensors.h"

namespace {

using sdpa::DType;
using sdpa::Matrix;
using sdpa::Tensor;
using sdpa::TensorView;
using sdpa_test::Array;

// The task's example: Q = K = I, V = [[1, 2], [3, 4]], scores diag(1/sqrt 2), so with
// w = e^(1/sqrt 2): row 0 = (w [1, 2] + [3, 4]) / (w + 1), row 1 = ([1, 2] + w [3, 4]) / (1 + w).
const Matrix kSeedQ = {{1, 0}, {0, 1}};
const Matrix kSeedK = {{1, 0}, {0, 1}};
const Matrix kSeedV = {{1, 2}, {3, 4}};
const Matrix kSeedPrinted = {{1.660477, 2.660477}, {2.339523, 3.339523}};

Array SeedExact() {
  const double w = std::exp(1 / std::sqrt(2.0));
  return Array({2, 2}, {(w + 3) / (w + 1), (2 * w + 4) / (w + 1), (1 + 3 * w) / (1 + w),
                        (2 + 4 * w) / (1 + w)});
}

Array FromMatrix(const Matrix& m) {
  Array a({static_cast<std::int64_t>(m.size()),
           m.empty() ? 0 : static_cast<std::int64_t>(m[0].size())});
  std::size_t n = 0;
  for (const auto& row : m) {
    for (double x : row) a.values[n++] = x;
  }
  return a;
}

TEST(Seed, ExampleFromTheTask) {
  const Matrix out = sdpa::self_attention(kSeedQ, kSeedK, kSeedV);
  ASSERT_EQ(out.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    ASSERT_EQ(out[i].size(), 2u);
    for (std::size_t j = 0; j < 2; ++j) {
      EXPECT_NEAR(out[i][j], kSeedPrinted[i][j], 5e-7) << i << "," << j;  // printed to 6 places
    }
  }
  EXPECT_TRUE(sdpa_test::AllClose(FromMatrix(out), SeedExact(), {1e-15, 1e-15}));
}

template <typename T>
void ExpectSeedOnViews(sdpa_test::Tolerance tol) {
  const T q[] = {1, 0, 0, 1}, k[] = {1, 0, 0, 1}, v[] = {1, 2, 3, 4};
  const Tensor out =
      sdpa::self_attention(TensorView(q, {2, 2}), TensorView(k, {2, 2}), TensorView(v, {2, 2}));
  EXPECT_EQ(out.dtype(), sdpa::DTypeOf<T>());
  EXPECT_EQ(out.shape(), (std::vector<std::int64_t>{2, 2}));
  EXPECT_TRUE(sdpa_test::AllClose(sdpa_test::ReadView(out.view()), SeedExact(), tol));
  EXPECT_TRUE(
      sdpa_test::AllClose(sdpa_test::ReadView(out.view()), FromMatrix(kSeedPrinted), {5e-7, 0}));
}

TEST(Seed, ExampleOnFloat32Views) { ExpectSeedOnViews<float>({0, 1e-6}); }  // a few ulps
TEST(Seed, ExampleOnFloat64Views) { ExpectSeedOnViews<double>({1e-15, 1e-15}); }

TEST(Seed, ExampleThroughTheGeneralApi) {
  const double q[] = {1, 0, 0, 1}, k[] = {1, 0, 0, 1}, v[] = {1, 2, 3, 4};
  const Tensor out =
      sdpa::Attention(TensorView(q, {2, 2}), TensorView(k, {2, 2}), TensorView(v, {2, 2}));
  EXPECT_TRUE(sdpa_test::AllClose(sdpa_test::ReadView(out.view()), SeedExact(), {1e-15, 1e-15}));
}

TEST(Seed, SelfAttentionMatchesNaiveOnRandomMatrices) {
  // Q (3, 4), K (5, 4), V (5, 2): the key sequence may differ from the query sequence.
  const Array q = Array::Uniform({3, 4}, 50), k = Array::Uniform({5, 4}, 51),
              v = Array::Uniform({5, 2}, 52);
  const auto to_matrix = [](const Array& a) {
    Matrix m(static_cast<std::size_t>(a.shape[0]));
    for (std::size_t r = 0; r < m.size(); ++r) {
      m[r].assign(a.values.begin() + static_cast<std::ptrdiff_t>(r) * a.shape[1],
                  a.values.begin() + static_cast<std::ptrdiff_t>(r + 1) * a.shape[1]);
    }
    return m;
  };
  const Matrix out = sdpa::self_attention(to_matrix(q), to_matrix(k), to_matrix(v));
  sdpa_test::NaiveProblem p;
  p.query = q.AsRank4();
  p.key = k.AsRank4();
  p.value = v.AsRank4();
  p.scale = 0.5;  // 1/sqrt(d_k), d_k = 4
  Array expected = sdpa_test::NaiveAttention(p).out;
  expected.shape = {3, 2};
  EXPECT_TRUE(sdpa_test::AllClose(FromMatrix(out), expected, {1e-14, 1e-14}));
}

TEST(Seed, EmptyMatrices) {
  EXPECT_TRUE(sdpa::self_attention(Matrix{}, Matrix{}, Matrix{}).empty());
  // Queries but no keys: every row has no visible key; V has no rows, so d_v is 0.
  const Matrix out = sdpa::self_attention({{1, 2}, {3, 4}}, Matrix{}, Matrix{});
  ASSERT_EQ(out.size(), 2u);
  EXPECT_TRUE(out[0].empty() && out[1].empty());
}

// X (3, 2), W_q (2, 2), W_k (2, 2), W_v (2, 3), integers so every product is exact:
//   X W_q = [[1, 2], [3, 4], [5, 6]] [[1, 0], [1, 1]] = [[3, 2], [7, 4], [11, 6]]
//   X W_k = [[1, 2], [3, 4], [5, 6]] [[2, 1], [0, 1]] = [[2, 3], [6, 7], [10, 11]]
//   X W_v = [[1, 2], [3, 4], [5, 6]] [[1, 0, -1], [0, 2, 1]] = [[1, 4, 1], [3, 8, 1], [5, 12, 1]]
const Matrix kX = {{1, 2}, {3, 4}, {5, 6}};
const Matrix kWq = {{1, 0}, {1, 1}}, kWk = {{2, 1}, {0, 1}}, kWv = {{1, 0, -1}, {0, 2, 1}};
const Matrix kQ = {{3, 2}, {7, 4}, {11, 6}}, kK = {{2, 3}, {6, 7}, {10, 11}},
             kV = {{1, 4, 1}, {3, 8, 1}, {5, 12, 1}};

TEST(Seed, ComputeQkvOnMatrices) {
  const sdpa::QKV qkv = sdpa::compute_qkv(kX, kWq, kWk, kWv);
  EXPECT_EQ(qkv.Q, kQ);
  EXPECT_EQ(qkv.K, kK);
  EXPECT_EQ(qkv.V, kV);
}

template <typename T>
void ExpectComputeQkvOnViews() {
  // X is passed transposed in memory (column-major), to read through strides.
  const T x_columns[] = {1, 3, 5, 2, 4, 6};
  const T wq[] = {1, 0, 1, 1}, wk[] = {2, 1, 0, 1}, wv[] = {1, 0, -1, 0, 2, 1};
  const sdpa::QKVTensors qkv =
      sdpa::compute_qkv(TensorView(x_columns, {3, 2}, {1, 3}), TensorView(wq, {2, 2}),
                        TensorView(wk, {2, 2}), TensorView(wv, {2, 3}));
  EXPECT_EQ(qkv.Q.dtype(), sdpa::DTypeOf<T>());
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(qkv.Q.view()), FromMatrix(kQ)));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(qkv.K.view()), FromMatrix(kK)));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(qkv.V.view()), FromMatrix(kV)));
}

TEST(Seed, ComputeQkvOnFloat32Views) { ExpectComputeQkvOnViews<float>(); }
TEST(Seed, ComputeQkvOnFloat64Views) { ExpectComputeQkvOnViews<double>(); }

TEST(Seed, ComputeQkvAccumulatesFloat32InFloat64) {
  // 1 + 2^-24 - 1 is 0 in float32 arithmetic but 2^-24 in float64.
  const float x[] = {1, 0x1.0p-24f, -1};
  const float w[] = {1, 1, 1};
  const sdpa::QKVTensors qkv = sdpa::compute_qkv(TensorView(x, {1, 3}), TensorView(w, {3, 1}),
                                                 TensorView(w, {3, 1}), TensorView(w, {3, 1}));
  EXPECT_EQ(qkv.Q.at<float>({0, 0}), 0x1.0p-24f);
}

TEST(Seed, ComputeQkvThenSelfAttention) {
  const sdpa::QKV qkv = sdpa::compute_qkv(kX, kWq, kWk, kWv);
  const Matrix out = sdpa::self_attention(qkv.Q, qkv.K, qkv.V);
  sdpa_test::NaiveProblem p;
  p.query = FromMatrix(kQ).AsRank4();
  p.key = FromMatrix(kK).AsRank4();
  p.value = FromMatrix(kV).AsRank4();
  p.scale = 1 / std::sqrt(2.0);
  Array expected = sdpa_test::NaiveAttention(p).out;
  expected.shape = {3, 3};
  EXPECT_TRUE(sdpa_test::AllClose(FromMatrix(out), expected, {1e-13, 1e-14}));

  // With X = I, W_q = W_k = I and W_v = the seed's V, the chain reproduces the seed example.
  const sdpa::QKV seed = sdpa::compute_qkv({{1, 0}, {0, 1}}, kSeedQ, kSeedK, kSeedV);
  EXPECT_TRUE(sdpa_test::AllClose(FromMatrix(sdpa::self_attention(seed.Q, seed.K, seed.V)),
                                  SeedExact(), {1e-15, 1e-15}));
}

// ---- Errors -----------------------------------------------------------------------------------

TEST(Seed, RaggedRowsAreRejected) {
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        sdpa::self_attention({{1, 0}, {0}}, kSeedK, kSeedV);
      },
      "sdpa: Q[1] has 1 columns but Q[0] has 2"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        sdpa::self_attention(kSeedQ, {{1, 0}, {0, 1, 2}}, kSeedV);
      },
      "sdpa: K[1] has 3 columns but K[0] has 2"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        sdpa::self_attention(kSeedQ, kSeedK, {{1, 2}, {3}});
      },
      "sdpa: V[1] has 1 columns but V[0] has 2"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        sdpa::compute_qkv({{1, 2}, {3}}, kWq, kWk, kWv);
      },
      "sdpa: X[1] has 1 columns but X[0] has 2"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        sdpa::compute_qkv(kX, kWq, {{2, 1}, {0}}, kWv);
      },
      "sdpa: W_k[1] has 1 columns but W_k[0] has 2"));
}

TEST(Seed, MismatchedSizesAreRejected) {
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        sdpa::self_attention(kSeedQ, {{1, 0, 0}, {0, 1, 0}}, kSeedV);
      },
      "sdpa: key.shape[1] (head_dim) is 3 but query.shape[1] is 2"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        sdpa::self_attention(kSeedQ, kSeedK, {{1, 2}, {3, 4}, {5, 6}});
      },
      "sdpa: value.shape[0] (kv_len) is 3 but key.shape[0] is 2"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        sdpa::compute_qkv(kX, kWq, {{2, 1}, {0, 1}, {1, 1}}, kWv);
      },
      "sdpa: W_k.shape[0] is 3 but X.shape[1] (d_model) is 2"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        sdpa::compute_qkv(kX, kWq, kWk, {{1, 0, -1}});
      },
      "sdpa: W_v.shape[0] is 1 but X.shape[1] (d_model) is 2"));
}

TEST(Seed, ViewsOfWrongRankOrTypeAreRejected) {
  const float f[8] = {};
  const double d[8] = {};
  const bool b[8] = {};
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::self_attention(TensorView(f, {1, 2, 2}), TensorView(f, {2, 2}),
                             TensorView(f, {2, 2}));
      },
      "sdpa: Q has rank 3 but must have rank 2 (seq_len, d_k)"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::self_attention(TensorView(f, {2, 2}), TensorView(f, {2, 2}), TensorView(f, {4}));
      },
      "sdpa: V has rank 1 but must have rank 2 (seq_len, d_v)"));
  EXPECT_TRUE(sdpa_test::ThrowsDTypeError(
      [&] {
        sdpa::self_attention(TensorView(f, {2, 2}), TensorView(d, {2, 2}), TensorView(f, {2, 2}));
      },
      "sdpa: key.dtype is float64 but query.dtype is float32"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::compute_qkv(TensorView(f, {2, 2, 2}), TensorView(f, {2, 2}), TensorView(f, {2, 2}),
                          TensorView(f, {2, 2}));
      },
      "sdpa: X has rank 3 but must have rank 2"));
  EXPECT_TRUE(sdpa_test::ThrowsDTypeError(
      [&] {
        sdpa::compute_qkv(TensorView(b, {2, 2}), TensorView(b, {2, 2}), TensorView(b, {2, 2}),
                          TensorView(b, {2, 2}));
      },
      "sdpa: X.dtype is bool but must be float32 or float64"));
  EXPECT_TRUE(sdpa_test::ThrowsDTypeError(
      [&] {
        sdpa::compute_qkv(TensorView(d, {2, 2}), TensorView(d, {2, 2}), TensorView(d, {2, 2}),
                          TensorView(f, {2, 2}));
      },
      "sdpa: W_v.dtype is float32 but X.dtype is float64"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::compute_qkv(TensorView(d, {2, 2}),
                          TensorView(static_cast<const double*>(nullptr), {2, 2}),
                          TensorView(d, {2, 2}), TensorView(d, {2, 2}));
      },
      "sdpa: W_q.data is null but W_q has 4 elements"));
}

}  // namespace

#include "reference/backward.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace sdpa::reference {
namespace {

using internal::BackwardProblem;
using internal::MaskKind;
using internal::Problem;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Scaled, masked score of key j for row (b, h, i), or -inf when j is invisible (K not read).
template <typename T>
double Score(const Problem& p, std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) {
  if (j >= p.Visible(p.Seq(b), i).end) return kNegInf;
  double bias = 0.0;
  if (p.mask_kind == MaskKind::kBool) {
    if (!internal::As<bool>(p.mask).Row(b, h, i)[j * p.mask.stride[3]]) return kNegInf;
  } else if (p.mask_kind == MaskKind::kAdditive) {
    bias = static_cast<double>(internal::As<T>(p.mask).Row(b, h, i)[j * p.mask.stride[3]]);
    if (bias == kNegInf) return kNegInf;
  }
  const T* q = internal::As<T>(p.q).Row(b, h, i);
  const T* k = internal::As<T>(p.k).Row(b, p.KvHead(h), j);
  double dot = 0.0;
  for (std::int64_t d = 0; d < p.head_dim; ++d) {
    dot += static_cast<double>(q[d * p.q.stride[3]]) * static_cast<double>(k[d * p.k.stride[3]]);
  }
  return p.scale * dot + bias;
}

// For one query row (b, h, i), with s_j its visible scores and P_j = softmax(s)_j:
//   pass 1: s_j, m = max s_j, P_j = exp(s_j - m) / sum;
//   pass 2: dP_j = dO · v_j, Δ = Σ_j P_j dP_j;
//   pass 3: dS_j = P_j (dP_j - Δ); dq += scale dS_j k_j; dk_j += scale dS_j q; dv_j += P_j dO.
// A row with no visible key adds nothing (its dq stays 0).
template <typename T>
void Row(const BackwardProblem& bp, std::int64_t b, std::int64_t h, std::int64_t i,
         std::vector<double>& probs, std::vector<double>& dq, std::vector<double>& dk,
         std::vector<double>& dv) {
  const Problem& p = bp.forward;
  const std::int64_t kvh = p.KvHead(h), D = p.head_dim, Dv = p.v_dim;
  double m = kNegInf;
  bool any = false;
  for (std::int64_t j = 0; j < p.kv_len; ++j) {
    probs[static_cast<std::size_t>(j)] = Score<T>(p, b, h, i, j);
    const double s = probs[static_cast<std::size_t>(j)];
    if (s == kNegInf) continue;
    any = true;
    if (s > m || std::isnan(s)) m = s;
  }
  std::fill(dq.begin(), dq.end(), 0.0);
  if (any) {
    double sum = 0.0;
    for (double& s : probs) sum += s == kNegInf ? 0.0 : (s = std::exp(s - m));
    for (double& s : probs) s = s == kNegInf ? 0.0 : s / sum;

    const T* dout = internal::As<T>(bp.grad_out).Row(b, h, i);
    const T* q = internal::As<T>(p.q).Row(b, h, i);
    std::vector<double> dp(probs.size(), 0.0);
    double delta = 0.0;
    for (std::int64_t j = 0; j < p.kv_len; ++j) {
      if (probs[static_cast<std::size_t>(j)] == 0.0) continue;
      const T* v = internal::As<T>(p.v).Row(b, kvh, j);
      double acc = 0.0;
      for (std::int64_t e = 0; e < Dv; ++e) {
        acc += static_cast<double>(dout[e * bp.grad_out.stride[3]]) *
               static_cast<double>(v[e * p.v.stride[3]]);
      }
      dp[static_cast<std::size_t>(j)] = acc;
      delta += probs[static_cast<std::size_t>(j)] * acc;
    }
    for (std::int64_t j = 0; j < p.kv_len; ++j) {
      const double prob = probs[static_cast<std::size_t>(j)];
      if (prob == 0.0) continue;
      const double ds = prob * (dp[static_cast<std::size_t>(j)] - delta);
      const T* k = internal::As<T>(p.k).Row(b, kvh, j);
      const std::size_t key = static_cast<std::size_t>((b * p.kv_heads + kvh) * p.kv_len + j);
      for (std::int64_t d = 0; d < D; ++d) {
        dq[static_cast<std::size_t>(d)] += p.scale * ds * static_cast<double>(k[d * p.k.stride[3]]);
        dk[key * static_cast<std::size_t>(D) + static_cast<std::size_t>(d)] +=
            p.scale * ds * static_cast<double>(q[d * p.q.stride[3]]);
      }
      for (std::int64_t e = 0; e < Dv; ++e) {
        dv[key * static_cast<std::size_t>(Dv) + static_cast<std::size_t>(e)] +=
            prob * static_cast<double>(dout[e * bp.grad_out.stride[3]]);
      }
    }
  }
  T* out = internal::As<T>(bp.grad_q).Row(b, h, i);
  for (std::int64_t d = 0; d < D; ++d) {
    out[d * bp.grad_q.stride[3]] = static_cast<T>(dq[static_cast<std::size_t>(d)]);
  }
}

// Writes a float64 [B, Hkv, Lkv, width] accumulator into a gradient operand.
template <typename T>
void Store(const std::vector<double>& acc, const Problem& p, std::int64_t width,
           const internal::Operand<void>& grad) {
  const internal::Operand<T> g = internal::As<T>(grad);
  std::size_t n = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < p.kv_heads; ++h) {
      for (std::int64_t j = 0; j < p.kv_len; ++j) {
        T* row = g.Row(b, h, j);
        for (std::int64_t x = 0; x < width; ++x) row[x * g.stride[3]] = static_cast<T>(acc[n++]);
      }
    }
  }
}

template <typename T>
void BackwardTyped(const BackwardProblem& bp) {
  const Problem& p = bp.forward;
  const auto keys = static_cast<std::size_t>(p.batch * p.kv_heads * p.kv_len);
  std::vector<double> dk(keys * static_cast<std::size_t>(p.head_dim), 0.0);
  std::vector<double> dv(keys * static_cast<std::size_t>(p.v_dim), 0.0);
  std::vector<double> probs(static_cast<std::size_t>(p.kv_len));
  std::vector<double> dq(static_cast<std::size_t>(p.head_dim));
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      for (std::int64_t i = 0; i < p.q_len; ++i) Row<T>(bp, b, h, i, probs, dq, dk, dv);
    }
  }
  Store<T>(dk, p, p.head_dim, bp.grad_k);
  Store<T>(dv, p, p.v_dim, bp.grad_v);
}

}  // namespace

void Backward(const BackwardProblem& problem) {
  if (problem.forward.dtype == DType::kFloat64) {
    BackwardTyped<double>(problem);
  } else {
    BackwardTyped<float>(problem);
  }
}

}  // namespace sdpa::reference

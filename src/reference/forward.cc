#include "reference/forward.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace sdpa::reference {
namespace {

using internal::MaskKind;
using internal::Operand;
using internal::Problem;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Score of key j for query row (b, h, i), or -inf when the key is not visible. Invisible keys
// are decided before K is read, so NaN/Inf in masked K rows cannot reach the result.
template <typename T>
double Score(const Problem& p, const T* q_row, std::int64_t b, std::int64_t h, std::int64_t i,
             std::int64_t j) {
  double bias = 0.0;
  if (p.mask_kind == MaskKind::kBool) {
    const bool* m = internal::As<bool>(p.mask).Row(b, h, i);
    if (!m[j * p.mask.stride[3]]) return kNegInf;
  } else if (p.mask_kind == MaskKind::kAdditive) {
    const T* m = internal::As<T>(p.mask).Row(b, h, i);
    bias = static_cast<double>(m[j * p.mask.stride[3]]);
    if (bias == kNegInf) return kNegInf;
  }
  const T* k_row = internal::As<T>(p.k).Row(b, p.KvHead(h), j);
  double dot = 0.0;
  for (std::int64_t d = 0; d < p.head_dim; ++d) {
    dot += static_cast<double>(q_row[d * p.q.stride[3]]) *
           static_cast<double>(k_row[d * p.k.stride[3]]);
  }
  return p.scale * dot + bias;
}

// One query row:
//   pass 1: scores s_j of the visible keys (j < causal end, mask allows);
//   pass 2: m = max_j s_j;
//   pass 3: p_j = exp(s_j - m), l = sum_j p_j;
//   pass 4: out = sum_j (p_j / l) v_j, lse = m + log(l).
// No visible key: out = 0, lse = -inf.
template <typename T>
void Row(const Problem& p, std::int64_t b, std::int64_t h, std::int64_t i, double* scores,
         double* acc) {
  const Operand<const T> q = internal::As<T>(p.q), v = internal::As<T>(p.v);
  const Operand<T> out = internal::As<T>(p.out);
  const T* q_row = q.Row(b, h, i);
  const std::int64_t end = p.Visible(p.Seq(b), i).end;

  bool any_visible = false;
  double m = kNegInf;
  for (std::int64_t j = 0; j < end; ++j) {
    scores[j] = Score(p, q_row, b, h, i, j);
    if (scores[j] == kNegInf) continue;
    any_visible = true;
    if (scores[j] > m || std::isnan(scores[j])) {
      m = scores[j];
    }
  }

  std::fill(acc, acc + p.v_dim, 0.0);
  double l = 0.0;
  if (any_visible) {
    for (std::int64_t j = 0; j < end; ++j) {
      const double s = scores[j];
      if (s == kNegInf) continue;
      const double weight = std::exp(s - m);
      l += weight;
      const T* v_row = v.Row(b, p.KvHead(h), j);
      for (std::int64_t d = 0; d < p.v_dim; ++d) {
        acc[d] += weight * static_cast<double>(v_row[d * p.v.stride[3]]);
      }
    }
  }
  T* out_row = out.Row(b, h, i);
  for (std::int64_t d = 0; d < p.v_dim; ++d) {
    out_row[d * p.out.stride[3]] = any_visible ? static_cast<T>(acc[d] / l) : T(0);
  }
  if (p.lse.data != nullptr) {
    *internal::As<T>(p.lse).Row(b, h, i) = static_cast<T>(any_visible ? m + std::log(l) : kNegInf);
  }
}

template <typename T>
void ForwardTyped(const Problem& p) {
  std::vector<double> scores(static_cast<std::size_t>(p.kv_len));
  std::vector<double> acc(static_cast<std::size_t>(p.v_dim));
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      for (std::int64_t i = 0; i < p.q_len; ++i) Row<T>(p, b, h, i, scores.data(), acc.data());
    }
  }
}

}  // namespace

void Forward(const Problem& problem) {
  if (problem.dtype == DType::kFloat64) {
    ForwardTyped<double>(problem);
  } else {
    ForwardTyped<float>(problem);
  }
}

}  // namespace sdpa::reference

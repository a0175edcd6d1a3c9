#include "reference/forward.h"

#include <cstdint>
#include <vector>

#include "core/interrupt.h"
#include "reference/scores.h"

namespace sdpa::reference {
namespace {

using internal::Operand;
using internal::Problem;

// One query row: scores after every step (scores.h), softmax with the sink, dropout, then
//   out = Σ_j P_j·factor_j·v_j,  lse = log(Σ_j exp(s_j) + exp(sink)).
// No visible key: out = 0 and lse = sink (-inf without sinks).
template <typename T>
void Row(const Problem& p, const RowAt& row, std::vector<double>& probs,
         std::vector<double>& factor, std::vector<double>& acc) {
  RowScores<T>(p, row, probs, nullptr);
  const double lse = Softmax(probs, Sink(p, row.head));
  DropoutFactors(p, row, factor);
  const Operand<const T> v = internal::As<T>(p.v);
  std::fill(acc.begin(), acc.end(), 0.0);
  for (std::int64_t j = 0; j < row.seq.k_len; ++j) {
    const double weight = probs[static_cast<std::size_t>(j)] * factor[static_cast<std::size_t>(j)];
    if (weight == 0.0) continue;
    const T* v_row = v.Row(row.seq.batch, p.KvHead(row.head), row.seq.k_begin + j);
    for (std::int64_t d = 0; d < p.v_dim; ++d) {
      acc[static_cast<std::size_t>(d)] += weight * static_cast<double>(v_row[d * p.v.stride[3]]);
    }
  }
  const std::int64_t gi = row.seq.q_begin + row.pos;
  T* out = internal::As<T>(p.out).Row(row.seq.batch, row.head, gi);
  for (std::int64_t d = 0; d < p.v_dim; ++d) {
    out[d * p.out.stride[3]] = static_cast<T>(acc[static_cast<std::size_t>(d)]);
  }
  if (p.lse.data != nullptr)
    *internal::As<T>(p.lse).Row(row.seq.batch, row.head, gi) = static_cast<T>(lse);
}

template <typename T>
void ForwardTyped(const Problem& p) {
  internal::StopFlag stop(p.interrupt);
  std::vector<double> probs, factor, acc(static_cast<std::size_t>(p.v_dim));
  for (std::int64_t s = 0; s < p.num_sequences(); ++s) {
    RowAt row;
    row.seq = p.Seq(s);
    for (row.head = 0; row.head < p.heads; ++row.head) {
      for (row.pos = 0; row.pos < row.seq.q_len; ++row.pos) {
        if (stop.Stopped()) stop.ThrowIfStopped();
        Row<T>(p, row, probs, factor, acc);
      }
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

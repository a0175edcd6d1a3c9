#include "reference/forward.h"

#include <cstdint>
#include <vector>

#include "core/interrupt.h"
#include "core/types.h"
#include "reference/scores.h"

namespace sdpa::reference {
namespace {

using internal::Problem;

// One query row: scores after every step (scores.h), softmax with the sink, dropout, then
//   out = Σ_j P_j·factor_j·v_j,  lse = log(Σ_j exp(s_j) + exp(sink)).
// No visible key: out = 0 and lse = sink (-inf without sinks).
// S: the K/V storage type (core/types.h); the arithmetic is float64, every other operand is read
// and written through its own dtype.
template <typename S>
void Row(const Problem& p, const RowAt& row, std::vector<double>& probs,
         std::vector<double>& factor, std::vector<double>& acc) {
  RowScores<S>(p, row, probs, nullptr);
  const double lse = Softmax(probs, Sink(p, row.head));
  DropoutFactors(p, row, factor);
  std::fill(acc.begin(), acc.end(), 0.0);
  for (std::int64_t j = 0; j < row.seq.k_len; ++j) {
    const double weight = probs[static_cast<std::size_t>(j)] * factor[static_cast<std::size_t>(j)];
    if (weight == 0.0) continue;
    const std::int64_t kvh = p.KvHead(row.head), gj = row.seq.k_begin + j;
    const S* v_row = p.kv.ValueRow<S>(row.seq.batch, kvh, gj);
    const double v_scale = p.kv.ValueScale(row.seq.batch, kvh, gj);  // 1 unless int8
    for (std::int64_t d = 0; d < p.v_dim; ++d) {
      acc[static_cast<std::size_t>(d)] +=
          weight * v_scale * internal::Widen<double>(v_row[d * p.kv.value_step()]);
    }
  }
  const std::int64_t gi = row.seq.q_begin + row.pos;
  internal::WriteRow(p.out, row.seq.batch, row.head, gi, p.v_dim, acc.data());
  if (p.lse.data != nullptr) internal::WriteRow(p.lse, row.seq.batch, row.head, gi, 1, &lse);
}

template <typename S>
void ForwardTyped(const Problem& p) {
  internal::StopFlag stop(p.interrupt);
  std::vector<double> probs, factor, acc(static_cast<std::size_t>(p.v_dim));
  for (std::int64_t s = 0; s < p.num_sequences(); ++s) {
    RowAt row;
    row.seq = p.Seq(s);
    for (row.head = 0; row.head < p.heads; ++row.head) {
      for (row.pos = 0; row.pos < row.seq.q_len; ++row.pos) {
        if (stop.Stopped()) stop.ThrowIfStopped();
        row.Load(p);
        Row<S>(p, row, probs, factor, acc);
      }
    }
  }
}

}  // namespace

void Forward(const Problem& problem) {
  internal::WithTypes(problem, [&](auto types) {
    using Types = decltype(types);
    ForwardTyped<typename Types::Storage>(problem);
  });
}

}  // namespace sdpa::reference

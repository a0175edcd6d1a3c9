#include "reference/backward.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/interrupt.h"
#include "core/types.h"
#include "reference/scores.h"

namespace sdpa::reference {
namespace {

using internal::BackwardProblem;
using internal::Problem;

// Scratch of one row, and the float64 dK, dV [B, Hkv, Lkv, width] and dsinks [H] accumulators.
struct Accumulators {
  std::vector<double> probs, slope, factor, dp, dq, dout, dk, dv, dsinks;
};

// For one query row with scores s_j (scores.h), P = softmax(s with the sink), Z_j the dropout
// factor and x_j = scale·q·k_j (so ds_j/dx_j = slope_j):
//   dP_j = dO · v_j,  Δ = Σ_j P_j Z_j dP_j  (= dO · out),  dS_j = P_j (Z_j dP_j - Δ);
//   dq += scale Σ_j dS_j slope_j k_j;  dk_j += scale dS_j slope_j q;  dv_j += P_j Z_j dO;
//   dsink -= P_sink Δ with P_sink = exp(sink - lse).
// A row with no visible key and no sink adds nothing (its dq stays 0).
template <typename S>
void Row(const BackwardProblem& bp, const RowAt& row, Accumulators& a) {
  const Problem& p = bp.forward;
  const internal::Sequence& seq = row.seq;
  const std::int64_t kvh = p.KvHead(row.head), D = p.head_dim, Dv = p.v_dim;
  const std::int64_t gi = seq.q_begin + row.pos;
  RowScores<S>(p, row, a.probs, &a.slope);
  const double lse = Softmax(a.probs, Sink(p, row.head));
  DropoutFactors(p, row, a.factor);
  std::fill(a.dq.begin(), a.dq.end(), 0.0);
  a.dout.resize(static_cast<std::size_t>(Dv));
  internal::ReadRow(bp.grad_out, seq.batch, row.head, gi, Dv, a.dout.data());
  const std::vector<double>& q = row.q;
  a.dp.assign(a.probs.size(), 0.0);
  double delta = 0.0;
  for (std::size_t j = 0; j < a.probs.size(); ++j) {
    if (a.probs[j] == 0.0) continue;
    const S* v = p.kv.ValueRow<S>(seq.batch, kvh, seq.k_begin + static_cast<std::int64_t>(j));
    double acc = 0.0;
    for (std::int64_t e = 0; e < Dv; ++e) {
      acc +=
          a.dout[static_cast<std::size_t>(e)] * internal::Widen<double>(v[e * p.kv.value_step()]);
    }
    a.dp[j] = acc;
    delta += a.probs[j] * a.factor[j] * acc;
  }
  for (std::size_t j = 0; j < a.probs.size(); ++j) {
    const double prob = a.probs[j];
    if (prob == 0.0) continue;
    const double dx = prob * (a.factor[j] * a.dp[j] - delta) * a.slope[j];
    const std::int64_t gj = seq.k_begin + static_cast<std::int64_t>(j);
    const S* k = p.kv.KeyRow<S>(seq.batch, kvh, gj);
    const auto key = static_cast<std::size_t>((seq.batch * p.kv_heads + kvh) * p.kv_len + gj);
    for (std::int64_t d = 0; d < D; ++d) {
      a.dq[static_cast<std::size_t>(d)] +=
          p.scale * dx * internal::Widen<double>(k[d * p.kv.key_step()]);
      a.dk[key * static_cast<std::size_t>(D) + static_cast<std::size_t>(d)] +=
          p.scale * dx * q[static_cast<std::size_t>(d)];
    }
    for (std::int64_t e = 0; e < Dv; ++e) {
      a.dv[key * static_cast<std::size_t>(Dv) + static_cast<std::size_t>(e)] +=
          prob * a.factor[j] * a.dout[static_cast<std::size_t>(e)];
    }
  }
  const double sink = Sink(p, row.head);
  if (sink != kNegInf) a.dsinks[static_cast<std::size_t>(row.head)] -= std::exp(sink - lse) * delta;
  internal::WriteRow(bp.grad_q, seq.batch, row.head, gi, D, a.dq.data());
}

// Writes a float64 [B, Hkv, Lkv, width] accumulator into a gradient operand.
void Store(const std::vector<double>& acc, const Problem& p, std::int64_t width,
           const internal::Operand<void>& grad) {
  const double* row = acc.data();
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < p.kv_heads; ++h) {
      for (std::int64_t j = 0; j < p.kv_len; ++j, row += width) {
        internal::WriteRow(grad, b, h, j, width, row);
      }
    }
  }
}

template <typename S>
void BackwardTyped(const BackwardProblem& bp) {
  const Problem& p = bp.forward;
  const auto keys = static_cast<std::size_t>(p.batch * p.kv_heads * p.kv_len);
  Accumulators a;
  a.dk.assign(keys * static_cast<std::size_t>(p.head_dim), 0.0);
  a.dv.assign(keys * static_cast<std::size_t>(p.v_dim), 0.0);
  a.dq.assign(static_cast<std::size_t>(p.head_dim), 0.0);
  a.dsinks.assign(static_cast<std::size_t>(p.heads), 0.0);
  internal::StopFlag stop(p.interrupt);
  for (std::int64_t s = 0; s < p.num_sequences(); ++s) {
    RowAt row;
    row.seq = p.Seq(s);
    for (row.head = 0; row.head < p.heads; ++row.head) {
      for (row.pos = 0; row.pos < row.seq.q_len; ++row.pos) {
        if (stop.Stopped()) stop.ThrowIfStopped();
        row.Load(p);
        Row<S>(bp, row, a);
      }
    }
  }
  Store(a.dk, p, p.head_dim, bp.grad_k);
  Store(a.dv, p, p.v_dim, bp.grad_v);
  if (bp.grad_sinks.data != nullptr) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      internal::WriteRow(bp.grad_sinks, h, 0, 0, 1, &a.dsinks[static_cast<std::size_t>(h)]);
    }
  }
}

}  // namespace

void Backward(const BackwardProblem& problem) {
  internal::WithTypes(problem.forward, [&](auto types) {
    using Types = decltype(types);
    BackwardTyped<typename Types::Storage>(problem);
  });
}

}  // namespace sdpa::reference

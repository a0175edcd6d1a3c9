// The scores of one query row, after every step of options.h, as both reference passes need
// them: plain float64 loops, one key at a time.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/dropout.h"
#include "core/problem.h"
#include "core/types.h"

namespace sdpa::reference {

inline constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Where a query row lives: its sequence, query head and position within the sequence; and its
// query vector (head_dim values, read by Load).
struct RowAt {
  internal::Sequence seq;
  std::int64_t head = 0, pos = 0;
  std::vector<double> q;

  // Reads the row's query from the problem.
  void Load(const internal::Problem& p) {
    q.resize(static_cast<std::size_t>(p.head_dim));
    internal::ReadRow(p.q, seq.batch, head, seq.q_begin + pos, p.head_dim, q.data());
  }
};

// The additive mask at (b, h, i, j) (packed positions), as stored.
inline double MaskBias(const internal::Problem& p, std::int64_t b, std::int64_t h, std::int64_t i,
                       std::int64_t j) {
  return internal::WithStorage(p.mask.dtype, [&](auto tag) {
    using M = typename decltype(tag)::Type;
    return internal::Widen<double>(internal::As<M>(p.mask).Row(b, h, i)[j * p.mask.stride[3]]);
  });
}

// For every key j of the row's sequence (positions within it), K stored as S: score[j], or -inf
// when j is
// removed (causal rule, window, bool mask, -inf additive mask, mask_mod); and, when `slope` is
// non-null, slope[j] = d score[j] / d (scale·q·k_j) (softcap and score_mod change it).
// Removed keys are decided before K is read where possible; later steps overwrite the score
// with -inf, so NaN/Inf in masked K rows cannot reach the result either way.
template <typename S>
void RowScores(const internal::Problem& p, const RowAt& row, std::vector<double>& score,
               std::vector<double>* slope) {
  using internal::MaskKind;
  const internal::Sequence& seq = row.seq;
  const std::int64_t h = row.head, i = row.pos, gi = seq.q_begin + i;
  score.assign(static_cast<std::size_t>(seq.k_len), kNegInf);
  if (slope != nullptr) slope->assign(score.size(), 0.0);
  const internal::KeyRange visible = p.Visible(seq, i);
  for (std::int64_t j = visible.begin; j < visible.end; ++j) {
    const std::int64_t gj = seq.k_begin + j;
    double bias = 0.0;
    if (p.mask_kind == MaskKind::kBool) {
      if (!internal::As<bool>(p.mask).Row(seq.batch, h, gi)[gj * p.mask.stride[3]]) continue;
    } else if (p.mask_kind == MaskKind::kAdditive) {
      bias = MaskBias(p, seq.batch, h, gi, gj);
      if (bias == kNegInf) continue;
    }
    const S* k = p.kv.KeyRow<S>(seq.batch, p.KvHead(h), gj);
    double dot = 0.0;
    for (std::int64_t d = 0; d < p.head_dim; ++d) {
      dot += row.q[static_cast<std::size_t>(d)] * internal::Widen<double>(k[d * p.kv.key_step()]);
    }
    dot *= static_cast<double>(p.kv.KeyScale(seq.batch, p.KvHead(h), gj));  // int8 caches
    double s = p.scale * dot, ds = 1.0;
    if (p.softcap > 0) {
      const double t = std::tanh(s / p.softcap);
      s = p.softcap * t;
      ds *= 1.0 - t * t;
    }
    if (!p.alibi_slopes.empty()) s += p.AlibiBias(seq, h, i, j);
    ScoreBlock block;
    block.batch = seq.index;
    block.head = &h;
    block.pos = &i;
    block.rows = 1;
    block.key_begin = j;
    block.keys = 1;
    if (p.has_score_mod()) {
      p.custom->score_f64(p.custom->context, block, &s, slope != nullptr ? &ds : nullptr);
    }
    s += bias;
    if (p.has_mask_mod()) p.custom->mask_f64(p.custom->context, block, &s);
    if (s == kNegInf) continue;
    score[static_cast<std::size_t>(j)] = s;
    if (slope != nullptr) (*slope)[static_cast<std::size_t>(j)] = ds;
  }
}

// The row's sink logit (-inf without sinks).
inline double Sink(const internal::Problem& p, std::int64_t h) {
  return p.sinks.empty() ? kNegInf : p.sinks[static_cast<std::size_t>(h)];
}

// Turns the scores into probabilities in place (0 for removed keys) and returns the row's
// log-sum-exp including the sink: lse = m + log(Σ_j exp(s_j - m) + exp(sink - m)),
// m = max(max_j s_j, sink); -inf when there is neither a visible key nor a sink.
inline double Softmax(std::vector<double>& score, double sink) {
  double m = sink;
  for (const double s : score) {
    if (s != kNegInf && (s > m || std::isnan(s))) m = s;
  }
  if (m == kNegInf) {
    std::fill(score.begin(), score.end(), 0.0);
    return kNegInf;
  }
  double l = sink == kNegInf ? 0.0 : std::exp(sink - m);
  for (double& s : score) l += s == kNegInf ? 0.0 : (s = std::exp(s - m));
  for (double& s : score) s = s == kNegInf ? 0.0 : s / l;
  return m + std::log(l);
}

// Dropout multipliers of the row's keys: 1 / (1 - p) where kept, 0 where dropped; all 1
// without dropout.
inline void DropoutFactors(const internal::Problem& p, const RowAt& row,
                           std::vector<double>& factor) {
  factor.assign(static_cast<std::size_t>(row.seq.k_len), 1.0);
  if (p.dropout_p == 0) return;
  const internal::Dropout dropout(p.dropout_p, p.seed);
  for (std::int64_t j = 0; j < row.seq.k_len; ++j) {
    factor[static_cast<std::size_t>(j)] =
        dropout.Kept(row.seq.index, row.head, row.pos, j) ? dropout.scale() : 0.0;
  }
}

}  // namespace sdpa::reference

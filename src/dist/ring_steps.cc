// The steps of ring attention on one rank (dist/ring_steps.h); ring.cc explains the algorithm.
#include "dist/ring_steps.h"

#include <algorithm>
#include <limits>

#include "core/merge.h"
#include "dist/views.h"
#include "sdpa/attention.h"

namespace sdpa::dist {

std::int64_t RingGeometry::KvSize(std::int64_t n) const {
  return shard.batch * shard.kv_heads * n * (shard.head_dim + shard.v_dim);
}
TensorView RingGeometry::Keys(const float* kv, std::int64_t n) const {
  return Block(kv, shard.batch, shard.kv_heads, n, shard.head_dim);
}
TensorView RingGeometry::Values(const float* kv, std::int64_t n) const {
  return Block(kv + shard.batch * shard.kv_heads * n * shard.head_dim, shard.batch, shard.kv_heads,
               n, shard.v_dim);
}

Case RingGeometry::StepCase(int src) const {
  const std::int64_t c = Len(rank), n = Len(src);
  Case k{0, c, 0, n, Causal::kNone};
  if (!causal) return k;
  if (src == rank) {
    k.causal = Causal::kTopLeft;
  } else if (layout == SequenceLayout::kContiguous) {
    if (src > rank) k.q_end = 0;  // every key is later
  } else if (src < rank) {
    k.k_end = n / 2;  // src's first chunk only
  } else {
    k.q_begin = c / 2;  // the second query chunk only
  }
  return k;
}

RingGeometry MakeGeometry(int rank, int world, const Shard& shard,
                          const std::vector<std::int64_t>& lengths, const Options& options,
                          SequenceLayout layout) {
  RingGeometry g;
  g.rank = rank;
  g.world = world;
  g.shard = shard;
  g.lengths = lengths;
  g.max_len = *std::max_element(lengths.begin(), lengths.end());
  g.causal = options.causal != Causal::kNone;
  g.layout = layout;
  return g;
}

void PackBlock(const RingGeometry& g, const TensorView& key, const TensorView& value, float* kv) {
  Pack(key, kv);
  Pack(value, kv + g.shard.batch * g.shard.kv_heads * g.Len(g.rank) * g.shard.head_dim);
}

Options BlockOptions(const Options& options, const Case& k, const std::function<bool()>& hook) {
  Options o = options;
  o.causal = k.causal;
  o.sinks.clear();
  o.interrupt = hook;
  return o;
}

ForwardState::ForwardState(const RingGeometry& g) {
  const Shard& s = g.shard;
  const std::size_t rows = static_cast<std::size_t>(s.batch * s.heads * g.Len(g.rank));
  acc.assign(rows * static_cast<std::size_t>(s.v_dim), 0.0f);
  acc_lse.assign(rows, -std::numeric_limits<float>::infinity());
  part.assign(acc.size(), 0.0f);
  part_lse.assign(rows, 0.0f);
}

void ForwardStep(const RingGeometry& g, const TensorView& query, const float* kv, int src,
                 const Options& block_options_base, const std::function<bool()>& hook,
                 ForwardState& st) {
  const Case k = g.StepCase(src);
  if (k.empty()) return;
  const Shard& s = g.shard;
  const std::int64_t c = g.Len(g.rank), n = g.Len(src);
  // the partial of rows [q_begin, q_end) over keys [k_begin, k_end)
  const MutableTensorView part_out = MutableBlock(st.part.data(), s.batch, s.heads, c, s.v_dim);
  MutableTensorView part_lse(st.part_lse.data(), DType::kFloat32,
                             Layout::Contiguous({s.batch, s.heads, c}));
  part_lse.data = st.part_lse.data() + k.q_begin;
  part_lse.layout.shape[2] = k.q_end - k.q_begin;
  Forward(Rows(query, k.q_begin, k.q_end), Rows(g.Keys(kv, n), k.k_begin, k.k_end),
          Rows(g.Values(kv, n), k.k_begin, k.k_end), Rows(part_out, k.q_begin, k.q_end), part_lse,
          BlockOptions(block_options_base, k, hook));
  // merged into the running result
  for (std::int64_t bh = 0; bh < s.batch * s.heads; ++bh) {
    for (std::int64_t i = k.q_begin; i < k.q_end; ++i) {
      const std::int64_t row = bh * c + i;
      internal::MergeInto(st.acc.data() + row * s.v_dim, st.acc_lse[static_cast<std::size_t>(row)],
                          st.part.data() + row * s.v_dim,
                          st.part_lse[static_cast<std::size_t>(row)], s.v_dim);
    }
  }
}

void FinishForward(const RingGeometry& g, const Options& options, const ForwardState& state,
                   const MutableTensorView& out, const MutableTensorView* lse) {
  const Shard& s = g.shard;
  const std::int64_t c = g.Len(g.rank), rows = s.batch * s.heads * c;
  std::vector<float> acc = state.acc, acc_lse = state.acc_lse;
  if (!options.sinks.empty()) {
    const std::vector<float> zeros(static_cast<std::size_t>(s.v_dim), 0.0f);
    for (std::int64_t row = 0; row < rows; ++row) {
      const float sink =
          static_cast<float>(options.sinks[static_cast<std::size_t>((row / c) % s.heads)]);
      internal::MergeInto(acc.data() + row * s.v_dim, acc_lse[static_cast<std::size_t>(row)],
                          zeros.data(), sink, s.v_dim);
    }
  }
  Unpack(acc.data(), out);
  if (lse != nullptr) Unpack(acc_lse.data(), WithUnitWidth(*lse));
}

BackwardState::BackwardState(const RingGeometry& g) {
  const Shard& s = g.shard;
  dq.assign(static_cast<std::size_t>(s.batch * s.heads * g.Len(g.rank) * s.head_dim), 0.0f);
  dq_part.assign(dq.size(), 0.0f);
  dkv_part.assign(static_cast<std::size_t>(g.KvSize(g.max_len)), 0.0f);
}

void BackwardStep(const RingGeometry& g, const TensorView& query, const TensorView& out,
                  const TensorView& lse, const TensorView& grad_out, const float* kv, int src,
                  const Options& block_options_base, const std::function<bool()>& hook,
                  BackwardState& st) {
  const std::int64_t n = g.Len(src), c = g.Len(g.rank);
  std::fill(st.dkv_part.begin(), st.dkv_part.begin() + g.KvSize(n), 0.0f);
  const Case k = g.StepCase(src);
  if (k.empty()) return;
  const Shard& s = g.shard;
  const std::int64_t dk_size = s.batch * s.kv_heads * n * s.head_dim;
  const MutableTensorView dq_view =
      MutableBlock(st.dq_part.data(), s.batch, s.heads, c, s.head_dim);
  const MutableTensorView dk_view =
      MutableBlock(st.dkv_part.data(), s.batch, s.kv_heads, n, s.head_dim);
  const MutableTensorView dv_view =
      MutableBlock(st.dkv_part.data() + dk_size, s.batch, s.kv_heads, n, s.v_dim);
  TensorView lse_rows = lse;
  lse_rows.data = static_cast<const float*>(lse.data) + k.q_begin * lse.stride(2);
  lse_rows.layout.shape[2] = k.q_end - k.q_begin;
  // The block Backward takes no sinks: its lse (the forward's) already holds them, so
  // p = exp(s - lse) is the true probability.
  Backward(Rows(query, k.q_begin, k.q_end), Rows(g.Keys(kv, n), k.k_begin, k.k_end),
           Rows(g.Values(kv, n), k.k_begin, k.k_end), Rows(out, k.q_begin, k.q_end), lse_rows,
           Rows(grad_out, k.q_begin, k.q_end), Rows(dq_view, k.q_begin, k.q_end),
           Rows(dk_view, k.k_begin, k.k_end), Rows(dv_view, k.k_begin, k.k_end),
           BlockOptions(block_options_base, k, hook));
  for (std::int64_t bh = 0; bh < s.batch * s.heads; ++bh) {
    for (std::int64_t i = k.q_begin; i < k.q_end; ++i) {
      float* d = st.dq.data() + (bh * c + i) * s.head_dim;
      const float* p = st.dq_part.data() + (bh * c + i) * s.head_dim;
      for (std::int64_t e = 0; e < s.head_dim; ++e) d[e] += p[e];
    }
  }
}

}  // namespace sdpa::dist

// DeepSpeed-Ulysses (Jacobs et al. 2023) over MPI: all-to-all from sequence shards to head
// shards, an unchanged local Forward / Backward over the full sequence, all-to-all back.
//
// Legend: P ranks; a tensor of X heads and width W. Rank r sends to rank p the heads of group p,
// [p·X/P, (p+1)·X/P), of its c_r rows: [B, X/P, c_r, W] contiguous; it receives from every rank s
// group r's heads of s's rows and puts them at s's global positions (its layout), giving
// [B, X/P, L, W] in natural order. The way back is the inverse. One MPI_Alltoallv per tensor:
// forward 3 in (q, k, v) and 2 out (out, lse); backward 6 in, 3 out. Nothing overlaps the
// all-to-alls (the notes' trade-off: simple, any mask the local call takes, P <= kv_heads).
#include <cstdint>
#include <vector>

#include "api/validate.h"
#include "dist/check.h"
#include "dist/comm.h"
#include "dist/layout.h"
#include "dist/views.h"
#include "sdpa/attention.h"
#include "sdpa/distributed.h"

namespace sdpa {
namespace {

struct Geometry {
  int rank = 0, world = 1;
  std::int64_t batch = 0, total = 0;
  std::vector<std::int64_t> lengths;
  std::vector<std::vector<std::int64_t>> positions;  // of every rank's rows
};

Geometry MakeGeometry(const dist::Comm& comm, const dist::Agreed& agreed, SequenceLayout layout) {
  Geometry g;
  g.rank = comm.rank();
  g.world = comm.size();
  g.batch = agreed.shard.batch;
  g.lengths = agreed.lengths;
  g.total = dist::Offsets(g.lengths).back();
  for (int s = 0; s < g.world; ++s) g.positions.push_back(dist::Positions(layout, g.lengths, s));
  return g;
}

std::vector<int> Displacements(const std::vector<int>& counts) {
  std::vector<int> d(counts.size(), 0);
  for (std::size_t s = 1; s < counts.size(); ++s) d[s] = d[s - 1] + counts[s - 1];
  return d;
}

// x: this rank's shard [B, X, c_r, W] -> [B, X/P, L, W] of head group `rank`, natural order.
std::vector<float> SequenceToHeads(const dist::Comm& comm, const Geometry& g, const TensorView& x) {
  const std::int64_t X = x.dim(1), W = x.dim(3), group = X / g.world;
  const std::int64_t c = g.lengths[static_cast<std::size_t>(g.rank)];
  std::vector<float> send(static_cast<std::size_t>(g.batch * X * c * W));
  std::vector<int> send_counts(static_cast<std::size_t>(g.world)),
      recv_counts(static_cast<std::size_t>(g.world));
  for (int p = 0; p < g.world; ++p) {
    TensorView heads = x;
    heads.data = static_cast<const float*>(x.data) + p * group * x.stride(1);
    heads.layout.shape[1] = group;
    dist::Pack(heads, send.data() + p * g.batch * group * c * W);
    send_counts[static_cast<std::size_t>(p)] =
        dist::CountOf(g.batch * group * c * W, "an all-to-all part");
    recv_counts[static_cast<std::size_t>(p)] = dist::CountOf(
        g.batch * group * g.lengths[static_cast<std::size_t>(p)] * W, "an all-to-all part");
  }
  dist::CountOf(g.batch * group * g.total * W, "a rank's all-to-all");
  dist::CountOf(g.batch * X * c * W, "a rank's all-to-all");
  std::vector<float> recv(static_cast<std::size_t>(g.batch * group * g.total * W));
  const std::vector<int> send_displs = Displacements(send_counts),
                         recv_displs = Displacements(recv_counts);
  dist::Check(
      MPI_Alltoallv(send.data(), send_counts.data(), send_displs.data(), MPI_FLOAT, recv.data(),
                    recv_counts.data(), recv_displs.data(), MPI_FLOAT, comm.get()),
      "MPI_Alltoallv");
  std::vector<float> full(recv.size());
  for (int s = 0; s < g.world; ++s) {
    const std::int64_t n = g.lengths[static_cast<std::size_t>(s)];
    const float* part = recv.data() + recv_displs[static_cast<std::size_t>(s)];
    const std::vector<std::int64_t>& pos = g.positions[static_cast<std::size_t>(s)];
    for (std::int64_t bx = 0; bx < g.batch * group; ++bx) {
      for (std::int64_t i = 0; i < n; ++i) {
        const float* row = part + (bx * n + i) * W;
        float* dst = full.data() + (bx * g.total + pos[static_cast<std::size_t>(i)]) * W;
        std::copy(row, row + W, dst);
      }
    }
  }
  return full;
}

// The inverse: full [B, X/P, L, W] of head group `rank` -> this rank's shard `out` [B, X, c_r, W].
void HeadsToSequence(const dist::Comm& comm, const Geometry& g, const std::vector<float>& full,
                     const MutableTensorView& out) {
  const std::int64_t X = out.dim(1), W = out.dim(3), group = X / g.world;
  const std::int64_t c = g.lengths[static_cast<std::size_t>(g.rank)];
  std::vector<float> send(full.size());
  std::vector<int> send_counts(static_cast<std::size_t>(g.world)),
      recv_counts(static_cast<std::size_t>(g.world));
  std::int64_t offset = 0;
  for (int s = 0; s < g.world; ++s) {
    const std::int64_t n = g.lengths[static_cast<std::size_t>(s)];
    const std::vector<std::int64_t>& pos = g.positions[static_cast<std::size_t>(s)];
    for (std::int64_t bx = 0; bx < g.batch * group; ++bx) {
      for (std::int64_t i = 0; i < n; ++i) {
        const float* row = full.data() + (bx * g.total + pos[static_cast<std::size_t>(i)]) * W;
        std::copy(row, row + W, send.data() + offset + (bx * n + i) * W);
      }
    }
    send_counts[static_cast<std::size_t>(s)] = static_cast<int>(g.batch * group * n * W);
    recv_counts[static_cast<std::size_t>(s)] = static_cast<int>(g.batch * group * c * W);
    offset += g.batch * group * n * W;
  }
  std::vector<float> recv(static_cast<std::size_t>(g.batch * X * c * W));
  const std::vector<int> send_displs = Displacements(send_counts),
                         recv_displs = Displacements(recv_counts);
  dist::Check(
      MPI_Alltoallv(send.data(), send_counts.data(), send_displs.data(), MPI_FLOAT, recv.data(),
                    recv_counts.data(), recv_displs.data(), MPI_FLOAT, comm.get()),
      "MPI_Alltoallv");
  for (int p = 0; p < g.world; ++p) {
    MutableTensorView heads = out;
    heads.data = static_cast<float*>(out.data) + p * group * out.stride(1);
    heads.layout.shape[1] = group;
    dist::Unpack(recv.data() + recv_displs[static_cast<std::size_t>(p)], heads);
  }
}

// The caller's options for this rank's head group: per-head ALiBi slopes and sinks sliced.
Options GroupOptions(const Options& options, std::int64_t heads, int rank, int world) {
  Options o = options;
  const std::int64_t group = heads / world, begin = rank * group;
  auto slice = [&](std::vector<double>& v) {
    if (!v.empty()) {
      v = std::vector<double>(v.begin() + begin, v.begin() + begin + group);
    }
  };
  slice(o.alibi_slopes);
  slice(o.sinks);
  return o;
}

void CheckPerHead(const Options& options, std::int64_t heads) {
  if (!options.alibi_slopes.empty() &&
      static_cast<std::int64_t>(options.alibi_slopes.size()) != heads) {
    internal::Fail("options.alibi_slopes has ", options.alibi_slopes.size(),
                   " values but must have one per query head (", heads, ")");
  }
  if (!options.sinks.empty() && static_cast<std::int64_t>(options.sinks.size()) != heads) {
    internal::Fail("options.sinks has ", options.sinks.size(),
                   " values but must have one per query head (", heads, ")");
  }
}

}  // namespace

void UlyssesForward(MPI_Comm user_comm, const TensorView& query, const TensorView& key,
                    const TensorView& value, const MutableTensorView& out,
                    const MutableTensorView* lse, const Options& options, SequenceLayout layout) {
  const char* kFunction = "UlyssesForward";
  dist::CheckMpiReady(user_comm, Progress::kNone, kFunction);
  const dist::Comm comm(user_comm);
  const dist::Agreed agreed = dist::Agree(comm, kFunction, layout, [&] {
    const dist::Shard s = dist::CheckShard(kFunction, query, key, value);
    dist::CheckOptions(kFunction, options, /*ulysses=*/true);
    CheckPerHead(options, s.heads);
    const std::vector<TensorView> inputs = {query, key, value};
    const std::vector<const char*> names = {"query", "key", "value"};
    dist::CheckOutput("out", out, {s.batch, s.heads, s.len, s.v_dim}, inputs, names);
    if (lse != nullptr) {
      dist::CheckOutput("lse", *lse, {s.batch, s.heads, s.len}, inputs, names);
      if (internal::Overlaps(out.data, out.dtype, out.layout, lse->data, lse->dtype, lse->layout))
        internal::Fail("lse overlaps out");
    }
    return s;
  });
  const dist::Shard& s = agreed.shard;
  dist::CheckHeadsDivide(kFunction, s, comm.size());
  const Geometry g = MakeGeometry(comm, agreed, layout);
  const std::int64_t heads = s.heads / g.world, kv_heads = s.kv_heads / g.world;
  const std::vector<float> q = SequenceToHeads(comm, g, query);
  const std::vector<float> k = SequenceToHeads(comm, g, key);
  const std::vector<float> v = SequenceToHeads(comm, g, value);
  std::vector<float> o(static_cast<std::size_t>(s.batch * heads * g.total * s.v_dim));
  std::vector<float> l(static_cast<std::size_t>(s.batch * heads * g.total));
  MutableTensorView l_view(l.data(), DType::kFloat32,
                           Layout::Contiguous({s.batch, heads, g.total}));
  Forward(dist::Block(q.data(), s.batch, heads, g.total, s.head_dim),
          dist::Block(k.data(), s.batch, kv_heads, g.total, s.head_dim),
          dist::Block(v.data(), s.batch, kv_heads, g.total, s.v_dim),
          dist::MutableBlock(o.data(), s.batch, heads, g.total, s.v_dim), l_view,
          GroupOptions(options, s.heads, g.rank, g.world));
  HeadsToSequence(comm, g, o, out);
  if (lse != nullptr) HeadsToSequence(comm, g, l, dist::WithUnitWidth(*lse));
}

void UlyssesBackward(MPI_Comm user_comm, const TensorView& query, const TensorView& key,
                     const TensorView& value, const TensorView& out, const TensorView& lse,
                     const TensorView& grad_out, const MutableTensorView& grad_query,
                     const MutableTensorView& grad_key, const MutableTensorView& grad_value,
                     const Options& options, SequenceLayout layout) {
  const char* kFunction = "UlyssesBackward";
  dist::CheckMpiReady(user_comm, Progress::kNone, kFunction);
  const dist::Comm comm(user_comm);
  const dist::Agreed agreed = dist::Agree(comm, kFunction, layout, [&] {
    const dist::Shard s = dist::CheckShard(kFunction, query, key, value);
    dist::CheckOptions(kFunction, options, /*ulysses=*/true);
    CheckPerHead(options, s.heads);
    dist::CheckBackwardTensors(s, query, key, value, out, lse, grad_out, grad_query, grad_key,
                               grad_value);
    return s;
  });
  const dist::Shard& s = agreed.shard;
  dist::CheckHeadsDivide(kFunction, s, comm.size());
  const Geometry g = MakeGeometry(comm, agreed, layout);
  const std::int64_t heads = s.heads / g.world, kv_heads = s.kv_heads / g.world, L = g.total;
  const std::vector<float> q = SequenceToHeads(comm, g, query);
  const std::vector<float> k = SequenceToHeads(comm, g, key);
  const std::vector<float> v = SequenceToHeads(comm, g, value);
  const std::vector<float> o = SequenceToHeads(comm, g, out);
  const std::vector<float> d_o = SequenceToHeads(comm, g, grad_out);
  const std::vector<float> l = SequenceToHeads(comm, g, dist::WithUnitWidth(lse));
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  Backward(dist::Block(q.data(), s.batch, heads, L, s.head_dim),
           dist::Block(k.data(), s.batch, kv_heads, L, s.head_dim),
           dist::Block(v.data(), s.batch, kv_heads, L, s.v_dim),
           dist::Block(o.data(), s.batch, heads, L, s.v_dim),
           TensorView(l.data(), DType::kFloat32, Layout::Contiguous({s.batch, heads, L})),
           dist::Block(d_o.data(), s.batch, heads, L, s.v_dim),
           dist::MutableBlock(dq.data(), s.batch, heads, L, s.head_dim),
           dist::MutableBlock(dk.data(), s.batch, kv_heads, L, s.head_dim),
           dist::MutableBlock(dv.data(), s.batch, kv_heads, L, s.v_dim),
           GroupOptions(options, s.heads, g.rank, g.world));
  HeadsToSequence(comm, g, dq, grad_query);
  HeadsToSequence(comm, g, dk, grad_key);
  HeadsToSequence(comm, g, dv, grad_value);
}

}  // namespace sdpa

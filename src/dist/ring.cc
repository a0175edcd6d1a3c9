// Ring attention (Liu, Zaharia, Abbeel 2023), forward and backward, over MPI.
//
// Legend: P ranks, this rank r holds c = lengths[r] rows; block s = the K/V of rank s
// (B·Hkv·L_s·(D + Dv) float32, K then V, packed so one message carries it).
//
// Forward, step t = 0 .. P-1 (src = (r - t) mod P is the block held):
//   1. post MPI_Irecv of block src-1 from r-1 and MPI_Isend of block src to r+1 (not at t = P-1);
//   2. compute the partial of this rank's queries over block src with Forward (with lse);
//      which rows and keys, and whether causal, is the step's Case (below);
//   3. merge it into the running (out, lse) by log-sum-exp (core/merge.h), float32;
//   4. wait for the messages (progress: sdpa::Progress), swap the buffers.
// Then the sinks join as one more partial (lse = sink, out = 0) and the result is stored.
//
// Backward (FlashAttention-2 per block with the final lse, so no merge): the same K/V ring; the
// dK/dV accumulator of block src travels with it one step behind: at step t this rank adds its
// contribution to the accumulator it received for block src (from r-1, which held src at step
// t-1) and sends it on to r+1. After P steps the accumulator of block r has come back to r with
// every rank's contribution. dQ stays local. D_i = rowsum(dO·O) is recomputed by each block's
// Backward call (c·Dv per call, negligible).
//
// Cases with causal masking (global positions decide; the sequence is square):
//   contiguous  src == r: causal square block; src < r: every key is earlier, dense; src > r:
//               every key is later, nothing to compute (the ring's imbalance: rank P-1 works at
//               every step, rank 0 once).
//   zigzag      rank r holds chunks r and 2P-1-r (h = c/2 rows each). src == r: causal over the
//               local block (positions increase with the local index); src < r: both query
//               chunks see all of src's first chunk and none of its second: dense,
//               Q × K[:h]; src > r: only the second query chunk sees src, all of it: dense,
//               Q[h:] × K. Every off-diagonal step is half a block on every rank.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "api/validate.h"
#include "dist/check.h"
#include "dist/comm.h"
#include "dist/ring_steps.h"
#include "dist/views.h"
#include "sdpa/attention.h"
#include "sdpa/distributed.h"

namespace sdpa {
namespace {

constexpr int kTagKv = 1, kTagDkv = 2;

dist::RingGeometry MakeRing(const dist::Comm& comm, const dist::Agreed& agreed,
                            const Options& options, SequenceLayout layout) {
  return dist::MakeGeometry(comm.rank(), comm.size(), agreed.shard, agreed.lengths, options,
                            layout);
}

void ForwardImpl(MPI_Comm user_comm, const TensorView& query, const TensorView& key,
                 const TensorView& value, const MutableTensorView& out,
                 const MutableTensorView* lse, const Options& options,
                 const Distribution& distribution) {
  const char* kFunction = "RingForward";
  const auto start = std::chrono::steady_clock::now();
  dist::CheckMpiReady(user_comm, distribution.progress, kFunction);
  const dist::Comm comm(user_comm);
  const dist::Agreed agreed = dist::Agree(comm, kFunction, distribution.layout, [&] {
    const dist::Shard s = dist::CheckShard(kFunction, query, key, value);
    dist::CheckOptions(kFunction, options, /*ulysses=*/false);
    if (!options.sinks.empty() && static_cast<std::int64_t>(options.sinks.size()) != s.heads) {
      internal::Fail("options.sinks has ", options.sinks.size(), " values but must have one per ",
                     "query head (", s.heads, ")");
    }
    const std::vector<TensorView> inputs = {query, key, value};
    const std::vector<const char*> names = {"query", "key", "value"};
    dist::CheckOutput("out", out, {s.batch, s.heads, s.len, s.v_dim}, inputs, names);
    if (lse != nullptr) {
      dist::CheckOutput("lse", *lse, {s.batch, s.heads, s.len}, inputs, names);
      if (internal::Overlaps(out.data, out.dtype, out.layout, lse->data, lse->dtype, lse->layout))
        internal::Fail("lse overlaps out");
    }
    dist::CountOf(s.batch * s.kv_heads * s.len * (s.head_dim + s.v_dim), "key and value");
    return s;
  });
  const dist::RingGeometry ring = MakeRing(comm, agreed, options, distribution.layout);

  // Double-buffered K/V blocks; the running (out, lse) and one step's partial.
  dist::Buffer cur = dist::MakeBuffer(static_cast<std::size_t>(ring.KvSize(ring.max_len)));
  dist::Buffer nxt = dist::MakeBuffer(cur->size());
  dist::PackBlock(ring, key, value, cur->data());
  dist::ForwardState state(ring);

  RingProfile profile;
  profile.steps.resize(static_cast<std::size_t>(ring.world));
  dist::Requests requests;
  dist::StepRunner runner(distribution.progress, options.interrupt);
  for (int t = 0; t < ring.world; ++t) {
    const int src = (ring.rank - t + ring.world) % ring.world;
    if (t + 1 < ring.world) {  // pass block src on, receive block src - 1
      const int next_src = (src - 1 + ring.world) % ring.world;
      requests.Recv(nxt->data(), ring.KvSize(ring.Len(next_src)), comm.prev(), kTagKv, comm.get());
      requests.Send(cur, ring.KvSize(ring.Len(src)), comm.next(), kTagKv, comm.get());
    }
    runner.Run(requests, profile.steps[static_cast<std::size_t>(t)],
               [&](const std::function<bool()>& hook) {
                 dist::ForwardStep(ring, query, cur->data(), src, options, hook, state);
               });
    std::swap(cur, nxt);
  }
  dist::FinishForward(ring, options, state, out, lse);
  if (distribution.profile != nullptr) {
    profile.total_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    *distribution.profile = profile;
  }
}

}  // namespace

void RingForward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                 const TensorView& value, const MutableTensorView& out,
                 const MutableTensorView& lse, const Options& options,
                 const Distribution& distribution) {
  ForwardImpl(comm, query, key, value, out, &lse, options, distribution);
}

void RingForward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                 const TensorView& value, const MutableTensorView& out, const Options& options,
                 const Distribution& distribution) {
  ForwardImpl(comm, query, key, value, out, nullptr, options, distribution);
}

namespace {

// grad_sinks[h] = −Σ_{b, i} exp(sink_h − lse_i) · D_i with D_i = Σ_e dO_ie · O_ie, over every
// rank's rows: the local sum, then one MPI_Allreduce (the backward of the sink partial).
void SinkGradients(const dist::Comm& comm, const dist::Shard& s, const TensorView& out,
                   const TensorView& lse, const TensorView& grad_out, const Options& options,
                   const MutableTensorView& grad_sinks) {
  std::vector<double> sums(static_cast<std::size_t>(s.heads), 0.0);
  const float* o = static_cast<const float*>(out.data);
  const float* d_o = static_cast<const float*>(grad_out.data);
  const float* l = static_cast<const float*>(lse.data);
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const double sink = options.sinks[static_cast<std::size_t>(h)];
      if (sink == -std::numeric_limits<double>::infinity()) continue;
      for (std::int64_t i = 0; i < s.len; ++i) {
        const double row_lse = l[b * lse.stride(0) + h * lse.stride(1) + i * lse.stride(2)];
        if (row_lse == -std::numeric_limits<double>::infinity()) continue;
        double delta = 0;
        for (std::int64_t e = 0; e < s.v_dim; ++e) {
          delta += static_cast<double>(o[b * out.stride(0) + h * out.stride(1) + i * out.stride(2) +
                                         e * out.stride(3)]) *
                   d_o[b * grad_out.stride(0) + h * grad_out.stride(1) + i * grad_out.stride(2) +
                       e * grad_out.stride(3)];
        }
        sums[static_cast<std::size_t>(h)] -= std::exp(sink - row_lse) * delta;
      }
    }
  }
  std::vector<double> total(sums.size());
  dist::Check(MPI_Allreduce(sums.data(), total.data(), static_cast<int>(sums.size()), MPI_DOUBLE,
                            MPI_SUM, comm.get()),
              "MPI_Allreduce");
  float* g = static_cast<float*>(grad_sinks.data);
  for (std::int64_t h = 0; h < s.heads; ++h) {
    g[h * grad_sinks.stride(0)] = static_cast<float>(total[static_cast<std::size_t>(h)]);
  }
}

void BackwardImpl(MPI_Comm user_comm, const TensorView& query, const TensorView& key,
                  const TensorView& value, const TensorView& out, const TensorView& lse,
                  const TensorView& grad_out, const MutableTensorView& grad_query,
                  const MutableTensorView& grad_key, const MutableTensorView& grad_value,
                  const MutableTensorView* grad_sinks, const Options& options,
                  const Distribution& distribution) {
  const char* kFunction = "RingBackward";
  const auto start = std::chrono::steady_clock::now();
  dist::CheckMpiReady(user_comm, distribution.progress, kFunction);
  const dist::Comm comm(user_comm);
  const dist::Agreed agreed = dist::Agree(comm, kFunction, distribution.layout, [&] {
    const dist::Shard s = dist::CheckShard(kFunction, query, key, value);
    dist::CheckOptions(kFunction, options, /*ulysses=*/false);
    dist::CheckBackwardTensors(s, query, key, value, out, lse, grad_out, grad_query, grad_key,
                               grad_value);
    if (grad_sinks != nullptr) {
      if (options.sinks.empty()) internal::Fail("grad_sinks is given but options.sinks is empty");
      if (static_cast<std::int64_t>(options.sinks.size()) != s.heads) {
        internal::Fail("options.sinks has ", options.sinks.size(),
                       " values but must have one per query head (", s.heads, ")");
      }
      dist::CheckOutput("grad_sinks", *grad_sinks, {s.heads},
                        {query, key, value, out, lse, grad_out, TensorView(grad_query),
                         TensorView(grad_key), TensorView(grad_value)},
                        {"query", "key", "value", "out", "lse", "grad_out", "grad_query",
                         "grad_key", "grad_value"});
    }
    dist::CountOf(s.batch * s.kv_heads * s.len * (s.head_dim + s.v_dim), "key and value");
    return s;
  });
  const dist::RingGeometry ring = MakeRing(comm, agreed, options, distribution.layout);
  const dist::Shard& s = ring.shard;
  const std::int64_t c = s.len;

  dist::Buffer cur = dist::MakeBuffer(static_cast<std::size_t>(ring.KvSize(ring.max_len)));
  dist::Buffer nxt = dist::MakeBuffer(cur->size());
  dist::Buffer dkv_send = dist::MakeBuffer(cur->size());
  std::vector<float> dkv_recv(cur->size());
  dist::PackBlock(ring, key, value, cur->data());
  dist::BackwardState state(ring);

  RingProfile profile;
  profile.steps.resize(static_cast<std::size_t>(ring.world));
  dist::Requests requests;
  dist::StepRunner runner(distribution.progress, options.interrupt);
  for (int t = 0; t < ring.world; ++t) {
    const int src = (ring.rank - t + ring.world) % ring.world;
    const std::int64_t n = ring.Len(src);
    if (t + 1 < ring.world) {
      const int next_src = (src - 1 + ring.world) % ring.world;
      requests.Recv(nxt->data(), ring.KvSize(ring.Len(next_src)), comm.prev(), kTagKv, comm.get());
      requests.Send(cur, ring.KvSize(n), comm.next(), kTagKv, comm.get());
    }
    runner.Run(requests, profile.steps[static_cast<std::size_t>(t)],
               [&](const std::function<bool()>& hook) {
                 dist::BackwardStep(ring, query, out, lse, grad_out, cur->data(), src, options,
                                    hook, state);
               });
    // The accumulator of block src: what r-1 sent (it held src at step t-1) plus this rank's
    // part; then on to r+1, and receive the accumulator of block src-1 from r-1.
    const std::int64_t size = ring.KvSize(n);
    for (std::int64_t x = 0; x < size; ++x) {
      const std::size_t u = static_cast<std::size_t>(x);
      (*dkv_send)[u] = t == 0 ? state.dkv_part[u] : dkv_recv[u] + state.dkv_part[u];
    }
    const int next_src = (src - 1 + ring.world) % ring.world;
    requests.Recv(dkv_recv.data(), ring.KvSize(ring.Len(next_src)), comm.prev(), kTagDkv,
                  comm.get());
    requests.Send(dkv_send, size, comm.next(), kTagDkv, comm.get());
    std::swap(cur, nxt);
  }
  // The accumulator of this rank's own block has come back around the ring.
  const auto waited = std::chrono::steady_clock::now();
  requests.Wait();
  profile.steps.back().wait_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - waited).count();
  profile.steps.back().bytes_sent += requests.TakeBytesSent();
  dist::Unpack(state.dq.data(), grad_query);
  dist::Unpack(dkv_recv.data(), grad_key);
  dist::Unpack(dkv_recv.data() + s.batch * s.kv_heads * c * s.head_dim, grad_value);
  if (grad_sinks != nullptr) SinkGradients(comm, s, out, lse, grad_out, options, *grad_sinks);
  if (distribution.profile != nullptr) {
    profile.total_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    *distribution.profile = profile;
  }
}

}  // namespace

void RingBackward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                  const TensorView& value, const TensorView& out, const TensorView& lse,
                  const TensorView& grad_out, const MutableTensorView& grad_query,
                  const MutableTensorView& grad_key, const MutableTensorView& grad_value,
                  const Options& options, const Distribution& distribution) {
  BackwardImpl(comm, query, key, value, out, lse, grad_out, grad_query, grad_key, grad_value,
               nullptr, options, distribution);
}

void RingBackward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                  const TensorView& value, const TensorView& out, const TensorView& lse,
                  const TensorView& grad_out, const MutableTensorView& grad_query,
                  const MutableTensorView& grad_key, const MutableTensorView& grad_value,
                  const MutableTensorView& grad_sinks, const Options& options,
                  const Distribution& distribution) {
  BackwardImpl(comm, query, key, value, out, lse, grad_out, grad_query, grad_key, grad_value,
               &grad_sinks, options, distribution);
}

}  // namespace sdpa

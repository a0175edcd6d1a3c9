// One step of ring attention on one rank, without communication: what the step computes (its
// Case), the block call, the merge into the running result, and the backward's block gradients.
// ring.cc runs these between its MPI messages; tests/dist/simulated_ring_test.cc runs the same
// steps for P virtual ranks in one process, so the ring's math is tested without MPI.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "sdpa/options.h"
#include "sdpa/sequence_layout.h"
#include "sdpa/tensor.h"

namespace sdpa::dist {

// A rank's shard geometry, as every rank must agree on it (len may differ with contiguous).
struct Shard {
  std::int64_t batch = 0, heads = 0, kv_heads = 0, len = 0, head_dim = 0, v_dim = 0;
};

// What one step computes: query rows [q_begin, q_end) against keys [k_begin, k_end) of the block,
// causal over local indices or dense. Empty when there is nothing to compute.
struct Case {
  std::int64_t q_begin = 0, q_end = 0, k_begin = 0, k_end = 0;
  Causal causal = Causal::kNone;
  bool empty() const { return q_begin >= q_end || k_begin >= k_end; }
};

// The ring as one rank sees it. A block (K/V of one rank) is packed as K [B, Hkv, n, D] then
// V [B, Hkv, n, Dv], float32, contiguous.
struct RingGeometry {
  int rank = 0, world = 1;
  Shard shard;
  std::vector<std::int64_t> lengths;  // every rank's rows
  std::int64_t max_len = 0;
  bool causal = false;
  SequenceLayout layout = SequenceLayout::kZigzag;

  std::int64_t KvSize(std::int64_t n) const;
  std::int64_t Len(int s) const { return lengths[static_cast<std::size_t>(s)]; }
  TensorView Keys(const float* kv, std::int64_t n) const;
  TensorView Values(const float* kv, std::int64_t n) const;
  // The step holding the block of rank `src` (ring.cc's header has the case split).
  Case StepCase(int src) const;
};

RingGeometry MakeGeometry(int rank, int world, const Shard& shard,
                          const std::vector<std::int64_t>& lengths, const Options& options,
                          SequenceLayout layout);

// This rank's K and V packed as one block.
void PackBlock(const RingGeometry& g, const TensorView& key, const TensorView& value, float* kv);

// The options of one block call: the caller's, with the step's causal rule, no sinks (they join
// once, at the end) and `hook` as the interrupt.
Options BlockOptions(const Options& options, const Case& k, const std::function<bool()>& hook);

// The running result of the forward, float32: out [B, H, c, Dv] and lse [B, H, c], and one
// step's partial.
struct ForwardState {
  std::vector<float> acc, acc_lse, part, part_lse;
  explicit ForwardState(const RingGeometry& g);
};
// Forward with lse of this rank's queries over block src (packed in kv), merged into state.
void ForwardStep(const RingGeometry& g, const TensorView& query, const float* kv, int src,
                 const Options& block_options_base, const std::function<bool()>& hook,
                 ForwardState& state);
// The sinks as one more partial each (lse = sink, out = 0), then out and lse (lse may be null).
void FinishForward(const RingGeometry& g, const Options& options, const ForwardState& state,
                   const MutableTensorView& out, const MutableTensorView* lse);

// The backward's float32 dQ and one step's scratch; dkv_part is this rank's dK|dV contribution
// to the block of the step (zero outside the step's keys).
struct BackwardState {
  std::vector<float> dq, dq_part, dkv_part;
  explicit BackwardState(const RingGeometry& g);
};
void BackwardStep(const RingGeometry& g, const TensorView& query, const TensorView& out,
                  const TensorView& lse, const TensorView& grad_out, const float* kv, int src,
                  const Options& block_options_base, const std::function<bool()>& hook,
                  BackwardState& state);

}  // namespace sdpa::dist

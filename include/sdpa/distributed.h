// Attention over one sequence split across MPI ranks (sequence / context parallelism), exact:
// every rank's result equals the single-process Forward / Backward on the full sequence,
// restricted to the rows it holds. Target sdpa::mpi (CMake option SDPA_WITH_MPI); the core
// library never needs MPI. docs/distributed.md has the algorithms, the cost model and
// measurements.
//
// Each rank passes its shard of the sequence, [batch, heads, local_len, dim]:
//   query [B, H, c, D], key [B, Hkv, c, D], value [B, Hkv, c, Dv], out [B, H, c, Dv],
//   lse [B, H, c], grad_* shaped like their input; all float32, rank 4, any strides.
// Which global positions a rank's rows hold is its SequenceLayout:
//   kContiguous  rank r holds positions [o_r, o_r + c_r) in rank order (o_r = Σ_{s<r} c_s); shards
//                may have different lengths, including 0 (ShardLength gives numpy.array_split's)
//   kZigzag      (ring-flash-attention, Megatron "162534") the sequence in 2P equal chunks, rank r
//                holds chunk r then chunk 2P-1-r: causal work is equal on every rank. Needs
//                L % 2P == 0 (every shard the same even length).
// ShardSequence / PlaceShard (sdpa/sequence_layout.h, no MPI needed) move between a full sequence
// and a rank's shard in either layout.
//
// RingForward / RingBackward: ring attention (Liu et al. 2023). Queries stay; K/V blocks travel
// rank r -> r+1 while the current block computes (MPI_Irecv / MPI_Isend, double buffered); the
// partial results are merged by log-sum-exp (sdpa/merge.h). The backward circulates the dK/dV
// accumulators, in float32, on a second channel one step behind K/V, so they arrive on their owner.
// Supported options: scale, causal (kTopLeft and kBottomRight are the same here: the global
// sequence is square), GQA/MQA, Dv != D, softcap, sinks (the backward takes the lse the forward
// returned; grad_sinks from its overload), backend, interrupt. Refused with sdpa::Error, because
// a block of keys from another rank cannot express them through Forward's options: mask,
// window, alibi_slopes, varlen (cu_seqlens), dropout and custom score/mask functions (Ulysses
// takes window, ALiBi and sinks).
//
// UlyssesForward / UlyssesBackward: DeepSpeed-Ulysses. Two all-to-alls (MPI_Alltoallv) turn
// sequence shards into head shards (H/P query heads and Hkv/P kv heads of the full sequence), an
// unchanged local Forward / Backward runs, and the result goes back. Needs heads % P == 0 and
// kv_heads % P == 0. Supports every option ring does plus window, alibi_slopes and sinks with
// grad_sinks not returned; refuses mask, varlen, dropout and custom functions.
//
// Contract of every call (all are collective over `comm`):
//   * MPI is initialised by the caller (never by the library); `comm` is duplicated for the call,
//     so its messages never mix with the caller's. Progress::kThread needs at least
//     MPI_THREAD_SERIALIZED.
//   * every rank passes the same options, batch, heads, kv_heads, head_dim, v_dim and layout;
//     arguments are checked on every rank and the ranks agree before any message: if any rank's
//     arguments are invalid, every rank throws sdpa::Error (the rank at fault with the message
//     naming the argument, the others saying which rank failed), so no rank is left waiting.
//   * an MPI call that fails after that throws sdpa::MpiError; an interrupt (Options::interrupt)
//     throws sdpa::Interrupted on the rank that saw it. Either leaves the other ranks of the call
//     waiting in MPI: the caller should MPI_Abort.
//   * results are bitwise identical run to run for a fixed P and thread count (fixed order).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "sdpa/options.h"
#include "sdpa/sequence_layout.h"
#include "sdpa/tensor.h"

namespace sdpa {

// How the K/V (and dK/dV) messages in flight progress while a block computes. Open MPI does not
// progress messages in the background: without MPI calls during the compute, a large message
// moves only when the step waits for it.
//   kPoll    MPI_Testall on the step's requests about every 2 ms, from the calling thread (the
//            hook of Options::interrupt, chained with the caller's). The default.
//   kThread  one communication thread per call waits in MPI_Waitall during each step's compute
//            (MPI_THREAD_SERIALIZED or better). It spins inside MPI, taking a core.
//   kNone    no MPI call during the compute: the baseline the benchmark compares with.
enum class Progress { kPoll, kThread, kNone };

// Time spent per ring step, filled when Distribution::profile is set.
struct RingProfile {
  struct Step {
    double compute_seconds = 0;  // block attention and merge (forward) or block gradients
    double wait_seconds = 0;     // waiting for this step's messages after the compute
    std::int64_t bytes_sent = 0;
  };
  std::vector<Step> steps;  // one per step: P for forward and backward
  double total_seconds = 0;
};

struct Distribution {
  Distribution(SequenceLayout layout_ = SequenceLayout::kZigzag)  // NOLINT: implicit on purpose
      : layout(layout_) {}
  SequenceLayout layout;
  Progress progress = Progress::kPoll;
  RingProfile* profile = nullptr;  // not owned; cleared and filled by ring calls
};

// An MPI call failed (its error string and code in what()).
class MpiError : public std::runtime_error {
 public:
  explicit MpiError(const std::string& message) : std::runtime_error(message) {}
};

void RingForward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                 const TensorView& value, const MutableTensorView& out,
                 const MutableTensorView& lse, const Options& options = {},
                 const Distribution& distribution = {});
void RingForward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                 const TensorView& value, const MutableTensorView& out, const Options& options = {},
                 const Distribution& distribution = {});
// out and lse are the shard's results of RingForward (lse including the sinks when set).
void RingBackward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                  const TensorView& value, const TensorView& out, const TensorView& lse,
                  const TensorView& grad_out, const MutableTensorView& grad_query,
                  const MutableTensorView& grad_key, const MutableTensorView& grad_value,
                  const Options& options = {}, const Distribution& distribution = {});
// Same, also writing grad_sinks [heads] float32: ∂L/∂options.sinks summed over the batch and every
// rank's rows (the same value on every rank). options.sinks must be set.
void RingBackward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                  const TensorView& value, const TensorView& out, const TensorView& lse,
                  const TensorView& grad_out, const MutableTensorView& grad_query,
                  const MutableTensorView& grad_key, const MutableTensorView& grad_value,
                  const MutableTensorView& grad_sinks, const Options& options,
                  const Distribution& distribution = {});

// lse may be null.
void UlyssesForward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                    const TensorView& value, const MutableTensorView& out,
                    const MutableTensorView* lse, const Options& options = {},
                    SequenceLayout layout = SequenceLayout::kContiguous);
void UlyssesBackward(MPI_Comm comm, const TensorView& query, const TensorView& key,
                     const TensorView& value, const TensorView& out, const TensorView& lse,
                     const TensorView& grad_out, const MutableTensorView& grad_query,
                     const MutableTensorView& grad_key, const MutableTensorView& grad_value,
                     const Options& options = {},
                     SequenceLayout layout = SequenceLayout::kContiguous);

}  // namespace sdpa

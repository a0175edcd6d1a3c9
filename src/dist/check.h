// Validation of the distributed entry points: each rank checks its own arguments, then the ranks
// agree (one MPI_Allgather) before any other message, so that a bad argument on one rank makes
// every rank throw instead of leaving the others waiting in the ring.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "dist/comm.h"
#include "dist/ring_steps.h"
#include "sdpa/distributed.h"
#include "sdpa/options.h"
#include "sdpa/tensor.h"

namespace sdpa::dist {

// What the ranks agreed on.
struct Agreed {
  Shard shard;                        // this rank's
  std::vector<std::int64_t> lengths;  // every rank's len
};

// Checks query, key and value of a shard: rank 4, float32, consistent sizes; the local key and
// value shards as long as the query's.
Shard CheckShard(const char* function, const TensorView& query, const TensorView& key,
                 const TensorView& value);
// Checks the options the algorithm supports (`ulysses` takes window, ALiBi).
void CheckOptions(const char* function, const Options& options, bool ulysses);
// Checks a float32 rank-`shape.size()` tensor of exactly `shape`: an output (`writable`: no
// self-overlap, no overlap with `inputs`) or an extra input.
void CheckTensor(const char* name, const void* data, DType dtype, const Layout& layout,
                 const std::vector<std::int64_t>& shape);
void CheckOutput(const char* name, const MutableTensorView& view,
                 const std::vector<std::int64_t>& shape, const std::vector<TensorView>& inputs,
                 const std::vector<const char*>& input_names);

// The tensors of a backward call on shard `s`: out, lse and grad_out of the right shapes; the
// three gradients of the inputs' shapes, overlapping no input and no other gradient.
void CheckBackwardTensors(const Shard& s, const TensorView& query, const TensorView& key,
                          const TensorView& value, const TensorView& out, const TensorView& lse,
                          const TensorView& grad_out, const MutableTensorView& grad_query,
                          const MutableTensorView& grad_key, const MutableTensorView& grad_value);

// Runs `local` (which throws sdpa::Error for a bad argument), then agrees with every rank: the
// same batch, heads, kv_heads, head_dim, v_dim and layout; with zigzag every len equal and even.
// Throws the same kind of error on every rank when any rank failed.
Agreed Agree(const Comm& comm, const char* function, SequenceLayout layout,
             const std::function<Shard()>& local);

// Ulysses: heads % P == 0 and kv_heads % P == 0 (else sdpa::Error, on every rank alike).
void CheckHeadsDivide(const char* function, const Shard& shard, int world);

}  // namespace sdpa::dist

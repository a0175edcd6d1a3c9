// How one sequence is split across the ranks of a distributed attention call
// (sdpa/distributed.h), and copies between a full sequence and a rank's shard. No MPI: these are
// part of sdpa::mpi but need no communicator.
//   kContiguous  rank r holds the r-th run of rows (ShardLength: numpy.array_split's lengths)
//   kZigzag      the sequence in 2P equal chunks; rank r holds chunk r, then chunk 2P-1-r
#pragma once

#include <cstdint>
#include <vector>

#include "sdpa/tensor.h"

namespace sdpa {

enum class SequenceLayout { kContiguous, kZigzag };
const char* SequenceLayoutName(SequenceLayout layout);  // "contiguous", "zigzag"

// Rows of a sequence of seq_len on `rank` of `world`: contiguous splits like numpy.array_split
// (the first seq_len % world ranks one row more); zigzag needs seq_len % (2·world) == 0.
std::int64_t ShardLength(SequenceLayout layout, std::int64_t seq_len, int rank, int world);
// The global position of each of the shard's rows, in order.
std::vector<std::int64_t> ShardPositions(SequenceLayout layout, std::int64_t seq_len, int rank,
                                         int world);
// Copies `rank`'s shard out of `full` into `shard`: dimension `seq_dim` (negative counts from the
// end: -2 for [.., seq, dim] operands, -1 for lse [.., seq]) holds the sequence, of seq_len in
// `full` and ShardLength in `shard`; the other dimensions are equal. Same dtype (any), rank 1-4.
void ShardSequence(const TensorView& full, const MutableTensorView& shard, SequenceLayout layout,
                   int rank, int world, int seq_dim = -2);
// The inverse: writes `shard`'s rows to their positions in `full`.
void PlaceShard(const TensorView& shard, const MutableTensorView& full, SequenceLayout layout,
                int rank, int world, int seq_dim = -2);

}  // namespace sdpa

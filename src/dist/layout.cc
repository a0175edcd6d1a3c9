// Sequence layouts (sdpa/distributed.h): which global positions each rank's rows hold, and
// copies between a full sequence and a shard. No communication.
#include "dist/layout.h"

#include <cstring>
#include <string>

#include "api/validate.h"
#include "core/fail.h"

namespace sdpa {
namespace dist {

std::vector<std::int64_t> Offsets(const std::vector<std::int64_t>& lengths) {
  std::vector<std::int64_t> offsets(lengths.size() + 1, 0);
  for (std::size_t s = 0; s < lengths.size(); ++s) offsets[s + 1] = offsets[s] + lengths[s];
  return offsets;
}

std::vector<std::int64_t> Positions(SequenceLayout layout, const std::vector<std::int64_t>& lengths,
                                    int rank) {
  const std::int64_t c = lengths[static_cast<std::size_t>(rank)];
  std::vector<std::int64_t> pos(static_cast<std::size_t>(c));
  if (layout == SequenceLayout::kContiguous) {
    const std::int64_t offset = Offsets(lengths)[static_cast<std::size_t>(rank)];
    for (std::int64_t i = 0; i < c; ++i) pos[static_cast<std::size_t>(i)] = offset + i;
    return pos;
  }
  // zigzag: chunks of c/2; rank r holds chunk r, then chunk 2P-1-r
  const std::int64_t half = c / 2, world = static_cast<std::int64_t>(lengths.size());
  for (std::int64_t i = 0; i < c; ++i) {
    const std::int64_t chunk = i < half ? rank : 2 * world - 1 - rank;
    pos[static_cast<std::size_t>(i)] = chunk * half + i % half;
  }
  return pos;
}

}  // namespace dist

const char* SequenceLayoutName(SequenceLayout layout) {
  return layout == SequenceLayout::kZigzag ? "zigzag" : "contiguous";
}

namespace {

void CheckWorld(SequenceLayout layout, std::int64_t seq_len, int rank, int world) {
  if (world < 1) internal::Fail("world is ", world, " but must be >= 1");
  if (rank < 0 || rank >= world) {
    internal::Fail("rank is ", rank, " but must be in [0, ", world, ")");
  }
  if (seq_len < 0) internal::Fail("seq_len is ", seq_len, " but must be >= 0");
  if (layout == SequenceLayout::kZigzag && seq_len % (2 * static_cast<std::int64_t>(world)) != 0) {
    internal::Fail("seq_len is ", seq_len,
                   " but the zigzag layout needs a multiple of 2·world = ", 2 * world,
                   " (2·world equal chunks)");
  }
}

// Copies between `full` and `shard` along seq_dim; to_shard says which way.
void Move(const void* src, const Layout& src_layout, void* dst, const Layout& dst_layout,
          DType dtype, SequenceLayout layout, int rank, int world, int seq_dim, bool to_shard,
          const char* full_name, const char* shard_name) {
  const Layout& full = to_shard ? src_layout : dst_layout;
  const Layout& shard = to_shard ? dst_layout : src_layout;
  const int r = full.rank;
  if (r < 1 || r > kMaxRank) internal::Fail(full_name, " has rank ", r, " but must be 1 to 4");
  if (shard.rank != r) {
    internal::Fail(shard_name, " has rank ", shard.rank, " but ", full_name, " has rank ", r);
  }
  const int d = seq_dim < 0 ? seq_dim + r : seq_dim;
  if (d < 0 || d >= r) {
    internal::Fail("seq_dim is ", seq_dim, " but ", full_name, " has rank ", r);
  }
  const std::int64_t seq_len = full.shape[d];
  CheckWorld(layout, seq_len, rank, world);
  const std::int64_t local = ShardLength(layout, seq_len, rank, world);
  for (int x = 0; x < r; ++x) {
    const std::int64_t want = x == d ? local : full.shape[x];
    if (shard.shape[x] != want) {
      internal::Fail(shard_name, ".shape[", x, "] is ", shard.shape[x], " but must be ", want,
                     x == d ? " (the shard's length)" : "");
    }
  }
  internal::CheckView(full_name, to_shard ? src : dst, dtype, full, r, r);
  internal::CheckView(shard_name, to_shard ? dst : src, dtype, shard, r, r);
  const std::vector<std::int64_t> pos = ShardPositions(layout, seq_len, rank, world);
  const std::int64_t count = shard.NumElements();
  const std::size_t size = DTypeSize(dtype);
  for (std::int64_t flat = 0; flat < count; ++flat) {
    std::int64_t rest = flat, full_off = 0, shard_off = 0;
    for (int x = r - 1; x >= 0; --x) {
      const std::int64_t i = rest % shard.shape[x];
      rest /= shard.shape[x];
      shard_off += i * shard.strides[x];
      full_off += (x == d ? pos[static_cast<std::size_t>(i)] : i) * full.strides[x];
    }
    const std::int64_t src_off = to_shard ? full_off : shard_off;
    const std::int64_t dst_off = to_shard ? shard_off : full_off;
    std::memcpy(static_cast<char*>(dst) + dst_off * static_cast<std::int64_t>(size),
                static_cast<const char*>(src) + src_off * static_cast<std::int64_t>(size), size);
  }
}

}  // namespace

std::int64_t ShardLength(SequenceLayout layout, std::int64_t seq_len, int rank, int world) {
  CheckWorld(layout, seq_len, rank, world);
  if (layout == SequenceLayout::kZigzag) return seq_len / world;
  return seq_len / world + (rank < seq_len % world ? 1 : 0);
}

std::vector<std::int64_t> ShardPositions(SequenceLayout layout, std::int64_t seq_len, int rank,
                                         int world) {
  std::vector<std::int64_t> lengths(static_cast<std::size_t>(world));
  for (int s = 0; s < world; ++s) {
    lengths[static_cast<std::size_t>(s)] = ShardLength(layout, seq_len, s, world);
  }
  return dist::Positions(layout, lengths, rank);
}

void ShardSequence(const TensorView& full, const MutableTensorView& shard, SequenceLayout layout,
                   int rank, int world, int seq_dim) {
  if (shard.dtype != full.dtype) {
    internal::FailDType("shard.dtype is ", DTypeName(shard.dtype), " but full.dtype is ",
                        DTypeName(full.dtype));
  }
  Move(full.data, full.layout, shard.data, shard.layout, full.dtype, layout, rank, world, seq_dim,
       /*to_shard=*/true, "full", "shard");
}

void PlaceShard(const TensorView& shard, const MutableTensorView& full, SequenceLayout layout,
                int rank, int world, int seq_dim) {
  if (shard.dtype != full.dtype) {
    internal::FailDType("shard.dtype is ", DTypeName(shard.dtype), " but full.dtype is ",
                        DTypeName(full.dtype));
  }
  Move(shard.data, shard.layout, full.data, full.layout, full.dtype, layout, rank, world, seq_dim,
       /*to_shard=*/false, "full", "shard");
}

}  // namespace sdpa

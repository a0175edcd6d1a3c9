// Global positions of each rank's rows for the algorithms, from the lengths every rank holds
// (gathered, so contiguous shards may differ in length).
#pragma once

#include <cstdint>
#include <vector>

#include "sdpa/sequence_layout.h"

namespace sdpa::dist {

// offsets[s] = Σ_{t<s} lengths[t], with offsets[P] = the sequence length.
std::vector<std::int64_t> Offsets(const std::vector<std::int64_t>& lengths);
// The global position of each row of `rank`'s shard. Zigzag assumes equal, even lengths (checked
// by the callers' validation).
std::vector<std::int64_t> Positions(SequenceLayout layout, const std::vector<std::int64_t>& lengths,
                                    int rank);

}  // namespace sdpa::dist

// Dropout decisions, shared by every backend so that they agree bit for bit.
//
// Element (b, h, i, j) of the attention probabilities (b the batch entry or varlen sequence, h
// the query head, i and j positions within the sequence) is kept iff the 32-bit word
// Philox4x32-10(counter = (j / 4, i, h, b), key = seed)[j % 4] is >= round(p·2^32). A
// counter-based generator (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11)
// has no state, so any thread, tile order or backend regenerates the same decision, and the
// backward needs nothing saved. Positions and indices must be < 2^32 (validated).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace sdpa::internal {

using PhiloxWords = std::array<std::uint32_t, 4>;

// Philox4x32 with 10 rounds (Random123's philox4x32_R(10, ...)).
inline PhiloxWords Philox4x32(PhiloxWords counter, std::uint32_t key0, std::uint32_t key1) {
  constexpr std::uint64_t kMul0 = 0xD2511F53, kMul1 = 0xCD9E8D57;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9, kWeyl1 = 0xBB67AE85;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = kMul0 * counter[0], p1 = kMul1 * counter[2];
    counter = {
        static_cast<std::uint32_t>(p1 >> 32) ^ counter[1] ^ key0, static_cast<std::uint32_t>(p1),
        static_cast<std::uint32_t>(p0 >> 32) ^ counter[3] ^ key1, static_cast<std::uint32_t>(p0)};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

class Dropout {
 public:
  Dropout(double p, std::uint64_t seed)
      : key0_(static_cast<std::uint32_t>(seed)),
        key1_(static_cast<std::uint32_t>(seed >> 32)),
        threshold_(static_cast<std::uint64_t>(std::llround(p * 4294967296.0))),
        scale_(1.0 / (1.0 - p)) {}

  // The four words deciding keys 4·(j / 4) .. 4·(j / 4) + 3 of row (b, h, i).
  PhiloxWords Words(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) const {
    return Philox4x32({static_cast<std::uint32_t>(j >> 2), static_cast<std::uint32_t>(i),
                       static_cast<std::uint32_t>(h), static_cast<std::uint32_t>(b)},
                      key0_, key1_);
  }
  bool Kept(std::uint32_t word) const { return word >= threshold_; }
  bool Kept(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) const {
    return Kept(Words(b, h, i, j)[static_cast<std::size_t>(j & 3)]);
  }
  // Kept probabilities are multiplied by this: 1 / (1 - p).
  double scale() const { return scale_; }
  // For vectorised generators (cpu/dropout-inl.h) that must match Words() and Kept().
  std::uint32_t key0() const { return key0_; }
  std::uint32_t key1() const { return key1_; }
  std::uint64_t threshold() const { return threshold_; }

 private:
  std::uint32_t key0_, key1_;
  std::uint64_t threshold_;
  double scale_;
};

}  // namespace sdpa::internal

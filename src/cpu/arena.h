// Per-thread scratch for the kernels, and the rounding they share. Not per target: the buffers
// hold plain numbers.
#pragma once

#include <hwy/aligned_allocator.h>

#include <cstdint>

namespace sdpa::cpu {

inline std::int64_t RoundUp(std::int64_t x, std::int64_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

// Per-thread buffers, grown on demand and kept for the next call.
template <typename T>
class Arena {
 public:
  // Returns `count` elements, 64-byte aligned, valid until the next Reset.
  T* Take(std::int64_t count) {
    T* p = base_.get() + used_;
    used_ += RoundUp(count, 64 / static_cast<std::int64_t>(sizeof(T)));
    return p;
  }
  void Reset(std::int64_t total) {
    if (total > capacity_) {
      base_ = hwy::AllocateAligned<T>(static_cast<std::size_t>(total));
      capacity_ = total;
    }
    used_ = 0;
  }
  // Elements Take(count) consumes.
  static std::int64_t Footprint(std::int64_t count) {
    return RoundUp(count, 64 / static_cast<std::int64_t>(sizeof(T)));
  }

 private:
  hwy::AlignedFreeUniquePtr<T[]> base_;
  std::int64_t capacity_ = 0, used_ = 0;
};

}  // namespace sdpa::cpu

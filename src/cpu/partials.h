// Partial results of key chunks (flash-decoding): for chunk s and output row g = (b·H + h)·Lq + i,
// the unnormalised O_s[g] (Dv values), the running max m_s[g] and sum l_s[g].
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

namespace sdpa::cpu {

template <typename T>
class Partials {
 public:
  void Allocate(std::int64_t splits, std::int64_t rows, std::int64_t v_dim) {
    rows_ = rows;
    v_dim_ = v_dim;
    o_.assign(static_cast<std::size_t>(splits * rows * v_dim), T(0));
    // A chunk no task writes (a varlen sequence with fewer keys) counts as empty.
    m_.assign(static_cast<std::size_t>(splits * rows), -std::numeric_limits<T>::infinity());
    l_.assign(static_cast<std::size_t>(splits * rows), T(0));
  }
  T* O(std::int64_t split, std::int64_t row) { return o_.data() + (split * rows_ + row) * v_dim_; }
  const T* O(std::int64_t split, std::int64_t row) const {
    return o_.data() + (split * rows_ + row) * v_dim_;
  }
  T* M(std::int64_t split, std::int64_t row) { return m_.data() + split * rows_ + row; }
  const T* M(std::int64_t split, std::int64_t row) const { return m_.data() + split * rows_ + row; }
  T* L(std::int64_t split, std::int64_t row) { return l_.data() + split * rows_ + row; }
  const T* L(std::int64_t split, std::int64_t row) const { return l_.data() + split * rows_ + row; }

 private:
  std::int64_t rows_ = 0, v_dim_ = 0;
  std::vector<T> o_, m_, l_;
};

}  // namespace sdpa::cpu

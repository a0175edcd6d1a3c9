// Test operands: dense float64 arrays (the tests' own representation), deterministic random
// values, and typed buffers that place an array in any strided layout and hand out sdpa views.
//
// Nothing here calls the library's computations; only its view and layout types are used, so
// tests can compare the library against code that shares no logic with it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "sdpa/tensor.h"

namespace sdpa_test {

// SplitMix64: the same stream on every platform and standard library (the distributions of
// <random> are not), so a failing case reproduces everywhere from its seed.
class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed) {}

  std::uint64_t NextBits() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi).
  double Uniform(double lo, double hi) {
    return lo + (hi - lo) * static_cast<double>(NextBits() >> 11) * 0x1.0p-53;
  }
  // True with probability p.
  bool Bernoulli(double p) { return Uniform(0.0, 1.0) < p; }

 private:
  std::uint64_t state_;
};

// A dense row-major float64 array of rank 0 to 4.
struct Array {
  std::vector<std::int64_t> shape;
  std::vector<double> values;

  Array() = default;
  explicit Array(std::vector<std::int64_t> shape_, double fill = 0.0)
      : shape(std::move(shape_)), values(static_cast<std::size_t>(Count(shape)), fill) {}
  Array(std::vector<std::int64_t> shape_, std::vector<double> values_)
      : shape(std::move(shape_)), values(std::move(values_)) {}

  // Entries uniform in [lo, hi), from `seed`.
  static Array Uniform(std::vector<std::int64_t> shape, std::uint64_t seed, double lo = -1.0,
                       double hi = 1.0) {
    Array a(std::move(shape));
    Random random(seed);
    for (double& x : a.values) x = random.Uniform(lo, hi);
    return a;
  }

  static std::int64_t Count(const std::vector<std::int64_t>& shape) {
    return std::accumulate(shape.begin(), shape.end(), std::int64_t{1},
                           [](std::int64_t a, std::int64_t b) { return a * b; });
  }
  std::int64_t size() const { return static_cast<std::int64_t>(values.size()); }
  int rank() const { return static_cast<int>(shape.size()); }

  // Flat position of a multi-index of exactly rank() coordinates.
  std::size_t Flat(std::initializer_list<std::int64_t> index) const {
    std::int64_t flat = 0;
    std::size_t d = 0;
    for (std::int64_t i : index) flat = flat * shape[d++] + i;
    return static_cast<std::size_t>(flat);
  }
  double& operator()(std::initializer_list<std::int64_t> index) { return values[Flat(index)]; }
  double operator()(std::initializer_list<std::int64_t> index) const { return values[Flat(index)]; }

  // Every entry rounded to float32, as a float32 operand holds it.
  Array RoundedToFloat() const {
    Array a = *this;
    for (double& x : a.values) x = static_cast<double>(static_cast<float>(x));
    return a;
  }
  // The same values with leading size-1 dimensions added up to rank 4.
  Array AsRank4() const {
    Array a = *this;
    while (a.shape.size() < 4) a.shape.insert(a.shape.begin(), 1);
    return a;
  }
};

// Expands `a` to `target` with numpy's right-aligned broadcasting (the tests' own version).
inline Array BroadcastTo(const Array& a, const std::vector<std::int64_t>& target) {
  const int pad = static_cast<int>(target.size()) - a.rank();
  Array out(target);
  std::vector<std::int64_t> index(target.size(), 0);
  for (std::int64_t flat = 0; flat < out.size(); ++flat) {
    std::int64_t rest = flat;
    for (int d = static_cast<int>(target.size()) - 1; d >= 0; --d) {
      index[static_cast<std::size_t>(d)] = rest % target[static_cast<std::size_t>(d)];
      rest /= target[static_cast<std::size_t>(d)];
    }
    std::int64_t source = 0;
    for (int d = 0; d < a.rank(); ++d) {
      const std::int64_t size = a.shape[static_cast<std::size_t>(d)];
      const std::int64_t i = size == 1 ? 0 : index[static_cast<std::size_t>(d + pad)];
      source = source * size + i;
    }
    out.values[static_cast<std::size_t>(flat)] = a.values[static_cast<std::size_t>(source)];
  }
  return out;
}

// How an operand is laid out in memory.
struct LayoutSpec {
  // Dimensions from outermost to innermost in memory; empty = row-major order.
  std::vector<int> order;
  // Distance in elements between consecutive elements of the innermost dimension.
  std::int64_t step = 1;
  // Unused elements after each dimension's extent (row padding).
  std::int64_t pad = 0;
  // Dimensions stored back to front (negative strides).
  std::vector<int> reversed;
};

inline sdpa::Layout MakeLayout(const std::vector<std::int64_t>& shape, const LayoutSpec& spec) {
  std::vector<int> order = spec.order;
  if (order.empty()) {
    order.resize(shape.size());
    std::iota(order.begin(), order.end(), 0);
  }
  std::vector<std::int64_t> strides(shape.size(), 0);
  std::int64_t stride = spec.step;
  for (auto d = order.rbegin(); d != order.rend(); ++d) {
    strides[static_cast<std::size_t>(*d)] = stride;
    stride = stride * std::max<std::int64_t>(shape[static_cast<std::size_t>(*d)], 1) + spec.pad;
  }
  for (int d : spec.reversed) strides[static_cast<std::size_t>(d)] *= -1;
  return sdpa::Layout::Strided(shape, strides);
}

// Element offset of a multi-index (given as a flat row-major position) in a layout.
inline std::int64_t OffsetOf(const sdpa::Layout& layout, std::int64_t flat) {
  std::int64_t offset = 0;
  for (int d = layout.rank - 1; d >= 0; --d) {
    offset += (flat % layout.shape[d]) * layout.strides[d];
    flat /= layout.shape[d];
  }
  return offset;
}

// A 16-bit storage value as a double (exact), and a double rounded to one (nearest even).
inline double ToDouble(sdpa::bfloat16 x) { return static_cast<double>(sdpa::ToFloat(x)); }
inline double ToDouble(sdpa::float16 x) { return static_cast<double>(sdpa::ToFloat(x)); }
template <typename T>
constexpr bool kIsHalf = std::is_same_v<T, sdpa::bfloat16> || std::is_same_v<T, sdpa::float16>;

// x rounded to the precision of T (float, double, bfloat16 or float16), as a double.
template <typename T>
double RoundedTo(double x) {
  if constexpr (std::is_same_v<T, sdpa::bfloat16>) {
    return ToDouble(sdpa::ToBFloat16(static_cast<float>(x)));
  } else if constexpr (std::is_same_v<T, sdpa::float16>) {
    return ToDouble(sdpa::ToFloat16(static_cast<float>(x)));
  } else {
    return static_cast<double>(static_cast<T>(x));
  }
}

// Memory for one operand of element type T (float, double, bool, bfloat16, float16) holding an
// Array in a chosen layout. Memory not covered by the view is filled with `poison` (NaN for floats)
// so that a read outside the view shows up in the result; a guard of poison lies before and after.
template <typename T>
class Buffer {
 public:
  static constexpr std::int64_t kGuard = 16;

  explicit Buffer(const Array& values, const LayoutSpec& spec = {})
      : layout_(MakeLayout(values.shape, spec)) {
    std::int64_t lo = 0, hi = 0;
    for (int d = 0; d < layout_.rank; ++d) {
      const std::int64_t reach =
          std::max<std::int64_t>(layout_.shape[d] - 1, 0) * layout_.strides[d];
      (reach < 0 ? lo : hi) += reach;
    }
    size_ = hi - lo + 1 + 2 * kGuard;
    memory_ = std::make_unique<T[]>(static_cast<std::size_t>(size_));
    std::fill(memory_.get(), memory_.get() + size_, Poison());
    origin_ = kGuard - lo;
    for (std::int64_t flat = 0; flat < values.size(); ++flat) {
      At(flat) = FromDouble(values.values[static_cast<std::size_t>(flat)]);
    }
  }

  sdpa::TensorView view() const {
    return sdpa::TensorView(memory_.get() + origin_, sdpa::DTypeOf<T>(), layout_);
  }
  sdpa::MutableTensorView mutable_view() {
    return sdpa::MutableTensorView(memory_.get() + origin_, sdpa::DTypeOf<T>(), layout_);
  }
  const sdpa::Layout& layout() const { return layout_; }

  // The values the view holds now, as an Array.
  Array Read() const {
    Array a(std::vector<std::int64_t>(layout_.shape, layout_.shape + layout_.rank));
    for (std::int64_t flat = 0; flat < a.size(); ++flat) {
      if constexpr (kIsHalf<T>) {
        a.values[static_cast<std::size_t>(flat)] = ToDouble(At(flat));
      } else {
        a.values[static_cast<std::size_t>(flat)] = static_cast<double>(At(flat));
      }
    }
    return a;
  }
  // A copy of the whole memory (view, gaps and guards), to check that nothing was written.
  std::vector<T> Snapshot() const { return std::vector<T>(memory_.get(), memory_.get() + size_); }
  // True when memory outside the view still holds the poison it started with.
  bool OutsideUntouched() const {
    std::vector<bool> inside(static_cast<std::size_t>(size_), false);
    const std::int64_t count = layout_.NumElements();
    for (std::int64_t flat = 0; flat < count; ++flat) {
      inside[static_cast<std::size_t>(origin_ + OffsetOf(layout_, flat))] = true;
    }
    for (std::int64_t p = 0; p < size_; ++p) {
      if (!inside[static_cast<std::size_t>(p)] && !IsPoison(memory_[static_cast<std::size_t>(p)]))
        return false;
    }
    return true;
  }

 private:
  static T Poison() {
    if constexpr (std::is_same_v<T, bool>) {
      return false;
    } else if constexpr (std::is_same_v<T, sdpa::bfloat16>) {
      return sdpa::bfloat16{0x7FC1};
    } else if constexpr (std::is_same_v<T, sdpa::float16>) {
      return sdpa::float16{0x7E01};
    } else {
      return std::numeric_limits<T>::quiet_NaN();
    }
  }
  static bool IsPoison(T x) {
    if constexpr (std::is_same_v<T, bool>) {
      return !x;
    } else if constexpr (kIsHalf<T>) {
      return x.bits == Poison().bits;
    } else {
      return std::isnan(x);
    }
  }
  static T FromDouble(double x) {
    if constexpr (std::is_same_v<T, bool>) {
      return x != 0.0;
    } else if constexpr (std::is_same_v<T, sdpa::bfloat16>) {
      return sdpa::ToBFloat16(static_cast<float>(x));
    } else if constexpr (std::is_same_v<T, sdpa::float16>) {
      return sdpa::ToFloat16(static_cast<float>(x));
    } else {
      return static_cast<T>(x);
    }
  }
  T& At(std::int64_t flat) {
    return memory_[static_cast<std::size_t>(origin_ + OffsetOf(layout_, flat))];
  }
  const T& At(std::int64_t flat) const {
    return memory_[static_cast<std::size_t>(origin_ + OffsetOf(layout_, flat))];
  }

  sdpa::Layout layout_;
  std::int64_t size_ = 0, origin_ = 0;
  std::unique_ptr<T[]> memory_;
};

// The values of any float32, float64 or bool view, read through its strides.
inline Array ReadView(const sdpa::TensorView& view) {
  Array a(std::vector<std::int64_t>(view.layout.shape, view.layout.shape + view.layout.rank));
  for (std::int64_t flat = 0; flat < a.size(); ++flat) {
    const std::int64_t offset = OffsetOf(view.layout, flat);
    double x = 0.0;
    switch (view.dtype) {
      case sdpa::DType::kFloat32:
        x = static_cast<const float*>(view.data)[offset];
        break;
      case sdpa::DType::kFloat64:
        x = static_cast<const double*>(view.data)[offset];
        break;
      case sdpa::DType::kBool:
        x = static_cast<const bool*>(view.data)[offset] ? 1.0 : 0.0;
        break;
      case sdpa::DType::kBFloat16:
        x = ToDouble(static_cast<const sdpa::bfloat16*>(view.data)[offset]);
        break;
      case sdpa::DType::kFloat16:
        x = ToDouble(static_cast<const sdpa::float16*>(view.data)[offset]);
        break;
      case sdpa::DType::kInt8:
        x = static_cast<const std::int8_t*>(view.data)[offset];
        break;
      case sdpa::DType::kInt32:
        x = static_cast<const std::int32_t*>(view.data)[offset];
        break;
    }
    a.values[static_cast<std::size_t>(flat)] = x;
  }
  return a;
}

}  // namespace sdpa_test

// Tensors at the API boundary: non-owning strided views and an owning Tensor.
//
// Attention operands are 4-D `[batch, heads, seq, dim]`. Views of rank 2 `(seq, dim)` and 3
// `(heads, seq, dim)` are accepted everywhere and read as if leading size-1 dimensions were
// prepended. Strides are in elements (not bytes) and may be any value, so Q, K and V can be
// slices of one packed QKV buffer without copies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "sdpa/half.h"

namespace sdpa {

enum class DType : std::uint8_t {
  kFloat32,
  kFloat64,
  kBool,  // masks only: true = attend
  kBFloat16,
  kFloat16,
  kInt8,   // KV caches only (sdpa/kv_cache.h), with scales
  kInt32,  // indices: block tables, sequence lengths
};

// "float32", "float64", "bool", "bfloat16", "float16", "int8", "int32".
const char* DTypeName(DType dtype);
// Size of one element in bytes.
std::size_t DTypeSize(DType dtype);

template <typename T>
constexpr DType DTypeOf();
template <>
constexpr DType DTypeOf<float>() {
  return DType::kFloat32;
}
template <>
constexpr DType DTypeOf<double>() {
  return DType::kFloat64;
}
template <>
constexpr DType DTypeOf<bool>() {
  return DType::kBool;
}
template <>
constexpr DType DTypeOf<bfloat16>() {
  return DType::kBFloat16;
}
template <>
constexpr DType DTypeOf<float16>() {
  return DType::kFloat16;
}
template <>
constexpr DType DTypeOf<std::int8_t>() {
  return DType::kInt8;
}
template <>
constexpr DType DTypeOf<std::int32_t>() {
  return DType::kInt32;
}

inline constexpr int kMaxRank = 4;

// Shape and strides shared by both view kinds. Only the first `rank` entries are meaningful.
struct Layout {
  int rank = 0;
  std::int64_t shape[kMaxRank] = {0, 0, 0, 0};
  std::int64_t strides[kMaxRank] = {0, 0, 0, 0};  // in elements

  Layout() = default;
  // A braced shape is its row-major layout, so that TensorView(data, DType::kBFloat16,
  // {1, 8, 4096, 128}) means what it reads as (an aggregate would take the 1 as the rank).
  Layout(std::initializer_list<std::int64_t> dims) : Layout(Contiguous(dims)) {}

  // Row-major (C-order) layout of `shape`. Throws sdpa::Error if rank > 4.
  static Layout Contiguous(std::initializer_list<std::int64_t> shape);
  static Layout Contiguous(const std::vector<std::int64_t>& shape);
  // Explicit strides; `shape` and `strides` must have the same length (else sdpa::Error).
  static Layout Strided(const std::vector<std::int64_t>& shape,
                        const std::vector<std::int64_t>& strides);

  // Product of the shape (no overflow check; validation does that before any use).
  std::int64_t NumElements() const;
};

// A read-only view of someone else's memory.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  Layout layout;

  TensorView() = default;
  TensorView(const void* data_, DType dtype_, const Layout& layout_)
      : data(data_), dtype(dtype_), layout(layout_) {}
  template <typename T>
  TensorView(const T* data_, std::initializer_list<std::int64_t> shape)
      : TensorView(data_, DTypeOf<T>(), Layout::Contiguous(shape)) {}
  template <typename T>
  TensorView(const T* data_, const std::vector<std::int64_t>& shape,
             const std::vector<std::int64_t>& strides)
      : TensorView(data_, DTypeOf<T>(), Layout::Strided(shape, strides)) {}

  int rank() const { return layout.rank; }
  std::int64_t dim(int i) const { return layout.shape[i]; }
  std::int64_t stride(int i) const { return layout.strides[i]; }
};

// A writable view of someone else's memory (outputs).
struct MutableTensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Layout layout;

  MutableTensorView() = default;
  MutableTensorView(void* data_, DType dtype_, const Layout& layout_)
      : data(data_), dtype(dtype_), layout(layout_) {}
  template <typename T>
  MutableTensorView(T* data_, std::initializer_list<std::int64_t> shape)
      : MutableTensorView(data_, DTypeOf<T>(), Layout::Contiguous(shape)) {}
  template <typename T>
  MutableTensorView(T* data_, const std::vector<std::int64_t>& shape,
                    const std::vector<std::int64_t>& strides)
      : MutableTensorView(data_, DTypeOf<T>(), Layout::Strided(shape, strides)) {}

  operator TensorView() const { return TensorView(data, dtype, layout); }  // NOLINT: implicit
  int rank() const { return layout.rank; }
  std::int64_t dim(int i) const { return layout.shape[i]; }
  std::int64_t stride(int i) const { return layout.strides[i]; }
};

// An owning, contiguous (row-major), 64-byte aligned, zero-initialised tensor with value
// semantics (copying copies the data).
class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, const std::vector<std::int64_t>& shape);
  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  ~Tensor() = default;

  DType dtype() const { return dtype_; }
  int rank() const { return layout_.rank; }
  std::int64_t dim(int i) const { return layout_.shape[i]; }
  std::vector<std::int64_t> shape() const;
  std::int64_t size() const { return layout_.NumElements(); }

  // Typed access; throws sdpa::Error if T does not match dtype().
  template <typename T>
  T* data() {
    CheckDType(DTypeOf<T>());
    return static_cast<T*>(static_cast<void*>(bytes_.get()));
  }
  template <typename T>
  const T* data() const {
    CheckDType(DTypeOf<T>());
    return static_cast<const T*>(static_cast<const void*>(bytes_.get()));
  }
  // Element at a multi-index of exactly rank() coordinates (bounds-checked, throws sdpa::Error).
  template <typename T>
  T at(std::initializer_list<std::int64_t> index) const {
    return data<T>()[Offset(index)];
  }

  TensorView view() const { return TensorView(bytes_.get(), dtype_, layout_); }
  MutableTensorView mutable_view() { return MutableTensorView(bytes_.get(), dtype_, layout_); }

 private:
  struct FreeAligned {
    void operator()(std::byte* p) const;
  };
  void CheckDType(DType wanted) const;
  std::int64_t Offset(std::initializer_list<std::int64_t> index) const;
  std::size_t NumBytes() const;

  DType dtype_ = DType::kFloat32;
  Layout layout_;
  std::unique_ptr<std::byte[], FreeAligned> bytes_;
};

}  // namespace sdpa

#include "sdpa/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "api/validate.h"
#include "sdpa/error.h"

namespace sdpa {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
    case DType::kBool:
      return "bool";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
    case DType::kInt8:
      return "int8";
    case DType::kInt32:
      return "int32";
  }
  return "unknown";
}

std::size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat64:
      return 8;
    case DType::kBool:
      return sizeof(bool);
    case DType::kBFloat16:
    case DType::kFloat16:
      return 2;
    case DType::kInt8:
      return 1;
    case DType::kInt32:
      return 4;
  }
  return 1;
}

Layout Layout::Contiguous(std::initializer_list<std::int64_t> shape) {
  return Contiguous(std::vector<std::int64_t>(shape));
}

Layout Layout::Contiguous(const std::vector<std::int64_t>& shape) {
  if (shape.size() > static_cast<std::size_t>(kMaxRank)) {
    internal::Fail("a tensor has rank ", shape.size(), " but at most ", kMaxRank, " is supported");
  }
  Layout layout;
  layout.rank = static_cast<int>(shape.size());
  std::int64_t stride = 1;
  for (int d = layout.rank - 1; d >= 0; --d) {
    layout.shape[d] = shape[static_cast<std::size_t>(d)];
    layout.strides[d] = stride;
    // Wrapping multiply: an absurd shape must reach validation as an error, not as UB here.
    const auto size = static_cast<std::uint64_t>(layout.shape[d] > 0 ? layout.shape[d] : 1);
    stride = static_cast<std::int64_t>(static_cast<std::uint64_t>(stride) * size);
  }
  return layout;
}

Layout Layout::Strided(const std::vector<std::int64_t>& shape,
                       const std::vector<std::int64_t>& strides) {
  if (shape.size() != strides.size()) {
    internal::Fail("a tensor has ", shape.size(), " dimensions but ", strides.size(), " strides");
  }
  Layout layout = Contiguous(shape);
  for (int d = 0; d < layout.rank; ++d) layout.strides[d] = strides[static_cast<std::size_t>(d)];
  return layout;
}

std::int64_t Layout::NumElements() const {
  std::int64_t n = 1;
  for (int d = 0; d < rank; ++d) n *= shape[d];
  return n;
}

void Tensor::FreeAligned::operator()(std::byte* p) const { std::free(p); }

Tensor::Tensor(DType dtype, const std::vector<std::int64_t>& shape)
    : dtype_(dtype), layout_(Layout::Contiguous(shape)) {
  internal::CheckLayout("tensor", dtype, layout_, 0, kMaxRank);
  const std::size_t bytes = NumBytes();
  if (bytes == 0) return;
  constexpr std::size_t kAlign = 64;
  const std::size_t padded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* memory = std::aligned_alloc(kAlign, padded);
  if (memory == nullptr) throw std::bad_alloc();
  std::memset(memory, 0, padded);
  bytes_.reset(static_cast<std::byte*>(memory));
}

Tensor::Tensor(const Tensor& other) : Tensor(other.dtype_, other.shape()) {
  if (NumBytes() > 0) std::memcpy(bytes_.get(), other.bytes_.get(), NumBytes());
}

Tensor& Tensor::operator=(const Tensor& other) {
  if (this != &other) *this = Tensor(other);
  return *this;
}

std::vector<std::int64_t> Tensor::shape() const {
  return std::vector<std::int64_t>(layout_.shape, layout_.shape + layout_.rank);
}

std::size_t Tensor::NumBytes() const {
  return static_cast<std::size_t>(layout_.NumElements()) * DTypeSize(dtype_);
}

void Tensor::CheckDType(DType wanted) const {
  if (wanted != dtype_) {
    internal::FailDType("tensor.dtype is ", DTypeName(dtype_), " but was accessed as ",
                        DTypeName(wanted));
  }
}

std::int64_t Tensor::Offset(std::initializer_list<std::int64_t> index) const {
  if (static_cast<int>(index.size()) != layout_.rank) {
    internal::Fail("tensor index has ", index.size(), " coordinates but the tensor has rank ",
                   layout_.rank);
  }
  std::int64_t offset = 0;
  int d = 0;
  for (std::int64_t i : index) {
    if (i < 0 || i >= layout_.shape[d]) {
      internal::Fail("tensor index[", d, "] is ", i, " but must be in [0, ", layout_.shape[d], ")");
    }
    offset += i * layout_.strides[d];
    ++d;
  }
  return offset;
}

}  // namespace sdpa

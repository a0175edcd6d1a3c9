// Storage and compute types: what a call's operands are stored as, and what its kernels
// compute in. The one place that maps dtypes to C++ types.
//
//   storage: each operand's own dtype (Operand::dtype): float, double, bfloat16 or float16
//   compute T: scores, softmax state, accumulators and lse: float, or double for a float64 call
//
// The kernels are templated on the K/V storage S (the type of the hot loops' tiles) and T; every
// other operand (q, out, the mask, grad_*) is converted where it enters or leaves the kernel's
// buffers (cpu/pack-inl.h), dispatched on its dtype by WithStorage. Adding a storage type is one
// case in each function below plus its conversions (Widen, Narrow).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/fail.h"
#include "core/problem.h"
#include "sdpa/half.h"
#include "sdpa/tensor.h"

namespace sdpa::internal {

template <typename S, typename T>
struct Types {
  using Storage = S;
  using Compute = T;
};
template <typename S>
struct StorageTag {
  using Type = S;
};

// Calls fn(StorageTag<S>{}) for a float dtype.
template <class Fn>
decltype(auto) WithStorage(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      return std::forward<Fn>(fn)(StorageTag<float>{});
    case DType::kFloat64:
      return std::forward<Fn>(fn)(StorageTag<double>{});
    case DType::kBFloat16:
      return std::forward<Fn>(fn)(StorageTag<bfloat16>{});
    case DType::kFloat16:
      return std::forward<Fn>(fn)(StorageTag<float16>{});
    case DType::kBool:
    case DType::kInt8:
    case DType::kInt32:
      break;
  }
  Fail("no float storage type for dtype ", DTypeName(dtype));
}

// Calls fn(Types<S, T>{}) for the problem's K/V storage and compute type: (float, float),
// (double, double), (bfloat16, float), (float16, float).
template <class Fn>
decltype(auto) WithTypes(const Problem& p, Fn&& fn) {
  if (p.compute == DType::kFloat64) {
    if (p.kv.k.dtype == DType::kFloat64) return std::forward<Fn>(fn)(Types<double, double>{});
  } else {
    switch (p.kv.k.dtype) {
      case DType::kFloat32:
        return std::forward<Fn>(fn)(Types<float, float>{});
      case DType::kBFloat16:
        return std::forward<Fn>(fn)(Types<bfloat16, float>{});
      case DType::kFloat16:
        return std::forward<Fn>(fn)(Types<float16, float>{});
      case DType::kInt8:  // a quantized KV cache: value = int8 · its row's scale (KvSource)
        return std::forward<Fn>(fn)(Types<std::int8_t, float>{});
      default:
        break;
    }
  }
  Fail("no kernel for key/value ", DTypeName(p.kv.k.dtype), " with compute ", DTypeName(p.compute));
}

// A stored value as a compute-type value (exact), and back (rounded to nearest even).
template <typename T, typename S>
inline T Widen(S x) {
  if constexpr (std::is_same_v<S, bfloat16> || std::is_same_v<S, float16>) {
    return static_cast<T>(ToFloat(x));
  } else {
    return static_cast<T>(x);
  }
}
template <typename S, typename T>
inline S Narrow(T x) {
  if constexpr (std::is_same_v<S, bfloat16>) {
    return ToBFloat16(static_cast<float>(x));
  } else if constexpr (std::is_same_v<S, float16>) {
    return ToFloat16(static_cast<float>(x));
  } else {
    return static_cast<S>(x);
  }
}

// Row (b, h, i) of an operand, `width` elements along its last dimension, as doubles; and back
// (rounded to the operand's dtype). For paths that are not hot: the reference, per-row setup.
template <class Op>
void ReadRow(const Op& op, std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t width,
             double* dst) {
  WithStorage(op.dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    const S* row =
        static_cast<const S*>(op.data) + b * op.stride[0] + h * op.stride[1] + i * op.stride[2];
    for (std::int64_t x = 0; x < width; ++x) dst[x] = Widen<double>(row[x * op.stride[3]]);
  });
}
inline void WriteRow(const Operand<void>& op, std::int64_t b, std::int64_t h, std::int64_t i,
                     std::int64_t width, const double* src) {
  WithStorage(op.dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    S* row = static_cast<S*>(op.data) + b * op.stride[0] + h * op.stride[1] + i * op.stride[2];
    for (std::int64_t x = 0; x < width; ++x) row[x * op.stride[3]] = Narrow<S>(src[x]);
  });
}

}  // namespace sdpa::internal

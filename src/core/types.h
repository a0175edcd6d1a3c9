// Storage and compute types: what a call's operands are stored as, and what its kernels
// compute in. The one place that maps a problem's dtypes to C++ types.
//
//   storage S: query, key, value, out, the additive mask, grad_* (float or double today)
//   compute T: scores, softmax state, accumulators and lse (float or double)
//
// Conversions happen only where operands enter or leave the kernels' buffers (cpu/pack-inl.h),
// so adding a 16-bit storage type is one case below plus its conversions there.
#pragma once

#include <utility>

#include "core/fail.h"
#include "core/problem.h"
#include "sdpa/tensor.h"

namespace sdpa::internal {

template <typename S, typename T>
struct Types {
  using Storage = S;
  using Compute = T;
};

// Calls fn(Types<S, T>{}) for the problem's (storage, compute) pair.
template <class Fn>
decltype(auto) WithTypes(const Problem& p, Fn&& fn) {
  if (p.storage == DType::kFloat32 && p.compute == DType::kFloat32) {
    return std::forward<Fn>(fn)(Types<float, float>{});
  }
  if (p.storage == DType::kFloat64 && p.compute == DType::kFloat64) {
    return std::forward<Fn>(fn)(Types<double, double>{});
  }
  Fail("no kernel for storage ", DTypeName(p.storage), " with compute ", DTypeName(p.compute));
}

}  // namespace sdpa::internal

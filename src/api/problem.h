// Problem: one validated attention call, normalised to rank 4, as every backend receives it.
//
// Validation (validate.h) builds it; backends only read it. After validation:
//   * every size is >= 0 and every byte offset reachable through the strides fits in int64;
//   * q [B,H,Lq,D], k [B,Hkv,Lkv,D], v [B,Hkv,Lkv,Dv], out [B,H,Lq,Dv], lse [B,H,Lq];
//   * H % Hkv == 0; query head h reads kv head h / (H / Hkv);
//   * a broadcast mask dimension has stride 0, so mask(b, h, i, j) is always addressable;
//   * out and lse overlap no input and do not overlap themselves.
#pragma once

#include <algorithm>
#include <cstdint>

#include "sdpa/options.h"
#include "sdpa/tensor.h"

namespace sdpa::internal {

enum class MaskKind { kNone, kBool, kAdditive };

// A rank-4 operand: base pointer and strides in elements.
template <typename T>
struct Operand {
  T* data = nullptr;
  std::int64_t stride[4] = {0, 0, 0, 0};

  // Pointer to element (b, h, i, 0).
  T* Row(std::int64_t b, std::int64_t h, std::int64_t i) const {
    return data + b * stride[0] + h * stride[1] + i * stride[2];
  }
};

struct Problem {
  DType dtype = DType::kFloat32;  // of q, k, v, out, lse (and an additive mask)
  std::int64_t batch = 0, heads = 0, kv_heads = 0;
  std::int64_t q_len = 0, kv_len = 0, head_dim = 0, v_dim = 0;

  Operand<const void> q, k, v;
  Operand<void> out;
  Operand<void> lse;  // data == nullptr when not requested; stride[3] unused
  MaskKind mask_kind = MaskKind::kNone;
  Operand<const void> mask;  // bool or dtype

  double scale = 1.0;
  Causal causal = Causal::kNone;
  Backend backend = Backend::kAuto;  // as requested; resolved by the dispatcher

  std::int64_t group_size() const { return heads / kv_heads; }
  std::int64_t KvHead(std::int64_t h) const { return h / group_size(); }

  // Keys visible to query row i under the causal rule are [0, CausalEnd(i)).
  // Top-left: j <= i. Bottom-right: j <= i + Lkv - Lq. Clamped to [0, Lkv].
  std::int64_t CausalEnd(std::int64_t i) const {
    std::int64_t end = kv_len;
    if (causal == Causal::kTopLeft) end = i + 1;
    if (causal == Causal::kBottomRight) end = i + 1 + kv_len - q_len;
    return std::clamp<std::int64_t>(end, 0, kv_len);
  }
};

// A validated backward call: the forward problem (q, k, v, mask, options; its `out` and `lse`
// operands hold the forward's results, read-only here) plus grad_out and the three gradients.
// Gradients have the shapes of q, k and v and overlap nothing else.
struct BackwardProblem {
  Problem forward;
  Operand<const void> grad_out;  // [B, H, Lq, Dv]
  Operand<void> grad_q, grad_k, grad_v;
};

// Typed view of an untyped operand (the dtype was checked by validation).
template <typename T>
Operand<const T> As(const Operand<const void>& op) {
  Operand<const T> typed;
  typed.data = static_cast<const T*>(op.data);
  std::copy(op.stride, op.stride + 4, typed.stride);
  return typed;
}
template <typename T>
Operand<T> As(const Operand<void>& op) {
  Operand<T> typed;
  typed.data = static_cast<T*>(op.data);
  std::copy(op.stride, op.stride + 4, typed.stride);
  return typed;
}

}  // namespace sdpa::internal

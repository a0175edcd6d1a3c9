// Views and copies the distributed algorithms share: rank-4 float32 tensors, contiguous
// buffers viewed as [B, X, n, W], row ranges along the sequence dimension (2).
#pragma once

#include <cstdint>
#include <vector>

#include "sdpa/tensor.h"

namespace sdpa::dist {

template <typename V>
V Rows(V view, std::int64_t begin, std::int64_t end) {
  using Byte = std::conditional_t<std::is_same_v<V, TensorView>, const float, float>;
  view.data = static_cast<Byte*>(view.data) + begin * view.layout.strides[2];
  view.layout.shape[2] = end - begin;
  return view;
}

inline TensorView Block(const float* data, std::int64_t b, std::int64_t x, std::int64_t n,
                        std::int64_t w) {
  return TensorView(data, DType::kFloat32, Layout::Contiguous({b, x, n, w}));
}
inline MutableTensorView MutableBlock(float* data, std::int64_t b, std::int64_t x, std::int64_t n,
                                      std::int64_t w) {
  return MutableTensorView(data, DType::kFloat32, Layout::Contiguous({b, x, n, w}));
}
// lse [B, H, n] as a [B, H, n, 1] view (the all-to-alls treat it as width 1).
template <typename V>
V WithUnitWidth(V view) {
  view.layout.rank = 4;
  view.layout.shape[3] = 1;
  view.layout.strides[3] = 1;
  return view;
}

// dst [B, X, n, W] contiguous <- src (any strides).
inline void Pack(const TensorView& src, float* dst) {
  const float* s = static_cast<const float*>(src.data);
  const std::int64_t B = src.dim(0), X = src.dim(1), n = src.dim(2), W = src.dim(3);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t x = 0; x < X; ++x)
      for (std::int64_t i = 0; i < n; ++i) {
        const float* row = s + b * src.stride(0) + x * src.stride(1) + i * src.stride(2);
        float* out = dst + ((b * X + x) * n + i) * W;
        for (std::int64_t e = 0; e < W; ++e) out[e] = row[e * src.stride(3)];
      }
}
// dst (any strides) <- src [B, X, n, W] contiguous.
inline void Unpack(const float* src, const MutableTensorView& dst) {
  float* d = static_cast<float*>(dst.data);
  const std::int64_t B = dst.dim(0), X = dst.dim(1), n = dst.dim(2), W = dst.dim(3);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t x = 0; x < X; ++x)
      for (std::int64_t i = 0; i < n; ++i) {
        float* row = d + b * dst.stride(0) + x * dst.stride(1) + i * dst.stride(2);
        const float* in = src + ((b * X + x) * n + i) * W;
        for (std::int64_t e = 0; e < W; ++e) row[e * dst.stride(3)] = in[e];
      }
}

}  // namespace sdpa::dist

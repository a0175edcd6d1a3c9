// Problem: one validated attention call, normalised to rank 4, as every backend receives it.
//
// Validation (validate.h) builds it; backends only read it. After validation:
//   * every size is >= 0 and every byte offset reachable through the strides fits in int64;
//   * q [B,H,Lq,D], k [B,Hkv,Lkv,D], v [B,Hkv,Lkv,Dv], out [B,H,Lq,Dv], lse [B,H,Lq];
//   * H % Hkv == 0; query head h reads kv head h / (H / Hkv);
//   * a broadcast mask dimension has stride 0, so mask(b, h, i, j) is always addressable;
//   * out and lse overlap no input and do not overlap themselves;
//   * variants (options.h) are checked: window sides >= 0, one finite ALiBi slope and one sink
//     (not NaN or +inf) per query head, softcap > 0, dropout_p in [0, 1], varlen offsets
//     start at 0, never decrease and end at q_len / kv_len, with batch 1.
//
// Which keys a query row sees is the one rule every backend and the schedule share: Visible().
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "sdpa/custom.h"
#include "sdpa/options.h"
#include "sdpa/tensor.h"

namespace sdpa::internal {

enum class MaskKind { kNone, kBool, kAdditive };

// A rank-4 operand: base pointer and strides in elements.
template <typename T>
struct Operand {
  T* data = nullptr;
  std::int64_t stride[4] = {0, 0, 0, 0};
  DType dtype = DType::kFloat32;  // what data points to (core/types.h)

  // Pointer to element (b, h, i, 0).
  T* Row(std::int64_t b, std::int64_t h, std::int64_t i) const {
    return data + b * stride[0] + h * stride[1] + i * stride[2];
  }
};

// A sequence of the batch: batch entry b (sequence b, both offsets 0), or with varlen the
// packed sequence s of batch entry 0.
struct Sequence {
  std::int64_t index = 0;  // b, or s with varlen: the `b` of ALiBi, dropout and custom functions
  std::int64_t batch = 0;  // batch entry holding it (0 with varlen)
  std::int64_t q_begin = 0, q_len = 0;  // its query rows [q_begin, q_begin + q_len)
  std::int64_t k_begin = 0, k_len = 0;  // its keys [k_begin, k_begin + k_len)
};

inline constexpr std::int64_t kUnbounded = std::numeric_limits<std::int64_t>::max() / 4;

// Keys [begin, end), as positions within the sequence; empty when begin >= end.
struct KeyRange {
  std::int64_t begin = 0, end = 0;
};

// Where the key and value rows of each (batch, kv head) are, for every kernel and the reference:
// they find K/V rows only through KeyRow / ValueRow (and the scales of an int8 cache through
// KeyScale / ValueScale). Keys [j, RunEnd(b, j)) are rows key_ld() (value_ld()) apart, so a tile
// inside one run may be read in place and one that crosses runs is gathered run by run.
//   strided: key j of (b, h) at k.Row(b, h, j); one run.
//   paged (sdpa/kv_cache.h): key j of sequence b is row j % block_size of physical block
//     block_table[b][j / block_size], i.e. k.Row(block, h, j % block_size); one run per block.
struct KvSource {
  Operand<const void> k, v;  // k [B or blocks, Hkv, Lkv or block_size, D], v likewise with Dv
  const std::int32_t* block_table = nullptr;  // [B][table_stride]; null when strided
  std::int64_t table_stride = 0, block_size = 0;
  Operand<const void> k_scale, v_scale;  // float32, k's shape without D; data null unless int8

  bool paged() const { return block_table != nullptr; }
  // The operand's first index (batch or physical block) and row of key j of batch b.
  std::int64_t Block(std::int64_t b, std::int64_t j) const {
    return paged() ? block_table[b * table_stride + j / block_size] : b;
  }
  std::int64_t Slot(std::int64_t j) const { return paged() ? j % block_size : j; }

  template <typename S>
  const S* KeyRow(std::int64_t b, std::int64_t h, std::int64_t j) const {
    return static_cast<const S*>(k.data) + Block(b, j) * k.stride[0] + h * k.stride[1] +
           Slot(j) * k.stride[2];
  }
  template <typename S>
  const S* ValueRow(std::int64_t b, std::int64_t h, std::int64_t j) const {
    return static_cast<const S*>(v.data) + Block(b, j) * v.stride[0] + h * v.stride[1] +
           Slot(j) * v.stride[2];
  }
  // The dequantization scale of an int8 row (1 for other caches).
  float KeyScale(std::int64_t b, std::int64_t h, std::int64_t j) const {
    return ScaleAt(k_scale, b, h, j);
  }
  float ValueScale(std::int64_t b, std::int64_t h, std::int64_t j) const {
    return ScaleAt(v_scale, b, h, j);
  }
  std::int64_t key_ld() const { return k.stride[2]; }  // between consecutive keys of a run
  std::int64_t value_ld() const { return v.stride[2]; }
  std::int64_t key_step() const { return k.stride[3]; }  // between elements of a row
  std::int64_t value_step() const { return v.stride[3]; }
  std::int64_t RunEnd(std::int64_t /*b*/, std::int64_t j) const {
    return paged() ? (j / block_size + 1) * block_size : kUnbounded;
  }

 private:
  float ScaleAt(const Operand<const void>& scale, std::int64_t b, std::int64_t h,
                std::int64_t j) const {
    if (scale.data == nullptr) return 1.0f;
    return static_cast<const float*>(scale.data)[Block(b, j) * scale.stride[0] +
                                                 h * scale.stride[1] + Slot(j) * scale.stride[2]];
  }
};

struct Problem {
  // Each operand carries its dtype (Operand::dtype): q, k and v (k and v share one), out, an
  // additive mask, grad_*. The kernels compute in `compute` (float32, or float64 when every
  // input is float64), which is also lse's dtype (core/types.h).
  DType compute = DType::kFloat32;
  std::int64_t batch = 0, heads = 0, kv_heads = 0;
  std::int64_t q_len = 0, kv_len = 0, head_dim = 0, v_dim = 0;

  Operand<const void> q;
  KvSource kv;
  Operand<void> out;
  Operand<void> lse;  // data == nullptr when not requested; stride[3] unused
  MaskKind mask_kind = MaskKind::kNone;
  Operand<const void> mask;  // bool or the storage type

  double scale = 1.0;
  Causal causal = Causal::kNone;
  Backend backend = Backend::kAuto;  // as requested; resolved by the dispatcher

  // Variants (options.h). Window sides are kUnbounded when unset (or without a window).
  std::int64_t window_left = kUnbounded, window_right = kUnbounded;
  std::vector<double> alibi_slopes;                      // [heads] or empty
  double softcap = 0;                                    // 0 = none
  std::vector<double> sinks;                             // [heads] or empty
  std::vector<std::int64_t> cu_seqlens_q, cu_seqlens_k;  // empty unless varlen
  std::vector<std::int64_t> kv_lens;  // [B] keys of each batch entry (a KV cache), else empty
  double dropout_p = 0;
  std::uint64_t seed = 0;
  const CustomScore* custom = nullptr;
  const std::function<bool()>* interrupt = nullptr;  // Options::interrupt; null when empty
  double max_flops = 0, max_bytes = 0;               // resolved limits (options.h), > 0

  std::int64_t group_size() const { return heads / kv_heads; }
  std::int64_t KvHead(std::int64_t h) const { return h / group_size(); }

  bool varlen() const { return !cu_seqlens_q.empty(); }
  bool has_window() const { return window_left < kUnbounded || window_right < kUnbounded; }
  bool has_mask_mod() const { return custom != nullptr && custom->mask_f32 != nullptr; }
  bool has_score_mod() const { return custom != nullptr && custom->score_f32 != nullptr; }
  std::int64_t num_sequences() const {
    return varlen() ? static_cast<std::int64_t>(cu_seqlens_q.size()) - 1 : batch;
  }
  Sequence Seq(std::int64_t s) const {
    Sequence seq;
    seq.index = s;
    if (!varlen()) {
      seq.batch = s;
      seq.q_len = q_len;
      seq.k_len = kv_lens.empty() ? kv_len : kv_lens[static_cast<std::size_t>(s)];
      return seq;
    }
    const auto at = static_cast<std::size_t>(s);
    seq.q_begin = cu_seqlens_q[at];
    seq.q_len = cu_seqlens_q[at + 1] - seq.q_begin;
    seq.k_begin = cu_seqlens_k[at];
    seq.k_len = cu_seqlens_k[at + 1] - seq.k_begin;
    return seq;
  }

  // The key aligned with query row i of `seq` (positions within the sequence) for the causal
  // rule and the window: i (top-left) or i + k_len - q_len (bottom-right, also without causal).
  std::int64_t Diagonal(const Sequence& seq, std::int64_t i) const {
    return causal == Causal::kTopLeft ? i : i + seq.k_len - seq.q_len;
  }
  // Keys row i of `seq` may see under the causal rule, the window and the sequence bounds; both
  // ends are non-decreasing in i (the kernels rely on it). Masks may remove more.
  KeyRange Visible(const Sequence& seq, std::int64_t i) const {
    const std::int64_t diag = Diagonal(seq, i);
    std::int64_t begin = 0, end = seq.k_len;
    if (causal != Causal::kNone) end = std::min(end, diag + 1);
    if (window_left < kUnbounded) begin = std::max(begin, diag - window_left);
    if (window_right < kUnbounded) end = std::min(end, diag + window_right + 1);
    return {std::clamp<std::int64_t>(begin, 0, seq.k_len),
            std::clamp<std::int64_t>(end, 0, seq.k_len)};
  }
  // The ALiBi bias of query head h, row i, key j of `seq` (positions within it), always aligned
  // bottom-right: -slope·|i + k_len - q_len - j|.
  double AlibiBias(const Sequence& seq, std::int64_t h, std::int64_t i, std::int64_t j) const {
    const std::int64_t distance = i + seq.k_len - seq.q_len - j;
    return -alibi_slopes[static_cast<std::size_t>(h)] *
           static_cast<double>(distance < 0 ? -distance : distance);
  }
};

// A validated backward call: the forward problem (q, k, v, mask, options; its `out` and `lse`
// operands hold the forward's results, read-only here) plus grad_out and the three gradients.
// Gradients have the shapes of q, k and v and overlap nothing else.
struct BackwardProblem {
  Problem forward;
  Operand<const void> grad_out;  // [B, H, Lq, Dv]
  Operand<void> grad_q, grad_k, grad_v;
  Operand<void> grad_sinks;  // [H] as stride[0]; data == nullptr when not requested
};

// Typed view of an untyped operand (the dtype was checked by validation).
template <typename T>
Operand<const T> As(const Operand<const void>& op) {
  Operand<const T> typed;
  typed.data = static_cast<const T*>(op.data);
  std::copy(op.stride, op.stride + 4, typed.stride);
  typed.dtype = op.dtype;
  return typed;
}
template <typename T>
Operand<T> As(const Operand<void>& op) {
  Operand<T> typed;
  typed.data = static_cast<T*>(op.data);
  std::copy(op.stride, op.stride + 4, typed.stride);
  typed.dtype = op.dtype;
  return typed;
}

}  // namespace sdpa::internal

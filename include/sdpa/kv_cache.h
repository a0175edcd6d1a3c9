// Attention over a key/value cache: the decode step of a language model.
//
// Each of `batch` sequences has cache_seqlens[b] tokens cached. A call optionally appends Lq new
// tokens per sequence (their keys and values are written into the cache at positions
// cache_seqlens[b] .. cache_seqlens[b] + Lq - 1, in place), then its Lq queries attend to the
// sequence's keys: kv_len[b] = cache_seqlens[b] (+ Lq when appending). With
// options.causal = kBottomRight, query i sees the keys up to its own position
// kv_len[b] - Lq + i (the new tokens come after the cache); kTopLeft is refused.
//
// Shapes (names used in every error message):
//   query          [batch, heads, q_len, head_dim]        float32, bfloat16 or float16
//   cache.key      contiguous [batch, kv_heads, max_len, head_dim]
//                  paged      [num_blocks, kv_heads, block_size, head_dim] with block_table
//   cache.value    the same with v_dim
//   cache.block_table  int32 [batch, max_blocks_per_seq]: logical block n of sequence b (its
//                  tokens n·block_size ..) is physical block block_table[b, n]
//   cache.key_scale, cache.value_scale  float32, cache.key's shape without head_dim: per-token,
//                  per-head scales of an int8 cache (value = int8 · scale)
//   cache_seqlens  int32 [batch]
//   append         key [batch, kv_heads, q_len, head_dim], value [.., v_dim]: any float dtype
//   out            [batch, heads, q_len, v_dim]; lse [batch, heads, q_len] float32
// The cache is float32, bfloat16, float16 or int8 (key and value alike). Appending to an int8
// cache quantizes each (token, head) row symmetrically: scale = max|x| / 127 (0 for a zero row),
// stored = round(x / scale) clamped to [-127, 127]. GQA/MQA as in Forward.
//
// Every check runs before anything is written: a sequence that would run past its blocks or
// max_len, a block id out of range, two sequences mapping a block one of them appends to, a
// negative length, wrong shapes or dtypes. On error nothing in the cache changes.
//
// Options: scale, causal (kNone or kBottomRight), window, softcap, sinks, alibi_slopes,
// backend, interrupt and the work limits apply as in Forward; mask, dropout and varlen
// (cu_seqlens) are refused. The keys of each (sequence, kv head) are split across threads and
// merged by log-sum-exp in a fixed order, so results are bitwise identical for any thread count,
// and equal (within rounding) to Forward on the gathered cache.
#pragma once

#include <optional>

#include "sdpa/options.h"
#include "sdpa/tensor.h"

namespace sdpa {

struct KvCache {
  MutableTensorView key, value;
  std::optional<TensorView> block_table;                    // paged cache when set
  std::optional<MutableTensorView> key_scale, value_scale;  // int8 cache only
};

// New tokens to append before attending.
struct KvAppend {
  TensorView key, value;
};

// Writes out (and lse when non-null).
void AttentionWithKvCache(const TensorView& query, const KvCache& cache,
                          const TensorView& cache_seqlens, const std::optional<KvAppend>& append,
                          const MutableTensorView& out, const MutableTensorView* lse,
                          const Options& options = {});
// Returns out, of the query's dtype.
Tensor AttentionWithKvCache(const TensorView& query, const KvCache& cache,
                            const TensorView& cache_seqlens,
                            const std::optional<KvAppend>& append = std::nullopt,
                            const Options& options = {});

}  // namespace sdpa

// The KV-cache test cases shared by tests/api/kv_cache_test.cc (default SIMD target) and
// tests/cpu/storage_test.cc (every target): caches of any storage type and layout in memory the
// test owns, and a check of sdpa::AttentionWithKvCache against Forward on the gathered cache.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/half_cases.h"
#include "testing/tensors.h"

namespace sdpa_test {

template <typename S>
struct Cache {
  std::int64_t batch, kv_heads, head_dim, v_dim, block_size,
      max_blocks;  // block_size 0: contiguous
  std::vector<S> k, v;
  std::vector<float> k_scale, v_scale;
  std::vector<std::int32_t> table;

  Cache(std::int64_t b, std::int64_t hkv, std::int64_t d, std::int64_t dv, std::int64_t capacity,
        std::int64_t block)
      : batch(b), kv_heads(hkv), head_dim(d), v_dim(dv), block_size(block) {
    max_blocks = block > 0 ? (capacity + block - 1) / block : 0;
    const std::int64_t rows = block > 0 ? b * max_blocks + 3 : b;  // 3 spare physical blocks
    const std::int64_t slots = block > 0 ? block : capacity;
    k.assign(static_cast<std::size_t>(rows * hkv * slots * d), S{});
    v.assign(static_cast<std::size_t>(rows * hkv * slots * dv), S{});
    if constexpr (std::is_same_v<S, std::int8_t>) {
      k_scale.assign(static_cast<std::size_t>(rows * hkv * slots), 0.0f);
      v_scale = k_scale;
    }
    if (block > 0) {  // logical block n of sequence s -> a shuffled physical block
      table.resize(static_cast<std::size_t>(b * max_blocks));
      std::iota(table.begin(), table.end(), 3);
      sdpa_test::Random random(99);
      for (std::size_t i = table.size(); i > 1; --i) {
        std::swap(table[i - 1], table[static_cast<std::size_t>(random.NextBits() % i)]);
      }
    }
  }
  std::int64_t rows() const { return block_size > 0 ? batch * max_blocks + 3 : batch; }
  std::int64_t slots() const {
    return block_size > 0 ? block_size
                          : static_cast<std::int64_t>(k.size()) / (batch * kv_heads * head_dim);
  }
  sdpa::KvCache View() {
    sdpa::KvCache c;
    c.key = sdpa::MutableTensorView(k.data(), {rows(), kv_heads, slots(), head_dim});
    c.value = sdpa::MutableTensorView(v.data(), {rows(), kv_heads, slots(), v_dim});
    if (block_size > 0) c.block_table = sdpa::TensorView(table.data(), {batch, max_blocks});
    if constexpr (std::is_same_v<S, std::int8_t>) {
      c.key_scale = sdpa::MutableTensorView(k_scale.data(), {rows(), kv_heads, slots()});
      c.value_scale = sdpa::MutableTensorView(v_scale.data(), {rows(), kv_heads, slots()});
    }
    return c;
  }
  // Where key/value token j of sequence b and kv head h lives (element offset of its row).
  std::int64_t Offset(std::int64_t b, std::int64_t h, std::int64_t j, std::int64_t width) const {
    const std::int64_t row =
        block_size > 0 ? table[static_cast<std::size_t>(b * max_blocks + j / block_size)] : b;
    const std::int64_t slot = block_size > 0 ? j % block_size : j;
    return ((row * kv_heads + h) * slots() + slot) * width;
  }
  // The stored value of element x of token j, dequantized, as a double.
  double Key(std::int64_t b, std::int64_t h, std::int64_t j, std::int64_t x) const {
    return Value(k, k_scale, Offset(b, h, j, head_dim) + x, Offset(b, h, j, 1));
  }
  double Val(std::int64_t b, std::int64_t h, std::int64_t j, std::int64_t x) const {
    return Value(v, v_scale, Offset(b, h, j, v_dim) + x, Offset(b, h, j, 1));
  }
  static double Value(const std::vector<S>& data, const std::vector<float>& scale, std::int64_t at,
                      std::int64_t row) {
    const S x = data[static_cast<std::size_t>(at)];
    if constexpr (std::is_same_v<S, std::int8_t>) {
      return static_cast<double>(x) * scale[static_cast<std::size_t>(row)];
    } else if constexpr (sdpa_test::kIsHalf<S>) {
      return sdpa_test::ToDouble(x);
    } else {
      return static_cast<double>(x);
    }
  }
  // Fills the first `len[b]` tokens of each sequence through the library's own append (tested
  // separately below): a call with cache_seqlens = 0 and `len` new tokens per sequence would need
  // equal lengths, so tokens go in one at a time.
  void Fill(const std::vector<std::int32_t>& len, std::uint64_t seed) {
    const std::int32_t longest = *std::max_element(len.begin(), len.end());
    for (std::int32_t t = 0; t < longest; ++t) {
      for (std::int64_t b = 0; b < batch; ++b) {
        if (t >= len[static_cast<std::size_t>(b)]) continue;
        const Buffer<float> kn(Array::Uniform({1, kv_heads, 1, head_dim},
                                              seed + 2 * static_cast<std::uint64_t>(t * batch + b),
                                              -1.7, 1.7));
        const Buffer<float> vn(
            Array::Uniform({1, kv_heads, 1, v_dim},
                           seed + 1 + 2 * static_cast<std::uint64_t>(t * batch + b), -1.7, 1.7));
        const Buffer<float> q(Array({1, kv_heads, 1, head_dim}));
        std::vector<std::int32_t> seqlen = {t};
        // One sequence of the batch: a cache view of batch 1 that maps sequence b.
        sdpa::KvCache one = View();
        std::vector<std::int32_t> row_table;
        if (block_size > 0) {
          for (std::int64_t n = 0; n < max_blocks; ++n) {
            row_table.push_back(table[static_cast<std::size_t>(b * max_blocks + n)]);
          }
          one.block_table = sdpa::TensorView(row_table.data(), {1, max_blocks});
        } else {
          one.key.data = k.data() + b * kv_heads * slots() * head_dim;
          one.value.data = v.data() + b * kv_heads * slots() * v_dim;
          one.key.layout.shape[0] = one.value.layout.shape[0] = 1;
          if (one.key_scale) {
            one.key_scale->data = k_scale.data() + b * kv_heads * slots();
            one.value_scale->data = v_scale.data() + b * kv_heads * slots();
            one.key_scale->layout.shape[0] = one.value_scale->layout.shape[0] = 1;
          }
        }
        sdpa::AttentionWithKvCache(q.view(), one, sdpa::TensorView(seqlen.data(), {1}),
                                   sdpa::KvAppend{kn.view(), vn.view()});
      }
    }
  }
};

// Forward on sequence b's gathered (dequantized) cache, rounded to float32 like the 16-bit
// caches' values, with `options` (bottom-right causal etc.).
inline Array ForwardOnGathered(
    const Array& q, std::int64_t b, std::int64_t len,
    const std::function<double(std::int64_t, std::int64_t, std::int64_t)>& key,
    const std::function<double(std::int64_t, std::int64_t, std::int64_t)>& val,
    std::int64_t kv_heads, std::int64_t head_dim, std::int64_t v_dim, sdpa::Options options) {
  const std::int64_t heads = q.shape[1], q_len = q.shape[2];
  Array qb({1, heads, q_len, head_dim}), kb({1, kv_heads, len, head_dim}),
      vb({1, kv_heads, len, v_dim});
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t i = 0; i < q_len; ++i)
      for (std::int64_t x = 0; x < head_dim; ++x) qb({0, h, i, x}) = q({b, h, i, x});
  for (std::int64_t h = 0; h < kv_heads; ++h) {
    for (std::int64_t j = 0; j < len; ++j) {
      for (std::int64_t x = 0; x < head_dim; ++x) kb({0, h, j, x}) = key(h, j, x);
      for (std::int64_t x = 0; x < v_dim; ++x) vb({0, h, j, x}) = val(h, j, x);
    }
  }
  const Buffer<double> bq(qb), bk(kb), bv(vb);
  options.backend = sdpa::Backend::kReference;
  return sdpa_test::ReadView(sdpa::Attention(bq.view(), bk.view(), bv.view(), options).view());
}

struct Case {
  std::string name;
  std::int64_t batch, heads, kv_heads, q_len, head_dim, v_dim, block_size;
  std::vector<std::int32_t> lens;  // cached tokens per sequence
  bool append, causal = true, window = false, softcap = false, sinks = false;
};

template <typename S, typename Q>
void CheckAgainstForward(const Case& c, double bound) {
  const std::int64_t capacity =
      *std::max_element(c.lens.begin(), c.lens.end()) + (c.append ? c.q_len : 0) + 5;
  Cache<S> cache(c.batch, c.kv_heads, c.head_dim, c.v_dim, capacity, c.block_size);
  cache.Fill(c.lens, 7);
  Array q = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, 3, -1.7, 1.7);
  for (double& x : q.values) x = sdpa_test::RoundedTo<Q>(x);
  const Buffer<Q> bq(q);
  const Buffer<float> kn(Array::Uniform({c.batch, c.kv_heads, c.q_len, c.head_dim}, 4, -1.7, 1.7));
  const Buffer<float> vn(Array::Uniform({c.batch, c.kv_heads, c.q_len, c.v_dim}, 5, -1.7, 1.7));
  sdpa::Options options;
  options.causal = c.causal ? sdpa::Causal::kBottomRight : sdpa::Causal::kNone;
  if (c.window) options.window = sdpa::Window{9, 0};
  if (c.softcap) options.softcap = 3.0;
  if (c.sinks) options.sinks = std::vector<double>(static_cast<std::size_t>(c.heads), 0.5);
  std::vector<std::int32_t> seqlens = c.lens;
  Buffer<float> out(Array({c.batch, c.heads, c.q_len, c.v_dim}));
  Buffer<float> lse(Array({c.batch, c.heads, c.q_len}));
  std::optional<sdpa::KvAppend> append;
  if (c.append) append = sdpa::KvAppend{kn.view(), vn.view()};
  const sdpa::MutableTensorView lse_view = lse.mutable_view();
  sdpa::AttentionWithKvCache(bq.view(), cache.View(), sdpa::TensorView(seqlens.data(), {c.batch}),
                             append, out.mutable_view(), &lse_view, options);
  const Array got = out.Read();
  EXPECT_EQ(seqlens, c.lens) << "cache_seqlens is an input; it must not change";
  double worst = 0, scale = 0;
  for (std::int64_t b = 0; b < c.batch; ++b) {
    const std::int64_t len = c.lens[static_cast<std::size_t>(b)] + (c.append ? c.q_len : 0);
    const Array expected = ForwardOnGathered(
        q, b, len, [&](auto h, auto j, auto x) { return cache.Key(b, h, j, x); },
        [&](auto h, auto j, auto x) { return cache.Val(b, h, j, x); }, c.kv_heads, c.head_dim,
        c.v_dim, options);
    Array got_b({1, c.heads, c.q_len, c.v_dim});
    std::copy(got.values.begin() + b * c.heads * c.q_len * c.v_dim,
              got.values.begin() + (b + 1) * c.heads * c.q_len * c.v_dim, got_b.values.begin());
    worst = std::max(worst, MaxError(got_b, expected));
    for (std::int64_t h = 0; h < c.kv_heads; ++h)
      for (std::int64_t j = 0; j < len; ++j)
        for (std::int64_t x = 0; x < c.v_dim; ++x)
          scale = std::max(scale, std::fabs(cache.Val(b, h, j, x)));
  }
  EXPECT_LE(worst, bound * std::max(scale, 1e-30)) << c.name;
  // The appended tokens are in the cache, where they belong.
  if (c.append) {
    const Array kv = Array::Uniform({c.batch, c.kv_heads, c.q_len, c.head_dim}, 4, -1.7, 1.7);
    for (std::int64_t b = 0; b < c.batch; ++b) {
      for (std::int64_t t = 0; t < c.q_len; ++t) {
        const std::int64_t j = c.lens[static_cast<std::size_t>(b)] + t;
        for (std::int64_t x = 0; x < c.head_dim; ++x) {
          const double want = kv({b, 0, t, x});
          const double have = cache.Key(b, 0, j, x);
          if constexpr (std::is_same_v<S, float>) {
            ASSERT_EQ(have, static_cast<double>(static_cast<float>(want)));
          } else {
            const double tolerance = std::is_same_v<S, std::int8_t> ? 1.7 / 127 * 0.5 + 1e-6 : 1e-2;
            ASSERT_NEAR(have, want, tolerance);
          }
        }
      }
    }
  }
}

inline std::vector<Case> Cases() {
  return {
      {"decode_contiguous", 3, 8, 2, 1, 64, 64, 0, {100, 1, 700}, true},
      {"decode_no_append", 2, 4, 4, 1, 32, 32, 0, {50, 300}, false},
      {"speculative_4", 2, 8, 2, 4, 64, 64, 0, {200, 33}, true},
      {"chunked_prefill", 1, 4, 1, 40, 32, 48, 0, {90}, true},
      {"paged_16", 3, 8, 2, 1, 64, 64, 16, {100, 1, 700}, true},
      {"paged_1", 2, 4, 2, 2, 16, 16, 1, {13, 40}, true},
      {"paged_7", 2, 4, 2, 3, 16, 16, 7, {20, 55}, true},
      {"paged_128", 2, 8, 8, 1, 128, 128, 128, {1000, 130}, true},
      {"paged_causal_off", 2, 4, 2, 4, 32, 32, 16, {64, 10}, true, false},
      {"window_softcap_sinks", 2, 8, 2, 3, 32, 32, 16, {200, 20}, true, true, true, true, true},
      {"empty_cache", 2, 4, 2, 2, 32, 32, 0, {0, 0}, true},
  };
}

}  // namespace sdpa_test

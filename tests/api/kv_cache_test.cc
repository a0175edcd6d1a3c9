// Attention over a KV cache (sdpa/kv_cache.h, issue 15): every layout (contiguous, paged with
// any block size), dtype (float32, bfloat16, float16, int8) and option against Forward on the
// gathered cache, sequence by sequence; the append (what is written where, quantization);
// thread-count invariance; and every error, with nothing in the cache changed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/kv_cache_cases.h"
#include "testing/tensors.h"

namespace {

using sdpa::DType;
using sdpa_test::Array;
using sdpa_test::Buffer;

using sdpa_test::Cache;
using sdpa_test::Case;
using sdpa_test::Cases;
using sdpa_test::CheckAgainstForward;
using sdpa_test::MaxError;

TEST(KvCache, Float32MatchesForwardOnTheGatheredCache) {
  for (const Case& c : Cases()) CheckAgainstForward<float, float>(c, 2e-6);
}
TEST(KvCache, BFloat16CacheMatches) {
  for (const Case& c : Cases()) CheckAgainstForward<sdpa::bfloat16, sdpa::bfloat16>(c, 5e-3);
}
TEST(KvCache, Float16CacheWithFloat32Queries) {
  for (const Case& c : Cases()) CheckAgainstForward<sdpa::float16, float>(c, 1e-3);
}
TEST(KvCache, Int8CacheMatchesItsDequantizedValues) {
  for (const Case& c : Cases()) CheckAgainstForward<std::int8_t, float>(c, 2e-6);
}

// Appending quantizes each (token, head) row symmetrically: scale = max|x| / 127,
// stored = round(x / scale); a zero row gets scale 0.
TEST(KvCache, Int8AppendQuantizesPerTokenAndHead) {
  Cache<std::int8_t> cache(1, 2, 4, 4, 8, 0);
  Array kn({1, 2, 2, 4},
           std::vector<double>{0.5, -1.0, 0.25, 0.1, 0, 0, 0, 0, 3, 2, -1, 0, 8, 4, 2, 1});
  const Buffer<float> bk(kn), bv(kn), q(Array({1, 2, 2, 4}));
  std::vector<std::int32_t> seqlens = {3};
  sdpa::AttentionWithKvCache(q.view(), cache.View(), sdpa::TensorView(seqlens.data(), {1}),
                             sdpa::KvAppend{bk.view(), bv.view()});
  // Token 3 of head 0: max 1.0 -> scale 1/127.
  EXPECT_FLOAT_EQ(cache.k_scale[3], 1.0f / 127);
  EXPECT_EQ(cache.k[3 * 4 + 0], 64);  // round(0.5·127) = 63.5 -> 64 (nearest even)
  EXPECT_EQ(cache.k[3 * 4 + 1], -127);
  EXPECT_EQ(cache.k[3 * 4 + 2], 32);  // 31.75
  EXPECT_EQ(cache.k[3 * 4 + 3], 13);  // 12.7
  EXPECT_EQ(cache.k_scale[4], 0.0f);  // token 4, head 0: zeros
  EXPECT_EQ(cache.k[4 * 4 + 0], 0);
  // Head 1 (offset 8 tokens), token 3: max 3 -> scale 3/127, values 127, 85, -42, 0.
  EXPECT_FLOAT_EQ(cache.k_scale[8 + 3], 3.0f / 127);
  EXPECT_EQ(cache.k[(8 + 3) * 4 + 1], 85);
  EXPECT_EQ(cache.k[(8 + 3) * 4 + 2], -42);
  EXPECT_EQ(cache.k_scale[0], 0.0f) << "tokens before the append are untouched";
}

// What int8 adds: the error of attention on an int8 cache against the float32 values it was
// quantized from, for int8 K and int8 V separately (docs/semantics.md §15).
TEST(KvCache, Int8ErrorIsBoundedAndMeasured) {
  const std::int64_t B = 2, H = 8, Hkv = 2, D = 128, L = 2048;
  const std::vector<std::int32_t> lens = {L, L / 2};
  Cache<std::int8_t> qcache(B, Hkv, D, D, L + 1, 16);
  Cache<float> fcache(B, Hkv, D, D, L + 1, 16);
  qcache.Fill(lens, 21);
  fcache.Fill(lens, 21);
  const Buffer<float> q(Array::Uniform({B, H, 1, D}, 22, -1.7, 1.7));
  std::vector<std::int32_t> seqlens = lens;
  const auto run = [&](auto& cache) {
    return sdpa_test::ReadView(
        sdpa::AttentionWithKvCache(q.view(), cache.View(), sdpa::TensorView(seqlens.data(), {B}))
            .view());
  };
  const Array exact = run(fcache), both = run(qcache);
  // int8 K alone / V alone: mix the caches' storage (values from the float cache where exact).
  Cache<float> k_only = fcache, v_only = fcache;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < Hkv; ++h)
      for (std::int64_t j = 0; j < lens[static_cast<std::size_t>(b)]; ++j)
        for (std::int64_t x = 0; x < D; ++x) {
          k_only.k[static_cast<std::size_t>(fcache.Offset(b, h, j, D) + x)] =
              static_cast<float>(qcache.Key(b, h, j, x));
          v_only.v[static_cast<std::size_t>(fcache.Offset(b, h, j, D) + x)] =
              static_cast<float>(qcache.Val(b, h, j, x));
        }
  const double scale = 1.7;  // max|V|
  const double e_both = MaxError(both, exact) / scale, e_k = MaxError(run(k_only), exact) / scale,
               e_v = MaxError(run(v_only), exact) / scale;
  std::printf("  int8 error / max|V|: K and V %.3g, K only %.3g, V only %.3g\n", e_both, e_k, e_v);
  // About four times the worst measured here (5.1e-4, 3.3e-4, 4.1e-4).
  EXPECT_LE(e_both, 2e-3);
  EXPECT_LE(e_k, 2e-3);
  EXPECT_LE(e_v, 2e-3);
}

TEST(KvCache, ThreadCountDoesNotChangeTheBits) {
  Cache<sdpa::bfloat16> cache(2, 2, 64, 64, 3001, 16);
  const std::vector<std::int32_t> lens = {3000, 700};
  cache.Fill(lens, 31);
  const Buffer<sdpa::bfloat16> q(Array::Uniform({2, 8, 2, 64}, 32));
  std::vector<std::int32_t> seqlens = lens;
  sdpa::Options options;
  options.causal = sdpa::Causal::kBottomRight;
  const auto run = [&](int threads) {
    sdpa::SetNumThreads(threads);
    return sdpa_test::ReadView(sdpa::AttentionWithKvCache(q.view(), cache.View(),
                                                          sdpa::TensorView(seqlens.data(), {2}),
                                                          std::nullopt, options)
                                   .view());
  };
  const Array one = run(1);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(run(2), one));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(run(3), one));
  sdpa::SetNumThreads(0);
}

// ---- Errors: each refused before anything is written --------------------------------------

struct BadCall {
  std::string name;
  std::function<void(sdpa::KvCache&, std::vector<std::int32_t>& seqlens,
                     std::vector<std::int32_t>& table, sdpa::Options&, bool& append)>
      change;
  std::string message;
};

TEST(KvCache, BadCallsThrowAndChangeNothing) {
  const std::vector<BadCall> cases = {
      {"negative_length", [](auto&, auto& s, auto&, auto&, bool&) { s[1] = -1; },
       "sdpa: cache_seqlens[1] is -1 but must be >= 0"},
      {"past_capacity", [](auto&, auto& s, auto&, auto&, bool&) { s[0] = 63; },
       "sdpa: cache_seqlens[0] is 63 and 2 token(s) are appended, but sequence 0 has room for 64 "
       "(block_table.shape[1] · block_size)"},
      {"block_out_of_range",
       [](auto&, auto& s, auto& t, auto&, bool&) {
         s[0] = 20;
         t[1] = 99;
       },
       "sdpa: cache.block_table[0, 1] is 99 but must be in [0, 11)"},
      {"shared_block_appended",
       [](auto&, auto& s, auto& t, auto&, bool&) {
         s[0] = 10;
         s[1] = 30;
         t[0] = t[4 + 1];  // sequence 0 appends into block 0, which sequence 1 also maps
       },
       "is appended to by sequence 0 but also mapped by sequence 1"},
      {"top_left", [](auto&, auto&, auto&, auto& o, bool&) { o.causal = sdpa::Causal::kTopLeft; },
       "sdpa: options.causal is kTopLeft but must be kNone or kBottomRight with a KV cache"},
      {"mask",
       [](auto&, auto&, auto&, auto& o, bool&) {
         static const bool m = true;
         o.mask = sdpa::TensorView(&m, {1, 1});
       },
       "sdpa: options.mask is not supported with a KV cache"},
      {"dropout", [](auto&, auto&, auto&, auto& o, bool&) { o.dropout_p = 0.1; },
       "sdpa: options.dropout_p must be 0 with a KV cache"},
      {"value_dtype", [](auto& c, auto&, auto&, auto&, bool&) { c.value.dtype = DType::kFloat16; },
       "sdpa: cache.value.dtype is float16 but cache.key.dtype is float32"},
      {"scales_on_float",
       [](auto& c, auto&, auto&, auto&, bool&) {
         static float s[11 * 2 * 16];
         c.key_scale = sdpa::MutableTensorView(s, {11, 2, 16});
       },
       "sdpa: cache.key_scale is given but the cache is float32"},
      {"head_dim", [](auto& c, auto&, auto&, auto&, bool&) { c.key.layout.shape[3] = 8; },
       "sdpa: cache.key.shape[3] (head_dim) is 8 but query.shape[3] is 16"},
      {"sinks", [](auto&, auto&, auto&, auto& o, bool&) { o.sinks = {1.0}; },
       "sdpa: options.sinks has 1 values but must have one per query head (4)"},
  };
  for (const BadCall& bad : cases) {
    Cache<float> cache(2, 2, 16, 16, 64, 16);  // 2 sequences × 4 blocks of 16, + 3 spare = 11
    const std::vector<std::int32_t> lens = {5, 9};
    cache.Fill(lens, 41);
    std::vector<std::int32_t> seqlens = lens;
    sdpa::Options options;
    options.causal = sdpa::Causal::kBottomRight;
    bool append = true;
    sdpa::KvCache view = cache.View();
    bad.change(view, seqlens, cache.table, options, append);
    const std::vector<float> k_before = cache.k, v_before = cache.v;
    const Buffer<float> q(Array::Uniform({2, 4, 2, 16}, 42));
    const Buffer<float> kn(Array::Uniform({2, 2, 2, 16}, 43)),
        vn(Array::Uniform({2, 2, 2, 16}, 44));
    Buffer<float> out(Array({2, 4, 2, 16}, 7.0));
    const auto call = [&] {
      sdpa::AttentionWithKvCache(q.view(), view, sdpa::TensorView(seqlens.data(), {2}),
                                 sdpa::KvAppend{kn.view(), vn.view()}, out.mutable_view(), nullptr,
                                 options);
    };
    const bool dtype = bad.name == "value_dtype";
    EXPECT_TRUE(dtype ? sdpa_test::ThrowsDTypeError(call, bad.message)
                      : sdpa_test::ThrowsError(call, bad.message))
        << bad.name;

    EXPECT_EQ(cache.k, k_before) << bad.name << ": the cache changed";
    EXPECT_EQ(cache.v, v_before) << bad.name;
    for (const double x : out.Read().values) ASSERT_EQ(x, 7.0) << bad.name;
  }
}

}  // namespace

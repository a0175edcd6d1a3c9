// A tiny random-weight transformer decoder (2 layers, 4 query heads sharing 2 KV heads, pre-norm,
// ReLU MLP) that generates tokens greedily with a paged KV cache through
// sdpa::AttentionWithKvCache, and checks each step against a loop that recomputes full causal
// attention (sdpa::Attention) over every token so far, from the same cached values.
//
// Two caches: bfloat16 (blocks of 4 tokens, shuffled in a shared pool) and int8 with per-token
// scales (blocks of 16). For each, the generated tokens must equal the recomputing loop's and the
// logits agree within float32 rounding. Prints the tokens and "ok"; exits with 1 on a mismatch.
//   cmake -S examples/decode -B build-decode -DCMAKE_PREFIX_PATH=<sdpa install prefix>
#include <sdpa/sdpa.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr std::int64_t kVocab = 97, kModel = 64, kLayers = 2, kHeads = 4, kKvHeads = 2,
                       kHeadDim = 16, kHidden = 128, kPrompt = 7, kNew = 24;
constexpr std::int64_t kMaxTokens = kPrompt + kNew;

using Matrix = std::vector<float>;  // row-major

Matrix Random(std::int64_t rows, std::int64_t cols, std::mt19937& generator) {
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(rows)));
  Matrix m(static_cast<std::size_t>(rows * cols));
  for (float& x : m) x = normal(generator);
  return m;
}

// y[c] = Σ_r x[r] · w[r][c].
std::vector<float> Times(const std::vector<float>& x, const Matrix& w, std::int64_t cols) {
  std::vector<float> y(static_cast<std::size_t>(cols), 0.0f);
  for (std::size_t r = 0; r < x.size(); ++r) {
    for (std::int64_t c = 0; c < cols; ++c)
      y[static_cast<std::size_t>(c)] +=
          x[r] * w[r * static_cast<std::size_t>(cols) + static_cast<std::size_t>(c)];
  }
  return y;
}

std::vector<float> RmsNorm(const std::vector<float>& x) {
  double sum = 0;
  for (const float v : x) sum += static_cast<double>(v) * v;
  const auto inv = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(x.size()) + 1e-6));
  std::vector<float> y = x;
  for (float& v : y) v *= inv;
  return y;
}

struct Layer {
  Matrix wq, wk, wv, wo, w1, w2;
};

struct Model {
  Matrix embedding;  // [vocab][model]
  std::vector<Layer> layers;
  explicit Model(unsigned seed) {
    std::mt19937 g(seed);
    embedding = Random(kVocab, kModel, g);
    for (int l = 0; l < kLayers; ++l) {
      layers.push_back(
          {Random(kModel, kHeads * kHeadDim, g), Random(kModel, kKvHeads * kHeadDim, g),
           Random(kModel, kKvHeads * kHeadDim, g), Random(kHeads * kHeadDim, kModel, g),
           Random(kModel, kHidden, g), Random(kHidden, kModel, g)});
    }
  }
};

// One layer's paged cache in a pool of blocks shared by every layer, as a server would keep it.
struct PagedCache {
  sdpa::DType dtype;
  std::int64_t block_size;
  std::int64_t blocks;
  std::vector<unsigned char> k, v;
  std::vector<float> k_scale, v_scale;
  std::vector<std::int32_t> table;  // [1][max blocks]

  PagedCache(sdpa::DType dtype_, std::int64_t block_size_, unsigned seed)
      : dtype(dtype_), block_size(block_size_) {
    const std::int64_t per_seq = (kMaxTokens + block_size - 1) / block_size;
    blocks = 2 * per_seq + 1;  // room to scatter
    const std::size_t elements =
        static_cast<std::size_t>(blocks * kKvHeads * block_size * kHeadDim);
    k.assign(elements * sdpa::DTypeSize(dtype), 0);
    v = k;
    if (dtype == sdpa::DType::kInt8) {
      k_scale.assign(static_cast<std::size_t>(blocks * kKvHeads * block_size), 0.0f);
      v_scale = k_scale;
    }
    std::vector<std::int32_t> pool(static_cast<std::size_t>(blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));
    table.assign(pool.begin(), pool.begin() + per_seq);
  }
  sdpa::KvCache View() {
    sdpa::KvCache c;
    const sdpa::Layout layout = sdpa::Layout::Contiguous({blocks, kKvHeads, block_size, kHeadDim});
    c.key = sdpa::MutableTensorView(k.data(), dtype, layout);
    c.value = sdpa::MutableTensorView(v.data(), dtype, layout);
    c.block_table = sdpa::TensorView(table.data(), {1, static_cast<std::int64_t>(table.size())});
    if (dtype == sdpa::DType::kInt8) {
      c.key_scale = sdpa::MutableTensorView(k_scale.data(), {blocks, kKvHeads, block_size});
      c.value_scale = sdpa::MutableTensorView(v_scale.data(), {blocks, kKvHeads, block_size});
    }
    return c;
  }
  // Token j of kv head h as float32 (dequantized), read back from the cache.
  std::vector<float> Read(bool values, std::int64_t h, std::int64_t j) const {
    const std::int64_t block = table[static_cast<std::size_t>(j / block_size)];
    const std::int64_t row = (block * kKvHeads + h) * block_size + j % block_size;
    const std::vector<unsigned char>& data = values ? v : k;
    std::vector<float> out(kHeadDim);
    for (std::int64_t x = 0; x < kHeadDim; ++x) {
      const std::size_t at = static_cast<std::size_t>(row * kHeadDim + x);
      if (dtype == sdpa::DType::kBFloat16) {
        sdpa::bfloat16 b;
        std::copy_n(&data[at * 2], 2, reinterpret_cast<unsigned char*>(&b));
        out[static_cast<std::size_t>(x)] = sdpa::ToFloat(b);
      } else {
        const float scale = (values ? v_scale : k_scale)[static_cast<std::size_t>(row)];
        out[static_cast<std::size_t>(x)] =
            static_cast<float>(static_cast<std::int8_t>(data[at])) * scale;
      }
    }
    return out;
  }
};

// The attention of one layer for the newest token, two ways: through the cache (appending it),
// and by recomputing full causal attention over every cached token with sdpa::Attention.
struct Attention {
  std::vector<float> cached, recomputed;
};

Attention Attend(PagedCache& cache, std::int64_t position, const std::vector<float>& q,
                 const std::vector<float>& k, const std::vector<float>& v) {
  Attention a;
  const sdpa::TensorView query(q.data(), {1, kHeads, 1, kHeadDim});
  const sdpa::TensorView key(k.data(), {1, kKvHeads, 1, kHeadDim}),
      value(v.data(), {1, kKvHeads, 1, kHeadDim});
  const std::vector<std::int32_t> seqlens = {static_cast<std::int32_t>(position)};
  sdpa::Options options;
  options.causal = sdpa::Causal::kBottomRight;
  const sdpa::Tensor out =
      sdpa::AttentionWithKvCache(query, cache.View(), sdpa::TensorView(seqlens.data(), {1}),
                                 sdpa::KvAppend{key, value}, options);
  a.cached.assign(out.data<float>(), out.data<float>() + out.size());
  // Recompute: every token's K/V as stored (rounded or quantized), all positions at once.
  const std::int64_t len = position + 1;
  std::vector<float> keys(static_cast<std::size_t>(kKvHeads * len * kHeadDim)), values(keys.size());
  for (std::int64_t h = 0; h < kKvHeads; ++h) {
    for (std::int64_t j = 0; j < len; ++j) {
      const std::vector<float> kr = cache.Read(false, h, j), vr = cache.Read(true, h, j);
      std::copy(kr.begin(), kr.end(), keys.begin() + (h * len + j) * kHeadDim);
      std::copy(vr.begin(), vr.end(), values.begin() + (h * len + j) * kHeadDim);
    }
  }
  // In the cache's own 16-bit type when it has one (the engine then rounds P alike).
  const sdpa::DType recompute =
      cache.dtype == sdpa::DType::kInt8 ? sdpa::DType::kFloat32 : cache.dtype;
  sdpa::Tensor k_full(recompute, {1, kKvHeads, len, kHeadDim});
  sdpa::Tensor v_full(recompute, {1, kKvHeads, len, kHeadDim});
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (recompute == sdpa::DType::kBFloat16) {  // exact: the values were read from bfloat16
      k_full.data<sdpa::bfloat16>()[i] = sdpa::ToBFloat16(keys[i]);
      v_full.data<sdpa::bfloat16>()[i] = sdpa::ToBFloat16(values[i]);
    } else {
      k_full.data<float>()[i] = keys[i];
      v_full.data<float>()[i] = values[i];
    }
  }
  const sdpa::Tensor full = sdpa::Attention(query, k_full.view(), v_full.view(), options);
  a.recomputed.assign(full.data<float>(), full.data<float>() + full.size());
  return a;
}

// Greedy generation; returns false on a mismatch between the cached and the recomputed path.
bool Generate(const Model& model, sdpa::DType dtype, std::int64_t block_size,
              std::vector<std::int64_t>& tokens) {
  std::vector<PagedCache> caches;
  for (int l = 0; l < kLayers; ++l)
    caches.emplace_back(dtype, block_size, 100 + static_cast<unsigned>(l));
  double worst = 0;
  bool same = true;
  for (std::int64_t pos = 0; pos + 1 < kMaxTokens; ++pos) {
    const std::int64_t token = tokens[static_cast<std::size_t>(pos)];
    std::vector<float> x(model.embedding.begin() + token * kModel,
                         model.embedding.begin() + (token + 1) * kModel);
    std::vector<float> x_check = x;
    for (int l = 0; l < kLayers; ++l) {
      const Layer& w = model.layers[static_cast<std::size_t>(l)];
      const std::vector<float> h = RmsNorm(x);
      const Attention a =
          Attend(caches[static_cast<std::size_t>(l)], pos, Times(h, w.wq, kHeads * kHeadDim),
                 Times(h, w.wk, kKvHeads * kHeadDim), Times(h, w.wv, kKvHeads * kHeadDim));
      for (std::size_t i = 0; i < a.cached.size(); ++i)
        worst = std::max(worst, static_cast<double>(std::fabs(a.cached[i] - a.recomputed[i])));
      const std::vector<float> o = Times(a.cached, w.wo, kModel),
                               o_check = Times(a.recomputed, w.wo, kModel);
      for (std::int64_t i = 0; i < kModel; ++i) {
        x[static_cast<std::size_t>(i)] += o[static_cast<std::size_t>(i)];
        x_check[static_cast<std::size_t>(i)] += o_check[static_cast<std::size_t>(i)];
      }
      for (std::vector<float>* stream : {&x, &x_check}) {
        std::vector<float> hidden = Times(RmsNorm(*stream), w.w1, kHidden);
        for (float& u : hidden) u = std::max(u, 0.0f);
        const std::vector<float> y = Times(hidden, w.w2, kModel);
        for (std::int64_t i = 0; i < kModel; ++i)
          (*stream)[static_cast<std::size_t>(i)] += y[static_cast<std::size_t>(i)];
      }
    }
    if (pos + 1 < kPrompt) continue;  // still reading the prompt
    const auto argmax = [&](const std::vector<float>& state) {
      std::int64_t best = 0;
      float best_logit = -1e30f;
      const std::vector<float> n = RmsNorm(state);
      for (std::int64_t t = 0; t < kVocab; ++t) {
        float logit = 0;
        for (std::int64_t i = 0; i < kModel; ++i)
          logit += n[static_cast<std::size_t>(i)] *
                   model.embedding[static_cast<std::size_t>(t * kModel + i)];
        if (logit > best_logit) {
          best_logit = logit;
          best = t;
        }
      }
      return best;
    };
    const std::int64_t next = argmax(x), next_check = argmax(x_check);
    same = same && next == next_check;
    tokens[static_cast<std::size_t>(pos + 1)] = next;
  }
  std::printf("%s cache, blocks of %lld: largest attention difference %.2g%s\n",
              sdpa::DTypeName(dtype), static_cast<long long>(block_size), worst,
              same ? "" : ", TOKENS DIFFER");
  return same && worst <= 1e-5;
}

}  // namespace

int main() {
  const Model model(7);
  bool ok = true;
  for (const auto& [dtype, block] : {std::pair{sdpa::DType::kBFloat16, std::int64_t{4}},
                                     std::pair{sdpa::DType::kInt8, std::int64_t{16}}}) {
    std::vector<std::int64_t> tokens(kMaxTokens, 0);
    for (std::int64_t i = 0; i < kPrompt; ++i)
      tokens[static_cast<std::size_t>(i)] = (i * 31 + 5) % kVocab;
    ok = Generate(model, dtype, block, tokens) && ok;
    std::string text;
    for (const std::int64_t t : tokens) text += std::to_string(t) + " ";
    std::printf("  tokens: %s\n", text.c_str());
  }
  std::printf("%s\n", ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}

// Attention over a KV cache (sdpa/kv_cache.h): validate everything, append the new tokens, then
// run the same engine as Forward on a Problem whose K/V source is the cache (contiguous or paged)
// and whose sequences have their own key counts. No kernel of its own: decode rows already take
// the engine's dot form and split-KV path (cpu/schedule.h).
#include "sdpa/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "api/dispatch.h"
#include "api/validate.h"
#include "core/types.h"
#include "sdpa/error.h"

namespace sdpa {
namespace {

using internal::Fail;
using internal::FailDType;
using internal::ShapeString;

// The cache's geometry and each sequence's lengths, once validated.
struct CacheShape {
  std::int64_t batch = 0, heads = 0, kv_heads = 0, q_len = 0, head_dim = 0, v_dim = 0;
  bool paged = false;
  std::int64_t slots = 0;                   // max_len (contiguous) or block_size (paged)
  std::int64_t blocks = 0;                  // physical blocks (paged)
  std::int64_t max_blocks = 0;              // block_table.shape[1]
  std::int64_t appended = 0;                // new tokens per sequence: q_len with an append, else 0
  std::vector<std::int64_t> cached, total;  // per sequence: before the call, attended
};

std::vector<std::int64_t> Shape4(const Layout& l) {
  return std::vector<std::int64_t>(l.shape, l.shape + l.rank);
}

void CheckRank4(const char* name, const TensorView& view) {
  internal::CheckView(name, view.data, view.dtype, view.layout, 4, 4);
}

void CheckShapeIs(const char* name, const Layout& layout, const std::vector<std::int64_t>& want) {
  if (Shape4(layout) != want) {
    Fail(name, ".shape is ", ShapeString(layout), " but must be ", ShapeString(want));
  }
}

bool IsFloat16Or32(DType d) {
  return d == DType::kFloat32 || d == DType::kBFloat16 || d == DType::kFloat16;
}

// Reads an int32 element of a rank-1 or rank-2 view.
std::int32_t Int32At(const TensorView& view, std::int64_t i, std::int64_t j = 0) {
  return static_cast<const std::int32_t*>(
      view.data)[i * view.layout.strides[0] + (view.rank() > 1 ? j * view.layout.strides[1] : 0)];
}

CacheShape ValidateShapes(const TensorView& query, const KvCache& cache,
                          const TensorView& cache_seqlens, const std::optional<KvAppend>& append) {
  CacheShape s;
  CheckRank4("query", query);
  if (!IsFloat16Or32(query.dtype)) {
    FailDType("query.dtype is ", DTypeName(query.dtype),
              " but must be float32, bfloat16 or float16 with a KV cache");
  }
  CheckRank4("cache.key", cache.key);
  CheckRank4("cache.value", cache.value);
  const DType cache_dtype = cache.key.dtype;
  if (!IsFloat16Or32(cache_dtype) && cache_dtype != DType::kInt8) {
    FailDType("cache.key.dtype is ", DTypeName(cache_dtype),
              " but must be float32, bfloat16, float16 or int8");
  }
  if (cache.value.dtype != cache_dtype) {
    FailDType("cache.value.dtype is ", DTypeName(cache.value.dtype), " but cache.key.dtype is ",
              DTypeName(cache_dtype));
  }
  s.batch = query.dim(0);
  s.heads = query.dim(1);
  s.q_len = query.dim(2);
  s.head_dim = query.dim(3);
  s.kv_heads = cache.key.dim(1);
  s.v_dim = cache.value.dim(3);
  s.slots = cache.key.dim(2);
  s.paged = cache.block_table.has_value();
  if (cache.key.dim(3) != s.head_dim) {
    Fail("cache.key.shape[3] (head_dim) is ", cache.key.dim(3), " but query.shape[3] is ",
         s.head_dim);
  }
  if (s.kv_heads == 0 ? s.heads != 0 : s.heads % s.kv_heads != 0) {
    Fail("query.shape[1] (heads) is ", s.heads, ", which is not a multiple of cache.key.shape[1] ",
         "(kv_heads) ", s.kv_heads);
  }
  for (int d = 0; d < 3; ++d) {
    if (cache.value.dim(d) != cache.key.dim(d)) {
      Fail("cache.value.shape[", d, "] is ", cache.value.dim(d), " but cache.key.shape[", d,
           "] is ", cache.key.dim(d));
    }
  }
  if (cache_dtype == DType::kInt8 && ((cache.key.stride(3) != 1 && s.head_dim > 1) ||
                                      (cache.value.stride(3) != 1 && s.v_dim > 1))) {
    Fail(
        "an int8 cache must have contiguous rows (cache.key.strides[3] and "
        "cache.value.strides[3] equal to 1)");
  }
  if (s.paged) {
    const TensorView& table = *cache.block_table;
    internal::CheckView("cache.block_table", table.data, table.dtype, table.layout, 2, 2);
    if (table.dtype != DType::kInt32) {
      FailDType("cache.block_table.dtype is ", DTypeName(table.dtype), " but must be int32");
    }
    if (table.dim(0) != s.batch) {
      Fail("cache.block_table.shape[0] is ", table.dim(0), " but query.shape[0] (batch) is ",
           s.batch);
    }
    s.blocks = cache.key.dim(0);
    s.max_blocks = table.dim(1);
    if (s.slots < 1) Fail("cache.key.shape[2] (block_size) is ", s.slots, " but must be >= 1");
  } else if (cache.key.dim(0) != s.batch) {
    Fail("cache.key.shape[0] is ", cache.key.dim(0), " but query.shape[0] (batch) is ", s.batch);
  }

  internal::CheckView("cache_seqlens", cache_seqlens.data, cache_seqlens.dtype,
                      cache_seqlens.layout, 1, 1);
  if (cache_seqlens.dtype != DType::kInt32) {
    FailDType("cache_seqlens.dtype is ", DTypeName(cache_seqlens.dtype), " but must be int32");
  }
  if (cache_seqlens.dim(0) != s.batch) {
    Fail("cache_seqlens.shape[0] is ", cache_seqlens.dim(0), " but query.shape[0] (batch) is ",
         s.batch);
  }
  if (append) {
    CheckRank4("append.key", append->key);
    CheckRank4("append.value", append->value);
    for (const auto& [name, view] :
         {std::pair{"append.key", &append->key}, std::pair{"append.value", &append->value}}) {
      if (!IsFloat16Or32(view->dtype)) {
        FailDType(name, ".dtype is ", DTypeName(view->dtype),
                  " but must be float32, bfloat16 or float16");
      }
    }
    CheckShapeIs("append.key", append->key.layout, {s.batch, s.kv_heads, s.q_len, s.head_dim});
    CheckShapeIs("append.value", append->value.layout, {s.batch, s.kv_heads, s.q_len, s.v_dim});
    s.appended = s.q_len;
  }
  const std::int64_t capacity = s.paged ? s.max_blocks * s.slots : s.slots;
  for (std::int64_t b = 0; b < s.batch; ++b) {
    const std::int64_t cached = Int32At(cache_seqlens, b);
    if (cached < 0) Fail("cache_seqlens[", b, "] is ", cached, " but must be >= 0");
    if (cached + s.appended > capacity) {
      Fail("cache_seqlens[", b, "] is ", cached, " and ", s.appended,
           " token(s) are appended, but sequence ", b, " has room for ", capacity,
           s.paged ? " (block_table.shape[1] · block_size)" : " (cache.key.shape[2], max_len)");
    }
    s.cached.push_back(cached);
    s.total.push_back(cached + s.appended);
  }
  return s;
}

// Paged caches: every block a sequence uses is in range, and a block that an append writes is
// used by nobody else (shared, read-only prefix blocks are fine).
void ValidateBlocks(const CacheShape& s, const TensorView& table) {
  std::map<std::int64_t, std::vector<std::pair<std::int64_t, std::int64_t>>> users;
  for (std::int64_t b = 0; b < s.batch; ++b) {
    const std::int64_t used = (s.total[static_cast<std::size_t>(b)] + s.slots - 1) / s.slots;
    for (std::int64_t n = 0; n < used; ++n) {
      const std::int64_t block = Int32At(table, b, n);
      if (block < 0 || block >= s.blocks) {
        Fail("cache.block_table[", b, ", ", n, "] is ", block, " but must be in [0, ", s.blocks,
             ") (cache.key.shape[0] blocks); sequence ", b, " uses its first ", used, " block(s)");
      }
      users[block].emplace_back(b, n);
    }
  }
  for (std::int64_t b = 0; b < s.batch && s.appended > 0; ++b) {
    const std::int64_t from = s.cached[static_cast<std::size_t>(b)] / s.slots;
    const std::int64_t to = (s.total[static_cast<std::size_t>(b)] - 1) / s.slots;
    for (std::int64_t n = from; n <= to; ++n) {
      const std::int64_t block = Int32At(table, b, n);
      for (const auto& [other_b, other_n] : users[block]) {
        if (other_b == b && other_n == n) continue;
        Fail("cache.block_table[", b, ", ", n, "] = ", block, " is appended to by sequence ", b,
             " but also mapped by sequence ", other_b, " (cache.block_table[", other_b, ", ",
             other_n, "]); a block that is written must belong to one sequence");
      }
    }
  }
}

// int8 caches need scales shaped like the cache without head_dim; others must not have them.
void ValidateScales(const KvCache& cache) {
  const bool int8 = cache.key.dtype == DType::kInt8;
  for (const auto& [name, scale, of] :
       {std::tuple{"cache.key_scale", &cache.key_scale, &cache.key},
        std::tuple{"cache.value_scale", &cache.value_scale, &cache.value}}) {
    if (!int8) {
      if (scale->has_value()) Fail(name, " is given but the cache is ", DTypeName(of->dtype));
      continue;
    }
    if (!scale->has_value()) Fail(name, " is required for an int8 cache");
    const MutableTensorView& view = **scale;
    internal::CheckView(name, view.data, view.dtype, view.layout, 3, 3);
    if (view.dtype != DType::kFloat32) {
      FailDType(name, ".dtype is ", DTypeName(view.dtype), " but must be float32");
    }
    const std::vector<std::int64_t> want = {of->dim(0), of->dim(1), of->dim(2)};
    if (std::vector<std::int64_t>(view.layout.shape, view.layout.shape + 3) != want) {
      Fail(name, ".shape is ", ShapeString(view.layout), " but must be ", ShapeString(want),
           " (the cache's shape without head_dim)");
    }
  }
}

// Nothing written may overlap anything read, or another written view.
void ValidateOverlaps(const TensorView& query, const KvCache& cache,
                      const TensorView& cache_seqlens, const std::optional<KvAppend>& append) {
  std::vector<std::pair<const char*, TensorView>> written = {{"cache.key", cache.key},
                                                             {"cache.value", cache.value}};
  if (cache.key_scale) written.emplace_back("cache.key_scale", *cache.key_scale);
  if (cache.value_scale) written.emplace_back("cache.value_scale", *cache.value_scale);
  std::vector<std::pair<const char*, TensorView>> read = {{"query", query},
                                                          {"cache_seqlens", cache_seqlens}};
  if (cache.block_table) read.emplace_back("cache.block_table", *cache.block_table);
  if (append) {
    read.emplace_back("append.key", append->key);
    read.emplace_back("append.value", append->value);
  }
  for (std::size_t w = 0; w < written.size(); ++w) {
    const TensorView& a = written[w].second;
    for (const auto& [name, b] : read) {
      if (internal::Overlaps(a.data, a.dtype, a.layout, b.data, b.dtype, b.layout)) {
        Fail(written[w].first, " overlaps ", name, " in memory");
      }
    }
    for (std::size_t o = 0; o < w; ++o) {
      const TensorView& b = written[o].second;
      if (internal::Overlaps(a.data, a.dtype, a.layout, b.data, b.dtype, b.layout)) {
        Fail(written[w].first, " overlaps ", written[o].first, " in memory");
      }
    }
  }
}

void ValidateOptions(const Options& options) {
  if (options.mask) Fail("options.mask is not supported with a KV cache (use causal or window)");
  if (options.dropout_p != 0) Fail("options.dropout_p must be 0 with a KV cache (inference)");
  if (!options.cu_seqlens_q.empty() || !options.cu_seqlens_k.empty()) {
    Fail("options.cu_seqlens_q/k are not supported with a KV cache; its sequences are the batch");
  }
  if (options.causal == Causal::kTopLeft) {
    Fail(
        "options.causal is kTopLeft but must be kNone or kBottomRight with a KV cache (the new "
        "tokens come after the cached ones)");
  }
}

// The Problem of a call: validated options and queries from ValidateInputs on stand-in K/V views
// of the attended shape, then the cache as the K/V source.
internal::Problem MakeProblem(const TensorView& query, const KvCache& cache, const CacheShape& s,
                              const Options& options) {
  const std::int64_t longest =
      s.total.empty() ? 0 : *std::max_element(s.total.begin(), s.total.end());
  const DType stand_in = cache.key.dtype == DType::kInt8 ? DType::kFloat32 : cache.key.dtype;
  const Layout k_layout = Layout::Strided({s.batch, s.kv_heads, longest, s.head_dim}, {0, 0, 0, 0});
  const Layout v_layout = Layout::Strided({s.batch, s.kv_heads, longest, s.v_dim}, {0, 0, 0, 0});
  const TensorView k(query.data != nullptr ? query.data : cache.key.data, stand_in, k_layout);
  const TensorView v(query.data != nullptr ? query.data : cache.key.data, stand_in, v_layout);
  internal::Problem p = internal::ValidateInputs(query, k, v, options);

  internal::KvSource& kv = p.kv;
  const auto set = [](internal::Operand<const void>& op, const TensorView& view) {
    op.data = view.data;
    op.dtype = view.dtype;
    for (int d = 0; d < 4; ++d) op.stride[d] = d < view.rank() ? view.stride(d) : 0;
  };
  set(kv.k, cache.key);
  set(kv.v, cache.value);
  if (cache.key_scale) set(kv.k_scale, *cache.key_scale);
  if (cache.value_scale) set(kv.v_scale, *cache.value_scale);
  if (s.paged) {
    const TensorView& table = *cache.block_table;
    if (table.stride(1) != 1 && s.max_blocks > 1) {
      Fail("cache.block_table must have contiguous rows (strides[1] == 1)");
    }
    kv.block_table = static_cast<const std::int32_t*>(table.data);
    kv.table_stride = table.stride(0);
    kv.block_size = s.slots;
  }
  p.kv_lens = s.total;
  return p;
}

// ---- Append ---------------------------------------------------------------------------------

// Row (b, h, t) of a rank-4 view as doubles.
void ReadViewRow(const TensorView& view, std::int64_t b, std::int64_t h, std::int64_t t,
                 std::int64_t width, double* dst) {
  internal::Operand<const void> op;
  op.data = view.data;
  op.dtype = view.dtype;
  for (int d = 0; d < 4; ++d) op.stride[d] = view.stride(d);
  internal::ReadRow(op, b, h, t, width, dst);
}

// Writes one token's row of one kv head into the cache: converted (rounded to nearest even) or,
// for int8, quantized with the row's scale.
void StoreCacheRow(const MutableTensorView& cache, const std::optional<MutableTensorView>& scale,
                   std::int64_t block, std::int64_t h, std::int64_t slot, const double* row,
                   std::int64_t width) {
  const std::int64_t offset =
      block * cache.stride(0) + h * cache.stride(1) + slot * cache.stride(2);
  if (cache.dtype == DType::kInt8) {
    double magnitude = 0;
    for (std::int64_t x = 0; x < width; ++x) magnitude = std::max(magnitude, std::fabs(row[x]));
    const auto step = static_cast<float>(magnitude / 127.0);
    auto* dst = static_cast<std::int8_t*>(cache.data) + offset;
    for (std::int64_t x = 0; x < width; ++x) {
      const double q = step > 0 ? std::nearbyint(row[x] / static_cast<double>(step)) : 0.0;
      dst[x * cache.stride(3)] = static_cast<std::int8_t>(std::clamp(q, -127.0, 127.0));
    }
    const MutableTensorView& s = *scale;
    static_cast<float*>(s.data)[block * s.stride(0) + h * s.stride(1) + slot * s.stride(2)] = step;
    return;
  }
  internal::WithStorage(cache.dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    S* dst = static_cast<S*>(cache.data) + offset;
    for (std::int64_t x = 0; x < width; ++x) {
      dst[x * cache.stride(3)] = internal::Narrow<S>(row[x]);
    }
  });
}

void Append(const KvCache& cache, const CacheShape& s, const internal::KvSource& kv,
            const KvAppend& append) {
  std::vector<double> row(static_cast<std::size_t>(std::max(s.head_dim, s.v_dim)));
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t t = 0; t < s.appended; ++t) {
      const std::int64_t pos = s.cached[static_cast<std::size_t>(b)] + t;
      const std::int64_t block = kv.Block(b, pos), slot = kv.Slot(pos);
      for (std::int64_t h = 0; h < s.kv_heads; ++h) {
        ReadViewRow(append.key, b, h, t, s.head_dim, row.data());
        StoreCacheRow(cache.key, cache.key_scale, block, h, slot, row.data(), s.head_dim);
        ReadViewRow(append.value, b, h, t, s.v_dim, row.data());
        StoreCacheRow(cache.value, cache.value_scale, block, h, slot, row.data(), s.v_dim);
      }
    }
  }
}

// A validated call, outputs not attached yet.
struct Prepared {
  CacheShape shape;
  internal::Problem problem;
  std::vector<TensorView> inputs;  // what the outputs must not overlap
  std::vector<const char*> names;
};

Prepared Prepare(const TensorView& query, const KvCache& cache, const TensorView& cache_seqlens,
                 const std::optional<KvAppend>& append, const Options& options) {
  ValidateOptions(options);
  Prepared call;
  call.shape = ValidateShapes(query, cache, cache_seqlens, append);
  if (call.shape.paged) ValidateBlocks(call.shape, *cache.block_table);
  ValidateScales(cache);
  ValidateOverlaps(query, cache, cache_seqlens, append);
  call.problem = MakeProblem(query, cache, call.shape, options);
  call.inputs = {query, cache.key, cache.value, cache_seqlens};
  call.names = {"query", "cache.key", "cache.value", "cache_seqlens"};
  if (cache.block_table) {
    call.inputs.push_back(*cache.block_table);
    call.names.push_back("cache.block_table");
  }
  for (const auto& [scale, name] : {std::pair{&cache.key_scale, "cache.key_scale"},
                                    std::pair{&cache.value_scale, "cache.value_scale"}}) {
    if (scale->has_value()) {
      call.inputs.push_back(**scale);
      call.names.push_back(name);
    }
  }
  if (append) {
    call.inputs.push_back(append->key);
    call.inputs.push_back(append->value);
    call.names.push_back("append.key");
    call.names.push_back("append.value");
  }
  return call;
}

// Attaches the outputs (validated), appends the new tokens, computes.
void Execute(Prepared& call, const KvCache& cache, const std::optional<KvAppend>& append,
             const MutableTensorView& out, const MutableTensorView* lse) {
  internal::AttachOutputs(call.problem, 4, out, lse, call.inputs, call.names);
  if (append) Append(cache, call.shape, call.problem.kv, *append);
  internal::Run(call.problem);
}

}  // namespace

void AttentionWithKvCache(const TensorView& query, const KvCache& cache,
                          const TensorView& cache_seqlens, const std::optional<KvAppend>& append,
                          const MutableTensorView& out, const MutableTensorView* lse,
                          const Options& options) {
  Prepared call = Prepare(query, cache, cache_seqlens, append, options);
  internal::CheckWork(call.problem, internal::ForwardWork(call.problem, false));
  Execute(call, cache, append, out, lse);
}

Tensor AttentionWithKvCache(const TensorView& query, const KvCache& cache,
                            const TensorView& cache_seqlens, const std::optional<KvAppend>& append,
                            const Options& options) {
  Prepared call = Prepare(query, cache, cache_seqlens, append, options);
  internal::CheckWork(call.problem, internal::ForwardWork(call.problem, true));
  Tensor out(query.dtype, internal::OutShape(call.problem, 4));
  Execute(call, cache, append, out.mutable_view(), nullptr);
  return out;
}

}  // namespace sdpa

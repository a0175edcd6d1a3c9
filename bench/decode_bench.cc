// Decode over a KV cache (sdpa::AttentionWithKvCache, issue 15): GB/s of cache bytes read per
// step against the machine's measured read bandwidth, for the grid of the issue:
//   batch ∈ {1, 8, 32}, heads 32, kv_heads ∈ {32, 8}, head_dim 128, context ∈ {4096, 32768,
//   131072}, Lq ∈ {1, 4}, cache float32 / bfloat16 / int8, contiguous or paged (blocks 16, 128).
// A case whose cache would not fit in half the machine's memory is skipped (the row says so).
// Bytes counted: the K and V rows attended (and the int8 scales), read once per step — the
// minimum any implementation must read.
//
//   build/bench/decode_bench                                   # the grid
//   build/bench/decode_bench --benchmark_filter='B:1/.*ctx:32768'
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "machine.h"
#include "sdpa/sdpa.h"

namespace {

struct Case {
  std::int64_t batch, heads, kv_heads, context, q_len, head_dim = 128;
  sdpa::DType dtype;
  std::int64_t block_size;  // 0: contiguous
  int threads;
};

std::size_t ElementBytes(sdpa::DType dtype) { return sdpa::DTypeSize(dtype); }

double PhysicalBytes() {
  return static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
}

// K and V (and scales) of every attended token, in bytes.
double CacheBytes(const Case& c) {
  const double rows = static_cast<double>(c.batch * c.kv_heads * c.context);
  double bytes =
      2 * rows * static_cast<double>(c.head_dim * static_cast<std::int64_t>(ElementBytes(c.dtype)));
  if (c.dtype == sdpa::DType::kInt8) bytes += 2 * rows * sizeof(float);
  return bytes;
}

void BM_Decode(benchmark::State& state, Case c) {
  if (CacheBytes(c) > 0.5 * PhysicalBytes()) {
    state.SkipWithError("cache larger than half the machine's memory");
    return;
  }
  sdpa::SetNumThreads(c.threads);
  const std::int64_t slots = c.block_size > 0 ? c.block_size : c.context;
  const std::int64_t blocks_per_seq =
      c.block_size > 0 ? (c.context + c.block_size - 1) / c.block_size : 0;
  const std::int64_t rows = c.block_size > 0 ? c.batch * blocks_per_seq : c.batch;
  const std::size_t elements = static_cast<std::size_t>(rows * c.kv_heads * slots * c.head_dim);
  const std::size_t elem = ElementBytes(c.dtype);
  // Zero-filled caches: the engine reads every byte regardless of the values.
  std::vector<unsigned char> k(elements * elem, 0), v(elements * elem, 0);
  std::vector<float> k_scale, v_scale;
  sdpa::KvCache cache;
  const sdpa::Layout layout = sdpa::Layout::Contiguous({rows, c.kv_heads, slots, c.head_dim});
  cache.key = sdpa::MutableTensorView(k.data(), c.dtype, layout);
  cache.value = sdpa::MutableTensorView(v.data(), c.dtype, layout);
  std::vector<std::int32_t> table;
  if (c.block_size > 0) {
    // Each sequence's blocks interleaved with the others' (block n of sequence b at n·B + b),
    // so a sequence's blocks are not contiguous in memory, as in a real pool.
    table.resize(static_cast<std::size_t>(c.batch * blocks_per_seq));
    for (std::int64_t b = 0; b < c.batch; ++b)
      for (std::int64_t n = 0; n < blocks_per_seq; ++n)
        table[static_cast<std::size_t>(b * blocks_per_seq + n)] =
            static_cast<std::int32_t>(n * c.batch + b);
    cache.block_table = sdpa::TensorView(table.data(), {c.batch, blocks_per_seq});
  }
  if (c.dtype == sdpa::DType::kInt8) {
    k_scale.assign(static_cast<std::size_t>(rows * c.kv_heads * slots), 1.0f);
    v_scale = k_scale;
    cache.key_scale = sdpa::MutableTensorView(k_scale.data(), {rows, c.kv_heads, slots});
    cache.value_scale = sdpa::MutableTensorView(v_scale.data(), {rows, c.kv_heads, slots});
  }
  const sdpa::DType q_dtype = c.dtype == sdpa::DType::kInt8 ? sdpa::DType::kFloat32 : c.dtype;
  std::vector<unsigned char> q(
      static_cast<std::size_t>(c.batch * c.heads * c.q_len * c.head_dim) * ElementBytes(q_dtype),
      0);
  std::vector<float> out(static_cast<std::size_t>(c.batch * c.heads * c.q_len * c.head_dim));
  const sdpa::TensorView query(q.data(), q_dtype,
                               sdpa::Layout::Contiguous({c.batch, c.heads, c.q_len, c.head_dim}));
  const sdpa::MutableTensorView out_view(out.data(), {c.batch, c.heads, c.q_len, c.head_dim});
  std::vector<std::int32_t> seqlens(static_cast<std::size_t>(c.batch),
                                    static_cast<std::int32_t>(c.context));
  const sdpa::TensorView seqlens_view(seqlens.data(), {c.batch});
  sdpa::Options options;
  options.causal = sdpa::Causal::kBottomRight;
  const auto step = [&] {
    sdpa::AttentionWithKvCache(query, cache, seqlens_view, std::nullopt, out_view, nullptr,
                               options);
  };
  step();  // pages faulted in, pool started
  for (auto _ : state) step();
  const double bytes = CacheBytes(c);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) * state.iterations());
  state.counters["cache_MB"] = bytes * 1e-6;
  state.counters["GB/s"] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["read_bw_GB/s"] = sdpa_bench::ReadBandwidthGBps(c.threads);
  state.counters["frac_read_bw"] =
      benchmark::Counter(bytes * 1e-9 / sdpa_bench::ReadBandwidthGBps(c.threads),
                         benchmark::Counter::kIsIterationInvariantRate);
  sdpa::SetNumThreads(0);
}

const char* DTypeShort(sdpa::DType d) {
  return d == sdpa::DType::kFloat32    ? "f32"
         : d == sdpa::DType::kBFloat16 ? "bf16"
         : d == sdpa::DType::kFloat16  ? "f16"
                                       : "int8";
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = 2;
  for (const std::int64_t batch : {1, 8, 32}) {
    for (const std::int64_t kv_heads : {32, 8}) {
      for (const std::int64_t context : {4096, 32768, 131072}) {
        for (const std::int64_t q_len : {1, 4}) {
          for (const sdpa::DType dtype :
               {sdpa::DType::kFloat32, sdpa::DType::kBFloat16, sdpa::DType::kInt8}) {
            for (const std::int64_t block : {0, 16, 128}) {
              const Case c{batch, 32, kv_heads, context, q_len, 128, dtype, block, threads};
              const std::string name =
                  "Decode/" + std::string(DTypeShort(dtype)) + "/B:" + std::to_string(batch) +
                  "/Hkv:" + std::to_string(kv_heads) + "/ctx:" + std::to_string(context) +
                  "/Lq:" + std::to_string(q_len) + "/" +
                  (block == 0 ? std::string("contiguous") : "paged" + std::to_string(block));
              benchmark::RegisterBenchmark(name.c_str(), BM_Decode, c)
                  ->UseRealTime()
                  ->Unit(benchmark::kMillisecond);
            }
          }
        }
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// Google Benchmark suite for the attention forward, reported against this machine's own limits.
//
// What each row reports (counters):
//   GFLOP/s    FLOPs per call / wall time. FLOPs = 2·(D + Dv) per visible (query, key) pair:
//              B·H·Lq·Lkv pairs without a mask; for causal the visible pairs are counted exactly
//              (L·(L+1)/2 for top-left with Lq = Lkv), so causal and non-causal rates compare.
//   peak_frac  GFLOP/s over the float32 FMA peak measured at start-up with the same thread count
//              (sdpa::MeasureFmaPeakGflops); float64 rows divide by half of it (half the lanes).
//   GB/s       (decode rows) K and V bytes per call / wall time: decode reads each K/V element once
//              and does 0.5 flop per byte, so its limit is memory bandwidth, not the FMA peak.
//   bw_frac    GB/s over the read bandwidth of this machine with the same thread count (the
//              Machine/ReadBandwidth row: a streaming sum over 512 MiB, far beyond the caches).
//
// Threads: SDPA_NUM_THREADS (default 2) for every row; decode and the bandwidth row are also run
// with 1 thread, for the scaling. The thread count is the last part of each name.
//
// The grid is issue 3's: B=1, H=8, D ∈ {64, 128}, L ∈ {256, 1024, 4096, 16384}, causal (top-left)
// and not; decode B=1, H=32, D=128, Lq=1, Lkv ∈ {4096, 32768}; plus float64, GQA decode, the
// reference backend on a small shape, and a tiny case for the ctest smoke run. Wall time
// (UseRealTime) because the engine's work happens on its own threads.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sdpa/sdpa.h"

namespace {

using sdpa::Backend;
using sdpa::Causal;
using sdpa::DType;

// Threads for every row unless a row says otherwise: SDPA_NUM_THREADS, else 2 (the dev machine's
// cores; the targets are stated for 2 threads).
int DefaultThreads() {
  if (const char* env = std::getenv("SDPA_NUM_THREADS")) {
    const int from_env = std::atoi(env);
    if (from_env > 0) return from_env;
  }
  return 2;
}

// ---------------------------------------------------------------------------------------------
// The machine's limits.

// float32 FMA peak in GFLOP/s per thread count, measured in main() before any benchmark runs.
std::map<int, double>& FmaPeakGflops() {
  static std::map<int, double> peaks;
  return peaks;
}

double FmaPeakFor(int threads) {
  std::map<int, double>& peaks = FmaPeakGflops();
  auto it = peaks.find(threads);
  if (it == peaks.end())
    it = peaks.emplace(threads, sdpa::MeasureFmaPeakGflops(threads, 0.3)).first;
  return it->second;
}

// The read-bandwidth buffer: 512 MiB, 16× the 32 MiB L3, so every pass streams from DRAM.
constexpr std::size_t kBandwidthBytes = std::size_t{512} << 20;

const std::vector<float>& BandwidthBuffer() {
  static const std::vector<float> buffer(kBandwidthBytes / sizeof(float), 1.0f);
  return buffer;
}

// Sums [begin, end) with 16 independent accumulators, which GCC keeps in 4 SSE (or 2 AVX)
// registers: far more add throughput than DRAM can feed, so the loop measures the memory.
float StreamSum(const float* begin, const float* end) {
  float acc[16] = {};
  const float* p = begin;
  for (; p + 16 <= end; p += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += p[j];
  }
  float sum = 0;
  for (; p < end; ++p) sum += *p;
  for (float a : acc) sum += a;
  return sum;
}

// One pass over the whole buffer, split into `threads` contiguous parts; returns the sum so the
// reads are not dead. Spawning the threads costs ~30 µs against ~20 ms for the pass.
float ReadPass(const std::vector<float>& buffer, int threads) {
  const std::size_t n = buffer.size(), parts = static_cast<std::size_t>(threads);
  std::vector<float> sums(parts, 0.0f);
  std::vector<std::thread> workers;
  for (std::size_t t = 1; t < parts; ++t) {
    workers.emplace_back([&, t] {
      sums[t] = StreamSum(buffer.data() + n * t / parts, buffer.data() + n * (t + 1) / parts);
    });
  }
  sums[0] = StreamSum(buffer.data(), buffer.data() + n / parts);
  for (std::thread& worker : workers) worker.join();
  float total = 0;
  for (float s : sums) total += s;
  return total;
}

// Best of 10 passes (~0.2 s), in GB/s (1e9 bytes), measured once per thread count: a neighbour
// can only lower a pass, so the best is the closest to what the memory can deliver.
double ReadBandwidthGBps(int threads) {
  static std::map<int, double> measured;
  auto it = measured.find(threads);
  if (it != measured.end()) return it->second;
  const std::vector<float>& buffer = BandwidthBuffer();
  double best_seconds = 1e30;
  for (int pass = 0; pass < 10; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(ReadPass(buffer, threads));
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - t0;
    best_seconds = std::min(best_seconds, elapsed.count());
  }
  const double gbps = static_cast<double>(kBandwidthBytes) / best_seconds * 1e-9;
  measured.emplace(threads, gbps);
  return gbps;
}

void BM_FmaPeak(benchmark::State& state, int threads) {
  double gflops = 0;
  for (auto _ : state) gflops = sdpa::MeasureFmaPeakGflops(threads, 0.3);
  state.counters["GFLOP/s"] = gflops;
  state.counters["startup_GFLOP/s"] = FmaPeakFor(threads);
}

void BM_ReadBandwidth(benchmark::State& state, int threads) {
  const std::vector<float>& buffer = BandwidthBuffer();
  ReadPass(buffer, threads);  // fault the pages in before timing
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) benchmark::DoNotOptimize(ReadPass(buffer, threads));
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  state.counters["GB/s"] = static_cast<double>(kBandwidthBytes) * 1e-9 *
                           static_cast<double>(state.iterations()) / elapsed.count();
  state.counters["best_pass_GB/s"] = ReadBandwidthGBps(threads);
}

// ---------------------------------------------------------------------------------------------
// Attention rows.

struct Case {
  // "Forward", "Decode" (adds the bandwidth counters), "Reference" (forward on the reference)
  // or "Backward" (sdpa::Backward; FLOPs 2.5x the forward's, the convention of FlashAttention).
  const char* kind;
  DType dtype;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  Causal causal;
  Backend backend;
  int threads;

  std::string Name() const {
    std::string name = std::string(kind) + (dtype == DType::kFloat64 ? "/f64" : "/f32") +
                       "/B:" + std::to_string(batch) + "/H:" + std::to_string(heads);
    if (kv_heads != heads) name += "/Hkv:" + std::to_string(kv_heads);
    if (q_len == kv_len) {
      name += "/L:" + std::to_string(q_len);
    } else {
      name += "/Lq:" + std::to_string(q_len) + "/Lkv:" + std::to_string(kv_len);
    }
    name += "/D:" + std::to_string(head_dim);
    if (v_dim != head_dim) name += "/Dv:" + std::to_string(v_dim);
    return name + "/" + sdpa::CausalName(causal) + "/threads:" + std::to_string(threads);
  }
};

// (query, key) pairs that take part: all of them, or those the causal rule leaves visible.
double VisiblePairs(const Case& c) {
  if (c.causal == Causal::kNone) {
    return static_cast<double>(c.q_len) * static_cast<double>(c.kv_len);
  }
  const std::int64_t offset = c.causal == Causal::kBottomRight ? c.kv_len - c.q_len : 0;
  double pairs = 0;
  for (std::int64_t i = 0; i < c.q_len; ++i) {
    pairs += static_cast<double>(std::clamp<std::int64_t>(i + offset + 1, 0, c.kv_len));
  }
  return pairs;
}

double Flops(const Case& c) {
  return 2.0 * static_cast<double>(c.batch * c.heads) * VisiblePairs(c) *
         static_cast<double>(c.head_dim + c.v_dim);
}

// Bytes of K and V, each read once per call.
double KvBytes(const Case& c) {
  return static_cast<double>(c.batch * c.kv_heads * c.kv_len * (c.head_dim + c.v_dim)) *
         static_cast<double>(sdpa::DTypeSize(c.dtype));
}

// Uniform values in [-1, 1) from a 64-bit LCG: cheap enough for 1 GiB of K/V (the values do not
// change the work; only denormals would, and the engine flushes them).
template <typename T>
void FillUniform(sdpa::Tensor& tensor, std::uint64_t seed) {
  T* data = tensor.data<T>();
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::int64_t i = 0; i < tensor.size(); ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    data[i] = static_cast<T>(static_cast<double>(state >> 11) * 0x1.0p-52 - 1.0);
  }
}

void Fill(sdpa::Tensor& tensor, std::uint64_t seed) {
  if (tensor.dtype() == DType::kFloat64) {
    FillUniform<double>(tensor, seed);
  } else {
    FillUniform<float>(tensor, seed);
  }
}

// The operands of the last shape run. Google Benchmark calls a row's function several times
// while it settles the iteration count; refilling 1 GiB of decode K/V each time would dominate.
struct Operands {
  std::string key;
  sdpa::Tensor query, key_tensor, value, out;
  sdpa::Tensor lse, grad_out, grad_query, grad_key, grad_value;  // backward rows only
};

Operands& OperandsFor(const Case& c) {
  static Operands operands;
  const std::string key = c.Name();
  if (operands.key != key) {
    operands = Operands();  // free the previous shape first: decode K/V is 1 GiB
    operands.query = sdpa::Tensor(c.dtype, {c.batch, c.heads, c.q_len, c.head_dim});
    operands.key_tensor = sdpa::Tensor(c.dtype, {c.batch, c.kv_heads, c.kv_len, c.head_dim});
    operands.value = sdpa::Tensor(c.dtype, {c.batch, c.kv_heads, c.kv_len, c.v_dim});
    operands.out = sdpa::Tensor(c.dtype, {c.batch, c.heads, c.q_len, c.v_dim});
    Fill(operands.query, 1);
    Fill(operands.key_tensor, 2);
    Fill(operands.value, 3);
    if (std::string(c.kind) == "Backward") {
      operands.lse = sdpa::Tensor(c.dtype, {c.batch, c.heads, c.q_len});
      operands.grad_out = sdpa::Tensor(c.dtype, {c.batch, c.heads, c.q_len, c.v_dim});
      operands.grad_query = sdpa::Tensor(c.dtype, {c.batch, c.heads, c.q_len, c.head_dim});
      operands.grad_key = sdpa::Tensor(c.dtype, {c.batch, c.kv_heads, c.kv_len, c.head_dim});
      operands.grad_value = sdpa::Tensor(c.dtype, {c.batch, c.kv_heads, c.kv_len, c.v_dim});
      Fill(operands.grad_out, 4);
      sdpa::Options options;
      options.causal = c.causal;
      sdpa::Forward(operands.query.view(), operands.key_tensor.view(), operands.value.view(),
                    operands.out.mutable_view(), operands.lse.mutable_view(), options);
    }
    operands.key = key;
  }
  return operands;
}

void BM_Attention(benchmark::State& state, const Case& c) {
  sdpa::SetNumThreads(c.threads);
  Operands& operands = OperandsFor(c);
  sdpa::Options options;
  options.causal = c.causal;
  options.backend = c.backend;
  const sdpa::TensorView q = operands.query.view(), k = operands.key_tensor.view(),
                         v = operands.value.view();
  const sdpa::MutableTensorView out = operands.out.mutable_view();
  try {
    const sdpa::Plan plan = sdpa::Explain(q, k, v, options);
    std::string label = plan.path;
    if (!plan.simd_target.empty()) label += " " + plan.simd_target;
    if (plan.q_tile > 0) {
      label += " tile " + std::to_string(plan.q_tile) + "x" + std::to_string(plan.kv_tile);
    }
    if (plan.kv_splits > 1) label += " splits " + std::to_string(plan.kv_splits);
    state.SetLabel(label);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }

  // Our own wall clock around the loop as well, so that the fractions below are plain numbers
  // (a rate counter would print them as "0.8/s"); the loop's bookkeeping costs nanoseconds.
  const auto start = std::chrono::steady_clock::now();
  const bool backward = std::string(c.kind) == "Backward";
  for (auto _ : state) {
    if (backward) {
      sdpa::Backward(q, k, v, out, operands.lse.view(), operands.grad_out.view(),
                     operands.grad_query.mutable_view(), operands.grad_key.mutable_view(),
                     operands.grad_value.mutable_view(), options);
    } else {
      sdpa::Forward(q, k, v, out, options);
    }
    benchmark::ClobberMemory();
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  const double calls_per_second = static_cast<double>(state.iterations()) / elapsed.count();

  const double gflops = (backward ? 2.5 : 1.0) * Flops(c) * 1e-9 * calls_per_second;
  // float64 FMAs carry half the lanes of float32 ones.
  const double peak = FmaPeakFor(c.threads) * (c.dtype == DType::kFloat64 ? 0.5 : 1.0);
  state.counters["GFLOP/s"] = gflops;
  state.counters["peak_frac"] = gflops / peak;
  if (std::string(c.kind) == "Decode") {
    const double gbps = KvBytes(c) * 1e-9 * calls_per_second;
    state.counters["GB/s"] = gbps;
    state.counters["bw_frac"] = gbps / ReadBandwidthGBps(c.threads);
  }
}

std::vector<Case> Cases(int threads) {
  constexpr DType kF32 = DType::kFloat32;
  constexpr Backend kCpu = Backend::kCpu;
  std::vector<Case> cases;
  // The smoke case (ctest runs only this one).
  cases.push_back({"Forward", kF32, 1, 1, 1, 64, 64, 32, 32, Causal::kNone, kCpu, threads});
  for (std::int64_t d : {64, 128}) {
    for (Causal causal : {Causal::kNone, Causal::kTopLeft}) {
      for (std::int64_t l : {256, 1024, 4096, 16384}) {
        cases.push_back({"Forward", kF32, 1, 8, 8, l, l, d, d, causal, kCpu, threads});
      }
    }
  }
  cases.push_back(
      {"Forward", DType::kFloat64, 1, 8, 8, 1024, 1024, 64, 64, Causal::kNone, kCpu, threads});
  std::vector<int> decode_threads = {threads};
  if (threads != 1) decode_threads.insert(decode_threads.begin(), 1);
  for (std::int64_t l : {4096, 32768}) {
    for (int t : decode_threads) {
      cases.push_back({"Decode", kF32, 1, 32, 32, 1, l, 128, 128, Causal::kNone, kCpu, t});
    }
  }
  cases.push_back({"Decode", kF32, 1, 32, 8, 1, 32768, 128, 128, Causal::kNone, kCpu, threads});
  cases.push_back(
      {"Reference", kF32, 1, 8, 8, 256, 256, 64, 64, Causal::kNone, Backend::kReference, threads});
  for (std::int64_t d : {64, 128}) {
    for (Causal causal : {Causal::kNone, Causal::kTopLeft}) {
      for (std::int64_t l : {1024, 4096}) {
        cases.push_back({"Backward", kF32, 1, 8, 8, l, l, d, d, causal, kCpu, threads});
      }
    }
  }
  return cases;
}

}  // namespace

int main(int argc, char** argv) {
  // Half a second per row unless --benchmark_min_time says otherwise (a later flag wins): the
  // default suite then takes a few minutes, most of it in the L = 16384 rows.
  std::vector<char*> args(argv, argv + argc);
  char default_min_time[] = "--benchmark_min_time=0.5";
  args.insert(args.begin() + 1, default_min_time);
  int args_count = static_cast<int>(args.size());
  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;

  const int threads = DefaultThreads();
  std::vector<int> thread_counts = {threads};
  if (threads != 1) thread_counts.insert(thread_counts.begin(), 1);

  for (int t : thread_counts) {
    benchmark::RegisterBenchmark(("Machine/FmaPeak/threads:" + std::to_string(t)).c_str(),
                                 BM_FmaPeak, t)
        ->Iterations(1)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("Machine/ReadBandwidth/threads:" + std::to_string(t)).c_str(),
                                 BM_ReadBandwidth, t)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  for (const Case& c : Cases(threads)) {
    benchmark::RegisterBenchmark(c.Name().c_str(), BM_Attention, c)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }

  // The peak every peak_frac divides by, measured before the first row (~0.3 s per count).
  const sdpa::SystemInfo info = sdpa::GetSystemInfo();
  benchmark::AddCustomContext("sdpa_version", info.version);
  benchmark::AddCustomContext("sdpa_simd_target", info.simd_target);
  for (int t : thread_counts) {
    char value[32];
    std::snprintf(value, sizeof(value), "%.1f", FmaPeakFor(t));
    benchmark::AddCustomContext("fma_peak_gflops_threads_" + std::to_string(t), value);
  }
  // Each thread runs its FMA chains on its own core; a much smaller gain means another process
  // held a core during the measurement, and every peak_frac of this run is inflated.
  if (threads > 1 && FmaPeakFor(threads) < 0.8 * threads * FmaPeakFor(1)) {
    benchmark::AddCustomContext("warning", "the " + std::to_string(threads) +
                                               "-thread FMA peak is far below " +
                                               std::to_string(threads) +
                                               "x the 1-thread one: the machine is busy and "
                                               "peak_frac is unreliable");
  }

  // A filter that matches nothing is a failure, so that the ctest entry cannot pass vacuously.
  const std::size_t ran = benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return ran > 0 ? 0 : 1;
}

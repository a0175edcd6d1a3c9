// The machine's read bandwidth, for the benchmarks' fractions of it: a streaming sum over a
// buffer far beyond the caches. Shared by forward_bench and decode_bench.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <map>
#include <thread>
#include <vector>

namespace sdpa_bench {

// The read-bandwidth buffer: 512 MiB, 16× the 32 MiB L3, so every pass streams from DRAM.
inline constexpr std::size_t kBandwidthBytes = std::size_t{512} << 20;

inline const std::vector<float>& BandwidthBuffer() {
  static const std::vector<float> buffer(kBandwidthBytes / sizeof(float), 1.0f);
  return buffer;
}

// Sums [begin, end) with 16 independent accumulators, which GCC keeps in 4 SSE (or 2 AVX)
// registers: far more add throughput than DRAM can feed, so the loop measures the memory.
inline float StreamSum(const float* begin, const float* end) {
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
inline float ReadPass(const std::vector<float>& buffer, int threads) {
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
inline double ReadBandwidthGBps(int threads) {
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

}  // namespace sdpa_bench

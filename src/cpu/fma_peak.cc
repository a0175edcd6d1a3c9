// The machine's float32 FMA peak, measured: the denominator of every efficiency figure.
//
// Twelve independent MulAdd chains per thread cover the 4-cycle FMA latency at two FMAs per
// cycle (AVX2) or one 512-bit FMA per cycle (AVX-512 on Zen 4), with nothing else in the loop.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/fma_peak.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Runs `iterations` steps of 12 chains; returns the FLOPs done (2 per lane per FMA). `seed`
// defeats constant folding; the result is folded into *sink so nothing is dead.
double FmaChains(std::int64_t iterations, float seed, float* sink) {
  const hn::ScalableTag<float> d;
  const auto a = hn::Set(d, 0.999999f), b = hn::Set(d, seed * 1e-7f);
  // Distinct starting values: identical chains would be merged by the compiler.
  auto c0 = hn::Set(d, seed), c1 = hn::Set(d, seed + 1), c2 = hn::Set(d, seed + 2);
  auto c3 = hn::Set(d, seed + 3), c4 = hn::Set(d, seed + 4), c5 = hn::Set(d, seed + 5);
  auto c6 = hn::Set(d, seed + 6), c7 = hn::Set(d, seed + 7), c8 = hn::Set(d, seed + 8);
  auto c9 = hn::Set(d, seed + 9), c10 = hn::Set(d, seed + 10), c11 = hn::Set(d, seed + 11);
  for (std::int64_t i = 0; i < iterations; ++i) {
    c0 = hn::MulAdd(c0, a, b);
    c1 = hn::MulAdd(c1, a, b);
    c2 = hn::MulAdd(c2, a, b);
    c3 = hn::MulAdd(c3, a, b);
    c4 = hn::MulAdd(c4, a, b);
    c5 = hn::MulAdd(c5, a, b);
    c6 = hn::MulAdd(c6, a, b);
    c7 = hn::MulAdd(c7, a, b);
    c8 = hn::MulAdd(c8, a, b);
    c9 = hn::MulAdd(c9, a, b);
    c10 = hn::MulAdd(c10, a, b);
    c11 = hn::MulAdd(c11, a, b);
  }
  const auto sum = hn::Add(hn::Add(hn::Add(c0, c1), hn::Add(c2, c3)),
                           hn::Add(hn::Add(hn::Add(c4, c5), hn::Add(c6, c7)),
                                   hn::Add(hn::Add(c8, c9), hn::Add(c10, c11))));
  *sink = hn::GetLane(sum);
  return 2.0 * 12.0 * static_cast<double>(hn::Lanes(d)) * static_cast<double>(iterations);
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/tuning.h"
#include "sdpa/attention.h"
#include "sdpa/system.h"
#include "sdpa/version.h"

namespace sdpa {
namespace cpu {
HWY_EXPORT(FmaChains);
}  // namespace cpu

double MeasureFmaPeakGflops(int threads, double seconds) {
  cpu::ApplySimdTargetFromEnvironment();
  const int used = threads > 0 ? threads : GetNumThreads();
  // Each thread times its own blocks of ~1 ms and keeps its best rate; the peak is the sum of
  // the threads' best rates. A block that was descheduled by a noisy neighbour (these VMs are
  // shared) only loses that round, so the figure is the machine's capability, not its load.
  constexpr std::int64_t kBlock = 1 << 18;
  std::vector<float> sinks(static_cast<std::size_t>(used) * 16);
  std::vector<double> best(static_cast<std::size_t>(used), 0.0);
  const auto start = std::chrono::steady_clock::now();
  do {
    cpu::ParallelFor(used, used, [&](std::int64_t task, int) {
      const auto index = static_cast<std::size_t>(task);
      const auto t0 = std::chrono::steady_clock::now();
      const double flops = HWY_DYNAMIC_DISPATCH(cpu::FmaChains)(
          kBlock, 1.0f + static_cast<float>(task), &sinks[index * 16]);
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best[index] = std::max(best[index], flops / elapsed * 1e-9);
    });
  } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
           seconds);
  double total = 0;
  for (double rate : best) total += rate;
  return total;
}

SystemInfo GetSystemInfo() {
  SystemInfo info;
  info.version = SDPA_VERSION;
  info.cpu = cpu::DetectCpu().brand;
  info.simd_targets = cpu::SimdTargets();
  info.simd_target = cpu::ActiveSimdTarget();
  info.threads = GetNumThreads();
  info.tuning = cpu::ActiveTuning().ToString();
  return info;
}

}  // namespace sdpa
#endif  // HWY_ONCE

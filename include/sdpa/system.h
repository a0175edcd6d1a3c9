// What this machine and build offer: SIMD targets, threads, and the measured FMA peak.
#pragma once

#include <string>
#include <vector>

namespace sdpa {

struct SystemInfo {
  std::string version;                    // SDPA_VERSION
  std::string cpu;                        // the CPU's brand string (CPUID), empty if unknown
  std::vector<std::string> simd_targets;  // compiled into this binary and supported by this CPU
  std::string simd_target;                // the one the CPU engine uses (honours SDPA_SIMD_TARGET)
  int threads = 1;                        // GetNumThreads()
  // The CPU engine's per-microarchitecture choices and what chose them (SDPA_TUNING overrides):
  // register tile, tiles, exp2 form, lazy rescaling; e.g. "amd-zen4: micro 6x2, tiles 96x128,
  // exp2 horner, lazy rescale 2^8 (CPUID AuthenticAMD family 0x19 model 0x11, AVX-512, ...)".
  std::string tuning;
};
SystemInfo GetSystemInfo();

// Measures the float32 fused-multiply-add throughput of this machine in GFLOP/s with `threads`
// threads (0 = GetNumThreads()), running independent FMA chains on the engine's SIMD target for
// about `seconds`: the sum over threads of each thread's best rate, so a busy neighbour on a
// shared machine does not lower it. This is the "peak" that efficiency figures are fractions of.
double MeasureFmaPeakGflops(int threads = 0, double seconds = 0.2);

}  // namespace sdpa

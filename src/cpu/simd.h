// SIMD targets: which ones this binary carries, which one the engine uses, and forcing one.
//
// Kernels are compiled once per target with Highway's foreach_target (AVX3 = AVX-512, AVX2,
// NEON, ..., and EMU128, the portable scalar fallback) and chosen at run time for the CPU. The
// environment variable SDPA_SIMD_TARGET (e.g. "AVX2", "EMU128") forces a target; tests use
// ForceSimdTarget to run every kernel on every target.
#pragma once

#include <string>
#include <vector>

namespace sdpa::cpu {

// Targets compiled into this binary and supported by this CPU, best first.
std::vector<std::string> SimdTargets();

// The target dispatch uses now (honours SDPA_SIMD_TARGET on first use).
std::string ActiveSimdTarget();

// Makes dispatch use `name` (one of SimdTargets()); "" restores the best target. Throws
// sdpa::Error naming the available targets otherwise. Not safe to call while another thread is
// inside the engine.
void ForceSimdTarget(const std::string& name);

// Applies SDPA_SIMD_TARGET once per process; every engine entry calls it.
void ApplySimdTargetFromEnvironment();

// Number of float32 lanes of one vector on the active target (for tile geometry and reports).
int ActiveFloatLanes();

}  // namespace sdpa::cpu

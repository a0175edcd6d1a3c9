// Tuning: the engine's per-microarchitecture choices, from one table (tuning.cc).
//
// What is tuned, and why it differs between CPUs (docs/performance.md has the numbers):
//   micro-kernel shape  rows × vectors of the register tile (micro_kernels-inl.h). llvm-mca's
//                       model of a core with two 512-bit FMA ports (Intel Xeon) puts 6 × 2 at
//                       85% of its peak (the broadcasts and loop overhead share its ports) and
//                       4 × 4 at 99%; on Zen 4 (one 512-bit FMA per cycle) both run at 95-98% in
//                       L1, and 4 × 4 with 128-row tiles measured 5-14% faster in the kernels.
//   tiles               query rows per task (q_tile) and keys per step (kv_tile): the working
//                       set must fit L2, and q_tile should be a multiple of the panel width
//                       (vectors × lanes) so no padded rows are computed.
//   exp2 form           Horner (fewest instructions) or Estrin (shortest latency), exp2-inl.h.
//   lazy rescaling      the running max is kept until a row's max grows by more than this many
//                       powers of two (FlashAttention-4): exact, since the final division uses
//                       the same stale max; 0 rescales at every growth.
//
// The row is chosen from CPUID (vendor, family, model, AVX-512) and the L2 size; SDPA_TUNING
// overrides it: a row name, and/or comma-separated key=value pairs applied on top, e.g.
//   SDPA_TUNING=intel-avx512-server   SDPA_TUNING=micro=4x4,q_tile=128   SDPA_TUNING=exp2=estrin
// keys: micro=RxV, q_tile, kv_tile, exp2=horner|estrin, lazy_rescale=<powers of two>.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sdpa::cpu {

// How Exp2's polynomial is evaluated (exp2-inl.h); both have the same accuracy bound.
enum class Exp2Form { kHorner, kEstrin };

struct Tuning {
  std::string name;    // the table row, e.g. "amd-zen4"
  std::string about;   // what the row is for
  std::string source;  // what chose it: the CPUID facts, plus "SDPA_TUNING=..." when set
  int micro_rows = 6, micro_vectors = 2;
  std::int64_t q_tile = 96, kv_tile = 128;
  Exp2Form exp2 = Exp2Form::kHorner;
  int lazy_rescale = 8;

  // "amd-zen4: micro 6x2, tiles 96x128, exp2 horner, lazy rescale 2^8 (CPUID ...)".
  std::string ToString() const;
};

// What CPUID says about this CPU (zeros and empty strings where it cannot tell).
struct CpuFacts {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD", ...
  std::string brand;   // "AMD EPYC 9R14 96-Core Processor"
  int family = 0, model = 0;
  bool avx512 = false;                       // AVX512F with OS support
  std::int64_t l1d_bytes = 0, l2_bytes = 0;  // per core
};
CpuFacts DetectCpu();

// The table row for a CPU (the one place the choices live).
Tuning TuningFor(const CpuFacts& cpu);

// The table rows by name, for SDPA_TUNING and tests.
std::vector<std::string> TuningNames();

// Applies an SDPA_TUNING value to `base`; throws sdpa::Error naming the bad part.
Tuning ParseTuning(const std::string& spec, const Tuning& base);

// The tuning the engine uses: TuningFor(DetectCpu()) with SDPA_TUNING applied, once per process.
const Tuning& ActiveTuning();

// Makes the engine use ParseTuning(spec, detected) ("" restores the detected tuning with
// SDPA_TUNING applied). For tests; not safe while another thread is inside the engine.
void ForceTuning(const std::string& spec);

// Register-tile shapes the kernels carry (micro_kernels-inl.h WithShape): 6x2 on every target;
// on AVX-512 targets (32 vector registers), float also 4x4 and 8x2.
bool ShapeCompiled(const std::string& simd_target, bool is_double, int rows, int vectors);

}  // namespace sdpa::cpu

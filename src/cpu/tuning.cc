#include "cpu/tuning.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>

#include "core/fail.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace sdpa::cpu {
namespace {

// The table. Each row's choices and the measurement or model behind them (docs/performance.md):
// Zen 4 was measured on the dev machine; the Intel server row is llvm-mca's prediction for a
// core with two 512-bit FMA ports (not measured here), the client row that for one port. 6x2 is
// the only shape of the AVX2 target (16 registers) and the safe default elsewhere.
struct Row {
  const char* name;
  const char* what;
  int micro_rows, micro_vectors;
  std::int64_t q_tile, kv_tile;
  Exp2Form exp2;
};
constexpr Row kTable[] = {
    {"generic", "any other CPU", 6, 2, 96, 128, Exp2Form::kHorner},
    {"amd-zen4",
     "AMD family 0x19 with AVX-512 (Zen 4): one 512-bit FMA per cycle; 4x4 with 128-row tiles "
     "measured 5-14% faster than 6x2 with 96 rows",
     4, 4, 128, 128, Exp2Form::kHorner},
    {"amd-avx2", "AMD without AVX-512 (Zen 1-3): the AVX2 target's 16 registers hold 6x2", 6, 2, 96,
     128, Exp2Form::kHorner},
    {"amd-zen5", "AMD family 0x1A: full-width 512-bit FMA units, as the Intel server row", 4, 4,
     128, 128, Exp2Form::kHorner},
    {"intel-avx512-server",
     "Intel Xeon with AVX-512 (Skylake-SP to Granite Rapids): two 512-bit FMA ports on most "
     "parts",
     4, 4, 128, 128, Exp2Form::kHorner},
    {"intel-avx512-client", "Intel client cores with AVX-512 (Ice/Tiger/Rocket Lake): one port", 6,
     2, 96, 128, Exp2Form::kHorner},
    {"intel-avx2", "Intel without AVX-512", 6, 2, 96, 128, Exp2Form::kHorner},
};

// Below this L2 per core, a 96 × 128 tile's working set (~320 KiB at D = 128) does not fit, and
// the keys per step are halved.
constexpr std::int64_t kSmallL2 = 512 * 1024;

Tuning FromRow(const Row& row) {
  Tuning t;
  t.name = row.name;
  t.micro_rows = row.micro_rows;
  t.micro_vectors = row.micro_vectors;
  t.q_tile = row.q_tile;
  t.kv_tile = row.kv_tile;
  t.exp2 = row.exp2;
  t.about = row.what;
  return t;
}

const Row* FindRow(const std::string& name) {
  for (const Row& row : kTable) {
    if (name == row.name) return &row;
  }
  return nullptr;
}

// Intel family 6 models of the Xeon (server) cores with AVX-512.
bool IntelServerModel(int model) {
  switch (model) {
    case 0x55:  // Skylake-SP, Cascade Lake, Cooper Lake
    case 0x6A:  // Ice Lake-SP
    case 0x6C:  // Ice Lake-D
    case 0x8F:  // Sapphire Rapids
    case 0xCF:  // Emerald Rapids
    case 0xAD:  // Granite Rapids
    case 0xAE:  // Granite Rapids-D
      return true;
    default:
      return false;
  }
}

const char* RowName(const CpuFacts& cpu) {
  if (cpu.vendor == "AuthenticAMD") {
    if (!cpu.avx512) return "amd-avx2";
    return cpu.family >= 0x1A ? "amd-zen5" : "amd-zen4";
  }
  if (cpu.vendor == "GenuineIntel") {
    if (!cpu.avx512) return "intel-avx2";
    // Client parts with AVX-512 stopped at Rocket Lake; unknown models are taken as servers.
    const bool client = cpu.family == 6 && !IntelServerModel(cpu.model) &&
                        (cpu.model == 0x66 || cpu.model == 0x7D || cpu.model == 0x7E ||
                         cpu.model == 0x8C || cpu.model == 0x8D || cpu.model == 0xA7);
    return client ? "intel-avx512-client" : "intel-avx512-server";
  }
  return "generic";
}

std::string Describe(const CpuFacts& cpu) {
  std::ostringstream out;
  out << "CPUID " << (cpu.vendor.empty() ? "unknown vendor" : cpu.vendor) << " family 0x"
      << std::hex << cpu.family << " model 0x" << cpu.model << std::dec
      << (cpu.avx512 ? ", AVX-512" : ", no AVX-512");
  if (cpu.l2_bytes > 0) out << ", L2 " << cpu.l2_bytes / 1024 << " KiB";
  return out.str();
}

std::int64_t ParseInteger(const std::string& key, const std::string& value, std::int64_t lo,
                          std::int64_t hi) {
  char* end = nullptr;
  const long long parsed = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || parsed < lo || parsed > hi) {
    internal::Fail("SDPA_TUNING: ", key, " must be an integer in [", lo, ", ", hi, "], got '",
                   value, "'");
  }
  return parsed;
}

struct Active {
  std::mutex mutex;
  bool ready = false;
  Tuning tuning;
};
Active& ActiveState() {
  static Active state;
  return state;
}

Tuning Detected() { return TuningFor(DetectCpu()); }

}  // namespace

std::string Tuning::ToString() const {
  std::ostringstream out;
  out << name << ": micro " << micro_rows << "x" << micro_vectors << ", tiles " << q_tile << "x"
      << kv_tile << ", exp2 " << (exp2 == Exp2Form::kHorner ? "horner" : "estrin")
      << ", lazy rescale ";
  if (lazy_rescale > 0) {
    out << "2^" << lazy_rescale;
  } else {
    out << "off";
  }
  if (!source.empty()) out << " (" << source << ")";
  return out.str();
}

CpuFacts DetectCpu() {
  CpuFacts cpu;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(0, &a, &b, &c, &d)) {
    char vendor[13] = {};
    std::memcpy(vendor, &b, 4);
    std::memcpy(vendor + 4, &d, 4);
    std::memcpy(vendor + 8, &c, 4);
    cpu.vendor = vendor;
    const unsigned max_leaf = a;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
      const int base_family = static_cast<int>((a >> 8) & 0xF);
      const int base_model = static_cast<int>((a >> 4) & 0xF);
      cpu.family =
          base_family == 0xF ? base_family + static_cast<int>((a >> 20) & 0xFF) : base_family;
      cpu.model = base_family == 0x6 || base_family == 0xF
                      ? base_model | static_cast<int>(((a >> 16) & 0xF) << 4)
                      : base_model;
      const bool osxsave = (c >> 27) & 1;
      bool zmm_state = false;
      if (osxsave) {
        unsigned xcr0_lo = 0, xcr0_hi = 0;
        __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
        zmm_state = (xcr0_lo & 0xE6) == 0xE6;  // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
      }
      if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        cpu.avx512 = zmm_state && ((b >> 16) & 1);
      }
    }
    if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
      char brand[49] = {};
      for (unsigned leaf = 0; leaf < 3; ++leaf) {
        __get_cpuid(0x80000002 + leaf, &a, &b, &c, &d);
        std::memcpy(brand + 16 * leaf, &a, 4);
        std::memcpy(brand + 16 * leaf + 4, &b, 4);
        std::memcpy(brand + 16 * leaf + 8, &c, 4);
        std::memcpy(brand + 16 * leaf + 12, &d, 4);
      }
      cpu.brand = brand;
      const auto first = cpu.brand.find_first_not_of(' ');
      cpu.brand = first == std::string::npos ? "" : cpu.brand.substr(first);
      while (!cpu.brand.empty() && cpu.brand.back() == ' ') cpu.brand.pop_back();
    }
  }
#endif
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  cpu.l1d_bytes = std::max<long>(0, sysconf(_SC_LEVEL1_DCACHE_SIZE));
  cpu.l2_bytes = std::max<long>(0, sysconf(_SC_LEVEL2_CACHE_SIZE));
#endif
  return cpu;
}

Tuning TuningFor(const CpuFacts& cpu) {
  Tuning t = FromRow(*FindRow(RowName(cpu)));
  t.source = Describe(cpu);
  if (cpu.l2_bytes > 0 && cpu.l2_bytes < kSmallL2) {
    t.kv_tile /= 2;
    t.source += ": kv_tile halved for the small L2";
  }
  return t;
}

std::vector<std::string> TuningNames() {
  std::vector<std::string> names;
  for (const Row& row : kTable) names.push_back(row.name);
  return names;
}

Tuning ParseTuning(const std::string& spec, const Tuning& base) {
  Tuning t = base;
  std::istringstream parts(spec);
  std::string part;
  while (std::getline(parts, part, ',')) {
    if (part.empty()) continue;
    const auto equals = part.find('=');
    if (equals == std::string::npos) {
      const Row* row = FindRow(part);
      if (row == nullptr) {
        std::string names;
        for (const std::string& name : TuningNames()) names += (names.empty() ? "" : ", ") + name;
        internal::Fail("SDPA_TUNING: unknown tuning '", part, "'; known: ", names);
      }
      const std::string source = t.source;
      t = FromRow(*row);
      t.source = source;
      continue;
    }
    const std::string key = part.substr(0, equals), value = part.substr(equals + 1);
    if (key == "micro") {
      const auto x = value.find('x');
      const std::string rows = x == std::string::npos ? "" : value.substr(0, x);
      const std::string vectors = x == std::string::npos ? "" : value.substr(x + 1);
      if (rows.empty() || vectors.empty()) {
        internal::Fail("SDPA_TUNING: micro must be ROWSxVECTORS (e.g. 6x2), got '", value, "'");
      }
      t.micro_rows = static_cast<int>(ParseInteger("micro rows", rows, 1, 16));
      t.micro_vectors = static_cast<int>(ParseInteger("micro vectors", vectors, 1, 8));
    } else if (key == "q_tile") {
      t.q_tile = ParseInteger(key, value, 1, 4096);
    } else if (key == "kv_tile") {
      t.kv_tile = ParseInteger(key, value, 1, 4096);
    } else if (key == "exp2") {
      if (value == "horner") {
        t.exp2 = Exp2Form::kHorner;
      } else if (value == "estrin") {
        t.exp2 = Exp2Form::kEstrin;
      } else {
        internal::Fail("SDPA_TUNING: exp2 must be horner or estrin, got '", value, "'");
      }
    } else if (key == "lazy_rescale") {
      t.lazy_rescale = static_cast<int>(ParseInteger(key, value, 0, 16));
    } else {
      internal::Fail("SDPA_TUNING: unknown key '", key,
                     "'; known: micro, q_tile, kv_tile, exp2, lazy_rescale");
    }
  }
  t.source += (t.source.empty() ? "" : "; ") + std::string("SDPA_TUNING=") + spec;
  return t;
}

const Tuning& ActiveTuning() {
  Active& state = ActiveState();
  std::lock_guard<std::mutex> lock(state.mutex);
  if (!state.ready) {
    Tuning t = Detected();
    const char* env = std::getenv("SDPA_TUNING");
    if (env != nullptr && env[0] != '\0') t = ParseTuning(env, t);
    state.tuning = t;
    state.ready = true;
  }
  return state.tuning;
}

void ForceTuning(const std::string& spec) {
  Active& state = ActiveState();
  if (spec.empty()) {
    std::lock_guard<std::mutex> lock(state.mutex);
    state.ready = false;  // the next ActiveTuning() detects again and applies SDPA_TUNING
    return;
  }
  const Tuning t = ParseTuning(spec, Detected());
  std::lock_guard<std::mutex> lock(state.mutex);
  state.tuning = t;
  state.ready = true;
}

bool ShapeCompiled(const std::string& simd_target, bool is_double, int rows, int vectors) {
  if (rows == 6 && vectors == 2) return true;
  const bool avx512 = simd_target.rfind("AVX3", 0) == 0;
  return avx512 && !is_double && ((rows == 4 && vectors == 4) || (rows == 8 && vectors == 2));
}

}  // namespace sdpa::cpu

// `sdpa info`: what this build and machine offer.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "cli.h"
#include "sdpa/attention.h"
#include "sdpa/system.h"

namespace sdpa::cli {
namespace {

constexpr const char* kHelp =
    "usage: sdpa info [--threads N]\n"
    "\n"
    "Prints the library version, the CPU, the SIMD targets compiled into this binary that the\n"
    "CPU supports, the one the engine uses (SDPA_SIMD_TARGET overrides it), the engine's tuning\n"
    "for this CPU (register tile, tiles, exp2 form, lazy rescaling; SDPA_TUNING overrides it),\n"
    "the thread count (SDPA_NUM_THREADS or --threads) and the measured float32 FMA peak that\n"
    "demo and bench report efficiency against (about 0.5 s to measure).\n"
    "\n"
    "options:\n"
    "  --threads N   threads (0 = all cores, the default)\n"
    "  -h, --help    show this help\n";

}  // namespace

int InfoCommand(const std::vector<std::string>& argv) {
  const Args args = Args::Parse("info", {{"threads", true}}, argv);
  if (args.help()) {
    std::cout << kHelp;
    return kExitOk;
  }
  SetNumThreads(static_cast<int>(args.GetInt("threads", 0, 0, 4096)));
  const SystemInfo info = GetSystemInfo();
  std::string targets;
  for (const std::string& target : info.simd_targets) {
    targets += (targets.empty() ? "" : ", ") + target;
  }
  const double peak_one = MeasureFmaPeakGflops(1);
  const double peak_all = info.threads > 1 ? MeasureFmaPeakGflops(info.threads) : peak_one;
  char peak[128];
  std::snprintf(peak, sizeof(peak), "%.1f GFLOP/s with %d thread%s (%.1f with 1)", peak_all,
                info.threads, info.threads == 1 ? "" : "s", peak_one);
  std::cout << "version:      " << info.version << "\n"
            << "cpu:          " << (info.cpu.empty() ? "(unknown)" : info.cpu) << "\n"
            << "simd targets: " << (targets.empty() ? "(none)" : targets) << "\n"
            << "simd target:  " << info.simd_target << "\n"
            << "tuning:       " << info.tuning << "\n"
            << "threads:      " << info.threads << "\n"
            << "fma peak:     " << peak << "\n";
  return kExitOk;
}

}  // namespace sdpa::cli

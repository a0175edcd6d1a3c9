// `sdpa bench`: times a grid of shapes on this machine and reports GFLOP/s and the fraction of
// the measured FMA peak, as a table or JSON. For comparisons with other implementations see
// bench/ (Google Benchmark and the PyTorch comparison script); this is the quick look from the
// shell that needs nothing but the installed tool.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "cli.h"
#include "measure.h"
#include "sdpa/attention.h"
#include "sdpa/system.h"
#include "sdpa/version.h"

namespace sdpa::cli {
namespace {

constexpr const char* kHelp =
    "usage: sdpa bench [--grid NAME] [--dtype TYPE] [--threads N] [--json] [--min-time S]\n"
    "                  [--backend NAME]\n"
    "\n"
    "Times attention forward (uniform random inputs of --dtype) over a grid of shapes. Each row\n"
    "reports the median time of the timed runs after one warm-up run, GFLOP/s and the fraction\n"
    "of the FMA peak measured at the start. FLOPs = 2*B*H*pairs*(D+Dv), where pairs counts the\n"
    "(query, key) pairs actually visible: Lq*Lkv, about half of it for causal. GB/s counts the\n"
    "least memory traffic (Q, K, V read once, out written once): the figure of merit for decode.\n"
    "\n"
    "grids:\n"
    "  default   B=1 H=8, D in {64, 128}, L in {256, 1024, 4096}, causal and not   (~10 s)\n"
    "  decode    B=1 H=32 D=128, Lq=1, Lkv in {4096, 32768} (1 GiB of K/V)\n"
    "  long      B=1 H=8 L=16384 D in {64, 128}; B=1 H=1 L=65536 D=64; causal and not  (~1 min)\n"
    "  tiny      a few small shapes in well under a second (smoke tests)\n"
    "\n"
    "options:\n"
    "  --grid NAME      default, decode, long or tiny (default: default)\n"
    "  --dtype TYPE     query, key, value and out: float32 (f32, the default), bfloat16 (bf16),\n"
    "                   float16 (f16) or float64 (f64); 16-bit inputs compute in float32\n"
    "  --threads N      threads (0 = all cores, the default)\n"
    "  --json           print JSON instead of a table\n"
    "  --min-time S     keep timing each shape until S seconds have passed (default 0.5; 0 times\n"
    "                   a single run, warm-up included)\n"
    "  --backend NAME   auto (default), cpu or reference\n"
    "  -h, --help       show this help\n";

struct Shape {
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  Causal causal;
};

std::vector<Shape> Grid(const std::string& name) {
  std::vector<Shape> grid;
  if (name == "default") {
    for (std::int64_t d : {64, 128}) {
      for (std::int64_t l : {256, 1024, 4096}) {
        for (Causal c : {Causal::kNone, Causal::kTopLeft}) grid.push_back({1, 8, 8, l, l, d, d, c});
      }
    }
  } else if (name == "decode") {
    for (std::int64_t l : {4096, 32768}) grid.push_back({1, 32, 32, 1, l, 128, 128, Causal::kNone});
  } else if (name == "long") {
    for (std::int64_t d : {64, 128}) {
      for (Causal c : {Causal::kNone, Causal::kTopLeft}) {
        grid.push_back({1, 8, 8, 16384, 16384, d, d, c});
      }
    }
    for (Causal c : {Causal::kNone, Causal::kTopLeft}) {
      grid.push_back({1, 1, 1, 65536, 65536, 64, 64, c});
    }
  } else {  // tiny
    for (Causal c : {Causal::kNone, Causal::kTopLeft}) grid.push_back({1, 2, 2, 64, 64, 32, 32, c});
    grid.push_back({1, 4, 2, 1, 256, 32, 32, Causal::kNone});
  }
  return grid;
}

struct Result {
  Shape shape;
  Plan plan;
  int runs = 0;
  double median_seconds = 0;
  double best_seconds = 0;
  double flops = 0;
  double bytes = 0;  // the least memory traffic: Q, K and V read once, out written once
};

Result Measure(const Shape& s, DType dtype, Backend backend, double min_time) {
  const Tensor query = RandomUniform(dtype, {s.batch, s.heads, s.q_len, s.head_dim}, 1);
  const Tensor key = RandomUniform(dtype, {s.batch, s.kv_heads, s.kv_len, s.head_dim}, 2);
  const Tensor value = RandomUniform(dtype, {s.batch, s.kv_heads, s.kv_len, s.v_dim}, 3);
  Tensor out(dtype, {s.batch, s.heads, s.q_len, s.v_dim});
  Options options;
  options.causal = s.causal;
  options.backend = backend;

  Result result;
  result.shape = s;
  result.plan = Explain(query.view(), key.view(), value.view(), options);
  result.bytes = static_cast<double>(DTypeSize(dtype)) *
                 static_cast<double>(query.size() + key.size() + value.size() + out.size());
  result.flops = AttentionFlops(s.batch, s.heads, s.q_len, s.kv_len, s.head_dim, s.v_dim, s.causal);
  // One warm-up run (page faults, thread start-up), unless it alone took min_time: then it is
  // the measurement, so that the long grid does not pay twice.
  std::vector<double> times;
  const Stopwatch total;
  {
    const Stopwatch clock;
    Forward(query.view(), key.view(), value.view(), out.mutable_view(), options);
    if (clock.Seconds() >= min_time) times.push_back(clock.Seconds());
  }
  while (times.empty() || (total.Seconds() < min_time && times.size() < 1000)) {
    const Stopwatch clock;
    Forward(query.view(), key.view(), value.view(), out.mutable_view(), options);
    times.push_back(clock.Seconds());
  }
  std::sort(times.begin(), times.end());
  result.runs = static_cast<int>(times.size());
  result.median_seconds = times[times.size() / 2];
  result.best_seconds = times.front();
  return result;
}

// --dtype: a name or its short form.
DType BenchDType(const std::string& name) {
  if (name == "bfloat16" || name == "bf16") return DType::kBFloat16;
  if (name == "float16" || name == "f16") return DType::kFloat16;
  if (name == "float64" || name == "f64") return DType::kFloat64;
  return DType::kFloat32;
}

const char* CausalLabel(Causal causal) {
  return causal == Causal::kNone      ? "none"
         : causal == Causal::kTopLeft ? "top-left"
                                      : "bottom-right";
}

// Just enough JSON: objects, arrays, strings, numbers (non-finite ones become null).
std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}
std::string JsonNumber(double value) {
  if (!std::isfinite(value)) return "null";
  char text[32];
  std::snprintf(text, sizeof(text), "%.6g", value);
  return text;
}

void PrintJson(const std::string& grid, DType dtype, int threads, double peak,
               const SystemInfo& info, const std::vector<Result>& results) {
  std::cout << "{\n  \"version\": " << JsonString(SDPA_VERSION)
            << ",\n  \"grid\": " << JsonString(grid) << ",\n  \"threads\": " << threads
            << ",\n  \"dtype\": " << JsonString(DTypeName(dtype))
            << ",\n  \"simd_target\": " << JsonString(info.simd_target)
            << ",\n  \"peak_gflops\": " << JsonNumber(peak) << ",\n  \"rows\": [";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    const Shape& s = r.shape;
    const double gflops = r.flops / r.median_seconds * 1e-9;
    std::cout << (i ? "," : "") << "\n    {\"batch\": " << s.batch << ", \"heads\": " << s.heads
              << ", \"kv_heads\": " << s.kv_heads << ", \"q_len\": " << s.q_len
              << ", \"kv_len\": " << s.kv_len << ", \"head_dim\": " << s.head_dim
              << ", \"v_dim\": " << s.v_dim << ", \"causal\": " << JsonString(CausalName(s.causal))
              << ", \"backend\": " << JsonString(BackendName(r.plan.backend))
              << ", \"path\": " << JsonString(r.plan.path) << ", \"runs\": " << r.runs
              << ", \"seconds_median\": " << JsonNumber(r.median_seconds)
              << ", \"seconds_best\": " << JsonNumber(r.best_seconds)
              << ", \"gflop\": " << JsonNumber(r.flops * 1e-9)
              << ", \"gflops\": " << JsonNumber(gflops)
              << ", \"gbytes_per_second\": " << JsonNumber(r.bytes / r.median_seconds * 1e-9)
              << ", \"fraction_of_peak\": " << JsonNumber(gflops / peak) << "}";
  }
  std::cout << "\n  ]\n}\n";
}

void PrintTable(const std::string& grid, DType dtype, int threads, double peak,
                const SystemInfo& info, const std::vector<Result>& results) {
  std::printf("sdpa %s bench, grid %s: %s, %d thread%s, SIMD %s, FMA peak %.1f GFLOP/s\n",
              SDPA_VERSION, grid.c_str(), DTypeName(dtype), threads, threads == 1 ? "" : "s",
              info.simd_target.c_str(), peak);
  std::printf("%5s %5s %8s %6s %6s %4s %-12s %10s %9s %7s %7s  %s\n", "batch", "heads", "kv_heads",
              "q_len", "kv_len", "dim", "causal", "time_ms", "GFLOP/s", "of_peak", "GB/s", "path");
  for (const Result& r : results) {
    const Shape& s = r.shape;
    const double gflops = r.flops / r.median_seconds * 1e-9;
    std::printf("%5lld %5lld %8lld %6lld %6lld %4lld %-12s %10.3f %9.1f %6.0f%% %7.1f  %s\n",
                static_cast<long long>(s.batch), static_cast<long long>(s.heads),
                static_cast<long long>(s.kv_heads), static_cast<long long>(s.q_len),
                static_cast<long long>(s.kv_len), static_cast<long long>(s.head_dim),
                CausalLabel(s.causal), r.median_seconds * 1e3, gflops, 100.0 * gflops / peak,
                r.bytes / r.median_seconds * 1e-9, r.plan.path.c_str());
  }
}

}  // namespace

int BenchCommand(const std::vector<std::string>& argv) {
  const Args args = Args::Parse("bench",
                                {{"grid", true},
                                 {"dtype", true},
                                 {"threads", true},
                                 {"json", false},
                                 {"min-time", true},
                                 {"backend", true}},
                                argv);
  if (args.help()) {
    std::cout << kHelp;
    return kExitOk;
  }
  const std::string grid = args.GetChoice("grid", "default", {"default", "decode", "long", "tiny"});
  const DType dtype = BenchDType(
      args.GetChoice("dtype", "float32",
                     {"float32", "f32", "bfloat16", "bf16", "float16", "f16", "float64", "f64"}));
  SetNumThreads(static_cast<int>(args.GetInt("threads", 0, 0, 4096)));
  const double min_time = args.GetDouble("min-time").value_or(0.5);
  if (min_time < 0 || min_time > 3600) {
    throw UsageError("bench: --min-time is " + std::to_string(min_time) +
                     " but must be in [0, 3600] seconds (see 'sdpa bench --help')");
  }
  const std::string backend_name = args.GetChoice("backend", "auto", {"auto", "cpu", "reference"});
  const Backend backend = backend_name == "cpu"         ? Backend::kCpu
                          : backend_name == "reference" ? Backend::kReference
                                                        : Backend::kAuto;

  const std::vector<Shape> shapes = Grid(grid);
  Progress progress(static_cast<int>(shapes.size()) + 1);
  progress.Step("measuring the FMA peak");
  const SystemInfo info = GetSystemInfo();
  const int threads = GetNumThreads();
  const double peak = MeasureFmaPeakGflops(threads);
  std::vector<Result> results;
  for (const Shape& s : shapes) {
    progress.Step("H=" + std::to_string(s.heads) + " Lq=" + std::to_string(s.q_len) +
                  " Lkv=" + std::to_string(s.kv_len) + " D=" + std::to_string(s.head_dim) + " " +
                  CausalLabel(s.causal));
    results.push_back(Measure(s, dtype, backend, min_time));
  }
  progress.Done();
  if (args.Has("json")) {
    PrintJson(grid, dtype, threads, peak, info, results);
  } else {
    PrintTable(grid, dtype, threads, peak, info, results);
  }
  return kExitOk;
}

}  // namespace sdpa::cli

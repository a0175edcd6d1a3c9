// `sdpa demo`: the first command a newcomer runs. Part 1 is the seed example with its known
// answer; part 2 is one long sequence on the default (fast) backend, checked against the float64
// reference on a slice of query rows, with throughput, fraction of peak and memory.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "cli.h"
#include "measure.h"
#include "sdpa/attention.h"
#include "sdpa/seed.h"
#include "sdpa/system.h"
#include "sdpa/version.h"

namespace sdpa::cli {
namespace {

constexpr const char* kHelp =
    "usage: sdpa demo [--seq-len L] [--threads N]\n"
    "\n"
    "1. The seed example: Q = K = [[1, 0], [0, 1]], V = [[1, 2], [3, 4]], whose attention\n"
    "   output is [[1.660477, 2.660477], [2.339523, 3.339523]].\n"
    "2. One long sequence (batch 1, 8 heads, L = 4096, head_dim 64, float32, standard-normal\n"
    "   inputs, non-causal) on the default backend: time, GFLOP/s (2*B*H*L*L*(D+Dv)), fraction\n"
    "   of the measured FMA peak, the largest difference from the float64 reference on a slice\n"
    "   of query rows of every head, and the memory used. Progress goes to stderr when it is a\n"
    "   terminal.\n"
    "\n"
    "options:\n"
    "  --seq-len L   sequence length of part 2 (default 4096)\n"
    "  --threads N   threads (0 = all cores, the default)\n"
    "  -h, --help    show this help\n";

constexpr std::int64_t kBatch = 1;
constexpr std::int64_t kHeads = 8;
constexpr std::int64_t kHeadDim = 64;
// Query rows per head checked against the reference. The reference costs O(L·D) per row in
// float64 (~1 GFLOP/s), so 64 rows × 8 heads at L = 4096 take about a quarter of a second.
constexpr std::int64_t kCheckedRowsPerHead = 64;
// Timed runs of the fast engine: up to this many, while the total stays under a second.
constexpr int kMaxRuns = 5;

std::string MatrixText(const Matrix& m, const char* indent) {
  std::string text = "[";
  char number[32];
  for (std::size_t i = 0; i < m.size(); ++i) {
    text += (i ? std::string(",\n") + indent + " [" : "[");
    for (std::size_t j = 0; j < m[i].size(); ++j) {
      std::snprintf(number, sizeof(number), "%s%.6f", j ? ", " : "", m[i][j]);
      text += number;
    }
    text += "]";
  }
  return text + "]";
}

void SeedExample() {
  const Matrix q = {{1, 0}, {0, 1}};
  const Matrix k = {{1, 0}, {0, 1}};
  const Matrix v = {{1, 2}, {3, 4}};
  const Matrix out = self_attention(q, k, v);
  std::printf(
      "1. The seed example: out = softmax(Q K^T / sqrt(d_k)) V\n"
      "   Q = [[1, 0], [0, 1]]  K = [[1, 0], [0, 1]]  V = [[1, 2], [3, 4]]\n"
      "   out = %s\n\n",
      MatrixText(out, "         ").c_str());
}

// A view of `rows` query rows, `row_step` apart, in each head of a [B, H, L, D] tensor.
TensorView RowSlice(const Tensor& tensor, std::int64_t rows, std::int64_t row_step) {
  const std::int64_t seq_len = tensor.dim(2), dim = tensor.dim(3);
  return TensorView(tensor.data<float>(), {kBatch, kHeads, rows, dim},
                    {kHeads * seq_len * dim, seq_len * dim, row_step * dim, 1});
}

}  // namespace

int DemoCommand(const std::vector<std::string>& argv) {
  const Args args = Args::Parse("demo", {{"seq-len", true}, {"threads", true}}, argv);
  if (args.help()) {
    std::cout << kHelp;
    return kExitOk;
  }
  const std::int64_t seq_len = args.GetInt("seq-len", 4096, 1, std::int64_t{1} << 20);
  SetNumThreads(static_cast<int>(args.GetInt("threads", 0, 0, 4096)));

  std::printf("sdpa %s demo\n\n", SDPA_VERSION);
  SeedExample();
  std::fflush(stdout);

  Progress progress(4);
  progress.Step("measuring the FMA peak");
  const int threads = GetNumThreads();
  const double peak_gflops = MeasureFmaPeakGflops(threads);

  progress.Step("generating inputs");
  const std::vector<std::int64_t> shape = {kBatch, kHeads, seq_len, kHeadDim};
  const Tensor query = RandomNormal(DType::kFloat32, shape, 1);
  const Tensor key = RandomNormal(DType::kFloat32, shape, 2);
  const Tensor value = RandomNormal(DType::kFloat32, shape, 3);
  Tensor out(DType::kFloat32, shape);
  const std::int64_t io_bytes = 4 * out.size() * static_cast<std::int64_t>(sizeof(float));

  const Plan plan = Explain(query.view(), key.view(), value.view());
  progress.Step("running the " + std::string(BackendName(plan.backend)) + " backend");
  // Memory: the process's resident size with inputs and output in place, then the peak during
  // the first call (which also pays for any scratch the engine allocates).
  const std::int64_t rss_before = CurrentRssBytes();
  const bool peak_reset = ResetPeakRss();
  double best_seconds = 0;
  int runs = 0;
  const Stopwatch total;
  std::int64_t peak_during = -1;
  while (runs < kMaxRuns && (runs == 0 || total.Seconds() < 1.0)) {
    const Stopwatch clock;
    Forward(query.view(), key.view(), value.view(), out.mutable_view());
    const double seconds = clock.Seconds();
    best_seconds = runs == 0 ? seconds : std::min(best_seconds, seconds);
    if (runs == 0) peak_during = PeakRssBytes();
    ++runs;
  }

  progress.Step("checking against the float64 reference");
  const std::int64_t rows = std::min(kCheckedRowsPerHead, seq_len);
  const std::int64_t row_step = seq_len / rows;
  Tensor reference(DType::kFloat32, {kBatch, kHeads, rows, kHeadDim});
  Options reference_options;
  reference_options.backend = Backend::kReference;
  Forward(RowSlice(query, rows, row_step), key.view(), value.view(), reference.mutable_view(),
          reference_options);
  double max_error = 0;
  const float* fast = out.data<float>();
  const float* exact = reference.data<float>();
  for (std::int64_t h = 0; h < kHeads; ++h) {
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t d = 0; d < kHeadDim; ++d) {
        const double a = fast[(h * seq_len + r * row_step) * kHeadDim + d];
        const double b = exact[(h * rows + r) * kHeadDim + d];
        max_error = std::max(max_error, std::fabs(a - b));
      }
    }
  }
  double max_abs_value = 0;
  for (std::int64_t i = 0; i < value.size(); ++i) {
    max_abs_value = std::max(max_abs_value, std::fabs(double{value.data<float>()[i]}));
  }
  progress.Done();

  const double flops =
      AttentionFlops(kBatch, kHeads, seq_len, seq_len, kHeadDim, kHeadDim, Causal::kNone);
  const double gflops = flops / best_seconds * 1e-9;
  std::string engine = std::string(BackendName(plan.backend)) + " (" + plan.path;
  if (!plan.simd_target.empty()) engine += ", " + plan.simd_target;
  engine += ", " + std::to_string(plan.threads) + " thread" + (plan.threads == 1 ? "" : "s") + ")";
  const std::int64_t extra = peak_during >= 0 && rss_before >= 0
                                 ? std::max<std::int64_t>(peak_during - rss_before, 0)
                                 : -1;
  std::printf(
      "2. A long sequence: batch %lld, %lld heads, L = %lld, head_dim %lld, float32,\n"
      "   standard-normal inputs, non-causal\n",
      static_cast<long long>(kBatch), static_cast<long long>(kHeads),
      static_cast<long long>(seq_len), static_cast<long long>(kHeadDim));
  std::printf("   engine:      %s\n", engine.c_str());
  std::printf("   time:        %.3f s (best of %d)\n", best_seconds, runs);
  std::printf("   throughput:  %.1f GFLOP/s = %s\n", gflops,
              PercentOfPeak(gflops, peak_gflops).c_str());
  std::printf("                (FMA peak %.1f GFLOP/s with %d thread%s;\n", peak_gflops, threads,
              threads == 1 ? "" : "s");
  std::printf("                FLOPs = 2*B*H*L*L*(D+Dv) = %.1f GFLOP per call)\n", flops * 1e-9);
  std::printf(
      "   accuracy:    max |out - reference| = %.2e (%.1e x max|V|) over %lld rows\n"
      "                (%lld per head) against the float64 reference\n",
      max_error, max_error / max_abs_value, static_cast<long long>(rows * kHeads),
      static_cast<long long>(rows));
  std::printf("   memory:      inputs + output %s; peak RSS %s%s; extra during the call %s\n",
              FormatBytes(io_bytes).c_str(), FormatBytes(peak_during).c_str(),
              peak_reset ? "" : " (whole run)", FormatBytes(extra).c_str());
  std::printf("                (an L x L score matrix would take %s)\n",
              FormatBytes(kBatch * kHeads * seq_len * seq_len * 4).c_str());
  return kExitOk;
}

}  // namespace sdpa::cli

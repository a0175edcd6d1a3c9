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
// reference backend on a small shape, and a tiny case for the ctest smoke run; then issue 7's
// variant rows (Window/, Varlen/, Variant/: see "Variant rows" below; compare.py --only variants
// turns them into tables). Wall time (UseRealTime) because the engine's work happens on its own
// threads.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "machine.h"
#include "sdpa/sdpa.h"

namespace {

using sdpa_bench::BandwidthBuffer;
using sdpa_bench::kBandwidthBytes;
using sdpa_bench::ReadBandwidthGBps;
using sdpa_bench::ReadPass;

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

// Labels the row with the engine's plan (path, SIMD target, tiles, splits); false, with the row
// skipped, when the arguments are invalid.
bool LabelWithPlan(benchmark::State& state, const sdpa::TensorView& q, const sdpa::TensorView& k,
                   const sdpa::TensorView& v, const sdpa::Options& options) {
  try {
    const sdpa::Plan plan = sdpa::Explain(q, k, v, options);
    std::string label = plan.path;
    if (!plan.simd_target.empty()) label += " " + plan.simd_target;
    if (plan.q_tile > 0) {
      label += " tile " + std::to_string(plan.q_tile) + "x" + std::to_string(plan.kv_tile);
    }
    if (plan.kv_splits > 1) label += " splits " + std::to_string(plan.kv_splits);
    state.SetLabel(label);
    return true;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return false;
  }
}

// Runs `call` in the benchmark loop; returns calls per second of wall time, or 0 (the row skipped)
// when a call throws. Our own clock around the loop, so that the fractions below are plain
// numbers (a rate counter would print them as "0.8/s"); the loop's bookkeeping costs nanoseconds.
template <class Call>
double TimeCalls(benchmark::State& state, const Call& call) {
  const auto start = std::chrono::steady_clock::now();
  try {
    for (auto _ : state) {
      call();
      benchmark::ClobberMemory();
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return 0;
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return static_cast<double>(state.iterations()) / elapsed.count();
}

// GFLOP/s and peak_frac of `flops` per call; float64 FMAs carry half the lanes of float32 ones.
void SetRateCounters(benchmark::State& state, double flops, double calls_per_second, int threads,
                     DType dtype) {
  const double gflops = flops * 1e-9 * calls_per_second;
  const double peak = FmaPeakFor(threads) * (dtype == DType::kFloat64 ? 0.5 : 1.0);
  state.counters["GFLOP/s"] = gflops;
  state.counters["peak_frac"] = gflops / peak;
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
  if (!LabelWithPlan(state, q, k, v, options)) return;

  const bool backward = std::string(c.kind) == "Backward";
  const double calls_per_second = TimeCalls(state, [&] {
    if (backward) {
      sdpa::Backward(q, k, v, out, operands.lse.view(), operands.grad_out.view(),
                     operands.grad_query.mutable_view(), operands.grad_key.mutable_view(),
                     operands.grad_value.mutable_view(), options);
    } else {
      sdpa::Forward(q, k, v, out, options);
    }
  });
  if (calls_per_second == 0) return;
  SetRateCounters(state, (backward ? 2.5 : 1.0) * Flops(c), calls_per_second, c.threads, c.dtype);
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

// ---------------------------------------------------------------------------------------------
// Variant rows (issue 7): the cost of the sliding window against its size, packed varlen against
// padding, and each variant's overhead on one shape. float32, H=8, D=64, causal; GFLOP/s counts
// the visible (query, key) pairs of each row exactly (2.5× for the backward, as above).
//
//   Window/{Forward,Backward}/.../left:W   causal (bottom-right) with window (W, 0); left:inf is
//       plain causal. Forward at L=16384, backward at L=4096. keys_per_row: the mean number of
//       keys a query sees (min(i, W) + 1 over the rows); us_per_key: µs per call over it, flat
//       when the cost grows linearly with the window.
//   Varlen/{Forward,Backward}/.../{packed,padded_mask,padded}   8 sequences of kVarlenLengths
//       (16384 tokens, half of 8 × 4096), causal: packed along L with cu_seqlens; padded to
//       [8, H, 4096, D], causal (the option) and a key-padding bool mask [8, 1, 1, 4096]; padded
//       without a mask (what ignoring the padding costs; with right padding, causal alone keeps
//       the valid rows right). GFLOP/s counts the sequences' own pairs in all three, so the
//       padded rows show the rate of useful work.
//   Variant/{Forward,Backward}/.../<variant>   B=1, L=4096, causal (top-left): plain, alibi,
//       softcap, sinks, dropout:0.1, score_mod_alibi (ALiBi as a custom score_mod), and document
//       masking (kDocumentLengths) four ways: doc_mask_mod (custom mask_mod), doc_block_mask (with
//       a block_mask that skips tiles across documents), doc_bool_mask ([1, 1, L, L]) and
//       doc_varlen (the documents as varlen sequences).

// The sequences of the Varlen rows: in [L/8, L] for L = 4096, deterministic, mean L/2.
constexpr std::int64_t kVarlenLengths[] = {4096, 517, 1283, 2904, 1811, 3369, 955, 1449};
constexpr std::int64_t kVarlenMax = 4096;
// The documents of the Variant rows' document masking: 4 of uneven length, 4096 tokens.
constexpr std::int64_t kDocumentLengths[] = {1337, 611, 1429, 719};

// (query, key) pairs of causal attention over n tokens.
double CausalPairs(std::int64_t n) {
  return static_cast<double>(n) * static_cast<double>(n + 1) / 2;
}

// Pairs of causal attention over n tokens with window (left, 0): row i sees min(i, left) + 1 keys.
double WindowPairs(std::int64_t n, std::int64_t left) {
  const std::int64_t ramp = std::min(n, left);  // rows 0 .. ramp-1 see i + 1 keys
  return CausalPairs(ramp) + static_cast<double>(n - ramp) * static_cast<double>(left + 1);
}

// cu_seqlens of sequences packed back to back: {0, l0, l0 + l1, ...}.
template <std::size_t N>
std::vector<std::int64_t> CumulativeLengths(const std::int64_t (&lengths)[N]) {
  std::vector<std::int64_t> cu = {0};
  for (std::int64_t length : lengths) cu.push_back(cu.back() + length);
  return cu;
}

// What one call of a variant row passes, made when the row runs: the options and what they
// point into (a mask, the custom functions).
struct Variant {
  sdpa::Options options;
  sdpa::Tensor mask;
  std::shared_ptr<const void> custom;
};

template <class ScoreMod, class MaskMod, class BlockMask = sdpa::NoBlockMask>
void AttachCustom(Variant& variant, ScoreMod score_mod, MaskMod mask_mod, BlockMask block = {}) {
  auto custom = std::make_shared<const sdpa::Custom<ScoreMod, MaskMod, BlockMask>>(
      std::move(score_mod), std::move(mask_mod), std::move(block));
  variant.options = custom->With(variant.options);
  variant.custom = std::move(custom);
}

struct VariantRow {
  std::string name;
  bool backward = false;
  std::int64_t batch = 1, heads = 8, len = 0, head_dim = 64;  // Q, K, V: [batch, heads, len, D]
  double pairs = 0;     // visible (query, key) pairs per head, summed over the batch
  bool window = false;  // report keys_per_row and us_per_key
  std::function<void(Variant&)> setup;
  int threads = 2;

  std::string ShapeKey() const {
    return std::to_string(batch) + "x" + std::to_string(heads) + "x" + std::to_string(len) + "x" +
           std::to_string(head_dim);
  }
};

// Operands per shape, kept for the whole run: compare.py interleaves the rows, and refilling
// 64 MiB tensors on every switch would dominate the short ones. The backward's out and lse are
// those of the forward with the row's own options, remade when another row used them.
struct VariantOperands {
  sdpa::Tensor query, key, value, out;
  sdpa::Tensor lse, grad_out, grad_query, grad_key, grad_value, grad_sinks;  // backward rows
  std::string forward_of;  // the row whose forward out and lse hold
};

VariantOperands& VariantOperandsFor(const VariantRow& row) {
  static std::map<std::string, VariantOperands> cache;
  VariantOperands& operands = cache[row.ShapeKey()];
  const std::vector<std::int64_t> shape = {row.batch, row.heads, row.len, row.head_dim};
  if (operands.query.rank() == 0) {  // default-constructed: rank 0
    operands.query = sdpa::Tensor(DType::kFloat32, shape);
    operands.key = sdpa::Tensor(DType::kFloat32, shape);
    operands.value = sdpa::Tensor(DType::kFloat32, shape);
    operands.out = sdpa::Tensor(DType::kFloat32, shape);
    Fill(operands.query, 1);
    Fill(operands.key, 2);
    Fill(operands.value, 3);
  }
  if (row.backward && operands.grad_out.rank() == 0) {
    operands.lse = sdpa::Tensor(DType::kFloat32, {row.batch, row.heads, row.len});
    operands.grad_out = sdpa::Tensor(DType::kFloat32, shape);
    operands.grad_query = sdpa::Tensor(DType::kFloat32, shape);
    operands.grad_key = sdpa::Tensor(DType::kFloat32, shape);
    operands.grad_value = sdpa::Tensor(DType::kFloat32, shape);
    operands.grad_sinks = sdpa::Tensor(DType::kFloat32, {row.heads});
    Fill(operands.grad_out, 4);
  }
  return operands;
}

void BM_Variant(benchmark::State& state, const VariantRow& row) {
  sdpa::SetNumThreads(row.threads);
  VariantOperands& operands = VariantOperandsFor(row);
  Variant variant;
  row.setup(variant);
  const sdpa::Options& options = variant.options;
  const sdpa::TensorView q = operands.query.view(), k = operands.key.view(),
                         v = operands.value.view();
  if (!LabelWithPlan(state, q, k, v, options)) return;

  double calls_per_second = 0;
  if (row.backward) {
    try {
      if (operands.forward_of != row.name) {
        operands.forward_of.clear();
        sdpa::Forward(q, k, v, operands.out.mutable_view(), operands.lse.mutable_view(), options);
        operands.forward_of = row.name;
      }
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
      return;
    }
    const sdpa::TensorView out = operands.out.view(), lse = operands.lse.view(),
                           grad_out = operands.grad_out.view();
    const sdpa::MutableTensorView grad_q = operands.grad_query.mutable_view(),
                                  grad_k = operands.grad_key.mutable_view(),
                                  grad_v = operands.grad_value.mutable_view();
    if (options.sinks.empty()) {
      calls_per_second = TimeCalls(state, [&] {
        sdpa::Backward(q, k, v, out, lse, grad_out, grad_q, grad_k, grad_v, options);
      });
    } else {  // a model with sinks trains them: their gradient too
      const sdpa::MutableTensorView grad_sinks = operands.grad_sinks.mutable_view();
      calls_per_second = TimeCalls(state, [&] {
        sdpa::Backward(q, k, v, out, lse, grad_out, grad_q, grad_k, grad_v, grad_sinks, options);
      });
    }
  } else {
    const sdpa::MutableTensorView out = operands.out.mutable_view();
    calls_per_second = TimeCalls(state, [&] { sdpa::Forward(q, k, v, out, options); });
  }
  if (calls_per_second == 0) return;

  const double flops = (row.backward ? 2.5 : 1.0) * 2.0 * static_cast<double>(row.heads) *
                       row.pairs * static_cast<double>(2 * row.head_dim);
  SetRateCounters(state, flops, calls_per_second, row.threads, DType::kFloat32);
  if (row.window) {
    const double keys_per_row = row.pairs / static_cast<double>(row.batch * row.len);
    state.counters["keys_per_row"] = keys_per_row;
    state.counters["us_per_key"] = 1e6 / calls_per_second / keys_per_row;
  }
}

std::vector<VariantRow> VariantRows(int threads) {
  constexpr std::int64_t kHeads = 8, kHeadDim = 64;
  std::vector<VariantRow> rows;
  const auto add = [&rows, threads](VariantRow row) {
    row.threads = threads;
    row.name += "/threads:" + std::to_string(threads);
    rows.push_back(std::move(row));
  };
  const auto pass_name = [](bool backward) { return backward ? "Backward" : "Forward"; };
  const auto shape_name = [](std::int64_t batch, std::int64_t len) {
    return "f32/B:" + std::to_string(batch) + "/H:" + std::to_string(kHeads) +
           "/L:" + std::to_string(len) + "/D:" + std::to_string(kHeadDim);
  };

  // Window: forward at L = 16384, backward at L = 4096 (windows below L, then unbounded).
  for (bool backward : {false, true}) {
    const std::int64_t len = backward ? 4096 : 16384;
    for (std::int64_t left : {128, 512, 2048, 8192, -1}) {
      if (left >= len) continue;
      VariantRow row;
      row.name = std::string("Window/") + pass_name(backward) + "/" + shape_name(1, len) +
                 "/bottom_right/left:" + (left < 0 ? std::string("inf") : std::to_string(left));
      row.backward = backward;
      row.len = len;
      row.pairs = left < 0 ? CausalPairs(len) : WindowPairs(len, left);
      row.window = true;
      row.setup = [left](Variant& variant) {
        variant.options.causal = Causal::kBottomRight;
        if (left >= 0) variant.options.window = sdpa::Window{left, std::nullopt};
      };
      add(row);
    }
  }

  // Varlen: the same sequences packed, padded with a mask, padded without one.
  double varlen_pairs = 0;
  for (std::int64_t length : kVarlenLengths) varlen_pairs += CausalPairs(length);
  const auto sequences = static_cast<std::int64_t>(std::size(kVarlenLengths));
  const std::vector<std::int64_t> varlen_cu = CumulativeLengths(kVarlenLengths);
  for (bool backward : {false, true}) {
    const std::string prefix =
        std::string("Varlen/") + pass_name(backward) + "/f32/seqs:" + std::to_string(sequences) +
        "/H:" + std::to_string(kHeads) + "/Lmax:" + std::to_string(kVarlenMax) +
        "/D:" + std::to_string(kHeadDim) + "/top_left/";
    VariantRow row;
    row.backward = backward;
    row.pairs = varlen_pairs;

    row.name = prefix + "packed";
    row.len = varlen_cu.back();
    row.setup = [varlen_cu](Variant& variant) {
      variant.options.causal = Causal::kTopLeft;
      variant.options.cu_seqlens_q = variant.options.cu_seqlens_k = varlen_cu;
    };
    add(row);

    row.batch = sequences;
    row.len = kVarlenMax;
    row.name = prefix + "padded_mask";
    row.setup = [sequences](Variant& variant) {
      variant.options.causal = Causal::kTopLeft;
      variant.mask = sdpa::Tensor(DType::kBool, {sequences, 1, 1, kVarlenMax});
      bool* valid = variant.mask.data<bool>();
      for (std::int64_t s = 0; s < sequences; ++s) {
        for (std::int64_t j = 0; j < kVarlenMax; ++j) {
          valid[s * kVarlenMax + j] = j < kVarlenLengths[s];
        }
      }
      variant.options.mask = variant.mask.view();
    };
    add(row);

    row.name = prefix + "padded";
    row.setup = [](Variant& variant) { variant.options.causal = Causal::kTopLeft; };
    add(row);
  }

  // Variant overheads on one shape. ALiBi's slopes are the paper's 2^(-8(h+1)/H).
  constexpr std::int64_t kLen = 4096;
  std::vector<double> slopes;
  for (std::int64_t h = 0; h < kHeads; ++h) {
    slopes.push_back(std::exp2(-8.0 * static_cast<double>(h + 1) / static_cast<double>(kHeads)));
  }
  std::vector<std::int32_t> document;  // document of each token
  for (std::size_t d = 0; d < std::size(kDocumentLengths); ++d) {
    document.insert(document.end(), static_cast<std::size_t>(kDocumentLengths[d]),
                    static_cast<std::int32_t>(d));
  }
  double document_pairs = 0;
  for (std::int64_t length : kDocumentLengths) document_pairs += CausalPairs(length);
  // Token i sees token j (j <= i from the causal option) iff both are in the same document.
  const auto same_document = [document](auto /*b*/, auto /*h*/, auto i, auto j) {
    return document[static_cast<std::size_t>(i)] == document[static_cast<std::size_t>(j)];
  };
  // Document ids grow along the sequence: a block's queries lie in documents
  // document[q_begin] .. document[q_end - 1] and its keys in document[k_begin] .. [k_end - 1].
  const auto document_blocks = [document](std::int64_t /*b*/, std::int64_t /*h*/,
                                          std::int64_t q_begin, std::int64_t q_end,
                                          std::int64_t k_begin, std::int64_t k_end) {
    const auto doc = [&document](std::int64_t i) { return document[static_cast<std::size_t>(i)]; };
    const std::int32_t q_first = doc(q_begin), q_last = doc(q_end - 1);
    const std::int32_t k_first = doc(k_begin), k_last = doc(k_end - 1);
    if (k_last < q_first || k_first > q_last) return sdpa::BlockKind::kEmpty;
    if (q_first == q_last && k_first == k_last && q_first == k_first) {
      return sdpa::BlockKind::kFull;
    }
    return sdpa::BlockKind::kPartial;
  };
  using Setup = std::function<void(Variant&)>;
  const std::vector<std::pair<std::string, Setup>> variants = {
      {"plain", [](Variant&) {}},
      {"alibi", [slopes](Variant& variant) { variant.options.alibi_slopes = slopes; }},
      {"softcap", [](Variant& variant) { variant.options.softcap = 50.0; }},
      {"sinks", [](Variant& variant) { variant.options.sinks.assign(kHeads, 1.0); }},
      {"dropout:0.1",
       [](Variant& variant) {
         variant.options.dropout_p = 0.1;
         variant.options.seed = 1234;
       }},
      {"score_mod_alibi",
       [slopes](Variant& variant) {
         // Causal, so j <= i and -slope·|i - j| = slope·(j - i). Generic, for the backward.
         const std::vector<float> slope(slopes.begin(), slopes.end());
         AttachCustom(
             variant,
             [slope](auto score, auto /*b*/, auto h, auto i, auto j) {
               return score + slope[static_cast<std::size_t>(h)] * static_cast<float>(j - i);
             },
             sdpa::NoMaskMod{});
       }},
      {"doc_mask_mod",
       [same_document](Variant& variant) {
         AttachCustom(variant, sdpa::NoScoreMod{}, same_document);
       }},
      {"doc_block_mask",
       [same_document, document_blocks](Variant& variant) {
         AttachCustom(variant, sdpa::NoScoreMod{}, same_document, document_blocks);
       }},
      {"doc_bool_mask",
       [same_document](Variant& variant) {
         variant.mask = sdpa::Tensor(DType::kBool, {1, 1, kLen, kLen});
         bool* visible = variant.mask.data<bool>();
         for (std::int64_t i = 0; i < kLen; ++i) {
           for (std::int64_t j = 0; j < kLen; ++j)
             visible[i * kLen + j] = same_document(0, 0, i, j);
         }
         variant.options.mask = variant.mask.view();
       }},
      {"doc_varlen",
       [](Variant& variant) {
         variant.options.cu_seqlens_q = variant.options.cu_seqlens_k =
             CumulativeLengths(kDocumentLengths);
       }},
  };
  for (bool backward : {false, true}) {
    for (const auto& [tag, setup] : variants) {
      VariantRow row;
      row.name = std::string("Variant/") + pass_name(backward) + "/" + shape_name(1, kLen) +
                 "/top_left/" + tag;
      row.backward = backward;
      row.len = kLen;
      row.pairs = tag.rfind("doc_", 0) == 0 ? document_pairs : CausalPairs(kLen);
      row.setup = [setup = setup](Variant& variant) {
        variant.options.causal = Causal::kTopLeft;
        setup(variant);
      };
      add(row);
    }
  }
  return rows;
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
  for (const VariantRow& row : VariantRows(threads)) {
    benchmark::RegisterBenchmark(row.name.c_str(), BM_Variant, row)
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

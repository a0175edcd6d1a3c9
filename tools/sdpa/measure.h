// What `demo` and `bench` measure with: FLOP counts, random inputs, clocks, memory, progress.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "sdpa/options.h"
#include "sdpa/tensor.h"

namespace sdpa::cli {

// Number of (query row, key) pairs a query row may see, summed over the q_len rows of one head:
// q_len·kv_len without a causal mask; with one, exactly the visible pairs (rows with no visible
// key count 0), so causal rates are in useful FLOPs.
std::int64_t VisiblePairs(std::int64_t q_len, std::int64_t kv_len, Causal causal);

// The attention forward FLOP convention: 2·B·H·(visible pairs)·(D + Dv) — one multiply-add for
// each of Q·Kᵀ (D per pair) and P·V (Dv per pair). Softmax is not counted.
double AttentionFlops(std::int64_t batch, std::int64_t heads, std::int64_t q_len,
                      std::int64_t kv_len, std::int64_t head_dim, std::int64_t v_dim,
                      Causal causal);

// A float32 or float64 tensor of standard-normal values from a fixed seed (Box–Muller on a
// SplitMix64 stream: the same values on every machine).
Tensor RandomNormal(DType dtype, const std::vector<std::int64_t>& shape, std::uint64_t seed);
// Uniform values in [-1, 1): several times cheaper than RandomNormal, for timing-only inputs of
// hundreds of MiB.
Tensor RandomUniform(DType dtype, const std::vector<std::int64_t>& shape, std::uint64_t seed);

// Seconds since construction.
class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double Seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

// Resident memory of this process in bytes, from /proc/self/status (VmRSS, VmHWM); peak falls
// back to getrusage. -1 when unknown.
std::int64_t CurrentRssBytes();
std::int64_t PeakRssBytes();
// Resets the peak (VmHWM) to the current RSS, so that PeakRssBytes measures one phase; false when
// the kernel does not allow it (then the peak covers the whole run).
bool ResetPeakRss();

// "77% of the measured FMA peak", noting when a busy machine disturbed the peak measurement.
std::string PercentOfPeak(double gflops, double peak_gflops);

// "12.3 MiB"
std::string FormatBytes(std::int64_t bytes);

// A one-line status on stderr, redrawn in place with the elapsed time, shown only when stderr is
// a terminal so that logs and pipes stay clean. Start a step, then call Done (or start the next).
class Progress {
 public:
  explicit Progress(int total_steps);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void Step(const std::string& what);
  void Done();

 private:
  void Draw();

  const bool enabled_;
  const int total_steps_;
  int step_ = 0;
  std::string what_;
  Stopwatch step_clock_;
  std::atomic<bool> running_{false};
  std::thread ticker_;
};

}  // namespace sdpa::cli

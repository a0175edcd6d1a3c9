#include "measure.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace sdpa::cli {
namespace {

// SplitMix64 (Steele, Lea, Flood 2014): one multiply-xorshift step per 64 random bits.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t Next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  std::uint64_t state_;
};

template <typename Fill>
Tensor MakeTensor(DType dtype, const std::vector<std::int64_t>& shape, Fill fill) {
  Tensor tensor(dtype, shape);
  const auto count = static_cast<std::size_t>(tensor.size());
  if (dtype == DType::kFloat32) {
    float* data = tensor.data<float>();
    for (std::size_t i = 0; i < count; ++i) data[i] = static_cast<float>(fill());
  } else if (dtype == DType::kBFloat16) {
    bfloat16* data = tensor.data<bfloat16>();
    for (std::size_t i = 0; i < count; ++i) data[i] = ToBFloat16(static_cast<float>(fill()));
  } else if (dtype == DType::kFloat16) {
    float16* data = tensor.data<float16>();
    for (std::size_t i = 0; i < count; ++i) data[i] = ToFloat16(static_cast<float>(fill()));
  } else {
    double* data = tensor.data<double>();
    for (std::size_t i = 0; i < count; ++i) data[i] = fill();
  }
  return tensor;
}

// The value of a "Key:   123 kB" line of /proc/self/status in bytes, or -1.
std::int64_t ProcStatusBytes(const char* key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(status, line)) {
    if (line.compare(0, prefix.size(), prefix) == 0) {
      std::istringstream fields(line.substr(prefix.size()));
      std::int64_t kib = -1;
      fields >> kib;
      return kib < 0 ? -1 : kib * 1024;
    }
  }
  return -1;
}

}  // namespace

std::int64_t VisiblePairs(std::int64_t q_len, std::int64_t kv_len, Causal causal) {
  if (causal == Causal::kNone) return q_len * kv_len;
  // Row i sees keys j <= i + shift: shift 0 for top-left, kv_len - q_len for bottom-right.
  const std::int64_t shift = causal == Causal::kTopLeft ? 0 : kv_len - q_len;
  std::int64_t pairs = 0;
  for (std::int64_t i = 0; i < q_len; ++i) {
    pairs += std::clamp<std::int64_t>(i + shift + 1, 0, kv_len);
  }
  return pairs;
}

double AttentionFlops(std::int64_t batch, std::int64_t heads, std::int64_t q_len,
                      std::int64_t kv_len, std::int64_t head_dim, std::int64_t v_dim,
                      Causal causal) {
  return 2.0 * static_cast<double>(batch) * static_cast<double>(heads) *
         static_cast<double>(VisiblePairs(q_len, kv_len, causal)) *
         static_cast<double>(head_dim + v_dim);
}

Tensor RandomNormal(DType dtype, const std::vector<std::int64_t>& shape, std::uint64_t seed) {
  SplitMix64 rng(seed);
  bool have_spare = false;
  double spare = 0;
  return MakeTensor(dtype, shape, [&]() {
    if (have_spare) {
      have_spare = false;
      return spare;
    }
    // Box–Muller: two uniforms give two independent normals. 1 - u keeps log's argument > 0.
    const double radius = std::sqrt(-2.0 * std::log(1.0 - rng.Uniform()));
    const double angle = 2.0 * M_PI * rng.Uniform();
    spare = radius * std::sin(angle);
    have_spare = true;
    return radius * std::cos(angle);
  });
}

Tensor RandomUniform(DType dtype, const std::vector<std::int64_t>& shape, std::uint64_t seed) {
  SplitMix64 rng(seed);
  return MakeTensor(dtype, shape, [&]() { return 2.0 * rng.Uniform() - 1.0; });
}

std::int64_t CurrentRssBytes() { return ProcStatusBytes("VmRSS"); }

std::int64_t PeakRssBytes() {
  const std::int64_t hwm = ProcStatusBytes("VmHWM");
  if (hwm >= 0) return hwm;
  struct rusage usage {};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return -1;
  return static_cast<std::int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

bool ResetPeakRss() {
  // "5" resets the peak RSS (Documentation/filesystems/proc.rst, Linux >= 4.0).
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";
  clear_refs.flush();
  return static_cast<bool>(clear_refs);
}

std::string PercentOfPeak(double gflops, double peak_gflops) {
  char text[128];
  std::snprintf(text, sizeof(text), "%.0f%% of the measured FMA peak%s",
                100.0 * gflops / peak_gflops,
                gflops > peak_gflops ? " (above 100%: the peak measurement came out low)" : "");
  return text;
}

std::string FormatBytes(std::int64_t bytes) {
  if (bytes < 0) return "unknown";
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return text;
}

Progress::Progress(int total_steps)
    : enabled_(isatty(STDERR_FILENO) == 1), total_steps_(total_steps) {}

Progress::~Progress() { Done(); }

void Progress::Step(const std::string& what) {
  Done();
  ++step_;
  what_ = what;
  step_clock_ = Stopwatch();
  if (!enabled_) return;
  Draw();
  // Redraw every 200 ms so a long step shows that it is alive.
  running_ = true;
  ticker_ = std::thread([this] {
    while (running_) {
      for (int i = 0; i < 4 && running_; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (running_) Draw();
    }
  });
}

void Progress::Done() {
  if (!enabled_) return;
  running_ = false;
  if (ticker_.joinable()) ticker_.join();
  if (!what_.empty()) std::fprintf(stderr, "\r\033[K");
  what_.clear();
}

void Progress::Draw() {
  // what_ is written only while the ticker is stopped, so reading it here is race-free.
  std::fprintf(stderr, "\r\033[K[%d/%d] %s %.1f s", step_, total_steps_, what_.c_str(),
               step_clock_.Seconds());
  std::fflush(stderr);
}

}  // namespace sdpa::cli

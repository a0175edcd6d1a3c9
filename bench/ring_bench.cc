// Ring attention over MPI: time per step split into compute and wait, the overlap achieved, and
// the speed-up over one process, for docs/distributed.md. Run under mpirun, one thread per rank:
//
//   SDPA_NUM_THREADS=1 mpirun -np 2 build/bench/ring_bench --len 32768 --heads 2 --dim 64
//       [--causal] [--layout zigzag|contiguous] [--progress poll|thread|none] [--repeat 3]
//       [--backward]
//
// Each rank times RingForward (or RingBackward) on its shard, best of --repeat. It also times
// the same block messages with no compute ("transfer": one Isend/Irecv exchange of a K/V block
// with its neighbours, P-1 times), so that overlap = 1 - wait / transfer: the share of the
// communication hidden behind compute. FLOPs: 4·B·H·L²·D forward (half of it causal), 2.5× that
// backward. Rank 0 prints one line per rank and a summary.
#include <mpi.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "sdpa/distributed.h"
#include "sdpa/sdpa.h"

namespace {

struct Args {
  std::int64_t len = 8192, heads = 2, kv_heads = 0, dim = 64, batch = 1;
  bool causal = false, backward = false;
  sdpa::SequenceLayout layout = sdpa::SequenceLayout::kZigzag;
  sdpa::Progress progress = sdpa::Progress::kPoll;
  int repeat = 3;
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (f == "--len")
      a.len = std::stoll(next());
    else if (f == "--heads")
      a.heads = std::stoll(next());
    else if (f == "--kv-heads")
      a.kv_heads = std::stoll(next());
    else if (f == "--dim")
      a.dim = std::stoll(next());
    else if (f == "--batch")
      a.batch = std::stoll(next());
    else if (f == "--causal")
      a.causal = true;
    else if (f == "--backward")
      a.backward = true;
    else if (f == "--repeat")
      a.repeat = std::stoi(next());
    else if (f == "--layout") {
      a.layout = next() == "contiguous" ? sdpa::SequenceLayout::kContiguous
                                        : sdpa::SequenceLayout::kZigzag;
    } else if (f == "--progress") {
      const std::string p = next();
      a.progress = p == "thread" ? sdpa::Progress::kThread
                   : p == "none" ? sdpa::Progress::kNone
                                 : sdpa::Progress::kPoll;
    }
  }
  if (a.kv_heads == 0) a.kv_heads = a.heads;
  return a;
}

const char* ProgressName(sdpa::Progress p) {
  return p == sdpa::Progress::kThread ? "thread" : p == sdpa::Progress::kNone ? "none" : "poll";
}

std::vector<float> Random(std::size_t n, std::uint64_t seed) {
  std::vector<float> x(n);
  for (float& v : x) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<float>(static_cast<double>(seed >> 40) / double(1 << 24) * 2.0 - 1.0);
  }
  return x;
}

sdpa::TensorView V(const std::vector<float>& x, std::vector<std::int64_t> s) {
  return sdpa::TensorView(x.data(), sdpa::DType::kFloat32, sdpa::Layout::Contiguous(s));
}
sdpa::MutableTensorView M(std::vector<float>& x, std::vector<std::int64_t> s) {
  return sdpa::MutableTensorView(x.data(), sdpa::DType::kFloat32, sdpa::Layout::Contiguous(s));
}

// P-1 exchanges of one K/V block with the ring neighbours and nothing else: the transfer time
// the ring would pay with no overlap at all.
double TransferOnly(std::int64_t floats, int rank, int world) {
  if (world == 1) return 0;
  std::vector<float> a(static_cast<std::size_t>(floats), 1.0f), b(a.size());
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t + 1 < world; ++t) {
    MPI_Request r[2];
    MPI_Irecv(b.data(), static_cast<int>(floats), MPI_FLOAT, (rank + world - 1) % world, 7,
              MPI_COMM_WORLD, &r[0]);
    MPI_Isend(a.data(), static_cast<int>(floats), MPI_FLOAT, (rank + 1) % world, 7, MPI_COMM_WORLD,
              &r[1]);
    MPI_Waitall(2, r, MPI_STATUSES_IGNORE);
    std::swap(a, b);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// CPU seconds of this process (all its threads): on a shared machine the wall time includes
// waiting for a core, the CPU time does not.
double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const Args a = Parse(argc, argv);
  const std::int64_t c = sdpa::ShardLength(a.layout, a.len, rank, world);
  const std::int64_t B = a.batch, H = a.heads, Hkv = a.kv_heads, D = a.dim;
  const std::vector<float> q = Random(static_cast<std::size_t>(B * H * c * D), 1 + rank);
  const std::vector<float> k = Random(static_cast<std::size_t>(B * Hkv * c * D), 100 + rank);
  const std::vector<float> v = Random(static_cast<std::size_t>(B * Hkv * c * D), 200 + rank);
  const std::vector<float> dout = Random(static_cast<std::size_t>(B * H * c * D), 300 + rank);
  std::vector<float> out(q.size()), lse(static_cast<std::size_t>(B * H * c)), dq(q.size()),
      dk(k.size()), dv(v.size());
  sdpa::Options options;
  options.causal = a.causal ? sdpa::Causal::kTopLeft : sdpa::Causal::kNone;
  sdpa::RingProfile profile, best;
  sdpa::Distribution d(a.layout);
  d.progress = a.progress;
  d.profile = &profile;
  const std::vector<std::int64_t> qs = {B, H, c, D}, ks = {B, Hkv, c, D}, ls = {B, H, c};
  best.total_seconds = 1e30;
  const double cpu_start = CpuSeconds();
  for (int r = 0; r < a.repeat; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    if (!a.backward) {
      sdpa::RingForward(MPI_COMM_WORLD, V(q, qs), V(k, ks), V(v, ks), M(out, qs), M(lse, ls),
                        options, d);
    } else {
      sdpa::RingForward(MPI_COMM_WORLD, V(q, qs), V(k, ks), V(v, ks), M(out, qs), M(lse, ls),
                        options, sdpa::Distribution(a.layout));
      MPI_Barrier(MPI_COMM_WORLD);
      sdpa::RingBackward(MPI_COMM_WORLD, V(q, qs), V(k, ks), V(v, ks), V(out, qs), V(lse, ls),
                         V(dout, qs), M(dq, qs), M(dk, ks), M(dv, ks), options, d);
    }
    // the slowest rank decides a collective's time
    double slowest = 0;
    MPI_Allreduce(&profile.total_seconds, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (slowest < best.total_seconds) {
      best = profile;
      best.total_seconds = slowest;
    }
  }
  const double cpu = (CpuSeconds() - cpu_start) / a.repeat;
  double compute = 0, wait = 0;
  for (const auto& s : best.steps) {
    compute += s.compute_seconds;
    wait += s.wait_seconds;
  }
  const double transfer = TransferOnly(B * Hkv * c * 2 * D * (a.backward ? 2 : 1), rank, world);
  const double flops = 4.0 * double(B * H) * double(a.len) * double(a.len) * double(D) *
                       (a.causal ? 0.5 : 1.0) * (a.backward ? 2.5 : 1.0);
  // gather per-rank lines on rank 0
  double mine[5] = {compute, wait, transfer, static_cast<double>(c), cpu};
  std::vector<double> all(static_cast<std::size_t>(5 * world));
  MPI_Gather(mine, 5, MPI_DOUBLE, all.data(), 5, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf("%s P=%d L=%lld B=%lld H=%lld Hkv=%lld D=%lld %s %s progress=%s threads/rank=%d\n",
                a.backward ? "backward" : "forward", world, static_cast<long long>(a.len),
                static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(Hkv),
                static_cast<long long>(D), a.causal ? "causal" : "non-causal",
                sdpa::SequenceLayoutName(a.layout), ProgressName(a.progress),
                sdpa::GetNumThreads());
    double max_compute = 0, min_compute = 1e30;
    for (int r = 0; r < world; ++r) {
      const double* x = all.data() + 5 * r;
      const double overlap = x[2] > 0 ? std::max(0.0, 1.0 - x[1] / x[2]) : 1.0;
      std::printf(
          "  rank %d: rows %6.0f  compute %8.3f s  wait %7.3f s  transfer-only %7.3f s"
          "  overlap %5.1f%%  cpu %7.3f s\n",
          r, x[3], x[0], x[1], x[2], 100 * overlap, x[4]);
      max_compute = std::max(max_compute, x[0]);
      min_compute = std::min(min_compute, x[0]);
    }
    double load[3] = {0, 0, 0};
    if (getloadavg(load, 3) < 1) load[0] = -1;
    std::printf("  load average %.1f on %u cores (other work on the cores inflates wall times)\n",
                load[0], std::thread::hardware_concurrency());
    std::printf(
        "  total %.3f s (slowest rank, best of %d)  %.1f GFLOP/s  compute balance "
        "max/min %.3f  per step %.3f s\n",
        best.total_seconds, a.repeat, flops / best.total_seconds / 1e9, max_compute / min_compute,
        best.total_seconds / world);
  }
  MPI_Finalize();
  return 0;
}

#include "cpu/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "core/fail.h"
#include "sdpa/attention.h"

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#define SDPA_HAVE_MXCSR 1
#endif

namespace sdpa::cpu {
namespace {

using Job = std::function<void(std::int64_t task, int thread)>;

// Sets FTZ/DAZ on construction and restores the previous mode on destruction.
class FlushDenormals {
 public:
  FlushDenormals() {
#ifdef SDPA_HAVE_MXCSR
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
#endif
  }
  ~FlushDenormals() {
#ifdef SDPA_HAVE_MXCSR
    _mm_setcsr(saved_);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned saved_ = 0;
};

inline void CpuRelax() {
#ifdef SDPA_HAVE_MXCSR
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// How long an idle thread polls before it sleeps: longer than the gap between two calls of a
// decode loop (tens of us of Python or bookkeeping), far shorter than a scheduler slice.
constexpr auto kSpin = std::chrono::microseconds(200);

// Spins for up to kSpin until done() holds; true if it did.
template <class Done>
bool SpinUntil(const Done& done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (done()) return true;
    CpuRelax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return false;
  }
}

std::atomic<int> g_thread_starts_allowed{-1};  // testing::FailThreadStartsAfter

// Persistent workers 1..N that join the calling thread (participant 0) on one job at a time.
class Pool {
 public:
  Pool() = default;
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool() { Stop(); }

  void Run(std::int64_t num_tasks, int participants, const Job& job) {
    Grow(participants - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      num_tasks_ = num_tasks;
      participants_ = participants;
      next_task_.store(0, std::memory_order_relaxed);
      failed_.store(false, std::memory_order_relaxed);
      error_ = nullptr;
      running_.store(participants - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    Work(0);
    const auto all_done = [&] { return running_.load(std::memory_order_acquire) == 0; };
    if (!SpinUntil(all_done)) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, all_done);
    }
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  // Joins every worker (they are started again on demand).
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
    stop_ = false;
  }

 private:
  // Starts workers until there are `count`.
  void Grow(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      const int index = static_cast<int>(workers_.size()) + 1;
      try {
        int allowed = g_thread_starts_allowed.load();
        while (allowed >= 0 && !g_thread_starts_allowed.compare_exchange_weak(
                                   allowed, allowed > 0 ? allowed - 1 : 0)) {
        }
        if (allowed == 0) throw std::system_error(EAGAIN, std::generic_category(), "test");
        workers_.emplace_back(
            [this, index, seen = generation_.load()] { WorkerLoop(index, seen); });
      } catch (const std::system_error& e) {
        internal::Fail("could not start thread ", index + 1, " of ", count + 1, " (", e.what(),
                       "); lower the thread count (sdpa::SetNumThreads, SDPA_NUM_THREADS)");
      }
    }
  }

  // `seen`: the generation when the worker was started (before the job it was started for), so
  // that a thread that gets going late still takes that job.
  void WorkerLoop(int index, std::uint64_t seen) {
    for (;;) {
      const auto fresh = [&] { return generation_.load(std::memory_order_acquire) != seen; };
      if (!SpinUntil(fresh)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || fresh(); });
        if (stop_) return;
      }
      seen = generation_.load(std::memory_order_acquire);
      if (index >= participants_) continue;
      Work(index);
      if (running_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  // Takes tasks in index order until none is left or one has failed.
  void Work(int thread) {
    FlushDenormals flush;
    for (;;) {
      if (failed_.load(std::memory_order_relaxed)) return;
      const std::int64_t task = next_task_.fetch_add(1, std::memory_order_relaxed);
      if (task >= num_tasks_) return;
      try {
        (*job_)(task, thread);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_, error_mutex_;
  std::condition_variable wake_, done_;
  bool stop_ = false;
  std::atomic<std::uint64_t> generation_{0};
  // The current job; written by Run before the generation moves on.
  const Job* job_ = nullptr;
  std::int64_t num_tasks_ = 0;
  int participants_ = 0;
  std::atomic<std::int64_t> next_task_{0};
  std::atomic<int> running_{0};  // workers still inside the job
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
};

// The process's pool, touched only by the thread holding g_busy. A forked child has none of the
// parent's threads: it abandons the parent's pool (kept reachable, never destroyed: its mutexes
// may have been held at the fork) and starts its own on first use.
std::atomic<bool> g_busy{false};
Pool* g_pool = nullptr;
std::vector<Pool*>* g_abandoned = nullptr;

void AbandonPoolInChild() {
  if (g_pool != nullptr) {
    if (g_abandoned == nullptr) g_abandoned = new std::vector<Pool*>();
    g_abandoned->push_back(g_pool);
    g_pool = nullptr;
  }
  g_busy.store(false);
}

// Holds g_busy for one call; false when another call holds it.
class BusyLock {
 public:
  BusyLock() {
    static const bool registered = [] {
      pthread_atfork(nullptr, nullptr, AbandonPoolInChild);
      return true;
    }();
    (void)registered;
    bool expected = false;
    owned_ = g_busy.compare_exchange_strong(expected, true, std::memory_order_acquire);
  }
  ~BusyLock() {
    if (owned_) g_busy.store(false, std::memory_order_release);
  }
  BusyLock(const BusyLock&) = delete;
  BusyLock& operator=(const BusyLock&) = delete;
  bool owned() const { return owned_; }

 private:
  bool owned_ = false;
};

void RunSerially(std::int64_t num_tasks, const Job& run) {
  FlushDenormals flush;
  for (std::int64_t task = 0; task < num_tasks; ++task) run(task, 0);
}

}  // namespace

void ParallelFor(std::int64_t num_tasks, int threads, const Job& run) {
  const int used = static_cast<int>(std::min<std::int64_t>(std::clamp(threads, 1, kMaxThreads),
                                                           std::max<std::int64_t>(num_tasks, 1)));
  if (used <= 1) return RunSerially(num_tasks, run);
  BusyLock busy;
  if (!busy.owned()) return RunSerially(num_tasks, run);
  if (g_pool == nullptr) g_pool = new Pool();
  g_pool->Run(num_tasks, used, run);
}

namespace testing {
void FailThreadStartsAfter(int allowed) {
  BusyLock busy;
  if (busy.owned() && g_pool != nullptr) g_pool->Stop();
  g_thread_starts_allowed.store(allowed);
}
}  // namespace testing

}  // namespace sdpa::cpu

// The MPI the distributed algorithms use, in one place: a private duplicate of the caller's
// communicator that returns errors (turned into sdpa::MpiError), point-to-point messages of
// float32 blocks, and the progress driver of sdpa::Progress.
//
// Only the MPI-3.1 C API (Open MPI 4.1 and MPICH 4 both provide it). Counts are int in MPI-3.1:
// every message is checked to fit before it is posted.
#pragma once

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/fail.h"
#include "sdpa/distributed.h"

namespace sdpa::dist {

// Throws MpiError for a failed MPI call.
inline void Check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw MpiError(std::string("sdpa: ") + what + " failed: " + std::string(text, length) +
                 " (MPI error " + std::to_string(rc) + ")");
}

inline int CountOf(std::int64_t n, const char* what) {
  if (n < 0 || n > INT_MAX) {
    internal::Fail(what, " has ", n, " float32 values, more than an MPI-3.1 message holds (",
                   INT_MAX, ")");
  }
  return static_cast<int>(n);
}

// MPI_Comm_dup of the caller's communicator for one call, freed at the end.
class Comm {
 public:
  explicit Comm(MPI_Comm comm) {
    Check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    Check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    Check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;
  ~Comm() { MPI_Comm_free(&comm_); }

  MPI_Comm get() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  int next() const { return (rank_ + 1) % size_; }
  int prev() const { return (rank_ + size_ - 1) % size_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

// Checks that MPI is usable before the (collective) MPI_Comm_dup: initialised, not finalised,
// a real communicator, and the thread level the progress mode needs.
inline void CheckMpiReady(MPI_Comm comm, Progress progress, const char* function) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    internal::Fail(function, ": MPI is ", finalized ? "finalized" : "not initialized",
                   "; call MPI_Init or MPI_Init_thread before (the library never does)");
  }
  if (comm == MPI_COMM_NULL) internal::Fail(function, ": comm is MPI_COMM_NULL");
  if (progress == Progress::kThread) {
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_SERIALIZED) {
      internal::Fail(function, ": Progress::kThread needs MPI initialized with at least ",
                     "MPI_THREAD_SERIALIZED, but MPI_Query_thread gives ", provided,
                     "; use Progress::kPoll or MPI_Init_thread");
    }
  }
}

// A block that messages read from or write into, shared with the requests that use it so that
// it can outlive the call that made it (Requests::~Requests).
using Buffer = std::shared_ptr<std::vector<float>>;
inline Buffer MakeBuffer(std::size_t n) { return std::make_shared<std::vector<float>>(n); }

// Sends a failed call left pending, with the blocks they read. A peer that had matched such a
// send still reads the block after the call has thrown (Open MPI's shared-memory transport
// copies straight out of the sender's memory), so the block lives on here until its send
// completes; Reap() (at the start of every later call) tests them and frees what is done.
class AbandonedSends {
 public:
  static void Keep(MPI_Request request, Buffer block) {
    std::lock_guard<std::mutex> lock(Mutex());
    Pending().push_back({request, std::move(block)});
  }
  static void Reap() {
    std::lock_guard<std::mutex> lock(Mutex());
    auto& pending = Pending();
    for (std::size_t n = 0; n < pending.size();) {
      int done = 0;
      if (MPI_Test(&pending[n].request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done) {
        pending[n] = std::move(pending.back());
        pending.pop_back();
      } else {
        ++n;
      }
    }
  }

 private:
  struct Send {
    MPI_Request request;
    Buffer block;
  };
  static std::mutex& Mutex() {
    static std::mutex mutex;
    return mutex;
  }
  static std::vector<Send>& Pending() {
    static std::vector<Send> pending;
    return pending;
  }
};

// The requests of one ring step (K/V and, in the backward, dK/dV), and the wait after its
// compute, timed.
class Requests {
 public:
  Requests() { AbandonedSends::Reap(); }
  Requests(const Requests&) = delete;
  Requests& operator=(const Requests&) = delete;
  // Only on an error path (a step threw): pending receives are cancelled and completed, so that
  // nothing writes into the buffers after they are freed; pending sends are handed to
  // AbandonedSends with their blocks, which a peer may still be reading. The peers of the call
  // are left waiting either way (distributed.h).
  ~Requests() {
    for (std::size_t n = 0; n < requests_.size(); ++n) {
      if (requests_[n] == MPI_REQUEST_NULL) continue;
      if (is_recv_[n]) {
        MPI_Cancel(&requests_[n]);
        MPI_Wait(&requests_[n], MPI_STATUS_IGNORE);
      } else {
        AbandonedSends::Keep(requests_[n], std::move(blocks_[n]));
      }
    }
  }

  void Recv(float* data, std::int64_t n, int from, int tag, MPI_Comm comm) {
    is_recv_.push_back(true);
    blocks_.emplace_back();
    requests_.push_back(MPI_REQUEST_NULL);
    Check(MPI_Irecv(data, CountOf(n, "a received block"), MPI_FLOAT, from, tag, comm,
                    &requests_.back()),
          "MPI_Irecv");
  }
  // Sends the first n values of `block`.
  void Send(const Buffer& block, std::int64_t n, int to, int tag, MPI_Comm comm) {
    is_recv_.push_back(false);
    blocks_.push_back(block);
    requests_.push_back(MPI_REQUEST_NULL);
    Check(MPI_Isend(block->data(), CountOf(n, "a sent block"), MPI_FLOAT, to, tag, comm,
                    &requests_.back()),
          "MPI_Isend");
    bytes_sent_ += n * static_cast<std::int64_t>(sizeof(float));
  }
  // Drives progress (MPI_Testall); true when every request completed.
  bool Test() {
    if (requests_.empty()) return true;
    int done = 0;
    Check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done,
                      MPI_STATUSES_IGNORE),
          "MPI_Testall");
    return done != 0;
  }
  void Wait() {
    if (requests_.empty()) return;
    Check(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
          "MPI_Waitall");
    requests_.clear();
    is_recv_.clear();
    blocks_.clear();
  }
  std::int64_t TakeBytesSent() {
    const std::int64_t b = bytes_sent_;
    bytes_sent_ = 0;
    return b;
  }

 private:
  std::vector<MPI_Request> requests_;
  std::vector<bool> is_recv_;
  std::vector<Buffer> blocks_;  // of the sends (null for receives)
  std::int64_t bytes_sent_ = 0;
};

// Runs one step's compute while its messages progress the way `progress` says, then waits for
// them. `compute` receives the Options::interrupt hook to pass to the library (it chains the
// caller's own interrupt). Records compute and wait times in `step`.
class StepRunner {
 public:
  StepRunner(Progress progress, const std::function<bool()>& user_interrupt)
      : progress_(progress), user_interrupt_(user_interrupt) {}

  template <class Compute>
  void Run(Requests& requests, RingProfile::Step& step, Compute&& compute) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    std::function<bool()> hook = user_interrupt_;
    if (progress_ == Progress::kPoll) {
      hook = [&requests, this] {
        requests.Test();
        return user_interrupt_ ? user_interrupt_() : false;
      };
    }
    if (progress_ == Progress::kThread) {
      // The main thread makes no MPI call until the join: MPI_THREAD_SERIALIZED is enough.
      std::exception_ptr error;
      std::thread waiter([&requests, &error] {
        try {
          requests.Wait();
        } catch (...) {
          error = std::current_exception();
        }
      });
      try {
        compute(hook);
      } catch (...) {
        waiter.join();
        throw;
      }
      const auto computed = Clock::now();
      waiter.join();
      if (error) std::rethrow_exception(error);
      step.compute_seconds = std::chrono::duration<double>(computed - start).count();
      step.wait_seconds = std::chrono::duration<double>(Clock::now() - computed).count();
    } else {
      compute(hook);
      const auto computed = Clock::now();
      requests.Wait();
      step.compute_seconds = std::chrono::duration<double>(computed - start).count();
      step.wait_seconds = std::chrono::duration<double>(Clock::now() - computed).count();
    }
    step.bytes_sent = requests.TakeBytesSent();
  }

 private:
  Progress progress_;
  const std::function<bool()>& user_interrupt_;
};

}  // namespace sdpa::dist

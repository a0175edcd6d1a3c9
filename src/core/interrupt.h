// Cooperative stopping of a long call (Options::interrupt).
//
// The caller's function is polled only on the thread that made the call, and at most every
// kPollInterval: it may take a lock (Python's GIL) and must not be called from the engine's
// workers. Every thread checks the shared flag at tile granularity (a relaxed atomic load), so a
// stop request ends the call within about one tile of work (~0.05-1 ms) after the poll saw it.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

#include "sdpa/error.h"

namespace sdpa::internal {

class StopFlag {
 public:
  static constexpr std::chrono::milliseconds kPollInterval{2};

  // `poll` may be null or empty (never stops). Construct on the calling thread.
  explicit StopFlag(const std::function<bool()>* poll)
      : poll_(poll != nullptr && *poll ? poll : nullptr),
        caller_(std::this_thread::get_id()),
        next_poll_(std::chrono::steady_clock::now() + kPollInterval) {}
  StopFlag(const StopFlag&) = delete;
  StopFlag& operator=(const StopFlag&) = delete;

  // True once the call must stop; polls the caller's function when due (calling thread only).
  bool Stopped() {
    if (stopped_.load(std::memory_order_relaxed)) return true;
    if (poll_ == nullptr || std::this_thread::get_id() != caller_) return false;
    const auto now = std::chrono::steady_clock::now();
    if (now < next_poll_) return false;
    next_poll_ = now + kPollInterval;
    if ((*poll_)()) stopped_.store(true, std::memory_order_relaxed);
    return stopped_.load(std::memory_order_relaxed);
  }

  // Throws sdpa::Interrupted when a stop was requested (checked by the calling thread after the
  // work it interrupted has ended).
  void ThrowIfStopped() const {
    if (stopped_.load(std::memory_order_relaxed)) throw Interrupted();
  }

 private:
  const std::function<bool()>* poll_;
  std::thread::id caller_;
  std::chrono::steady_clock::time_point next_poll_;  // calling thread only
  std::atomic<bool> stopped_{false};
};

}  // namespace sdpa::internal

// Running independent tasks on the engine's threads.
//
// OpenMP (libgomp) rather than a hand-written pool: its threads persist across calls and wait
// with a bounded spin before sleeping, which is what ENGINE-NOTES.md found necessary on this
// 2-vCPU VM (a std::thread per call costs 26-39 us, an unbounded spin 44 us on average). Without
// OpenMP the tasks run on the calling thread.
#pragma once

#include <cstdint>
#include <functional>

namespace sdpa::cpu {

// Calls run(task, thread) for task in [0, num_tasks) on up to `threads` threads, handing tasks
// out in index order as threads become free. Flush-to-zero and denormals-are-zero are set on each
// thread for the duration (tiny P·V products never take the slow denormal path) and restored.
// Which thread runs a task must not change its result; callers keep per-thread scratch only.
void ParallelFor(std::int64_t num_tasks, int threads,
                 const std::function<void(std::int64_t task, int thread)>& run);

}  // namespace sdpa::cpu

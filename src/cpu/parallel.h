// Running independent tasks on the engine's threads.
//
// A small pool of our own rather than OpenMP, for three reasons found in use:
//   * fork: libgomp's pool does not survive fork(), so a child of a process that had made one
//     multi-threaded call hung on its first call (multiprocessing's fork start method, pre-fork
//     servers). This pool is dropped in the child (pthread_atfork) and started afresh on demand;
//   * a failed thread start is an sdpa::Error here; libgomp ends the process;
//   * the wait policy: workers spin briefly (~50 us) for the next call, then sleep on a condition
//     variable. ENGINE-NOTES.md measured what matters on these 2-vCPU VMs: a std::thread per call
//     costs 26-39 us, an unbounded spin 44 us on average once the spinner gets descheduled.
// Threads persist across calls. One call uses the pool at a time; a call that finds it busy
// (another thread of the program is inside the engine) runs its tasks on its own thread, which
// gives the same results (they never depend on the thread count).
#pragma once

#include <cstdint>
#include <functional>

namespace sdpa::cpu {

// Calls run(task, thread) for task in [0, num_tasks) on up to `threads` threads (at most
// sdpa::kMaxThreads; the calling
// thread is thread 0), handing tasks out in index order as threads become free. Flush-to-zero and
// denormals-are-zero are set on each thread for the duration (tiny P·V products never take the
// slow denormal path) and restored. Which thread runs a task must not change its result; callers
// keep per-thread scratch only. The first exception a task throws is rethrown here after every
// thread has stopped; tasks not yet started are then skipped. Throws sdpa::Error when the pool
// cannot start the threads it needs.
void ParallelFor(std::int64_t num_tasks, int threads,
                 const std::function<void(std::int64_t task, int thread)>& run);

namespace testing {
// Makes the pool's next thread starts fail after `allowed` more have succeeded (-1: never), to
// test the error path; also drops the pool's current threads.
void FailThreadStartsAfter(int allowed);
}  // namespace testing

}  // namespace sdpa::cpu

#include "cpu/parallel.h"

#include <algorithm>
#include <exception>
#include <mutex>

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#define SDPA_HAVE_MXCSR 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace sdpa::cpu {
namespace {

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

}  // namespace

void ParallelFor(std::int64_t num_tasks, int threads,
                 const std::function<void(std::int64_t task, int thread)>& run) {
  const int used = static_cast<int>(std::min<std::int64_t>(std::max(threads, 1), num_tasks));
  if (used <= 1) {
    FlushDenormals flush;
    for (std::int64_t task = 0; task < num_tasks; ++task) run(task, 0);
    return;
  }
#ifdef _OPENMP
  // Exceptions must not cross the OpenMP region: keep the first, rethrow after the join.
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel num_threads(used)
  {
    FlushDenormals flush;
    const int thread = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < num_tasks; ++task) {
      try {
        run(task, thread);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
#else
  FlushDenormals flush;
  for (std::int64_t task = 0; task < num_tasks; ++task) run(task, 0);
#endif
}

}  // namespace sdpa::cpu

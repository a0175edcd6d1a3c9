#include "cpu/backward.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/backward.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "cpu/backward-inl.h"

#if HWY_ONCE
#include "cpu/schedule.h"
#include "cpu/simd.h"

namespace sdpa::cpu {

HWY_EXPORT(RunBackward);

void Backward(const internal::BackwardProblem& problem, int threads) {
  ApplySimdTargetFromEnvironment();
  const Schedule schedule = MakeBackwardSchedule(problem.forward, threads);
  internal::StopFlag stop(problem.forward.interrupt);
  HWY_DYNAMIC_DISPATCH(RunBackward)(problem, schedule, stop);
}

}  // namespace sdpa::cpu
#endif  // HWY_ONCE

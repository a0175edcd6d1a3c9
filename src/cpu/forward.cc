#include "cpu/forward.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/forward.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "cpu/forward-inl.h"

#if HWY_ONCE
#include "cpu/bf16_kernels.h"
#include "cpu/simd.h"

namespace sdpa::cpu {

HWY_EXPORT(RunForward);
HWY_EXPORT(Exp2ArrayF32);
HWY_EXPORT(Exp2ArrayF64);
HWY_EXPORT(DispatchedShapeF32);
HWY_EXPORT(DispatchedShapeF64);

void Exp2Array(const float* x, float* y, std::int64_t n, Exp2Form form) {
  ApplySimdTargetFromEnvironment();
  HWY_DYNAMIC_DISPATCH(Exp2ArrayF32)(x, y, n, form);
}
void Exp2Array(const double* x, double* y, std::int64_t n) {
  ApplySimdTargetFromEnvironment();
  HWY_DYNAMIC_DISPATCH(Exp2ArrayF64)(x, y, n);
}

int DispatchedShape(bool is_double, int rows, int vectors) {
  ApplySimdTargetFromEnvironment();
  return is_double ? HWY_DYNAMIC_DISPATCH(DispatchedShapeF64)(rows, vectors)
                   : HWY_DYNAMIC_DISPATCH(DispatchedShapeF32)(rows, vectors);
}

Plan ExplainForward(const internal::Problem& problem, int threads) {
  const Schedule schedule = MakeSchedule(problem, threads);
  Plan plan;
  plan.backend = Backend::kCpu;
  plan.path = schedule.split() ? "split_kv" : "tiled";
  plan.simd_target = ActiveSimdTarget();
  plan.q_tile = schedule.q_tile;
  plan.kv_tile = schedule.kv_tile;
  plan.kv_splits = schedule.kv_splits;
  plan.threads = schedule.threads;
  plan.reason = schedule.reason;
  // forward-inl.h NativeBf16 (the tiled form; decode rows widen bfloat16 in registers instead).
  if (problem.q.dtype == DType::kBFloat16 && problem.kv.k.dtype == DType::kBFloat16) {
    const bool native = bf16::Available() && plan.simd_target == "AVX3" && !problem.kv.paged() &&
                        problem.head_dim % 2 == 0;
    plan.reason += native ? "; bfloat16 products with vdpbf16ps (AVX512-BF16)"
                          : "; bfloat16 widened to float32 at the tile pack (no AVX512-BF16 "
                            "products here)";
  }
  return plan;
}

void Forward(const internal::Problem& problem, int threads) {
  ApplySimdTargetFromEnvironment();
  const Schedule schedule = MakeSchedule(problem, threads);
  internal::StopFlag stop(problem.interrupt);
  HWY_DYNAMIC_DISPATCH(RunForward)(problem, schedule, stop);
}

}  // namespace sdpa::cpu
#endif  // HWY_ONCE

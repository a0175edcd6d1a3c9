// The CPU engine's forward pass: schedule, then the tiled kernel on the active SIMD target.
#pragma once

#include <cstdint>

#include "core/problem.h"
#include "cpu/schedule.h"
#include "cpu/tuning.h"
#include "sdpa/attention.h"

namespace sdpa::cpu {

// The schedule and SIMD target a problem would run with, as a user-facing plan.
Plan ExplainForward(const internal::Problem& problem, int threads);

// Computes problem.out (and lse) for a validated problem with `threads` threads.
void Forward(const internal::Problem& problem, int threads);

// y[i] = 2^x[i] with the kernel's exp2 on the active SIMD target (for accuracy tests).
void Exp2Array(const float* x, float* y, std::int64_t n, Exp2Form form = Exp2Form::kHorner);
void Exp2Array(const double* x, double* y, std::int64_t n);

// The register tile the kernels run on the active SIMD target when a schedule asks for
// rows × vectors, as 16·rows + vectors (tests check it against ShapeCompiled).
int DispatchedShape(bool is_double, int rows, int vectors);

}  // namespace sdpa::cpu

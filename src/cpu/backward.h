// The CPU engine's backward pass: schedule, then the tiled kernel on the active SIMD target.
#pragma once

#include "core/problem.h"

namespace sdpa::cpu {

// Computes grad_q, grad_k and grad_v of a validated backward problem with `threads` threads.
void Backward(const internal::BackwardProblem& problem, int threads);

}  // namespace sdpa::cpu

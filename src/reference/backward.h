// The reference backward pass: the textbook gradients of softmax attention, one query row at a
// time, accumulating in float64. It recomputes P from q, k, v (it does not trust the given out
// and lse), so it checks the fast backward independently of the forward.
#pragma once

#include "core/problem.h"

namespace sdpa::reference {

// Computes grad_q, grad_k and grad_v of a validated backward problem.
void Backward(const internal::BackwardProblem& problem);

}  // namespace sdpa::reference

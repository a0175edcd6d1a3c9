// The reference forward pass: the textbook algorithm, one query row at a time, accumulating in
// float64. It is the oracle every fast path is tested against and is never optimised.
#pragma once

#include "core/problem.h"

namespace sdpa::reference {

// Computes problem.out (and problem.lse when requested) for a validated problem.
void Forward(const internal::Problem& problem);

}  // namespace sdpa::reference

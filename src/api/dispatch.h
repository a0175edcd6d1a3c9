// Choosing and running a backend for a validated problem.
#pragma once

#include "core/problem.h"
#include "sdpa/attention.h"

namespace sdpa::internal {

// The backend a problem runs on: problem.backend unless kAuto; then SDPA_BACKEND
// (`reference` or `cpu`, anything else is an sdpa::Error); then the fastest available.
Backend ResolveBackend(const Problem& problem);

// What Run would do for this problem, and why.
Plan MakePlan(const Problem& problem);

// Computes the outputs attached to a validated problem. Prints the plan to stderr first when the
// environment variable SDPA_VERBOSE is set to a non-empty value other than 0.
void Run(const Problem& problem);

// Computes the gradients of a validated backward problem on the resolved backend.
void RunBackward(const BackwardProblem& problem);

}  // namespace sdpa::internal

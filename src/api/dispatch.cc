#include "api/dispatch.h"

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "api/validate.h"
#include "cpu/backward.h"
#include "cpu/forward.h"
#include "reference/backward.h"
#include "reference/forward.h"

namespace sdpa::internal {
namespace {

bool VerboseRequested() {
  const char* env = std::getenv("SDPA_VERBOSE");
  return env != nullptr && env[0] != '\0' && std::strcmp(env, "0") != 0;
}

// The backend named by SDPA_BACKEND, or kAuto when it is unset or empty.
Backend BackendFromEnvironment() {
  const char* env = std::getenv("SDPA_BACKEND");
  if (env == nullptr || env[0] == '\0') return Backend::kAuto;
  const std::string name = env;
  if (name == "reference") return Backend::kReference;
  if (name == "cpu") return Backend::kCpu;
  Fail("environment variable SDPA_BACKEND is '", name, "' but must be 'reference' or 'cpu'");
}

}  // namespace

Backend ResolveBackend(const Problem& problem) {
  if (problem.backend != Backend::kAuto) return problem.backend;
  const Backend from_env = BackendFromEnvironment();
  return from_env != Backend::kAuto ? from_env : Backend::kCpu;
}

Plan MakePlan(const Problem& problem) {
  const Backend backend = ResolveBackend(problem);
  std::string why_backend;
  if (problem.backend != Backend::kAuto) {
    why_backend = std::string(BackendName(backend)) + " requested in options.backend";
  } else if (BackendFromEnvironment() != Backend::kAuto) {
    why_backend = std::string(BackendName(backend)) + " requested by SDPA_BACKEND";
  } else {
    why_backend = "cpu engine is the default";
  }
  Plan plan;
  if (backend == Backend::kCpu) {
    plan = cpu::ExplainForward(problem, GetNumThreads());
  } else {
    plan.backend = Backend::kReference;
    plan.path = "reference";
    plan.reason = "plain float64 loops, one query row at a time";
  }
  plan.reason = why_backend + "; " + plan.reason;
  return plan;
}

void Run(const Problem& problem) {
  if (VerboseRequested()) std::cerr << MakePlan(problem).ToString() << "\n";
  if (ResolveBackend(problem) == Backend::kReference) {
    reference::Forward(problem);
  } else {
    cpu::Forward(problem, GetNumThreads());
  }
}

void RunBackward(const BackwardProblem& problem) {
  if (VerboseRequested()) std::cerr << MakePlan(problem.forward).ToString() << " (backward)\n";
  if (ResolveBackend(problem.forward) == Backend::kReference) {
    reference::Backward(problem);
  } else {
    cpu::Backward(problem, GetNumThreads());
  }
}

}  // namespace sdpa::internal

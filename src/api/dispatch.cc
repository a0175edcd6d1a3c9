#include "api/dispatch.h"

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "api/validate.h"
#include "reference/forward.h"

namespace sdpa::internal {
namespace {

bool VerboseRequested() {
  const char* env = std::getenv("SDPA_VERBOSE");
  return env != nullptr && env[0] != '\0' && std::strcmp(env, "0") != 0;
}

}  // namespace

Backend ResolveBackend(const Problem& problem) {
  if (problem.backend != Backend::kAuto) return problem.backend;
  if (const char* env = std::getenv("SDPA_BACKEND"); env != nullptr && env[0] != '\0') {
    const std::string name = env;
    if (name == "reference") return Backend::kReference;
    if (name == "cpu") return Backend::kCpu;
    Fail("environment variable SDPA_BACKEND is '", name, "' but must be 'reference' or 'cpu'");
  }
  return Backend::kReference;
}

Plan MakePlan(const Problem& problem) {
  Plan plan;
  plan.backend = ResolveBackend(problem);
  if (plan.backend == Backend::kCpu) {
    Fail("options.backend is cpu but the CPU engine is not built yet (issue 3)");
  }
  plan.path = "reference";
  plan.reason = problem.backend == Backend::kAuto
                    ? "reference selected because it is the only backend available"
                    : "reference selected explicitly";
  return plan;
}

void Run(const Problem& problem) {
  const Plan plan = MakePlan(problem);
  if (VerboseRequested()) std::cerr << plan.ToString() << "\n";
  reference::Forward(problem);
}

}  // namespace sdpa::internal

// Public entry points: validate, choose a backend, run it. Nothing else happens here.
#include "sdpa/attention.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include "api/dispatch.h"
#include "api/validate.h"
#include "sdpa/error.h"

namespace sdpa {
namespace {

std::atomic<int> g_num_threads{0};

std::vector<TensorView> Inputs(const TensorView& q, const TensorView& k, const TensorView& v,
                               const Options& options) {
  std::vector<TensorView> inputs = {q, k, v};
  if (options.mask) inputs.push_back(*options.mask);
  return inputs;
}
const std::vector<const char*> kInputNames = {"query", "key", "value", "options.mask"};

void ForwardImpl(const TensorView& query, const TensorView& key, const TensorView& value,
                 const MutableTensorView& out, const MutableTensorView* lse,
                 const Options& options) {
  internal::Problem problem = internal::ValidateInputs(query, key, value, options);
  internal::AttachOutputs(problem, query.rank(), out, lse, Inputs(query, key, value, options),
                          kInputNames);
  internal::CheckWork(problem, internal::ForwardWork(problem, false));
  internal::Run(problem);
}

}  // namespace

const char* CausalName(Causal causal) {
  switch (causal) {
    case Causal::kNone:
      return "none";
    case Causal::kTopLeft:
      return "top_left";
    case Causal::kBottomRight:
      return "bottom_right";
  }
  return "invalid";
}

const char* BackendName(Backend backend) {
  switch (backend) {
    case Backend::kAuto:
      return "auto";
    case Backend::kReference:
      return "reference";
    case Backend::kCpu:
      return "cpu";
  }
  return "invalid";
}

void Forward(const TensorView& query, const TensorView& key, const TensorView& value,
             const MutableTensorView& out, const Options& options) {
  ForwardImpl(query, key, value, out, nullptr, options);
}

void Forward(const TensorView& query, const TensorView& key, const TensorView& value,
             const MutableTensorView& out, const MutableTensorView& lse, const Options& options) {
  ForwardImpl(query, key, value, out, &lse, options);
}

Tensor Attention(const TensorView& query, const TensorView& key, const TensorView& value,
                 const Options& options) {
  internal::Problem problem = internal::ValidateInputs(query, key, value, options);
  internal::CheckWork(problem, internal::ForwardWork(problem, true));
  Tensor out(query.dtype, internal::OutShape(problem, query.rank()));
  internal::AttachOutputs(problem, query.rank(), out.mutable_view(), nullptr,
                          Inputs(query, key, value, options), kInputNames);
  internal::Run(problem);
  return out;
}

AttentionResult AttentionWithLse(const TensorView& query, const TensorView& key,
                                 const TensorView& value, const Options& options) {
  internal::Problem problem = internal::ValidateInputs(query, key, value, options);
  internal::CheckWork(problem, internal::ForwardWork(problem, true));
  AttentionResult result{Tensor(query.dtype, internal::OutShape(problem, query.rank())),
                         Tensor(problem.compute, internal::LseShape(problem, query.rank()))};
  const MutableTensorView lse = result.lse.mutable_view();
  internal::AttachOutputs(problem, query.rank(), result.out.mutable_view(), &lse,
                          Inputs(query, key, value, options), kInputNames);
  internal::Run(problem);
  return result;
}

void Backward(const TensorView& query, const TensorView& key, const TensorView& value,
              const TensorView& out, const TensorView& lse, const TensorView& grad_out,
              const MutableTensorView& grad_query, const MutableTensorView& grad_key,
              const MutableTensorView& grad_value, const Options& options) {
  const internal::BackwardProblem problem = internal::ValidateBackward(
      internal::ValidateInputs(query, key, value, options), query.rank(),
      Inputs(query, key, value, options), out, lse, grad_out, grad_query, grad_key, grad_value);
  internal::CheckWork(problem.forward, internal::BackwardWork(problem.forward, false));
  internal::RunBackward(problem);
}

void Backward(const TensorView& query, const TensorView& key, const TensorView& value,
              const TensorView& out, const TensorView& lse, const TensorView& grad_out,
              const MutableTensorView& grad_query, const MutableTensorView& grad_key,
              const MutableTensorView& grad_value, const MutableTensorView& grad_sinks,
              const Options& options) {
  const internal::BackwardProblem problem =
      internal::ValidateBackward(internal::ValidateInputs(query, key, value, options), query.rank(),
                                 Inputs(query, key, value, options), out, lse, grad_out, grad_query,
                                 grad_key, grad_value, &grad_sinks);
  internal::CheckWork(problem.forward, internal::BackwardWork(problem.forward, false));
  internal::RunBackward(problem);
}

Gradients AttentionBackward(const TensorView& query, const TensorView& key, const TensorView& value,
                            const TensorView& out, const TensorView& lse,
                            const TensorView& grad_out, const Options& options) {
  internal::Problem problem = internal::ValidateInputs(query, key, value, options);
  internal::CheckBackwardInputs(problem, query.rank(), out, lse, grad_out);
  internal::CheckWork(problem, internal::BackwardWork(problem, true));
  const auto shape_of = [](const TensorView& v) {
    return std::vector<std::int64_t>(v.layout.shape, v.layout.shape + v.layout.rank);
  };
  const bool sinks = !problem.sinks.empty();
  Gradients g{Tensor(query.dtype, shape_of(query)), Tensor(key.dtype, shape_of(key)),
              Tensor(value.dtype, shape_of(value)),
              Tensor(query.dtype, {sinks ? problem.heads : 0})};
  const MutableTensorView grad_sinks = g.grad_sinks.mutable_view();
  const internal::BackwardProblem backward = internal::ValidateBackward(
      std::move(problem), query.rank(), Inputs(query, key, value, options), out, lse, grad_out,
      g.grad_query.mutable_view(), g.grad_key.mutable_view(), g.grad_value.mutable_view(),
      sinks ? &grad_sinks : nullptr);
  internal::RunBackward(backward);
  return g;
}

Plan Explain(const TensorView& query, const TensorView& key, const TensorView& value,
             const Options& options) {
  const internal::Problem problem = internal::ValidateInputs(query, key, value, options);
  internal::CheckWork(problem, internal::ForwardWork(problem, false));
  return internal::MakePlan(problem);
}

std::string Plan::ToString() const {
  std::ostringstream os;
  os << "sdpa plan: backend=" << BackendName(backend) << " path=" << path;
  if (!simd_target.empty()) os << " simd=" << simd_target;
  if (q_tile > 0) os << " q_tile=" << q_tile << " kv_tile=" << kv_tile;
  if (kv_splits > 1) os << " kv_splits=" << kv_splits;
  os << " threads=" << threads;
  if (!reason.empty()) os << "\n  why: " << reason;
  return os.str();
}

void SetNumThreads(int num_threads) {
  if (num_threads < 0 || num_threads > kMaxThreads) {
    internal::Fail("num_threads is ", num_threads, " but must be in [0, ", kMaxThreads,
                   "] (0 = all hardware threads)");
  }
  g_num_threads.store(num_threads);
}

int GetNumThreads() {
  const int set = g_num_threads.load();
  if (set > 0) return set;
  if (const char* env = std::getenv("SDPA_NUM_THREADS"); env != nullptr && env[0] != '\0') {
    char* end = nullptr;
    const long from_env = std::strtol(env, &end, 10);
    if (*end != '\0' || from_env < 1 || from_env > kMaxThreads) {
      internal::Fail("environment variable SDPA_NUM_THREADS is '", env,
                     "' but must be an integer from 1 to ", kMaxThreads);
    }
    return static_cast<int>(from_env);
  }
  const unsigned hardware = std::thread::hardware_concurrency();
  return hardware > 0 ? static_cast<int>(hardware) : 1;
}

}  // namespace sdpa

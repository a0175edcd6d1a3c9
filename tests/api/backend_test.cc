// Choosing the backend (options.backend, SDPA_BACKEND), Explain, SDPA_VERBOSE and the thread
// setting. Each test checks that the choice took effect, not only that the call succeeded.
#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/tensors.h"

namespace {

using sdpa::Backend;
using sdpa_test::Array;
using sdpa_test::ScopedEnv;

// A float32 problem big enough that different backends need not agree bit for bit:
// query [2, 4, 37, 64], key/value [2, 2, 53, 64], bottom-right causal.
struct Problem {
  sdpa_test::Buffer<float> query{Array::Uniform({2, 4, 37, 64}, 60).RoundedToFloat()};
  sdpa_test::Buffer<float> key{Array::Uniform({2, 2, 53, 64}, 61).RoundedToFloat()};
  sdpa_test::Buffer<float> value{Array::Uniform({2, 2, 53, 64}, 62).RoundedToFloat()};

  sdpa::Options Opts(Backend backend) const {
    sdpa::Options options;
    options.backend = backend;
    options.causal = sdpa::Causal::kBottomRight;
    return options;
  }
  sdpa::Plan Explain(Backend backend) const {
    return sdpa::Explain(query.view(), key.view(), value.view(), Opts(backend));
  }
  // out and lse of one call, as arrays.
  std::pair<Array, Array> Run(Backend backend) const {
    const sdpa::AttentionResult r =
        sdpa::AttentionWithLse(query.view(), key.view(), value.view(), Opts(backend));
    return {sdpa_test::ReadView(r.out.view()), sdpa_test::ReadView(r.lse.view())};
  }
};

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Backend, ReferenceOptionTakesEffect) {
  const ScopedEnv env("SDPA_BACKEND", "cpu");  // the option wins over the environment
  const Problem p;
  const sdpa::Plan plan = p.Explain(Backend::kReference);
  EXPECT_EQ(plan.backend, Backend::kReference);
  EXPECT_EQ(plan.path, "reference");
  EXPECT_TRUE(Contains(plan.reason, "options.backend")) << plan.reason;
  EXPECT_TRUE(Contains(plan.ToString(), "sdpa plan: backend=reference path=reference"))
      << plan.ToString();
}

TEST(Backend, EnvironmentVariableSelectsReference) {
  std::pair<Array, Array> explicit_reference;
  const Problem p;
  {
    const ScopedEnv env("SDPA_BACKEND", std::nullopt);
    explicit_reference = p.Run(Backend::kReference);
  }
  const ScopedEnv env("SDPA_BACKEND", "reference");
  const sdpa::Plan plan = p.Explain(Backend::kAuto);
  EXPECT_EQ(plan.backend, Backend::kReference);
  EXPECT_EQ(plan.path, "reference");
  EXPECT_TRUE(Contains(plan.reason, "SDPA_BACKEND")) << plan.reason;
  const std::pair<Array, Array> from_env = p.Run(Backend::kAuto);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(from_env.first, explicit_reference.first));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(from_env.second, explicit_reference.second));
}

TEST(Backend, InvalidEnvironmentValueThrowsBeforeWriting) {
  const ScopedEnv env("SDPA_BACKEND", "fast");
  const Problem p;
  const std::string message =
      "sdpa: environment variable SDPA_BACKEND is 'fast' but must be 'reference' or 'cpu'";
  EXPECT_TRUE(sdpa_test::ThrowsError([&] { p.Explain(Backend::kAuto); }, message));
  EXPECT_TRUE(sdpa_test::ThrowsError([&] { p.Run(Backend::kAuto); }, message));
  sdpa_test::Buffer<float> out(Array({2, 4, 37, 64}, 777.0));
  const Array before = out.Read();
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Forward(p.query.view(), p.key.view(), p.value.view(), out.mutable_view(),
                      p.Opts(Backend::kAuto));
      },
      message));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(out.Read(), before)) << "a failed call wrote to out";
  // An explicit option does not consult the environment.
  EXPECT_NO_THROW(p.Explain(Backend::kReference));
}

TEST(Backend, EmptyEnvironmentValueMeansUnset) {
  const ScopedEnv env("SDPA_BACKEND", "");
  const Problem p;
  const sdpa::Plan plan = p.Explain(Backend::kAuto);
  EXPECT_FALSE(Contains(plan.reason, "SDPA_BACKEND")) << plan.reason;
}

TEST(Backend, VerbosePrintsThePlanToStderr) {
  const Problem p;
  {
    const ScopedEnv verbose("SDPA_VERBOSE", "1");
    ::testing::internal::CaptureStderr();
    p.Run(Backend::kReference);
    const std::string printed = ::testing::internal::GetCapturedStderr();
    EXPECT_TRUE(Contains(printed, "sdpa plan: backend=reference path=reference")) << printed;
  }
  for (const char* quiet : {"0", ""}) {
    const ScopedEnv verbose("SDPA_VERBOSE", quiet);
    ::testing::internal::CaptureStderr();
    p.Run(Backend::kReference);
    EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "SDPA_VERBOSE=" << quiet;
  }
}

TEST(Backend, PlanToStringListsEveryDecision) {
  sdpa::Plan plan;
  plan.backend = Backend::kReference;
  plan.path = "reference";
  plan.reason = "because";
  EXPECT_EQ(plan.ToString(),
            "sdpa plan: backend=reference path=reference threads=1\n  why: because");
  plan.backend = Backend::kCpu;
  plan.path = "split_kv";
  plan.simd_target = "AVX2";
  plan.q_tile = 64;
  plan.kv_tile = 128;
  plan.kv_splits = 4;
  plan.threads = 2;
  plan.reason.clear();
  EXPECT_EQ(plan.ToString(),
            "sdpa plan: backend=cpu path=split_kv simd=AVX2 q_tile=64 kv_tile=128 kv_splits=4 "
            "threads=2");
}

// ---- Threads --------------------------------------------------------------------------------

// Restores the process-wide thread setting after a test.
class Threads : public ::testing::Test {
 protected:
  void TearDown() override { sdpa::SetNumThreads(0); }
  const ScopedEnv env_{"SDPA_NUM_THREADS", std::nullopt};
};

TEST_F(Threads, SetNumThreadsRoundTrips) {
  sdpa::SetNumThreads(3);
  EXPECT_EQ(sdpa::GetNumThreads(), 3);
  sdpa::SetNumThreads(0);
  EXPECT_GE(sdpa::GetNumThreads(), 1);  // all hardware threads
}

TEST_F(Threads, EnvironmentVariableAppliesWhenNotSet) {
  const ScopedEnv env("SDPA_NUM_THREADS", "5");
  EXPECT_EQ(sdpa::GetNumThreads(), 5);
  sdpa::SetNumThreads(2);
  EXPECT_EQ(sdpa::GetNumThreads(), 2);  // an explicit setting wins
}

TEST_F(Threads, InvalidEnvironmentVariableIsAnError) {
  for (const char* bad : {"abc", "0", "-2", "3x", "100000"}) {
    const ScopedEnv env("SDPA_NUM_THREADS", bad);
    EXPECT_TRUE(
        sdpa_test::ThrowsError([] { sdpa::GetNumThreads(); },
                               std::string("sdpa: environment variable SDPA_NUM_THREADS is '") +
                                   bad + "' but must be an integer from 1 to 1024"));
  }
}

TEST_F(Threads, NegativeCountIsRejected) {
  sdpa::SetNumThreads(3);
  EXPECT_TRUE(sdpa_test::ThrowsError([] { sdpa::SetNumThreads(-1); },
                                     "sdpa: num_threads is -1 but must be in [0, 1024] "
                                     "(0 = all hardware threads)"));
  EXPECT_EQ(sdpa::GetNumThreads(), 3) << "a rejected call changed the setting";
}

}  // namespace

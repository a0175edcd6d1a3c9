// The library inside real programs (issue 19): fork, thread limits and failures, concurrent
// callers, interrupting a long call, work limits, empty rows with sinks in the backward, and
// dropout_p = 1. Each test fails on the behaviour it guards against.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "cpu/parallel.h"
#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/tensors.h"

namespace {

using sdpa_test::Array;
using sdpa_test::Buffer;
using sdpa_test::ScopedEnv;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

#define EXPECT_TRUE_THROWS_ERROR(call, message) EXPECT_TRUE(sdpa_test::ThrowsError(call, message))

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// q, k and v [1, 8, length, 64]; at the default 256, enough work that a call uses 2 threads.
struct MediumProblem {
  explicit MediumProblem(std::int64_t length = 256)
      : q(Array::Uniform({1, 8, length, 64}, 1).RoundedToFloat()),
        k(Array::Uniform({1, 8, length, 64}, 2).RoundedToFloat()),
        v(Array::Uniform({1, 8, length, 64}, 3).RoundedToFloat()) {}
  Buffer<float> q, k, v;

  Array Run(sdpa::Options options = {}) const {
    return sdpa_test::ReadView(sdpa::Attention(q.view(), k.view(), v.view(), options).view());
  }
};

// Waits up to `seconds` for a child; kills it and returns -1 if it has not ended by then.
int WaitWithTimeout(pid_t child, double seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < until) {
    if (waitpid(child, &status, WNOHANG) == child) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(child, SIGKILL);
  waitpid(child, &status, 0);
  return -1;
}

// 1. A child created by fork() after a multi-threaded call computes correctly with threads.
TEST(Fork, ChildOfAMultiThreadedCallerComputes) {
  sdpa::SetNumThreads(2);
  const MediumProblem p;
  const Array before = p.Run();
  ASSERT_EQ(sdpa::Explain(p.q.view(), p.k.view(), p.v.view()).threads, 2);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // No gtest assertions here: report by exit code. 0 = same bits as the parent's call.
    int code = 0;
    try {
      for (int call = 0; call < 3 && code == 0; ++call) {
        if (!sdpa_test::BitwiseEqual(p.Run(), before)) code = 2;
      }
    } catch (...) {
      code = 3;
    }
    _exit(code);
  }
  const int status = WaitWithTimeout(child, 60);
  ASSERT_NE(status, -1) << "the forked child hung";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: wrong result in the child, 3: it threw";
  EXPECT_TRUE(sdpa_test::BitwiseEqual(p.Run(), before)) << "the parent still computes";
  sdpa::SetNumThreads(0);
}

// 3. Thread counts are capped and a failed thread start is an error, not an exit.
TEST(ThreadPool, SetNumThreadsRejectsOutOfRange) {
  EXPECT_TRUE_THROWS_ERROR([] { sdpa::SetNumThreads(-1); },
                           "sdpa: num_threads is -1 but must be in [0, 1024] "
                           "(0 = all hardware threads)");
  EXPECT_TRUE_THROWS_ERROR([] { sdpa::SetNumThreads(1025); },
                           "sdpa: num_threads is 1025 but must be in [0, "
                           "1024] (0 = all hardware threads)");
  EXPECT_TRUE_THROWS_ERROR(
      [] { sdpa::SetNumThreads(std::numeric_limits<int>::max()); },
      "sdpa: num_threads is 2147483647 but must be in [0, 1024] (0 = all hardware threads)");
  sdpa::SetNumThreads(sdpa::kMaxThreads);
  EXPECT_EQ(sdpa::GetNumThreads(), 1024);
  sdpa::SetNumThreads(0);
}

TEST(ThreadPool, EnvironmentVariableAboveTheCapIsAnError) {
  const ScopedEnv env("SDPA_NUM_THREADS", "1025");
  EXPECT_TRUE_THROWS_ERROR(
      [] { sdpa::GetNumThreads(); },
      "sdpa: environment variable SDPA_NUM_THREADS is '1025' but must be an integer from 1 to "
      "1024");
}

TEST(ThreadPool, FailedThreadStartThrowsAndTheNextCallWorks) {
  const MediumProblem p;
  sdpa::SetNumThreads(1);
  const Array expected = p.Run();
  sdpa::SetNumThreads(3);
  sdpa::cpu::testing::FailThreadStartsAfter(1);  // the second worker cannot start
  try {
    p.Run();
    ADD_FAILURE() << "no error although a thread could not start";
  } catch (const sdpa::Error& e) {
    EXPECT_TRUE(Contains(e.what(), "sdpa: could not start thread 3 of 3")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "lower the thread count")) << e.what();
  }
  sdpa::cpu::testing::FailThreadStartsAfter(-1);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(p.Run(), expected));
  sdpa::SetNumThreads(0);
}

// Several threads of a program calling at once: each gets the single-threaded bits.
TEST(ThreadPool, ConcurrentCallersGetCorrectResults) {
  const MediumProblem p;
  sdpa::SetNumThreads(1);
  const Array expected = p.Run();
  sdpa::SetNumThreads(2);
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      for (int call = 0; call < 5; ++call) {
        if (!sdpa_test::BitwiseEqual(p.Run(), expected)) ++wrong;
      }
    });
  }
  for (std::thread& caller : callers) caller.join();
  EXPECT_EQ(wrong.load(), 0);
  sdpa::SetNumThreads(0);
}

// 5. Options::interrupt stops a call; it is polled on the calling thread only.
class Interrupt : public ::testing::TestWithParam<sdpa::Backend> {};

TEST_P(Interrupt, StopsForwardAndBackward) {
  sdpa::SetNumThreads(2);
  // Long enough to reach a poll (every 2 ms) on either backend.
  const MediumProblem p(GetParam() == sdpa::Backend::kCpu ? 2048 : 256);
  sdpa::Options options;
  options.backend = GetParam();
  std::atomic<int> polls{0};
  std::atomic<bool> other_thread{false};
  const std::thread::id caller = std::this_thread::get_id();
  options.interrupt = [&] {
    if (std::this_thread::get_id() != caller) other_thread = true;
    ++polls;
    return true;
  };
  EXPECT_THROW(sdpa::AttentionWithLse(p.q.view(), p.k.view(), p.v.view(), options),
               sdpa::Interrupted);
  EXPECT_GE(polls.load(), 1);
  EXPECT_FALSE(other_thread.load()) << "interrupt was called from a worker thread";

  options.interrupt = nullptr;
  const sdpa::AttentionResult r =
      sdpa::AttentionWithLse(p.q.view(), p.k.view(), p.v.view(), options);
  const int before = polls.load();
  options.interrupt = [&] {
    ++polls;
    return true;
  };
  EXPECT_THROW(sdpa::AttentionBackward(p.q.view(), p.k.view(), p.v.view(), r.out.view(),
                                       r.lse.view(), r.out.view(), options),
               sdpa::Interrupted);
  EXPECT_GT(polls.load(), before);
  sdpa::SetNumThreads(0);
}

TEST_P(Interrupt, NeverTrueChangesNothing) {
  const MediumProblem p;
  sdpa::Options options;
  options.backend = GetParam();
  const Array expected = p.Run(options);
  std::atomic<int> polls{0};
  options.interrupt = [&] {
    ++polls;
    return false;
  };
  EXPECT_TRUE(sdpa_test::BitwiseEqual(p.Run(options), expected));
}

TEST(InterruptMessage, IsNotAnArgumentError) {
  const sdpa::Interrupted e;
  EXPECT_STREQ(e.what(), "sdpa: interrupted");
  EXPECT_EQ(dynamic_cast<const std::invalid_argument*>(static_cast<const std::exception*>(&e)),
            nullptr);
}

INSTANTIATE_TEST_SUITE_P(Backends, Interrupt,
                         ::testing::Values(sdpa::Backend::kCpu, sdpa::Backend::kReference),
                         [](const auto& param) {
                           return std::string(sdpa::BackendName(param.param));
                         });

// 6. Absurd work is refused before anything runs.
TEST(WorkLimit, BroadcastViewOfHugeLengthsIsRefused) {
  const std::vector<float> one_row(64, 0.5f);
  // Every operand is one row repeated 2^40 times through a zero stride.
  const std::int64_t huge = std::int64_t{1} << 40;
  const sdpa::TensorView q(one_row.data(), {huge, 64}, {0, 1});
  const sdpa::TensorView kv(one_row.data(), {huge, 64}, {0, 1});
  try {
    sdpa::Explain(q, kv, kv);
    ADD_FAILURE() << "not refused";
  } catch (const sdpa::Error& e) {
    EXPECT_TRUE(Contains(e.what(), "floating-point operations")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "q_len 1099511627776, kv_len 1099511627776")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "options.max_flops")) << e.what();
  }
  std::vector<float> out(64);
  EXPECT_THROW(sdpa::Forward(sdpa::TensorView(one_row.data(), {1, 64}), kv, kv,
                             sdpa::MutableTensorView(out.data(), {1, 64}),
                             [] {
                               sdpa::Options o;
                               o.max_flops = 1e12;
                               return o;
                             }()),
               sdpa::Error);
  // The owned result of a huge query needs more memory than the limit.
  sdpa::Options small_memory;
  small_memory.max_bytes = 1e6;
  small_memory.max_flops = kInf;
  try {
    sdpa::Attention(sdpa::TensorView(one_row.data(), {1 << 20, 64}, {0, 1}),
                    sdpa::TensorView(one_row.data(), {1, 64}),
                    sdpa::TensorView(one_row.data(), {1, 64}), small_memory);
    ADD_FAILURE() << "not refused";
  } catch (const sdpa::Error& e) {
    EXPECT_TRUE(Contains(e.what(), "bytes of memory")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "options.max_bytes")) << e.what();
  }
}

TEST(WorkLimit, OptionAndEnvironmentOverrideTheDefault) {
  const MediumProblem p;  // 2·8·256·256·128 = 1.3e8 flops
  sdpa::Options options;
  options.max_flops = 1e8;
  EXPECT_THROW(p.Run(options), sdpa::Error);
  options.max_flops = 2e8;
  EXPECT_NO_THROW(p.Run(options));
  {
    const ScopedEnv env("SDPA_MAX_FLOPS", "1e8");
    EXPECT_THROW(p.Run(), sdpa::Error);
    EXPECT_NO_THROW(p.Run(options));  // the option wins
  }
  {
    const ScopedEnv env("SDPA_MAX_FLOPS", "lots");
    EXPECT_TRUE_THROWS_ERROR(
        [&] { p.Run(); },
        "sdpa: environment variable SDPA_MAX_FLOPS is 'lots' but must be a number > 0");
  }
  options.max_flops = -1;
  EXPECT_TRUE_THROWS_ERROR([&] { p.Run(options); },
                           "sdpa: options.max_flops is -1 but must be > 0 (0 = the default)");
  options.max_flops = kNaN;
  EXPECT_THROW(p.Run(options), sdpa::Error);
  options.max_flops = 0;
  options.max_bytes = 10;
  EXPECT_THROW(p.Run(options), sdpa::Error);
}

// 2. Rows with no visible key, with finite sinks: their q and dO (here NaN, as padding rows
// often hold) reach no gradient, on every backend; the sink's gradient gets nothing from them.
template <typename T>
void CheckEmptyRowsWithSinks(sdpa::Backend backend) {
  const std::int64_t H = 2, L = 40, D = 16;
  Array q = Array::Uniform({1, H, L, D}, 7).RoundedToFloat();
  const Array k = Array::Uniform({1, H, L, D}, 8).RoundedToFloat();
  const Array v = Array::Uniform({1, H, L, D}, 9).RoundedToFloat();
  Array mask({L, L}, 1.0);
  for (std::int64_t j = 0; j < L; ++j) mask({3, j}) = 0;   // row 3: masked out
  for (std::int64_t j = 0; j < L; ++j) mask({30, j}) = 0;  // row 30
  Array dout = Array::Uniform({1, H, L, D}, 10).RoundedToFloat();
  for (std::int64_t h = 0; h < H; ++h) {
    for (std::int64_t d = 0; d < D; ++d) {
      for (std::int64_t i : {3, 30}) {
        q({0, h, i, d}) = kNaN;
        dout({0, h, i, d}) = kNaN;
      }
    }
  }
  const Buffer<T> bq(q), bk(k), bv(v), bdout(dout);
  const Buffer<bool> bmask(mask);
  sdpa::Options options;
  options.backend = backend;
  options.mask = bmask.view();
  options.sinks = {0.5, -1.25};
  const sdpa::AttentionResult r = sdpa::AttentionWithLse(bq.view(), bk.view(), bv.view(), options);
  const sdpa::Gradients g = sdpa::AttentionBackward(bq.view(), bk.view(), bv.view(), r.out.view(),
                                                    r.lse.view(), bdout.view(), options);
  for (const sdpa::Tensor* t : {&g.grad_query, &g.grad_key, &g.grad_value, &g.grad_sinks}) {
    const Array a = sdpa_test::ReadView(t->view());
    for (const double x : a.values) ASSERT_TRUE(std::isfinite(x)) << "a gradient is not finite";
  }
  // The same as the call without those rows' garbage: empty rows contribute nothing.
  Array q_clean = q, dout_clean = dout;
  for (double& x : q_clean.values) x = std::isnan(x) ? 0.25 : x;
  for (double& x : dout_clean.values) x = std::isnan(x) ? -0.5 : x;
  const Buffer<T> cq(q_clean), cdout(dout_clean);
  const sdpa::AttentionResult rc = sdpa::AttentionWithLse(cq.view(), bk.view(), bv.view(), options);
  const sdpa::Gradients gc = sdpa::AttentionBackward(cq.view(), bk.view(), bv.view(), rc.out.view(),
                                                     rc.lse.view(), cdout.view(), options);
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(g.grad_key.view()),
                                      sdpa_test::ReadView(gc.grad_key.view())));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(g.grad_value.view()),
                                      sdpa_test::ReadView(gc.grad_value.view())));
  EXPECT_TRUE(sdpa_test::BitwiseEqual(sdpa_test::ReadView(g.grad_sinks.view()),
                                      sdpa_test::ReadView(gc.grad_sinks.view())));
  const Array dq = sdpa_test::ReadView(g.grad_query.view());
  for (std::int64_t h = 0; h < H; ++h) {
    for (std::int64_t d = 0; d < D; ++d) {
      EXPECT_EQ(dq({0, h, 3, d}), 0.0);
      EXPECT_EQ(dq({0, h, 30, d}), 0.0);
    }
  }
}

TEST(EmptyRowsWithSinks, GradientsStayFiniteCpuFloat32) {
  CheckEmptyRowsWithSinks<float>(sdpa::Backend::kCpu);
}
TEST(EmptyRowsWithSinks, GradientsStayFiniteCpuFloat64) {
  CheckEmptyRowsWithSinks<double>(sdpa::Backend::kCpu);
}
TEST(EmptyRowsWithSinks, GradientsStayFiniteReference) {
  CheckEmptyRowsWithSinks<double>(sdpa::Backend::kReference);
}

// 11. dropout_p = 1 drops every weight: out = 0 and every gradient is 0, as in PyTorch.
TEST(Dropout, OneDropsEverything) {
  for (const sdpa::Backend backend : {sdpa::Backend::kCpu, sdpa::Backend::kReference}) {
    const MediumProblem p;
    sdpa::Options options;
    options.backend = backend;
    options.dropout_p = 1.0;
    options.seed = 5;
    options.sinks = std::vector<double>(8, 0.5);
    const sdpa::AttentionResult r =
        sdpa::AttentionWithLse(p.q.view(), p.k.view(), p.v.view(), options);
    for (const double x : sdpa_test::ReadView(r.out.view()).values) ASSERT_EQ(x, 0.0);
    for (const double x : sdpa_test::ReadView(r.lse.view()).values) ASSERT_TRUE(std::isfinite(x));
    const sdpa::Gradients g = sdpa::AttentionBackward(
        p.q.view(), p.k.view(), p.v.view(), r.out.view(), r.lse.view(), p.q.view(), options);
    for (const sdpa::Tensor* t : {&g.grad_query, &g.grad_key, &g.grad_value, &g.grad_sinks}) {
      for (const double x : sdpa_test::ReadView(t->view()).values) ASSERT_EQ(x, 0.0);
    }
  }
}

}  // namespace

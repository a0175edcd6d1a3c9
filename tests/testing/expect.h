// Assertions shared by the tests: closeness with a stated tolerance, exact equality, thrown
// errors with their message, and a scoped environment variable.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <typeinfo>
#include <utility>

#include "sdpa/error.h"
#include "testing/tensors.h"

namespace sdpa_test {

// |x - ref| <= atol + rtol * |ref|.
struct Tolerance {
  double atol = 0.0;
  double rtol = 0.0;
};

// "[1, 0, 2]" for a flat position in a row-major shape.
inline std::string IndexString(const std::vector<std::int64_t>& shape, std::int64_t flat) {
  std::vector<std::int64_t> index(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  std::ostringstream os;
  os << "[";
  for (std::size_t d = 0; d < index.size(); ++d) os << (d ? ", " : "") << index[d];
  os << "]";
  return os.str();
}

// Element-wise |actual - expected| <= atol + rtol * |expected|. Infinities must match exactly and
// NaN matches only NaN. On failure, lists the first mismatches with their index.
inline ::testing::AssertionResult AllClose(const Array& actual, const Array& expected,
                                           Tolerance tol) {
  if (actual.shape != expected.shape) {
    return ::testing::AssertionFailure()
           << "shape " << ::testing::PrintToString(actual.shape) << " but expected "
           << ::testing::PrintToString(expected.shape);
  }
  constexpr int kShown = 8;
  int mismatches = 0;
  std::ostringstream details;
  for (std::int64_t n = 0; n < actual.size(); ++n) {
    const double x = actual.values[static_cast<std::size_t>(n)];
    const double ref = expected.values[static_cast<std::size_t>(n)];
    bool ok;
    if (std::isnan(ref) || std::isnan(x)) {
      ok = std::isnan(ref) && std::isnan(x);
    } else if (std::isinf(ref) || std::isinf(x)) {
      ok = x == ref;
    } else {
      ok = std::fabs(x - ref) <= tol.atol + tol.rtol * std::fabs(ref);
    }
    if (ok) continue;
    if (mismatches++ < kShown) {
      details << "\n  at " << IndexString(actual.shape, n) << ": got " << x << ", expected " << ref
              << " (diff " << std::fabs(x - ref) << ")";
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  ::testing::AssertionResult failure = ::testing::AssertionFailure();
  failure << mismatches << " of " << actual.size() << " elements differ by more than atol "
          << tol.atol << " + rtol " << tol.rtol << " * |expected|" << details.str();
  if (mismatches > kShown) failure << "\n  ...";
  return failure;
}

// Exact equality: the same bits for every element (NaN equals NaN).
inline ::testing::AssertionResult BitwiseEqual(const Array& actual, const Array& expected) {
  if (actual.shape != expected.shape) {
    return ::testing::AssertionFailure()
           << "shape " << ::testing::PrintToString(actual.shape) << " but expected "
           << ::testing::PrintToString(expected.shape);
  }
  for (std::int64_t n = 0; n < actual.size(); ++n) {
    const double x = actual.values[static_cast<std::size_t>(n)];
    const double ref = expected.values[static_cast<std::size_t>(n)];
    if (std::memcmp(&x, &ref, sizeof(double)) != 0) {
      return ::testing::AssertionFailure() << "first difference at " << IndexString(actual.shape, n)
                                           << ": got " << x << ", expected " << ref;
    }
  }
  return ::testing::AssertionSuccess();
}

// Runs `call` and checks that it throws exactly `Exception` (not a subclass) whose what()
// contains `substring`.
template <typename Exception, typename Call>
::testing::AssertionResult ThrowsExactly(Call&& call, const std::string& substring) {
  try {
    call();
  } catch (const Exception& e) {
    if (typeid(e) != typeid(Exception)) {
      return ::testing::AssertionFailure()
             << "threw a subclass " << typeid(e).name() << " of the expected type: " << e.what();
    }
    if (std::string(e.what()).find(substring) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "message\n    " << e.what() << "\n  does not contain\n    " << substring;
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw another exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw; expected: " << substring;
}
// sdpa::Error for a bad value or shape; sdpa::DTypeError for a bad element type.
template <typename Call>
::testing::AssertionResult ThrowsError(Call&& call, const std::string& substring) {
  return ThrowsExactly<sdpa::Error>(std::forward<Call>(call), substring);
}
template <typename Call>
::testing::AssertionResult ThrowsDTypeError(Call&& call, const std::string& substring) {
  return ThrowsExactly<sdpa::DTypeError>(std::forward<Call>(call), substring);
}

// Sets (or, with nullopt, unsets) an environment variable for one scope and restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    Set(value);
  }
  ~ScopedEnv() { Set(old_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  void Set(const std::optional<std::string>& value) {
    if (value) {
      setenv(name_.c_str(), value->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }

  std::string name_;
  std::optional<std::string> old_;
};

}  // namespace sdpa_test

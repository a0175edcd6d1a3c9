// Tables of bad calls: a validation test builds one valid call (its own `Call`, over buffers in its
// own `Memory`), and each BadCall mutates it into one invalid call that must throw a given
// message and leave every byte of the memory as it was. The valid call and the cases stay in the
// test files (each entry point has its own); the case type, the check of its exception and the
// byte comparison are the same for all of them and live here.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "testing/expect.h"

namespace sdpa_test {

// The exception a bad call throws: sdpa::Error for a bad value or shape, sdpa::DTypeError for a
// bad element type.
enum class ErrorKind { kValue, kDType };

// Which entry points see the error: kInputs also fail in every other entry point that takes the
// same inputs (the owned overloads, Explain, AttentionBackward); kOutputs only concern the views
// the caller passes for the results (out and lse of the forward, the gradients of the backward).
enum class Scope { kInputs, kOutputs };

// One invalid call: `mutate` turns the test file's valid Call into it.
template <typename Call, typename Memory>
struct BadCall {
  std::string name;  // the test's name
  std::function<void(Call&, Memory&)> mutate;
  std::string message;  // a substring of what()
  ErrorKind kind = ErrorKind::kValue;
  Scope scope = Scope::kInputs;
};

// Checks that `call` throws the bad call's exception type with its message.
template <typename Call, typename Memory>
::testing::AssertionResult ThrowsExpected(const BadCall<Call, Memory>& bad,
                                          const std::function<void()>& call) {
  return bad.kind == ErrorKind::kDType ? ThrowsDTypeError(call, bad.message)
                                       : ThrowsError(call, bad.message);
}

// gtest prints a parameter with PrintTo, found next to its type; the name says which case failed.
template <typename Call, typename Memory>
void PrintTo(const BadCall<Call, Memory>& bad, std::ostream* os) {
  *os << bad.name;
}

// Names each instantiated test after its case (the name generator of INSTANTIATE_TEST_SUITE_P).
struct BadCallName {
  template <typename Param>
  std::string operator()(const ::testing::TestParamInfo<Param>& info) const {
    return info.param.name;
  }
};

// Appends the bytes of `count` elements at `data` to `bytes`: a test snapshots every buffer of its
// Memory before a failed call and compares after, to check that the call wrote nothing.
template <typename T>
void AppendBytes(std::vector<unsigned char>& bytes, const T* data, std::size_t count) {
  const auto* first = reinterpret_cast<const unsigned char*>(data);
  bytes.insert(bytes.end(), first, first + count * sizeof(T));
}

}  // namespace sdpa_test

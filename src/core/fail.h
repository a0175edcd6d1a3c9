// How the library reports bad input: sdpa::Error (sdpa::DTypeError for element types) with a
// message that starts "sdpa: " and names the argument, the expected and the actual value.
// Every floor may throw; only src/api decides what to check.
#pragma once

#include <sstream>
#include <string>

#include "sdpa/error.h"

namespace sdpa::internal {

// Builds "sdpa: " + the streamed parts.
template <typename... Parts>
std::string Message(const Parts&... parts) {
  std::ostringstream os;
  os << "sdpa: ";
  (os << ... << parts);
  return os.str();
}
template <typename... Parts>
[[noreturn]] void Fail(const Parts&... parts) {
  throw Error(Message(parts...));
}
template <typename... Parts>
[[noreturn]] void FailDType(const Parts&... parts) {
  throw DTypeError(Message(parts...));
}

}  // namespace sdpa::internal

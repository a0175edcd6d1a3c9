// The one exception type the library throws for bad input.
#pragma once

#include <stdexcept>
#include <string>

namespace sdpa {

// Thrown by every entry point before any allocation or computation when an argument is invalid.
// The message starts with "sdpa: " and names the argument, the expected and the actual value, e.g.
//   sdpa: key.shape[3] (head_dim) is 32 but query.shape[3] is 64
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& message) : std::invalid_argument(message) {}
};

// Same as Error, for an argument whose element type is wrong (Python maps it to TypeError).
class DTypeError : public Error {
 public:
  explicit DTypeError(const std::string& message) : Error(message) {}
};

// Thrown when Options::interrupt asked a call to stop (it is not a bad argument: it derives
// from std::runtime_error, not from Error). Message: "sdpa: interrupted".
class Interrupted : public std::runtime_error {
 public:
  Interrupted() : std::runtime_error("sdpa: interrupted") {}
};

}  // namespace sdpa

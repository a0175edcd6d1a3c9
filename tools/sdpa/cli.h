// The pieces every subcommand of the `sdpa` tool shares: its errors, its flag parser and the
// entry points that main.cc dispatches to.
//
// Conventions: results go to stdout, diagnostics to stderr. Every failure is one line on stderr
// starting "sdpa: " and a non-zero exit code: kExitUsage for a bad command line, kExitFailure for
// everything else (unreadable or malformed files, invalid shapes, write errors).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace sdpa::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// A failure the tool reports and exits on. The message has no "sdpa: " prefix.
class CliError : public std::runtime_error {
 public:
  explicit CliError(const std::string& message, int exit_code = kExitFailure)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// A bad command line (exit code kExitUsage).
class UsageError : public CliError {
 public:
  explicit UsageError(const std::string& message) : CliError(message, kExitUsage) {}
};

// One flag a subcommand accepts: `--name VALUE` (or `--name=VALUE`) when takes_value, else a
// switch `--name`.
struct Flag {
  const char* name;  // without the leading "--"
  bool takes_value;
};

// The parsed command line of one subcommand. `--help` and `-h` anywhere ask for help; they win
// over any other problem on the line, which is otherwise reported by Parse as a UsageError.
class Args {
 public:
  // `command` names the subcommand in messages ("run"); argv excludes the program and the
  // subcommand names.
  static Args Parse(const std::string& command, const std::vector<Flag>& flags,
                    const std::vector<std::string>& argv);

  bool help() const { return help_; }
  bool Has(const std::string& name) const;
  std::optional<std::string> Get(const std::string& name) const;
  // The value of a flag that must be present.
  std::string Required(const std::string& name) const;
  // Integer value in [min, max], or `fallback` when absent.
  std::int64_t GetInt(const std::string& name, std::int64_t fallback, std::int64_t min,
                      std::int64_t max) const;
  // Finite floating-point value, or nullopt when absent.
  std::optional<double> GetDouble(const std::string& name) const;
  // One of `choices`, or `fallback` when absent.
  std::string GetChoice(const std::string& name, const std::string& fallback,
                        const std::vector<std::string>& choices) const;

  // Throws the UsageError for a problem with this command line: "<command>: <message> (see
  // 'sdpa <command> --help')". For flags whose values a subcommand parses itself.
  [[noreturn]] void Fail(const std::string& message) const;

 private:
  std::string command_;
  bool help_ = false;
  std::vector<std::pair<std::string, std::string>> values_;  // switches have an empty value
};

// The subcommands. Each gets its arguments after the subcommand name and returns an exit code;
// failures are thrown (CliError, sdpa::Error, npy::NpyError) and reported by main.
int RunCommand(const std::vector<std::string>& argv);
int DemoCommand(const std::vector<std::string>& argv);
int BenchCommand(const std::vector<std::string>& argv);
int InfoCommand(const std::vector<std::string>& argv);

}  // namespace sdpa::cli

// The `sdpa` command: run attention on .npy files, demo, bench, info.
//
//   sdpa run --query q.npy --key k.npy --value v.npy --out out.npy [...]
//   sdpa demo | sdpa bench [--grid ...] | sdpa info
//
// This file only dispatches to a subcommand and turns every failure into one line on stderr
// ("sdpa: ...") and an exit code; the subcommands live in run.cc, demo.cc, bench.cc, info.cc.
#include <exception>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "cli.h"
#include "npy.h"
#include "sdpa/error.h"
#include "sdpa/version.h"

namespace {

constexpr const char* kUsage =
    "usage: sdpa <command> [options]\n"
    "\n"
    "Scaled dot-product attention, softmax(scale * Q K^T + mask) V, from the shell.\n"
    "\n"
    "commands:\n"
    "  run     compute attention on .npy files (query, key, value, optional mask)\n"
    "  demo    the seed example, then a long sequence with throughput and accuracy\n"
    "  bench   time a grid of shapes: GFLOP/s and fraction of this machine's FMA peak\n"
    "  info    version, SIMD targets, threads, measured FMA peak\n"
    "\n"
    "'sdpa <command> --help' describes a command. 'sdpa --version' prints the version.\n";

// One line, "sdpa: " first: library messages already carry the prefix.
void Report(const std::string& message) {
  std::string line = message.compare(0, 6, "sdpa: ") == 0 ? message : "sdpa: " + message;
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::cerr << line << std::endl;
}

int Dispatch(const std::vector<std::string>& args) {
  using namespace sdpa::cli;
  if (args.empty()) throw UsageError("no command given (see 'sdpa --help')");
  const std::string& command = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (command == "--help" || command == "-h" || command == "help") {
    if (!rest.empty() && rest[0] != "--help" && rest[0] != "-h") {
      return Dispatch({rest[0], "--help"});
    }
    std::cout << kUsage;
    return kExitOk;
  }
  if (command == "--version") {
    std::cout << "sdpa " << SDPA_VERSION << "\n";
    return kExitOk;
  }
  if (command == "run") return RunCommand(rest);
  if (command == "demo") return DemoCommand(rest);
  if (command == "bench") return BenchCommand(rest);
  if (command == "info") return InfoCommand(rest);
  throw UsageError("unknown command '" + command + "' (see 'sdpa --help')");
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    const int code = Dispatch(args);
    std::cout.flush();
    if (!std::cout) {
      Report("cannot write to standard output");
      return sdpa::cli::kExitFailure;
    }
    return code;
  } catch (const sdpa::cli::CliError& e) {
    Report(e.what());
    return e.exit_code();
  } catch (const sdpa::Error& e) {
    Report(e.what());
    return sdpa::cli::kExitFailure;
  } catch (const std::bad_alloc&) {
    Report("out of memory");
    return sdpa::cli::kExitFailure;
  } catch (const std::exception& e) {
    Report(std::string("internal error: ") + e.what());
    return sdpa::cli::kExitFailure;
  }
}

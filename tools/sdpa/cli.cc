#include "cli.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace sdpa::cli {

Args Args::Parse(const std::string& command, const std::vector<Flag>& flags,
                 const std::vector<std::string>& argv) {
  Args args;
  args.command_ = command;
  std::optional<std::string> first_error;  // reported only if help was not asked for
  auto note = [&first_error](const std::string& message) {
    if (!first_error) first_error = message;
  };
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& token = argv[i];
    if (token == "--help" || token == "-h") {
      args.help_ = true;
      continue;
    }
    if (token.size() < 3 || token.compare(0, 2, "--") != 0) {
      note("unexpected argument '" + token + "'");
      continue;
    }
    const std::size_t equals = token.find('=');
    const std::string name = token.substr(2, equals == std::string::npos ? equals : equals - 2);
    const auto flag =
        std::find_if(flags.begin(), flags.end(), [&name](const Flag& f) { return name == f.name; });
    if (flag == flags.end()) {
      note("unknown option '--" + name + "'");
      continue;
    }
    std::string value;
    if (flag->takes_value) {
      if (equals != std::string::npos) {
        value = token.substr(equals + 1);
      } else if (i + 1 < argv.size()) {
        value = argv[++i];
      } else {
        note("option --" + name + " needs a value");
        continue;
      }
    } else if (equals != std::string::npos) {
      note("option --" + name + " takes no value");
      continue;
    }
    if (args.Has(name)) {
      note("option --" + name + " is given more than once");
      continue;
    }
    args.values_.emplace_back(name, value);
  }
  if (first_error && !args.help_) args.Fail(*first_error);
  return args;
}

void Args::Fail(const std::string& message) const {
  throw UsageError(command_ + ": " + message + " (see 'sdpa " + command_ + " --help')");
}

bool Args::Has(const std::string& name) const { return Get(name).has_value(); }

std::optional<std::string> Args::Get(const std::string& name) const {
  for (const auto& [key, value] : values_) {
    if (key == name) return value;
  }
  return std::nullopt;
}

std::string Args::Required(const std::string& name) const {
  const std::optional<std::string> value = Get(name);
  if (!value) Fail("option --" + name + " is required");
  if (value->empty()) Fail("option --" + name + " is empty");
  return *value;
}

std::int64_t Args::GetInt(const std::string& name, std::int64_t fallback, std::int64_t min,
                          std::int64_t max) const {
  const std::optional<std::string> value = Get(name);
  if (!value) return fallback;
  errno = 0;
  char* end = nullptr;
  const long long parsed = std::strtoll(value->c_str(), &end, 10);
  if (value->empty() || *end != '\0' || errno == ERANGE || parsed < min || parsed > max) {
    Fail("--" + name + " is '" + *value + "' but must be an integer in [" + std::to_string(min) +
         ", " + std::to_string(max) + "]");
  }
  return parsed;
}

std::optional<double> Args::GetDouble(const std::string& name) const {
  const std::optional<std::string> value = Get(name);
  if (!value) return std::nullopt;
  char* end = nullptr;
  const double parsed = std::strtod(value->c_str(), &end);
  if (value->empty() || *end != '\0' || !std::isfinite(parsed)) {
    Fail("--" + name + " is '" + *value + "' but must be a finite number");
  }
  return parsed;
}

std::string Args::GetChoice(const std::string& name, const std::string& fallback,
                            const std::vector<std::string>& choices) const {
  const std::optional<std::string> value = Get(name);
  if (!value) return fallback;
  if (std::find(choices.begin(), choices.end(), *value) != choices.end()) return *value;
  std::string list;
  for (const std::string& choice : choices) list += (list.empty() ? "" : ", ") + choice;
  Fail("--" + name + " is '" + *value + "' but must be one of: " + list);
}

}  // namespace sdpa::cli

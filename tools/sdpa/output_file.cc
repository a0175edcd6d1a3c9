#include "output_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "cli.h"

namespace sdpa::cli {
namespace {

// Temporary files to remove if the process is interrupted (Ctrl-C, kill) before it commits or
// removes them itself. The handler only calls async-signal-safe functions (unlink, signal, raise).
constexpr int kMaxPending = 8;
std::atomic<const char*> g_pending[kMaxPending];

extern "C" void RemovePendingAndReraise(int signal_number) {
  for (auto& pending : g_pending) {
    if (const char* path = pending.load()) unlink(path);
  }
  std::signal(signal_number, SIG_DFL);
  std::raise(signal_number);
}

void Register(const char* path) {
  static const bool installed = [] {
    for (int signal_number : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) {
      std::signal(signal_number, RemovePendingAndReraise);
    }
    return true;
  }();
  (void)installed;
  for (auto& pending : g_pending) {
    const char* empty = nullptr;
    if (pending.compare_exchange_strong(empty, path)) return;
  }
}

void Unregister(const char* path) {
  for (auto& pending : g_pending) {
    const char* expected = path;
    if (pending.compare_exchange_strong(expected, nullptr)) return;
  }
}

}  // namespace
OutputFile::OutputFile(std::string flag, std::string path)
    : flag_(std::move(flag)), path_(std::move(path)) {
  if (path_.empty()) Fail("the path is empty");
  if (path_.back() == '/') Fail("is a directory");
  struct stat info {};
  if (stat(path_.c_str(), &info) == 0 && S_ISDIR(info.st_mode)) Fail("is a directory");
  // ".out.npy.tmp.XXXXXX" in the destination's directory.
  const std::size_t slash = path_.rfind('/');
  const std::size_t name_at = slash == std::string::npos ? 0 : slash + 1;
  temp_path_ = path_.substr(0, name_at) + "." + path_.substr(name_at) + ".tmp.XXXXXX";
  std::vector<char> name(temp_path_.begin(), temp_path_.end());
  name.push_back('\0');
  const int fd = mkstemp(name.data());
  if (fd < 0) Fail(std::string("cannot create a file in its directory: ") + std::strerror(errno));
  temp_path_ = name.data();
  Register(temp_path_.c_str());
  file_ = fdopen(fd, "wb");
  if (file_ == nullptr) {
    const int error = errno;
    close(fd);
    Unregister(temp_path_.c_str());
    std::remove(temp_path_.c_str());
    temp_path_.clear();
    Fail(std::string("cannot open: ") + std::strerror(error));
  }
}

OutputFile::~OutputFile() {
  if (file_ != nullptr) std::fclose(file_);
  if (!committed_ && !temp_path_.empty()) std::remove(temp_path_.c_str());
  if (!temp_path_.empty()) Unregister(temp_path_.c_str());
}

void OutputFile::Fail(const std::string& what) const {
  throw CliError(flag_ + " " + path_ + ": " + what);
}

void OutputFile::Write(const void* data, std::size_t size) {
  if (size > 0 && std::fwrite(data, 1, size, file_) != size) {
    Fail(std::string("write failed: ") + std::strerror(errno));
  }
}

void OutputFile::Finish() {
  std::FILE* file = file_;
  file_ = nullptr;
  const bool flushed = std::fflush(file) == 0;
  const int error = errno;
  const bool closed = std::fclose(file) == 0;
  if (!flushed || !closed) Fail(std::string("write failed: ") + std::strerror(error));
}

void OutputFile::Commit() {
  // mkstemp makes the file private (0600); give it the mode a plain create would.
  const mode_t mask = umask(0);
  umask(mask);
  chmod(temp_path_.c_str(), 0666 & ~mask);
  if (std::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    Fail(std::string("cannot rename the finished file into place: ") + std::strerror(errno));
  }
  committed_ = true;
}

void OutputFile::Retract() {
  if (committed_) std::remove(path_.c_str());
}

}  // namespace sdpa::cli

#include "output_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "cli.h"

namespace sdpa::cli {
namespace {

// ---- Files to remove if the process is interrupted (Ctrl-C, kill, a closed pipe) before the
// command finishes: temporary files, and outputs committed while another one is still pending.
//
// A signal may arrive on any thread (the engine's pool threads persist), so blocking signals on
// the main thread would not keep the handler out of the moment between creating a file and
// recording it. Instead that moment is a RegistryChange, and the handler and the main thread
// agree through two sequentially consistent atomics: the handler first records the signal, then
// looks at g_busy; the main thread first sets g_busy, then looks for a signal. Whichever comes
// second sees the other, so either the handler finds the file recorded, or the main thread exits
// on the handler's behalf once the file is recorded (or before creating it). The handler calls
// only async-signal-safe functions (unlink, _exit) and lock-free atomics.
constexpr int kMaxPending = 8;
std::atomic<const char*> g_pending[kMaxPending];
std::atomic<int> g_signal{0};  // the first handled signal received; 0 if none
std::atomic<int> g_busy{0};    // 1 while the main thread changes g_pending with files
static_assert(std::atomic<const char*>::is_always_lock_free &&
                  std::atomic<int>::is_always_lock_free,
              "the signal handler needs lock-free atomics");

constexpr int kHandledSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};

[[noreturn]] void RemovePendingAndExit(int signal_number) {
  for (auto& pending : g_pending) {
    if (const char* path = pending.load()) unlink(path);
  }
  _exit(128 + signal_number);  // 130 for SIGINT, 143 for SIGTERM, as a shell reports them
}

extern "C" void OnSignal(int signal_number) {
  int none = 0;
  g_signal.compare_exchange_strong(none, signal_number);
  if (g_busy.load() == 0) RemovePendingAndExit(g_signal.load());
  // Else the main thread is between creating (or renaming) a file and recording it; it exits
  // with this signal when it has.
}

// While one exists, files may exist that g_pending does not list yet; a signal that arrives
// meanwhile is acted on when it ends. Only the main thread makes these, one at a time.
class RegistryChange {
 public:
  RegistryChange() {
    g_busy.store(1);
    ExitIfSignalled();
  }
  ~RegistryChange() {
    g_busy.store(0);
    ExitIfSignalled();
  }
  RegistryChange(const RegistryChange&) = delete;
  RegistryChange& operator=(const RegistryChange&) = delete;

 private:
  static void ExitIfSignalled() {
    if (const int signal_number = g_signal.load()) RemovePendingAndExit(signal_number);
  }
};

// Inside a RegistryChange. The slots are enough for the outputs of one command (two, and each
// briefly under two names in Commit); false if they are full.
bool Register(const char* path) {
  for (auto& pending : g_pending) {
    const char* empty = nullptr;
    if (pending.compare_exchange_strong(empty, path)) return true;
  }
  return false;
}

// The path is removed (or renamed) before it is unregistered: a signal in between unlinks a
// name that no longer exists, never leaves a file behind.
void Unregister(const char* path) {
  for (auto& pending : g_pending) {
    const char* expected = path;
    if (pending.compare_exchange_strong(expected, nullptr)) return;
  }
}

std::string ErrorText(int error) { return std::strerror(error); }

std::string DirectoryOf(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string NameOf(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// realpath(3) as a string; nullopt with errno set on failure.
std::optional<std::string> RealPath(const std::string& path) {
  char* resolved = realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return std::nullopt;
  std::string text = resolved;
  std::free(resolved);
  return text;
}

FileId IdOf(const struct stat& info) {
  return {static_cast<std::uint64_t>(info.st_dev), static_cast<std::uint64_t>(info.st_ino)};
}

std::string LinkText(const std::string& path) {
  std::vector<char> text(4096);
  const ssize_t size = readlink(path.c_str(), text.data(), text.size());
  return size < 0 ? "?" : std::string(text.data(), static_cast<std::size_t>(size));
}

}  // namespace

void InstallSignalHandlers() {
  static const bool installed = [] {
    struct sigaction action {};
    action.sa_handler = OnSignal;
    action.sa_flags = SA_RESTART;  // a deferred signal must not make a write fail with EINTR
    sigemptyset(&action.sa_mask);
    for (int signal_number : kHandledSignals) sigaddset(&action.sa_mask, signal_number);
    for (int signal_number : kHandledSignals) {
      struct sigaction previous {};
      sigaction(signal_number, nullptr, &previous);
      if (previous.sa_handler != SIG_IGN) sigaction(signal_number, &action, nullptr);
    }
    std::signal(SIGXFSZ, SIG_IGN);  // beyond RLIMIT_FSIZE, write() fails with EFBIG instead
    return true;
  }();
  (void)installed;
}

// ---- OutputTarget

OutputTarget::OutputTarget(std::string flag, std::string path)
    : flag_(std::move(flag)), path_(std::move(path)), file_path_(path_) {
  if (path_.empty()) Fail("the path is empty");
  if (path_.back() == '/') Fail("is a directory");
  struct stat link_info {};
  if (lstat(path_.c_str(), &link_info) != 0) {
    const int error = errno;
    if (error == ENOENT) {
      // A new file: it is known by its name in the canonical form of its directory.
      if (const auto directory = RealPath(DirectoryOf(path_))) {
        canonical_name_ = *directory + (directory->back() == '/' ? "" : "/") + NameOf(path_);
        return;
      }
    }
    Fail("cannot create a file in its directory: " + ErrorText(error == ENOENT ? errno : error));
  }
  struct stat info = link_info;
  const bool link = S_ISLNK(link_info.st_mode);
  if (link && stat(path_.c_str(), &info) != 0) {
    if (errno == ENOENT) {
      // Creating the file a dangling link names could put it anywhere (GNU cp refuses too).
      Fail("is a dangling symbolic link (to " + LinkText(path_) +
           "); sdpa does not create files through a link");
    }
    Fail("cannot follow the symbolic link: " + ErrorText(errno));
  }
  if (S_ISDIR(info.st_mode)) Fail("is a directory");
  exists_ = true;
  id_ = IdOf(info);
  if (S_ISSOCK(info.st_mode) && !IsStandardOutput()) {
    Fail("is a socket; sdpa writes only regular files, devices and FIFOs");
  }
  if (!S_ISREG(info.st_mode)) {
    // Opened through the path as given: /dev/stdout's link into /proc opens the pipe itself
    // but cannot be resolved to a name.
    in_place_ = true;
    return;
  }
  if (link) {
    const auto resolved = RealPath(path_);
    if (!resolved) Fail("cannot follow the symbolic link: " + ErrorText(errno));
    file_path_ = *resolved;
  }
}

void OutputTarget::Fail(const std::string& what) const {
  throw CliError(flag_ + " " + path_ + ": " + what);
}

bool OutputTarget::SameFileAs(const OutputTarget& other) const {
  if (exists_ != other.exists_) return false;
  return exists_ ? id_ == other.id_ : canonical_name_ == other.canonical_name_;
}

bool OutputTarget::Is(const std::string& input_path) const {
  struct stat info {};
  if (!exists_ || stat(input_path.c_str(), &info) != 0) return false;
  return id_ == IdOf(info);
}

bool OutputTarget::IsStandardOutput() const {
  struct stat info {};
  if (!exists_ || fstat(STDOUT_FILENO, &info) != 0) return false;
  return id_ == IdOf(info);
}

// ---- OutputFile

OutputFile::OutputFile(const OutputTarget& target)
    : flag_(target.flag_),
      path_(target.path_),
      file_path_(target.file_path_),
      in_place_(target.in_place_) {
  InstallSignalHandlers();
  if (in_place_) {
    // Standard output as itself (also a socket, which cannot be opened by name); anything else
    // opened without O_CREAT or O_TRUNC, so that nothing is created or replaced.
    const int fd = target.IsStandardOutput()
                       ? fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0)
                       : open(file_path_.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) Fail("cannot open: " + ErrorText(errno));
    struct stat info {};
    if (fstat(fd, &info) != 0 || S_ISREG(info.st_mode) || S_ISDIR(info.st_mode)) {
      close(fd);
      Fail("changed from a device or FIFO while sdpa started; run again");
    }
    file_ = fdopen(fd, "wb");  // "w" on an open descriptor truncates nothing
    if (file_ == nullptr) {
      const int error = errno;
      close(fd);
      Fail("cannot open: " + ErrorText(error));
    }
    return;
  }
  // ".out.npy.tmp.XXXXXX" in the destination's directory.
  const std::size_t name_at = file_path_.size() - NameOf(file_path_).size();
  temp_path_ = file_path_.substr(0, name_at) + "." + file_path_.substr(name_at) + ".tmp.XXXXXX";
  std::vector<char> name(temp_path_.begin(), temp_path_.end());
  name.push_back('\0');
  int fd = -1;
  int error = 0;
  bool registered = false;
  {
    RegistryChange change;
    fd = mkstemp(name.data());
    error = errno;
    if (fd >= 0) {
      temp_path_ = name.data();
      registered = Register(temp_path_.c_str());
    }
  }
  if (fd < 0) {
    temp_path_.clear();
    Fail("cannot create a file in its directory: " + ErrorText(error));
  }
  if (!registered) {
    close(fd);
    std::remove(temp_path_.c_str());
    temp_path_.clear();
    Fail("internal error: too many output files");
  }
  file_ = fdopen(fd, "wb");
  if (file_ == nullptr) {
    error = errno;
    close(fd);
    std::remove(temp_path_.c_str());
    Unregister(temp_path_.c_str());
    temp_path_.clear();
    Fail("cannot open: " + ErrorText(error));
  }
}

OutputFile::~OutputFile() {
  if (file_ != nullptr) std::fclose(file_);
  if (in_place_) return;
  if (!committed_ && !temp_path_.empty()) {
    std::remove(temp_path_.c_str());
    Unregister(temp_path_.c_str());
  }
  if (committed_) Unregister(file_path_.c_str());  // the command finished (or gave up on it)
}

void OutputFile::Fail(const std::string& what) const {
  throw CliError(flag_ + " " + path_ + ": " + what);
}

void OutputFile::Write(const void* data, std::size_t size) {
  if (size > 0 && std::fwrite(data, 1, size, file_) != size) {
    Fail("write failed: " + ErrorText(errno));
  }
}

void OutputFile::Finish() {
  std::FILE* file = file_;
  file_ = nullptr;
  const bool flushed = std::fflush(file) == 0;
  const int error = errno;
  const bool closed = std::fclose(file) == 0;
  if (!flushed || !closed) Fail("write failed: " + ErrorText(flushed ? errno : error));
}

void OutputFile::Commit() {
  if (in_place_) {
    committed_ = true;
    return;
  }
  // mkstemp makes the file private (0600); give it the mode a plain create would.
  const mode_t mask = umask(0);
  umask(mask);
  chmod(temp_path_.c_str(), 0666 & ~mask);
  RegistryChange change;
  if (std::rename(temp_path_.c_str(), file_path_.c_str()) != 0) {
    Fail("cannot rename the finished file into place: " + ErrorText(errno));
  }
  // Listed under its new name before the old one goes: a signal in between removes the file.
  (void)Register(file_path_.c_str());  // full slots only lose that removal
  Unregister(temp_path_.c_str());
  committed_ = true;
}

void OutputFile::Retract() {
  if (committed_ && !in_place_) std::remove(file_path_.c_str());
}

}  // namespace sdpa::cli

// Where `sdpa run` writes its outputs (--out, --lse), and how. The rules, which `sdpa run --help`
// and docs/semantics.md ("CLI outputs") state for users:
//
// * A regular file, or a new one, is written to a temporary file in its directory and renamed
//   over it on success (atomic on POSIX file systems): it appears whole or not at all, and a
//   failure leaves an old file as it was.
// * A character or block device or a FIFO (/dev/null, /dev/stdout into a pipe) is opened for
//   writing and written in place: it is never replaced, and never created.
// * A final symbolic link is followed: the file it names is written and the link is kept. A
//   dangling link, a directory and a socket (unless it is standard output) are refused.
// * Temporary files are removed on every exit path: errors and exceptions (the destructor), and
//   SIGINT, SIGTERM, SIGHUP and SIGPIPE, whose handler unlinks them and exits with 128 + the
//   signal number. SIGXFSZ is ignored, so that a file beyond `ulimit -f` is a write error (EFBIG)
//   reported and cleaned up like a full disk.
//
// Which outputs may be the same file as an input or as each other is the caller's rule
// (run.cc); OutputTarget gives it the comparisons.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace sdpa::cli {

// Installs the signal handlers described above (idempotent). A signal that the parent process
// ignores (nohup ignores SIGHUP) stays ignored.
void InstallSignalHandlers();

// A file's identity: device and inode numbers (st_dev, st_ino).
struct FileId {
  std::uint64_t device = 0;
  std::uint64_t inode = 0;
  bool operator==(const FileId& other) const {
    return device == other.device && inode == other.inode;
  }
};

// An output path, looked at before any input is read: what it is and where its bytes will go.
class OutputTarget {
 public:
  // Throws CliError ("<flag> <path>: ...") for a target that is refused: a directory, a socket,
  // a dangling symbolic link, a directory that does not exist.
  OutputTarget(std::string flag, std::string path);

  const std::string& flag() const { return flag_; }
  const std::string& path() const { return path_; }  // as given

  // True when both name one file: the same device and inode if they exist, else the same name
  // in the same canonical directory (so o.npy, ./o.npy and d/../o.npy are one file).
  bool SameFileAs(const OutputTarget& other) const;
  // True when the existing file at `input_path` (links followed) is this file; hard links are.
  bool Is(const std::string& input_path) const;
  // True when this is the file the process's standard output writes to.
  bool IsStandardOutput() const;

 private:
  friend class OutputFile;

  [[noreturn]] void Fail(const std::string& what) const;

  std::string flag_;
  std::string path_;
  std::string file_path_;  // the file to write: path_, or what a final symbolic link names
  bool in_place_ = false;  // a device, FIFO or standard output: written directly
  bool exists_ = false;
  FileId id_;                   // when exists_
  std::string canonical_name_;  // when !exists_: realpath(directory) + "/" + name
};

// One output being written: a temporary file renamed into place by Commit, or, for an in-place
// target, the device or FIFO itself. If the object is destroyed without a successful Commit (an
// error anywhere, an exception), the temporary file is removed.
class OutputFile {
 public:
  // Creates the temporary file next to the target's file, or opens the device or FIFO (which
  // waits for a FIFO's reader). Throws CliError if the directory is not writable or the device
  // cannot be opened.
  explicit OutputFile(const OutputTarget& target);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  // Appends bytes; throws CliError on a write error (disk full, file size limit, ...).
  void Write(const void* data, std::size_t size);
  // Flushes and closes, checking for errors. After this only Commit remains.
  void Finish();
  // Renames the finished temporary file to the destination, with the permissions a newly
  // created file would get (0666 less the umask); nothing to do in place. Until this object is
  // destroyed, a signal removes the committed file again (the command did not finish).
  void Commit();
  // Removes the committed destination again (when a later step of the same command failed);
  // nothing to do in place.
  void Retract();

 private:
  [[noreturn]] void Fail(const std::string& what) const;

  std::string flag_;
  std::string path_;       // as given, for messages
  std::string file_path_;  // the destination
  std::string temp_path_;
  bool in_place_ = false;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace sdpa::cli

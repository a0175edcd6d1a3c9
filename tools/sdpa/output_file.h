// An output file that appears whole or not at all.
//
// The data is written to a temporary file in the destination's directory (so the final rename
// is atomic on POSIX file systems) and renamed over the destination by Commit. If the object is
// destroyed without a successful Commit (an error anywhere, an exception), the temporary file is
// removed: a failed `sdpa run` leaves no output behind and never half-overwrites an old one.
// SIGINT, SIGTERM, SIGHUP and SIGPIPE remove pending temporary files too, then end the process as
// the signal would have.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace sdpa::cli {

class OutputFile {
 public:
  // Creates the temporary file next to `path`. Throws CliError (naming `flag`, e.g. "--out") if
  // the directory does not exist or is not writable.
  OutputFile(std::string flag, std::string path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  const std::string& path() const { return path_; }

  // Appends bytes; throws CliError on a write error (disk full, ...).
  void Write(const void* data, std::size_t size);
  // Flushes and closes the temporary file, checking for errors. After this only Commit remains.
  void Finish();
  // Renames the finished temporary file to the destination, with the permissions a newly
  // created file would get (0666 less the umask).
  void Commit();
  // Removes the destination again (after a Commit, when a later step of the same command
  // failed).
  void Retract();

 private:
  [[noreturn]] void Fail(const std::string& what) const;

  std::string flag_;
  std::string path_;
  std::string temp_path_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace sdpa::cli

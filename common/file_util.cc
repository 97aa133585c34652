#include "common/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <thread>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace qs {

StatusOr<std::string> ReadFileBytes(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return NotFoundError(path + ": no such file");
  if (std::filesystem::is_directory(path, ec)) {
    return InvalidArgumentError(path + ": is a directory, expected a file");
  }
  // A device or a pipe has no size to check and may never end (/dev/zero once read until
  // memory ran out).
  if (!std::filesystem::is_regular_file(path, ec)) {
    return InvalidArgumentError(path + ": is not a regular file");
  }
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    const std::string why = path + ": cannot open: " + std::strerror(err);
    if (err == EACCES || err == EPERM) return Status(StatusCode::kPermissionDenied, why);
    if (err == ENOENT) return NotFoundError(why);
    return Status(StatusCode::kUnavailable, why);
  }
  std::string bytes;
  try {
    bytes.resize(std::filesystem::file_size(path, ec));
  } catch (const std::bad_alloc&) {
    std::fclose(f);
    return ResourceExhaustedError(path + ": too large to read into memory");
  }
  const size_t read = std::fread(bytes.data(), 1, bytes.size(), f);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return DataLossError(path + ": read failed");
  bytes.resize(read);  // the file shrank while being read
  return bytes;
}

Status WriteFileAtomically(const std::string& path, const std::string& bytes) {
  // Unique per process, thread and call, so concurrent writers of one path never share a file.
  static std::atomic<uint64_t> counter{0};
  std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." +
                    std::to_string(std::hash<std::thread::id>()(std::this_thread::get_id())) + "." +
                    std::to_string(counter++);
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return InternalError(tmp + ": cannot create: " + std::strerror(errno));
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  ok = (std::fflush(f) == 0) && ok;
  ok = (::fsync(::fileno(f)) == 0) && ok;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return InternalError(path + ": write failed: " + std::strerror(errno));
  }
  return OkStatus();
}

Status MakeDirectories(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return InternalError(dir + ": cannot create directory: " + ec.message());
  return OkStatus();
}

Status CheckWritableDirectory(const std::string& dir) {
  auto fail = [&](int err) {
    const std::string message = dir + ": cannot write output here: " + std::strerror(err);
    return err == EACCES || err == EPERM ? Status(StatusCode::kPermissionDenied, message)
                                         : FailedPreconditionError(message);
  };
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return fail(ec.value());
  if (!std::filesystem::is_directory(dir, ec)) return fail(ENOTDIR);
  const std::string probe = dir + "/.qsearch-probe-" + std::to_string(::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail(errno);
  ::close(fd);
  ::unlink(probe.c_str());
  return OkStatus();
}

std::string ResolveRelativeTo(const std::string& base_file, const std::string& path) {
  std::filesystem::path p(path);
  if (p.is_absolute() || path.empty()) return path;
  return (std::filesystem::path(base_file).parent_path() / p).lexically_normal().string();
}

}  // namespace qs

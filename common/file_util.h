// Whole-file reads and atomic writes, with errors as Status.
#ifndef QS_COMMON_FILE_UTIL_H_
#define QS_COMMON_FILE_UTIL_H_

#include <string>

#include "common/status.h"

namespace qs {

// The file's bytes. NOT_FOUND if it does not exist; INVALID_ARGUMENT for a directory or anything
// not a regular file (a device, a pipe); PERMISSION_DENIED when it may not be read;
// RESOURCE_EXHAUSTED when it does not fit in memory; DATA_LOSS if reading fails.
StatusOr<std::string> ReadFileBytes(const std::string& path);

// Writes `bytes` to a temporary file beside `path`, flushes it, and renames it into place, so a
// reader sees either the old file or the whole new one. INTERNAL on any I/O failure.
Status WriteFileAtomically(const std::string& path, const std::string& bytes);

// Creates `dir` and its parents if missing.
Status MakeDirectories(const std::string& dir);

// `path` resolved against the directory of `base_file` unless it is absolute.
std::string ResolveRelativeTo(const std::string& base_file, const std::string& path);

}  // namespace qs

#endif  // QS_COMMON_FILE_UTIL_H_

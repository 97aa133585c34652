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

// Creates `dir` if missing and proves a file can be written there (a probe file, removed again),
// so that an output directory is checked before the work whose results go there.
// FAILED_PRECONDITION naming `dir` and the reason (not a directory, read-only, no space);
// PERMISSION_DENIED when the process may not write there.
Status CheckWritableDirectory(const std::string& dir);

// `path` resolved against the directory of `base_file` unless it is absolute.
std::string ResolveRelativeTo(const std::string& base_file, const std::string& path);

}  // namespace qs

#endif  // QS_COMMON_FILE_UTIL_H_

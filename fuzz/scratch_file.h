// A file per fuzzing process for parsers that read paths: each input is written over it.
#ifndef QS_FUZZ_SCRATCH_FILE_H_
#define QS_FUZZ_SCRATCH_FILE_H_

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace qs::fuzz {

// The path of this process's scratch file, holding `data` (in TMPDIR, else /tmp; removed when
// the process exits).
inline const std::string& WriteScratch(const uint8_t* data, size_t size) {
  static const std::string path = [] {
    const char* dir = std::getenv("TMPDIR");
    std::string p = std::string(dir && *dir ? dir : "/tmp") + "/qs-fuzz-" +
                    std::to_string(::getpid());
    std::atexit([] { std::remove(WriteScratch(nullptr, 0).c_str()); });
    return p;
  }();
  if (data != nullptr) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) std::abort();  // the machine, not the input: stop the run
    if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
    std::fclose(f);
  }
  return path;
}

}  // namespace qs::fuzz

#endif  // QS_FUZZ_SCRATCH_FILE_H_

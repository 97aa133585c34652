// Bytes a user could point the dataset reader at: an IDX file, plain or gzip-compressed (the
// reader streams both from a path, so each input is written to a scratch file first).
#include <cstddef>
#include <cstdint>

#include "core/dataset.h"
#include "fuzz/scratch_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)qs::core::ReadIdxFile(qs::fuzz::WriteScratch(data, size));
  return 0;
}

// Bytes a user could put in an image folder: JPEG and PNG decoding (libjpeg-turbo, libpng behind
// our error handlers), to gray or RGB as the first byte picks.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/image_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int64_t channels = data[0] % 2 == 0 ? 1 : 3;
  (void)qs::core::DecodeImage(std::string(reinterpret_cast<const char*>(data + 1), size - 1),
                              channels, "fuzz.img");
  return 0;
}

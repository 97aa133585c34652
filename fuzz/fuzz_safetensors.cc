// Bytes a client could upload as model weights: the safetensors reader, then every tensor it
// lists (the header's claims about dtypes, shapes and offsets are all attacker-chosen).
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = qs::core::SafetensorsFile::Parse(
      std::string(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
  if (!file.ok()) return 0;
  for (const auto& [name, entry] : file->entries()) (void)file->Tensor(name);
  return 0;
}

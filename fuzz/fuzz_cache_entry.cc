// What a shared Redis cache could hold under our keys: a chunked value's metadata hash (fields as
// HGETALL returns them) and a calibration checkpoint (fields plus raw bytes). Input layout:
// NUL-separated strings; for the checkpoint, "key=value" lines up to the first empty line, then
// the raw bytes.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "storage/chunked_cache.h"
#include "worker/model_session.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> fields;
  for (size_t pos = 0; pos <= text.size();) {
    size_t nul = text.find('\0', pos);
    if (nul == std::string::npos) nul = text.size();
    fields.push_back(text.substr(pos, nul - pos));
    pos = nul + 1;
  }
  (void)qs::storage::ChunkedCache::ParseLayout(fields);

  qs::worker::CachedCheckpoint entry;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    const std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (line.empty()) break;
    const size_t eq = line.find('=');
    if (eq != std::string::npos) entry.fields[line.substr(0, eq)] = line.substr(eq + 1);
  }
  if (pos < text.size()) entry.bytes = text.substr(pos);
  (void)qs::worker::DecodeCheckpoint(entry, torch::kFloat32, {2, 3});
  (void)qs::worker::DecodeCheckpoint(entry, torch::kFloat16, {1, 4});
  return 0;
}

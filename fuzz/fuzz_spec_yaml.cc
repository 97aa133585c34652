// Bytes a user could save as a YAML spec: YamlToJson, then the spec parser.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/job_spec.h"
#include "server/spec_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = qs::server::YamlToJson(std::string(reinterpret_cast<const char*>(data), size));
  if (j.ok()) (void)qs::ParseJobSpec(*j, "");
  return 0;
}

// Reading a job spec from a file in JSON or YAML (chosen by the extension: .yaml / .yml).
//
//   QS_ASSIGN_OR_RETURN(JobSpec spec, LoadSpecFile("job.yaml"));
#ifndef QS_SERVER_SPEC_FILE_H_
#define QS_SERVER_SPEC_FILE_H_

#include <string>

#include <nlohmann/json.hpp>

#include "common/job_spec.h"
#include "common/status.h"

namespace qs::server {

// A spec file larger than this is refused before it is read (a spec is a few KiB).
inline constexpr size_t kMaxSpecBytes = size_t{4} << 20;

// YAML text as the equivalent JSON: mappings to objects, sequences to arrays, plain scalars to
// null/bool/integer/number when they read as one, quoted scalars always to strings.
// INVALID_ARGUMENT (with line and column) for malformed YAML, and for documents that nest deeper
// than 64 levels or expand (through aliases) to more than 100,000 nodes.
StatusOr<nlohmann::json> YamlToJson(const std::string& text);

// Parses and validates the spec in `path` (JSON, or YAML for .yaml/.yml).
StatusOr<JobSpec> LoadSpecFile(const std::string& path);

}  // namespace qs::server

#endif  // QS_SERVER_SPEC_FILE_H_

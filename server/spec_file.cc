#include "server/spec_file.h"

#include <cstdlib>
#include <filesystem>
#include <new>

#include <yaml-cpp/yaml.h>

#include "common/file_util.h"
#include "common/strings.h"

namespace qs::server {
namespace {

using nlohmann::json;

json Scalar(const YAML::Node& node) {
  const std::string& text = node.Scalar();
  if (node.Tag() == "!") return text;  // quoted: always a string
  if (text == "~" || text == "null" || text == "Null" || text == "NULL" || text.empty()) {
    return nullptr;
  }
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  char* end = nullptr;
  errno = 0;
  const long long i = std::strtoll(text.c_str(), &end, 10);
  if (errno == 0 && end && *end == '\0') return i;
  const double d = std::strtod(text.c_str(), &end);
  if (end && *end == '\0') return d;
  return text;
}

// Aliases make a YAML document a graph: one that refers to itself is infinitely deep, and a few
// hundred bytes of nested aliases expand to gigabytes ("billion laughs"). A spec is a small tree,
// so its expansion is bounded in depth and in nodes.
constexpr int kMaxYamlDepth = 64;
constexpr int64_t kMaxYamlNodes = 100000;

Status Convert(const YAML::Node& node, int depth, int64_t* nodes, json* out) {
  if (depth > kMaxYamlDepth) {
    return InvalidArgumentError("YAML nests deeper than " + std::to_string(kMaxYamlDepth) +
                                " levels (a self-referencing alias?)");
  }
  if (++*nodes > kMaxYamlNodes) {
    return InvalidArgumentError("YAML expands to more than " + std::to_string(kMaxYamlNodes) +
                                " nodes (aliases expanding without bound?)");
  }
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      *out = nullptr;
      return OkStatus();
    case YAML::NodeType::Scalar:
      *out = Scalar(node);
      return OkStatus();
    case YAML::NodeType::Sequence: {
      *out = json::array();
      for (const auto& item : node) {
        json v;
        QS_RETURN_IF_ERROR(Convert(item, depth + 1, nodes, &v));
        out->push_back(std::move(v));
      }
      return OkStatus();
    }
    case YAML::NodeType::Map: {
      *out = json::object();
      for (const auto& item : node) {
        if (!item.first.IsScalar()) return InvalidArgumentError("YAML mapping keys must be scalars");
        json v;
        QS_RETURN_IF_ERROR(Convert(item.second, depth + 1, nodes, &v));
        (*out)[item.first.Scalar()] = std::move(v);
      }
      return OkStatus();
    }
  }
  *out = nullptr;
  return OkStatus();
}

}  // namespace

StatusOr<json> YamlToJson(const std::string& text) {
  if (text.size() > kMaxSpecBytes) {
    return InvalidArgumentError("a spec of " + std::to_string(text.size()) +
                                " bytes is over the limit of " + std::to_string(kMaxSpecBytes));
  }
  try {
    json out;
    int64_t nodes = 0;
    QS_RETURN_IF_ERROR(Convert(YAML::Load(text), 0, &nodes, &out));
    return out;
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(std::string("malformed YAML: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("out of memory reading YAML");
  }
}

StatusOr<JobSpec> LoadSpecFile(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (!ec && size > kMaxSpecBytes) {
    return InvalidArgumentError(path + ": a spec of " + std::to_string(size) +
                                " bytes is over the limit of " + std::to_string(kMaxSpecBytes));
  }
  if (!EndsWith(path, ".yaml") && !EndsWith(path, ".yml")) return LoadJobSpec(path);
  QS_ASSIGN_OR_RETURN(std::string text, ReadFileBytes(path));
  auto j = YamlToJson(text);
  if (!j.ok()) return j.status().WithContext(path);
  auto spec = ParseJobSpec(*j, path);
  if (!spec.ok()) return spec.status().WithContext(path);
  return spec;
}

}  // namespace qs::server

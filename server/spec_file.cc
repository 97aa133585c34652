#include "server/spec_file.h"

#include <cstdlib>

#include <yaml-cpp/yaml.h>

#include "common/file_util.h"

namespace qs::server {
namespace {

using nlohmann::json;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

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

json Convert(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Scalar:
      return Scalar(node);
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& item : node) a.push_back(Convert(item));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& item : node) o[item.first.as<std::string>()] = Convert(item.second);
      return o;
    }
  }
  return nullptr;
}

}  // namespace

StatusOr<json> YamlToJson(const std::string& text) {
  try {
    return Convert(YAML::Load(text));
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(std::string("malformed YAML: ") + e.what());
  }
}

StatusOr<JobSpec> LoadSpecFile(const std::string& path) {
  if (!EndsWith(path, ".yaml") && !EndsWith(path, ".yml")) return LoadJobSpec(path);
  QS_ASSIGN_OR_RETURN(std::string text, ReadFileBytes(path));
  auto j = YamlToJson(text);
  if (!j.ok()) return j.status().WithContext(path);
  auto spec = ParseJobSpec(*j, path);
  if (!spec.ok()) return spec.status().WithContext(path);
  return spec;
}

}  // namespace qs::server

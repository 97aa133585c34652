// Typed, checked reads of JSON fields with errors that name the field. Shared by every parser of
// user-written JSON (recipes, job specs).
#ifndef QS_COMMON_JSON_FIELDS_H_
#define QS_COMMON_JSON_FIELDS_H_

#include <limits>
#include <set>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"

namespace qs {

// The parsed JSON document in `path`. NOT_FOUND for a missing file, INVALID_ARGUMENT (naming the
// file) for malformed JSON.
inline StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  QS_ASSIGN_OR_RETURN(std::string text, ReadFileBytes(path));
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(path + ": malformed JSON: " + e.what());
  }
}

// INVALID_ARGUMENT if `j` is not an object or has a key outside `allowed`.
inline Status CheckKeys(const nlohmann::json& j, const std::set<std::string>& allowed,
                        const std::string& where) {
  if (!j.is_object()) return InvalidArgumentError(where + " must be a JSON object");
  for (const auto& item : j.items()) {
    if (!allowed.count(item.key())) {
      return InvalidArgumentError("unknown field '" + item.key() + "' in " + where);
    }
  }
  return OkStatus();
}

// Reads j[key] into *out when present (absent: *out keeps its default). Integers must be JSON
// integers within T's range; other types must convert exactly.
template <typename T>
Status ReadField(const nlohmann::json& j, const char* key, T* out) {
  auto it = j.find(key);
  if (it == j.end()) return OkStatus();
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (!it->is_number_integer()) {
      return InvalidArgumentError(std::string("field '") + key + "' must be an integer");
    }
    if (it->is_number_unsigned() ? it->template get<uint64_t>() >
                                       static_cast<uint64_t>(std::numeric_limits<T>::max())
                                 : (it->template get<int64_t>() < std::numeric_limits<T>::min() ||
                                    it->template get<int64_t>() > std::numeric_limits<T>::max())) {
      return InvalidArgumentError(std::string("field '") + key + "' is out of range");
    }
  }
  try {
    *out = it->template get<T>();
  } catch (const nlohmann::json::exception&) {
    return InvalidArgumentError(std::string("field '") + key + "' has the wrong type (" +
                                it->type_name() + ")");
  }
  return OkStatus();
}

// Reads a string field and maps it through `parse` (a StatusOr<E>(const std::string&)).
template <typename E, typename ParseFn>
Status ReadEnumField(const nlohmann::json& j, const char* key, ParseFn parse, E* out) {
  if (!j.contains(key)) return OkStatus();
  std::string text;
  QS_RETURN_IF_ERROR(ReadField(j, key, &text));
  auto v = parse(text);
  if (!v.ok()) return v.status().WithContext(std::string("field '") + key + "'");
  *out = *v;
  return OkStatus();
}

// Reads an array field, each element through `read_one` (Status(const json&, T*)).
template <typename T, typename ReadOne>
Status ReadArrayField(const nlohmann::json& j, const char* key, ReadOne read_one,
                      std::vector<T>* out) {
  auto it = j.find(key);
  if (it == j.end()) return OkStatus();
  if (!it->is_array() || it->empty()) {
    return InvalidArgumentError(std::string("field '") + key + "' must be a non-empty array");
  }
  out->clear();
  for (size_t i = 0; i < it->size(); ++i) {
    T v{};
    Status s = read_one((*it)[i], &v);
    if (!s.ok()) return s.WithContext(std::string("field '") + key + "[" + std::to_string(i) + "]'");
    out->push_back(v);
  }
  return OkStatus();
}

}  // namespace qs

#endif  // QS_COMMON_JSON_FIELDS_H_

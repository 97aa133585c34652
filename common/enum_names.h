// Name tables for enums: one table per enum gives both directions, and parse errors list the
// accepted names.
//
//   constexpr std::pair<const char*, Color> kColors[] = {{"red", Color::kRed}, ...};
//   const char* name = EnumName(Color::kRed, kColors);
//   QS_ASSIGN_OR_RETURN(Color c, ParseEnum(text, "color", kColors));
#ifndef QS_COMMON_ENUM_NAMES_H_
#define QS_COMMON_ENUM_NAMES_H_

#include <string>
#include <utility>

#include "common/status.h"

namespace qs {

// The value named `s`, or INVALID_ARGUMENT listing the names `what` accepts.
template <typename E, size_t N>
StatusOr<E> ParseEnum(const std::string& s, const char* what,
                      const std::pair<const char*, E> (&table)[N]) {
  std::string options;
  for (const auto& [name, value] : table) {
    if (s == name) return value;
    options += options.empty() ? name : std::string(", ") + name;
  }
  return InvalidArgumentError("unknown " + std::string(what) + " '" + s + "' (expected one of " +
                              options + ")");
}

// The name of `v`, or "?" if the table lacks it.
template <typename E, size_t N>
const char* EnumName(E v, const std::pair<const char*, E> (&table)[N]) {
  for (const auto& [name, value] : table) {
    if (v == value) return name;
  }
  return "?";
}

}  // namespace qs

#endif  // QS_COMMON_ENUM_NAMES_H_

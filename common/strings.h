// Small string predicates shared by the modules.
#ifndef QSEARCH_COMMON_STRINGS_H_
#define QSEARCH_COMMON_STRINGS_H_

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>

namespace qs {

inline bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The integer `text` spells in decimal (an optional '-' and digits, nothing else), or nullopt
// when it spells none or lies outside int64.
inline std::optional<int64_t> ParseInt64(const std::string& text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

}  // namespace qs

#endif  // QSEARCH_COMMON_STRINGS_H_

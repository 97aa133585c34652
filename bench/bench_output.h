// Shared by the benchmarks: report failures and emit the result JSON.
#ifndef QS_BENCH_BENCH_OUTPUT_H_
#define QS_BENCH_BENCH_OUTPUT_H_

#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"

namespace qs::bench {

// Prints `s` prefixed with the benchmark's name; returns the exit code 1.
inline int Fail(const char* bench, const Status& s) {
  std::fprintf(stderr, "%s: %s\n", bench, s.ToString().c_str());
  return 1;
}

// Prints `result` on stdout and, when `out` is set, writes it there too; returns the exit code.
inline int Emit(const char* bench, const nlohmann::json& result, const std::string& out) {
  const std::string text = result.dump(2);
  std::printf("%s\n", text.c_str());
  if (out.empty()) return 0;
  Status s = WriteFileAtomically(out, text + "\n");
  return s.ok() ? 0 : Fail(bench, s);
}

}  // namespace qs::bench

#endif  // QS_BENCH_BENCH_OUTPUT_H_

// `qsearch run`: the whole search embedded in one process, with in-process storage.
//
//   qsearch run --spec job.json --out out/job [--cache DIR] [--workers N] [--json]
#ifndef QS_SERVER_RUN_COMMAND_H_
#define QS_SERVER_RUN_COMMAND_H_

#include <string>

#include "scheduler/search.h"

namespace qs::server {

struct RunArgs {
  std::string spec;
  std::string out;
  std::string cache;   // evaluation cache directory; empty: the default (see DefaultCacheDir)
  int workers = 0;     // evaluation workers; 0 picks (core::PlanThreads)
  int threads = 0;     // LibTorch/BLAS threads per worker; 0: the cores' share
  std::string exports;  // formats written into out/export after the search (comma-separated)
  bool json_output = false;
};

// $QS_CACHE_DIR, else $XDG_CACHE_HOME/qsearch, else $HOME/.cache/qsearch, else .qsearch-cache.
std::string DefaultCacheDir();

// Runs the search and writes DIR/{recipe.json, metrics.json, pareto.json, weights.safetensors,
// report.html}, and with `exports` the searched recipe exported into DIR/export
// (server/export_command.h). Returns the process exit code (0 ok, 1 failed with the reason on stderr).
int RunSearchCommand(const RunArgs& args);

}  // namespace qs::server

#endif  // QS_SERVER_RUN_COMMAND_H_

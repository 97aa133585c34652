// The service's subcommands: `scheduler` and `worker` (processes), and the clients `submit`,
// `watch`, `get`, `list`, `cancel`, `fetch`. Settings come from flags, then QSEARCH_* environment
// variables, then a YAML file named by --config (keys are the flag names without dashes), then
// defaults.
#ifndef QS_SERVER_SERVICE_COMMANDS_H_
#define QS_SERVER_SERVICE_COMMANDS_H_

#include <functional>

#include <CLI/CLI.hpp>

namespace qs::server {

// Adds the subcommands to `app`; the returned function runs the one parsed (or returns -1 when
// none of them was).
std::function<int()> AddServiceCommands(CLI::App& app, int argc, char** argv);

}  // namespace qs::server

#endif  // QS_SERVER_SERVICE_COMMANDS_H_

// The `qsearch` command line: one binary, one subcommand per task.
//
//   qsearch quantize --config C --weights W --calib fashion-mnist:train --eval fashion-mnist:test
//                    --recipe w4a8:rtn --out DIR
//   qsearch eval --config C --weights W --data fashion-mnist:test
//   qsearch inspect --config C --weights W
#ifndef QS_SERVER_COMMANDS_H_
#define QS_SERVER_COMMANDS_H_

namespace qs::server {

// Parses argv, runs the chosen subcommand, and returns the process exit code: 0 on success, 1 when
// the command failed (the reason printed on stderr), 2 for a usage error.
int RunCli(int argc, char** argv);

}  // namespace qs::server

#endif  // QS_SERVER_COMMANDS_H_

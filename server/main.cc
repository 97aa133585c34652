#include "server/commands.h"

int main(int argc, char** argv) { return qs::server::RunCli(argc, argv); }

#!/usr/bin/env bash
# Installs what is missing (scripts/setup.sh), then configures and builds qsearch into build/.
# Extra arguments go to cmake's configure step, e.g. -DQS_BUILD_TESTS=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$jobs"

#!/usr/bin/env bash
# Builds qsearch with clang under AddressSanitizer and UndefinedBehaviorSanitizer into
# build-asan/: the libraries, the qsearch binary, the unit tests and the libFuzzer targets of
# fuzz/ (-DQS_FUZZ=ON). Benchmarks and tools are left out. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DQS_FUZZ=ON -DQS_BUILD_TESTS=ON -DQS_BUILD_BENCH=OFF -DQS_BUILD_TOOLS=OFF >/dev/null
cmake --build build-asan -j "$(nproc 2>/dev/null || echo 2)"

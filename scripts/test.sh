#!/usr/bin/env bash
# Installs what is missing, builds everything with tests, and runs the whole suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh -DQS_BUILD_TESTS=ON
cd build
ctest --output-on-failure --timeout 900 -j 2

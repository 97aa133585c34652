#!/usr/bin/env bash
# Installs what is missing, builds everything with tests, runs the whole suite with ctest, then a
# short run of each fuzz target under ASan and UBSan (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh -DQS_BUILD_TESTS=ON
(cd build && ctest --output-on-failure --timeout 900 -j 2)
scripts/fuzz.sh "${QS_FUZZ_SECONDS:-30}"

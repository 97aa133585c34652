#!/usr/bin/env bash
# Installs what is missing, builds everything with tests and runs the whole suite with ctest;
# then the same unit and integration suites built with clang under ASan and UBSan
# (scripts/test_sanitized.sh, into build-asan/), then a short run of each fuzz target
# (scripts/fuzz.sh, QS_FUZZ_SECONDS each, default 12).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh -DQS_BUILD_TESTS=ON
(cd build && ctest --output-on-failure --timeout 900 -j 2)
scripts/test_sanitized.sh
QS_FUZZ_SKIP_BUILD=1 scripts/fuzz.sh "${QS_FUZZ_SECONDS:-12}"

#!/usr/bin/env bash
# Builds build-asan/ (scripts/build_sanitized.sh) and runs the unit and integration suites there
# under AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer: any report fails its test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build_sanitized.sh
source scripts/sanitizer_env.sh
(cd build-asan && ctest --output-on-failure --timeout 1800 -j 2)

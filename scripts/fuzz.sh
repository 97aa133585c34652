#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang under ASan and UBSan (into build-fuzz/) and runs
# each for SECONDS (default 30) over a scratch copy of its seed corpus in fuzz/corpus/, with a
# 10 s limit per input and 1 GiB of memory. Exits non-zero when a target finds a crash, a leak,
# a hang or an out-of-memory input; libFuzzer leaves the input in build-fuzz/findings/.
#   scripts/fuzz.sh          # CI: a short run of each target
#   scripts/fuzz.sh 3600     # an hour each
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
CXX=clang++ cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$(nproc 2>/dev/null || echo 2)"
mkdir -p build-fuzz/findings
status=0
for target in fuzz_spec_json:spec fuzz_spec_yaml:yaml; do
  name=${target%%:*}
  corpus=${target##*:}
  scratch=$(mktemp -d)
  cp fuzz/corpus/"$corpus"/* "$scratch"/
  echo "fuzz: $name for ${seconds}s" >&2
  if ! build-fuzz/"$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
      -max_len=16384 -artifact_prefix=build-fuzz/findings/"$name"- -print_final_stats=1 \
      "$scratch" fuzz/corpus/"$corpus" >build-fuzz/"$name".log 2>&1; then
    echo "fuzz: $name found a problem; see build-fuzz/$name.log and build-fuzz/findings/" >&2
    tail -30 build-fuzz/"$name".log >&2
    status=1
  else
    grep -E '^stat::number_of_executed_units' build-fuzz/"$name".log >&2 || true
  fi
  rm -rf "$scratch"
done
exit $status

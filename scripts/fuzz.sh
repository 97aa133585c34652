#!/usr/bin/env bash
# Runs each libFuzzer target of fuzz/ (built into build-asan/ with clang under ASan and UBSan by
# scripts/build_sanitized.sh) for SECONDS (default 30) over a scratch copy of its seed corpus in
# fuzz/corpus/, with a 10 s limit per input and 1 GiB of memory. Exits non-zero when a target
# finds a crash, a leak, a hang or an out-of-memory input; libFuzzer leaves the input in
# build-asan/fuzz/findings/. Prints each target's executed inputs.
#   scripts/fuzz.sh          # CI: a short run of each target
#   scripts/fuzz.sh 3600     # an hour each
#   QS_FUZZ_SKIP_BUILD=1 scripts/fuzz.sh 60   # reuse build-asan/ as it is
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
[[ -n "${QS_FUZZ_SKIP_BUILD:-}" ]] || scripts/build_sanitized.sh
source scripts/sanitizer_env.sh
# The 1 GiB bound is on what inputs cost, not on what ASan keeps of earlier ones: its quarantine
# of freed memory (256 MiB by default) is cut to 32 MiB, and freed pages go back to the system.
export ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=32:allocator_release_to_os_interval_ms=500"
out=build-asan/fuzz
mkdir -p "$out/findings"
status=0
for target in fuzz_json:json fuzz_spec_yaml:yaml fuzz_safetensors:safetensors fuzz_idx:idx \
              fuzz_image:image fuzz_cache_entry:cache fuzz_grpc_request:grpc; do
  name=${target%%:*}
  corpus=${target##*:}
  scratch=$(mktemp -d)
  cp fuzz/corpus/"$corpus"/* "$scratch"/
  if ! TMPDIR="$scratch" "$out/$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
      -max_len=16384 -artifact_prefix="$out/findings/$name-" -print_final_stats=1 \
      "$scratch" fuzz/corpus/"$corpus" >"$out/$name.log" 2>&1; then
    echo "fuzz: $name found a problem; see $out/$name.log and $out/findings/" >&2
    tail -40 "$out/$name.log" >&2
    status=1
  else
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$name.log")
    peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "$out/$name.log")
    echo "fuzz: $name ${seconds}s: ${runs:-?} inputs, peak RSS ${peak:-?} MB" >&2
  fi
  rm -rf "$scratch"
done
exit $status

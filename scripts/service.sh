#!/usr/bin/env bash
# The service on this machine, in one command: installs what is missing and builds, then starts a
# Redis (append-only), a scheduler and two workers on loopback, submits the fixture job
# (examples/fixture_search.json), follows it to the end and fetches its files into out/service/.
# Everything runs under out/service-run/ (logs there); the processes stop when this script ends,
# unless KEEP=1, which leaves them serving (the script prints how to stop them).
#   scripts/service.sh
#   SPEC=my_job.json KEEP=1 scripts/service.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh -DQS_BUILD_TESTS=OFF
run=out/service-run
mkdir -p "$run"
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
grpc_port=$(free_port)
metrics_port=$(free_port)
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
if [[ "${KEEP:-0}" != 1 ]]; then trap stop EXIT; fi

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly yes --dir "$run" \
  --logfile redis.log &
pids+=($!)
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
common=(--redis "redis://127.0.0.1:$redis_port/0" --blob-dir "$run/blobs")
build/qsearch scheduler "${common[@]}" --listen "127.0.0.1:$grpc_port" \
  --metrics-listen "127.0.0.1:$metrics_port" >"$run/scheduler.log" 2>&1 &
pids+=($!)
for i in 1 2; do
  build/qsearch worker "${common[@]}" --listen "" --worker-threads 1 >"$run/worker$i.log" 2>&1 &
  pids+=($!)
done
until grep -q "serving on" "$run/scheduler.log" 2>/dev/null; do sleep 0.1; done
echo "service: scheduler on 127.0.0.1:$grpc_port (metrics http://127.0.0.1:$metrics_port/metrics)," \
  "redis on $redis_port, two workers; logs in $run/" >&2

job=$(build/qsearch submit --server "127.0.0.1:$grpc_port" --spec "${SPEC:-examples/fixture_search.json}")
echo "service: submitted $job" >&2
status=0
build/qsearch watch --server "127.0.0.1:$grpc_port" "$job" || status=$?
if [[ $status -eq 0 ]]; then
  build/qsearch fetch --server "127.0.0.1:$grpc_port" "$job" --out out/service
fi
if [[ "${KEEP:-0}" == 1 ]]; then
  echo "service: still serving; try: build/qsearch list --server 127.0.0.1:$grpc_port" >&2
  echo "service: stop with: kill ${pids[*]}" >&2
fi
exit $status

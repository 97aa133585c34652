#!/usr/bin/env bash
# The main job on the bundled model: install what is missing, build, quantize the fixture ViT with
# fixed uniform recipes (RTN, GPTQ, ERQ) and print FP32 vs quantized top-1 on the Fashion-MNIST test
# set.
#   scripts/run.sh                 # all 10,000 test images
#   EVAL_LIMIT=2000 scripts/run.sh # a quicker look
#   RECIPES="w4a4:rtn w4a4:erq" scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh -DQS_BUILD_TESTS=OFF
echo "quantizing the fixture ViT (tests/data/fixture); outputs under ${OUT_DIR:-out/table}/" >&2
# shellcheck disable=SC2086
scripts/recipe_table.sh ${RECIPES:-w8a8:rtn w6a6:rtn w4a8:rtn w4a4:rtn w4a4:gptq w4a4:erq}

#!/usr/bin/env bash
# Quantizes the fixture (or $CONFIG/$WEIGHTS) with each recipe given and prints a markdown table of
# top-1, agreement with FP32, output KL and the time the quantization (calibration + weight method)
# took. Expects build/qsearch (scripts/build.sh).
#   scripts/recipe_table.sh w8a8 w4a4:rtn w4a4:gptq w4a4:erq
#   EVAL_LIMIT=2000 CALIB_COUNT=256 SEED=0 scripts/recipe_table.sh w4a8
#   EXTRA="--quantize-edges" scripts/recipe_table.sh w4a8:erq   # patch embed and head too
# The calibration draw is SAMPLING (default uniform: the draw docs/results.md's tables were made
# with, before qsearch balanced classes; SAMPLING=balanced is qsearch's default).
set -euo pipefail
cd "$(dirname "$0")/.."
config=${CONFIG:-tests/data/fixture/config.json}
weights=${WEIGHTS:-tests/data/fixture/model.safetensors}
out=${OUT_DIR:-out/table}
mkdir -p "$out"
for r in "$@"; do
  build/qsearch quantize --config "$config" --weights "$weights" \
    --calib "${CALIB:-fashion-mnist:train}" --eval "${EVAL:-fashion-mnist:test}" \
    --eval-limit "${EVAL_LIMIT:-0}" --calib-count "${CALIB_COUNT:-256}" --seed "${SEED:-0}" \
    --sampling "${SAMPLING:-uniform}" \
    --recipe "$r" --out "$out/${r//:/_}" ${EXTRA:-} --json >"$out/${r//:/_}.json"
done
python3 - "$out" "$@" <<'PY'
import json, sys
out, recipes = sys.argv[1], sys.argv[2:]
rows = [(r, json.load(open(f"{out}/{r.replace(':', '_')}.json"))) for r in recipes]
first = rows[0][1]
print(f"{first['eval']['images']} images of {first['eval']['source']}; calibration "
      f"{first['calibration']['count']} images of {first['calibration']['source']}, seed "
      f"{first['calibration']['seed']}; one FP32 evaluation pass took "
      f"{first['seconds']['fp32_eval']:.2f} s")
print()
print("| recipe | avg weight bits | top-1 | Δ vs FP32 | agreement | output KL | quantize time (s) |")
print("|---|---|---|---|---|---|---|")
print(f"| fp32 | 32 | {100 * first['fp32_top1']:.2f}% | | | | |")
for r, m in rows:
    print(f"| {r} | {m['avg_weight_bits']:.3f} | {100 * m['quant_top1']:.2f}% | {100 * (m['quant_top1'] - m['fp32_top1']):+.2f} | "
          f"{100 * m['top1_agreement']:.2f}% | {m['output_kl']:.4f} | {m['seconds']['quantize']:.2f} |")
PY

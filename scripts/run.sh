#!/usr/bin/env bash
# The main job on the bundled model: install what is missing, build, and run the embedded
# mixed-precision search on the fixture ViT (examples/fixture_search.json: RTN/GPTQ/ERQ at 2-8
# weight bits, 8-bit activations, 4 average weight bits, at most one point of top-1 lost), then
# print the result. Outputs land in out/search/ (report.html is the page to open).
#   scripts/run.sh
#   SPEC=my_job.json OUT_DIR=out/my_job scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh -DQS_BUILD_TESTS=OFF
build/qsearch run --spec "${SPEC:-examples/fixture_search.json}" --out "${OUT_DIR:-out/search}"

#!/usr/bin/env bash
# The main job: prepare (tokenize, numericalize, cache) the IMDb sample and print its summary.
# Data comes from ../shared/data when present, otherwise it is downloaded (checksummed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ulmfit prepare imdb_sample --label-col label "$@"

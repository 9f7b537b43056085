#!/usr/bin/env bash
# The test suite: lint, then pytest (real data from ../shared/data; those tests skip, saying
# so, where it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
ULMFIT_EXTRAS="[test]" bash scripts/setup.sh
.venv/bin/ruff check ulmfit tests bench
.venv/bin/ruff format --check ulmfit tests bench
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# The test suite: lint, then pytest (real data from ../shared/data; those tests skip, saying
# so, where it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
ULMFIT_EXTRAS="[test]" bash scripts/setup.sh
# tests/test_page.py drives a real headless Chromium: install Debian's chromium and its
# chromedriver where apt-get and root (or passwordless sudo) allow; elsewhere that test skips,
# saying why.
have_browser() {
  command -v chromedriver >/dev/null 2>&1 \
    && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
}
if ! have_browser && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then as_root=""; elif sudo -n true 2>/dev/null; then as_root="sudo -n"; else as_root=no; fi
  if [ "$as_root" != no ]; then
    { $as_root apt-get update -qq \
      && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >/dev/null 2>&1 || echo "scripts/test.sh: could not install chromium; the page test will skip" >&2
  fi
fi
.venv/bin/ruff check ulmfit tests bench
.venv/bin/ruff format --check ulmfit tests bench
exec .venv/bin/python -m pytest -q "$@"

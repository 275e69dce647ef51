#!/usr/bin/env bash
# Sets up a virtual environment (on the first run) and runs the linter and the test suite.
#
#   bash scripts/test.sh [pytest arguments]
#
# Environment: see scripts/setup.sh (MUDPT_VENV, MUDPT_PINS, PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
MUDPT_EXTRAS=test
# shellcheck disable=SC1091
. scripts/setup.sh

ruff check mudpt_peft tests examples benchmarks

set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"

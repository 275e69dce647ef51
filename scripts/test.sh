#!/usr/bin/env bash
# Sets up a virtual environment (on the first run) and runs the linter and the test suite.
#
#   bash scripts/test.sh [pytest arguments]
#
# Environment:
#   MUDPT_VENV   the virtual environment to use or create (default: .venv)
#   MUDPT_PINS   extra requirements installed with the package, e.g. "peft==0.21.0 transformers==5.20.0"
#   PYTHON       the interpreter that creates the environment (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${MUDPT_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip_install() { python -m pip install --quiet --disable-pip-version-check "$@"; }
# torch first, pinned: on this project's machines 2.13.0 is a local CPU wheel; an open range would pull a CUDA build
pip_install "torch==2.13.0"
# shellcheck disable=SC2086
pip_install -e ".[test]" ${MUDPT_PINS:-}
python -c "import torch, peft, transformers; print(f'torch {torch.__version__}, peft {peft.__version__}, transformers {transformers.__version__}')"

ruff check mudpt_peft tests

set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"

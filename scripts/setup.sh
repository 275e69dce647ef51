#!/usr/bin/env bash
# Sourced by the other scripts: creates the virtual environment on the first run, activates it and installs the
# package with the extras named in MUDPT_EXTRAS (default "test"), plus MUDPT_PINS.
#
# Environment:
#   MUDPT_VENV    the virtual environment to use or create (default: .venv)
#   MUDPT_EXTRAS  extras of the package to install (default: test)
#   MUDPT_PINS    extra requirements installed with the package, e.g. "peft==0.21.0 transformers==5.20.0"
#   PYTHON        the interpreter that creates the environment (default: python3)
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
pip_install -e ".[${MUDPT_EXTRAS:-test}]" ${MUDPT_PINS:-}
python -c "import torch, peft, transformers; print(f'torch {torch.__version__}, peft {peft.__version__}, transformers {transformers.__version__}')"

#!/usr/bin/env bash
# Builds the documentation site (mkdocs-material + mkdocstrings, configured in mkdocs.yml) into site/, in strict mode:
# any warning (a broken link or anchor, a docstring the parser cannot read) fails the build. Sets up the virtual
# environment on the first run and installs the package's `docs` extra into it.
#
#   bash scripts/docs.sh [more mkdocs build arguments]
#
# Live preview with reload, after a first run: . .venv/bin/activate && mkdocs serve
# Environment: see scripts/setup.sh (MUDPT_VENV, MUDPT_PINS, PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
MUDPT_EXTRAS=docs
# shellcheck disable=SC1091
. scripts/setup.sh

# NO_MKDOCS_2_WARNING: silences mkdocs-material's banner about mkdocs 2, which is not used here
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir site "$@"

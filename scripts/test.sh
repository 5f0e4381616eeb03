#!/usr/bin/env bash
# Set up, then run the whole test suite (lint and type checks first, pytest last).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"

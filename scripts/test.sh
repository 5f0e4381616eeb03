#!/usr/bin/env bash
# Set up, then run the whole test suite (lint and type checks first, pytest last).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/mypy
# Two workers, whole files each (module fixtures stay shared): most tests wait on sockets, brokers and child
# processes, so two at once take about half the time on two cores (measured in CI: 12 m 35 s -> 6 m 40 s). Ports are handed
# out per worker (simulators/broker.py free_port). GATEWAY_TEST_WORKERS=0 runs everything in this one process.
# Tests marked solo judge what a loaded daemon did in time; they run alone afterwards.
workers=${GATEWAY_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
    exec .venv/bin/pytest -q "$@"
fi
status=0
.venv/bin/pytest -q -n "$workers" --dist loadfile -m "not solo" "$@" || status=$?
[ "$status" = 5 ] && status=0  # 5: nothing selected (the paths given hold only solo tests)
solo=0
.venv/bin/pytest -q -m solo "$@" || solo=$?
[ "$solo" = 5 ] && solo=0
[ "$status" = 0 ] && status=$solo
exit "$status"

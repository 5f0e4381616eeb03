#!/usr/bin/env bash
# Set up, then run the live demo: simulated meters -> the gateway daemon -> a local Mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/gateway demo "$@"

#!/usr/bin/env bash
# Set up, then run the live demo: simulated meters -> the gateway daemon -> a local Mosquitto.
#   scripts/demo.sh --camera   adds a lobby camera with on-device face recognition and fall detection
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
    *" --camera "*) scripts/setup.sh --vision ;;
    *) scripts/setup.sh ;;
esac
exec .venv/bin/gateway demo "$@"

#!/usr/bin/env bash
# Set up a development checkout on a fresh Debian / Raspberry Pi OS box: system packages (when missing), a virtualenv
# in .venv and the gateway package in it, editable. Idempotent; safe to run again. (A production install is
# scripts/install.sh: a service user, a non-editable release, the unit.)
#   scripts/setup.sh          what the demo and a production install need
#   scripts/setup.sh --vision plus on-device vision (ONNX Runtime, LiteRT, OpenCV; ~150 MB of wheels)
#   scripts/setup.sh --test   plus what the test suite needs (socat, pytest, ruff, mypy, the vision stack, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_vision=0
for arg in "$@"; do
    case "$arg" in
        --test) want_test=1 ;;
        --vision) want_vision=1 ;;
        *) echo "setup: unknown option $arg (use --test or --vision)" >&2; exit 2 ;;
    esac
done

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

packages=()
have mosquitto || packages+=(mosquitto)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
if [ "$want_test" = 1 ]; then
    have socat || packages+=(socat)
    # libfaketime: the chaos suite moves the daemon's wall clock with it (its clock-jump scenario)
    [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ -e /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 ] \
        || packages+=(faketime)
    # a real Chinese font, to render the licence plates the plate tests read
    [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || packages+=(fonts-wqy-microhei)
    # Debian's headless browser: the status-page test drives it through Playwright (no browser download)
    have chromium || packages+=(chromium)
    # tests/test_install.py installs with Debian's own Python, as on a Pi (its venv module is python3-venv)
    /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
fi

if [ ${#packages[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
    fi
    if [ "$sudo" = "none" ]; then
        echo "setup: cannot install ${packages[*]} (not root, no sudo); continuing without them" >&2
    else
        echo "setup: installing ${packages[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        if ! $sudo apt-get install -y -qq "${packages[@]}" </dev/null >/dev/null 2>&1; then
            $sudo apt-get update -qq </dev/null >/dev/null 2>&1 || true
            $sudo apt-get install -y -qq "${packages[@]}" </dev/null >/dev/null 2>&1 \
                || echo "setup: could not install ${packages[*]}; continuing without them" >&2
        fi
    fi
fi

python3 - <<'PY' || { echo "setup: Python 3.11 or newer is needed" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

[ -x .venv/bin/python ] || python3 -m venv .venv
# Every dependency from a hash-pinned lock (scripts/lock.sh writes them), the versions a production install gets
# (scripts/install.sh); then this checkout, editable, with nothing more resolved.
lock=requirements/gateway.txt
[ "$want_vision" = 1 ] && lock=requirements/vision.txt
[ "$want_test" = 1 ] && lock=requirements/test.txt
.venv/bin/python -m pip install --disable-pip-version-check -q --require-hashes -r "$lock" -r requirements/build.txt
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
# Sparkplug B's protobuf module (the Eclipse Tahu sparkplug_b.proto, generated) as pysparkplug ships it: pinned by
# hash and installed without its dependencies, because pysparkplug declares paho-mqtt<2 and aiomqtt needs paho-mqtt 2;
# the gateway loads only its generated module (gateway/northbound/sparkplug_proto.py), never its MQTT client.
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --require-hashes -r requirements-sparkplug.txt
echo "setup: ready (.venv/bin/gateway)" >&2

#!/usr/bin/env bash
# Install, upgrade or remove the gateway as a systemd service (Debian 12 / Raspberry Pi OS 64-bit). Run as root from
# a checkout of this repository; docs/install.md says what it does, step by step.
#   sudo scripts/install.sh               install, or upgrade in place (the same command)
#   sudo scripts/install.sh --vision      plus on-device vision (64-bit OS only; kept by later upgrades)
#   sudo scripts/install.sh --uninstall   remove the code, the unit and the `gateway` link; keep config and data
#   sudo scripts/install.sh --purge       ... and the config, the data, the unit's drop-ins and the `gateway` user
# For CI and packaging: --root DIR puts everything under DIR (no systemctl, no useradd; files keep their owner unless
# --owner UID:GID says whose the data directory is), --python PATH picks the interpreter (default /usr/bin/python3).
#
# The code goes into /opt/gateway/releases/<stamp>, a virtualenv built from the hash-pinned lock
# (requirements/gateway.txt, or vision.txt) and a wheel of this checkout (never editable), and /opt/gateway/venv is
# a symlink to the live one. An upgrade builds the new release beside the old, runs `gateway check` of the site's
# config with the new code, and only then stops the service, swaps the link and starts it again (one restart); if the
# check or the start fails, the old release stays (or is put back) and runs.
set -euo pipefail
umask 022

src=$(cd "$(dirname "$0")/.." && pwd)
root=""
owner=""
python=/usr/bin/python3
want_vision=0
action=install
while [ $# -gt 0 ]; do
    case "$1" in
        --vision) want_vision=1 ;;
        --uninstall) action=uninstall ;;
        --purge) action=purge ;;
        --root) root=$(realpath -m "${2:?--root needs a directory}"); shift ;;
        --owner) owner=${2:?--owner needs UID:GID}; shift ;;
        --python) python=${2:?--python needs a path}; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "install: $*" >&2 || true; }  # the terminal may be gone (an ssh session dropped mid-upgrade)
die() { say "$*"; exit 1; }

real=1
[ -n "$root" ] && real=0
if [ "$real" = 1 ]; then
    [ "$(id -u)" -eq 0 ] || die "run as root: sudo $0"
    owner="gateway:gateway"
fi

opt="$root/opt/gateway"
venv="$opt/venv"
releases="$opt/releases"
options="$opt/install-options"
etc="$root/etc/gateway"
config="$etc/config.toml"
data="$root/var/lib/gateway"
unit="$root/etc/systemd/system/gateway.service"
dropins="$root/etc/systemd/system/gateway.service.d"
link="$root/usr/local/bin/gateway"

systemd() { [ "$real" = 1 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; }

# -- uninstall ---------------------------------------------------------------------------------------------------

if [ "$action" != install ]; then
    if systemd; then
        systemctl disable --now gateway.service >/dev/null 2>&1 || true
    fi
    rm -f "$unit" "$link" "$venv" "$options"
    rm -rf "$releases" "$opt/doc"
    rmdir "$opt" 2>/dev/null || true  # an old git checkout at /opt/gateway is left alone
    if [ "$action" = purge ]; then
        rm -rf "$etc" "$data" "$dropins"
        if [ "$real" = 1 ] && getent passwd gateway >/dev/null; then
            userdel gateway 2>/dev/null || say "could not remove the gateway user"
            getent group gateway >/dev/null && { groupdel gateway 2>/dev/null || true; }
        fi
        say "removed the gateway, its config ($etc) and its data ($data)"
    else
        say "removed the gateway's code and unit; kept $etc and $data (--purge removes them)"
    fi
    systemd && systemctl daemon-reload
    exit 0
fi

# -- what this install needs -------------------------------------------------------------------------------------

apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null >/dev/null; }
if [ "$real" = 1 ] && ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "installing python3-venv"
    if ! apt_install python3-venv; then  # a fresh image's package lists may be missing or stale
        say "updating the package lists (apt-get update) and trying again"
        { apt-get update -qq </dev/null >/dev/null && apt_install python3-venv; } \
            || die "could not install python3-venv (apt-get update && apt-get install python3-venv)"
    fi
fi
"$python" - <<'PY' || die "$python is not Python 3.11 or newer (Debian 12 and Raspberry Pi OS Bookworm ship 3.11)"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
[ -f "$options" ] && grep -qx vision "$options" && want_vision=1  # an upgrade keeps what the install chose
if [ "$want_vision" = 1 ]; then
    # The userland, not the kernel: 32-bit Raspberry Pi OS boots a 64-bit kernel (uname says aarch64) on a Pi 4/5.
    bits=$("$python" -c 'import struct; print(struct.calcsize("P") * 8)')
    arch=$(dpkg --print-architecture 2>/dev/null || echo "$bits-bit")
    case "$bits:$arch" in
        64:amd64|64:arm64|64:64-bit) ;;
        *) die "--vision needs a 64-bit OS (amd64 or arm64; this is $arch, $python is $bits-bit): ONNX Runtime, LiteRT and OpenCV ship no 32-bit ARM wheels" ;;
    esac
fi
lock="$src/requirements/gateway.txt"
[ "$want_vision" = 1 ] && lock="$src/requirements/vision.txt"
[ -f "$lock" ] || die "no lock file $lock (run this script from a checkout of the gateway)"

# -- the service user, its directories, the config -----------------------------------------------------------------

if [ "$real" = 1 ]; then
    getent passwd gateway >/dev/null || useradd --system --user-group --home-dir /var/lib/gateway \
        --no-create-home --shell /usr/sbin/nologin --comment "community edge gateway" gateway
    usermod -a -G dialout gateway
fi
install -d -m 0755 "$opt" "$releases" "$(dirname "$link")" "$(dirname "$unit")"
install -d -m 0750 "$etc" "$data"
fresh_config=0
if [ ! -e "$config" ]; then
    install -m 0640 "$src/config.example.toml" "$config"
    fresh_config=1
fi
if [ -n "$owner" ]; then
    chown "$owner" "$data"  # the service's own (systemd's StateDirectory= says the same)
    chown "root:${owner#*:}" "$etc" "$config"  # the service and the gateway group read it; only root writes it
fi
if [ "$real" = 1 ] && { [ "$want_vision" = 1 ] || grep -Eq '^[[:space:]]*\[\[cameras\]\]' "$config"; }; then
    usermod -a -G video gateway  # USB cameras
fi

# -- the new release, built beside the live one --------------------------------------------------------------------

stamp=$(date -u +%Y%m%dT%H%M%SZ)
new="$releases/$stamp"
n=1
while [ -e "$new" ]; do new="$releases/$stamp-$n"; n=$((n + 1)); done
work=$(mktemp -d)
stopped=0   # this script stopped the service ...
settled=1   # ... and has not yet seen it through (started, or put back): the exit trap starts it again
cleanup() {
    set +e
    if [ "$stopped" = 1 ] && [ "$settled" = 0 ]; then
        settled=1
        say "interrupted with the service stopped: starting it again"
        start_or_roll_back || say "the gateway did not start: journalctl -u gateway"
    fi
    rm -rf "$work"
    [ -n "${new:-}" ] && [ "${keep_new:-0}" = 0 ] && rm -rf "$new"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building $new from $lock"
pip=("$new/bin/python" -m pip --disable-pip-version-check -q)
"$python" -m venv "$new"
"${pip[@]}" install --require-hashes --no-deps -r "$lock"
"${pip[@]}" install --require-hashes --no-deps -r "$src/requirements/build.txt"
# A copy of the checkout, so the build leaves nothing in it (build/, *.egg-info) and picks up no virtualenv or cache.
mkdir "$work/src"
tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.pytest_cache --exclude=./.ruff_cache \
    --exclude=./.hypothesis --exclude=./data -cf - . | tar -C "$work/src" -xf -
"${pip[@]}" wheel --no-deps --no-build-isolation -w "$work/dist" "$work/src"
"${pip[@]}" install --no-deps "$work"/dist/community_gateway-*.whl
# Sparkplug B's generated protobuf module, pinned by hash, without pysparkplug's own (conflicting) dependencies.
"${pip[@]}" install --require-hashes --no-deps -r "$src/requirements-sparkplug.txt"
# pysparkplug's declared paho-mqtt<2 is known and harmless (above); any other conflict stops the install here.
conflicts=$("${pip[@]}" check 2>&1 | grep -v '^pysparkplug ' | grep -v '^No broken requirements' || true)
[ -z "$conflicts" ] || die "the new release's dependencies do not fit together: $conflicts"

if ! "$new/bin/gateway" check -c "$config" >&2; then
    die "the new release refuses $config (above); nothing changed, the running gateway is untouched"
fi

# -- the unit, its drop-ins, the link ----------------------------------------------------------------------------

install -m 0644 "$src/systemd/gateway.service" "$unit"
if [ ! -e "$dropins" ]; then
    # Site settings and secrets go in drop-ins here: an upgrade rewrites gateway.service, never this directory.
    install -d -m 0755 "$dropins"
    credential="#LoadCredential=faces-key:/etc/gateway/faces.key"
    [ -f "$etc/faces.key" ] && credential="LoadCredential=faces-key:/etc/gateway/faces.key"
    cat >"$dropins/credentials.conf" <<EOF
# The face gallery's key as a systemd credential: \`gateway faces keygen /etc/gateway/faces.key\` (root-only,
# 0600), then uncomment the line below and run \`systemctl daemon-reload && systemctl restart gateway\`.
# scripts/install.sh wrote this file once and never touches it again.
[Service]
$credential
EOF
fi
ln -sfn ../../../opt/gateway/venv/bin/gateway "$link"
rm -rf "$opt/doc"  # the unit's Documentation=: this release's guides
install -d -m 0755 "$opt/doc"
install -m 0644 "$src/README.md" "$src"/docs/*.md "$opt/doc/"

# -- the swap: stop, snapshot the store, point the link at the new release, start (one restart) --------------------

previous=""
if [ -L "$venv" ]; then  # "releases/<stamp>", or an absolute link someone made by hand: the name is what counts
    target=$(basename "$(readlink "$venv")")
    [ -d "$releases/$target" ] && [ "$releases/$target" != "$new" ] && previous="releases/$target"
fi
store="$data/gateway.db"
snapshot="$data/gateway.db.before-upgrade"
layout() { "$python" - "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
found = db.execute("PRAGMA user_version").fetchone()[0]
if found == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    found = row[0] if row else 0
print(found)
PY
}
swap() { ln -sfn "$1" "$venv.swap" && mv -T "$venv.swap" "$venv"; }
swapped=0
roll_back() {  # the old release back; the store as it was at the stop if the new one changed its layout
    swap "$previous"
    if [ -f "$snapshot" ] && [ -f "$store" ] && [ "$(layout "$store" 2>/dev/null)" != "$layout_before" ]; then
        failed="$data/gateway.db.failed-upgrade-$(basename "$new")"
        for suffix in "" -wal -shm; do
            [ -e "$store$suffix" ] && mv -f "$store$suffix" "$failed$suffix"
        done
        cp -p "$snapshot" "$store"
        say "the new release changed the store's layout: the store is back as it was at the stop; what the new release wrote meanwhile is in $failed"
    fi
}
start_or_roll_back() {  # 0 started; 2 the new one did not, the previous one did; 3 neither; 1 nothing to go back to
    systemctl start gateway.service && return 0
    [ "$swapped" = 1 ] && [ -n "$previous" ] || return 1
    roll_back
    systemctl start gateway.service && return 2
    return 3
}
was_active=0
if systemd; then
    systemctl daemon-reload
    systemctl is-active --quiet gateway.service && was_active=1
    systemctl enable --quiet gateway.service
    if [ "$was_active" = 1 ]; then
        trap '' HUP  # an ssh session dropping from here on does not stop the upgrade half-way
        settled=0
        stopped=1
        systemctl stop gateway.service
    fi
fi
# A consistent copy of the store (SQLite's backup API, by the new release's Python) before the new code migrates
# it: a rollback, now or by hand, needs the layout the old release knows. One is kept, the latest upgrade's.
layout_before=""
if [ -f "$store" ]; then
    layout_before=$(layout "$store") || die "cannot read the store $store; nothing changed"
    rm -f "$snapshot"
    "$new/bin/python" - "$store" "$snapshot" <<'PY' || { rm -f "$snapshot"; die "could not copy the store to $snapshot (is the disk full?); nothing changed"; }
import contextlib, sqlite3, sys
with contextlib.closing(sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)) as src, \
        contextlib.closing(sqlite3.connect(sys.argv[2])) as dst:
    src.backup(dst)
    dst.execute("PRAGMA journal_mode = DELETE")
PY
    chown --reference="$store" "$snapshot"
    chmod 0640 "$snapshot"
fi
swap "releases/$(basename "$new")"
swapped=1
keep_new=1
if [ "$was_active" = 1 ]; then
    set +e
    start_or_roll_back
    started=$?
    set -e
    settled=1
    case "$started" in
        0) ;;
        2) die "the new release did not start (journalctl -u gateway); $previous is back and running" ;;
        3) die "the new release did not start, and neither did $previous put back: journalctl -u gateway" ;;
        *) die "the gateway did not start: journalctl -u gateway" ;;
    esac
fi
if [ "$want_vision" = 1 ]; then echo vision >"$options"; else : >"$options"; fi

# Keep the release before this one (to go back by hand: docs/install.md), remove older ones.
for old in "$releases"/*; do
    case "$old" in "$new"|"$releases/${previous#releases/}") ;; *) rm -rf "$old" ;; esac
done

if [ "$fresh_config" = 1 ]; then
    say "installed. Edit $config (the example's devices and broker are placeholders), then:"
    say "  sudo gateway check && sudo systemctl start gateway"
elif [ "$was_active" = 1 ]; then
    say "upgraded to $(basename "$new") and restarted the service"
else
    say "installed $(basename "$new"); start it with: sudo systemctl start gateway"
fi

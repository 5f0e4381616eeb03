"""scripts/install.sh into a temporary root: an upgrade from the release before it, in place, refused, removed.

One walk through a gateway's life, as a technician lives it, on one install root (a tree under /tmp that other
users can enter, so the service and a technician run as users of their own):

1. the release before issue 16 (commit 50238da) installed the old way (a checkout in /opt/gateway with an editable
   .venv), its daemon running as the service user with the broker down, so its readings stay in the outbox;
2. install.sh over it: the config is kept, `gateway check` and `gateway run` from the installed release, every row
   the old release stored reaches a real Mosquitto; a member of the gateway group and root use the CLI, and every
   file in the data directory is still the service's;
3. install.sh again: an upgrade keeps the config and the outbox; with a config the new code refuses, nothing
   changes; `--uninstall` keeps config and data, `--purge` removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, Collector, free_port, until, write_config

from gateway import migrations
from simulators.meter import METER_POINTS, serve_meters

REPO = Path(__file__).resolve().parents[1]
RELEASE_BEFORE = "50238da"
"""The last commit before issue 16: the release a site runs today."""
PYTHON = "/usr/bin/python3"  # Debian's, as on a Pi: every user may run it (a pyenv under /root is root's alone)
SERVICE = (61001, 61003)
"""The `gateway` user and group, by number (nothing is added to this machine's /etc/passwd)."""
TECHNICIAN = 61002
"""A person in the `gateway` group, nothing more."""
POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]
RETAINED = {"state"}
"""Outbox kinds published retained (a device's availability), which carry no message id."""


@pytest.fixture
def root() -> Iterator[Path]:
    """An install root that the service and technician users can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="gateway-root-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(*cmd: str | Path, user: int | None = None, timeout: float = 170, **kw: Any) -> subprocess.CompletedProcess[str]:
    """A command as root, the service user or the technician (who is in the service's group)."""
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False,
                          **kw, **as_user(user))


def as_user(user: int | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user, "group": user if user == TECHNICIAN else SERVICE[1], "extra_groups": [SERVICE[1]],
            "env": {**os.environ, "HOME": "/tmp"}}


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("bash", REPO / "scripts" / "install.sh", "--root", root, "--owner", f"{SERVICE[0]}:{SERVICE[1]}",
               "--python", PYTHON, *args)


def outbox(db: Path) -> list[tuple[str, str, str]]:
    """(id, kind, subject) of every undelivered row, oldest first."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return [(i, k, s) for i, k, s in conn.execute("SELECT id, kind, subject FROM outbox ORDER BY seq")]


def rows(db: Path) -> int:
    try:
        return len(outbox(db)) if db.exists() else 0
    except sqlite3.Error:  # being created
        return 0


async def daemon(gateway: Path, config: Path) -> asyncio.subprocess.Process:
    """`gateway run` as the service user, as its unit runs it; returns once it says it is running."""
    proc = await asyncio.create_subprocess_exec(gateway, "run", "-c", config, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, **as_user(SERVICE[0]))
    assert proc.stdout is not None
    seen: list[bytes] = []
    async with asyncio.timeout(60):
        while not any(b"gateway running" in line for line in seen):
            line = await proc.stdout.readline()
            assert line, f"the daemon exited: {b''.join(seen).decode(errors='replace')}"
            seen.append(line)
    asyncio.get_running_loop().create_task(_drain(proc))
    return proc


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


async def stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await proc.wait() == 0


def old_release(root: Path) -> Path:
    """The release before issue 16 installed as its README said: a checkout in /opt/gateway, `pip install -e .`."""
    checkout = root / "opt" / "gateway"
    checkout.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", RELEASE_BEFORE], capture_output=True,
                             check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(checkout, filter="data")
    venv = checkout / ".venv"
    assert run(PYTHON, "-m", "venv", venv).returncode == 0
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q", "install"]
    # its dependencies from today's lock: the old pyproject's ranges hold every pinned version
    done = run(*pip, "--require-hashes", "--no-deps", "-r", REPO / "requirements" / "gateway.txt",
               "-r", REPO / "requirements" / "build.txt")
    assert done.returncode == 0, done.stderr
    done = run(*pip, "--no-deps", "--no-build-isolation", "-e", checkout)
    assert done.returncode == 0, done.stderr
    return venv / "bin" / "gateway"


def brokers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*mosquitto*") if "site-packages" not in p.parts]


def gone(*paths: Path) -> list[Path]:
    """Those of ``paths`` still there (a dangling link counts as there)."""
    return [p for p in paths if os.path.lexists(p)]


def socket_mode(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mode & 0o777, info.st_gid


def owned_by_service(data: Path) -> list[tuple[str, int, int]]:
    """Every entry of the data directory that is not the service's: (name, uid, gid)."""
    return [(p.name, p.lstat().st_uid, p.lstat().st_gid) for p in [data, *data.rglob("*")]
            if (p.lstat().st_uid, p.lstat().st_gid) != SERVICE]


async def test_install_over_the_release_before_then_upgrade_refuse_uninstall_purge(
        root: Path, broker: Broker, collector: Collector) -> None:
    assert os.geteuid() == 0, "install.sh chowns to the service user: it runs as root (CI does)"
    etc, data = root / "etc" / "gateway", root / "var" / "lib" / "gateway"
    db, config = data / "gateway.db", etc / "config.toml"
    opt = root / "opt" / "gateway"
    meters = await serve_meters("127.0.0.1", 0, count=1)
    try:
        # 1. today's release, installed the old way, stores readings it cannot deliver
        old_gateway = await asyncio.to_thread(old_release, root)
        write_config(config, data_dir=data, mqtt_port=broker.port,
                     buses=[{"id": "bus", "driver": "modbus_tcp", "host": "127.0.0.1", "port": meters.ports[0]}],
                     devices=[{"id": "meter", "bus": "bus", "interval": "100ms", "points": POINTS}])
        # that release has no [web]: the section write_config adds goes until the upgrade (step 2 adds its own)
        config.write_text(re.sub(r"\n\[web\]\nport = \d+\n", "\n", config.read_text()))
        data.mkdir(parents=True, mode=0o750)
        os.chown(data, *SERVICE)
        os.chown(etc, 0, SERVICE[1])
        os.chown(config, 0, SERVICE[1])
        config.chmod(0o640)
        broker.stop()
        old = await daemon(old_gateway, config)
        await until(lambda: rows(db) >= 10, within=30)
        await stop(old)
        held = outbox(db)
        config_before = config.read_bytes()

        # 2. install.sh over it: config kept, the installed release checks it, runs, delivers every row
        done = await asyncio.to_thread(install, root)
        assert done.returncode == 0, done.stderr
        assert config.read_bytes() == config_before
        venv = opt / "venv"
        assert venv.is_symlink() and venv.resolve().parent == opt / "releases"
        code = run(venv / "bin" / "python", "-I", "-c",
                   "import gateway, pathlib; print(pathlib.Path(gateway.__file__).resolve())").stdout.strip()
        assert code.startswith(f"{venv.resolve()}/lib/"), code  # installed from the wheel, not editable
        unit = (root / "etc" / "systemd" / "system" / "gateway.service").read_text()
        assert "ExecStart=/opt/gateway/venv/bin/gateway run" in unit
        assert (root / "etc" / "systemd" / "system" / "gateway.service.d" / "credentials.conf").exists()
        on_path = root / "usr" / "local" / "bin" / "gateway"
        assert on_path.resolve() == (venv / "bin" / "gateway").resolve()
        assert (opt / ".venv").exists() and (opt / "pyproject.toml").exists()  # the old checkout, untouched
        checked = run(on_path, "check", "-c", config)
        assert checked.returncode == 0 and "OK" in checked.stdout, checked.stderr
        assert brokers(root) == []  # a production install brings no broker

        with config.open("a") as f:  # a free port for the status page (the default one may be taken here)
            f.write(f"\n[web]\nport = {free_port()}\n")
        broker.start()
        new = await daemon(venv / "bin" / "gateway", config)
        try:
            wanted = {i for i, k, _ in held if k not in RETAINED}  # each message carries its row's id
            topics = {f"community/test-site/{k}/{s}" for _, k, s in held if k in RETAINED}  # retained: no id
            try:
                await collector.wait_for(lambda: wanted <= {m.get("id") for _, m in collector.messages}
                                         and topics <= {t for t, _ in collector.messages}, within=60)
            except TimeoutError:
                got = {m.get("id") for _, m in collector.messages}
                raise AssertionError(f"not delivered: {[r for r in held if r[0] not in got][:5]} of {len(held)}"
                                     f"; topics seen {sorted({t for t, _ in collector.messages})[:20]}"
                                     f"; outbox now {len(outbox(db))}") from None
            await until(lambda: not {r[0] for r in held} & {r[0] for r in outbox(db)}, within=30)
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                assert migrations.version(conn) == migrations.LATEST

            # the technician, in the gateway group, without sudo
            status = run(on_path, "status", "--json", "-c", config, user=TECHNICIAN)
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["daemon"]["running"] is True
            events = run(on_path, "events", "-n", "3", "-c", config, user=TECHNICIAN)
            assert events.returncode == 0, events.stderr
            assert socket_mode(data / "control.sock") == (0o660, SERVICE[1])  # the service's group may use it
            values = run(on_path, "values", "--json", "-c", config, user=TECHNICIAN)  # only the daemon answers it
            assert values.returncode == 0 and isinstance(json.loads(values.stdout), list), values.stderr
        finally:
            await stop(new)
        events = run(on_path, "events", "-n", "3", "-c", config, user=TECHNICIAN)  # the daemon stopped: no WAL left
        assert events.returncode == 0 and events.stdout.strip(), events.stderr
        assert run(on_path, "status", "-c", config).returncode == 1  # root, daemon stopped: says so
        assert run(on_path, "events", "-n", "3", "-c", config).returncode == 0
        assert owned_by_service(data) == []  # whoever read it, the service can still write every file

        # 3. an upgrade in place keeps the config and the outbox, and swaps the release
        broker.stop()
        again = await daemon(venv / "bin" / "gateway", config)
        await until(lambda: rows(db) >= 5, within=30)
        await stop(again)
        held, config_before, release = outbox(db), config.read_bytes(), venv.resolve()
        venv.unlink()
        venv.symlink_to(release)  # an absolute link, as a technician going back by hand may leave it
        done = await asyncio.to_thread(install, root)
        assert done.returncode == 0, done.stderr
        assert venv.resolve() != release and release.exists()  # the one before is kept, to go back by hand
        assert config.read_bytes() == config_before and outbox(db) == held
        # the store as it was at the stop, for a rollback after the new release migrates it
        assert outbox(data / "gateway.db.before-upgrade") == held and owned_by_service(data) == []

        # a config the new code refuses: nothing changes
        current = venv.resolve()
        config.write_bytes(config_before + b"\n[site.nonsense]\n")
        refused = await asyncio.to_thread(install, root)
        assert refused.returncode != 0 and "nothing changed" in refused.stderr
        assert venv.resolve() == current and sorted((opt / "releases").iterdir()) == sorted([release, current])
        config.write_bytes(config_before)

        # 4. uninstall keeps config and data; purge removes them
        done = await asyncio.to_thread(install, root, "--uninstall")
        assert done.returncode == 0, done.stderr
        assert not gone(venv, opt / "releases", on_path, opt / "doc")
        assert not (root / "etc" / "systemd" / "system" / "gateway.service").exists()
        assert config.read_bytes() == config_before and outbox(db) == held
        assert (opt / "pyproject.toml").exists()  # an old checkout is not ours to remove
        done = await asyncio.to_thread(install, root, "--purge")
        assert done.returncode == 0, done.stderr
        assert not etc.exists() and not data.exists()
        assert not (root / "etc" / "systemd" / "system" / "gateway.service.d").exists()
    finally:
        await meters.close()


def test_the_unit_verifies_and_keeps_its_hardening(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit, its ExecStart pointed at a gateway that exists on this machine."""
    unit = (REPO / "systemd" / "gateway.service").read_text()
    assert unit.count("/opt/gateway/venv/bin/gateway ") == 2 and ".venv" not in unit
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n", "DevicePolicy=closed",
                 "SystemCallFilter=@system-service", "User=gateway", "StateDirectory=gateway", "UMask=0027"):
        assert line in unit, line
    here = Path(sys.executable).parent / "gateway"
    assert here.exists(), here
    (tmp_path / "gateway.service").write_text(unit.replace("/opt/gateway/venv/bin/gateway", str(here)))
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is not installed (Debian: systemd)"
    verified = run(analyze, "verify", tmp_path / "gateway.service", timeout=60)
    assert verified.returncode == 0 and verified.stdout + verified.stderr == "", verified.stderr


def test_vision_refuses_a_32_bit_userland_on_a_64_bit_kernel(tmp_path: Path) -> None:
    """32-bit Raspberry Pi OS on a Pi 4 boots a 64-bit kernel: uname says aarch64, dpkg says armhf. The guard
    asks dpkg (here a stand-in on PATH saying what such a Pi says) and refuses before building anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dpkg = bin_dir / "dpkg"
    dpkg.write_text('#!/bin/sh\n[ "$1" = --print-architecture ] && echo armhf\n')
    dpkg.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = run("bash", REPO / "scripts" / "install.sh", "--root", tmp_path / "root", "--python", PYTHON, "--vision",
               env=env, timeout=60)
    assert done.returncode == 1 and "needs a 64-bit OS" in done.stderr and "armhf" in done.stderr, done.stderr
    assert not (tmp_path / "root" / "opt" / "gateway" / "releases").exists()

"""One daemon per store: a second `gateway run` is refused and touches nothing; the first keeps going.

Also what a technician sees around it: `gateway status` says plainly when no daemon runs (non-zero
exit, the uplink state marked as stale), and SIGHUP does not kill the daemon.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import Broker, free_ports, until, write_config

from simulators.meter import METER_POINTS, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]


def config(tmp: Path, port: int, mqtt: int) -> Path:
    return write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt,
                        buses=[dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=port)],
                        devices=[dict(id="meter-0", bus="bus-0", interval="200ms", points=POINTS)])


def row(db: Path, query: str) -> Any:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute(query).fetchone()
    except sqlite3.OperationalError:
        return None


def polls(db: Path) -> int:
    found = row(db, "SELECT polls FROM devices WHERE id = 'meter-0'")
    return int(found[0]) if found else 0


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


async def test_a_second_daemon_is_refused_and_the_first_keeps_its_socket_session_and_rhythm(
        tmp_path: Path, broker: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    path = config(tmp_path, server.ports[0], broker.port)
    data = tmp_path / "data"
    db, sock = data / "gateway.db", data / "control.sock"
    log = (tmp_path / "first.log").open("wb")
    first = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(path),
                                                 stdout=log, stderr=log)
    try:
        def connected() -> bool:
            uplink = row(db, "SELECT value FROM meta WHERE key = 'uplink'")
            return bool(uplink and json.loads(uplink[0])["state"] == "connected" and sock.exists())

        await until(connected, within=30)
        inode, before = sock.stat().st_ino, polls(db)
        second = await asyncio.to_thread(gateway, "run", "-c", str(path))
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "already running" in second.stderr
        assert sock.exists() and sock.stat().st_ino == inode  # its socket is untouched
        await until(lambda: polls(db) >= before + 5, within=30)  # and it polls on
        status = await asyncio.to_thread(gateway, "status", "-c", str(path), "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["daemon"]["running"] and report["daemon"]["pid"] == first.pid
        assert report["uplink"]["state"] == "connected" and not report["uplink"].get("stale")
        read = await asyncio.to_thread(gateway, "read", "meter-0", "voltage_a", "-c", str(path), "--json")
        assert read.returncode == 0, read.stderr  # through the first daemon's socket

        first.send_signal(signal.SIGHUP)  # a reload request must not kill it
        await until(lambda: polls(db) >= before + 10, within=30)
        assert first.returncode is None
        uplinks = row(db, "SELECT value FROM meta WHERE key = 'uplink'")
        assert json.loads(uplinks[0])["state"] == "connected"  # one session all along: no flapping

        first.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await first.wait() == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        log.close()
        await server.close()
    assert not sock.exists()

    status = await asyncio.to_thread(gateway, "status", "-c", str(path), "--json")
    assert status.returncode == 1  # no daemon: said plainly, in the exit code too
    report = json.loads(status.stdout)
    assert not report["daemon"]["running"] and report["uplink"]["stale"] is True
    plain = await asyncio.to_thread(gateway, "status", "-c", str(path))
    assert plain.returncode == 1 and "NOT RUNNING" in plain.stdout and "last seen by the daemon" in plain.stdout

"""A full disk during a fire-alarm burst: every fire line still reaches the platform, across a SIGKILL too.

The data directory is a real 6 MB tmpfs that another "program" (a filler file) fills to the last
byte while the daemon runs a fire panel and a fast meter. The daemon writes only alarms and events
into its released reserve, publishes what it cannot write straight from memory, raises one
store.disk_full alarm, never crashes a task, never re-sends a storm of duplicates, and delivers
everything once space returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker, Collector, free_ports, until, write_config

from simulators.firepanel import FirePanelSimulator
from simulators.meter import METER_POINTS, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "data"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:  # CI runs as root: a mount it refuses is a broken machine, not a skip
        pytest.fail(f"cannot mount a small tmpfs for the full-disk test: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Another program writes until the file system refuses: the disk is full to the last block."""
    filler = disk / "someone-elses.log"
    with contextlib.suppress(OSError), filler.open("ab") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    with contextlib.suppress(OSError), filler.open("ab") as out:  # the last few bytes too
        while True:
            out.write(b"\0")
            out.flush()
    return filler


def fires(collector: Collector) -> list[dict[str, object]]:
    return [m for t, m in collector.messages if m.get("kind") == "fire.alarm"]


async def test_fire_alarms_survive_a_full_disk_and_a_sigkill_while_full(
        tmp_path: Path, small_disk: Path, broker: Broker, collector: Collector) -> None:
    meters = await serve_meters("127.0.0.1", free_ports(1), count=1)
    async with FirePanelSimulator("gst_cn", heartbeat=0) as panel:
        config = write_config(
            tmp_path / "gateway.toml", data_dir=small_disk, mqtt_port=broker.port,
            extra='reserve_mb = 1\nmin_free_mb = 0.5\n',
            buses=[{"id": "fire-port", "driver": "serial_lines", "port": panel.port},
                   {"id": "meters", "driver": "modbus_tcp", "host": "127.0.0.1", "port": meters.ports[0]}],
            devices=[{"id": "panel", "bus": "fire-port", "format": "gst_cn", "heartbeat": "0s"},
                     {"id": "meter", "bus": "meters", "interval": "50ms", "points": POINTS}])
        log = (tmp_path / "gateway.log").open("ab")

        def listening() -> int:  # how many times a daemon has opened the panel's port (its log says so)
            return (tmp_path / "gateway.log").read_text(errors="replace").count("listening to fire panel")

        async def start() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(config),
                                                        stdout=log, stderr=log)

        daemon = await start()
        try:
            await collector.wait_for(lambda: any(m.get("type") == "telemetry" for _, m in collector.messages), 30)
            await until(lambda: listening() >= 1, within=30)  # a line printed before the port is open is lost
            filler = await asyncio.to_thread(fill, small_disk)
            for zone in range(1, 21):  # a burst on a full disk
                await panel.send("fire", zone=zone, address=zone)
            await collector.wait_for(lambda: len({m["data"]["zone"] for m in fires(collector)}) == 20, 60)
            await collector.wait_for(lambda: any(m.get("kind") == "store.disk_full" for _, m in collector.messages),
                                     30)
            burst_copies = Counter(str(m["id"]) for m in fires(collector))

            daemon.send_signal(signal.SIGKILL)  # killed while the disk is full
            await daemon.wait()
            daemon = await start()
            await until(lambda: listening() >= 2, within=30)
            for zone in range(21, 31):  # and a second burst after the restart, still full
                await panel.send("fire", zone=zone, address=zone)
            await collector.wait_for(lambda: len({m["data"]["zone"] for m in fires(collector)}) == 30, 60)

            filler.unlink()  # space comes back
            await collector.wait_for(
                lambda: any(m.get("kind") == "store.disk_recovered" for _, m in collector.messages), 60)
            daemon.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                assert await daemon.wait() == 0
        finally:
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()
            log.close()
            await meters.close()
    zones = {m["data"]["zone"] for m in fires(collector)}  # type: ignore[index]
    assert zones == {f"{z:02d}" for z in range(1, 31)}  # every fire line, none downgraded or lost
    assert max(burst_copies.values()) <= 2  # at most: straight from memory, then from the outbox
    copies = Counter(str(m["id"]) for _, m in collector.messages if m.get("type") in ("alarm", "event"))
    assert max(copies.values()) <= 3, copies.most_common(3)  # no duplicate storm
    crashed = [m for _, m in collector.messages if m.get("kind") == "gateway.task_crashed"]
    assert not crashed, crashed  # a full disk is a state, not a crash
    text = (tmp_path / "gateway.log").read_text(errors="replace")
    assert "Traceback" not in text

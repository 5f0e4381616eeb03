"""End to end: real pymodbus servers -> the daemon -> a real Mosquitto -> a subscriber."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, Collector, free_port, free_ports, running, until, write_config

from gateway.config import load_config
from gateway.core.data import Event, Priority
from gateway.daemon import Daemon
from simulators.meter import METER_POINTS, serve_black_holes, serve_meters


def meter_config(tmp: Path, ports: list[int], mqtt_port: int | None, *, interval: str = "200ms",
                 extra: str = "", timeout: str = "300ms") -> Path:
    buses = [dict(id=f"bus-{i}", driver="modbus_tcp", host="127.0.0.1", port=p, timeout=timeout)
             for i, p in enumerate(ports)]
    devices = [dict(id=f"meter-{i}", bus=f"bus-{i}", interval=interval, points=METER_POINTS)
               for i in range(len(ports))]
    return write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt_port, buses=buses,
                        devices=devices, extra=extra)


def telemetry_by_device(collector: Collector) -> dict[str, list[dict[str, Any]]]:
    """Per device, in arrival order, with redeliveries (same message id) folded."""
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, msg in collector.of_type("telemetry"):
        if msg["id"] not in seen:
            seen.add(msg["id"])
            out[msg["device"]].append(msg)
    return out


def stored_samples(db: Path) -> dict[str, list[float]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT device, ts FROM samples ORDER BY rowid").fetchall()
    out: dict[str, list[float]] = defaultdict(list)
    for device, ts in rows:
        out[device].append(round(ts, 3))
    return out


async def test_meter_readings_reach_the_broker_with_units(tmp_path: Path, broker: Broker,
                                                          collector: Collector) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    try:
        meter = server.meters[0]
        meter.freeze()
        meter.set_point("voltage_a", 231.5)
        meter.set_point("energy_import", 123456.789)
        meter.set_point("status", 0b10)
        daemon = Daemon(load_config(meter_config(tmp_path, server.ports, broker.port)))
        async with running(daemon):
            await collector.wait_for(lambda: telemetry_by_device(collector).get("meter-0"))
        msg = telemetry_by_device(collector)["meter-0"][0]
        points = msg["points"]
        assert points["voltage_a"] == {"v": 231.5, "u": "V", "q": "good"}
        assert points["energy_import"]["v"] == 123456.789 and points["energy_import"]["u"] == "kWh"
        assert points["status"]["v"] == 0b10
        assert msg["v"] == 2 and msg["id"] and msg["site"] == "test-site"
        status = [m for t, m in collector.messages if t.endswith("/status")]
        assert status[0]["state"] == "online" and status[-1]["state"] == "offline"
    finally:
        await server.close()


async def test_broker_outage_loses_nothing_and_keeps_order(tmp_path: Path, broker: Broker,
                                                           collector: Collector) -> None:
    server = await serve_meters("127.0.0.1", free_ports(3), count=3)
    try:
        daemon = Daemon(load_config(meter_config(tmp_path, server.ports, broker.port)))
        async with running(daemon):
            await collector.wait_for(lambda: len(collector.of_type("telemetry")) >= 6)
            broker.stop()
            await asyncio.sleep(2.0)  # ten poll cycles with nowhere to send them
            depth = await daemon.store.run(daemon.store.store.outbox_depth)
            assert depth["telemetry"] >= 20, depth
            broker.start()
            await collector.wait_for(
                lambda: daemon.uplink is not None and daemon.uplink.status.state == "connected", within=20)
            await asyncio.sleep(1.0)
        stored = stored_samples(tmp_path / "data" / "gateway.db")
        await collector.wait_for(
            lambda: all(len(telemetry_by_device(collector).get(d, [])) >= len(ts) for d, ts in stored.items()))
        received = telemetry_by_device(collector)
        for device, timestamps in stored.items():
            got = [m["ts"] for m in received[device]]
            assert got == timestamps, f"{device}: arrived {len(got)} of {len(timestamps)} or out of order"
    finally:
        await server.close()


async def test_disk_cap_drops_telemetry_oldest_first_and_keeps_every_alarm(tmp_path: Path) -> None:
    server = await serve_meters("127.0.0.1", free_ports(16), count=16)
    mqtt_port = free_port()  # nothing listens yet: the outbox fills
    try:
        cfg = load_config(meter_config(tmp_path, server.ports, mqtt_port, interval="50ms", extra="max_mb = 1\n"))
        daemon = Daemon(cfg)
        daemon.recorder.cap_check_interval = 0.3
        async with running(daemon):
            for i in range(40):
                daemon.bus.event(Event("fire.alarm", f"zone-{i}", Priority.ALARM, {"zone": i}))
                await asyncio.sleep(0.25)
            dropped = (await daemon.store.run(daemon.store.store.counters)).get("store.telemetry_dropped", 0)
            assert dropped > 0
            broker = Broker(tmp_path)
            broker.port = mqtt_port
            broker.conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n")
            collector = Collector(mqtt_port)
            broker.start()
            try:
                await collector.start()
                await collector.wait_for(lambda: len(collector.of_type("alarm")) >= 40, within=30)
                await collector.wait_for(
                    lambda: any(m["kind"] == "store.telemetry_dropped" for _, m in collector.of_type("event")))
            finally:
                await collector.stop()
                broker.stop(kill=True)
        zones = sorted(m["data"]["zone"] for _, m in collector.of_type("alarm"))
        assert sorted(set(zones)) == list(range(40))
        db = sqlite3.connect(tmp_path / "data" / "gateway.db")
        assert db.execute("SELECT value FROM counters WHERE name = 'store.telemetry_dropped'").fetchone()[0] > 0
        # what survived is the newest telemetry: every arrival is newer than every drop
        arrivals = [m["ts"] for _, m in collector.of_type("telemetry")]
        assert arrivals == sorted(arrivals) or len({m["device"] for _, m in collector.of_type("telemetry")}) > 1
    finally:
        await server.close()


async def test_dead_devices_do_not_slow_the_healthy_ones(tmp_path: Path) -> None:
    healthy = await serve_meters("127.0.0.1", free_ports(3), count=3)
    holes = await serve_black_holes("127.0.0.1", free_ports(2), count=2)  # accept, never answer
    refused = free_port()  # nothing listens
    try:
        ports = [*healthy.ports, *holes.ports, refused]
        cfg = load_config(meter_config(tmp_path, ports, None, interval="200ms", timeout="1s"))
        daemon = Daemon(cfg)
        pollers = daemon.pollers
        async with running(daemon):  # counted, not timed: the dead go offline while the healthy poll on
            await until(lambda: all(pollers[f"meter-{i}"].state.state == "offline" for i in range(3, 6)), within=60)
            start = {f"meter-{i}": pollers[f"meter-{i}"].state.polls for i in range(3)}
            await until(lambda: all(pollers[d].state.polls >= n + 10 for d, n in start.items()), within=60)
        for i in range(3):
            assert pollers[f"meter-{i}"].state.failures == 0  # not one healthy poll lost to the dead
            assert start[f"meter-{i}"] >= 3  # and they were polling while their neighbours died
    finally:
        await healthy.close()
        await holes.close()


def _spawn_gateway(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
async def test_sigkill_under_load_loses_nothing_stored(tmp_path: Path, broker: Broker,
                                                       collector: Collector) -> None:
    server = await serve_meters("127.0.0.1", free_ports(5), count=5)
    config = meter_config(tmp_path, server.ports, broker.port, interval="50ms")
    db_path = tmp_path / "data" / "gateway.db"
    try:
        for _ in range(3):  # kill it three times at different moments
            proc = _spawn_gateway(config)
            await asyncio.sleep(2.0 + 0.37 * _)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            with sqlite3.connect(db_path) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        proc = _spawn_gateway(config)  # the last run drains the backlog, then is stopped cleanly
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with sqlite3.connect(db_path) as conn:
                    left = conn.execute("SELECT COUNT(*) FROM outbox WHERE prio = 2").fetchone()[0]
                    meta = conn.execute("SELECT value FROM meta WHERE key = 'daemon'").fetchone()
                if left < 50 and meta and f'"pid": {proc.pid},' in meta[0]:
                    break
                await asyncio.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
        stored = stored_samples(db_path)
        await collector.wait_for(
            lambda: all(len(telemetry_by_device(collector).get(d, [])) >= len(ts) for d, ts in stored.items()),
            within=30)
        received = telemetry_by_device(collector)
        for device, timestamps in stored.items():
            got = [m["ts"] for m in received[device]]
            assert sorted(got) == timestamps, f"{device}: {len(got)} arrived, {len(timestamps)} stored"
    finally:
        await server.close()

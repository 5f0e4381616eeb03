"""Platform commands over a real Mosquitto: the round trip, the layers a remote write passes, idempotency."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from conftest import Broker, Collector, free_ports, running, until, write_config

from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.meter import METER_POINTS, MeterServer, serve_meters

SITE = "test-site"
ROOT = f"community/{SITE}"
pytestmark = pytest.mark.timeout(90)


def _points() -> list[dict[str, Any]]:
    points = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]
    for p in points:
        if p["id"] == "relay_closed":
            p.update(writable=True, remote=True)
        if p["id"] == "status":
            p.update(writable=True, remote=True, min=0, max=10)
        if p["id"] == "voltage_a":
            p.update(writable=True)  # writable locally, not remotely
    return points


def config(tmp: Path, ports: list[int], mqtt_port: int, commands: str = "") -> Path:
    buses = [dict(id=f"bus-{i}", driver="modbus_tcp", host="127.0.0.1", port=p, timeout="300ms")
             for i, p in enumerate(ports)]
    devices = [dict(id=f"meter-{i}", bus=f"bus-{i}", interval="200ms", points=_points()) for i in range(len(ports))]
    extra = commands or '[commands]\nenabled = true\nallow = ["read", "write", "alarm", "status", "birth"]\n'
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt_port, buses=buses,
                        devices=devices)
    path.write_text(path.read_text(encoding="utf-8") + "\n" + extra, encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def meters(count: int = 1) -> AsyncIterator[MeterServer]:
    server = await serve_meters("127.0.0.1", free_ports(count), count=count, tick_interval=3600)
    try:
        yield server
    finally:
        await server.close()


def request(rid: str, cmd: str, *, ttl: float = 30.0, actor: str = "guard.wang", **fields: Any) -> bytes:
    return orjson.dumps({"v": 1, "id": rid, "expires_at": time.time() + ttl, "actor": actor, "cmd": cmd, **fields})


def results(collector: Collector) -> dict[str, dict[str, Any]]:
    return {m["req"]: m for t, m in collector.messages if t == f"{ROOT}/cmd/res"}


async def send(port: int, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="platform") as client:
        for payload in payloads:
            await client.publish(f"{ROOT}/cmd/req", payload, qos=1)


async def test_a_remote_write_is_checked_executed_read_back_and_answered(tmp_path: Path, broker: Broker,
                                                                         collector: Collector) -> None:
    async with meters() as server:
        daemon = Daemon(load_config(config(tmp_path, server.ports, broker.port)))
        async with running(daemon):
            await collector.wait_for(lambda: any(t.endswith("/status") for t, _ in collector.messages))
            await send(broker.port, request("w-1", "write", device="meter-0", point="relay_closed", value=True),
                       request("r-1", "read", device="meter-0", point="relay_closed"),
                       request("s-1", "status"))
            await collector.wait_for(lambda: {"w-1", "r-1", "s-1"} <= set(results(collector)))
            got = results(collector)
            assert got["w-1"]["status"] == "ok" and got["w-1"]["result"]["result"] == "verified", got["w-1"]
            assert server.meters[0].context.getValues(1, 0, 1) == [True]
            assert got["r-1"]["result"]["readings"][0]["value"] is True
            assert got["s-1"]["result"]["devices"] == {"meter-0": "online"} or got["s-1"]["status"] == "ok"
            # the same request again (a QoS 1 redelivery): answered, not executed
            server.meters[0].context.setValues(1, 0, [False])
            await send(broker.port, request("w-1", "write", device="meter-0", point="relay_closed", value=True))
            await collector.wait_for(lambda: sum(1 for t, m in collector.messages
                                                 if t.endswith("cmd/res") and m["req"] == "w-1") == 2)
            dup = [m for t, m in collector.messages if t.endswith("cmd/res") and m["req"] == "w-1"][-1]
            assert dup["status"] == "duplicate" and dup["original"] == "ok"
            await asyncio.sleep(0.3)
            assert server.meters[0].context.getValues(1, 0, 1) == [False]  # never written twice
            await daemon.recorder.flush()
            audit = await daemon.store.run(daemon.store.store.audit_entries, 100)
    commands = [e for e in audit if e["action"] == "command"]
    assert {e["req"] for e in commands} == {"w-1", "r-1", "s-1"}
    assert all(e["actor"] == "mqtt:unsigned/guard.wang" for e in commands)

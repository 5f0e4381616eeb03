"""The daemon's one picture of itself (gateway.observe), as `gateway top`, /metrics and health read it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import Broker, free_ports, running, until, write_config

from gateway.config import load_config
from gateway.control import request
from gateway.daemon import Daemon, control_path
from simulators.meter import METER_POINTS, serve_black_holes, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]


async def test_a_snapshot_shows_devices_buses_outbox_and_the_process(tmp_path: Path, broker: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    hole = await serve_black_holes("127.0.0.1", free_ports(1), count=1)
    buses = [dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0], timeout="300ms"),
             dict(id="bus-1", driver="modbus_tcp", host="127.0.0.1", port=hole.ports[0], timeout="300ms")]
    devices = [dict(id="meter-0", bus="bus-0", interval="200ms", points=POINTS),
               dict(id="dead-1", bus="bus-1", interval="200ms", points=POINTS)]
    path = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=buses,
                        devices=devices, extra="")
    cfg = load_config(path)
    try:
        async with running(Daemon(cfg)) as daemon:
            await until(lambda: daemon.pollers["meter-0"].state.polls >= 3
                        and daemon.pollers["dead-1"].state.failures >= 1)
            first = await daemon.observer.snapshot()
            await until(lambda: daemon.pollers["meter-0"].state.polls >= 12, within=20)
            answer = await request(control_path(cfg), {"cmd": "observe"})
            assert answer["ok"], answer
            seen = answer["observed"]
            devices_seen = {d["id"]: d for d in seen["devices"]}
            assert devices_seen["meter-0"]["state"] == "online" and devices_seen["meter-0"]["interval_s"] == 0.2
            assert devices_seen["dead-1"]["state"] == "offline" and devices_seen["dead-1"]["failures"] >= 1
            assert devices_seen["dead-1"]["errors"]  # failures by kind
            buses_seen = {b["id"]: b for b in seen["buses"]}
            assert buses_seen["bus-0"]["transactions"] > 0 and 0 <= buses_seen["bus-0"]["utilisation"] <= 1
            assert set(seen["outbox"]) == {"alarm", "event", "telemetry"}
            assert seen["uplinks"][0]["name"] == "mqtt" and seen["uplinks"][0]["delivered_per_s"] is not None
            assert seen["process"]["rss_bytes"] > 10 * 2**20 and seen["process"]["open_fds"] > 3
            assert seen["process"]["disk_free_bytes"] > 0 and seen["process"]["store_bytes"] > 0
            assert first["uptime_s"] <= seen["uptime_s"]
            await asyncio.sleep(0)
    finally:
        await server.close()
        await hole.close()

"""The technician's CLI, run as a technician runs it: a subprocess next to a live daemon.

The daemon runs in the test's own loop (so the test can stop meters and the broker at will); the
CLI only ever sees the store on disk, the config file and the field devices, as in the field.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import Broker, free_ports, running, until, write_config

from gateway import __version__
from gateway.config import load_config
from gateway.core.data import Event, Priority
from gateway.daemon import Daemon
from simulators.meter import METER_POINTS, serve_black_holes, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]  # unitless: no `unit` key
DEVICE_KEYS = {"id", "state", "since", "last_poll", "last_ok", "error", "polls", "failures", "errors", "wire",
               "unreadable", "kind"}
EVENT_KEYS = {"id", "ts", "kind", "source", "priority", "data"}


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


async def gateway(*args: str | Path, within: float = 30.0) -> Run:
    """`gateway ARGS` in a child process, without blocking the loop the daemon runs in."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def config_for(tmp: Path, ports: list[int], mqtt_port: int | None, *, interval: str = "200ms") -> Path:
    buses = [dict(id=f"bus-{i}", driver="modbus_tcp", host="127.0.0.1", port=p, timeout="300ms")
             for i, p in enumerate(ports)]
    devices = [dict(id=f"meter-{i}", bus=f"bus-{i}", interval=interval, points=POINTS) for i in range(len(ports))]
    return write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt_port, buses=buses,
                        devices=devices)


def state(daemon: Daemon, device: str) -> str:
    return daemon.pollers[device].state.state


def uplink_state(daemon: Daemon) -> str:
    assert daemon.uplink is not None
    return daemon.uplink.status.state


def row(table: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first`` (cells are split on 2+ spaces)."""
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{table}")


# -- status ----------------------------------------------------------------------------------------


async def test_status_shows_devices_uplink_outbox_and_whether_the_daemon_runs(tmp_path: Path,
                                                                              broker: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(2), count=2)
    config = config_for(tmp_path, server.ports, broker.port)
    try:
        before = await gateway("status", "-c", config)
        assert before.code == 1 and "has not run yet" in before.err

        daemon = Daemon(load_config(config))
        async with running(daemon):
            await until(lambda: state(daemon, "meter-0") == "online" and uplink_state(daemon) == "connected")
            await server.stop_one(1)
            await until(lambda: state(daemon, "meter-1") == "offline")
            await daemon.recorder.flush()

            report = (await gateway("status", "--json", "-c", config)).json()
            assert set(report) == {"site", "daemon", "uplink", "uplinks", "outbox", "counters", "devices", "cameras",
                                   "alarms"}
            assert report["site"] == "test-site"
            assert {"pid", "started", "heartbeat", "version", "config", "state", "running"} <= set(report["daemon"])
            assert report["daemon"]["running"] is True and report["daemon"]["state"] == "running"
            assert report["daemon"]["pid"] == os.getpid() and report["daemon"]["version"] == __version__
            assert set(report["uplink"]) == {"state", "since", "error", "broker"}
            assert report["uplink"]["state"] == "connected" and report["uplink"]["error"] is None
            assert report["uplink"]["broker"] == f"127.0.0.1:{broker.port}"
            assert report["uplinks"] == [{"name": "mqtt", **report["uplink"],
                                          "backlog": report["uplinks"][0]["backlog"]}]
            assert set(report["outbox"]) == {"alarm", "event", "telemetry"}
            assert all(isinstance(n, int) for n in report["outbox"].values())
            assert report["counters"]["uplink.delivered"] > 0
            devices = {d["id"]: d for d in report["devices"]}
            assert set(devices) == {"meter-0", "meter-1"}
            assert all(set(d) == DEVICE_KEYS for d in devices.values())
            m0, m1 = devices["meter-0"], devices["meter-1"]
            assert m0["state"] == "online" and m0["error"] is None and m0["polls"] > 0
            assert time.time() - m0["last_poll"] < 5 and m0["last_ok"] == m0["last_poll"]
            assert m1["state"] == "offline" and m1["error"].startswith("DeviceUnreachable")
            assert m1["failures"] >= 2 and m1["last_poll"] >= m1["since"]

            text = await gateway("status", "-c", config)
            assert text.code == 0
            assert re.search(r"^site test-site: daemon running \(pid \d+", text.out, re.M), text.out
            assert re.search(r"^uplink connected since", text.out, re.M), text.out
            assert re.search(r"^outbox alarm \d+, event \d+, telemetry \d+$", text.out, re.M), text.out
            assert row(text.out, "meter-0")[1] == "online"
            offline = row(text.out, "meter-1")
            assert offline[1] == "offline" and offline[-1].startswith("DeviceUnreachable")

            # The broker goes away: the uplink says so and telemetry piles up in the outbox.
            broker.stop()
            await until(lambda: uplink_state(daemon) == "disconnected")
            await asyncio.sleep(1.0)
            low = await daemon.store.run(daemon.store.store.outbox_depth)
            report = (await gateway("status", "--json", "-c", config)).json()
            high = await daemon.store.run(daemon.store.store.outbox_depth)
            assert report["uplink"]["state"] == "disconnected" and report["uplink"]["error"]
            assert 0 < low["telemetry"] <= report["outbox"]["telemetry"] <= high["telemetry"]
            text = await gateway("status", "-c", config)
            assert re.search(r"^uplink disconnected since .* - \S", text.out, re.M), text.out

        report = (await gateway("status", "--json", "-c", config)).json()
        assert report["daemon"]["running"] is False and report["daemon"]["state"] == "stopped"
        assert report["outbox"]["telemetry"] > 0  # undelivered messages are still there for next time
        text = await gateway("status", "-c", config)
        assert text.code == 1 and "daemon NOT RUNNING" in text.out  # no daemon: a non-zero exit
    finally:
        await server.close()


# -- read ------------------------------------------------------------------------------------------


async def test_read_asks_the_device_live_and_says_why_it_cannot(tmp_path: Path, broker: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(2), count=2)
    hole = await serve_black_holes("127.0.0.1", free_ports(1), count=1)
    config = config_for(tmp_path, [*server.ports, *hole.ports], broker.port)
    try:
        meter = server.meters[0]
        meter.freeze()
        meter.set_point("voltage_a", 231.5)
        meter.set_point("energy_import", 123456.789)
        meter.set_point("status", 3)
        daemon = Daemon(load_config(config))
        async with running(daemon):  # while the daemon runs, the CLI asks it (it owns the buses)
            await until(lambda: state(daemon, "meter-0") == "online")

            table = await gateway("read", "meter-0", "-c", config)
            assert table.code == 0, table.err
            assert row(table.out, "point") == ["point", "value", "unit", "quality"]
            assert len(table.out.splitlines()) == 2 + len(POINTS)
            assert row(table.out, "voltage_a") == ["voltage_a", "231.5", "V", "good"]
            assert row(table.out, "energy_import") == ["energy_import", "123456.789", "kWh", "good"]
            assert row(table.out, "status") == ["status", "3", "good"]  # unitless: the unit cell is empty

            one = await gateway("read", "meter-0", "energy_import", "--json", "-c", config)
            assert one.code == 0, one.err
            [reading] = one.json()
            assert set(reading) == {"device", "point", "value", "unit", "quality", "ts"}
            assert reading["device"] == "meter-0" and reading["point"] == "energy_import"
            assert reading["value"] == 123456.789 and reading["unit"] == "kWh" and reading["quality"] == "good"
            assert abs(reading["ts"] - time.time()) < 10

            every = (await gateway("read", "meter-0", "--json", "-c", config)).json()
            assert [r["point"] for r in every] == [p["id"] for p in POINTS]

            unknown = await gateway("read", "meter-9", "-c", config)
            assert unknown.code == 2 and unknown.out == ""
            assert "no device 'meter-9'" in unknown.err and str(config) in unknown.err
            no_point = await gateway("read", "meter-0", "volts", "--json", "-c", config)
            assert no_point.code == 2 and no_point.out == ""
            assert "device 'meter-0' has no point 'volts'" in no_point.err

            await server.stop_one(1)
            refused = await gateway("read", "meter-1", "--json", "-c", config)
            assert refused.code == 1 and refused.out == ""
            assert refused.err.startswith("meter-1: DeviceUnreachable:"), refused.err
            silent = await gateway("read", "meter-2", "-c", config)
            assert silent.code == 1 and silent.out == ""
            assert silent.err.startswith("meter-2: DeviceTimeout:"), silent.err

        # With no daemon the CLI opens the bus itself: same answers, same shapes.
        direct = await gateway("read", "meter-0", "energy_import", "--json", "-c", config)
        assert direct.code == 0, direct.err
        [alone] = direct.json()
        assert set(alone) == set(reading) and alone["value"] == 123456.789 and alone["quality"] == "good"
        table = await gateway("read", "meter-0", "-c", config)
        assert row(table.out, "voltage_a") == ["voltage_a", "231.5", "V", "good"]
        refused = await gateway("read", "meter-1", "-c", config)
        assert refused.code == 1 and refused.err.startswith("meter-1: DeviceUnreachable:"), refused.err
        unknown = await gateway("read", "meter-9", "-c", config)
        assert unknown.code == 2 and "no device 'meter-9'" in unknown.err
    finally:
        await server.close()
        await hole.close()


# -- events ----------------------------------------------------------------------------------------


async def test_events_show_the_log_and_follow_prints_new_ones(tmp_path: Path, broker: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(2), count=2)
    config = config_for(tmp_path, server.ports, broker.port)
    try:
        daemon = Daemon(load_config(config))
        async with running(daemon):
            await until(lambda: state(daemon, "meter-1") == "online")
            await server.stop_one(1)
            await until(lambda: state(daemon, "meter-1") == "offline")
            await server.start_one(1)
            await until(lambda: state(daemon, "meter-1") == "online")
            await daemon.recorder.flush()

            text = await gateway("events", "-c", config)
            assert text.code == 0
            kinds = [line.split()[3] for line in text.out.splitlines()]
            assert kinds == ["gateway.started", "device.offline", "device.online"], text.out
            offline = text.out.splitlines()[1].split()
            assert offline[2:5] == ["event", "device.offline", "meter-1"]
            assert "error=DeviceUnreachable" in text.out

            events = (await gateway("events", "--json", "-c", config)).json_lines()
            assert all(set(e) == EVENT_KEYS for e in events)
            assert [(e["kind"], e["source"]) for e in events] == [
                ("gateway.started", "test-site"), ("device.offline", "meter-1"), ("device.online", "meter-1")]
            assert events[0]["data"]["version"] == __version__ and events[0]["data"]["devices"] == 2
            assert events[1]["data"]["error"].startswith("DeviceUnreachable")
            assert events[2]["data"]["offline_for"] > 0
            assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)

            last = (await gateway("events", "--json", "-n", "1", "-c", config)).json_lines()
            assert [e["id"] for e in last] == [events[-1]["id"]]

            follow = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "events", "--follow", "--json", "-c", str(config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                assert follow.stdout is not None
                seen: list[dict[str, Any]] = []
                async with asyncio.timeout(15):
                    while len(seen) < len(events):  # the history first...
                        seen.append(json.loads(await follow.stdout.readline()))
                assert [e["id"] for e in seen] == [e["id"] for e in events]
                alarm = Event("fire.alarm", "zone-3", Priority.ALARM, {"zone": 3})
                daemon.bus.event(alarm)
                async with asyncio.timeout(10):  # ...then what happens while it runs
                    fresh = json.loads(await follow.stdout.readline())
                assert fresh["id"] == alarm.id and fresh["kind"] == "fire.alarm" and fresh["priority"] == "alarm"
                assert fresh["data"] == {"zone": 3}
                assert follow.returncode is None  # still following
            finally:
                follow.kill()
                await follow.wait()
    finally:
        await server.close()


# -- check, schema, version --------------------------------------------------------------------------


async def test_check_exits_0_on_a_good_file_and_2_with_the_line_on_a_bad_one(tmp_path: Path) -> None:
    good = config_for(tmp_path, [1502, 1503], 1883)
    ok = await gateway("check", "-c", good)
    assert ok.code == 0 and ok.out.strip() == f"{good}: OK (2 buses, 2 devices, 30 points)"

    text = good.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('interval = "200ms"', 'intervall = "200ms"', 1))
    line = 1 + bad.read_text().splitlines().index('intervall = "200ms"')
    problems = await gateway("check", "-c", bad)
    assert problems.code == 2
    assert f'{bad}:{line}: devices.0.intervall: unknown key "intervall"; did you mean "interval"?' in problems.out

    missing = await gateway("check", "-c", tmp_path / "nope.toml")
    assert missing.code == 2 and "cannot read the file" in missing.out


async def test_config_schema_is_json_schema_with_devices_and_points(tmp_path: Path) -> None:
    result = await gateway("config", "schema")
    assert result.code == 0
    schema = result.json()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"site", "mqtt", "uplinks", "commands", "store", "log", "web", "metrics",
                                         "health", "buses", "devices", "include", "alarm_classes", "rules",
                                         "notifiers", "vision", "cameras"}
    assert "site" in schema["required"]
    defs = schema["$defs"]

    def walk(node: Any) -> None:
        """Every $ref resolves, every type is a JSON Schema type, every required key is a property."""
        assert isinstance(node, dict | bool), node
        if isinstance(node, bool):
            return
        if "$ref" in node:
            assert node["$ref"].startswith("#/$defs/") and node["$ref"][8:] in defs, node["$ref"]
        types = node.get("type", [])
        for t in types if isinstance(types, list) else [types]:
            assert t in {"object", "array", "string", "number", "integer", "boolean", "null"}, t
        assert set(node.get("required", [])) <= set(node.get("properties", {})), node
        for key in ("properties", "$defs"):
            for sub in node.get(key, {}).values():
                walk(sub)
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                walk(sub)
        for key in ("items", "additionalProperties"):
            if key in node:
                walk(node[key])

    walk(schema)
    device_kinds = schema["properties"]["devices"]["items"]["oneOf"]  # one schema per device family
    assert {"$ref": "#/$defs/ModbusDevice"} in device_kinds and {"$ref": "#/$defs/FirePanel"} in device_kinds
    device = defs["ModbusDevice"]
    assert device["additionalProperties"] is False  # typos in a device table are flagged by the editor
    assert {"id", "bus", "unit", "interval", "points"} <= set(device["properties"])
    assert device["properties"]["points"]["items"] == {"$ref": "#/$defs/ModbusPoint"}
    point = defs["ModbusPoint"]
    assert {"id", "table", "address", "type", "scale", "unit"} <= set(point["properties"])
    assert set(point["required"]) == {"id", "address"}
    assert set(defs["Table"]["enum"]) == {"holding", "input", "coil", "discrete"}
    assert {"float32", "uint16"} <= set(defs["DataType"]["enum"])


async def test_version() -> None:
    result = await gateway("--version")
    assert result.code == 0 and result.out.strip() == f"gateway {__version__}"

"""Rules inside the running daemon: a fire line on the panel's serial port recalls the elevator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from conftest import Broker, Collector, running, write_config

from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.elevator import ElevatorSimulator, tick_cars
from simulators.firepanel import FirePanelSimulator
from simulators.rtu import RtuLine, Unit

RULES = """
[[rules]]
id = "fire-recall"
description = "Any fire zone of the panel: alarm, and recall the lift to the ground floor"
when = { event = "fire.alarm", source = "panel" }
clear_when = { event = "fire.reset", source = "panel" }
alarm = { class = "fire", severity = "critical", message = "Fire in zone {zone}", instance = "{zone}" }
actions = [ { write = "lift-a.fire_recall", value = true } ]
"""


def _config(tmp: Path, panel_port: str, lift_port: str, mqtt_port: int) -> Path:
    path = write_config(
        tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt_port,
        buses=[{"id": "fire-port", "driver": "serial_lines", "port": panel_port},
               {"id": "lift-bus", "driver": "modbus_rtu", "port": lift_port, "baudrate": 19200, "timeout": "300ms"}],
        devices=[{"id": "panel", "bus": "fire-port", "format": "gst_cn", "heartbeat": "0s"},
                 {"id": "lift-a", "bus": "lift-bus", "unit": 5, "interval": "200ms", "profile": "elevator"}],
    )
    path.write_text(path.read_text(encoding="utf-8") + RULES, encoding="utf-8")
    return path


async def _cli(config: Path, *args: str) -> tuple[int, Any]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args, "-c", str(config), "--json",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else None


def _trail(collector: Collector, key: str) -> list[str]:
    return [m["data"]["action"] for _, m in collector.messages
            if m.get("kind", "").startswith("alarm.") and m["data"]["key"] == key]


async def test_fire_line_recalls_the_elevator_and_the_alarm_is_followed_to_closure(
        tmp_path: Path, broker: Broker, collector: Collector) -> None:
    car = ElevatorSimulator(floors=12, seed=5)
    car.position = 7.0
    async with FirePanelSimulator("gst_cn", heartbeat=0) as panel, \
            RtuLine({5: Unit(car.context)}, baudrate=19200) as line:
        ticker = asyncio.create_task(tick_cars([car], 0.05))
        config = _config(tmp_path, panel.port, line.port, broker.port)
        try:
            daemon = Daemon(load_config(config))
            async with running(daemon):
                await asyncio.sleep(1.0)  # the panel's port is open, the lift polled
                await panel.send("fire", loop=1, address=23, zone=4)
                key = "fire-recall/04"  # the zone as the panel prints it
                await collector.wait_for(lambda: "raise" in _trail(collector, key))
                await collector.wait_for(lambda: car._recall_commanded(), within=10)
                await collector.wait_for(lambda: car.position == 1.0 and car.door == 2, within=20)  # parked, open

                raised = next(m for _, m in collector.messages if m.get("kind") == "alarm.raise")
                assert raised["type"] == "alarm" and raised["data"]["message"] == "Fire in zone 04"
                assert raised["data"]["tier"] == "property" and raised["data"]["colour"] == "none"
                writes = [m for _, m in collector.messages if m.get("kind") == "device.write"]
                assert writes[0]["data"]["actor"] == "rule:fire-recall" and writes[0]["data"]["result"] == "verified"

                code, listed = await _cli(config, "alarms", "list")
                assert code == 0 and [a["key"] for a in listed] == [key]
                code, answer = await _cli(config, "alarms", "ack", key, "--note", "guard on the way")
                assert code == 0 and answer["transitions"] == ["acknowledge"]
                await panel.send("reset")
                await collector.wait_for(lambda: "clear" in _trail(collector, key))
                code, answer = await _cli(config, "alarms", "reset", key)
                assert code == 0, answer
                await collector.wait_for(lambda: "reset" in _trail(collector, key))
                code, listed = await _cli(config, "alarms", "list")
                assert listed == []
            # a new daemon on the same store knows the whole history
            again = Daemon(load_config(config))
            assert again.automation is not None
            assert again.automation.book.get(key) is not None
            assert again.automation.book.get(key).state.value == "normal"  # type: ignore[union-attr]
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    assert _trail(collector, key) == ["raise", "acknowledge", "clear", "reset"]
    ack = next(m for _, m in collector.messages if m.get("kind") == "alarm.acknowledge")
    assert ack["data"]["who"].startswith("local:") and ack["data"]["detail"]["note"] == "guard on the way"

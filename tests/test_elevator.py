"""Elevator scenarios through the whole gateway: entrapment, alarm button, fire recall."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from conftest import Broker, Collector, running, write_config

from gateway.commands import WriteCommand
from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.elevator import FAULT_ENTRAPMENT, ElevatorSimulator, tick_cars
from simulators.rtu import RtuLine, Unit


def _changes(collector: Collector, point: str) -> list[dict[str, Any]]:
    return [m for _, m in collector.messages if m.get("kind") == "point.changed" and m["data"]["point"] == point]


def _latest(collector: Collector, point: str) -> Any:
    for _, m in reversed(collector.of_type("telemetry")):
        if point in m["points"]:
            return m["points"][point]["v"]
    return None


async def test_entrapment_and_fire_recall_through_the_daemon(tmp_path: Path, broker: Broker,
                                                             collector: Collector) -> None:
    car = ElevatorSimulator(floors=12, seed=3)
    async with RtuLine({5: Unit(car.context)}, baudrate=19200) as line:
        ticker = asyncio.create_task(tick_cars([car], 0.05))
        config = write_config(
            tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port,
            buses=[dict(id="lift-bus", driver="modbus_rtu", port=line.port, baudrate=19200, timeout="300ms")],
            devices=[dict(id="lift-a", bus="lift-bus", unit=5, interval="100ms", profile="elevator")],
        )
        daemon = Daemon(load_config(config))
        try:
            async with running(daemon):
                await collector.wait_for(lambda: _latest(collector, "door_state") is not None)

                car.trap_between_floors()
                await collector.wait_for(lambda: any(m["data"]["value"] == FAULT_ENTRAPMENT
                                                     for m in _changes(collector, "fault_code")))
                await collector.wait_for(lambda: _latest(collector, "in_door_zone") is False)
                assert _latest(collector, "car_occupied") is True and _latest(collector, "running") is False

                car.press_alarm_button()
                await collector.wait_for(lambda: bool(_changes(collector, "alarm_button")))
                alarm = _changes(collector, "alarm_button")[-1]
                assert alarm["type"] == "alarm" and alarm["priority"] == "alarm" and alarm["source"] == "lift-a"

                car.release()
                car.press_alarm_button(False)
                result = await daemon.commands.execute(
                    WriteCommand(cmd="write", device="lift-a", point="fire_recall", value=True, actor="test"))
                assert result["result"] == "verified"
                await collector.wait_for(lambda: any(m["data"]["value"] == "fire_recall"
                                                     for m in _changes(collector, "mode")))
                await collector.wait_for(
                    lambda: _latest(collector, "current_floor") == 1 and _latest(collector, "door_state") == "open",
                    within=20)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    assert daemon.pollers["lift-a"].state.state == "online"

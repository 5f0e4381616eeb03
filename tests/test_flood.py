"""Flood control: a dead bus is one alarm, not one per device; a chattering point is rate-limited."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import running, until, write_config
from test_rtu_bus import POINTS, bank

from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.rtu import Behaviour, RtuLine, Unit

OFFLINE_RULES = "".join(f"""
[[rules]]
id = "meter-{u}-offline"
when = {{ device = "meter-{u}", state = "offline" }}
for = "3s"  # devices on a dying line drop one by one; the delay lets the root cause be seen first
alarm = {{ class = "equipment", message = "meter {u} is not answering" }}
""" for u in (1, 2, 3))


async def test_a_dead_bus_raises_one_root_cause_alarm_and_counts_the_rest(tmp_path: Path) -> None:
    units = {u: Unit(bank(u * 100)) for u in (1, 2, 3)}
    async with RtuLine(units) as line:
        config = write_config(
            tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None,
            buses=[{"id": "rs485-1", "driver": "modbus_rtu", "port": line.port, "timeout": "150ms"}],
            devices=[{"id": f"meter-{u}", "bus": "rs485-1", "unit": u, "interval": "100ms",
                      "offline_after": 2, "points": POINTS} for u in units])
        config.write_text(config.read_text(encoding="utf-8") + OFFLINE_RULES, encoding="utf-8")
        daemon = Daemon(load_config(config))
        assert daemon.automation is not None
        async with running(daemon):
            await asyncio.sleep(1.0)
            units[2].behaviour = Behaviour.DEAD  # one meter dies: its own alarm
            await until(lambda: daemon.automation.book.get("meter-2-offline") is not None)
            for unit in units.values():  # then the whole line (the RS-485 adapter, the cable)
                unit.behaviour = Behaviour.DEAD
            await until(lambda: daemon.automation.book.get("bus/rs485-1/down") is not None)
            await asyncio.sleep(4.0)  # the meters' own `for` runs out while the bus is down
            for unit in units.values():
                unit.behaviour = Behaviour.OK
            await until(lambda: daemon.automation.book.get("bus/rs485-1/down").state.value  # type: ignore[union-attr]
                         != "active_unack", within=30)
            await daemon.recorder.flush()
            events = await daemon.store.run(daemon.store.store.events_after, 0)
    raised = [e["data"]["key"] for _, e in events if e["kind"] == "alarm.raise"]
    assert raised == ["meter-2-offline", "bus/rs485-1/down"]  # meters 1 and 3 never raised their own
    summary = next(e["data"] for _, e in events if e["kind"] == "flood.summary")
    assert summary["suppressed_alarms"] == 2 and summary["devices"] == ["meter-1", "meter-2", "meter-3"]




async def test_a_chattering_point_is_rate_limited_with_a_summary(tmp_path: Path) -> None:
    ctx = bank(0)
    async with RtuLine({1: Unit(ctx)}, baudrate=115200) as line:
        config = write_config(
            tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None,
            buses=[{"id": "b", "driver": "modbus_rtu", "port": line.port, "baudrate": 115200}],
            devices=[{"id": "door", "bus": "b", "interval": "50ms",
                      "points": [{"id": "contact", "address": 0, "type": "uint16", "on_change": "event"}]}])
        daemon = Daemon(load_config(config))
        async with running(daemon):
            for i in range(40):  # a loose contact: flapping every poll
                ctx.setValues(3, 0, [i % 2])
                await asyncio.sleep(0.06)
            poller = daemon.pollers["door"]
            held = poller._chatter["contact"].refused
            await daemon.recorder.flush()
            events = await daemon.store.run(daemon.store.store.events_after, 0)
    changes = [e for _, e in events if e["kind"] == "point.changed"]
    assert len(changes) == 10 and held >= 15  # ten a minute, the rest counted

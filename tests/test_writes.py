"""Writes: limits, read-back, audit, the CLI, and a write jumping the queue on a busy line."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import running, write_config
from test_rtu_bus import POINTS, bank

from gateway.commands import CommandError, WriteCommand
from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.rtu import RtuLine, Unit

HVAC = [
    {"id": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "unit": "degC", "writable": True,
     "min": 5, "max": 30},
    {"id": "mode", "address": 11, "type": "uint16", "states": {0: "auto", 1: "manual"}, "writable": True},
    {"id": "fan_speed", "address": 12, "type": "uint16", "writable": True, "allowed": [0, 1, 2, 3]},
    {"id": "status", "address": 13, "type": "uint16"},
    {"id": "temperature", "table": "input", "address": 0, "type": "int16", "scale": 0.1, "unit": "degC"},
    {"id": "pump", "table": "coil", "address": 0, "type": "bool", "writable": True},
]


def _toml_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """write_config writes flat tables: give `states` as an inline TOML table and lists as arrays."""
    out = []
    for p in points:
        q = dict(p)
        if "states" in q:
            q["states"] = _Raw("{ " + ", ".join(f'{k} = "{v}"' for k, v in q["states"].items()) + " }")
        if "allowed" in q:
            q["allowed"] = _Raw("[" + ", ".join(str(v) for v in q["allowed"]) + "]")
        out.append(q)
    return out


class _Raw(str):
    """A value written into the TOML as it is."""


def _config(tmp: Path, line: RtuLine, busy_units: int = 0) -> Path:
    buses = [dict(id="rs485-1", driver="modbus_rtu", port=line.port, baudrate=9600, timeout="300ms")]
    devices = [dict(id="ahu-1", bus="rs485-1", unit=1, interval="1s", points=_toml_points(HVAC))]
    devices += [dict(id=f"unit-{u}", bus="rs485-1", unit=u, interval="50ms", points=POINTS)
                for u in range(2, 2 + busy_units)]
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=None, buses=buses, devices=devices)
    text = path.read_text(encoding="utf-8")
    for p in _toml_points(HVAC):  # unquote the raw values write_config quoted
        for key in ("states", "allowed"):
            if key in p:
                text = text.replace(json.dumps(str(p[key]), ensure_ascii=False), str(p[key]))
    path.write_text(text, encoding="utf-8")
    return path


async def test_writes_are_checked_read_back_and_audited(tmp_path: Path) -> None:
    ahu = bank(0)
    async with RtuLine({1: Unit(ahu)}) as line:
        daemon = Daemon(load_config(_config(tmp_path, line)))
        async with running(daemon):
            run = daemon.commands.execute
            ok = await run(WriteCommand(cmd="write", device="ahu-1", point="setpoint", value=21.5, actor="t"))
            assert ok["result"] == "verified" and ok["read_back"] == 21.5
            assert ahu.getValues(3, 10, 1) == [215]  # scaled back to the raw register
            assert (await run(WriteCommand(cmd="write", device="ahu-1", point="mode", value="manual")))[
                "read_back"] == "manual"
            assert ahu.getValues(3, 11, 1) == [1]
            assert (await run(WriteCommand(cmd="write", device="ahu-1", point="pump", value="on")))[
                "result"] == "verified"
            assert ahu.getValues(1, 0, 1)[0] is True
            refusals = {
                ("temperature", 20): "read-only",
                ("status", 1): "read-only",
                ("setpoint", 40): "above its maximum 30",
                ("setpoint", 1): "below its minimum 5",
                ("setpoint", "warm"): "takes a number",
                ("mode", "turbo"): "takes a number or one of auto, manual",
                ("fan_speed", 7): "not an allowed value (0, 1, 2, 3)",
                ("nonexistent", 1): "has no point",
            }
            for (point, value), message in refusals.items():
                with pytest.raises(CommandError, match=re.escape(message)):
                    await run(WriteCommand(cmd="write", device="ahu-1", point=point, value=value, actor="t"))
            await daemon.recorder.flush()
            audit = await daemon.store.run(daemon.store.store.audit_entries, 100)
        assert ahu.getValues(3, 10, 1) == [215]  # no refused value ever reached the device
    results = [(e["point"], e["result"]) for e in audit]
    assert results[:3] == [("setpoint", "verified"), ("mode", "verified"), ("pump", "verified")]
    assert [r for _, r in results[3:]] == ["refused"] * len(refusals)
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM events WHERE kind = 'device.write'")]
    assert len(kinds) == 3 + len(refusals)


async def test_a_write_is_served_before_the_queued_polls(tmp_path: Path) -> None:
    units = {u: Unit(bank(u * 100)) for u in range(1, 11)}
    async with RtuLine(units) as line:
        daemon = Daemon(load_config(_config(tmp_path, line, busy_units=9)))
        async with running(daemon):
            await asyncio.sleep(1.5)  # nine units polling back to back: the queue is never empty
            positions = []
            for value in (10, 20, 25):
                heard_before = len(line.stats.log)
                waiting = daemon.drivers["ahu-1"].scheduler.waiting  # type: ignore[attr-defined]
                await daemon.commands.execute(
                    WriteCommand(cmd="write", device="ahu-1", point="setpoint", value=value, verify=False))
                index = next(i for i, (_, unit, fc) in enumerate(line.stats.log) if i >= heard_before and fc == 16)
                positions.append((index - heard_before, waiting))
                await asyncio.sleep(0.3)
    # At most the transaction already on the wire went first, though several polls were queued.
    assert all(pos <= 1 for pos, _ in positions), positions
    assert max(w for _, w in positions) >= 3, positions


async def test_cli_write_and_audit_through_the_daemon(tmp_path: Path) -> None:
    async with RtuLine({1: Unit(bank(0))}) as line:
        config = _config(tmp_path, line)
        daemon = Daemon(load_config(config))

        async def cli(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", *args, "-c", str(config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        async with running(daemon):
            code, out, _ = await cli("write", "ahu-1", "setpoint", "22.5")
            assert code == 0 and "verified" in out and "22.5" in out
            code, _, err = await cli("write", "ahu-1", "setpoint", "99")
            assert code == 2 and "above its maximum 30" in err
            code, out, _ = await cli("write", "ahu-1", "mode", "manual", "--json")
            assert code == 0 and json.loads(out)["read_back"] == "manual"
            code, out, _ = await cli("read", "ahu-1", "setpoint", "--json")
            assert code == 0 and json.loads(out)[0]["value"] == 22.5
            await daemon.recorder.flush()
            code, out, _ = await cli("audit", "--json")
            entries = json.loads(out)
        code, _, err = await cli("write", "ahu-1", "setpoint", "20")
        assert code == 1 and "daemon is not running" in err
    assert [(e["point"], e["result"]) for e in entries] == [
        ("setpoint", "verified"), ("setpoint", "refused"), ("mode", "verified")]
    assert all(e["actor"].startswith("local:") for e in entries)  # the kernel's word, not the client's

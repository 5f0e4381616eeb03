"""`gateway rules test --replay`: a recording through the rules on simulated time, and the export it reads."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import free_ports, running, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli.rules import add_commands, add_export_arguments, recording_lines
from gateway.config import load_config
from gateway.core.data import Event, Priority
from gateway.daemon import Daemon, open_store
from rules.replay import RecordingError, ReplayStep, parse_recording, replay
from simulators.meter import METER_POINTS, serve_meters

T0 = 1_763_870_400.0  # 2025-11-23 04:00:00 UTC

RULES = """
[[rules]]
id = "fire-recall"
when = { event = "fire.alarm", source = "panel" }
clear_when = { event = "fire.reset", source = "panel" }
alarm = { class = "fire", severity = "critical", message = "Fire in zone {zone}", instance = "{zone}" }
actions = [ { write = "lift-a.fire_recall", value = true } ]

[[rules]]
id = "overvoltage"
when = { point = "meter-0.voltage_a", above = 250, deadband = 5 }
for = "30s"
alarm = { class = "equipment", message = "Voltage {meter-0.voltage_a} V" }

[[rules]]
id = "door-forced"
when = { event = "door.forced", count = 3, within = "5m" }
alarm = { class = "security", message = "Door forced 3 times" }
"""


def _config(tmp: Path, rules: str = RULES, extra_devices: bool = True) -> Path:
    buses: list[dict[str, Any]] = [{"id": "bus-0", "driver": "modbus_tcp", "host": "127.0.0.1", "port": 1502}]
    devices: list[dict[str, Any]] = [{"id": "meter-0", "bus": "bus-0", "points": METER_POINTS}]
    if extra_devices:
        buses.append({"id": "lift-bus", "driver": "modbus_tcp", "host": "127.0.0.1", "port": 1503})
        devices.append({"id": "lift-a", "bus": "lift-bus", "unit": 5, "profile": "elevator"})
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=None, buses=buses, devices=devices)
    path.write_text(path.read_text(encoding="utf-8") + rules, encoding="utf-8")
    return path


def _reading(t: float, value: float, point: str = "voltage_a") -> str:
    return json.dumps({"t": "reading", "ts": T0 + t, "device": "meter-0", "point": point, "value": value, "unit": "V"})


def _event(t: float, kind: str, source: str, **data: Any) -> str:
    return json.dumps({"t": "event", "ts": T0 + t, "kind": kind, "source": source, "priority": "alarm", "data": data})


RECORDING = [
    _reading(0, 230), _reading(10, 260), _reading(20, 262), _reading(45, 247), _reading(60, 240),
    _event(72, "fire.alarm", "panel", zone="04"),
    _event(100, "door.forced", "gate-2"), _event(150, "door.forced", "gate-2"), _event(200, "door.forced", "gate-2"),
    _event(73, "alarm.raise", "panel", key="fire-recall/04"),  # the daemon's own trail: ignored, as it does
    _event(300, "fire.reset", "panel"),
]


def _steps(steps: list[ReplayStep]) -> list[tuple[float, str, str, str, int, str | None]]:
    return [(round(s.at - T0, 3), s.key, s.action, s.state or s.detail, s.level, s.tier) for s in steps]


def test_replay_predicts_fire_escalation_and_clear_at_the_right_times(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    steps = replay(cfg, parse_recording(RECORDING))
    assert _steps(steps) == [
        (40.0, "overvoltage", "raise", "active_unack", 0, "property"),  # above 250 since +10, for 30 s
        (60.0, "overvoltage", "clear", "cleared_unack", 0, None),  # 247 is inside the deadband; 240 is not
        (72.0, "fire-recall/04", "raise", "active_unack", 0, "property"),
        (72.0, "fire-recall/04", "write", "lift-a.fire_recall = true", 0, None),
        (132.0, "fire-recall/04", "escalate", "active_unack", 1, "community"),  # fire: 60 s, then 180 s
        (200.0, "door-forced", "raise", "active_unack", 0, "property"),
        (252.0, "fire-recall/04", "escalate", "active_unack", 2, "fire_brigade"),
        (300.0, "fire-recall/04", "clear", "cleared_unack", 2, None),
        (401.0, "door-forced", "clear", "cleared_unack", 0, None),  # the first one left the 5 min window
        (500.0, "door-forced", "escalate", "cleared_unack", 1, "community"),  # security: 300 s, 900 s
        (1100.0, "door-forced", "escalate", "cleared_unack", 2, "community"),
        (3640.0, "overvoltage", "escalate", "cleared_unack", 1, "community"),  # equipment: 1 h, 4 h
        (14440.0, "overvoltage", "escalate", "cleared_unack", 2, "community"),
    ]
    assert steps[2].message == "Fire in zone 04" and steps[0].message == "Voltage 262 V"
    # the default end is the last record plus the longest deadline of a class in use (equipment: 4 h)
    assert replay(cfg, parse_recording(RECORDING), until=T0 + 250)[-1].at == T0 + 200


def test_replay_with_no_clocked_rules_does_not_tick_through_quiet_hours(tmp_path: Path) -> None:
    from rules.replay import Replayer

    cfg = load_config(_config(tmp_path))
    records = parse_recording([_reading(0, 230), _reading(86400 * 30, 231)])  # a month apart
    replayer = Replayer(cfg, T0)
    replayer.run(records, T0 + 86400 * 30 + 14400)
    assert replayer.ticks < 100  # the event window is empty; nothing is due


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway")
    add_commands(parser.add_subparsers(dest="command", required=True), "/etc/gateway/config.toml")
    return parser.parse_args(argv)


def test_cli_prints_a_readable_timeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    recording = tmp_path / "rec.jsonl"
    recording.write_text("\n".join(RECORDING) + "\n", encoding="utf-8")
    args = _cli(["rules", "test", "-c", str(config), "--replay", str(recording)])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert '+00:01:12  fire-recall/04  raise  -> active_unack  tier=property  "Fire in zone 04"\n' in out
    assert "+00:01:12  fire-recall/04  would write lift-a.fire_recall = true\n" in out
    assert "+00:04:12  fire-recall/04  escalate  -> active_unack  level=2 red  tier=fire_brigade" in out
    assert "+01:00:40  overvoltage  escalate" in out

    args = _cli(["rules", "test", "-c", str(config), "--replay", str(recording), "--until", "5m", "--json"])
    assert args.fn(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["until"] == T0 + 300 and data["ignored"] == 1
    assert [s["action"] for s in data["steps"]][-1] == "clear" and data["steps"][2]["offset"] == 72.0


def test_cli_config_and_recording_errors_exit_2_with_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, RULES.replace("meter-0.voltage_a", "meter-0.voltage_x"))
    recording = tmp_path / "rec.jsonl"
    recording.write_text(RECORDING[0] + "\n\n{\"t\": \"reading\", \"ts\": 1}\n", encoding="utf-8")
    args = _cli(["rules", "test", "-c", str(config), "--replay", str(recording)])
    with pytest.raises(SystemExit) as exited:
        args.fn(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"{config}:" in err and "voltage_x" in err

    args = _cli(["rules", "test", "-c", str(_config(tmp_path)), "--replay", str(recording)])
    assert args.fn(args) == 2
    assert capsys.readouterr().err.strip() == f'{recording}:3: "device" must be a non-empty string, not null or missing'


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "line 1: not JSON"),
    ("[1, 2]", "line 1: a record is a JSON object, not list"),
    ('{"t": "sample", "ts": 1}', 'line 1: "t" must be "reading" or "event", not "sample"'),
    ('{"t": "event", "ts": 1, "kind": "x", "source": "s", "colour": "red"}',
     "line 1: unknown key(s) in an event: 'colour'"),
    ('{"t": "event", "ts": "yesterday", "kind": "x", "source": "s"}', 'line 1: "ts" must be epoch seconds'),
    ('{"t": "event", "ts": 1e300, "kind": "x", "source": "s"}', 'line 1: "ts" must be epoch seconds'),
    ('{"t": "event", "ts": NaN, "kind": "x", "source": "s"}', 'line 1: "ts" must be epoch seconds'),
    ('{"t": "event", "ts": 1, "kind": "x", "source": "s", "data": [1]}', 'line 1: "data" must be an object'),
    ('{"t": "reading", "ts": 1, "device": "d", "point": "p", "value": {"a": 1}}', 'line 1: "value" must be'),
    ('{"t": "reading", "ts": 1, "device": "d", "point": "p", "value": 1, "quality": "meh"}', 'line 1: "quality" must'),
    ('{"t": "reading", "ts": 1, "device": "d\\ud800", "point": "p", "value": 1}',
     "line 1: text that is not valid Unicode"),
    ("[" * 100_000, "line 1: JSON nested too deeply"),
])
def test_bad_lines_give_a_clear_error_with_the_line_number(line: str, message: str) -> None:
    with pytest.raises(RecordingError) as caught:
        parse_recording([line])
    assert str(caught.value).startswith(message)
    with pytest.raises(RecordingError) as caught:
        parse_recording([RECORDING[0], "", line])
    assert caught.value.line == 3
    with pytest.raises(RecordingError, match="line 2: not UTF-8"):
        parse_recording([RECORDING[0].encode(), b"\xff\xfe"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text_raises_nothing_but_a_recording_error(text: str) -> None:
    try:
        parse_recording(text.splitlines())
    except RecordingError as exc:
        assert exc.line >= 1 and str(exc).startswith(f"line {exc.line}: ")


_JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                    max_size=3), max_leaves=8)
_KEYS = st.sampled_from(["t", "ts", "device", "point", "value", "unit", "quality", "kind", "source", "priority",
                         "data", "id"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _JSON | st.sampled_from(["reading", "event", "good", "alarm", 1.5e9]), max_size=8))
def test_arbitrary_near_records_raise_nothing_but_a_recording_error(record: dict[str, Any]) -> None:
    try:
        line = json.dumps(record)
    except ValueError:
        return
    try:
        parsed = parse_recording([line])
    except RecordingError:
        return
    assert len(parsed) == 1


# -- the round trip: a real daemon's store, exported, replayed -----------------------------------------------

ROUND_TRIP_RULES = """
[[alarm_classes]]
name = "fire"
latching = true
escalate_after = ["1s", "2s"]
tiers = ["property", "community", "fire_brigade"]

[[rules]]
id = "fire-recall"
when = { event = "fire.alarm", source = "panel" }
clear_when = { event = "fire.reset", source = "panel" }
alarm = { class = "fire", severity = "critical", message = "Fire in zone {zone}", instance = "{zone}" }

[[rules]]
id = "overvoltage"
when = { point = "meter-0.voltage_a", above = 240 }
alarm = { class = "equipment", message = "Voltage {value} V" }
"""


async def test_export_from_a_daemon_run_replays_to_the_alarms_it_raised(tmp_path: Path) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    try:
        meter = server.meters[0]
        meter.freeze()
        meter.set_point("voltage_a", 230.0)
        config = write_config(
            tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None,
            buses=[{"id": "bus-0", "driver": "modbus_tcp", "host": "127.0.0.1", "port": server.ports[0],
                    "timeout": "300ms"}],
            devices=[{"id": "meter-0", "bus": "bus-0", "interval": "200ms", "points": METER_POINTS}])
        config.write_text(config.read_text(encoding="utf-8") + ROUND_TRIP_RULES, encoding="utf-8")
        cfg = load_config(config)
        daemon = Daemon(cfg)
        async with running(daemon):
            await asyncio.sleep(1.0)
            meter.set_point("voltage_a", 251.5)
            await asyncio.sleep(1.0)
            meter.set_point("voltage_a", 229.0)
            await asyncio.sleep(0.6)
            daemon.bus.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "04"}))
            await asyncio.sleep(2.6)  # both escalations
            daemon.bus.event(Event("fire.reset", "panel", Priority.EVENT, {}))
            await asyncio.sleep(0.6)
    finally:
        await server.close()

    store = open_store(cfg, read_only=True)
    lines = list(recording_lines(store))
    actual = [(e["ts"], e["data"]["key"], e["data"]["action"], e["data"]["state"], e["data"]["level"])
              for e in store.events_since() if e["kind"].startswith("alarm.")]
    records = parse_recording(lines)
    assert [json.loads(x)["ts"] for x in lines] == sorted(json.loads(x)["ts"] for x in lines)
    assert sum(1 for r in records if hasattr(r.item, "point")) > 100  # readings, one record per point
    predicted = [s for s in replay(cfg, records, until=max(r.ts for r in records)) if s.kind == "transition"]

    assert [(k, a, s, lv) for _, k, a, s, lv in actual] == [
        ("overvoltage", "raise", "active_unack", 0), ("overvoltage", "clear", "cleared_unack", 0),
        ("fire-recall/04", "raise", "active_unack", 0), ("fire-recall/04", "escalate", "active_unack", 1),
        ("fire-recall/04", "escalate", "active_unack", 2), ("fire-recall/04", "clear", "cleared_unack", 2)]
    assert [(s.key, s.action, s.state, s.level) for s in predicted] == [(k, a, s, lv) for _, k, a, s, lv in actual]
    for (ts, *_), step in zip(actual, predicted, strict=True):
        assert abs(step.at - ts) < 0.3, (step, ts)  # readings carry the poll time; the daemon, its arrival time


def test_events_export_option_writes_the_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.site import cmd_events
    from gateway.core.data import Quality, Reading
    from gateway.daemon import data_path
    from gateway.facts import points_body
    from gateway.store import Batch, Store

    config = _config(tmp_path)
    cfg = load_config(config)
    store = Store(data_path(cfg))
    readings = [Reading("meter-0", "voltage_a", 230.0, "V", Quality.GOOD, T0),
                Reading("meter-0", "status", None, None, Quality.BAD, T0)]
    store.commit(Batch(events=[Event("fire.alarm", "panel", Priority.ALARM, {"zone": "04"}, ts=T0 + 5)],
                       history=[("meter-0", T0, points_body(readings, T0))]))
    store.close()
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config", type=Path)
    parser.add_argument("-n", "--last", type=int, default=50)
    add_export_arguments(parser)
    out = tmp_path / "rec.jsonl"
    assert cmd_events(parser.parse_args(["-c", str(config), "--export", str(out)])) == 0
    assert "3 records written" in capsys.readouterr().err
    records = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert records == [
        {"t": "reading", "ts": T0, "device": "meter-0", "point": "voltage_a", "value": 230.0, "quality": "good",
         "unit": "V"},
        {"t": "reading", "ts": T0, "device": "meter-0", "point": "status", "value": None, "quality": "bad"},
        {"t": "event", "ts": T0 + 5, "kind": "fire.alarm", "source": "panel", "priority": "alarm",
         "data": {"zone": "04"}, "id": records[2]["id"]},
    ]
    assert len(parse_recording(out.read_text(encoding="utf-8").splitlines())) == 3
    assert cmd_events(parser.parse_args(["-c", str(config), "--export", str(out), "--since", "1h"])) == 0
    assert "0 records written" in capsys.readouterr().err  # all of it is years old

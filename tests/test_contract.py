"""The native JSON contract v2: models, the generated schema, the event catalogue and the device metadata.

Every message kind, and every catalogued event kind's data, validates against both the models and the schema
the models generate; the shipped schema file is that schema; every event kind the source can emit is in the
catalogue, and the integrator's guide carries the catalogue's table.
"""

from __future__ import annotations

import ast
import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.cli import main
from gateway.cli.points import as_json
from gateway.config import load_config
from gateway.northbound import catalogue
from gateway.northbound.catalog import device_meta
from gateway.northbound.contract import (
    TelemetryMessage,
    V,
    event_type,
    historical,
    parse,
    render_schema,
    topic_of,
    upstream_schema,
)
from rules.alarms import AlarmBook
from rules.escalation import AlarmClass

REPO = Path(__file__).resolve().parent.parent
SCHEMA = upstream_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SITE = "sunshine-b3"
IDS = iter(f"0190a1b2-c3d4-7{n:03x}-8abc-0123456789ab" for n in range(4096))
REGENERATE = ".venv/bin/gateway schema upstream > gateway/northbound/upstream-v2.json"


def errors(message: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(message)]


def valid(message: dict[str, Any]) -> None:
    """Both ways: the schema a platform uses and the models the gateway has."""
    assert errors(message) == []
    parse(message)


def invalid(message: dict[str, Any]) -> None:
    assert errors(message), f"the schema accepts {message}"
    with pytest.raises(ValidationError):
        parse(message)


def event(kind: str, data: dict[str, Any], priority: str = "event", **more: Any) -> dict[str, Any]:
    return {"v": V, "id": next(IDS), "site": SITE, "type": event_type(kind, priority), "kind": kind,
            "priority": priority, "source": "meter-1", "ts": 1767225600.125, "data": data, **more}


def telemetry(**more: Any) -> dict[str, Any]:
    return {"v": V, "id": next(IDS), "site": SITE, "type": "telemetry", "device": "meter-1", "ts": 1767225600.0,
            "points": {"voltage_a": {"v": 231.5, "u": "V", "q": "good"}, "relay": {"v": True, "q": "good"},
                       "serial": {"v": None, "q": "bad"}, "mode": {"v": "auto", "q": "stale", "ts": 1767225001.5}},
            **more}


def summary(**more: Any) -> dict[str, Any]:
    return {"v": V, "id": next(IDS), "site": SITE, "type": "summary", "device": "meter-1", "start": 1767225300.0,
            "end": 1767225600.0, "points": {"power": {"min": 1.0, "max": 9.5, "mean": 4.25, "last": 3, "count": 60,
                                                      "q": "good", "u": "kW"}, "state": {"last": None, "q": "bad"}},
            **more}


CAMERA = {"camera": "lobby"}
DATA: dict[str, dict[str, Any]] = {
    "gateway.started": {"version": "0.2.0", "config": "ab" * 32, "devices": 3, "cameras": 1},
    "gateway.stopped": {},
    "gateway.task_ended": {"restart_in": 1.0},
    "gateway.task_crashed": {"error": "RuntimeError('x')", "trace": "Traceback ...", "restart_in": 2.0, "restarts": 1},
    "clock.synchronized": {"since": 1767225600.0, "until": 1767225660.0, "step_s": 86400.5,
                           "unsynced_for_s": 60.0},
    "config.applied": {"config": "ab" * 32, "previous": "cd" * 32, "changed": {"restart": ["meter-1"]},
                       "by": "signal:SIGHUP"},
    "config.rejected": {"reason": "restart the service to apply store.max_mb", "problems": [],
                        "running": "cd" * 32, "config": "ab" * 32, "by": "local:ops (ops)"},
    "command.dropped": {"reason": "not JSON", "dropped": {"not JSON": 3, "flood": 120}},
    "device.online": {"offline_for": 61.2},
    "device.offline": {"error": "DeviceTimeout: no answer", "kind": "timeout", "failures": 3},
    "device.write": {"device": "pump", "point": "setpoint", "value": 21.5, "actor": "ops (sudo by li)",
                     "result": "verified", "latency_ms": 12.5, "read_back": 21.5},
    "device.point_unreadable": {"point": "pf", "address": "holding 40", "answer": "exception 2"},
    "device.overrun": {"interval": 0.1, "actual": 0.31, "missed": 21},
    "device.overrun_cleared": {"interval": 0.1, "actual": 0.1, "missed": 3, "clears": "device.overrun"},
    "point.changed": {"point": "door", "value": 1, "previous": 0},
    "point.chatter": {"point": "door", "suppressed": 40, "window_s": 60},
    "point.counter_wrap": {"point": "energy", "register": 1, "total": 4294967297},
    "point.counter_reset": {"point": "energy", "register": 0.7, "total": 12.5},
    "store.disk_full": {"error": "database or disk is full", "reserve_released": True},
    "store.disk_recovered": {"shed": {"telemetry": 120}, "clears": "store.disk_full"},
    "store.telemetry_dropped": {"dropped": 5000},
    "rule.action_failed": {"rule": "recall", "key": "recall", "action": "write lift.recall", "error": "timeout"},
    "flood.summary": {"bus": "rs485-a", "suppressed_alarms": 4, "devices": ["m1", "m2"]},
    **{kind: {"text": "火警 01-023 2F", "pattern": "gst_cn:fire", "zone": "2F", "loop": "01", "address": "023",
              "panel_time": "12:00:01", "repeat": False} for kind in catalogue.CATALOGUE if kind.startswith("fire.")},
    "panel.unparsed": {"raw_hex": "c4e3", "text": "??", "mentions": "火警"},
    "panel.comm_lost": {"reason": "silent", "silent_for": 95.0, "heartbeat": 90.0},
    "panel.comm_restored": {"silent_for": 120.0, "clears": "panel.comm_lost"},
    "face.recognized": {**CAMERA, "person": "r-0101", "score": 0.71},
    "face.unknown": {**CAMERA, "score": 0.2},
    "plate.read": {**CAMERA, "plate": "京A12345", "score": 0.93, "list": None},
    "plate.unreadable": {**CAMERA, "score": 0.41, "width_px": 96.0, "reason": "low_confidence"},
    "fall.suspected": {**CAMERA, "track": "0", "descent_torso": 1.2, "torso_angle_deg": 78.0, "descent_s": 0.6,
                       "hold_s": 10.0},
    "fall.detected": {**CAMERA, "confidence": 0.9, "track": "0", "descent_torso": 1.4, "torso_angle_deg": 80.0,
                      "down_s": 3.0},
    "fall.cancelled": {**CAMERA, "track": "0", "down_s": 1.7},
    "camera.connected": {**CAMERA, "url": "rtsp://admin:***@10.0.0.5/s1"},
    "camera.lost": {**CAMERA, "reason": "stalled", "retry_in": 2.0},
    "camera.error": {**CAMERA, "stage": "faces", "error": "OSError: model"},
    "camera.flood": {**CAMERA, "suppressed": 300, "window_s": 60},
}


def transition_payloads() -> list[tuple[str, dict[str, Any]]]:
    """A real momentary fall, from the alarm book: raised and cleared in the same second, acknowledged, reset."""
    book, fall = AlarmBook(), AlarmClass("fall", latching=True, escalate_after=(60.0,), tiers=("family", "property"))
    at = 1767225600.0
    steps = [book.raise_alarm("fall/lobby", fall, at, message="resident down", source="lobby"),
             book.clear("fall/lobby", at + 0.4), book.tick(at + 61), book.acknowledge("fall/lobby", "li", at + 70),
             book.reset("fall/lobby", "li", at + 80)]
    alarm = book.get("fall/lobby")
    assert alarm is not None
    out = []
    for transitions in steps:
        for t in transitions:
            ev = t.to_event(alarm)
            out.append((ev.kind, ev.payload))
    return out


# -- every message kind ----------------------------------------------------------------------------------------


def test_the_schema_is_2020_12_and_every_message_kind_validates() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema" and SCHEMA["$id"].endswith("-v2.json")
    base = {"v": V, "site": SITE}
    examples = [
        telemetry(), telemetry(hist=True), {**telemetry(), "points": {"voltage_a": {"v": 230.9, "q": "good"}}},
        summary(),
        event("device.offline", DATA["device.offline"]),
        event("fire.alarm", DATA["fire.alarm"], "alarm"),
        event("alarm.raise", {**dict(transition_payloads())["alarm.raise"]}, "event"),  # equipment class: alarm/
        event("ops.pump_started", {"rule": "pumps", "key": "pumps", "anything": [1, 2]}),  # a rule's own kind
        {**base, "type": "state", "device": "meter-1", "state": "offline", "since": 1767225000.0,
         "error": "DeviceTimeout: no answer", "ts": 1767225600.0},
        {**base, "type": "meta", "device": "lift-1", "driver": "modbus", "config": "ab" * 32, "ts": 1767225600.0,
         "points": {"direction": {"type": "string", "writable": False, "states": {"0": "stopped", "1": "up"}},
                    "setpoint": {"type": "float", "unit": "°C", "writable": True, "min": 5.0, "max": 30.0}}},
        {**base, "type": "status", "state": "online", "bdseq": 7, "ts": 1767225600.0, "version": "0.2.0",
         "config": "ab" * 32, "started": 1767225590.0},
        {**base, "type": "status", "state": "offline", "bdseq": 7},  # the last will: no ts
        {**base, "type": "status", "state": "offline", "bdseq": 7, "ts": 1767229200.0},  # a clean shutdown
        {**base, "id": next(IDS), "type": "batch", "class": "telemetry", "items": [
            {**telemetry(hist=True), "topic": "telemetry/meter-1"},
            {**summary(hist=True), "topic": "summary/meter-1"}]},
        {**base, "id": next(IDS), "type": "batch", "class": "event", "items": [
            {**event("device.online", DATA["device.online"], hist=True), "topic": "event/device.online"}]},
    ]
    for message in examples:
        valid(message)
    assert {m["type"] for m in examples} == {"telemetry", "summary", "event", "alarm", "state", "meta", "status",
                                             "batch"}


def test_every_catalogued_kind_has_typed_data_that_validates() -> None:
    assert set(DATA) | {k for k in catalogue.CATALOGUE if k.startswith("alarm.")} == set(catalogue.CATALOGUE)
    for kind, info in catalogue.CATALOGUE.items():
        for priority in info.priority:
            if not kind.startswith("alarm."):
                valid(event(kind, DATA[kind], priority))
    missing_field = event("device.offline", {"error": "x", "kind": "timeout"})  # no failures: typed data refuses
    invalid(missing_field)


def test_a_momentary_fall_stays_open_until_reset_and_its_trail_validates() -> None:
    """The states docs/upstream.md tells platforms: clear is not the end; normal is."""
    trail = transition_payloads()
    assert [(kind, data["before"], data["state"]) for kind, data in trail] == [
        ("alarm.raise", "normal", "active_unack"), ("alarm.clear", "active_unack", "cleared_unack"),
        ("alarm.escalate", "cleared_unack", "cleared_unack"), ("alarm.acknowledge", "cleared_unack", "latched"),
        ("alarm.reset", "latched", "normal")]
    assert [d["seq"] for _, d in trail] == sorted(d["seq"] for _, d in trail)
    for kind, data in trail:
        valid(event(kind, json.loads(json.dumps(data)), "alarm"))
        assert kind in catalogue.CATALOGUE


def test_unknown_fields_are_accepted_and_kept() -> None:
    message = telemetry(future={"nested": 1})
    message["points"]["voltage_a"]["accuracy"] = 0.5
    valid(message)
    model = TelemetryMessage.model_validate(message)
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == message
    valid(event("device.offline", {**DATA["device.offline"], "bus": "rs485-a"}))
    valid({"v": V, "site": SITE, "type": "status", "state": "offline", "bdseq": 1, "reason": "new"})


@pytest.mark.parametrize("bad", [
    pytest.param(lambda m: m.pop("id"), id="no id"),
    pytest.param(lambda m: m.update(v=1), id="v1"),
    pytest.param(lambda m: m.pop("site"), id="no site"),
    pytest.param(lambda m: m["points"]["voltage_a"].update(q="ok"), id="quality"),
    pytest.param(lambda m: m.update(hist=False), id="hist false"),
    pytest.param(lambda m: m.update(id="not-a-uuid"), id="id"),
    pytest.param(lambda m: m.update(device="a/b"), id="device with a slash"),
    pytest.param(lambda m: m.update(type="reading"), id="type"),
])
def test_a_bad_telemetry_message_is_rejected(bad: Any) -> None:
    message = telemetry()
    bad(message)
    invalid(message)


def test_the_topic_rule_and_batches_are_enforced() -> None:
    invalid({**event("fire.alarm", DATA["fire.alarm"], "alarm"), "type": "event"})  # an alarm on event/
    invalid({**event("alarm.clear", dict(transition_payloads())["alarm.clear"], "event"), "type": "event"})
    invalid({**event("device.offline", DATA["device.offline"]), "type": "alarm"})  # an event on alarm/
    invalid({"v": V, "site": SITE, "type": "status", "state": "online", "bdseq": 1})  # a birth needs its ts ...
    item = {**event("fire.alarm", DATA["fire.alarm"], "alarm", hist=True), "topic": "alarm/fire.alarm"}
    invalid({"v": V, "site": SITE, "id": next(IDS), "type": "batch", "class": "event", "items": [item]})
    tel = {**telemetry(hist=True), "topic": "telemetry/meter-1"}
    invalid({"v": V, "site": SITE, "id": next(IDS), "type": "batch", "class": "event", "items": [tel]})
    invalid({"v": V, "site": SITE, "id": next(IDS), "type": "batch", "class": "telemetry",
             "items": [{**tel, "hist": None}]})
    with pytest.raises(ValidationError):  # the item's topic is its own (the schema cannot say it)
        parse({"v": V, "site": SITE, "id": next(IDS), "type": "batch", "class": "telemetry",
               "items": [{**tel, "topic": "telemetry/other"}]})


def test_topics_types_and_history_helpers() -> None:
    assert [topic_of(m) for m in (telemetry(), summary(), event("fire.alarm", {}, "alarm"))] == [
        "telemetry/meter-1", "summary/meter-1", "alarm/fire.alarm"]
    assert topic_of({"type": "status"}) == "status" and topic_of({"type": "batch", "class": "event"}) == "batch/event"
    assert event_type("alarm.acknowledge", "event") == "alarm" and event_type("device.offline", "event") == "event"
    assert historical(100.0, 160.5) and not historical(100.0, 160.0) and historical(0.0, 11.0, live_window=10)



@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_valid_telemetry_round_trips_through_the_models(data: st.DataObject) -> None:
    name = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_\-]{0,20}\Z")
    stamp = st.integers(0, 4_000_000_000_000).map(lambda ms: ms / 1000)
    value = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20),
                      st.floats(allow_nan=False, allow_infinity=False))
    point = st.fixed_dictionaries({"v": value, "q": st.sampled_from(["good", "bad", "stale"])},
                                  optional={"u": st.text(min_size=1, max_size=5), "ts": stamp})
    message = data.draw(st.fixed_dictionaries(
        {"v": st.just(V), "id": st.sampled_from([next(IDS) for _ in range(3)]), "site": name,
         "type": st.just("telemetry"), "device": name, "ts": stamp,
         "points": st.dictionaries(name, point, max_size=8)},
        optional={"hist": st.just(True), "x_future": st.integers()}))
    model = TelemetryMessage.model_validate(message)
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == message
    assert TelemetryMessage.model_validate_json(model.model_dump_json(exclude_unset=True)) == model
    assert errors(json.loads(json.dumps(message))) == []


# -- the shipped schema, the CLI, the catalogue in the docs ------------------------------------------------------


def test_the_shipped_schema_is_the_generated_one() -> None:
    shipped = importlib.resources.files("gateway.northbound").joinpath("upstream-v2.json").read_text("utf-8")
    assert shipped == render_schema(), f"gateway/northbound/upstream-v2.json is stale: run {REGENERATE}"
    assert (REPO / "schemas" / "upstream-v1.json").is_file()  # kept for v1 consumers during the migration


def test_gateway_schema_upstream_and_kinds_print_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "upstream"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(SCHEMA))
    assert main(["schema", "kinds", "--json"]) == 0
    assert [k["kind"] for k in json.loads(capsys.readouterr().out)] == [k.kind for k in catalogue.KINDS]
    assert main(["config", "schema"]) == 0 and "Community gateway configuration" in capsys.readouterr().out


def test_the_guide_carries_the_catalogue_and_its_examples_are_valid() -> None:
    guide = (REPO / "docs" / "upstream.md").read_text("utf-8")
    assert catalogue.markdown() in guide, "docs/upstream.md: paste `gateway schema kinds` over its catalogue table"
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", guide, re.DOTALL)]
    assert {m["type"] for m in examples} == {"telemetry", "summary", "event", "alarm", "state", "meta", "status",
                                             "health", "batch"}
    for message in examples:
        valid(message)


# -- the catalogue holds every kind the code emits -------------------------------------------------------------

EMITTERS = {"Event", "vision_event", "_new_event", "_overrun_event", "event"}
"""Calls whose first argument is an event kind (``self.out.event(kind, ...)`` in the camera worker too)."""


def emitted_kinds() -> tuple[set[str], set[str]]:
    """(string literals passed as a kind, constant prefixes of f-string kinds), from the source."""
    literals, prefixes = set(), set()
    constants: dict[str, str] = {}
    for package in ("gateway", "drivers", "rules", "models"):
        for path in sorted((REPO / package).rglob("*.py")):
            if {"bench", "northbound"} & set(path.relative_to(REPO).parts):
                continue
            tree = ast.parse(path.read_text("utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                        and isinstance(node.value.value, str) and len(node.targets) == 1 \
                        and isinstance(node.targets[0], ast.Name):
                    constants[node.targets[0].id] = node.value.value
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and node.args:
                    name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                    first = node.args[0]
                    if name in EMITTERS:
                        if isinstance(first, ast.Constant) and isinstance(first.value, str):
                            literals.add(first.value)
                        elif isinstance(first, ast.Name) and first.id in constants:
                            literals.add(constants[first.id])
                        elif isinstance(first, ast.JoinedStr) and isinstance(first.values[0], ast.Constant):
                            prefixes.add(str(first.values[0].value))
                    if name == "append" and isinstance(first, ast.Tuple) and len(first.elts) == 2 \
                            and isinstance(first.elts[1], ast.Dict):  # a driver's findings: (kind, data)
                        kind = first.elts[0]
                        if isinstance(kind, ast.Constant):
                            literals.add(str(kind.value))
                        elif isinstance(kind, ast.JoinedStr) and isinstance(kind.values[0], ast.Constant):
                            prefixes.add(str(kind.values[0].value))
    return {k for k in literals if re.fullmatch(r"[a-z_]+\.[a-z_]+", k)}, prefixes


def test_every_kind_the_source_emits_is_catalogued() -> None:
    from drivers.firepanel.driver import KINDS as PANEL_KINDS
    from models.events import KINDS as CAMERA_KINDS
    from rules.alarm_state import ALLOWED

    literals, prefixes = emitted_kinds()
    assert {"device.offline", "gateway.started", "store.disk_full", "flood.summary", "device.point_unreadable",
            "camera.connected"} <= literals  # the scan sees the emitters it is meant to see
    assert literals - set(catalogue.CATALOGUE) == set(), "emitted but not in gateway/northbound/catalogue.py"
    assert prefixes == {"alarm.", "point.counter_"}, "a new computed kind: catalogue its values and check them here"
    assert {f"alarm.{action}" for action in ALLOWED} == {k for k in catalogue.CATALOGUE if k.startswith("alarm.")}
    counters = (REPO / "drivers" / "modbus" / "counters.py").read_text("utf-8")
    assert {f"point.counter_{h}" for h in re.findall(r'happened = "(\w+)"', counters)} == {
        "point.counter_wrap", "point.counter_reset"}
    for kind, priority in [*PANEL_KINDS.values(), *CAMERA_KINDS.items()]:
        assert catalogue.CATALOGUE[kind].priority == (priority.label,), kind


# -- device metadata -----------------------------------------------------------------------------------------


def test_device_meta_is_the_point_catalog_of_gateway_points(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"""
[site]
id = "{SITE}"
[store]
data_dir = "{tmp_path}"
[[buses]]
id = "plant"
driver = "modbus_tcp"
host = "127.0.0.1"
[[devices]]
id = "lift-1"
bus = "plant"
unit = 1
name = "Tower A lift"
profile = "elevator"
[[devices]]
id = "water"
bus = "plant"
unit = 2
profile = "water_meter"
[[devices]]
id = "spare"
bus = "plant"
unit = 3
profile = "water_meter"
enabled = false
""", encoding="utf-8")
    cfg = load_config(config)
    meta = device_meta(cfg)
    assert list(meta) == ["lift-1", "water"]  # a disabled device is not announced
    assert meta["lift-1"]["driver"] == "modbus" and meta["lift-1"]["name"] == "Tower A lift"
    assert meta["lift-1"]["points"]["direction"]["states"] == {"0": "stopped", "1": "up", "2": "down"}
    for device_id, device_meta_ in meta.items():
        rows = [as_json(device_id, info) for info in cfg.device(device_id).describe()]
        assert list(device_meta_["points"]) == [row["point"] for row in rows]
        for row in rows:  # the same facts `gateway points --json` prints, minus the wire address
            point = device_meta_["points"][row["point"]]
            expected = {"type": row["datatype"], "writable": row["writable"], "unit": row["unit"] or None,
                        "min": row["min"], "max": row["max"], "allowed": row["allowed"], "states": row["states"],
                        "description": row["description"] or None}
            assert point == {k: v for k, v in expected.items() if v is not None}
        valid({"v": V, "site": SITE, "type": "meta", "device": device_id, "config": "ab" * 32, "ts": 1.0,
               **copy.deepcopy(device_meta_)})

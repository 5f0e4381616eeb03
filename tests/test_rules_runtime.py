"""One rules runtime: the daemon's Automation and the offline replay predict the same alarms, on a clock we step."""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import until, write_config

from gateway.automation import Automation
from gateway.cli.rules import add_commands
from gateway.commands import CommandError, CommandHandler, WriteCommand
from gateway.config import load_config
from gateway.config.schema import GatewayConfig
from gateway.core.data import Event, Priority, Reading
from gateway.core.errors import DriverError
from gateway.core.timing import ManualClock, settle
from rules.alarms import AlarmError
from rules.replay import Record, parse_recording, replay
from rules.runtime import (
    MAX_CHAIN,
    ChainStopped,
    Notify,
    PersistAlarm,
    Publish,
    RulesRuntime,
    Suppressed,
    Write,
)
from simulators.meter import METER_POINTS

ROOT = Path(__file__).parent.parent
T0 = 1_763_870_400.0  # 2025-11-23 04:00:00 UTC

DEAD_BUS_RULES = "".join(f"""
[[rules]]
id = "meter-{u}-offline"
when = {{ device = "meter-{u}", state = "offline" }}
for = "3s"
alarm = {{ class = "equipment", message = "meter {u} is not answering" }}
""" for u in (1, 2, 3)) + """
[[rules]]
id = "bus-back"
when = { event = "flood.summary" }
alarm = { class = "equipment", message = "bus {bus} is back; {suppressed_alarms} alarms were held back" }
"""

ACTION_RULES = """
[[notifiers]]
id = "sounder"
url = "http://127.0.0.1:9/alarm"
retries = 2

[[rules]]
id = "fire-recall"
when = { event = "fire.alarm", source = "panel" }
clear_when = { event = "fire.reset", source = "panel" }
alarm = { class = "fire", severity = "critical", message = "Fire in zone {zone}", instance = "{zone}" }
actions = [
  { write = "lift-a.fire_recall", value = true },
  { notify = "sounder" },
  { publish = "ops.fire_recall", data = { lift = "lift-a" } },
]

[[rules]]
id = "recall-logged"
when = { event = "ops.fire_recall" }
alarm = { class = "equipment", message = "lift recalled for {key}" }

[[rules]]
id = "ping"
when = { event = "loop.ping" }
actions = [ { publish = "loop.pong" } ]

[[rules]]
id = "pong"
when = { event = "loop.pong" }
actions = [ { publish = "loop.ping" } ]
"""
WRITE_RULES = ACTION_RULES.replace('  { notify = "sounder" },\n', "")


def _config(tmp: Path, rules: str) -> GatewayConfig:
    path = write_config(
        tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=None,
        buses=[{"id": "rs485-1", "driver": "modbus_tcp", "host": "127.0.0.1", "port": 1502},
               {"id": "lift-bus", "driver": "modbus_tcp", "host": "127.0.0.1", "port": 1503}],
        devices=[*({"id": f"meter-{u}", "bus": "rs485-1", "unit": u, "points": METER_POINTS} for u in (1, 2, 3)),
                 {"id": "lift-a", "bus": "lift-bus", "unit": 5, "profile": "elevator"}])
    path.write_text(path.read_text(encoding="utf-8") + rules, encoding="utf-8")
    cfg: GatewayConfig = load_config(path)
    return cfg


def _event(t: float, kind: str, source: str, **data: Any) -> str:
    return json.dumps({"t": "event", "ts": T0 + t, "kind": kind, "source": source, "data": data})


def _reading(t: float, device: str, value: float) -> str:
    return json.dumps({"t": "reading", "ts": T0 + t, "device": device, "point": "voltage_a", "value": value})


# The RS-485 line of three meters: meter-2 dies alone first, then the whole line, then it comes back.
DEAD_BUS = [
    _reading(0, "meter-1", 230.0),
    _event(10, "device.offline", "meter-2"),  # alone: its own alarm, 3 s later
    _event(20, "device.offline", "meter-1"),
    _event(20.5, "device.offline", "meter-3"),  # every meter offline: the bus is down
    _event(40, "device.online", "meter-1"),  # back: the root cause clears, the summary counts meters 1 and 3
    _event(41, "device.online", "meter-2"),
    _event(42, "device.online", "meter-3"),
]


class FakeBus:
    """The daemon's bus as the rules see it: listeners called synchronously, everything published kept."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.events: list[Event] = []
        self.alarm_states: dict[str, dict[str, Any]] = {}
        self._on_event: list[Any] = []
        self._on_snapshot: list[Any] = []

    def on_event(self, handler: Any) -> None:
        self._on_event.append(handler)

    def on_snapshot(self, handler: Any) -> None:
        self._on_snapshot.append(handler)

    def event(self, ev: Event) -> None:
        self.events.append(ev)
        for handler in self._on_event:
            handler(ev)

    def snapshot(self, device: str, readings: list[Reading]) -> None:
        for handler in self._on_snapshot:
            handler(device, readings)

    def alarm_state(self, key: str, record: dict[str, Any]) -> None:
        self.alarm_states[key] = record

    def trail(self) -> list[tuple[float, str, str, str, int]]:
        return [(round(e.ts - T0, 3), e.payload["key"], e.payload["action"], e.payload["state"], e.payload["level"])
                for e in self.events if e.kind.startswith("alarm.")]


class FakeCommands:
    """A CommandHandler whose writes answer from a script; it notes when each attempt came."""

    def __init__(self, clock: ManualClock, answers: list[Any]) -> None:
        self.clock = clock
        self.answers = answers
        self.attempts: list[tuple[float, WriteCommand]] = []

    async def execute(self, command: WriteCommand) -> dict[str, Any]:
        self.attempts.append((self.clock.time() - T0, command))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return cast(dict[str, Any], answer)


def _automation(cfg: GatewayConfig, clock: ManualClock, answers: list[Any] | None = None,
                stored: dict[str, dict[str, Any]] | None = None) -> tuple[Automation, FakeBus, FakeCommands]:
    bus = FakeBus(clock)
    commands = FakeCommands(clock, answers or [{"result": "verified"}])
    automation = Automation(cfg, bus, cast(CommandHandler, commands), stored or {}, clock=clock)
    return automation, bus, commands


async def _drive(automation: Automation, bus: FakeBus, clock: ManualClock, records: list[Record],
                 until: float) -> None:
    """The daemon's side of a recording: each record reaches the bus at its time; the clock runs in between."""
    for record in sorted(records, key=lambda r: r.ts):
        await clock.advance(record.ts - clock.time())
        item = record.item
        if isinstance(item, Reading):
            bus.snapshot(item.device, [item])
        else:
            bus.event(item)
        await settle()
    await clock.advance(until - clock.time())


# -- the same alarms from the daemon and from the replay ------------------------------------------------------------

EXPECTED_DEAD_BUS = [
    (13.0, "meter-2-offline", "raise", "active_unack", 0),  # alone: its `for` runs out
    (20.5, "bus/rs485-1/down", "raise", "active_unack", 0),  # the root cause; meters 1 and 3 are not raised
    (40.0, "bus/rs485-1/down", "clear", "cleared_unack", 0),
    (40.0, "bus-back", "raise", "active_unack", 0),  # a rule on the flood summary sees it in both
    (40.0, "bus-back", "clear", "cleared_unack", 0),
    (41.0, "meter-2-offline", "clear", "cleared_unack", 0),
]


async def test_a_dead_bus_gives_the_same_alarms_in_the_daemon_and_in_the_replay(tmp_path: Path) -> None:
    cfg = _config(tmp_path, DEAD_BUS_RULES)
    records = parse_recording(DEAD_BUS)

    steps = replay(cfg, records, until=T0 + 60)
    predicted = [(round(s.at - T0, 3), s.key, s.action, s.state, s.level) for s in steps if s.kind == "transition"]

    clock = ManualClock(epoch=T0)
    automation, bus, _ = _automation(cfg, clock)
    task = asyncio.create_task(automation.run())
    try:
        await _drive(automation, bus, clock, records, until=T0 + 60)
    finally:
        task.cancel()
        await automation.close()

    assert bus.trail() == predicted == EXPECTED_DEAD_BUS
    # the summary: published once, when the bus came back, counting what it held back
    [summary] = [e for e in bus.events if e.kind == "flood.summary"]
    assert (summary.ts, summary.source) == (T0 + 40, "rs485-1")
    assert summary.payload == {"bus": "rs485-1", "suppressed_alarms": 2, "devices": ["meter-1", "meter-2", "meter-3"]}
    [published] = [s for s in steps if s.kind == "action"]
    assert (published.at, published.action, published.detail, published.key) == (
        T0 + 40, "publish", "flood.summary", "bus/rs485-1/down")
    assert "2 alarm(s) suppressed" in published.message
    notes = [(round(s.at - T0, 3), s.key, s.action) for s in steps if s.kind == "note"]
    assert notes == [(23.0, "meter-1-offline", "suppressed"), (23.5, "meter-3-offline", "suppressed")]
    # the daemon stored each alarm's state with its transition
    assert bus.alarm_states["bus/rs485-1/down"]["state"] == "cleared_unack"
    assert automation.book.get("meter-1-offline") is None and automation.book.get("meter-3-offline") is None


def test_a_recorded_flood_summary_is_an_echo_the_replay_skips(tmp_path: Path) -> None:
    """A recording of the daemon holds the summary it published; replaying produces it again, once."""
    cfg = _config(tmp_path, DEAD_BUS_RULES)
    recorded = [*DEAD_BUS, _event(40, "flood.summary", "rs485-1", bus="rs485-1", suppressed_alarms=2,
                                  devices=["meter-1", "meter-2", "meter-3"])]
    steps = replay(cfg, parse_recording(recorded), until=T0 + 60)
    assert [(round(s.at - T0, 3), s.key, s.action, s.state, s.level) for s in steps
            if s.kind == "transition"] == EXPECTED_DEAD_BUS


def test_the_default_end_leaves_room_for_the_root_cause_to_escalate(tmp_path: Path) -> None:
    from rules.replay import default_until

    fire_only = ACTION_RULES.split("[[rules]]\nid = \"recall-logged\"")[0]
    cfg = _config(tmp_path, fire_only)
    assert default_until(cfg, parse_recording(DEAD_BUS[:2])) == T0 + 10 + 14400  # equipment: red after 4 h
    assert default_until(cfg, parse_recording(DEAD_BUS[:1])) == T0 + 180  # fire: red after 3 min


def test_cli_timeline_shows_the_root_cause_and_what_it_held_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "cli"
    _config(cfg_path, DEAD_BUS_RULES)
    recording = tmp_path / "dead-bus.jsonl"
    recording.write_text("\n".join(DEAD_BUS) + "\n", encoding="utf-8")
    parser = argparse.ArgumentParser(prog="gateway")
    add_commands(parser.add_subparsers(dest="command", required=True), "/etc/gateway/config.toml")
    args = parser.parse_args(["rules", "test", "-c", str(cfg_path / "gateway.toml"), "--replay", str(recording),
                              "--until", "1m"])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert '+00:00:20.500  bus/rs485-1/down  raise  -> active_unack  tier=property' in out
    assert "+00:00:23  note: meter-1-offline not raised: bus rs485-1 is down (counted in its flood.summary)" in out
    assert "+00:00:40  bus/rs485-1/down  would publish flood.summary" in out
    assert "meter-1-offline  raise" not in out and "meter-3-offline  raise" not in out
    assert out.rstrip().endswith("3 raise(s), 0 escalation(s), 3 clear(s), 1 action(s) that would run,"
                                 " 2 held back by a bus that was down")


# -- the runtime on its own: actions, chains, commands, restore ---------------------------------------------------


def _runtime(cfg: GatewayConfig, stored: list[dict[str, Any]] | None = None) -> RulesRuntime:
    return RulesRuntime.from_config(cfg, started=T0, stored=stored or [])


def test_a_firing_returns_its_alarm_and_actions_in_order(tmp_path: Path) -> None:
    runtime = _runtime(_config(tmp_path, ACTION_RULES))
    actions = runtime.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "04"}, ts=T0 + 5), T0 + 5)
    shape = [(type(a).__name__, a.event.kind if isinstance(a, Publish) else getattr(a, "key", "")) for a in actions]
    assert shape == [
        ("Publish", "alarm.raise"), ("PersistAlarm", "fire-recall/04"),  # the transition, then its state
        ("Write", "fire-recall/04"), ("Notify", "fire-recall/04"),
        ("Publish", "ops.fire_recall"),  # published, and fed back to the rules at once:
        ("Publish", "alarm.raise"), ("PersistAlarm", "recall-logged"),
        ("Publish", "alarm.clear"), ("PersistAlarm", "recall-logged"),  # a momentary event returns to normal
    ]
    write, notify, published = actions[2], actions[3], actions[4]
    assert write == Write("lift-a", "fire_recall", True, "fire-recall", "fire-recall/04", "Fire in zone 04")
    assert notify == Notify("sounder", "fire-recall", "fire-recall/04", "Fire in zone 04", "panel")
    assert isinstance(published, Publish) and published.event.ts == T0 + 5 and published.event.payload == {
        "lift": "lift-a", "rule": "fire-recall", "key": "fire-recall/04"}
    assert runtime.tick_now  # the rules changed: the clock should run at once
    ignored = runtime.event(Event("alarm.raise", "panel", Priority.ALARM, {}), T0 + 6)  # our own trail
    assert (ignored, runtime.tick_now) == ([], False)
    # the same input on a fresh runtime gives the same ids: derived, not drawn
    again = _runtime(_config(tmp_path / "again", ACTION_RULES)).event(
        Event("fire.alarm", "panel", Priority.ALARM, {"zone": "04"}, ts=T0 + 5), T0 + 5)
    assert [a.event.id for a in again if isinstance(a, Publish)] == [
        a.event.id for a in actions if isinstance(a, Publish)]


def test_a_rule_publishing_what_it_listens_to_is_stopped_after_max_chain_rounds(tmp_path: Path) -> None:
    runtime = _runtime(_config(tmp_path, ACTION_RULES))
    actions = runtime.event(Event("loop.ping", "somewhere", ts=T0), T0)
    assert [type(a) for a in actions] == [Publish] * (MAX_CHAIN + 1) + [ChainStopped]
    assert actions[-1] == ChainStopped("ping", "loop.pong")  # rounds 0..8: ping, pong, ..., ping
    steps = replay(_config(tmp_path / "r", ACTION_RULES), parse_recording([_event(0, "loop.ping", "somewhere")]))
    assert [s.action for s in steps] == ["publish"] * (MAX_CHAIN + 1) + ["loop"]
    assert steps[-1].message == f"ping publishes 'loop.pong' in a loop; stopped following it after {MAX_CHAIN} rounds"


def test_commands_listing_and_restore_after_a_restart(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ACTION_RULES)
    runtime = _runtime(cfg)
    stored: dict[str, dict[str, Any]] = {}

    def keep(actions: list[Any]) -> list[str]:
        stored.update({a.key: a.record for a in actions if isinstance(a, PersistAlarm)})
        return [a.transition.action for a in actions if isinstance(a, Publish) and a.transition is not None]

    keep(runtime.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "04"}), T0))
    assert keep(runtime.command("acknowledge", "fire-recall/04", "guard-1", T0 + 10, note="on my way")) == [
        "acknowledge"]
    assert runtime.tick_now
    with pytest.raises(AlarmError, match="already acknowledged"):
        runtime.command("acknowledge", "fire-recall/04", "guard-1", T0 + 11)
    with pytest.raises(AlarmError, match="unknown alarm action"):
        runtime.command("silence", "fire-recall/04", "guard-1", T0 + 11)
    assert [a["key"] for a in runtime.listing()] == ["recall-logged", "fire-recall/04"]
    assert runtime.next_wakeup() == T0 + 3600  # the unacknowledged equipment alarm's; the acknowledged fire has none

    restarted = _runtime(cfg, [*stored.values(), {"key": "junk"}])
    assert restarted.listing(everything=True) == runtime.listing(everything=True)
    assert restarted.not_restored[0][0] == "junk"
    # the restored engine knows the alarm is active, so the reset event clears it
    assert keep(restarted.event(Event("fire.reset", "panel"), T0 + 20)) == ["clear"]
    assert keep(restarted.command("reset", "fire-recall/04", "guard-1", T0 + 21)) == ["reset"]
    assert [a["key"] for a in restarted.listing()] == ["recall-logged"]


def test_the_runtime_knows_its_own_echoes(tmp_path: Path) -> None:
    runtime = _runtime(_config(tmp_path, ACTION_RULES + DEAD_BUS_RULES))
    assert runtime.publishes(Event("ops.fire_recall", "fire-recall"))
    assert not runtime.publishes(Event("ops.fire_recall", "someone-else"))
    assert runtime.publishes(Event("flood.summary", "rs485-1"))
    assert not runtime.publishes(Event("flood.summary", "lift-bus"))  # one device: no root cause there


def test_a_bus_with_one_device_has_no_root_cause(tmp_path: Path) -> None:
    runtime = _runtime(_config(tmp_path, DEAD_BUS_RULES))
    assert runtime.event(Event("device.offline", "lift-a"), T0) == []
    actions = [a for m in ("meter-1", "meter-2", "meter-3")
               for a in runtime.event(Event("device.offline", m), T0 + 1)]
    assert [a.event.payload["key"] for a in actions if isinstance(a, Publish)] == ["bus/rs485-1/down"]
    fired = runtime.tick(T0 + 5)
    assert {a.key for a in fired if isinstance(a, Suppressed)} == {"meter-1-offline", "meter-2-offline",
                                                                   "meter-3-offline"}
    assert runtime.suppressed == {"rs485-1": 3}


# -- the daemon's side on a clock we step: retries at exact times -------------------------------------------------


async def test_a_failing_write_is_retried_with_backoff_then_reported(tmp_path: Path) -> None:
    cfg = _config(tmp_path, WRITE_RULES)
    clock = ManualClock(epoch=T0)
    automation, bus, commands = _automation(cfg, clock, [DriverError("no answer")])
    bus.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "04"}))
    await settle()
    for _ in range(30):
        await clock.advance(1.0)
    await automation.close()
    assert [t for t, _ in commands.attempts] == [0.0, 0.5, 1.5, 3.5, 7.5]  # 0.5 s doubling, five attempts
    assert commands.attempts[0][1].actor == "rule:fire-recall"
    [failed] = [e for e in bus.events if e.kind == "rule.action_failed"]
    assert failed.ts == T0 + 7.5 and failed.priority is Priority.ALARM  # reported right after the last attempt
    assert failed.payload == {"rule": "fire-recall", "key": "fire-recall/04", "action": "write lift-a.fire_recall",
                              "error": "DriverError: no answer"}


async def test_a_write_refused_by_limits_is_not_retried_and_a_mismatch_is(tmp_path: Path) -> None:
    cfg = _config(tmp_path, WRITE_RULES)
    clock = ManualClock(epoch=T0)
    automation, bus, commands = _automation(cfg, clock, [CommandError("fire_recall is read-only")])
    bus.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "04"}))
    await settle()
    assert len(commands.attempts) == 1
    assert [e.payload["error"] for e in bus.events if e.kind == "rule.action_failed"] == ["fire_recall is read-only"]

    clock = ManualClock(epoch=T0)
    automation, bus, commands = _automation(cfg, clock, [{"result": "mismatch", "read_back": False},
                                                         {"result": "verified"}])
    bus.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "04"}))
    await settle()
    await clock.advance(0.5)
    await automation.close()
    assert [t for t, _ in commands.attempts] == [0.0, 0.5]
    assert not [e for e in bus.events if e.kind == "rule.action_failed"]


async def test_a_failing_webhook_is_retried_on_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, ACTION_RULES)
    clock = ManualClock(epoch=T0)
    posted: list[float] = []

    def refuse(request: urllib.request.Request, timeout: float) -> Any:
        posted.append(clock.time() - T0)
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    automation, bus, _ = _automation(cfg, clock)
    bus.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "04"}))
    for expected in (1, 2):  # the POST runs in a worker thread: wait for it, then step the clock
        await until(lambda n=expected: len(posted) == n and clock.sleepers >= 1)
        await clock.advance(2.0 ** (expected - 1))
    await until(lambda: any(e.kind == "rule.action_failed" for e in bus.events))  # no wait after the last
    await automation.close()
    assert posted == [0.0, 1.0, 3.0]  # retries = 2: three attempts, 1 s then 2 s apart
    [failed] = [e for e in bus.events if e.kind == "rule.action_failed"]
    assert failed.ts == T0 + 3.0 and failed.payload["action"] == "notify sounder"
    assert "ConnectionRefusedError" in failed.payload["error"]


async def test_the_clock_loop_raises_a_for_rule_exactly_when_it_is_due(tmp_path: Path) -> None:
    cfg = _config(tmp_path, DEAD_BUS_RULES)
    clock = ManualClock(epoch=T0)
    automation, bus, _ = _automation(cfg, clock)
    task = asyncio.create_task(automation.run())
    try:
        await clock.advance(0.25)
        bus.event(Event("device.offline", "meter-2"))
        await clock.advance(2.999)
        assert automation.book.get("meter-2-offline") is None
        await clock.advance(0.001)
        assert bus.trail() == [(3.25, "meter-2-offline", "raise", "active_unack", 0)]
        assert automation.listing()[0]["key"] == "meter-2-offline"
        assert automation.command("acknowledge", "meter-2-offline", "guard-1") == ["acknowledge"]
    finally:
        task.cancel()
        await automation.close()




# -- layering ------------------------------------------------------------------------------------------------------


def test_rules_import_nothing_of_the_gateway_but_its_core_and_runtime_does_no_io() -> None:
    for path in sorted((ROOT / "rules").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test) == "TYPE_CHECKING" for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("gateway") or name.startswith("gateway.core"), f"{path.name}: {name}"
    for name in ("runtime.py", "replay.py", "engine.py"):
        source = (ROOT / "rules" / name).read_text(encoding="utf-8")
        tree = ast.parse(source)
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"time", "asyncio", "socket", "urllib.request", "os", "pathlib", "threading"}, name
        assert "open(" not in source and ".now(" not in source and "time.time" not in source, name

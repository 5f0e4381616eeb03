"""Rules on a recording, offline: which alarms would fire, escalate and clear, and when.

A *recording* is JSON lines, one record per line, in any order (they are replayed in time order,
file order breaking ties). Blank lines are skipped. Two kinds of record::

    {"t": "reading", "ts": 1763870400.25, "device": "meter-1", "point": "voltage_a", "value": 231.5,
     "unit": "V", "quality": "good"}
    {"t": "event", "ts": 1763870412.0, "kind": "fire.alarm", "source": "panel", "priority": "alarm",
     "data": {"zone": "04"}, "id": "0193..."}

``ts`` is epoch seconds (a finite number, 0 .. 10^10). A reading's ``value`` is a number, true/false,
a string or null; ``unit`` (string or null) and ``quality`` ("good", "bad", "stale"; default good)
may be left out. An event's ``priority`` ("alarm", "event", "telemetry"; default "event"), ``data``
(an object; default {}) and ``id`` (a string) may be left out. Any other key is an error: a typo
must not silently change what is replayed. ``gateway events --export`` writes this format.

Replay is what the daemon does, on simulated time: the same ``RulesRuntime`` (``rules.runtime``),
built from the same config, fed each record at its ``ts``. Between records the clock advances only
to the moments something can happen: a pending ``for`` or an escalation, shelve or chatter deadline
(``RulesRuntime.next_wakeup``), and, for clocked rules, the tick of a one-second clock (anchored at
the first record) just after an event window empties, a point goes stale, an absence runs out or
the minute changes (time windows and CEL expressions read the local time). That is what a
one-second ticker would see, without ticking through quiet hours one second at a time.

As in the daemon, ``alarm.*`` events are ignored (rules react to conditions, not to their own
trail), an event a rule's ``publish`` action produces is fed back to the rules at once, and a bus
whose every device goes offline is one ``bus/<id>/down`` alarm: rules that only say one of its
devices is offline are not raised (a "suppressed" note) and are counted in the ``flood.summary``
published when the bus comes back. So a recorded event the runtime itself publishes (a configured
rule's ``publish``: same kind, source = that rule's id; a ``flood.summary`` of a bus) is skipped, or
it would be counted twice. Actions (writes, webhooks, publishes) are listed, never run.

Pure: no I/O and no clock reads; the caller reads the file and passes its lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gateway.core.data import Event, Priority, Quality, Reading
from rules.alarms import AlarmBook
from rules.conditions import AbsentNode, AllNode, EventNode, ExprNode, Node, StaleNode, TimeNode, walk
from rules.config import build_classes
from rules.engine import Engine
from rules.escalation import colour
from rules.runtime import (
    FLOOD_SUMMARY,
    MAX_CHAIN,
    ROOT_CAUSE_CLASS,
    Action,
    ChainStopped,
    Notify,
    Publish,
    RulesRuntime,
    SiteRules,
    Suppressed,
    Write,
    device_buses,
)

MAX_TS = 1e10
"""Latest accepted ``ts`` (year 2286): past it local-time conversion overflows."""
CLOCK = 1.0
"""Seconds between the daemon's ticks of clocked rules; the replay's clock grid."""
MAX_TICKS = 2_000_000
"""Clock steps one replay may take; a year of minute-by-minute schedules is about 530,000."""
MAX_FEEDBACK = MAX_CHAIN
"""Depth of publish -> rule -> publish chains followed before the replay calls it a loop (the daemon's)."""

_READING_KEYS = {"t", "ts", "device", "point", "value", "unit", "quality"}
_EVENT_KEYS = {"t", "ts", "kind", "source", "priority", "data", "id"}


class RecordingError(ValueError):
    """A line of the recording that cannot be replayed; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


@dataclass(frozen=True, slots=True)
class Record:
    line: int
    ts: float
    item: Reading | Event


@dataclass(frozen=True, slots=True)
class ReplayStep:
    """One thing the rules would do: an alarm transition, an action, or a note from the replay itself."""

    at: float
    kind: Literal["transition", "action", "note"]
    key: str  # the alarm key; for an action, the alarm key (or rule id) it fired for
    action: str  # raise, clear, escalate, chatter ... | write, notify, publish | a note's topic
    state: str = ""  # the alarm's state after a transition
    level: int = 0
    colour: str = ""
    tier: str | None = None
    message: str = ""
    detail: str = ""  # an action's target, e.g. "lift-a.fire_recall = true"
    line: int | None = None  # the recording line that caused it; None when the clock did

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- parsing ---------------------------------------------------------------------------------------


def parse_recording(lines: Iterable[str | bytes]) -> list[Record]:
    """Every record, in file order; raises only ``RecordingError`` (naming the line) on bad input."""
    records: list[Record] = []
    for number, raw in enumerate(lines, 1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RecordingError(number, f"not UTF-8 (byte {exc.start})") from None
        text = raw.strip()
        if text:
            records.append(_record(number, text))
    return records


def _record(number: int, text: str) -> Record:
    try:
        data = json.loads(text)
    except RecursionError:
        raise RecordingError(number, "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise RecordingError(number, f"not JSON: {str(exc).split(':')[0]}") from None
    if not isinstance(data, dict):
        raise RecordingError(number, f"a record is a JSON object, not {type(data).__name__}")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError):
        raise RecordingError(number, "text that is not valid Unicode (a lone surrogate)") from None
    kind = data.get("t")
    if kind not in ("reading", "event"):
        raise RecordingError(number, f"\"t\" must be \"reading\" or \"event\", not {_show(kind)}")
    unknown = set(data) - (_READING_KEYS if kind == "reading" else _EVENT_KEYS)
    if unknown:
        what = "a reading" if kind == "reading" else "an event"
        raise RecordingError(number, f"unknown key(s) in {what}: {', '.join(sorted(map(repr, unknown)))}")
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or not 0 <= ts <= MAX_TS:
        raise RecordingError(number, f"\"ts\" must be epoch seconds (0 .. {MAX_TS:.0e}), not {_show(ts)}")
    ts = float(ts)
    if kind == "reading":
        device, point = _text(number, data, "device"), _text(number, data, "point")
        value = data.get("value")
        if isinstance(value, dict | list):
            raise RecordingError(number, "\"value\" must be a number, true/false, a string or null")
        unit = data.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise RecordingError(number, f"\"unit\" must be a string, not {_show(unit)}")
        quality = data.get("quality", "good")
        if quality not in ("good", "bad", "stale"):
            raise RecordingError(number, f"\"quality\" must be good, bad or stale, not {_show(quality)}")
        return Record(number, ts, Reading(device, point, value, unit, Quality(quality), ts))
    event_kind = _text(number, data, "kind")
    source = data.get("source")
    if not isinstance(source, str):
        raise RecordingError(number, f"\"source\" must be a string, not {_show(source)}")
    priority = data.get("priority", "event")
    if priority not in ("alarm", "event", "telemetry"):
        raise RecordingError(number, f"\"priority\" must be alarm, event or telemetry, not {_show(priority)}")
    payload = data.get("data", {})
    if not isinstance(payload, dict):
        raise RecordingError(number, f"\"data\" must be an object, not {_show(payload)}")
    event_id = data.get("id", f"replay-{number}")
    if not isinstance(event_id, str):
        raise RecordingError(number, f"\"id\" must be a string, not {_show(event_id)}")
    return Record(number, ts, Event(event_kind, source, Priority.from_label(priority), payload, ts=ts, id=event_id))


def _text(number: int, data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise RecordingError(number, f"\"{key}\" must be a non-empty string, not {_show(value)}")
    return value


def _show(value: Any) -> str:
    if value is None:
        return "null or missing"
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


# -- replay ----------------------------------------------------------------------------------------


def default_until(cfg: SiteRules, records: list[Record]) -> float | None:
    """The last record plus the longest escalation deadline of any class a rule raises (and the root cause's,
    when a device on a shared bus goes offline)."""
    if not records:
        return None
    classes = build_classes(cfg.alarm_classes)
    used = {r.alarm.class_ for r in cfg.rules if r.alarm is not None and r.alarm.class_ in classes}
    bus_of = device_buses(cfg)
    shared = {bus for bus in bus_of.values() if list(bus_of.values()).count(bus) >= 2}
    if any(isinstance(r.item, Event) and r.item.kind == "device.offline" and bus_of.get(r.item.source) in shared
           for r in records):
        used.add(ROOT_CAUSE_CLASS)
    longest = max((d for name in used for d in classes[name].escalate_after), default=0.0)
    return max(r.ts for r in records) + longest


def replay(cfg: SiteRules, records: list[Record], *, until: float | None = None,
           max_ticks: int = MAX_TICKS) -> list[ReplayStep]:
    """Every transition and action, in time order; ``until`` is epoch seconds (see ``default_until``)."""
    ordered = sorted(records, key=lambda r: r.ts)  # stable: file order breaks ties
    if not ordered:
        return []
    end = default_until(cfg, ordered) if until is None else until
    assert end is not None
    return Replayer(cfg, ordered[0].ts, max_ticks=max_ticks).run(ordered, end)


class Replayer:
    """The daemon's rules on simulated time: the same ``RulesRuntime``, and the steps its actions make."""

    def __init__(self, cfg: SiteRules, start: float, *, max_ticks: int = MAX_TICKS) -> None:
        self.cfg = cfg
        self.start = start
        self.max_ticks = max_ticks
        self.runtime = RulesRuntime.from_config(cfg, started=start)
        self.steps: list[ReplayStep] = []
        self.now = self.last_tick = start
        self.ticks = 0
        self.skipped = 0  # alarm.* and echoed events, ignored as the daemon would
        self._clocked: list[Node] = [
            n for s in self.engine.states if s.clocked
            for root in (s.when, s.clear_when) if root is not None for n in walk(root) if n.clocked]

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def book(self) -> AlarmBook:
        return self.runtime.book

    def run(self, records: list[Record], until: float) -> list[ReplayStep]:
        if self._clocked:  # the daemon's first tick, as it starts
            self._tick(None)
        for record in records:
            if record.ts > until:
                break
            self.advance(record.ts)
            self.feed(record)
        self.advance(until)
        return self.steps

    def feed(self, record: Record) -> None:
        self.now = max(self.now, record.ts)
        item = record.item
        if isinstance(item, Reading):
            actions = self.runtime.readings(item.device, [item], self.now)
        elif item.kind.startswith("alarm.") or self.runtime.publishes(item):
            self.skipped += 1
            return
        else:
            actions = self.runtime.event(item, self.now)
        self._list(actions, record.line)
        if self.runtime.tick_now:  # the daemon wakes its clock after any rule output and ticks at once
            self._tick(record.line)

    def advance(self, to: float) -> None:
        """Tick everything due up to and including ``to``, in order."""
        while True:
            deadline = self.runtime.next_wakeup()
            due = [] if deadline is None else [deadline]
            clock = self._next_clock()
            if clock is not None:
                due.append(clock)
            if not due or min(due) > to:
                return
            if self.ticks >= self.max_ticks:
                self._note("clock", f"stopped after {self.max_ticks} clock steps; later timed changes are not shown")
                self._clocked = []
                self.max_ticks = self.ticks + 10_000  # deadlines still run, but never forever
                if self.ticks >= self.max_ticks:
                    return
                continue
            self.ticks += 1
            # a deadline at or before now (already ticked there) moves a millisecond on, so the loop advances
            self.now = max(min(due), self.now + 0.001) if min(due) <= self.now else min(due)
            self._tick(None)

    def _tick(self, line: int | None) -> None:
        self.last_tick = self.now
        self._list(self.runtime.tick(self.now), line)

    # -- the clock grid ---------------------------------------------------------------------------------

    def _next_clock(self) -> float | None:
        """The first one-second tick at which a clocked condition may answer differently."""
        if not self._clocked:
            return None
        world, best = self.engine.world, None
        for node in self._clocked:
            at = _changes_after(node, self.last_tick, world.started, world.last_good)
            if at is None:
                continue
            strict, when = at
            if when < self.last_tick or (not strict and when == self.last_tick):
                continue  # the last tick already saw it
            if when < self.now or (strict and when == self.now):  # passed since, unseen: the next tick sees it
                when, strict = self.now, True
            k = math.floor((when - self.start) / CLOCK) + 1 if strict else math.ceil((when - self.start) / CLOCK)
            tick = self.start + k * CLOCK
            best = tick if best is None else min(best, tick)
        return best

    # -- the runtime's actions, listed ------------------------------------------------------------------

    def _list(self, actions: list[Action], line: int | None) -> None:
        for action in actions:
            step = _step(action, self.now, line)
            if step is not None:
                self.steps.append(step)

    def _note(self, topic: str, text: str, line: int | None = None) -> None:
        self.steps.append(ReplayStep(self.now, "note", "", topic, message=text, line=line))


def _step(action: Action, now: float, line: int | None) -> ReplayStep | None:
    """What one action of the runtime looks like in the timeline; None for what is not shown (persisting)."""
    if isinstance(action, Publish):
        t = action.transition
        if t is not None:
            return ReplayStep(t.at, "transition", t.key, t.action, state=t.after.value, level=t.level,
                              colour=colour(t.level), tier=t.tier, message=action.message, line=line)
        return ReplayStep(now, "action", action.key, "publish", detail=action.event.kind, line=line,
                          message=action.message)
    if isinstance(action, Write):
        detail = f"{action.device}.{action.point} = {json.dumps(action.value, ensure_ascii=False)}"
        return ReplayStep(now, "action", action.key, "write", detail=detail, line=line, message=action.message)
    if isinstance(action, Notify):
        return ReplayStep(now, "action", action.key, "notify", detail=action.notifier, line=line,
                          message=action.message)
    if isinstance(action, Suppressed):
        return ReplayStep(now, "note", action.key, "suppressed", line=line,
                          message=f"{action.key} not raised: bus {action.bus} is down (counted in its {FLOOD_SUMMARY})")
    if isinstance(action, ChainStopped):
        return ReplayStep(now, "note", "", "loop", line=line,
                          message=f"{action.source} publishes {action.kind!r} in a loop; stopped following it after"
                                  f" {MAX_CHAIN} rounds")
    return None


def _changes_after(node: Node, last_tick: float, started: float, last_good: dict[str, float]
                   ) -> tuple[bool, float] | None:
    """(strictly after?, when): the first moment after the last tick at which a clocked node's answer may
    change with time alone; None if never."""
    if isinstance(node, EventNode):
        return (True, node.seen[0] + node.cfg.within) if node.seen else None
    if isinstance(node, StaleNode):
        return True, last_good.get(node.cfg.stale, started) + node.cfg.after
    if isinstance(node, AbsentNode):
        return True, (started if node.last_seen is None else node.last_seen) + node.cfg.within
    if isinstance(node, TimeNode | ExprNode):  # local hour/minute/weekday change on the minute
        return False, (math.floor(last_tick / 60.0) + 1) * 60.0
    if isinstance(node, AllNode):
        return None  # its children are in the list themselves
    return True, last_tick  # a clocked node this module does not know: tick every second


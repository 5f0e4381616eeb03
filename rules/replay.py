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

Replay is what the daemon does, on simulated time: the same ``Engine`` and ``AlarmBook``, fed each
record at its ``ts``. Between records the clock advances only to the moments something can happen:
a pending ``for`` (``Engine.next_wakeup``), an escalation, shelve or chatter deadline
(``AlarmBook.next_wakeup``), and, for clocked rules, the tick of a one-second clock (anchored at the
first record) just after an event window empties, a point goes stale, an absence runs out or the
minute changes (time windows and CEL expressions read the local time). That is what a one-second
ticker would see, without ticking through quiet hours one second at a time.

As in the daemon, ``alarm.*`` events are ignored (rules react to conditions, not to their own
trail) and an event a rule's ``publish`` action produces is fed back to the engine at once; so a
recorded event that a configured rule itself publishes (same kind, source = that rule's id) is
skipped, or it would be counted twice. Actions (writes, webhooks, publishes) are listed, never run.

Pure: no I/O and no clock reads; the caller reads the file and passes its lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from gateway.core.data import Event, Priority, Quality, Reading
from rules.alarms import AlarmBook
from rules.conditions import AbsentNode, AllNode, EventNode, ExprNode, Node, StaleNode, TimeNode, walk
from rules.config import NotifyAction, PublishAction, WriteAction, build_classes
from rules.engine import Cleared, Engine, Fired, Output
from rules.escalation import Transition, colour

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig

MAX_TS = 1e10
"""Latest accepted ``ts`` (year 2286): past it local-time conversion overflows."""
CLOCK = 1.0
"""Seconds between the daemon's ticks of clocked rules; the replay's clock grid."""
MAX_TICKS = 2_000_000
"""Clock steps one replay may take; a year of minute-by-minute schedules is about 530,000."""
MAX_FEEDBACK = 8
"""Depth of publish -> rule -> publish chains followed before the replay calls it a loop."""

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


def default_until(cfg: GatewayConfig, records: list[Record]) -> float | None:
    """The last record plus the longest escalation deadline of any class a rule raises."""
    if not records:
        return None
    classes = build_classes(cfg.alarm_classes)
    used = {r.alarm.class_ for r in cfg.rules if r.alarm is not None and r.alarm.class_ in classes}
    longest = max((d for name in used for d in classes[name].escalate_after), default=0.0)
    return max(r.ts for r in records) + longest


def replay(cfg: GatewayConfig, records: list[Record], *, until: float | None = None,
           max_ticks: int = MAX_TICKS) -> list[ReplayStep]:
    """Every transition and action, in time order; ``until`` is epoch seconds (see ``default_until``)."""
    ordered = sorted(records, key=lambda r: r.ts)  # stable: file order breaks ties
    if not ordered:
        return []
    end = default_until(cfg, ordered) if until is None else until
    assert end is not None
    return Replayer(cfg, ordered[0].ts, max_ticks=max_ticks).run(ordered, end)


class Replayer:
    """The daemon's Automation on simulated time: Engine + AlarmBook, and the steps they produce."""

    def __init__(self, cfg: GatewayConfig, start: float, *, max_ticks: int = MAX_TICKS) -> None:
        self.cfg = cfg
        self.start = start
        self.max_ticks = max_ticks
        self.classes = build_classes(cfg.alarm_classes)
        tz = ZoneInfo(cfg.site.timezone) if cfg.site.timezone else None
        self.engine = Engine(cfg.rules, started=start, tz=tz)
        self.book = AlarmBook()
        self.steps: list[ReplayStep] = []
        self.now = self.last_tick = start
        self.ticks = 0
        self.skipped = 0  # alarm.* and echoed publish events, ignored as the daemon would
        self._clocked: list[Node] = [
            n for s in self.engine.states if s.clocked
            for root in (s.when, s.clear_when) if root is not None for n in walk(root) if n.clocked]
        self._echoes = {(a.publish, r.id) for r in cfg.rules for a in r.actions if isinstance(a, PublishAction)}

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
            outputs = self.engine.reading(item, self.now)
        elif item.kind.startswith("alarm.") or (item.kind, item.source) in self._echoes:
            self.skipped += 1
            return
        else:
            outputs = self.engine.event(item, self.now)
        if outputs:  # the daemon wakes its clock after any output and ticks at once
            self._apply(outputs, record.line, 0)
            self._tick(record.line)

    def advance(self, to: float) -> None:
        """Tick everything due up to and including ``to``, in order."""
        while True:
            due = [t for t in (self.engine.next_wakeup(), self.book.next_wakeup()) if t is not None]
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
        self._apply(self.engine.tick(self.now), line, 0)
        self._record(self.book.tick(self.now), line)

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

    # -- outputs ----------------------------------------------------------------------------------------

    def _apply(self, outputs: list[Output], line: int | None, depth: int) -> None:
        for output in outputs:
            if isinstance(output, Fired):
                rule = output.rule
                if rule.alarm is not None:
                    cls = self.classes[rule.alarm.class_]
                    self._record(self.book.raise_alarm(
                        output.key, cls, self.now, message=output.message, source=output.source,
                        severity=rule.alarm.severity, data=_json_safe(output.data)), line)
                for action in rule.actions:
                    self._act(action, output, line, depth)
            elif isinstance(output, Cleared):
                self._record(self.book.clear(output.key, self.now), line)

    def _act(self, action: Any, fired: Fired, line: int | None, depth: int) -> None:
        if isinstance(action, WriteAction):
            detail = f"{action.write} = {json.dumps(action.value, ensure_ascii=False)}"
            self.steps.append(ReplayStep(self.now, "action", fired.key, "write", detail=detail, line=line,
                                         message=fired.message))
        elif isinstance(action, NotifyAction):
            self.steps.append(ReplayStep(self.now, "action", fired.key, "notify", detail=action.notify, line=line,
                                         message=fired.message))
        elif isinstance(action, PublishAction):
            self.steps.append(ReplayStep(self.now, "action", fired.key, "publish", detail=action.publish, line=line,
                                         message=fired.message))
            if depth >= MAX_FEEDBACK:
                self._note("loop", f"rule {fired.rule.id} publishes {action.publish!r} in a loop; stopped following"
                                   f" it after {MAX_FEEDBACK} rounds", line)
                return
            event = Event(action.publish, fired.rule.id, Priority.ALARM if action.priority == "alarm" else
                          Priority.EVENT, {**action.data, "rule": fired.rule.id, "key": fired.key}, ts=self.now,
                          id=f"replay-publish-{len(self.steps)}")
            self._apply(self.engine.event(event, self.now), line, depth + 1)

    def _record(self, transitions: list[Transition], line: int | None) -> None:
        for t in transitions:
            alarm = self.book.get(t.key)
            message = str(t.data.get("message") or (alarm.message if alarm else ""))
            self.steps.append(ReplayStep(t.at, "transition", t.key, t.action, state=t.after.value, level=t.level,
                                         colour=colour(t.level), tier=t.tier, message=message, line=line))

    def _note(self, topic: str, text: str, line: int | None = None) -> None:
        self.steps.append(ReplayStep(self.now, "note", "", topic, message=text, line=line))


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


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return safe

"""Compiled conditions: each node keeps the little state it needs (deadband, rate, event window).

Nodes are evaluated against a ``World`` (latest readings, device states, the clock) and the input
that caused the evaluation (a reading, an event, or None for a clock tick). Composite nodes
evaluate every child, never short-circuit, because children keep state (an event window must see
every event even while a sibling is false).
"""

from __future__ import annotations

import collections
import datetime as dt
import fnmatch
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from gateway.core.data import Event, Quality, Reading
from rules import config as c
from rules.expr import Expression

Trigger = Reading | Event | None


@dataclass(slots=True)
class World:
    started: float
    tz: ZoneInfo | None = None
    now: float = 0.0
    latest: dict[str, Reading] = field(default_factory=dict)
    last_good: dict[str, float] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)

    def local(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now, self.tz)

    def value(self, ref: str) -> Any:
        r = self.latest.get(ref)
        return r.value if r is not None and r.quality is Quality.GOOD else None


class Node:
    clocked = False  # true when the answer can change with time alone (windows, schedules, staleness)

    def evaluate(self, world: World, trigger: Trigger) -> bool:
        raise NotImplementedError

    def refs(self) -> tuple[set[str], set[str], set[str]]:
        """(points "device.point", event kinds, devices) this node listens to."""
        return set(), set(), set()

    def children(self) -> list[Node]:
        return []


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class PointNode(Node):
    def __init__(self, cfg: c.PointCondition) -> None:
        self.cfg = cfg
        self.active = False
        self.rate: float | None = None
        self._previous: tuple[float, float] | None = None

    def refs(self) -> tuple[set[str], set[str], set[str]]:
        return {self.cfg.point}, set(), set()

    def evaluate(self, world: World, trigger: Trigger) -> bool:
        cfg = self.cfg
        value = world.value(cfg.point)
        number = _number(value)
        if isinstance(trigger, Reading) and f"{trigger.device}.{trigger.point}" == cfg.point and number is not None:
            if self._previous is not None and trigger.ts > self._previous[1]:
                self.rate = (number - self._previous[0]) / (trigger.ts - self._previous[1]) * cfg.per
            self._previous = (number, trigger.ts)
        self.active = value is not None and self._test(value, number)
        return self.active

    def _test(self, value: Any, number: float | None) -> bool:
        cfg, band = self.cfg, (self.cfg.deadband if self.active else 0.0)
        checks: list[bool] = []
        if cfg.equals is not None:
            checks.append(_same(value, cfg.equals))
        if cfg.not_equals is not None:
            checks.append(not _same(value, cfg.not_equals))
        if cfg.rate_above is not None or cfg.rate_below is not None:
            rate = self.rate
            checks.append(rate is not None and (cfg.rate_above is None or rate > cfg.rate_above - band)
                          and (cfg.rate_below is None or rate < cfg.rate_below + band))
        if any(x is not None for x in (cfg.above, cfg.below, cfg.inside, cfg.outside)):
            if number is None:
                return False
            if cfg.above is not None:
                checks.append(number > cfg.above - band)
            if cfg.below is not None:
                checks.append(number < cfg.below + band)
            if cfg.inside is not None:
                checks.append(cfg.inside[0] - band <= number <= cfg.inside[1] + band)
            if cfg.outside is not None:
                checks.append(number < cfg.outside[0] + band or number > cfg.outside[1] - band)
        return all(checks)


def _same(value: Any, expected: bool | float | str) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(expected, str) or isinstance(value, str):
        return str(value) == str(expected)
    return _number(value) == float(expected)


class StaleNode(Node):
    clocked = True

    def __init__(self, cfg: c.StaleCondition) -> None:
        self.cfg = cfg

    def refs(self) -> tuple[set[str], set[str], set[str]]:
        return {self.cfg.stale}, set(), set()

    def evaluate(self, world: World, trigger: Trigger) -> bool:
        return world.now - world.last_good.get(self.cfg.stale, world.started) > self.cfg.after


class DeviceNode(Node):
    def __init__(self, cfg: c.DeviceCondition) -> None:
        self.cfg = cfg

    def refs(self) -> tuple[set[str], set[str], set[str]]:
        return set(), set(), {self.cfg.device}

    def evaluate(self, world: World, trigger: Trigger) -> bool:
        return world.devices.get(self.cfg.device) == self.cfg.state


def matches(event: Event, kind: str, source: str | None, where: dict[str, bool | float | str]) -> bool:
    if kind.endswith("*"):
        if not event.kind.startswith(kind[:-1]):
            return False
    elif event.kind != kind:
        return False
    if source is not None and not fnmatch.fnmatchcase(event.source, source):
        return False
    return all(k in event.payload and _same(event.payload[k], v) for k, v in where.items())


class EventNode(Node):
    def __init__(self, cfg: c.EventCondition) -> None:
        self.cfg = cfg
        self.clocked = cfg.within > 0
        self.seen: collections.deque[float] = collections.deque(maxlen=cfg.count * 4 + 16)
        self.last: Event | None = None

    def refs(self) -> tuple[set[str], set[str], set[str]]:
        return set(), {self.cfg.event}, set()

    def evaluate(self, world: World, trigger: Trigger) -> bool:
        hit = isinstance(trigger, Event) and matches(trigger, self.cfg.event, self.cfg.source, self.cfg.where)
        if hit and isinstance(trigger, Event):
            self.last = trigger
            self.seen.append(world.now)
        if not self.cfg.within:
            return hit
        while self.seen and self.seen[0] < world.now - self.cfg.within:
            self.seen.popleft()
        return len(self.seen) >= self.cfg.count


class AbsentNode(Node):
    clocked = True

    def __init__(self, cfg: c.AbsentCondition) -> None:
        self.cfg = cfg
        self.last_seen: float | None = None

    def refs(self) -> tuple[set[str], set[str], set[str]]:
        return set(), {self.cfg.no_event}, set()

    def evaluate(self, world: World, trigger: Trigger) -> bool:
        if isinstance(trigger, Event) and matches(trigger, self.cfg.no_event, self.cfg.source, self.cfg.where):
            self.last_seen = world.now
        since = world.started if self.last_seen is None else self.last_seen
        return world.now - since > self.cfg.within


class TimeNode(Node):
    clocked = True

    def __init__(self, cfg: c.TimeCondition) -> None:
        start, end = cfg.time.split("-")
        self.start = int(start[:2]) * 60 + int(start[3:])
        self.end = int(end[:2]) * 60 + int(end[3:])
        self.days = {c.DAYS.index(d) for d in cfg.days}

    def evaluate(self, world: World, trigger: Trigger) -> bool:
        local = world.local()
        minute = local.hour * 60 + local.minute
        if self.start <= self.end:
            return local.weekday() in self.days and self.start <= minute < self.end
        # wraps midnight: the part after midnight belongs to the previous day's window
        if minute >= self.start:
            return local.weekday() in self.days
        return minute < self.end and (local.weekday() - 1) % 7 in self.days


class ExprNode(Node):
    clocked = True  # `hour`, `minute` and `weekday` change with time alone

    def __init__(self, cfg: c.ExprCondition) -> None:
        self.expr = Expression(cfg.expr)

    def refs(self) -> tuple[set[str], set[str], set[str]]:
        return set(self.expr.points) or {"*"}, set(), set()

    def evaluate(self, world: World, trigger: Trigger) -> bool:
        local = world.local()
        context: dict[str, Any] = {
            "points": {ref: _cel(world.value(ref)) for ref in self.expr.points},
            "value": None, "device": "", "point": "",
            "hour": local.hour, "minute": local.minute, "weekday": c.DAYS[local.weekday()],
            "event": {"kind": "", "source": "", "data": {}},
        }
        if isinstance(trigger, Reading):
            context.update(value=_cel(trigger.value), device=trigger.device, point=trigger.point)
        elif isinstance(trigger, Event):
            context["event"] = {"kind": trigger.kind, "source": trigger.source,
                                "data": {k: _cel(v) for k, v in trigger.payload.items()}}
        return self.expr.evaluate(context)


def _cel(value: Any) -> Any:
    """CEL has no int/double arithmetic mixing: every number is a double, as engineers expect."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class AllNode(Node):
    def __init__(self, nodes: list[Node], mode: str) -> None:
        self.nodes = nodes
        self.mode = mode
        self.clocked = any(n.clocked for n in nodes)

    def children(self) -> list[Node]:
        return self.nodes

    def evaluate(self, world: World, trigger: Trigger) -> bool:
        results = [n.evaluate(world, trigger) for n in self.nodes]
        if self.mode == "all":
            return all(results)
        if self.mode == "any":
            return any(results)
        return not results[0]


def compile_condition(cfg: Any) -> Node:
    simple: dict[type, type[Node]] = {
        c.PointCondition: PointNode, c.StaleCondition: StaleNode, c.DeviceCondition: DeviceNode,
        c.EventCondition: EventNode, c.AbsentCondition: AbsentNode, c.TimeCondition: TimeNode,
        c.ExprCondition: ExprNode,
    }
    if type(cfg) in simple:
        return simple[type(cfg)](cfg)  # type: ignore[call-arg]
    if isinstance(cfg, c.AllCondition):
        return AllNode([compile_condition(x) for x in cfg.all], "all")
    if isinstance(cfg, c.AnyCondition):
        return AllNode([compile_condition(x) for x in cfg.any], "any")
    if isinstance(cfg, c.NotCondition):
        return AllNode([compile_condition(cfg.not_)], "not")
    raise TypeError(f"unknown condition {type(cfg).__name__}")


def walk(node: Node) -> list[Node]:
    return [node, *(n for child in node.children() for n in walk(child))]

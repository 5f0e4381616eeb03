"""The rule engine: readings and events in, "fired" and "cleared" out. Pure: time is an argument.

A reading re-evaluates only the rules that read its point; an event only the rules that listen
for its kind; the clock only rules whose answer can change with time (windows, schedules,
staleness) or that are waiting out a `for`. That indexing is what keeps 1,000 rules cheap.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from gateway.core.data import Event, Quality, Reading
from rules.conditions import EventNode, Node, Trigger, World, compile_condition, walk
from rules.config import Rule

_TEMPLATE = re.compile(r"\{([A-Za-z0-9_][A-Za-z0-9_.\-]*)\}")


@dataclass(frozen=True, slots=True)
class Fired:
    rule: Rule
    key: str  # the alarm key: rule id, or rule id + "/" + instance
    message: str
    source: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Cleared:
    rule: Rule
    key: str


Output = Fired | Cleared


@dataclass(slots=True)
class _State:
    rule: Rule
    when: Node
    clear_when: Node | None
    clocked: bool
    true_since: float | None = None
    active: set[str] = field(default_factory=set)  # keys currently fired
    last_trigger: Reading | Event | None = None  # what last made it true: a `for` fires on a tick


class Engine:
    def __init__(self, rules: Sequence[Rule], *, started: float, tz: ZoneInfo | None = None) -> None:
        self.world = World(started=started, tz=tz, now=started)
        self.states: list[_State] = []
        self.by_point: dict[str, list[_State]] = defaultdict(list)
        self.by_kind: dict[str, list[_State]] = defaultdict(list)
        self.by_prefix: list[tuple[str, _State]] = []
        self.by_device: dict[str, list[_State]] = defaultdict(list)
        self.on_every_reading: list[_State] = []
        self.evaluations = 0
        for rule in rules:
            if rule.enabled:
                self._add(rule)

    def _add(self, rule: Rule) -> None:
        when = compile_condition(rule.when)
        clear = compile_condition(rule.clear_when) if rule.clear_when is not None else None
        nodes = walk(when) + (walk(clear) if clear else [])
        state = _State(rule, when, clear, clocked=any(n.clocked for n in nodes) or rule.for_ > 0)
        self.states.append(state)
        points: set[str] = set()
        kinds: set[str] = set()
        devices: set[str] = set()
        for node in nodes:
            p, k, d = node.refs()
            points |= p
            kinds |= k
            devices |= d
        for point in points:
            (self.on_every_reading if point == "*" else self.by_point[point]).append(state)
        for kind in kinds:
            if kind.endswith("*"):
                self.by_prefix.append((kind[:-1], state))
            else:
                self.by_kind[kind].append(state)
        for device in devices:
            self.by_device[device].append(state)

    # -- inputs --------------------------------------------------------------------------------

    def reading(self, reading: Reading, now: float) -> list[Output]:
        self.world.now = now
        ref = f"{reading.device}.{reading.point}"
        self.world.latest[ref] = reading
        if reading.quality is Quality.GOOD:
            self.world.last_good[ref] = reading.ts
        return self._run(self.by_point.get(ref, []) + self.on_every_reading, reading)

    def event(self, event: Event, now: float) -> list[Output]:
        self.world.now = now
        states = list(self.by_kind.get(event.kind, []))
        states += [s for prefix, s in self.by_prefix if event.kind.startswith(prefix)]
        if event.kind in ("device.offline", "device.online"):
            self.world.devices[event.source] = event.kind.removeprefix("device.")
            states += self.by_device.get(event.source, [])
        return self._run(states, event)

    def tick(self, now: float) -> list[Output]:
        self.world.now = now
        return self._run([s for s in self.states if s.clocked], None)

    # -- evaluation ----------------------------------------------------------------------------

    def _run(self, states: list[_State], trigger: Trigger) -> list[Output]:
        out: list[Output] = []
        seen: set[int] = set()
        for state in states:
            if id(state) not in seen:
                seen.add(id(state))
                out += self._evaluate(state, trigger)
        return out

    def _evaluate(self, state: _State, trigger: Trigger) -> list[Output]:
        self.evaluations += 1
        now, rule = self.world.now, state.rule
        holds = state.when.evaluate(self.world, trigger)
        clear = state.clear_when.evaluate(self.world, trigger) if state.clear_when else not holds
        out: list[Output] = []
        if state.active and clear and (state.clear_when is not None or not holds):
            key_filter = self._instance(rule, trigger) if state.clear_when is not None else None
            for key in sorted(state.active):
                if key_filter is None or key == key_filter or key_filter == rule.id:
                    out.append(Cleared(rule, key))
            state.active -= {o.key for o in out if isinstance(o, Cleared)}
        if not holds:
            state.true_since = None
            return out
        if trigger is not None:
            state.last_trigger = trigger
        if state.true_since is None:
            state.true_since = now
        if now < state.true_since + rule.for_:  # the same sum next_wakeup() reports: a tick then fires
            return out
        cause = trigger if trigger is not None else state.last_trigger
        key = self._instance(rule, cause)
        if key not in state.active:
            state.active.add(key)
            context = self._context(state, cause)
            message = _render(rule.alarm.message if rule.alarm else rule.description, context, self.world)
            out.append(Fired(rule, key, message or rule.id, _source(cause, rule), context))
        # A momentary event (no window, no clear_when) is over as soon as it has been handled: the
        # alarm it raised returns to normal and stays visible until acknowledged.
        if isinstance(trigger, Event) and state.clear_when is None and not self._still_true(state):
            out += [Cleared(rule, k) for k in sorted(state.active)]
            state.active.clear()
            state.true_since = None
        return out

    def _still_true(self, state: _State) -> bool:
        """Whether the rule would hold with no new input (false for a bare event pulse)."""
        return state.when.evaluate(self.world, None)

    def restore_active(self, keys: list[str]) -> None:
        """After a restart: alarms the book still holds are this engine's to clear when their condition is gone."""
        for state in self.states:
            rid = state.rule.id
            state.active |= {k for k in keys if k == rid or k.startswith(rid + "/")}

    def next_wakeup(self) -> float | None:
        """When a pending `for` runs out; clocked rules are also ticked by the daemon every second."""
        pending = [s.true_since + s.rule.for_ for s in self.states
                   if s.true_since is not None and not s.active and s.rule.for_ > 0]
        return min(pending, default=None)

    def _instance(self, rule: Rule, trigger: Trigger) -> str:
        template = rule.alarm.instance if rule.alarm else None
        if not template:
            return rule.id
        context = {**trigger.payload, "source": trigger.source} if isinstance(trigger, Event) else {}
        if isinstance(trigger, Reading):
            context = {"device": trigger.device, "point": trigger.point}
        rendered = _render(template, context, None)
        return rule.id if "{" in rendered else f"{rule.id}/{rendered}"

    def _context(self, state: _State, trigger: Trigger) -> dict[str, Any]:
        context: dict[str, Any] = {}
        for node in walk(state.when):
            if isinstance(node, EventNode) and node.last is not None:
                context.update(node.last.payload)
                context.setdefault("source", node.last.source)
        if isinstance(trigger, Reading):
            context.update(value=trigger.value, device=trigger.device, point=trigger.point, unit=trigger.unit)
        elif isinstance(trigger, Event):
            context.update(trigger.payload)
            context["source"] = trigger.source
            context["event"] = trigger.kind
        return context


def _source(trigger: Trigger, rule: Rule) -> str:
    if isinstance(trigger, Reading):
        return trigger.device
    if isinstance(trigger, Event):
        return trigger.source
    return rule.id


def _render(template: str, context: dict[str, Any], world: World | None) -> str:
    """Fill {name} from the context or a "{device.point}" reading; unknown names stay as written."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in context and context[name] is not None:
            v = context[name]
            return f"{v:g}" if isinstance(v, float) else str(v)
        if world is not None and "." in name and world.value(name) is not None:
            v = world.value(name)
            return f"{v:g}" if isinstance(v, float) else str(v)
        return match.group(0)

    return _TEMPLATE.sub(value, template)

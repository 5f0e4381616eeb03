"""One rules runtime, for the daemon and for ``gateway rules test --replay``.

``RulesRuntime`` owns everything between the inputs and the I/O: the ``Engine``, the ``AlarmBook`` and the alarm
classes, the bus-down root cause (a bus whose every device is offline is one ``bus/<id>/down`` alarm; rules that
only say "that device is offline" are suppressed and counted in the ``flood.summary`` published when the bus comes
back), the feedback of published events into the rules (at most ``MAX_CHAIN`` rounds), and ignoring the rules' own
``alarm.*`` trail. The daemon (``gateway.automation``) feeds it and carries out the actions it returns; the replay
(``rules.replay``) feeds it on simulated time and lists them. Both therefore predict the same alarms.

Pure: no I/O, no clock reads. Every input takes ``now`` (epoch seconds) and returns the actions to carry out, in
order. An event the runtime publishes has already been fed back to the rules: whoever carries out ``Publish`` must
not feed it in again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from gateway.core.data import Event, Priority, Reading
from gateway.core.ids import stable_id
from rules.alarms import AlarmBook, AlarmError
from rules.config import AlarmClassConfig, NotifyAction, PublishAction, Rule, WriteAction, build_classes, references
from rules.engine import Cleared, Engine, Fired, Output
from rules.escalation import AlarmClass, Transition


class _Site(Protocol):
    @property
    def timezone(self) -> str | None: ...


class _Device(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def bus(self) -> str: ...

    @property
    def enabled(self) -> bool: ...


class SiteRules(Protocol):
    """What the rules read of a site's config (the gateway's config tree has it; rules never import it)."""

    @property
    def site(self) -> _Site: ...

    @property
    def rules(self) -> Sequence[Rule]: ...

    @property
    def alarm_classes(self) -> Sequence[AlarmClassConfig]: ...

    @property
    def devices(self) -> Sequence[_Device]: ...

MAX_CHAIN = 8
"""Rounds of publish -> rule -> publish followed after one input before the chain is called a loop."""
FLOOD_SUMMARY = "flood.summary"
ROOT_CAUSE_CLASS = "equipment"
COMMANDS = ("acknowledge", "reset", "shelve", "unshelve", "out_of_service", "in_service")
"""What a person may do to an alarm (``RulesRuntime.command``)."""
DEFAULT_SHELVE = 3600.0
"""Seconds a shelve lasts when the command gives no end."""


# -- the actions ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """Hand an event to the bus (stored, sent upstream): an alarm's trail entry (``transition`` set), a rule's
    ``publish`` action or a bus's flood summary. ``key`` is the alarm it concerns; ``message`` says it in words."""

    event: Event
    key: str
    message: str = ""
    transition: Transition | None = None


@dataclass(frozen=True, slots=True)
class PersistAlarm:
    """The alarm's whole state after a transition, stored with it (``AlarmBook.export_one``)."""

    key: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Write:
    """A rule's ``write`` action: set ``device.point`` to ``value`` (the daemon verifies and retries)."""

    device: str
    point: str
    value: bool | float | str
    rule: str
    key: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Notify:
    """A rule's ``notify`` action: POST the firing to the ``[[notifiers]]`` webhook ``notifier``."""

    notifier: str
    rule: str
    key: str
    message: str
    source: str


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A rule fired about devices on a bus that is down: no alarm, no actions; counted in the flood summary."""

    rule: str
    key: str
    bus: str


@dataclass(frozen=True, slots=True)
class ChainStopped:
    """``source`` (a rule, or a bus's flood summary) published ``kind`` ``MAX_CHAIN`` rounds deep into a chain of
    rules publishing events: the event was published but not evaluated, so a loop of rules cannot run away."""

    source: str
    kind: str


Action = Publish | PersistAlarm | Write | Notify | Suppressed | ChainStopped


# -- the runtime ---------------------------------------------------------------------------------------------------


class RulesRuntime:
    """Rules, alarms and flood control, fed with readings, events, clock ticks and people's commands."""

    def __init__(self, rules: Sequence[Rule], classes: Mapping[str, AlarmClass], *, started: float,
                 tz: ZoneInfo | None = None, bus_of: Mapping[str, str] | None = None,
                 stored: Iterable[Mapping[str, Any]] = ()) -> None:
        self.classes = dict(classes)
        self.engine = Engine(rules, started=started, tz=tz)
        self.book = AlarmBook()
        self.not_restored: list[tuple[str, str]] = []
        """(key, why) of each stored alarm that could not be restored."""
        self.restore(stored)
        self.bus_of = dict(bus_of or {})
        """Each (enabled) device's bus: the root cause needs to know which devices share a wire."""
        self.devices_on: dict[str, set[str]] = {}
        for device, bus in self.bus_of.items():
            self.devices_on.setdefault(bus, set()).add(device)
        self.offline: set[str] = set()
        self.suppressed: dict[str, int] = {}
        """Per bus that is down: how many rule firings it explained (and so did not raise)."""
        self.tick_now = False
        """After an input: the rules' state changed, so clocked rules should be ticked at once (the daemon wakes
        its clock; the replay ticks at the same instant)."""
        self._published = 0
        self._echoes = {(a.publish, r.id) for r in rules for a in r.actions if isinstance(a, PublishAction)}

    @classmethod
    def from_config(cls, cfg: SiteRules, *, started: float,
                    stored: Iterable[Mapping[str, Any]] = ()) -> RulesRuntime:
        """The runtime a config describes: its rules, alarm classes, site timezone and which device is on which
        bus. The daemon and the replay both build it here, so they cannot drift apart."""
        tz = ZoneInfo(cfg.site.timezone) if cfg.site.timezone else None
        return cls(cfg.rules, build_classes(cfg.alarm_classes), started=started, tz=tz, bus_of=device_buses(cfg),
                   stored=stored)

    def restore(self, stored: Iterable[Mapping[str, Any]]) -> None:
        """Put back alarms stored by an earlier run (``PersistAlarm`` records); the rules will clear the active
        ones once their condition is gone. A record that no longer fits the config is listed in ``not_restored``."""
        for record in stored:
            try:
                self.book.restore_one(record, self.classes)
            except (AlarmError, ValueError, KeyError, TypeError) as exc:
                self.not_restored.append((str(record.get("key")), str(exc)))
        self.engine.restore_active([a.key for a in self.book.active()])

    # -- inputs --------------------------------------------------------------------------------------------------

    def readings(self, device: str, readings: Iterable[Reading], now: float) -> list[Action]:
        """A device's readings from one poll."""
        self.tick_now = False
        outputs: list[Output] = []
        for reading in readings:
            outputs += self.engine.reading(reading, now)
        out: list[Action] = []
        self._apply(outputs, now, 0, out)
        return out

    def event(self, event: Event, now: float) -> list[Action]:
        """An event from the field, a driver or the daemon; ``alarm.*`` events (the rules' own trail) are ignored."""
        self.tick_now = False
        out: list[Action] = []
        self._event(event, now, 0, out)
        return out

    def tick(self, now: float) -> list[Action]:
        """The clock: clocked rules (windows, schedules, staleness, a pending ``for``), then alarm deadlines
        (escalation, shelve expiry, chatter summaries)."""
        self.tick_now = False
        out: list[Action] = []
        self._apply(self.engine.tick(now), now, 0, out)
        out += self._transitions(self.book.tick(now))
        return out

    def command(self, action: str, key: str, who: str, now: float, *, note: str = "",
                until: float | None = None) -> list[Action]:
        """A person's command on alarm ``key`` (one of ``COMMANDS``); raises ``AlarmError``, meant for that person,
        when the alarm's state does not allow it. A shelve without ``until`` lasts ``DEFAULT_SHELVE``."""
        book = self.book
        if action == "acknowledge":
            transitions = book.acknowledge(key, who, now, note)
        elif action == "reset":
            transitions = book.reset(key, who, now)
        elif action == "shelve":
            transitions = book.shelve(key, who, now, until or now + DEFAULT_SHELVE, note)
        elif action == "unshelve":
            transitions = book.unshelve(key, who, now)
        elif action == "out_of_service":
            transitions = book.out_of_service(key, who, now, note)
        elif action == "in_service":
            transitions = book.in_service(key, who, now)
        else:
            raise AlarmError(f"unknown alarm action {action!r}")
        self.tick_now = True
        return self._transitions(transitions)

    # -- questions -----------------------------------------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        """When a pending ``for`` runs out or an alarm deadline falls due; None if nothing is pending. Clocked
        rules (windows, schedules, staleness) also need a tick every second."""
        due = [t for t in (self.engine.next_wakeup(), self.book.next_wakeup()) if t is not None]
        return min(due, default=None)

    def listing(self, everything: bool = False) -> list[dict[str, Any]]:
        """The alarms a person should see (all of them with ``everything``), with their colour."""
        alarms = self.book.all() if everything else self.book.active()
        return [{**self.book.export_one(a.key), "level": a.level, "colour": a.colour} for a in alarms]

    def publishes(self, event: Event) -> bool:
        """Whether this runtime itself publishes such an event (a rule's ``publish`` action, a flood summary); in
        a recording of the daemon such an event is an echo of what replaying the inputs produces again."""
        if (event.kind, event.source) in self._echoes:
            return True
        return event.kind == FLOOD_SUMMARY and len(self.devices_on.get(event.source, ())) >= 2

    # -- evaluation ----------------------------------------------------------------------------------------------

    def _event(self, event: Event, now: float, depth: int, out: list[Action]) -> None:
        if event.kind.startswith("alarm."):
            return  # our own trail: rules react to conditions, not to their own alarms
        if event.kind in ("device.offline", "device.online"):
            self._root_cause(event, now, depth, out)
        self._apply(self.engine.event(event, now), now, depth, out)

    def _apply(self, outputs: list[Output], now: float, depth: int, out: list[Action]) -> None:
        for output in outputs:
            if isinstance(output, Fired):
                rule = output.rule
                bus = self._down_bus_explaining(rule)
                if bus is not None:  # its bus is down: already announced by the root-cause alarm
                    self.suppressed[bus] = self.suppressed.get(bus, 0) + 1
                    out.append(Suppressed(rule.id, output.key, bus))
                    continue
                if rule.alarm is not None:
                    out += self._transitions(self.book.raise_alarm(
                        output.key, self.classes[rule.alarm.class_], now, message=output.message,
                        source=output.source, severity=rule.alarm.severity, data=_json_safe(output.data)))
                for action in rule.actions:
                    self._act(action, output, now, depth, out)
            elif isinstance(output, Cleared):
                out += self._transitions(self.book.clear(output.key, now))
        if outputs:
            self.tick_now = True

    def _act(self, action: Any, fired: Fired, now: float, depth: int, out: list[Action]) -> None:
        rule = fired.rule.id
        if isinstance(action, WriteAction):
            device, point = action.write.split(".", 1)
            out.append(Write(device, point, action.value, rule, fired.key, fired.message))
        elif isinstance(action, NotifyAction):
            out.append(Notify(action.notify, rule, fired.key, fired.message, fired.source))
        elif isinstance(action, PublishAction):
            priority = Priority.ALARM if action.priority == "alarm" else Priority.EVENT
            event = self._new_event(action.publish, rule, priority, {**action.data, "rule": rule, "key": fired.key},
                                    now, fired.key)
            out.append(Publish(event, fired.key, fired.message))
            self._feed_back(event, now, depth, out)

    def _feed_back(self, event: Event, now: float, depth: int, out: list[Action]) -> None:
        """A published event reaches the rules at once, as any event would, unless the chain is too deep."""
        if depth >= MAX_CHAIN:
            out.append(ChainStopped(event.source, event.kind))
            return
        self._event(event, now, depth + 1, out)

    def _transitions(self, transitions: list[Transition]) -> list[Action]:
        out: list[Action] = []
        for t in transitions:
            alarm = self.book.get(t.key)
            if alarm is None:
                continue
            message = str(t.data.get("message") or alarm.message)
            out.append(Publish(t.to_event(alarm), t.key, message, t))
            out.append(PersistAlarm(t.key, self.book.export_one(t.key)))
        return out

    def _new_event(self, kind: str, source: str, priority: Priority, payload: dict[str, Any], now: float,
                   key: str) -> Event:
        self._published += 1  # the id is derived, not drawn: no clock, no randomness
        return Event(kind, source, priority, payload, ts=now,
                     id=stable_id(now, "published", kind, source, key, now, self._published))

    # -- flood control: a dead bus is one alarm, not one per device ----------------------------------------------

    def _root_cause(self, event: Event, now: float, depth: int, out: list[Action]) -> None:
        device, bus = event.source, self.bus_of.get(event.source)
        if bus is None or len(self.devices_on[bus]) < 2:
            return
        devices = self.devices_on[bus]
        was_down = devices <= self.offline
        (self.offline.add if event.kind == "device.offline" else self.offline.discard)(device)
        down = devices <= self.offline
        key = root_cause_key(bus)
        if down and not was_down:
            self.suppressed[bus] = 0
            out += self._transitions(self.book.raise_alarm(
                key, self.classes[ROOT_CAUSE_CLASS], now, source=bus, severity="major",
                message=f"bus {bus} down: all {len(devices)} devices offline",
                data={"bus": bus, "devices": sorted(devices)}))
        elif was_down and not down:
            out += self._transitions(self.book.clear(key, now))
            count = self.suppressed.pop(bus, 0)
            summary = self._new_event(FLOOD_SUMMARY, bus, Priority.EVENT,
                                      {"bus": bus, "suppressed_alarms": count, "devices": sorted(devices)}, now, key)
            out.append(Publish(summary, key, f"bus {bus} back: {count} alarm(s) suppressed while it was down"))
            self._feed_back(summary, now, depth, out)

    def _down_bus_explaining(self, rule: Rule) -> str | None:
        """The down bus that explains this rule firing, if it is only about devices on that bus."""
        refs = references(rule)
        if not refs or any(kind != "device" for _, kind, _ in refs):
            return None
        buses = {self.bus_of.get(name) for _, _, name in refs}
        if len(buses) != 1:
            return None
        bus = buses.pop()
        return bus if bus is not None and self.devices_on[bus] <= self.offline else None


def device_buses(cfg: SiteRules) -> dict[str, str]:
    """Each enabled device's bus: devices that share a bus go down together when the wire or adapter fails."""
    return {d.id: d.bus for d in cfg.devices if d.enabled}


def root_cause_key(bus: str) -> str:
    """The key of the alarm raised while every device on ``bus`` is offline."""
    return f"bus/{bus}/down"


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return safe

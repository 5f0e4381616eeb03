"""The daemon's in-process bus: what the field and the rules produce, handed to whoever subscribes.

Producers (pollers, streams, cameras, rules, commands) depend on ``Sink``, a narrow protocol, not on
the store. Subscribers are the persistence writer (``Recorder``), the uplink feed (report policy and
payloads), the rules and the live state the CLI reads. Delivery is synchronous, in subscription
order, within the producer's loop turn: a fire event becomes an alarm and an elevator-recall write
before anything else runs. A subscriber must not block; one that raises is logged and skipped, so a
bug in one consumer never silences the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import structlog

from gateway.core.data import DeviceState, Event, Reading
from gateway.core.timing import SYSTEM_CLOCK, Clock

log = structlog.get_logger("gateway.bus")

ReadingsHandler = Callable[[str, list[Reading], float], None]
EventHandler = Callable[[Event], None]
StateHandler = Callable[[DeviceState], None]
AlarmHandler = Callable[[str, dict[str, Any]], None]
RawHandler = Callable[[str, float, bytes, "dict[str, Any] | None"], None]
AuditHandler = Callable[[float, str, dict[str, Any]], None]
StatusHandler = Callable[[str, Any], None]


class Sink(Protocol):
    """What producers hand things to. ``LocalBus`` implements it; tests may pass their own."""

    def snapshot(self, device: str, readings: list[Reading], ts: float | None = None) -> None: ...

    def event(self, ev: Event) -> None: ...

    def device_state(self, state: DeviceState) -> None: ...

    def alarm_state(self, key: str, record: dict[str, Any]) -> None: ...

    def raw(self, device: str, ts: float, data: bytes, parsed: dict[str, Any] | None) -> None: ...

    def audit(self, action: str, data: dict[str, Any]) -> None: ...

    def meta(self, key: str, value: Any) -> None: ...


class LocalBus:
    """Typed topics: readings, events, device state, alarm state, raw lines, audit entries, status."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._readings: list[ReadingsHandler] = []
        self._events: list[EventHandler] = []
        self._states: list[StateHandler] = []
        self._alarms: list[AlarmHandler] = []
        self._raw: list[RawHandler] = []
        self._audit: list[AuditHandler] = []
        self._status: list[StatusHandler] = []

    # -- subscribing ----------------------------------------------------------------------------

    def on_readings(self, handler: ReadingsHandler) -> None:
        self._readings.append(handler)

    def on_event(self, handler: EventHandler) -> None:
        self._events.append(handler)

    def on_snapshot(self, handler: Callable[[str, list[Reading]], None]) -> None:
        """Readings without their poll time (what the rules need)."""
        self._readings.append(lambda device, readings, ts: handler(device, readings))

    def on_device_state(self, handler: StateHandler) -> None:
        self._states.append(handler)

    def on_alarm_state(self, handler: AlarmHandler) -> None:
        self._alarms.append(handler)

    def on_raw(self, handler: RawHandler) -> None:
        self._raw.append(handler)

    def on_audit(self, handler: AuditHandler) -> None:
        self._audit.append(handler)

    def on_status(self, handler: StatusHandler) -> None:
        self._status.append(handler)

    # -- producing (the Sink protocol) -----------------------------------------------------------

    def snapshot(self, device: str, readings: list[Reading], ts: float | None = None) -> None:
        at = self.clock.time() if ts is None else ts
        for handler in self._readings:
            _deliver(handler, device, readings, at)

    def event(self, ev: Event) -> None:
        for handler in self._events:
            _deliver(handler, ev)

    def device_state(self, state: DeviceState) -> None:
        for handler in self._states:
            _deliver(handler, state)

    def alarm_state(self, key: str, record: dict[str, Any]) -> None:
        """An alarm's whole state, persisted with the transition that changed it (same transaction)."""
        for handler in self._alarms:
            _deliver(handler, key, record)

    def raw(self, device: str, ts: float, data: bytes, parsed: dict[str, Any] | None) -> None:
        """What a line-oriented device said, byte for byte, with what we made of it."""
        for handler in self._raw:
            _deliver(handler, device, ts, data, parsed)

    def audit(self, action: str, data: dict[str, Any]) -> None:
        """Who did what to which device: kept locally for good."""
        now = self.clock.time()
        for handler in self._audit:
            _deliver(handler, now, action, data)

    def meta(self, key: str, value: Any) -> None:
        """Status the CLI shows (daemon heartbeat, uplink state, camera status)."""
        for handler in self._status:
            _deliver(handler, key, value)


def _deliver(handler: Callable[..., None], *args: Any) -> None:
    try:
        handler(*args)
    except Exception:  # a consumer's bug is logged, never passed to the producer (a poll loop, a stream)
        log.exception("bus subscriber failed", subscriber=getattr(handler, "__qualname__", repr(handler)))

"""What of the bus goes upstream: report policies applied to readings, facts into the outbox.

Upstream, the device's report policy decides which readings go (every poll, on change, periodic,
aggregate windows); locally, a device whose ``history`` is on keeps every poll, written in the same
transaction as its outbox fact and, when the whole poll goes up, as the very same bytes. Events and
alarms always go, except the kinds a site keeps on the box (residents' faces and plates by default):
those are recorded in the local event log only. This is the uplink side of the bus: the drivers and
the store know nothing of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

from gateway import facts
from gateway.bus import LocalBus
from gateway.core.data import DeviceState, Event, Reading
from gateway.core.timing import SYSTEM_CLOCK, Clock
from gateway.recorder import Recorder
from rules.report import Reporter

PRIVATE_KINDS = ("face.*", "plate.*")
"""Kinds that name a person or a car: kept on the box unless the site's ``mqtt.keep_local`` says otherwise."""


class Privacy:
    """Which events stay on the box: kinds matching ``keep_local`` (glob patterns), and per camera the identity
    kinds (faces, plates) of one set ``upstream = false`` (kept) or ``true`` (sent). Nothing else is
    ever held back by camera: a fall is an alarm wherever it was seen."""

    def __init__(self, keep_local: Iterable[str] = PRIVATE_KINDS, local_sources: Iterable[str] = (),
                 shared_sources: Iterable[str] = ()) -> None:
        self.patterns = tuple(keep_local)
        self.local_sources = frozenset(local_sources)
        self.shared_sources = frozenset(shared_sources)
        self._kinds: dict[str, tuple[bool, bool]] = {}

    def local(self, ev: Event) -> bool:
        known = self._kinds.get(ev.kind)
        if known is None:
            known = self._kinds[ev.kind] = (any(fnmatchcase(ev.kind, p) for p in self.patterns),
                                            any(fnmatchcase(ev.kind, p) for p in PRIVATE_KINDS))
        by_kind, identity = known
        if identity and ev.source in self.local_sources:
            return True
        if identity and ev.source in self.shared_sources:
            return False
        return by_kind


class UplinkFeed:
    def __init__(self, bus: LocalBus, recorder: Recorder, reporter: Reporter | None = None, *,
                 clock: Clock = SYSTEM_CLOCK, summary_check: float = 0.25,
                 history: Callable[[str], bool] | None = None, privacy: Privacy | None = None) -> None:
        self.recorder = recorder
        self.reporter = reporter or Reporter()
        self.clock = clock
        self.summary_check = summary_check
        self.history = history or (lambda device: True)
        self.privacy = privacy or Privacy()
        self.kept_local = 0
        """Events recorded locally and not sent upstream (privacy)."""
        self._states: dict[str, str] = {}
        bus.on_readings(self._readings)
        bus.on_event(self._event)
        bus.on_device_state(self._device_state)

    def _readings(self, device: str, readings: list[Reading], ts: float) -> None:
        upward = self.reporter.offer(device, readings, ts)
        body = None
        if upward:
            fact = facts.readings(device, ts, upward)
            self.recorder.outgoing(fact)
            if len(upward) == len(readings):  # the whole poll went up: its history is the same bytes
                body = fact.body
        if self.history(device):
            self.recorder.history(device, ts, body or facts.points_body(readings, ts))

    def _event(self, ev: Event) -> None:
        if self.privacy.local(ev):
            self.kept_local += 1
            return
        self.recorder.outgoing(facts.event(ev))

    def _device_state(self, state: DeviceState) -> None:
        """Availability changes only: the poller also hands over its counters every few seconds."""
        if self._states.get(state.id) != state.state:
            self._states[state.id] = state.state
            self.recorder.outgoing(facts.device_state(state, self.clock.time()))

    def summaries(self) -> int:
        """Publish the aggregate windows that have closed; how many."""
        due = self.reporter.due(self.clock.time())
        for s in due:
            self.recorder.outgoing(facts.summary(s.device, s.start, s.end, s.points))
        return len(due)

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.summary_check)
            self.summaries()

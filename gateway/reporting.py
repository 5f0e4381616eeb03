"""What of the bus goes upstream: report policies applied to readings, payloads into the outbox.

Locally the recorder keeps every reading; upstream, the device's report policy decides (every poll,
on change, periodic, aggregate windows). Events and alarms always go. This is the uplink side of
the bus: the drivers and the store know nothing of it.
"""

from __future__ import annotations

from gateway import payloads
from gateway.bus import LocalBus
from gateway.core.data import Event, Reading
from gateway.core.timing import SYSTEM_CLOCK, Clock
from gateway.recorder import Recorder
from rules.report import Reporter


class UplinkFeed:
    def __init__(self, bus: LocalBus, recorder: Recorder, reporter: Reporter | None = None, *,
                 clock: Clock = SYSTEM_CLOCK, summary_check: float = 0.25) -> None:
        self.recorder = recorder
        self.reporter = reporter or Reporter()
        self.clock = clock
        self.summary_check = summary_check
        bus.on_readings(self._readings)
        bus.on_event(self._event)

    def _readings(self, device: str, readings: list[Reading], ts: float) -> None:
        upward = self.reporter.offer(device, readings, ts)
        if upward:
            self.recorder.outgoing(payloads.telemetry(device, ts, upward))

    def _event(self, ev: Event) -> None:
        self.recorder.outgoing(payloads.event(ev))

    def summaries(self) -> int:
        """Publish the aggregate windows that have closed; how many."""
        due = self.reporter.due(self.clock.time())
        for summary in due:
            self.recorder.outgoing(payloads.summary(summary))
        return len(due)

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.summary_check)
            self.summaries()

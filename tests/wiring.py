"""The daemon's persistence path without the daemon: a bus, the recorder and the uplink feed on it."""

from __future__ import annotations

from gateway.bus import LocalBus
from gateway.core.timing import SYSTEM_CLOCK, Clock
from gateway.recorder import AsyncStore, Recorder
from gateway.reporting import UplinkFeed


def wire(store: AsyncStore, clock: Clock = SYSTEM_CLOCK) -> tuple[LocalBus, Recorder]:
    bus = LocalBus(clock)
    recorder = Recorder(store, bus, clock=clock)
    UplinkFeed(bus, recorder, clock=clock)  # it lives on through its subscriptions
    return bus, recorder

"""The daemon's persistence path without the daemon: a bus, the recorder and the uplink feed on it."""

from __future__ import annotations

import json
from typing import Any

from gateway.bus import LocalBus
from gateway.core.timing import SYSTEM_CLOCK, Clock
from gateway.northbound.json_v2 import JsonEncoder
from gateway.recorder import AsyncStore, Recorder
from gateway.reporting import UplinkFeed
from gateway.store import Store


def wire(store: AsyncStore, clock: Clock = SYSTEM_CLOCK) -> tuple[LocalBus, Recorder]:
    bus = LocalBus(clock)
    recorder = Recorder(store, bus, clock=clock)
    UplinkFeed(bus, recorder, clock=clock)  # it lives on through its subscriptions
    return bus, recorder


def outbox(store: Store, limit: int = 100_000, site: str = "test-site") -> list[tuple[str, dict[str, Any]]]:
    """What the outbox holds, as the JSON uplink would send it now: (topic, message), in delivery order."""
    rows = store.next_batch(limit)
    now = max((r.created for r in rows), default=0.0)  # as if sent at once: live, one message per row
    return [(e.message.topic, json.loads(e.message.payload))
            for e in JsonEncoder(site).encode(rows, now) if e.message is not None]


WRITE_CODES = frozenset({5, 6, 15, 16})
"""Modbus function codes that write: single coil, single register, multiple coils, multiple registers."""


class WireWrites:
    """Every write a Modbus client put on the wire to one simulated device, as its datastore took it."""

    def __init__(self, context: Any) -> None:
        self.seen: list[tuple[int, int, list[Any]]] = []
        original = context.async_setValues

        async def recording(func_code: int, address: int, values: list[Any]) -> Any:
            if func_code in WRITE_CODES:
                self.seen.append((func_code, address, list(values)))
            return await original(func_code, address, values)

        context.async_setValues = recording

"""The present, in memory: every point's latest reading, for the CLI over the control socket.

SQLite keeps only what must outlive the daemon; rewriting a ``latest`` row per point per poll cost
a fifth of the daemon's CPU for a table nobody read while the daemon was down.
"""

from __future__ import annotations

from typing import Any

from gateway.bus import LocalBus
from gateway.core.data import Reading


class LiveValues:
    def __init__(self, bus: LocalBus) -> None:
        self.latest: dict[str, dict[str, Reading]] = {}
        bus.on_readings(self._readings)

    def _readings(self, device: str, readings: list[Reading], ts: float) -> None:
        points = self.latest.setdefault(device, {})
        for r in readings:
            points[r.point] = r

    def listing(self, device: str | None = None) -> list[dict[str, Any]]:
        devices = [device] if device is not None else sorted(self.latest)
        return [{"device": d, "point": r.point, "value": r.value, "unit": r.unit, "quality": r.quality.value,
                 "ts": r.ts}
                for d in devices for r in self.latest.get(d, {}).values()]

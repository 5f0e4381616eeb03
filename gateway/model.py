"""The data model every layer speaks: readings and events.

This module is the bottom of the import graph: it imports nothing from the project, so drivers,
rules, models and the daemon can all depend on it without cycles.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

PAYLOAD_VERSION = 1
"""Version of the upstream payload schema in ``schemas/upstream-v1.json``; bump on any breaking change."""

Value = float | int | bool | str | None


class Quality(enum.StrEnum):
    GOOD = "good"
    BAD = "bad"  # the device did not answer, or answered nonsense
    STALE = "stale"  # the last good value is older than the device's poll period allows


class Priority(enum.IntEnum):
    """Upstream delivery classes. Lower value goes first and is never dropped for disk space."""

    ALARM = 0
    EVENT = 1
    TELEMETRY = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Priority:
        return cls[label.upper()]


def new_id() -> str:
    """Time-ordered unique id (UUIDv7 layout) so ids also sort by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


@dataclass(frozen=True, slots=True)
class Reading:
    """One point's value as read from a device; ``ts`` is when the device answered (epoch seconds)."""

    device: str
    point: str
    value: Value
    unit: str | None
    quality: Quality
    ts: float

    def as_payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"v": self.value, "q": self.quality.value}
        if self.unit:
            data["u"] = self.unit
        return data


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: a device went offline, a fire zone alarmed, a driver crashed."""

    kind: str
    source: str
    priority: Priority = Priority.EVENT
    payload: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
    id: str = field(default_factory=new_id)

"""Facts: what the outbox holds, in no uplink's dialect.

The recorder stores what happened (a poll's readings, an event, a summary window, a device's
state); each uplink's encoder turns facts into its own messages when it sends them, so sequence
numbers, aliases, the ``hist`` flag and batch envelopes are decided at send time, and two uplinks
can drain one outbox. A fact's ``body`` is compact JSON (orjson) of its data: a readings body is
exactly the ``points`` object of the native contract, so the JSON encoder embeds it unchanged and
the readings history stores the same bytes; one encoding per poll, not three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.core.data import DeviceState, Event, Priority, Reading
from gateway.core.ids import new_id

Kind = Literal["readings", "event", "summary", "state", "wire", "result"]
"""``wire``: a message stored already encoded (rows a v1 store held that could not be read back as facts);
``result``: a platform command's outcome (subject: the request id)."""

_OPTIONS = orjson.OPT_NON_STR_KEYS
SAME_POLL = 1.0
"""Seconds: a point answered this close to the poll's start shares the poll's ``ts``; others carry their own."""


def dumps(data: Any) -> bytes:
    """Compact JSON; odd types (a Path, a datetime in an event's data) become strings, never an error."""
    return orjson.dumps(data, default=str, option=_OPTIONS)


@dataclass(frozen=True, slots=True)
class Fact:
    priority: Priority
    kind: Kind
    subject: str
    """The device for readings, summaries and states; the event kind for events; the topic for ``wire``."""
    id: str
    """Stable across redeliveries: the message id a platform de-duplicates on."""
    ts: float
    body: bytes

    def data(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True, slots=True)
class StoredFact:
    """A fact as the outbox gives it back: its place in the outbox and when it was written."""

    seq: int
    created: float
    fact: Fact


def points_body(readings: Sequence[Reading], ts: float) -> bytes:
    """A poll's readings as the contract's ``points`` object; a point read at another time keeps its own ``ts``."""
    points: dict[str, dict[str, Any]] = {}
    for r in readings:
        value = r.value
        point: dict[str, Any]
        if isinstance(value, float) and not math.isfinite(value):
            point = {"v": None, "q": "bad"}  # JSON has no NaN: a device that reports one gets a bad point
        else:
            point = {"v": value, "q": r.quality.value}
        if r.unit:
            point["u"] = r.unit
        if abs(r.ts - ts) > SAME_POLL:  # a stale value carried over, a slow serial poll, a COV push
            point["ts"] = round(r.ts, 3)
        points[r.point] = point
    return dumps(points)


def readings(device: str, ts: float, items: Sequence[Reading], body: bytes | None = None) -> Fact:
    return Fact(Priority.TELEMETRY, "readings", device, new_id(), ts, body or points_body(items, ts))


def event(ev: Event) -> Fact:
    body = {"kind": ev.kind, "priority": ev.priority.label, "source": ev.source, "ts": round(ev.ts, 3),
            "data": ev.payload}
    return Fact(ev.priority, "event", ev.kind, ev.id, ev.ts, dumps(body))


def summary(device: str, start: float, end: float, points: dict[str, dict[str, Any]]) -> Fact:
    """Windowed aggregates of a device's points (report mode ``aggregate``)."""
    body = {"start": round(start, 3), "end": round(end, 3), "points": points}
    return Fact(Priority.TELEMETRY, "summary", device, new_id(), end, dumps(body))


def device_state(state: DeviceState, ts: float) -> Fact:
    """A device's availability changed: platforms keep the newest (a retained message in the JSON contract)."""
    body: dict[str, Any] = {"state": state.state, "since": round(state.since, 3)}
    if state.error:
        body["error"] = state.error[:500]
    return Fact(Priority.EVENT, "state", state.id, new_id(), ts, dumps(body))

"""The upstream wire format (schema: ``schemas/upstream-v1.json``).

Every message carries ``v`` (schema version) and ``id`` (unique, time-ordered) so a platform can
de-duplicate the redeliveries that at-least-once delivery implies. Topics are relative to
``<topic_prefix>/<site id>/``; the uplink adds the root when it publishes, so a changed prefix
applies to messages already waiting in the outbox.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.core.data import Event, Priority, Reading
from gateway.core.ids import new_id
from gateway.store import Outgoing
from rules.report import Summary

PAYLOAD_VERSION = 1
"""Version of the upstream payload schema in ``schemas/upstream-v1.json``; bump on any breaking change."""


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def telemetry(device: str, ts: float, readings: Sequence[Reading]) -> Outgoing:
    payload = {
        "v": PAYLOAD_VERSION,
        "id": new_id(),
        "type": "telemetry",
        "device": device,
        "ts": round(ts, 3),
        "points": {r.point: _finite(r.as_payload()) for r in readings},
    }
    return Outgoing(Priority.TELEMETRY, f"telemetry/{device}", _dump(payload))


def event(ev: Event) -> Outgoing:
    payload = {
        "v": PAYLOAD_VERSION,
        "id": ev.id,
        "type": "alarm" if ev.priority is Priority.ALARM else "event",
        "kind": ev.kind,
        "priority": ev.priority.label,
        "source": ev.source,
        "ts": round(ev.ts, 3),
        "data": ev.payload,
    }
    folder = "alarm" if ev.priority is Priority.ALARM else "event"
    return Outgoing(ev.priority, f"{folder}/{ev.kind}", _dump(payload))


def summary(s: Summary) -> Outgoing:
    """Windowed aggregates of a device's points (report mode "aggregate")."""
    payload = {
        "v": PAYLOAD_VERSION, "id": new_id(), "type": "summary", "device": s.device,
        "start": round(s.start, 3), "end": round(s.end, 3), "points": s.points,
    }
    return Outgoing(Priority.TELEMETRY, f"summary/{s.device}", _dump(payload))


def status(state: str, config_hash: str = "", started: float | None = None) -> bytes:
    """The retained birth (``online``) and last-will (``offline``) message."""
    data: dict[str, Any] = {"v": PAYLOAD_VERSION, "type": "status", "state": state, "ts": round(time.time(), 3)}
    if state == "online":
        data.update(version=__version__, config=config_hash, started=started)
    return _dump(data)


def _finite(point: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/Infinity: a device that reports them gets its value nulled and marked bad."""
    value = point.get("v")
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return {**point, "v": None, "q": "bad"}
    return point

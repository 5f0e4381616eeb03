"""Every event a camera can raise, with the delivery class decided here, once.

The models build their events with ``vision_event``; the daemon admits a worker's line only if its
kind is in ``KINDS`` and takes the priority from this table, never from the worker (a worker is
trusted no more than a field device).
"""

from __future__ import annotations

from typing import Any

from gateway.core.data import Event, Priority

KINDS: dict[str, Priority] = {
    "fall.detected": Priority.ALARM,  # a resident down: life safety
    "fall.suspected": Priority.EVENT,  # the fall itself, seconds before the hold confirms it (or it is cancelled)
    "fall.cancelled": Priority.EVENT,  # the person of a fall.suspected got up within the hold: no alarm follows
    "face.recognized": Priority.EVENT,
    "face.unknown": Priority.EVENT,
    "plate.read": Priority.EVENT,
    "plate.unreadable": Priority.EVENT,  # a plate seen but not read with the confidence needed: said, never guessed
    "camera.connected": Priority.EVENT,
    "camera.lost": Priority.EVENT,
    "camera.error": Priority.EVENT,
}


def vision_event(kind: str, camera: str, payload: dict[str, Any], ts: float | None = None) -> Event:
    if ts is None:
        return Event(kind, camera, KINDS[kind], payload)
    return Event(kind, camera, KINDS[kind], payload, ts)

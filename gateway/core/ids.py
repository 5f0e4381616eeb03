"""Time-ordered unique ids (UUIDv7 layout): they sort by creation time, so logs and outboxes read in order."""

from __future__ import annotations

import hashlib
import time
import uuid

_RAND = (1 << 74) - 1


def _uuid7(ms: int, rand: int) -> str:
    rand &= _RAND
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def new_id() -> str:
    """A fresh id for something that happened now."""
    return _uuid7(time.time_ns() // 1_000_000, uuid.uuid4().int)


def stable_id(at: float, *parts: object) -> str:
    """The same id for the same facts: re-sending a thing after a crash gives the platform a duplicate to drop."""
    digest = hashlib.sha256("\0".join(repr(p) if isinstance(p, float) else str(p) for p in parts).encode()).digest()
    return _uuid7(max(0, int(at * 1000)), int.from_bytes(digest[:10], "big"))

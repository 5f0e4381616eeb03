"""The alarm record and its states (ISA-18.2 names in ``rules/alarms.py``): what a book holds, no behaviour."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from rules.escalation import AlarmClass, ChatterGuard, EscalationClock, colour


class AlarmError(Exception):
    """An operation the alarm's state does not allow; the message is shown as-is to whoever asked."""


class AlarmState(enum.StrEnum):
    NORMAL = "normal"
    ACTIVE_UNACK = "active_unack"
    ACTIVE_ACK = "active_ack"
    CLEARED_UNACK = "cleared_unack"
    LATCHED = "latched"
    SHELVED = "shelved"
    OUT_OF_SERVICE = "out_of_service"


S = AlarmState
BASE = frozenset({S.NORMAL, S.ACTIVE_UNACK, S.ACTIVE_ACK, S.CLEARED_UNACK, S.LATCHED})
HELD = frozenset({S.SHELVED, S.OUT_OF_SERVICE})
ACTIVE = frozenset({S.ACTIVE_UNACK, S.ACTIVE_ACK})
UNACKED = frozenset({S.ACTIVE_UNACK, S.CLEARED_UNACK})

ALLOWED: dict[str, frozenset[tuple[AlarmState, AlarmState]]] = {
    "raise": frozenset({(S.NORMAL, S.ACTIVE_UNACK), (S.CLEARED_UNACK, S.ACTIVE_UNACK), (S.LATCHED, S.ACTIVE_UNACK),
                        (S.SHELVED, S.SHELVED), (S.OUT_OF_SERVICE, S.OUT_OF_SERVICE)}),
    "clear": frozenset({(S.ACTIVE_UNACK, S.CLEARED_UNACK), (S.ACTIVE_ACK, S.NORMAL), (S.ACTIVE_ACK, S.LATCHED),
                        (S.SHELVED, S.SHELVED), (S.OUT_OF_SERVICE, S.OUT_OF_SERVICE)}),
    "acknowledge": frozenset({(S.ACTIVE_UNACK, S.ACTIVE_ACK), (S.CLEARED_UNACK, S.NORMAL),
                              (S.CLEARED_UNACK, S.LATCHED)}),
    "reset": frozenset({(S.LATCHED, S.NORMAL)}),
    "shelve": frozenset((b, S.SHELVED) for b in BASE),
    "unshelve": frozenset((S.SHELVED, b) for b in BASE),
    "out_of_service": frozenset((b, S.OUT_OF_SERVICE) for b in BASE | {S.SHELVED}),
    "in_service": frozenset((S.OUT_OF_SERVICE, b) for b in BASE),
    "escalate": frozenset({(S.ACTIVE_UNACK, S.ACTIVE_UNACK), (S.CLEARED_UNACK, S.CLEARED_UNACK)}),
    "chatter": frozenset((s, s) for s in S),
}
"""Every (before, after) pair each action may produce. Latching decides between the two ends of a clear of
ACTIVE_ACK (LATCHED if latching, else NORMAL) and of an acknowledge of CLEARED_UNACK (the same)."""


@dataclass(slots=True)
class Alarm:
    """One alarm instance (``key`` = rule id + instance, e.g. ``fire/panel-b3/zone-2F``) and its whole state.

    ``held_state`` is the state behind SHELVED/OUT_OF_SERVICE, the one a release returns to. ``episode`` counts
    activations that needed a new acknowledgement; key + episode names one incident upstream. Treat as read-only:
    change it through ``AlarmBook`` so the trail stays complete.
    """

    key: str
    cls: AlarmClass
    source: str
    state: AlarmState = AlarmState.NORMAL
    severity: str = "major"
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    episode: int = 0
    activated_at: float | None = None
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    cleared_at: float | None = None
    updated_at: float | None = None
    held_state: AlarmState | None = None
    held_by: str | None = None
    held_reason: str = ""
    shelved_until: float | None = None
    clock: EscalationClock = field(default_factory=EscalationClock)
    chatter: ChatterGuard = field(default_factory=ChatterGuard)
    last_seq: int = 0

    @property
    def effective_state(self) -> AlarmState:
        """The lifecycle state, looking through a shelve or out-of-service hold."""
        return self.held_state if self.held_state is not None else self.state

    @property
    def condition_active(self) -> bool:
        return self.effective_state in ACTIVE

    @property
    def unacknowledged(self) -> bool:
        return self.effective_state in UNACKED

    @property
    def level(self) -> int:
        """Escalation level reached this episode: 0, 1 (yellow), 2 (red)."""
        return self.clock.level

    @property
    def colour(self) -> str:
        return colour(self.clock.level)

    @property
    def next_deadline(self) -> float | None:
        return self.clock.next_deadline


ALARM_FIELDS = tuple(f.name for f in fields(Alarm))


def when_text(ts: float | None) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts is not None else "?"
    except (OverflowError, OSError, ValueError):  # a mistyped time must still get its error message
        return str(ts)


def span_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def said(alarm: Alarm) -> dict[str, Any]:
    return {"message": alarm.message, "severity": alarm.severity}


def need(value: str, what: str) -> None:
    if not value.strip():
        raise AlarmError(f"{what} is required: it goes on the alarm's record")

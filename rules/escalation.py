"""Who is told, and when: alarm classes, escalation deadlines, chatter limits and the trail sent upstream.

``rules.alarms`` decides what state an alarm is in; this module holds the policy and clocks that decide when
people are notified, and the ``Transition`` that notifies them. Pure: no I/O, no clock reads; every method takes
the ``now`` it needs (epoch seconds).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.core.data import Event, Priority
from gateway.core.ids import stable_id

if TYPE_CHECKING:  # rules.alarm_state imports this module; the types are needed for annotations only
    from rules.alarm_state import Alarm, AlarmState

COLOURS = ("none", "yellow", "red")
"""Colour of escalation level 0, 1, 2: the words the issue and the platform use ("yellow, then red")."""


def colour(level: int) -> str:
    """Colour of an escalation level; any level past the last named one stays red."""
    return COLOURS[min(level, len(COLOURS) - 1)]


@dataclass(frozen=True, slots=True)
class AlarmClass:
    """How every alarm of one kind (fire, fall, door forced, ...) is escalated and rate-limited.

    ``escalate_after[i]``: seconds from activation (not counting time held) after which a still-unacknowledged
    alarm goes to level ``i + 1`` and ``tier(i + 1)`` is notified; ``tiers[0]`` is notified on raise. With fewer
    tiers than levels the last tier is notified again, at the higher colour. More than ``chatter_limit``
    activations within ``chatter_window`` seconds mark the alarm chattering (0 turns detection off).
    ``max_shelve`` bounds shelving: ISA-18.2 wants it time-limited, and a fire alarm shelved "until further
    notice" is a fire alarm switched off.
    """

    name: str
    priority: Priority = Priority.ALARM
    latching: bool = False
    escalate_after: tuple[float, ...] = ()
    tiers: tuple[str, ...] = ("property",)
    chatter_limit: int = 5
    chatter_window: float = 600.0
    max_shelve: float = 24 * 3600.0

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError(f"alarm class {self.name!r}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        out: list[str] = []
        if not self.name:
            out.append("name must not be empty")
        if self.priority not in (Priority.ALARM, Priority.EVENT):
            out.append("priority must be alarm or event: telemetry may be dropped, an alarm's trail may not")
        steps = self.escalate_after
        if any(not math.isfinite(s) or s <= 0 for s in steps):
            out.append(f"escalate_after {steps} must hold positive, finite seconds")
        elif any(b <= a for a, b in itertools.pairwise(steps)):
            out.append(f"escalate_after {steps} must be strictly increasing (yellow before red)")
        if not self.tiers or any(not t for t in self.tiers):
            out.append("tiers must name at least one role, and no empty one")
        if self.chatter_limit < 0:
            out.append("chatter_limit must be >= 0 (0 turns chatter detection off)")
        if not (math.isfinite(self.chatter_window) and self.chatter_window > 0):
            out.append("chatter_window must be positive seconds")
        if not (math.isfinite(self.max_shelve) and self.max_shelve > 0):
            out.append("max_shelve must be positive seconds")
        return out

    def deadline(self, escalate_from: float, level: int) -> float | None:
        """When an unacknowledged alarm at ``level`` escalates to the next one; None at the top level."""
        if level >= len(self.escalate_after):
            return None
        return escalate_from + self.escalate_after[level]

    def tier(self, level: int) -> str:
        """Owner role to notify at ``level``."""
        return self.tiers[min(level, len(self.tiers) - 1)]


@dataclass(slots=True)
class EscalationClock:
    """Escalation timing of one alarm's current episode.

    The deadline is ``escalate_from + escalate_after[level]``. ``escalate_from`` starts at activation and moves
    forward by the time the alarm spends held (shelved, out of service): a hold pauses escalation, so it neither
    fires unseen nor bursts out the moment the hold ends. Within an episode ``level`` never falls and
    ``next_deadline`` never moves earlier.
    """

    level: int = 0
    escalate_from: float | None = None
    paused_at: float | None = None
    next_deadline: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "escalate_from": self.escalate_from, "paused_at": self.paused_at,
                "next_deadline": self.next_deadline}

    def start(self, now: float, *, held: bool) -> None:
        """A new episode; one that starts while held waits for the release to start counting."""
        self.level, self.escalate_from = 0, now
        self.paused_at = now if held else None

    def pause(self, now: float) -> None:
        if self.paused_at is None:
            self.paused_at = now

    def resume(self, now: float) -> None:
        if self.paused_at is not None and self.escalate_from is not None:
            self.escalate_from += now - self.paused_at
        self.paused_at = None

    def schedule(self, cls: AlarmClass, *, running: bool) -> None:
        """Set ``next_deadline``; ``running`` is false once acknowledged, held or back to normal."""
        self.next_deadline = None
        if running and self.escalate_from is not None:
            self.next_deadline = cls.deadline(self.escalate_from, self.level)

    def due(self, cls: AlarmClass, now: float) -> list[tuple[int, float]]:
        """Step through every deadline passed by ``now``, in order: (new level, when it was due) per step."""
        steps: list[tuple[int, float]] = []
        while self.next_deadline is not None and self.next_deadline <= now:
            self.level += 1
            steps.append((self.level, self.next_deadline))
            self.schedule(cls, running=True)
        return steps


@dataclass(slots=True)
class ChatterGuard:
    """Rate limit on one alarm's raise/clear toggles.

    Only the last ``chatter_limit + 1`` activations inside the window are kept, which is all the decision needs,
    so a point toggling for days stores a bounded list.
    """

    raises_in_window: list[float] = field(default_factory=list)
    until: float | None = None
    suppressed_raises: int = 0
    suppressed_clears: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"raises_in_window": list(self.raises_in_window), "until": self.until,
                "suppressed_raises": self.suppressed_raises, "suppressed_clears": self.suppressed_clears}

    def toggle(self, raised: bool, now: float, cls: AlarmClass) -> tuple[bool, bool]:
        """Count one state-changing raise or clear: (suppress it, chattering starts with it)."""
        chattering = self.until is not None
        crossed = False
        if raised and cls.chatter_limit > 0:
            recent = [t for t in self.raises_in_window if t > now - cls.chatter_window] + [now]
            self.raises_in_window = recent[-(cls.chatter_limit + 1):]
            crossed = not chattering and len(self.raises_in_window) > cls.chatter_limit
        if chattering:
            if raised:
                self.suppressed_raises += 1
            else:
                self.suppressed_clears += 1
            return True, False
        if crossed:
            self.until = now + cls.chatter_window
        return False, crossed

    def summary(self, now: float, cls: AlarmClass) -> dict[str, Any] | None:
        """At the end of a window: what was hidden, and whether it goes on for another window."""
        if self.until is None or self.until > now:
            return None
        self.raises_in_window = [t for t in self.raises_in_window if t > now - cls.chatter_window]
        still = cls.chatter_limit > 0 and len(self.raises_in_window) > cls.chatter_limit
        data: dict[str, Any] = {"phase": "continue" if still else "end", "suppressed_raises": self.suppressed_raises,
                                "suppressed_clears": self.suppressed_clears, "window": cls.chatter_window}
        self.suppressed_raises = self.suppressed_clears = 0
        self.until = now + cls.chatter_window if still else None
        return data


@dataclass(frozen=True, slots=True)
class Transition:
    """One entry of an alarm's trail: who did what, when, and what the alarm became.

    ``level`` is the escalation level the episode had reached (the new one for ``escalate``); ``tier`` is the role
    to notify, set only when this transition annunciates (raise, escalate, release or chatter summary of an
    unacknowledged alarm). ``seq`` orders the whole book's trail and survives restarts.
    """

    key: str
    action: str
    before: AlarmState
    after: AlarmState
    who: str
    at: float
    level: int
    alarm_class: str
    episode: int
    seq: int
    tier: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """UUIDv7 derived from the transition itself, so re-sending the same transition after a crash and
        restore gives the same id and the platform de-duplicates it (and no clock read is needed here)."""
        return stable_id(self.at, self.key, self.seq, self.action, self.at)

    def to_event(self, alarm: Alarm) -> Event:
        """The upstream event (kind ``alarm.<action>``) carrying this whole trail entry."""
        if alarm.key != self.key:
            raise ValueError(f"transition of {self.key!r} paired with alarm {alarm.key!r}")
        detail = {k: v for k, v in self.data.items() if k not in ("message", "severity")}
        payload: dict[str, Any] = {
            "key": self.key, "class": self.alarm_class, "episode": self.episode, "seq": self.seq,
            "action": self.action, "before": self.before.value, "state": self.after.value,
            "who": self.who, "at": self.at, "level": self.level, "colour": colour(self.level), "tier": self.tier,
            "message": self.data.get("message", alarm.message), "severity": self.data.get("severity", alarm.severity),
            "activated_at": alarm.activated_at, "detail": detail, "context": copy.deepcopy(alarm.data),
        }
        return Event(f"alarm.{self.action}", alarm.source, alarm.cls.priority, payload, ts=self.at, id=self.event_id)

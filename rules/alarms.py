"""Alarm lifecycle after ISA-18.2: every alarm is followed until a person has acknowledged it.

Pure logic: no I/O, no asyncio, no clock. Every method takes ``now`` (epoch seconds) and returns the
``Transition`` list it caused; the daemon turns each into an upstream event (``Transition.to_event``), persists
``AlarmBook.to_dict()`` (or ``export_one`` per row) and sleeps until ``next_wakeup()`` to call ``tick``. The book's
methods are the one entry point for the CLI and MQTT commands; an ``AlarmError`` message is meant for that person.

States and their ISA-18.2 names (A-G in its state diagram)::

    NORMAL          A  condition absent, nothing to acknowledge
    ACTIVE_UNACK    B  in alarm, nobody has acknowledged: escalates
    ACTIVE_ACK      C  in alarm, acknowledged: escalation stops
    CLEARED_UNACK   D  returned to normal unacknowledged: stays listed and keeps escalating
    LATCHED         -  18.2's latched alarm after return to normal: acknowledged AND cleared, awaits a reset
    SHELVED         E  hidden by a person until a deadline (max_shelve); not annunciated, not escalated
    OUT_OF_SERVICE  G  removed for maintenance until returned; not annunciated, not escalated
    (F, suppressed by design, belongs to the rules: they just do not raise.)

Decisions:

* Raise is idempotent while the condition is active (no transition, message kept). Raising from NORMAL or LATCHED
  starts a new *episode* (fresh activation time, level 0, needs a new acknowledgement); raising from CLEARED_UNACK
  continues the unacknowledged episode, so its escalation clock keeps running.
* Clear is a condition report, not a command: clearing an unknown or already-clear alarm is a no-op. Acknowledge,
  reset, shelve, unshelve, out_of_service and in_service on an unknown key or in the wrong state raise AlarmError.
* Escalation is measured from activation, minus time spent shelved or out of service (nobody could see it then):
  deadline ``escalate_from + escalate_after[level]``. It runs while unacknowledged, also after the condition
  clears, because a fall sensor that resets does not mean anyone has checked on the person. Acknowledgement stops
  it; the level stays (the record shows how far it got) until the alarm returns to NORMAL or a new episode starts.
  A late ``tick`` emits every missed step in order, so each tier is notified exactly once per episode.
* While SHELVED or OUT_OF_SERVICE, raise/clear still move the *held* state (``held_state``) and are recorded
  upstream (before = after = the hold state, no tier). Acknowledge and reset are refused until the hold ends. On
  release the alarm returns to the held state and, if unacknowledged, is re-annunciated to its current tier and
  escalation resumes. A test alarm during maintenance therefore needs an acknowledgement afterwards: one extra ack
  is cheaper than an alarm lost.
* Chatter: an activation that brings the activations within ``chatter_window`` above ``chatter_limit`` is emitted
  followed by ``chatter`` (phase "start"). Further raise/clear toggles change state but are only counted; when the
  window passes, ``tick`` emits ``chatter`` (phase "continue" or "end") with the counts and the current state, to
  the current tier if toggles were hidden and the alarm is unacknowledged. Acknowledgements and escalations are
  never suppressed. The trail has a gap inside a chatter window by design; the summary closes it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from rules.alarm_state import (
    ACTIVE,
    ALARM_FIELDS,
    ALLOWED,
    BASE,
    HELD,
    UNACKED,
    Alarm,
    AlarmError,
    AlarmState,
    S,
    need,
    said,
    span_text,
    when_text,
)
from rules.escalation import AlarmClass, ChatterGuard, EscalationClock, Transition, colour

__all__ = ["ALLOWED", "Alarm", "AlarmBook", "AlarmClass", "AlarmError", "AlarmState", "Transition", "colour"]

FORMAT_VERSION = 1
"""Version of ``AlarmBook.to_dict()``; bump when a stored field changes meaning."""


class AlarmBook:
    """All alarms of a site, their lifecycle and escalation. Not thread-safe; one owner (the rules task)."""

    def __init__(self) -> None:
        self._alarms: dict[str, Alarm] = {}
        self._seq = 0

    # -- queries

    def get(self, key: str) -> Alarm | None:
        return self._alarms.get(key)

    def all(self) -> list[Alarm]:
        return [self._alarms[k] for k in sorted(self._alarms)]

    def active(self) -> list[Alarm]:
        """Everything not NORMAL, most urgent first: annunciated unacknowledged, higher level, older."""
        rest = [a for a in self._alarms.values() if a.state is not S.NORMAL]
        return sorted(rest, key=lambda a: (a.state not in UNACKED, -a.level, a.activated_at or 0.0, a.key))

    def next_wakeup(self) -> float | None:
        """Earliest time ``tick`` has work: an escalation, a shelve expiry or the end of a chatter window."""
        times = [t for a in self._alarms.values()
                 for t in (a.clock.next_deadline, a.shelved_until, a.chatter.until) if t is not None]
        return min(times, default=None)

    # -- condition reports from rules

    def declare(self, key: str, cls: AlarmClass, *, source: str, message: str = "") -> Alarm:
        """Make an alarm known while NORMAL (no transition), so it can be shelved or taken out of service
        before it ever fires, e.g. for detector maintenance."""
        alarm = self._alarms.get(key)
        if alarm is None:
            alarm = self._alarms[key] = Alarm(key=key, cls=cls, source=source, message=message)
        elif alarm.cls.name != cls.name:
            raise AlarmError(f"{key} is a {alarm.cls.name!r} alarm, not {cls.name!r}: two rules use the same key")
        alarm.cls = cls  # a reloaded config may have changed the class's policy
        return alarm

    def raise_alarm(self, key: str, cls: AlarmClass, now: float, *, message: str, source: str,
                    severity: str = "major", data: Mapping[str, Any] | None = None) -> list[Transition]:
        """The condition is present. Idempotent while active; see the module notes for the other states."""
        alarm = self.declare(key, cls, source=source, message=message)
        base = alarm.effective_state
        if base in ACTIVE:
            return []
        before = alarm.state
        if base in (S.NORMAL, S.LATCHED):
            alarm.episode += 1
            alarm.activated_at = now
            alarm.acknowledged_by = alarm.acknowledged_at = None
            alarm.clock.start(now, held=alarm.state in HELD)
        alarm.severity, alarm.message, alarm.source = severity, message, source
        alarm.data = copy.deepcopy(dict(data or {}))
        alarm.cleared_at = None
        self._set_base(alarm, S.ACTIVE_UNACK)
        return self._toggle(alarm, "raise", before, now, alarm.level)

    def clear(self, key: str, now: float) -> list[Transition]:
        """The condition is gone. A no-op for an unknown or already-clear alarm."""
        alarm = self._alarms.get(key)
        if alarm is None or alarm.effective_state not in ACTIVE:
            return []
        before, level = alarm.state, alarm.level
        if alarm.effective_state is S.ACTIVE_UNACK:
            new = S.CLEARED_UNACK
        else:
            new = S.LATCHED if alarm.cls.latching else S.NORMAL
        alarm.cleared_at = now
        self._set_base(alarm, new)
        return self._toggle(alarm, "clear", before, now, level)

    # -- commands from people (CLI, MQTT)

    def acknowledge(self, key: str, who: str, now: float, note: str = "") -> list[Transition]:
        """A person confirms they have seen the alarm and own it; escalation stops."""
        alarm = self._require(key)
        need(who, "who acknowledges")
        self._refuse_held(alarm, "acknowledged")
        state = alarm.state
        if state is S.ACTIVE_UNACK:
            new = S.ACTIVE_ACK
        elif state is S.CLEARED_UNACK:
            new = S.LATCHED if alarm.cls.latching else S.NORMAL
        elif state in (S.ACTIVE_ACK, S.LATCHED):
            raise AlarmError(f"{key} was already acknowledged by {alarm.acknowledged_by} "
                             f"at {when_text(alarm.acknowledged_at)}")
        else:
            raise AlarmError(f"{key} is not in alarm: there is nothing to acknowledge")
        level = alarm.level
        alarm.acknowledged_by, alarm.acknowledged_at = who, now
        self._set_base(alarm, new)
        return [self._emit(alarm, "acknowledge", state, who, now, level=level, data={"note": note} if note else {})]

    def reset(self, key: str, who: str, now: float) -> list[Transition]:
        """Return an acknowledged, cleared latching alarm to NORMAL."""
        alarm = self._require(key)
        need(who, "who resets")
        if not alarm.cls.latching:
            raise AlarmError(f"{key} is not a latching alarm: it returns to normal once acknowledged and cleared")
        self._refuse_held(alarm, "reset")
        state = alarm.state
        if state in ACTIVE:
            raise AlarmError(f"{key} is still in alarm: a latching alarm can be reset only after its condition clears")
        if state is S.CLEARED_UNACK:
            raise AlarmError(f"{key} has not been acknowledged yet: acknowledge it before resetting")
        if state is S.NORMAL:
            raise AlarmError(f"{key} is normal: there is nothing to reset")
        level = alarm.level
        self._set_base(alarm, S.NORMAL)
        return [self._emit(alarm, "reset", state, who, now, level=level)]

    def shelve(self, key: str, who: str, now: float, until: float, reason: str) -> list[Transition]:
        """Hide the alarm until ``until`` (at most the class's ``max_shelve`` ahead); escalation pauses."""
        alarm = self._require(key)
        need(who, "who shelves")
        need(reason, "a reason for shelving")
        if not math.isfinite(until):
            raise AlarmError(f"cannot shelve {key} without an end: shelving is time-limited, at most "
                             f"{span_text(alarm.cls.max_shelve)} for class {alarm.cls.name!r}")
        if until <= now:
            raise AlarmError(f"cannot shelve {key} until {when_text(until)}: the end must be in the future")
        if until - now > alarm.cls.max_shelve:
            raise AlarmError(f"cannot shelve {key} for {span_text(until - now)}: class {alarm.cls.name!r} "
                             f"allows at most {span_text(alarm.cls.max_shelve)}")
        state = alarm.state
        if state is S.SHELVED:
            raise AlarmError(f"{key} is already shelved until {when_text(alarm.shelved_until)} by {alarm.held_by}; "
                             f"unshelve it first")
        if state is S.OUT_OF_SERVICE:
            raise AlarmError(f"{key} is out of service (by {alarm.held_by}); return it to service before shelving")
        self._hold(alarm, S.SHELVED, who, reason, now)
        alarm.shelved_until = until
        return [self._emit(alarm, "shelve", state, who, now, level=alarm.level,
                           data={"until": until, "reason": reason})]

    def unshelve(self, key: str, who: str, now: float) -> list[Transition]:
        alarm = self._require(key)
        need(who, "who unshelves")
        if alarm.state is not S.SHELVED:
            raise AlarmError(f"{key} is not shelved (it is {alarm.state.value})")
        return [self._release(alarm, "unshelve", who, now, {})]

    def out_of_service(self, key: str, who: str, now: float, reason: str) -> list[Transition]:
        """Remove the alarm for maintenance (this replaces a shelve); escalation pauses until ``in_service``."""
        alarm = self._require(key)
        need(who, "who takes it out of service")
        need(reason, "a reason for taking it out of service")
        state = alarm.state
        if state is S.OUT_OF_SERVICE:
            raise AlarmError(f"{key} is already out of service (by {alarm.held_by}: {alarm.held_reason})")
        self._hold(alarm, S.OUT_OF_SERVICE, who, reason, now)
        return [self._emit(alarm, "out_of_service", state, who, now, level=alarm.level, data={"reason": reason})]

    def in_service(self, key: str, who: str, now: float) -> list[Transition]:
        alarm = self._require(key)
        need(who, "who returns it to service")
        if alarm.state is not S.OUT_OF_SERVICE:
            raise AlarmError(f"{key} is not out of service (it is {alarm.state.value})")
        return [self._release(alarm, "in_service", who, now, {})]

    # -- time

    def tick(self, now: float) -> list[Transition]:
        """Everything due by ``now``: shelve expiries, escalations (each missed step in order), chatter summaries."""
        out: list[Transition] = []
        for key in sorted(self._alarms):
            alarm = self._alarms[key]
            if alarm.state is S.SHELVED and alarm.shelved_until is not None and alarm.shelved_until <= now:
                out.append(self._release(alarm, "unshelve", "system", now, {"reason": "shelve expired"}))
            for level, due in alarm.clock.due(alarm.cls, now):
                out.append(self._emit(alarm, "escalate", alarm.state, "system", now, level=level,
                                      tier=alarm.cls.tier(level), data={"due": due, **said(alarm)}))
            summary = alarm.chatter.summary(now, alarm.cls)
            if summary is not None:
                hidden = summary["suppressed_raises"] or summary["suppressed_clears"]
                notify = bool(hidden) and alarm.state in UNACKED
                out.append(self._emit(alarm, "chatter", alarm.state, "system", now, level=alarm.level,
                                      tier=alarm.cls.tier(alarm.level) if notify else None,
                                      data={**summary, **said(alarm)} if notify else summary))
        return out

    # -- persistence: JSON-safe, and a restore reproduces the state exactly, deadlines included

    def export_one(self, key: str) -> dict[str, Any]:
        """One alarm as a JSON-safe dict (a row of the alarm table)."""
        alarm = self._require(key)
        out: dict[str, Any] = {}
        for name in ALARM_FIELDS:
            value = getattr(alarm, name)
            if name == "cls":
                out["class"] = value.name
            elif isinstance(value, EscalationClock | ChatterGuard):
                out[name] = value.to_dict()
            elif isinstance(value, AlarmState):
                out[name] = value.value
            elif isinstance(value, dict):
                out[name] = copy.deepcopy(value)
            else:
                out[name] = value  # str, int, float or None
        return out

    def restore_one(self, record: Mapping[str, Any], classes: Mapping[str, AlarmClass]) -> Alarm:
        """Put back one exported alarm exactly as it was; it replaces any alarm with the same key."""
        rec = copy.deepcopy(dict(record))
        name = rec.pop("class", None)
        if name not in classes:
            raise AlarmError(f"stored alarm {rec.get('key')!r} has class {name!r}, which the config no longer "
                             f"defines; add the class back to restore it")
        expected = set(ALARM_FIELDS) - {"cls"}
        if set(rec) != expected:
            raise AlarmError(f"stored alarm {rec.get('key')!r} does not match format {FORMAT_VERSION}: "
                             f"missing {sorted(expected - set(rec))}, unknown {sorted(set(rec) - expected)}")
        rec["state"] = AlarmState(rec["state"])
        rec["held_state"] = None if rec["held_state"] is None else AlarmState(rec["held_state"])
        rec["clock"] = EscalationClock(**rec["clock"])
        rec["chatter"] = ChatterGuard(**rec["chatter"])
        alarm = self._alarms[rec["key"]] = Alarm(cls=classes[name], **rec)
        self._seq = max(self._seq, alarm.last_seq)
        return alarm

    def to_dict(self) -> dict[str, Any]:
        alarms = [self.export_one(k) for k in sorted(self._alarms)]
        return {"version": FORMAT_VERSION, "seq": self._seq, "alarms": alarms}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], classes: Mapping[str, AlarmClass]) -> AlarmBook:
        if data.get("version") != FORMAT_VERSION:
            raise AlarmError(f"stored alarms have format {data.get('version')!r}; this gateway reads {FORMAT_VERSION}")
        book = cls()
        for record in data["alarms"]:
            book.restore_one(record, classes)
        book._seq = max(book._seq, int(data["seq"]))
        return book

    # -- internals

    def _require(self, key: str) -> Alarm:
        alarm = self._alarms.get(key)
        if alarm is None:
            raise AlarmError(f"there is no alarm {key!r}")
        return alarm

    @staticmethod
    def _refuse_held(alarm: Alarm, verb: str) -> None:
        if alarm.state is S.SHELVED:
            raise AlarmError(f"{alarm.key} is shelved until {when_text(alarm.shelved_until)}; unshelve it before it "
                             f"can be {verb}")
        if alarm.state is S.OUT_OF_SERVICE:
            raise AlarmError(f"{alarm.key} is out of service; return it to service before it can be {verb}")

    @staticmethod
    def _set_base(alarm: Alarm, new: AlarmState) -> None:
        """Move the lifecycle state (behind a hold, if held) and reschedule escalation."""
        if alarm.state in HELD:
            alarm.held_state = new
        else:
            alarm.state = new
        if new is S.NORMAL:
            alarm.clock.level = 0
        alarm.clock.schedule(alarm.cls, running=alarm.state in UNACKED)

    @staticmethod
    def _hold(alarm: Alarm, state: AlarmState, who: str, reason: str, now: float) -> None:
        if alarm.state in BASE:  # out of service over a shelve keeps the state behind the shelve
            alarm.held_state = alarm.state
        alarm.clock.pause(now)
        alarm.state, alarm.held_by, alarm.held_reason, alarm.shelved_until = state, who, reason, None
        alarm.clock.schedule(alarm.cls, running=False)

    def _release(self, alarm: Alarm, action: str, who: str, now: float, data: dict[str, Any]) -> Transition:
        before, base = alarm.state, alarm.held_state
        assert base is not None, "a held alarm always has a held state"
        alarm.state, alarm.held_state, alarm.held_by, alarm.held_reason = base, None, None, ""
        alarm.shelved_until = None
        alarm.clock.resume(now)
        alarm.clock.schedule(alarm.cls, running=base in UNACKED)
        tier = alarm.cls.tier(alarm.level) if base in UNACKED else None
        return self._emit(alarm, action, before, who, now, level=alarm.level, tier=tier,
                          data={**data, **said(alarm)} if tier else data)

    def _toggle(self, alarm: Alarm, action: str, before: AlarmState, now: float, level: int) -> list[Transition]:
        """Emit a raise/clear, unless the alarm is chattering (then it is only counted)."""
        suppressed, crossed = alarm.chatter.toggle(action == "raise", now, alarm.cls)
        if suppressed:
            alarm.updated_at = now
            return []
        annunciate = action == "raise" and alarm.state not in HELD
        out = [self._emit(alarm, action, before, "rule", now, level=level,
                          tier=alarm.cls.tier(level) if annunciate else None,
                          data=said(alarm) if action == "raise" else {})]
        if crossed:
            out.append(self._emit(alarm, "chatter", alarm.state, "system", now, level=alarm.level, data={
                "phase": "start", "activations": len(alarm.chatter.raises_in_window),
                "window": alarm.cls.chatter_window, "until": alarm.chatter.until}))
        return out

    def _emit(self, alarm: Alarm, action: str, before: AlarmState, who: str, now: float, *, level: int,
              tier: str | None = None, data: dict[str, Any] | None = None) -> Transition:
        self._seq += 1
        alarm.last_seq = self._seq
        alarm.updated_at = now
        return Transition(key=alarm.key, action=action, before=before, after=alarm.state, who=who, at=now,
                          level=level, alarm_class=alarm.cls.name, episode=alarm.episode, seq=self._seq,
                          tier=tier, data=dict(data or {}))

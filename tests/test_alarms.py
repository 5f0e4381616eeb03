"""Alarm lifecycle, escalation, shelving, chatter and persistence, on simulated time (no clock, no I/O)."""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway import facts
from gateway.core.data import Priority
from gateway.northbound.contract import upstream_schema
from gateway.northbound.json_v2 import JsonEncoder
from rules.alarms import ALLOWED, AlarmBook, AlarmClass, AlarmError, AlarmState, Transition

S = AlarmState
T0 = 1_700_000_000.0
ROOT = Path(__file__).parent.parent
SCHEMA = upstream_schema()

FIRE = AlarmClass("fire", Priority.ALARM, latching=True, escalate_after=(60.0, 300.0),
                  tiers=("property", "community", "family"), chatter_limit=3, chatter_window=30.0, max_shelve=3600.0)
FALL = AlarmClass("fall", Priority.ALARM, escalate_after=(30.0, 90.0), tiers=("property", "community", "family"),
                  chatter_limit=3, chatter_window=20.0, max_shelve=600.0)
DOOR = AlarmClass("door", Priority.EVENT, tiers=("property",), chatter_limit=2, chatter_window=10.0)
CLASSES = {c.name: c for c in (FIRE, FALL, DOOR)}
ZONE = "fire/panel-b3/zone-2F"
ROOM = "fall/bldg-1/room-101"


def fire(book: AlarmBook, now: float, key: str = ZONE) -> list[Transition]:
    return book.raise_alarm(key, FIRE, now, message="smoke in 2F corridor", source="panel-b3", severity="critical",
                            data={"zone": "2F"})


def fall(book: AlarmBook, now: float, key: str = ROOM) -> list[Transition]:
    return book.raise_alarm(key, FALL, now, message="fall detected", source="bldg-1", severity="major")


def steps(ts: list[Transition]) -> list[tuple[str, S, S]]:
    return [(t.action, t.before, t.after) for t in ts]


def restored(book: AlarmBook, classes: dict[str, AlarmClass] = CLASSES) -> AlarmBook:
    """What a restart sees: the state written as JSON text and read back."""
    return AlarmBook.from_dict(json.loads(json.dumps(book.to_dict(), allow_nan=False)), classes)


# -- lifecycle ------------------------------------------------------------------------------------------------------

def test_raise_ack_clear_and_raise_is_idempotent_while_active() -> None:
    book = AlarmBook()
    [t] = fall(book, T0)
    assert (t.action, t.before, t.after, t.who, t.tier, t.level, t.episode) == (
        "raise", S.NORMAL, S.ACTIVE_UNACK, "rule", "property", 0, 1)
    assert fall(book, T0 + 1) == []
    assert steps(book.acknowledge(ROOM, "guard-1", T0 + 2, note="on my way")) == [
        ("acknowledge", S.ACTIVE_UNACK, S.ACTIVE_ACK)]
    assert fall(book, T0 + 3) == []
    assert steps(book.clear(ROOM, T0 + 4)) == [("clear", S.ACTIVE_ACK, S.NORMAL)]
    assert book.clear(ROOM, T0 + 5) == [] and book.clear("no/such/alarm", T0 + 5) == []
    alarm = book.get(ROOM)
    assert alarm is not None and alarm.acknowledged_by == "guard-1" and alarm.next_deadline is None
    assert book.active() == []


def test_cleared_unacknowledged_stays_listed_until_acknowledged() -> None:
    book = AlarmBook()
    fall(book, T0)
    assert steps(book.clear(ROOM, T0 + 5)) == [("clear", S.ACTIVE_UNACK, S.CLEARED_UNACK)]
    assert [a.key for a in book.active()] == [ROOM]
    [again] = fall(book, T0 + 6)  # back in alarm: the same, still unacknowledged episode
    assert (again.before, again.after, again.episode) == (S.CLEARED_UNACK, S.ACTIVE_UNACK, 1)
    book.clear(ROOM, T0 + 7)
    assert steps(book.acknowledge(ROOM, "guard-1", T0 + 8)) == [("acknowledge", S.CLEARED_UNACK, S.NORMAL)]
    assert book.active() == []
    assert fall(book, T0 + 9)[0].episode == 2


def test_latching_alarm_needs_acknowledge_and_reset() -> None:
    book = AlarmBook()
    fire(book, T0)
    with pytest.raises(AlarmError, match="still in alarm"):
        book.reset(ZONE, "guard-1", T0 + 1)
    book.acknowledge(ZONE, "guard-1", T0 + 1)
    assert steps(book.clear(ZONE, T0 + 2)) == [("clear", S.ACTIVE_ACK, S.LATCHED)]
    assert [a.key for a in book.active()] == [ZONE]
    assert steps(book.reset(ZONE, "technician", T0 + 3)) == [("reset", S.LATCHED, S.NORMAL)]
    # cleared before anyone acknowledged: acknowledge latches, then reset
    fire(book, T0 + 10)
    book.clear(ZONE, T0 + 11)
    with pytest.raises(AlarmError, match="acknowledge it before resetting"):
        book.reset(ZONE, "technician", T0 + 12)
    assert steps(book.acknowledge(ZONE, "guard-1", T0 + 12)) == [("acknowledge", S.CLEARED_UNACK, S.LATCHED)]
    # a new occurrence while latched is a new episode that needs its own acknowledgement
    [t] = fire(book, T0 + 13)
    assert (t.before, t.after, t.episode, t.tier) == (S.LATCHED, S.ACTIVE_UNACK, 3, "property")


def test_illegal_operations_say_why() -> None:
    book = AlarmBook()
    with pytest.raises(AlarmError, match="no alarm 'nope'"):
        book.acknowledge("nope", "guard-1", T0)
    fall(book, T0)
    book.acknowledge(ROOM, "guard-1", T0 + 1)
    with pytest.raises(AlarmError, match="already acknowledged by guard-1 at 2023-11-14 22:13:21Z"):
        book.acknowledge(ROOM, "guard-2", T0 + 2)
    with pytest.raises(AlarmError, match="not a latching alarm"):
        book.reset(ROOM, "guard-1", T0 + 2)
    book.clear(ROOM, T0 + 3)
    with pytest.raises(AlarmError, match="nothing to acknowledge"):
        book.acknowledge(ROOM, "guard-1", T0 + 4)
    fall(book, T0 + 5)
    with pytest.raises(AlarmError, match="who acknowledges is required"):
        book.acknowledge(ROOM, " ", T0 + 5)
    with pytest.raises(AlarmError, match="is a 'fall' alarm, not 'fire'"):
        fire(book, T0 + 6, key=ROOM)


# -- escalation -----------------------------------------------------------------------------------------------------

def test_escalates_yellow_then_red_to_the_next_tier_exactly_once() -> None:
    book = AlarmBook()
    fall(book, T0)
    assert book.next_wakeup() == T0 + 30
    assert book.tick(T0 + 29.999) == []
    [yellow] = book.tick(T0 + 30)
    assert (yellow.action, yellow.level, yellow.tier, yellow.who, yellow.data["due"]) == (
        "escalate", 1, "community", "system", T0 + 30)
    assert yellow.to_event(book.get(ROOM)).payload["colour"] == "yellow"  # type: ignore[arg-type]
    assert book.tick(T0 + 31) == [] and book.next_wakeup() == T0 + 90
    [red] = book.tick(T0 + 90)
    assert (red.level, red.tier, red.to_event(book.get(ROOM)).payload["colour"]) == (2, "family", "red")  # type: ignore[arg-type]
    assert book.tick(T0 + 10_000) == [] and book.next_wakeup() is None


def test_a_late_tick_notifies_every_missed_tier_in_order() -> None:
    book = AlarmBook()
    fall(book, T0)
    ts = book.tick(T0 + 1000)
    assert [(t.level, t.tier, t.data["due"]) for t in ts] == [(1, "community", T0 + 30), (2, "family", T0 + 90)]


def test_acknowledge_stops_escalation_and_keeps_the_level() -> None:
    book = AlarmBook()
    fall(book, T0)
    book.tick(T0 + 30)
    [ack] = book.acknowledge(ROOM, "family:chen", T0 + 40)
    assert ack.level == 1
    alarm = book.get(ROOM)
    assert alarm is not None and alarm.level == 1 and alarm.next_deadline is None and book.next_wakeup() is None
    assert book.tick(T0 + 10_000) == []
    book.clear(ROOM, T0 + 10_001)
    assert alarm.level == 0


def test_escalation_continues_after_an_unacknowledged_clear() -> None:
    book = AlarmBook()
    fall(book, T0)
    book.clear(ROOM, T0 + 5)  # the sensor reset; nobody has checked on the person
    assert [(t.action, t.after, t.tier) for t in book.tick(T0 + 30)] == [("escalate", S.CLEARED_UNACK, "community")]


# -- shelving and out of service ------------------------------------------------------------------------------------

def test_shelved_alarm_is_recorded_not_annunciated_and_expires() -> None:
    book = AlarmBook()
    fall(book, T0)
    [shelve] = book.shelve(ROOM, "guard-1", T0 + 10, until=T0 + 110, reason="sensor being cleaned")
    assert (shelve.before, shelve.after, shelve.data["until"]) == (S.ACTIVE_UNACK, S.SHELVED, T0 + 110)
    assert book.next_wakeup() == T0 + 110 and book.tick(T0 + 100) == []  # no escalation while shelved
    assert [(t.action, t.before, t.after, t.tier) for t in book.clear(ROOM, T0 + 50) + fall(book, T0 + 60)] == [
        ("clear", S.SHELVED, S.SHELVED, None), ("raise", S.SHELVED, S.SHELVED, None)]
    with pytest.raises(AlarmError, match="shelved until"):
        book.acknowledge(ROOM, "guard-1", T0 + 70)
    [back] = book.tick(T0 + 110)
    assert (back.action, back.who, back.after, back.tier, back.data["reason"]) == (
        "unshelve", "system", S.ACTIVE_UNACK, "property", "shelve expired")
    # 10 s had run before the shelve; the 100 s shelved do not count, so yellow is due 20 s after the release
    assert book.next_wakeup() == T0 + 130
    assert [t.tier for t in book.tick(T0 + 130)] == ["community"]


def test_shelve_rules() -> None:
    book = AlarmBook()
    fall(book, T0)
    with pytest.raises(AlarmError, match="until 2023-11-14 22:13:20Z: the end must be in the future"):
        book.shelve(ROOM, "guard-1", T0, until=T0, reason="x")
    for until in (math.nan, math.inf):
        with pytest.raises(AlarmError, match="shelving is time-limited, at most 10 min"):
            book.shelve(ROOM, "guard-1", T0, until=until, reason="x")
    with pytest.raises(AlarmError, match=r"for 15 min: class 'fall' allows at most 10 min"):
        book.shelve(ROOM, "guard-1", T0, until=T0 + 900, reason="x")
    with pytest.raises(AlarmError, match="a reason for shelving is required"):
        book.shelve(ROOM, "guard-1", T0, until=T0 + 60, reason="")
    book.shelve(ROOM, "guard-1", T0, until=T0 + 60, reason="x")
    with pytest.raises(AlarmError, match="already shelved"):
        book.shelve(ROOM, "guard-1", T0, until=T0 + 60, reason="x")
    assert steps(book.unshelve(ROOM, "guard-1", T0 + 5)) == [("unshelve", S.SHELVED, S.ACTIVE_UNACK)]
    with pytest.raises(AlarmError, match="not shelved"):
        book.unshelve(ROOM, "guard-1", T0 + 6)


def test_out_of_service_for_maintenance_then_back() -> None:
    book = AlarmBook()
    book.declare(ZONE, FIRE, source="panel-b3")  # known before it ever fires, so it can be taken out of service
    assert steps(book.out_of_service(ZONE, "technician", T0, reason="detector test")) == [
        ("out_of_service", S.NORMAL, S.OUT_OF_SERVICE)]
    [test_alarm] = fire(book, T0 + 10)
    assert (test_alarm.after, test_alarm.tier) == (S.OUT_OF_SERVICE, None)
    assert book.tick(T0 + 1000) == []
    book.clear(ZONE, T0 + 20)
    with pytest.raises(AlarmError, match="already out of service"):
        book.out_of_service(ZONE, "technician", T0 + 30, reason="again")
    [back] = book.in_service(ZONE, "technician", T0 + 2000)
    assert (back.after, back.tier) == (S.CLEARED_UNACK, "property")  # the test alarm still needs an ack
    assert book.next_wakeup() == T0 + 2060  # escalation counted from the return to service


def test_out_of_service_replaces_a_shelve() -> None:
    book = AlarmBook()
    fall(book, T0)
    book.shelve(ROOM, "guard-1", T0, until=T0 + 60, reason="x")
    assert steps(book.out_of_service(ROOM, "technician", T0 + 1, reason="replace sensor")) == [
        ("out_of_service", S.SHELVED, S.OUT_OF_SERVICE)]
    assert book.tick(T0 + 100) == []  # the shelve's expiry no longer applies
    assert steps(book.in_service(ROOM, "technician", T0 + 200)) == [("in_service", S.OUT_OF_SERVICE, S.ACTIVE_UNACK)]


# -- chatter --------------------------------------------------------------------------------------------------------

def test_chattering_point_is_rate_limited_and_summarised() -> None:
    book = AlarmBook()
    out: list[Transition] = []
    for i in range(4):  # limit 3 in 20 s: the fourth activation marks it chattering
        out += fall(book, T0 + i) + book.clear(ROOM, T0 + i + 0.5)
    assert [t.action for t in out] == ["raise", "clear"] * 3 + ["raise", "chatter"]
    assert out[-1].data["phase"] == "start" and out[-1].data["until"] == T0 + 23
    for i in range(10):  # keeps toggling: nothing emitted individually
        assert fall(book, T0 + 4 + i) + book.clear(ROOM, T0 + 4.5 + i) == []
    fall(book, T0 + 14)
    assert book.next_wakeup() == T0 + 23
    [summary] = book.tick(T0 + 23)
    assert summary.action == "chatter" and summary.before == summary.after == S.ACTIVE_UNACK
    assert summary.data.items() >= {"phase": "continue", "suppressed_raises": 11, "suppressed_clears": 11}.items()
    assert summary.tier == "property"  # toggles were hidden and nobody has acknowledged
    escalate, end = book.tick(T0 + 43)  # quiet for a window: chattering ends (and yellow was due at T0 + 30)
    assert (escalate.action, escalate.level, end.action) == ("escalate", 1, "chatter")
    assert (end.data["phase"], end.data["suppressed_raises"], end.tier) == ("end", 0, None)
    book.acknowledge(ROOM, "guard-1", T0 + 44)
    assert steps(book.clear(ROOM, T0 + 45)) == [("clear", S.ACTIVE_ACK, S.NORMAL)]


def test_escalation_is_not_suppressed_by_chatter() -> None:
    book = AlarmBook()
    for i in range(30):
        fall(book, T0 + i)
        book.clear(ROOM, T0 + i + 0.5)
        book.tick(T0 + i + 0.6)
    alarm = book.get(ROOM)
    assert alarm is not None and alarm.chatter.until is not None and alarm.chatter.until > T0 + 30  # still on
    assert [t.action for t in book.tick(T0 + 30)] == ["escalate"]


# -- events, persistence, purity ------------------------------------------------------------------------------------

def test_transition_event_carries_the_trail_entry_and_matches_the_schema() -> None:
    book = AlarmBook()
    [t] = fire(book, T0)
    alarm = book.get(ZONE)
    assert alarm is not None
    ev = t.to_event(alarm)
    assert (ev.kind, ev.source, ev.priority, ev.ts) == ("alarm.raise", "panel-b3", Priority.ALARM, T0)
    assert ev.payload.items() >= {
        "key": ZONE, "class": "fire", "before": "normal", "state": "active_unack", "who": "rule", "at": T0,
        "level": 0, "colour": "none", "tier": "property", "message": "smoke in 2F corridor", "severity": "critical",
        "context": {"zone": "2F"}}.items()
    assert ev.id == t.to_event(alarm).id  # the same transition always gets the same id
    message = json.loads(JsonEncoder("site-1").message(facts.event(ev)).payload)
    jsonschema.Draft202012Validator(SCHEMA).validate(message)
    [ack] = book.acknowledge(ZONE, "guard-1", T0 + 1)
    assert ack.to_event(alarm).id != ev.id and ack.to_event(alarm).id > ev.id
    door = book.raise_alarm("door/gate-n", DOOR, T0, message="held open", source="gate-n")[0]
    assert door.to_event(book.get("door/gate-n")).priority is Priority.EVENT  # type: ignore[arg-type]


def test_restore_reproduces_state_and_deadlines() -> None:
    book = AlarmBook()
    fall(book, T0)
    fire(book, T0 + 5)
    book.shelve(ZONE, "guard-1", T0 + 6, until=T0 + 600, reason="x")
    for i in range(4):
        book.clear(ROOM, T0 + 7 + i)
        fall(book, T0 + 7.5 + i)
    again = restored(book)
    assert again.to_dict() == book.to_dict() and again.next_wakeup() == book.next_wakeup()
    assert again.tick(T0 + 700) == book.tick(T0 + 700)
    with pytest.raises(AlarmError, match="no longer defines"):
        AlarmBook.from_dict(book.to_dict(), {"fire": FIRE})


def test_alarm_class_validation() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        AlarmClass("x", escalate_after=(60.0, 60.0), tiers=("a", "b", "c"))
    with pytest.raises(ValueError, match="priority must be alarm or event"):
        AlarmClass("x", Priority.TELEMETRY)
    with pytest.raises(ValueError, match="positive, finite"):
        AlarmClass("x", escalate_after=(math.inf,))
    assert AlarmClass("x", escalate_after=(1.0, 2.0), tiers=("property",)).tier(2) == "property"


def test_rules_modules_stay_pure() -> None:
    allowed = {"__future__", "copy", "enum", "hashlib", "itertools", "math", "uuid", "dataclasses", "datetime",
               "typing", "collections.abc", "gateway.core.data", "gateway.core.ids", "rules.alarms",
               "rules.alarm_state", "rules.escalation"}
    for name in ("alarms.py", "alarm_state.py", "escalation.py"):
        source = (ROOT / "rules" / name).read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                assert {a.name for a in node.names} <= allowed, name
            elif isinstance(node, ast.ImportFrom):
                assert node.module in allowed, f"{name} imports {node.module}"
        assert ".now(" not in source and "utcnow" not in source and "time.time" not in source


# -- the state machine, driven at random --------------------------------------------------------------------------

# Low chatter limits so random runs reach chattering; the door class has one tier for two levels and no chatter
# detection. Few keys, so operations meet each other on the same alarm.
M_CLASSES = {c.name: c for c in (
    AlarmClass("fire", Priority.ALARM, latching=True, escalate_after=(60.0, 300.0),
               tiers=("property", "community", "family"), chatter_limit=2, chatter_window=30.0, max_shelve=3600.0),
    AlarmClass("fall", Priority.ALARM, escalate_after=(30.0, 90.0), tiers=("property", "community", "family"),
               chatter_limit=2, chatter_window=20.0, max_shelve=600.0),
    AlarmClass("door", Priority.EVENT, escalate_after=(45.0, 50.0), tiers=("property",), chatter_limit=0),
)}
KEYS = {ZONE: M_CLASSES["fire"], ROOM: M_CLASSES["fall"], "door/gate-n": M_CLASSES["door"]}
key_st = st.sampled_from(sorted(KEYS))
who_st = st.sampled_from(["guard-1", "family:chen", "technician"])
dt_st = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 5.0, 29.0, 30.0, 45.0, 60.0, 90.0, 300.0, 700.0]),
                  st.floats(0, 400, allow_nan=False))
Outcome = list[Transition] | str


def outcome(op: Callable[[AlarmBook], list[Transition]], book: AlarmBook) -> Outcome:
    try:
        return op(book)
    except AlarmError as e:
        return f"AlarmError: {e}"


class AlarmMachine(RuleBasedStateMachine):
    """Random operations on a moving simulated clock; after every step the invariants below must hold, and a book
    restored from the stored state must answer the same operation with the same transitions."""

    def __init__(self) -> None:
        super().__init__()
        self.book = AlarmBook()
        self.now = T0
        self.seen_after: dict[str, S] = {}  # the state upstream last learned of, per alarm
        self.last_seq = 0
        self.episode_level: dict[tuple[str, int], int] = {}
        self.episode_deadline: dict[tuple[str, int], float] = {}
        self.episode_dues: dict[tuple[str, int], list[float]] = {}

    def apply(self, op: Callable[[AlarmBook], list[Transition]]) -> Outcome:
        stored = self.book.to_dict()
        twin = restored(self.book, M_CLASSES)
        assert twin.to_dict() == stored
        chattering = {a.key for a in self.book.all() if a.chatter.until is not None}
        result = outcome(op, self.book)
        assert outcome(op, twin) == result  # a restart changes nothing about what happens next
        assert twin.to_dict() == self.book.to_dict()
        if not isinstance(result, str):
            for t in result:
                self.check(t, chattering)
        return result

    def check(self, t: Transition, chattering: set[str]) -> None:
        cls = KEYS[t.key]
        assert (t.before, t.after) in ALLOWED[t.action], t
        assert t.after is not S.LATCHED or cls.latching, t
        if t.action in ("clear", "acknowledge") and t.after is S.NORMAL:
            assert not cls.latching, t  # a latching alarm only returns to normal by reset
        assert t.at == self.now and t.seq > self.last_seq and t.alarm_class == cls.name
        self.last_seq = t.seq
        if t.key not in chattering:
            assert t.before == self.seen_after.get(t.key, S.NORMAL), f"gap in the trail of {t.key}: {t}"
        self.seen_after[t.key] = t.after
        if t.tier is not None:
            assert t.after not in (S.SHELVED, S.OUT_OF_SERVICE), "a held alarm is never annunciated"
        if t.action == "escalate":
            dues = self.episode_dues.setdefault((t.key, t.episode), [])
            assert t.level == len(dues) + 1 <= len(cls.escalate_after), "each level exactly once, in order"
            assert t.tier == cls.tier(t.level) and t.data["due"] <= t.at
            assert not dues or t.data["due"] > dues[-1], "escalation deadlines strictly increase"
            dues.append(t.data["due"])
        alarm = self.book.get(t.key)
        assert alarm is not None
        json.dumps(t.to_event(alarm).payload, allow_nan=False)

    @initialize(keys=st.sets(key_st, min_size=2))
    def declare(self, keys: set[str]) -> None:
        """Some alarms are known before they fire (so they can be taken out of service); others are not."""
        for key in sorted(keys):
            self.book.declare(key, KEYS[key], source=key.split("/")[1])

    @rule(dt=dt_st)
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def tick(self) -> None:
        self.apply(lambda b: b.tick(self.now))
        wake = self.book.next_wakeup()
        assert wake is None or wake > self.now, "nothing due is left after a tick"

    @precondition(lambda self: self.book.next_wakeup() is not None)
    @rule()
    def sleep_until_next_wakeup(self) -> None:
        wake = self.book.next_wakeup()
        assert wake is not None
        self.now = max(self.now, wake)
        self.tick()

    @rule(key=key_st, severity=st.sampled_from(["critical", "major"]))
    def raise_(self, key: str, severity: str) -> None:
        self.apply(lambda b: b.raise_alarm(key, KEYS[key], self.now, message=f"{key} in alarm",
                                           source=key.split("/")[1], severity=severity, data={"n": 1}))

    @rule(key=key_st)
    def clear(self, key: str) -> None:
        self.apply(lambda b: b.clear(key, self.now))

    @rule(key=key_st, dt=st.sampled_from([0.0, 0.5, 2.0]))
    def flap(self, key: str, dt: float) -> None:
        """A point toggling quickly: the way chatter happens."""
        self.raise_(key, "major")
        self.now += dt
        self.clear(key)

    @rule(key=key_st, who=who_st)
    def acknowledge(self, key: str, who: str) -> None:
        self.apply(lambda b: b.acknowledge(key, who, self.now, note="seen"))

    @rule(key=key_st, who=who_st)
    def reset(self, key: str, who: str) -> None:
        self.apply(lambda b: b.reset(key, who, self.now))

    @precondition(lambda self: any(a.state in (S.ACTIVE_UNACK, S.CLEARED_UNACK, S.LATCHED) for a in self.book.all()))
    @rule(who=who_st, pick=st.integers(0, 2))
    def respond(self, who: str, pick: int) -> None:
        """What a guard does: acknowledge what is waiting, reset what is latched (random picks rarely line up)."""
        waiting = [a for a in self.book.all() if a.state in (S.ACTIVE_UNACK, S.CLEARED_UNACK, S.LATCHED)]
        alarm = waiting[pick % len(waiting)]
        if alarm.state is S.LATCHED:
            self.reset(alarm.key, who)
        else:
            self.acknowledge(alarm.key, who)

    @rule(key=key_st, who=who_st, duration=st.sampled_from([1.0, 45.0, 300.0, 3000.0, 5000.0]))
    def shelve(self, key: str, who: str, duration: float) -> None:
        self.apply(lambda b: b.shelve(key, who, self.now, until=self.now + duration, reason="nuisance"))

    @rule(key=key_st, who=who_st)
    def unshelve(self, key: str, who: str) -> None:
        self.apply(lambda b: b.unshelve(key, who, self.now))

    @rule(key=key_st, who=who_st)
    def out_of_service(self, key: str, who: str) -> None:
        self.apply(lambda b: b.out_of_service(key, who, self.now, reason="maintenance"))

    @rule(key=key_st, who=who_st)
    def in_service(self, key: str, who: str) -> None:
        self.apply(lambda b: b.in_service(key, who, self.now))

    @rule()
    def restart(self) -> None:
        before = self.book.to_dict()
        self.book = restored(self.book, M_CLASSES)
        assert self.book.to_dict() == before

    @invariant()
    def alarms_are_consistent(self) -> None:
        for a in self.book.all():
            state, cls, ep = a.effective_state, a.cls, (a.key, a.episode)
            assert (a.state in (S.SHELVED, S.OUT_OF_SERVICE)) == (a.held_state is not None)
            assert a.held_state not in (S.SHELVED, S.OUT_OF_SERVICE)
            assert (a.state is S.SHELVED) == (a.shelved_until is not None)
            # never both cleared and active
            assert not (a.condition_active and a.cleared_at is not None)
            assert state not in (S.CLEARED_UNACK, S.LATCHED) or a.cleared_at is not None
            assert not (a.unacknowledged and a.acknowledged_at is not None)
            assert state not in (S.ACTIVE_ACK, S.LATCHED) or a.acknowledged_by is not None
            assert state is not S.LATCHED or cls.latching
            # escalation runs exactly while annunciated, unacknowledged and below the top level
            running = a.state in (S.ACTIVE_UNACK, S.CLEARED_UNACK) and a.level < len(cls.escalate_after)
            assert (a.next_deadline is not None) == running
            if a.next_deadline is not None:
                assert a.clock.escalate_from is not None
                assert a.next_deadline == a.clock.escalate_from + cls.escalate_after[a.level]
                assert a.next_deadline >= self.episode_deadline.get(ep, -math.inf), "deadline moved earlier"
                self.episode_deadline[ep] = a.next_deadline
            assert 0 <= a.level <= len(cls.escalate_after)
            if state is S.NORMAL:
                assert a.level == 0
            else:
                assert a.level >= self.episode_level.get(ep, 0), "level fell within an episode"
                self.episode_level[ep] = a.level
            # chatter bookkeeping is bounded, and outside chatter the trail upstream matches the state
            assert len(a.chatter.raises_in_window) <= cls.chatter_limit + 1
            if a.chatter.until is None:
                assert a.chatter.suppressed_raises == a.chatter.suppressed_clears == 0
                assert self.seen_after.get(a.key, S.NORMAL) is a.state
        times = [t for a in self.book.all() for t in (a.next_deadline, a.shelved_until, a.chatter.until)
                 if t is not None]
        assert self.book.next_wakeup() == min(times, default=None)


AlarmMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestAlarmStateMachine = AlarmMachine.TestCase

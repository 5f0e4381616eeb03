"""Every condition type on simulated time: boundaries, hysteresis, durations, windows, schedules."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.core.data import Event, Priority, Quality, Reading
from rules.config import Rule
from rules.engine import Cleared, Engine, Fired, Output

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()  # a Monday, noon


def rule(when: dict[str, Any], **extra: Any) -> Rule:
    data = {"id": "r", "when": when, "alarm": {"class": "test", "message": extra.pop("message", "")}, **extra}
    return Rule.model_validate(data)


def engine(*rules: Rule) -> Engine:
    return Engine(list(rules), started=T0, tz=ZoneInfo("Asia/Shanghai"))


def feed(e: Engine, t: float, value: Any, ref: str = "m.p", quality: Quality = Quality.GOOD) -> list[Output]:
    device, point = ref.split(".")
    return e.reading(Reading(device, point, value, None, quality, T0 + t), T0 + t)


def kinds(outputs: list[Output]) -> list[str]:
    return ["fired" if isinstance(o, Fired) else "cleared" for o in outputs]


def test_threshold_above_is_strict_and_clears_below() -> None:
    e = engine(rule({"point": "m.p", "above": 80}))
    assert kinds(feed(e, 0, 80)) == []  # at the limit: not above
    assert kinds(feed(e, 1, 80.01)) == ["fired"]
    assert kinds(feed(e, 2, 95)) == []  # already active: nothing new
    assert kinds(feed(e, 3, 79)) == ["cleared"]


def test_deadband_holds_the_alarm_until_the_value_is_clearly_back() -> None:
    e = engine(rule({"point": "m.p", "above": 80, "deadband": 5}))
    assert kinds(feed(e, 0, 81)) == ["fired"]
    assert kinds(feed(e, 1, 79)) == []  # inside the band: still active
    assert kinds(feed(e, 2, 75.5)) == []
    assert kinds(feed(e, 3, 74.9)) == ["cleared"]
    assert kinds(feed(e, 4, 79)) == []  # the band applies only while active
    assert kinds(feed(e, 5, 80.5)) == ["fired"]


def test_below_range_and_outside() -> None:
    low = engine(rule({"point": "m.p", "below": 10}))
    assert kinds(feed(low, 0, 10)) == [] and kinds(feed(low, 1, 9.9)) == ["fired"]
    inside = engine(rule({"point": "m.p", "inside": [1, 2]}))
    assert kinds(feed(inside, 0, 1)) == ["fired"] and kinds(feed(inside, 1, 2.01)) == ["cleared"]
    outside = engine(rule({"point": "m.p", "outside": [220, 240]}))
    assert kinds(feed(outside, 0, 230)) == [] and kinds(feed(outside, 1, 241)) == ["fired"]


def test_bad_quality_never_fires_and_clears_a_threshold() -> None:
    e = engine(rule({"point": "m.p", "above": 1}))
    assert kinds(feed(e, 0, None, quality=Quality.BAD)) == []
    assert kinds(feed(e, 1, 5)) == ["fired"]
    assert kinds(feed(e, 2, None, quality=Quality.BAD)) == ["cleared"]


def test_equals_on_states_and_booleans() -> None:
    e = engine(rule({"point": "lift.mode", "equals": "fire_recall"}))
    assert kinds(feed(e, 0, "normal", "lift.mode")) == []
    assert kinds(feed(e, 1, "fire_recall", "lift.mode")) == ["fired"]
    b = engine(rule({"point": "lift.occupied", "equals": True}))
    assert kinds(feed(b, 0, 1, "lift.occupied")) == []  # 1 is not true: types matter for booleans
    assert kinds(feed(b, 1, True, "lift.occupied")) == ["fired"]


def test_for_duration_must_hold_continuously() -> None:
    e = engine(rule({"point": "m.p", "above": 0.5}, **{"for": "30s"}))
    assert kinds(feed(e, 0, 1)) == []
    assert kinds(e.tick(T0 + 29.9)) == []
    assert kinds(feed(e, 20, 0.4)) == []  # dipped: the clock restarts
    assert kinds(feed(e, 21, 1)) == []
    assert e.next_wakeup() == pytest.approx(T0 + 51)
    assert kinds(e.tick(T0 + 50.9)) == []
    assert kinds(e.tick(T0 + 51)) == ["fired"]


def test_rate_of_change() -> None:
    e = engine(rule({"point": "m.p", "rate_above": 10, "per": "1m"}))
    assert kinds(feed(e, 0, 100)) == []
    assert kinds(feed(e, 60, 109)) == []  # 9 per minute
    assert kinds(feed(e, 90, 115)) == ["fired"]  # 12 per minute
    assert kinds(feed(e, 150, 116)) == ["cleared"]


def test_stale_point() -> None:
    e = engine(rule({"stale": "m.p", "after": "10m"}))
    assert kinds(feed(e, 0, 1)) == []
    assert kinds(e.tick(T0 + 600)) == []
    assert kinds(e.tick(T0 + 601)) == ["fired"]
    assert kinds(feed(e, 700, None, quality=Quality.BAD)) == []  # a bad reading is no reading
    assert kinds(feed(e, 701, 2)) == ["cleared"]


def test_absent_event_counts_from_start_up() -> None:
    e = engine(rule({"no_event": "motion", "source": "door-1203", "within": "12h"}))
    assert kinds(e.tick(T0 + 12 * 3600)) == []
    assert kinds(e.tick(T0 + 12 * 3600 + 1)) == ["fired"]
    motion = Event("motion", "door-1203", Priority.EVENT, ts=T0 + 13 * 3600)
    assert kinds(e.event(motion, T0 + 13 * 3600)) == ["cleared"]
    other = Event("motion", "door-0801", Priority.EVENT)
    assert kinds(e.event(other, T0 + 26 * 3600)) == ["fired"]  # someone else's door does not count


def test_count_within_window() -> None:
    e = engine(rule({"event": "door.forced", "count": 3, "within": "5m"}))
    forced = Event("door.forced", "gate-2", Priority.EVENT)
    assert kinds(e.event(forced, T0)) == []
    assert kinds(e.event(forced, T0 + 100)) == []
    assert kinds(e.event(forced, T0 + 299)) == ["fired"]
    assert kinds(e.tick(T0 + 300.5)) == ["cleared"]  # the first one has left the window


def test_momentary_event_fires_and_returns_to_normal() -> None:
    e = engine(rule({"event": "fall.detected"}, message="Fall at {camera}"))
    out = e.event(Event("fall.detected", "cam-3", Priority.ALARM, {"camera": "cam-3"}), T0)
    assert kinds(out) == ["fired", "cleared"]
    assert isinstance(out[0], Fired) and out[0].message == "Fall at cam-3"


def test_event_latched_until_clear_when_with_instances() -> None:
    e = engine(Rule.model_validate({
        "id": "fire", "when": {"event": "fire.alarm", "source": "panel-*"},
        "clear_when": {"event": "fire.reset"},
        "alarm": {"class": "fire", "message": "Fire in zone {zone}", "instance": "{zone}"},
    }))
    out = e.event(Event("fire.alarm", "panel-b3", Priority.ALARM, {"zone": "2F"}), T0)
    assert [(type(o).__name__, o.key) for o in out] == [("Fired", "fire/2F")]
    out = e.event(Event("fire.alarm", "panel-b3", Priority.ALARM, {"zone": "5F"}), T0 + 1)
    assert [o.key for o in out] == ["fire/5F"]
    assert e.event(Event("fire.alarm", "panel-b3", Priority.ALARM, {"zone": "2F"}), T0 + 2) == []
    assert e.event(Event("fire.alarm", "elsewhere", Priority.ALARM, {"zone": "9F"}), T0 + 3) == []
    out = e.event(Event("fire.reset", "panel-b3", Priority.EVENT), T0 + 60)
    assert sorted(o.key for o in out if isinstance(o, Cleared)) == ["fire/2F", "fire/5F"]


def test_time_window_wraps_midnight_and_respects_days() -> None:
    e = engine(rule({"all": [{"point": "water.flow", "above": 0.5}, {"time": "23:00-05:00", "days": ["mon"]}]}))
    assert kinds(feed(e, 0, 2, "water.flow")) == []  # Monday noon
    assert kinds(e.tick(T0 + 11 * 3600)) == ["fired"]  # Monday 23:00
    assert kinds(e.tick(T0 + 16 * 3600)) == []  # Tuesday 04:00, still Monday night's window
    assert kinds(e.tick(T0 + 17 * 3600)) == ["cleared"]  # Tuesday 05:00
    assert kinds(e.tick(T0 + 35 * 3600)) == []  # Tuesday 23:00: not a configured day


def test_all_any_not_and_device_state() -> None:
    e = engine(rule({"all": [
        {"any": [{"device": "meter-1", "state": "offline"}, {"device": "meter-2", "state": "offline"}]},
        {"not": {"device": "gateway-bus", "state": "offline"}},
    ]}))
    assert kinds(e.event(Event("device.offline", "meter-2", Priority.EVENT), T0)) == ["fired"]
    assert kinds(e.event(Event("device.offline", "gateway-bus", Priority.EVENT), T0 + 1)) == ["cleared"]


def test_expression_over_points_and_time() -> None:
    e = engine(rule({"expr": 'points["m.p"] > 2.0 * points["m.q"] && hour >= 12'}))
    assert kinds(feed(e, 0, 10, "m.q")) == []
    assert kinds(feed(e, 1, 20, "m.p")) == []  # equal to twice: not above
    assert kinds(feed(e, 2, 21, "m.p")) == ["fired"]


def test_message_template_uses_readings_and_context() -> None:
    e = engine(rule({"point": "lift.occupied", "equals": True},
                    message="Trapped at floor {lift.floor} ({value}) {unknown}"))
    feed(e, 0, 7, "lift.floor")
    out = feed(e, 1, True, "lift.occupied")
    assert isinstance(out[0], Fired) and out[0].message == "Trapped at floor 7 (True) {unknown}"


@pytest.mark.parametrize("bad", [
    {"point": "m.p"},  # no test
    {"point": "nodot", "above": 1},
    {"event": "x", "count": 3},  # a count needs a window
    {"time": "25:00-01:00"},
    {"expr": "value >"},
    {"expr": "temperature > 3"},  # an unknown name
    {"wat": 1},
    {"inside": [3, 1], "point": "m.p"},
])
def test_bad_conditions_are_config_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Rule).validate_python({"id": "r", "when": bad, "alarm": {"class": "c"}})


def test_value_is_filled_in_when_a_for_rule_fires_on_a_tick() -> None:
    e = engine(rule({"point": "m.p", "above": 200}, message="Voltage {value} V", **{"for": "10s"}))
    feed(e, 0, 241.5)
    (fired,) = e.tick(T0 + 10)
    assert isinstance(fired, Fired) and fired.message == "Voltage 241.5 V" and fired.source == "m"

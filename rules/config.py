"""Rule and alarm-class schema: declarative conditions first, a CEL expression for the rest.

A condition is a small TOML table; its keys say what kind it is (``point`` + ``above``, ``event``
+ ``count`` + ``within``, ``all = [...]``, ``expr = "..."``). Every mistake is a config error
with file and line, found by ``gateway check`` before the rule ever runs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from gateway.core.config import Duration, Identifier, StrictModel
from gateway.core.data import Priority
from rules.escalation import AlarmClass

POINT_REF = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}\.[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
PointRef = Annotated[str, Field(pattern=POINT_REF, description="\"device.point\"")]
_TIME_RANGE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class PointCondition(StrictModel):
    """A point's latest good value compared with limits; true while it holds."""

    point: PointRef
    above: float | None = None
    below: float | None = None
    inside: tuple[float, float] | None = Field(default=None, description="[low, high], inclusive.")
    outside: tuple[float, float] | None = None
    equals: bool | float | str | None = Field(default=None, description="A number, true/false or a state name.")
    not_equals: bool | float | str | None = None
    deadband: float = Field(default=0.0, ge=0, description="Hysteresis: once true, limits relax by this much.")
    rate_above: float | None = Field(default=None, description="Change per `per` above this (rising fast).")
    rate_below: float | None = Field(default=None, description="Change per `per` below this (falling fast).")
    per: Duration = Field(default=60.0, gt=0, description="Time unit of rate_above / rate_below.")

    @model_validator(mode="after")
    def _one_test(self) -> Self:
        tests = [self.above, self.below, self.inside, self.outside, self.equals, self.not_equals,
                 self.rate_above, self.rate_below]
        if sum(t is not None for t in tests) == 0:
            raise ValueError("say what to test: above, below, inside, outside, equals, not_equals, rate_above or"
                             " rate_below")
        for pair in (self.inside, self.outside):
            if pair is not None and pair[0] > pair[1]:
                raise ValueError(f"range {list(pair)} is upside down")
        return self


class StaleCondition(StrictModel):
    """True when a point has had no good reading for `after` ("no reading from X for 10 m")."""

    stale: PointRef
    after: Duration = Field(gt=0)


class DeviceCondition(StrictModel):
    device: Identifier
    state: Literal["offline", "online"] = "offline"


class EventCondition(StrictModel):
    """Matching events: true at the event, or while `count` of them fall within `within`."""

    event: str = Field(min_length=1, description="Event kind, e.g. \"fire.alarm\"; a trailing * matches a prefix.")
    source: str | None = Field(default=None, description="Only events from this source (device/panel id).")
    where: dict[str, bool | float | str] = Field(default_factory=dict, description="Payload fields that must match.")
    count: int = Field(default=1, ge=1, le=100_000)
    within: Duration = Field(default=0.0, ge=0, description="0 = only at the moment the event arrives.")

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.count > 1 and not self.within:
            raise ValueError("count > 1 needs a window: within = \"5m\"")
        return self


class AbsentCondition(StrictModel):
    """True when no matching event came for `within` ("no motion at door 1203 for 12 h")."""

    no_event: str = Field(min_length=1)
    source: str | None = None
    where: dict[str, bool | float | str] = Field(default_factory=dict)
    within: Duration = Field(gt=0)


class TimeCondition(StrictModel):
    """Local time of day (and days of the week); a range may wrap midnight: "23:00-06:00"."""

    time: str = Field(description="\"HH:MM-HH:MM\", local time of the site.")
    days: list[Day] = Field(default_factory=lambda: list(DAYS))

    @field_validator("time")
    @classmethod
    def _range(cls, value: str) -> str:
        if not _TIME_RANGE.match(value):
            raise ValueError(f"time range must look like \"23:00-06:00\" (got {value!r})")
        return value


class ExprCondition(StrictModel):
    """A CEL expression over `points`, `value`, `event`, `hour`, `minute`, `weekday`: never Python eval."""

    expr: str = Field(min_length=1, max_length=4000)

    @field_validator("expr")
    @classmethod
    def _compiles(cls, text: str) -> str:
        from rules.expr import check_expression

        check_expression(text)
        return text


class AllCondition(StrictModel):
    all: list[Condition] = Field(min_length=1)


class AnyCondition(StrictModel):
    any: list[Condition] = Field(min_length=1)


class NotCondition(StrictModel):
    not_: Condition = Field(alias="not")

    model_config = StrictModel.model_config | {"populate_by_name": True}


_KINDS: dict[str, str] = {
    "point": "point", "stale": "stale", "device": "device", "event": "event", "no_event": "absent",
    "time": "time", "expr": "expr", "all": "all", "any": "any", "not": "not",
}


def _kind(data: Any) -> str | None:
    if isinstance(data, dict):
        for key, tag in _KINDS.items():
            if key in data:
                return tag
        return None
    return type(data).__name__.removesuffix("Condition").lower()


Condition = Annotated[
    Annotated[PointCondition, Tag("point")] | Annotated[StaleCondition, Tag("stale")]
    | Annotated[DeviceCondition, Tag("device")] | Annotated[EventCondition, Tag("event")]
    | Annotated[AbsentCondition, Tag("absent")] | Annotated[TimeCondition, Tag("time")]
    | Annotated[ExprCondition, Tag("expr")] | Annotated[AllCondition, Tag("all")]
    | Annotated[AnyCondition, Tag("any")] | Annotated[NotCondition, Tag("not")],
    Discriminator(
        _kind, custom_error_type="unknown_condition",
        custom_error_message="a condition needs one of: point, stale, device, event, no_event, time, expr, all,"
                             " any, not",
    ),
]
for _model in (AllCondition, AnyCondition, NotCondition):
    _model.model_rebuild()


class AlarmSpec(StrictModel):
    """The alarm a rule raises while its condition holds (or from the moment its event arrives)."""

    class_: str = Field(alias="class", description="An [[alarm_classes]] name.")
    severity: Literal["critical", "major", "minor", "warning"] = "major"
    message: str = Field(default="", max_length=500, description="Template: {value}, {device.point}, {zone} ...")
    instance: str | None = Field(
        default=None, description="Template giving one alarm per instance, e.g. \"{zone}\" for one per fire zone.",
    )

    model_config = StrictModel.model_config | {"populate_by_name": True}


class WriteAction(StrictModel):
    write: PointRef
    value: bool | float | str


class NotifyAction(StrictModel):
    notify: Identifier = Field(description="A [[notifiers]] id (a webhook on the LAN).")


class PublishAction(StrictModel):
    publish: str = Field(min_length=1, description="Event kind to publish upstream, e.g. \"ops.pump_started\".")
    priority: Literal["alarm", "event"] = "event"
    data: dict[str, bool | float | str] = Field(default_factory=dict)


Action = Annotated[
    Annotated[WriteAction, Tag("write")] | Annotated[NotifyAction, Tag("notify")]
    | Annotated[PublishAction, Tag("publish")],
    Discriminator(
        lambda d: next((k for k in ("write", "notify", "publish") if k in d), None) if isinstance(d, dict)
        else type(d).__name__.removesuffix("Action").lower(),
        custom_error_type="unknown_action", custom_error_message="an action needs one of: write, notify, publish",
    ),
]


class Rule(StrictModel):
    id: Identifier
    description: str = ""
    enabled: bool = True
    when: Condition
    for_: Duration = Field(default=0.0, ge=0, alias="for", description="The condition must hold this long first.")
    clear_when: Condition | None = Field(default=None, description="Default: when `when` stops holding.")
    alarm: AlarmSpec | None = None
    actions: list[Action] = Field(default_factory=list, description="Run once each time the rule fires.")

    model_config = StrictModel.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _does_something(self) -> Self:
        if self.alarm is None and not self.actions:
            raise ValueError("a rule must raise an alarm or have actions")
        return self


class AlarmClassConfig(StrictModel):
    name: Identifier
    priority: Literal["alarm", "event"] = "alarm"
    latching: bool = Field(default=False, description="Stays until reset, even when the condition clears.")
    escalate_after: list[Duration] = Field(
        default_factory=list, max_length=2, description="Unacknowledged this long: yellow, then red.",
    )
    tiers: list[str] = Field(
        default_factory=lambda: ["property"], min_length=1, max_length=3,
        description="Who is notified at each level, e.g. [\"property\", \"community\", \"family\"].",
    )
    chatter_limit: int = Field(default=5, ge=1, description="Activations per window before it is rate-limited.")
    chatter_window: Duration = Field(default=600.0, gt=0)

    @field_validator("escalate_after")
    @classmethod
    def _increasing(cls, deadlines: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(deadlines)) or any(d <= 0 for d in deadlines):
            raise ValueError("escalation deadlines must be positive and increasing (yellow before red)")
        return deadlines

    @property
    def upstream_priority(self) -> Priority:
        return Priority.ALARM if self.priority == "alarm" else Priority.EVENT


class NotifierConfig(StrictModel):
    id: Identifier
    url: str = Field(pattern=r"^https?://", description="Webhook on the LAN; the alarm is POSTed as JSON.")
    timeout: Duration = Field(default=5.0, gt=0, le=60)
    retries: int = Field(default=5, ge=0, le=100)



BUILTIN_CLASSES: dict[str, dict[str, Any]] = {
    "fire": {"latching": True, "escalate_after": [60.0, 180.0], "tiers": ["property", "community", "fire_brigade"]},
    "entrapment": {"escalate_after": [120.0, 300.0], "tiers": ["property", "elevator_maintenance", "community"]},
    # A fall is a moment, the person is still on the floor: the alarm stays until somebody resets it.
    "fall": {"latching": True, "escalate_after": [60.0, 180.0], "tiers": ["family", "property", "community"]},
    "leak": {"escalate_after": [900.0, 3600.0], "tiers": ["property", "community"]},
    "security": {"escalate_after": [300.0, 900.0], "tiers": ["property", "community"]},
    "equipment": {"priority": "event", "escalate_after": [3600.0, 14400.0], "tiers": ["property", "community"]},
}
"""Sensible defaults a site may override by declaring a class of the same name."""


def alarm_classes(declared: Sequence[AlarmClassConfig]) -> dict[str, AlarmClassConfig]:
    classes = {name: AlarmClassConfig(name=name, **spec) for name, spec in BUILTIN_CLASSES.items()}
    classes.update({cls.name: cls for cls in declared})
    return classes


def build_classes(declared: Sequence[AlarmClassConfig]) -> dict[str, AlarmClass]:
    """The alarm book's policies: the built-in classes, overridden by the site's ``[[alarm_classes]]``."""
    return {
        name: AlarmClass(name=name, priority=c.upstream_priority, latching=c.latching,
                         escalate_after=tuple(c.escalate_after), tiers=tuple(c.tiers),
                         chatter_limit=c.chatter_limit, chatter_window=c.chatter_window)
        for name, c in alarm_classes(declared).items()
    }


def references(rule: Rule) -> list[tuple[tuple[str | int, ...], str, str]]:
    """(location inside the rule, what it names: "point" | "device" | "writable", the name)."""
    found: list[tuple[tuple[str | int, ...], str, str]] = []

    def visit(cond: Any, loc: tuple[str | int, ...]) -> None:
        if isinstance(cond, PointCondition):
            found.append(((*loc, "point"), "point", cond.point))
        elif isinstance(cond, StaleCondition):
            found.append(((*loc, "stale"), "point", cond.stale))
        elif isinstance(cond, DeviceCondition):
            found.append(((*loc, "device"), "device", cond.device))
        elif isinstance(cond, ExprCondition):
            from rules.expr import POINTS_IN_EXPR

            found.extend(((*loc, "expr"), "point", ref) for ref in POINTS_IN_EXPR.findall(cond.expr))
        elif isinstance(cond, AllCondition | AnyCondition):
            key = "all" if isinstance(cond, AllCondition) else "any"
            for i, child in enumerate(cond.all if isinstance(cond, AllCondition) else cond.any):
                visit(child, (*loc, key, i))
        elif isinstance(cond, NotCondition):
            visit(cond.not_, (*loc, "not"))

    visit(rule.when, ("when",))
    if rule.clear_when is not None:
        visit(rule.clear_when, ("clear_when",))
    for i, action in enumerate(rule.actions):
        if isinstance(action, WriteAction):
            found.append((("actions", i, "write"), "writable", action.write))
    return found

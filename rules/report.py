"""Upstream report policies: what of the telemetry goes to the platform, and when. Pure.

Locally every reading is kept (recent history, rules); upstream, a meter polled every 5 s need
not cost 17,000 messages a day. Per device (and per point, where it differs): ``every`` poll,
on ``change`` beyond a deadband (and at least every ``max_interval``), ``periodic`` snapshots, or
``aggregate`` windows (min/max/mean/last/count). A point whose quality changes is always reported
at once: "the meter stopped answering" is news whatever the policy. Alarms never pass through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from gateway.core.config import Duration, StrictModel
from gateway.core.data import Quality, Reading, Value

Function = Literal["min", "max", "mean", "last", "count"]
ALL_FUNCTIONS: tuple[Function, ...] = ("min", "max", "mean", "last", "count")


class ReportPolicy(StrictModel):
    """What of a device's telemetry goes upstream, and when (rules/report.py applies it)."""

    mode: Literal["every", "change", "periodic", "aggregate"] = Field(
        default="every", description="every poll | on change | periodic snapshot | windowed aggregates",
    )
    deadband: float = Field(default=0.0, ge=0, description="change: ignore moves smaller than this.")
    max_interval: Duration = Field(default=900.0, gt=0, description="change: report at least this often.")
    period: Duration = Field(default=60.0, gt=0, description="periodic: one snapshot per period.")
    window: Duration = Field(default=300.0, gt=0, description="aggregate: window length.")
    functions: list[Function] = Field(default_factory=lambda: list(ALL_FUNCTIONS))


@dataclass(slots=True)
class _Point:
    reported: Value = None
    reported_at: float | None = None
    quality: Quality | None = None
    last: Reading | None = None
    count: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None


@dataclass(slots=True)
class Summary:
    device: str
    start: float
    end: float
    points: dict[str, dict[str, Any]]


@dataclass(slots=True)
class _Device:
    policies: dict[str, ReportPolicy]
    default: ReportPolicy
    points: dict[str, _Point] = field(default_factory=dict)
    """State of the points whose policy needs it; an ``every`` point needs none (every reading goes)."""
    window_start: float | None = None
    last_periodic: float | None = None
    every: bool = False
    """Every point goes every poll (the default policy): ``offer`` passes the poll through untouched."""


class Reporter:
    def __init__(self) -> None:
        self.devices: dict[str, _Device] = {}

    def configure(self, device: str, default: ReportPolicy, per_point: dict[str, ReportPolicy]) -> None:
        every = default.mode == "every" and all(p.mode == "every" for p in per_point.values())
        self.devices[device] = _Device(per_point, default, every=every)

    def offer(self, device: str, readings: list[Reading], now: float) -> list[Reading]:
        """The readings of one poll that go upstream now (aggregates come out of `due`)."""
        state = self.devices.get(device)
        if state is None or state.every:
            return readings
        out = []
        periodic_due = state.last_periodic is None or now - state.last_periodic >= state.default.period
        for r in readings:
            policy = state.policies.get(r.point, state.default)
            if policy.mode == "every":  # goes whatever its quality did: nothing to remember
                out.append(r)
                continue
            p = state.points.setdefault(r.point, _Point())
            quality_changed = p.quality is not None and r.quality is not p.quality
            p.quality, p.last = r.quality, r
            if quality_changed:
                keep = True
            elif policy.mode == "change":
                keep = (p.reported_at is None or now - p.reported_at >= policy.max_interval
                        or _moved(p.reported, r.value, policy.deadband))
            elif policy.mode == "periodic":
                keep = periodic_due
            else:
                _accumulate(p, r.value)
                if state.window_start is None:
                    state.window_start = now
                keep = False
            if keep:
                p.reported, p.reported_at = r.value, now
                out.append(r)
        if periodic_due and any(state.policies.get(r.point, state.default).mode == "periodic" for r in readings):
            state.last_periodic = now
        return out

    def due(self, now: float) -> list[Summary]:
        """Aggregate windows that have ended, one summary per device."""
        summaries = []
        for device, state in self.devices.items():
            if state.window_start is None or now - state.window_start < state.default.window:
                continue
            points: dict[str, dict[str, Any]] = {}
            for point, p in state.points.items():
                policy = state.policies.get(point, state.default)
                if policy.mode != "aggregate" or p.last is None:
                    continue
                stats: dict[str, Any] = {"last": p.last.value, "count": p.count, "q": p.last.quality.value}
                if p.count and p.low is not None and p.high is not None:
                    # a running sum drifts by an ulp; a mean outside [min, max] would be a wrong answer
                    stats.update(min=p.low, max=p.high, mean=min(max(p.total / p.count, p.low), p.high))
                points[point] = {k: v for k, v in stats.items() if k in (*policy.functions, "q")}
                if p.last.unit:
                    points[point]["u"] = p.last.unit
                p.count, p.total, p.low, p.high = 0, 0.0, None, None
            if points:
                summaries.append(Summary(device, state.window_start, now, points))
            state.window_start = now
        return summaries


def _number(value: Value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _moved(before: Value, after: Value, deadband: float) -> bool:
    a, b = _number(before), _number(after)
    if a is None or b is None:
        return before != after
    return abs(b - a) > deadband


def _accumulate(p: _Point, value: Value) -> None:
    number = _number(value)
    if number is None:
        return
    p.count += 1
    p.total += number
    p.low = number if p.low is None else min(p.low, number)
    p.high = number if p.high is None else max(p.high, number)

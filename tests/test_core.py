"""The kernel's small helpers: the manual clock, backoff, the rate limiter, percentiles, stable ids."""

from __future__ import annotations

import asyncio
import statistics

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.ids import new_id, stable_id
from gateway.core.timing import Backoff, ManualClock, RateLimiter, percentile


async def test_the_manual_clock_wakes_sleepers_in_deadline_order_and_only_when_passed() -> None:
    clock = ManualClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 3.0), ("early", 1.0), ("mid", 2.0))]
    await clock.advance(1.5)
    assert woke == [("early", 1.0)]
    await clock.advance(10)
    assert woke == [("early", 1.0), ("mid", 2.0), ("late", 3.0)]
    assert clock.monotonic() == 11.5 and clock.time() == clock.epoch + 11.5
    await asyncio.gather(*tasks)


def test_backoff_doubles_to_its_cap_within_its_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, jitter=(0.8, 1.2))
    delays = [backoff.next() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.8 * nominal <= delay <= 1.2 * nominal
    backoff.reset()
    assert 0.8 <= backoff.next() <= 1.2


@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=200))
def test_rate_limiter_never_passes_more_than_its_limit_in_any_window(gaps: list[float]) -> None:
    limiter = RateLimiter(5, 60.0)
    now, passed = 0.0, []
    for gap in gaps:
        now += gap / 100
        if limiter.allow(now):
            passed.append(now)
    for i, t in enumerate(passed):
        assert sum(1 for u in passed[i:] if u - t < 60.0) <= 5
    assert len(passed) + limiter.take_refused() == len(gaps)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=2, max_size=300),
       st.sampled_from([0.5, 0.9, 0.99]))
def test_percentile_is_the_statistics_module_quantile(samples: list[float], q: float) -> None:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    tolerance = 1e-6 * max(1.0, *map(abs, samples))
    assert abs(percentile(samples, q) - cuts[round(q * 100) - 1]) <= tolerance
    assert min(samples) - tolerance <= percentile(samples, q) <= max(samples) + tolerance


def test_ids_sort_by_time_and_stable_ids_repeat() -> None:
    assert new_id() != new_id()
    assert stable_id(1000.0, "alarm/x", 3, "raise", 1000.0) == stable_id(1000.0, "alarm/x", 3, "raise", 1000.0)
    assert stable_id(1000.0, "a") < stable_id(1001.0, "a")  # UUIDv7: the millisecond time leads

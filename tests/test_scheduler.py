"""The bus scheduler on its own: priority, fairness, the gap, cancellation, concurrency."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.scheduler import BusScheduler, Urgency


async def _use(bus: BusScheduler, name: str, urgency: Urgency, log: list[str], hold: float = 0.01) -> None:
    async with bus.slot(urgency):
        log.append(name)
        await asyncio.sleep(hold)


async def test_more_urgent_goes_first_and_equal_urgency_is_fifo() -> None:
    bus = BusScheduler()
    log: list[str] = []
    first = asyncio.create_task(_use(bus, "first", Urgency.POLL, log, hold=0.05))
    await asyncio.sleep(0.01)  # "first" holds the wire; everyone else queues
    tasks = [asyncio.create_task(_use(bus, f"poll-{i}", Urgency.POLL, log)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_use(bus, "probe", Urgency.PROBE, log)))
    tasks.append(asyncio.create_task(_use(bus, "write", Urgency.WRITE, log)))
    tasks.append(asyncio.create_task(_use(bus, "fire", Urgency.LIFE_SAFETY, log)))
    await asyncio.gather(first, *tasks)
    assert log == ["first", "fire", "write", "poll-0", "poll-1", "poll-2", "probe"]


async def test_gap_is_kept_between_transactions() -> None:
    bus = BusScheduler(gap=0.03)
    stamps: list[tuple[float, float]] = []

    async def transaction() -> None:
        async with bus.slot():
            start = time.monotonic()
            await asyncio.sleep(0.005)
            stamps.append((start, time.monotonic()))

    await asyncio.gather(*(transaction() for _ in range(5)))
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.029


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    bus = BusScheduler()
    log: list[str] = []
    holder = asyncio.create_task(_use(bus, "holder", Urgency.POLL, log, hold=0.05))
    await asyncio.sleep(0.01)
    doomed = asyncio.create_task(_use(bus, "doomed", Urgency.LIFE_SAFETY, log))
    after = asyncio.create_task(_use(bus, "after", Urgency.POLL, log))
    await asyncio.sleep(0.01)
    doomed.cancel()
    await asyncio.gather(holder, after)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert log == ["holder", "after"]
    async with asyncio.timeout(1):
        async with bus.slot():
            pass  # the wire is free again


async def test_concurrency_limit_on_tcp() -> None:
    bus = BusScheduler(concurrency=3)
    active = peak = 0

    async def transaction() -> None:
        nonlocal active, peak
        async with bus.slot():
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1

    await asyncio.gather(*(transaction() for _ in range(12)))
    assert peak == 3


async def test_an_exception_inside_the_slot_releases_it() -> None:
    bus = BusScheduler()
    with pytest.raises(RuntimeError):
        async with bus.slot():
            raise RuntimeError("device answered garbage")
    async with asyncio.timeout(1):
        async with bus.slot():
            pass


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Urgency)), st.booleans()), min_size=1, max_size=25))
def test_any_mix_of_waiters_and_cancellations_never_deadlocks(plan: list[tuple[Urgency, bool]]) -> None:
    async def scenario() -> list[Urgency]:
        bus = BusScheduler()
        served: list[Urgency] = []

        async def job(urgency: Urgency) -> None:
            async with bus.slot(urgency):
                served.append(urgency)
                await asyncio.sleep(0)

        async with bus.slot():  # hold the wire while everybody queues
            tasks = [(asyncio.create_task(job(u)), cancel) for u, cancel in plan]
            await asyncio.sleep(0)
            for task, cancel in tasks:
                if cancel:
                    task.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(*(t for t, _ in tasks), return_exceptions=True)
            async with bus.slot():
                pass
        assert bus._busy == 0
        return served

    served = asyncio.run(scenario())
    expected = sorted(u for u, cancel in plan if not cancel)
    assert served == expected  # queued together: strictly by urgency, nothing lost, nothing extra


async def test_a_probe_is_not_starved_by_a_saturated_line() -> None:
    bus = BusScheduler(max_wait=0.2)
    stop = asyncio.Event()
    served: list[str] = []

    async def poller(name: str) -> None:
        while not stop.is_set():
            async with bus.slot(Urgency.POLL):
                await asyncio.sleep(0.01)

    async def probe() -> None:
        async with bus.slot(Urgency.PROBE):
            served.append("probe")

    pollers = [asyncio.create_task(poller(f"p{i}")) for i in range(5)]
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(2):
        await probe()
    waited = asyncio.get_running_loop().time() - started
    stop.set()
    await asyncio.gather(*pollers)
    assert served == ["probe"] and 0.2 <= waited < 0.5  # served once overdue, not before and not never


async def test_life_safety_still_beats_an_overdue_request() -> None:
    bus = BusScheduler(max_wait=0.0)
    log: list[str] = []
    holder = asyncio.create_task(_use(bus, "holder", Urgency.POLL, log, hold=0.05))
    await asyncio.sleep(0.01)
    old = asyncio.create_task(_use(bus, "old-probe", Urgency.PROBE, log))
    await asyncio.sleep(0.01)
    fire = asyncio.create_task(_use(bus, "fire", Urgency.LIFE_SAFETY, log))
    await asyncio.gather(holder, old, fire)
    assert log == ["holder", "fire", "old-probe"]

"""Poll capacity through the daemon's own wiring: what `bench modbus`, `bench bacnet` and `bench bus` time.

The gateway side is ``Daemon(cfg)`` as ``gateway run`` builds it (bus, recorder, uplink feed, one
poller per device, the store) without its ``run``: every device is polled back to back, all at once,
while the recorder commits as it does in service. With the uplink off every poll also lands in the
outbox, as during an outage. Requests are counted by the simulated devices (``gateway.bench.wire``),
so "requests per poll" is what crossed the wire, not what the read plan says.

Imported only when a bench runs: it pulls in the daemon.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from gateway.bench.harness import Child, cpu_seconds, memory_mb, num, ratio
from gateway.config.schema import GatewayConfig
from gateway.core.data import Quality, Reading
from gateway.daemon import Daemon


def wire_requests(sim: Child) -> int:
    """Requests the simulated devices have served so far, every kind together."""
    answer = sim.ask("requests")
    word, _, data = answer.partition(" ")
    if word != "requests":
        raise RuntimeError(f"simulator answered {answer!r} to 'requests'")
    counts: dict[str, int] = json.loads(data)
    return sum(counts.values())


@dataclass(frozen=True, slots=True)
class PollRun:
    """One window of back-to-back polling: counts, CPU and memory, all measured."""

    seconds: float
    polls: int
    failed: int
    points: int
    good: int
    requests: int
    cpu: float
    sim_cpu: float
    rss_mb: float

    def figures(self) -> dict[str, Any]:
        """Stable names; every rate is a count of this run over its measured wall time."""
        return {
            "seconds": round(self.seconds, 3),
            "points": self.points,
            "polls": self.polls,
            "failed_polls": self.failed,
            "requests": self.requests,
            "points_per_s": self.points / self.seconds,
            "polls_per_s": self.polls / self.seconds,
            "requests_per_s": self.requests / self.seconds,
            "requests_per_poll": ratio(self.requests, self.polls),
            "cpu_s_per_1k_points": ratio(1000 * self.cpu, self.points),
            "cpu_percent_of_one_core": 100 * self.cpu / self.seconds,
            "simulator_cpu_percent_of_one_core": 100 * self.sim_cpu / self.seconds,
            "good_points_percent": ratio(100 * self.good, self.points),
            "rss_mb": self.rss_mb,
        }


ROWS = (
    ("points/s", "points_per_s", 0),
    ("polls/s (all devices)", "polls_per_s", 1),
    ("requests/s (counted by the devices)", "requests_per_s", 0),
    ("requests per poll (counted by the devices)", "requests_per_poll", 2),
    ("gateway CPU s per 1k points", "cpu_s_per_1k_points", 4),
    ("gateway CPU, % of one core", "cpu_percent_of_one_core", 0),
    ("simulator CPU, % of one core", "simulator_cpu_percent_of_one_core", 0),
    ("gateway RSS after the run, MB", "rss_mb", 1),
    ("good points, %", "good_points_percent", 1),
    ("failed polls", "failed_polls", 0),
)
"""Table rows: label, figure name, decimals."""


def rows(*runs: dict[str, Any], gains: dict[str, str] | None = None) -> list[list[str]]:
    """One row per figure, a column per run; ``gains`` maps a figure to its derived column's text."""
    return [[label, *(num(run[key], digits) for run in runs), *([gains.get(key, "")] if gains is not None else [])]
            for label, key, digits in ROWS]


async def poll_run(cfg: GatewayConfig, seconds: float, sim: Child) -> PollRun:
    """Poll every device back to back for ``seconds``, all devices at once, through the real stack."""
    daemon = Daemon(cfg)
    counted = {"points": 0, "good": 0}

    def count(_device: str, readings: list[Reading], _ts: float) -> None:
        counted["points"] += len(readings)
        counted["good"] += sum(1 for r in readings if r.quality is Quality.GOOD)

    daemon.bus.on_readings(count)
    pollers = list(daemon.pollers.values())
    daemon.supervisor.spawn("recorder", daemon.recorder.run)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(p.poll_once() for p in pollers))  # connect (identify, ...) outside the clock
        await daemon.recorder.flush()
        counted.update(points=0, good=0)
        polls0, failed0 = sum(p.state.polls for p in pollers), sum(p.state.failures for p in pollers)
        requests0 = wire_requests(sim)
        stop_at = loop.time() + seconds

        async def hammer(poller: Any) -> None:
            while loop.time() < stop_at:
                await poller.poll_once()

        cpu0, sim0, t0 = time.process_time(), cpu_seconds(sim.pid), time.perf_counter()
        await asyncio.gather(*(hammer(p) for p in pollers))
        await daemon.recorder.flush()  # the last batch's commit is part of the cost
        elapsed = time.perf_counter() - t0
        cpu, sim_cpu = time.process_time() - cpu0, cpu_seconds(sim.pid) - sim0
        return PollRun(
            seconds=elapsed, polls=sum(p.state.polls for p in pollers) - polls0,
            failed=sum(p.state.failures for p in pollers) - failed0, points=counted["points"],
            good=counted["good"], requests=wire_requests(sim) - requests0, cpu=cpu, sim_cpu=sim_cpu,
            rss_mb=memory_mb()[0],
        )
    finally:
        await daemon.shutdown()

"""The runs behind `gateway bench bus`: one RS-485 line with dead units on it, writes under load, TCP.

The serial line is ``simulators.rtu.RtuLine`` behind a socat pty pair: every frame takes its time on
the wire at the configured baud rate, a dead unit is silent, and the line logs every request it
hears. The gateway side is ``Daemon(cfg)``'s own wiring (driver, a ``DevicePoller`` per device
under the ``Supervisor``, ``Recorder`` and the SQLite store, ``CommandHandler``) without its
``run``, uplink off. Imported only when the bench runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pymodbus.datastore import ModbusDeviceContext

from drivers.base import DeviceConfig
from drivers.modbus.driver import ModbusDriver
from drivers.scheduler import Urgency
from gateway.bench.bus import BUS_ID, COILS, HOLDING, INTERVAL, SETPOINT, SETPOINT_RANGE, Options
from gateway.bench.harness import latency_ms, ratio
from gateway.commands import CommandError, WriteCommand
from gateway.config import load_config
from gateway.config.schema import GatewayConfig
from gateway.core.errors import DriverError
from gateway.core.timing import wait_until
from gateway.daemon import Daemon
from simulators.endpoints import sequential_block
from simulators.rtu import Behaviour, RtuLine, Unit

T = TypeVar("T")

WARMUP_LIMIT = 60.0
"""Seconds a run may take to reach its steady state (breakers of dead units open) before the bench gives up."""
SETTLE = 1.0
"""Seconds after the warm-up condition is met before measuring, so the queue is back to its steady state."""
WRITE_LIMIT = 10.0
"""Longest a single write may take before it counts as failed."""
WRITE_PAUSE = 0.1
"""Writes are issued one at a time, each after a random pause of up to this, to land at random phases."""


def unit_points() -> list[dict[str, Any]]:
    """One controller's register map in ``[[devices.points]]`` keys (the setpoint is writable)."""
    points: list[dict[str, Any]] = []
    address = 0
    for point_id, dtype, unit, scale, words in HOLDING:
        point: dict[str, Any] = {"id": point_id, "table": "holding", "address": address, "type": dtype}
        if unit:
            point["unit"] = unit
        if scale != 1.0:
            point["scale"] = scale
        if point_id == SETPOINT:
            point.update(writable=True, min=SETPOINT_RANGE[0], max=SETPOINT_RANGE[1])
        points.append(point)
        address += len(words)
    points += [{"id": c, "table": "coil", "address": i, "type": "bool"} for i, c in enumerate(COILS)]
    return points


def _bank() -> ModbusDeviceContext:
    words = [w for *_, raw in HOLDING for w in raw]
    bits = [True, False, False] + [False] * 5
    return ModbusDeviceContext(hr=sequential_block(words), ir=sequential_block([0] * 4),
                               co=sequential_block(bits), di=sequential_block([False] * 8))


def rtu_config_text(data_dir: Path, port: str, opts: Options, *, offline_after: int | None = None) -> str:
    """One RS-485 line with ``opts.devices`` controllers, unit ids 1.., as an engineer would write it."""
    def value(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)  # JSON strings and numbers are valid TOML

    text = ['[site]\nid = "bench-bus"\n', "[mqtt]\nenabled = false\n", f"[store]\ndata_dir = {value(str(data_dir))}\n",
            '[log]\nlevel = "error"\n',
            f"[[buses]]\nid = {value(BUS_ID)}\ndriver = \"modbus_rtu\"\nport = {value(port)}\n"
            f"baudrate = {opts.baud}\ntimeout = {value(opts.timeout)}\n"]
    point_tables = "".join("[[devices.points]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in p.items()) + "\n"
                           for p in unit_points())
    breaker = "" if offline_after is None else f"offline_after = {offline_after}\n"
    for unit in range(1, opts.devices + 1):
        text.append(f"[[devices]]\nid = {value(device_id(unit))}\nbus = {value(BUS_ID)}\nunit = {unit}\n"
                    f"interval = {value(INTERVAL)}\n{breaker}\n{point_tables}")
    return "\n".join(text)


def device_id(unit: int) -> str:
    return f"unit-{unit}"


def dead_units(devices: int, count: int) -> set[int]:
    """``count`` unit ids spread evenly over 1..devices."""
    return {round((j + 1) * devices / (count + 1)) for j in range(count)}


# -- the gateway, wired as the daemon wires it -----------------------------------------------------


def poll_urgency(driver: ModbusDriver) -> None:
    """Bench baseline only: writes (and their read-backs) queue with the polls, FIFO, at POLL urgency."""
    shipped = driver.urgency

    def as_a_poll(device: DeviceConfig, *, write: bool = False) -> Urgency:
        return shipped(device, write=False)

    driver.urgency = as_a_poll  # type: ignore[method-assign]


def scheduler_driver(daemon: Daemon) -> ModbusDriver:
    driver = next(iter(daemon.drivers.values()))
    if not isinstance(driver, ModbusDriver):
        raise TypeError(f"the bus bench needs a Modbus driver, not {type(driver).__name__}")
    return driver


@contextlib.asynccontextmanager
async def running_gateway(cfg: GatewayConfig, *, baseline: bool = False) -> AsyncIterator[Daemon]:
    """The daemon's recorder and pollers running under its supervisor; the daemon's shutdown on exit.

    ``baseline`` queues writes at POLL urgency (``poll_urgency``); otherwise the drivers are as shipped.
    """
    daemon = Daemon(cfg)
    if baseline:
        for driver in {id(d): d for d in daemon.drivers.values()}.values():
            if isinstance(driver, ModbusDriver):
                poll_urgency(driver)
    try:
        daemon.supervisor.spawn("recorder", daemon.recorder.run)
        for device, poller in daemon.pollers.items():
            daemon.supervisor.spawn(f"device:{device}", poller.run)
        yield daemon
    finally:
        await daemon.shutdown()


async def until(condition: Callable[[], bool], limit: float, what: str) -> None:
    await wait_until(condition, limit, what, every=0.05)


def bounded(coro: Coroutine[Any, Any, T], limit: float) -> T:
    """Run one scenario in a fresh event loop; cancelled (and cleaned up) past ``limit`` seconds."""
    async def run() -> T:
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(run())


# -- 1. cycle time of healthy devices with dead units on the line ----------------------------------


@dataclass(frozen=True, slots=True)
class CycleResult:
    key: str
    label: str
    healthy: int
    dead: int
    seconds: float
    cycles: list[float]
    polls: int
    healthy_failures: int
    healthy_requests: int
    healthy_starts: int
    dead_requests: int
    dead_bus_seconds: float
    probes: int
    busy_seconds: float
    warmup: float
    recovered_after: float | None = None
    recovery_limit: float = 0.0
    restarts: int = 0

    @property
    def cycle(self) -> float:
        return statistics.fmean(self.cycles) if self.cycles else math.nan

    def figures(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy, "dead": self.dead, "seconds": round(self.seconds, 3), "cycles": len(self.cycles),
            "mean_cycle_ms": 1000 * self.cycle, "max_cycle_ms": 1000 * max(self.cycles, default=math.nan),
            "polls_per_s": self.polls / self.seconds,
            "polls_per_s_per_device": self.polls / self.seconds / self.healthy,
            "requests_per_poll": ratio(self.healthy_requests, self.healthy_starts),
            "failed_polls": self.healthy_failures,
            "dead_unit_requests": self.dead_requests, "probes": self.probes, "dead_bus_s": self.dead_bus_seconds,
            "dead_bus_percent": 100 * self.dead_bus_seconds / self.seconds,
            "bus_busy_percent": 100 * self.busy_seconds / self.seconds, "warmup_s": self.warmup,
            "recovered_after_s": self.recovered_after, "recovery_limit_s": self.recovery_limit or None,
            "task_restarts": self.restarts,
        }


async def cycle_run(opts: Options, work: Path, key: str, label: str, dead: set[int], *, breaker: bool = True,
                    revive: bool = False) -> CycleResult:
    units = {u: Unit(_bank(), Behaviour.DEAD if u in dead else Behaviour.OK) for u in range(1, opts.devices + 1)}
    loop = asyncio.get_running_loop()
    async with RtuLine(units, baudrate=opts.baud) as line:
        path = work / f"{key}.toml"
        path.write_text(rtu_config_text(work / key, line.port, opts, offline_after=None if breaker else 100))
        cfg = load_config(path)
        healthy = [device_id(u) for u in units if u not in dead]
        corpses = [device_id(u) for u in sorted(dead)]
        started = loop.time()
        async with running_gateway(cfg) as gw:
            pollers = gw.pollers
            threshold = cfg.device(healthy[0]).offline_after if breaker else 3

            def warm() -> bool:
                return (all(pollers[d].state.polls >= 2 for d in healthy)
                        and all(pollers[d].state.failures >= threshold for d in corpses))

            await until(warm, WARMUP_LIMIT, f"warm-up (every healthy device polled, every dead one failed "
                                            f"{threshold} times)")
            if breaker and not all(pollers[d].breaker_open for d in corpses):
                raise RuntimeError(f"breakers did not open after {threshold} failures: "
                                   f"{[(d, pollers[d].state.failures) for d in corpses]}")
            await asyncio.sleep(SETTLE)
            warmup = loop.time() - started
            scheduler = scheduler_driver(gw).scheduler
            polls0 = {d: pollers[d].state.polls for d in healthy}
            failures0 = {d: pollers[d].state.failures for d in healthy}
            probes0, busy0 = len(scheduler.stats.waited[Urgency.PROBE]), scheduler.stats.busy_seconds
            t0 = loop.time()
            await asyncio.sleep(opts.seconds)
            t1 = loop.time()
            probes = len(scheduler.stats.waited[Urgency.PROBE]) - probes0
            busy = scheduler.stats.busy_seconds - busy0
            polls = sum(pollers[d].state.polls - polls0[d] for d in healthy)
            failures = sum(pollers[d].state.failures - failures0[d] for d in healthy)
            if not breaker and any(pollers[d].breaker_open for d in corpses):
                raise RuntimeError("the breaker opened in the breaker-off run: raise offline_after")
            recovered, limit = None, 0.0
            if revive and corpses:
                limit = opts.seconds
                for u in dead:
                    units[u].behaviour = Behaviour.OK
                revived = loop.time()
                with contextlib.suppress(TimeoutError):
                    await until(lambda: all(pollers[d].state.state == "online" for d in corpses), limit, "recovery")
                    recovered = loop.time() - revived
            restarts = sum(gw.supervisor.restarts.values())
    healthy_units = {u for u in units if u not in dead}
    wire = wire_figures(line.stats.log, t0, t1, healthy_units, dead)
    return CycleResult(key, label, len(healthy), len(dead), t1 - t0, wire.cycles, polls, failures,
                       wire.healthy_requests, wire.healthy_polls, wire.dead_requests, wire.dead_bus_seconds, probes,
                       busy, warmup, recovered, limit, restarts)


@dataclass(frozen=True, slots=True)
class Wire:
    cycles: list[float]
    healthy_requests: int
    healthy_polls: int
    dead_requests: int
    dead_bus_seconds: float


def wire_figures(log: Sequence[tuple[float, int, int]], t0: float, t1: float, healthy: set[int],
                 dead: set[int]) -> Wire:
    """From the line's request log: healthy units' cycle times, polls and requests; what dead units took.

    A poll starts with its holding-register read (function 3), so a unit's cycle is the time
    between two of those and the polls heard are those reads. Every request holds the line until
    the next one is heard, so a dead unit's share is the time from each request to it until the
    next request on the line.
    """
    window = [(t, u, fc) for t, u, fc in log if t0 <= t < t1]
    last: dict[int, float] = {}
    cycles: list[float] = []
    requests = polls = 0
    for t, u, fc in window:
        if u in healthy:
            requests += 1
            if fc == 3:
                polls += 1
                if u in last:
                    cycles.append(t - last[u])
                last[u] = t
    dead_requests, dead_bus = 0, 0.0
    for i, (t, u, _) in enumerate(window):
        if u in dead:
            dead_requests += 1
            dead_bus += (window[i + 1][0] if i + 1 < len(window) else t1) - t
    return Wire(cycles, requests, polls, dead_requests, dead_bus)


# -- 2. write latency under full polling load -------------------------------------------------------


@dataclass(slots=True)
class WriteResult:
    latencies: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})
    outcomes: dict[bool, Counter[str]] = field(default_factory=lambda: {False: Counter(), True: Counter()})
    polls_per_s: float = 0.0
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"polls_per_s": self.polls_per_s, "seconds": round(self.seconds, 3)}
        for verify, name in ((False, "no_read_back"), (True, "with_read_back")):
            outcomes = self.outcomes[verify]
            doc[name] = {"ok": sum(outcomes[k] for k in ("written", "verified")), "total": sum(outcomes.values()),
                         "outcomes": dict(outcomes), **latency_ms(self.latencies[verify])}
        return doc


async def write_run(opts: Options, work: Path, label: str, *, baseline: bool) -> WriteResult:
    """``opts.writes`` writes with read-back off and as many with it on, alternating, while every unit polls."""
    units = {u: Unit(_bank()) for u in range(1, opts.devices + 1)}
    rng = random.Random(7)
    result = WriteResult()
    loop = asyncio.get_running_loop()
    async with RtuLine(units, baudrate=opts.baud) as line:
        path = work / f"{label}.toml"
        path.write_text(rtu_config_text(work / label, line.port, opts))
        cfg = load_config(path)
        async with running_gateway(cfg, baseline=baseline) as gw:
            ids = list(gw.pollers)
            await until(lambda: all(p.state.polls >= 2 for p in gw.pollers.values()), WARMUP_LIMIT,
                        "warm-up (every device polled twice)")
            polls0, t0 = sum(p.state.polls for p in gw.pollers.values()), loop.time()
            for n in range(2 * opts.writes):
                verify = bool(n % 2)
                await asyncio.sleep(rng.uniform(0.0, WRITE_PAUSE))
                command = WriteCommand(cmd="write", device=ids[n % len(ids)], point=SETPOINT, actor="bench",
                                       value=20.0 + (n % 60) * 0.5, verify=verify)
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(WRITE_LIMIT):
                        outcome = str((await gw.commands.execute(command))["result"])
                except (DriverError, CommandError, TimeoutError) as exc:
                    outcome = type(exc).__name__
                elapsed = time.perf_counter() - started
                result.outcomes[verify][outcome] += 1
                if outcome in ("written", "verified"):
                    result.latencies[verify].append(elapsed)
            result.seconds = loop.time() - t0
            result.polls_per_s = (sum(p.state.polls for p in gw.pollers.values()) - polls0) / result.seconds
    return result


# -- 3. points/s over many TCP devices ---------------------------------------------------------------


def tcp_run(opts: Options, work: Path) -> dict[str, Any]:
    from gateway.bench.modbus import bank_size, config_text, point_map, simulator
    from gateway.bench.polling import poll_run

    points = point_map(opts.tcp_points)
    with simulator(opts.tcp_devices, bank_size(points), work) as sim:
        path = work / "tcp.toml"
        path.write_text(config_text(work / "tcp", sim.port, opts.tcp_devices, points))  # max_in_flight left at 1
        cfg = load_config(path)
        in_flight = {getattr(b, "max_in_flight", None) for b in cfg.buses}
        if in_flight != {1}:
            raise RuntimeError(f"TCP buses should carry one transaction at a time, config has {in_flight}")
        run = bounded(poll_run(cfg, opts.seconds, sim), opts.seconds + WARMUP_LIMIT)
    return {"devices": opts.tcp_devices, "points_per_device": opts.tcp_points, **run.figures(),
            "polls_per_s_per_device": run.polls / run.seconds / opts.tcp_devices}

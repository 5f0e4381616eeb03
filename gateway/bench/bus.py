"""`gateway bench bus`: one shared RS-485 line under load, a dead unit on it, and writes in between.

An RS-485 line at 9600 baud carries a few dozen transactions a second, so it is the bus, not the
gateway's CPU, that runs out. This bench measures what the bus scheduler and the breaker are for:
1. how much a dead unit slows the healthy units on its line, once its breaker has opened, against
   the same dead unit polled at full rate (the breaker effectively off);
2. how long a write waits while every unit polls back to back, with writes queued at WRITE
   urgency as shipped, against the same writes queued with the polls at POLL urgency;
3. for scale, points per second over many Modbus TCP devices, one transaction at a time each.

The serial line is ``simulators.rtu.RtuLine`` behind a socat pty pair: every frame takes its time
on the wire at the configured baud rate, and a dead unit is silent. The gateway side is the
daemon's own pieces wired as ``Daemon`` wires them (config from TOML text, driver, ``DevicePoller``
under the ``Supervisor``, ``Recorder`` and the SQLite store, ``CommandHandler``), with the uplink
off. Devices poll every 50 ms, which on a serial line means back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

from pymodbus.datastore import ModbusDeviceContext

from drivers.base import DeviceConfig, Driver
from drivers.modbus.config import ModbusDevice, ModbusRtuBus, ModbusTcpBus
from drivers.modbus.driver import ModbusDriver
from drivers.scheduler import Urgency
from gateway.bench import _num, _table, bank_size, config_text, point_map, poll_run, simulator, workdir
from gateway.commands import CommandError, CommandHandler, WriteCommand
from gateway.config import load_config
from gateway.config.schema import GatewayConfig
from gateway.core.errors import DriverError
from gateway.daemon import build_drivers, open_store
from gateway.recorder import AsyncStore, Recorder
from gateway.supervisor import DevicePoller, Supervisor
from simulators.endpoints import sequential_block
from simulators.rtu import Behaviour, RtuLine, Unit

T = TypeVar("T")

BUS_ID = "rs485-1"
INTERVAL = 0.05
"""Poll interval of every serial device: far below a cycle of the line, so polls run back to back."""
DEAD_COUNTS = (0, 1, 3)
WARMUP_LIMIT = 60.0
"""Seconds a run may take to reach its steady state (breakers of dead units open) before the bench gives up."""
SETTLE = 1.0
"""Seconds after the warm-up condition is met before measuring, so the queue is back to its steady state."""
WRITE_LIMIT = 10.0
"""Longest a single write may take before it counts as failed."""
WRITE_PAUSE = 0.1
"""Writes are issued one at a time, each after a random pause of up to this, to land at random phases."""
SETPOINT = "setpoint"

# A heating or pump controller as it sits on a building's RS-485 line: 20 holding registers in one
# contiguous block and 3 coils, so a poll is two transactions. (id, type, unit, scale, raw words)
_HOLDING: tuple[tuple[str, str, str | None, float, tuple[int, ...]], ...] = (
    ("status", "uint16", None, 1.0, (1,)),
    ("supply_temp", "int16", "°C", 0.1, (652,)),
    ("return_temp", "int16", "°C", 0.1, (418,)),
    ("outdoor_temp", "int16", "°C", 0.1, (95,)),
    ("pressure", "uint16", "bar", 0.01, (180,)),
    ("flow", "float32", "m³/h", 1.0, (0x4120, 0x0000)),
    ("power", "float32", "kW", 1.0, (0x4150, 0x0000)),
    ("energy", "uint32", "kWh", 1.0, (0, 12345)),
    ("run_hours", "uint32", "h", 1.0, (0, 4321)),
    ("pump_speed", "uint16", "%", 1.0, (75,)),
    ("valve_position", "uint16", "%", 1.0, (40,)),
    (SETPOINT, "int16", "°C", 0.1, (600,)),
    ("mode", "uint16", None, 1.0, (1,)),
    ("fault_code", "uint16", None, 1.0, (0,)),
    ("alarm_word", "uint16", None, 1.0, (0,)),
    ("firmware", "uint16", None, 1.0, (0x0103,)),
)
_COILS = ("pump_run", "burner_enable", "alarm_reset")
SETPOINT_RANGE = (5.0, 90.0)


@dataclass(frozen=True, slots=True)
class Options:
    devices: int = 10
    seconds: float = 10.0
    baud: int = 9600
    timeout: float = 0.5
    writes: int = 50
    tcp_devices: int = 100
    tcp_points: int = 20

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        """Attributes the CLI does not (yet) define take their defaults, so any Namespace works."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        return cls(**given)

    def problem(self) -> str | None:
        if self.devices < 2 or self.devices > 247:
            return "--devices must be 2..247 (units on one line, one of them may be dead)"
        if self.seconds <= 0 or self.timeout <= 0 or self.writes < 1 or self.tcp_devices < 1 or self.tcp_points < 1:
            return "--seconds, --timeout, --writes, --tcp-devices and --tcp-points must be positive"
        try:
            ModbusRtuBus(id=BUS_ID, driver="modbus_rtu", port="/dev/null", baudrate=self.baud, timeout=self.timeout)
        except ValueError as exc:
            return f"--baud/--timeout: {exc}"
        return None


def unit_points() -> list[dict[str, Any]]:
    """One controller's register map in ``[[devices.points]]`` keys (the setpoint is writable)."""
    points: list[dict[str, Any]] = []
    address = 0
    for point_id, dtype, unit, scale, words in _HOLDING:
        point: dict[str, Any] = {"id": point_id, "table": "holding", "address": address, "type": dtype}
        if unit:
            point["unit"] = unit
        if scale != 1.0:
            point["scale"] = scale
        if point_id == SETPOINT:
            point.update(writable=True, min=SETPOINT_RANGE[0], max=SETPOINT_RANGE[1])
        points.append(point)
        address += len(words)
    points += [{"id": c, "table": "coil", "address": i, "type": "bool"} for i, c in enumerate(_COILS)]
    return points


def _bank() -> ModbusDeviceContext:
    words = [w for *_, raw in _HOLDING for w in raw]
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


class PollUrgencyDriver(ModbusDriver):
    """Bench baseline only: writes (and their read-backs) queue with the polls, FIFO, at POLL urgency."""

    def urgency(self, device: DeviceConfig, *, write: bool = False) -> Urgency:
        return super().urgency(device, write=False)


@dataclass(slots=True)
class Gateway:
    drivers: dict[str, Driver]
    pollers: dict[str, DevicePoller]
    commands: CommandHandler
    supervisor: Supervisor

    def scheduler_driver(self) -> ModbusDriver:
        driver = next(iter(self.drivers.values()))
        if not isinstance(driver, ModbusDriver):
            raise TypeError(f"the bus bench needs a Modbus driver, not {type(driver).__name__}")
        return driver


@contextlib.asynccontextmanager
async def running_gateway(cfg: GatewayConfig, driver_type: type[ModbusDriver] | None = None
                          ) -> AsyncIterator[Gateway]:
    """Store, recorder, drivers, a poller per device under the supervisor, commands; stopped on exit.

    ``driver_type`` replaces the registry's driver class (the POLL-urgency baseline); None is the
    daemon's own ``build_drivers``.
    """
    store = AsyncStore(open_store(cfg))
    recorder = Recorder(store)
    supervisor = Supervisor(recorder)
    drivers = build_drivers(cfg)
    if driver_type is not None:
        by_bus = {
            bus.id: driver_type(bus, [cast(ModbusDevice, d) for d in cfg.devices if d.bus == bus.id and d.enabled])
            for bus in cfg.buses if isinstance(bus, ModbusTcpBus | ModbusRtuBus)  # RTU over TCP is a TCP subclass
        }
        drivers = {device: by_bus.get(driver.bus.id, driver) for device, driver in drivers.items()}
    pollers = {d.id: DevicePoller(drivers[d.id], d, recorder) for d in cfg.devices if d.id in drivers}
    gateway = Gateway(drivers, pollers, CommandHandler(cfg, drivers, recorder), supervisor)
    try:
        supervisor.spawn("recorder", recorder.run)
        for device, poller in pollers.items():
            supervisor.spawn(f"device:{device}", poller.run)
        yield gateway
    finally:
        await supervisor.stop()
        with contextlib.suppress(Exception):
            await recorder.flush()
        for driver in set(drivers.values()):
            with contextlib.suppress(Exception):
                await driver.close()
        store.close()


async def _until(condition: Callable[[], bool], limit: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not within {limit:g}s")
        await asyncio.sleep(0.05)


def _bounded(coro: Coroutine[Any, Any, T], limit: float) -> T:
    """Run one scenario in a fresh event loop; cancelled (and cleaned up) past ``limit`` seconds."""
    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded())


# -- 1. cycle time of healthy devices with dead units on the line ----------------------------------


@dataclass(frozen=True, slots=True)
class CycleResult:
    label: str
    healthy: int
    dead: int
    seconds: float
    cycles: list[float]
    polls: int
    healthy_failures: int
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

    @property
    def polls_per_s(self) -> float:
        return self.polls / self.seconds


async def cycle_run(opts: Options, work: Path, label: str, dead: set[int], *, breaker: bool = True,
                    revive: bool = False) -> CycleResult:
    units = {u: Unit(_bank(), Behaviour.DEAD if u in dead else Behaviour.OK) for u in range(1, opts.devices + 1)}
    loop = asyncio.get_running_loop()
    async with RtuLine(units, baudrate=opts.baud) as line:
        name = "".join(c if c.isalnum() else "-" for c in label)
        path = work / f"{name}.toml"
        path.write_text(rtu_config_text(work / name, line.port, opts, offline_after=None if breaker else 100))
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

            await _until(warm, WARMUP_LIMIT, "warm-up (every healthy device polled, every dead one failed "
                                             f"{threshold} times)")
            if breaker and not all(pollers[d].breaker_open for d in corpses):
                raise RuntimeError(f"breakers did not open after {threshold} failures: "
                                   f"{[(d, pollers[d].state.failures) for d in corpses]}")
            await asyncio.sleep(SETTLE)
            warmup = loop.time() - started
            scheduler = gw.scheduler_driver().scheduler
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
                    await _until(lambda: all(pollers[d].state.state == "online" for d in corpses), limit, "recovery")
                    recovered = loop.time() - revived
            restarts = sum(gw.supervisor.restarts.values())
    cycles, dead_requests, dead_bus = _wire_figures(line.stats.log, t0, t1, {u for u in units if u not in dead}, dead)
    return CycleResult(label, len(healthy), len(dead), t1 - t0, cycles, polls, failures, dead_requests, dead_bus,
                       probes, busy, warmup, recovered, limit, restarts)


def _wire_figures(log: Sequence[tuple[float, int, int]], t0: float, t1: float, healthy: set[int], dead: set[int]
                  ) -> tuple[list[float], int, float]:
    """From the line's request log: healthy units' cycle times, and the wire time dead units took.

    A poll starts with its holding-register read (function 3), so a unit's cycle is the time
    between two of those. Every request holds the line until the next one is heard, so a dead
    unit's share is the time from each request to it until the next request on the line.
    """
    window = [(t, u, fc) for t, u, fc in log if t0 <= t < t1]
    last: dict[int, float] = {}
    cycles: list[float] = []
    for t, u, fc in window:
        if u in healthy and fc == 3:
            if u in last:
                cycles.append(t - last[u])
            last[u] = t
    dead_requests, dead_bus = 0, 0.0
    for i, (t, u, _) in enumerate(window):
        if u in dead:
            dead_requests += 1
            dead_bus += (window[i + 1][0] if i + 1 < len(window) else t1) - t
    return cycles, dead_requests, dead_bus


def cycle_table(runs: Sequence[CycleResult]) -> str:
    base = runs[0]
    rows = []
    for r in runs:
        ideal = base.cycle * r.healthy / base.healthy
        rows.append((
            r.label, f"{r.healthy}+{r.dead}", _num(1000 * r.cycle, 0), _num(1000 * max(r.cycles, default=math.nan), 0),
            _num(1000 * ideal, 0), f"{r.cycle / base.cycle:.2f}", _num(r.polls_per_s, 2),
            _num(r.polls_per_s / r.healthy, 2), str(r.healthy_failures), str(r.dead_requests), str(r.probes),
            _num(r.dead_bus_seconds, 2), f"{100 * r.dead_bus_seconds / r.seconds:.1f}%",
            f"{100 * r.busy_seconds / r.seconds:.0f}%",
        ))
    return _table(rows, ["scenario", "healthy+dead", "mean cycle ms", "max cycle ms", "ideal ms", "ratio",
                         "polls/s", "polls/s/dev", "failed", "dead-unit req", "probes", "dead bus s", "dead bus %",
                         "bus busy"])


# -- 2. write latency under full polling load -------------------------------------------------------


@dataclass(slots=True)
class WriteResult:
    latencies: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})
    outcomes: dict[bool, Counter[str]] = field(default_factory=lambda: {False: Counter(), True: Counter()})
    polls_per_s: float = 0.0
    seconds: float = 0.0


async def write_run(opts: Options, work: Path, label: str, driver_type: type[ModbusDriver] | None) -> WriteResult:
    """``opts.writes`` writes with read-back off and as many with it on, alternating, while every unit polls."""
    units = {u: Unit(_bank()) for u in range(1, opts.devices + 1)}
    rng = random.Random(7)
    result = WriteResult()
    loop = asyncio.get_running_loop()
    async with RtuLine(units, baudrate=opts.baud) as line:
        path = work / f"{label}.toml"
        path.write_text(rtu_config_text(work / label, line.port, opts))
        cfg = load_config(path)
        async with running_gateway(cfg, driver_type) as gw:
            ids = list(gw.pollers)
            await _until(lambda: all(p.state.polls >= 2 for p in gw.pollers.values()), WARMUP_LIMIT,
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


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks; nan for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def write_table(shipped: WriteResult, baseline: WriteResult) -> str:
    rows = []
    for name, run in (("WRITE urgency (as shipped)", shipped), ("POLL urgency (baseline)", baseline)):
        for verify in (False, True):
            lat = run.latencies[verify]
            ok = sum(run.outcomes[verify][k] for k in ("written", "verified"))
            total = sum(run.outcomes[verify].values())
            ratio = "-"
            if run is shipped:
                mine, theirs = percentile(lat, 0.99), percentile(baseline.latencies[verify], 0.99)
                ratio = f"{theirs / mine:.1f}x" if mine > 0 and mine == mine and theirs == theirs else "-"
            rows.append((
                f"{name}, {'with read-back' if verify else 'no read-back'}", f"{ok}/{total}",
                _num(1000 * percentile(lat, 0.5), 0), _num(1000 * percentile(lat, 0.99), 0),
                _num(1000 * max(lat, default=math.nan), 0), ratio,
            ))
    return _table(rows, ["write path", "ok", "p50 ms", "p99 ms", "max ms", "p99 POLL/WRITE"])


def _outcome_notes(run: WriteResult, name: str) -> list[str]:
    notes = []
    for verify in (False, True):
        bad = {k: v for k, v in run.outcomes[verify].items() if k not in ("written", "verified")}
        if bad:
            notes.append(f"  {name}, {'with' if verify else 'no'} read-back: not ok: "
                         + ", ".join(f"{v} {k}" for k, v in sorted(bad.items())))
    return notes


# -- 3. points/s over many TCP devices ---------------------------------------------------------------


def tcp_rows(opts: Options, work: Path) -> list[tuple[str, str]]:
    points = point_map(opts.tcp_points)
    with simulator(opts.tcp_devices, bank_size(points), work) as (sim, port):
        path = work / "tcp.toml"
        path.write_text(config_text(work / "tcp", port, opts.tcp_devices, points))  # max_in_flight left at 1
        cfg = load_config(path)
        in_flight = {getattr(b, "max_in_flight", None) for b in cfg.buses}
        if in_flight != {1}:
            raise RuntimeError(f"TCP buses should carry one transaction at a time, config has {in_flight}")
        r = _bounded(poll_run(cfg, opts.seconds, sim.pid), opts.seconds + WARMUP_LIMIT)
    return [
        ("points/s", _num(r.points_per_s, 0)),
        ("polls/s (all devices)", _num(r.polls_per_s, 0)),
        ("polls/s per device", _num(r.polls_per_s / opts.tcp_devices, 1)),
        ("Modbus transactions/s", _num(r.reads_per_s, 0)),
        ("gateway CPU, % of one core", _num(100 * r.cpu / r.seconds, 0)),
        ("gateway CPU s per 1k points", _num(1000 * r.cpu / max(1, r.points), 4)),
        ("simulator CPU, % of one core", _num(100 * r.sim_cpu / r.seconds, 0)),
        ("good points", f"{100 * r.good / max(1, r.points):.1f}%"),
        ("failed polls", str(r.failed)),
    ]


# -- the bench ------------------------------------------------------------------------------------------


def bench_bus(args: argparse.Namespace) -> int:
    opts = Options.from_args(args)
    if (problem := opts.problem()) is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    try:
        with workdir("gateway-bench-bus-", "error") as work:  # dead units going offline is the point, not news
            return _bench(opts, work)
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1


def _bench(opts: Options, work: Path) -> int:
    bus = ModbusRtuBus(id=BUS_ID, driver="modbus_rtu", port="-", baudrate=opts.baud, timeout=opts.timeout)
    registers = sum(len(words) for *_, words in _HOLDING)
    print(f"gateway bench bus: {opts.devices} units on one simulated RS-485 line at {opts.baud} baud 8N1 "
          f"(frame gap {1000 * bus.frame_gap:.1f} ms, bus timeout {opts.timeout:g} s), every unit polled every "
          f"{1000 * INTERVAL:g} ms (so back to back), uplink off, store synchronous=full")
    print(f"each unit: {len(_HOLDING)} points in {registers} holding registers (one read) + {len(_COILS)} coils "
          f"(one read); measured {opts.seconds:g} s after a warm-up in which breakers of dead units open")
    print("figures are noisy: 2 CPU cores shared with other work; the serial timing is simulated in-process")
    _flush()
    per_run = WARMUP_LIMIT + SETTLE + 2 * opts.seconds + 30
    runs = [
        _bounded(cycle_run(opts, work, "all healthy" if count == 0 else f"{count} dead",
                           dead_units(opts.devices, count), revive=count == 1), per_run)
        for count in DEAD_COUNTS if count < opts.devices
    ]
    runs.append(_bounded(cycle_run(opts, work, "1 dead, breaker off", dead_units(opts.devices, 1), breaker=False),
                         per_run))
    print()
    print("1. healthy units' cycle time on one shared line (time between two polls of the same unit)")
    print(cycle_table(runs))
    one = next((r for r in runs if r.label == "1 dead"), None)
    print(f"(ratio = mean cycle / all-healthy mean cycle; target <= 1.10 with 1 dead. ideal = all-healthy cycle x "
          f"healthy/{opts.devices}: what fewer units would take if dead ones cost nothing. 'breaker off' = "
          "offline_after 100, the dead unit polled at full rate. dead bus = wire time from each request to a "
          "dead unit to the next request heard; probes = PROBE-urgency transactions in the scheduler; "
          "bus busy = scheduler's slot-held time, gap waits excluded)")
    if one is not None:
        ratio = one.cycle / runs[0].cycle
        print(f"1 dead: ratio {ratio:.2f}, target <= 1.10: {'met' if ratio <= 1.10 else 'MISSED'}", end="")
        if off := next((r for r in runs if r.label.endswith("breaker off")), None):
            print(f"; with the breaker off {off.cycle / runs[0].cycle:.2f}", end="")
        print()
        if one.recovery_limit:
            back = (f"{one.recovered_after:.2f} s" if one.recovered_after is not None
                    else f"NOT within {one.recovery_limit:g} s")
            print(f"1 dead: the dead unit made to answer again after the window; came back online after: {back}")
    restarts = sum(r.restarts for r in runs)
    if restarts:
        print(f"WARNING: {restarts} poll task crash(es) restarted by the supervisor during these runs")
    _flush()

    per_write = WRITE_PAUSE + WRITE_LIMIT
    limit = WARMUP_LIMIT + 2 * opts.writes * per_write + 30
    shipped = _bounded(write_run(opts, work, "writes-write-urgency", None), limit)
    baseline = _bounded(write_run(opts, work, "writes-poll-urgency", PollUrgencyDriver), limit)
    print()
    print(f"2. write latency, request to completion through CommandHandler, {opts.writes} writes each way to a "
          f"holding register (one FC16), one at a time, while all {opts.devices} units poll back to back")
    print(write_table(shipped, baseline))
    print(f"(bus load during the writes: {shipped.polls_per_s:.1f} polls/s as shipped, {baseline.polls_per_s:.1f} "
          "polls/s in the baseline; target p99 < 300 ms at 9600 baud; baseline = the same driver with writes and "
          "read-backs queued at POLL urgency, FIFO behind every waiting poll)")
    p99s = [percentile(shipped.latencies[v], 0.99) for v in (False, True)]
    p99 = math.nan if any(math.isnan(x) for x in p99s) else max(p99s)
    print(f"as shipped: worst p99 {_num(1000 * p99, 0)} ms, target < 300 ms: {'met' if p99 < 0.3 else 'MISSED'}")
    for note in _outcome_notes(shipped, "as shipped") + _outcome_notes(baseline, "baseline"):
        print(note)
    _flush()

    rows = tcp_rows(opts, work)
    print()
    print(f"3. Modbus TCP: {opts.tcp_devices} devices x {opts.tcp_points} points, one bus each with "
          f"max_in_flight 1, polled back to back for {opts.seconds:g} s (simulator in its own process)")
    print(_table(rows, ["", "value"]))
    _flush()
    return 0


def _flush() -> None:
    with contextlib.suppress(OSError):
        sys.stdout.flush()

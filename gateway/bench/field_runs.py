"""The run behind `gateway bench field`: awkward devices beside healthy twins, bad units among healthy ones.

One daemon (``Daemon(cfg)``'s own wiring: drivers, a ``DevicePoller`` per device under the
``Supervisor``, the ``Recorder`` and the SQLite store; uplink off) polls, all at once and each on its
own bus: every awkward TCP device and its twin (served by ``python -m simulators.awkward`` in its
own process), and RS-485 lines (``simulators.rtu.RtuLine``, in process) and TCP-to-RS-485
converters (``python -m simulators.converter``) each without, with a dead and with a garbage unit.

What counts is what reached the store: stored samples and their good points, each device over its
own window of ``seconds`` from its first poll (so the pollers' random start-up stagger costs nobody),
its end put half an interval off the device's poll schedule (so a poll due right at the end does
not count or not by a hair of scheduling latency).
Polls, plan versions, first all-good polls and breaker openings are watched on the daemon's bus.
Imported only when the bench runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.modbus.driver import ModbusDriver
from drivers.scheduler import Urgency
from gateway.bench.bus_line import unit_points
from gateway.bench.field import BEHAVIOURS, LINE_BAD, LINE_KINDS, Options, meter_points
from gateway.bench.harness import HOST, Child, ready_process
from gateway.config import load_config
from gateway.core.data import DeviceState, Event, Quality, Reading
from gateway.daemon import Daemon
from simulators.awkward import AwkwardDevice
from simulators.rtu import Behaviour, RtuLine, Unit

STAGGER = 2.0
"""Longest random delay of a poller's first poll (``DevicePoller.run``)."""


@dataclass(slots=True)
class Seen:
    """One device as the daemon's bus showed it, and then as the store kept it."""

    polls: list[float] = field(default_factory=list)
    """Start time of every poll (wall clock, as the samples' ts)."""
    failed: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    """The read plan's version after each poll."""
    first_all_good: int | None = None
    offline_at: float | None = None
    samples: int = 0
    good: int = 0
    stored_points: int = 0


class Watch:
    """Subscribes to the daemon's bus before its pollers start."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.seen: dict[str, Seen] = {d: Seen() for d in daemon.pollers}
        self.initial = {d: self._plan(d).version for d in daemon.pollers}
        self.interval = {d: p.device.interval for d, p in daemon.pollers.items()}
        daemon.bus.on_device_state(self._state)
        daemon.bus.on_readings(self._readings)
        daemon.bus.on_event(self._event)

    def _plan(self, device: str) -> Any:
        driver = self.daemon.drivers[device]
        assert isinstance(driver, ModbusDriver)
        return driver.plans[device]

    def _state(self, state: DeviceState) -> None:
        seen = self.seen.get(state.id)
        if seen is None or state.polls == len(seen.polls) or state.last_poll is None:
            return
        seen.polls.append(state.last_poll)
        seen.versions.append(self._plan(state.id).version)
        if state.failures > len(seen.failed):
            seen.failed.append(state.last_poll)

    def _readings(self, device: str, readings: list[Reading], _ts: float) -> None:
        seen = self.seen.get(device)
        if seen is None or seen.first_all_good is not None or not readings:
            return
        plan = self._plan(device)
        readable = {p.id for p in plan.points} - set(plan.unreadable)
        good = {r.point for r in readings if r.quality is Quality.GOOD}
        if good >= readable and len(good) == len(readings):
            seen.first_all_good = self.daemon.pollers[device].state.polls

    def _event(self, event: Event) -> None:
        seen = self.seen.get(event.source)
        if event.kind == "device.offline" and seen is not None and seen.offline_at is None:
            seen.offline_at = event.ts

    def window(self, device: str, seconds: float) -> tuple[float, float]:
        """[start, end) of the device's window in wall-clock time (the samples' ts); empty if it never polled."""
        polls = self.seen[device].polls
        if not polls:
            return 0.0, 0.0
        return polls[0], polls[0] + seconds - self.interval[device] / 2

    def settled_after(self, device: str) -> int:
        """The last poll after which the plan differed from before it (0: it never changed)."""
        versions = [self.initial[device], *self.seen[device].versions]
        return max((i for i in range(1, len(versions)) if versions[i] != versions[i - 1]), default=0)


def figures(watch: Watch, device: str, seconds: float) -> dict[str, Any]:
    """One device's measured figures over its window (``seconds`` from its first poll)."""
    seen = watch.seen[device]
    _start, end = watch.window(device, seconds)
    inside = [t for t in seen.polls if t < end]
    driver = watch.daemon.drivers[device]
    return {
        "polls": len(inside), "polls_in_run": len(seen.polls), "failed_polls": sum(1 for t in seen.failed if t < end),
        "samples_stored": seen.samples, "good_points_stored": seen.good, "points_stored": seen.stored_points,
        "first_all_good_poll": seen.first_all_good, "plan_settled_after_polls": watch.settled_after(device),
        "offline_after_s": None if seen.offline_at is None else seen.offline_at - seen.polls[0],
        "counters": driver.counters(device),
    }


def count_stored(cfg: Any, watch: Watch, seconds: float) -> None:
    """Samples and good points in the store, per device, within the device's window."""
    from gateway.daemon import open_store

    store = open_store(cfg, read_only=True)
    try:
        for device, ts, points in store.samples_since(0.0):
            seen = watch.seen.get(device)
            if seen is None:
                continue
            start, end = watch.window(device, seconds)
            if not start <= ts < end:
                continue
            seen.samples += 1
            seen.stored_points += len(points)
            seen.good += sum(1 for p in points.values() if p.get("q") == Quality.GOOD.value)
    finally:
        store.close()


# -- config ---------------------------------------------------------------------------------------


def _toml(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)  # JSON strings and numbers are valid TOML


def _points(points: list[dict[str, Any]]) -> str:
    return "".join("[[devices.points]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in p.items()) + "\n"
                   for p in points)


def awkward_ids(opts: Options) -> list[tuple[str, str, str]]:
    """(behaviour, device id, simulator spec) of every TCP device, in the simulator's port order."""
    out = []
    for name, spec, _target, _what in BEHAVIOURS:
        for pair in range(opts.pairs):
            out += [(name, f"{name}-{pair}", spec.format(slow=opts.timeout / 2)), (name, f"{name}-{pair}-twin", "")]
    return out


def line_ids(opts: Options, kind: str, bad: str) -> list[str]:
    units = opts.line_units + (bad != "none")
    return [f"{kind}-{bad}-u{u}" for u in range(1, units + 1)]


def config_text(opts: Options, data: Path, first_port: int, lines: dict[tuple[str, str], str | int]) -> str:
    """Every bus and device: the TCP pairs on consecutive ports, then each line (a pty path or a port)."""
    text = ['[site]\nid = "bench-field"\n', "[mqtt]\nenabled = false\n", f"[store]\ndata_dir = {_toml(str(data))}\n",
            '[log]\nlevel = "error"\n']
    meter = _points(meter_points())
    for i, (_name, device, _spec) in enumerate(awkward_ids(opts)):
        text.append(f'[[buses]]\nid = "{device}"\ndriver = "modbus_tcp"\nhost = "{HOST}"\nport = {first_port + i}\n'
                    f"timeout = {_toml(opts.timeout)}\n")
        text.append(f'[[devices]]\nid = "{device}"\nbus = "{device}"\ninterval = {_toml(opts.interval)}\n\n{meter}')
    unit = _points(unit_points())
    for (kind, bad), where in lines.items():
        bus = f"{kind}-{bad}"
        if kind == "rtu":
            text.append(f'[[buses]]\nid = "{bus}"\ndriver = "modbus_rtu"\nport = {_toml(where)}\n'
                        f"baudrate = {opts.baud}\ntimeout = {_toml(opts.line_timeout)}\n")
        else:  # the converter answers a silent unit after its serial timeout: the gateway waits longer
            text.append(f'[[buses]]\nid = "{bus}"\ndriver = "modbus_tcp"\nhost = "{HOST}"\nport = {where}\n'
                        f"timeout = {_toml(2 * opts.line_timeout)}\n")
        for n, device in enumerate(line_ids(opts, kind, bad), start=1):
            text.append(f'[[devices]]\nid = "{device}"\nbus = "{bus}"\nunit = {n}\n'
                        f"interval = {_toml(opts.line_interval)}\n\n{unit}")
    return "\n".join(text)


# -- simulators -----------------------------------------------------------------------------------


@contextlib.contextmanager
def converters(opts: Options, work: Path) -> Iterator[dict[str, Child]]:
    """One converter process per scenario: ``line_units`` healthy units, and unit N+1 dead or garbage."""
    healthy = ",".join(str(u) for u in range(1, opts.line_units + 1))
    bad = str(opts.line_units + 1)
    with contextlib.ExitStack() as stack:
        children = {}
        for what in LINE_BAD:
            args = ["--host", HOST, "--ok", healthy, "--baud", str(opts.baud), "--serial-timeout",
                    str(opts.line_timeout), *([f"--{what}", bad] if what != "none" else [])]
            children[what] = stack.enter_context(ready_process("simulators.converter", args,
                                                               work / f"converter-{what}.log"))
        yield children


@contextlib.asynccontextmanager
async def rtu_lines(opts: Options) -> AsyncIterator[dict[str, RtuLine]]:
    """One simulated RS-485 line per scenario, in this process, units served from awkward devices' banks."""
    async with contextlib.AsyncExitStack() as stack:
        lines = {}
        for what in LINE_BAD:
            units = {u: Unit(AwkwardDevice(unit_id=u).context) for u in range(1, opts.line_units + 1)}
            if what != "none":
                bad = opts.line_units + 1
                units[bad] = Unit(AwkwardDevice(unit_id=bad).context, Behaviour(what))
            lines[what] = await stack.enter_async_context(RtuLine(units, baudrate=opts.baud))
        yield lines


def awkward_args(opts: Options) -> list[str]:
    args = ["--host", HOST, "--tick", "0"]
    for _name, _device, spec in awkward_ids(opts):
        args += ["--behaviour", spec]
    return args


# -- the run --------------------------------------------------------------------------------------


@dataclass(slots=True)
class FieldRun:
    devices: dict[str, dict[str, Any]]
    awkward_stats: dict[str, dict[str, Any]]
    """The awkward simulator's own counts per TCP device (requests heard, answered, exceptions...)."""
    line_requests: dict[str, dict[int, int]]
    """Requests each simulated RS-485 line heard, by unit id."""
    probes: dict[str, int]
    """PROBE-urgency transactions on each line's bus."""
    seconds: float


async def field_run(opts: Options, work: Path, sim: Child, conv: dict[str, Child]) -> FieldRun:
    loop = asyncio.get_running_loop()
    async with rtu_lines(opts) as rtu:
        where: dict[tuple[str, str], str | int] = {}
        for kind in LINE_KINDS:
            for what in LINE_BAD:
                where[(kind, what)] = rtu[what].port if kind == "rtu" else conv[what].port
        path = work / "field.toml"
        path.write_text(config_text(opts, work / "data", sim.port, where))
        cfg = load_config(path)
        daemon = Daemon(cfg)
        watch = Watch(daemon)
        started = loop.time()
        try:
            daemon.supervisor.spawn("recorder", daemon.recorder.run)
            for device, poller in daemon.pollers.items():
                daemon.supervisor.spawn(f"device:{device}", poller.run)
            slowest = max(3 * opts.timeout + opts.interval, 3 * opts.line_timeout + opts.line_interval)
            await asyncio.sleep(opts.seconds + STAGGER + slowest + 1.0)  # every window complete, its last poll in
            probes = {}
            for driver in {id(d): d for d in daemon.drivers.values()}.values():
                if isinstance(driver, ModbusDriver) and driver.bus.id.startswith(LINE_KINDS):
                    probes[driver.bus.id] = len(driver.scheduler.stats.waited[Urgency.PROBE])
        finally:
            elapsed = loop.time() - started
            await daemon.shutdown()
        count_stored(cfg, watch, opts.seconds)
        missing = [d for d, s in watch.seen.items() if not s.polls]
        if missing:
            raise RuntimeError(f"never polled: {missing}")
        stats = sim.ask("stats")
        if not stats.startswith("stats "):
            raise RuntimeError(f"the awkward simulator answered {stats!r} to 'stats'")
        per_device = json.loads(stats.removeprefix("stats "))
        awkward = {device: per_device[i] for i, (_n, device, _s) in enumerate(awkward_ids(opts))}
        heard = {f"rtu-{what}": dict(sorted(line.stats.by_unit.items())) for what, line in rtu.items()}
        return FieldRun({d: figures(watch, d, opts.seconds) for d in watch.seen}, awkward, heard, probes, elapsed)

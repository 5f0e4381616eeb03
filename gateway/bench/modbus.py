"""`gateway bench modbus`: what polling costs the gateway, and what coalesced reads save.

Simulated devices run in a separate process (``python -m simulators.registers``), so the CPU
figures are the gateway's alone. The gateway side is the production code: config from TOML text,
the driver registry, ``DevicePoller``, ``Recorder`` and the SQLite store, with the uplink off (so
every poll also lands in the outbox, as during an outage). Polling is a tight loop per device: the
figures are capacity, not a configured poll rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import structlog

from drivers.base import Driver
from drivers.modbus.codec import DataType, register_count
from drivers.modbus.driver import ModbusDriver
from gateway.config import load_config
from gateway.config.schema import GatewayConfig
from gateway.core import logs
from gateway.core.data import Quality, Reading
from gateway.daemon import DB_NAME, build_drivers, open_store
from gateway.recorder import AsyncStore, Recorder
from gateway.supervisor import DevicePoller

HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
"""Seconds a simulator or a spawned daemon may take to come up before the bench gives up."""

# One stretch of 20 points as a meter or a pump controller lays them out: mostly 16-bit words,
# some float32 measurements and a 32-bit counter, all contiguous. (type, unit, scale)
_MIX: tuple[tuple[str, str | None, float], ...] = (
    ("uint16", None, 1.0), ("int16", "°C", 0.1), ("uint16", "%", 1.0), ("float32", "V", 1.0),
    ("uint16", None, 1.0), ("uint16", "rpm", 1.0), ("int16", "kPa", 0.1), ("uint16", None, 1.0),
    ("float32", "A", 1.0), ("uint16", "s", 1.0), ("int32", "kWh", 0.01), ("uint16", None, 1.0),
    ("int16", "°C", 0.1), ("uint16", "%", 1.0), ("float32", "kW", 1.0), ("uint16", None, 1.0),
    ("uint16", "h", 1.0), ("int16", "kPa", 0.1), ("uint16", None, 1.0), ("float32", "Hz", 1.0),
)


@dataclass(frozen=True, slots=True)
class Options:
    devices: int
    points: int
    seconds: float
    cold_start: bool = True
    rss: bool = True
    rss_devices: int = 100
    rss_points: int = 20
    rss_seconds: float = 10.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        """Attributes the CLI does not (yet) define take their defaults, so any Namespace works."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**given)


def point_map(count: int, *, spaced: bool = False) -> list[dict[str, Any]]:
    """``count`` points in ``[[devices.points]]`` keys: the ``_MIX`` repeated, then one or two coils.

    ``spaced`` leaves one unused register (or bit) after each point; with ``max_gap = 0`` every
    point then costs a read of its own, the one-entity-one-read pattern coalescing replaces.
    """
    coils = min(2, count // 10)
    points: list[dict[str, Any]] = []
    address = 0
    for i in range(count - coils):
        dtype, unit, scale = _MIX[i % len(_MIX)]
        point: dict[str, Any] = {"id": f"p{i:04d}", "table": "holding", "address": address, "type": dtype}
        if unit:
            point["unit"] = unit
        if scale != 1.0:
            point["scale"] = scale
        points.append(point)
        address += register_count(DataType(dtype)) + spaced
    for j in range(coils):
        points.append({"id": f"coil{j}", "table": "coil", "address": j * (1 + spaced), "type": "bool"})
    return points


def bank_size(*maps: Sequence[dict[str, Any]]) -> int:
    """Entries per table the simulated banks need to hold every map."""
    end = 1
    for points in maps:
        for p in points:
            end = max(end, p["address"] + (1 if p["table"] == "coil" else register_count(DataType(p["type"]))))
    return end


def config_text(data_dir: Path, first_port: int, devices: int, points: Sequence[dict[str, Any]], *,
                interval: str = "1s", max_gap: int | None = None, timeout: str = "2s") -> str:
    """A config file as an engineer would write it: device ``i`` on its own port ``first_port + i``."""
    def value(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)  # JSON strings and numbers are valid TOML

    text = ['[site]\nid = "bench"\n', "[mqtt]\nenabled = false\n", f"[store]\ndata_dir = {value(str(data_dir))}\n",
            '[log]\nlevel = "warning"\nformat = "json"\n']
    point_tables = "".join("[[devices.points]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in p.items()) + "\n"
                           for p in points)
    for i in range(devices):
        text.append(f'[[buses]]\nid = "bus-{i}"\ndriver = "modbus_tcp"\nhost = "{HOST}"\nport = {first_port + i}\n'
                    f'timeout = "{timeout}"\n')
        gap = "" if max_gap is None else f"max_gap = {max_gap}\n"
        text.append(f'[[devices]]\nid = "dev-{i}"\nbus = "bus-{i}"\ninterval = "{interval}"\n{gap}\n{point_tables}')
    return "\n".join(text)


# -- processes ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc (Linux, as the gateway's targets are)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces; it ends at the last ")"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int | str = "self") -> tuple[float, float]:
    """(resident, peak resident) in MB from /proc/PID/status."""
    found = {"VmRSS": float("nan"), "VmHWM": float("nan")}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in found:
                found[key] = int(rest.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


def _stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone within ``grace`` seconds; never leaves it running."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
        if text:
            return "\n  " + "\n  ".join(text)
    return ""


def _await_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The child's first stdout line, without blocking past ``timeout`` or on a child that died."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no output within {timeout:g}s")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.2))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"exited with code {proc.wait()} before it was ready")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


@contextlib.contextmanager
def simulator_process(module: str, args: list[str], log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m module args`` until it prints ``ready <port> ...``; yields it and that port, stops it after."""
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=log_file)
    try:
        try:
            line = _await_line(proc, READY_TIMEOUT)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"simulator: {exc}{_tail(log_path)}") from exc
        word, port, _ = [*line.split(), "", "", ""][:3]
        if word != "ready" or not port.isdigit():
            raise RuntimeError(f"simulator said {line!r}, expected 'ready <port> <count>'")
        yield proc, int(port)
    finally:
        _stop(proc)


@contextlib.contextmanager
def simulator(count: int, size: int, work: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``count`` register banks with counting data in their own process; yields it and its first port."""
    args = ["--host", HOST, "--count", str(count), "--size", str(size), "--fill"]
    with simulator_process("simulators.registers", args, work / f"simulator-{count}.log") as running:
        yield running


def _spawn_daemon(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=log_file)


def _first_sample_ts(db: Path) -> float | None:
    """The poll time of the first stored sample, or None while there is none (or no store yet)."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)) as conn:
            row = conn.execute("SELECT MIN(ts) FROM samples").fetchone()
    except sqlite3.Error:  # the daemon is still creating the schema
        return None
    return float(row[0]) if row and row[0] is not None else None


def _count_samples(db: Path) -> int:
    with contextlib.suppress(sqlite3.Error), \
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
    return -1


# -- polling in-process ------------------------------------------------------------------------


class _CountingRecorder(Recorder):
    """The production recorder, also counting what it is handed."""

    def __init__(self, store: AsyncStore) -> None:
        super().__init__(store)
        self.points = 0
        self.good = 0

    def snapshot(self, device: str, readings: list[Reading], ts: float | None = None) -> None:
        self.points += len(readings)
        self.good += sum(1 for r in readings if r.quality is Quality.GOOD)
        super().snapshot(device, readings, ts)


@dataclass(frozen=True, slots=True)
class RunResult:
    seconds: float
    polls: int
    failed: int
    points: int
    good: int
    reads: int
    cpu: float
    sim_cpu: float
    rss_mb: float

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds

    @property
    def polls_per_s(self) -> float:
        return self.polls / self.seconds

    @property
    def reads_per_s(self) -> float:
        return self.reads / self.seconds

    @property
    def reads_per_poll(self) -> float:
        return self.reads / max(1, self.polls - self.failed)

    @property
    def cpu_per_1k_points(self) -> float:
        return 1000 * self.cpu / max(1, self.points)


def _reads_per_poll(driver: Driver, device: str) -> int:
    if not isinstance(driver, ModbusDriver):
        raise TypeError(f"{device}: the Modbus bench needs a Modbus driver, not {type(driver).__name__}")
    return len(driver.plans[device].blocks)


async def poll_run(cfg: GatewayConfig, seconds: float, sim_pid: int) -> RunResult:
    """Poll every device back to back for ``seconds``, all devices at once, through the real stack."""
    store = AsyncStore(open_store(cfg))
    recorder = _CountingRecorder(store)
    drivers: dict[str, Driver] = build_drivers(cfg)
    pollers = [DevicePoller(drivers[d.id], d, recorder) for d in cfg.devices]
    blocks = {d.id: _reads_per_poll(drivers[d.id], d.id) for d in cfg.devices}
    writer = asyncio.create_task(recorder.run(), name="bench-recorder")
    loop = asyncio.get_running_loop()
    polls = dict.fromkeys(blocks, 0)
    try:
        await asyncio.gather(*(p.poll_once() for p in pollers))  # connect outside the clock
        await recorder.flush()
        recorder.points = recorder.good = 0
        failed_before = {p.device.id: p.state.failures for p in pollers}
        stop_at = loop.time() + seconds

        async def hammer(poller: DevicePoller) -> None:
            while loop.time() < stop_at:
                await poller.poll_once()
                polls[poller.device.id] += 1

        cpu0, sim0, t0 = time.process_time(), cpu_seconds(sim_pid), time.perf_counter()
        await asyncio.gather(*(hammer(p) for p in pollers))
        await recorder.flush()  # the last batch's commit is part of the cost
        elapsed = time.perf_counter() - t0
        cpu, sim_cpu = time.process_time() - cpu0, cpu_seconds(sim_pid) - sim0
        failed = {p.device.id: p.state.failures - failed_before[p.device.id] for p in pollers}
        return RunResult(
            seconds=elapsed, polls=sum(polls.values()), failed=sum(failed.values()), points=recorder.points,
            good=recorder.good, reads=sum((polls[d] - failed[d]) * blocks[d] for d in polls), cpu=cpu,
            sim_cpu=sim_cpu, rss_mb=memory_mb()[0],
        )
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        for driver in set(drivers.values()):
            with contextlib.suppress(Exception):
                await driver.close()
        store.close()


# -- the figures -------------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """First column left-aligned (labels), the rest right-aligned (numbers)."""
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def _num(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


def _gain(better: float, worse: float) -> str:
    return f"{better / worse:.1f}x" if worse > 0 and better == better and worse == worse else "-"


def poll_table(coalesced: RunResult, baseline: RunResult) -> str:
    c, b = coalesced, baseline
    rows = [
        ("points/s", _num(c.points_per_s, 0), _num(b.points_per_s, 0), _gain(c.points_per_s, b.points_per_s)),
        ("polls/s", _num(c.polls_per_s), _num(b.polls_per_s), _gain(c.polls_per_s, b.polls_per_s)),
        ("Modbus reads/s", _num(c.reads_per_s, 0), _num(b.reads_per_s, 0), "-"),
        ("Modbus reads per poll", _num(c.reads_per_poll), _num(b.reads_per_poll),
         _gain(b.reads_per_poll, c.reads_per_poll)),
        ("gateway CPU s per 1k points", _num(c.cpu_per_1k_points, 4), _num(b.cpu_per_1k_points, 4),
         _gain(b.cpu_per_1k_points, c.cpu_per_1k_points)),
        ("gateway CPU, % of one core", _num(100 * c.cpu / c.seconds, 0), _num(100 * b.cpu / b.seconds, 0), "-"),
        ("simulator CPU, % of one core", _num(100 * c.sim_cpu / c.seconds, 0),
         _num(100 * b.sim_cpu / b.seconds, 0), "-"),
        ("gateway RSS after run, MB", _num(c.rss_mb), _num(b.rss_mb), "-"),
        ("good points", f"{100 * c.good / max(1, c.points):.1f}%", f"{100 * b.good / max(1, b.points):.1f}%", "-"),
        ("failed polls", str(c.failed), str(b.failed), "-"),
    ]
    return _table(rows, ["", "coalesced", "one read per point", "gain"])


def cold_start(work: Path, port: int, points: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Seconds from spawning ``gateway run`` to its first poll, and to that poll stored on disk."""
    data = work / "cold-start"
    config = work / "cold-start.toml"
    config.write_text(config_text(data, port, 1, points, interval="100ms"))
    log_path = work / "cold-start.log"
    spawned_wall, spawned = time.time(), time.perf_counter()
    proc = _spawn_daemon(config, log_path)
    try:
        while (first := _first_sample_ts(data / DB_NAME)) is None:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway run exited with code {proc.returncode}{_tail(log_path)}")
            if time.perf_counter() - spawned > READY_TIMEOUT:
                raise TimeoutError(f"no sample stored within {READY_TIMEOUT:g}s{_tail(log_path)}")
            time.sleep(0.01)
        return first - spawned_wall, time.perf_counter() - spawned
    finally:
        _stop(proc)


@dataclass(frozen=True, slots=True)
class DaemonFigures:
    rss_mb: float
    peak_mb: float
    cpu: float
    samples: int


def daemon_memory(work: Path, opts: Options) -> DaemonFigures:
    """RSS of ``gateway run`` polling ``rss_devices`` devices once a second, after ``rss_seconds``."""
    points = point_map(opts.rss_points)
    data = work / "daemon-rss"
    config = work / "daemon-rss.toml"
    log_path = work / "daemon-rss.log"
    with simulator(opts.rss_devices, bank_size(points), work) as (_, port):
        config.write_text(config_text(data, port, opts.rss_devices, points, interval="1s"))
        proc = _spawn_daemon(config, log_path)
        try:
            deadline = time.monotonic() + opts.rss_seconds
            while (left := deadline - time.monotonic()) > 0:
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway run exited with code {proc.returncode}{_tail(log_path)}")
                time.sleep(min(left, 0.25))
            rss, peak = memory_mb(proc.pid)
            cpu = cpu_seconds(proc.pid)
        finally:
            _stop(proc)
    return DaemonFigures(rss, peak, cpu, _count_samples(data / DB_NAME))



@contextlib.contextmanager
def workdir(prefix: str, level: str = "warning", base: str | None = None) -> Iterator[Path]:
    """A scratch directory, with the gateway's logs quietened to `level` on stderr; both undone after."""
    saved = structlog.get_config()
    logs.configure(level, "console", stream=sys.stderr)
    try:
        with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as tmp:
            yield Path(tmp)
    finally:
        structlog.configure(**saved)


def bench_modbus(args: argparse.Namespace) -> int:
    opts = Options.from_args(args)
    if opts.devices < 1 or opts.points < 1 or opts.seconds <= 0 or opts.rss_devices < 1 or opts.rss_points < 1:
        print("bench: --devices, --points and --seconds must be positive", file=sys.stderr)
        return 2
    try:
        with workdir("gateway-bench-") as work:  # a device going offline is news; polls are not
            return _bench(opts, work)
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1


def _bench(opts: Options, work: Path) -> int:
    packed, spaced = point_map(opts.points), point_map(opts.points, spaced=True)
    mix: dict[str, int] = {}
    for p in packed:
        key = "coil" if p["table"] == "coil" else p["type"]
        mix[key] = mix.get(key, 0) + 1
    print(f"gateway bench modbus: {opts.devices} device(s) x {opts.points} points, {opts.seconds:g} s per run,"
          " every device polled back to back, uplink off, store synchronous=full")
    print("points per device: " + ", ".join(f"{n} {t}" for t, n in sorted(mix.items(), key=lambda kv: -kv[1]))
          + "; simulated in a separate process, registers counting up once a second")
    _flush()
    with simulator(opts.devices, bank_size(packed, spaced), work) as (sim, port):
        def cfg(name: str, points: list[dict[str, Any]], max_gap: int | None) -> GatewayConfig:
            path = work / f"{name}.toml"
            path.write_text(config_text(work / name, port, opts.devices, points, max_gap=max_gap))
            return load_config(path)

        coalesced = asyncio.run(poll_run(cfg("coalesced", packed, None), opts.seconds, sim.pid))
        baseline = asyncio.run(poll_run(cfg("baseline", spaced, 0), opts.seconds, sim.pid))
        print()
        print(poll_table(coalesced, baseline))
        print("(baseline: the same points one register apart with max_gap = 0, so each is a read of its own;"
              " gain = how many times better coalesced is)")
        _flush()
        cold = cold_start(work, port, packed) if opts.cold_start else None
    rows: list[tuple[str, str]] = []
    if cold is not None:
        what = f"1 device x {opts.points} points, 100 ms interval"
        rows.append((f"cold start ({what}): spawn `gateway run` -> first poll, s", _num(cold[0], 2)))
        rows.append(("cold start: spawn -> first sample stored in SQLite, s", _num(cold[1], 2)))
    if opts.rss:
        figures = daemon_memory(work, opts)
        what = f"{opts.rss_devices} devices x {opts.rss_points} points, 1 s interval, after {opts.rss_seconds:g} s"
        rows += [
            (f"daemon RSS ({what}), MB", _num(figures.rss_mb)),
            ("daemon peak RSS, MB", _num(figures.peak_mb)),
            ("daemon CPU so far (start-up included), s", _num(figures.cpu, 2)),
            ("daemon samples stored", str(figures.samples)),
        ]
    if rows:
        print()
        print(_table(rows, ["gateway run as a process", "value"]))
    return 0


def _flush() -> None:
    with contextlib.suppress(OSError):
        sys.stdout.flush()


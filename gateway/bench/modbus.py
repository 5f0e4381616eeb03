"""`gateway bench modbus`: what polling costs the gateway, and what coalesced reads save.

Simulated devices run in a separate process (``gateway.bench.wire``: ``simulators.registers`` banks
that count the requests they serve), so the CPU figures are the gateway's alone and "requests per
poll" is what the devices were asked. The gateway side is the production code: config from TOML
text, the driver registry and the daemon's own wiring (``gateway.bench.polling``), with the uplink
off (so every poll also lands in the outbox, as during an outage). Polling is a tight loop per
device: the figures are capacity, not a configured poll rate.

Light at import (the CLI registers it): the daemon is imported when the bench runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.harness import (
    HOST,
    READY_TIMEOUT,
    Child,
    Report,
    add_json,
    bad_args,
    cpu_seconds,
    gain,
    log_tail,
    memory_mb,
    num,
    options,
    ratio,
    ready_process,
    run,
    spawn_daemon,
    stop_process,
    workdir,
)

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig

# One stretch of 20 points as a meter or a pump controller lays them out: mostly 16-bit words,
# some float32 measurements and a 32-bit counter, all contiguous. (type, unit, scale)
_MIX: tuple[tuple[str, str | None, float], ...] = (
    ("uint16", None, 1.0), ("int16", "°C", 0.1), ("uint16", "%", 1.0), ("float32", "V", 1.0),
    ("uint16", None, 1.0), ("uint16", "rpm", 1.0), ("int16", "kPa", 0.1), ("uint16", None, 1.0),
    ("float32", "A", 1.0), ("uint16", "s", 1.0), ("int32", "kWh", 0.01), ("uint16", None, 1.0),
    ("int16", "°C", 0.1), ("uint16", "%", 1.0), ("float32", "kW", 1.0), ("uint16", None, 1.0),
    ("uint16", "h", 1.0), ("int16", "kPa", 0.1), ("uint16", None, 1.0), ("float32", "Hz", 1.0),
)


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    devices: int = 20
    points: int = 100
    seconds: float = 10.0
    cold_start: bool = True
    rss: bool = True
    rss_devices: int = 100
    rss_points: int = 20
    rss_seconds: float = 10.0


def add_command(bench: Any) -> None:
    """`gateway bench modbus` on the bench subparsers."""
    p = bench.add_parser("modbus", help="poll throughput against simulated register banks; cold start; daemon RSS")
    p.add_argument("--devices", type=int, default=Options.devices)
    p.add_argument("--points", type=int, default=Options.points)
    p.add_argument("--seconds", type=float, default=Options.seconds)
    p.add_argument("--no-cold-start", dest="cold_start", action="store_false", help="skip the cold-start figure")
    p.add_argument("--no-rss", dest="rss", action="store_false", help="skip the daemon memory figure")
    p.add_argument("--rss-devices", type=int, default=Options.rss_devices)
    p.add_argument("--rss-points", type=int, default=Options.rss_points)
    p.add_argument("--rss-seconds", type=float, default=Options.rss_seconds)
    add_json(p)
    p.set_defaults(fn=bench_modbus)


# -- what is polled ------------------------------------------------------------------------------


def point_map(count: int, *, spaced: bool = False) -> list[dict[str, Any]]:
    """``count`` points in ``[[devices.points]]`` keys: the ``_MIX`` repeated, then one or two coils.

    ``spaced`` leaves one unused register (or bit) after each point; with ``max_gap = 0`` every
    point then costs a read of its own, the one-entity-one-read pattern coalescing replaces.
    """
    from drivers.modbus.codec import DataType, register_count

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
    from drivers.modbus.codec import DataType, register_count

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


@contextlib.contextmanager
def simulator(count: int, size: int, work: Path) -> Iterator[Child]:
    """``count`` register banks with counting data in their own process, counting the requests they serve."""
    args = ["modbus", "--host", HOST, "--count", str(count), "--size", str(size)]
    with ready_process("gateway.bench.wire", args, work / f"simulator-{count}.log") as child:
        yield child


# -- gateway run as a process --------------------------------------------------------------------


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


def _count_samples(db: Path) -> int | None:
    with contextlib.suppress(sqlite3.Error), \
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
    return None


def cold_start(work: Path, port: int, points: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Seconds from spawning ``gateway run`` to its first poll, and to that poll stored on disk."""
    from gateway.daemon import DB_NAME

    data = work / "cold-start"
    config = work / "cold-start.toml"
    config.write_text(config_text(data, port, 1, points, interval="100ms"))
    log_path = work / "cold-start.log"
    spawned_wall, spawned = time.time(), time.perf_counter()
    proc = spawn_daemon(config, log_path)
    try:
        while (first := _first_sample_ts(data / DB_NAME)) is None:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway run exited with code {proc.returncode}{log_tail(log_path)}")
            if time.perf_counter() - spawned > READY_TIMEOUT:
                raise TimeoutError(f"no sample stored within {READY_TIMEOUT:g}s{log_tail(log_path)}")
            time.sleep(0.01)
        stored = time.perf_counter() - spawned
        return {"spawn_to_first_poll_s": first - spawned_wall, "spawn_to_first_sample_stored_s": stored}
    finally:
        stop_process(proc)


def daemon_memory(work: Path, opts: Options) -> dict[str, Any]:
    """RSS and CPU of ``gateway run`` polling ``rss_devices`` devices once a second, after ``rss_seconds``."""
    from gateway.daemon import DB_NAME

    points = point_map(opts.rss_points)
    data = work / "daemon-rss"
    config = work / "daemon-rss.toml"
    log_path = work / "daemon-rss.log"
    with simulator(opts.rss_devices, bank_size(points), work) as sim:
        config.write_text(config_text(data, sim.port, opts.rss_devices, points, interval="1s"))
        proc = spawn_daemon(config, log_path)
        try:
            deadline = time.monotonic() + opts.rss_seconds
            while (left := deadline - time.monotonic()) > 0:
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway run exited with code {proc.returncode}{log_tail(log_path)}")
                time.sleep(min(left, 0.25))
            rss, peak = memory_mb(proc.pid)
            cpu = cpu_seconds(proc.pid)
        finally:
            stop_process(proc)
    return {"rss_mb": rss, "peak_rss_mb": peak, "cpu_s": cpu, "samples_stored": _count_samples(data / DB_NAME)}


# -- the bench -----------------------------------------------------------------------------------


def bench_modbus(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if opts.devices < 1 or opts.points < 1 or opts.seconds <= 0 or opts.rss_devices < 1 or opts.rss_points < 1 \
            or opts.rss_seconds <= 0:
        return bad_args("--devices, --points, --seconds and the --rss-* options must be positive")
    report = Report.of("modbus", opts, args)

    def body(report: Report) -> None:
        with workdir("gateway-bench-") as work:  # a device going offline is news; polls are not
            _bench(opts, work, report)

    return run(report, body)


def _bench(opts: Options, work: Path, report: Report) -> None:
    from gateway.bench.polling import poll_run, rows
    from gateway.config import load_config

    packed, spaced = point_map(opts.points), point_map(opts.points, spaced=True)
    mix: dict[str, int] = {}
    for p in packed:
        key = "coil" if p["table"] == "coil" else p["type"]
        mix[key] = mix.get(key, 0) + 1
    report.params["point_types"] = mix
    report.say(f"gateway bench modbus: {opts.devices} device(s) x {opts.points} points, {opts.seconds:g} s per run,"
               " every device polled back to back, uplink off, store synchronous=full",
               "points per device: " + ", ".join(f"{n} {t}" for t, n in sorted(mix.items(), key=lambda kv: -kv[1]))
               + "; simulated in a separate process that counts the requests it serves, registers counting up"
               " once a second")
    with simulator(opts.devices, bank_size(packed, spaced), work) as sim:
        def cfg(name: str, points: list[dict[str, Any]], max_gap: int | None) -> GatewayConfig:
            path = work / f"{name}.toml"
            path.write_text(config_text(work / name, sim.port, opts.devices, points, max_gap=max_gap))
            return load_config(path)

        coalesced = asyncio.run(poll_run(cfg("coalesced", packed, None), opts.seconds, sim)).figures()
        report.figure(**coalesced)
        baseline = asyncio.run(poll_run(cfg("baseline", spaced, 0), opts.seconds, sim)).figures()
        report.figure(one_read_per_point=baseline)
        gains = {
            "points_per_s": report.derive("gain_points_per_s", ratio(coalesced["points_per_s"],
                                                                     baseline["points_per_s"]),
                                          "points_per_s / one_read_per_point.points_per_s"),
            "requests_per_poll": report.derive("requests_per_poll_saved",
                                               ratio(baseline["requests_per_poll"], coalesced["requests_per_poll"]),
                                               "one_read_per_point.requests_per_poll / requests_per_poll"),
            "cpu_s_per_1k_points": report.derive("gain_cpu_s_per_1k_points",
                                                 ratio(baseline["cpu_s_per_1k_points"],
                                                       coalesced["cpu_s_per_1k_points"]),
                                                 "one_read_per_point.cpu_s_per_1k_points / cpu_s_per_1k_points"),
        }
        from gateway.core.text import table

        report.say("", table(rows(coalesced, baseline, gains={k: gain(v) for k, v in gains.items()}),
                             ["", "coalesced", "one read per point", "gain (derived)"]),
                   "(baseline: the same points one register apart with max_gap = 0, so each is a read of its own;"
                   " gain = how many times better coalesced is, computed from the two measured columns)")
        cold = cold_start(work, sim.port, packed) if opts.cold_start else None
    report.figure(cold_start=cold)
    process_rows: list[tuple[str, str]] = []
    if cold is not None:
        what = f"1 device x {opts.points} points, 100 ms interval"
        process_rows.append((f"cold start ({what}): spawn `gateway run` -> first poll, s",
                             num(cold["spawn_to_first_poll_s"], 2)))
        process_rows.append(("cold start: spawn -> first sample stored in SQLite, s",
                             num(cold["spawn_to_first_sample_stored_s"], 2)))
    figures = daemon_memory(work, opts) if opts.rss else None
    report.figure(daemon=figures)
    if figures is not None:
        what = f"{opts.rss_devices} devices x {opts.rss_points} points, 1 s interval, after {opts.rss_seconds:g} s"
        process_rows += [
            (f"daemon RSS ({what}), MB", num(figures["rss_mb"])),
            ("daemon peak RSS, MB", num(figures["peak_rss_mb"])),
            ("daemon CPU so far (start-up included), s", num(figures["cpu_s"], 2)),
            ("daemon samples stored", str(figures["samples_stored"])),
        ]
    if process_rows:
        from gateway.core.text import table

        report.say("", table(process_rows, ["gateway run as a process", "value"]))

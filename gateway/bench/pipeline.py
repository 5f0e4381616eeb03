"""`gateway bench pipeline`: CPU per point delivered at the broker, end to end, as a platform sees it.

The real daemon (``gateway run``, optionally pinned to one core) polls simulated Modbus TCP devices
(float32 registers, served by ``gateway.bench.wire`` in processes of their own) and publishes to a
real Mosquitto; a subscriber in its own process counts every telemetry point that reaches the
broker, including the v2 batch envelope (``{"type": "batch", "class": "telemetry", "items": [...]}``).
The helpers run on the other cores when the daemon is pinned, so their CPU is not the daemon's.

After a warm-up, one window is measured: points arriving at the broker in it (points/s), the
daemon's CPU over it (utime + stime from /proc), its RSS, and, by each message's poll ``ts``, how
many of the points polled in the window arrived (within a grace period after it) out of
devices x points x window / interval, and the latency poll -> broker. ``--baseline`` measures the
minimal path the issue cites for scale (``gateway.bench.pipeline_baseline``) the same way.

The subscriber and the baseline are in ``gateway.bench.pipeline_baseline``. Light at import (the
CLI registers it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    stop_process,
    workdir,
)

PREFIX = "bench"
SITE = "pipeline"
DEVICES_PER_SIMULATOR = 50
"""Simulated devices per simulator process (each is one event loop)."""
TOP = 20


@dataclass(frozen=True, slots=True)
class Preset:
    devices: int
    points: int
    interval: float
    targets: tuple[tuple[str, str, str, float, str], ...]
    """(figure, what, op, value, unit): they hold at these parameters with synchronous = "full"."""


_DELIVERED = ("delivered_percent", "points polled in the window delivered", ">=", 99.9, " %")
PRESETS = {
    "base": Preset(20, 100, 0.1, (_DELIVERED, ("cpu_s_per_1k_points", "daemon CPU s per 1k points", "<=", 0.010, ""),
                                  ("rss_mb", "daemon RSS", "<=", 60, " MB"))),
    "slow": Preset(20, 100, 1.0, (_DELIVERED, ("cpu_s_per_1k_points", "daemon CPU s per 1k points", "<=", 0.015, ""),
                                  ("rss_mb", "daemon RSS", "<=", 60, " MB"))),
    "saturation": Preset(100, 100, 0.1, (("points_per_s", "points/s delivered", ">=", 80_000, ""),
                                         ("rss_mb", "daemon RSS", "<=", 80, " MB"))),
}


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    preset: str = "base"
    devices: int | None = None
    points: int | None = None
    interval: float | None = None
    """Seconds between polls; None: the preset's."""
    seconds: float = 30.0
    warmup: float = 5.0
    grace: float = 3.0
    """Seconds after the window for late arrivals of points polled in it."""
    synchronous: str = "full"
    cpu: int | None = None
    """Core the daemon is pinned to; None: the lowest allowed one when there are two or more; -1: not pinned."""
    baseline: bool = False
    profile: str | None = None


def add_command(bench: Any) -> None:
    """`gateway bench pipeline` on the bench subparsers."""
    p = bench.add_parser("pipeline", help="CPU per point delivered at a real broker: simulated Modbus devices ->"
                                          " gateway run -> Mosquitto -> subscriber")
    p.add_argument("--preset", choices=sorted(PRESETS), help="parameters and their targets (default base: 20 x 100"
                   " @ 0.1 s; slow: @ 1 s; saturation: 100 x 100 @ 0.1 s)")
    p.add_argument("--devices", type=int, help="simulated Modbus TCP devices (default: the preset's)")
    p.add_argument("--points", type=int, help="float32 points per device (default: the preset's)")
    p.add_argument("--interval", type=float, help="poll interval, seconds (default: the preset's)")
    p.add_argument("--seconds", type=float, help=f"measured window (default {Options.seconds:g})")
    p.add_argument("--warmup", type=float, help=f"seconds after the first delivery (default {Options.warmup:g})")
    p.add_argument("--grace", type=float, help=f"seconds to wait for late arrivals (default {Options.grace:g})")
    p.add_argument("--synchronous", choices=["full", "normal"], help="the daemon's store.synchronous (default full)")
    p.add_argument("--cpu", type=int, help="pin the daemon to this core (default: the first, with 2+ cores;"
                   " -1: no pinning); the helpers then run on the others")
    p.add_argument("--baseline", action="store_true", help="also measure the minimal path (pymodbus + json +"
                   " aiomqtt QoS 1, no store) and report the CPU ratio")
    p.add_argument("--profile", metavar="FILE", help="record the daemon over the window with py-spy (pip install"
                   " py-spy): raw collapsed stacks (top functions printed), or speedscope for a .json FILE")
    add_json(p)
    p.set_defaults(fn=bench_pipeline)


def resolve(opts: Options) -> Options:
    """The preset's parameters where none were given, and the core to pin to."""
    preset = PRESETS[opts.preset]
    cpu = opts.cpu
    if cpu is None:
        allowed = os.sched_getaffinity(0)
        cpu = min(allowed) if len(allowed) > 1 else -1
    return dataclasses.replace(opts, devices=preset.devices if opts.devices is None else opts.devices,
                               points=preset.points if opts.points is None else opts.points,
                               interval=preset.interval if opts.interval is None else opts.interval, cpu=cpu)


def bench_pipeline(args: argparse.Namespace) -> int:
    given = options(Options, args)
    if given.preset not in PRESETS:
        return bad_args(f"--preset must be one of {', '.join(sorted(PRESETS))}")
    opts = resolve(given)
    assert opts.devices is not None and opts.points is not None and opts.interval is not None and opts.cpu is not None
    if min(opts.devices, opts.points) < 1 or opts.interval <= 0 or opts.seconds <= 0 or opts.warmup < 0 \
            or opts.grace < 0:
        return bad_args("--devices, --points, --interval and --seconds must be positive, --warmup and --grace not"
                        " negative")
    if opts.points > 2000:
        return bad_args("--points: at most 2000 float32 points per device")
    if opts.cpu >= 0 and opts.cpu not in os.sched_getaffinity(0):
        return bad_args(f"--cpu {opts.cpu}: not one of the cores allowed here {sorted(os.sched_getaffinity(0))}")
    if opts.profile and py_spy() is None:
        return bad_args("--profile needs py-spy, which is not installed: sudo /opt/gateway/venv/bin/pip install py-spy "
                        "(or, in a checkout, .venv/bin/pip install py-spy)")
    report = Report.of("pipeline", opts, args)

    def body(report: Report) -> None:
        with workdir("gateway-bench-pipeline-") as work:
            _bench(opts, work, report)

    return run(report, body)


# -- the run -------------------------------------------------------------------------------------


def _bench(opts: Options, work: Path, report: Report) -> None:
    from simulators.broker import Mosquitto

    assert opts.devices is not None and opts.points is not None and opts.interval is not None and opts.cpu is not None
    preset = PRESETS[opts.preset]
    at_preset = (opts.devices, opts.points, opts.interval, opts.synchronous) == \
        (preset.devices, preset.points, preset.interval, "full")
    pinned = f"pinned to core {opts.cpu}" if opts.cpu >= 0 else "not pinned"
    report.say(f"gateway bench pipeline ({opts.preset}): {opts.devices} device(s) x {opts.points} float32 points"
               f" every {opts.interval:g} s -> gateway run ({pinned}, synchronous={opts.synchronous}) -> mosquitto"
               f" -> subscriber; warm-up {opts.warmup:g} s, window {opts.seconds:g} s, grace {opts.grace:g} s")
    allowed = os.sched_getaffinity(0)
    helpers = allowed - {opts.cpu} or allowed
    os.sched_setaffinity(0, helpers)  # what this process starts (broker, simulators, subscriber) runs there
    try:
        with Mosquitto(work) as broker, contextlib.ExitStack() as stack:
            ports: list[int] = []
            sims: list[Child] = []
            for first in range(0, opts.devices, DEVICES_PER_SIMULATOR):
                count = min(DEVICES_PER_SIMULATOR, opts.devices - first)
                sim = stack.enter_context(ready_process(
                    "gateway.bench.wire", ["modbus", "--host", HOST, "--count", str(count), "--size",
                                           str(2 * opts.points)], work / f"simulator-{first}.log"))
                sims.append(sim)
                ports += range(sim.port, sim.port + count)
            assert broker.proc is not None
            others = {"broker": [broker.proc.pid], "simulators": [s.pid for s in sims]}
            config = work / "gateway.toml"
            config.write_text(config_text(work / "data", broker.port, ports, opts))
            measured = _measure("gateway", [sys.executable, "-m", "gateway", "run", "-c", str(config)], SITE,
                                broker.port, others, opts, work, report)
            measured["store"] = store_cost(work / "data" / "gateway.db")
            base = None
            if opts.baseline:
                report.say("measuring the baseline (pymodbus + json + aiomqtt QoS 1, no store) ...")
                argv = [sys.executable, "-m", "gateway.bench.pipeline_baseline", "publish", "--broker",
                        str(broker.port), "--root", f"{PREFIX}/baseline", "--points", str(opts.points), "--interval",
                        repr(opts.interval), "--ports", ",".join(map(str, ports))]
                base = _measure("baseline", argv, "baseline", broker.port, others, opts, work, None)
    finally:
        os.sched_setaffinity(0, allowed)
    _report(opts, report, measured, base, preset if at_preset else None)


def config_text(data_dir: Path, broker_port: int, ports: Sequence[int], opts: Options) -> str:
    """The site config: device ``i`` on its own simulated device at ``ports[i]``, float32 points packed."""
    assert opts.points is not None and opts.interval is not None
    points = "".join(f'[[devices.points]]\nid = "p{i:04d}"\ntable = "holding"\naddress = {2 * i}\ntype = "float32"\n\n'
                     for i in range(opts.points))
    text = [f'[site]\nid = "{SITE}"\n', f'[mqtt]\nhost = "{HOST}"\nport = {broker_port}\ntopic_prefix = "{PREFIX}"\n'
            "reconnect_min = 0.1\nreconnect_max = 1.0\n", f"[store]\ndata_dir = {json.dumps(str(data_dir))}\n"
            f'synchronous = "{opts.synchronous}"\n', '[log]\nlevel = "warning"\nformat = "json"\n']
    for i, port in enumerate(ports):
        text.append(f'[[buses]]\nid = "bus-{i}"\ndriver = "modbus_tcp"\nhost = "{HOST}"\nport = {port}\n'
                    'timeout = "2s"\n')
        text.append(f'[[devices]]\nid = "dev-{i}"\nbus = "bus-{i}"\ninterval = "{opts.interval * 1000:g}ms"\n\n'
                    + points)
    return "\n".join(text)


def _measure(label: str, argv: list[str], site: str, broker_port: int, others: dict[str, list[int]], opts: Options,
             work: Path, report: Report | None) -> dict[str, Any]:
    """Start the publisher, wait for its first delivery and the warm-up, measure one window, then the grace."""
    assert opts.cpu is not None
    log_path = work / f"{label}.log"
    topic = f"{PREFIX}/{site}/#"
    with ready_process("gateway.bench.pipeline_baseline", ["subscribe", str(broker_port), topic],
                       work / f"subscriber-{label}.log") as sub:
        cpu = opts.cpu
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log_file,
                                    preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu >= 0 else None)
        try:
            started = time.monotonic()
            while int(sub.ask("count").split()[1]) == 0:
                _alive(proc, label, log_path)
                if time.monotonic() - started > READY_TIMEOUT:
                    raise TimeoutError(f"{label}: nothing delivered within {READY_TIMEOUT:g}s{log_tail(log_path)}")
                time.sleep(0.1)
            first_delivery = time.monotonic() - started
            if report is not None:
                report.say(f"{label}: first points at the broker {first_delivery:.2f} s after spawn; warming up ...")
            _sleep(proc, opts.warmup, label, log_path)
            helpers = {**others, "subscriber": [sub.pid]}
            helpers_cpu0 = {name: sum(cpu_seconds(p) for p in pids) for name, pids in helpers.items()}
            with _profiled(proc.pid, opts.profile if report is not None else None, work) as profile:
                t0, cpu0 = time.time(), cpu_seconds(proc.pid)
                _sleep(proc, opts.seconds, label, log_path)
                t1, cpu1 = time.time(), cpu_seconds(proc.pid)
                rss, peak = memory_mb(proc.pid)
            helpers_cpu = {name: 100 * (sum(cpu_seconds(p) for p in pids) - helpers_cpu0[name]) / (t1 - t0)
                           for name, pids in helpers.items()}
            _sleep(proc, opts.grace, label, log_path)
            seen = json.loads(sub.ask(f"stop {t0!r} {t1!r}", timeout=120).partition(" ")[2])
        finally:
            stop_process(proc)
    window = t1 - t0
    assert opts.devices is not None and opts.points is not None and opts.interval is not None
    return {"window_s": window, "first_delivery_s": first_delivery, "points": seen["points_arrived_in_window"],
            "points_per_s": seen["points_arrived_in_window"] / window,
            "polled_points": seen["points_polled_in_window"],
            "expected_points": round(opts.devices * opts.points * window / opts.interval),
            "cpu_s": cpu1 - cpu0, "rss_mb": rss, "peak_rss_mb": peak, "latency": seen.pop("latency"),
            "helpers_cpu_percent": helpers_cpu, "subscriber": seen, "profile": profile}


def store_cost(path: Path) -> dict[str, Any]:
    """What a point costs on disk, read off the daemon's store after it stopped: the readings history holds every
    poll, and an outbox row waiting for the broker holds the same points body (plus a row's few fixed fields)."""
    from gateway.store import Store

    store = Store(path, read_only=True)
    try:
        rows, body, points = store.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(points)), 0),"
            " COALESCE(SUM((SELECT COUNT(*) FROM json_each(points))), 0) FROM samples").fetchone()
        used = store.used_bytes()
    finally:
        store.close()
    return {"history_polls": rows, "history_points": points, "used_bytes": used,
            "body_bytes_per_point": round(body / points, 2) if points else None,
            "store_bytes_per_history_point": round(used / points, 2) if points else None}


def _alive(proc: subprocess.Popen[bytes], label: str, log_path: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{label} exited with code {proc.returncode}{log_tail(log_path)}")


def _sleep(proc: subprocess.Popen[bytes], seconds: float, label: str, log_path: Path) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        _alive(proc, label, log_path)
        time.sleep(min(left, 0.1))
    _alive(proc, label, log_path)


# -- py-spy --------------------------------------------------------------------------------------


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


@contextlib.contextmanager
def _profiled(pid: int, path: str | None, work: Path) -> Iterator[dict[str, Any]]:
    """py-spy attached to ``pid`` for the block (on the helpers' cores, not blocking the daemon)."""
    found: dict[str, Any] = {}
    if path is None:
        yield found
        return
    spy = py_spy()
    assert spy is not None
    fmt = "speedscope" if path.endswith(".json") else "raw"
    with (work / "py-spy.log").open("wb") as log:
        proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--format", fmt, "--output", path,
                                 "--nonblocking", "--rate", "100"], stdout=log, stderr=log)
    time.sleep(0.5)  # attached before the window opens
    try:
        yield found
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on ^C
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not Path(path).exists():
        raise RuntimeError(f"py-spy failed (exit code {proc.returncode}){log_tail(work / 'py-spy.log')}")
    found.update(file=path, format=fmt, **(top_functions(Path(path).read_text()) if fmt == "raw" else {}))


def _frame(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:123)`` -> ``func (pkg/mod.py)``: one name per function."""
    match = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", frame.strip())
    if not match:
        return frame.strip()
    return f"{match[1]} ({'/'.join(Path(match[2]).parts[-2:])})"


def top_functions(collapsed: str, top: int = TOP) -> dict[str, Any]:
    """Samples, and the top functions by own samples (the leaf) and by total (anywhere on the stack), in %."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "percent": round(100 * n / samples, 2)} for f, n in counter.most_common(top)]

    return {"samples": samples, "top_own": share(own) if samples else [], "top_total": share(total) if samples else []}


# -- reporting -----------------------------------------------------------------------------------


def _report(opts: Options, report: Report, gw: dict[str, Any], base: dict[str, Any] | None,
            preset: Preset | None) -> None:
    from gateway.core.text import table

    def derive(prefix: str, run: dict[str, Any]) -> dict[str, float | None]:
        of = "baseline." if prefix else ""
        return {"cpu_s_per_1k_points": report.derive(f"{prefix}cpu_s_per_1k_points",
                                                     ratio(1000 * run["cpu_s"], run["points"]),
                                                     f"1000 * {of}cpu_s / {of}points"),
                "delivered_percent": report.derive(f"{prefix}delivered_percent",
                                                   ratio(100 * run["polled_points"], run["expected_points"]),
                                                   f"100 * {of}polled_points / {of}expected_points")}

    ours = derive("", gw)
    theirs = derive("baseline_", base) if base is not None else {}
    versus = report.derive("cpu_per_1k_vs_baseline", ratio(ours["cpu_s_per_1k_points"],
                                                           theirs.get("cpu_s_per_1k_points")),
                           "cpu_s_per_1k_points / baseline_cpu_s_per_1k_points") if base is not None else None
    profile = gw.pop("profile") or None
    report.figure(**gw, profile=profile, baseline=base and {k: v for k, v in base.items() if k != "profile"})
    if gw["polled_points"] == 0:
        report.problem("no point polled in the window reached the subscriber")
    if gw["subscriber"]["malformed"]:
        report.problem(f"{gw['subscriber']['malformed']} telemetry item(s) without a numeric ts or points")
    runs = [(gw, ours), *([(base, theirs)] if base is not None else [])]

    def row(label: str, fn: Any) -> tuple[str, ...]:
        return (label, *(fn(r, d) for r, d in runs))

    rows = [
        row("points at the broker in the window (counted)", lambda r, d: f"{r['points']:,}"),
        row("points/s delivered", lambda r, d: num(r["points_per_s"], 0)),
        row("points polled in the window / expected",
            lambda r, d: f"{r['polled_points']:,} / {r['expected_points']:,}"),
        row("delivered % (derived)", lambda r, d: num(d["delivered_percent"], 3)),
        row("CPU s in the window (/proc utime+stime)", lambda r, d: num(r["cpu_s"], 2)),
        row("CPU s per 1k points (derived)", lambda r, d: num(d["cpu_s_per_1k_points"], 4)),
        row("RSS / peak RSS, MB (/proc status)", lambda r, d: f"{num(r['rss_mb'])} / {num(r['peak_rss_mb'])}"),
        row("poll -> broker p50 / p99 ms (computed)",
            lambda r, d: f"{num(r['latency']['p50_ms'])} / {num(r['latency']['p99_ms'])}"),
        row("duplicates", lambda r, d: str(r["subscriber"]["duplicates"])),
        row("helpers' CPU % of a core: broker / sims / sub",
            lambda r, d: " / ".join(num(r["helpers_cpu_percent"][k], 0) for k in ("broker", "simulators",
                                                                                  "subscriber"))),
    ]
    report.say("", table(rows, ["", "gateway run", *(["baseline"] if base else [])]),
               "latency = arrival at the subscriber - the message's poll ts; delivered % = points whose poll ts is in"
               f" the window that arrived by {opts.grace:g} s after it, over devices x points x window / interval",
               *([f"gateway CPU per 1k points vs the baseline's (derived): {gain(versus)}"] if base else []))
    cost = gw.get("store") or {}
    if cost.get("history_points"):
        report.say(f"store: {num(cost['body_bytes_per_point'])} B per point in a poll's body (an outbox row waiting"
                   f" for the broker, and the history row, hold the same bytes); whole store / points in history ="
                   f" {num(cost['store_bytes_per_history_point'])} B (computed, {cost['history_points']:,} points)")
    if profile and profile.get("top_own"):
        report.say("", f"py-spy, {profile['samples']:,} samples over the window ({profile['file']}):",
                   table([(p["function"], f"{p['percent']:.1f}") for p in profile["top_own"]],
                         ["function (own samples)", "%"]))
    if preset is None:
        report.say("", f"targets: none printed (they hold at the {opts.preset} preset's parameters only)")
        return
    values = {"points_per_s": gw["points_per_s"], "rss_mb": gw["rss_mb"], **ours}
    for figure, what, op, value, unit in preset.targets:
        report.target(figure, what, op, value, values[figure], unit)

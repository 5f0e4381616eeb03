"""`gateway bench soak`: the daemon left running with a building's worth of devices; does anything creep?

``gateway run`` polls ``--devices`` simulated Modbus TCP devices (their own process, counting
registers) and uplinks to a real Mosquitto; with the ``vision`` extra installed and the pinned models
fetched, a camera watching a still scene is added (faces, plates, falls), else the run says "no
camera". Every ``--sample`` seconds the bench reads, from outside: the daemon's resident memory and
open descriptors (/proc; descriptors as the least of three quick reads, so a connection being served
at that instant is not counted), the outbox depth (the store, read only), the age of the daemon's
heartbeat in the store, and how long the control socket takes to answer a command the daemon refuses
at once (a round trip through its event loop: an upper bound of the loop's lag). After a warm-up
(a quarter of the run, at most a minute) a least-squares line through the samples gives the growth
per hour. Targets: RSS < 5 MB/h, no descriptor growth; a missed one makes the exit status 1.

Light at import (the CLI registers it): the simulators and the store are imported when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.bench.harness import (
    HOST,
    Report,
    add_json,
    bad_args,
    latency_ms,
    log_tail,
    memory_mb,
    num,
    options,
    run,
    spawn_daemon,
    stop_process,
    workdir,
)

TARGET_RSS_MB_PER_H = 5.0
TARGET_FDS_PER_H = 0.0
WARMUP_MAX = 60.0
PING = json.dumps({"cmd": "read", "device": "soak-no-such-device"}).encode() + b"\n"
VISION_MODULES = ("cv2", "numpy", "onnxruntime", "ai_edge_litert", "cryptography")


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    minutes: float = 10.0
    devices: int = 100
    points: int = 20
    interval: float = 1.0
    sample: float = 30.0
    camera: bool = True

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def warmup(self) -> float:
        return min(WARMUP_MAX, self.seconds / 4)


def add_command(bench: Any) -> None:
    """`gateway bench soak` on the bench subparsers."""
    p = bench.add_parser("soak", help="the daemon for N minutes with many devices: RSS, fds, outbox, loop lag; slopes")
    p.add_argument("--minutes", type=float, default=Options.minutes)
    p.add_argument("--devices", type=int, default=Options.devices)
    p.add_argument("--points", type=int, default=Options.points, help="points per device")
    p.add_argument("--interval", type=float, default=Options.interval, help="poll interval of every device, s")
    p.add_argument("--sample", type=float, default=Options.sample, help="seconds between samples")
    p.add_argument("--no-camera", dest="camera", action="store_false", help="no camera even if vision is installed")
    add_json(p)
    p.set_defaults(fn=bench_soak)


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    """Seconds since the daemon's first poll was stored."""
    rss_mb: float
    fds: int | None
    outbox: int | None
    heartbeat_age_s: float | None
    answer_ms: float | None
    delivered: int | None
    camera_rss_mb: float | None


def bench_soak(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if opts.minutes <= 0 or opts.devices < 1 or opts.points < 1 or opts.interval <= 0 or opts.sample <= 0:
        return bad_args("--minutes, --devices, --points, --interval and --sample must be positive")
    if opts.sample > opts.seconds / 2:
        return bad_args("--sample must leave at least two samples in --minutes")
    report = Report.of("soak", opts, args)

    def body(report: Report) -> None:
        with workdir("gateway-bench-soak-") as work:
            _bench(opts, work, report)

    return run(report, body)


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) pairs, per hour; None for fewer than two distinct times."""
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return 3600 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def _bench(opts: Options, work: Path, report: Report) -> None:
    from gateway.bench.modbus import bank_size, config_text, point_map, simulator
    from simulators.broker import Mosquitto

    points = point_map(opts.points)
    with _camera(work, opts) as (camera_toml, camera_note), Mosquitto(work) as broker, \
            simulator(opts.devices, bank_size(points), work) as sim:
        report.params["camera"] = camera_note
        report.say(f"gateway bench soak: {opts.minutes:g} min, `gateway run` polling {opts.devices} Modbus TCP devices"
                   f" x {opts.points} points every {opts.interval:g} s (simulated in their own process), uplink to a"
                   f" real Mosquitto on 127.0.0.1; {camera_note}; a sample every {opts.sample:g} s, the first"
                   f" {opts.warmup:g} s a warm-up left out of the slopes", "")
        text = config_text(work / "data", sim.port, opts.devices, points, interval=f"{opts.interval}s")
        text = text.replace("[mqtt]\nenabled = false\n", f'[mqtt]\nhost = "{HOST}"\nport = {broker.port}\n')
        config = work / "gateway.toml"
        config.write_text(text + camera_toml, encoding="utf-8")
        log_path = work / "daemon.log"
        proc = spawn_daemon(config, log_path)
        try:
            samples = _soak(opts, proc, work / "data", log_path, report)
        finally:
            stop_process(proc)
    _figures(opts, samples, report)


def _soak(opts: Options, proc: subprocess.Popen[bytes], data: Path, log_path: Path, report: Report) -> list[Sample]:
    db, control = data / "gateway.db", data / "control.sock"
    deadline = time.monotonic() + 60
    while _scalar(db, "SELECT COUNT(*) FROM samples") in (None, 0):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gateway run did not start polling (exit {proc.poll()}){log_tail(log_path)}")
        time.sleep(0.1)
    started = time.monotonic()
    samples: list[Sample] = []
    while True:
        due = started + len(samples) * opts.sample
        if due > started + opts.seconds + 1e-6:
            return samples
        time.sleep(max(0.0, due - time.monotonic()))
        if proc.poll() is not None:
            raise RuntimeError(f"gateway run exited with code {proc.returncode} during the soak{log_tail(log_path)}")
        samples.append(_sample(time.monotonic() - started, proc.pid, db, control))
        s = samples[-1]
        report.say(f"  {s.t:7.0f} s  RSS {s.rss_mb:6.1f} MB  fds {s.fds}  outbox {s.outbox}  control answer"
                   f" {num(s.answer_ms, 1)} ms  heartbeat age {num(s.heartbeat_age_s, 1)} s  delivered {s.delivered}"
                   + (f"  camera worker RSS {s.camera_rss_mb:.0f} MB" if s.camera_rss_mb is not None else ""))


def _fds(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


def _sample(t: float, pid: int, db: Path, control: Path) -> Sample:
    reads = []
    for _ in range(3):
        reads.append(_fds(pid))
        time.sleep(0.02)
    fds = min((n for n in reads if n is not None), default=None)
    rss = memory_mb(pid)[0]
    answers = [a for a in (_answer_ms(control) for _ in range(3)) if a is not None]
    beat = _scalar(db, "SELECT value FROM meta WHERE key = 'daemon'")
    age = time.time() - float(json.loads(beat)["heartbeat"]) if isinstance(beat, str) else None
    delivered = _scalar(db, "SELECT value FROM counters WHERE name = 'uplink.delivered'")
    camera = [memory_mb(child)[0] for child in _children(pid)]
    return Sample(t, rss, fds, _scalar(db, "SELECT COUNT(*) FROM outbox"), age,
                  sorted(answers)[len(answers) // 2] if answers else None, delivered, sum(camera) if camera else None)


def _scalar(db: Path, sql: str) -> Any:
    with contextlib.suppress(sqlite3.Error), \
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None
    return None


def _answer_ms(control: Path) -> float | None:
    """Milliseconds from connecting to the control socket to the daemon's one-line answer."""
    started = time.perf_counter()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(control))
            sock.sendall(PING)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                reply += chunk
    except OSError:
        return None
    return 1000 * (time.perf_counter() - started)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@contextlib.contextmanager
def _camera(work: Path, opts: Options) -> Iterator[tuple[str, str]]:
    """The camera's config and a camera simulator showing a still scene, or why there is none."""
    import importlib.util

    if not opts.camera:
        yield "", "no camera (--no-camera)"
        return
    missing = [m for m in VISION_MODULES if importlib.util.find_spec(m) is None]
    from gateway.demo_camera import CACHE

    models = CACHE / "vision" / "models"
    if missing:
        yield "", f"no camera (the vision extra is not installed: no {', '.join(missing)})"
        return
    from models.fetch import load_manifest, status

    unfetched = [a.name for a in load_manifest().values() if a.section == "models" and status(a, models) != "ok"]
    if unfetched:
        yield "", f"no camera (models not fetched into {models}: {', '.join(unfetched)}; `gateway models fetch`)"
        return
    import cv2
    import numpy as np

    from models.gallery import create_key
    from simulators.broker import free_port

    (work / "data").mkdir()
    (work / "data" / "models").symlink_to(models)
    create_key(work / "faces.key")
    scene = work / "lobby.png"
    cv2.imwrite(str(scene), np.full((480, 640, 3), 115, np.uint8))
    port = free_port()
    log = (work / "camera.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "camera", "--image", str(scene), "--port",
                             str(port), "--fps", "10"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the camera simulator did not start{log_tail(work / 'camera.log')}")
            time.sleep(0.1)
        yield (f'\n[vision.faces]\nkey_file = "{work / "faces.key"}"\n\n[[cameras]]\nid = "lobby"\n'
               f'url = "http://{HOST}:{port}/stream.mjpg"\nfps = 5\ndetect = ["faces", "plates", "falls"]\n',
               "a camera (faces, plates, falls at 5 fps) on a still simulated MJPEG scene")
    finally:
        stop_process(proc)
        log.close()


def _figures(opts: Options, samples: list[Sample], report: Report) -> None:
    fit = [s for s in samples if s.t >= opts.warmup] or samples

    def slope(field: str) -> float | None:
        return slope_per_hour([(s.t, float(v)) for s in fit if (v := getattr(s, field)) is not None])

    def spread(field: str) -> dict[str, Any]:
        values = [float(v) for s in samples if (v := getattr(s, field)) is not None]
        return {"first": values[0] if values else None, "last": values[-1] if values else None,
                "min": min(values, default=None), "max": max(values, default=None)}

    answers = sorted(s.answer_ms / 1000 for s in samples if s.answer_ms is not None)
    slopes = {"rss_mb_per_h": slope("rss_mb"), "fds_per_h": slope("fds"), "outbox_per_h": slope("outbox"),
              "camera_rss_mb_per_h": slope("camera_rss_mb")}
    report.figure(samples=[asdict(s) for s in samples], fitted_samples=len(fit), warmup_s=opts.warmup,
                  slopes=slopes, rss_mb=spread("rss_mb"), fds=spread("fds"), outbox=spread("outbox"),
                  heartbeat_age_s=spread("heartbeat_age_s"), control_answer=latency_ms(answers),
                  camera_rss_mb=spread("camera_rss_mb"), delivered=samples[-1].delivered if samples else None)
    report.target("slopes.rss_mb_per_h", "daemon RSS growth (least squares, after the warm-up)", "<",
                  TARGET_RSS_MB_PER_H, slopes["rss_mb_per_h"], " MB/h")
    report.target("slopes.fds_per_h", "daemon descriptor growth (least squares, after the warm-up)", "<=",
                  TARGET_FDS_PER_H, slopes["fds_per_h"], "/h")
    from gateway.core.text import table

    rows = [("daemon RSS, MB", *_row(report.figures["rss_mb"]), num(slopes["rss_mb_per_h"], 2)),
            ("daemon open descriptors", *_row(report.figures["fds"], 0), num(slopes["fds_per_h"], 2)),
            ("outbox depth", *_row(report.figures["outbox"], 0), num(slopes["outbox_per_h"], 0)),
            ("heartbeat age in the store, s", *_row(report.figures["heartbeat_age_s"]), "-"),
            ("camera worker RSS, MB", *_row(report.figures["camera_rss_mb"]), num(slopes["camera_rss_mb_per_h"], 2))]
    answer = report.figures["control_answer"]
    report.say("", table(rows, ["", "first", "last", "min", "max", "slope per hour"]),
               f"control socket answer (an upper bound of event-loop lag): p50 {num(answer['p50_ms'], 1)} ms,"
               f" p99 {num(answer['p99_ms'], 1)} ms, max {num(answer['max_ms'], 1)} ms over {answer['n']} answers;"
               f" messages delivered {report.figures['delivered']}; {len(samples)} samples, {len(fit)} after the"
               f" {opts.warmup:g} s warm-up in the slopes")
    if samples and math.isfinite(samples[-1].t) and samples[-1].t < 600:
        report.say("(a run this short shows a leak only if it is large: the slopes of a few minutes are noisy)")


def _row(spread: dict[str, Any], digits: int = 1) -> tuple[str, str, str, str]:
    return (num(spread["first"], digits), num(spread["last"], digits), num(spread["min"], digits),
            num(spread["max"], digits))

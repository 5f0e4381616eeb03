"""`gateway bench cameras`: what each camera costs when the models are shared, and what it did before.

For 1, 2 and 4 cameras (``--cameras``) the bench starts the real processes the daemon starts: the
shared inference services (``python -m models.service FAMILY``, one per family) and one camera worker
(``python -m models.worker``) per camera, each given its job exactly as ``gateway.cameras`` gives it.
Every camera runs all three detectors on a video file played in real time (a person walking past a
parked car with a plate; 640x480, 10 fps) and analyses 5 frames a second with the motion gate off, so
every analysed frame goes through every model. The old layout (``shared_models = false``: each worker
loads its own models) runs beside it for the ratio.

Measured, after a warm-up: the resident memory (RSS) and the proportional set size (PSS, from
/proc/PID/smaps_rollup) of every vision process, summed; the milliseconds each analysed frame spent in
the models (the worker's ``frame_ms`` status field: from the frame handed to the first analyser to the
last analyser's answer, so it includes the trip to the services), p50 and p99 per camera and over all.
Derived: the memory the 2nd..Nth camera adds (total at N minus total at 1, over N - 1), and the p99 at
N cameras over the p99 at one.

Targets (issue 17): each added camera <= 60 MB, 4 cameras <= 700 MB in total, p99 at 4 cameras
<= 1.5x one camera's. The memory targets are checked on PSS: a shared library's pages (Python, NumPy,
OpenCV, ONNX Runtime) are in RAM once however many processes map them, and RSS counts them again in
each process, so a sum of RSS overstates what the box needs; PSS splits each shared page between the
processes using it, so the sum is what the vision processes take from the box. RSS is printed beside.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench.harness import Report, add_json, bad_args, latency_ms, ratio, run, stop_process

DEFAULT_CONFIG = "/etc/gateway/config.toml"
DETECT = ["faces", "plates", "falls"]
ADDED_TARGET_MB = 60.0
TOTAL_TARGET_MB = 700.0
TOTAL_AT = 4
P99_TARGET = 1.5


def add_command(bench: Any) -> None:
    p = bench.add_parser("cameras", help="memory and frame latency of N cameras with shared models (and without)")
    p.add_argument("-c", "--config", type=Path, default=Path(DEFAULT_CONFIG), help="config file (TOML)")
    p.add_argument("--data-dir", type=Path, help="data dir holding models/ (default: [store] data_dir of the config)")
    p.add_argument("--cameras", default="1,2,4", help="camera counts to run, comma separated (default 1,2,4)")
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds per run, after the warm-up")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of streaming before measuring")
    p.add_argument("--fps", type=float, default=5.0, help="frames analysed per second per camera")
    p.add_argument("--layouts", default="shared,local",
                   help="shared (one service per family) and/or local (models in every worker), comma separated")
    p.add_argument("--pool", type=int, default=0, help="threads of each service (default 0: as the daemon, by cores)")
    p.add_argument("--detect", default=",".join(DETECT),
                   help="detectors every camera runs, comma separated (default faces,plates,falls): measure a site's "
                        "own layout, e.g. faces,falls for a lobby, plates for a gate")
    p.add_argument("--serial", action="store_true",
                   help="a worker calls its families one after another (as before), not at once")
    add_json(p)
    p.set_defaults(fn=bench_cameras)


def bench_cameras(args: argparse.Namespace) -> int:
    from gateway.bench.vision import _data_dir

    try:
        counts = sorted({int(c) for c in str(args.cameras).split(",") if c.strip()})
        layouts = [x.strip() for x in str(args.layouts).split(",") if x.strip()]
    except ValueError:
        return bad_args("--cameras takes numbers like 1,2,4")
    if not counts or counts[0] < 1 or counts[-1] > 16:
        return bad_args("--cameras: between 1 and 16 cameras")
    if not layouts or set(layouts) - {"shared", "local"}:
        return bad_args("--layouts: shared and/or local")
    if args.seconds <= 0 or args.warmup < 0 or not 0 < args.fps <= 30:
        return bad_args("--seconds must be positive, --warmup not negative, --fps in (0, 30]")
    detect = list(dict.fromkeys(d.strip() for d in str(args.detect).split(",") if d.strip()))
    if not detect or set(detect) - set(DETECT):
        return bad_args(f"--detect: one or more of {','.join(DETECT)}")
    data_dir = _data_dir(args)
    setup = Setup(detect, args.fps, args.pool, not args.serial)
    params = {"data_dir": str(data_dir), "cameras": counts, "layouts": layouts, "seconds": args.seconds,
              "warmup": args.warmup, "fps": args.fps, "detect": detect, "resolution": "640x480",
              "motion_gate": False, "cores": len(os.sched_getaffinity(0)), "pool": args.pool,
              "families_at_once": setup.parallel}
    report = Report.of("cameras", params, args)
    return run(report, lambda r: _bench(r, data_dir, counts, layouts, args.seconds, args.warmup, setup))


@dataclass(frozen=True)
class Setup:
    """What every camera of a run does."""

    detect: list[str]
    fps: float
    pool: int
    parallel: bool
    """A worker calls its families' services at once (the daemon's way), or one after another (``--serial``)."""

    @property
    def families(self) -> list[str]:
        from models.hosting import DETECTOR_FAMILY

        return sorted({DETECTOR_FAMILY[d] for d in self.detect})


# -- the processes -----------------------------------------------------------------------------


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB from /proc/PID/smaps_rollup; (0, 0) for a process gone."""
    found = {"Rss": 0, "Pss": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in found:
                found[key] = int(rest.split()[0])
    return found["Rss"], found["Pss"]


@dataclass
class Child:
    """A running vision process and what it said on stdout (a thread reads it)."""

    role: str
    proc: subprocess.Popen[bytes]
    lines: list[dict[str, Any]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def start_reading(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                with contextlib.suppress(ValueError):
                    msg = json.loads(raw)
                    if isinstance(msg, dict):
                        msg["_at"] = time.monotonic()
                        self.lines.append(msg)

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()


def _spawn(role: str, args: list[str], job: bytes) -> Child:
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdin is not None
    proc.stdin.write(job)
    proc.stdin.close()
    child = Child(role, proc)
    child.start_reading()
    return child


def _wait(children: list[Child], done: Any, what: str, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while not all(done(c) for c in children):
        dead = [c.role for c in children if c.proc.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {within:g} s")
        time.sleep(0.1)


def clip(path: Path, testdata: Path) -> Path:
    """A 5 s loop, 640x480 at 10 fps: a person walking past a parked car's plate (the plate only when the
    plate renderer of the plate evaluation is installed; the faces and pose models run on every frame)."""
    import cv2
    import numpy as np

    from gateway.bench.vision_common import scene

    portrait = cv2.imread(str(testdata / "astronaut.png"))
    if portrait is None:
        portrait = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    plate = None
    with contextlib.suppress(Exception):
        from simulators.plate_scenes import render_plate

        plate = np.asarray(render_plate("京A12345"), dtype=np.uint8)
    base = scene(portrait, 640, 480)
    video = path / "camera.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10, (640, 480))
    for k in range(50):
        frame = np.roll(base, (k % 25 - 12) * 8, axis=1).copy()
        if plate is not None:
            h, w = plate.shape[:2]
            small = cv2.resize(plate, (160, max(1, round(h * 160 / w))))
            frame[400:400 + small.shape[0], 440:600] = small
        writer.write(frame)
    writer.release()
    return video


@contextlib.contextmanager
def cameras(work: Path, video: Path, key: Path, n: int, layout: str, setup: Setup) -> Iterator[list[Child]]:
    """The services (for the shared layout) and ``n`` camera workers, started and ready; stopped after."""
    from gateway.cameras import CameraWorker
    from gateway.supervisor import Supervisor
    from gateway.vision_services import VisionServices
    from models.config import CameraConfig, VisionConfig

    class Quiet:
        def event(self, _event: Any) -> None: ...
        def meta(self, _key: str, _value: Any) -> None: ...

    sink: Any = Quiet()
    vision = VisionConfig.model_validate({"faces": {"key_file": str(key)}, "shared_models": layout == "shared"})
    services = VisionServices(work, sink, Supervisor(sink))
    children: list[Child] = []
    try:
        if layout == "shared":
            for family in setup.families:
                job = json.dumps({"vision": vision.model_dump(mode="json"), "data_dir": str(work),
                                  "socket": str(services.dir / f"{family}.sock"), "pool": setup.pool}).encode() + b"\n"
                children.append(_spawn(f"service:{family}", ["-m", "models.service", family], job))
            _wait(children, lambda c: any(m.get("t") == "ready" for m in c.lines), "service ready")
            broken = [m for c in children for m in c.lines if m.get("error")]
            if broken:
                raise RuntimeError(f"a service cannot load its models: {broken[0]['error']}")
        workers = []
        for i in range(n):
            camera = CameraConfig.model_validate({"id": f"cam{i + 1}", "url": str(video), "fps": setup.fps,
                                                  "detect": setup.detect, "motion": {"enabled": False}})
            job = CameraWorker(camera, vision, work, sink, services=services).job()
            if not setup.parallel:
                job = json.dumps({**json.loads(job), "parallel": False}).encode() + b"\n"
            workers.append(_spawn(f"camera:{camera.id}", ["-m", "models.worker"], job))
        children += workers

        def streaming(c: Child) -> bool:
            errors = [m for m in c.lines if m.get("kind") == "camera.error"]
            if errors and errors[0]["payload"].get("stage") == "start":
                raise RuntimeError(f"{c.role}: {errors[0]['payload'].get('error')}")
            return any(m.get("t") == "status" and m.get("analysed", 0) > 0 for m in c.lines)

        _wait(workers, streaming, "camera analysing")
        yield children
    finally:
        for child in children:
            stop_process(child.proc, grace=5)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat); 0 for one gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_stats(sock: Path) -> dict[str, Any]:
    """A service's own counters, asked with the daemon's ping: calls, seconds run and waited per model."""
    import socket

    from models import remote

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(remote.pack(remote.dumps(("ping",)), []))
        reply = remote.loads(remote.recv_message(s)[0])
    return dict(reply[1]) if isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "pong" else {}


def _where(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per model of a service over the window: calls, mean ms running, mean ms waiting (for a pool slot, shared
    by the service's models, plus for the model itself when it is lent to one call at a time)."""
    out: dict[str, Any] = {}
    slot = after.get("slot_wait_s", 0.0) - before.get("slot_wait_s", 0.0)
    total = sum(m["calls"] - before.get("models", {}).get(n, {}).get("calls", 0)
                for n, m in after.get("models", {}).items())
    for name, m in after.get("models", {}).items():
        b = before.get("models", {}).get(name, {"calls": 0, "wait_s": 0.0, "run_s": 0.0})
        calls = m["calls"] - b["calls"]
        if calls <= 0:
            continue
        out[name] = {"calls": calls, "run_ms": round((m["run_s"] - b["run_s"]) * 1000 / calls, 2),
                     "wait_model_ms": round((m["wait_s"] - b["wait_s"]) * 1000 / calls, 2)}
    out["wait_slot_ms"] = round(slot * 1000 / total, 2) if total else 0.0
    out["pool"] = after.get("pool")
    return out


def measure(work: Path, video: Path, key: Path, n: int, layout: str, warmup: float, seconds: float,
            setup: Setup) -> dict[str, Any]:
    from gateway.vision_services import service_dir

    socks = {f: service_dir(work) / f"{f}.sock" for f in setup.families} if layout == "shared" else {}
    with cameras(work, video, key, n, layout, setup) as children:
        time.sleep(warmup)
        stats0 = {f: service_stats(p) for f, p in socks.items()}
        cpu0 = sum(cpu_s(c.proc.pid) for c in children)
        start = time.monotonic()
        samples: list[dict[str, tuple[int, int]]] = []
        while time.monotonic() - start < seconds:
            time.sleep(min(2.0, seconds / 4))
            samples.append({c.role: memory_kb(c.proc.pid) for c in children})
        end = time.monotonic()
        cpu1 = sum(cpu_s(c.proc.pid) for c in children)
        stats1 = {f: service_stats(p) for f, p in socks.items()}
        gone = [c.role for c in children if c.proc.poll() is not None]
        if gone:
            raise RuntimeError(f"{', '.join(gone)} died during the run")
        time.sleep(1.2)  # the status line that covers the end of the window
    last = samples[-1]
    per_camera = []
    everything: list[float] = []
    errors = 0
    rate = 0.0
    for child in children:
        if not child.role.startswith("camera:"):
            continue
        window = [m for m in child.lines if start <= m["_at"] <= end + 1.1]
        frames = [float(v) / 1000 for m in window if m.get("t") == "status" for v in m.get("frame_ms", [])]
        said = [m["_at"] for m in child.lines if m.get("t") == "status"]
        inside = [at for at in said if start <= at <= end + 1.1]
        before = [at for at in said if at < start]
        if inside and before:  # the frames of the window's status lines were analysed since the line before
            rate += len(frames) / (inside[-1] - before[-1])
        errors += sum(1 for m in window if m.get("kind") == "camera.error")
        everything += frames
        per_camera.append({"camera": child.role.removeprefix("camera:"), **latency_ms(frames),
                           "rss_mb": round(last[child.role][0] / 1024, 1),
                           "pss_mb": round(last[child.role][1] / 1024, 1)})
    services: dict[str, dict[str, Any]] = {
        c.role.removeprefix("service:"): {"rss_mb": round(last[c.role][0] / 1024, 1),
                                          "pss_mb": round(last[c.role][1] / 1024, 1)}
        for c in children if c.role.startswith("service:")}
    for family in services:
        services[family]["calls"] = _where(stats0.get(family, {}), stats1.get(family, {}))
    return {"layout": layout, "cameras": n,
            "rss_mb_total": round(sum(r for r, _ in last.values()) / 1024, 1),
            "pss_mb_total": round(sum(p for _, p in last.values()) / 1024, 1),
            "peak_pss_mb_total": round(max(sum(p for _, p in s.values()) for s in samples) / 1024, 1),
            "services": services, "per_camera": per_camera, "latency": latency_ms(everything),
            "analysed_per_s": round(rate, 2), "asked_per_s": round(n * setup.fps, 2),
            "cpu_cores_used": round((cpu1 - cpu0) / (end - start), 2),
            "camera_errors": errors}


# -- the report --------------------------------------------------------------------------------


def _bench(report: Report, data_dir: Path, counts: list[int], layouts: list[str], seconds: float, warmup: float,
           setup: Setup) -> None:
    from gateway.bench.vision_common import scratch
    from models.fetch import FetchError, model_path

    try:
        for name in ("yunet", "sface", "clp_det", "clp_rec", "pose_detection", "pose_landmark"):
            model_path(data_dir, name)
    except FetchError as exc:
        report.problem(f"models missing: {exc}")
        return
    runs: list[dict[str, Any]] = []
    with scratch(data_dir) as (work, key):
        video = clip(work, data_dir / "testdata")
        for layout in layouts:
            for n in counts:
                row = measure(work, video, key, n, layout, warmup, seconds, setup)
                runs.append(row)
                lat = row["latency"]
                report.say(f"{layout:>6} {n} camera{'s' if n > 1 else ' '}: PSS {row['pss_mb_total']:6.0f} MB, "
                           f"RSS {row['rss_mb_total']:6.0f} MB; frame p50 {_ms(lat['p50_ms'])} / "
                           f"p99 {_ms(lat['p99_ms'])} ms over {lat['n']} frames "
                           f"({row['analysed_per_s']:.1f} of {row['asked_per_s']:g}/s analysed, "
                           f"{row['cpu_cores_used']:.2f} of {os.cpu_count()} cores busy, "
                           f"{row['camera_errors']} camera.error)")
                for family, figures in row["services"].items():
                    calls = figures.get("calls", {})
                    parts = [f"{name} {c['calls']} calls {c['run_ms']:.1f} ms run + {c['wait_model_ms']:.1f} ms "
                             f"waiting for the model" for name, c in calls.items() if isinstance(c, dict)]
                    if parts:
                        report.say(f"        {family}: {'; '.join(parts)}; {calls.get('wait_slot_ms', 0):.1f} ms "
                                   f"a call waiting for one of {calls.get('pool')} threads")
                if row["analysed_per_s"] < 0.9 * row["asked_per_s"]:
                    report.say("        the CPU did not keep up: frames waited, so the latency is mostly queueing")
    report.figure(runs=runs)
    _derive(report, runs, counts, layouts)


def _ms(value: float | None) -> str:
    return "  -  " if value is None else f"{value:5.1f}"


def _find(runs: list[dict[str, Any]], layout: str, n: int) -> dict[str, Any] | None:
    return next((r for r in runs if r["layout"] == layout and r["cameras"] == n), None)


def _derive(report: Report, runs: list[dict[str, Any]], counts: list[int], layouts: list[str]) -> None:
    for layout in layouts:
        one, top = _find(runs, layout, counts[0]), _find(runs, layout, counts[-1])
        if one is None or top is None or counts[-1] == counts[0]:
            continue
        span = counts[-1] - counts[0]
        for metric in ("pss", "rss"):
            added = (top[f"{metric}_mb_total"] - one[f"{metric}_mb_total"]) / span
            report.derive(f"{layout}_added_{metric}_mb_per_camera", round(added, 1),
                          f"(runs[{layout},{counts[-1]}].{metric}_mb_total - runs[{layout},{counts[0]}]."
                          f"{metric}_mb_total) / {span}")
        p99 = ratio(top["latency"]["p99_ms"], one["latency"]["p99_ms"])
        report.derive(f"{layout}_p99_ratio", None if p99 is None else round(p99, 2),
                      f"runs[{layout},{counts[-1]}].latency.p99_ms / runs[{layout},{counts[0]}].latency.p99_ms")
    shared_top, local_top = _find(runs, "shared", counts[-1]), _find(runs, "local", counts[-1])
    if shared_top and local_top:
        saved = ratio(local_top["pss_mb_total"], shared_top["pss_mb_total"])
        report.derive("local_over_shared_pss", None if saved is None else round(saved, 2),
                      f"runs[local,{counts[-1]}].pss_mb_total / runs[shared,{counts[-1]}].pss_mb_total")
    if "shared" not in layouts:
        return
    derived = {k: v["value"] for k, v in report.derived.items()}
    if counts[-1] > counts[0]:
        report.say(f"shared: each camera after the first adds {derived['shared_added_pss_mb_per_camera']:.0f} MB "
                   f"PSS ({derived['shared_added_rss_mb_per_camera']:.0f} MB RSS), derived; p99 at "
                   f"{counts[-1]} cameras / p99 at {counts[0]}: {derived.get('shared_p99_ratio')}, derived")
        report.target("shared_added_pss_mb_per_camera", "memory each camera after the first adds (PSS)", "<=",
                      ADDED_TARGET_MB, derived["shared_added_pss_mb_per_camera"], " MB")
        if counts[0] == 1:
            report.target("shared_p99_ratio", f"frame p99 at {counts[-1]} cameras / at one", "<=", P99_TARGET,
                          derived.get("shared_p99_ratio"))
    at = _find(runs, "shared", TOTAL_AT)
    if at is not None:
        report.target(f"runs[shared,{TOTAL_AT}].pss_mb_total", f"vision memory with {TOTAL_AT} cameras (PSS)", "<=",
                      TOTAL_TARGET_MB, at["pss_mb_total"], " MB")
    if "local_over_shared_pss" in derived:
        report.say(f"local layout / shared at {counts[-1]} cameras (PSS): {derived['local_over_shared_pss']}x, derived")
    for row in runs:
        if row["layout"] == "shared" and row["camera_errors"]:
            report.problem(f"{row['camera_errors']} camera.error with {row['cameras']} cameras (shared)")

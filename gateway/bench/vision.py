"""`gateway bench vision`: milliseconds per vision stage (faces, plates, pose + falls) on one core.

Each model family is benched if its files are fetched and skipped with a note otherwise, so a site
that only runs faces can still bench them. Light at import (the CLI registers it): OpenCV, NumPy
and the models are imported when the bench runs, so the CLI works without the ``vision`` extra.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench import vision_faces, vision_plates, vision_pose
from gateway.bench.harness import Report, add_json, bad_args, ratio, run
from gateway.bench.vision_common import scene, scratch

if TYPE_CHECKING:
    import numpy as np

    Frame = np.ndarray[Any, Any]

RESOLUTIONS = ((640, 480), (1280, 720))
DEFAULT_CONFIG = "/etc/gateway/config.toml"


def add_command(bench: Any) -> None:
    """`gateway bench vision` on the bench subparsers."""
    p = bench.add_parser("vision", help="ms per stage (faces, plates, pose + falls) on one core; idle camera CPU")
    p.add_argument("-c", "--config", type=Path, default=Path(DEFAULT_CONFIG), help="config file (TOML)")
    p.add_argument("--data-dir", type=Path, help="data dir (default: [store] data_dir of the config)")
    p.add_argument("--image", type=Path, help="a portrait to paste into the frames (default: noise, no face)")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--idle", type=float, default=15.0, metavar="SECONDS",
                   help="also measure a real camera worker on a still scene this long, gated and not (0 = skip)")
    vision_plates.add_arguments(p)
    add_json(p)
    p.set_defaults(fn=bench_vision)


STAGES: dict[str, Callable[[Path, list[Frame], int], list[dict[str, Any]]]] = {
    "faces": vision_faces.measure, "plates": vision_plates.measure, "pose": vision_pose.measure}


def _line(label: str, stat: dict[str, float]) -> str:
    return f"   {label} {stat['median']:5.1f} / {stat['p90']:5.1f} ms"


def _print(report: Report, results: list[dict[str, Any]], repeat: int, skipped: dict[str, str]) -> None:
    report.say(f"one thread per model; median / p90 over {repeat} runs")
    for r in results:
        line = f"{r['resolution']:>9}"
        if "detect_ms" in r:
            line += "\n       ".join(vision_faces.lines(r))
        if "plate_detect_ms" in r:
            line += "\n          " + _line("plate detect", r["plate_detect_ms"]) + _line(
                "rectify+read per plate", r["plate_read_ms"])
            line += "".join("\n           " + text for text in vision_plates.lines(r))
        if "pose_detect_ms" in r:
            line += "".join("\n       " + text for text in vision_pose.lines(r))
        report.say(line)
    for stage, why in skipped.items():
        report.say(f"{stage}: skipped ({why})")
    vision_faces.targets(report, results)
    vision_pose.targets(report, results)
    vision_plates.targets(report, results)


def _data_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "data_dir", None) is not None:
        return Path(args.data_dir)
    from gateway.cli.common import load

    return Path(load(args).store.data_dir)


def bench_vision(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    image_path = Path(args.image) if getattr(args, "image", None) else None
    repeat = int(getattr(args, "repeat", None) or 30)
    idle = float(getattr(args, "idle", 15.0) or 0.0)
    if repeat < 1 or idle < 0:
        return bad_args("--repeat must be positive and --idle not negative")
    if image_path is not None and not image_path.is_file():
        return bad_args(f"cannot read {image_path}")
    vision_plates.configure(args)
    params = {"data_dir": str(data_dir), "image": None if image_path is None else str(image_path), "repeat": repeat,
              "idle": idle, "resolutions": [f"{w}x{h}" for w, h in RESOLUTIONS]}
    report = Report.of("vision", params, args)
    return run(report, lambda report: _bench(report, data_dir, image_path, repeat, idle))


def _bench(report: Report, data_dir: Path, image_path: Path | None, repeat: int, idle: float) -> None:
    import cv2
    import numpy as np

    from models.fetch import FetchError

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if image_path is not None:
        portrait = cv2.imread(str(image_path))
        if portrait is None:
            raise RuntimeError(f"cannot read {image_path}")
    else:
        rng = np.random.default_rng(0)
        portrait = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    results: list[dict[str, Any]] = [{"resolution": f"{w}x{h}"} for w, h in RESOLUTIONS]
    frames = [scene(portrait, w, h) for w, h in RESOLUTIONS]
    skipped: dict[str, str] = {}
    for stage, measure in STAGES.items():
        try:
            rows = measure(data_dir, frames, repeat)
        except FetchError as exc:
            skipped[stage] = str(exc)
            continue
        for row, extra in zip(results, rows, strict=True):
            row.update(extra)
    report.figure(stages=results, skipped=skipped, idle_camera=[])
    if len(skipped) == len(STAGES):
        report.problem("no model family to bench: " + "; ".join(skipped.values()))
        return
    _print(report, results, repeat, skipped)
    detectors = [{"pose": "falls"}.get(s, s) for s in STAGES if s not in skipped]
    if idle <= 0:
        return
    from gateway.bench.vision_idle import idle_cpu

    with scratch(data_dir) as (work, key):
        runs = [idle_cpu(work, image_path, seconds=idle, fps=5, stream_fps=10, gated=gated, detect=detectors,
                         key_file=key) for gated in (True, False)]
    report.figure(idle_camera=runs)
    gated, ungated = runs
    saved = report.derive("idle_gating_saves", ratio(ungated["cpu_percent_of_one_core"],
                                                     gated["cpu_percent_of_one_core"]),
                          "idle_camera[ungated].cpu_percent_of_one_core / idle_camera[gated].cpu_percent_of_one_core")
    report.say(f"idle camera ({'+'.join(detectors)}; still scene, 10 fps stream, 5 fps analysed, {idle:g} s): "
               f"{gated['cpu_percent_of_one_core']:.1f} % of a core with motion gating, "
               f"{ungated['cpu_percent_of_one_core']:.1f} % without"
               + ("" if saved is None else f" ({saved:.0f}x, derived)")
               + f"; worker RSS {gated['rss_mb']:.0f} MB")

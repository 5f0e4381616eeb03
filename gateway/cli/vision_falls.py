"""`gateway vision falls VIDEO`: the fall analyser of a camera run on a clip, as fast as the CPU allows.

For commissioning and for checking a site's own footage: the same ``FallAnalyser`` a camera worker runs
(pose tracker, fall logic, ``[vision.falls] hold``), in this process with the local models, fed every
frame of the file (or ``--fps`` of them a second, as a camera analyses). A frame's time is its position
in the file (the container's timestamp, else its index over the frame rate: ``models.frametime``, the
rule the camera worker follows too), so the events come at the
times they would on live video, and at the times a camera pointed at the file with ``realtime = false``
stamps them (its start plus the position). The camera's motion gate is not applied: it only ever skips
frames without movement, and the fall analyser keeps it open while someone is down.

Exit status: 0 when the clip was read to its end, 2 for a bad argument or a file that is not a video,
1 when the models are missing or the vision extra is not installed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import print_json

DEFAULT_CONFIG = "/etc/gateway/config.toml"


def seconds(text: str) -> float:
    value = float(text.removesuffix("s"))
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds, not negative")
    return value


def frame_rate(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: frames a second, above 0")
    return value


def add_command(vision_subparsers: Any) -> None:
    p = vision_subparsers.add_parser(
        "falls", help="run the fall analyser on a video file at frame time, printing every event",
        description="Read VIDEO as fast as the CPU allows and run a camera's fall analyser on it: every "
                    "fall.suspected and fall.detected with its time in the file.")
    p.add_argument("video", type=Path, metavar="VIDEO", help="a video file OpenCV can read (avi, mp4, mkv, ...)")
    p.add_argument("-c", "--config", type=Path, default=None,
                   help=f"config file (TOML) for [store] data_dir and [vision.falls] (default: {DEFAULT_CONFIG})")
    p.add_argument("--data-dir", type=Path, help="data dir holding models/ (default: [store] data_dir of the config)")
    p.add_argument("--hold", type=seconds, metavar="SECONDS",
                   help="seconds down before fall.detected (default: [vision.falls] hold of the config, else 5)")
    p.add_argument("--fps", type=frame_rate, help="analyse at most this many frames a second, as a camera with this "
                                            "fps does (default: every frame)")
    p.add_argument("--json", action="store_true", help="one JSON object: parameters, events, frames, speed")
    p.set_defaults(fn=cmd_vision_falls)


def _settings(args: argparse.Namespace) -> tuple[Path, Any]:
    """The data dir and the vision config: from the config file unless ``--data-dir`` alone is given."""
    from models.config import VisionConfig

    if args.data_dir is not None and args.config is None:
        return Path(args.data_dir), VisionConfig()
    from gateway.cli.common import load

    cfg = load(argparse.Namespace(config=args.config or Path(DEFAULT_CONFIG)))
    return Path(args.data_dir or cfg.store.data_dir), cfg.vision


def cmd_vision_falls(args: argparse.Namespace) -> int:
    video: Path = args.video
    if not video.is_file():
        print(f"vision falls: {video}: no such file", file=sys.stderr)
        return 2
    try:
        import cv2

        from models.fall_analyser import FallAnalyser
        from models.fetch import FetchError
    except ImportError as exc:
        print(f"vision falls: the vision extra is not installed ({exc}): pip install 'gateway[vision]'",
              file=sys.stderr)
        return 1
    data_dir, vision = _settings(args)
    if args.hold is not None:
        vision = vision.model_copy(update={"falls": vision.falls.model_copy(update={"hold": args.hold})})
    cv2.setNumThreads(1)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            print(f"vision falls: {video}: not a video OpenCV can read", file=sys.stderr)
            return 2
        try:
            analyser = FallAnalyser("clip", vision, data_dir)
        except (FetchError, OSError, ValueError) as exc:
            print(f"vision falls: cannot load the pose models: {exc}", file=sys.stderr)
            return 1
        run = _Run(cap, analyser, args.fps, echo=not args.json)
        try:
            run.read()
        except KeyboardInterrupt:
            run.interrupted = True
    finally:
        cap.release()
    if run.frames == 0:
        print(f"vision falls: {video}: no frame could be decoded", file=sys.stderr)
        return 2
    doc = run.summary(video, data_dir, vision.falls.hold)
    if args.json:
        print_json(doc)
    else:
        print(f"{doc['frames']} frames read ({doc['video_s']:.1f} s of video at {doc['video_fps']:g} fps), "
              f"{doc['analysed']} analysed in {doc['elapsed_s']:.1f} s: {doc['fps_achieved']:.1f} frames/s; "
              f"{len(doc['events'])} events (hold {doc['params']['hold_s']:g} s)"
              + ("; interrupted" if run.interrupted else ""))
    return 130 if run.interrupted else 0


class _Run:
    """One pass over the file: frame times, the camera's frame-rate limit, the analyser, the events."""

    def __init__(self, cap: Any, analyser: Any, fps: float | None, *, echo: bool) -> None:
        import cv2

        self.cap = cap
        self.analyser = analyser
        self.fps_limit = fps
        self.echo = echo
        self.file_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(self.file_fps) or self.file_fps <= 0 or self.file_fps > 1000:
            self.file_fps = 0.0
        from models.frametime import FileTimes

        count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
        self.times = FileTimes(self.file_fps, count / self.file_fps if self.file_fps and math.isfinite(count) else None)
        self.frames = self.analysed = self.bad = 0
        self.last_t = 0.0
        self.events: list[dict[str, Any]] = []
        self.elapsed = 0.0
        self.interrupted = False

    def frame_time(self) -> float:
        """The frame's position in the file (seconds): ``models.frametime``, the camera worker's rule."""
        import cv2

        return self.times.next(self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)

    def read(self) -> None:
        import numpy as np

        period = 1.0 / self.fps_limit if self.fps_limit else 0.0
        due = -math.inf
        started = time.perf_counter()
        try:
            while self.cap.grab():
                t = self.frame_time()
                self.frames += 1
                self.last_t = t
                if period and t < due - period * 0.25:  # the worker's rule: a frame a little early still counts
                    continue
                due = max(due + period, t)
                ok, frame = self.cap.retrieve()
                if not ok or not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.size == 0:
                    self.bad += 1
                    continue
                self.analysed += 1
                for event in self.analyser.analyse(_fit(frame), t):
                    self.emit(t, event)
        finally:
            self.elapsed = time.perf_counter() - started

    def emit(self, t: float, event: Any) -> None:
        row = {"t": round(t, 3), "kind": event.kind, "priority": event.priority.name.lower(),
               "payload": dict(event.payload)}
        self.events.append(row)
        if self.echo:
            figures = " ".join(f"{k}={v}" for k, v in row["payload"].items() if k != "camera")
            print(f"{t:9.2f} s  {event.kind:<15} {figures}", flush=True)

    def summary(self, video: Path, data_dir: Path, hold: float) -> dict[str, Any]:
        return {"video": str(video),
                "params": {"hold_s": hold, "fps": self.fps_limit, "data_dir": str(data_dir)},
                "events": self.events, "frames": self.frames, "analysed": self.analysed, "bad_frames": self.bad,
                "video_fps": round(self.file_fps, 3), "video_s": round(self.last_t, 3),
                "elapsed_s": round(self.elapsed, 3),
                "fps_achieved": round(self.analysed / self.elapsed, 1) if self.elapsed > 0 else None,
                "interrupted": self.interrupted}


def _fit(frame: Any) -> Any:
    """As a camera with the default ``max_width`` (1280) shrinks a wider frame before analysis."""
    import cv2

    from models.config import CameraConfig

    width = CameraConfig.model_fields["max_width"].default
    h, w = frame.shape[:2]
    if w <= width:
        return frame
    return cv2.resize(frame, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)

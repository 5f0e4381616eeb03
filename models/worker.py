"""One camera's worker process: capture, motion gate, models; JSON lines out on stdout.

The daemon starts ``python -m models.worker`` per camera and writes one JSON line on stdin (the
camera's config, the vision config, the data dir, and the sockets of the shared model services:
with them the worker holds no model, it sends frames to the services; see ``models.service``). The
worker answers with one JSON object a line: ``{"t": "event", ...}`` for each event and
``{"t": "status", ...}`` about once a second (with each analysed frame's milliseconds in the models).
A hung decoder or a model that crashes the interpreter takes down this process only; the daemon
notices the silence or the exit, reports it and starts a new one.

Anything a library prints goes to stderr: stdout is moved to a private descriptor first, so a
stray ``print`` can never corrupt the protocol. The worker runs at nice 5, so on a Pi that also
polls meters and fire panels the daemon's event loop wins the CPU whenever both want it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import sys
import time
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from gateway.core.data import Event
from gateway.core.timing import Backoff
from models.analysers import Analyser, build
from models.config import CameraConfig, VisionConfig, redact_url
from models.fetch import FetchError
from models.frametime import FileTimes
from models.gallery import GalleryError
from models.hosting import use_services
from models.liveframe import Found, LiveFrames, face_finder
from models.motion import MotionGate
from models.snapshots import Snapshots

STATUS_EVERY = 1.0
LANE_WAIT = 1.0
"""Seconds a frame waits for a family's answer before the next frame goes on without that family: well over a
frame's model time on a loaded Pi, far under a hung service's 10 s call timeout, so a stuck plates or faces
service never holds the pose lane (falls) back."""
NICE = 5


class Out:
    """The protocol side of stdout; a closed pipe means the daemon is gone, so the worker ends."""

    def __init__(self, stream: IO[str], camera: str) -> None:
        self.stream = stream
        self.camera = camera

    def send(self, obj: dict[str, Any]) -> None:
        try:
            self.stream.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            os._exit(0)

    def event(self, kind: str, payload: dict[str, Any] | None = None, ts: float | None = None) -> None:
        self.send({"t": "event", "kind": kind, "ts": ts or time.time(),
                   "payload": {"camera": self.camera, **(payload or {})}})


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphan keeps a camera busy


def open_capture(camera: CameraConfig) -> cv2.VideoCapture:
    timeout_ms = int(camera.stall_timeout * 1000)
    if camera.url.startswith("usb:"):
        return cv2.VideoCapture(int(camera.url[4:]), cv2.CAP_V4L2)
    source = camera.url.removeprefix("file://")
    return cv2.VideoCapture(source, cv2.CAP_FFMPEG,
                            [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])


def is_file(camera: CameraConfig) -> bool:
    return not camera.url.startswith(("usb:", "rtsp:", "rtsps:", "http:", "https:", "rtmp:", "udp:", "tcp:"))


class CameraLoop:
    def __init__(self, camera: CameraConfig, analysers: list[Analyser], out: Out,
                 snapshots: Snapshots | None, live: LiveFrames | None = None, *, parallel: bool = False) -> None:
        self.camera = camera
        self.analysers = analysers
        self.lanes: dict[str, ThreadPoolExecutor] = {}
        """With ``parallel`` (models in the shared services, one per family): each analyser but one runs on
        a thread of its own, so a frame waits for the slowest family, not for the sum of them, and at most
        LANE_WAIT for any; each analyser always runs on the same thread, its state touched by one thread only
        (the faces analyser's gallery connection is opened for use from another thread)."""
        if parallel and len(analysers) > 1:
            self.lanes = {a.name: ThreadPoolExecutor(1, thread_name_prefix=f"lane-{a.name}") for a in analysers}
        self.pending: dict[str, tuple[futures.Future[tuple[list[Event] | Exception, float]], np.ndarray[Any, Any],
                                      float]] = {}
        """Each lane's frame under way: a family slower than LANE_WAIT (its service hung, restarting) is left to
        finish while the next frames go on without it; the others, falls among them, never wait for it."""
        self.exhaustive = is_file(camera) and not camera.realtime
        """A file read once as fast as it goes (commissioning): every analyser sees every frame, as offline."""
        self.out = out
        self.snapshots = snapshots
        self.live = live
        """The status page's latest frame (written only while someone watches)."""
        self._live_backoff = Backoff(1.0, 60.0, jitter=(1.0, 1.0))
        self._live_paused_until = float("-inf")
        self.gate = MotionGate(camera.motion)
        self.period = 1.0 / camera.fps
        self.counts = {"frames": 0, "analysed": 0, "gated": 0, "bad": 0, "errors": 0, "live_errors": 0,
                       "lane_skipped": 0}
        self.ms: dict[str, float] = {}
        self.frame_ms: list[float] = []
        """Each analysed frame's time in the models since the last status line (the bench's latency figures)."""
        self.state = "connecting"
        self._status_at = 0.0
        self._wall0: float | None = None
        self._mono0 = 0.0
        self._file_times: FileTimes | None = None
        self._played = float("-inf")
        """When a file played in real time had its last frame due: it keeps its own rate, the analysis and the
        reopening of a looping file included; one that fell behind by more than a frame does not rush."""

    def status(self, now: float, **extra: Any) -> None:
        if now - self._status_at < STATUS_EVERY:
            return
        self._status_at = now
        self.out.send({"t": "status", "state": self.state, **self.counts, "motion": round(self.gate.fraction, 4),
                       "ms": {k: round(v, 1) for k, v in self.ms.items()},
                       "frame_ms": [round(v, 2) for v in self.frame_ms[-200:]], **extra})
        self.frame_ms.clear()

    def run_forever(self) -> None:
        backoff = Backoff(1.0, max(1.0, self.camera.reconnect_max), jitter=(1.0, 1.0))
        while True:
            cap = open_capture(self.camera)
            if not cap.isOpened():
                self.state = "connecting"
                self.status(time.monotonic(), error="cannot open stream", retry_in=backoff.current)
                time.sleep(backoff.next())
                continue
            if self.state != "streaming":  # not again for each turn of a looping video file
                self.state = "streaming"
                self.out.event("camera.connected", {"url": redact_url(self.camera.url)})
            started, frames = time.monotonic(), self.counts["frames"]
            reason = self.stream(cap)
            cap.release()
            if time.monotonic() - started > 60:  # it streamed a while: a fresh failure starts the backoff over
                backoff.reset()
            if reason == "ended" and is_file(self.camera) and not self.camera.realtime:
                self.finished()
            if reason == "ended" and is_file(self.camera) and self.counts["frames"] > frames:
                continue  # a video file loops (one that gave no frame this time is lost, not spun on)
            self.state = "reconnecting"
            if self.live is not None:
                with contextlib.suppress(OSError):
                    self.live.clear()  # the page must not show the last picture as if it were live
            self.out.event("camera.lost", {"reason": reason, "retry_in": backoff.current})
            time.sleep(backoff.next())

    def finished(self) -> None:
        """A file read with ``realtime = false`` is read once (commissioning: its events, once), then idles."""
        self.state = "finished"
        self.out.event("camera.lost", {"reason": "ended", "retry_in": 0.0})
        while True:
            self._status_at = 0.0
            self.status(time.monotonic())
            time.sleep(STATUS_EVERY)

    def stream(self, cap: cv2.VideoCapture) -> str:
        """Read until the stream fails; returns why (``stalled`` or ``ended``).

        Every frame gets a *frame time*, the time its events carry and the clock of the analysers'
        cooldowns, votes and holds: for a live stream, when it was grabbed (the wall clock at the start
        plus the monotonic clock since, so a clock step mid-stream does not bend it); for a file, the
        start plus the frame's position in the file, so a clip read with ``realtime = false``, as fast
        as the CPU allows, gives the same events at the same times as played live.
        """
        file = is_file(self.camera)
        fps = cap.get(cv2.CAP_PROP_FPS) if file else 0.0
        if file and self._file_times is None:  # kept over the turns of a looping file
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self._file_times = FileTimes(fps, count / fps if fps > 0 and math.isfinite(count) else None)
        pace = 1.0 / fps if file and self.camera.realtime and fps > 0 else 0.0
        due = float("-inf")
        last = time.monotonic()
        while True:
            if not cap.grab():
                if not file:  # a live stream that stalled: a fall hold that ran out meanwhile is said now
                    self.tick(self.frame_time(cap, time.monotonic(), file))
                return "stalled" if time.monotonic() - last >= self.camera.stall_timeout * 0.9 else "ended"
            now = last = time.monotonic()
            t = self.frame_time(cap, now, file)
            self.counts["frames"] += 1
            self.status(now)
            if pace:
                self._played = max(self._played + pace, now - pace)
                time.sleep(max(0.0, self._played - now))
            if t < due - self.period * 0.25:  # a frame a little early still counts (stream jitter)
                continue
            due = max(due + self.period, t)
            ok, frame = cap.retrieve()
            if not ok or not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.size == 0:
                self.counts["bad"] += 1
                continue
            self.analyse(self.fit(frame), t, full=frame)

    def frame_time(self, cap: cv2.VideoCapture, now: float, file: bool) -> float:
        """Seconds since the epoch: see :meth:`stream`. A file's times follow ``models.frametime`` (the rule of
        ``gateway vision falls`` too): a stuck timestamp falls back to the frame's index, only a large jump back
        is a new turn of a looping file."""
        if self._wall0 is None:
            self._wall0, self._mono0 = time.time(), now
        if file and self._file_times is not None:
            return self._wall0 + self._file_times.next(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
        return self._wall0 + (now - self._mono0)

    def tick(self, now: float) -> None:
        """Time passing without a frame: analysers that keep a clock (falls: the hold) say what came due by
        ``now``."""
        for analyser in self.analysers:
            tick = getattr(analyser, "tick", None)
            if tick is None:
                continue
            try:
                events = tick(now)
            except Exception as exc:
                self.out.event("camera.error", {"stage": analyser.name, "error": f"{type(exc).__name__}: {exc}"})
                continue
            for event in events:
                self.out.event(event.kind, dict(event.payload), now)

    def fit(self, frame: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        h, w = frame.shape[:2]
        if w <= self.camera.max_width:
            return frame
        return cv2.resize(frame, (self.camera.max_width, round(h * self.camera.max_width / w)),
                          interpolation=cv2.INTER_AREA)

    def analyse(self, frame: np.ndarray[Any, Any], now: float, full: np.ndarray[Any, Any] | None = None) -> None:
        """``now`` is the frame time (see :meth:`stream`). ``full`` is the frame before ``fit`` shrank it, for
        an analyser with ``full_resolution = True`` (plates: a distant plate is only readable at full size;
        such an analyser shrinks for its own detection and reports boxes in full-frame pixels)."""
        busy = any(a.busy for a in self.analysers)
        if not self.gate.moving(frame, now) and not busy:
            self.counts["gated"] += 1
            self.offer_live(frame, None, faces_looked=False)
            return
        self.counts["analysed"] += 1
        started = time.perf_counter()

        def one(analyser: Analyser) -> tuple[list[Event] | Exception, float]:
            t0 = time.perf_counter()
            try:
                whole = full if full is not None and getattr(analyser, "full_resolution", False) else frame
                result: list[Event] | Exception = list(analyser.analyse(whole, now))
            except Exception as exc:  # a model failing on one frame must not end the camera
                result = exc
            return result, (time.perf_counter() - t0) * 1000

        if not self.lanes:  # one after another, as with models in the worker
            done = [(a, *one(a), frame, now) for a in self.analysers]
        else:
            done = self._harvest()  # what a slow lane finished since the last frame
            submitted = []
            for a in self.analysers:
                if a.name in self.pending:  # still on an earlier frame: this one goes on without it
                    self.counts["lane_skipped"] += 1
                    continue
                future = self.lanes[a.name].submit(one, a)
                self.pending[a.name] = (future, frame, now)
                submitted.append(future)
            futures.wait(submitted, timeout=None if self.exhaustive else LANE_WAIT)
            done += self._harvest()
        looked: list[Analyser] = []
        for analyser, events, ms, seen_on, t in done:
            if isinstance(events, Exception):
                self.counts["errors"] += 1
                self.out.event("camera.error", {"stage": analyser.name, "error": f"{type(events).__name__}: {events}"})
                continue
            looked.append(analyser)
            self.ms[analyser.name] = ms if analyser.name not in self.ms else 0.9 * self.ms[analyser.name] + 0.1 * ms
            for event in events:
                self.emit(event, seen_on, t, seen=getattr(analyser, "seen_frame", None))
        self.frame_ms.append((time.perf_counter() - started) * 1000)
        self.offer_live(frame, [f for a in looked for f in a.found],
                        faces_looked=any(a.name == "faces" for a in looked))

    def _harvest(self) -> list[tuple[Analyser, list[Event] | Exception, float, np.ndarray[Any, Any], float]]:
        """The lanes that have finished, in the analysers' order, each with the frame and time it analysed."""
        out = []
        for a in self.analysers:
            entry = self.pending.get(a.name)
            if entry is not None and entry[0].done():
                del self.pending[a.name]
                events, ms = entry[0].result()
                out.append((a, events, ms, entry[1], entry[2]))
        return out

    def offer_live(self, frame: np.ndarray[Any, Any], found: list[Found] | None, *, faces_looked: bool) -> None:
        """The frame to the status page, which may fail (a full disk, OpenCV refusing a frame): then the page goes
        without for a while (1 s doubling to 60 s), said once each time, and the analysis never stops for it."""
        if self.live is None or time.monotonic() < self._live_paused_until:
            return
        try:
            if self.live.offer(frame, found, faces_looked=faces_looked):
                self._live_backoff.reset()
        except Exception as exc:
            self.counts["live_errors"] += 1
            pause = self._live_backoff.next()
            self._live_paused_until = time.monotonic() + pause
            self.out.event("camera.error", {"stage": "live", "error": f"{type(exc).__name__}: {exc}"[:300],
                                            "retry_in": pause})

    def emit(self, event: Event, frame: np.ndarray[Any, Any], t: float,
             seen: np.ndarray[Any, Any] | None = None) -> None:
        """An analyser's event, stamped with the frame time it was seen at. ``seen``: the frame to keep as the
        snapshot when the analyser saw the event on an earlier frame (faces with split frames)."""
        payload = dict(event.payload)
        if self.snapshots is not None:
            person = payload.get("person")
            name = self.snapshots.save(frame if seen is None else seen, event.kind, t,
                                       person if isinstance(person, str) else None)
            if name:
                payload["snapshot"] = name  # a file name on this box, never the image
        self.out.event(event.kind, payload, t)


def main() -> int:
    _die_with_parent()
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    cv2.setNumThreads(1)
    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        job = json.loads(sys.stdin.readline())
        camera = CameraConfig.model_validate(job["camera"])
        vision = VisionConfig.model_validate(job["vision"])
        data_dir = Path(job["data_dir"])
        services = job.get("services") or {}
        if not isinstance(services, dict):
            raise TypeError("services must be a table")
    except (ValueError, KeyError, TypeError) as exc:
        print(f"worker: bad job on stdin: {exc}", file=sys.stderr)
        return 2
    out = Out(proto, camera.id)
    use_services({str(k): str(v) for k, v in services.items()})  # models in the shared services, not here
    try:
        analysers = build(camera, vision, data_dir)
    except (FetchError, GalleryError, OSError) as exc:
        out.event("camera.error", {"stage": "start", "error": str(exc)})
        return 3
    snapshots = Snapshots(data_dir / "snapshots" / camera.id, camera.snapshots) if camera.snapshots.enabled else None
    live = LiveFrames(data_dir, camera.id, face_finder(data_dir))
    parallel = bool(services) and job.get("parallel", True) is not False  # the bench's --serial compares
    CameraLoop(camera, analysers, out, snapshots, live, parallel=parallel).run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

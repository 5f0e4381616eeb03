"""Fall clips: real photographs animated into a fall and into sitting and bending, written as MJPG video files.

The same clip goes through `gateway vision falls CLIP --json` (a real subprocess, the local models, frame
time = position in the file) and through the real daemon as a camera whose `url` is the file, read with
`realtime = false`. Both must say fall.suspected within a second of the fall and fall.detected at the hold,
at the same times relative to the clip's start; sitting down and bending over must say nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import Broker, Collector, running, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from test_falls import PEOPLE, Step, person, ramp, scene

from gateway.config import load_config
from gateway.core.data import Event, Priority
from gateway.core.timing import wait_until
from gateway.daemon import Daemon
from models.frametime import FileTimes

FPS = 10
HOLD = 3.0
FALL_AT = 1.0
"""The fall starts on frame 10 (1.0 s into the clip) and the person is on the floor 0.5 s later."""
GATEWAY = [sys.executable, "-m", "gateway"]


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (640, 480))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def clip_of(vision_dir: Path, steps: list[Step], path: Path) -> Path:
    who = PEOPLE["astronaut"]
    img = person(vision_dir, "astronaut")
    return write_clip(path, [scene(img, who["hips"], step) for step in steps])


STAND = (0.0, 320.0, 250.0)


def fall_steps() -> list[Step]:
    """Standing 1 s, falling 0.5 s, lying 4 s."""
    lying = (float(PEOPLE["astronaut"]["fall"]), 360.0, 390.0)
    return [STAND] * 10 + ramp(STAND, lying, 5) + [lying] * 40


def everyday_steps() -> list[Step]:
    """Standing, sitting down (1 s), sitting, standing up, bending over to 75° (0.8 s), staying bent, straightening."""
    seated, bent = (0.0, 320.0, 330.0), (-75.0, 320.0, 262.0)
    return ([STAND] * 10 + ramp(STAND, seated, 10) + [seated] * 10 + ramp(seated, STAND, 10) + [STAND] * 5
            + ramp(STAND, bent, 8) + [bent] * 10 + ramp(bent, STAND, 8) + [STAND] * 10)


@pytest.fixture(scope="module")
def fall_clip(vision_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip_of(vision_dir, fall_steps(), tmp_path_factory.mktemp("clips") / "fall.avi")


def start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen([*GATEWAY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return finish(start(*args))


def clip_events(vision_dir: Path, clip: Path, *extra: str) -> dict[str, Any]:
    run = gateway("vision", "falls", str(clip), "--data-dir", str(vision_dir), "--json", *extra)
    assert run.returncode == 0, run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    return doc


# -- the offline tool ------------------------------------------------------------------------------------


def test_a_fall_clip_is_suspected_within_a_second_and_detected_at_the_hold(vision_dir: Path, fall_clip: Path) -> None:
    doc = clip_events(vision_dir, fall_clip, "--hold", f"{HOLD:g}")
    assert doc["frames"] == doc["analysed"] == len(fall_steps()) and doc["bad_frames"] == 0
    assert doc["params"]["hold_s"] == HOLD and doc["video_fps"] == FPS and doc["fps_achieved"] > 0
    assert doc["video_s"] == pytest.approx((len(fall_steps()) - 1) / FPS)
    events = doc["events"]
    assert [e["kind"] for e in events] == ["fall.suspected", "fall.detected"], events
    suspected, detected = events
    assert FALL_AT < suspected["t"] <= FALL_AT + 1.0  # said within a second of the fall's start
    assert suspected["priority"] == "event" and suspected["payload"]["hold_s"] == HOLD
    assert suspected["payload"]["camera"] == "clip" and suspected["payload"]["torso_angle_deg"] > 60
    assert detected["priority"] == "alarm" and detected["t"] == pytest.approx(suspected["t"] + HOLD)
    assert detected["payload"]["down_s"] == HOLD and 0 < detected["payload"]["confidence"] <= 1


def test_the_text_output_lists_each_event_at_its_frame_time(vision_dir: Path, fall_clip: Path) -> None:
    doc = clip_events(vision_dir, fall_clip, "--hold", "1s", "--fps", "5")
    # as a 5 fps camera reads a 10 fps stream (models/worker.py): the first two frames, then one every 0.2 s
    assert doc["analysed"] == 1 + (len(fall_steps()) + 1) // 2
    [suspected, detected] = doc["events"]
    assert FALL_AT < suspected["t"] <= FALL_AT + 1.0 and detected["t"] == pytest.approx(suspected["t"] + 1.0)
    run = gateway("vision", "falls", str(fall_clip), "--data-dir", str(vision_dir), "--hold", "1", "--fps", "5")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[:3] for line in lines[:2]] == [[f"{e['t']:.2f}", "s", e["kind"]] for e in doc["events"]]
    assert "2 events (hold 1 s)" in lines[-1] and f"{len(fall_steps())} frames read" in lines[-1]


def test_sitting_and_bending_say_nothing(vision_dir: Path, tmp_path: Path) -> None:
    clip = clip_of(vision_dir, everyday_steps(), tmp_path / "everyday.avi")
    doc = clip_events(vision_dir, clip, "--hold", "1")
    assert doc["frames"] == len(everyday_steps()) and doc["events"] == []


def test_bad_input_is_a_clear_error_not_a_traceback(vision_dir: Path, fall_clip: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    cases = [
        ((str(tmp_path / "missing.avi"), "--data-dir", str(vision_dir)), 2, "no such file"),
        ((str(text), "--data-dir", str(vision_dir)), 2, "not a video"),
        ((str(empty), "--data-dir", str(vision_dir)), 2, "not a video"),
        ((str(fall_clip), "--data-dir", str(tmp_path)), 1, "gateway models fetch"),
        ((str(fall_clip), "--data-dir", str(vision_dir), "--hold", "-1"), 2, "not negative"),
        ((str(fall_clip), "--data-dir", str(vision_dir), "--fps", "0"), 2, "above 0"),
        ((str(fall_clip), "-c", str(tmp_path / "none.toml")), 2, "none.toml"),
    ]
    procs = [start("vision", "falls", *args) for args, _, _ in cases]  # at once: each mostly waits on imports
    for (args, code, said), proc in zip(cases, procs, strict=True):
        run = finish(proc)
        assert run.returncode == code, (args, run.returncode, run.stderr)
        assert said in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)
        assert run.stdout == "", args


def test_the_config_gives_the_data_dir_and_the_hold(vision_dir: Path, fall_clip: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(vision_dir / "models")
    config = write_config(tmp_path / "gateway.toml", data_dir=data, mqtt_port=None, buses=[], devices=[],
                          extra='\n[vision.falls]\nhold = "2s"\n')
    doc = clip_events(vision_dir, fall_clip, "-c", str(config))  # --data-dir wins, the hold comes from the file
    assert doc["params"]["hold_s"] == 2.0
    run = gateway("vision", "falls", str(fall_clip), "-c", str(config), "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["params"]["data_dir"] == str(data) and doc["params"]["hold_s"] == 2.0
    [suspected, detected] = doc["events"]
    assert detected["t"] == pytest.approx(suspected["t"] + 2.0)


# -- the same clip as a camera of the real daemon ---------------------------------------------------------


async def test_the_clip_as_a_camera_gives_the_same_events_at_the_same_clip_times(
        tmp_path: Path, vision_dir: Path, fall_clip: Path, broker: Broker, collector: Collector) -> None:
    offline = clip_events(vision_dir, fall_clip, "--hold", f"{HOLD:g}")["events"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(vision_dir / "models")
    camera = (f'\n[vision.falls]\nhold = "{HOLD:g}s"\n\n[[cameras]]\nid = "lounge"\nurl = "{fall_clip}"\n'
              f'realtime = false\nfps = {FPS}\ndetect = ["falls"]\n')
    config = write_config(tmp_path / "gateway.toml", data_dir=data, mqtt_port=broker.port, buses=[], devices=[],
                          extra=camera)
    started = time.time()
    async with running(Daemon(load_config(config))):
        await collector.wait_for(lambda: of(collector, "camera.lost"), within=50)  # read once, to its end
    connected, = of(collector, "camera.connected")
    assert of(collector, "camera.lost")[0]["data"]["reason"] == "ended"
    live = [m for m in collector.messages if m[1].get("kind", "").startswith("fall.")]
    assert [m["kind"] for _, m in live] == [e["kind"] for e in offline], live
    # The worker stamps a frame with the time it read the first frame plus the frame's position in the file: the
    # events are the offline ones, at the same positions, shifted by that one start time.
    base = live[0][1]["ts"] - offline[0]["t"]
    assert started <= connected["ts"] - 0.01 <= base <= time.time()
    for (_, message), event in zip(live, offline, strict=True):
        assert message["ts"] - base == pytest.approx(event["t"], abs=2e-3), (message, event)
        assert message["source"] == "lounge" and message["data"]["camera"] == "lounge"
        assert {k: v for k, v in message["data"].items() if k != "camera"} == \
            {k: v for k, v in event["payload"].items() if k != "camera"}


# -- a worker that never answers a suspected fall: the daemon raises the alarm itself -------------------------------


class _Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def event(self, ev: Event) -> None:
        self.events.append(ev)

    def meta(self, key: str, value: Any) -> None:
        pass

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events if e.kind.startswith("fall.")]


@pytest.mark.parametrize("how", ["killed", "silent"])
async def test_a_fall_the_worker_never_confirms_is_alarmed_by_the_daemon(tmp_path: Path, vision_dir: Path,
                                                                         fall_clip: Path, how: str) -> None:
    """A real worker reads the fall clip (hold 60 s, longer than the clip): it says fall.suspected, then nothing.
    Killed during the hold, its camera raises fall.detected at once (worker_exited); left alive, once the hold and
    the margin have passed on the daemon's clock (no_answer). Either way unconfirmed, and once."""
    from gateway.cameras import CameraWorker, WorkerFailed
    from gateway.core.timing import ManualClock
    from gateway.fall_watch import MARGIN
    from models.config import CameraConfig, VisionConfig

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(vision_dir / "models")
    vision = VisionConfig()
    vision = vision.model_copy(update={"falls": vision.falls.model_copy(update={"hold": 60.0})})
    camera = CameraConfig(id="lounge", url=str(fall_clip), realtime=False, fps=FPS, detect=["falls"])
    sink, clock = _Sink(), ManualClock()
    worker = CameraWorker(camera, vision, data, sink, clock=clock)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: "fall.suspected" in sink.kinds(), 40, "fall.suspected")
        assert sink.kinds() == ["fall.suspected"]
        if how == "killed":
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            with pytest.raises(WorkerFailed):
                await task
            reason = "worker_exited"
        else:
            await clock.advance(60.0 + MARGIN - 1.5)
            assert sink.kinds() == ["fall.suspected"]
            await clock.advance(1.5)
            reason = "no_answer"
        assert sink.kinds() == ["fall.suspected", "fall.detected"]
        alarm = sink.events[-1]
        assert alarm.priority is Priority.ALARM and alarm.source == "lounge"
        assert alarm.payload["unconfirmed"] is True and alarm.payload["reason"] == reason
        assert alarm.payload["descent_torso"] == sink.events[-2].payload["descent_torso"] >= 0.5
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, WorkerFailed):
            await task
    assert sink.kinds() == ["fall.suspected", "fall.detected"]  # the cancelled run raised nothing more


async def test_a_stream_that_stalls_during_the_hold_is_alarmed_by_the_worker(tmp_path: Path, vision_dir: Path) -> None:
    """A live camera (MJPEG over HTTP) shows the fall, then freezes during the 4 s hold: no frame comes. When the
    worker's read gives up (``stall_timeout`` 8 s), it checks the hold on its clock and raises fall.detected itself,
    confirmed (the daemon's watch, on a clock that never moves here, cannot be the one)."""
    from gateway.cameras import CameraWorker
    from gateway.core.timing import ManualClock
    from models.config import CameraConfig, VisionConfig
    from simulators.camera import MjpegCamera

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(vision_dir / "models")
    vision = VisionConfig()
    vision = vision.model_copy(update={"falls": vision.falls.model_copy(update={"hold": 4.0})})
    who, img = PEOPLE["astronaut"], person(vision_dir, "astronaut")
    lying = (float(who["fall"]), 360.0, 390.0)
    frames = [scene(img, who["hips"], step) for step in [STAND] * 10 + ramp(STAND, lying, 2) + [lying] * 100]
    sink = _Sink()
    async with MjpegCamera(frames, fps=FPS) as cam:
        camera = CameraConfig(id="hall", url=cam.url, fps=FPS, detect=["falls"], stall_timeout=8.0)
        worker = CameraWorker(camera, vision, data, sink, clock=ManualClock())  # type: ignore[arg-type]
        task = asyncio.create_task(worker.run())
        try:
            await wait_until(lambda: "fall.suspected" in sink.kinds(), 40, "fall.suspected")
            cam.freeze()
            await wait_until(lambda: "fall.detected" in sink.kinds(), 40, "fall.detected at the stall")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert sink.kinds()[:2] == ["fall.suspected", "fall.detected"]
    alarm = [e for e in sink.events if e.kind.startswith("fall.")][1]
    assert "unconfirmed" not in alarm.payload and alarm.priority is Priority.ALARM
    # Said at the stall (8 s without a frame), not by a frame at 4 s: the hold and the stall are far enough apart that
    # frames still in flight when the test freezes the camera (a loaded box) cannot blur them.
    assert alarm.payload["down_s"] >= 6.0
    lost = [e for e in sink.events if e.kind == "camera.lost"]
    assert lost and lost[0].payload["reason"] == "stalled"


# -- frame times of a file: one rule for the worker and the offline tool (models/frametime.py) ---------------------


def times(fps: float, positions: list[float], length: float | None = None) -> list[float]:
    clock = FileTimes(fps, length)
    return [round(clock.next(p), 6) for p in positions]


def test_file_times_follow_the_container_and_fall_back_to_the_index() -> None:
    assert times(10, [0.0, 0.1, 0.2, 0.3]) == [0.0, 0.1, 0.2, 0.3]
    # a timestamp that never advances: the index over the rate (the worker analysed two frames and skipped the rest)
    assert times(10, [0.0] * 5) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert times(10, [-1.0, math.nan, math.inf, 0.0]) == [0.0, 0.1, 0.2, 0.3]
    # a small step back is not a loop: one frame on, never back
    assert times(10, [0.0, 0.1, 0.2, 0.3, 0.25, 0.4, 0.5]) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    # a jump back to the start, or by more than half the clip: a new turn, one frame after the last
    assert times(10, [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]) == [0.0, 1.0, 2.0, 3.0, 3.1, 4.1]
    assert times(10, [2.0, 3.0, 4.0, 5.0, 1.0, 2.0], length=5.0) == [2.0, 3.0, 4.0, 5.0, 5.1, 6.1]
    assert times(10, [2.0, 3.0, 4.0, 5.0, 3.5, 6.0], length=5.0) == [2.0, 3.0, 4.0, 5.0, 5.1, 6.0]
    # no rate, no timestamp: the frames share the last time, nothing goes back
    assert times(0, [0.0, 0.5, math.nan, 0.2, 0.7]) == [0.0, 0.5, 0.5, 0.5, 0.7]


@settings(max_examples=200, deadline=None)
@given(st.floats(), st.lists(st.floats() | st.sampled_from([0.0, 0.04, 1.0, 2.0]), max_size=60),
       st.none() | st.floats())
def test_file_times_never_go_back_whatever_the_container_says(fps: float, positions: list[float],
                                                               length: float | None) -> None:
    out = times(fps, positions, length)
    assert all(math.isfinite(t) and t >= 0 for t in out)
    assert all(b >= a for a, b in itertools.pairwise(out))


def test_the_offline_tool_times_a_short_clip_frame_by_frame(vision_dir: Path, tmp_path: Path) -> None:
    """Every frame of a 10 fps clip analysed at --fps 10: none taken for early, the last at 0.5 s."""
    clip = clip_of(vision_dir, [STAND] * 6, tmp_path / "still.avi")
    doc = clip_events(vision_dir, clip, "--fps", "10")
    assert doc["analysed"] == doc["frames"] == 6 and doc["video_s"] == 0.5


def of(collector: Collector, kind: str) -> list[dict[str, Any]]:
    return [m for _, m in collector.messages if m.get("kind") == kind]

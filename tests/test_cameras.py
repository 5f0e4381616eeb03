"""Cameras end to end: a simulated MJPEG camera -> a camera worker process -> the daemon -> Mosquitto.

Real images, real models, real OpenCV capture over HTTP on 127.0.0.1, a real broker. The worker is
killed, frozen and starved here, and the daemon must report each and carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import Broker, Collector, running, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vision_data import site_data

from gateway.cameras import CameraWorker, safe_payload
from gateway.config import load_config
from gateway.core.timing import ManualClock
from gateway.daemon import Daemon, open_store
from models.config import CameraConfig, MotionConfig, VisionConfig, redact_url
from models.motion import MotionGate
from simulators.camera import MjpegCamera, scene


def camera_config(tmp: Path, vision_dir: Path, mqtt_port: int, url: str, *, detect: str = '["faces"]',
                  extra: str = "") -> Path:
    data, key = site_data(tmp, vision_dir)
    text = (f'[vision.faces]\nkey_file = "{key}"\ncooldown = "1s"\n\n'
            f'[[cameras]]\nid = "lobby"\nurl = "{url}"\nfps = 5\ndetect = {detect}\nstall_timeout = "2s"\n'
            f'reconnect_max = "2s"\n{extra}')
    path = write_config(tmp / "gateway.toml", data_dir=data, mqtt_port=mqtt_port, buses=[], devices=[])
    # these tests follow the events upstream: the site has enabled identities leaving the box
    path.write_text(path.read_text().replace("[mqtt]\n", "[mqtt]\nkeep_local = []\n") + "\n" + text)
    return path


def enrol(data: Path, key: Path, person: str, image: np.ndarray, vision_dir: Path) -> None:
    from models.faces import FacePipeline, enrolment_embedding
    from models.gallery import Gallery, Person, load_key

    pipeline = FacePipeline.from_data_dir(vision_dir)
    with Gallery(data, load_key(key)) as gallery:
        gallery.enroll(Person(person, "Eileen", "resident", "2026-01-01"), [enrolment_embedding(pipeline, image)])


def erase(data: Path, key: Path, person: str) -> None:
    from models.gallery import Gallery, load_key

    with Gallery(data, load_key(key)) as gallery:
        gallery.erase(person)


def events(collector: Collector, kind: str) -> list[dict[str, Any]]:
    return [m for _, m in collector.messages if m.get("kind") == kind]


@pytest.fixture
def portrait(vision_dir: Path) -> np.ndarray:
    image = cv2.imread(str(vision_dir / "testdata" / "astronaut.png"))
    assert image is not None
    return image


async def test_enrolled_person_recognised_upstream_without_image_bytes_then_erased(
        tmp_path: Path, vision_dir: Path, broker: Broker, collector: Collector, portrait: np.ndarray) -> None:
    grey = np.full((480, 640, 3), 90, np.uint8)
    # The person walks in and out, so motion gating lets the models look each time.
    frames = [scene(portrait)] * 3 + [grey] * 2
    async with MjpegCamera(frames, fps=10) as cam:
        config = load_config(camera_config(tmp_path, vision_dir, broker.port, cam.url))
        enrol(tmp_path / "data", tmp_path / "faces.key", "r-0101", portrait, vision_dir)
        daemon = Daemon(config)
        async with running(daemon):
            await collector.wait_for(lambda: events(collector, "face.recognized"), within=60)
            hit = events(collector, "face.recognized")[0]
            assert hit["data"]["person"] == "r-0101" and hit["data"]["camera"] == "lobby"
            assert 0.4 <= hit["data"]["score"] <= 1.0
            erase(tmp_path / "data", tmp_path / "faces.key", "r-0101")
            seen = len(events(collector, "face.recognized"))
            unknown = len(events(collector, "face.unknown"))
            # After the erase the same face is a stranger: the worker sees the change without a restart.
            await collector.wait_for(lambda: len(events(collector, "face.unknown")) > unknown, within=30)
            await asyncio.sleep(1.5)
            late = [m for m in events(collector, "face.recognized")[seen:] if m["ts"] > hit["ts"] + 3]
            assert not late, late
    # Nothing upstream carries pixels: every message is small, and no field is longer than an id.
    for topic, message in collector.messages:
        raw = json.dumps(message, ensure_ascii=False)
        assert len(raw) < 4000, (topic, len(raw))
        if message.get("kind", "").startswith("face."):
            assert set(message["data"]) <= {"camera", "person", "score"}, message


async def test_plate_at_the_gate_is_read_once_and_marked_on_the_allowlist(
        tmp_path: Path, vision_dir: Path, broker: Broker, collector: Collector, portrait: np.ndarray) -> None:
    from simulators.plate_scenes import paste, render_plate

    frame, _ = paste(portrait, render_plate("京A12345"), 220, random.Random(3))
    async with MjpegCamera([frame], fps=10) as cam:
        config = camera_config(tmp_path, vision_dir, broker.port, cam.url, detect='["plates"]',
                               extra='\n[vision.plates]\nallowlist = ["京A 12345"]\nblocklist = ["沪B54321"]\n')
        daemon = Daemon(load_config(config))
        async with running(daemon):
            await collector.wait_for(lambda: events(collector, "plate.read"), within=60)
            await asyncio.sleep(2)  # the car stays: the plate is held, not repeated
    reads = events(collector, "plate.read")
    assert len(reads) == 1, reads
    assert reads[0]["data"]["plate"] == "京A12345" and reads[0]["data"]["list"] == "allowlist"
    assert reads[0]["priority"] == "event" and 0 < reads[0]["data"]["score"] <= 1


async def test_a_fall_through_the_daemon_raises_the_fall_alarm(tmp_path: Path, vision_dir: Path, broker: Broker,
                                                               collector: Collector) -> None:
    """Real person, real pose model, real stream: fall.detected goes up as an alarm and the rule latches it."""
    from test_falls import PEOPLE, person, ramp
    from test_falls import scene as body_scene

    who = PEOPLE["astronaut"]
    img = person(vision_dir, "astronaut")
    stand, lying = (0.0, 320.0, 250.0), (float(who["fall"]), 360.0, 390.0)
    steps = [stand] * 20 + ramp(stand, lying, 5) + [lying] * 60
    frames = [body_scene(img, who["hips"], s) for s in steps]
    rule = ('\n[vision.falls]\nhold = "3s"\n\n[[rules]]\nid = "fall"\nwhen = { event = "fall.detected" }\n'
            'alarm = { class = "fall", severity = "critical", message = "Fall at {camera}", instance = "{camera}" }\n')
    async with MjpegCamera(frames, fps=10) as cam:
        config = camera_config(tmp_path, vision_dir, broker.port, cam.url, detect='["falls"]', extra=rule)
        text = config.read_text().replace("fps = 5", "fps = 10")
        config.write_text(text)
        daemon = Daemon(load_config(config))
        async with running(daemon):
            await collector.wait_for(lambda: events(collector, "fall.detected"), within=60)
            await collector.wait_for(lambda: events(collector, "alarm.raise"), within=10)
    fall = events(collector, "fall.detected")[0]
    assert fall["type"] == "alarm" and fall["priority"] == "alarm" and fall["source"] == "lobby"
    assert 0 < fall["data"]["confidence"] <= 1 and fall["data"]["camera"] == "lobby"
    raised = events(collector, "alarm.raise")[0]
    assert raised["type"] == "alarm" and "lobby" in json.dumps(raised, ensure_ascii=False)


async def test_killed_worker_is_reported_and_comes_back(tmp_path: Path, vision_dir: Path, broker: Broker,
                                                         collector: Collector, portrait: np.ndarray) -> None:
    async with MjpegCamera([scene(portrait)], fps=5) as cam:
        daemon = Daemon(load_config(camera_config(tmp_path, vision_dir, broker.port, cam.url)))
        async with running(daemon):
            await collector.wait_for(lambda: events(collector, "camera.connected"), within=60)
            worker = daemon.cameras["lobby"]
            first = worker.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await collector.wait_for(
                lambda: any(m["source"] == "camera:lobby" for m in events(collector, "gateway.task_crashed")))
            crash = next(m for m in events(collector, "gateway.task_crashed") if m["source"] == "camera:lobby")
            assert "SIGKILL" in crash["data"]["error"]
            await collector.wait_for(lambda: len(events(collector, "camera.connected")) >= 2, within=60)
            assert worker.pid not in (None, first)


async def test_frozen_stream_is_detected_and_recovers(tmp_path: Path, vision_dir: Path, broker: Broker,
                                                      collector: Collector, portrait: np.ndarray) -> None:
    async with MjpegCamera([scene(portrait)], fps=5) as cam:
        daemon = Daemon(load_config(camera_config(tmp_path, vision_dir, broker.port, cam.url, detect="[]")))
        async with running(daemon):
            await collector.wait_for(lambda: events(collector, "camera.connected"), within=60)
            await asyncio.sleep(1.5)  # a status line or two
            await daemon.recorder.flush()
            store = open_store(daemon.cfg, read_only=True)
            status = store.meta()["camera:lobby"]
            store.close()
            assert status["state"] == "streaming" and status["frames"] > 0
            assert status["pid"] == daemon.cameras["lobby"].pid
            cam.freeze()
            await collector.wait_for(lambda: events(collector, "camera.lost"), within=20)
            lost = events(collector, "camera.lost")[0]
            assert lost["data"]["reason"] == "stalled"
            cam.resume()
            await collector.wait_for(lambda: len(events(collector, "camera.connected")) >= 2, within=30)


async def test_a_hung_worker_is_killed_and_replaced(tmp_path: Path, vision_dir: Path, portrait: np.ndarray) -> None:
    """SIGSTOP: the process lives but says nothing; the daemon must not wait on it forever."""
    from wiring import wire

    from gateway.recorder import AsyncStore
    from gateway.store import Store

    store = AsyncStore(Store(tmp_path / "g.db"))
    bus, _ = wire(store)
    async with MjpegCamera([scene(portrait)], fps=5) as cam:
        camera = CameraConfig(id="gate", url=cam.url, detect=[], stall_timeout=1.0)
        worker = CameraWorker(camera, VisionConfig(), tmp_path, bus)
        worker.silence = 4.0
        task = asyncio.create_task(worker.run())
        async with asyncio.timeout(30):
            while worker.status.get("state") != "streaming":  # noqa: ASYNC110 (the worker's pump sets it)
                await asyncio.sleep(0.1)
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(Exception, match="silent"):
            async with asyncio.timeout(20):
                await task
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped, not left stopped
    store.close()


async def test_a_video_file_is_a_camera_that_loops(tmp_path: Path, portrait: np.ndarray) -> None:
    from wiring import wire

    from gateway.recorder import AsyncStore
    from gateway.store import Store

    video = tmp_path / "lobby.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20, (640, 480))
    for k in range(10):  # half a second of a person walking across
        writer.write(scene(np.roll(portrait, 20 * k, axis=1)))
    writer.release()
    store = AsyncStore(Store(tmp_path / "g.db"))
    bus, recorder = wire(store)
    worker = CameraWorker(CameraConfig(id="file", url=str(video), detect=[], fps=20), VisionConfig(), tmp_path,
                          bus)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(30):
            while worker.status.get("frames", 0) <= 25:  # noqa: ASYNC110 (the worker's pump sets it)
                await asyncio.sleep(0.1)
        assert worker.status["state"] == "streaming" and worker.status["bad"] == 0
        assert worker.status["analysed"] > 0
        await recorder.flush()
        kinds = [e["kind"] for _, e in store.store.events_after(0)]
        assert kinds.count("camera.connected") == 1 and "camera.lost" not in kinds  # looping is not reconnecting
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()


def test_motion_gate_sleeps_on_a_still_scene_and_wakes_on_movement(portrait: np.ndarray) -> None:
    gate = MotionGate(MotionConfig(hold=0.0))
    still = scene(portrait)
    assert gate.moving(still, 0.0)  # the first frame of a scene is always looked at
    assert not any(gate.moving(still, t / 5) for t in range(1, 20))
    moved = np.roll(still, 120, axis=1)
    assert gate.moving(moved, 5.0)


def test_motion_masks_and_regions(portrait: np.ndarray) -> None:
    still = np.full((480, 640, 3), 90, np.uint8)
    left = still.copy()
    left[100:300, 20:250] = scene(portrait)[100:300, 200:430]  # movement in the left third only
    masked = MotionGate(MotionConfig(hold=0.0, masks=[[(0, 0), (0.45, 0), (0.45, 1), (0, 1)]]))
    region = MotionGate(MotionConfig(hold=0.0, regions=[[(0.5, 0), (1, 0), (1, 1), (0.5, 1)]]))
    plain = MotionGate(MotionConfig(hold=0.0))
    for gate in (masked, region, plain):
        gate.moving(still, 0.0)
        gate.moving(still, 0.1)
    assert plain.moving(left, 1.0)
    assert not masked.moving(left, 1.0)
    assert not region.moving(left, 1.0)


def test_worker_payloads_are_flattened_to_short_scalars() -> None:
    blob = "/9j/" + "A" * 10_000  # a base64 JPEG
    out = safe_payload({"person": "r-0101", "score": 0.8, "image": blob, "crop": [1, 2, 3], "emb": {"v": 1},
                        "ok": True, 5: "x"})
    assert out == {"person": "r-0101", "score": 0.8, "ok": True}
    assert safe_payload(["not", "a", "dict"]) == {}


def test_camera_passwords_are_redacted() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/ch1") == "rtsp://admin:***@10.0.0.5:554/ch1"
    assert redact_url("http://10.0.0.5/mjpg") == "http://10.0.0.5/mjpg"


class _Recorder:
    """Catches what a worker's lines become (a real Recorder needs a store thread; here only the parsing is tested)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.metas: list[Any] = []

    def event(self, ev: Any) -> None:
        self.events.append(ev)

    def meta(self, key: str, value: Any) -> None:
        self.metas.append((key, value))


_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=st.one_of(
    st.binary(max_size=400),
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"t": st.sampled_from(["event", "status", "x"]),
                           "kind": st.sampled_from(["fall.detected", "face.unknown", "evil", ""]) | st.text(max_size=5),
                           "ts": st.floats() | st.integers() | st.text(max_size=3),
                           "payload": _json}).map(lambda d: json.dumps(d).encode()),
))
def test_hostile_worker_lines_never_crash_and_never_carry_blobs(line: bytes) -> None:
    recorder = _Recorder()
    worker = CameraWorker(CameraConfig(id="cam", url="usb:0"), VisionConfig(), Path("/nonexistent"),
                          recorder)  # type: ignore[arg-type]
    worker.handle(line)
    for ev in recorder.events:
        assert ev.kind in ("fall.detected", "face.unknown") and ev.source == "cam"
        assert ev.payload["camera"] == "cam"
        assert all(not isinstance(v, str) or len(v) <= 200 for v in ev.payload.values())
        assert all(isinstance(v, bool | int | float | str) or v is None for v in ev.payload.values())


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 64), w=st.integers(1, 64), channels=st.sampled_from([None, 1, 3]),
       seed=st.integers(0, 2**16))
def test_motion_gate_takes_any_frame_size(h: int, w: int, channels: int | None, seed: int) -> None:
    gate = MotionGate(MotionConfig(masks=[[(0, 0), (1, 0), (1, 1)]]))
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    for t in range(3):
        frame = rng.integers(0, 255, shape, dtype=np.uint8)
        assert gate.moving(frame if channels != 1 else frame[:, :, 0], float(t)) in (True, False)


def test_snapshots_stay_private_and_are_pruned_by_age_and_size(tmp_path: Path, portrait: np.ndarray) -> None:
    import time

    from models.config import SnapshotConfig
    from models.snapshots import Snapshots

    snaps = Snapshots(tmp_path / "snap" / "lobby", SnapshotConfig(enabled=True, retention=3600, max_mb=0.2))
    names = [snaps.save(scene(portrait), "face.unknown", time.time() + i) for i in range(6)]
    files = sorted((tmp_path / "snap" / "lobby").glob("*.jpg"))
    assert len(files) == 6 and all(n for n in names)
    assert (tmp_path / "snap" / "lobby").stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    old = files[0]
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    removed = snaps.prune(time.time())
    left = sorted((tmp_path / "snap" / "lobby").glob("*.jpg"))
    assert not old.exists() and removed >= 1
    assert sum(f.stat().st_size for f in left) <= 0.2 * 2**20


def test_a_face_that_stays_is_embedded_once_a_second_and_keeps_its_identity(tmp_path: Path, vision_dir: Path,
                                                                             portrait: np.ndarray) -> None:
    from models.face_analyser import FaceAnalyser

    (tmp_path / "models").symlink_to(vision_dir / "models")
    key = tmp_path / "faces.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    enrol(tmp_path, key, "r-0101", portrait, vision_dir)
    vision = VisionConfig.model_validate({"faces": {"key_file": str(key), "cooldown": "1h", "split_frames": False}})
    analyser = FaceAnalyser("door", vision, tmp_path)
    frame = scene(portrait)
    kinds = [[e.kind for e in analyser.analyse(frame, k / 5)] for k in range(15)]  # 3 s at 5 fps
    assert kinds[0] == ["face.recognized"] and not any(kinds[1:])  # one event, then the cooldown holds
    assert analyser.embedded == 3  # t = 0, 1.0 and 2.0 s: not 15
    moved = np.roll(frame, 200, axis=1)  # somebody at another place in the picture is a new face
    analyser.analyse(moved, 3.1)
    assert analyser.embedded == 4


async def test_a_mad_worker_cannot_flood_the_outbox_but_alarms_always_pass() -> None:
    from gateway import cameras

    clock = ManualClock(start=1000.0)
    recorder = _Recorder()
    worker = CameraWorker(CameraConfig(id="cam", url="usb:0"), VisionConfig(), Path("/nonexistent"),
                          recorder, clock=clock)  # type: ignore[arg-type]
    unknown = json.dumps({"t": "event", "kind": "face.unknown", "payload": {"score": 0.1}}).encode()
    fall = json.dumps({"t": "event", "kind": "fall.detected", "payload": {"confidence": 0.9}}).encode()
    for _ in range(500):
        worker.handle(unknown)
        await clock.advance(0.01)
    worker.handle(fall)
    kinds = [e.kind for e in recorder.events]
    assert kinds.count("face.unknown") == cameras.EVENT_LIMIT and kinds[-1] == "fall.detected"
    await clock.advance(61)
    worker.handle(unknown)
    flood = [e for e in recorder.events if e.kind == "camera.flood"]
    assert len(flood) == 1 and flood[0].payload["suppressed"] == 500 - cameras.EVENT_LIMIT
    assert recorder.events[-1].kind == "face.unknown"  # a minute later the camera is heard again


async def test_without_the_vision_extra_a_camera_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ai_edge_litert" else real(name, *a))
    recorder = _Recorder()
    worker = CameraWorker(CameraConfig(id="lounge", url="usb:0", detect=["falls"]), VisionConfig(), Path("/x"),
                          recorder)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.2)
    assert not task.done() and worker.pid is None  # waits; no worker process, no restart loop
    task.cancel()
    (event,) = recorder.events
    assert event.kind == "camera.error" and "ai_edge_litert" in event.payload["error"]
    assert worker.status["state"] == "unavailable"

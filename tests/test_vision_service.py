"""Models shared between cameras: the real daemon, real services, real workers, real models.

One inference service per model family serves every camera (``models.service``, ``models.remote``).
Here a camera worker is killed, a service is killed, cameras come and go by a reload, and hostile
requests reach a service: the others carry on every time, and no worker holds a model of its own.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import running, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vision_data import site_data

from gateway.config import load_config
from gateway.core.data import Event
from gateway.core.timing import wait_until
from gateway.daemon import Daemon
from models import remote
from models.config import VisionConfig
from models.service import Service
from simulators.camera import MjpegCamera, scene


def _config(tmp: Path, vision_dir: Path, cameras: dict[str, tuple[str, list[str]]]) -> Path:
    data, key = site_data(tmp, vision_dir)
    path = tmp / "gateway.toml"
    if not path.exists():
        write_config(path, data_dir=data, mqtt_port=None, buses=[], devices=[])
        (tmp / "base.toml").write_text(path.read_text())
    text = (tmp / "base.toml").read_text() + f'\n[vision.faces]\nkey_file = "{key}"\n'
    for cid, (url, detect) in cameras.items():
        text += (f'\n[[cameras]]\nid = "{cid}"\nurl = "{url}"\nfps = 5\ndetect = {json.dumps(detect)}\n'
                 'stall_timeout = "2s"\nreconnect_max = "2s"\nmotion = { enabled = false }\n')
    path.write_text(text)
    return path


def _image(vision_dir: Path) -> np.ndarray[Any, np.dtype[np.uint8]]:
    image = cv2.imread(str(vision_dir / "testdata" / "astronaut.png"))
    assert image is not None
    return np.asarray(image, dtype=np.uint8)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def _until(check: Callable[[], Any], within: float = 30.0, what: str = "") -> None:
    await wait_until(check, within, what or "the condition")


def _answered_again(call: Callable[[], Any], within: float = 10.0) -> Any:
    """A proxy's call once the restarted service answers: the proxy waits out its retry backoff itself, so the
    test waits on the answer, not on the clock."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except remote.ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the call itself is the condition


def _analysed(daemon: Daemon, camera: str) -> int:
    return int(daemon.cameras[camera].status.get("analysed", 0) or 0)


async def test_cameras_share_the_services_and_survive_a_killed_worker_a_killed_service_and_a_reload(
        tmp_path: Path, vision_dir: Path) -> None:
    portrait = _image(vision_dir)
    async with MjpegCamera([scene(portrait)], fps=5) as cam:
        # No gallery yet: both faces workers create it as they start (a collision on SQLite's first WAL switch is
        # retried, tests/test_gallery_open.py).
        path = _config(tmp_path, vision_dir, {"door": (cam.url, ["faces", "plates"]), "hall": (cam.url, ["faces"])})
        daemon = Daemon(load_config(path), config_path=path)
        seen: list[Event] = []
        daemon.bus.on_event(seen.append)
        async with running(daemon):
            await _until(lambda: _analysed(daemon, "door") > 0 and _analysed(daemon, "hall") > 0, 60, "analysing")
            tasks = daemon.supervisor.tasks
            assert "vision:faces" in tasks and "vision:plates" in tasks and "vision:pose" not in tasks
            faces, plates = (daemon.services.running[f][1] for f in ("faces", "plates"))
            assert faces.pid and plates.pid
            door, hall = daemon.cameras["door"].pid, daemon.cameras["hall"].pid
            assert door and hall
            plates_pid = plates.pid
            # The models are in the services, once; the workers only send frames.
            assert "onnxruntime" in _maps(faces.pid) and "onnxruntime" in _maps(plates.pid)
            assert "ai_edge_litert" not in _maps(faces.pid) + _maps(plates.pid)  # each only what its family needs
            assert "onnxruntime" not in _maps(door) and "onnxruntime" not in _maps(hall)
            assert faces.status["state"] == "serving" and plates.status["state"] == "serving"

            # A camera killed: the services and the other camera never notice.
            os.kill(door, signal.SIGKILL)
            before = _analysed(daemon, "hall")
            await _until(lambda: daemon.cameras["door"].pid not in (None, door), 30, "door restarted")
            await _until(lambda: _analysed(daemon, "door") > 0 and _analysed(daemon, "hall") > before + 5, 30)
            assert (faces.pid, plates.pid, daemon.cameras["hall"].pid) == (faces.pid, plates.pid, hall)
            crashed = [e.source for e in seen if e.kind == "gateway.task_crashed"]
            assert crashed == ["camera:door"], crashed

            # A service killed: it is restarted, the cameras' frames in the gap are errors, no worker dies.
            door = daemon.cameras["door"].pid
            old = faces.pid
            os.kill(old, signal.SIGKILL)
            await _until(lambda: faces.pid not in (None, old) and faces.status.get("state") == "serving", 30,
                         "faces service back")
            await _until(lambda: any(e.kind == "camera.error" and "faces service" in e.payload.get("error", "")
                                     for e in seen), 10, "the gap said")
            count = _analysed(daemon, "hall")
            await _until(lambda: _analysed(daemon, "hall") > count + 10, 30, "hall analysing again")
            errors, count = int(daemon.cameras["hall"].status.get("errors", 0)), _analysed(daemon, "hall")
            await _until(lambda: _analysed(daemon, "hall") > count + 10, 30, "hall analysing on")
            assert int(daemon.cameras["hall"].status.get("errors", 0)) == errors  # the gap is over
            assert (daemon.cameras["door"].pid, daemon.cameras["hall"].pid) == (door, hall)
            crashed = [e.source for e in seen if e.kind == "gateway.task_crashed"]
            assert crashed == ["camera:door", "vision:faces"], crashed

            # A reload: a falls camera comes, the plates camera goes; the services follow.
            _config(tmp_path, vision_dir, {"hall": (cam.url, ["faces"]), "yard": (cam.url, ["falls"])})
            answer = await daemon.reload("test")
            assert answer["applied"] is True, answer
            await _until(lambda: "yard" in daemon.cameras and _analysed(daemon, "yard") > 0, 60, "yard analysing")
            tasks = daemon.supervisor.tasks
            assert "vision:pose" in tasks and "vision:plates" not in tasks and "vision:faces" in tasks
            pose = daemon.services.running["pose"][1]
            assert pose.pid and "ai_edge_litert" in _maps(pose.pid) and "onnxruntime" not in _maps(pose.pid)
            assert daemon.cameras["hall"].pid == hall and faces.pid not in (None, old)
            assert "plates" not in daemon.services.running  # stopped, and its process reaped:
            with pytest.raises(ProcessLookupError):
                os.kill(plates_pid, 0)
        assert not [e for e in seen if e.kind == "camera.error" and "service" not in e.payload.get("error", "")]


async def test_a_hung_service_is_killed_and_restarted_and_the_cameras_carry_on(
        tmp_path: Path, vision_dir: Path) -> None:
    """A stopped (SIGSTOP) pose service: not dead, so nothing exits, and every fall frame would time out for ever.
    The daemon's ping goes unanswered, the service is killed and restarted, the camera analyses again. The
    ping interval, its timeout and the restart backoff run on a manual clock: no waiting on them."""
    from gateway import vision_services as cams
    from gateway.bus import LocalBus
    from gateway.cameras import CameraWorker
    from gateway.core.timing import ManualClock
    from gateway.supervisor import Supervisor
    from gateway.vision_services import VisionServices

    portrait = _image(vision_dir)
    async with MjpegCamera([scene(portrait)], fps=5) as cam:
        cfg = load_config(_config(tmp_path, vision_dir, {"yard": (cam.url, ["falls"])}))
        clock = ManualClock(start=1000.0)
        bus = LocalBus(clock)
        seen: list[Event] = []
        bus.on_event(seen.append)
        supervisor = Supervisor(bus, clock=clock, min_backoff=1.0)
        services = VisionServices(cfg.store.data_dir, bus, supervisor, clock=clock)
        worker = CameraWorker(cfg.cameras[0], cfg.vision, cfg.store.data_dir, bus, clock=clock, services=services)
        try:
            await services.sync(cfg.cameras, cfg.vision)
            supervisor.spawn("camera:yard", worker.run)
            pose = services.running["pose"][1]
            await _until(lambda: pose.status.get("state") == "serving" and _camera_analysed(worker) > 0, 60,
                         "analysing")
            # A healthy service answers every ping (busy serving the camera as it is).
            for n in (1, 2, 3):
                await clock.advance(cams.PING_EVERY)
                await _until(functools.partial(_answered, pose, n), 10, f"pong {n}")
            assert not [e for e in seen if e.kind == "gateway.task_crashed"]
            hung = pose.pid
            assert hung
            os.kill(hung, signal.SIGSTOP)
            await _until(lambda: _stopped(hung), 10, "every thread of the service stopped")
            try:
                await clock.advance(cams.PING_EVERY)
                await _until(lambda: pose.pinging, 10, "the ping sent")
                await clock.advance(cams.PING_TIMEOUT)
                await _until(lambda: any(e.kind == "gateway.task_crashed" for e in seen), 10, "said crashed")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(hung, signal.SIGCONT)
            (crash,) = [e for e in seen if e.kind == "gateway.task_crashed"]
            assert crash.source == "vision:pose" and "hung: no answer to a ping" in crash.payload["error"]
            with pytest.raises(ProcessLookupError):  # killed and reaped
                os.kill(hung, 0)
            await clock.advance(2.0)  # the supervisor's backoff
            await _until(lambda: pose.pid not in (None, hung) and pose.status.get("state") == "serving", 30,
                         "pose service back")
            # The camera carries on with the new service: frames analysed, and the errors of the gap are over.
            count = _camera_analysed(worker)
            await _until(lambda: _camera_analysed(worker) > count + 5, 30, "yard analysing again")
            errors, count = int(worker.status.get("errors", 0)), _camera_analysed(worker)
            await _until(lambda: _camera_analysed(worker) > count + 5, 30, "yard analysing on")
            assert int(worker.status.get("errors", 0)) == errors
            assert [e.source for e in seen if e.kind == "gateway.task_crashed"] == ["vision:pose"]
        finally:
            await supervisor.stop()


async def test_a_hung_plates_service_never_holds_the_falls_lane_back(tmp_path: Path, vision_dir: Path) -> None:
    """A gate camera with plates and falls, its plates service stopped (SIGSTOP) and not yet found out by the
    daemon (the ping's clock is not stepped): each plates call would wait its 10 s timeout, but the frames go on
    without plates after LANE_WAIT and the pose lane sees every one of them."""
    from gateway.bus import LocalBus
    from gateway.cameras import CameraWorker
    from gateway.core.timing import ManualClock
    from gateway.supervisor import Supervisor
    from gateway.vision_services import VisionServices

    portrait = _image(vision_dir)
    async with MjpegCamera([scene(portrait)], fps=5) as cam:
        cfg = load_config(_config(tmp_path, vision_dir, {"gate": (cam.url, ["plates", "falls"])}))
        clock = ManualClock(start=1000.0)
        bus = LocalBus(clock)
        supervisor = Supervisor(bus, clock=clock, min_backoff=1.0)
        services = VisionServices(cfg.store.data_dir, bus, supervisor, clock=clock)
        worker = CameraWorker(cfg.cameras[0], cfg.vision, cfg.store.data_dir, bus, clock=clock, services=services)
        try:
            await services.sync(cfg.cameras, cfg.vision)
            supervisor.spawn("camera:gate", worker.run)
            plates = services.running["plates"][1]
            await _until(lambda: plates.status.get("state") == "serving" and _camera_analysed(worker) > 0, 60,
                         "analysing")
            hung = plates.pid
            assert hung
            os.kill(hung, signal.SIGSTOP)
            try:
                await _until(lambda: _stopped(hung), 10, "every thread of the service stopped")
                count = _camera_analysed(worker)
                # 40 frames (8 s at 5 fps): held back by the 10 s plates calls, 40 s gives a handful at most.
                await _until(lambda: _camera_analysed(worker) > count + 40, 40, "frames analysed without plates")
                await _until(lambda: int(worker.status.get("lane_skipped", 0) or 0) > 5, 20, "plates skipped")
                assert "falls" in (worker.status.get("ms") or {})
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(hung, signal.SIGCONT)
        finally:
            await supervisor.stop()


def _answered(service: Any, n: int) -> bool:
    return bool(service.pongs == n and not service.pinging)


def _stopped(pid: int) -> bool:
    """Every thread of the process in the stopped state (a group stop reaches the threads one by one)."""
    states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in Path(f"/proc/{pid}/task").iterdir()]
    return all(state == "T" for state in states)


def _camera_analysed(worker: Any) -> int:
    return int(worker.status.get("analysed", 0) or 0)


# -- one service process, spoken to directly ------------------------------------------------------


@pytest.fixture(scope="module")
def faces_service(vision_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Path]]:
    """The faces service, a real process; yields a function giving its socket (``restart=True``: a new one)."""
    run_dir = Path(tmp_path_factory.mktemp("run"))
    sock = run_dir / "vision" / "faces.sock"
    procs: list[subprocess.Popen[bytes]] = []

    def start(*, restart: bool = False) -> Path:
        if procs and not restart:
            return sock
        job = json.dumps({"vision": VisionConfig().model_dump(mode="json"), "data_dir": str(vision_dir),
                          "socket": str(sock)}).encode() + b"\n"
        proc = subprocess.Popen([sys.executable, "-m", "models.service", "faces"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdin and proc.stdout
        proc.stdin.write(job)
        proc.stdin.close()
        ready = json.loads(proc.stdout.readline())
        assert ready["t"] == "ready" and not ready["error"], ready
        procs.append(proc)
        return sock

    start()
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_proxy_answers_as_the_model_does_and_survives_a_service_restart(
        vision_dir: Path, faces_service: Callable[..., Path]) -> None:
    from models.faces import FaceDetector, align
    from models.fetch import model_path
    from models.hosting import FAMILIES

    socket_path = faces_service()
    frame = _image(vision_dir)
    local = FaceDetector(model_path(vision_dir, "yunet"), threads=1)
    hosted = remote.connect("faces", socket_path)
    assert set(hosted) == set(FAMILIES["faces"](vision_dir, VisionConfig()))
    want, got = local.detect(frame), hosted["detector"].detect(frame)
    assert len(got) == len(want) == 1
    assert np.allclose(got[0].box, want[0].box, atol=1e-3) and np.allclose(got[0].landmarks, want[0].landmarks)
    assert hosted["detector"].size == local.size  # a plain attribute, read without a call
    view = frame[:, ::-1]  # a strided view goes through the shared memory as well
    assert len(hosted["detector"].detect(view)) == 1
    big = cv2.resize(frame, (1920, 1920))  # larger than the first shared memory: a new one is sent
    assert len(hosted["detector"].detect(big)) == 1
    aligned = align(frame, want[0].landmarks)
    vec = hosted["embedder"].embed(aligned)
    assert vec.shape == (128,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-4
    with pytest.raises(remote.RemoteError, match="no method"):
        hosted["detector"].teleport(frame)
    with pytest.raises(remote.RemoteError):
        hosted["detector"].detect("not a frame")  # the model raises; the service answers and goes on
    assert len(hosted["detector"].detect(frame)) == 1

    pid = _pid_of(socket_path)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(remote.ServiceUnavailable, match="faces service"):
        hosted["detector"].detect(frame)
    faces_service(restart=True)
    assert len(_answered_again(lambda: hosted["detector"].detect(frame))) == 1  # the same proxy, connected again


def test_the_live_frame_blurs_faces_with_the_services_detector(
        tmp_path: Path, vision_dir: Path, faces_service: Callable[..., Path]) -> None:
    """A worker told the faces service asks its detector for the faces to blur (at the blur score): nothing loaded
    in the worker (its data dir here has no model at all), and still no face left on the blurred frame; with
    the service gone a frame is pixelated whole, never shown with a face."""
    from models import live as frames
    from models.faces import FaceDetector
    from models.fetch import model_path
    from models.hosting import use_services
    from models.liveframe import BLUR_SCORE, LiveFrames, face_finder

    frame = np.asarray(scene(_image(vision_dir)), dtype=np.uint8)
    look = FaceDetector(model_path(vision_dir, "yunet"), score_threshold=BLUR_SCORE)
    assert len(look.detect(frame)) >= 1
    bare = tmp_path / "bare"  # no models here: a detector loaded in the worker could not exist
    bare.mkdir()
    use_services({"faces": str(faces_service())})
    try:
        find = face_finder(bare)
        boxes = find(frame)
        assert boxes is not None and len(boxes) >= 1
        now = [100.0]
        live = LiveFrames(bare, "door", find, clock=lambda: now[0])
        frames.want(bare, "door")
        assert live.offer(frame, [], faces_looked=True)
        jpeg = (frames.live_dir(bare, "door") / frames.BLURRED).read_bytes()
        blurred = np.asarray(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), dtype=np.uint8)
        assert blurred.shape == frame.shape and look.detect(blurred) == []
        x, y, w, h = (int(v) for v in boxes[0])
        outside = np.ones(frame.shape[:2], bool)
        outside[max(0, y - h):y + 2 * h, max(0, x - w):x + 2 * w] = False
        assert float(np.abs(blurred.astype(float) - frame)[outside].mean()) < 5  # only the faces, not the picture

        os.kill(_pid_of(faces_service()), signal.SIGKILL)
        assert find(frame) is None  # cannot answer for this frame: all of it is pixelated
        faces_service(restart=True)
        deadline = time.monotonic() + 10
        while find(frame) is None and time.monotonic() < deadline:  # back once the proxy's retry backoff is over
            time.sleep(0.05)
        assert find(frame) is not None
    finally:
        use_services({})


def _pid_of(sock: Path) -> int:
    """The service's pid, as the kernel says who is at the other end of a connection (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        pid, _uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(pid)


def _dotted_global_call(module: str, name: str, arg: str) -> bytes:
    """A pickle that names ``module`` + a dotted ``name`` (an attribute walk, e.g. to ``os.system``) and calls it."""
    def text(t: str) -> bytes:
        raw = t.encode()
        return b"\x8c" + bytes([len(raw)]) + raw + b"\x94"  # SHORT_BINUNICODE, MEMOIZE

    return b"\x80\x04" + text(module) + text(name) + b"\x93\x94" + text(arg) + b"\x85R."  # STACK_GLOBAL, TUPLE1, REDUCE


def test_the_unpickler_names_data_only(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    refused = [("models.remote", "os.system"), ("numpy", "load"), ("models.service", "main"), ("posix", "system"),
               ("builtins", "eval"), ("numpy.core.multiarray", "fromstring"), ("models.nowhere", "X")]
    for module, name in refused:
        with pytest.raises(pickle.UnpicklingError):
            remote.loads(_dotted_global_call(module, name, f"touch {marker}"))
    assert not marker.exists()
    from models.faces import Face

    buffers: list[pickle.PickleBuffer] = []
    value = {"frame": np.zeros((4, 5, 3), np.uint8), "score": np.float32(0.5),
             "face": Face((1.0, 2.0, 3.0, 4.0), np.ones((5, 2), np.float32), 0.9, None)}
    back = remote.loads(remote.dumps(value, buffers), [b.raw() for b in buffers])
    assert back["frame"].shape == (4, 5, 3) and float(back["score"]) == 0.5
    assert isinstance(back["face"], Face) and back["face"].box == (1.0, 2.0, 3.0, 4.0)


def test_hostile_bytes_on_the_socket_never_stop_the_service(vision_dir: Path,
                                                            faces_service: Callable[..., Path]) -> None:
    sock_path = faces_service()
    frame = _image(vision_dir)
    hosted = remote.connect("faces", sock_path)
    assert len(hosted["detector"].detect(frame)) == 1
    attacks = [
        b"\xff" * 64,  # a length far over the limit
        remote.HEAD.pack(10, 1000),  # too many buffers
        remote.pack(b"not a pickle at all", []),
        remote.pack(pickle.dumps(("call", "detector", "detect", (), {}))[:-3], []),  # cut short
        remote.pack(pickle.dumps(os.system), []),  # a class the unpickler must refuse
        remote.pack(_dotted_global_call("models.remote", "os.system", f"touch {sock_path.parent}/ran"), []),
        remote.pack(pickle.dumps(("call", "detector", "__init__", (), {})), []),
        remote.pack(pickle.dumps(("call", "detector", "detect", (), {})), [(0, 1 << 40)]),  # outside the memory
    ]
    for attack in attacks:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock_path))
            s.sendall(attack)
            s.shutdown(socket.SHUT_WR)
            try:
                reply = b"".join(iter(lambda: s.recv(65536), b""))
            except ConnectionResetError:  # closed on us with our bytes unread: a refusal too
                reply = b""
            if reply:
                body = reply[remote.HEAD.size:]
                answer = remote.loads(body)
                assert answer[0] == "error", (attack[:40], answer)
    assert not (sock_path.parent / "ran").exists()  # the dotted-name pickle ran nothing
    # A frame memory not sealed against resizing, shrunk once sent: mapped, reading it would be SIGBUS.
    fd = os.memfd_create("hostile")
    os.ftruncate(fd, 1 << 20)
    buffers: list[pickle.PickleBuffer] = []
    body = remote.dumps(("call", "detector", "detect", (frame,), {}), buffers)
    raw = buffers[0].raw()
    os.pwrite(fd, raw, 0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendmsg([remote.pack(body, [(0, raw.nbytes)])],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        os.ftruncate(fd, 0)
        answer = remote.loads(remote.recv_message(s)[0])
    os.close(fd)
    assert answer[0] == "error" and "outside the shared memory" in answer[2], answer
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # a peer that hangs up mid-message
        s.connect(str(sock_path))
        s.sendall(remote.HEAD.pack(1000, 0) + b"abc")
    assert len(hosted["detector"].detect(frame)) == 1  # the service is there, serving


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=300),
                      st.builds(lambda a, b, c: pickle.dumps((a, b, c)),
                                st.sampled_from(["call", "hello", "ping", "x"]),
                                st.text(max_size=12), st.one_of(st.integers(), st.text(max_size=8)))),
       slots=st.lists(st.tuples(st.integers(0, 1 << 62), st.integers(0, 1 << 62)), max_size=4))
def test_any_request_gets_an_answer_and_never_an_exception(tmp_path: Path, body: bytes,
                                                           slots: list[tuple[int, int]]) -> None:
    service = Service("plates", VisionConfig(), tmp_path, tmp_path / "s.sock", pool=1)  # no models: loads fail
    answer = service.handle(body, slots, None)
    assert isinstance(answer, tuple) and answer[0] in ("error", "hello", "pong")


def test_bench_cameras_measures_real_processes_with_stable_keys(vision_dir: Path) -> None:
    """The bench's machinery, one short run (the figures themselves belong to the bench, not to a test)."""
    out = subprocess.run([sys.executable, "-m", "gateway", "bench", "cameras", "--data-dir", str(vision_dir),
                          "--cameras", "1", "--layouts", "shared", "--seconds", "2", "--warmup", "1",
                          "--detect", "faces,falls", "--json"],
                         capture_output=True, text=True, timeout=50, check=False)
    doc = json.loads(out.stdout)
    assert out.returncode == 0, (doc["problems"], out.stderr[-500:])
    assert doc["bench"] == "cameras" and doc["params"]["cameras"] == [1] and doc["params"]["layouts"] == ["shared"]
    (row,) = doc["runs"]
    assert doc["params"]["detect"] == ["faces", "falls"] and set(row["services"]) == {"faces", "pose"}
    assert row["services"]["pose"]["calls"]["landmarker"]["calls"] > 0  # the service's own counters, by ping
    assert 0 < row["per_camera"][0]["pss_mb"] <= row["per_camera"][0]["rss_mb"]
    assert row["pss_mb_total"] > row["per_camera"][0]["pss_mb"] and row["latency"]["n"] > 0
    assert row["camera_errors"] == 0


def test_a_vision_edit_restarts_only_the_services_whose_models_it_changes() -> None:
    from gateway.vision_services import service_key
    from models.config import VisionConfig

    base = VisionConfig()
    allowlist = VisionConfig.model_validate({"plates": {"allowlist": ["京A12345"]}, "falls": {"hold": "8s"}})
    wider = VisionConfig.model_validate({"plates": {"detect_max_side": 1280}})
    onnx = VisionConfig.model_validate({"faces": {"embedder": "onnxruntime"}})
    for family in ("faces", "plates", "pose"):
        assert service_key(family, allowlist) == service_key(family, base), family  # lists and holds: workers only
    assert service_key("plates", wider) != service_key("plates", base)
    assert service_key("pose", wider) == service_key("pose", base) and service_key("faces", wider) == service_key(
        "faces", base)
    assert service_key("faces", onnx) != service_key("faces", base)

"""The status page in a real headless browser (Playwright driving Debian's Chromium) against a real daemon: it
loads under its CSP without an error, a value follows the simulated meter, an operator acknowledges an alarm and
the audit names them; a camera's latest frame reaches the page, faces blurred unless the viewer has the faces
role (checked with the face detector itself)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import free_port, running, write_config
from playwright.async_api import Browser, Page, async_playwright, expect
from test_web import PASSWORDS, add_user, call, eventually, meter, serving, site_config

from gateway.config import load_config
from gateway.daemon import Daemon
from models import live as frames
from models.config import CameraConfig
from models.liveframe import LiveFrames, face_finder
from models.worker import CameraLoop, Out
from simulators.camera import MjpegCamera, scene

CHROMIUM = "/usr/bin/chromium"


def chromium() -> str:
    """Debian's Chromium (browser downloads are unreachable in CI); a missing one fails the test, never skips it."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install chromium (scripts/setup.sh --test)")
    return CHROMIUM


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


def watch_console(page: Page) -> list[str]:
    """Every console error and uncaught exception on the page (a CSP refusal shows up here)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


async def test_the_page_loads_follows_the_meter_and_an_operator_acknowledges(tmp_path: Path) -> None:
    port = free_port()
    async with meter() as server:
        server.meters[0].freeze()
        server.meters[0].set_point("voltage_a", 251.0)
        config = site_config(tmp_path, server, web=f'port = {port}\nusers_file = "{tmp_path / "web-users"}"')
        await add_user(config, "alice", PASSWORDS["alice"], ["operator"])
        async with running(Daemon(load_config(config))) as daemon, browser() as b:
            await serving(port)
            context = await b.new_context(http_credentials={"username": "alice", "password": PASSWORDS["alice"]})
            page = await context.new_page()
            errors = watch_console(page)
            await page.goto(f"http://127.0.0.1:{port}/")
            await expect(page.locator("#site")).to_have_text("test-site")
            await expect(page.locator("#who")).to_contain_text("alice")
            value = page.locator('[data-point="meter-0.voltage_a"]')
            await expect(value).to_have_text("251", timeout=15000)
            await expect(page.locator('tr[data-device="meter-0"]')).to_contain_text("online")
            await expect(page.locator("#buses")).to_contain_text("bus-0")
            server.meters[0].set_point("voltage_a", 252.5)  # the page follows the meter without a reload
            await expect(value).to_have_text("252.5", timeout=15000)

            row = page.locator("tr[data-alarm]")
            await expect(row).to_contain_text("active_unack", timeout=15000)
            await row.locator('button[data-action="acknowledge"]').click()
            await expect(row).to_contain_text("active_ack", timeout=10000)
            await expect(row).to_contain_text("web:alice")
            await expect(page.locator("#message")).to_contain_text("acknowledge")
            assert not errors, errors

            async def audited() -> bool:
                entries = await daemon.store.run(daemon.store.store.audit_entries, 50)
                return any(e.get("actor") == "web:alice" and e.get("result") == "ok" for e in entries)

            await eventually(audited)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "audit", "-c", str(config),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    line = next(x for x in out.decode().splitlines() if "web:alice" in x)
    assert "alarm acknowledge" in line and "ok" in line


async def test_a_viewer_without_a_login_sees_the_page_read_only(tmp_path: Path) -> None:
    port = free_port()
    async with meter() as server:
        server.meters[0].freeze()
        server.meters[0].set_point("voltage_a", 251.0)
        async with running(Daemon(load_config(site_config(tmp_path, server, web=f"port = {port}")))), \
                browser() as b:
            await serving(port)
            page = await b.new_page()
            errors = watch_console(page)
            await page.goto(f"http://localhost:{port}/")
            await expect(page.locator("#who")).to_contain_text("read-only")
            await expect(page.locator("tr[data-alarm]")).to_contain_text("active_unack", timeout=15000)
            assert await page.locator("tr[data-alarm] button").count() == 0
            assert not errors, errors


# -- camera frames ---------------------------------------------------------------------------------------------------


def faces_in(jpeg: bytes, vision_dir: Path) -> int:
    from models.faces import FaceDetector
    from models.fetch import model_path

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return len(FaceDetector(model_path(vision_dir, "yunet")).detect(image))


@pytest.fixture
def portrait(vision_dir: Path) -> np.ndarray[Any, Any]:
    image = cv2.imread(str(vision_dir / "testdata" / "astronaut.png"))
    assert image is not None
    return image


async def test_camera_frames_reach_the_page_faces_blurred_unless_the_viewer_may_see_them(
        tmp_path: Path, vision_dir: Path, portrait: np.ndarray[Any, Any]) -> None:
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(vision_dir / "models")
    key = tmp_path / "faces.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    async with MjpegCamera([scene(portrait)], fps=10) as cam:
        path = write_config(tmp_path / "gateway.toml", data_dir=data, mqtt_port=None, buses=[], devices=[],
                            extra=f'\n[web]\nport = {port}\nusers_file = "{tmp_path / "web-users"}"\n')
        path.write_text(path.read_text() + f'\n[vision.faces]\nkey_file = "{key}"\n\n[[cameras]]\nid = "lobby"\n'
                        f'url = "{cam.url}"\nfps = 5\ndetect = ["faces"]\n')
        await add_user(path, "vic", PASSWORDS["vic"], ["viewer"])
        await add_user(path, "fay", PASSWORDS["fay"], ["viewer", "faces"])
        async with running(Daemon(load_config(path))), browser() as b:
            await serving(port)
            got: dict[str, tuple[dict[str, str], bytes]] = {}

            async def frame(user: str) -> bool:
                status, headers, body = await call(port, "GET", "/api/cameras/lobby/frame.jpg", user=user)
                if status == 200:
                    got[user] = (headers, body)
                return status == 200

            await eventually(lambda: frame("vic"), within=90)  # the worker loads its models first
            await eventually(lambda: frame("fay"), within=10)
            assert got["vic"][0]["x-faces"] == "blurred" and got["fay"][0]["x-faces"] == "shown"
            assert got["vic"][0]["content-type"] == "image/jpeg" and got["vic"][0]["cache-control"] == "no-store"
            assert faces_in(got["fay"][1], vision_dir) >= 1, "the faces role sees the face"
            assert faces_in(got["vic"][1], vision_dir) == 0, "a viewer's frame still shows a face"
            live = frames.live_dir(data, "lobby")
            assert stat.S_IMODE(live.stat().st_mode) == 0o700
            assert {stat.S_IMODE((live / n).stat().st_mode) for n in (frames.RAW, frames.BLURRED)} == {0o600}

            context = await b.new_context(http_credentials={"username": "vic", "password": PASSWORDS["vic"]})
            page = await context.new_page()
            errors = watch_console(page)
            await page.goto(f"http://127.0.0.1:{port}/")
            figure = page.locator('figure[data-camera="lobby"]')
            await expect(figure).to_contain_text("faces blurred", timeout=15000)

            async def drawn() -> bool:
                width = await figure.locator("img").evaluate("img => img.complete ? img.naturalWidth : 0")
                return bool(width)

            await eventually(drawn)
            assert not [e for e in errors if "frame.jpg" not in e], errors  # a 503 before the first frame is fine


def test_the_worker_writes_frames_only_while_watched_and_removes_them_after(tmp_path: Path, vision_dir: Path,
                                                                            portrait: np.ndarray[Any, Any]) -> None:
    """LiveFrames as the worker runs it, on a controllable clock: nothing unwatched, at most one a second, faces
    blurred from the boxes it is given, the whole picture pixelated when no face model exists, gone when the page
    stops asking."""
    from models.faces import FaceDetector
    from models.fetch import model_path

    detector = FaceDetector(model_path(vision_dir, "yunet"))
    now = [100.0]
    live = LiveFrames(tmp_path, "door", lambda f: [face.box for face in detector.detect(f)], clock=lambda: now[0])
    frame = scene(portrait)
    directory = frames.live_dir(tmp_path, "door")
    assert not live.offer(frame, None, faces_looked=False)  # nobody watches
    assert not (directory / frames.RAW).exists()
    frames.want(tmp_path, "door")  # a viewer without the faces role: no unblurred picture on disk at all
    now[0] += 1.0
    assert live.offer(frame, [("face", (10.0, 10.0, 50.0, 50.0), "r-0101")], faces_looked=False)
    assert (directory / frames.BLURRED).exists() and not (directory / frames.RAW).exists()
    frames.want(tmp_path, "door", raw=True)  # one with it
    now[0] += 1.0
    assert live.offer(frame, [("face", (10.0, 10.0, 50.0, 50.0), "r-0101")], faces_looked=False)
    assert not live.offer(frame, None, faces_looked=False)  # within the second
    raw, blurred = ((directory / n).read_bytes() for n in (frames.RAW, frames.BLURRED))
    assert faces_in(raw, vision_dir) >= 1 and faces_in(blurred, vision_dir) == 0
    stale = time.time() - frames.WATCHED_FOR - 5
    os.utime(directory / frames.WANT_RAW, (stale, stale))  # the faces viewer left; the other still watches
    now[0] += 2.0
    assert live.offer(frame, None, faces_looked=False)
    assert (directory / frames.BLURRED).exists() and not (directory / frames.RAW).exists()

    blind = LiveFrames(tmp_path, "hall", lambda f: None, clock=lambda: now[0])
    frames.want(tmp_path, "hall")
    assert blind.offer(frame, None, faces_looked=False)
    image = cv2.imdecode(np.frombuffer((frames.live_dir(tmp_path, "hall") / frames.BLURRED).read_bytes(), np.uint8),
                         cv2.IMREAD_GRAYSCALE)
    assert faces_in((frames.live_dir(tmp_path, "hall") / frames.BLURRED).read_bytes(), vision_dir) == 0
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert float(np.abs(image.astype(np.float64) - grey).mean()) > 5  # the picture is gone, not just a box

    stale = time.time() - frames.WATCHED_FOR - 5
    os.utime(directory / frames.WANT, (stale, stale))
    now[0] += 2.0
    assert not live.offer(frame, None, faces_looked=False)
    assert not (directory / frames.RAW).exists() and not (directory / frames.BLURRED).exists()


def test_a_face_the_analyser_missed_is_blurred_all_the_same(tmp_path: Path, vision_dir: Path,
                                                            portrait: np.ndarray[Any, Any]) -> None:
    """The faces analyser looked and found nothing it was sure of: the blurred frame is still blurred by the live
    frame's own, more generous detector."""
    now = [100.0]
    live = LiveFrames(tmp_path, "door", face_finder(vision_dir), clock=lambda: now[0])
    frame = scene(portrait)
    assert faces_in(cv2.imencode(".jpg", frame)[1].tobytes(), vision_dir) >= 1
    frames.want(tmp_path, "door")
    assert live.offer(frame, [], faces_looked=True)
    assert faces_in((frames.live_dir(tmp_path, "door") / frames.BLURRED).read_bytes(), vision_dir) == 0


def test_frames_left_over_are_never_served_and_are_swept(tmp_path: Path) -> None:
    """A worker that died (or a camera removed) leaves its files: the server neither serves one older than STALE
    nor keeps it."""
    directory = frames.live_dir(tmp_path, "gone")
    frames.want(tmp_path, "gone", raw=True)
    for name in (frames.RAW, frames.BLURRED):
        frames.write_atomically(directory, name, b"\xff\xd8 a frame")
    assert frames.latest(tmp_path, "gone", faces=True) is not None
    old = time.time() - frames.STALE - 1
    os.utime(directory / frames.RAW, (old, old))
    assert frames.latest(tmp_path, "gone", faces=True) is None and not (directory / frames.RAW).exists()
    assert frames.sweep(tmp_path) == 0  # nothing old: the fresh frame and the want files stay
    for entry in directory.iterdir():
        os.utime(entry, (old, old))
    assert frames.sweep(tmp_path) == 3 and list(directory.iterdir()) == []


def test_a_live_frame_that_cannot_be_written_never_stops_the_analysis(tmp_path: Path,
                                                                      portrait: np.ndarray[Any, Any]) -> None:
    """A full disk or a bad frame for OpenCV while the page is open: counted and said, live frames paused,
    every frame still analysed."""
    camera = CameraConfig.model_validate({"id": "door", "url": "usb:0"})
    stream = io.StringIO()
    live = LiveFrames(tmp_path, "door", lambda f: [])
    loop = CameraLoop(camera, [], Out(stream, "door"), None, live)
    frames.want(tmp_path, "door")
    (frames.live_dir(tmp_path, "door") / frames.BLURRED).mkdir()  # the frame cannot replace a directory
    frame = scene(portrait)
    for n in range(5):
        loop.analyse(frame, 100.0 + n)
    assert loop.counts["gated"] + loop.counts["analysed"] == 5 and loop.counts["live_errors"] >= 1
    said = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["payload"]["stage"] for e in said if e.get("kind") == "camera.error"] == ["live"] * loop.counts[
        "live_errors"]

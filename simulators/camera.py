"""A camera on 127.0.0.1: real images served as an HTTP MJPEG stream, as cheap IP cameras do.

The gateway's capture path (OpenCV's FFmpeg reader, reconnects, stall detection) is exercised for
real: the stream is ``multipart/x-mixed-replace`` JPEG over HTTP. A test can change the scene,
freeze the stream (the connection stays open but nothing more is sent, like a hung camera), or
drop every client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from simulators.endpoints import bound_port

BOUNDARY = b"gatewayframe"
Frame = NDArray[np.uint8]


def scene(image: Frame, *, width: int = 640, height: int = 480, scale: float = 0.6,
          background: int = 90) -> Frame:
    """A camera-sized frame with ``image`` in the middle at ``scale`` of the frame height."""
    frame = np.full((height, width, 3), background, dtype=np.uint8)
    h, w = image.shape[:2]
    side = max(1, round(height * scale))
    fitted = cv2.resize(image, (max(1, round(w * side / h)), side), interpolation=cv2.INTER_AREA)
    fh, fw = fitted.shape[:2]
    fw, fitted = min(fw, width), fitted[:, :width]
    y, x = (height - fh) // 2, (width - fw) // 2
    frame[y:y + fh, x:x + fw] = fitted
    return frame


def posed(image: Frame, hips: tuple[float, float], angle: float, x: float, y: float, *, side: int = 240,
          width: int = 640, height: int = 480, background: int = 115) -> Frame:
    """The person in ``image`` scaled to ``side`` px, turned by ``angle`` degrees about their hips
    (``hips`` in source pixels), hips placed at (x, y): frames for falls, sit-downs and get-ups."""
    patch = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    h, w = image.shape[:2]
    hx, hy = hips[0] * side / w, hips[1] * side / h
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    m = np.array([[c, -s, x - c * hx + s * hy], [s, c, y - s * hx - c * hy]])
    canvas = np.full((height, width, 3), background, dtype=np.uint8)
    out = cv2.warpAffine(patch, m, (width, height), dst=canvas, borderMode=cv2.BORDER_TRANSPARENT)
    return np.asarray(out, dtype=np.uint8)


def load_images(paths: Sequence[Path]) -> list[Frame]:
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        images.append(np.asarray(image, dtype=np.uint8))
    return images


class MjpegCamera:
    """``async with MjpegCamera(frames, fps=5) as cam:`` then point a capture at ``cam.url``."""

    def __init__(self, frames: Sequence[Frame], *, fps: float = 5.0, host: str = "127.0.0.1", port: int = 0,
                 quality: int = 85) -> None:
        if not frames:
            raise ValueError("a camera needs at least one frame")
        self.fps = fps
        self.host = host
        self.port = port
        self.quality = quality
        self.clients = 0
        self.served = 0
        self._frames: list[bytes] = []
        self._running = asyncio.Event()
        self._running.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.show(frames)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/stream.mjpg"

    def show(self, frames: Sequence[Frame]) -> None:
        """Loop over these frames from the next one on."""
        encoded = []
        for frame in frames:
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                raise ValueError("frame does not encode as JPEG")
            encoded.append(buf.tobytes())
        self._frames = encoded

    def freeze(self) -> None:
        """Keep connections open but send nothing: a hung camera."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def drop_clients(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def __aenter__(self) -> MjpegCamera:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = bound_port(self._server, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            self.drop_clients()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def serve_forever(self) -> None:
        async with self:
            await asyncio.Event().wait()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        self._writers.add(writer)
        try:
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path.startswith(b"/snapshot"):
                body = self._frames[0]
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body)
                             + body)
                await writer.drain()
                return
            writer.write(b"HTTP/1.0 200 OK\r\nCache-Control: no-cache\r\nConnection: close\r\n"
                         b"Content-Type: multipart/x-mixed-replace; boundary=" + BOUNDARY + b"\r\n\r\n")
            period = 1.0 / self.fps
            for index in itertools.count():
                await self._running.wait()
                frames = self._frames
                body = frames[index % len(frames)]
                writer.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body + b"\r\n")
                await writer.drain()
                self.served += 1
                await asyncio.sleep(period)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except asyncio.CancelledError:  # the server is closing: end quietly (a handler's own task)
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def run_camera(images: Sequence[Path], *, host: str, port: int, fps: float, width: int,
                     height: int) -> None:
    frames = [scene(img, width=width, height=height) for img in load_images(images)]
    # Each image holds for about two seconds, so the gateway's votes and cooldowns see a steady scene.
    hold = max(1, round(2 * fps))
    sequence: list[Any] = [f for f in frames for _ in range(hold)]
    async with MjpegCamera(sequence, fps=fps, host=host, port=port) as cam:
        print(f"camera: {cam.url}  ({len(frames)} image(s), {fps:g} fps, {width}x{height})", flush=True)
        await asyncio.Event().wait()

"""Where the status page and a camera worker meet: data_dir/live/<camera>/ (0700, files 0600).

The page asks for a camera's frame; the server touches ``want`` and serves what is there. The worker looks at
``want``'s age once a second and writes ``blurred.jpg`` and ``raw.jpg`` (at most once a second) only while it is
fresh, so a camera nobody watches costs no JPEG encoding and leaves no picture on disk for long.
Shared by both sides, so it imports nothing heavy (the daemon never loads OpenCV; models.liveframe draws).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

WANT = "want"
BLURRED = "blurred.jpg"
RAW = "raw.jpg"
WATCHED_FOR = 15.0
"""Seconds a frame request keeps the worker writing frames."""
MAX_FRAME = 8 * 2**20


def live_dir(data_dir: Path, camera: str) -> Path:
    return data_dir / "live" / camera


def want(data_dir: Path, camera: str) -> None:
    """Someone is watching ``camera``: keep its worker writing frames a while longer."""
    directory = live_dir(data_dir, camera)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / WANT
    try:
        os.utime(path)
    except FileNotFoundError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def wanted(data_dir: Path, camera: str, now: float | None = None) -> bool:
    try:
        mtime = os.stat(live_dir(data_dir, camera) / WANT).st_mtime
    except OSError:
        return False
    return abs((now if now is not None else time.time()) - mtime) < WATCHED_FOR


def latest(data_dir: Path, camera: str, *, faces: bool) -> tuple[bytes, float] | None:
    """The newest frame for a viewer (unblurred only with ``faces``) and when it was written; None: none yet."""
    path = live_dir(data_dir, camera) / (RAW if faces else BLURRED)
    with contextlib.suppress(OSError), open(path, "rb") as f:
        data = f.read(MAX_FRAME + 1)
        if len(data) <= MAX_FRAME:
            return data, os.fstat(f.fileno()).st_mtime
    return None


def write_atomically(directory: Path, name: str, data: bytes) -> None:
    """A whole file or the previous one, never half (a reader may be serving it right now)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, directory / name)

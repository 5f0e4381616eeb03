"""Where the status page and a camera worker meet: data_dir/live/<camera>/ (0700, files 0600).

The page asks for a camera's frame; the server touches ``want`` (and ``want-raw`` for a viewer with the faces
role) and serves what is there. The worker looks at their age once a second and, only while ``want`` is fresh,
writes ``blurred.jpg`` (at most once a second); ``raw.jpg``, the unblurred picture, only while ``want-raw`` is
fresh too. So a camera nobody watches costs no JPEG encoding, and a face is on disk unblurred only while someone
allowed to see it is looking. The worker deletes the frames when nobody watches or the camera is lost; for a worker
that died or a camera removed from the config, the server deletes any file here older than ``STALE`` as it
starts and every few seconds while it serves, and never serves a frame that old.
Shared by both sides, so it imports nothing heavy (the daemon never loads OpenCV; models.liveframe draws).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

WANT = "want"
WANT_RAW = "want-raw"
BLURRED = "blurred.jpg"
RAW = "raw.jpg"
WATCHED_FOR = 15.0
"""Seconds a frame request keeps the worker writing frames."""
STALE = 30.0
"""Seconds after which a file here is left over (a worker writing frames rewrites them every second)."""
MAX_FRAME = 8 * 2**20


def live_dir(data_dir: Path, camera: str) -> Path:
    return data_dir / "live" / camera


def want(data_dir: Path, camera: str, *, raw: bool = False) -> None:
    """Someone is watching ``camera`` (``raw``: someone allowed to see faces): keep its worker writing frames a
    while longer."""
    directory = live_dir(data_dir, camera)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (WANT, WANT_RAW) if raw else (WANT,):
        path = directory / name
        try:
            os.utime(path)
        except FileNotFoundError:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def wanted(data_dir: Path, camera: str, now: float | None = None, *, raw: bool = False) -> bool:
    try:
        mtime = os.stat(live_dir(data_dir, camera) / (WANT_RAW if raw else WANT)).st_mtime
    except OSError:
        return False
    return abs((now if now is not None else time.time()) - mtime) < WATCHED_FOR


def latest(data_dir: Path, camera: str, *, faces: bool, now: float | None = None) -> tuple[bytes, float] | None:
    """The newest frame for a viewer (unblurred only with ``faces``) and when it was written; None: none yet, or
    only a left-over one (deleted)."""
    path = live_dir(data_dir, camera) / (RAW if faces else BLURRED)
    with contextlib.suppress(OSError), open(path, "rb") as f:
        written = os.fstat(f.fileno()).st_mtime
        if (now if now is not None else time.time()) - written > STALE:
            path.unlink(missing_ok=True)
            return None
        data = f.read(MAX_FRAME + 1)
        if len(data) <= MAX_FRAME:
            return data, written
    return None


def sweep(data_dir: Path, now: float | None = None) -> int:
    """Delete every file under data_dir/live older than STALE (frames a dead worker or a removed camera left);
    how many. Nothing here is followed through a link."""
    now = now if now is not None else time.time()
    removed = 0
    with contextlib.suppress(OSError), os.scandir(data_dir / "live") as cameras:
        for camera in cameras:
            if not camera.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError), os.scandir(camera.path) as files:
                for entry in files:
                    with contextlib.suppress(OSError):
                        if now - entry.stat(follow_symlinks=False).st_mtime > STALE:
                            os.unlink(entry.path)
                            removed += 1
    return removed


def write_atomically(directory: Path, name: str, data: bytes) -> None:
    """A whole file or the previous one, never half (a reader may be serving it right now)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, directory / name)

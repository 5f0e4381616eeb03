"""One daemon per store: an exclusive lock on the data directory, held for the daemon's life.

Two daemons on one config double-poll an RS-485 line, fight over one MQTT client id (the platform
sees the gateway flap online/offline) and delete each other's control socket. The lock is a
``flock`` on ``gateway.lock`` in the data directory: the kernel releases it when the process dies,
however it dies, so a SIGKILLed daemon never leaves a stale lock behind. The file says who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = "gateway.lock"


class AlreadyRunning(Exception):
    """Another daemon holds this data directory."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"a gateway daemon ({who}) is already running on {path.parent}; stop it first "
                         "(systemctl stop gateway), or give this one its own store.data_dir")
        self.pid = pid


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning at once; nothing in the directory is touched but the lock file."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder(self.path)
            os.close(fd)
            raise AlreadyRunning(self.path, pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def holder(path: Path) -> int | None:
    """The pid written by whoever holds (or last held) the lock."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_locked(data_dir: Path) -> bool:
    """Whether a live daemon holds the data directory (a probe that takes and drops the lock)."""
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False

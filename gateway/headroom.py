"""The store's own head-room on a disk it shares: a cap by free space, and a reserve for alarms.

On a Raspberry Pi the SD card holds the logs, other programs and us. When another program fills it,
the next fire alarm must still be written. So the data directory keeps a reserve file
(``store.reserve_mb``) that is deleted only when the disk is full, to make room for alarm and event
rows, and made again once space returns; and telemetry yields first whenever free space falls below
``store.min_free_mb``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

RESERVE_NAME = "gateway.reserve"


def is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL, or the file system's own ENOSPC/EDQUOT, however the layers above dressed it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()
    return False


class Headroom:
    def __init__(self, data_dir: Path, *, reserve_bytes: int, min_free_bytes: int) -> None:
        self.path = data_dir / RESERVE_NAME
        self.data_dir = data_dir
        self.reserve_bytes = reserve_bytes
        self.min_free_bytes = min_free_bytes

    def free(self) -> int:
        """Bytes the file system still gives an unprivileged writer."""
        try:
            info = os.statvfs(self.data_dir)
        except OSError:
            return 0
        return info.f_bavail * info.f_frsize

    @property
    def held(self) -> bool:
        return self.path.exists()

    def low(self) -> bool:
        return self.free() < self.min_free_bytes

    def roomy(self) -> bool:
        """Space enough to hold the reserve again and still keep the minimum free."""
        missing = 0 if self.held else self.reserve_bytes
        return self.free() >= self.min_free_bytes + missing

    def hold(self) -> bool:
        """Make the reserve (really allocated, not a sparse file) if there is room; whether it is held."""
        if self.held or self.reserve_bytes <= 0:
            return self.held
        if not self.roomy():
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return False
        return True

    def release(self) -> bool:
        """Give the reserve back to the file system; whether there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

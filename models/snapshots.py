"""Local event snapshots, only for cameras that enable them, pruned by age and total size.

Files are 0600 in a 0700 directory under the data dir; nothing here is ever sent upstream (the
event carries the file name so a technician on the box can find it).
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

import cv2

from models.config import SnapshotConfig

PRUNE_EVERY = 60.0


class Snapshots:
    def __init__(self, directory: Path, cfg: SnapshotConfig) -> None:
        self.dir = directory
        self.cfg = cfg
        self._pruned = 0.0

    def save(self, frame: Any, kind: str, ts: float, person: str | None = None) -> str | None:
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return None
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.localtime(ts))}-{int(ts * 1000) % 1000:03d}"
        name = f"{stamp}-{kind}" + (f"~{person}" if person else "") + ".jpg"  # ~person: erase finds them
        fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        if time.monotonic() - self._pruned > PRUNE_EVERY:
            self.prune(time.time())
        return name

    def prune(self, now: float) -> int:
        """Delete snapshots older than the retention, then the oldest until under max_mb."""
        self._pruned = time.monotonic()
        files = []
        for path in self.dir.glob("*.jpg"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        files.sort()
        removed = 0
        total = sum(size for _, size, _ in files)
        limit = self.cfg.max_mb * 2**20
        for mtime, size, path in files:
            if now - mtime <= self.cfg.retention and total <= limit:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed


def erase_person(data_dir: Path, person: str) -> int:
    """Delete every camera's snapshots of ``person`` (named ``...~<person>.jpg``); how many went."""
    removed = 0
    for path in (data_dir / "snapshots").glob(f"*/*~{glob.escape(person)}.jpg"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed

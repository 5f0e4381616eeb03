"""Local event snapshots, only for cameras that enable them, pruned by age and total size.

Files are 0600 in a 0700 directory under the data dir; nothing here is ever sent upstream (the
event carries the file name so a technician on the box can find it).

Erasing a person (``gateway faces erase``) first removes them from the gallery (cameras stop naming
them), then removes the snapshots named after them and the ``face.unknown`` snapshots in which a face
matches their embeddings at or above the match threshold (taken before they became known, or on a frame
the camera did not recognise). Those are found by embedding the unknown snapshots again at erase time
rather than by keeping a (sealed) embedding beside each one: a stored template of every passer-by would
be new biometric data to protect, retain and erase, while re-embedding costs ~20-35 ms a snapshot on one
core, and erase is rare and bounded by ``max_mb``. The named snapshots are looked for once more at the
end: a camera may have written one between the gallery's erase and its next match.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from models.config import SnapshotConfig

if TYPE_CHECKING:
    from models.faces import FacePipeline

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


def erase_person(data_dir: Path, person: str) -> tuple[int, list[str]]:
    """Delete every camera's snapshots of ``person`` (named ``...~<person>.jpg``): (how many went, the files
    that could not be deleted, as "name: error")."""
    removed = 0
    failed: list[str] = []
    for path in (data_dir / "snapshots").glob(f"*/*~{glob.escape(person)}.jpg"):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            failed.append(f"{path}: {exc.strerror or exc}")
            continue
        removed += 1
    return removed, failed


def unknown_snapshots(data_dir: Path) -> list[Path]:
    """Every camera's ``face.unknown`` snapshots, oldest name first."""
    return sorted((data_dir / "snapshots").glob("*/*-face.unknown.jpg"))


def erase_matching(data_dir: Path, pipeline: FacePipeline, embeddings: np.ndarray[Any, Any], threshold: float,
                   progress: Callable[[int, int, str], None] | None = None) -> tuple[int, int, list[str]]:
    """Delete the unknown-face snapshots holding a face at or above ``threshold`` to any of ``embeddings``.

    Returns (removed, checked, failed): a file that cannot be read as an image is left alone (and counted as
    checked: it holds no face); a file on which the models fail is left alone and named in ``failed``
    ("name: error"), so the caller can say which were not checked.
    """
    files = unknown_snapshots(data_dir)
    if len(embeddings) == 0:
        return 0, 0, []
    matrix = np.asarray(embeddings, dtype=np.float32)
    matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    removed = 0
    failed: list[str] = []
    for i, path in enumerate(files, 1):
        try:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            faces = pipeline.faces(frame) if frame is not None else []
            if any(f.embedding is not None and float((matrix @ f.embedding).max()) >= threshold for f in faces):
                path.unlink(missing_ok=True)
                removed += 1
        except Exception as exc:  # a model or the disk failing on one file: the others are still checked
            failed.append(f"{path.name}: {type(exc).__name__}: {exc}"[:300])
        if progress is not None:
            progress(i, len(files), path.name)
    return removed, len(files) - len(failed), failed

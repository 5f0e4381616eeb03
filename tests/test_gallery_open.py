"""faces.db opened by several camera workers at the same instant, as when the daemon starts them together.

A new file's switch to WAL, and the first schema write, take locks SQLite refuses at once instead of waiting
for; the gallery retries them for a bounded time, so no worker fails its start for it.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from models.gallery import Gallery

WORKERS = 6
ROUNDS = 8


def _open(data_dir: Path, key: bytes, start: Barrier, out: multiprocessing.SimpleQueue[str]) -> None:
    try:
        start.wait(10)
        with Gallery(data_dir, key) as gallery:
            gallery.people()
        out.put("ok")
    except BaseException:  # the test reports what went wrong in the child
        out.put(traceback.format_exc(limit=3))


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_several_processes_create_and_open_the_gallery_at_once(tmp_path: Path, round_: int) -> None:
    ctx = multiprocessing.get_context("fork")
    key = os.urandom(32)
    start = ctx.Barrier(WORKERS)
    out: multiprocessing.SimpleQueue[str] = ctx.SimpleQueue()
    procs = [ctx.Process(target=_open, args=(tmp_path / "data", key, start, out)) for _ in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    answers = [out.get() for _ in range(WORKERS)]
    assert answers == ["ok"] * WORKERS, next(a for a in answers if a != "ok")
    with Gallery(tmp_path / "data", key) as gallery:
        assert gallery.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert gallery.people() == []

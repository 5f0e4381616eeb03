"""The chaos bench's clock-jump reading: which stored readings say what the daemon's clock said during a jump.

A reading's time is when its poll began, and on a loaded machine a poll takes seconds: polls begun on true time
just before the jump are stored after it. The bench must pass over them, or a jump back reads as no jump at all
(skew about -1 s instead of -3600 s), and must still see a daemon that ignored the jump.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from gateway.bench.chaos_faults import _newest_row, _skew, _skew_of_next_poll
from gateway.bench.chaos_world import Plan, Setup, World


def _world(tmp_path: Path, rows: list[float]) -> World:
    world = World(tmp_path, Plan(faults=2, hold=1.0, gap=1.0, settle=1.0, drain_limit=20.0), Setup(tmp_path))
    with sqlite3.connect(world.db) as db:
        db.execute("CREATE TABLE samples (device TEXT NOT NULL, ts REAL NOT NULL, points TEXT NOT NULL)")
        db.executemany("INSERT INTO samples (device, ts, points) VALUES ('dev-0', ?, '{}')", [(ts,) for ts in rows])
    db.close()
    return world


def _store(world: World, rows: list[float]) -> None:
    with sqlite3.connect(world.db) as db:
        db.executemany("INSERT INTO samples (device, ts, points) VALUES ('dev-1', ?, '{}')", [(ts,) for ts in rows])
    db.close()


def test_polls_begun_before_a_jump_back_and_stored_during_it_are_passed_over(tmp_path: Path) -> None:
    now = time.time()
    jumped = now - 1.0
    world = _world(tmp_path, [jumped - 0.6, jumped - 0.4])
    after_row = _newest_row(world)
    # one poll begun on the jumped clock, then three slow ones begun on true time just before the jump
    _store(world, [now - 0.8 - 3600, jumped - 0.1, jumped - 0.1, jumped - 0.05])
    seen = asyncio.run(_skew_of_next_poll(world, after_row, (jumped, 0.0), within=0.3))
    assert seen is not None and abs(seen + 3600) < 60, seen


def test_polls_begun_on_the_jumped_clock_and_stored_after_it_came_back_are_passed_over(tmp_path: Path) -> None:
    now = time.time()
    back = now - 0.5
    world = _world(tmp_path, [back - 3600 - 1.0])
    after_row = _newest_row(world)
    _store(world, [now - 0.3, back - 3600 - 0.2])
    after = _skew(world, after_row, (back, -3600.0))
    assert after is not None and abs(after) < 60, after


def test_a_daemon_that_ignored_the_jump_is_seen(tmp_path: Path) -> None:
    now = time.time()
    jumped = now - 1.0
    world = _world(tmp_path, [jumped - 0.5])
    after_row = _newest_row(world)
    _store(world, [jumped - 0.1, now - 0.6, now - 0.4, now - 0.2])  # true time before and after the "jump"
    seen = asyncio.run(_skew_of_next_poll(world, after_row, (jumped, 0.0), within=0.3))
    assert seen is not None and abs(seen) < 1, seen
    assert _skew(world, after_row + 10, (jumped, 0.0)) is None  # nothing stored after that row

"""The chaos scenarios: how each one sets its world up, and the faults it makes.

Each scenario has a ``prepare`` (a context manager giving the daemon's ``Setup``, or the reason the
scenario cannot run here) and a ``perform`` (the faults, ``plan.faults`` of them, each lasting
``plan.hold`` seconds with ``plan.gap`` seconds of normal running between them), which returns one
record per fault. Everything stays on 127.0.0.1 and on this machine's own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.bench.chaos_hook import FLAG_ENV, LAUNCHER
from gateway.bench.chaos_world import Plan, Setup, World

TMPFS_MB = 128
"""Size of the data directory's own file system in the disk scenario (it must hold the store's
reserve and its free-space floor, so that "full" is the ballast's doing, not the size's)."""
CLOCK_JUMPS = (7200, -3600)
"""Seconds the daemon's wall clock jumps by, in turn (and back to true time after each)."""
FAKETIME_LIBS = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                 "/usr/local/lib/faketime/libfaketime.so.1")

Prepare = Callable[[Path, str], contextlib.AbstractContextManager["Setup | str"]]
Perform = Callable[[World, Plan], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    prepare: Prepare
    perform: Perform


@contextlib.contextmanager
def plain(work: Path, _disk: str) -> Iterator[Setup | str]:
    yield Setup(work / "data")


async def _between(plan: Plan, i: int) -> None:
    if i:
        await asyncio.sleep(plan.gap)


# -- the broker -----------------------------------------------------------------------------------


async def broker_kills(world: World, plan: Plan) -> list[dict[str, Any]]:
    assert world.broker is not None
    faults = []
    for i in range(plan.faults):
        await _between(plan, i)
        started = time.monotonic()
        await asyncio.to_thread(world.broker.stop, kill=True)
        await asyncio.sleep(plan.hold)
        await asyncio.to_thread(world.broker.start)
        world.cleared = time.monotonic()
        faults.append({"fault": "broker SIGKILL, restarted", "down_s": time.monotonic() - started})
    return faults


# -- the daemon -----------------------------------------------------------------------------------


async def gateway_kills(world: World, plan: Plan) -> list[dict[str, Any]]:
    faults = []
    for i in range(plan.faults):
        await _between(plan, i)
        await world.kill_daemon()
        started = time.monotonic()
        await asyncio.sleep(plan.hold)
        world.spawn()
        world.cleared = time.monotonic()
        back = await world.daemon_ready()
        faults.append({"fault": "gateway SIGKILL, restarted", "down_s": time.monotonic() - started,
                       "start_to_port_open_s": back})
    return faults


# -- the disk -------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(work: Path, disk: str) -> Iterator[Setup | str]:
    """The data directory on its own tmpfs (root), else SQLite's page cap through the launcher hook."""
    data = work / "data"
    data.mkdir()
    refused = "not tried (--disk cap)"
    if disk != "cap":
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0700", "gateway-chaos", str(data)],
                           check=True, capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError) as exc:
            stderr = getattr(exc, "stderr", b"") or b""
            refused = (stderr.decode(errors="replace").strip() or str(exc))[:200]
            if disk == "tmpfs":
                yield f"mount -t tmpfs refused: {refused}"
                return
        else:
            try:
                yield Setup(data, method=f"tmpfs of {TMPFS_MB} MB mounted on the data directory, filled by a ballast"
                                         " file (topped up while full), then emptied")
            finally:
                done = subprocess.run(["umount", str(data)], capture_output=True, timeout=20)
                if done.returncode:
                    subprocess.run(["umount", "-l", str(data)], capture_output=True, timeout=20)
            return
    yield Setup(data, method=f"SQLite PRAGMA max_page_count cap through a launcher hook (mount: {refused})",
                env={FLAG_ENV: str(work / "disk-full")}, launcher=list(LAUNCHER))


def _fill(path: Path) -> int:
    """Append to the ballast until the file system says it is full (megabytes, then pages); the bytes written."""
    written = 0
    with path.open("ab", buffering=0) as f:
        for size in (1 << 20, 4096):
            block = bytes(size)
            while True:
                try:
                    n = f.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                if not n:
                    break
                written += n
    return written


async def disk_fills(world: World, plan: Plan) -> list[dict[str, Any]]:
    flag = world.setup.env.get(FLAG_ENV)
    ballast = world.setup.data_dir / "ballast"
    faults = []
    for i in range(plan.faults):
        await _between(plan, i)
        started = time.monotonic()
        filled = 0
        if flag:
            await asyncio.to_thread(Path(flag).touch)
        while time.monotonic() - started < plan.hold:
            if not flag:
                filled += await asyncio.to_thread(_fill, ballast)  # topped up: the daemon frees what it can
            await asyncio.sleep(0.25)
        await asyncio.to_thread(Path(flag).unlink if flag else ballast.unlink)
        world.cleared = time.monotonic()
        faults.append({"fault": "data directory full, then emptied", "full_s": time.monotonic() - started,
                       "ballast_mb": round(filled / 2**20, 2)})
    return faults


# -- the clock ------------------------------------------------------------------------------------


def faketime_library() -> str | None:
    for pattern in FAKETIME_LIBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


@contextlib.contextmanager
def fake_clock(work: Path, _disk: str) -> Iterator[Setup | str]:
    lib = faketime_library()
    if lib is None:
        yield ("libfaketime is not installed (apt-get install faketime), and this machine's clock is not the"
               " bench's to change")
        return
    offset = work / "faketime"
    offset.write_text("+0\n")
    yield Setup(work / "data", method=f"libfaketime ({lib}) preloaded into the daemon: its CLOCK_REALTIME jumps,"
                                      " its monotonic clock does not (as when NTP steps the clock)",
                # NO_CACHE: the offset file is read at every clock read (~3 us): libfaketime's cache expires in
                # fake time, so after a jump back it would keep the old offset for as long as the jump
                env={"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1",
                     "FAKETIME_DONT_FAKE_MONOTONIC": "1"})


IN_FLIGHT = 60.0
"""Seconds before a clock change within which a reading's time may be that of a poll begun on the old clock and
stored after the change (a loaded daemon's poll can take seconds): such a reading says nothing of the new clock."""


def _on_new_clock(changed: tuple[float, float]) -> tuple[str, tuple[float, float]]:
    """SQL condition (and its arguments) for readings not begun on the old clock: ``changed`` is the true time of
    the change and the old clock's offset. The jumps are far longer than IN_FLIGHT, so the two cannot be confused."""
    at, old = changed
    return "NOT (ts BETWEEN ? AND ?)", (at + old - IN_FLIGHT, at + old)


def _skew(world: World, after_row: int, changed: tuple[float, float]) -> float | None:
    """The newest reading stored after ``after_row`` and polled on the new clock: its time minus true time, what the
    daemon's clock said when it began that poll."""
    new, args = _on_new_clock(changed)
    with contextlib.suppress(Exception):
        [(ts,)] = world.query(f"SELECT ts FROM samples WHERE rowid > ? AND {new} ORDER BY rowid DESC LIMIT 1",
                              after_row, *args)
        return float(ts) - time.time()
    return None


def _new_rows(world: World, after_row: int, changed: tuple[float, float]) -> int:
    new, args = _on_new_clock(changed)
    with contextlib.suppress(Exception):
        [(n,)] = world.query(f"SELECT COUNT(*) FROM samples WHERE rowid > ? AND {new}", after_row, *args)
        return int(n)
    return 0


def _newest_row(world: World) -> int:
    with contextlib.suppress(Exception):
        [(row,)] = world.query("SELECT COALESCE(MAX(rowid), 0) FROM samples")
        return int(row)
    return 0


async def _skew_of_next_poll(world: World, after_row: int, changed: tuple[float, float],
                             within: float = 10.0) -> float | None:
    """The skew of the newest reading once a few more polled on the new clock are stored after ``after_row``: a
    loaded machine may take a while to poll, and polls begun before the change are stored after it with the old
    clock's time (a reading's time is when its poll began)."""
    deadline = time.monotonic() + within
    while _new_rows(world, after_row, changed) < 3 and time.monotonic() < deadline:  # noqa: ASYNC110 (another process writes)
        await asyncio.sleep(0.1)
    return _skew(world, after_row, changed)


async def clock_jumps(world: World, plan: Plan) -> list[dict[str, Any]]:
    offset = Path(world.setup.env["FAKETIME_TIMESTAMP_FILE"])
    faults = []
    for i in range(plan.faults):
        await _between(plan, i)
        jump = CLOCK_JUMPS[i % len(CLOCK_JUMPS)]
        started = time.monotonic()
        await asyncio.to_thread(offset.write_text, f"{jump:+d}\n")
        jumped = time.time()  # every poll begun on true time began before this
        await asyncio.sleep(plan.hold)
        seen = await _skew_of_next_poll(world, _newest_row(world), (jumped, 0.0))  # polled while the jump holds
        await asyncio.to_thread(offset.write_text, "+0\n")
        back = time.time()
        world.cleared = time.monotonic()
        await asyncio.sleep(0.5)  # a poll or two on true time again before the fault counts as over
        after = await _skew_of_next_poll(world, _newest_row(world), (back, float(jump)))
        faults.append({"fault": f"wall clock jumps {jump:+d} s, then back", "jump_s": jump,
                       "skew_seen_s": None if seen is None else round(seen, 1),
                       "skew_after_s": None if after is None else round(after, 1),
                       "seconds": time.monotonic() - started})
    return faults


# -- a device -------------------------------------------------------------------------------------


async def device_flaps(world: World, plan: Plan) -> list[dict[str, Any]]:
    assert world.meters is not None
    faults = []
    for i in range(plan.faults):
        await _between(plan, i)
        index = i % len(world.meters.ports)
        started = time.monotonic()
        await world.meters.stop_one(index)
        await asyncio.sleep(plan.hold)
        await world.meters.start_one(index)
        world.cleared = time.monotonic()
        faults.append({"fault": f"meter dev-{index} off (connections dropped, connects refused), then on",
                       "off_s": time.monotonic() - started})
    return faults


# -- the serial port ------------------------------------------------------------------------------


async def serial_unplugs(world: World, plan: Plan) -> list[dict[str, Any]]:
    assert world.panel is not None
    faults = []
    for i in range(plan.faults):
        await _between(plan, i)
        await world.quiet()
        started = time.monotonic()
        await world.panel.unplug()
        await asyncio.sleep(plan.hold)
        await world.panel.replug()
        world.cleared = time.monotonic()
        reopened = await world.daemon_ready()
        faults.append({"fault": "panel's serial port vanished, then returned", "gone_s": plan.hold,
                       "replug_to_port_open_s": reopened, "seconds": time.monotonic() - started})
    return faults


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("broker_kill", "broker SIGKILL and restart", plain, broker_kills),
    Scenario("gateway_kill", "gateway SIGKILL and restart", plain, gateway_kills),
    Scenario("disk_full", "data directory fills and empties", small_disk, disk_fills),
    Scenario("clock_jump", "wall clock jumps forward and back", fake_clock, clock_jumps),
    Scenario("device_flap", "a meter flapping", plain, device_flaps),
    Scenario("serial_unplug", "serial port vanishing and returning", plain, serial_unplugs),
)

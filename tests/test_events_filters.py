"""`gateway events --kind GLOB --device ID --since WHEN`: filters on a store with many events, in SQL.

The events are written with the Store API, as the daemon's recorder writes them; the CLI runs as a
technician runs it, in a child process reading the store on disk.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import until, write_config
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli.site import EventFilter, parse_since
from gateway.core.config import parse_duration
from gateway.core.data import Event, Priority
from gateway.store import Batch, Store

KINDS = ["fire.alarm", "fire.fault", "fire.reset", "device.offline", "elevator.trapped", "point.changed"]
SOURCES = ["panel-1", "panel-2", "meter-1", "meter-2", "meter-3", "lift-a", "lift-b"]
COUNT = 30_000
STEP = 10.0  # seconds between events: the log spans about 3.5 days


@dataclass
class Site:
    config: Path
    store: Path
    events: list[Event]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    tmp = tmp_path_factory.mktemp("events")
    config = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=None, buses=[], devices=[])
    now = time.time()
    events = [Event(KINDS[i % len(KINDS)], SOURCES[(i * 5 + i // 7) % len(SOURCES)], Priority.EVENT, {"n": i},
                    now - (COUNT - i) * STEP) for i in range(COUNT)]
    store = Store(tmp / "data" / "gateway.db", synchronous="normal")
    for start in range(0, COUNT, 5000):
        store.commit(Batch(events=events[start:start + 5000]))
    samples = [(device, now - k * 60.0, json.dumps({"v": {"v": k, "q": "good"}}).encode())
               for device in ("meter-1", "meter-2") for k in range(5)]
    store.commit(Batch(history=samples))
    store.close()
    return Site(config, tmp / "data" / "gateway.db", events)


async def gateway(*args: str | Path, within: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *map(str, args),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(within):
        out, err = await proc.communicate()
    assert proc.returncode is not None and "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


async def events(site: Site, *args: str) -> list[int]:
    """The ``n`` of every event `gateway events --json ARGS` prints, in order."""
    code, out, err = await gateway("events", "-c", site.config, "--json", *args)
    assert code == 0, err
    return [json.loads(line)["data"]["n"] for line in out.splitlines()]


def reaches_back(site: Site, got: list[int], before: float, seconds: float, **filters: Any) -> bool:
    """``got`` is what ``--since`` a duration gives, the CLI having read its clock between ``before`` and now."""
    wide, narrow = expected(site, since=before - seconds, **filters), expected(site, since=time.time() - seconds,
                                                                             **filters)
    return got[len(got) - len(narrow):] == narrow and got == wide[len(wide) - len(got):] and len(narrow) > 0


def expected(site: Site, *, kinds: tuple[str, ...] = (), devices: tuple[str, ...] = (), since: float | None = None,
             last: int = 0) -> list[int]:
    chosen = [e.payload["n"] for e in site.events
              if (not kinds or any(fnmatch.fnmatchcase(e.kind, k) for k in kinds))
              and (not devices or e.source in devices) and (since is None or e.ts >= since)]
    return chosen[-last:] if last else chosen


async def test_kind_globs_devices_and_since_combine(site: Site) -> None:
    fire = await events(site, "--kind", "fire.*", "-n", "0")
    assert fire == expected(site, kinds=("fire.*",)) and len(fire) == COUNT // 2
    both = await events(site, "--kind", "fire.a*", "--kind", "elevator.*", "-n", "7")
    assert both == expected(site, kinds=("fire.a*", "elevator.*"), last=7)
    before = time.time()
    where = await events(site, "--device", "meter-3", "--device", "panel-1", "--since", "6h", "-n", "0")
    assert reaches_back(site, where, before, 6 * 3600, devices=("meter-3", "panel-1"))
    assert 0 < len(where) < 6 * 360  # six hours at one event per 10 s, from two of seven sources
    bracket = await events(site, "--kind", "fire.[af]*", "--kind", "?evice.*", "--device", "panel-2", "-n", "0")
    assert bracket == expected(site, kinds=("fire.[af]*", "?evice.*"), devices=("panel-2",))
    everything = await events(site, "-n", "0")
    assert everything == list(range(COUNT))  # without a filter, all of them (not the first 1,000)
    default = await events(site, "--kind", "point.changed")
    assert default == expected(site, kinds=("point.changed",), last=50)  # -n 50 counts matching events


async def test_since_takes_an_iso_time_in_utc_or_local_time(site: Site) -> None:
    boundary = site.events[COUNT - 100].ts
    iso = datetime.fromtimestamp(boundary - 1.0, UTC).isoformat()  # a second before: no rounding at the edge
    got = await events(site, "--since", iso, "--kind", "fire.*", "-n", "0")
    assert got == expected(site, kinds=("fire.*",), since=boundary)
    assert got[0] == COUNT - 100 and 40 < len(got) < 60
    local = datetime.fromtimestamp(boundary).replace(microsecond=0).isoformat()  # no zone: local time
    assert await events(site, "--since", local, "-n", "0") == expected(site, since=float(int(boundary)))


async def test_a_filter_that_matches_nothing_prints_nothing(site: Site) -> None:
    assert await events(site, "--kind", "nothing.*", "-n", "0") == []
    assert await events(site, "--device", "nobody") == []
    assert await events(site, "--since", "2099-01-01") == []


@pytest.mark.parametrize(("args", "says"), [
    (("--since", "yesterday"), "--since: 'yesterday': write a duration like 90s"),
    (("--since", "-5m"), "--since"),
    (("--kind", ""), "--kind and --device need a value"),
    (("--device", " "), "--kind and --device need a value"),
    (("-n", "-3"), "-n must be 0"),
])
async def test_bad_filters_exit_2_with_what_is_wrong(site: Site, args: tuple[str, ...], says: str) -> None:
    code, out, err = await gateway("events", "-c", site.config, *args)
    assert code == 2 and says in err and out == "", err


async def test_export_keeps_only_the_filtered_events_and_the_devices_readings(site: Site) -> None:
    before = time.time()
    code, out, err = await gateway("events", "-c", site.config, "--export", "-", "--since", "2h",
                                   "--kind", "fire.*", "--device", "meter-1")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    shown = [r["data"]["n"] for r in records if r["t"] == "event"]
    assert reaches_back(site, shown, before, 7200, kinds=("fire.*",), devices=("meter-1",))
    readings = [r for r in records if r["t"] == "reading"]
    assert len(readings) == 5 and {r["device"] for r in readings} == {"meter-1"}
    iso = datetime.fromtimestamp(time.time() - 7200, UTC).isoformat()
    code, out, err = await gateway("events", "-c", site.config, "--export", "-", "--since", iso)
    assert code == 0 and sum(json.loads(line)["t"] == "reading" for line in out.splitlines()) == 10, err
    # kinds of events alone: those events and no reading (a reading has no kind)
    code, out, err = await gateway("events", "-c", site.config, "--export", "-", "--since", "2h", "--kind", "fire.*")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert records and all(r["t"] == "event" and fnmatch.fnmatchcase(r["kind"], "fire.*") for r in records), records[:3]


async def test_follow_prints_only_new_matching_events(site: Site, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=[],
                          devices=[])
    store = Store(tmp_path / "data" / "gateway.db")
    store.commit(Batch(events=[Event("fire.alarm", "panel-1", Priority.ALARM, {"n": 0}),
                               Event("fire.fault", "panel-1", Priority.EVENT, {"n": 1})]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "events", "-c", str(config), "--json", "-f", "-n", "5",
        "--kind", "fire.alarm", "--device", "panel-2", "--device", "panel-1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    seen: list[dict[str, Any]] = []

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            seen.append(json.loads(line))

    reader = asyncio.create_task(read())
    try:
        await until(lambda: len(seen) == 1, within=30)
        store.commit(Batch(events=[Event("fire.alarm", "panel-3", Priority.ALARM, {"n": 2}),
                                   Event("fire.reset", "panel-2", Priority.ALARM, {"n": 3}),
                                   Event("fire.alarm", "panel-2", Priority.ALARM, {"n": 4})]))
        await until(lambda: len(seen) == 2, within=30)
        store.commit(Batch(events=[Event("fire.alarm", "panel-1", Priority.ALARM, {"n": 5})]))
        await until(lambda: len(seen) == 3, within=30)
    finally:
        proc.terminate()
        await proc.wait()
        reader.cancel()
        store.close()
    assert [e["data"]["n"] for e in seen] == [0, 4, 5]


# -- the parts, on their own -----------------------------------------------------------------------


@given(st.text(max_size=40))
def test_any_since_text_is_a_time_or_says_how_to_write_it(text: str) -> None:
    now = 1_800_000_000.0
    try:
        when = parse_since(text, now)
    except ValueError as exc:
        assert "write a duration like" in str(exc)
        return
    assert isinstance(when, float) and when == when


@given(st.integers(0, 10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_durations_reach_back_from_now(amount: int, unit: str) -> None:
    now = 1_800_000_000.0
    assert parse_since(f"{amount}{unit}", now) == now - parse_duration(f"{amount}{unit}")


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_iso_times_are_taken_as_written(moment: datetime) -> None:
    assert parse_since(moment.isoformat(), 0.0) == moment.timestamp()


GLOB = st.text(alphabet="fire.alarmdvc*?", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(GLOB, max_size=3), st.lists(st.sampled_from(SOURCES), max_size=2))
def test_the_sql_filter_agrees_with_shell_globbing(tmp_path_factory: pytest.TempPathFactory, kinds: list[str],
                                                   devices: list[str]) -> None:
    path = tmp_path_factory.mktemp("glob") / "gateway.db"
    store = Store(path, synchronous="off")
    log = [Event(KINDS[i % len(KINDS)], SOURCES[i % len(SOURCES)], Priority.EVENT, {"n": i}, 1000.0 + i)
           for i in range(42)]
    store.commit(Batch(events=log))
    try:
        chosen = EventFilter(kinds, devices, 1010.0)
        got = [ev["data"]["n"] for _, ev in chosen.after(store, chosen.start(store, 0), store.last_event_seq())]
        last3 = [ev["data"]["n"] for _, ev in chosen.after(store, chosen.start(store, 3), store.last_event_seq())]
    finally:
        store.close()
    want = [e.payload["n"] for e in log if e.ts >= 1010.0 and (not devices or e.source in devices)
            and (not kinds or any(fnmatch.fnmatchcase(e.kind, k) for k in kinds))]
    assert got == want and last3 == want[-3:]

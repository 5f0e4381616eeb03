"""The uplink speaking contract v2 to a real Mosquitto: birth and will with bdseq, retained device metadata and
its clearing, replay batched and flagged, replay paced while alarms go at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import orjson
import pytest
from conftest import Broker, Collector, until

from gateway import facts
from gateway.config.schema import MqttConfig
from gateway.core.data import Event, Priority, Quality, Reading
from gateway.core.timing import SYSTEM_CLOCK, ManualClock
from gateway.northbound.contract import upstream_schema
from gateway.recorder import AsyncStore
from gateway.store import Batch, Store
from gateway.uplink import Uplink

SITE = "test-site"
ROOT = f"community/{SITE}"
VALIDATOR = jsonschema.Draft202012Validator(upstream_schema())
METER = {"driver": "modbus_tcp", "points": {"voltage_a": {"type": "float", "unit": "V", "writable": False}}}


def _poll(device: str, ts: float, value: float) -> facts.Fact:
    return facts.readings(device, ts, [Reading(device, "voltage_a", value, "V", Quality.GOOD, ts)])


@contextlib.asynccontextmanager
async def uplinked(store: AsyncStore, port: int, *, clock: ManualClock | None = None,
                   devices: Mapping[str, Mapping[str, Any]] | None = None, **mqtt: Any) -> AsyncIterator[Uplink]:
    committed = asyncio.Event()
    committed.set()
    uplink = Uplink(MqttConfig(host="127.0.0.1", port=port, **{"replay_delay": 0, "replay_rate": 0, **mqtt}), SITE,
                    store, committed, config_hash="abc", devices=(lambda: devices) if devices is not None else None,
                    clock=clock or SYSTEM_CLOCK)
    task = asyncio.create_task(uplink.run())
    try:
        await until(lambda: uplink.status.state == "connected")
        yield uplink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _of(collector: Collector, prefix: str) -> list[dict[str, Any]]:
    return [m for t, m in collector.messages if t.startswith(f"{ROOT}/{prefix}")]


async def test_births_count_up_and_a_clean_goodbye_carries_the_same_bdseq(tmp_path: Path, broker: Broker,
                                                                        collector: Collector) -> None:
    store = AsyncStore(Store(tmp_path / "g.db"))
    for _ in range(2):
        async with uplinked(store, broker.port):
            await collector.wait_for(lambda: len(_of(collector, "status")) >= 1)
        await collector.wait_for(lambda: [m["state"] for m in _of(collector, "status")][-1] == "offline")
    statuses = _of(collector, "status")
    assert [(m["state"], m["bdseq"]) for m in statuses] == [("online", 1), ("offline", 1), ("online", 2),
                                                             ("offline", 2)]
    assert all(m["site"] == SITE and "ts" in m for m in statuses)
    assert statuses[0]["config"] == "abc" and statuses[0]["version"]
    for m in statuses:
        VALIDATOR.validate(m)
    store.close()


_KILLED = """
import asyncio, sys
from pathlib import Path
from gateway.config.schema import MqttConfig
from gateway.recorder import AsyncStore
from gateway.store import Store
from gateway.uplink import Uplink

async def main():
    committed = asyncio.Event()
    uplink = Uplink(MqttConfig(host="127.0.0.1", port=int(sys.argv[2]), keepalive=5), "test-site",
                    AsyncStore(Store(Path(sys.argv[1]))), committed,
                    on_state=lambda _, s: print(s["state"], flush=True))
    await uplink.run()

asyncio.run(main())
"""


async def test_a_killed_gateway_leaves_a_will_without_ts_that_names_its_session(tmp_path: Path, broker: Broker,
                                                                               collector: Collector) -> None:
    db = tmp_path / "g.db"
    Store(db).close()
    for births in (1, 2):  # bdseq 1 and 2, each ended by SIGKILL
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _KILLED, str(db), str(broker.port), stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parent.parent, env={**os.environ, "PYTHONPATH": "."})
        try:
            assert child.stdout is not None
            async with asyncio.timeout(20):
                while (line := await child.stdout.readline()).strip() != b"connected":
                    assert line, "the uplink process ended before it connected"
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
        await collector.wait_for(lambda n=births: len(_of(collector, "status")) == 2 * n)  # the birth and the will
    statuses = [(m["state"], m["bdseq"], "ts" in m) for m in _of(collector, "status")]
    # the will is composed at connect: it has no ts, and its bdseq says which birth it ends
    assert statuses == [("online", 1, True), ("offline", 1, False), ("online", 2, True), ("offline", 2, False)]


async def test_device_metadata_is_retained_and_a_removed_device_is_cleared(tmp_path: Path, broker: Broker,
                                                                          collector: Collector) -> None:
    store = AsyncStore(Store(tmp_path / "g.db"))
    async with uplinked(store, broker.port, devices={"m1": METER, "m2": METER}):
        await collector.wait_for(lambda: len(_of(collector, "meta/")) == 2)
    async with uplinked(store, broker.port, devices={"m1": METER}):
        await collector.wait_for(lambda: len(_of(collector, "meta/")) == 4, within=5)
    meta = [(t.removeprefix(f"{ROOT}/"), m) for t, m in collector.messages if "/meta/" in t or "/state/" in t]
    assert [t for t, _ in meta] == ["meta/m1", "meta/m2", "meta/m1", "meta/m2", "state/m2"]
    assert meta[0][1]["points"]["voltage_a"]["unit"] == "V" and meta[0][1]["config"] == "abc"
    assert meta[3][1] == {} and meta[4][1] == {}  # empty retained messages clear m2's topics
    VALIDATOR.validate(meta[0][1])
    late = Collector(broker.port, f"{ROOT}/meta/#")  # a platform subscribing later sees only what exists
    await late.start()
    try:
        # the broker sends the retained messages on SUBACK, before anything published after it: a marker
        # published now arrives after every retained one, so "nothing more" needs no waiting on the clock
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="marker") as marker:
            await marker.publish(f"{ROOT}/meta/~marker", b"{}", qos=1)
        await late.wait_for(lambda: any(t.endswith("/~marker") for t, _ in late.messages))
        assert [t for t, _ in late.messages] == [f"{ROOT}/meta/m1", f"{ROOT}/meta/~marker"]
    finally:
        await late.stop()
    store.close()


def _backlog(store: Store, *, devices: int = 3, polls: int = 40, age: float = 3600.0) -> None:
    """An outage's worth of polls, stored an hour ago, and one old alarm."""
    then = time.time() - age
    rows = [_poll(f"m{d}", then + i, 200.0 + i) for i in range(polls) for d in range(devices)]
    store.commit(Batch(facts=rows), now=then)
    store.commit(Batch(facts=[facts.event(Event("fire.alarm", "panel", Priority.ALARM,
                                                {"text": "old fire", "pattern": "gst_cn.fire"}, ts=then))]), now=then)


async def test_replay_travels_in_batches_flagged_hist_in_order_and_complete(tmp_path: Path, broker: Broker,
                                                                           collector: Collector) -> None:
    store = Store(tmp_path / "g.db")
    _backlog(store)
    astore = AsyncStore(store)
    async with uplinked(astore, broker.port, replay_batch=25) as uplink:
        await until(lambda: uplink.status.delivered == 121)
        await collector.wait_for(lambda: len(_of(collector, "telemetry/")) == 120)
    assert len(collector.batches) == 5 and all(len(b["items"]) <= 25 for _, b in collector.batches)
    for topic, batch in collector.batches:
        assert topic == f"{ROOT}/batch/telemetry"
        VALIDATOR.validate(batch)
    telemetry = _of(collector, "telemetry/")
    assert all(m["hist"] is True for m in telemetry)
    for d in range(3):  # per device, in order, nothing missing or twice
        values = [m["points"]["voltage_a"]["v"] for m in telemetry if m["device"] == f"m{d}"]
        assert values == [200.0 + i for i in range(40)]
    [alarm] = _of(collector, "alarm/")
    assert alarm["hist"] is True and alarm["data"]["text"] == "old fire"  # alarms travel alone, on alarm/
    assert await astore.run(store.next_batch, 10) == []
    astore.close()


@pytest.mark.timeout(60)
async def test_replay_waits_for_its_start_delay_and_rate_while_a_live_alarm_goes_at_once(
        tmp_path: Path, broker: Broker, collector: Collector) -> None:
    store = Store(tmp_path / "g.db")
    _backlog(store, devices=1, polls=30)
    store.commit(Batch(facts=[facts.event(Event("fall.detected", "lobby", Priority.ALARM, {"person": "unknown"}))]))
    astore = AsyncStore(store)
    clock = ManualClock()
    async with uplinked(astore, broker.port, clock=clock, replay_delay=3600, replay_rate=10, replay_batch=1,
                        batch=10) as uplink:
        await collector.wait_for(lambda: len(_of(collector, "alarm/")) == 2)  # the old one and the live fall
        await until(lambda: uplink.status.replay_waits > 0)
        assert not _of(collector, "telemetry/")  # the backlog waits for the start delay ...
        await clock.advance(3600)
        uplink.committed.set()
        await collector.wait_for(lambda: len(_of(collector, "telemetry/")) == 10)  # ... then one round of 10,
        await until(lambda: uplink.status.replay_waits > 1)
        assert len(_of(collector, "telemetry/")) == 10  # which costs 1 s of the 10 messages/s
        await clock.advance(1.0)
        uplink.committed.set()
        await collector.wait_for(lambda: len(_of(collector, "telemetry/")) == 20)
    assert [m["kind"] for m in _of(collector, "alarm/")] == ["fire.alarm", "fall.detected"]
    astore.close()


async def test_an_older_sessions_late_will_does_not_leave_us_offline(tmp_path: Path, broker: Broker,
                                                                    collector: Collector) -> None:
    store = AsyncStore(Store(tmp_path / "g.db"))
    await store.run(store.store.next_session)  # a session before this one (bdseq 1)
    async with uplinked(store, broker.port) as uplink:
        assert uplink.session.bdseq == 2
        await collector.wait_for(lambda: len(_of(collector, "status")) == 1)
        stale = {"v": 2, "site": SITE, "type": "status", "state": "offline", "bdseq": 1}
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="cluster-peer") as peer:
            await peer.publish(f"{ROOT}/status", orjson.dumps(stale), qos=1, retain=True)
        await collector.wait_for(lambda: len(_of(collector, "status")) == 3)
        late = Collector(broker.port, f"{ROOT}/status")
        await late.start()
        try:
            await late.wait_for(lambda: late.messages)
            assert [(m["state"], m["bdseq"]) for _, m in late.messages] == [("online", 2)]
        finally:
            await late.stop()
    assert [(m["state"], m["bdseq"]) for m in _of(collector, "status")][:3] == [
        ("online", 2), ("offline", 1), ("online", 2)]
    store.close()

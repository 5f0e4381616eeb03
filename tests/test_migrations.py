"""A store written by the previous release upgrades in place and delivers everything it held, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
import release_0_1
from conftest import Broker, Collector

from gateway import migrations
from gateway.config.schema import MqttConfig
from gateway.core.data import Priority
from gateway.recorder import AsyncStore
from gateway.store import Store
from gateway.uplink import Uplink

SITE = "test-site"
NOW = 1_790_000_000.0


def _v1_store(path: Path) -> list[tuple[int, str, bytes]]:
    """Release 0.1's layout holding undelivered rows of every kind it wrote; (prio, topic, payload) in order."""
    release_0_1.create(str(path))
    rows: list[tuple[int, str, bytes]] = []
    for i in range(3):
        rows.append((int(Priority.TELEMETRY), "telemetry/meter-1", release_0_1.dump({
            "v": 1, "id": f"0190000{i}-0000-7000-8000-000000000000", "type": "telemetry", "device": "meter-1",
            "ts": NOW + i, "points": {"voltage_a": {"v": 230.0 + i, "q": "good", "u": "V"},
                                      "status": {"v": None, "q": "bad"}}})))
    rows.append((int(Priority.ALARM), "alarm/fire.alarm", release_0_1.dump({
        "v": 1, "id": "01900010-0000-7000-8000-000000000000", "type": "alarm", "kind": "fire.alarm",
        "priority": "alarm", "source": "panel", "ts": NOW + 5, "data": {"zone": "07", "text": "火警"}})))
    rows.append((int(Priority.EVENT), "event/alarm.acknowledge", release_0_1.dump({
        "v": 1, "id": "01900011-0000-7000-8000-000000000000", "type": "event", "kind": "alarm.acknowledge",
        "priority": "event", "source": "door/gate-n", "ts": NOW + 6, "data": {"key": "door/gate-n"}})))
    rows.append((int(Priority.TELEMETRY), "summary/meter-2", release_0_1.dump({
        "v": 1, "id": "01900012-0000-7000-8000-000000000000", "type": "summary", "device": "meter-2",
        "start": NOW, "end": NOW + 60, "points": {"power": {"min": 1.0, "max": 2.0, "q": "good"}}})))
    rows.append((int(Priority.EVENT), "event/odd", b"not json at all"))  # whatever it was, it is delivered
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executemany("INSERT INTO outbox (prio, topic, payload, created) VALUES (?, ?, ?, ?)",
                       [(prio, topic, payload, NOW) for prio, topic, payload in rows])
        db.execute("DELETE FROM outbox WHERE seq = 1")  # delivered before the upgrade: its seq is never reused
        db.execute("INSERT INTO latest VALUES ('meter-1', 'voltage_a', '232.0', 'V', 'good', ?)", (NOW,))
        db.execute("INSERT INTO samples VALUES ('meter-1', ?, ?)",
                   (NOW, '{"voltage_a":{"v":230.0,"q":"good","u":"V"}}'))
        db.execute("INSERT INTO events (id, ts, kind, source, priority, payload) VALUES"
                   " ('e1', ?, 'fire.alarm', 'panel', 'alarm', '{}')", (NOW,))
    return rows[1:]


def test_a_v1_store_upgrades_in_place_keeping_every_row(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    rows = _v1_store(path)
    store = Store(path)
    assert store.upgraded == [2, 3] and migrations.version(store.db) == migrations.LATEST
    assert store.integrity_ok()
    kept = store.next_batch(100)
    assert [r.fact.priority for r in kept] == sorted(int(prio) for prio, _, _ in rows)  # alarms first, still
    assert [r.fact.kind for r in kept] == ["event", "event", "wire", "readings", "readings", "summary"]
    assert kept[2].fact.body == b"not json at all" and kept[2].fact.subject == "event/odd"
    assert [points["voltage_a"]["v"] for _, _, points in store.samples_since()] == [230.0]  # history kept
    assert [e["kind"] for _, e in store.events_after()] == ["fire.alarm"]
    assert min(r.seq for r in kept) == 2
    store.close()
    again = Store(path)  # opening a current store runs nothing
    assert again.upgraded == [] and len(again.next_batch(100)) == 6


async def _deliver_all(path: Path, broker: Broker, collector: Collector, count: int) -> None:
    """Open the store as this release does and let an uplink drain it to the broker; every row acknowledged."""
    store = AsyncStore(Store(path))
    committed = asyncio.Event()
    committed.set()
    uplink = Uplink(MqttConfig(host="127.0.0.1", port=broker.port, replay_delay=0, replay_rate=0), SITE, store,
                    committed)
    task = asyncio.create_task(uplink.run())
    try:
        await collector.wait_for(lambda: uplink.status.delivered >= count)
        await collector.wait_for(lambda: len([m for t, m in collector.messages if "/status" not in t]) >= count)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await store.run(store.store.next_batch, 100) == []  # every row acknowledged and gone
    store.close()


def test_a_store_newer_than_this_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    Store(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {migrations.LATEST + 1}")
    with pytest.raises(RuntimeError, match="newer than this release"):
        Store(path)


async def test_every_row_a_v1_store_held_reaches_the_broker(tmp_path: Path, broker: Broker,
                                                            collector: Collector) -> None:
    path = tmp_path / "gateway.db"
    rows = _v1_store(path)
    await _deliver_all(path, broker, collector, len(rows))
    delivered = [(t.removeprefix(f"community/{SITE}/"), m) for t, m in collector.messages if "/status" not in t]
    ids = [m.get("id") for _, m in delivered]
    wanted = [json.loads(p)["id"] if p.startswith(b"{") else None for _, _, p in rows]
    assert sorted(i for i in ids if i) == sorted(i for i in wanted if i)  # the same ids: platforms de-duplicate
    by_topic = {t: m for t, m in delivered}
    fire = by_topic["alarm/fire.alarm"]
    assert fire["data"] == {"zone": "07", "text": "火警"} and fire["v"] == 2
    assert by_topic["alarm/alarm.acknowledge"]["type"] == "alarm"  # the one rule: every alarm transition on alarm/
    telemetry = [m for t, m in delivered if t == "telemetry/meter-1"]
    assert [m["points"]["voltage_a"]["v"] for m in telemetry] == [231.0, 232.0]  # order kept
    assert all(m["hist"] is True and m["site"] == SITE for m in telemetry)  # stored long ago: replay
    assert by_topic["summary/meter-2"]["points"]["power"]["max"] == 2.0
    assert "event/odd" in by_topic  # kept verbatim


def _v2_store(path: Path) -> list[tuple[int, str, str, bytes]]:
    """Release 0.2's layout (issues 10-13: facts and per-uplink acks, no command ledger) with undelivered rows."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for step in migrations.MIGRATIONS[:2]:  # released steps are never edited: this is 0.2's layout
            step(db)
        db.execute("PRAGMA user_version = 2")
        rows = [
            (int(Priority.ALARM), "event", "fire.alarm",
             b'{"kind":"fire.alarm","priority":"alarm","source":"panel-1","ts":1790000000.0,"data":{"zone":"07"}}'),
            (int(Priority.TELEMETRY), "readings", "meter-1", b'{"voltage_a":{"v":231.0,"q":"good","u":"V"}}'),
            (int(Priority.TELEMETRY), "readings", "meter-1", b'{"voltage_a":{"v":232.0,"q":"good","u":"V"}}'),
            (int(Priority.EVENT), "state", "meter-2", b'{"state":"offline","since":1790000000.0}'),
        ]
        db.executemany("INSERT INTO outbox (prio, kind, subject, id, ts, body, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(prio, kind, subject, f"0190-{i}", NOW + i, body, NOW)
                        for i, (prio, kind, subject, body) in enumerate(rows)])
        db.execute("INSERT INTO counters (name, value) VALUES ('uplink.mqtt.bdseq', 7)")
    return rows


async def test_a_release_0_2_store_gains_the_command_ledger_and_delivers_everything(
        tmp_path: Path, broker: Broker, collector: Collector) -> None:
    path = tmp_path / "gateway.db"
    rows = _v2_store(path)
    plain = Store(path)
    assert plain.upgraded == [3] and migrations.version(plain.db) == migrations.LATEST
    assert plain.claim_command("req-1", NOW, "mqtt:unsigned/guard", "status") is None  # the ledger works
    assert plain.claim_command("req-1", NOW, "mqtt:unsigned/guard", "status") == (None, None)
    plain.close()
    await _deliver_all(path, broker, collector, len(rows))
    delivered = [(t.removeprefix(f"community/{SITE}/"), m) for t, m in collector.messages if "/status" not in t]
    assert delivered[0][0] == "alarm/fire.alarm"  # the alarm first, still
    assert [m["points"]["voltage_a"]["v"] for t, m in delivered if t == "telemetry/meter-1"] == [231.0, 232.0]
    assert {m.get("id") for t, m in delivered if t != "state/meter-2"} == {"0190-0", "0190-1", "0190-2"}
    births = [m for t, m in collector.messages if t.endswith("/status") and m.get("state") == "online"]
    assert births[0]["bdseq"] == 8  # the session counter carried over

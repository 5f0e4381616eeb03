"""The outbox on its own: order, priority, acknowledgement, disk cap, retention."""

from __future__ import annotations

import os
from pathlib import Path

from wiring import outbox

from gateway import facts
from gateway.core.data import Event, Priority, Quality, Reading
from gateway.facts import Fact
from gateway.store import Batch, Store


def _reading(device: str, i: int) -> Reading:
    return Reading(device, "p", float(i), "V", Quality.GOOD, 1000.0 + i)


def test_alarms_before_events_before_telemetry_and_order_within_class(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    batch = Batch()
    for i in range(5):
        batch.facts.append(facts.readings("m1", 1000.0 + i, [_reading("m1", i)]))
        batch.facts.append(facts.event(Event("device.offline", f"d{i}", Priority.EVENT)))
        batch.facts.append(facts.event(Event("fire", f"z{i}", Priority.ALARM)))
    store.commit(batch)
    sent = store.next_batch(100)
    assert [m.fact.priority for m in sent] == [Priority.ALARM] * 5 + [Priority.EVENT] * 5 + [Priority.TELEMETRY] * 5
    messages = [m for _, m in outbox(store)]
    assert [m["source"] for m in messages[:5]] == [f"z{i}" for i in range(5)]
    values = [m["points"]["p"]["v"] for m in messages[10:]]
    assert values == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_acknowledged_messages_leave_and_the_rest_stay_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    store.commit(Batch(facts=[facts.readings("m1", i, [_reading("m1", i)]) for i in range(10)]))
    first = outbox(store, 4)
    store.acknowledge([m.seq for m in store.next_batch(3)])  # the 4th was never acked (connection dropped)
    again = outbox(store)
    assert [m["points"]["p"]["v"] for _, m in again] == [float(i) for i in range(3, 10)]
    assert again[0] == first[3]  # a redelivery is the same message, with the same id
    assert store.counters()["uplink.delivered"] == 3


def test_outbox_survives_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    store.commit(Batch(facts=[facts.event(Event("fire", "z1", Priority.ALARM))]))
    store.close()
    reopened = Store(tmp_path / "g.db")
    assert reopened.outbox_depth() == {"alarm": 1, "event": 0, "telemetry": 0}
    assert reopened.integrity_ok()


def test_disk_cap_drops_oldest_telemetry_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db", max_bytes=1 * 2**20)
    big = [Reading("m1", f"p{j}", 1.0 * j, "kWh", Quality.GOOD, 0.0) for j in range(40)]
    for round_ in range(30):
        batch = Batch()
        for i in range(100):
            batch.facts.append(facts.readings("m1", round_ * 100 + i, big))
        batch.facts.append(facts.event(Event("fire", f"zone-{round_}", Priority.ALARM)))
        store.commit(batch)
        store.enforce_cap()
    assert store.used_bytes() <= 1 * 2**20
    dropped = store.counters()["store.telemetry_dropped"]
    depth = store.outbox_depth()
    assert depth["alarm"] == 30  # every alarm kept
    assert dropped > 0 and depth["telemetry"] + dropped == 3000
    remaining = [m["ts"] for _, m in outbox(store, 10_000) if m["type"] == "telemetry"]
    assert remaining == sorted(remaining) and remaining[-1] == 2999  # the newest kept, the oldest gone


def test_cap_never_drops_alarms_even_when_they_alone_exceed_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db", max_bytes=1 * 2**20)
    body = facts.dumps({"kind": "fire", "data": {"text": "x" * 4000}})
    store.commit(Batch(facts=[Fact(Priority.ALARM, "event", "fire", f"id-{i}", 0.0, body) for i in range(600)]))
    assert store.enforce_cap() == 0
    assert store.outbox_depth()["alarm"] == 600


def test_retention_prunes_samples(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db", readings_retention=60)
    store.commit(Batch(history=[("m1", ts, facts.points_body([_reading("m1", i)], ts))
                                for i, ts in ((1, 1000.0), (2, 1100.0))]))
    store.prune(now=1130.0)
    assert store.db.execute("SELECT ts FROM samples").fetchall() == [(1100.0,)]
    assert [points["p"]["v"] for _, _, points in store.samples_since()] == [2.0]


def test_the_page_cache_is_small(tmp_path: Path) -> None:
    """Half a megabyte of page cache: the outbox's working set, not SQLite's default 2 MB of pages read once."""
    store = Store(tmp_path / "g.db")
    assert store.db.execute("PRAGMA cache_size").fetchone()[0] == -512
    store.close()


def test_read_only_store_cannot_write(tmp_path: Path) -> None:
    Store(tmp_path / "g.db").close()
    ro = Store(tmp_path / "g.db", read_only=True)
    try:
        ro.db.execute("DELETE FROM outbox")
    except Exception as exc:  # sqlite3.OperationalError: attempt to write a readonly database
        assert "readonly" in str(exc).lower()
    else:
        raise AssertionError("a read-only store accepted a write")
    assert os.path.exists(tmp_path / "g.db")


async def test_a_full_disk_is_a_state_and_nothing_it_held_is_lost(tmp_path: Path) -> None:
    from wiring import wire

    from gateway.recorder import AsyncStore

    store = Store(tmp_path / "g.db")
    bus, recorder = wire(AsyncStore(store))
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")  # a real SQLITE_FULL: the disk is full
    bus.event(Event("fire", "z1", Priority.ALARM, {"text": "x" * 20000}))
    bus.snapshot("m1", [_reading("m1", 1)], 1.0)
    await recorder.flush()  # no exception: a full disk is a state, not a crash
    assert recorder.disk_full and [m.priority for m in recorder.held()] == [Priority.ALARM, Priority.ALARM]
    assert recorder.shed == {"telemetry": 1, "readings": 1}
    bus.event(Event("fire", "z2", Priority.ALARM))
    store.db.execute("PRAGMA max_page_count = 1073741823")  # room again
    await recorder.flush()
    sent = [m["source"] for _, m in outbox(store, 10)]
    assert sent == ["z1", "store", "z2"]  # nothing lost, order kept, and the disk_full alarm between them
    kinds = [m["kind"] for _, m in outbox(store, 10)]
    assert kinds == ["fire", "store.disk_full", "fire"]
    assert store.integrity_ok()


def test_the_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import stat

    old = os.umask(0o000)  # a technician's shell at its most careless
    try:
        store = Store(tmp_path / "g.db")
        store.commit(Batch(facts=[facts.event(Event("fire", "z1", Priority.ALARM))]))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes and all(mode & 0o007 == 0 for mode in modes.values()), modes  # nothing for others
    assert modes["g.db"] == 0o640
    store.close()


def test_the_command_ledger_answers_redeliveries_and_forgets_after_remember(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    assert store.claim_command("old", 1000.0, "mqtt:unsigned/a", "write") is None  # first time: run it
    assert store.claim_command("new", 5000.0, "mqtt:unsigned/a", "write") is None
    store.commit(Batch(results=[("old", "ok", b'{"result":{"result":"verified"}}')]))
    assert store.claim_command("old", 1001.0, "mqtt:unsigned/a", "write") == ("ok", b'{"result":{"result":"verified"}}')
    assert store.command_outcome("new") == (None, None)  # claimed, never finished: not run again
    assert store.forget_commands(before=2000.0) == 1
    assert store.command_outcome("old") is None and store.command_outcome("new") == (None, None)
    store.close()
    again = Store(tmp_path / "g.db")  # the ledger survives a restart
    assert again.claim_command("new", 6000.0, "mqtt:unsigned/a", "write") == (None, None)
    again.close()

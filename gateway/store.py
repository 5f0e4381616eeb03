"""The local SQLite store: the outbox, the event log, recent readings and device state.

Everything bound upstream is written here first and deleted only after the broker's PUBACK, so a
dead uplink, a SIGKILL or a power cut (with ``synchronous=full``) loses nothing that was committed.
The store is synchronous on purpose: one connection, driven from one writer thread by
``AsyncStore``, keeps SQLite's locking trivial and the tests free of event loops.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import migrations
from gateway.core.data import DeviceState, Event, Priority
from gateway.core.progress import Progress
from gateway.cursors import Cursors
from gateway.facts import Fact, StoredFact

MAIN_UPLINK = "mqtt"
"""The uplink name of a site with one broker (``[mqtt]``)."""


@dataclass(slots=True)
class Batch:
    """Everything one writer flush commits in a single transaction."""

    facts: list[Fact] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    history: list[tuple[str, float, bytes]] = field(default_factory=list)
    """Readings history rows: (device, poll ts, the poll's points body, the same bytes its outbox fact holds)."""
    devices: dict[str, DeviceState] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    audit: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    raw_lines: list[tuple[str, float, bytes, dict[str, Any] | None]] = field(default_factory=list)
    alarms: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[tuple[str, str, bytes]] = field(default_factory=list)
    """Platform commands' outcomes (request id, status, result body), written with the result's outbox fact."""

    def __bool__(self) -> bool:
        return bool(self.facts or self.events or self.history or self.devices or self.meta or self.audit
                    or self.raw_lines or self.alarms or self.results)

    def then(self, later: Batch) -> Batch:
        """This batch followed by a later one: lists keep their order, later states win."""
        return Batch(
            self.facts + later.facts, self.events + later.events, self.history + later.history,
            {**self.devices, **later.devices}, {**self.meta, **later.meta}, self.audit + later.audit,
            self.raw_lines + later.raw_lines, {**self.alarms, **later.alarms}, self.results + later.results,
        )


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes, for the CLI (a member of the ``gateway`` group, or root).

    A WAL reader needs the ``-shm`` file: while the daemon runs it exists (the group may read it), and root's
    SQLite creates a missing one owned by the database's owner. A group member cannot create it in the service's
    0750 directory; with no ``-wal`` file beside it the database file is the whole store (the daemon checkpointed
    it as it stopped), so it is read as it is, immutable.
    """
    from urllib.parse import quote

    uri = f"file:{quote(str(path))}?mode=ro"
    db = sqlite3.connect(uri, uri=True, check_same_thread=False)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        db.close()
        if os.path.exists(f"{path}-wal"):
            raise
        db = sqlite3.connect(f"{uri}&immutable=1", uri=True, check_same_thread=False)
    db.execute("PRAGMA query_only = ON")
    return db


class Store:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 512 * 2**20,
        synchronous: str = "full",
        readings_retention: float = 86400.0,
        events_retention: float = 90 * 86400.0,
        events_keep: int = 1_000_000,
        raw_lines_keep: int = 200_000,
        read_only: bool = False,
        uplinks: Sequence[str] = (MAIN_UPLINK,),
        quiet: bool = False,
    ) -> None:
        """``quiet``: no progress line while an upgrade converts rows (it is drawn only on a terminal anyway)."""
        self.path = path
        self.max_bytes = max_bytes
        self.readings_retention = readings_retention
        self.events_retention = events_retention
        self.events_keep = events_keep
        self.raw_lines_keep = raw_lines_keep
        self.uplinks = tuple(uplinks)
        """Every uplink that must acknowledge an outbox row before it is deleted."""
        if read_only:
            self.db = connect_read_only(path)
            self.cursors = Cursors(self.db)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Residents' data: created owner read-write, group read, whatever the umask of whoever started
        # us; SQLite gives the WAL and shared-memory files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640))
        if os.stat(path).st_mode & 0o037:
            os.chmod(path, 0o640)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA journal_size_limit = 16777216")
        self.db.execute("PRAGMA busy_timeout = 5000")
        # The outbox and history are appended at one end and deleted at the other: their working set is a few
        # dozen pages, and SQLite's default 2 MB page cache filled up with pages nobody reads again (1.5 MB of
        # the daemon's RSS at 100 devices x 100 points; a miss is a pread from the OS page cache).
        self.db.execute("PRAGMA cache_size = -512")  # KiB
        self.cursors = Cursors(self.db)
        with Progress("migrating store:", unit="rows", quiet=quiet) as bar:
            self.upgraded = migrations.upgrade(self.db, bar.update)
        """The layout steps this opening ran (empty when the file was already current)."""
        if not read_only:
            self._forget_gone_uplinks()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:  # SQLite has already rolled back on errors such as SQLITE_FULL
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------------------

    def commit(self, batch: Batch, now: float | None = None) -> None:
        """One transaction; ``now`` (when the rows were stored) is the caller's only to rebuild an outage's backlog."""
        now = time.time() if now is None else now
        with self.transaction():
            self.db.executemany(
                "INSERT INTO outbox (prio, kind, subject, id, ts, body, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(int(f.priority), f.kind, f.subject, f.id, f.ts, f.body, now) for f in batch.facts],
            )
            self.db.executemany(
                "INSERT OR IGNORE INTO events (id, ts, kind, source, priority, payload) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (e.id, e.ts, e.kind, e.source, e.priority.label, json.dumps(e.payload, ensure_ascii=False))
                    for e in batch.events
                ],
            )
            self.db.executemany("INSERT INTO samples (device, ts, points) VALUES (?, ?, ?)", batch.history)
            self.db.executemany(
                "INSERT OR REPLACE INTO devices (id, state, since, last_poll, last_ok, error, polls, failures, errors)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (d.id, d.state, d.since, d.last_poll, d.last_ok, d.error, d.polls, d.failures,
                     json.dumps(d.errors))
                    for d in batch.devices.values()
                ],
            )
            for key, value in batch.meta.items():
                self.set_meta(key, value)
            self.db.executemany(
                "INSERT OR REPLACE INTO alarms (key, data) VALUES (?, ?)",
                [(key, json.dumps(record, ensure_ascii=False, default=str)) for key, record in batch.alarms.items()],
            )
            self.db.executemany(
                "INSERT INTO raw_lines (device, ts, data, parsed) VALUES (?, ?, ?, ?)",
                [(device, ts, data, None if parsed is None else json.dumps(parsed, ensure_ascii=False, default=str))
                 for device, ts, data, parsed in batch.raw_lines],
            )
            self.db.executemany(
                "INSERT INTO audit (ts, action, data) VALUES (?, ?, ?)",
                [(ts, action, json.dumps(data, ensure_ascii=False, default=str)) for ts, action, data in batch.audit],
            )
            self.db.executemany("UPDATE commands SET status = ?, result = ? WHERE id = ?",
                                [(status, body, rid) for rid, status, body in batch.results])

    # -- platform commands' ledger ---------------------------------------------------------------

    def claim_command(self, request_id: str, received: float, actor: str,
                      cmd: str) -> tuple[str | None, bytes | None] | None:
        """Note a command before it runs: None the first time; else what it came to then (status None: it was
        running when the gateway stopped, and is not run again)."""
        with self.transaction():
            if self.db.execute("INSERT OR IGNORE INTO commands (id, received, actor, cmd) VALUES (?, ?, ?, ?)",
                               (request_id, received, actor, cmd)).rowcount:
                return None
            return self.command_outcome(request_id)

    def command_outcome(self, request_id: str) -> tuple[str | None, bytes | None] | None:
        """(status, result body) of a command run before; None when its id is not known."""
        row = self.db.execute("SELECT status, result FROM commands WHERE id = ?", (request_id,)).fetchone()
        return None if row is None else (row[0], None if row[1] is None else bytes(row[1]))

    def forget_commands(self, before: float) -> int:
        return self.db.execute("DELETE FROM commands WHERE received < ?", (before,)).rowcount

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def bump(self, name: str, by: int = 1) -> None:
        self.db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    # -- the outbox ----------------------------------------------------------------------------

    def next_batch(self, limit: int, uplink: str = MAIN_UPLINK, skip: Sequence[int] = ()) -> list[StoredFact]:
        """What ``uplink`` has not had acknowledged yet: oldest first within a class, alarms before events
        before telemetry. ``skip``: rows it has in hand already (acknowledged, the deletion not yet written)."""
        if len(self.uplinks) > 1:
            rows = self.cursors.unacknowledged(limit + len(skip), uplink)
        else:
            rows = self.db.execute("SELECT seq, prio, kind, subject, id, ts, body, created FROM outbox"
                                   " ORDER BY prio, seq LIMIT ?", (limit + len(skip),)).fetchall()
        skipped = set(skip)
        return [StoredFact(seq, created, Fact(Priority(prio), kind, subject, id_, ts, bytes(body)))
                for seq, prio, kind, subject, id_, ts, body, created in rows if seq not in skipped][:limit]

    def acknowledge(self, seqs: Sequence[int], uplink: str = MAIN_UPLINK) -> None:
        """``uplink`` has the broker's PUBACK for these rows; a row goes once every uplink has acknowledged it.
        An uplink no longer configured (a reload removed it while it was delivering) acknowledges nothing."""
        if not seqs or uplink not in self.uplinks:
            return
        with self.transaction():
            if len(self.uplinks) > 1:
                self.cursors.acknowledge(seqs, uplink, self.uplinks)
            else:
                self.db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self.bump("uplink.delivered" if uplink == MAIN_UPLINK else f"uplink.{uplink}.delivered", len(seqs))

    def next_session(self, uplink: str = MAIN_UPLINK) -> int:
        """The uplink's birth/death sequence number for a new connection (kept across restarts)."""
        name = f"uplink.{uplink}.bdseq"
        with self.transaction():
            self.bump(name)
            return int(self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def set_uplinks(self, uplinks: Sequence[str]) -> None:
        """The configured uplinks changed (a reload): a removed one's cursor is forgotten, so it holds nothing
        back; an added one starts from what the outbox holds."""
        self.uplinks = tuple(uplinks)
        self._forget_gone_uplinks()

    def _forget_gone_uplinks(self) -> None:
        """An uplink removed from the config no longer holds rows back: what every remaining one has is done."""
        with self.transaction():
            self.cursors.forget_gone(self.uplinks)

    def backlog(self, uplink: str = MAIN_UPLINK) -> int:
        """Rows ``uplink`` has still to deliver (or to pass over, when it does not carry them)."""
        return self.backlogs([uplink])[uplink]

    def backlogs(self, uplinks: Sequence[str], total: int | None = None) -> dict[str, int]:
        """``backlog`` of each of ``uplinks``: the outbox's rows (``total``, when the caller has just counted them)
        less the ones the uplink acknowledged. Exact, because an acknowledgement is kept only while its row is in
        the outbox (gateway/cursors.py); one count over the acknowledgements, never an anti-join over the
        outbox (58-88 ms per uplink at 300,000 rows)."""
        if total is None:
            total = int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        acked = self.cursors.acknowledged() if len(self.uplinks) > 1 else {}
        return {uplink: max(0, total - acked.get(uplink, 0)) for uplink in uplinks}

    def outbox_depth(self) -> dict[str, int]:
        """Rows by class. The whole count is SQLite's cheap one; the classes but the last are counted along the
        (prio, seq) index, and the last (telemetry, the bulk of an outage's backlog) is the difference: 1 ms
        rather than 9 ms for a GROUP BY at 300,000 rows."""
        *first, last = Priority
        total = int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        depth = {p.label: int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE prio = ?", (int(p),)).fetchone()[0])
                 for p in first}
        depth[last.label] = total - sum(depth.values())
        return depth

    def outbox_oldest(self) -> dict[str, float]:
        """When the oldest undelivered row of each class was written (classes with none left out)."""
        oldest = {}
        for prio in Priority:  # one step into the (prio, seq) index per class
            row = self.db.execute("SELECT created FROM outbox WHERE prio = ? ORDER BY seq LIMIT 1",
                                  (int(prio),)).fetchone()
            if row is not None:
                oldest[prio.label] = row[0]
        return oldest

    # -- disk cap and retention ----------------------------------------------------------------

    def used_bytes(self) -> int:
        """The store's whole footprint that the cap bounds: live pages, and the WAL and shared-memory files."""
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size) + self._side_files()

    def spare_bytes(self) -> int:
        """Room inside the database file (freed pages) that new rows take before the file must grow."""
        page_size, free = (self.db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "freelist_count"))
        return int(page_size * free)

    def _shrink_wal(self) -> int:
        """Fold the WAL back into the database when it is a large part of the cap; the footprint after."""
        if self._side_files() > self.max_bytes // 4:
            with contextlib.suppress(sqlite3.OperationalError):  # a reader may hold the WAL: next time
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self.used_bytes()

    def _side_files(self) -> int:
        total = 0
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def enforce_cap(self, chunk: int = 500, *, low_disk: bool = False, room: int = 2**20) -> int:
        """Drop telemetry oldest-first until under the cap; alarms and events are never dropped.

        ``low_disk``: the file system is short of space; telemetry also goes until the database holds
        ``room`` bytes of freed pages, so the next alarms need no new disk. Returns how many telemetry
        messages were dropped (0 when within the cap).
        """
        self._shrink_wal()
        dropped = 0
        while self._shrink_wal() > self.max_bytes or (low_disk and self.spare_bytes() < room):
            with self.transaction():
                # Recent-readings history goes first: it is only a convenience for the CLI.
                gone = self.db.execute(
                    "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples ORDER BY ts LIMIT ?)", (chunk,)
                ).rowcount
                if gone:
                    continue
                # Drop just enough of the oldest telemetry to cover the excess (payload + row overhead).
                excess = max(self.used_bytes() - self.max_bytes, room - self.spare_bytes() if low_disk else 0)
                gone = self.db.execute(
                    "DELETE FROM outbox WHERE prio = ?1 AND seq <= COALESCE("
                    " (SELECT seq FROM (SELECT seq, SUM(length(body) + 80) OVER (ORDER BY seq) AS run"
                    "  FROM outbox WHERE prio = ?1) WHERE run >= ?2 ORDER BY seq LIMIT 1),"
                    " (SELECT MAX(seq) FROM outbox WHERE prio = ?1))",
                    (int(Priority.TELEMETRY), excess),
                ).rowcount
                if not gone:
                    break  # only alarms and events are left: keep them and let the disk fill
                dropped += gone
                self.bump("store.telemetry_dropped", gone)
                if len(self.uplinks) > 1:  # what the live uplinks acknowledged of them goes too
                    self.cursors.forget_orphans()
        return dropped

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction():
            self.db.execute("DELETE FROM samples WHERE ts < ?", (now - self.readings_retention,))
            self.db.execute("DELETE FROM events WHERE ts < ?", (now - self.events_retention,))
            self.db.execute("DELETE FROM raw_lines WHERE ts < ?", (now - self.events_retention,))
            # Caps of their own, so that no log of ours fills the disk that alarms need (a noisy panel
            # prints ~1,000 lines a second): the oldest go first.
            self.db.execute("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (self.events_keep,))
            self.db.execute("DELETE FROM raw_lines WHERE seq <= (SELECT MAX(seq) FROM raw_lines) - ?",
                            (self.raw_lines_keep,))

    # -- reading, for the CLI ------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters"))

    def meta(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self.db.execute("SELECT key, value FROM meta")}

    def devices(self) -> list[DeviceState]:
        rows = self.db.execute(
            "SELECT id, state, since, last_poll, last_ok, error, polls, failures, errors FROM devices ORDER BY id"
        )
        return [
            DeviceState(id_, state, since, last_poll, last_ok, error, polls, failures, json.loads(errors))
            for id_, state, since, last_poll, last_ok, error, polls, failures, errors in rows
        ]

    def events_after(self, after_seq: int = 0, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        rows = self.db.execute(
            "SELECT seq, id, ts, kind, source, priority, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [
            (seq, {"id": id_, "ts": ts, "kind": kind, "source": source, "priority": prio, "data": json.loads(data)})
            for seq, id_, ts, kind, source, prio, data in rows
        ]

    def audit_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT ts, action, data FROM audit ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [{"ts": ts, "action": action, **json.loads(data)} for ts, action, data in reversed(rows)]

    def alarm_states(self) -> dict[str, dict[str, Any]]:
        return {key: json.loads(data) for key, data in self.db.execute("SELECT key, data FROM alarms")}

    def raw_lines(self, device: str, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT seq, ts, data, parsed FROM raw_lines WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?",
            (device, after_seq, limit),
        )
        return [{"seq": seq, "ts": ts, "data": bytes(data), "parsed": None if parsed is None else json.loads(parsed)}
                for seq, ts, data, parsed in rows]

    def samples_since(self, since: float = 0.0) -> Iterator[tuple[str, float, dict[str, Any]]]:
        """Stored snapshots from ``since`` on, oldest first: (device, ts, {point: {"v", "q", "u"?}})."""
        rows = self.db.execute("SELECT device, ts, points FROM samples WHERE ts >= ? ORDER BY ts, rowid", (since,))
        for device, ts, points in rows:
            yield device, ts, json.loads(points)

    def events_since(self, since: float = 0.0) -> Iterator[dict[str, Any]]:
        """Logged events from ``since`` on, oldest first, shaped as ``events_after`` gives them."""
        rows = self.db.execute(
            "SELECT id, ts, kind, source, priority, payload FROM events WHERE ts >= ? ORDER BY ts, seq", (since,))
        for id_, ts, kind, source, prio, data in rows:
            yield {"id": id_, "ts": ts, "kind": kind, "source": source, "priority": prio, "data": json.loads(data)}

    def last_event_seq(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def integrity_ok(self) -> bool:
        return bool(self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


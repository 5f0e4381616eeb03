"""The store's layout, release by release, and the steps between them.

``PRAGMA user_version`` says which layout a database file has; opening a store runs every later
step in order, each in its own transaction, so a gateway updated in place keeps (and delivers)
everything the previous release stored. Release 0.1 wrote no ``user_version``: its files are known
by the ``schema_version`` row it kept in ``meta``. A step never loses a row: what it cannot convert
it keeps as it was (an outbox row it cannot read goes out verbatim, as a ``wire`` fact).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from gateway import facts

_V1 = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, prio INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_by_prio ON outbox (prio, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, ts REAL NOT NULL, kind TEXT NOT NULL,
    source TEXT NOT NULL, priority TEXT NOT NULL, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
CREATE TABLE IF NOT EXISTS latest (
    device TEXT NOT NULL, point TEXT NOT NULL, value TEXT, unit TEXT, quality TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (device, point)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (device TEXT NOT NULL, ts REAL NOT NULL, points TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_by_device ON samples (device, ts);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, since REAL NOT NULL, last_poll REAL, last_ok REAL, error TEXT,
    polls INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, errors TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, action TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raw_lines (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, ts REAL NOT NULL, data BLOB NOT NULL, parsed TEXT);
CREATE INDEX IF NOT EXISTS raw_lines_by_device ON raw_lines (device, seq);
CREATE TABLE IF NOT EXISTS alarms (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
"""
"""Release 0.1's layout (the same tables, compacted), so that a fresh store is built by the same steps."""


Report = Callable[[int, int], None]
"""(rows converted, rows in all), called while a step converts rows: a 200,000-row backlog takes a while on a Pi
and the technician upgrading on a terminal should see it moving (``gateway.core.progress``)."""
REPORT_EVERY = 1000


class Step(Protocol):
    def __call__(self, db: sqlite3.Connection, report: Report | None = None) -> None: ...


def _counted(rows: Iterable[Any], total: int, report: Report | None) -> Iterator[Any]:
    done = 0
    for done, row in enumerate(rows, 1):
        if report is not None and done % REPORT_EVERY == 0:
            report(done, total)
        yield row
    if report is not None and done:
        report(done, total)


def _v1(db: sqlite3.Connection, report: Report | None = None) -> None:
    _script(db, _V1)


def _v2(db: sqlite3.Connection, report: Report | None = None) -> None:
    """The outbox holds facts and each uplink's acknowledgements; ``latest`` lives in the daemon's memory."""
    _script(db, """
        CREATE TABLE outbox_v2 (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, prio INTEGER NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
            id TEXT NOT NULL, ts REAL NOT NULL, body BLOB NOT NULL, created REAL NOT NULL);
        CREATE TABLE outbox_acks (uplink TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (uplink, seq))
            WITHOUT ROWID;
    """)
    total = int(db.execute("SELECT count(*) FROM outbox").fetchone()[0]) if report is not None else 0
    rows = _counted(db.execute("SELECT seq, prio, topic, payload, created FROM outbox ORDER BY seq"), total, report)
    db.executemany(
        "INSERT INTO outbox_v2 (seq, prio, kind, subject, id, ts, body, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (_fact_row(seq, prio, topic, bytes(payload), created) for seq, prio, topic, payload, created in rows),
    )
    # keep AUTOINCREMENT's high-water mark: a seq is never given twice, even to a row deleted before the upgrade
    db.execute("INSERT OR REPLACE INTO sqlite_sequence (name, seq) SELECT 'outbox_v2', seq FROM sqlite_sequence"
               " WHERE name = 'outbox'")
    _script(db, """
        DROP TABLE outbox;
        ALTER TABLE outbox_v2 RENAME TO outbox;
        CREATE INDEX outbox_by_prio ON outbox (prio, seq);
        DROP TABLE latest;
        DELETE FROM meta WHERE key = 'schema_version';
    """)


def _v3(db: sqlite3.Connection, report: Report | None = None) -> None:
    """Platform commands' ids and results, so that a redelivered command is answered, never executed twice."""
    _script(db, """
        CREATE TABLE commands (
            id TEXT PRIMARY KEY, received REAL NOT NULL, actor TEXT NOT NULL, cmd TEXT NOT NULL, status TEXT,
            result BLOB) WITHOUT ROWID;
        CREATE INDEX commands_by_received ON commands (received);
    """)


def _fact_row(seq: int, prio: int, topic: str, payload: bytes, created: float) -> tuple[Any, ...]:
    """A v1 outbox row (topic + v1 JSON) as a fact row, keeping its seq, class, id and time."""
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        data = json.loads(payload)
        kind = data["type"]
        if kind == "telemetry":
            return (seq, prio, "readings", str(data["device"]), str(data["id"]), float(data["ts"]),
                    facts.dumps(data["points"]), created)
        if kind in ("event", "alarm"):
            body = {k: data[k] for k in ("kind", "priority", "source", "ts", "data")}
            return (seq, prio, "event", str(data["kind"]), str(data["id"]), float(data["ts"]), facts.dumps(body),
                    created)
        if kind == "summary":
            body = {k: data[k] for k in ("start", "end", "points")}
            return (seq, prio, "summary", str(data["device"]), str(data["id"]), float(data["end"]),
                    facts.dumps(body), created)
    return (seq, prio, "wire", topic, f"v1-{seq}", created, payload, created)


MIGRATIONS: list[Step] = [_v1, _v2, _v3]
"""Step N builds layout N from layout N-1 (index N-1). Append; never edit a released step."""
LATEST = len(MIGRATIONS)


def version(db: sqlite3.Connection) -> int:
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        found = int(row[0]) if row else 0  # release 0.1 kept its version here
    return found


def upgrade(db: sqlite3.Connection, report: Report | None = None) -> list[int]:
    """Bring the file to the newest layout, one step per transaction; the steps that ran."""
    current = version(db)
    if current > LATEST:
        raise RuntimeError(f"the store has layout {current}, newer than this release knows ({LATEST}): "
                           "run the release that wrote it, or restore a backup")
    ran = []
    for step in range(current + 1, LATEST + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[step - 1](db, report)
            db.execute(f"PRAGMA user_version = {step}")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        ran.append(step)
    return ran


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Statement by statement (``executescript`` would commit the open transaction)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)

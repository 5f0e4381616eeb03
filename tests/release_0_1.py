"""Release 0.1 as it wrote its store: the layout and the outbox rows, verbatim, to prove the upgrade in place.

Nothing here is imported by the gateway: it is the previous release, frozen, for tests/test_migrations.py.
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    prio     INTEGER NOT NULL,
    topic    TEXT NOT NULL,
    payload  BLOB NOT NULL,
    created  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_prio ON outbox (prio, seq);
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT NOT NULL UNIQUE,
    ts       REAL NOT NULL,
    kind     TEXT NOT NULL,
    source   TEXT NOT NULL,
    priority TEXT NOT NULL,
    payload  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
CREATE TABLE IF NOT EXISTS latest (
    device   TEXT NOT NULL,
    point    TEXT NOT NULL,
    value    TEXT,
    unit     TEXT,
    quality  TEXT NOT NULL,
    ts       REAL NOT NULL,
    PRIMARY KEY (device, point)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    device   TEXT NOT NULL,
    ts       REAL NOT NULL,
    points   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_device ON samples (device, ts);
CREATE TABLE IF NOT EXISTS devices (
    id        TEXT PRIMARY KEY,
    state     TEXT NOT NULL,
    since     REAL NOT NULL,
    last_poll REAL,
    last_ok   REAL,
    error     TEXT,
    polls     INTEGER NOT NULL DEFAULT 0,
    failures  INTEGER NOT NULL DEFAULT 0,
    errors    TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS audit (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts       REAL NOT NULL,
    action   TEXT NOT NULL,
    data     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS raw_lines (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    device   TEXT NOT NULL,
    ts       REAL NOT NULL,
    data     BLOB NOT NULL,
    parsed   TEXT
);
CREATE INDEX IF NOT EXISTS raw_lines_by_device ON raw_lines (device, seq);
CREATE TABLE IF NOT EXISTS alarms (
    key      TEXT PRIMARY KEY,
    data     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def create(path: str) -> None:
    """A store as release 0.1 opened it: WAL, the schema, its version row."""
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", ("1",))
    db.execute("COMMIT")
    db.close()


def dump(data: dict[str, object]) -> bytes:
    """Release 0.1's payload encoding."""
    import json

    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()

"""The gallery of enrolled people: SQLite in the data dir; names, roles and embeddings encrypted (AES-GCM).

The key (32 random bytes) lives outside the config and outside the data dir: a systemd credential
(``LoadCredential=faces-key:/etc/gateway/faces.key``, or ``SetCredentialEncrypted=`` made with
``systemd-creds encrypt --with-key=tpm2`` on a board with a TPM, so the key is only readable on that
board) that appears as ``$CREDENTIALS_DIRECTORY/faces-key``; or a 0600 file given as ``key_file``.
Each embedding, and each person's name and role, is sealed with a fresh nonce and the person id as
associated data, so a row moved to another person does not decrypt. The person id (it travels in
events), consent and expiry dates stay readable: matching needs them before anything is decrypted.

What it protects against: a copied SD card, a stolen faces.db or backup, without the key, gives ids
and dates but no name, role or face. What it does not: root on the running box reads the key.

Every enrol, erase and export writes an audit row in the same transaction as the change. Erase
deletes the person and their embeddings with ``secure_delete`` on, then scrubs the file: VACUUM and a
full checkpoint of the WAL (``wal_checkpoint(TRUNCATE)``), so the old bytes are overwritten, not just
unlinked. A checkpoint cannot finish while another connection reads an older snapshot (a camera
worker in the middle of a match): it is retried for SCRUB_WAIT seconds, and if it still cannot finish
the file is marked (``user_version`` 1, "scrub pending") and GalleryError says so and what to do; the
next opening of the file (any ``gateway faces`` command, a camera worker starting) finishes it.

Format versions (``PRAGMA user_version``): 0 = names and roles in clear (releases up to issue 17),
1 = sealed, but the file may still hold erased or clear bytes until its scrub finishes, 2 = sealed.
Opening a version 0 file with the key upgrades it in place (one transaction, then the scrub, so the
clear text leaves the file and its WAL).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.core.config import IDENTIFIER_PATTERN
from models.faces import Vector

DB_NAME = "faces.db"
KEY_BYTES = 32
BUSY_MS = 5000
"""How long a statement waits for another process's lock (an enrolment beside the camera workers)."""
OPEN_WAIT = 10.0
"""How long opening retries a lock SQLite refuses at once (several workers creating the file together)."""
CREDENTIAL_NAME = "faces-key"
EMBEDDING_DIM = 128

VERSION = 2
"""``PRAGMA user_version`` of the current format (0: names and roles in clear)."""
SCRUB_PENDING = 1
"""``PRAGMA user_version`` of a sealed file whose old bytes (erased rows, clear names) may still be on disk."""
SCRUB_WAIT = 10.0
"""How long a scrub retries a checkpoint that another connection's read transaction holds back (seconds)."""
SCRUB_BUSY_MS = 200
"""The busy timeout of each checkpoint attempt during a scrub (so SCRUB_WAIT bounds the whole wait)."""

_PEOPLE = """
CREATE TABLE IF NOT EXISTS people (
    id       TEXT PRIMARY KEY,
    nonce    BLOB NOT NULL,
    sealed   BLOB NOT NULL,
    consent  TEXT NOT NULL,
    expires  TEXT,
    created  REAL NOT NULL
);"""

_SCHEMA = _PEOPLE + """
CREATE TABLE IF NOT EXISTS embeddings (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    person   TEXT NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    nonce    BLOB NOT NULL,
    sealed   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS embeddings_by_person ON embeddings (person);
CREATE TABLE IF NOT EXISTS audit (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts       REAL NOT NULL,
    action   TEXT NOT NULL,
    person   TEXT,
    data     TEXT NOT NULL
);
"""


class GalleryError(Exception):
    """Bad key, unknown person, or a record that does not make sense."""


class ScrubError(GalleryError):
    """The change is made, but the old bytes are not overwritten yet (another reader held the file)."""


def load_key(key_file: Path | None = None, *, credential: str = CREDENTIAL_NAME) -> bytes:
    """The gallery key from ``key_file``, else from the systemd credential; refused if group/other can read it."""
    path = key_file
    if path is None:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise GalleryError("no gallery key: give --key-file, or run under systemd with "
                               f"LoadCredential={credential}:/etc/gateway/faces.key")
        path = Path(creds) / credential
    try:
        info = path.stat()
    except OSError as exc:
        raise GalleryError(f"gallery key {path}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise GalleryError(f"gallery key {path} is accessible by group or others "
                           f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise GalleryError(f"gallery key {path} must be exactly {KEY_BYTES} bytes, it has {len(key)}")
    return key


def create_key(path: Path) -> None:
    """Write a new random key, mode 0600; never overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise GalleryError(f"{path} exists: refusing to overwrite a gallery key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(AESGCM.generate_key(bit_length=KEY_BYTES * 8))


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    name: str
    role: str
    consent: str  # ISO date the person consented
    expires: str | None = None  # ISO date after which they no longer match
    embeddings: int = 0

    def active(self, today: dt.date) -> bool:
        return self.expires is None or dt.date.fromisoformat(self.expires) >= today


@dataclass(frozen=True, slots=True)
class Match:
    person: str | None  # None: nobody at or above the threshold
    score: float  # best cosine similarity found


def _iso_date(value: str, what: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise GalleryError(f"{what} must be a date like 2025-01-31, got {value!r}") from None


class Gallery:
    def __init__(self, data_dir: Path, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise GalleryError(f"gallery key must be {KEY_BYTES} bytes")
        self.aead = AESGCM(key)
        self.path = data_dir / DB_NAME
        data_dir.mkdir(parents=True, exist_ok=True)
        # One user at a time, maybe not the thread that opened it: a camera's faces analyser runs on its own lane.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        os.chmod(self.path, 0o600)
        # The wait for a lock first: two camera workers starting together create and open the file at once.
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        self.db.execute("PRAGMA secure_delete = ON")
        self.db.execute("PRAGMA foreign_keys = ON")
        self._when_unlocked(lambda: self.db.execute("PRAGMA journal_mode = WAL"))
        self._when_unlocked(self._open)
        self._cache: tuple[dt.date, int, list[str], np.ndarray[Any, np.dtype[np.float32]]] | None = None

    def _when_unlocked(self, step: Callable[[], object]) -> None:
        """Run an opening step, again while another process holds the lock it needs, for OPEN_WAIT seconds at most.

        The busy timeout covers most waits, but SQLite answers 'database is locked' at once, without waiting,
        where waiting could deadlock: the switch of a new file to WAL, a read upgraded to a write while another
        connection writes. Every step here can be run again (``IF NOT EXISTS``, a version check)."""
        deadline = time.monotonic() + OPEN_WAIT
        while True:
            try:
                step()
                return
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() >= deadline:
                    raise
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                time.sleep(0.02 + 0.08 * secrets.randbelow(100) / 100)

    def _columns(self) -> set[str]:
        return {row[1] for row in self.db.execute("PRAGMA table_info(people)")}

    def _open(self) -> None:
        """Create the tables, or upgrade a version 0 file (names and roles in clear) in place."""
        if "name" not in self._columns():
            self.db.executescript(_SCHEMA)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCRUB_PENDING:  # an erase or upgrade whose old bytes may still be on disk
                self._scrub("a previous erase or upgrade")
            elif version != VERSION:  # a new file: no write otherwise
                self.db.execute(f"PRAGMA user_version = {VERSION}")
            return
        # Version 0. The key must be the one the embeddings were sealed with, or the names would be
        # sealed with a key that opens nothing: check it on one embedding before touching anything.
        row = self.db.execute("SELECT person, nonce, sealed FROM embeddings LIMIT 1").fetchone()
        if row is not None:
            try:
                self.aead.decrypt(row[1], row[2], row[0].encode())
            except InvalidTag:
                raise GalleryError("gallery does not decrypt with this key (wrong key or tampered row); "
                                   "not upgrading it") from None
        self.db.execute("PRAGMA foreign_keys = OFF")  # dropping the old people table must not cascade
        try:
            with self._tx():
                if "name" in self._columns():  # another process may have upgraded it meanwhile
                    self._upgrade_v0()
        finally:
            self.db.execute("PRAGMA foreign_keys = ON")
        self._scrub("the upgrade sealed every name and role")  # the clear names leave the file, not only the table

    def _scrub(self, done: str) -> None:
        """Overwrite the bytes of deleted rows on disk: VACUUM (every page rewritten, through the WAL), then a
        full checkpoint (the WAL copied into faces.db, the file cut to size, the WAL emptied).

        The checkpoint cannot finish while another connection reads an older snapshot: retried for
        SCRUB_WAIT seconds, then GalleryError (``done`` says what was already done). The file stays
        marked SCRUB_PENDING until a scrub finishes, so the next opening tries again."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] != SCRUB_PENDING:
            self.db.execute(f"PRAGMA user_version = {SCRUB_PENDING}")
        self.db.execute("VACUUM")
        deadline = time.monotonic() + SCRUB_WAIT
        self.db.execute(f"PRAGMA busy_timeout = {SCRUB_BUSY_MS}")
        try:
            while True:
                busy, log, moved = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy == 0 and log <= 0:
                    break
                if time.monotonic() >= deadline:
                    raise ScrubError(
                        f"{done}, but the old bytes are still in {self.path} (or its -wal): another process kept "
                        f"a read transaction open on it for {SCRUB_WAIT:.0f} s ({moved} of {log} pages written). "
                        "Stop what holds the gallery open (the gateway's camera workers: systemctl stop gateway), "
                        "then run `gateway faces list` (any opening of the gallery finishes the job)")
                time.sleep(0.05)
            # Scrubbed: mark it so, then empty the WAL of that one page (best effort: the mark holds no secret).
            self.db.execute(f"PRAGMA user_version = {VERSION}")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")

    def _upgrade_v0(self) -> None:
        rows = self.db.execute("SELECT id, name, role, consent, expires, created FROM people").fetchall()
        self.db.execute(_PEOPLE.replace("people", "people_v2"))
        for pid, name, role, consent, expires, created in rows:
            nonce, sealed = self._seal_identity(pid, name, role)
            self.db.execute("INSERT INTO people_v2 (id, nonce, sealed, consent, expires, created) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (pid, nonce, sealed, consent, expires, created))
        self.db.execute("DROP TABLE people")
        self.db.execute("ALTER TABLE people_v2 RENAME TO people")
        # enrol audit rows of version 0 carried the role in clear
        self.db.execute("UPDATE audit SET data = json_remove(data, '$.role') WHERE json_extract(data, '$.role') "
                        "IS NOT NULL")
        self._audit("faces.upgrade", None, people=len(rows), to_version=VERSION)
        self.db.execute(f"PRAGMA user_version = {SCRUB_PENDING}")  # sealed; VERSION once the clear bytes are gone

    def _seal_identity(self, person: str, name: str, role: str) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        plain = json.dumps({"name": name, "role": role}, ensure_ascii=False).encode()
        return nonce, self.aead.encrypt(nonce, plain, b"person:" + person.encode())

    def _open_identity(self, person: str, nonce: bytes, sealed: bytes) -> tuple[str, str]:
        try:
            doc = json.loads(self.aead.decrypt(nonce, sealed, b"person:" + person.encode()))
        except InvalidTag:
            raise GalleryError("gallery does not decrypt with this key (wrong key or tampered row)") from None
        return str(doc["name"]), str(doc["role"])

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self._cache = None

    def _audit(self, action: str, person: str | None, **data: Any) -> None:
        self.db.execute("INSERT INTO audit (ts, action, person, data) VALUES (?, ?, ?, ?)",
                        (time.time(), action, person, json.dumps(data, ensure_ascii=False, default=str)))

    # -- people ----------------------------------------------------------------------------------

    def enroll(self, person: Person, embeddings: list[Vector], *, actor: str = "cli") -> int:
        """Add (or update) a person and add their embeddings. Returns how many the person now has."""
        if not re.fullmatch(IDENTIFIER_PATTERN, person.id):
            raise GalleryError(f"person id {person.id!r}: 1-64 letters, digits, '_' or '-' (it travels in events)")
        if not embeddings:
            raise GalleryError(f"{person.id}: no usable face to enrol")
        consent = _iso_date(person.consent, "consent date")
        expires = _iso_date(person.expires, "expiry date") if person.expires else None
        with self._tx():
            nonce, sealed = self._seal_identity(person.id, person.name, person.role)
            self.db.execute(
                "INSERT INTO people (id, nonce, sealed, consent, expires, created) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET nonce=excluded.nonce, sealed=excluded.sealed, "
                "consent=excluded.consent, expires=excluded.expires",
                (person.id, nonce, sealed, consent, expires, time.time()),
            )
            for vec in embeddings:
                v = np.asarray(vec, dtype="<f4")
                if v.shape != (EMBEDDING_DIM,) or not np.isfinite(v).all():
                    raise GalleryError(f"{person.id}: embedding must be {EMBEDDING_DIM} finite floats")
                nonce = os.urandom(12)
                sealed = self.aead.encrypt(nonce, v.tobytes(), person.id.encode())
                self.db.execute("INSERT INTO embeddings (person, nonce, sealed) VALUES (?, ?, ?)",
                                (person.id, nonce, sealed))
            (count,) = self.db.execute("SELECT count(*) FROM embeddings WHERE person = ?", (person.id,)).fetchone()
            self._audit("faces.enroll", person.id, actor=actor, added=len(embeddings), total=count,
                        consent=consent, expires=expires)  # no name or role: the audit is not sealed
        return int(count)

    def people(self) -> list[Person]:
        rows = self.db.execute(
            "SELECT p.id, p.nonce, p.sealed, p.consent, p.expires, count(e.seq) FROM people p "
            "LEFT JOIN embeddings e ON e.person = p.id GROUP BY p.id ORDER BY p.id"
        ).fetchall()
        return [Person(pid, *self._open_identity(pid, nonce, sealed), consent, expires, count)
                for pid, nonce, sealed, consent, expires, count in rows]

    def embeddings_of(self, person_id: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The person's embeddings (n x 128), decrypted; empty if unknown."""
        vecs = []
        for nonce, sealed in self.db.execute("SELECT nonce, sealed FROM embeddings WHERE person = ? ORDER BY seq",
                                             (person_id,)):
            try:
                plain = self.aead.decrypt(nonce, sealed, person_id.encode())
            except InvalidTag:
                raise GalleryError("gallery does not decrypt with this key (wrong key or tampered row)") from None
            vecs.append(np.frombuffer(plain, dtype="<f4").astype(np.float32))
        return np.stack(vecs) if vecs else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)

    def erase(self, person_id: str, *, actor: str = "cli", **details: Any) -> int:
        """Remove the person, every embedding of theirs, and overwrite the freed pages. Audited (with ``details``)."""
        with self._tx():
            row = self.db.execute("SELECT 1 FROM people WHERE id = ?", (person_id,)).fetchone()
            if row is None:
                raise GalleryError(f"no enrolled person {person_id!r}")
            removed = self.db.execute("DELETE FROM embeddings WHERE person = ?", (person_id,)).rowcount
            self.db.execute("DELETE FROM people WHERE id = ?", (person_id,))
            self._audit("faces.erase", person_id, actor=actor, embeddings=removed, **details)
            self.db.execute(f"PRAGMA user_version = {SCRUB_PENDING}")  # until the freed bytes are overwritten
        try:
            self._scrub(f"{person_id} was erased from the gallery")
        except sqlite3.OperationalError as exc:  # VACUUM kept from its lock past the busy timeout
            raise ScrubError(f"{person_id} was erased from the gallery, but the old bytes could not be overwritten "
                             f"yet ({exc}): run `gateway faces list` to finish (the file is marked for it)") from None
        return int(removed)

    def record(self, action: str, person: str | None, *, actor: str = "cli", **data: Any) -> None:
        """An audit row on its own (what an erase did after the person left the gallery: snapshots, failures)."""
        with self._tx():
            self._audit(action, person, actor=actor, **data)

    def export(self, path: Path, *, actor: str = "cli") -> int:
        """Write the people and their embeddings (names, roles and faces still sealed with the key) to a 0600
        JSON file. Audited."""
        people = self.db.execute("SELECT id, nonce, sealed, consent, expires FROM people ORDER BY id").fetchall()
        rows = self.db.execute("SELECT person, nonce, sealed FROM embeddings ORDER BY seq").fetchall()
        doc = {
            "version": VERSION,
            "people": [{"id": p[0], "nonce": p[1].hex(), "sealed": p[2].hex(), "consent": p[3], "expires": p[4]}
                       for p in people],
            "embeddings": [{"person": r[0], "nonce": r[1].hex(), "sealed": r[2].hex()} for r in rows],
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
        with self._tx():
            self._audit("faces.export", None, actor=actor, path=str(path), people=len(people))
        return len(people)

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT ts, action, person, data FROM audit ORDER BY seq DESC LIMIT ?",
                               (limit,)).fetchall()
        return [{"ts": ts, "action": a, "person": p, **json.loads(d)} for ts, a, p, d in rows]

    # -- matching --------------------------------------------------------------------------------

    def _matrix(self, today: dt.date) -> tuple[list[str], np.ndarray[Any, np.dtype[np.float32]]]:
        # data_version moves when another connection commits: a camera worker sees an enrolment or an
        # erase made by `gateway faces` on its next match, without polling the file.
        (version,) = self.db.execute("PRAGMA data_version").fetchone()
        if self._cache is None or self._cache[0] != today or self._cache[1] != version:
            active = {pid for pid, expires in self.db.execute("SELECT id, expires FROM people")
                      if expires is None or dt.date.fromisoformat(expires) >= today}
            ids: list[str] = []
            vecs: list[np.ndarray[Any, np.dtype[np.float32]]] = []
            for person, nonce, sealed in self.db.execute("SELECT person, nonce, sealed FROM embeddings"):
                if person not in active:
                    continue
                try:
                    plain = self.aead.decrypt(nonce, sealed, person.encode())
                except InvalidTag:
                    raise GalleryError("gallery does not decrypt with this key (wrong key or tampered row)") from None
                ids.append(person)
                vecs.append(np.frombuffer(plain, dtype="<f4").astype(np.float32))
            matrix = np.stack(vecs) if vecs else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
            self._cache = (today, version, ids, matrix)
        return self._cache[2], self._cache[3]

    def match(self, embedding: Vector, threshold: float, *, today: dt.date | None = None) -> Match:
        """The enrolled (unexpired) person most similar to ``embedding``, if at or above ``threshold``."""
        ids, matrix = self._matrix(today or dt.date.today())
        if not ids:
            return Match(None, 0.0)
        v = np.asarray(embedding, dtype=np.float32)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        scores = matrix @ v
        best = int(np.argmax(scores))
        score = float(scores[best])
        return Match(ids[best] if score >= threshold else None, score)

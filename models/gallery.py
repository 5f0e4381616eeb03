"""The gallery of enrolled people: SQLite in the data dir, embeddings encrypted with AES-GCM.

The key (32 random bytes) lives outside the config: a file readable by its owner only, or a systemd
credential (``LoadCredential=faces-key:/etc/gateway/faces.key`` makes it
``$CREDENTIALS_DIRECTORY/faces-key``). Each embedding is sealed with a fresh nonce and the person id
as associated data, so a row moved to another person does not decrypt.

Every enrol, erase and export writes an audit row in the same transaction as the change. Erase
deletes the person and their embeddings with ``secure_delete`` on and checkpoints the WAL, so the
old bytes are overwritten, not just unlinked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
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
CREDENTIAL_NAME = "faces-key"
EMBEDDING_DIM = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    id       TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    role     TEXT NOT NULL,
    consent  TEXT NOT NULL,
    expires  TEXT,
    created  REAL NOT NULL
);
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
        self.db = sqlite3.connect(self.path, isolation_level=None)
        os.chmod(self.path, 0o600)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA secure_delete = ON")
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA busy_timeout = 5000")
        self.db.executescript(_SCHEMA)
        self._cache: tuple[dt.date, int, list[str], np.ndarray[Any, np.dtype[np.float32]]] | None = None

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
            self.db.execute(
                "INSERT INTO people (id, name, role, consent, expires, created) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, role=excluded.role, consent=excluded.consent, "
                "expires=excluded.expires",
                (person.id, person.name, person.role, consent, expires, time.time()),
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
                        role=person.role, consent=consent, expires=expires)
        return int(count)

    def people(self) -> list[Person]:
        rows = self.db.execute(
            "SELECT p.id, p.name, p.role, p.consent, p.expires, count(e.seq) FROM people p "
            "LEFT JOIN embeddings e ON e.person = p.id GROUP BY p.id ORDER BY p.id"
        ).fetchall()
        return [Person(*row) for row in rows]

    def erase(self, person_id: str, *, actor: str = "cli", **details: Any) -> int:
        """Remove the person, every embedding of theirs, and overwrite the freed pages. Audited (with ``details``)."""
        with self._tx():
            row = self.db.execute("SELECT 1 FROM people WHERE id = ?", (person_id,)).fetchone()
            if row is None:
                raise GalleryError(f"no enrolled person {person_id!r}")
            removed = self.db.execute("DELETE FROM embeddings WHERE person = ?", (person_id,)).rowcount
            self.db.execute("DELETE FROM people WHERE id = ?", (person_id,))
            self._audit("faces.erase", person_id, actor=actor, embeddings=removed, **details)
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(removed)

    def export(self, path: Path, *, actor: str = "cli") -> int:
        """Write the people and their embeddings (still sealed with the key) to a 0600 JSON file. Audited."""
        people = self.people()
        rows = self.db.execute("SELECT person, nonce, sealed FROM embeddings ORDER BY seq").fetchall()
        doc = {
            "version": 1,
            "people": [{"id": p.id, "name": p.name, "role": p.role, "consent": p.consent, "expires": p.expires}
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
            active = {p.id for p in self.people() if p.active(today)}
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

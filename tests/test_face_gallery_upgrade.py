"""A faces.db written by the previous release (names and roles in clear) upgrades in place, sealed, nothing lost."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")
pytest.importorskip("cryptography")

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from models.faces import DEFAULT_MATCH_THRESHOLD, FacePipeline  # noqa: E402
from models.gallery import VERSION, Gallery, GalleryError  # noqa: E402

# The layout and statements of models/gallery.py at git rev 1416591 (the release before sealed names), verbatim.
V0_SCHEMA = """
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

PEOPLE = [("p-collins", "Eileen Collins", "resident", "astronaut.png", None),
          ("p-hopper", "Grace Hopper", "caretaker", "grace_hopper.jpg", "2099-12-31")]


def write_v0(data: Path, key: bytes, vectors: dict[str, list[np.ndarray]]) -> None:
    data.mkdir(parents=True)
    db = sqlite3.connect(data / "faces.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA foreign_keys = ON")
    db.executescript(V0_SCHEMA)
    aead = AESGCM(key)
    for pid, name, role, _, expires in PEOPLE:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO people (id, name, role, consent, expires, created) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name, role=excluded.role, consent=excluded.consent, "
            "expires=excluded.expires",
            (pid, name, role, "2025-01-02", expires, 1.7e9),
        )
        for vec in vectors[pid]:
            nonce = os.urandom(12)
            sealed = aead.encrypt(nonce, np.asarray(vec, dtype="<f4").tobytes(), pid.encode())
            db.execute("INSERT INTO embeddings (person, nonce, sealed) VALUES (?, ?, ?)", (pid, nonce, sealed))
        db.execute("INSERT INTO audit (ts, action, person, data) VALUES (?, ?, ?, ?)",
                   (1.7e9, "faces.enroll", pid, json.dumps({"actor": "cli", "added": len(vectors[pid]),
                                                            "total": len(vectors[pid]), "role": role,
                                                            "consent": "2025-01-02", "expires": expires})))
        db.execute("COMMIT")
    db.close()


def on_disk(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data.iterdir() if p.is_file())


def test_a_previous_release_gallery_upgrades_in_place(tmp_path: Path, vision_dir: Path) -> None:
    pipeline = FacePipeline.from_data_dir(vision_dir)
    images = {pid: cv2.imread(str(vision_dir / "testdata" / f)) for pid, _, _, f, _ in PEOPLE}
    vectors = {pid: [pipeline.faces(img)[0].embedding, pipeline.faces(img[:, ::-1].copy())[0].embedding]
               for pid, img in images.items()}
    probes = {pid: pipeline.faces(cv2.resize(img, None, fx=0.5, fy=0.5))[0].embedding for pid, img in images.items()}
    key = os.urandom(32)
    data = tmp_path / "data"
    write_v0(data, key, vectors)
    assert b"Eileen Collins" in on_disk(data)  # the old format: names in clear

    with pytest.raises(GalleryError, match="wrong key"):  # a wrong key refuses, and changes nothing
        Gallery(data, os.urandom(32))
    assert b"Eileen Collins" in on_disk(data)

    with Gallery(data, key) as g:
        assert g.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
        people = {p.id: p for p in g.people()}
        assert {pid: (p.name, p.role, p.consent, p.expires, p.embeddings) for pid, p in people.items()} == {
            pid: (name, role, "2025-01-02", expires, 2) for pid, name, role, _, expires in PEOPLE}
        for pid in vectors:  # matches as before: same person, same best score as the stored vectors give
            m = g.match(probes[pid], DEFAULT_MATCH_THRESHOLD)
            expected = max(float(np.dot(v, probes[pid])) for v in vectors[pid])
            assert m.person == pid and m.score == pytest.approx(expected, abs=1e-5)
        trail = g.audit()
        assert trail[0]["action"] == "faces.upgrade" and trail[0]["people"] == 2
        assert all("role" not in row for row in trail)
    blob = on_disk(data)
    for _, name, role, _, _ in PEOPLE:
        assert name.encode() not in blob and role.encode() not in blob
    with Gallery(data, key) as g:  # opening again is a no-op
        assert len(g.people()) == 2 and [r["action"] for r in g.audit()].count("faces.upgrade") == 1
        g.erase("p-hopper")
    with Gallery(data, key) as g:
        assert [p.id for p in g.people()] == ["p-collins"]
        assert g.match(probes["p-hopper"], DEFAULT_MATCH_THRESHOLD).person is None


def test_names_and_roles_are_sealed_to_their_person(tmp_path: Path) -> None:
    from models.gallery import Person

    key = os.urandom(32)
    vec = np.ones(128, np.float32) / np.sqrt(128)
    with Gallery(tmp_path, key) as g:
        g.enroll(Person("a", "Ann Example", "resident", "2025-01-01"), [vec])
        g.enroll(Person("b", "Bob Example", "staff", "2025-01-01"), [vec])
        # a row's sealed name moved onto another person does not open
        g.db.execute("UPDATE people SET (nonce, sealed) = (SELECT nonce, sealed FROM people WHERE id = 'a') "
                     "WHERE id = 'b'")
        with pytest.raises(GalleryError, match="tampered"):
            g.people()
    assert b"Ann Example" not in on_disk(tmp_path) and b"resident" not in on_disk(tmp_path)


def _reader(data: Path) -> sqlite3.Connection:
    """Another process's connection in the middle of a read (a camera worker matching), on an older snapshot."""
    r = sqlite3.connect(data / "faces.db", isolation_level=None, check_same_thread=False)
    r.execute("BEGIN")
    r.execute("SELECT count(*) FROM embeddings").fetchone()
    return r


def _files(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in data.iterdir() if p.name in ("faces.db", "faces.db-wal")}


def test_upgrade_and_erase_overwrite_old_bytes_while_a_reader_is_open(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import models.gallery as gallery_mod

    key = os.urandom(32)
    vec = np.ones(128, np.float32) / np.sqrt(128)
    data = tmp_path / "data"
    write_v0(data, key, {pid: [vec] for pid, *_ in PEOPLE})
    # A reader that ends 0.5 s into the upgrade: the scrub waits for it, then overwrites the clear names.
    r = _reader(data)
    threading.Timer(0.5, lambda: r.execute("COMMIT")).start()
    with Gallery(data, key) as g:
        assert g.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
        assert sorted(p.name for p in g.people()) == ["Eileen Collins", "Grace Hopper"]
        sealed = [bytes(b) for (b,) in g.db.execute("SELECT sealed FROM people WHERE id = 'p-hopper' UNION ALL "
                                                    "SELECT sealed FROM embeddings WHERE person = 'p-hopper'")]
        for name, blob in _files(data).items():
            for _, pname, role, _, _ in PEOPLE:
                assert pname.encode() not in blob and role.encode() not in blob, name
        # Erase with a reader open: the erased rows' bytes leave both files once the reader ends.
        r.execute("BEGIN")
        r.execute("SELECT count(*) FROM embeddings").fetchone()
        threading.Timer(0.5, lambda: r.execute("COMMIT")).start()
        assert all(any(s in blob for blob in _files(data).values()) for s in sealed)  # the test can fail
        g.erase("p-hopper")
        assert g.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
        for name, blob in _files(data).items():
            assert not any(s in blob for s in sealed), name
    r.close()

    # A reader that never ends within the wait: the upgrade fails loudly, says what to do, and the next
    # opening (once the reader is gone) finishes the job.
    monkeypatch.setattr(gallery_mod, "SCRUB_WAIT", 0.5)
    again = tmp_path / "again"
    write_v0(again, key, {pid: [vec] for pid, *_ in PEOPLE})
    r = _reader(again)
    with pytest.raises(GalleryError, match=r"old bytes are still in .*systemctl stop gateway"):
        Gallery(again, key)
    assert any(b"Eileen Collins" in blob for blob in _files(again).values())
    r.execute("COMMIT")
    r.close()
    with Gallery(again, key) as g:
        assert g.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
        assert [r["action"] for r in g.audit()].count("faces.upgrade") == 1
    for name, blob in _files(again).items():
        for _, pname, role, _, _ in PEOPLE:
            assert pname.encode() not in blob and role.encode() not in blob, name

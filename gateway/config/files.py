"""Files a config names are inputs like any other: regular files of a sane size, secrets kept private.

A FIFO named by ``include`` would hang ``gateway check`` for ever and ``/dev/zero`` would exhaust its
memory; a world-readable broker password is a leak waiting to happen. Everything is judged from
``stat`` before a byte is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

MAX_CONFIG_BYTES = 4 * 2**20
"""A config or rule file larger than this is not one a person wrote."""
MAX_SECRET_BYTES = 1 * 2**20
"""Keys, certificates and password files are a few kilobytes."""


class Reader(Protocol):
    """Whose right to read is judged, when not this process's: `gateway doctor` run by a technician judges the
    service user's (doctor's ``ServiceUser``), since the service is who reads the file."""

    @property
    def name(self) -> str: ...

    def may(self, path: Path, *, read: bool = True, write: bool = False) -> bool: ...


def file_problem(path: Path, max_bytes: int, *, secret: bool = False, reader: Reader | None = None) -> str | None:
    """Why this file cannot be used (by ``reader``, else by this process), or None when it can."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        return f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file ({_kind(info.st_mode)})"
    if info.st_size > max_bytes:
        return f"{path} is {info.st_size} bytes, more than the {max_bytes} such a file can be"
    if secret and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it"
    if reader is None:
        if not os.access(path, os.R_OK):
            return f"cannot read {path}: permission denied"
        return None
    try:
        readable = reader.may(path, read=True)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None if readable else f"the service user {reader.name!r} cannot read {path} (permission denied)"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"

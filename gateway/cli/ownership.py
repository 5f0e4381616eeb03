"""What a root CLI leaves in the data directory belongs to the service, not to root.

The service runs as its own user (``gateway``) and owns ``/var/lib/gateway``; a technician runs
``sudo gateway faces enroll`` or ``sudo gateway restore`` and the files those create (``faces.db``,
``gateway.db``, the lock file) would be root's, 0600/0640, and the service could no longer open
them. So a command run as root hands every root-owned entry of the data directory to the
directory's owner and group before it exits. SQLite already does this for the ``-wal``/``-shm``
files of a database it opens as root; this covers the database files themselves and everything else.

The directory is the service's, so the service account may rearrange it while we walk (swap a
subdirectory for a symbolic link to ``/etc``, say). The walk therefore never resolves a path: it
opens the data directory once, through ancestors only root can change, and then goes from
directory descriptor to directory descriptor (``openat`` with ``O_NOFOLLOW``), changing the owner
of what it opened (``fchown``), never of a name.
"""

from __future__ import annotations

import atexit
import os
import stat
from pathlib import Path

_registered: set[Path] = set()
MAX_DEPTH = 32
"""The data directory is a few levels deep; a deeper tree is not ours and is left as it is."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def hand_over(data_dir: Path) -> list[Path]:
    """Give every root-owned entry under ``data_dir`` to the directory's owner; the entries changed.

    Only when we are root, the directory is someone else's and every directory above it is root's and
    writable by root alone (or sticky, as /tmp): otherwise whoever may rename those could point us elsewhere.
    Symbolic links are neither followed nor changed, a file with more than one hard link is left alone, and
    the walk stays on the data directory's file system: a service account that planted a link (or swaps a
    directory for one while we walk) to a root file outside the directory gets nothing from us.
    """
    if os.geteuid() != 0:
        return []
    top_fd = _open_data_dir(Path(os.path.abspath(data_dir)))
    if top_fd is None:
        return []
    changed: list[Path] = []
    try:
        top = os.fstat(top_fd)
        if top.st_uid != 0:
            _hand_over_in(top_fd, Path(data_dir), top, changed, 0)
    finally:
        os.close(top_fd)
    return changed


def _open_data_dir(path: Path) -> int | None:
    """A descriptor of ``path`` opened one component at a time without following a link, each ancestor checked;
    None when any ancestor could be changed by someone other than root, or the path is not a directory."""
    real = Path(os.path.realpath(path))  # a link in the configured path is root's choice, resolved now
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in real.parts[1:]:
            info = os.fstat(fd)
            if info.st_uid != 0 or (info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
                return None
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError:
        os.close(fd)
        return None
    return fd


def _hand_over_in(dir_fd: int, where: Path, top: os.stat_result, changed: list[Path], depth: int) -> None:
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    for name in names:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:  # gone meanwhile
            continue
        if info.st_dev != top.st_dev:  # a mount point: another file system is not the data directory
            continue
        if stat.S_ISDIR(info.st_mode):
            if depth >= MAX_DEPTH:
                continue
            flags = _DIR_FLAGS
        elif stat.S_ISREG(info.st_mode) and info.st_uid == 0 and info.st_nlink == 1:
            flags = _FILE_FLAGS
        else:  # a link, a socket, a fifo, someone else's file, a file linked from elsewhere: not ours to change
            continue
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError:  # swapped for a link or gone meanwhile
            continue
        try:
            now = os.fstat(fd)
            if (now.st_ino, now.st_dev) != (info.st_ino, info.st_dev):  # not the entry we looked at
                continue
            if now.st_uid == 0 and (stat.S_ISDIR(now.st_mode) or now.st_nlink == 1):
                os.fchown(fd, top.st_uid, top.st_gid)
                changed.append(where / name)
            if stat.S_ISDIR(now.st_mode):
                _hand_over_in(fd, where / name, top, changed, depth + 1)
        except OSError:
            pass
        finally:
            os.close(fd)


def hand_over_at_exit(data_dir: Path) -> None:
    """When running as root: hand the data directory's new files to its owner as this process exits."""
    if os.geteuid() != 0:
        return
    path = Path(os.path.abspath(data_dir))
    if path not in _registered:
        _registered.add(path)
        atexit.register(hand_over, path)

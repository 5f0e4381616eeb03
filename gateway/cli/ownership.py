"""What a root CLI leaves in the data directory belongs to the service, not to root.

The service runs as its own user (``gateway``) and owns ``/var/lib/gateway``; a technician runs
``sudo gateway faces enroll`` or ``sudo gateway restore`` and the files those create (``faces.db``,
``gateway.db``, the lock file) would be root's, 0600/0640, and the service could no longer open
them. So a command run as root hands every root-owned entry of the data directory to the
directory's owner and group before it exits. SQLite already does this for the ``-wal``/``-shm``
files of a database it opens as root; this covers the database files themselves and everything else.
"""

from __future__ import annotations

import atexit
import os
import stat
from pathlib import Path

_registered: set[Path] = set()


def hand_over(data_dir: Path) -> list[Path]:
    """Give every root-owned entry under ``data_dir`` to the directory's owner; the entries changed.

    Only when we are root and the directory is someone else's. Symbolic links are neither followed nor
    changed, and a file with more than one hard link is left alone: a service account that planted a
    link to a root file outside the directory gets nothing from us.
    """
    if os.geteuid() != 0:
        return []
    try:
        top = os.stat(data_dir)
    except OSError:
        return []
    if top.st_uid == 0 or not stat.S_ISDIR(top.st_mode):
        return []
    changed: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(data_dir):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            try:
                info = os.lstat(path)
                if info.st_uid != 0 or stat.S_ISLNK(info.st_mode):
                    continue
                if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:  # gone meanwhile, a socket, a fifo: nothing to hand over
                continue
            try:
                if os.fstat(fd).st_ino == info.st_ino:  # still the entry we looked at
                    os.fchown(fd, top.st_uid, top.st_gid)
                    changed.append(path)
            except OSError:
                pass
            finally:
                os.close(fd)
    return changed


def hand_over_at_exit(data_dir: Path) -> None:
    """When running as root: hand the data directory's new files to its owner as this process exits."""
    if os.geteuid() != 0:
        return
    path = Path(os.path.abspath(data_dir))
    if path not in _registered:
        _registered.add(path)
        atexit.register(hand_over, path)

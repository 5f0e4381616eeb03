"""What every check shares: the config (or why it would not load), the machine, and the daemon's own word.

The machine's facts (who the service runs as, whether systemd is init, where timesyncd marks a synchronised
clock) are one ``Host`` value, detected once; a test hands in its own. The daemon's state is asked once and
shared: whether it runs (the store's lock, heartbeat and pid, as `gateway status` judges it) and, when it does,
its ``observe`` snapshot over the control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import math
import os
import pwd
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.clocksync import TIMESYNC_FLAG
from gateway.config import ConfigProblem, GatewayConfig

SERVICE_USER = "gateway"
"""The system user scripts/install.sh creates; the service runs as it."""
HEARTBEAT_STALE = 30.0
"""Seconds without a heartbeat after which the daemon's row in the store is history (as `gateway status`)."""
ASK_DAEMON = 3.0
"""Seconds the running daemon may take to answer ``observe``."""
DAEMON_READS = 6
"""Probe reads asked of the running daemon at once: its control socket serves 32 clients at a time
(gateway/control.py) and tells the rest to retry; the status page, `gateway top` and a second doctor share it."""


def no_access(what: str, path: Path) -> str:
    """Why doctor cannot read ``path`` as this user, and what to do: join the group that owns it (or the
    directory it is in), or sudo."""
    group = SERVICE_USER
    for there in (path, path.parent):
        try:
            group = group_name(os.stat(there).st_gid)
            break
        except OSError:
            continue
    return f"no access to {what} {path}: run doctor as a member of group {group!r}, or with sudo"


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    @classmethod
    def named(cls, name: str) -> ServiceUser:
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid, frozenset(os.getgrouplist(name, entry.pw_gid)))

    @classmethod
    def current(cls) -> ServiceUser:
        try:
            return cls.named(pwd.getpwuid(os.getuid()).pw_name)
        except KeyError:  # a uid with no passwd entry (a container): its ids are all we know
            return cls(str(os.getuid()), os.getuid(), os.getgid(), frozenset(os.getgroups()))

    def may(self, path: Path, *, read: bool = True, write: bool = False) -> bool:
        """Whether this user's permission bits on ``path`` allow the access (POSIX: owner, else group, else
        others; ACLs and capabilities are not looked at). FileNotFoundError when it is missing."""
        info = os.stat(path)
        if self.uid == 0:
            return True
        if info.st_uid == self.uid:
            bits = info.st_mode >> 6
        elif info.st_gid in self.groups:
            bits = info.st_mode >> 3
        else:
            bits = info.st_mode
        return (not read or bool(bits & stat.S_IROTH)) and (not write or bool(bits & stat.S_IWOTH))


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@dataclass(frozen=True)
class Host:
    service_user: ServiceUser
    systemd: bool
    """Whether systemd is init (sd_booted(3): /run/systemd/system exists)."""
    timesync_flag: Path = TIMESYNC_FLAG
    unit: str = "gateway"

    @classmethod
    def detect(cls) -> Host:
        try:
            user = ServiceUser.named(SERVICE_USER)
        except KeyError:  # not installed by scripts/install.sh: whoever runs doctor runs the daemon too
            user = ServiceUser.current()
        return cls(service_user=user, systemd=Path("/run/systemd/system").is_dir())


@dataclass
class DaemonView:
    running: bool
    daemon: dict[str, Any]
    """The daemon's row in the store (pid, version, heartbeat, state); empty when it never ran."""
    observed: dict[str, Any] | None = None
    """Its ``observe`` snapshot, when it runs and answered."""
    problem: str | None = None
    """Why the store or the control socket could not be read (permissions), if so."""


@dataclass
class Context:
    config_path: Path
    host: Host
    cfg: GatewayConfig | None = None
    problems: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)
    deadline: float = math.inf
    """When the run must have its verdicts (time.monotonic)."""
    daemon_reads: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(DAEMON_READS), repr=False)
    _daemon: asyncio.Task[DaemonView] | None = field(default=None, repr=False)

    @property
    def config(self) -> GatewayConfig:
        assert self.cfg is not None, "a check that needs the config is planned only with a valid one"
        return self.cfg

    async def daemon(self) -> DaemonView:
        """Asked once, however many checks want it."""
        if self._daemon is None:
            self._daemon = asyncio.ensure_future(self._ask_daemon())
        return await asyncio.shield(self._daemon)

    def close(self) -> None:
        """Stop asking the daemon if every check that wanted its answer gave up waiting."""
        if self._daemon is not None and not self._daemon.done():
            self._daemon.cancel()

    async def _ask_daemon(self) -> DaemonView:
        cfg = self.config
        view = await asyncio.to_thread(_daemon_row, cfg)
        if view.running:
            from gateway.control import request
            from gateway.daemon import control_path

            try:
                async with asyncio.timeout(ASK_DAEMON):
                    answer = await request(control_path(cfg), {"cmd": "observe"})
                if answer.get("ok"):
                    view.observed = answer.get("observed")
            except PermissionError:
                view.problem = no_access("the daemon's control socket", control_path(cfg))
            except (OSError, TimeoutError, ValueError):
                pass  # the row says it runs; the snapshot is only a better picture
        return view


def _daemon_row(cfg: GatewayConfig) -> DaemonView:
    """The daemon's own row in the store and the kernel's word on the lock, judged as `gateway status` does."""
    import sqlite3

    from gateway.daemon import data_path, open_store, pid_alive
    from gateway.lock import is_locked

    try:
        there = data_path(cfg).exists()
    except PermissionError:  # the data directory is the service's (0750): Path.exists raises EACCES inside it
        return DaemonView(running=False, daemon={}, problem=no_access("the data directory", cfg.store.data_dir))
    if not there:
        return DaemonView(running=False, daemon={})
    try:
        store = open_store(cfg, read_only=True)
    except (PermissionError, sqlite3.Error) as exc:
        return DaemonView(running=False, daemon={}, problem=f"cannot read the store {data_path(cfg)} ({exc}): run "
                          "doctor as a member of the 'gateway' group, or with sudo")
    try:
        daemon = dict(store.meta().get("daemon", {}))
    except sqlite3.Error as exc:
        return DaemonView(running=False, daemon={}, problem=f"cannot read the store {data_path(cfg)}: {exc}")
    finally:
        with contextlib.suppress(sqlite3.Error):
            store.close()
    pid = int(daemon.get("pid", 0) or 0)
    running = (is_locked(cfg.store.data_dir) and daemon.get("state") == "running" and pid > 0 and pid_alive(pid)
               and time.time() - float(daemon.get("heartbeat", 0) or 0) < HEARTBEAT_STALE)
    return DaemonView(running=running, daemon=daemon)

"""The box itself: the config, the service, the clock, the disk and the store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.doctor.context import Context, group_name, no_access
from gateway.doctor.result import Result, fail, ok, warn

MB = 2**20
STORE_NEARLY_FULL = 0.9
"""Share of store.max_mb above which the store check warns: at the cap telemetry is dropped oldest-first."""
SYSTEMCTL_TIMEOUT = 3.0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


# -- config ---------------------------------------------------------------------------------------


def config_result(ctx: Context) -> Result:
    """`gateway check`'s verdict, with every problem as FILE:LINE: key: message."""
    path = ctx.config_path
    if ctx.cfg is None and _denied(path):
        return warn("config", f"{path}: this user may not read it; nothing that needs the config was checked",
                    no_access("the config", path), problems=[p.format() for p in ctx.problems])
    if ctx.cfg is None:
        lines = [p.format() for p in ctx.problems]
        return fail("config", f"{path}: {len(lines)} problem{'s' * (len(lines) != 1)}; the checks that need the "
                    "config did not run", f"fix each line below (`gateway check -c {path}` prints them too), then run "
                    "doctor again", problems=lines)
    cfg = ctx.cfg
    points = sum(len(d.point_ids()) for d in cfg.devices)
    summary = f"{path}: " + ", ".join(_count(n, noun) for n, noun in (
        (len(cfg.buses), "bus"), (len(cfg.devices), "device"), (points, "point"), (len(cfg.cameras), "camera")))
    user = ctx.host.service_user
    try:
        readable = user.may(path, read=True)
    except OSError:
        readable = True  # it loaded a moment ago; a file swapped under us is the config check's next run
    if not readable:
        return fail("config", f"{summary}, but the service user {user.name!r} cannot read it",
                    f"sudo chgrp {user.name} {path} && sudo chmod 640 {path}", service_user=user.name)
    if ctx.warnings:
        lines = [f"warning: {w.format()}" for w in ctx.warnings]
        return warn("config", f"{summary}; {len(lines)} deprecated key{'s' * (len(lines) != 1)}",
                    "rename them as each line below says: the old names go in the next release", warnings=lines)
    return ok("config", summary)


def _denied(path: Path) -> bool:
    """Whether the config is there but this user may not read it (a technician outside the service's group)."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    return not os.access(path, os.R_OK)


# -- service ----------------------------------------------------------------------------------------


async def _systemctl(*args: str) -> str | None:
    """systemctl's one-word answer (``active``, ``enabled``, ...), or None when it cannot be asked."""
    binary = shutil.which("systemctl")
    if binary is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(binary, *args, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        async with asyncio.timeout(SYSTEMCTL_TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        return None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace").strip().splitlines()[0] if out.strip() else None


def _who(daemon: dict[str, Any]) -> str:
    started = daemon.get("started")
    up = f", up {_duration(time.time() - float(started))}" if started else ""
    return f"pid {daemon.get('pid', '-')}, version {daemon.get('version', '-')}{up}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


async def service(ctx: Context) -> Result:
    """systemd's word where systemd is init, checked against the daemon's heartbeat in the store."""
    host = ctx.host
    view = await ctx.daemon() if ctx.cfg is not None else None
    running = bool(view and view.running)
    daemon = view.daemon if view else {}
    details: dict[str, Any] = {"running": running, "systemd": host.systemd, "pid": daemon.get("pid"),
                               "version": daemon.get("version")}
    # the store that whoever runs doctor cannot read: no heartbeat to judge, but systemd's word may still be had
    blind = view.problem if view is not None and not running else None
    if host.systemd:
        active, enabled = await asyncio.gather(_systemctl("is-active", host.unit), _systemctl("is-enabled", host.unit))
        details.update(active=active, enabled=enabled)
        journal = f"journalctl -u {host.unit} -n 50 -p warning"
        if active == "active":
            if blind:
                return warn("service", f"systemd says {host.unit} is active; its heartbeat cannot be read", blind,
                            **details)
            if view is not None and not running:
                return warn("service", f"systemd says {host.unit} is active, but the daemon writes no heartbeat",
                            f"it may be hung or starting: {journal}; sudo systemctl restart {host.unit}", **details)
            if enabled not in ("enabled", "static", "alias", "indirect", "generated"):
                return warn("service", f"active ({_who(daemon)}), but not enabled: it will not start after a "
                            "reboot", f"sudo systemctl enable {host.unit}", **details)
            return ok("service", f"active under systemd ({_who(daemon)})", **details)
        if active in ("activating", "reloading", "deactivating"):
            return warn("service", f"systemd: {active}", f"run doctor again in a few seconds; if it stays, {journal}",
                        **details)
        if running:
            return warn("service", f"the daemon runs outside systemd ({_who(daemon)})",
                        f"stop it and `sudo systemctl start {host.unit}`, so it is restarted after a crash or a "
                        "reboot", **details)
        if blind and active not in ("failed", "inactive"):
            return warn("service", f"cannot tell whether the daemon runs (systemd: {active or 'unknown'})", blind,
                        **details)
        if active == "failed":
            return fail("service", f"systemd: {host.unit} failed", f"{journal} says why; then sudo systemctl "
                        f"restart {host.unit}", **details)
        return fail("service", f"not running (systemd: {active or 'unknown'})",
                    f"sudo systemctl enable --now {host.unit}", **details)
    if blind:
        return warn("service", "cannot tell whether the daemon runs", blind, **details)
    if view is None:
        return warn("service", "cannot tell whether the daemon runs: its store is named by the config",
                    "see the config line above, then run doctor again", **details)
    if running:
        age = time.time() - float(daemon.get("heartbeat", 0) or 0)
        return ok("service", f"running ({_who(daemon)}; heartbeat {age:.0f} s ago; no systemd here)", **details)
    if not daemon:
        return fail("service", "not running: it has never run with this config (no store yet)",
                    f"start it: gateway run -c {ctx.config_path}", **details)
    return fail("service", f"not running (last state {daemon.get('state', 'unknown')!r})",
                f"start it: gateway run -c {ctx.config_path}", **details)


# -- clock --------------------------------------------------------------------------------------------


async def clock(ctx: Context) -> Result:
    from gateway.clocksync import clock_synced

    try:
        synced = await asyncio.to_thread(clock_synced, ctx.host.timesync_flag)
    except OSError:  # timesyncd's directory closed to this user: nobody here can tell
        synced = None
    advice = ("timedatectl status; sudo systemctl enable --now systemd-timesyncd; an NTP server must be reachable "
              "(UDP 123; NTP= in /etc/systemd/timesyncd.conf for the site's own)")
    if synced is None:
        return warn("clock", "cannot tell whether the clock is synchronised", advice, synced=None)
    if not synced:
        return warn("clock", "not synchronised: readings are stamped with this box's own guess of the time",
                    advice, synced=False)
    return ok("clock", "synchronised", synced=True)


# -- disk and store ----------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk(ctx: Context) -> Result:
    store = ctx.config.store
    where = _existing(store.data_dir)
    try:
        info = os.statvfs(where)
    except OSError as exc:
        return fail("disk", f"cannot look at the disk under {store.data_dir}: {exc.strerror or exc}",
                    f"check that {store.data_dir} is mounted")
    free = info.f_bavail * info.f_frsize
    details = {"path": str(where), "free_bytes": free, "min_free_mb": store.min_free_mb}
    used = _store_bytes(ctx)
    room = max(0.0, store.max_mb * MB - used)
    if free < store.min_free_mb * MB:
        return fail("disk", f"{free / MB:.0f} MB free under {where}, below store.min_free_mb "
                    f"({store.min_free_mb:g} MB): telemetry is being dropped, alarms live on the reserve",
                    "free space (journalctl --vacuum-size=100M, old logs, core files) or move data_dir to a "
                    "larger disk", **details)
    if free < store.min_free_mb * MB + room:
        return warn("disk", f"{free / MB:.0f} MB free under {where}: the store ({used / MB:.0f} MB now) would reach "
                    f"the disk's floor before its cap of {store.max_mb:g} MB",
                    f"lower store.max_mb to about {max(1.0, (used + free) / MB - store.min_free_mb) * 0.9:.0f}, "
                    "or free space", **details)
    return ok("disk", f"{free / MB:,.0f} MB free under {where}", **details)


def _store_bytes(ctx: Context) -> int:
    from gateway.daemon import data_path

    path = data_path(ctx.config)
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


async def disk(ctx: Context) -> Result:
    return await asyncio.to_thread(_disk, ctx)


def _store(ctx: Context) -> Result:
    from gateway.daemon import data_path, open_store

    cfg = ctx.config
    data_dir, path, user = cfg.store.data_dir, data_path(cfg), ctx.host.service_user
    details: dict[str, Any] = {"path": str(path), "max_mb": cfg.store.max_mb, "service_user": user.name}
    try:
        writable = user.may(data_dir, read=True, write=True)
    except FileNotFoundError:
        writable = user.may(_existing(data_dir), read=True, write=True)
    if not writable:
        owner = os.stat(_existing(data_dir))
        return fail("store", f"the service user {user.name!r} cannot write {data_dir} (owner "
                    f"{owner.st_uid}, group {group_name(owner.st_gid)})",
                    f"sudo chown -R {user.name}: {data_dir}", **details)
    try:
        there = path.exists()
    except PermissionError:  # inside the service's 0750 data directory, Path.exists raises EACCES
        return warn("store", f"cannot look into {data_dir}", no_access("the data directory", data_dir), **details)
    if not there:
        return warn("store", f"no store yet at {path}: the gateway has not run with this config",
                    "start the service; run doctor again once it runs", **details)
    try:
        store = open_store(cfg, read_only=True)
    except (PermissionError, sqlite3.Error) as exc:
        return warn("store", f"cannot read the store {path} ({exc})",
                    "run doctor as a member of the 'gateway' group, or with sudo", **details)
    try:
        used = store.used_bytes()
        dropped = store.counters().get("store.telemetry_dropped", 0)
    except sqlite3.Error as exc:
        return fail("store", f"cannot read the store {path}: {exc}",
                    "stop the service, copy the store aside and look at it with sqlite3 (PRAGMA integrity_check)",
                    **details)
    finally:
        store.close()
    cap = cfg.store.max_mb * MB
    details.update(used_bytes=used, telemetry_dropped=dropped)
    share = used / cap
    summary = f"{used / MB:,.1f} MB of its {cfg.store.max_mb:g} MB cap ({share:.0%})"
    if share >= STORE_NEARLY_FULL:
        return warn("store", f"{summary}; telemetry is dropped oldest-first at the cap"
                    + (f" ({dropped:,} readings so far)" if dropped else ""),
                    "the uplink has been down long (see outbox and broker) or the cap is small: raise "
                    "store.max_mb if the disk allows", **details)
    return ok("store", summary + (f"; {dropped:,} readings dropped at the cap before" if dropped else ""), **details)


async def store(ctx: Context) -> Result:
    return await asyncio.to_thread(_store, ctx)

"""One picture of the running gateway, for everything that watches it: /metrics and the textfile collector, the
health message upstream, `gateway top`, the status page and the platform's `status`.

Taken from what the daemon holds in memory (pollers, drivers, uplinks, alarm book, camera workers) plus two cheap
store queries; nothing asks a device. Rates (delivered/s, bus utilisation, camera fps) are over the last
``RATE_WINDOW`` seconds of snapshots, so two watchers asking at different paces see the same figures.

The shape is stable: keys are only ever added. Durations are seconds, sizes bytes, fractions 0..1.
"""

from __future__ import annotations

import collections
import os
import resource
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.clocksync import clock_synced
from gateway.core.data import Priority

if TYPE_CHECKING:
    from gateway.daemon import Daemon

STORE_EVERY = 2.0
"""Seconds the store's figures are reused: `gateway top` every second beside a scrape need not count twice."""
RATE_WINDOW = 30.0
"""Seconds of history a rate is taken over (at least one snapshot older than a second; when snapshots come further
apart than this, over the span since the previous one)."""
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_stats(data_dir: os.PathLike[str] | str) -> dict[str, float]:
    """This process: resident memory, CPU used, open descriptors, threads, free disk under the store."""
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * PAGE_SIZE
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    try:
        disk = os.statvfs(data_dir)
        free = disk.f_bavail * disk.f_frsize
    except OSError:
        free = -1
    return {"rss_bytes": rss, "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3), "open_fds": fds,
            "threads": _threads(), "disk_free_bytes": free}


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


class Observer:
    """Builds snapshots of one daemon; keeps the few earlier counters that rates need."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.clock_probe: Callable[[], bool | None] = clock_synced
        """Is the wall clock synchronised? (Replaced in tests to flip it; health and the birth ask it too.)"""
        self._history: collections.deque[tuple[float, dict[str, float]]] = collections.deque()
        self._stored: tuple[float, tuple[str, ...], dict[str, Any]] | None = None
        """(monotonic time, the uplinks counted for, the figures)."""

    async def _store_figures(self, mono: float) -> dict[str, Any]:
        """Outbox depth and age, backlog per uplink, store size: counted in the store's thread, at most every
        STORE_EVERY seconds (they block the one store thread the recorder writes through), and again at once when
        a reload changed the uplinks (every uplink shown has its backlog)."""
        names = tuple(self.daemon.uplinks)
        if self._stored is not None and mono - self._stored[0] < STORE_EVERY and self._stored[1] == names:
            return self._stored[2]
        store = self.daemon.store.store

        def count() -> dict[str, Any]:
            depth = store.outbox_depth()
            return {"depth": depth, "oldest": store.outbox_oldest(), "used": store.used_bytes(),
                    "backlogs": store.backlogs(names, sum(depth.values()))}

        figures = await self.daemon.store.run(count)
        self._stored = (mono, names, figures)
        return figures

    async def snapshot(self) -> dict[str, Any]:
        d = self.daemon
        now, mono = d.clock.time(), d.clock.monotonic()
        figures = await self._store_figures(mono)
        depth, oldest, used, backlogs = figures["depth"], figures["oldest"], figures["used"], figures["backlogs"]
        counters: dict[str, float] = {}
        devices = [self._device(device_id, now, counters) for device_id in sorted(d.pollers)]
        devices += [self._streamed(device_id, now) for device_id in sorted(d.sink.states) if device_id not in d.pollers]
        buses = self._buses(counters)
        uplinks = []
        for name, uplink in d.uplinks.items():
            status = uplink.status
            counters[f"uplink:{name}"] = status.messages
            uplinks.append({"name": name, "state": status.state, "since": status.since, "broker": status.broker,
                            "connects": status.connects, "delivered": status.messages,
                            "rows_delivered": status.delivered, "backlog": backlogs.get(name),
                            "error": status.last_error})
        cameras = []
        for camera_id, camera in d.cameras.items():
            said = dict(camera.status)
            counters[f"camera:{camera_id}"] = float(said.get("frames", 0) or 0)
            counters[f"camera_analysed:{camera_id}"] = float(said.get("analysed", 0) or 0)
            cameras.append({"id": camera_id, "state": said.get("state", "starting"),
                            **{k: int(said.get(k, 0) or 0) for k in ("frames", "analysed", "gated", "bad", "errors")},
                            "inference_ms": dict(said.get("ms") or {}), "pid": said.get("pid")})
        rates = self._rates(mono, counters)
        for bus in buses:
            rate = rates.get(f"bus:{bus['id']}")
            bus["utilisation"] = None if rate is None else round(min(1.0, rate / max(1, bus["concurrency"])), 4)
        for up in uplinks:
            up["delivered_per_s"] = rates.get(f"uplink:{up['name']}")
        for cam in cameras:
            cam["fps"] = rates.get(f"camera:{cam['id']}")
            cam["analysed_fps"] = rates.get(f"camera_analysed:{cam['id']}")
        alarms = d.automation.listing() if d.automation else []
        by_state: dict[str, int] = collections.Counter(a["state"] for a in alarms)
        process = process_stats(d.cfg.store.data_dir)
        process["store_bytes"] = used
        return {
            "site": d.cfg.site.id, "version": __version__, "config": d.config_hash, "ts": round(now, 3),
            "started": round(d.started, 3), "uptime_s": round(now - d.started, 1), "clock_synced": self.clock_probe(),
            "devices": devices, "buses": buses,
            "outbox": {label: {"depth": depth.get(label, 0),
                               "oldest_age_s": round(max(0.0, now - oldest[label]), 1) if label in oldest else None}
                       for label in (p.label for p in Priority)},
            "uplinks": uplinks,
            "alarms": {"active": len(alarms), "by_state": dict(by_state), "unacknowledged":
                       sum(1 for a in alarms if str(a["state"]).endswith("_unack")), "list": alarms},
            "rules": {"evaluations": d.automation.engine.evaluations if d.automation else 0},
            "cameras": cameras,
            "commands": {"answered": dict(d.platform.answered), "dropped": dict(d.platform.dropped)}
            if d.platform else {},
            "process": process,
        }

    def _device(self, device_id: str, now: float, counters: dict[str, float]) -> dict[str, Any]:
        poller = self.daemon.pollers[device_id]
        device, state = poller.device, poller.state
        wire = poller.driver.counters(device_id)
        return {
            "id": device_id, "bus": device.bus, "life_safety": bool(device.life_safety), "state": state.state,
            "since": state.since, "error": state.error, "polls": state.polls, "failures": state.failures,
            "errors": dict(state.errors), "retries": sum(n for k, n in wire.items() if k.startswith("retr")),
            "wire": wire, "interval_s": float(device.interval), "actual_interval_s": round(poller.actual, 4),
            "overruns": poller.overruns, "overrunning": poller.overrunning,
            "last_ok_age_s": None if state.last_ok is None else round(max(0.0, now - state.last_ok), 3),
        }

    def _streamed(self, device_id: str, now: float) -> dict[str, Any]:
        """A device that tells rather than is asked (a fire panel, BACnet COV): no poll rate, the same rest."""
        state = self.daemon.sink.states[device_id]
        device = next((c for c in self.daemon.cfg.devices if c.id == device_id), None)
        return {
            "id": device_id, "bus": device.bus if device else None,
            "life_safety": bool(device.life_safety) if device else False, "state": state.state, "since": state.since,
            "error": state.error, "polls": state.polls, "failures": state.failures, "errors": dict(state.errors),
            "retries": 0, "wire": {}, "interval_s": None, "actual_interval_s": None, "overruns": 0,
            "overrunning": False,
            "last_ok_age_s": None if state.last_ok is None else round(max(0.0, now - state.last_ok), 3),
        }

    def _buses(self, counters: dict[str, float]) -> list[dict[str, Any]]:
        out = []
        seen: set[int] = set()
        for driver in self.daemon.drivers.values():
            if id(driver) in seen:
                continue
            seen.add(id(driver))
            bus = driver.bus
            wire = driver.wire()
            entry: dict[str, Any] = {"id": bus.id, "driver": bus.driver,
                                     "devices": sorted(driver.devices), "utilisation": None}
            if wire is not None:
                counters[f"bus:{bus.id}"] = float(wire["busy_seconds"])
                entry.update(transactions=int(wire["transactions"]), busy_seconds=round(wire["busy_seconds"], 3),
                             concurrency=int(wire["concurrency"]), waiting=int(wire["waiting"]))
            else:
                entry.update(transactions=None, busy_seconds=None, concurrency=1, waiting=None)
            out.append(entry)
        return sorted(out, key=lambda b: str(b["id"]))

    def _rates(self, mono: float, counters: dict[str, float]) -> dict[str, float | None]:
        """Per second, against the oldest snapshot within the window, or the newest one before it when none is
        (a scrape every 60 s still gets rates); None until one is a second old."""
        history = self._history
        while len(history) > 1 and mono - history[1][0] > RATE_WINDOW:
            history.popleft()  # the next one is outside the window too: this one is no base any more
        if not history or mono - history[-1][0] >= 1.0:
            history.append((mono, counters))
        base = next((h for h in history if mono - h[0] >= 1.0), None)
        rates: dict[str, float | None] = {}
        for key, value in counters.items():
            if base is None or key not in base[1]:
                rates[key] = None
                continue
            span = mono - base[0]
            rates[key] = round(max(0.0, value - base[1][key]) / span, 3)
        return rates

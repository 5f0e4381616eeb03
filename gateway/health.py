"""Health upstream, the clock watch, and the node-exporter textfile: the gateway telling others how it is.

``run_health`` does two things on one timer. It probes the clock (``Observer.clock_probe``) every ``CLOCK_CHECK``
seconds (every ``interval`` when shorter): the probed state goes into every uplink's session (the native birth says
it), and when the clock synchronises after the gateway ran on an unsynchronised one, one ``clock.synchronized``
event says which timestamps to distrust. And, when ``[health] enabled``, it publishes a ``health`` message
(``HealthMessage`` in gateway/northbound/contract.py) on every connected native-JSON uplink, at each connect and
every ``interval``: retained QoS 1 on the live connection, never through the outbox (it describes the present; a
stored one replayed an hour late would mislead, and the next one replaces a lost one). Sparkplug B and Home
Assistant uplinks get none: a Sparkplug NDATA metric must first be declared in the NBIRTH and spends the encoder's
``seq`` (one sent from outside would look like a gap and make the host ask for a rebirth); Home Assistant would need
discovery entities. docs/metrics.md says so.

``run_textfile`` writes the Prometheus exposition to ``[metrics] textfile`` every ``every`` seconds, atomically,
rendered and written off the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import orjson
import structlog

from gateway.core.data import Event, Priority
from gateway.core.timing import Clock
from gateway.northbound.encoder import Message

if TYPE_CHECKING:
    from gateway.daemon import Daemon
    from gateway.uplink import Uplink

log = structlog.get_logger("gateway.health")

V = 2
CLOCK_CHECK = 5.0
"""Seconds between two probes of the clock's synchronisation (a stat, or one adjtimex call)."""
OFFLINE_LISTED = 100
"""At most this many offline device ids in a health message."""
TEXTFILE_MODE = 0o644
"""node-exporter runs as another user; the service's UMask (0027) would hide the file from it."""


class ClockWatch:
    """Notices the wall clock synchronising after the gateway stamped readings on an unsynchronised one.

    Until the clock is first seen synchronised, "cannot tell" counts as unsynchronised since the start (a Pi with
    no RTC whose timesyncd has not said anything yet); after that only a probe that says False starts a spell.
    While unsynchronised it remembers when that began and the wall-minus-monotonic offset then; at the sync the
    offset's change is the step the clock took, so the event tells a platform which timestamps were off and by
    how much. A short spell (under ``QUIET_SPELL``) that ends with a step under ``QUIET_STEP`` is no news: a
    machine with a good clock whose time service just confirmed it; it is logged, not raised."""

    QUIET_STEP = 1.0
    """Seconds: a smaller correction changes no timestamp a platform cares about."""
    QUIET_SPELL = 600.0
    """Seconds: a longer unsynchronised spell is said whatever the step (its timestamps were unverified)."""

    def __init__(self, clock: Clock, probe: Callable[[], bool | None], started: float) -> None:
        self.clock = clock
        self.probe = probe
        self.started = started
        self.synced: bool | None = None
        self.checked = False
        self.ever_synced = False
        self.quiet: dict[str, float] | None = None
        """The last spell that ended without an event (what would have been its data), for the log."""
        self._unsynced: tuple[float, float, float] | None = None
        """(wall time it began, as that clock read; wall - monotonic then; monotonic then)."""

    def check(self) -> dict[str, float] | None:
        """Probe once; the ``clock.synchronized`` event's data when the clock has just synchronised."""
        synced = self.probe()
        now, mono = self.clock.time(), self.clock.monotonic()
        data = None
        self.quiet = None
        unsynced = synced is False or (synced is None and not self.ever_synced)
        if unsynced and self._unsynced is None:
            since = now if self.checked else min(now, self.started)  # at the first probe: since the start
            self._unsynced = (since, now - mono, mono - (now - since))
        elif synced is True and self._unsynced is not None:
            since, offset, mono_since = self._unsynced
            step = (now - mono) - offset
            data = {"since": round(since, 3), "until": round(now - step, 3), "step_s": round(step, 3),
                    "unsynced_for_s": round(mono - mono_since, 1)}
            self._unsynced = None
            if abs(step) < self.QUIET_STEP and data["unsynced_for_s"] < self.QUIET_SPELL:
                self.quiet, data = data, None
        self.ever_synced = self.ever_synced or synced is True
        self.synced, self.checked = synced, True
        return data


def health_message(snapshot: Mapping[str, Any], *, bdseq: int, interval: float,
                   cpu_percent: float | None = None) -> Message:
    """The native ``health`` message of one observer snapshot (topic ``health``, retained, QoS 1)."""
    devices = snapshot["devices"]
    states = collections.Counter(d["state"] for d in devices)
    offline = sorted(d["id"] for d in devices if d["state"] == "offline")
    alarms = snapshot["alarms"]
    p = snapshot["process"]
    process: dict[str, Any] = {"rss_bytes": int(p["rss_bytes"]), "cpu_seconds": p["cpu_seconds"],
                               "open_fds": int(p["open_fds"]), "disk_free_bytes": int(p["disk_free_bytes"]),
                               "store_bytes": int(p["store_bytes"])}
    if cpu_percent is not None:
        process["cpu_percent"] = round(cpu_percent, 2)
    data = {
        "v": V, "site": snapshot["site"], "type": "health", "ts": snapshot["ts"], "bdseq": bdseq,
        "version": snapshot["version"], "config": snapshot["config"], "started": snapshot["started"],
        "uptime_s": snapshot["uptime_s"], "interval_s": interval, "clock_synced": snapshot["clock_synced"],
        "devices": {"total": len(devices), "online": states["online"], "offline": states["offline"],
                    "unknown": states["unknown"], "offline_ids": offline[:OFFLINE_LISTED]},
        "outbox": snapshot["outbox"],
        "uplinks": {u["name"]: {"state": u["state"], "backlog": u["backlog"], "connects": u["connects"],
                                "delivered": u["delivered"]} for u in snapshot["uplinks"]},
        "alarms": {"active": alarms["active"], "unacknowledged": alarms["unacknowledged"]},
        "process": process,
    }
    return Message("health", orjson.dumps(data), retain=True, qos=1)


class Health:
    """One daemon's clock watch and health publisher (state between ticks: what was sent where, CPU then)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.watch = ClockWatch(daemon.clock, lambda: daemon.observer.clock_probe(), daemon.started)
        self._sent: dict[str, tuple[float, int, int]] = {}
        """Uplink name -> (monotonic time of the last health, id of the uplink, its connects then)."""
        self._cpu: tuple[float, float] | None = None

    def tick_clock(self) -> None:
        before, checked = self.watch.synced, self.watch.checked
        data = self.watch.check()
        d = self.daemon
        for uplink in d.uplinks.values():
            if uplink.session.clock_synced != self.watch.synced:
                uplink.session.clock_synced = self.watch.synced
                if checked and uplink.config.encoding == "json":
                    uplink.rebirth()  # the retained birth says it too
        if checked and before != self.watch.synced:
            log.info("clock synchronisation changed", synced=self.watch.synced)
        if self.watch.quiet is not None:
            log.info("clock synchronised soon after the start with a step under a second: no event",
                     **self.watch.quiet)
        if data is not None:
            log.warning("clock synchronised: readings before were stamped on an unsynchronised clock", **data)
            d.bus.event(Event("clock.synchronized", d.cfg.site.id, Priority.EVENT, data, d.clock.time()))

    def due(self, interval: float) -> list[Uplink]:
        """Connected native uplinks that have had no health on this connection, or none for an interval."""
        now = self.daemon.clock.monotonic()
        out = []
        for name, uplink in self.daemon.uplinks.items():
            if uplink.config.encoding != "json" or uplink.status.state != "connected":
                continue
            sent = self._sent.get(name)
            if sent is None or sent[1:] != (id(uplink), uplink.status.connects) or now - sent[0] >= interval:
                out.append(uplink)
        return out

    async def publish(self, uplinks: list[Uplink], interval: float) -> None:
        d = self.daemon
        snapshot = await d.observer.snapshot()
        mono = d.clock.monotonic()
        cpu = float(snapshot["process"]["cpu_seconds"])
        percent = None
        if self._cpu is not None and mono > self._cpu[0]:
            percent = max(0.0, 100 * (cpu - self._cpu[1]) / (mono - self._cpu[0]))
        self._cpu = (mono, cpu)
        for uplink in uplinks:
            message = health_message(snapshot, bdseq=uplink.session.bdseq, interval=interval, cpu_percent=percent)
            try:
                said = await uplink.say(message)
            except (aiomqtt.MqttError, OSError) as exc:  # the uplink's pump notices the broken link and reconnects
                log.debug("health not sent", uplink=uplink.name, error=str(exc))
                continue
            if said:
                self._sent[uplink.name] = (mono, id(uplink), uplink.status.connects)

    def wait(self, interval: float) -> float:
        """Seconds until the next clock probe or health message, whichever is first."""
        now = self.daemon.clock.monotonic()
        uplinks = self.daemon.uplinks
        nexts = [sent + interval - now for name, (sent, *_) in self._sent.items()
                 if name in uplinks and uplinks[name].status.state == "connected"]  # a dead one waits for its connect
        return max(0.05, min([CLOCK_CHECK, interval, *nexts]))  # a health says clock_synced as probed


async def run_health(daemon: Daemon) -> None:
    """The clock watch always; health messages on native uplinks while [health] enabled (read at every turn, so a
    reload applies)."""
    health = Health(daemon)
    while True:
        health.tick_clock()
        cfg = daemon.cfg.health
        interval = float(cfg.interval)
        if cfg.enabled:
            due = health.due(interval)
            if due:
                await health.publish(due, interval)
        await daemon.clock.sleep(health.wait(interval))


def write_textfile(path: Path, body: bytes) -> None:
    """Atomically: a temp file beside it, readable by node-exporter, renamed over it (never a half file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            os.fchmod(f.fileno(), TEXTFILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def render_textfile(path: Path, snapshot: Mapping[str, Any]) -> None:
    """The exposition written to ``path``: both in a worker thread (20-30 ms at 300 devices on x86, more on a Pi,
    that the event loop does not wait for)."""
    from gateway.metrics import exposition  # prometheus-client is loaded only by a daemon that exports metrics

    write_textfile(path, exposition(snapshot))


async def run_textfile(daemon: Daemon) -> None:
    """Rewrite [metrics] textfile every `every` seconds, both read at every turn (a reload applies them; the
    reloader stops this task when the textfile is turned off); a failure (no directory, no permission) is said
    once and retried, never a crash loop."""
    failing = False
    warned: Path | None = None
    while True:
        cfg = daemon.cfg.metrics
        path = cfg.textfile
        if path is not None:
            if path.suffix != ".prom" and path != warned:
                log.warning("node-exporter reads only *.prom files", path=str(path))
                warned = path
            snapshot = await daemon.observer.snapshot()
            try:
                await asyncio.to_thread(render_textfile, path, snapshot)
            except OSError as exc:
                (log.debug if failing else log.warning)("metrics textfile not written", path=str(path),
                                                        error=str(exc))
                failing = True
            else:
                if failing:
                    log.info("metrics textfile written again", path=str(path))
                failing = False
        await daemon.clock.sleep(float(cfg.every))

"""The running gateway: wires config, drivers, store, recorder, uplink and supervisor together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from drivers.base import Driver
from drivers.registry import driver_class
from gateway import __version__, systemd
from gateway.automation import Automation
from gateway.bus import LocalBus, Sink
from gateway.cameras import CameraWorker
from gateway.commands import CommandHandler
from gateway.config.schema import GatewayConfig
from gateway.control import SOCKET_NAME, ControlServer
from gateway.core.data import DeviceState, Event, Priority, Reading
from gateway.core.errors import DriverError, error_kind
from gateway.core.timing import SYSTEM_CLOCK, Clock
from gateway.headroom import Headroom
from gateway.health import run_health, run_textfile
from gateway.live import LiveValues
from gateway.lock import DataDirLock
from gateway.northbound.catalog import device_meta
from gateway.northbound.dialects import make_encoder
from gateway.northbound.routes import status_key, store_uplinks, uplink_configs
from gateway.observe import Observer
from gateway.poller import DevicePoller
from gateway.recorder import AsyncStore, Recorder
from gateway.reloader import Reloader
from gateway.remote.service import PlatformCommands
from gateway.reporting import Privacy, UplinkFeed
from gateway.store import MAIN_UPLINK, Store
from gateway.supervisor import Supervisor
from gateway.uplink import Uplink
from gateway.vision_services import VisionServices
from gateway.web.server import serve

log = structlog.get_logger("gateway.daemon")

DB_NAME = "gateway.db"


def open_store(cfg: GatewayConfig, *, read_only: bool = False) -> Store:
    return Store(
        cfg.store.data_dir / DB_NAME,
        max_bytes=int(cfg.store.max_mb * 2**20),
        synchronous=cfg.store.synchronous,
        readings_retention=cfg.store.readings_retention,
        events_keep=cfg.store.events_keep,
        raw_lines_keep=cfg.store.raw_lines_keep,
        read_only=read_only,
        uplinks=store_uplinks(cfg),
    )


def headroom(cfg: GatewayConfig) -> Headroom:
    return Headroom(cfg.store.data_dir, reserve_bytes=int(cfg.store.reserve_mb * 2**20),
                    min_free_bytes=int(cfg.store.min_free_mb * 2**20))


def build_drivers(cfg: GatewayConfig) -> dict[str, Driver]:
    """One driver per bus that has enabled devices; device id -> its bus's driver."""
    by_device: dict[str, Driver] = {}
    for bus in cfg.buses:
        devices = [d for d in cfg.devices if d.bus == bus.id and d.enabled]
        if not devices:
            continue
        driver = driver_class(bus.driver)(bus, devices)
        for device in devices:
            by_device[device.id] = driver
    return by_device


class Daemon:
    """The wiring: producers hand what they hear to the bus; the recorder, the uplink feed, the rules and
    the live state subscribe to it, in that order (what is stored is never behind what is acted on)."""

    def __init__(self, cfg: GatewayConfig, *, config_hash: str = "", clock: Clock = SYSTEM_CLOCK,
                 lock: DataDirLock | None = None, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.lock = lock or DataDirLock(cfg.store.data_dir)
        self.config_hash = config_hash
        self.clock = clock
        self.store = AsyncStore(open_store(cfg))
        self.bus = LocalBus(clock)
        self.recorder = Recorder(self.store, self.bus, clock=clock, headroom=headroom(cfg))
        history = {d.id for d in cfg.devices if d.history}
        privacy = Privacy(cfg.mqtt.keep_local, [c.id for c in cfg.cameras if c.upstream is False],
                          [c.id for c in cfg.cameras if c.upstream is True])
        self.feed = UplinkFeed(self.bus, self.recorder, clock=clock, history=history.__contains__, privacy=privacy)
        for device in cfg.devices:
            self.feed.reporter.configure(device.id, device.report, device.report_points)
        self.live = LiveValues(self.bus)
        self.supervisor = Supervisor(self.bus, clock=clock)
        self.drivers = build_drivers(cfg)
        self.pollers = {
            d.id: DevicePoller(self.drivers[d.id], d, self.bus, clock=clock)
            for d in cfg.devices if d.id in self.drivers and self.drivers[d.id].polls(d.id)
        }
        self._recall(self.store.store.meta())
        self.commands = CommandHandler(cfg, self.drivers, self.bus, self.live)
        self.platform, self.uplinks = self.northbound(cfg, config_hash)
        self.sink = StreamSink(self.bus, self.pollers, clock=clock)
        self.services = VisionServices(cfg.store.data_dir, self.bus, self.supervisor, clock=clock)
        self.cameras = {c.id: CameraWorker(c, cfg.vision, cfg.store.data_dir, self.bus, clock=clock,
                                           services=self.services) for c in cfg.cameras if c.enabled}
        self.control = ControlServer(cfg.store.data_dir / SOCKET_NAME, self.commands)
        self.automation: Automation | None = None
        if cfg.rules:
            self.automation = Automation(cfg, self.bus, self.commands, self.store.store.alarm_states(), clock=clock)
            self.commands.alarms = self.automation
        self.reloader = Reloader(self, config_path)
        self.commands.reloader = self.reload
        self.observer = Observer(self)
        self.commands.observer = self.observer.snapshot
        self.started = clock.time()
        self._stop = asyncio.Event()
        self._hangups: set[asyncio.Task[dict[str, Any]]] = set()

    def northbound(self, cfg: GatewayConfig, config_hash: str, *, platform: PlatformCommands | None = None,
                   only: set[str] | None = None) -> tuple[PlatformCommands | None, dict[str, Uplink]]:
        """The enabled uplinks (or those of them in ``only``) and the platform commands wired into every one, as
        ``cfg`` says (at start, and when a reload changes an uplink or turns commands on or off); ``platform``:
        the running one, kept (its commands under way are answered through the new uplinks)."""
        enabled = {n: c for n, c in uplink_configs(cfg).items() if c.enabled and (only is None or n in only)}
        if platform is None and cfg.commands.enabled and any(c.enabled for c in uplink_configs(cfg).values()):
            platform = PlatformCommands(cfg, self.commands, self.store, self.recorder.committed, clock=self.clock,
                                        birth=self._rebirth, status=self.status_report)
        def catalog() -> Mapping[str, Mapping[str, Any]]:
            return device_meta(self.cfg)  # the running config's, whatever a reload made it

        uplinks = {name: Uplink(
            config, cfg.site.id, self.store, self.recorder.committed.subscribe(), name=name,
            config_hash=config_hash, on_state=self.bus.meta, held=self.recorder.held, devices=catalog,
            # a dialect's own commands (Sparkplug DCMD, HA) carry no expiry: they may wait max_ttl at most
            encoder=make_encoder(config, cfg.site.id, catalog, command_ttl=cfg.commands.max_ttl),
            commands=platform.received if platform else None,  # answered on the uplink each came in on
        ) for name, config in enabled.items()}
        return platform, uplinks

    @property
    def uplink(self) -> Uplink | None:
        """The ``[mqtt]`` uplink; None when it is disabled."""
        return self.uplinks.get(MAIN_UPLINK)

    def _recall(self, meta: dict[str, Any]) -> None:
        """What the drivers learnt of each device last time (read limits, counter totals), if its config is
        unchanged; a changed device starts afresh."""
        for device_id, poller in self.pollers.items():
            stored = meta.get(f"device:{device_id}")
            if not isinstance(stored, dict):
                continue
            if poller.driver.restore_learned(device_id, stored.get("learned")):
                unreadable = stored.get("unreadable")
                poller.unreadable = dict(unreadable) if isinstance(unreadable, dict) else {}
                log.info("device plan recalled", device=device_id, unreadable=sorted(poller.unreadable))

    async def run(self) -> None:
        self.lock.acquire()  # AlreadyRunning before anything is started: one daemon per store
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):  # never the default: SIGHUP would kill us
            loop.add_signal_handler(signal.SIGHUP, self._hangup)
        await self.control.start()  # before any task runs, so READY=1 is the first thing systemd hears
        self.supervisor.spawn("recorder", self.recorder.run)
        self.supervisor.spawn("summaries", self.feed.run)
        for name, uplink in self.uplinks.items():
            self.supervisor.spawn(status_key(name), uplink.run)
        if MAIN_UPLINK not in self.uplinks:
            self.bus.meta("uplink", {"state": "disabled", "since": self.started, "error": None})
        if self.platform:
            self.supervisor.spawn("commands", self.platform.run)
        for device_id, poller in self.pollers.items():
            self.supervisor.spawn(f"device:{device_id}", poller.run)
        for driver in {id(d): d for d in self.drivers.values()}.values():
            self.supervisor.spawn(f"bus:{driver.bus.id}", functools.partial(driver.stream, self.sink))
        await self.services.sync(self.cfg.cameras, self.cfg.vision)  # before the cameras that use them
        for camera_id, camera in self.cameras.items():
            self.supervisor.spawn(f"camera:{camera_id}", camera.run)
        self.supervisor.spawn("heartbeat", self._heartbeat)
        if self.cfg.web.enabled and (self.cfg.web.page or self.cfg.web.metrics):
            self.supervisor.spawn("web", functools.partial(serve, self))
        self.supervisor.spawn("health", functools.partial(run_health, self))  # the clock watch, and health if enabled
        if self.cfg.metrics.textfile is not None:
            self.supervisor.spawn("metrics", functools.partial(run_textfile, self))
        if self.automation:
            self.supervisor.spawn("rules", self.automation.run)
        self.bus.event(Event("gateway.started", self.cfg.site.id, Priority.EVENT,
                             {"version": __version__, "config": self.config_hash,
                              "devices": len(self.pollers), "cameras": len(self.cameras)}, self.clock.time()))
        log.info("gateway running", site=self.cfg.site.id, devices=len(self.pollers), version=__version__,
                 store=str(self.cfg.store.data_dir / DB_NAME))
        systemd.notify("READY=1")
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _rebirth(self) -> None:
        for uplink in self.uplinks.values():
            uplink.rebirth()

    async def status_report(self) -> dict[str, Any]:
        """What the platform's ``status`` command answers: the daemon, its uplink, its devices, its outbox."""
        depth = await self.store.run(self.store.store.outbox_depth)
        states = await self.store.run(self.store.store.devices)
        return {
            "version": __version__, "config": self.config_hash, "started": round(self.started, 3),
            "uptime_s": round(self.clock.time() - self.started, 1),
            "uplink": {"state": self.uplink.status.state, "delivered": self.uplink.status.delivered}
            if self.uplink else {"state": "disabled"},
            "uplinks": {n: {"state": u.status.state, "broker": u.status.broker, "delivered": u.status.delivered}
                        for n, u in self.uplinks.items()},
            "outbox": depth,
            "devices": {d.id: d.state for d in states},
            "alarms": len(self.automation.listing()) if self.automation else 0,
            "commands": {"answered": dict(self.platform.answered), "dropped": dict(self.platform.dropped)}
            if self.platform else {},
        }

    # -- reloading the config (gateway.reloader) ----------------------------------------------------------------

    async def reload(self, source: str) -> dict[str, Any]:
        """Apply the config file as it is now, only what changed (see ``gateway.reloader``); ``source`` is who
        asked. ``applied`` false (and ``problems``) when the file is refused: then nothing changed."""
        return await self.reloader.reload(source)

    def _hangup(self) -> None:
        """SIGHUP (`systemctl reload gateway`): reload; the outcome is logged, audited and an event."""
        task = asyncio.get_running_loop().create_task(self.reload("signal:SIGHUP"))
        self._hangups.add(task)
        task.add_done_callback(self._hangups.discard)

    def beat(self) -> None:
        """The daemon's status line for `gateway status` (pid, version, the config it runs)."""
        self.bus.meta("daemon", {"pid": os.getpid(), "started": self.started, "heartbeat": self.clock.time(),
                                 "version": __version__, "config": self.config_hash, "state": "running"})

    async def _heartbeat(self) -> None:
        """Liveness for `gateway status` and the systemd watchdog; pings only while the loop turns."""
        watchdog = systemd.watchdog_interval()
        period = min(watchdog or 5.0, 5.0)
        while True:
            self.beat()
            if watchdog:
                systemd.notify("WATCHDOG=1")
            await self.clock.sleep(period)

    async def shutdown(self) -> None:
        systemd.notify("STOPPING=1")
        log.info("gateway stopping")
        await self.reloader.idle()  # a reload under way ends first: it would start tasks after ours stopped
        await self.control.close()
        inputs = ("device:", "bus:", "camera:", "heartbeat", "summaries")
        pollers = [t for n, t in self.supervisor.tasks.items() if n.startswith(inputs)]
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        self.feed.summaries()
        self.bus.event(Event("gateway.stopped", self.cfg.site.id, Priority.EVENT, {}, self.clock.time()))
        self.bus.meta("daemon", {"pid": os.getpid(), "started": self.started, "heartbeat": self.clock.time(),
                                 "version": __version__, "config": self.config_hash, "state": "stopped"})
        await self.recorder.flush()
        if self.uplinks:  # a last chance to deliver what is queued, then a clean "offline"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._drained()
        await self.supervisor.stop()
        if self.platform:
            await self.platform.close()
        if self.automation:
            await self.automation.close()
        await self.recorder.flush()
        for driver in set(self.drivers.values()):
            with contextlib.suppress(Exception):
                await driver.close()
        self.store.close()
        self.lock.release()
        log.info("gateway stopped")

    async def _drained(self) -> None:
        """Until every connected uplink has nothing left to deliver (one that is down keeps its backlog)."""
        while True:
            live = [n for n, u in self.uplinks.items() if u.status.state == "connected"]
            if not any([await self.store.run(self.store.store.next_batch, 1, n) for n in live]):
                return
            await asyncio.sleep(0.05)


class StreamSink:
    """What streaming drivers hear goes the same way as what pollers read; their failures become device state."""

    def __init__(self, bus: Sink, pollers: dict[str, DevicePoller] | None = None, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.bus = bus
        self.clock = clock
        self.pollers = pollers if pollers is not None else {}
        self.states: dict[str, DeviceState] = {}
        """Streaming devices' state, as their streams report it (polled devices' is their poller's)."""

    def readings(self, device: str, readings: list[Reading]) -> None:
        poller = self.pollers.get(device)
        if poller is not None:  # a polled device told something unasked: its poller's change events apply
            poller.pushed(readings)
        elif readings:
            self.bus.snapshot(device, readings, max(r.ts for r in readings))

    def event(self, event: Event) -> None:
        self.bus.event(event)

    def raw(self, device: str, ts: float, data: bytes, parsed: dict[str, Any] | None) -> None:
        self.bus.raw(device, ts, data, parsed)

    def device_failed(self, device: str, error: DriverError) -> None:
        now = self.clock.time()
        state = self.states.get(device) or DeviceState(device, "unknown", now)
        kind = error_kind(error)
        errors = {**state.errors, kind: state.errors.get(kind, 0) + 1}
        since = state.since if state.state == "offline" else now
        self.states[device] = replace(state, state="offline", since=since, error=f"{type(error).__name__}: {error}",
                                      failures=state.failures + 1, errors=errors)
        if state.state != "offline":  # once per outage, not once per retry
            log.warning("device unreachable", device=device, error=str(error))
        self.bus.device_state(self.states[device])

    def device_ok(self, device: str) -> None:
        now = self.clock.time()
        state = self.states.get(device) or DeviceState(device, "online", now)
        if state.state != "online":
            state = replace(state, state="online", since=now, error=None)
        self.states[device] = replace(state, last_ok=now)
        self.bus.device_state(self.states[device])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def data_path(cfg: GatewayConfig) -> Path:
    return cfg.store.data_dir / DB_NAME


def control_path(cfg: GatewayConfig) -> Path:
    return cfg.store.data_dir / SOCKET_NAME

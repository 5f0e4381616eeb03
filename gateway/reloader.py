"""A changed config applied to the running daemon: checked whole first, then only what changed is restarted.

`systemctl reload gateway` (SIGHUP), `gateway reload` (the control socket) and the platform's ``reload`` command
all end here. The file the daemon was started with is read again and checked as `gateway check` checks it; a file
with problems changes nothing and the answer lists them as ``FILE:LINE: key: message``. So does a change a running
daemon cannot take (``site.id``, ``[store]``). Otherwise everything that can fail is built first (drivers,
pollers, the rule set, camera workers), and only then are the old parts stopped and the new ones started:

- a device whose poller-only keys changed gets a new poller on the same driver;
- a bus whose config or devices changed gets a new driver, and every device on it a new poller (what the old
  driver learnt of a device whose map did not change is handed over);
- changed rules, alarm classes or notifiers swap the rule set; the alarm book and unchanged rules' state stay;
- a changed ``[mqtt]`` (or its certificate files, rotated in place) reconnects the uplink, which then says its
  birth with the new config hash; an ``[[uplinks]]`` entry added, removed or changed starts, stops or reconnects
  that uplink alone (a removed one's cursor is forgotten: it holds no row back); any other change says the birth
  again on every live connection;
- cameras restart when they (or ``[vision]``) changed; reporting and privacy are swapped in place;
- ``[health]`` applies at the health loop's next turn; a changed ``[metrics]`` restarts the textfile's writer.

The outbox, the recorder, the alarm book and every poller that did not change are never touched: an unchanged
device is polled by the same ``DevicePoller`` on the same schedule. Reloads are serialised, and each runs to the
end as a task of its own, even if whoever asked for it goes away meanwhile (the uplink, say, that it restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from drivers.base import Driver
from drivers.registry import driver_class
from gateway import systemd
from gateway.cameras import CameraWorker
from gateway.config.loader import ConfigError, ConfigProblem, config_hash, load_config
from gateway.config.schema import GatewayConfig
from gateway.core.data import Event, Priority
from gateway.northbound.routes import status_key, store_uplinks, uplink_configs
from gateway.poller import DevicePoller
from gateway.reload import ConfigChange, diff, uplink_files
from gateway.reporting import Privacy
from rules.runtime import RulesRuntime

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = structlog.get_logger("gateway.reload")
STOP_WITHIN = 10.0
"""Seconds a stopped task or a closed driver gets before the reload goes on without it (and says so)."""


@dataclass(slots=True)
class _Built:
    """The new parts, made before anything running is touched."""

    drivers: dict[str, Driver] = field(default_factory=dict)
    """Device id -> its new driver, for the devices of rebuilt buses."""
    pollers: dict[str, DevicePoller] = field(default_factory=dict)
    cameras: dict[str, CameraWorker] = field(default_factory=dict)


class Reloader:
    def __init__(self, daemon: Daemon, path: Path | None) -> None:
        self.daemon = daemon
        self.path = path
        self.files = uplink_files(daemon.cfg)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[dict[str, Any]]] = set()
        self._applying = False

    async def reload(self, source: str) -> dict[str, Any]:
        """Apply the config file as it is now; ``source`` says who asked (audited). Never raises for a bad file:
        ``applied`` is false and ``problems`` lists what is wrong."""
        task = asyncio.get_running_loop().create_task(self._serialised(source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def idle(self) -> None:
        """Wait for the reloads under way (at shutdown: one asked for meanwhile is refused)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serialised(self, source: str) -> dict[str, Any]:
        async with self._lock:
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                answer = await self._reload(source)
            except Exception as exc:  # a bug: say so, keep running what runs
                log.exception("reload failed", source=source)
                partly = ": it may be partly applied, restart the service" if self._applying else ""
                answer = self._refused(source, f"internal error: {type(exc).__name__}: {exc}{partly}", [], "")
            finally:
                self._applying = False
            systemd.notify("READY=1\nSTATUS=" + ("config applied" if answer["applied"]
                                                 else f"config refused: {answer['reason']}")[:200])
            return answer

    async def _reload(self, source: str) -> dict[str, Any]:
        daemon = self.daemon
        started = time.monotonic()
        if self.path is None:
            return self._refused(source, "this daemon was not started from a config file", [], "")
        if daemon.stopping:
            return self._refused(source, "the daemon is stopping", [], "")
        try:
            new_hash, cfg, files, warnings = await asyncio.to_thread(self._load, self.path)
        except ConfigError as exc:
            problems = [p.format() for p in exc.problems]
            many = f"{len(problems)} problems" if len(problems) > 1 else "a problem"
            return self._refused(source, f"{self.path} has {many}", problems, "")
        # in a worker thread, as the load: 10,000 points take ~90 ms to compare (configs are never mutated)
        change = await asyncio.to_thread(functools.partial(diff, old_files=self.files, new_files=files),
                                         daemon.cfg, cfg)
        if change.refused:
            return self._refused(source, change.reason(), [], new_hash)
        previous = daemon.config_hash
        if change.empty and new_hash == previous:
            daemon.bus.audit("reload", {"actor": source, "result": "unchanged", "config": new_hash})
            log.info("config reloaded: nothing changed", source=source)
            return {"applied": True, "changed": {}, "config": new_hash, "previous": previous, "warnings": warnings}
        try:
            if change.rules:  # compiles every rule: a failure here leaves the running set alone
                await asyncio.to_thread(functools.partial(RulesRuntime.from_config, started=daemon.clock.time()), cfg)
            built = self._build(cfg, change)
        except Exception as exc:
            return self._refused(source, f"cannot apply the new config: {type(exc).__name__}: {exc}", [], new_hash)
        self._applying = True
        await self._apply(cfg, change, built, new_hash)
        self._applying = False
        self.files = files
        summary = change.summary()
        daemon.bus.event(Event("config.applied", cfg.site.id, Priority.EVENT,
                               {"config": new_hash, "previous": previous, "changed": summary, "by": source},
                               daemon.clock.time()))
        daemon.bus.audit("reload", {"actor": source, "result": "applied", "config": new_hash, "changed": summary})
        took = round((time.monotonic() - started) * 1000, 1)
        log.info("config applied", source=source, config=new_hash[:12], took_ms=took, **summary)
        return {"applied": True, "changed": summary, "config": new_hash, "previous": previous, "warnings": warnings,
                "took_ms": took}

    @staticmethod
    def _load(path: Path) -> tuple[str, GatewayConfig, dict[str, str], list[str]]:
        """The file's hash, its config checked as `gateway check` does, its uplink files' digest, its warnings."""
        digest = config_hash(path)
        warnings: list[ConfigProblem] = []
        cfg = load_config(path, warnings=warnings)
        return digest, cfg, uplink_files(cfg), [w.format() for w in warnings]

    def _refused(self, source: str, reason: str, problems: list[str], new_hash: str) -> dict[str, Any]:
        daemon = self.daemon
        data: dict[str, Any] = {"reason": reason, "problems": problems, "running": daemon.config_hash, "by": source}
        if new_hash:
            data["config"] = new_hash
        daemon.bus.event(Event("config.rejected", daemon.cfg.site.id, Priority.EVENT, data, daemon.clock.time()))
        daemon.bus.audit("reload", {"actor": source, "result": "refused", "error": reason, "problems": problems})
        log.warning("config reload refused", source=source, reason=reason, problems=problems[:20])
        return {"applied": False, "reason": reason, "problems": problems, "config": daemon.config_hash}

    # -- build, then swap -----------------------------------------------------------------------------------

    def _build(self, cfg: GatewayConfig, change: ConfigChange) -> _Built:
        daemon = self.daemon
        built = _Built()
        for bus in cfg.buses:
            devices = [d for d in cfg.devices if d.bus == bus.id and d.enabled]
            if bus.id in change.rebuild and devices:
                made = driver_class(bus.driver)(bus, devices)
                built.drivers.update((d.id, made) for d in devices)
        for device in cfg.devices:
            driver: Driver | None = built.drivers.get(device.id)
            if driver is None and device.id in change.restart:
                driver = daemon.drivers.get(device.id)
            if driver is not None and driver.polls(device.id):
                built.pollers[device.id] = DevicePoller(driver, device, daemon.bus, clock=daemon.clock)
        restart = {*change.cameras_added, *change.cameras_changed}
        built.cameras = {c.id: CameraWorker(c, cfg.vision, cfg.store.data_dir, daemon.bus, clock=daemon.clock,
                                            services=daemon.services)
                         for c in cfg.cameras if c.enabled and c.id in restart}
        return built

    async def _apply(self, cfg: GatewayConfig, change: ConfigChange, built: _Built, new_hash: str) -> None:
        daemon, supervisor = self.daemon, self.daemon.supervisor
        rebuilt = set(change.rebuild)
        old_drivers = {i: d for i, d in daemon.drivers.items() if d.bus.id in rebuilt}
        stopping = set(old_drivers) | set(change.restart)
        cameras = {*change.cameras_removed, *change.cameras_changed}
        northbound = self._reconnects(cfg, change)
        names = [f"device:{i}" for i in sorted(stopping)] + [f"bus:{b}" for b in sorted(rebuilt)]
        keep = self._keeps_platform(cfg)
        names += [f"camera:{c}" for c in sorted(cameras)] + [status_key(n) for n in sorted(northbound)]
        names += ["commands"] if self._remakes_platform(cfg) and not keep else []
        late = await supervisor.end(names, within=STOP_WITHIN)
        if late:
            log.error("tasks did not stop in time; the reload goes on", tasks=late)
        old_pollers = {i: daemon.pollers.pop(i) for i in stopping if i in daemon.pollers}
        self._hand_over(old_pollers, built)
        await self._close({id(d): d for d in old_drivers.values()}.values())
        for device_id in old_drivers:
            del daemon.drivers[device_id]
        daemon.drivers.update(built.drivers)  # the same dict the command handler holds
        daemon.pollers.update(built.pollers)  # and the stream sink
        removed = set(change.devices_removed) | {d.id for d in cfg.devices if not d.enabled}
        for device_id in removed:
            daemon.sink.states.pop(device_id, None)
            daemon.live.latest.pop(device_id, None)
        for device in cfg.devices:  # `gateway values` shows no point a device no longer has
            latest = daemon.live.latest.get(device.id)
            if latest is not None and device.id in change.devices_changed:
                kept = set(device.point_ids())
                for point in [p for p in latest if p not in kept]:
                    del latest[point]

        textfile = daemon.cfg.metrics.textfile
        daemon.cfg = cfg
        daemon.commands.cfg = cfg
        self._reporting(cfg, change)
        if change.rules:
            await self._rules(cfg)
        for camera_id in cameras:
            daemon.cameras.pop(camera_id, None)
        daemon.cameras.update(built.cameras)
        if change.log:
            from gateway.core import logs

            logs.configure(cfg.log.level, cfg.log.format)
        if any(k.startswith("metrics.") for k in change.observe):
            await self._textfile(cfg, textfile)
        daemon.config_hash = new_hash
        if northbound:
            await self._reconnect(cfg, new_hash, keep, northbound)
        elif daemon.platform is not None:
            daemon.platform.configure(cfg)
        for name, uplink in daemon.uplinks.items():
            if name not in northbound:
                uplink.rebirth(new_hash)  # the birth carries the hash; devices are described again
        daemon.beat()

        for device_id, poller in built.pollers.items():
            supervisor.spawn(f"device:{device_id}", poller.run)
        for driver in {id(d): d for d in built.drivers.values()}.values():
            supervisor.spawn(f"bus:{driver.bus.id}", functools.partial(driver.stream, daemon.sink))
        await daemon.services.sync(cfg.cameras, cfg.vision)  # cameras added or removed, [vision] changed
        for camera_id, camera in built.cameras.items():
            supervisor.spawn(f"camera:{camera_id}", camera.run)

    async def _textfile(self, cfg: GatewayConfig, old: Path | None) -> None:
        """[metrics] changed: the textfile's writer starts again at once with it (not after the old ``every``), or
        stops; a file no longer written is removed, so node-exporter does not go on exporting its last figures."""
        from gateway.health import run_textfile

        supervisor = self.daemon.supervisor
        await supervisor.end(["metrics"], within=STOP_WITHIN)
        if old is not None and old != cfg.metrics.textfile:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(old.unlink)
        if cfg.metrics.textfile is not None:
            supervisor.spawn("metrics", functools.partial(run_textfile, self.daemon))

    def _hand_over(self, old: dict[str, DevicePoller], built: _Built) -> None:
        """What an old driver learnt of a device (read limits, counter totals) goes to its new one, if the device's
        map still fits it; its poller's unreadable points go with it."""
        for device_id, poller in built.pollers.items():
            before = old.get(device_id)
            if before is None:
                continue
            # the same driver (a poller-only change) knows all it knew; a new one takes it if the map still fits
            same = before.driver is poller.driver
            if same or poller.driver.restore_learned(device_id, before.driver.learned(device_id)):
                poller.unreadable = dict(before.unreadable)

    async def _close(self, drivers: Any) -> None:
        async def close(driver: Driver) -> None:
            try:
                async with asyncio.timeout(STOP_WITHIN):
                    await driver.close()
            except Exception as exc:  # closing is best effort; the new driver opens afresh
                log.warning("driver did not close cleanly", bus=driver.bus.id, error=repr(exc))

        await asyncio.gather(*(close(d) for d in drivers))

    def _reporting(self, cfg: GatewayConfig, change: ConfigChange) -> None:
        feed = self.daemon.feed
        for device_id in change.devices_removed:
            feed.reporter.devices.pop(device_id, None)
        for device in cfg.devices:
            if device.id in change.devices_added or device.id in change.reporting:
                feed.reporter.configure(device.id, device.report, device.report_points)
        feed.history = {d.id for d in cfg.devices if d.history}.__contains__
        if change.privacy:
            feed.privacy = Privacy(cfg.mqtt.keep_local, [c.id for c in cfg.cameras if c.upstream is False],
                                   [c.id for c in cfg.cameras if c.upstream is True])

    async def _rules(self, cfg: GatewayConfig) -> None:
        daemon = self.daemon
        if daemon.automation is not None:
            daemon.automation.reconfigure(cfg)
        elif cfg.rules:  # the first rules of this run: alarms stored by an earlier run come back, as at a start
            from gateway.automation import Automation

            await daemon.recorder.flush()
            stored = await daemon.store.run(daemon.store.store.alarm_states)
            daemon.automation = Automation(cfg, daemon.bus, daemon.commands, stored, clock=daemon.clock)
            daemon.commands.alarms = daemon.automation
            daemon.supervisor.spawn("rules", daemon.automation.run)

    def _reconnects(self, cfg: GatewayConfig, change: ConfigChange) -> set[str]:
        """The uplinks made again (by name): each one whose config changed, was added or removed; all of them
        when the platform commands wired into every one are turned on or off."""
        old = uplink_configs(self.daemon.cfg)
        if self._remakes_platform(cfg):
            return set(old) | set(uplink_configs(cfg))
        return ({"mqtt"} if change.mqtt else set()) | {*change.uplinks_added, *change.uplinks_removed,
                                                       *change.uplinks_changed}

    def _remakes_platform(self, cfg: GatewayConfig) -> bool:
        """Whether the platform commands are turned on or off (commands, or whether any uplink is enabled)."""
        old = self.daemon.cfg
        return (old.commands.enabled and any(c.enabled for c in uplink_configs(old).values())) != (
            cfg.commands.enabled and any(c.enabled for c in uplink_configs(cfg).values()))

    def _keeps_platform(self, cfg: GatewayConfig) -> bool:
        """Whether the running platform commands go on (with the new config): unless they are turned off, or on."""
        return self.daemon.platform is not None and not self._remakes_platform(cfg)

    async def _reconnect(self, cfg: GatewayConfig, new_hash: str, keep: bool, names: set[str]) -> None:
        daemon = self.daemon
        kept = daemon.platform if keep else None
        if kept is not None:
            kept.configure(cfg)
        elif daemon.platform is not None:
            with contextlib.suppress(Exception):
                await daemon.platform.close()
        for name in names:
            daemon.uplinks.pop(name, None)
        wanted = store_uplinks(cfg)
        if wanted != daemon.store.store.uplinks:  # before a new uplink asks for its first rows
            await daemon.store.run(daemon.store.store.set_uplinks, wanted)
        daemon.platform, made = daemon.northbound(cfg, new_hash, platform=kept, only=names)
        daemon.uplinks.update(made)
        for name, uplink in made.items():
            daemon.supervisor.spawn(status_key(name), uplink.run)
        for name, config in uplink_configs(cfg).items():
            if name in names and not config.enabled:
                daemon.bus.meta(status_key(name), {"state": "disabled", "since": daemon.clock.time(), "error": None})
        if daemon.platform is not None and kept is None:
            daemon.supervisor.spawn("commands", daemon.platform.run)

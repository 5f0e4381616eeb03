"""One chaos scenario's world: a broker, the platform, meters, a fire panel and the real daemon.

Everything is fresh per scenario (its own directory, broker, ports and store), so a scenario's
figures are its own. The daemon is ``gateway run`` in its own process; the broker a real Mosquitto
(persistent, so a restarted broker still holds the platform's session); the platform a
persistent-session subscriber in its own process (``chaos_recorder``); the meters Modbus TCP
register banks in this process (so one can be switched off and on: ``stop_one``/``start_one``);
the panel a GBK fire panel on a ``socat`` pty pair, printing a fire alarm with a unique marker in
its description twice a second, and a trouble line every third alarm.

A serial line keeps nothing: a line printed while no gateway holds the port is never heard by
anyone. So the panel prints only while the daemon holds the port (read from /proc), and falls quiet
``QUIET`` seconds before the bench takes the port away from the daemon (a SIGKILL, an unplug).
Every line it printed must then reach the platform as a ``fire.alarm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.bench.chaos_recorder import Arrivals, Recorder
from gateway.bench.harness import HOST, log_tail, memory_mb, stop_process

if TYPE_CHECKING:
    from simulators.broker import Mosquitto
    from simulators.firepanel import FirePanelSimulator
    from simulators.registers import RegisterServer

PANEL = "fire-panel"
SITE = "chaos"
PREFIX = "community"
QUIET = 0.3
"""Seconds the panel keeps quiet before the daemon loses the port: what it printed is read and stored by then."""
READY_LIMIT = 40.0


@dataclass(frozen=True)
class Plan:
    """How hard and how long: the same for every scenario of a run."""

    faults: int
    hold: float
    """Seconds each fault lasts (the broker or daemon down, the disk full, the device off...)."""
    gap: float
    """Seconds of normal running between two faults."""
    settle: float
    """Seconds of normal running before the first fault."""
    drain_limit: float
    meters: int = 3
    points: int = 10
    interval: float = 0.2
    line_rate: float = 2.0


@dataclass(slots=True)
class Setup:
    """How a scenario's daemon runs: where its store lives, its environment, its launcher, and what that means."""

    data_dir: Path
    method: str = ""
    env: dict[str, str] = field(default_factory=dict)
    launcher: list[str] = field(default_factory=lambda: ["-m", "gateway"])


def proc_fds(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


class World:
    def __init__(self, work: Path, plan: Plan, setup: Setup) -> None:
        self.work = work
        self.plan = plan
        self.setup = setup
        self.db = setup.data_dir / "gateway.db"
        self.broker: Mosquitto | None = None
        self.recorder: Recorder | None = None
        self.meters: RegisterServer | None = None
        self.panel: FirePanelSimulator | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.incarnations = 0
        self.unexpected_exits: list[int] = []
        self.arrivals = Arrivals(work / "platform.jsonl")
        self.sent: dict[str, float] = {}
        """Marker of every fire line printed -> when."""
        self.gate = asyncio.Event()
        self.cleared = 0.0
        """Monotonic time the last fault was taken away (the broker back, the daemon started again...)."""
        self._feeder: asyncio.Task[None] | None = None
        self.config = work / "gateway.toml"
        self.daemon_log = work / "daemon.log"

    async def __aenter__(self) -> World:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _start(self) -> None:
        from gateway.bench.modbus import bank_size, point_map
        from simulators.broker import Mosquitto
        from simulators.firepanel import FirePanelSimulator
        from simulators.registers import serve_consecutive

        (self.work / "broker").mkdir()
        self.broker = Mosquitto(self.work / "broker", persistence=True)  # it saves sessions as root too
        await asyncio.to_thread(self.broker.start)
        self.recorder = Recorder(self.broker.port, f"{PREFIX}/{SITE}/#", self.arrivals.path, self.work / "platform.log")
        await asyncio.to_thread(self.recorder.start)
        await self._save_broker()
        points = point_map(self.plan.points)
        self.meters = await serve_consecutive(HOST, self.plan.meters, size=bank_size(points), fill=True,
                                              tick_interval=self.plan.interval)
        self.panel = FirePanelSimulator("gst_cn", heartbeat=5.0, seed=1)
        await self.panel.start()
        self._write_config(points)
        self.spawn()
        await self.daemon_ready(first=True)
        self._feeder = asyncio.create_task(self._feed(), name="chaos-panel")

    async def _save_broker(self) -> None:
        """SIGUSR1: Mosquitto writes its state, the platform's session with it, so a killed broker restarts with it."""
        assert self.broker is not None and self.broker.proc is not None
        saved = self.work / "broker" / "mosquitto.db"
        self.broker.proc.send_signal(signal.SIGUSR1)
        from gateway.core.timing import wait_until

        await wait_until(lambda: saved.exists() and saved.stat().st_size > 0, 10, "mosquitto saving its state")

    def _write_config(self, points: list[dict[str, Any]]) -> None:
        from gateway.bench.modbus import config_text

        assert self.meters is not None and self.panel is not None and self.broker is not None
        text = config_text(self.setup.data_dir, self.meters.ports[0], self.plan.meters, points,
                           interval=f"{self.plan.interval}s", timeout="1s")
        text = text.replace('[site]\nid = "bench"\n', f'[site]\nid = "{SITE}"\n')
        text = text.replace("[mqtt]\nenabled = false\n",
                            f'[mqtt]\nhost = "{HOST}"\nport = {self.broker.port}\ntopic_prefix = "{PREFIX}"\n'
                            'reconnect_min = "100ms"\nreconnect_max = "1s"\nkeepalive = "5s"\n')
        text += (f'\n[[buses]]\nid = "fire-port"\ndriver = "serial_lines"\nport = {json.dumps(self.panel.port)}\n\n'
                 f'[[devices]]\nid = "{PANEL}"\nbus = "fire-port"\nformat = "gst_cn"\nheartbeat = "30s"\n')
        self.config.write_text(text, encoding="utf-8")

    # -- the daemon ------------------------------------------------------------------------------

    def spawn(self) -> None:
        with self.daemon_log.open("ab") as log:
            self.daemon = subprocess.Popen([sys.executable, *self.setup.launcher, "run", "-c", str(self.config)],
                                           stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **self.setup.env})
        self.incarnations += 1

    def holds_port(self) -> bool:
        """The daemon has the panel's pty open (after an unplug the link is gone, and nothing matches)."""
        if self.daemon is None or self.panel is None or self.daemon.poll() is not None:
            return False
        target = os.path.realpath(self.panel.port)
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{self.daemon.pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) == target:
                        return True
        return False

    async def daemon_ready(self, *, first: bool = False, within: float = READY_LIMIT) -> float:
        """Until the daemon holds the panel's port (and, the first time, every meter's telemetry has reached the
        platform); then the panel may speak. Returns the seconds it took."""
        started = time.monotonic()
        meters = {f"dev-{i}" for i in range(self.plan.meters)}
        while True:
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                raise RuntimeError(f"gateway run exited with code {self.daemon.returncode}{log_tail(self.daemon_log)}")
            if self.holds_port() and (not first or meters <= {d for d, _ in self.arrivals.update().telemetry}):
                break
            if time.monotonic() - started > within:
                heard = {d for d, _ in self.arrivals.telemetry}
                raise TimeoutError(f"the daemon was not ready within {within:g}s (holds the panel's port:"
                                   f" {self.holds_port()}; meters heard from: {sorted(heard & meters)})"
                                   f"{log_tail(self.daemon_log)}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the open flushes the port's input: speak after it
        self.gate.set()
        return time.monotonic() - started

    def check_alive(self) -> None:
        """Note a daemon that died when nobody killed it (and start another, so the scenario goes on)."""
        if self.daemon is not None and self.daemon.poll() is not None:
            self.unexpected_exits.append(self.daemon.returncode)
            self.spawn()

    async def quiet(self) -> None:
        """The panel stops printing, and what it printed has time to be read: the daemon is about to lose the port."""
        self.gate.clear()
        await asyncio.sleep(QUIET)

    async def kill_daemon(self) -> None:
        await self.quiet()
        assert self.daemon is not None
        self.daemon.kill()
        await asyncio.to_thread(self.daemon.wait)

    # -- the panel -------------------------------------------------------------------------------

    async def _feed(self) -> None:
        assert self.panel is not None
        n = 0
        while True:
            await asyncio.sleep(1 / self.plan.line_rate)
            if not self.gate.is_set() or not self.holds_port():
                continue
            mark = f"CHAOS-{n:05d}"
            try:
                at = await self.panel.send("fire", loop=n % 4 + 1, address=n % 199 + 1, zone=n % 30 + 1,
                                           description=mark)
                self.sent[mark] = at
                if n % 3 == 2:
                    await self.panel.send("fault", loop=1, address=n % 199 + 1, zone=n % 30 + 1)
            except ConnectionError:  # unplugged between the check and the write: nothing was printed
                continue
            n += 1

    # -- the store, read from outside ------------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=2)) as conn:
            return conn.execute(sql, args).fetchall()

    def marks(self) -> tuple[int, int]:
        """The newest outbox and event-log sequence numbers: what is stored now."""
        with contextlib.suppress(sqlite3.Error):
            [(outbox, events)] = self.query("SELECT (SELECT COALESCE(MAX(seq), 0) FROM outbox),"
                                            " (SELECT COALESCE(MAX(seq), 0) FROM events)")
            return int(outbox), int(events)
        return 0, 0

    def delivered_up_to(self, outbox: int, events: int) -> bool:
        """Everything stored up to these marks, and every fire line printed, has reached the platform."""
        self.arrivals.update()
        if not set(self.sent) <= self.arrivals.fire_markers:
            return False
        try:
            if self.query("SELECT COUNT(*) FROM outbox WHERE seq <= ?", outbox)[0][0]:
                return False
            ids = {i for (i,) in self.query("SELECT id FROM events WHERE seq <= ?", events)}
        except sqlite3.Error:
            return False
        return ids <= self.arrivals.ids

    async def drain(self) -> float | None:
        """Seconds from the end of the last fault (``cleared``) until everything stored by the time the bench
        looked, and every fire line printed, reached the platform; None past the plan's limit."""
        outbox, events = self.marks()
        while not self.delivered_up_to(outbox, events):
            self.check_alive()
            if time.monotonic() - self.cleared > self.plan.drain_limit:
                return None
            await asyncio.sleep(0.05)
        return time.monotonic() - self.cleared

    def stats(self) -> tuple[float | None, int | None]:
        """The daemon's resident MB and open descriptors, from /proc."""
        if self.daemon is None or self.daemon.poll() is not None:
            return None, None
        return memory_mb(self.daemon.pid)[0], proc_fds(self.daemon.pid)

    async def stop_daemon(self) -> int | None:
        """SIGTERM: it says goodbye and tries to deliver what is queued (2 s), as under systemd."""
        if self._feeder is not None:
            self._feeder.cancel()
        if self.daemon is None:
            return None
        await asyncio.to_thread(stop_process, self.daemon, 15.0)
        return self.daemon.returncode

    async def close(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        if self.daemon is not None:
            await asyncio.to_thread(stop_process, self.daemon, 15.0)
        if self.panel is not None:
            await self.panel.close()
        if self.meters is not None:
            await self.meters.close()
        if self.recorder is not None:
            self.recorder.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)

    async def account(self, within: float = 5.0) -> dict[str, Any]:
        """After the daemon has stopped: what the store holds that the platform never got (waiting up to
        ``within`` s for what is on its way), and what the store says happened."""
        deadline = time.monotonic() + within
        while True:
            self.arrivals.update()
            stored = {i for (i,) in self.query("SELECT id FROM outbox WHERE kind != 'state'")}
            outbox_left = len(stored - self.arrivals.ids)
            events = {i for (i,) in self.query(  # faces and plates stay on the box (mqtt.keep_local)
                "SELECT id FROM events WHERE kind NOT LIKE 'face.%' AND kind NOT LIKE 'plate.%'")}
            events_left = len(events - self.arrivals.ids)
            samples = {(d, round(ts, 3)) for d, ts in self.query("SELECT device, ts FROM samples")}
            telemetry_left = len(samples - self.arrivals.telemetry)
            lines_left = len(set(self.sent) - self.arrivals.fire_markers)
            if not (outbox_left or events_left or telemetry_left or lines_left) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        kinds = dict(self.query("SELECT kind, COUNT(*) FROM events GROUP BY kind"))
        shed: dict[str, int] = {}
        for (payload,) in self.query("SELECT payload FROM events WHERE kind = 'store.disk_recovered'"):
            for kind, n in (json.loads(payload).get("shed") or {}).items():
                shed[kind] = shed.get(kind, 0) + int(n)
        counters = dict(self.query("SELECT name, value FROM counters"))
        return {"outbox_rows": len(stored), "outbox_not_delivered": outbox_left, "events": len(events),
                "events_not_delivered": events_left, "not_delivered": len((stored | events) - self.arrivals.ids),
                "samples": len(samples), "telemetry_not_delivered": telemetry_left,
                "counters": counters, "event_kinds": kinds,
                "dropped_by_policy": {"telemetry_over_cap": counters.get("store.telemetry_dropped", 0),
                                      "shed_while_full": shed}}

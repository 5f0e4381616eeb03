"""One fleet for ``gateway bench fleet``: a broker, the platform, and N real gateways with their meters.

Everything is fresh per run (its own directory, broker, port and stores). The broker is a real
Mosquitto with persistence (so a graceful stop keeps the platform's session and its
subscription), ``set_tcp_nodelay true`` as docs/upstream.md advises, and ``sys_interval 1`` for
its own once-a-second count of what it received. The platform is ``fleet_platform``'s
persistent-session subscriber. Each gateway is ``gateway run`` in its own process with a
generated config (site ``fleet-NN``, its own store) polling its own simulated Modbus TCP meters,
served by one ``gateway.bench.wire meter`` process for the whole bench. Device ids are unique
across the fleet (``gNN-mK``), so a reading is known by (device, ts) fleet-wide.

The gateways' stores are read from outside, read-only, as ``gateway status`` would: the outbox
(what a gateway has not delivered yet) and the readings history (every poll it stored).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.bench.fleet_platform import Platform, Seen
from gateway.bench.harness import HOST, READY_TIMEOUT, log_tail, memory_mb, spawn_daemon

if TYPE_CHECKING:
    from simulators.broker import Mosquitto

PREFIX = "community"


@dataclass(frozen=True)
class Plan:
    """The fleet and its gateways' [mqtt] settings: the same for every gateway of a run."""

    gateways: int
    meters: int
    """Simulated meters per gateway."""
    interval: float
    replay_rate: float
    replay_delay: float
    live_window: float
    reconnect_max: float


def site(g: int) -> str:
    return f"fleet-{g:02d}"


def device(g: int, m: int) -> str:
    return f"g{g:02d}-m{m}"


class Fleet:
    def __init__(self, work: Path, plan: Plan, first_meter_port: int) -> None:
        self.work = work
        self.plan = plan
        self.first_meter_port = first_meter_port
        self.broker: Mosquitto | None = None
        self.platform: Platform | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.unexpected_exits: dict[str, int] = {}

    def __enter__(self) -> Fleet:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def seen(self) -> Seen:
        """What has reached the platform so far."""
        assert self.platform is not None
        return self.platform.seen.update()

    def _start(self) -> None:
        from simulators.broker import Mosquitto

        (self.work / "broker").mkdir(parents=True)
        self.broker = Mosquitto(self.work / "broker", persistence=True)
        with self.broker.conf.open("a") as conf:  # written, not started yet: start reads it as it then is
            conf.write("set_tcp_nodelay true\nsys_interval 1\n")
        self.broker.start()
        self.platform = Platform(self.broker.port, f"{PREFIX}/#", self.work / "platform.tsv",
                                 self.work / "platform.log")
        self.platform.start()
        for g in range(self.plan.gateways):
            (self.work / site(g)).mkdir()
            config = self.work / site(g) / "gateway.toml"
            config.write_text(self._config(g), encoding="utf-8")
            self.procs.append(spawn_daemon(config, self._log(g)))
        self._wait_ready()

    def _log(self, g: int) -> Path:
        return self.work / site(g) / "gateway.log"

    def _db(self, g: int) -> Path:
        from gateway.daemon import DB_NAME

        return self.work / site(g) / "data" / DB_NAME

    def _config(self, g: int) -> str:
        """A gateway's config as an engineer would write it: its meters, and the fleet's [mqtt] settings."""
        from simulators.meter import METER_POINTS

        def value(v: Any) -> str:
            return json.dumps(v, ensure_ascii=False)  # JSON strings and numbers are valid TOML

        assert self.broker is not None
        p = self.plan
        points = "\n".join("[[devices.points]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in raw.items()
                                                          if v is not None) for raw in METER_POINTS)
        text = [f'[site]\nid = "{site(g)}"\n', f"[store]\ndata_dir = {value(str(self.work / site(g) / 'data'))}\n",
                '[log]\nlevel = "warning"\nformat = "json"\n', "[web]\nenabled = false\n",  # 16 on one box
                f'[mqtt]\nhost = "{HOST}"\nport = {self.broker.port}\ntopic_prefix = "{PREFIX}"\n'
                f"replay_rate = {p.replay_rate:g}\nreplay_delay = {p.replay_delay:g}\nlive_window = {p.live_window:g}\n"
                f"reconnect_max = {p.reconnect_max:g}\n"]
        for m in range(p.meters):
            port = self.first_meter_port + g * p.meters + m
            text.append(f'[[buses]]\nid = "bus-{m}"\ndriver = "modbus_tcp"\nhost = "{HOST}"\nport = {port}\n'
                        'timeout = "1s"\n')
            text.append(f'[[devices]]\nid = "{device(g, m)}"\nbus = "bus-{m}"\ninterval = "{p.interval:g}s"\n\n'
                        + points)
        return "\n".join(text)

    def _wait_ready(self) -> None:
        """Until every gateway's birth and every meter's telemetry have reached the platform."""
        sites = {site(g) for g in range(self.plan.gateways)}
        devices = {device(g, m) for g in range(self.plan.gateways) for m in range(self.plan.meters)}
        deadline = time.monotonic() + READY_TIMEOUT + 2 * self.plan.gateways
        while True:
            self.check_alive()
            if self.unexpected_exits:
                name, code = next(iter(self.unexpected_exits.items()))
                g = int(name.rsplit("-", 1)[1])
                raise RuntimeError(f"gateway {name} exited with code {code}{log_tail(self._log(g))}")
            seen = self.seen
            if sites <= set(seen.births) and devices <= seen.devices():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fleet was not up within {READY_TIMEOUT + 2 * self.plan.gateways:g} s:"
                                   f" {len(sites - set(seen.births))} gateway(s) never said online,"
                                   f" {len(devices - seen.devices())} meter(s) never heard from")
            time.sleep(0.1)

    # -- the broker --------------------------------------------------------------------------------

    def broker_down(self) -> float:
        """A graceful stop (sessions saved, as a broker restarted for maintenance); returns when it went."""
        assert self.broker is not None
        self.broker.stop()
        return time.time()

    def broker_up(self) -> tuple[float, float]:
        """Started again on the same port: when it was started, and when it accepted a connection."""
        assert self.broker is not None
        starting = time.time()
        self.broker.start()
        return starting, time.time()

    def broker_pid(self) -> int | None:
        return self.broker.proc.pid if self.broker is not None and self.broker.proc is not None else None

    # -- the gateways, from outside ------------------------------------------------------------------

    def check_alive(self) -> None:
        """Note a gateway that exited when nobody stopped it."""
        for g, proc in enumerate(self.procs):
            if proc.poll() is not None and site(g) not in self.unexpected_exits:
                self.unexpected_exits[site(g)] = proc.returncode

    def _query(self, g: int, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self._db(g)}?mode=ro", uri=True, timeout=2)) as conn:
            return conn.execute(sql, args).fetchall()

    def outbox(self) -> list[int]:
        """Rows in each gateway's outbox now: what it has not delivered."""
        return [int(self._query(g, "SELECT COUNT(*) FROM outbox")[0][0]) for g in range(self.plan.gateways)]

    def holding(self, gateways: set[int], before: float) -> set[int]:
        """Those of ``gateways`` whose outbox still holds a row stored before ``before`` (not drained yet)."""
        out = set()
        for g in gateways:
            try:
                if self._query(g, "SELECT EXISTS (SELECT 1 FROM outbox WHERE created < ?)", before)[0][0]:
                    out.add(g)
            except sqlite3.Error:  # busy beyond the timeout: not known to be drained
                out.add(g)
        return out

    def stored(self, start: float, end: float) -> set[tuple[str, float]]:
        """(device, ts) of every reading the fleet stored (its readings history) polled in [start, end)."""
        out: set[tuple[str, float]] = set()
        for g in range(self.plan.gateways):
            rows = self._query(g, "SELECT device, ts FROM samples WHERE ts >= ? AND ts < ?", start, end)
            out.update((str(d), round(float(ts), 3)) for d, ts in rows)
        return out

    def rss_mb(self) -> list[float]:
        return [memory_mb(p.pid)[0] for p in self.procs if p.poll() is None]

    def stop_gateways(self) -> None:
        """SIGTERM to all at once, as a host shutting down would; SIGKILL to any still there after 15 s."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop_gateways()
        if self.platform is not None:
            self.platform.stop()
        if self.broker is not None:
            self.broker.stop()

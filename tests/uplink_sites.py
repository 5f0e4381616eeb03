"""A site with several uplinks for the tests: meters on real Modbus TCP, brokers that can die, and subscribers
that note when each message arrived (a reading's latency is its arrival minus its ``ts``)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Broker, Collector, until

from gateway.core.data import Reading
from gateway.daemon import Daemon
from gateway.store import Store
from simulators.meter import METER_POINTS

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS
          if p["id"] in ("voltage_a", "current_a", "power_total", "energy_import")]
SITE = "multi-site"
ROOT = f"community/{SITE}"
RECONNECT = 'reconnect_min = "200ms"\nreconnect_max = "1s"\n'


def site_config(data_dir: Path, ports: list[int], mqtt: str, *, uplinks: tuple[str, ...] = (), extra: str = "",
                interval: str = "100ms") -> str:
    """One meter per port (``meter-i`` on ``bus-i``); ``mqtt`` is the body of ``[mqtt]``, each of ``uplinks``
    the body of one ``[[uplinks]]``."""
    out = [f'[site]\nid = "{SITE}"\n', f'[store]\ndata_dir = "{data_dir}"\n', f"[mqtt]\n{mqtt}"]
    out += [f"[[uplinks]]\n{body}" for body in uplinks]
    for i, port in enumerate(ports):
        out.append(f'[[buses]]\nid = "bus-{i}"\ndriver = "modbus_tcp"\nhost = "127.0.0.1"\nport = {port}\n'
                   'timeout = "2s"\n')
        out.append(f'[[devices]]\nid = "meter-{i}"\nbus = "bus-{i}"\ninterval = "{interval}"\n')
        for point in POINTS:
            out.append("[[devices.points]]\n" + "".join(
                f"{k} = {v!r}\n" if isinstance(v, int) else f'{k} = "{v}"\n' for k, v in point.items()))
    return "\n".join(out) + extra


def broker_at(port: int, *, name: str = "", more: str = "") -> str:
    """An uplink body that connects to one local broker."""
    head = f'name = "{name}"\n' if name else ""
    return f'{head}host = "127.0.0.1"\nport = {port}\n{RECONNECT}{more}'


class Timed(Collector):
    """A collector that also notes when each message arrived (wall clock, as a reading's ``ts`` is)."""

    def __init__(self, port: int, topic: str = f"{ROOT}/#") -> None:
        super().__init__(port, topic)
        self.arrived: list[tuple[float, str, dict[str, Any]]] = []

    def _keep(self, topic: str, payload: bytes) -> None:
        before = len(self.messages)
        super()._keep(topic, payload)
        now = time.time()
        self.arrived += [(now, t, m) for t, m in self.messages[before:]]

    def readings(self) -> list[tuple[float, str, float, str]]:
        """(arrival, device, ts, id) of every telemetry message, replay batches unpacked, in arrival order."""
        return [(at, m["device"], m["ts"], m["id"]) for at, _, m in self.arrived if m.get("type") == "telemetry"]

    def of(self, *types: str) -> list[dict[str, Any]]:
        return [m for _, _, m in self.arrived if m.get("type") in types]


def persist_sessions(broker: Broker) -> None:
    """Stop the broker gracefully and start it again, so the sessions of the subscribers already on it
    (clean_session false, with their subscriptions) are on its disk: after a later SIGKILL and restart it queues
    what arrives for them even before they are back, and a test can tell "never sent" from "nobody listened".
    The subscribers reconnect on their own."""
    broker.stop()
    broker.start()


def per_device(readings: list[tuple[float, str, float, str]]) -> dict[str, list[tuple[float, float, str]]]:
    """Each device's readings in arrival order, duplicates (by id, at least once) dropped after the first."""
    seen: set[str] = set()
    out: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for at, device, ts, ident in readings:
        if ident not in seen:
            seen.add(ident)
            out[device].append((at, ts, ident))
    return out


def duplicates(readings: list[tuple[float, str, float, str]]) -> int:
    return len(readings) - len({r[3] for r in readings})


def p50(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def received(collector: Any, wanted: set[tuple[str, float]], within: float = 30.0) -> None:
    """Until every (device, ts) in ``wanted`` has reached ``collector`` (anything with ``readings()``)."""
    def complete() -> bool:
        got = {(d, round(ts, 3)) for _, d, ts, _ in collector.readings()}
        return wanted <= got
    await until(complete, within=within)


async def store_says(daemon: Any, check: Callable[[Store], bool], within: float = 30.0) -> None:
    """Until ``check`` holds of the daemon's store, asked on the store's own thread."""
    async with asyncio.timeout(within):
        while not await daemon.store.run(check, daemon.store.store):  # noqa: ASYNC110 (another thread's state)
            await asyncio.sleep(0.05)


def heard(daemon: Daemon) -> list[tuple[str, float]]:
    """Every reading the bus carries from now on, as (device, ts to the millisecond, as the messages carry it)."""
    carried: list[tuple[str, float]] = []

    def keep(device: str, readings: list[Reading], ts: float) -> None:
        carried.append((device, round(ts, 3)))

    daemon.bus.on_readings(keep)
    return carried

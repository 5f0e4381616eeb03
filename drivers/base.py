"""The small interface every protocol driver implements.

A driver owns one bus (a TCP endpoint, a serial port) and the devices configured on it. The
supervisor in the core calls it; the driver never calls back into the core except through the
readings and events it returns.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import Field

from drivers.scheduler import BusScheduler, Urgency
from gateway.core.config import Duration, Identifier, StrictModel
from gateway.core.data import Event, Reading, Value
from gateway.core.errors import DriverError
from gateway.core.points import PointInfo, WriteSpec


class BusConfig(StrictModel):
    id: Identifier = Field(description="Unique id of this bus, referenced by devices' `bus` key.")
    driver: str
    timeout: Duration = Field(default=1.0, gt=0, le=60, description="Per-transaction timeout.")


class DeviceConfig(StrictModel):
    driver: str = Field(default="", description="The device family; taken from the bus it names, so seldom written.")
    id: Identifier = Field(description="Unique device id; appears in topics, events and the CLI.")
    bus: Identifier = Field(description="Id of the [[buses]] entry this device is reached through.")
    name: str | None = Field(default=None, description="Human name, e.g. \"Tower A main meter\".")
    interval: Duration = Field(default=10.0, ge=0.05, le=86400, description="Poll period.")
    life_safety: bool = Field(
        default=False, description="A fire panel, an elevator: polled and written ahead of everything else on "
                                   "a shared bus.",
    )
    offline_after: int = Field(
        default=3, ge=1, le=100,
        description="Failed polls in a row before the device is declared offline and only probed.",
    )
    probe_max: Duration = Field(
        default=300.0, ge=1, le=86400, description="Longest wait between probes of an offline device.",
    )
    enabled: bool = Field(default=True, description="false: configured but not polled.")
    stale_after: Duration | None = Field(
        default=None, gt=0, le=604800,
        description="A point not refreshed this long is published `stale` once; default: three poll periods.",
    )

    def point_ids(self) -> list[str]:
        return [p.id for p in self.describe()]

    def describe(self) -> list[PointInfo]:
        """The point catalog: what upstream metadata, birth certificates and the CLI read."""
        return []

    def change_events(self) -> dict[str, str]:
        """Point id -> "event" or "alarm" for points whose every change is published."""
        return {}

    def write_spec(self, point: str) -> WriteSpec | None:
        """None when the point does not exist or is not writable."""
        return None

    def is_normal(self, point: str, value: Value) -> bool:
        """Whether a value is a watched point's resting state (no event for it at start-up)."""
        return value in (None, False, 0, 0.0, "")


class Sink(Protocol):
    """Where a streaming driver hands what it hears; the daemon implements it (store, rules, uplink)."""

    def readings(self, device: str, readings: list[Reading]) -> None: ...

    def event(self, event: Event) -> None: ...

    def device_failed(self, device: str, error: DriverError) -> None:
        """A field failure the stream noticed (port vanished, panel silent): device state, not a crash."""

    def device_ok(self, device: str) -> None:
        """The stream hears the device again."""

    def raw(self, device: str, ts: float, data: bytes, parsed: dict[str, Any] | None) -> None:
        """Keep what a line-oriented device said, byte for byte, with what we made of it."""


class Driver(abc.ABC):
    """One bus and its devices. Methods raise DriverError subclasses for field failures only.

    Polled drivers implement ``read``; the core's poller calls it on schedule. Drivers that are
    told things unasked (a fire panel printing events, BACnet change-of-value notifications)
    also implement ``stream``, which the supervisor runs (and restarts) for the bus's lifetime.
    """

    def __init__(self, bus: Any, devices: Sequence[Any]) -> None:
        self.bus = bus
        self.devices = {d.id: d for d in devices}

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def read(self, device: str) -> list[Reading]:
        """Poll every point of one device; points that could not be read come back with bad quality."""

    @abc.abstractmethod
    async def write(self, device: str, point: str, value: Value) -> None:
        """Put a value already checked against the point's WriteSpec on the wire, ahead of polls."""

    def urgency(self, device: DeviceConfig, *, write: bool = False) -> Urgency:
        """Where a transaction for this device waits on a shared bus."""
        if device.life_safety:
            return Urgency.LIFE_SAFETY
        return Urgency.WRITE if write else Urgency.POLL

    scheduler: BusScheduler | None = None
    """The one wire's scheduler, for a driver whose devices share one (Modbus lines and converters)."""

    def wire(self) -> dict[str, float] | None:
        """The shared wire's use since start, for bus utilisation: ``transactions``, ``busy_seconds`` (the wire
        held), ``concurrency`` (transactions it carries at once), ``waiting``; None when the bus has no one wire."""
        return self.scheduler.figures() if self.scheduler is not None else None

    def counters(self, device: str) -> dict[str, int]:
        """What happened on the wire for this device, by kind (timeouts, retries, exceptions by code ...)."""
        return {}

    def findings(self, device: str) -> list[tuple[str, dict[str, Any]]]:
        """What the driver learnt of the device since the last call, each said once: (event kind, data),
        e.g. ("device.point_unreadable", {"point": ..., "address": ...}) or a counter's reset."""
        return []

    def learning(self, device: str) -> int:
        """Goes up whenever something worth storing at once was learnt (a plan change, a counter's wrap)."""
        return 0

    def learned(self, device: str) -> dict[str, Any] | None:
        """What the driver learnt of the device that should survive a restart (read limits, counter totals)."""
        return None

    def restore_learned(self, device: str, data: Any) -> bool:
        """Take back what ``learned`` gave; False if it no longer fits the device's config."""
        return False

    def relearn(self, device: str) -> None:  # noqa: B027 (optional: most drivers learn nothing)
        """Forget what was learnt of the device (`gateway device relearn`)."""

    def unreadable(self, device: str) -> dict[str, str]:
        """Points the device refuses on their own (point -> address and answer), as the driver knows them now."""
        return {}

    def describe(self, device: str) -> list[PointInfo]:
        """The device's point catalog (from its config; a driver may add what the device told it)."""
        config: DeviceConfig = self.devices[device]
        return config.describe()

    async def read_point(self, device: str, point: str) -> Reading:
        """Read one point now (for write read-back); a full read by default."""
        for reading in await self.read(device):
            if reading.point == point:
                return reading
        raise KeyError(point)

    async def poll(self, device: str) -> list[Reading]:
        """What the poller stores each period: a full read, unless some values arrive unasked (COV)."""
        return await self.read(device)

    def polls(self, device: str) -> bool:
        """Whether the core should poll this device (False for purely streaming devices)."""
        return True

    async def stream(self, sink: Sink) -> None:
        """Receive unsolicited data until cancelled; only for drivers that have any."""
        await asyncio.Event().wait()

    async def probe(self, device: str) -> bool:
        """Cheap liveness check used while a device is offline; a full read by default."""
        try:
            await self.read(device)
        except DriverError:
            return False
        return True

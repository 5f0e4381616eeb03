"""The small interface every protocol driver implements.

A driver owns one bus (a TCP endpoint, a serial port) and the devices configured on it. The
supervisor in the core calls it; the driver never calls back into the core except through the
readings and events it returns.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field

from gateway.model import Reading, Value
from gateway.types import Duration, Identifier, StrictModel


class DriverError(Exception):
    """An expected field failure: the device is unwell, the gateway is not."""


class DeviceTimeout(DriverError):
    pass


class DeviceUnreachable(DriverError):
    """The connection could not be made or was lost."""


class ExceptionResponse(DriverError):
    """The device answered with a protocol-level exception (Modbus exception code, BACnet error)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"exception response code {code}")
        self.code = code


class BadResponse(DriverError):
    """The device answered something malformed: wrong length, wrong id, undecodable bytes."""


class WriteRefused(Exception):
    """A write that must not go to the wire: unknown or read-only point, value out of limits."""


class BusConfig(StrictModel):
    id: Identifier = Field(description="Unique id of this bus, referenced by devices' `bus` key.")
    driver: str
    timeout: Duration = Field(default=1.0, gt=0, le=60, description="Per-transaction timeout.")


class DeviceConfig(StrictModel):
    id: Identifier = Field(description="Unique device id; appears in topics, events and the CLI.")
    bus: Identifier = Field(description="Id of the [[buses]] entry this device is reached through.")
    name: str | None = Field(default=None, description="Human name, e.g. \"Tower A main meter\".")
    interval: Duration = Field(default=10.0, ge=0.05, le=86400, description="Poll period.")
    enabled: bool = True

    def point_ids(self) -> list[str]:
        return []


class Driver(abc.ABC):
    """One bus and its devices. Methods raise DriverError subclasses for field failures only."""

    bus_type: ClassVar[type[BusConfig]]
    device_type: ClassVar[type[DeviceConfig]]

    def __init__(self, bus: Any, devices: Sequence[Any]) -> None:
        self.bus = bus
        self.devices = {d.id: d for d in devices}

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def read(self, device: str) -> list[Reading]:
        """Poll every point of one device; points that could not be read come back with bad quality."""

    @abc.abstractmethod
    async def write(self, device: str, point: str, value: Value) -> None: ...

    async def probe(self, device: str) -> bool:
        """Cheap liveness check used while a device is offline; a full read by default."""
        try:
            await self.read(device)
        except DriverError:
            return False
        return True

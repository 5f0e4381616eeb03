"""BACnet/IP on bacpypes3: one local BACnet device per bus, talking to every configured device.

Each device gets its own queue (a ``BusScheduler``), so a write or a life-safety poll goes ahead of
ordinary polls to the same controller while different controllers are served in parallel. On first
contact, and again after it stopped answering, a device is asked what it is: its device object
proves the configured instance lives at that address, its protocol-services-supported says whether
it takes ReadPropertyMultiple and SubscribeCOV, and analog objects' units fill in points that do
not override them. A device that rejects ReadPropertyMultiple anyway is read property by property
from then on; one whose replies are too big gets fewer objects per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import structlog
from bacpypes3.pdu import Address

from drivers.bacnet import codec, stack
from drivers.bacnet.config import BacnetBus, BacnetDevice, BacnetPoint
from drivers.bacnet.cov import CovManager
from drivers.bacnet.stack import Key, Nack, Stack
from drivers.base import Driver, Sink
from drivers.scheduler import BusScheduler, Urgency
from gateway.core.data import Reading, Value
from gateway.core.errors import (
    BadResponse,
    DeviceTimeout,
    DeviceUnreachable,
    DriverError,
    ExceptionResponse,
    WriteRefused,
)
from gateway.core.points import PointInfo

log = structlog.get_logger("drivers.bacnet")
T = TypeVar("T")
Specs = list[tuple[tuple[str, int], list[str]]]


@dataclass(slots=True)
class Contact:
    """What was learned about a device since it last started answering."""

    identified: bool = False
    read_multiple: bool = True  # it takes ReadPropertyMultiple (as far as we know)
    cov: bool = False  # it lists SubscribeCOV among its services
    batch: int = 25
    units: dict[str, str | None] = field(default_factory=dict)


def refused(device: BacnetDevice, nack: Nack) -> ExceptionResponse:
    return ExceptionResponse(nack.code, f"{device.address}: {nack.kind} {nack.reason}")


class BacnetDriver(Driver):

    def __init__(self, bus: BacnetBus, devices: Sequence[BacnetDevice]) -> None:
        super().__init__(bus, devices)
        self.bus: BacnetBus = bus
        self.devices: dict[str, BacnetDevice] = {}
        self.addresses: dict[str, Address] = {}
        self.queues: dict[str, BusScheduler] = {}
        self.contacts: dict[str, Contact] = {}
        for device in devices:
            self.attach(device)
        self.limit = stack.limit_of(bus.timeout, bus.retries)
        self.cov = CovManager(self)
        self._stack: Stack | None = None
        self._opening = asyncio.Lock()

    def attach(self, device: BacnetDevice) -> None:
        """Talk to one more device (the technician tools add those they discover); never subscribes COV."""
        self.devices[device.id] = device
        self.addresses[device.id] = Address(device.address)
        self.queues[device.id] = BusScheduler()
        self.contacts[device.id] = Contact(batch=device.read_multiple_objects)

    # -- the local application ---------------------------------------------------------------------

    async def stack(self) -> Stack:
        async with self._opening:
            if self._stack is None:
                iface = self.bus.interface
                self._stack = stack.open_stack(
                    str(iface.ip), iface.network.prefixlen, self.bus.port, self.bus.instance, name=self.bus.name,
                    timeout=self.bus.timeout, retries=self.bus.retries,
                )
                self._stack.notify = self.cov.notified
        return self._stack

    async def bind(self) -> None:
        """Open the BACnet/IP socket now (the stream's first step; reads open it on demand)."""
        await self.stack()

    async def close(self) -> None:
        if self._stack is not None:
            await self.cov.cancel_all()
            self._stack.close()
            self._stack = None
            await asyncio.sleep(0)  # the sockets close on the next turn of the loop: then the port is free

    async def stream(self, sink: Sink) -> None:
        """Keep COV subscriptions and hand their notifications to the sink, for as long as the bus runs."""
        while True:
            try:
                await self.bind()
                break
            except DriverError as exc:  # the pollers report the same failure per device; retry quietly
                log.debug("bacnet bind failed", bus=self.bus.id, error=str(exc))
                await asyncio.sleep(5.0)
        await self.cov.run(sink)

    # -- transactions ------------------------------------------------------------------------------

    async def request(self, device: str, urgency: Urgency,
                      fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """One transaction in the device's queue. A device that stops answering must be identified again."""
        app = await self.stack()
        async with self.queues[device].slot(urgency):
            try:
                return await fn(app, self.addresses[device], *args, limit=self.limit, **kwargs)
            except (DeviceTimeout, DeviceUnreachable):
                self.contacts[device].identified = False
                self.cov.lost(device)
                raise

    async def identified(self, device_id: str, urgency: Urgency) -> Contact:
        """Ask the device what it is, once per contact: its services and its objects' units."""
        contact = self.contacts[device_id]
        if contact.identified:
            return contact
        device = self.devices[device_id]
        me = ("device", device.device_instance)
        try:
            tags = await self.request(device_id, urgency, stack.read_property, me, "protocol-services-supported")
        except Nack as nack:
            if nack.reason == "object/unknown-object":
                raise ExceptionResponse(nack.code, f"{device.address} is not device {device.device_instance} "
                                                   "(unknown-object): check address and device_instance") from None
            raise refused(device, nack) from None
        try:
            read_multiple, cov = codec.services(tags)
        except ValueError:
            read_multiple, cov = True, True  # unreadable: try both, and fall back if refused
        contact.read_multiple = read_multiple if device.read_multiple is None else device.read_multiple
        contact.cov = cov
        contact.units = await self._units(device, contact, urgency)
        contact.identified = True
        return contact

    async def _units(self, device: BacnetDevice, contact: Contact, urgency: Urgency) -> dict[str, str | None]:
        wanted = [p for p in device.points if p.unit is None and p.property == "present-value"
                  and codec.has_units(p.object_type)]
        specs: Specs = [((p.object_type, p.instance), ["units"]) for p in wanted]
        results = await self.read_specs(device, contact, _unique(specs), urgency)
        return {p.id: _unit(results.get((p.object_type, p.instance, "units"))) for p in wanted}

    async def read_specs(self, device: BacnetDevice, contact: Contact, specs: Specs,
                         urgency: Urgency) -> dict[Key, Any]:
        """Every (object, properties) asked for: by ReadPropertyMultiple where it works, else one by one."""
        if contact.read_multiple:
            results = await self._read_multiple(device, contact, specs, urgency)
            if results is not None:
                return results
        results = {}
        garbled: list[BadResponse] = []
        for obj, props in specs:
            for prop in props:
                try:
                    results[(*obj, prop)] = await self.request(device.id, urgency, stack.read_property, obj, prop)
                except Nack:
                    results[(*obj, prop)] = None  # an error in this value's place
                except BadResponse as exc:
                    results[(*obj, prop)] = None  # nonsense in its place
                    garbled.append(exc)
        if garbled and len(garbled) == len(results):
            raise garbled[-1]  # nothing it said made sense: that is a failed poll, not a row of bad points
        return results

    async def _read_multiple(self, device: BacnetDevice, contact: Contact, specs: Specs,
                             urgency: Urgency) -> dict[Key, Any] | None:
        """None when the device turns out not to take ReadPropertyMultiple at all."""
        results: dict[Key, Any] = {}
        done, garbled, answered = 0, None, False
        while done < len(specs):
            chunk = specs[done:done + contact.batch]
            try:
                results |= await self.request(device.id, urgency, stack.read_multiple, chunk)
                answered = True
            except BadResponse as exc:  # these values are bad; the next request may fare better
                garbled = exc
            except Nack as nack:
                answered = True
                if nack.unsupported:
                    log.warning("ReadPropertyMultiple refused; reading one property at a time",
                                device=device.id, reason=nack.reason)
                    contact.read_multiple = False
                    return None
                if nack.too_big and contact.batch > 1:
                    contact.batch = max(1, contact.batch // 2)
                    continue  # the same objects again, fewer at a time
                if nack.too_big:  # even one object is too much: its properties one by one
                    contact.read_multiple = False
                    return None
                # an error to the whole request (e.g. every object unknown): these values are errors
            done += len(chunk)
        if garbled is not None and not answered:
            raise garbled
        return results

    # -- the Driver interface ----------------------------------------------------------------------

    async def read(self, device: str) -> list[Reading]:
        return await self._read_points(device, self.devices[device].points, self.urgency(self.devices[device]))

    async def poll(self, device: str) -> list[Reading]:
        """Points fed by live COV subscriptions are not asked for; if that is all of them, is it alive?"""
        spec = self.devices[device]
        urgency = self.urgency(spec)
        wanted = [p for p in spec.points if not self.cov.covers(device, p)]
        if wanted:
            return await self._read_points(device, wanted, urgency)
        await self.identified(device, urgency)
        await self._alive(device, urgency)
        return []

    async def _read_points(self, device_id: str, points: Sequence[BacnetPoint], urgency: Urgency) -> list[Reading]:
        device = self.devices[device_id]
        contact = await self.identified(device_id, urgency)
        specs: Specs = []
        for p in points:
            props = [p.property, "status-flags"] if device.status_flags and p.has_status else [p.property]
            specs.append(((p.object_type, p.instance), props))
        results = await self.read_specs(device, contact, _unique(specs), urgency)
        now = time.time()
        return [self.reading(device, contact, p, results.get((p.object_type, p.instance, p.property)),
                             results.get((p.object_type, p.instance, "status-flags")), now) for p in points]

    def reading(self, device: BacnetDevice, contact: Contact, point: BacnetPoint, value: Any, flags: Any,
                ts: float) -> Reading:
        """Pure: what the device said about one point -> a reading (bad where it made no sense)."""
        decoded, quality = codec.decode(value, flags if device.status_flags else None, point.kind, point.states)
        unit = point.unit or contact.units.get(point.id)
        return Reading(device.id, point.id, decoded, unit, quality, ts)

    async def _alive(self, device: str, urgency: Urgency) -> None:
        me = ("device", self.devices[device].device_instance)
        with contextlib.suppress(Nack):  # it answered, if only to complain
            await self.request(device, urgency, stack.read_property, me, "system-status")

    async def probe(self, device: str) -> bool:
        try:
            await self._alive(device, Urgency.PROBE)
        except DriverError:
            return False
        return True

    def describe(self, device: str) -> list[PointInfo]:
        """The config's catalog, with the units the device reported where the config gives none."""
        learned = self.contacts[device].units
        return [replace(info, unit=learned[info.id]) if info.unit is None and learned.get(info.id) else info
                for info in super().describe(device)]

    async def read_point(self, device: str, point: str) -> Reading:
        spec = self.devices[device].point(point)
        if spec is None:
            raise KeyError(point)
        return (await self._read_points(device, [spec], self.urgency(self.devices[device], write=True)))[0]

    async def write(self, device: str, point: str, value: Value) -> None:
        """Command the point's present value at its priority; None relinquishes that priority."""
        spec = self.devices[device]
        target = spec.point(point)
        if target is None or not target.writable:
            raise WriteRefused(f"{device}.{point} is not a writable point")
        if value is not None and not isinstance(value, bool | int | float):
            raise WriteRefused(f"{device}.{point}: cannot write {value!r}")
        atom = codec.encode(target.kind, value)
        try:
            await self.request(device, self.urgency(spec, write=True), stack.write_property,
                               (target.object_type, target.instance), target.property, atom, target.write_priority)
        except Nack as nack:
            raise refused(spec, nack) from None


def _unique(specs: Specs) -> Specs:
    """One entry per object, its properties merged in order: two points on one object cost one spec."""
    merged: dict[tuple[str, int], list[str]] = {}
    for obj, props in specs:
        have = merged.setdefault(obj, [])
        have += [p for p in props if p not in have]
    return list(merged.items())


def _unit(tags: Any) -> str | None:
    return codec.unit_symbol(tags) if tags is not None else None

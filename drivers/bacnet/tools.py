"""Technician tools behind `gateway bacnet`: who is on the network, what a device holds, a config for it.

They use the driver itself (same stack, same ReadPropertyMultiple fallbacks), so what a technician
sees here is what the gateway will see once the device is configured.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from drivers.bacnet import codec, stack
from drivers.bacnet.config import DEFAULT_PORT, BacnetBus, BacnetDevice
from drivers.bacnet.driver import BacnetDriver, Specs
from drivers.bacnet.stack import Nack
from drivers.scheduler import Urgency
from gateway.core.config import IDENTIFIER_PATTERN
from gateway.core.data import Value
from gateway.core.errors import DriverError

TOOL_INSTANCE = 4194302
"""The gateway's device instance when a tool runs without a config: the highest one a device may have."""
_DEVICE_PROPS = ["object-name", "vendor-name", "model-name"]


@dataclass(frozen=True, slots=True)
class Found:
    instance: int
    address: str
    vendor_id: int
    vendor: str | None
    name: str | None
    model: str | None


@dataclass(frozen=True, slots=True)
class ObjectRow:
    object: str  # "analog-input:1"
    name: str | None
    value: Value
    units: str | None
    states: list[str] | None
    flags: str | None  # "in-alarm,fault" or "" when clear; None when the object has none


def broadcast_of(bus: BacnetBus) -> Address:
    """Where a Who-Is goes: the bound subnet's broadcast, or the limited broadcast without a prefix."""
    net = bus.interface.network
    ip = net.broadcast_address if net.prefixlen < 32 else "255.255.255.255"
    return Address(f"{ip}:{bus.port or DEFAULT_PORT}")


async def discover(bus: BacnetBus, to: str | None, wait: float, low: int | None = None,
                   high: int | None = None) -> list[Found]:
    """Who-Is (broadcast, or unicast to ``to``); every device that answers, with its name and vendor."""
    driver = BacnetDriver(bus, [])
    try:
        app = await driver.stack()
        heard = await stack.who_is(app, Address(to) if to else broadcast_of(bus), wait, low, high)
        return list(await asyncio.gather(*(_describe(driver, i) for i in heard)))
    finally:
        await driver.close()


async def _describe(driver: BacnetDriver, i_am: stack.IAm) -> Found:
    device = _probe_device(driver.bus, i_am.address, i_am.instance)
    driver.attach(device)
    texts: dict[str, str | None] = dict.fromkeys(_DEVICE_PROPS)
    try:
        results = await driver.read_specs(device, driver.contacts[device.id],
                                          [(("device", i_am.instance), _DEVICE_PROPS)], Urgency.POLL)
        for prop in _DEVICE_PROPS:
            value, _ = codec.decode(results.get(("device", i_am.instance, prop)), None, "other")
            texts[prop] = str(value) if value is not None else None
    except DriverError:
        pass  # it said I-Am; that it will not say more is worth showing as such
    return Found(i_am.instance, i_am.address, i_am.vendor, texts["vendor-name"], texts["object-name"],
                 texts["model-name"])


def _probe_device(bus: BacnetBus, address: str, instance: int) -> BacnetDevice:
    return BacnetDevice(id=f"device-{instance}", bus=bus.id, address=address, device_instance=instance)


@dataclass(frozen=True, slots=True)
class DeviceObjects:
    address: str
    instance: int
    cov: bool  # the device offers SubscribeCOV
    name: str | None
    objects: list[ObjectRow]


async def device_objects(bus: BacnetBus, address: str, instance: int | None, wait: float) -> DeviceObjects:
    """Everything a config needs about the device at ``address`` (IP[:port] or NET:MAC)."""
    driver = BacnetDriver(bus, [])
    try:
        app = await driver.stack()
        if instance is None:
            instance = await _instance_at(driver, app, address, wait)
        device = _probe_device(bus, address, instance)
        driver.attach(device)
        contact = await driver.identified(device.id, Urgency.POLL)
        ids = await _object_list(driver, device.id, instance)
        specs: Specs = [(obj, _props_of(obj[0])) for obj in ids]
        results = await driver.read_specs(device, contact, specs, Urgency.POLL)
        rows = [_row(obj, results) for obj in ids]
        name = next((r.name for r in rows if r.object == f"device:{instance}"), None)
        return DeviceObjects(device.address, instance, contact.cov, name, rows)
    finally:
        await driver.close()


async def _instance_at(driver: BacnetDriver, app: stack.Stack, address: str, wait: float) -> int:
    """Ask the device at ``address`` who it is: a unicast Who-Is, else a read of the wildcard device."""
    target = Address(address)
    for i_am in await stack.who_is(app, target, min(wait, 2.0)):
        if Address(i_am.address) == target:
            return i_am.instance
    probe = _probe_device(driver.bus, address, codec.MAX_INSTANCE - 1)
    driver.attach(probe)
    tags = await driver.request(probe.id, Urgency.POLL, stack.read_property, ("device", codec.MAX_INSTANCE),
                                "object-identifier")
    atom = codec.atomic(tags)
    if not isinstance(atom, ObjectIdentifier):
        raise ValueError(f"{address} named itself {atom!r}")
    return int(atom[1])


async def _object_list(driver: BacnetDriver, device_id: str, instance: int) -> list[tuple[str, int]]:
    """The device's object list: whole, or element by element from a device that cannot send it at once."""
    me = ("device", instance)
    try:
        atoms = codec.atomics(await driver.request(device_id, Urgency.POLL, stack.read_property, me, "object-list"))
    except Nack as nack:
        if not nack.too_big:
            raise
        count = int(codec.atomic(await driver.request(device_id, Urgency.POLL, stack.read_property, me,
                                                      "object-list", index=0)))
        atoms = [codec.atomic(await driver.request(device_id, Urgency.POLL, stack.read_property, me, "object-list",
                                                   index=i)) for i in range(1, count + 1)]
    return [(str(a[0]), int(a[1])) for a in atoms if isinstance(a, ObjectIdentifier)]


def _props_of(object_type: str) -> list[str]:
    props = ["object-name"]
    if codec.has_status(object_type):
        props += ["present-value", "status-flags"]
    if codec.has_units(object_type):
        props.append("units")
    if codec.kind_of(object_type) == "multistate":
        props.append("state-text")
    return props


def _row(obj: tuple[str, int], results: dict[tuple[str, int, str], Any]) -> ObjectRow:
    def get(prop: str) -> Any:
        return results.get((*obj, prop))

    name, _ = codec.decode(get("object-name"), None, "other")
    value, _ = codec.decode(get("present-value"), None, codec.kind_of(obj[0]))
    flags = None
    if get("status-flags") is not None:
        try:
            bits = codec.status_flags(get("status-flags"))
            labels = ("in-alarm", "fault", "overridden", "out-of-service")
            flags = ",".join(label for label, bit in zip(labels, bits, strict=True) if bit)
        except ValueError:
            flags = "?"
    states = None
    if get("state-text") is not None:
        try:
            states = [str(a) for a in codec.atomics(get("state-text"))]
        except ValueError:
            states = None
    units = codec.unit_symbol(get("units")) if get("units") is not None else None
    return ObjectRow(f"{obj[0]}:{obj[1]}", str(name) if name is not None else None, value, units, states, flags)


def slug(text: str | None, fallback: str) -> str:
    """An object name as a point or device id: "Room CO2" -> "room_co2"."""
    base = re.sub(r"[^a-z0-9]+", "_", (text or "").lower()).strip("_")[:64]
    return base if base and re.match(IDENTIFIER_PATTERN, base) else fallback


def config_block(bus: BacnetBus, found: DeviceObjects, *, device_id: str | None = None,
                 with_bus: bool = False) -> str:
    """A ready-to-paste TOML block: the device and one point per object that has a present value."""
    instance, device_name = found.instance, found.name
    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []
    if with_bus:
        lines += ["[[buses]]", f"id = {q(bus.id)}", 'driver = "bacnet_ip"', f"bind = {q(bus.bind)}",
                  f"instance = {bus.instance}", ""]
    lines += ["[[devices]]", f"id = {q(device_id or slug(device_name, f'device_{instance}'))}", f"bus = {q(bus.id)}"]
    if device_name:
        lines.append(f"name = {q(device_name)}")
    lines += [f"address = {q(found.address)}", f"device_instance = {instance}",
              f"cov = {'true' if found.cov else 'false'}"]
    used: set[str] = set()
    for row in found.objects:
        object_type = row.object.rsplit(":", 1)[0]
        if not codec.has_status(object_type):
            continue
        ident = slug(row.name, row.object.replace("-", "_").replace(":", "_"))
        while ident in used:
            ident += "_2"
        used.add(ident)
        lines += ["", "[[devices.points]]", f"id = {q(ident)}", f"object = {q(row.object)}"]
        if row.states:
            lines.append("states = { " + ", ".join(f"{i} = {q(s)}" for i, s in enumerate(row.states, 1)) + " }")
        if object_type in codec.WRITABLE_TYPES:
            lines.append("# writable = true")
    return "\n".join(lines) + "\n"

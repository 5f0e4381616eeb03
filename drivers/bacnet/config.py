"""Config schema of BACnet/IP buses (the gateway's own BACnet port), devices and points."""

from __future__ import annotations

import builtins
import ipaddress
import re
from types import ModuleType
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from drivers.base import BusConfig, DeviceConfig
from gateway.core.config import Duration, Identifier, RemoteWrite, StrictModel
from gateway.core.data import Value
from gateway.core.points import PointInfo, WriteSpec

if TYPE_CHECKING:
    from drivers.bacnet.codec import Kind

MAX_INSTANCE = 4194303  # 22 bits; 4194303 itself is the "any device" wildcard


def _codec() -> ModuleType:
    """bacpypes3's tables, loaded only when a BACnet point is configured (~20 MB resident)."""
    from drivers.bacnet import codec

    return codec

_BIND = re.compile(r"^(?P<ip>[0-9.]+)(?:/(?P<prefix>\d{1,2}))?(?::(?P<port>\d{1,5}))?$")
_ADDRESS = re.compile(r"^(?:(?P<net>\d{1,5}):)?(?P<ip>[0-9.]+)(?::(?P<port>\d{1,5}))?$")
_ROUTED = re.compile(r"^(?P<net>\d{1,5}):(?P<mac>\d{1,3}|0x[0-9A-Fa-f]{2,12})$")  # an MS/TP station behind a router
DEFAULT_PORT = 47808


def _port(text: str | None, *, spare: bool = False) -> int:
    """A UDP port; ``spare`` allows 0 (any free port) for what the gateway binds."""
    port = DEFAULT_PORT if text is None else int(text)
    if not (0 if spare else 1) <= port <= 65535:
        raise ValueError(f"port {port} is outside {0 if spare else 1}..65535")
    return port


class BacnetBus(BusConfig):
    """The gateway's own BACnet/IP device: one UDP address it binds, shared by every device it talks to."""

    driver: Literal["bacnet_ip"]
    bind: str = Field(
        default=f"0.0.0.0:{DEFAULT_PORT}",
        description="Local IP[/prefix][:port] to bind, e.g. \"192.168.10.5/24:47808\"; the prefix gives the "
                    "subnet broadcast that discovery (Who-Is) uses.",
    )
    instance: int = Field(
        ge=0, lt=MAX_INSTANCE,
        description="Device instance of the gateway itself; must be unique on the site's BACnet network.",
    )
    name: str | None = Field(default=None, max_length=64, description="Object name of the gateway's device.")
    timeout: Duration = Field(default=3.0, gt=0, le=60, description="APDU timeout: how long one try may take.")
    retries: int = Field(default=1, ge=0, le=5, description="Tries after the first before a request fails.")

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, text: str) -> str:
        match = _BIND.match(text.strip())
        if not match:
            raise ValueError(f"{text!r}: write IP[/prefix][:port], e.g. \"0.0.0.0:47808\" or \"192.168.1.5/24\"")
        ipaddress.IPv4Interface(f"{match['ip']}/{match['prefix'] or 32}")
        _port(match["port"], spare=True)
        return text.strip()

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        match = _BIND.match(self.bind)
        assert match is not None  # checked by the validator
        return ipaddress.IPv4Interface(f"{match['ip']}/{match['prefix'] or 32}")

    @property
    def port(self) -> int:
        match = _BIND.match(self.bind)
        assert match is not None
        return _port(match["port"], spare=True)


class BacnetPoint(StrictModel):
    id: Identifier = Field(description="Point id, unique within its device, e.g. \"supply_temp\".")
    object: str = Field(description="Object as TYPE:INSTANCE: \"analog-input:1\", \"binary-output:3\", \"msv:2\".")
    property: str = Field(default="present-value", description="Property to read, e.g. \"present-value\".")
    unit: str | None = Field(
        default=None, max_length=16, description="Engineering unit; default: the object's own units property.",
    )
    states: dict[int, str] | None = Field(
        default=None, description="Names of multi-state values, e.g. { 1 = \"off\", 2 = \"auto\" }.",
    )
    on_change: Literal["event", "alarm"] | None = Field(
        default=None, description="Publish a point.changed event (or alarm) whenever the value changes.",
    )
    writable: bool = Field(default=False, description="May be written (CLI, rules, platform commands).")
    write_priority: int = Field(
        default=8, ge=1, le=16,
        description="Priority array slot a write commands (1 highest, 8 manual operator, 16 lowest).",
    )
    remote: RemoteWrite = False
    min: float | None = Field(default=None, allow_inf_nan=False, description="Lowest value a write may set.")
    max: float | None = Field(default=None, allow_inf_nan=False, description="Highest value a write may set.")
    allowed: list[float] | None = Field(default=None, description="The only values a write may set.")

    @field_validator("object")
    @classmethod
    def _check_object(cls, text: str) -> str:
        object_type, instance = _codec().parse_object(text)
        return f"{object_type}:{instance}"

    @field_validator("property")
    @classmethod
    def _check_property(cls, text: str) -> str:
        return str(_codec().parse_property(text))

    # Field validators (not one model validator) so that `gateway check` points at the offending line.
    @field_validator("states")
    @classmethod
    def _check_states(cls, states: dict[int, str] | None, info: ValidationInfo) -> dict[int, str] | None:
        obj = info.data.get("object")
        if states is not None and obj is not None and _codec().kind_of(obj.rsplit(":", 1)[0]) != "multistate":
            raise ValueError("`states` applies only to multi-state objects")
        return states

    @field_validator("writable")
    @classmethod
    def _check_writable(cls, writable: bool, info: ValidationInfo) -> bool:
        obj, prop = info.data.get("object"), info.data.get("property")
        if not writable or obj is None or prop is None:  # a bad object or property is reported on its own
            return writable
        object_type = obj.rsplit(":", 1)[0]
        if object_type not in _codec().WRITABLE_TYPES:
            raise ValueError(f"{object_type} objects are read-only here; writable points are analog, binary or "
                             "multi-state outputs and values")
        if prop != "present-value":
            raise ValueError("only present-value can be writable")
        return writable

    @field_validator("write_priority")
    @classmethod
    def _check_priority(cls, priority: int) -> int:
        if priority == 6:
            raise ValueError("priority 6 is reserved for minimum on/off time; use another slot")
        return priority

    @model_validator(mode="after")
    def _check_limits(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.remote and not self.writable:
            raise ValueError("remote = true needs writable = true")
        return self

    @builtins.property
    def object_type(self) -> str:
        return self.object.rsplit(":", 1)[0]

    @builtins.property
    def instance(self) -> int:
        return int(self.object.rsplit(":", 1)[1])

    @builtins.property
    def kind(self) -> Kind:
        return _codec().kind_of(self.object_type) if self.property == "present-value" else "other"

    @builtins.property
    def has_status(self) -> bool:
        """Whether the point is a present value whose object also reports status flags (and may do COV)."""
        return self.property == "present-value" and _codec().has_status(self.object_type)

    def write_spec(self) -> WriteSpec | None:
        if not self.writable:
            return None
        if self.kind == "binary":
            return WriteSpec("bool", relinquish=True, remote=self.remote)
        allowed = tuple(self.allowed) if self.allowed else None
        if self.kind == "multistate":
            low = 1.0 if self.min is None else max(1.0, self.min)
            return WriteSpec("number", low, self.max, allowed, self.states, resolution=1.0, relinquish=True,
                             remote=self.remote)
        return WriteSpec("number", self.min, self.max, allowed, None, relinquish=True, remote=self.remote)

    def info(self) -> PointInfo:
        """Its catalog entry: limits are the write's (multi-state values start at 1), none when read-only."""
        spec = self.write_spec()
        return PointInfo(
            id=self.id,
            datatype=_codec().datatype(self.object_type, self.property, self.kind, self.states is not None),
            unit=self.unit,
            writable=self.writable,
            min=spec.min if spec else None,
            max=spec.max if spec else None,
            allowed=spec.allowed if spec else None,
            states=self.states,
            description=f"written at priority {self.write_priority}" if self.writable else "",
            address=self.object if self.property == "present-value" else f"{self.object} {self.property}",
        )


class BacnetDevice(DeviceConfig):
    """A BACnet device reached over IP: a controller, a BACnet/IP router's MS/TP device, a meter."""

    driver: Literal["bacnet"] = "bacnet"
    address: str = Field(
        description="IP[:port] of the device (port 47808 by default); behind a router NET:MAC (\"2:5\") "
                    "or NET:IP[:port].",
    )
    device_instance: int = Field(ge=0, lt=MAX_INSTANCE, description="The device object's instance number.")
    read_multiple: bool | None = Field(
        default=None,
        description="ReadPropertyMultiple: true or false; unset asks the device (protocol-services-supported) "
                    "and falls back to ReadProperty if it rejects it.",
    )
    read_multiple_objects: int = Field(
        default=25, ge=1, le=200,
        description="Objects per ReadPropertyMultiple; halved automatically while a reply is too big.",
    )
    status_flags: bool = Field(
        default=True, description="Also read status-flags: fault or out-of-service make a reading bad.",
    )
    cov: bool = Field(
        default=False,
        description="Subscribe to change-of-value where the device supports it; other points stay polled.",
    )
    cov_lifetime: Duration = Field(
        default=300.0, ge=2, le=28800, description="Subscription lifetime; renewed halfway through.",
    )
    cov_confirmed: bool = Field(
        default=True, description="Ask for confirmed notifications (the device retries them until acknowledged).",
    )
    points: list[BacnetPoint] = Field(default_factory=list, description="Objects and properties to read.")

    @field_validator("address")
    @classmethod
    def _check_address(cls, text: str) -> str:
        routed = _ROUTED.match(text.strip())
        if routed and not 1 <= int(routed["net"]) <= 65534:
            raise ValueError(f"network number {routed['net']} is outside 1..65534")
        if routed:
            return text.strip()
        match = _ADDRESS.match(text.strip())
        if not match:
            raise ValueError(f"{text!r}: write IP[:port] (\"192.168.1.20\") or NET:IP[:port] behind a router")
        ip = ipaddress.IPv4Address(match["ip"])
        if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
            raise ValueError(f"{ip} cannot be a device's address")
        if match["net"] is not None and not 1 <= int(match["net"]) <= 65534:
            raise ValueError(f"network number {match['net']} is outside 1..65534")
        port = _port(match["port"])
        net = f"{match['net']}:" if match["net"] else ""
        return f"{net}{ip}:{port}"

    def describe(self) -> list[PointInfo]:
        """Every point, in config order; ``address`` is the object ("analog-value:3"), and the property
        when it is not the present value. Units the config leaves out come from the device at run time
        (``BacnetDriver.describe``)."""
        return [p.info() for p in self.points]

    def change_events(self) -> dict[str, str]:
        return {p.id: p.on_change for p in self.points if p.on_change}

    def point(self, point: str) -> BacnetPoint | None:
        return next((p for p in self.points if p.id == point), None)

    def write_spec(self, point: str) -> WriteSpec | None:
        p = self.point(point)
        return None if p is None else p.write_spec()

    def is_normal(self, point: str, value: Value) -> bool:
        spec = self.point(point)
        if spec is not None and spec.states and value == spec.states.get(1):
            return True  # multi-state values count from 1; the first state is the resting one by convention
        return super().is_normal(point, value)

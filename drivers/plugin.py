"""What a driver package exports: one ``PLUGIN`` object, so the core knows no protocol by name.

The registry finds every package under ``drivers/`` that exports ``PLUGIN`` (and every installed
distribution that names one under the ``community_gateway.drivers`` entry-point group), and builds
the config unions from their models, the way Frigate builds its detector union.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.base import BusConfig, DeviceConfig, Driver
from gateway.core.config import Problem

Indexed = Sequence[tuple[int, Any]]
"""(index in the config file's list, entry): problems point at the entry's line."""


def unique_per_bus(devices: Indexed, key: str, what: str) -> list[Problem]:
    """One value of ``key`` per bus (a Modbus unit id, a BACnet device instance): two would answer as one."""
    problems: list[Problem] = []
    seen: dict[tuple[str, Any], str] = {}
    for index, device in devices:
        value = getattr(device, key)
        if (device.bus, value) in seen:
            problems.append(Problem(("devices", index, key), f"{what} {value} on bus {device.bus!r} is already "
                                    f"device {seen[(device.bus, value)]!r}", value))
        seen.setdefault((device.bus, value), device.id)
    return problems


def load_object(ref: str) -> Any:
    """Import ``"package.module:name"``; a plugin that fails to import fails loudly, naming itself."""
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"cannot load {ref!r}: {exc}") from exc


@dataclass(frozen=True)
class DriverPlugin:
    """One protocol family: its config models, its driver (imported on first use) and its checks."""

    name: str
    """The family, and the ``driver`` tag of its devices ("modbus"): buses name their own kinds."""
    buses: tuple[type[BusConfig], ...]
    """Bus models; each has a ``driver: Literal[...]`` naming its kind ("modbus_tcp")."""
    device: type[DeviceConfig]
    driver: str
    """``"module:Class"`` of the Driver subclass, imported when a bus of this family is configured:
    a protocol stack can be heavy (bacpypes3 alone costs ~20 MB resident)."""
    validate: Callable[[Indexed, Indexed], list[Problem]] | None = None
    """Protocol rules across entries (unit ids unique per bus, ...): (buses, devices) of this family."""
    commands: str | None = None
    """``"module:function"`` adding technician commands to the CLI: called with the CLI's subparsers."""
    simulate: str | None = None
    """``"module:function"`` adding ``gateway simulate <...>``: called with that command's subparsers."""
    bench: str | None = None
    """``"module:function"`` adding ``gateway bench <...>``: called with that command's subparsers."""
    default: bool = False
    """The family a device naming no known bus is checked as (its other keys are still checked)."""
    _class: list[type[Driver]] = field(default_factory=list, repr=False, compare=False)

    @property
    def bus_kinds(self) -> tuple[str, ...]:
        return tuple(_literal(bus, "driver") for bus in self.buses)

    def driver_class(self) -> type[Driver]:
        if not self._class:
            cls = load_object(self.driver)
            if not (isinstance(cls, type) and issubclass(cls, Driver)):
                raise TypeError(f"{self.driver} is not a Driver subclass")
            self._class.append(cls)
        return self._class[0]


def _literal(model: type[Any], name: str) -> str:
    values = typing.get_args(model.model_fields[name].annotation)
    if len(values) != 1 or not isinstance(values[0], str):
        raise TypeError(f"{model.__name__}.{name} must be a Literal of one string")
    return str(values[0])

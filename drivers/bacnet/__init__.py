"""BACnet/IP: configured devices and points, ReadPropertyMultiple, change-of-value, prioritised writes."""

from __future__ import annotations

from drivers.bacnet.config import BacnetBus, BacnetDevice
from drivers.plugin import DriverPlugin, Indexed
from gateway.core.config import Problem


def validate(buses: Indexed, devices: Indexed) -> list[Problem]:
    """A device instance is unique on a BACnet network."""
    problems: list[Problem] = []
    seen: dict[tuple[str, int], str] = {}
    for index, device in devices:
        key = (device.bus, device.device_instance)
        if key in seen:
            problems.append(Problem(("devices", index, "device_instance"),
                                    f"device {device.device_instance} on bus {device.bus!r} is already {seen[key]!r}",
                                    device.device_instance))
        seen.setdefault(key, device.id)
    return problems


PLUGIN = DriverPlugin(
    name="bacnet",
    buses=(BacnetBus,),
    device=BacnetDevice,
    driver="drivers.bacnet.driver:BacnetDriver",  # bacpypes3 costs ~20 MB: only where a bus uses it
    validate=validate,
    commands="drivers.bacnet.cli:add_commands",
    simulate="simulators.commands:add_bacnet",
    bench="gateway.bench.bacnet:add_command",
)

"""BACnet/IP: configured devices and points, ReadPropertyMultiple, change-of-value, prioritised writes."""

from __future__ import annotations

from drivers.bacnet.config import BacnetBus, BacnetDevice
from drivers.plugin import DriverPlugin, Indexed, unique_per_bus
from gateway.core.config import Problem


def validate(buses: Indexed, devices: Indexed) -> list[Problem]:
    """A device instance is unique on a BACnet network."""
    return unique_per_bus(devices, "device_instance", "device")


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

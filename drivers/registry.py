"""The explicit list of drivers. A driver that fails to import fails here, loudly.

Config classes are imported at once (the schema needs them). Driver classes whose protocol stack
is heavy are named here and imported when a bus of theirs is configured: bacpypes3 alone costs
about 20 MB resident, which a box without BACnet should not pay.
"""

from __future__ import annotations

import importlib
from typing import Annotated

from pydantic import Field

from drivers.bacnet.config import BacnetBus, BacnetDevice
from drivers.base import Driver
from drivers.firepanel.config import FirePanel, SerialLineBus
from drivers.firepanel.driver import FirePanelDriver
from drivers.modbus.config import ModbusDevice, ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
from drivers.modbus.driver import ModbusDriver

DRIVERS: dict[str, type[Driver] | str] = {
    "modbus_tcp": ModbusDriver,
    "modbus_rtu": ModbusDriver,
    "modbus_rtu_tcp": ModbusDriver,
    "serial_lines": FirePanelDriver,
    "bacnet_ip": "drivers.bacnet.driver:BacnetDriver",
}
"""Bus driver name -> driver class, or "module:Class" for one imported on first use."""

FAMILIES: dict[str, str] = {
    "modbus_tcp": "modbus", "modbus_rtu": "modbus", "modbus_rtu_tcp": "modbus",
    "serial_lines": "firepanel", "bacnet_ip": "bacnet",
}
"""Bus driver name -> the device family it carries (the `driver` tag of its devices)."""

AnyBus = Annotated[
    ModbusTcpBus | ModbusRtuOverTcpBus | ModbusRtuBus | SerialLineBus | BacnetBus, Field(discriminator="driver")
]
# Devices are a union chosen by the family of the bus they name (see family_of).
AnyDevice = Annotated[ModbusDevice | FirePanel | BacnetDevice, Field(discriminator="driver")]

DEFAULT_FAMILY = "modbus"


def driver_class(name: str) -> type[Driver]:
    entry = DRIVERS[name]
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = getattr(importlib.import_module(module), cls)
        assert isinstance(entry, type) and issubclass(entry, Driver), entry
        DRIVERS[name] = entry
    return entry


def family_of(driver: object) -> str:
    """Device family a bus driver carries ("modbus_tcp" and "modbus_rtu" both carry "modbus")."""
    return FAMILIES.get(driver, DEFAULT_FAMILY) if isinstance(driver, str) else DEFAULT_FAMILY

"""The explicit list of drivers. A driver that fails to import fails here, loudly, at startup."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from drivers.base import Driver
from drivers.firepanel.config import FirePanel, SerialLineBus
from drivers.firepanel.driver import FirePanelDriver
from drivers.modbus.config import ModbusDevice, ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
from drivers.modbus.driver import ModbusDriver

DRIVERS: dict[str, type[Driver]] = {
    "modbus_tcp": ModbusDriver,
    "modbus_rtu": ModbusDriver,
    "modbus_rtu_tcp": ModbusDriver,
    "serial_lines": FirePanelDriver,
}
"""Bus driver name -> driver class. The driver's ``device_type`` says which devices it carries."""

AnyBus = Annotated[
    ModbusTcpBus | ModbusRtuOverTcpBus | ModbusRtuBus | SerialLineBus, Field(discriminator="driver")
]
# Devices are a union chosen by the family of the bus they name (see family_of).
AnyDevice = Annotated[ModbusDevice | FirePanel, Field(discriminator="driver")]


DEFAULT_FAMILY = "modbus"


def family_of(driver: object) -> str:
    """Device family a bus driver carries ("modbus_tcp" and "modbus_rtu" both carry "modbus")."""
    if not isinstance(driver, str) or driver not in DRIVERS:
        return DEFAULT_FAMILY
    return str(DRIVERS[driver].device_type.model_fields["driver"].default)

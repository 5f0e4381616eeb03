"""The explicit list of drivers. A driver that fails to import fails here, loudly, at startup."""

from __future__ import annotations

from drivers.base import Driver
from drivers.modbus.config import ModbusDevice, ModbusTcpBus
from drivers.modbus.driver import ModbusDriver

DRIVERS: dict[str, type[Driver]] = {
    "modbus_tcp": ModbusDriver,
}
"""Bus driver name -> driver class. The driver's ``device_type`` says which devices it carries."""

# One family each for now. When a second family arrives (BACnet), these become discriminated
# unions: buses on their `driver` key, devices on the family of the bus they name.
AnyBus = ModbusTcpBus
AnyDevice = ModbusDevice


def family_of(driver: str) -> str:
    """Device family a bus driver carries ("modbus_tcp" and "modbus_rtu" both carry "modbus")."""
    default = DRIVERS[driver].device_type.model_fields["driver"].default
    return str(default)

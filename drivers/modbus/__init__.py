"""Modbus TCP, RTU on RS-485, and RTU tunnelled over TCP: one driver, three kinds of bus."""

from __future__ import annotations

from drivers.modbus.config import ModbusDevice, ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
from drivers.plugin import DriverPlugin, Indexed, unique_per_bus
from gateway.core.config import Problem


def validate(buses: Indexed, devices: Indexed) -> list[Problem]:
    """One unit id names one device on a bus: two would answer the same requests."""
    return unique_per_bus(devices, "unit", "unit")


PLUGIN = DriverPlugin(
    name="modbus",
    buses=(ModbusTcpBus, ModbusRtuOverTcpBus, ModbusRtuBus),
    device=ModbusDevice,
    driver="drivers.modbus.driver:ModbusDriver",
    validate=validate,
    commands="drivers.modbus.cli:add_commands",
    default=True,  # the commonest field device: a device whose bus is missing is checked as one
)

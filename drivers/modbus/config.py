"""Config schema of Modbus buses, devices and register points."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from drivers.base import BusConfig, DeviceConfig
from drivers.modbus.codec import DataType, Order, Table, register_count
from gateway.types import Duration, Identifier, StrictModel


class ModbusTcpBus(BusConfig):
    """A Modbus TCP endpoint (a meter's own IP, or a TCP-to-RS485 converter shared by many unit ids)."""

    driver: Literal["modbus_tcp"]
    host: str = Field(min_length=1, description="IP address or host name.")
    port: int = Field(default=502, ge=1, le=65535)


class ModbusPoint(StrictModel):
    id: Identifier = Field(description="Point id, unique within its device, e.g. \"voltage_a\".")
    table: Table = Field(default=Table.HOLDING, description="holding, input, coil or discrete.")
    address: int = Field(ge=0, le=65535, description="Zero-based register or bit address on the wire.")
    type: DataType = Field(default=DataType.UINT16, description="How the register(s) are decoded.")
    word_order: Order = Field(default=Order.BIG, description="Order of 16-bit words in multi-register values.")
    byte_order: Order = Field(default=Order.BIG, description="Order of the two bytes inside each register.")
    bit: int | None = Field(default=None, ge=0, le=15, description="For type=bool on a register: which bit.")
    scale: float = Field(default=1.0, allow_inf_nan=False, description="value = raw * scale + offset.")
    offset: float = Field(default=0.0, allow_inf_nan=False)
    unit: str | None = Field(default=None, max_length=16, description="Engineering unit, e.g. \"V\", \"kWh\".")

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        bit_table = self.table in (Table.COIL, Table.DISCRETE)
        if bit_table and self.type is not DataType.BOOL:
            raise ValueError(f"a {self.table.value} point holds one bit: its type must be \"bool\"")
        if self.bit is not None and (bit_table or self.type is not DataType.BOOL):
            raise ValueError("`bit` applies only to type \"bool\" on holding or input registers")
        width = 1 if bit_table else register_count(self.type)
        if self.address + width > 65536:
            raise ValueError(f"address {self.address} + {width} registers runs past 65535")
        return self


class ModbusDevice(DeviceConfig):
    """A Modbus slave: a meter, an elevator controller, a panel."""

    driver: Literal["modbus"] = "modbus"
    unit: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id.")
    timeout: Duration | None = Field(default=None, description="Overrides the bus timeout for this unit.")
    max_registers: int = Field(default=125, ge=1, le=125, description="Largest register read (protocol max 125).")
    max_bits: int = Field(default=2000, ge=1, le=2000, description="Largest coil/discrete read.")
    max_gap: int = Field(
        default=16, ge=0, le=124,
        description="Unused registers a read may span to join two points (0 = never bridge a gap).",
    )
    points: list[ModbusPoint] = Field(default_factory=list, description="Register map.")

    def point_ids(self) -> list[str]:
        return [p.id for p in self.points]

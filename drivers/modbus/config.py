"""Config schema of Modbus buses, devices and register points."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from drivers.base import BusConfig, DeviceConfig
from drivers.modbus import profiles
from drivers.modbus.codec import DataType, Order, Table, register_count
from drivers.modbus.profiles import apply_profile
from gateway.core.config import Duration, Identifier, RemoteWrite, SerialPortConfig, StrictModel
from gateway.core.data import Value
from gateway.core.points import Datatype, PointInfo, WriteSpec


class ModbusTcpBus(BusConfig):
    """A Modbus TCP endpoint: a meter's own IP, or a TCP-to-RS485 converter shared by many unit ids."""

    driver: Literal["modbus_tcp"]
    host: str = Field(min_length=1, description="IP address or host name.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port (502 is Modbus's own).")
    max_in_flight: int = Field(
        default=1, ge=1, le=16,
        description="Transactions at once (one connection each). Converters to RS-485 want 1.",
    )
    gap: Duration = Field(default=0.0, ge=0, le=5, description="Quiet time between transactions.")


class ModbusRtuOverTcpBus(ModbusTcpBus):
    """Raw RTU frames tunnelled through a transparent serial server (no MBAP header)."""

    driver: Literal["modbus_rtu_tcp"]  # type: ignore[assignment]
    gap: Duration = Field(default=0.005, ge=0, le=5, description="Quiet time between transactions.")


class ModbusRtuBus(BusConfig, SerialPortConfig):
    """An RS-485 line on a local serial port: one transaction at a time, a quiet gap between frames."""

    driver: Literal["modbus_rtu"]
    gap: Duration | None = Field(
        default=None, ge=0, le=5,
        description="Quiet time between frames; default 3.5 character times (at least 1.75 ms).",
    )

    @property
    def frame_gap(self) -> float:
        return self.gap if self.gap is not None else max(3.5 * self.char_time, 0.00175)


class CounterConfig(StrictModel):
    bits: Literal[16, 32, 64] = Field(description="Width of the counting register, where it wraps to 0.")


class ModbusPoint(StrictModel):
    id: Identifier = Field(description="Point id, unique within its device, e.g. \"voltage_a\".")
    table: Table = Field(default=Table.HOLDING, description="holding, input, coil or discrete.")
    address: int = Field(ge=0, le=65535, description="Zero-based register or bit address on the wire.")
    type: DataType = Field(default=DataType.UINT16, description="How the register(s) are decoded.")
    word_order: Order = Field(default=Order.BIG, description="Order of 16-bit words in multi-register values.")
    byte_order: Order = Field(default=Order.BIG, description="Order of the two bytes inside each register.")
    bit: int | None = Field(default=None, ge=0, le=15, description="For type=bool on a register: which bit.")
    scale: float = Field(default=1.0, allow_inf_nan=False, description="value = raw * scale + offset.")
    offset: float = Field(default=0.0, allow_inf_nan=False, description="Added after scaling.")
    unit: str | None = Field(default=None, max_length=16, description="Engineering unit, e.g. \"V\", \"kWh\".")
    states: dict[int, str] | None = Field(
        default=None, description="Names for enumerated values, e.g. { 0 = \"closed\", 2 = \"open\" }.",
    )
    on_change: Literal["event", "alarm"] | None = Field(
        default=None, description="Publish a point.changed event (or alarm) whenever the value changes.",
    )
    writable: bool = Field(default=False, description="May be written (CLI, rules, platform commands).")
    remote: RemoteWrite = False
    min: float | None = Field(default=None, allow_inf_nan=False, description="Lowest value a write may set.")
    max: float | None = Field(default=None, allow_inf_nan=False, description="Highest value a write may set.")
    allowed: list[float] | None = Field(default=None, description="The only values a write may set.")
    counter: CounterConfig | None = Field(
        default=None,
        description="An energy or volume register that only counts up: publish a running total across the "
                    "register's wrap and across meter resets, e.g. { bits = 32 }.",
    )

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
        if self.writable and self.table in (Table.INPUT, Table.DISCRETE):
            raise ValueError(f"{self.table.value} points are read-only on the wire; they cannot be writable")
        if self.writable and self.type is DataType.BOOL and self.table is Table.HOLDING:
            raise ValueError("writing single bits of a register is not supported; write the whole register")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.remote and not self.writable:
            raise ValueError("remote = true needs writable = true")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.counter is not None and (self.type in (DataType.BOOL, DataType.FLOAT32, DataType.FLOAT64)
                                         or self.states is not None or self.scale < 0):
            raise ValueError("a counter is an unsigned integer register with a positive scale and no states")
        return self

    @property
    def datatype(self) -> Datatype:
        """What the driver's readings of the point hold (drivers/modbus/values.py ``scaled`` and ``named``)."""
        if self.type is DataType.BOOL:
            return "bool"
        if self.states is not None:
            return "string"  # read as the state's name ("unknown_7" for a code the map does not name)
        if self.type in (DataType.FLOAT32, DataType.FLOAT64) or self.scale != 1.0 or self.offset != 0.0:
            return "float"  # raw * scale + offset is a float even when the scale is 2.0
        return "int"

    def write_spec(self) -> WriteSpec | None:
        if not self.writable:
            return None
        if self.type is DataType.BOOL:
            return WriteSpec("bool", remote=self.remote)
        integer = self.type not in (DataType.FLOAT32, DataType.FLOAT64)
        return WriteSpec(
            "number", self.min, self.max, tuple(self.allowed) if self.allowed else None, self.states,
            resolution=abs(self.scale) if integer else 0.0, origin=self.offset, remote=self.remote,
        )

    def info(self) -> PointInfo:
        """Its catalog entry: limits are the write's, so a read-only point has none."""
        spec = self.write_spec()
        return PointInfo(
            id=self.id,
            datatype=self.datatype,
            unit=self.unit,
            writable=self.writable,
            min=spec.min if spec else None,
            max=spec.max if spec else None,
            allowed=spec.allowed if spec else None,
            states=self.states,
            description=self.encoding(),
            address=f"{self.table.value} {self.address}" + (f" bit {self.bit}" if self.bit is not None else ""),
        )

    def encoding(self) -> str:
        """How the value sits in its registers ("int16 * 0.1 - 40"); empty for a coil or discrete input."""
        if self.table in (Table.COIL, Table.DISCRETE):
            return ""
        number = self.type is not DataType.BOOL
        text = self.type.value if number else "non-zero register" if self.bit is None else ""
        if self.scale != 1.0 and number:
            text += f" * {_number(self.scale)}"
        if self.offset != 0.0 and number:
            text += f" {'-' if self.offset < 0 else '+'} {_number(abs(self.offset))}"
        if register_count(self.type) > 1 and self.word_order is Order.LITTLE:
            text += ", words little-endian"
        if self.byte_order is Order.LITTLE and (number or self.bit is not None):
            text += ", bytes swapped"
        return text.removeprefix(", ")


class ModbusDevice(DeviceConfig):
    """A Modbus slave: a meter, an elevator controller, a panel."""

    driver: Literal["modbus"] = "modbus"
    unit: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id.")
    timeout: Duration | None = Field(
        default=None, gt=0, le=60, description="How long this device's replies may take; default: the bus's timeout.",
    )
    retries: int = Field(
        default=1, ge=0, le=5,
        description="Immediate tries again of a read whose reply was lost (only while the device answers).",
    )
    profile: str | None = Field(
        default=None, description="A shipped register map (`gateway profiles list`); points below override it.",
    )
    exclude: list[str] = Field(default_factory=list, description="Profile points not to poll.")
    max_registers: int = Field(default=125, ge=1, le=125, description="Largest register read (protocol max 125).")
    max_bits: int = Field(default=2000, ge=1, le=2000, description="Largest coil/discrete read.")
    max_gap: int = Field(
        default=16, ge=0, le=124,
        description="Unused registers a read may span to join two points (0 = never bridge a gap).",
    )
    points: list[ModbusPoint] = Field(default_factory=list, description="Register map (or overrides of the profile).")

    @model_validator(mode="before")
    @classmethod
    def _merge_profile(cls, data: Any) -> Any:
        return apply_profile(data)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str | None) -> str | None:
        if name is not None and name not in profiles.available():
            raise ValueError(f"unknown profile {name!r} (profiles: {', '.join(profiles.available())})")
        return name

    @model_validator(mode="after")
    def _excluded_exist(self) -> Self:
        """`exclude` names profile points: one that names nothing would silently poll what it meant to drop."""
        if not self.exclude:
            return self
        if self.profile is None:
            raise ValueError("`exclude` leaves out points of a `profile`; without one, delete the point instead")
        shipped = {p["id"] for p in profiles.load(self.profile).get("points", [])}
        unknown = [name for name in self.exclude if name not in shipped]
        if unknown:
            raise ValueError(f"`exclude` names {unknown[0]!r}, which profile {self.profile!r} does not have "
                             "(a point of your own is removed by deleting its [[devices.points]])")
        return self

    def describe(self) -> list[PointInfo]:
        """Every point, in config order (profile points after the device's own).

        Limits are the write limits, so only writable points have them. ``address`` is the table and
        the zero-based address as the config writes them ("holding 22", "holding 22 bit 1", "coil 0"),
        ``description`` the encoding on the wire ("int16 * 0.1 - 40").
        """
        return [p.info() for p in self.points]

    def change_events(self) -> dict[str, str]:
        return {p.id: p.on_change for p in self.points if p.on_change}

    def write_spec(self, point: str) -> WriteSpec | None:
        p = next((p for p in self.points if p.id == point), None)
        return None if p is None else p.write_spec()

    def is_normal(self, point: str, value: Value) -> bool:
        spec = next((p for p in self.points if p.id == point), None)
        if spec is not None and spec.states and value == spec.states.get(0):
            return True  # the state numbered 0 is the resting state by convention ("normal", "closed")
        return super().is_normal(point, value)


def _number(x: float) -> str:
    short = f"{x:g}"
    return short if float(short) == x else repr(x)

"""Raw register values as the device means them: scaled, rounded to what the scale can say, named."""

from __future__ import annotations

import decimal
import functools

from drivers.modbus.codec import DataType
from drivers.modbus.config import ModbusPoint
from gateway.core.data import Value
from gateway.core.numbers import float32_shortest


@functools.cache
def decimals(number: float) -> int:
    """Digits after the point a decimal scale or offset carries: 0.1 -> 1, 0.05 -> 2, 10 -> 0."""
    exponent = decimal.Decimal(repr(number)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def scaled(raw: int | float | bool, point: ModbusPoint) -> Value:
    """raw * scale + offset, without float noise: a register of 319 at scale 0.1 is 31.9, not 31.900000000000002.

    An integer register times a decimal scale holds exactly as many decimals as the scale and offset
    have; a float register keeps its own significance (its shortest float32 form, then 12 digits).
    """
    if isinstance(raw, bool):
        return raw
    if point.type is DataType.FLOAT32 and isinstance(raw, float):
        raw = float32_shortest(raw)  # before scaling, which would smear the noise into more digits
    if point.scale == 1.0 and point.offset == 0.0:
        return raw
    value = raw * point.scale + point.offset
    if isinstance(raw, int):
        return round(value, max(decimals(point.scale), decimals(point.offset)))
    return float(f"{value:.12g}") if value == value and abs(value) != float("inf") else value


def named(value: Value, point: ModbusPoint) -> Value:
    """Enumerated points read as their state names; an undocumented code stays visible as such."""
    if point.states is None or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return point.states.get(int(value), f"unknown_{int(value)}")

"""What a point is, independent of its protocol: what a write may carry, what the catalog says of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Datatype = Literal["bool", "int", "float", "string"]


@dataclass(frozen=True, slots=True)
class WriteSpec:
    """What a write to one point may carry, independent of the protocol."""

    kind: Literal["bool", "number"]
    min: float | None = None
    max: float | None = None
    allowed: tuple[float, ...] | None = None
    states: dict[int, str] | None = None
    resolution: float = 0.0  # smallest step the device stores (read-back is compared within half of it)
    origin: float = 0.0
    """Where the steps start: values a device stores are origin + k * resolution (a register's offset)."""
    relinquish: bool = False  # a write of "null" withdraws the command (BACnet priority arrays)
    remote: bool | Literal["life_safety"] = False
    """Whether the platform may write it over MQTT; "life_safety" also on a life-safety device."""


@dataclass(frozen=True, slots=True)
class PointInfo:
    """One entry of a device's point catalog: what upstream metadata, birth certificates and the CLI show.

    ``datatype`` is what the point's values are once decoded (``int`` for a 16-bit register read
    unscaled, ``float`` once a scale applies), not the wire encoding.
    """

    id: str
    datatype: Datatype
    unit: str | None = None
    writable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple[float, ...] | None = None
    states: dict[int, str] | None = None
    description: str = ""
    address: str = ""  # where the point lives on the wire, as the protocol writes it ("holding 40001")

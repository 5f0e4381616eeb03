"""Pure BACnet conversions: names in the config, tag lists from the wire, values and qualities.

No I/O here, so all of it is testable without a network. What a device sends is hostile input:
a present value may come back as any application type (an Unsigned where a Real belongs, a
constructed value, a malformed Real), so values are decoded from their own tags, not from the
type the standard promises, and anything that does not make sense becomes a ``bad`` reading.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

from bacpypes3.apdu import AbortPDU, ErrorRejectAbortNack, RejectPDU
from bacpypes3.basetypes import BinaryPV, EngineeringUnits, PropertyIdentifier, ServicesSupported
from bacpypes3.primitivedata import (
    Atomic,
    BitString,
    Boolean,
    CharacterString,
    Double,
    Enumerated,
    Integer,
    Null,
    ObjectType,
    OctetString,
    Real,
    TagClass,
    TagList,
    Unsigned,
)
from bacpypes3.vendor import get_vendor_info

from gateway.core.data import Quality, Value
from gateway.core.numbers import float32_shortest
from gateway.core.points import Datatype

Kind = Literal["analog", "binary", "multistate", "other"]

MAX_INSTANCE = 4194303  # 22 bits; 4194303 itself is the "any device" wildcard
ALIASES = {
    "ai": "analog-input", "ao": "analog-output", "av": "analog-value",
    "bi": "binary-input", "bo": "binary-output", "bv": "binary-value",
    "msi": "multi-state-input", "mso": "multi-state-output", "msv": "multi-state-value",
}
WRITABLE_TYPES = frozenset({
    "analog-output", "analog-value", "binary-output", "binary-value", "multi-state-output", "multi-state-value",
})
_OBJECT = re.compile(r"^\s*([A-Za-z0-9-]+)\s*[:,]\s*(\d+)\s*$")

# Engineering units a technician expects to read as symbols; others keep BACnet's own name.
_SYMBOLS = {
    "degreesCelsius": "°C", "degreesFahrenheit": "°F", "degreesKelvin": "K", "deltaDegreesKelvin": "K",
    "deltaDegreesFahrenheit": "°F", "percent": "%", "percentRelativeHumidity": "%RH", "partsPerMillion": "ppm",
    "partsPerBillion": "ppb", "pascals": "Pa", "hectopascals": "hPa", "kilopascals": "kPa", "bars": "bar",
    "millibars": "mbar", "poundsForcePerSquareInch": "psi", "inchesOfWater": "inH2O", "volts": "V",
    "millivolts": "mV", "kilovolts": "kV", "amperes": "A", "milliamperes": "mA", "watts": "W", "kilowatts": "kW",
    "kilowattHours": "kWh", "megawattHours": "MWh", "kilovoltAmperes": "kVA", "hertz": "Hz",
    "revolutionsPerMinute": "rpm", "cubicMeters": "m³", "cubicMetersPerHour": "m³/h", "cubicMetersPerSecond": "m³/s",
    "liters": "l", "litersPerSecond": "l/s", "litersPerMinute": "l/min", "usGallonsPerMinute": "gpm",
    "cubicFeetPerMinute": "cfm", "metersPerSecond": "m/s", "meters": "m", "millimeters": "mm",
    "kilograms": "kg", "seconds": "s", "minutes": "min", "hours": "h", "days": "d", "decibels": "dB",
    "microgramsPerCubicMeter": "µg/m³", "kilojoules": "kJ", "joules": "J", "degreesAngular": "°",
}


def parse_object(text: str) -> tuple[str, int]:
    """'analog-input:3', 'analog-input,3', 'analogInput:3', 'ai:3' or '130:1' -> ('analog-input', 3)."""
    match = _OBJECT.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an object: write TYPE:INSTANCE, e.g. \"analog-input:1\" or \"ai:1\"")
    name, instance = match.group(1), int(match.group(2))
    name = ALIASES.get(name.lower(), name)
    try:
        object_type = ObjectType(int(name) if name.isdigit() else name)
    except (ValueError, TypeError):
        raise ValueError(f"unknown object type {match.group(1)!r}") from None
    if not 0 <= int(object_type) <= 1023:
        raise ValueError(f"object type {name} is outside 0..1023")
    if instance >= MAX_INSTANCE:
        raise ValueError(f"instance {instance} is outside 0..{MAX_INSTANCE - 1}")
    return str(object_type), instance


def parse_property(text: str) -> str:
    """'present-value' or 'presentValue' -> 'present-value'; numbers name proprietary properties."""
    try:
        return str(PropertyIdentifier(int(text) if text.isdigit() else text))
    except (ValueError, TypeError):
        raise ValueError(f"unknown property {text!r} (e.g. \"present-value\", \"status-flags\")") from None


def kind_of(object_type: str) -> Kind:
    """How a present value of this object type reads: a number, on/off, or a numbered state."""
    if object_type.startswith("analog-"):
        return "analog"
    if object_type in ("binary-input", "binary-output", "binary-value"):
        return "binary"
    if object_type.startswith("multi-state-"):
        return "multistate"
    return "other"


def datatype(object_type: str, prop: str, kind: Kind, states: bool) -> Datatype:
    """What ``to_value`` makes of this property when the device sends the type the standard gives it.

    A multi-state value with configured ``states`` reads as the state's name. Other properties go by
    the standard's type: enumerations and counters are ints; text, bit strings, dates and anything
    unknown (proprietary properties) are strings.
    """
    if kind == "binary":
        return "bool"
    if kind == "multistate":
        return "string" if states else "int"
    if kind == "analog":
        return "float"
    try:
        cls = get_vendor_info(0).get_object_class(ObjectType(object_type))
    except (ValueError, TypeError):
        cls = None
    wire = cls.get_property_type(prop) if cls is not None else None
    if not isinstance(wire, type):
        return "string"
    if issubclass(wire, Boolean):
        return "bool"
    if issubclass(wire, Real):  # Double too
        return "float"
    if issubclass(wire, Enumerated | Unsigned | Integer):
        return "int"
    return "string"


@cache
def has_status(object_type: str) -> bool:
    """Whether standard objects of this type have a present value with status flags (and so may offer COV)."""
    try:
        cls = get_vendor_info(0).get_object_class(ObjectType(object_type))
    except (ValueError, TypeError):
        return False
    return cls is not None and bool(cls.get_property_type("statusFlags") and cls.get_property_type("presentValue"))


def atomics(tags: TagList) -> list[Atomic]:
    """The primitives a tag list carries (a list property: several); ValueError for anything else.

    A value arrives wrapped in the context tags of the field that carried it (opening 3 ... closing
    3 in a ReadProperty reply): one matching pair around it is unwrapped.
    """
    items = list(getattr(tags, "tagList", None) or [])
    if len(items) >= 2 and items[0].tag_class == TagClass.opening and items[-1].tag_class == TagClass.closing \
            and items[0].tag_number == items[-1].tag_number:
        items = items[1:-1]
    out = []
    for item in items:
        if item.tag_class != TagClass.application:
            raise ValueError("constructed value")
        try:
            atom = item.app_to_object()
        except Exception as exc:  # struct.error, IndexError, DecodingError...: bytes we cannot decode
            raise ValueError(f"undecodable {type(exc).__name__}") from exc
        if atom is None:
            raise ValueError("reserved application tag")
        out.append(atom)
    return out


def atomic(tags: TagList) -> Atomic:
    """The single primitive a tag list carries; ValueError for constructed, listed or malformed values."""
    found = atomics(tags)
    if len(found) != 1:
        raise ValueError(f"expected one primitive value, got {len(found)}")
    return found[0]


def to_value(atom: Atomic, kind: Kind, states: Mapping[int, str] | None = None) -> Value:
    """A decoded primitive as a reading value; ValueError when it cannot be one for this kind of point."""
    if isinstance(atom, Null):
        raise ValueError("null")
    if isinstance(atom, Boolean):
        return bool(atom)
    if kind == "binary":  # BinaryPV: 0 inactive, 1 active; some devices answer with a Boolean or an integer
        if isinstance(atom, Enumerated | Unsigned | Integer) and int(atom) in (0, 1):
            return int(atom) == 1
        raise ValueError(f"binary value {atom!r}")
    if isinstance(atom, Real):
        number = float(atom) if isinstance(atom, Double) else float32_shortest(float(atom))
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    if isinstance(atom, Enumerated | Unsigned | Integer):
        value = int(atom)
        if states is not None:
            return states.get(value, f"unknown_{value}")
        return value
    if isinstance(atom, CharacterString):
        return str(atom)
    if isinstance(atom, BitString):
        return "".join("1" if bit else "0" for bit in atom)
    if isinstance(atom, OctetString):
        return bytes(atom).hex()
    return str(atom)  # date, time, object identifier: readable as text


def status_flags(tags: TagList) -> tuple[bool, bool, bool, bool]:
    """(in-alarm, fault, overridden, out-of-service) from a status-flags bit string."""
    atom = atomic(tags)
    if not isinstance(atom, BitString):
        raise ValueError(f"status flags as {type(atom).__name__}")
    bits = [bool(b) for b in atom][:4]
    bits += [False] * (4 - len(bits))
    return bits[0], bits[1], bits[2], bits[3]


def quality(flags: tuple[bool, bool, bool, bool] | None) -> Quality:
    """Fault or out-of-service: the value is not a live measurement of the field, so ``bad``.

    In-alarm says something about the process, not about the value, and an overridden point
    (a hand/off/auto switch) reports the state it is really in: both stay ``good``.
    """
    if flags is None:
        return Quality.GOOD
    _, fault, _, out_of_service = flags
    return Quality.BAD if fault or out_of_service else Quality.GOOD


def decode(value: TagList | None, flags: TagList | None, kind: Kind,
           states: Mapping[int, str] | None = None) -> tuple[Value, Quality]:
    """A point's value and quality from what the device sent (None: an error in its place). Never raises.

    A bad quality keeps the value the device reported, so a technician sees it; nothing acts on it.
    """
    if value is None:
        return None, Quality.BAD
    try:
        result = to_value(atomic(value), kind, states)
    except ValueError:
        return None, Quality.BAD
    try:
        flag_bits = status_flags(flags) if flags is not None else None
    except ValueError:
        flag_bits = None  # a broken status-flags says nothing about the value itself
    return result, quality(flag_bits)


def encode(kind: Kind, value: bool | float | None) -> Atomic:
    """What a write puts on the wire; None relinquishes the command at the write's priority."""
    if value is None:
        return Null(())
    if kind == "binary":
        return BinaryPV("active" if value else "inactive")
    if kind == "multistate":
        return Unsigned(int(value))
    return Real(float(value))


def unit_symbol(tags: TagList) -> str | None:
    """A units property as a short symbol (°C, kPa), its BACnet name if unusual, None for no-units."""
    try:
        atom = atomic(tags)
        if not isinstance(atom, Enumerated):
            return None
        units = EngineeringUnits(int(atom))
    except (ValueError, TypeError):
        return None
    if units.attr == "noUnits":
        return None
    return _SYMBOLS.get(units.attr, str(units))


def nack_reason(nack: ErrorRejectAbortNack | Any) -> tuple[str, str, int]:
    """(kind, reason, code) of an error, reject or abort reply: ("error", "object/unknown-object", 31)."""
    if isinstance(nack, RejectPDU | AbortPDU):
        reason = nack.apduAbortRejectReason
        kind = "reject" if isinstance(nack, RejectPDU) else "abort"
        return kind, str(reason), _int(reason)
    error_class, error_code = getattr(nack, "errorClass", None), getattr(nack, "errorCode", None)
    return "error", f"{error_class}/{error_code}", _int(error_code)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def services(tags: TagList) -> tuple[bool, bool]:
    """(ReadPropertyMultiple, SubscribeCOV) from a device's protocol-services-supported bit string."""
    atom = atomic(tags)
    if not isinstance(atom, BitString):
        raise ValueError(f"services supported as {type(atom).__name__}")
    bits = list(atom)

    def bit(n: int) -> bool:
        return n < len(bits) and bool(bits[n])

    return bit(ServicesSupported.readPropertyMultiple), bit(ServicesSupported.subscribeCOV)


@cache
def has_units(object_type: str) -> bool:
    """Whether standard objects of this type carry a units property (analog inputs, outputs, values...)."""
    try:
        cls = get_vendor_info(0).get_object_class(ObjectType(object_type))
    except (ValueError, TypeError):
        return False
    return cls is not None and bool(cls.get_property_type("units"))

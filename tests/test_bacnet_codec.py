"""The pure BACnet conversions: whatever a device sends, a value or a bad reading, never an exception."""

from __future__ import annotations

import math
import struct
from decimal import Decimal

import pytest
from bacpypes3.basetypes import BinaryPV, EngineeringUnits, ServicesSupported, StatusFlags
from bacpypes3.pdu import PDUData
from bacpypes3.primitivedata import (
    Boolean,
    CharacterString,
    ClosingTag,
    Double,
    Integer,
    Null,
    ObjectIdentifier,
    OpeningTag,
    Real,
    Tag,
    TagList,
    Unsigned,
)
from hypothesis import given
from hypothesis import strategies as st

from drivers.bacnet import codec
from gateway.core.data import Quality

KINDS: tuple[codec.Kind, ...] = ("analog", "binary", "multistate", "other")
STATES = {1: "off", 2: "auto"}


def wrapped(atom: object, context: int = 3) -> TagList:
    """A value as a reply carries it: inside the opening and closing tags of its field."""
    return TagList([OpeningTag(context), *atom.encode().tagList, ClosingTag(context)])  # type: ignore[attr-defined]


def from_bytes(data: bytes) -> TagList | None:
    try:
        return TagList.decode(PDUData(data))
    except Exception:  # bacpypes3 refuses to tokenise it at all: the APDU would not have decoded
        return None


@given(st.binary(max_size=40), st.one_of(st.none(), st.binary(max_size=12)), st.sampled_from(KINDS))
def test_any_bytes_make_a_value_or_a_bad_reading(value: bytes, flags: bytes | None, kind: codec.Kind) -> None:
    tags = from_bytes(value)
    flag_tags = from_bytes(flags) if flags is not None else None
    decoded, quality = codec.decode(tags, flag_tags, kind, STATES)
    assert decoded is None or isinstance(decoded, bool | int | float | str)
    assert quality in (Quality.GOOD, Quality.BAD)
    if quality is Quality.GOOD:
        assert decoded is not None
    if isinstance(decoded, float):
        assert math.isfinite(decoded)


def digits(value: float) -> int:
    return len(Decimal(repr(value)).normalize().as_tuple().digits)


@given(st.floats(width=32, allow_nan=True, allow_infinity=True))
def test_reals_read_as_their_shortest_float32(x: float) -> None:
    decoded, quality = codec.decode(wrapped(Real(x)), None, "analog")
    if not math.isfinite(x):
        assert (decoded, quality) == (None, Quality.BAD)
    else:
        assert quality is Quality.GOOD and isinstance(decoded, float)
        assert struct.pack(">f", decoded) == struct.pack(">f", x)
        # fewest significant digits (1e11 has 1, its float32 99999997952.0 has 11; repr lengths mislead)
        assert digits(decoded) <= digits(x)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_doubles_keep_every_digit(x: float) -> None:
    assert codec.decode(wrapped(Double(x)), None, "analog") == (x, Quality.GOOD)


@given(st.integers(0, 2**32 - 1), st.sampled_from(KINDS))
def test_unsigned_values(n: int, kind: codec.Kind) -> None:
    decoded, quality = codec.decode(wrapped(Unsigned(n)), None, kind, STATES if kind == "multistate" else None)
    if kind == "binary":
        assert (decoded, quality) == ((n == 1, Quality.GOOD) if n in (0, 1) else (None, Quality.BAD))
    elif kind == "multistate":
        assert decoded == STATES.get(n, f"unknown_{n}") and quality is Quality.GOOD
    else:
        assert (decoded, quality) == (n, Quality.GOOD)


@given(st.lists(st.booleans(), min_size=0, max_size=8))
def test_status_flags_make_the_quality(bits: list[bool]) -> None:
    flags = wrapped(StatusFlags([int(b) for b in bits]))
    padded = (bits + [False] * 4)[:4]
    expected = Quality.BAD if padded[1] or padded[3] else Quality.GOOD  # fault, out of service
    assert codec.decode(wrapped(Real(1.5)), flags, "analog") == (1.5, expected)


def test_other_shapes() -> None:
    assert codec.decode(wrapped(BinaryPV("active")), None, "binary") == (True, Quality.GOOD)
    assert codec.decode(wrapped(Boolean(False)), None, "binary") == (False, Quality.GOOD)
    assert codec.decode(wrapped(Integer(-4)), None, "analog") == (-4, Quality.GOOD)
    assert codec.decode(wrapped(CharacterString("AHU 1")), None, "other") == ("AHU 1", Quality.GOOD)
    assert codec.decode(wrapped(Null(())), None, "analog") == (None, Quality.BAD)
    assert codec.decode(wrapped(ObjectIdentifier("analog-input,4")), None, "other")[0] == "analog-input,4"
    assert codec.decode(None, None, "analog") == (None, Quality.BAD)  # an error in its place
    two = TagList([*wrapped(Real(1.0)).tagList[1:2], *wrapped(Real(2.0)).tagList[1:2]])
    assert codec.decode(two, None, "analog") == (None, Quality.BAD)  # a list where one value belongs
    truncated = TagList([Tag(0, 4, 3, b"\x41\x20\x00")])  # a Real of three bytes
    assert codec.decode(truncated, None, "analog") == (None, Quality.BAD)
    broken_flags = wrapped(Real(9.0))
    assert codec.decode(wrapped(Real(1.0)), broken_flags, "analog") == (1.0, Quality.GOOD)


def test_units_services_and_names() -> None:
    assert codec.unit_symbol(wrapped(EngineeringUnits("degreesCelsius"))) == "°C"
    assert codec.unit_symbol(wrapped(EngineeringUnits("noUnits"))) is None
    assert codec.unit_symbol(wrapped(EngineeringUnits("kilowattHoursReactive"))) == "kilowatt-hours-reactive"
    supported = ServicesSupported([])
    supported[ServicesSupported.readPropertyMultiple] = 1
    assert codec.services(wrapped(supported)) == (True, False)
    assert codec.parse_object("AI:7") == ("analog-input", 7)
    assert codec.parse_object("multiStateValue,2") == ("multi-state-value", 2)
    assert codec.parse_object("130:1") == ("130", 1)
    for bad in ("analog-inptu:1", "ai", "ai:4194303", "1024:1"):
        with pytest.raises(ValueError):
            codec.parse_object(bad)
    assert codec.parse_property("presentValue") == "present-value"
    assert codec.encode("binary", True) == BinaryPV("active") and isinstance(codec.encode("analog", None), Null)

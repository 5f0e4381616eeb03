"""Sparkplug B metric values: our points' values into the proto's typed ``oneof``, a host's command values out.

Datatypes come from the point catalog (``bool`` Boolean, ``int`` Int64, ``float`` Double, ``string`` String).
Signed integers travel two's complement in the proto's unsigned fields, as the spec says. Quality follows the
spec's ``Quality`` property (Int32: 0 BAD, 192 GOOD, 500 STALE), sent only when a value is not good; a point
without a value is ``is_null``.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.northbound.sparkplug_proto import datatype

INT64 = datatype("Int64")
DOUBLE = datatype("Double")
BOOLEAN = datatype("Boolean")
STRING = datatype("String")
DATETIME = datatype("DateTime")
INT32 = datatype("Int32")
DATATYPES = {"bool": BOOLEAN, "int": INT64, "float": DOUBLE, "string": STRING}
"""The catalog's datatype -> the Sparkplug DataType of the point's metric."""
QUALITY = {"bad": 0, "good": 192, "stale": 500}
_U64 = (1 << 64) - 1
_SIGNED_BITS = {datatype("Int8"): 8, datatype("Int16"): 16, INT32: 32, INT64: 64, DATETIME: 64}


def ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def set_value(metric: Any, kind: int, value: Any) -> bool:
    """Put ``value`` into ``metric`` as its datatype says; False (and ``is_null``) when it has no value or does not
    fit (a number that is not finite, text in a number point)."""
    try:
        if value is None:
            raise ValueError
        if kind == BOOLEAN:
            metric.boolean_value = bool(value)
        elif kind == INT64:
            if isinstance(value, str) or not math.isfinite(value):
                raise ValueError
            metric.long_value = round(value) & _U64
        elif kind == DOUBLE:
            if isinstance(value, str) or not math.isfinite(value):
                raise ValueError
            metric.double_value = float(value)
        elif kind == DATETIME:
            metric.long_value = ms(float(value))
        else:
            metric.string_value = value if isinstance(value, str) else str(value)
    except (TypeError, ValueError, OverflowError):
        metric.is_null = True
        return False
    return True


def add_property(props: Any, key: str, kind: int, value: Any) -> None:
    props.keys.append(key)
    entry = props.values.add()
    entry.type = kind
    if kind == BOOLEAN:
        entry.boolean_value = bool(value)
    elif kind == INT32:
        entry.int_value = int(value) & 0xFFFFFFFF
    elif kind in (INT64, DATETIME):
        entry.long_value = int(value) & _U64
    elif kind == DOUBLE:
        entry.double_value = float(value)
    else:
        entry.string_value = str(value)


def set_quality(metric: Any, quality: str | None, has_value: bool) -> None:
    """The ``Quality`` property when the value is not good (a point without a value is BAD)."""
    code = QUALITY.get(quality or "good", 0)
    if not has_value:
        code = 0
    if code != QUALITY["good"]:
        add_property(metric.properties, "Quality", INT32, code)


def command_value(metric: Any, kind: int | None) -> tuple[bool, Any]:
    """What a host's NCMD/DCMD metric asks to write: (True, value), or (False, why) when it carries nothing
    a point can take (no value, bytes, a data set, a number that is not finite)."""
    if metric.is_null:
        return True, None  # a write of null: relinquish (BACnet), refused by points that cannot take it
    which = metric.WhichOneof("value")
    if which == "boolean_value":
        return True, bool(metric.boolean_value)
    if which in ("int_value", "long_value"):
        raw = int(getattr(metric, which))
        kind = int(metric.datatype) if metric.HasField("datatype") else kind
        bits = _SIGNED_BITS.get(kind or 0)
        if bits is not None:
            bits = min(bits, 32 if which == "int_value" else 64)  # an Int64 sent in the 32-bit field: its width
            raw &= (1 << bits) - 1
            if raw >> (bits - 1):
                raw -= 1 << bits
        return True, raw
    if which in ("float_value", "double_value"):
        number = float(getattr(metric, which))
        return (True, number) if math.isfinite(number) else (False, "not a finite number")
    if which == "string_value":
        return True, str(metric.string_value)
    return False, f"no value a point can take ({which or 'none'})"

"""Numbers as a person reads them: no binary noise from widening a float32."""

from __future__ import annotations

import math
import struct


def float32_shortest(value: float) -> float:
    """The shortest decimal that is still the same float32: 231.5, not 231.5000030517578.

    A float32 widened to a Python float carries binary noise that a technician reads as a wrong
    digit. Rounding to a fixed 7 significant digits would lose real data (the float32 16777218
    would print as 16777220), so take the fewest of 6 to 9 significant digits that still
    round-trip to the same float32. Values with fewer digits come out short anyway ("%g").
    """
    try:
        exact: float = struct.unpack(">f", struct.pack(">f", value))[0]
    except OverflowError:  # not a float32 at all: leave it alone
        return value
    if not math.isfinite(exact):
        return exact
    for digits in range(6, 9):
        short = float(f"{exact:.{digits}g}")
        if struct.unpack(">f", struct.pack(">f", short))[0] == exact:
            return short
    return float(f"{exact:.9g}")  # 9 significant digits always identify a float32

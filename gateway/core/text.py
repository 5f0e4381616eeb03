"""Text for people and stable JSON for programs: shared by every command line tool."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    seconds = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.1f}s ago"


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def fmt(value: Any) -> str:
    """Six significant digits hide float32 noise, but never the integer digits of a counter.

    Plain ``.6g`` shows an energy register of 1234567.8 kWh as ``1.23457e+06``: the technician
    comparing it with the meter's display sees neither the same number nor the same notation.
    """
    if value is None:
        return "-"
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        whole = len(str(int(abs(value))))
        return f"{value:.{max(6, whole + 3)}g}"
    return str(value)

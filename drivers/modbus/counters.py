"""Energy and water totals that only ever go up, whatever the register does. Pure.

A 32-bit kWh register wraps to 0 after 4,294,967,295 counts, and a meter that is reset or swapped
starts again from 0. Published as-is, either looks like a huge negative consumption. A point with
``counter = { bits = 32 }`` publishes a running total instead: a wrap adds the register's span, a
reset carries the last total forward (and is reported, once, as ``point.counter_reset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Counter:
    bits: int
    scale: float
    carried: float = 0.0
    """What earlier wraps and resets add to the register's present value."""
    last: float | None = None
    """The register's last value as read (scaled), to tell a wrap from a reset."""

    @property
    def span(self) -> float:
        return float(2**self.bits) * self.scale

    def total(self, value: float) -> tuple[float, str | None]:
        """The running total for a fresh register value, and "wrap" / "reset" when one happened."""
        happened: str | None = None
        if self.last is not None and value < self.last:
            span = self.span
            if self.last > 0.75 * span and value < 0.25 * span:
                self.carried += span  # rolled over the top
                happened = "wrap"
            else:
                self.carried += self.last  # reset or replaced: carry on from where it stood
                happened = "reset"
        self.last = value
        return self.carried + value, happened

    def state(self) -> dict[str, Any]:
        return {"carried": self.carried, "last": self.last}

    def restore(self, data: Any) -> None:
        if isinstance(data, dict):
            carried, last = data.get("carried"), data.get("last")
            if isinstance(carried, int | float) and not isinstance(carried, bool) and carried >= 0:
                self.carried = float(carried)
            if isinstance(last, int | float) and not isinstance(last, bool):
                self.last = float(last)

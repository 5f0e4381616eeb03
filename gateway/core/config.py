"""Config building blocks every section uses: durations, identifiers, strict models, serial-port fields."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")


def parse_duration(value: Any) -> float:
    """Parse "250ms", "10s", "5m", "1h30m" or a bare number of seconds into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"10s\" or \"5m\"")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty duration")
        pos, seconds = 0, 0.0
        while pos < len(text):
            match = _DURATION.match(text, pos)
            if not match or match.end() == pos:
                raise ValueError(f"invalid duration {value!r}: write it like \"500ms\", \"10s\", \"5m\" or \"1h30m\"")
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
    else:
        raise ValueError("expected a duration such as \"10s\" or \"5m\"")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError("duration must be a finite number of seconds >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*)+$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: \"500ms\", \"10s\", \"5m\", \"1h30m\", or seconds as a number.",
        }
    ),
]

IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN, title="Identifier")]
"""Ids end up in MQTT topics and CLI arguments: no spaces, slashes, '+' or '#'."""


REMOTE_WRITE_HELP = (
    "May the community platform write it over MQTT ([commands] allow \"write\")? false (default), true, or "
    "\"life_safety\": needed, point by point, on a life-safety device (fire panel, elevator), where true is refused."
)
RemoteWrite = Annotated[bool | Literal["life_safety"], Field(description=REMOTE_WRITE_HELP)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors (typos must fail, not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


Parity = Literal["N", "E", "O"]


class SerialPortConfig(StrictModel):
    """The fields of a local serial port (RS-485 Modbus lines and fire-panel printer ports alike)."""

    port: str = Field(min_length=1, description="Serial device, e.g. /dev/ttyUSB0 or /dev/ttyAMA0.")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Parity = Field(default="N", description="N(one), E(ven) or O(dd).")
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def char_time(self) -> float:
        """Seconds one character takes on the wire (start bit, data, parity, stop bits)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate


class Problem(NamedTuple):
    """One config mistake that spans entries, found after each entry was valid on its own."""

    loc: tuple[str | int, ...]
    message: str
    value: Any = None

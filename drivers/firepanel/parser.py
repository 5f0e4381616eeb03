"""Pure line handling for text-printing panels: split a byte stream into lines, decode, match.

Nothing here does I/O or raises on what a panel sends: any bytes split into lines that add up to
exactly the bytes received, any line decodes (undecodable bytes become U+FFFD in the text, while
the caller keeps the bytes), and a line that no pattern matches is simply ``None``. Splitting on
the terminator's bytes is safe in GBK and UTF-8: neither uses 0x0A or 0x0D inside a character.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_TRIM = re.compile(r"^[\s\x00-\x1f\x7f]+|[\s\x00-\x1f\x7f]+$")  # \s includes the full-width space U+3000


@dataclass(frozen=True, slots=True)
class Line:
    data: bytes
    """Exactly the bytes received, terminator included."""
    complete: bool = True
    """False when cut at the length limit or taken as finished after the line went quiet."""


class LineSplitter:
    """Bytes in, whole lines out; never holds more than ``max_line`` bytes."""

    def __init__(self, terminator: bytes, max_line: int) -> None:
        if not terminator or max_line < len(terminator) + 1:
            raise ValueError("a terminator and room for at least one byte before it are needed")
        self.terminator = terminator
        self.max_line = max_line
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Line]:
        lines: list[Line] = []
        buffer = self._buffer
        # Only the tail that could end in a terminator needs searching again.
        search_from = max(0, len(buffer) - len(self.terminator) + 1)
        buffer += data
        while buffer:
            end = buffer.find(self.terminator, search_from)
            if end != -1 and end + len(self.terminator) <= self.max_line:
                cut, complete = end + len(self.terminator), True
            elif len(buffer) >= self.max_line:
                cut, complete = self.max_line, False
            else:
                break
            lines.append(Line(bytes(buffer[:cut]), complete))
            del buffer[:cut]
            search_from = 0
        return lines

    def flush(self) -> Line | None:
        """The unfinished line, if any, as a line of its own (the line went quiet or the port went away)."""
        if not self._buffer:
            return None
        line = Line(bytes(self._buffer), complete=False)
        self._buffer.clear()
        return line


def decode(data: bytes, encoding: str) -> tuple[str, bool]:
    """The line's text, trimmed of its terminator, blanks and control characters; True if bytes were replaced."""
    try:
        text, replaced = data.decode(encoding), False
    except UnicodeDecodeError:
        text, replaced = data.decode(encoding, errors="replace"), True
    return _TRIM.sub("", text), replaced


@dataclass(frozen=True, slots=True)
class Parsed:
    event: str
    fields: dict[str, str]
    """Named groups that matched something (zone, loop, address, device, description, time, state)."""
    pattern: str
    """Which pattern matched, e.g. "gst_cn.0" or "patterns.2" (the device's own)."""


class LineParser:
    """Ordered patterns; the first that matches a line decides what it means."""

    def __init__(self, patterns: Sequence[tuple[str, str, re.Pattern[str]]], encoding: str) -> None:
        self.patterns = list(patterns)  # (label, event, compiled regex)
        self.encoding = encoding

    def decode(self, data: bytes) -> tuple[str, bool]:
        return decode(data, self.encoding)

    def parse(self, text: str) -> Parsed | None:
        for label, event, regex in self.patterns:
            match = regex.search(text)
            if match is not None:
                fields = {k: v.strip() for k, v in match.groupdict().items() if v and v.strip()}
                return Parsed(event, fields, label)
        return None

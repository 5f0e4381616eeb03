"""Pure line handling for text-printing panels: split a byte stream into lines, decode, match.

Nothing here does I/O or raises on what a panel sends: any bytes split into lines that add up to
exactly the bytes received, any line decodes (undecodable bytes become U+FFFD in the text, while
the caller keeps the bytes), and a line that no pattern matches is simply ``None``. Splitting on
the terminator's bytes is safe in GBK and UTF-8: neither uses 0x0A or 0x0D inside a character.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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


def decode(data: bytes, encoding: str, anchors: Sequence[str] = ()) -> tuple[str, bool]:
    """The line's text, trimmed of its terminator, blanks and control characters; True if bytes were replaced.

    In a multi-byte encoding one stray byte (line noise, a power-up glitch) pairs with the next
    byte and shifts every character after it: a stray 0x81-0xFE before 火警 turns the keyword into
    two wrong characters. So when an anchor (a life-safety keyword) is in the raw bytes but not in
    the decoded text, the line is cut just before each such anchor and the pieces decoded on
    their own: the stray byte costs one replacement character, not the keyword after it.
    """
    text, replaced = _decode(data, encoding)
    missing = [a for a in anchors if a and a not in text]
    if missing:
        cuts = sorted({i for a in missing for i in _find_all(data, a.encode(encoding, errors="ignore"))})
        if cuts:
            pieces = [_decode(data[a:b], encoding) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
            text = "".join(piece for piece, _ in pieces)
            replaced = replaced or any(bad for _, bad in pieces)
    return _TRIM.sub("", text), replaced


def _decode(data: bytes, encoding: str) -> tuple[str, bool]:
    try:
        return data.decode(encoding), False
    except UnicodeDecodeError:
        return data.decode(encoding, errors="replace"), True


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle) if needle else -1
    while at != -1:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


@dataclass(frozen=True, slots=True)
class Parsed:
    event: str
    fields: dict[str, str]
    """Named groups that matched something (zone, loop, address, device, description, time, state)."""
    pattern: str
    """Which pattern matched, e.g. "gst_cn.0" or "patterns.2" (the device's own)."""


class LineParser:
    """Ordered patterns; the first that matches a line decides what it means.

    ``keywords`` (event -> words, e.g. fire -> 火警, FIRE ALARM) are the life-safety words of the
    format: a line carrying one is never lost to noise. If no pattern matches the line as it
    stands, the patterns are tried again from the earliest place one of them can start (noise
    before the line's first word is stripped); if none does even then, a keyword still makes the
    line an event of that kind, with the parse failure noted.
    """

    def __init__(self, patterns: Sequence[tuple[str, str, re.Pattern[str]]], encoding: str,
                 keywords: Mapping[str, Sequence[str]] | None = None) -> None:
        self.patterns = list(patterns)  # (label, event, compiled regex)
        self.encoding = encoding
        self.keywords = {event: [w for w in words if w] for event, words in (keywords or {}).items()}
        self._anchors = [w for words in self.keywords.values() for w in words]
        self._loose = [(label, event, _unanchored(regex)) for label, event, regex in self.patterns]

    def decode(self, data: bytes) -> tuple[str, bool]:
        return decode(data, self.encoding, self._anchors)

    def parse(self, text: str) -> Parsed | None:
        for label, event, regex in self.patterns:
            match = regex.search(text)
            if match is not None:
                return Parsed(event, _fields(match), label)
        return None

    def rescue(self, text: str) -> Parsed | None:
        """A line no pattern matched as it stands: noise before it, or a life-safety word in it."""
        best: tuple[int, str, str, re.Match[str]] | None = None
        for label, event, regex in self._loose:
            match = regex.search(text, 1)
            if match is not None and (best is None or match.start() < best[0]):
                best = (match.start(), label, event, match)
        if best is not None:
            start, label, event, match = best
            return Parsed(event, {**_fields(match), "noise": text[:start][-40:]}, label)
        found = [(text.find(w), event, w) for event, words in self.keywords.items() for w in words if w in text]
        if not found:
            return None
        at, event, word = min(found)
        return Parsed(event, {"description": text[at:at + 80].strip(), "parse_failed": "1"}, f"keyword:{word}")


def _fields(match: re.Match[str]) -> dict[str, str]:
    return {k: v.strip() for k, v in match.groupdict().items() if v and v.strip()}


def _unanchored(regex: re.Pattern[str]) -> re.Pattern[str]:
    """The same pattern, free to start anywhere in the line (its leading ``^`` dropped)."""
    if regex.pattern.startswith("^"):
        try:
            return re.compile(regex.pattern[1:], regex.flags)
        except re.error:
            return regex
    return regex

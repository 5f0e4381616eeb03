"""Find the source line of a key path in a TOML document.

tomllib returns plain dicts with no positions, so this is a small, forgiving scanner of its own. It
reads the same structure tomllib does (headers, arrays of tables, dotted and quoted keys, inline
tables and arrays, every string form, comments) and notes the line where each key path first
appears. It never raises: on text it cannot make sense of it skips to the next line, because a
slightly wrong line number is still better than none in an error message.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

KeyPath = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_BLANK = " \t"
_SCALAR_END = frozenset(",]}#\n")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "e": "\x1b", '"': '"', "\\": "\\"}


def locate(text: str, loc: Sequence[str | int]) -> int | None:
    """1-based line where `loc` is defined, else that of its nearest defined parent (None for the root)."""
    return SourceMap(text).line(loc)


class SourceMap:
    """Key path -> line for one document; build it once when several paths are looked up."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[KeyPath, int] | None = None

    @property
    def lines(self) -> dict[KeyPath, int]:
        """Scanned on the first lookup: a config that loads cleanly never needs it (11 MB at peak for 10,000
        points, which the daemon's heap kept as holes)."""
        if self._lines is None:
            self._lines = _Scanner(self._text).run()
        return self._lines

    def line(self, loc: Sequence[str | int]) -> int | None:
        path = tuple(loc)
        lines = self.lines
        for end in range(len(path), 0, -1):
            found = lines.get(path[:end])
            if found is not None:
                return found
        return None


@dataclass
class _Container:
    """An inline array or table still open while scanning a value."""

    path: KeyPath
    is_array: bool
    index: int = 0


@dataclass
class _Scanner:
    text: str
    pos: int = 0
    lines: dict[KeyPath, int] = field(default_factory=dict)
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = field(default_factory=dict)
    newlines: list[int] = field(default_factory=list)

    def run(self) -> dict[KeyPath, int]:
        self.newlines = [i for i, char in enumerate(self.text) if char == "\n"]
        while self.pos < len(self.text):
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                break
            if self.peek() == "[":
                self.header()
            else:
                self.key_value(self.table)
            self.skip_line()
        return self.lines

    # -- low level ---------------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def line_at(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def record(self, path: KeyPath, pos: int) -> None:
        """First definition wins; parents seen only through this path (implicit tables) point here too."""
        line = self.line_at(pos)
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces and comments (and line breaks, when inside brackets or between statements)."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in _BLANK or (newlines and char in "\r\n"):
                self.pos += 1
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    # -- keys ------------------------------------------------------------------------------------

    def key(self) -> list[str] | None:
        """A dotted key, each part bare or quoted; None when there is no key here."""
        parts: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            char = self.peek()
            if char == '"':
                parts.append(self.basic_string())
            elif char == "'":
                parts.append(self.literal_string())
            elif char in _BARE:
                start = self.pos
                while self.peek() in _BARE:
                    self.pos += 1
                parts.append(self.text[start:self.pos])
            else:
                return None
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return parts
            self.pos += 1

    def header(self) -> None:
        start = self.pos
        is_array = self.peek(1) == "["
        self.pos += 2 if is_array else 1
        keys = self.key()
        if keys is None:
            return
        path: KeyPath = ()
        for number, key in enumerate(keys):
            path = (*path, key)
            count = self.array_counts.get(path)
            if is_array and number == len(keys) - 1:
                self.array_counts[path] = (count or 0) + 1
                path = (*path, count or 0)
            elif count:
                path = (*path, count - 1)  # a header inside an array of tables extends its last entry
        self.table = path
        self.record(path, start)

    def key_value(self, prefix: KeyPath) -> None:
        start = self.pos
        keys = self.key()
        if keys is None or self.peek() != "=":
            return
        self.pos += 1
        self.record((*prefix, *keys), start)
        self.value((*prefix, *keys))

    # -- values ----------------------------------------------------------------------------------

    def value(self, path: KeyPath) -> None:
        """Scan one value; nested arrays and tables use an explicit stack so depth cannot overflow."""
        stack: list[_Container] = []
        while True:
            self.skip_blank(newlines=bool(stack))
            char = self.peek()
            if char == "[":
                self.pos += 1
                stack.append(_Container(path, is_array=True))
            elif char == "{":
                self.pos += 1
                stack.append(_Container(path, is_array=False))
            else:
                self.scalar(forced=bool(stack))
            next_path = self.next_item(stack)
            if next_path is None:
                return
            path = next_path

    def next_item(self, stack: list[_Container]) -> KeyPath | None:
        """Close finished containers; return the path of the next value to scan, or None when done."""
        while stack:
            top = stack[-1]
            self.skip_blank(newlines=True)
            char = self.peek()
            if not char or char == ("]" if top.is_array else "}"):
                self.pos += 1
                stack.pop()
            elif char == ",":
                self.pos += 1
            elif top.is_array:
                path = (*top.path, top.index)
                top.index += 1
                self.record(path, self.pos)
                return path
            else:
                start = self.pos
                keys = self.key()
                if keys is None:
                    self.pos += 1
                    continue
                if self.peek() == "=":
                    self.pos += 1
                path = (*top.path, *keys)
                self.record(path, start)
                return path
        return None

    def scalar(self, forced: bool) -> None:
        """Skip one string, number, date or word; inside brackets always move on, to stay finite."""
        char = self.peek()
        if char == '"':
            if self.text.startswith('"""', self.pos):
                self.multiline_string('"""')
            else:
                self.basic_string()
            return
        if char == "'":
            if self.text.startswith("'''", self.pos):
                self.multiline_string("'''")
            else:
                self.literal_string()
            return
        start = self.pos
        while self.peek() and self.peek() not in _SCALAR_END:
            self.pos += 1
        if forced and self.pos == start and self.peek() not in ("", "\n"):
            self.pos += 1

    def basic_string(self) -> str:
        """A one-line "..." string, unescaped as far as that is cheap (it may be a key)."""
        text, out = self.text, []
        self.pos += 1
        while self.pos < len(text):
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                break
            if char == "\n":
                break
            if char == "\\":
                out.append(self.escape())
                continue
            out.append(char)
            self.pos += 1
        return "".join(out)

    def escape(self) -> str:
        code = self.peek(1)
        if code in _ESCAPES:
            self.pos += 2
            return _ESCAPES[code]
        width = {"u": 4, "U": 8}.get(code)
        if width:
            digits = self.text[self.pos + 2:self.pos + 2 + width]
            if len(digits) == width and all(d in "0123456789abcdefABCDEF" for d in digits):
                number = int(digits, 16)
                if number <= 0x10FFFF and not 0xD800 <= number <= 0xDFFF:
                    self.pos += 2 + width
                    return chr(number)
        self.pos += 1
        return "\\"

    def literal_string(self) -> str:
        self.pos += 1
        end = self.pos
        while end < len(self.text) and self.text[end] not in "'\n":
            end += 1
        value = self.text[self.pos:end]
        self.pos = end + 1 if self.peek(end - self.pos) == "'" else end
        return value

    def multiline_string(self, quotes: str) -> None:
        """Skip a triple-quoted string; up to two extra quotes before the closing ones belong to it."""
        text = self.text
        index = self.pos + 3
        while index < len(text):
            if quotes == '"""' and text[index] == "\\":
                index += 2
            elif text.startswith(quotes, index):
                index += 3
                extra = 0
                while extra < 2 and index < len(text) and text[index] == quotes[0]:
                    index += 1
                    extra += 1
                self.pos = index
                return
            else:
                index += 1
        self.pos = len(text)

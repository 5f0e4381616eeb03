"""Refuse panel patterns that can take exponential time: a repeat inside a repeat, as in ``(\\S+\\s*)*``.

Python's ``re`` backtracks: on a line that almost matches, a nested quantifier tries every way of
splitting the text between the inner and the outer repeat, 2^n of them. A 30-character line then
takes minutes, the stream stalls, and the next fire line waits behind it. Checked once, when the
config is loaded, by walking the parsed pattern; nothing is run against a line.
"""

from __future__ import annotations

import importlib
from typing import Any

try:  # the parser behind re.compile; private, so the check steps aside if it ever moves
    _parser: Any = importlib.import_module("re._parser")
    MAXREPEAT: Any = importlib.import_module("re._constants").MAXREPEAT
except (ImportError, AttributeError):  # pragma: no cover (CPython 3.11-3.13 have it)
    _parser, MAXREPEAT = None, 0

_REPEATS = {"MAX_REPEAT", "MIN_REPEAT"}
_UNBOUNDED = 16
"""A repeat allowed this many times or more counts as unbounded."""


def nested_repeat(regex: str) -> str | None:
    """A description of the first repeat nested in another, or None when the pattern has none."""
    if _parser is None:
        return None
    try:
        parsed = _parser.parse(regex)
    except Exception:  # compile_pattern reports syntax errors; this only looks for nesting
        return None
    return _walk(list(parsed), inside=False)


def _walk(items: list[tuple[Any, Any]], *, inside: bool) -> str | None:
    for op, av in items:
        name = str(op)
        if name in _REPEATS:
            _, high, body = av
            unbounded = high == MAXREPEAT or high >= _UNBOUNDED
            if unbounded and inside and _matches_something(list(body)):
                return "a repeated part inside another repeat (like (a+)+ or (\\S+\\s*)*)"
            found = _walk(list(body), inside=inside or unbounded)
        elif name == "SUBPATTERN":
            found = _walk(list(av[-1]), inside=inside)
        elif name == "BRANCH":
            found = next((f for f in (_walk(list(b), inside=inside) for b in av[1]) if f), None)
        elif name in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT"):
            found = None  # no backtracking into these
        else:
            found = None
        if found:
            return found
    return None


def _matches_something(body: list[tuple[Any, Any]]) -> bool:
    """Whether a repeat's body consumes text (an empty-width body cannot blow up)."""
    return any(str(op) not in ("AT", "ASSERT", "ASSERT_NOT") for op, _ in body)

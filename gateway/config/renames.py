"""Keys renamed since the last release: still read for one release, each with a warning naming the new key.

A rename is applied to the raw document before validation, so a config written for the old names
loads exactly as it did, and `gateway check` says, line by line, what to write instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

KeyPath = tuple[str | int, ...]
ANY = "*"
"""In a rename's ``where``: any entry of a list, or any key of a table."""


def _life_safety(value: Any) -> Any:
    return value == "life_safety" if value in ("life_safety", "normal") else value


@dataclass(frozen=True, slots=True)
class Renamed:
    where: tuple[str, ...]
    old: str
    new: str
    convert: Callable[[Any], Any] | None = None
    why: str = ""


RENAMED: tuple[Renamed, ...] = (
    Renamed(("devices", ANY), "priority", "life_safety", _life_safety,
            "`priority` also meant delivery class and BACnet slot; write `life_safety = true`"),
    Renamed(("devices", ANY), "breaker_failures", "offline_after",
            why="a plant room is full of electrical breakers; this counts failed polls"),
    Renamed(("devices", ANY), "rpm", "read_multiple"),
    Renamed(("devices", ANY), "rpm_objects", "read_multiple_objects"),
    Renamed(("devices", ANY, "points", ANY), "priority", "write_priority"),
    Renamed(("devices", ANY, "report"), "every", "period", why="`every` was also a report mode"),
    Renamed(("devices", ANY, "report_points", ANY), "every", "period", why="`every` was also a report mode"),
)


@dataclass(frozen=True, slots=True)
class Deprecation:
    loc: KeyPath
    message: str


def _tables(data: Any, where: tuple[str, ...], loc: KeyPath = ()) -> Iterator[tuple[KeyPath, dict[str, Any]]]:
    if not where:
        if isinstance(data, dict):
            yield loc, data
        return
    head, rest = where[0], where[1:]
    if head == ANY:
        items: list[tuple[str | int, Any]] = (
            list(enumerate(data)) if isinstance(data, list) else list(data.items()) if isinstance(data, dict) else []
        )
        for key, child in items:
            yield from _tables(child, rest, (*loc, key))
    elif isinstance(data, dict) and head in data:
        yield from _tables(data[head], rest, (*loc, head))


def apply_renames(data: dict[str, Any]) -> list[Deprecation]:
    """Rewrite old keys to new ones in place; one deprecation per key rewritten (or refused when both are set)."""
    found: list[Deprecation] = []
    for rename in RENAMED:
        for loc, table in _tables(data, rename.where):
            if rename.old not in table:
                continue
            where = (*loc, rename.old)
            if rename.new in table:  # both: the new one wins, and the old one is an error the schema reports
                continue
            value = table.pop(rename.old)
            table[rename.new] = rename.convert(value) if rename.convert else value
            why = f" ({rename.why})" if rename.why else ""
            found.append(Deprecation(where, f"deprecated: write `{rename.new}` instead{why}; "
                                            "the old name is read until the next release"))
    return found

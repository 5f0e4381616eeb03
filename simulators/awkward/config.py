"""An awkward device's faults as one frozen config, and the ``--behaviour`` spec that spells it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from drivers.modbus.codec import Order, Table

DEFAULT_GAPS: dict[Table, tuple[range, ...]] = dict.fromkeys(Table, (range(0, 100), range(200, 300), range(1000, 1100)))
"""The map behind a bare ``gaps``: three runs of 100 with holes between, in every table."""


def runs(addresses: Iterable[int | range]) -> tuple[range, ...]:
    """Addresses as sorted, merged, non-empty runs: ``[0, 1, range(2, 5), 9]`` -> ``(range(0, 5), range(9, 10))``."""
    spans = sorted((a, a + 1) if isinstance(a, int) else (a.start, a.stop) for a in addresses
                   if isinstance(a, int) or len(a))
    merged: list[list[int]] = []
    for start, stop in spans:
        if start < 0 or stop > 65536 or start >= stop:
            raise ValueError(f"addresses {start}..{stop - 1} are outside 0..65535")
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return tuple(range(start, stop) for start, stop in merged)


@dataclasses.dataclass(frozen=True)
class AwkwardConfig:
    """Every fault of one device; the defaults are a well-behaved device of ``size`` addresses per table."""

    unit_id: int = 1
    size: int = 1000
    """Addresses 0..size-1 of every table exist, unless ``mapped`` says otherwise."""
    mapped: Mapping[Table, Iterable[int | range]] | None = None
    """Per table, the runs of addresses that exist (a table left out has none); any read or write
    touching another address answers exception 2. None: every table is 0..size-1. Kept as merged
    runs (see ``runs``), every table present."""
    read_limit: int = 125
    """Registers per read (FC 3, 4, 23); more answers exception 3."""
    bit_limit: int = 2000
    """Bits per read (FC 1, 2); more answers exception 3."""
    busy: float = 0.0
    """Fraction of requests answered ``busy_code`` instead (seeded)."""
    busy_every: int = 0
    """Every k-th request answers ``busy_code`` (0: never)."""
    busy_code: int = 6
    """6 SERVER DEVICE BUSY or 5 ACKNOWLEDGE."""
    lossy: float = 0.0
    """Fraction of requests lost without a reply (seeded)."""
    delay: float = 0.0
    """Seconds before every reply."""
    jitter: float = 0.0
    """Up to this many seconds more, uniform (seeded)."""
    drop_every: int = 0
    """Every k-th request closes the connection instead of being answered (0: never)."""
    counter: int | None = None
    """Address of a 32-bit energy counter (two registers) that counts per tick and wraps at 2**32."""
    counter_table: Table = Table.HOLDING
    counter_step: int = 1
    counter_start: int = 0
    counter_word_order: Order = Order.BIG
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.mapped is not None:
            given = {Table(t): runs(r) for t, r in self.mapped.items()}
            set_(self, "mapped", {t: given.get(t, ()) for t in Table})
        set_(self, "counter_table", Table(self.counter_table))
        set_(self, "counter_word_order", Order(self.counter_word_order))
        checks = [
            (0 <= self.unit_id <= 255, "unit_id must be 0..255"),
            (1 <= self.size <= 65536, "size must be 1..65536"),
            (1 <= self.read_limit <= 125, "read_limit must be 1..125 (the protocol's own limit)"),
            (1 <= self.bit_limit <= 2000, "bit_limit must be 1..2000 (the protocol's own limit)"),
            (0.0 <= self.busy <= 1.0 and 0.0 <= self.lossy <= 1.0, "busy and lossy are fractions 0..1"),
            (self.busy_every >= 0 and self.drop_every >= 0, "busy_every and drop_every must be >= 0"),
            (self.busy_code in (5, 6), "busy_code must be 5 (ACKNOWLEDGE) or 6 (SERVER DEVICE BUSY)"),
            (0.0 <= self.delay < 3600 and 0.0 <= self.jitter < 3600, "delay and jitter must be 0..3600 s"),
            (0 <= self.counter_step < 2**32 and 0 <= self.counter_start < 2**32, "counter values are 32-bit"),
            (self.counter is None or 0 <= self.counter <= 65534, "counter must be an address 0..65534"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def table_runs(self, table: Table) -> tuple[range, ...]:
        """The runs of addresses that exist in ``table``."""
        if self.mapped is None:
            return (range(self.size),)
        return runs(self.mapped.get(Table(table), ()))

    def spec(self) -> str:
        """The ``--behaviour`` string that ``parse_behaviour`` turns back into this config."""
        items = []
        for key, (name, _) in _KEYS.items():
            value, default = getattr(self, name), _DEFAULT[name]
            if name != "mapped" and value != default:
                items.append(f"{key}={value.value if isinstance(value, Order | Table) else value}")
        for table in Table if self.mapped is not None else ():
            items.append(f"{table.value}=" + "/".join(f"{r.start}-{r.stop - 1}" for r in self.table_runs(table)))
        return ",".join(items)


def _address_runs(text: str) -> tuple[range, ...]:
    """``0-99/200-299/400`` -> runs; the empty string is no address at all."""
    out: list[range] = []
    for part in filter(None, text.split("/")):
        low, _, high = part.partition("-")
        out.append(range(int(low), int(high or low) + 1))
    return runs(out)


_KEYS: dict[str, tuple[str, Any]] = {
    "unit": ("unit_id", int), "size": ("size", int), "limit": ("read_limit", int), "bits": ("bit_limit", int),
    "busy": ("busy", float), "busy-every": ("busy_every", int), "busy-code": ("busy_code", int),
    "lossy": ("lossy", float), "slow": ("delay", float), "jitter": ("jitter", float), "drop": ("drop_every", int),
    "counter": ("counter", int), "counter-table": ("counter_table", Table), "step": ("counter_step", int),
    "start": ("counter_start", int), "words": ("counter_word_order", Order), "seed": ("seed", int),
    "gaps": ("mapped", _address_runs),
}
_DEFAULT = {f.name: f.default for f in dataclasses.fields(AwkwardConfig)}


def parse_behaviour(spec: str, **base: Any) -> AwkwardConfig:
    """``gaps,limit=32,busy=0.1`` -> a config; ``base`` gives defaults that the spec may override.

    Keys: gaps[=A-B/C-D] (a bare ``gaps`` is ``DEFAULT_GAPS``; a value maps those runs in every
    table), holding=/input=/coil=/discrete= (one table's runs), size, limit, bits, busy, busy-every,
    busy-code, lossy, slow (seconds), jitter, drop (every k requests), counter (address),
    counter-table, step, start, words (big|little), unit, seed.
    """
    fields: dict[str, Any] = dict(base)
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, eq, text = item.partition("=")
        try:
            if key in {t.value for t in Table}:
                fields["mapped"] = {**(fields.get("mapped") or {}), Table(key): _address_runs(text)}
            elif key == "gaps":
                fields["mapped"] = dict.fromkeys(Table, _address_runs(text)) if eq else DEFAULT_GAPS
            elif key in _KEYS and eq:
                fields[_KEYS[key][0]] = _KEYS[key][1](text)
            else:
                raise KeyError(key)
        except KeyError:
            raise ValueError(f"unknown behaviour {item!r}; known: {', '.join(['gaps', *_KEYS])}") from None
        except ValueError as exc:
            raise ValueError(f"behaviour {item!r}: {exc}") from None
    return AwkwardConfig(**fields)


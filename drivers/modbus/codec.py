"""Register encoding and read planning for Modbus, with no I/O.

Kept apart from the driver so that byte layouts and coalescing can be tested without a device,
and so that a hostile or broken device can only ever cause a ``ValueError`` here.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar


class Table(enum.StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"


class DataType(enum.StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"


class Order(enum.StrEnum):
    BIG = "big"
    LITTLE = "little"


BIT_TABLES = frozenset({Table.COIL, Table.DISCRETE})
"""Tables addressed in single bits; the rest hold 16-bit registers."""

# dtype -> (big-endian struct format, registers). BOOL is absent: it is a bit, not a struct.
_FORMATS: dict[DataType, tuple[str, int]] = {
    DataType.INT16: (">h", 1),
    DataType.UINT16: (">H", 1),
    DataType.INT32: (">i", 2),
    DataType.UINT32: (">I", 2),
    DataType.INT64: (">q", 4),
    DataType.UINT64: (">Q", 4),
    DataType.FLOAT32: (">f", 2),
    DataType.FLOAT64: (">d", 4),
}

_INT_RANGES: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


def register_count(dtype: DataType) -> int:
    if dtype is DataType.BOOL:
        return 1
    return _FORMATS[dtype][1]


def _swap_bytes(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def _check_registers(registers: Sequence[int], expected: int) -> list[int]:
    # Registers may come straight off the wire (or a buggy server library): trust nothing.
    if len(registers) != expected:
        raise ValueError(f"expected {expected} register(s), got {len(registers)}")
    words: list[int] = []
    for reg in registers:
        if not isinstance(reg, int) or not 0 <= reg <= 0xFFFF:
            raise ValueError(f"register value {reg!r} is not a 16-bit unsigned integer")
        words.append(int(reg))
    return words


def _to_wire(words: list[int], word_order: Order, byte_order: Order) -> list[int]:
    """Apply the device's layout to big-endian words; the transform is its own inverse."""
    if word_order is Order.LITTLE:
        words = words[::-1]
    if byte_order is Order.LITTLE:
        words = [_swap_bytes(w) for w in words]
    return words


def decode(
    registers: Sequence[int],
    dtype: DataType,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
    bit: int | None = None,
) -> int | float | bool:
    """Turn raw registers (or one coil/discrete bit) into a value; only ever raises ValueError.

    ``bit`` counts from the least significant bit of the register after byte-order correction,
    which is how device manuals number status bits.
    """
    if dtype is DataType.BOOL:
        (word,) = _to_wire(_check_registers(registers, 1), word_order, byte_order)
        if bit is None:
            return word != 0
        if not isinstance(bit, int) or not 0 <= bit <= 15:
            raise ValueError(f"bit {bit!r} is outside 0..15")
        return bool((word >> bit) & 1)
    if bit is not None:
        raise ValueError(f"`bit` applies only to bool, not {dtype.value}")
    fmt, count = _FORMATS[dtype]
    words = _to_wire(_check_registers(registers, count), word_order, byte_order)
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    try:
        (value,) = struct.unpack(fmt, raw)
    except struct.error as exc:  # unreachable after the checks above; kept as a last guard
        raise ValueError(str(exc)) from exc
    if isinstance(value, float):
        return value
    return int(value)


def _as_int(value: int | float | bool, dtype: DataType) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{dtype.value} needs a number, not a bool")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"{value!r} is not an integer, as {dtype.value} requires")
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"{value!r} is not a number")
    low, high = _INT_RANGES[dtype]
    if not low <= value <= high:
        raise ValueError(f"{value} is outside the {dtype.value} range {low}..{high}")
    return value


def encode(
    value: int | float | bool,
    dtype: DataType,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
) -> list[int]:
    """Lay a value out as the device expects it; refuses anything that would not read back equal.

    A bool becomes ``[1]`` or ``[0]``, whatever the byte order: only "non-zero" carries meaning.
    Integral floats are accepted for integer types because JSON commands often carry ``5.0``.
    """
    if dtype is DataType.BOOL:
        if isinstance(value, bool) or value in (0, 1):
            return [1 if value else 0]
        raise ValueError(f"{value!r} is not a bool")
    fmt, count = _FORMATS[dtype]
    packed: int | float
    if dtype in _INT_RANGES:
        packed = _as_int(value, dtype)
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{dtype.value} needs a number, got {value!r}")
        packed = float(value)
    try:
        raw = struct.pack(fmt, packed)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{value!r} does not fit in {dtype.value}") from exc
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * count, 2)]
    return _to_wire(words, word_order, byte_order)


# --------------------------------------------------------------------------- read planning


class Span(NamedTuple):
    """What one point needs read; ``key`` lets the caller find its point again."""

    key: int
    table: Table
    address: int
    count: int  # type: ignore[assignment]  # shadows tuple.count; the name is part of the API


@dataclass(frozen=True, slots=True)
class Block:
    """One read request on the wire, and the spans its reply feeds."""

    table: Table
    start: int
    count: int
    spans: tuple[Span, ...]

    @property
    def end(self) -> int:
        return self.start + self.count


_TABLE_RANK = {table: rank for rank, table in enumerate(Table)}


def plan_reads(
    spans: Iterable[Span],
    max_registers: int = 125,
    max_bits: int = 2000,
    max_gap: int = 16,
) -> list[Block]:
    """Coalesce points into as few reads as the device's limits allow.

    Polling each point on its own costs one round trip per point (Home Assistant's mistake);
    bridging small unused gaps trades a few wasted registers for far fewer transactions.
    Greedy in address order: a span joins the open block if the gap and the size cap allow.
    """
    if max_registers < 1 or max_bits < 1 or max_gap < 0:
        raise ValueError("max_registers and max_bits must be >= 1, max_gap >= 0")
    by_table: dict[Table, list[Span]] = {}
    for span in spans:
        if span.count < 1 or span.address < 0:
            raise ValueError(f"span {span!r} needs address >= 0 and count >= 1")
        by_table.setdefault(Table(span.table), []).append(span)

    blocks: list[Block] = []
    for table in sorted(by_table, key=_TABLE_RANK.__getitem__):
        limit = max_bits if table in BIT_TABLES else max_registers
        group = sorted(by_table[table], key=lambda s: (s.address, s.count, s.key))
        start, end = group[0].address, group[0].address + group[0].count
        members = [group[0]]
        for span in group[1:]:
            span_end = span.address + span.count
            merged_end = max(end, span_end)
            if span.address - end <= max_gap and merged_end - start <= limit:
                end = merged_end
                members.append(span)
                continue
            blocks.append(Block(table, start, end - start, tuple(members)))
            start, end, members = span.address, span_end, [span]
        blocks.append(Block(table, start, end - start, tuple(members)))
    return blocks


T = TypeVar("T")


def slice_for(block: Block, span: Span, data: Sequence[T]) -> Sequence[T]:
    """Cut one span's share out of a block's reply, refusing a reply too short to hold it.

    Bit reads come back padded to a multiple of eight, so longer data is fine; shorter is a
    misbehaving device and must not turn into an IndexError or a silently shifted value.
    """
    if len(data) < block.count:
        raise ValueError(f"reply holds {len(data)} value(s), the read asked for {block.count}")
    offset = span.address - block.start
    if span.table != block.table or offset < 0 or offset + span.count > block.count:
        raise ValueError(f"span {span!r} is not inside block {block.table.value}@{block.start}+{block.count}")
    return data[offset : offset + span.count]

"""Register layouts and read planning, checked without a device."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import (
    BIT_TABLES,
    Block,
    DataType,
    Order,
    Span,
    Table,
    decode,
    encode,
    plan_reads,
    register_count,
    slice_for,
)

ORDERS = list(Order)
INT_BOUNDS = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


def same_float(a: float, b: float, fmt: str) -> bool:
    """Equal bit patterns (so -0.0 != 0.0), with any NaN equal to any NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return struct.pack(fmt, a) == struct.pack(fmt, b)


# --------------------------------------------------------------------------- round trips


def test_register_counts() -> None:
    assert [register_count(t) for t in DataType] == [1, 1, 2, 2, 4, 4, 2, 4, 1]


@given(data=st.data(), dtype=st.sampled_from(sorted(INT_BOUNDS)), wo=st.sampled_from(ORDERS),
       bo=st.sampled_from(ORDERS))
def test_int_round_trip(data: st.DataObject, dtype: DataType, wo: Order, bo: Order) -> None:
    low, high = INT_BOUNDS[dtype]
    value = data.draw(st.integers(low, high))
    regs = encode(value, dtype, wo, bo)
    assert len(regs) == register_count(dtype)
    assert all(0 <= r <= 0xFFFF for r in regs)
    out = decode(regs, dtype, wo, bo)
    assert type(out) is int and out == value


@given(data=st.data(), dtype=st.sampled_from(sorted(INT_BOUNDS)), wo=st.sampled_from(ORDERS),
       bo=st.sampled_from(ORDERS))
def test_int_registers_round_trip(data: st.DataObject, dtype: DataType, wo: Order, bo: Order) -> None:
    """Every register pattern is some integer, so the mapping is a bijection."""
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=register_count(dtype),
                              max_size=register_count(dtype)))
    assert encode(decode(regs, dtype, wo, bo), dtype, wo, bo) == regs


@given(value=st.floats(width=32), wo=st.sampled_from(ORDERS), bo=st.sampled_from(ORDERS))
def test_float32_round_trip(value: float, wo: Order, bo: Order) -> None:
    regs = encode(value, DataType.FLOAT32, wo, bo)
    out = decode(regs, DataType.FLOAT32, wo, bo)
    assert isinstance(out, float) and same_float(out, value, ">f")


@given(value=st.floats(), wo=st.sampled_from(ORDERS), bo=st.sampled_from(ORDERS))
def test_float64_round_trip(value: float, wo: Order, bo: Order) -> None:
    regs = encode(value, DataType.FLOAT64, wo, bo)
    out = decode(regs, DataType.FLOAT64, wo, bo)
    assert isinstance(out, float) and same_float(out, value, ">d")


@given(value=st.booleans(), wo=st.sampled_from(ORDERS), bo=st.sampled_from(ORDERS))
def test_bool_round_trip(value: bool, wo: Order, bo: Order) -> None:
    assert decode(encode(value, DataType.BOOL, wo, bo), DataType.BOOL, wo, bo) is value


# --------------------------------------------------------------------------- hostile input


register_values = st.one_of(
    st.integers(-(2**70), 2**70), st.integers(0, 0xFFFF), st.booleans(), st.floats(), st.none(), st.text()
)


@given(regs=st.lists(register_values, max_size=6), dtype=st.sampled_from(list(DataType)),
       wo=st.sampled_from(ORDERS), bo=st.sampled_from(ORDERS),
       bit=st.one_of(st.none(), st.integers(-3, 20)))
def test_decode_only_raises_value_error(regs: list[Any], dtype: DataType, wo: Order, bo: Order,
                                        bit: int | None) -> None:
    try:
        out = decode(regs, dtype, wo, bo, bit=bit)
    except ValueError:
        return
    assert isinstance(out, int | float | bool)


@given(regs=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=6), dtype=st.sampled_from(list(DataType)))
def test_decode_accepts_exactly_the_right_count(regs: list[int], dtype: DataType) -> None:
    if len(regs) == register_count(dtype):
        decode(regs, dtype)
    else:
        with pytest.raises(ValueError, match="register"):
            decode(regs, dtype)


@pytest.mark.parametrize("regs", [[-1, 0], [0, 0x10000], [0, 1.5]])
def test_decode_rejects_out_of_range_registers(regs: list[Any]) -> None:
    with pytest.raises(ValueError):
        decode(regs, DataType.UINT32)


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (65536, DataType.UINT16),
        (-1, DataType.UINT16),
        (-32769, DataType.INT16),
        (32768, DataType.INT16),
        (2**32, DataType.UINT32),
        (-(2**31) - 1, DataType.INT32),
        (2**64, DataType.UINT64),
        (-1, DataType.UINT64),
        (2**63, DataType.INT64),
        (1.5, DataType.INT32),
        (math.nan, DataType.INT32),
        (math.inf, DataType.UINT16),
        (True, DataType.UINT16),
        (1e39, DataType.FLOAT32),
        (2, DataType.BOOL),
        (0.5, DataType.BOOL),
    ],
)
def test_encode_rejects(value: float, dtype: DataType) -> None:
    with pytest.raises(ValueError):
        encode(value, dtype)


def test_encode_accepts_integral_float() -> None:
    assert encode(5.0, DataType.INT16) == [5]


# --------------------------------------------------------------------------- known layouts

B, L = Order.BIG, Order.LITTLE


@pytest.mark.parametrize(
    ("value", "dtype", "wo", "bo", "regs"),
    [
        # float32 123.456 is 0x42F6E979
        (123.456, DataType.FLOAT32, B, B, [0x42F6, 0xE979]),  # ABCD
        (123.456, DataType.FLOAT32, L, B, [0xE979, 0x42F6]),  # CDAB
        (123.456, DataType.FLOAT32, B, L, [0xF642, 0x79E9]),  # BADC
        (123.456, DataType.FLOAT32, L, L, [0x79E9, 0xF642]),  # DCBA
        (-2, DataType.INT32, B, B, [0xFFFF, 0xFFFE]),
        (-2, DataType.INT32, L, B, [0xFFFE, 0xFFFF]),
        (-2, DataType.INT32, B, L, [0xFFFF, 0xFEFF]),
        (-2, DataType.INT32, L, L, [0xFEFF, 0xFFFF]),
        (0x12345678, DataType.UINT32, B, B, [0x1234, 0x5678]),
        (0x12345678, DataType.UINT32, L, L, [0x7856, 0x3412]),
        (-1, DataType.INT16, B, B, [0xFFFF]),
        (-2, DataType.INT16, B, L, [0xFEFF]),
        (0x1234, DataType.UINT16, L, B, [0x1234]),  # word order means nothing for one register
        (0x1234, DataType.UINT16, B, L, [0x3412]),
        (1.0, DataType.FLOAT64, B, B, [0x3FF0, 0, 0, 0]),
        (1.0, DataType.FLOAT64, L, B, [0, 0, 0, 0x3FF0]),
        (1.0, DataType.FLOAT64, B, L, [0xF03F, 0, 0, 0]),
        (0x0102030405060708, DataType.UINT64, B, B, [0x0102, 0x0304, 0x0506, 0x0708]),
        (0x0102030405060708, DataType.UINT64, L, B, [0x0708, 0x0506, 0x0304, 0x0102]),
        (0x0102030405060708, DataType.UINT64, L, L, [0x0807, 0x0605, 0x0403, 0x0201]),
        (-(2**63), DataType.INT64, B, B, [0x8000, 0, 0, 0]),
        (True, DataType.BOOL, B, B, [1]),
        (False, DataType.BOOL, L, L, [0]),
    ],
)
def test_known_layouts(value: float, dtype: DataType, wo: Order, bo: Order, regs: list[int]) -> None:
    assert encode(value, dtype, wo, bo) == regs
    out = decode(regs, dtype, wo, bo)
    if dtype is DataType.FLOAT32:
        assert out == pytest.approx(value, rel=1e-7)
    else:
        assert out == value


def test_bool_bits() -> None:
    assert decode([0b101], DataType.BOOL, bit=0) is True
    assert decode([0b101], DataType.BOOL, bit=1) is False
    assert decode([0b101], DataType.BOOL, bit=2) is True
    assert decode([0x8000], DataType.BOOL, bit=15) is True
    assert decode([0], DataType.BOOL) is False
    assert decode([0x0100], DataType.BOOL) is True
    # a byte-swapping device: bit numbers refer to the corrected register
    assert decode([0x0100], DataType.BOOL, byte_order=Order.LITTLE, bit=0) is True
    assert decode([0x0100], DataType.BOOL, byte_order=Order.LITTLE, bit=8) is False
    # a coil comes back from pymodbus as a bool
    assert decode([True], DataType.BOOL) is True
    with pytest.raises(ValueError):
        decode([1], DataType.BOOL, bit=16)
    with pytest.raises(ValueError):
        decode([1], DataType.UINT16, bit=0)


# --------------------------------------------------------------------------- read planning

spans_strategy = st.lists(
    st.tuples(st.sampled_from(list(Table)), st.integers(0, 400), st.sampled_from([1, 2, 4])),
    max_size=60,
).map(lambda rows: [Span(i, t, a, 1 if t in BIT_TABLES else c) for i, (t, a, c) in enumerate(rows)])


def covered_gaps(block: Block) -> list[int]:
    """Lengths of the unread-by-any-span holes inside a block."""
    gaps, end = [], block.start
    for span in sorted(block.spans, key=lambda s: s.address):
        if span.address > end:
            gaps.append(span.address - end)
        end = max(end, span.address + span.count)
    assert end == block.start + block.count, "block is not tight around its spans"
    return gaps


@given(spans=spans_strategy, max_registers=st.integers(1, 125), max_bits=st.integers(1, 40),
       max_gap=st.integers(0, 20), seed=st.integers())
def test_plan_properties(spans: list[Span], max_registers: int, max_bits: int, max_gap: int,
                         seed: int) -> None:
    blocks = plan_reads(spans, max_registers, max_bits, max_gap)

    listed = [s for b in blocks for s in b.spans]
    assert sorted(listed) == sorted(spans), "every span is in exactly one block"
    for block in blocks:
        limit = max_bits if block.table in BIT_TABLES else max_registers
        assert block.count <= limit or len(block.spans) == 1
        assert block.spans, "no empty blocks"
        for span in block.spans:
            assert span.table == block.table
            assert block.start <= span.address
            assert span.address + span.count <= block.start + block.count
        assert all(gap <= max_gap for gap in covered_gaps(block))

    rank = {t: i for i, t in enumerate(Table)}
    keys = [(rank[b.table], b.start) for b in blocks]
    assert keys == sorted(keys)

    shuffled = list(spans)
    random.Random(seed).shuffle(shuffled)
    assert plan_reads(shuffled, max_registers, max_bits, max_gap) == blocks


def test_meter_like_map_is_one_or_two_reads() -> None:
    spans = [Span(i, Table.HOLDING, i, 1) for i in range(60)]
    spans += [Span(100 + i, Table.HOLDING, 60 + 2 * i, 2) for i in range(20)]
    blocks = plan_reads(spans)
    assert len(blocks) == 1
    assert (blocks[0].start, blocks[0].count) == (0, 100)

    # the floats 10 registers further on still join; far away they need their own read
    spans_gap = spans[:60] + [Span(100 + i, Table.HOLDING, 70 + 2 * i, 2) for i in range(20)]
    assert len(plan_reads(spans_gap)) <= 2
    spans_far = spans[:60] + [Span(100 + i, Table.HOLDING, 1000 + 2 * i, 2) for i in range(20)]
    assert [(b.start, b.count) for b in plan_reads(spans_far)] == [(0, 60), (1000, 40)]


def test_caps_and_gaps() -> None:
    spans = [Span(i, Table.HOLDING, 2 * i, 2) for i in range(100)]  # 200 contiguous registers
    assert [(b.start, b.count) for b in plan_reads(spans)] == [(0, 124), (124, 76)]
    two = [Span(0, Table.HOLDING, 0, 1), Span(1, Table.HOLDING, 5, 1)]
    assert len(plan_reads(two, max_gap=4)) == 1
    assert len(plan_reads(two, max_gap=3)) == 2
    assert len(plan_reads(two, max_gap=0)) == 2
    adjacent = [Span(0, Table.HOLDING, 0, 1), Span(1, Table.HOLDING, 1, 1)]
    assert len(plan_reads(adjacent, max_gap=0)) == 1


def test_overlapping_spans_share_a_block() -> None:
    status_bits = [
        Span(0, Table.HOLDING, 22, 1), Span(1, Table.HOLDING, 22, 1), Span(2, Table.HOLDING, 20, 2)]
    (block,) = plan_reads(status_bits)
    assert (block.start, block.count, len(block.spans)) == (20, 3, 3)
    data = [0x4000, 0, 0b11]
    assert list(slice_for(block, status_bits[0], data)) == [0b11]
    assert list(slice_for(block, status_bits[2], data)) == [0x4000, 0]


def test_tables_never_mix_and_order_is_by_table() -> None:
    spans = [Span(0, Table.DISCRETE, 0, 1), Span(1, Table.HOLDING, 0, 1), Span(2, Table.COIL, 0, 1),
             Span(3, Table.INPUT, 0, 1), Span(4, Table.HOLDING, 1, 1)]
    assert [(b.table, len(b.spans)) for b in plan_reads(spans)] == [
        (Table.HOLDING, 2), (Table.INPUT, 1), (Table.COIL, 1), (Table.DISCRETE, 1)]


def test_oversized_span_gets_its_own_block() -> None:
    spans = [Span(0, Table.HOLDING, 0, 4), Span(1, Table.HOLDING, 4, 1), Span(2, Table.HOLDING, 5, 1)]
    assert [(b.start, b.count) for b in plan_reads(spans, max_registers=2)] == [(0, 4), (4, 2)]


def test_bit_tables_use_the_bit_cap() -> None:
    spans = [Span(i, Table.COIL, i, 1) for i in range(300)]
    assert len(plan_reads(spans, max_registers=10, max_bits=2000)) == 1
    assert len(plan_reads(spans, max_registers=2000, max_bits=100)) == 3


def test_plan_rejects_nonsense() -> None:
    assert plan_reads([]) == []
    with pytest.raises(ValueError):
        plan_reads([Span(0, Table.HOLDING, 0, 0)])
    with pytest.raises(ValueError):
        plan_reads([], max_registers=0)


def test_slice_for_short_and_padded_replies() -> None:
    span = Span(0, Table.COIL, 3, 1)
    block = Block(Table.COIL, 0, 5, (span,))
    padded = [False, False, False, True, False, False, False, False]  # pymodbus pads bits to 8
    assert list(slice_for(block, span, padded)) == [True]
    with pytest.raises(ValueError, match="reply"):
        slice_for(block, span, padded[:4])
    with pytest.raises(ValueError):
        slice_for(block, Span(1, Table.COIL, 7, 1), padded)

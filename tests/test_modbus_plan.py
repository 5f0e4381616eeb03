"""The read plan's decoding, checked against the codec (the reference), and what a plan costs in memory."""

from __future__ import annotations

import gc
import math
import tracemalloc
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import BIT_TABLES, DataType, Order, Table, decode, slice_for
from drivers.modbus.config import ModbusDevice
from drivers.modbus.plan import DevicePlan
from drivers.modbus.values import named, scaled
from gateway.core.data import Quality, Value

ORDERS = st.sampled_from([o.value for o in Order])


@st.composite
def points(draw: st.DrawFn, index: int) -> dict[str, Any]:
    table = draw(st.sampled_from([Table.HOLDING, Table.INPUT, Table.COIL]))
    dtype = DataType.BOOL if table in BIT_TABLES else draw(st.sampled_from(list(DataType)))
    point: dict[str, Any] = {"id": f"p{index}", "table": table.value, "type": dtype.value,
                             "address": draw(st.integers(0, 30)), "word_order": draw(ORDERS),
                             "byte_order": draw(ORDERS)}
    if dtype not in (DataType.BOOL, DataType.FLOAT32, DataType.FLOAT64):
        point["states"] = draw(st.none() | st.just({0: "off", 1: "on"}))
    if dtype is not DataType.BOOL:
        point["scale"] = draw(st.sampled_from([1.0, 1.0, 0.1, -2.0]))
        point["offset"] = draw(st.sampled_from([0.0, 0.0, -40.0]))
    return point


def reference(point: Any, part: list[Any], table: Table) -> tuple[Value, Quality]:
    """What the codec makes of a point's registers, without the plan's fast paths."""
    if table in BIT_TABLES:
        return bool(part[0]), Quality.GOOD
    value = scaled(decode(part, point.type, point.word_order, point.byte_order, point.bit), point)
    if isinstance(value, float) and not math.isfinite(value):
        return None, Quality.BAD
    return named(value, point), Quality.GOOD


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_fast_paths_decode_as_the_codec_does(data: st.DataObject) -> None:
    """Big-endian points go through one shared Struct, plain float32 ones skip scaling: same values either way."""
    specs = [data.draw(points(i)) for i in range(data.draw(st.integers(1, 8)))]
    device = ModbusDevice.model_validate({"id": "d", "bus": "b", "points": specs})
    plan = DevicePlan(device)
    seen = 0
    for block in plan.blocks:
        if block.table in BIT_TABLES:
            raw: list[Any] = data.draw(st.lists(st.booleans(), min_size=block.count, max_size=block.count))
        else:
            raw = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=block.count, max_size=block.count))
        readings = plan.decode_block(block, raw, 0.0)
        for span, reading in zip(block.spans, readings, strict=True):
            point = device.points[span.key]
            assert reading.point == point.id
            assert (reading.value, reading.quality) == reference(point, list(slice_for(block, span, raw)),
                                                                 block.table), point
            seen += 1
    assert seen == len(device.points)


def test_a_plan_costs_little_memory_per_point() -> None:
    """A poll plan for 1,000 float32 points: its spans and reads, and no compiled Struct or hash table per
    point (420 bytes a point when each point had its own Struct, the fast paths were a dict and a set and the
    id index was built for polling alone)."""
    device = ModbusDevice.model_validate({"id": "d", "bus": "b", "points": [
        {"id": f"p{i:04d}", "address": 2 * i, "type": "float32"} for i in range(1000)]})
    DevicePlan(device)  # warm: whatever is built once per process (caches, interned names) is not the plan's
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        plan = DevicePlan(device)
        gc.collect()
        cost = (tracemalloc.get_traced_memory()[0] - before) / len(device.points)
    finally:
        tracemalloc.stop()
    assert len(plan.blocks) == 17  # 62 float32 points (124 registers) a read: the plan is the real one
    assert cost < 200, f"{cost:.0f} bytes a point"

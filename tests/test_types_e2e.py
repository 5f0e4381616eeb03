"""Every data type and register layout, from raw words in a simulator to a value at an MQTT subscriber.

The raw words come from ``codec.encode`` but are first checked against layouts worked out here
with ``struct`` and by hand, and the values that arrive are compared with values chosen here, so a
codec bug that encode and decode share (both swapping the wrong way) still fails this test.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, Collector, running, write_config

from drivers.modbus.codec import DataType, Order, Table, encode
from gateway.config import load_config
from gateway.core.numbers import float32_shortest
from gateway.daemon import Daemon
from simulators.registers import RegisterBank, serve_registers

SIZE = 300
"""Entries per table in the simulated bank; reads past it get ILLEGAL ADDRESS."""

STRUCT_CODE = {
    DataType.INT16: "h", DataType.UINT16: "H", DataType.INT32: "i", DataType.UINT32: "I",
    DataType.INT64: "q", DataType.UINT64: "Q", DataType.FLOAT32: "f", DataType.FLOAT64: "d",
}

# One value per type, each with distinct bytes so any swap shows.
VALUES: dict[DataType, int | float] = {
    DataType.INT16: -1234,
    DataType.UINT16: 54321,
    DataType.INT32: -123456789,
    DataType.UINT32: 3_000_000_001,
    DataType.INT64: -1234567890123456789,
    DataType.UINT64: 18_000_000_000_000_000_001,
    DataType.FLOAT32: 227.3027,  # arrives as written, not as 227.30270385742188
    DataType.FLOAT64: 123456.789012345,
}

EXTREMES: list[tuple[DataType, int | float]] = [
    (DataType.INT16, -(2**15)), (DataType.UINT16, 2**16 - 1), (DataType.INT32, -(2**31)),
    (DataType.UINT32, 2**32 - 1), (DataType.INT64, -(2**63)), (DataType.UINT64, 2**64 - 1),
    (DataType.FLOAT32, 231.5), (DataType.FLOAT32, 16777218.0), (DataType.FLOAT32, 0.1),
    (DataType.FLOAT64, -0.1),
]

LAYOUTS = [(wo, bo) for wo in Order for bo in Order]


def wire_words(dtype: DataType, value: int | float, word_order: Order, byte_order: Order) -> list[int]:
    """How a device lays the value out: ABCD, CDAB (words swapped), BADC (bytes swapped), DCBA."""
    if word_order is Order.LITTLE and byte_order is Order.LITTLE:
        raw = struct.pack("<" + STRUCT_CODE[dtype], value)  # fully little-endian: DCBA
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    raw = struct.pack(">" + STRUCT_CODE[dtype], value)
    pairs = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word_order is Order.LITTLE:
        pairs.reverse()
    if byte_order is Order.LITTLE:
        pairs = [p[::-1] for p in pairs]
    return [int.from_bytes(p, "big") for p in pairs]


@pytest.mark.parametrize(("dtype", "value", "wo", "bo", "words"), [
    (DataType.FLOAT32, 231.5, Order.BIG, Order.BIG, [0x4367, 0x8000]),
    (DataType.FLOAT32, 231.5, Order.LITTLE, Order.BIG, [0x8000, 0x4367]),
    (DataType.FLOAT32, 231.5, Order.BIG, Order.LITTLE, [0x6743, 0x0080]),
    (DataType.FLOAT32, 231.5, Order.LITTLE, Order.LITTLE, [0x0080, 0x6743]),
    (DataType.UINT32, 0x01020304, Order.BIG, Order.BIG, [0x0102, 0x0304]),
    (DataType.UINT32, 0x01020304, Order.LITTLE, Order.BIG, [0x0304, 0x0102]),
    (DataType.UINT32, 0x01020304, Order.BIG, Order.LITTLE, [0x0201, 0x0403]),
    (DataType.UINT32, 0x01020304, Order.LITTLE, Order.LITTLE, [0x0403, 0x0201]),
    (DataType.INT16, -2, Order.BIG, Order.LITTLE, [0xFEFF]),
    (DataType.UINT64, 0x0102030405060708, Order.LITTLE, Order.BIG, [0x0708, 0x0506, 0x0304, 0x0102]),
])
def test_hand_written_layouts(dtype: DataType, value: int, wo: Order, bo: Order, words: list[int]) -> None:
    assert wire_words(dtype, value, wo, bo) == words
    assert encode(value, dtype, wo, bo) == words


def test_float32_shortest() -> None:
    def widen(x: float) -> float:
        value: float = struct.unpack(">f", struct.pack(">f", x))[0]
        return value

    assert widen(227.3027) != 227.3027  # the noise this removes
    assert float32_shortest(widen(227.3027)) == 227.3027
    assert float32_shortest(widen(231.5)) == 231.5
    assert float32_shortest(widen(0.1)) == 0.1
    assert float32_shortest(16777218.0) == 16777218.0  # 7 significant digits would say 16777220
    assert float32_shortest(widen(123456789.0)) == 123456790.0  # the same float32 as 123456792
    for edge in (widen(1e-40), widen(3.4028234e38), widen(-1.17549435e-38)):  # subnormal, max, min normal
        assert widen(float32_shortest(edge)) == edge
    nan = float32_shortest(float("nan"))
    assert nan != nan


def test_register_bank_stores_raw_words_and_counts() -> None:
    bank = RegisterBank(size=4)
    bank.set(Table.INPUT, 2, [0xFFFF, 7])
    assert bank.get(Table.INPUT, 2, 2) == [0xFFFF, 7]
    for table, address, values in [(Table.INPUT, 3, [1, 2]), (Table.HOLDING, -1, [1]), (Table.HOLDING, 0, [0x10000]),
                                   (Table.HOLDING, 0, [True]), (Table.COIL, 0, [2])]:
        with pytest.raises(ValueError):
            bank.set(table, address, values)
    bank.fill_counters()
    bank.set(Table.HOLDING, 3, [0xFFFF])
    bank.step()
    assert bank.get(Table.HOLDING, 0, 4) == [1, 2, 3, 0]  # counting up, wrapping like a 16-bit counter
    assert bank.get(Table.DISCRETE, 0, 2) == [True, False]  # started at address parity, then flipped


class Bench:
    """The register bank and the point list that reads it back, built side by side."""

    def __init__(self, bank: RegisterBank) -> None:
        self.bank = bank
        self.points: list[dict[str, Any]] = []
        self.expected: dict[str, dict[str, Any]] = {}
        self.approx: set[str] = set()  # scaled: float arithmetic, compared to 12 digits
        self.next_free = {Table.HOLDING: 0, Table.INPUT: 0}

    def register(self, pid: str, table: Table, dtype: DataType, value: int | float, wo: Order = Order.BIG,
                 bo: Order = Order.BIG, *, scale: float = 1.0, offset: float = 0.0, unit: str | None = None,
                 expect: float | None = None) -> None:
        words = encode(value, dtype, wo, bo)
        assert words == wire_words(dtype, value, wo, bo), f"{pid}: encode disagrees with struct"
        address = self.next_free[table]
        self.next_free[table] += len(words) + 1  # one spare register between points, bridged by the plan
        self.bank.set(table, address, words)
        point: dict[str, Any] = dict(id=pid, table=table.value, address=address, type=dtype.value,
                                     word_order=wo.value, byte_order=bo.value)
        if scale != 1.0 or offset != 0.0:
            assert expect is not None, f"{pid}: a scaled point needs its expected value"
            point.update(scale=scale, offset=offset)
            self.approx.add(pid)
        self.add(point, value if expect is None else expect, unit)

    def add(self, point: dict[str, Any], value: Any, unit: str | None = None, quality: str = "good") -> None:
        if unit:
            point["unit"] = unit
        self.points.append(point)
        self.expected[point["id"]] = {"v": value, "q": quality, **({"u": unit} if unit else {})}


def build(bank: RegisterBank) -> Bench:
    b = Bench(bank)
    for wo, bo in LAYOUTS:
        table = Table.HOLDING if wo is Order.BIG else Table.INPUT
        for dtype, value in VALUES.items():
            b.register(f"{dtype.value}_{wo.value}_{bo.value}", table, dtype, value, wo, bo, unit="V")
    for i, (dtype, value) in enumerate(EXTREMES):
        b.register(f"extreme_{i}_{dtype.value}", Table.HOLDING, dtype, value)

    # value = raw * scale + offset, with float32 rounding applied to raw first
    b.register("scaled_int16", Table.HOLDING, DataType.INT16, -1234, scale=0.1, offset=5, unit="°C",
               expect=-118.4)
    b.register("scaled_uint16", Table.INPUT, DataType.UINT16, 54321, Order.BIG, Order.LITTLE, scale=0.01,
               unit="kWh", expect=543.21)
    b.register("scaled_int32", Table.HOLDING, DataType.INT32, -123456789, Order.LITTLE, Order.BIG, scale=0.001,
               expect=-123456.789)
    b.register("scaled_float32", Table.INPUT, DataType.FLOAT32, 227.3027, Order.LITTLE, Order.LITTLE,
               scale=0.001, unit="kV", expect=0.2273027)  # noise would show at the 9th digit
    b.register("scaled_float32_offset", Table.HOLDING, DataType.FLOAT32, 231.5, scale=1000, offset=-0.5,
               expect=231499.5)
    b.register("scaled_uint64", Table.HOLDING, DataType.UINT64, 10**15, Order.LITTLE, Order.LITTLE, scale=1e-6,
               offset=-1, expect=999_999_999.0)

    # bool on a register bit: bits count from the LSB after byte-order correction
    for wo, bo in LAYOUTS:
        table = Table.HOLDING if wo is Order.BIG else Table.INPUT
        address = b.next_free[table]
        b.next_free[table] += 2
        word = 0x0020 if bo is Order.BIG else 0x2000  # bit 5 set, as this device's byte order sends it
        bank.set(table, address, [word])
        common = dict(table=table.value, address=address, type="bool", word_order=wo.value, byte_order=bo.value)
        b.add(dict(id=f"bit5_{wo.value}_{bo.value}", bit=5, **common), True)
        b.add(dict(id=f"bit13_{wo.value}_{bo.value}", bit=13, **common), False)
        b.add(dict(id=f"nonzero_{wo.value}_{bo.value}", **common), True)
    zero = b.next_free[Table.HOLDING]
    b.next_free[Table.HOLDING] += 2
    b.add(dict(id="zero_word", table="holding", address=zero, type="bool"), False)

    # NaN is not a value: the point is bad, and JSON carries null
    nan = b.next_free[Table.HOLDING]
    b.next_free[Table.HOLDING] += 3
    bank.set(Table.HOLDING, nan, [0x7FC0, 0x0000])
    b.add(dict(id="nan_float32", table="holding", address=nan, type="float32"), None, "A", "bad")

    bank.set(Table.COIL, 3, [True, False])
    bank.set(Table.DISCRETE, 7, [False, True])
    b.add(dict(id="coil_on", table="coil", address=3, type="bool"), True)
    b.add(dict(id="coil_off", table="coil", address=4, type="bool"), False)
    b.add(dict(id="discrete_off", table="discrete", address=7, type="bool"), False)
    b.add(dict(id="discrete_on", table="discrete", address=8, type="bool"), True, "alarm")

    # Past the bank's end and beyond max_gap from the rest: a read of its own, answered with an exception.
    b.add(dict(id="missing", table="holding", address=SIZE + 10, type="uint16", unit="Hz"), None, "Hz", "bad")
    return b


async def test_every_type_and_layout_reaches_the_subscriber(tmp_path: Path, broker: Broker,
                                                            collector: Collector) -> None:
    server = await serve_registers("127.0.0.1", 0, size=SIZE)
    try:
        bench = build(server.banks[0])
        config = write_config(
            tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port,
            buses=[dict(id="bus", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0], timeout="1s")],
            devices=[dict(id="bank", bus="bus", interval="200ms", max_gap=8, points=bench.points)],
        )
        daemon = Daemon(load_config(config))
        plan = daemon.drivers["bank"].plans["bank"]
        assert len(plan.blocks) == 5, plan.blocks  # holding, the missing one alone, input, coil, discrete
        async with running(daemon):
            await collector.wait_for(lambda: collector.of_type("telemetry"))
            await asyncio.sleep(0.3)
            assert daemon.pollers["bank"].state.state == "online"
        _, msg = collector.of_type("telemetry")[0]
    finally:
        await server.close()

    got: dict[str, dict[str, Any]] = msg["points"]
    assert msg["device"] == "bank"
    assert set(got) == set(bench.expected)
    wrong = {}
    for pid, want in bench.expected.items():
        if pid in bench.approx:
            want = {**want, "v": pytest.approx(want["v"], rel=1e-12)}
        # bool is a subclass of int in Python and 1 == 1.0: compare JSON types too
        if got[pid] != want or type(got[pid]["v"]) is not type(bench.expected[pid]["v"]):
            wrong[pid] = (got[pid], want)
    assert not wrong, "\n".join(f"{pid}: got {g}, want {w}" for pid, (g, w) in wrong.items())

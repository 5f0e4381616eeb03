"""The awkward-device and converter simulators, driven over real Modbus TCP by a plain pymodbus client.

Each behaviour is checked on the wire: exception codes, lost requests, closed connections, the
counter's wrap, the converter's one-transaction-at-a-time line. Timing is asserted as lower bounds
only (a slow machine may take longer, never less).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from drivers.modbus.codec import DataType, Order, Table, decode
from gateway.core.timing import wait_until
from simulators.awkward import (
    DEFAULT_GAPS,
    AwkwardConfig,
    AwkwardDevice,
    parse_behaviour,
    pattern,
    runs,
    serve_awkward,
    to_words,
)
from simulators.converter import RtuConverter, SerialUnit, UnitSpec, serve_converter
from simulators.rtu import Behaviour, Garble, garble

HOST = "127.0.0.1"
BOUND = 20.0  # every test's wire work ends within this, or fails


def client(port: int, timeout: float = 1.0, **kwargs: Any) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient(HOST, port=port, timeout=timeout, retries=0, reconnect_delay=0, **kwargs)


@asynccontextmanager
async def serving(*devices: AwkwardDevice, reply_timeout: float = 1.0) -> AsyncIterator[list[AsyncModbusTcpClient]]:
    """The devices on their own ports, a connected client for each; all closed after, within BOUND."""
    async with asyncio.timeout(BOUND), await serve_awkward(HOST, 0, *devices) as server:
        clients = [client(port, reply_timeout) for port in server.ports]
        try:
            for c in clients:
                assert await c.connect(), "cannot connect to the simulator"
            yield clients
        finally:
            for c in clients:
                c.close()


async def outcome(call: Any) -> int | str:
    """0 for a reply, the exception code for an exception reply, "lost" when nothing came back."""
    try:
        reply = await call
    except ModbusIOException:
        return "lost"
    return int(reply.exception_code) if reply.isError() else 0


# ------------------------------------------------------------------ values, gaps, limits


async def test_normal_addresses_hold_their_pattern_and_typed_values_read_back() -> None:
    device = AwkwardDevice(size=300)
    device.put(100, 230.5, "float32", word_order=Order.LITTLE)
    device.put(102, -123456, DataType.INT32)
    device.put(104, 4_000_000_000, "uint32", word_order=Order.LITTLE, byte_order=Order.LITTLE)
    async with serving(device) as [c]:
        holding = (await c.read_holding_registers(0, count=10)).registers
        assert holding == [pattern(Table.HOLDING, a) for a in range(10)] == list(range(10))
        assert (await c.read_input_registers(5, count=3)).registers == [0xFFFF - 5, 0xFFFF - 6, 0xFFFF - 7]
        assert (await c.read_coils(0, count=8)).bits == [a % 2 == 1 for a in range(8)]
        assert (await c.read_discrete_inputs(0, count=8)).bits == [a % 3 == 0 for a in range(8)]
        words = (await c.read_holding_registers(100, count=6)).registers
    assert decode(words[0:2], DataType.FLOAT32, Order.LITTLE) == 230.5
    assert decode(words[2:4], DataType.INT32) == -123456
    assert decode(words[4:6], DataType.UINT32, Order.LITTLE, Order.LITTLE) == 4_000_000_000


async def test_a_read_touching_a_gap_answers_exception_2_and_reads_within_runs_succeed() -> None:
    device = AwkwardDevice(mapped={Table.HOLDING: [range(0, 10), range(20, 30)], Table.COIL: [range(0, 16)]})
    async with serving(device) as [c]:
        assert await outcome(c.read_holding_registers(0, count=10)) == 0
        assert await outcome(c.read_holding_registers(20, count=10)) == 0
        assert await outcome(c.read_holding_registers(3, count=4)) == 0
        for address, count in [(0, 11), (9, 2), (10, 1), (15, 10), (19, 2), (29, 2), (5, 30), (30, 1), (60000, 1)]:
            assert await outcome(c.read_holding_registers(address, count=count)) == 2, (address, count)
        assert await outcome(c.read_input_registers(0, count=1)) == 2  # a table with nothing mapped
        assert await outcome(c.read_coils(8, count=9)) == 2
        assert await outcome(c.write_register(12, 7)) == 2
        assert await outcome(c.write_registers(8, [1, 2, 3])) == 2
        assert await outcome(c.write_register(21, 7)) == 0
        assert (await c.read_holding_registers(21, count=1)).registers == [7]
    assert device.stats.exceptions == {2: 13}
    assert device.stats.answered == device.stats.requests == 18


async def test_the_default_gap_map_is_three_runs_of_a_hundred() -> None:
    device = AwkwardDevice(parse_behaviour("gaps"))
    async with serving(device) as [c]:
        for start in (0, 200, 1000):
            assert await outcome(c.read_holding_registers(start, count=100)) == 0
            assert await outcome(c.read_input_registers(start + 99, count=2)) == 2
        assert await outcome(c.read_holding_registers(100, count=1)) == 2
    assert device.config.mapped == DEFAULT_GAPS


async def test_a_read_above_the_limit_answers_exception_3_and_one_at_the_limit_succeeds() -> None:
    device = AwkwardDevice(read_limit=32, bit_limit=16, mapped={Table.HOLDING: [range(0, 50)], Table.COIL: [range(40)]})
    async with serving(device) as [c]:
        assert await outcome(c.read_holding_registers(0, count=32)) == 0
        assert await outcome(c.read_holding_registers(0, count=33)) == 3
        assert await outcome(c.read_holding_registers(40, count=33)) == 3  # quantity is checked before address
        assert await outcome(c.read_holding_registers(40, count=32)) == 2
        assert await outcome(c.read_coils(0, count=16)) == 0
        assert await outcome(c.read_coils(0, count=17)) == 3
        assert await outcome(c.write_registers(0, list(range(40)))) == 0  # the limit is on reads
    assert device.stats.exceptions == {3: 3, 2: 1}
    assert device.stats.by_count == {32: 2, 33: 2, 16: 1, 17: 1}


async def test_unsupported_function_and_other_unit_ids() -> None:
    device = AwkwardDevice(unit_id=7)
    async with serving(device, reply_timeout=0.3) as [c]:
        assert await outcome(c.read_holding_registers(0, count=1, device_id=7)) == 0
        assert await outcome(c.read_holding_registers(0, count=1, device_id=8)) == "lost"
        assert await outcome(c.read_exception_status(device_id=7)) == 1  # FC 7: not implemented here
    assert device.stats.other_unit == 1
    assert device.stats.exceptions == {1: 1}


# ------------------------------------------------------------------ busy, lossy, slow


async def test_busy_every_kth_request_answers_6_or_5() -> None:
    busy, acknowledging = AwkwardDevice(busy_every=3), AwkwardDevice(busy_every=4, busy_code=5)
    async with serving(busy, acknowledging) as [c, d]:
        seen = [await outcome(c.read_holding_registers(0, count=2)) for _ in range(9)]
        acks = [await outcome(d.read_holding_registers(0, count=2)) for _ in range(8)]
    assert seen == [0, 0, 6] * 3
    assert acks == [0, 0, 0, 5] * 2
    assert busy.stats.exceptions == {6: 3} and acknowledging.stats.exceptions == {5: 2}


async def test_a_busy_fraction_repeats_with_its_seed() -> None:
    devices = [AwkwardDevice(busy=0.3, seed=seed) for seed in (11, 11, 12)]
    async with serving(*devices) as clients:
        patterns = [[await outcome(c.read_holding_registers(0, count=1)) for _ in range(200)] for c in clients]
    assert patterns[0] == patterns[1] != patterns[2]
    for device, seen in zip(devices, patterns, strict=True):
        assert set(seen) == {0, 6}
        assert device.stats.exceptions[6] == seen.count(6)
        assert 0.2 <= seen.count(6) / 200 <= 0.4  # deterministic for these seeds, not a statistical hope


async def test_lost_requests_time_out_at_the_client() -> None:
    device = AwkwardDevice(lossy=0.4, seed=3)
    lost = 0
    async with serving(device, reply_timeout=0.2) as [c]:
        for _ in range(15):
            if not c.connected:  # pymodbus hangs up itself after a few silent requests in a row
                assert await c.connect()
            result = await outcome(c.read_holding_registers(0, count=1))
            assert result in (0, "lost")
            lost += result == "lost"
    assert 0 < lost < 15
    assert device.stats.dropped == lost
    assert device.stats.answered == 15 - lost and device.stats.requests == 15


async def test_a_slow_device_answers_after_its_delay_one_request_at_a_time() -> None:
    slow = AwkwardDevice(delay=0.4, jitter=0.1)
    async with serving(slow, reply_timeout=5.0) as [c]:
        start = time.monotonic()
        assert await outcome(c.read_holding_registers(0, count=1)) == 0
        assert time.monotonic() - start >= 0.4
    async with asyncio.timeout(BOUND), await serve_awkward(HOST, 0, slow) as server:
        first, second = client(server.ports[0], 5.0), client(server.ports[0], 5.0)
        assert await first.connect() and await second.connect()
        start = time.monotonic()
        results = await asyncio.gather(first.read_holding_registers(0, count=1),
                                       second.read_holding_registers(1, count=1))
        elapsed = time.monotonic() - start
        first.close()
        second.close()
    assert [r.registers for r in results] == [[0], [1]]
    assert elapsed >= 0.8  # two clients, one CPU: the second waited for the first


# ------------------------------------------------------------------ dropped connections


def mbap_read(tid: int, address: int, count: int, unit: int = 1) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, 3, address, count)


async def test_every_kth_request_closes_the_connection_unanswered() -> None:
    device = AwkwardDevice(drop_every=3)
    async with asyncio.timeout(BOUND), await serve_awkward(HOST, 0, device) as server:
        reader, writer = await asyncio.open_connection(HOST, server.ports[0])
        for tid in (1, 2):
            writer.write(mbap_read(tid, 0, 2))
            reply = await reader.readexactly(13)
            assert reply[:2] == tid.to_bytes(2, "big") and reply[7:] == bytes([3, 4, 0, 0, 0, 1])
        writer.write(mbap_read(3, 0, 2))
        assert await reader.read() == b""  # EOF, no reply
        writer.close()
        # A pymodbus client sees the same: a closed connection, its request unanswered.
        events: list[bool] = []
        c = client(server.ports[0], 1.0, trace_connect=events.append)
        assert await c.connect()
        assert await outcome(c.read_holding_registers(0, count=1)) == 0  # request 4
        assert await outcome(c.read_holding_registers(0, count=1)) == 0  # request 5
        assert await outcome(c.read_holding_registers(0, count=1)) == "lost"  # request 6: hung up
        assert events[-1] is False and not c.connected
        c.close()
    assert device.stats.hang_ups == 2 and device.stats.answered == 4


async def test_drop_connections_closes_every_client_and_leaves_pending_requests_unanswered() -> None:
    device = AwkwardDevice(delay=0.5)
    async with asyncio.timeout(BOUND), await serve_awkward(HOST, 0, device) as server:
        pairs = [await asyncio.open_connection(HOST, server.ports[0]) for _ in range(2)]
        await wait_until(lambda: device.stats.connections >= 2, BOUND, "both connections seen")
        pairs[0][1].write(mbap_read(1, 0, 1))
        await wait_until(lambda: device.stats.requests >= 1, BOUND, "the request being served (0.5 s)")
        assert device.drop_connections() == 2
        for reader, writer in pairs:
            assert await reader.read() == b""
            writer.close()
        await wait_until(lambda: device.stats.abandoned >= 1, BOUND, "the pending reply finished, for nobody")
    assert device.stats.hang_ups == 2
    assert device.stats.abandoned == 1 and device.stats.answered == 0


# ------------------------------------------------------------------ the counter


async def test_the_counter_wraps_at_2_to_the_32_and_resets() -> None:
    device = AwkwardDevice(counter=10, counter_start=2**32 - 2, counter_step=1)
    little = AwkwardDevice(counter=0, counter_start=2**32 - 300, counter_step=100, counter_word_order=Order.LITTLE)

    async def value(c: AsyncModbusTcpClient, address: int, order: Order = Order.BIG) -> int | float | bool:
        return decode((await c.read_holding_registers(address, count=2)).registers, DataType.UINT32, order)

    async with serving(device, little) as [c, d]:
        seen = []
        for _ in range(4):
            seen.append(await value(c, 10))
            device.tick()
        assert seen == [2**32 - 2, 2**32 - 1, 0, 1]
        assert await value(d, 0, Order.LITTLE) == 2**32 - 300
        little.tick()
        assert await value(d, 0, Order.LITTLE) == 2**32 - 200
        little.tick(3)
        assert await value(d, 0, Order.LITTLE) == 100 == little.counter_value
        device.reset_counter()
        assert await value(c, 10) == 0
        device.reset_counter(12345)
        assert await value(c, 10) == 12345
    with pytest.raises(ValueError, match="counter"):
        device.reset_counter(2**32)
    with pytest.raises(ValueError, match="not on mapped registers"):
        AwkwardDevice(counter=5, mapped={Table.HOLDING: [range(0, 6)]})


async def test_a_served_counter_ticks_on_its_own() -> None:
    device = AwkwardDevice(counter=0, counter_step=5)
    async with asyncio.timeout(BOUND), await serve_awkward(HOST, 0, device, tick_interval=0.05):
        await wait_until(lambda: device.counter_value >= 15, BOUND, "the counter ticking")
    assert device.counter_value % 5 == 0


# ------------------------------------------------------------------ the converter


def line_time(baud: int, *frames: int) -> float:
    """Seconds the frames take on an 8N1 line at ``baud``, each followed by 3.5 characters of silence."""
    char = 10 / baud
    return sum(frames) * char + len(frames) * 3.5 * char


async def test_the_converter_runs_one_transaction_at_a_time() -> None:
    async with asyncio.timeout(BOUND), await serve_converter(HOST, 0, {1: "ok", 2: "ok"}, baudrate=2400) as server:
        first, second = client(server.ports[0], 5.0), client(server.ports[0], 5.0)
        assert await first.connect() and await second.connect()
        start = time.monotonic()
        results = await asyncio.gather(first.read_holding_registers(0, count=20, device_id=1),
                                       second.read_holding_registers(5, count=20, device_id=2))
        elapsed = time.monotonic() - start
        first.close()
        second.close()
    assert results[0].registers == list(range(20)) and results[1].registers == list(range(5, 25))
    one = line_time(2400, 8, 5 + 40)  # request 8 bytes, reply unit + fc + count + 40 + CRC
    assert elapsed >= 2 * one
    stats = server.converter.stats
    assert stats.max_waiting >= 1
    (a_start, a_end, *_), (b_start, b_end, *_) = stats.log
    assert a_end <= b_start and a_end - a_start >= one and b_end - b_start >= one


async def test_a_dead_unit_costs_the_serial_timeout_then_exception_11_and_holds_the_line() -> None:
    async with asyncio.timeout(BOUND), await serve_converter(HOST, 0, {1: "ok", 2: "dead"},
                                                             serial_timeout=0.4) as server:
        dead, healthy = client(server.ports[0], 3.0), client(server.ports[0], 3.0)
        assert await dead.connect() and await healthy.connect()
        start = time.monotonic()
        dead_call = asyncio.create_task(outcome(dead.read_holding_registers(0, count=2, device_id=2)))
        await wait_until(lambda: server.converter.stats.requests >= 1, BOUND, "the dead unit's request on the line")
        assert await outcome(healthy.read_holding_registers(0, count=2, device_id=1)) == 0
        healthy_done = time.monotonic() - start
        assert await dead_call == 11
        assert await outcome(dead.read_holding_registers(0, count=2, device_id=9)) == 11  # nobody at 9
        dead.close()
        healthy.close()
    assert healthy_done >= 0.4  # it waited for the dead unit's timeout
    units = server.converter.stats.units
    assert units[2].timeouts == 1 and units[2].exceptions == {11: 1}
    assert units[1].answered == 1 and units[9].timeouts == 1


async def test_a_silent_converter_leaves_the_client_to_time_out() -> None:
    async with asyncio.timeout(BOUND), await serve_converter(HOST, 0, {2: "dead"}, serial_timeout=0.2,
                                                             dead_reply="silence") as server:
        c = client(server.ports[0], 0.6)
        assert await c.connect()
        assert await outcome(c.read_holding_registers(0, count=2, device_id=2)) == "lost"
        c.close()
    assert server.converter.stats.units[2].timeouts == 1


async def test_garbage_from_a_unit_is_dropped_by_the_converter_except_a_valid_frame_for_another_function() -> None:
    async with asyncio.timeout(BOUND), await serve_converter(HOST, 0, {3: "garbage"}, serial_timeout=0.2) as server:
        c = client(server.ports[0], 2.0)
        assert await c.connect()
        replies = [await c.read_holding_registers(0, count=3, device_id=3) for _ in Garble]
        c.close()
    assert [r.function_code for r in replies] == [0x83, 0x83, 4, 0x83, 0x83]  # crc, unit, function, truncate, noise
    assert replies[2].registers == [0, 1, 2]
    unit = server.converter.stats.units[3]
    assert unit.garbled == dict.fromkeys(Garble, 1) and unit.timeouts == 4 and unit.answered == 1


async def test_units_behind_the_converter_keep_their_awkward_faults() -> None:
    units: dict[int, UnitSpec] = {4: AwkwardDevice(unit_id=4, read_limit=10),
                                  5: SerialUnit(AwkwardDevice(unit_id=5), Behaviour.SLOW, 0.3)}
    async with asyncio.timeout(BOUND), await serve_converter(HOST, 0, units, serial_timeout=0.2) as server:
        c = client(server.ports[0], 2.0)
        assert await c.connect()
        assert await outcome(c.read_holding_registers(0, count=11, device_id=4)) == 3
        assert await outcome(c.read_holding_registers(0, count=2, device_id=5)) == 11  # too slow for the line
        c.close()
    stats = server.converter.stats.units
    assert stats[4].exceptions == {3: 1} and stats[4].answered == 1 and stats[5].timeouts == 1
    with pytest.raises(ValueError, match="unit id 4"):
        RtuConverter({6: AwkwardDevice(unit_id=4)})


# ------------------------------------------------------------------ the RTU line's garbage


def test_each_garble_spoils_a_frame_its_own_way() -> None:
    framer = FramerRTU(DecodePDU(False))
    frame = framer.encode(bytes([3, 4, 0, 1, 0, 2]), 5, 0)
    rng = random.Random(0)
    crc = garble(frame, Garble.CRC, rng)
    assert crc[:-1] == frame[:-1] and crc != frame
    wrong_unit = garble(frame, Garble.UNIT, rng)
    assert wrong_unit[0] != 5 and framer.encode(wrong_unit[1:-2], wrong_unit[0], 0) == wrong_unit
    wrong_function = garble(frame, Garble.FUNCTION, rng)
    assert wrong_function[:2] == bytes([5, 4]) and framer.encode(wrong_function[1:-2], 5, 0) == wrong_function
    assert frame.startswith(garble(frame, Garble.TRUNCATE, rng)) and len(garble(frame, Garble.TRUNCATE, rng)) < 9
    assert isinstance(garble(bytes([1]), Garble.CRC, rng), bytes)  # too short to spoil: noise instead


# ------------------------------------------------------------------ properties of the encoders and parsers

_VALUES: dict[DataType, st.SearchStrategy[Any]] = {
    DataType.INT16: st.integers(-(2**15), 2**15 - 1), DataType.UINT16: st.integers(0, 2**16 - 1),
    DataType.INT32: st.integers(-(2**31), 2**31 - 1), DataType.UINT32: st.integers(0, 2**32 - 1),
    DataType.INT64: st.integers(-(2**63), 2**63 - 1), DataType.UINT64: st.integers(0, 2**64 - 1),
    DataType.FLOAT32: st.floats(width=32, allow_nan=False), DataType.FLOAT64: st.floats(allow_nan=False),
}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(list(_VALUES)).flatmap(lambda t: st.tuples(st.just(t), _VALUES[t])),
       st.sampled_from(Order), st.sampled_from(Order))
def test_typed_words_decode_back_with_the_gateways_codec(typed: tuple[DataType, Any], word: Order,
                                                        byte: Order) -> None:
    dtype, value = typed
    words = to_words(value, dtype, word, byte)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, dtype, word, byte) == value


def test_typed_words_refuse_what_does_not_fit() -> None:
    for value, dtype in [(2**32, "uint32"), (-1, "uint16"), (1.5, "int32"), (1e39, "float32"), (1, "bool")]:
        with pytest.raises(ValueError):
            to_words(value, dtype)


_ADDRESSES = st.lists(st.one_of(st.integers(0, 300), st.builds(lambda a, n: range(a, a + n), st.integers(0, 300),
                                                             st.integers(0, 40))), max_size=12)


@settings(max_examples=300, deadline=None)
@given(_ADDRESSES)
def test_runs_cover_exactly_the_addresses_given(addresses: list[int | range]) -> None:
    merged = runs(addresses)
    expect = {a for item in addresses for a in ([item] if isinstance(item, int) else item)}
    assert {a for run in merged for a in run} == expect
    assert all(len(run) and run.step == 1 for run in merged)
    assert all(a.stop < b.start for a, b in itertools.pairwise(merged))  # sorted, never touching


_CONFIGS = st.builds(
    AwkwardConfig,
    unit_id=st.integers(0, 255), size=st.integers(1, 65536),
    mapped=st.none() | st.dictionaries(st.sampled_from(Table), _ADDRESSES.map(runs)),
    read_limit=st.integers(1, 125), bit_limit=st.integers(1, 2000),
    busy=st.floats(0, 1), busy_every=st.integers(0, 50), busy_code=st.sampled_from([5, 6]),
    lossy=st.floats(0, 1), delay=st.floats(0, 10), jitter=st.floats(0, 1), drop_every=st.integers(0, 50),
    counter=st.none() | st.integers(0, 65534), counter_table=st.sampled_from(Table),
    counter_step=st.integers(0, 2**32 - 1), counter_start=st.integers(0, 2**32 - 1),
    counter_word_order=st.sampled_from(Order), seed=st.integers(-5, 2**40),
)


@settings(max_examples=300, deadline=None)
@given(_CONFIGS)
def test_a_config_survives_its_behaviour_spec(config: AwkwardConfig) -> None:
    assert parse_behaviour(config.spec()) == config


def test_behaviour_specs_say_what_is_wrong() -> None:
    assert parse_behaviour("gaps=0-9/20,limit=32,holding=5-6", seed=4) == AwkwardConfig(
        mapped={Table.HOLDING: [range(5, 7)], Table.INPUT: [range(10), 20], Table.COIL: [range(10), 20],
                Table.DISCRETE: [range(10), 20]}, read_limit=32, seed=4)
    for spec, message in [("limit=200", "read_limit"), ("fast", "unknown behaviour"), ("busy=x", "busy=x"),
                          ("busy-code=4", "busy_code"), ("limit", "unknown behaviour")]:
        with pytest.raises(ValueError, match=message):
            parse_behaviour(spec)


# ------------------------------------------------------------------ in their own processes


def _start(args: list[str]) -> tuple[subprocess.Popen[bytes], list[str]]:
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.stdout is not None
    return proc, _line(proc, 30.0).split()


def _line(proc: subprocess.Popen[bytes], within: float) -> str:
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], within)
    assert ready, "the simulator said nothing"
    return proc.stdout.readline().decode().strip()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s; its pipes closed either way."""
    proc.terminate()
    try:
        proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.mark.slow
async def test_the_awkward_cli_serves_consecutive_ports_and_answers_stats() -> None:
    proc, words = await asyncio.to_thread(_start, ["-m", "simulators.awkward", "--behaviour", "gaps,limit=32",
                                                   "--count", "2", "--tick", "0"])
    try:
        assert words[0] == "ready" and words[2] == "2", words
        port = int(words[1])
        for p in (port, port + 1):
            c = client(p)
            assert await c.connect()
            assert await outcome(c.read_holding_registers(0, count=32)) == 0
            assert await outcome(c.read_holding_registers(0, count=33)) == 3
            assert await outcome(c.read_holding_registers(99, count=2)) == 2
            c.close()
        assert proc.stdin is not None
        proc.stdin.write(b"stats\n")
        proc.stdin.flush()
        answer = await asyncio.to_thread(_line, proc, 10.0)
        assert answer.startswith("stats ") and '"exceptions": {"3": 1, "2": 1}' in answer
    finally:
        await asyncio.to_thread(_stop, proc)
    assert proc.returncode == 0


@pytest.mark.slow
async def test_the_converter_cli_serves_its_units() -> None:
    proc, words = await asyncio.to_thread(_start, ["-m", "simulators.converter", "--ok", "1,2", "--dead", "3",
                                                   "--serial-timeout", "0.2", "--behaviour", "limit=16"])
    try:
        assert words[0] == "ready", words
        c = client(int(words[1]), 2.0)
        assert await c.connect()
        assert await outcome(c.read_holding_registers(0, count=16, device_id=2)) == 0
        assert await outcome(c.read_holding_registers(0, count=17, device_id=1)) == 3
        assert await outcome(c.read_holding_registers(0, count=1, device_id=3)) == 11
        c.close()
    finally:
        await asyncio.to_thread(_stop, proc)
    assert proc.returncode == 0


def test_helpers_are_exact() -> None:
    assert math.isclose(line_time(9600, 8), (8 + 3.5) * 10 / 9600)
    converter = RtuConverter({1: "ok"}, baudrate=9600)
    assert math.isclose(converter.wire_time(8), line_time(9600, 8))
    assert RtuConverter({1: "ok"}, baudrate=115200).frame_gap == 0.00175

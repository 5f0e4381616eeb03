"""`gateway modbus read | scan`: a device not in the config, against real simulators over loopback.

Modbus TCP meters (pymodbus servers) and an RTU line of several units behind a socat pty pair, one of
them dead, one mad: the CLI runs as a technician runs it, in a child process, with no config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import struct
import sys
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import free_ports
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from test_cli import Run
from test_cli import gateway as cli

from drivers.modbus.cli import Wire, parse_endpoint, parse_units
from drivers.modbus.codec import DataType, Order, encode
from drivers.modbus.config import ModbusTcpBus
from gateway.core.errors import DriverError
from simulators.endpoints import ModbusEndpoints, sequential_block
from simulators.meter import serve_meters
from simulators.rtu import Behaviour, Garble, RtuLine, Unit


async def gateway(*args: str, within: float = 60.0) -> Run:
    """`gateway ARGS` in a child process (no config file anywhere): never a traceback, whatever the device sends."""
    run = await cli(*args, within=within)
    assert "Traceback" not in run.err, run.err
    return run


def bank(base: int, *, start: int = 0, size: int = 20) -> ModbusDeviceContext:
    """Registers ``base``, ``base + 1``, ... from wire address ``start`` (reads elsewhere: illegal address)."""
    hr = ModbusSequentialDataBlock(start + 1, [base + i for i in range(size)])  # type: ignore[no-untyped-call]
    return ModbusDeviceContext(hr=hr, ir=sequential_block([7, 8, 9, 10]), co=sequential_block([True, False, True]),
                               di=sequential_block([False] * 4))


@contextlib.asynccontextmanager
async def tcp_units(units: dict[int, ModbusDeviceContext]) -> AsyncIterator[int]:
    """One Modbus TCP endpoint serving several unit ids, as a TCP-to-RS485 converter does; yields its port."""
    server = ModbusEndpoints("127.0.0.1", [free_ports(1)], [ModbusServerContext(devices=units, single=False)])  # type: ignore[no-untyped-call]
    await server.start_all()
    try:
        yield server.ports[0]
    finally:
        await server.close()


# -- read ------------------------------------------------------------------------------------------


async def test_read_returns_the_meters_registers_raw_and_decoded() -> None:
    meters = await serve_meters("127.0.0.1", free_ports(1), count=1, unit_ids=[3])
    meter = meters.meters[0]
    meter.freeze()
    meter.set_point("voltage_a", 231.5)
    meter.set_point("voltage_b", -2.25)
    where = f"127.0.0.1:{meters.ports[0]}"
    try:
        run = await gateway("modbus", "read", where, "3", "0", "4", "--type", "float32", "--json")
        swapped = await gateway("modbus", "read", where, "3", "0", "2", "--type", "float32", "--word-order",
                                "little", "--json")
        serial = await gateway("modbus", "read", where, "3", "0", "2", "--table", "input", "--type", "uint32",
                               "--json")
        relay = await gateway("modbus", "read", where, "3", "0", "1", "--table", "coil", "--json")
        text = await gateway("modbus", "read", where, "3", "0", "2", "--type", "float32")
    finally:
        await meters.close()
    assert run.code == 0, run.err
    report = run.json()
    assert set(report) == {"endpoint", "unit", "table", "address", "count", "type", "word_order", "byte_order",
                           "registers", "hex", "bits", "values", "error"}
    words = encode(231.5, DataType.FLOAT32) + encode(-2.25, DataType.FLOAT32)
    assert report["registers"] == words and report["error"] is None
    assert report["hex"] == [f"0x{w:04X}" for w in words]
    assert report["values"] == [{"address": 0, "value": 231.5}, {"address": 2, "value": -2.25}]
    little = struct.unpack(">f", struct.pack(">HH", words[1], words[0]))[0]
    assert swapped.json()["values"] == [{"address": 0, "value": little}]
    assert serial.json()["values"] == [{"address": 0, "value": meter.get_point("serial_number")}]
    assert relay.json()["bits"] == [True] and relay.json()["registers"] is None
    assert text.code == 0 and f"0x{words[0]:04X}" in text.out and "231.5" in text.out


async def test_read_on_an_rtu_line_and_what_a_refusal_or_silence_says() -> None:
    units = {1: Unit(bank(100)), 2: Unit(bank(200)), 3: Unit(bank(300), Behaviour.DEAD)}
    async with RtuLine(units) as line:
        ok = await gateway("modbus", "read", "--rtu", line.port, "2", "4", "3", "--json")
        refused = await gateway("modbus", "read", "--rtu", line.port, "1", "40", "2")
        dead = await gateway("modbus", "read", "--rtu", line.port, "3", "0", "1", "--timeout", "200ms", "--json")
    assert ok.code == 0, ok.err
    assert ok.json()["registers"] == [204, 205, 206] and ok.json()["endpoint"] == line.port
    assert refused.code == 1 and "unit 1: exception 2 (illegal data address)" in refused.err
    assert dead.code == 1 and dead.json()["error"]["kind"] == "timeout"
    assert "no reply within 0.2s" in dead.err


# -- scan ------------------------------------------------------------------------------------------


async def test_scan_of_an_rtu_line_finds_exactly_the_live_units() -> None:
    """Live units, one answering only with an exception (no register 0: still there), one dead, one mad."""
    units = {1: Unit(bank(100)), 2: Unit(bank(200)), 5: Unit(bank(500)), 6: Unit(bank(600, start=100)),
             3: Unit(bank(300), Behaviour.DEAD), 8: Unit(bank(800), Behaviour.GARBAGE, garbage=(Garble.CRC,))}
    async with RtuLine(units) as line:
        run = await gateway("modbus", "scan", "--rtu", line.port, "--units", "1-10", "--timeout", "200ms", "--json")
        text = await gateway("modbus", "scan", "--rtu", line.port, "--units", "1-3", "--timeout", "200ms")
        asked = dict(line.stats.by_unit)
    assert run.code == 0, run.err
    result = run.json()
    assert set(result) == {"endpoint", "table", "address", "units_asked", "present", "garbled", "silent",
                           "timeout_s"}
    assert [p["unit"] for p in result["present"]] == [1, 2, 5, 6]
    by_unit = {p["unit"]: p for p in result["present"]}
    assert by_unit[1] == {"unit": 1, "answer": "ok", "exception": None, "value": 100}
    assert by_unit[6]["exception"] == 2 and by_unit[6]["answer"] == "exception 2 (illegal data address)"
    assert [g["unit"] for g in result["garbled"]] == [8]
    assert result["silent"] == 5 and result["units_asked"] == 10  # 3 (dead), 4, 7, 9, 10
    assert run.err == ""  # no progress line with --json
    assert asked[3] == 2  # the dead unit was asked (once per scan), and stayed silent
    assert text.code == 0 and "2 of 3 unit id(s) answered" in text.out


async def test_scan_of_a_tcp_converter_counts_its_gateway_exceptions_as_absent() -> None:
    """A converter answers exception 11 for a unit id nobody has: that is no unit."""
    async with tcp_units({4: bank(400), 9: bank(900, start=50)}) as port:
        run = await gateway("modbus", "scan", f"127.0.0.1:{port}", "--units", "1-12", "--json")
        none = await gateway("modbus", "scan", f"127.0.0.1:{port}", "--units", "20-22")
    assert run.code == 0, run.err
    assert [(p["unit"], p["exception"]) for p in run.json()["present"]] == [(4, None), (9, 2)]
    assert run.json()["silent"] == 10
    assert none.code == 1 and "0 of 3 unit id(s) answered" in none.out


async def test_scan_of_an_endpoint_nobody_listens_on_is_one_clear_line() -> None:
    port = free_ports(1)
    run = await gateway("modbus", "scan", f"127.0.0.1:{port}", "--units", "1-3")
    assert run.code == 1 and f"127.0.0.1:{port}: " in run.err and "cannot open" in run.err
    missing = await gateway("modbus", "scan", "--rtu", "/dev/no-such-adapter", "--units", "1")
    assert missing.code == 1 and "/dev/no-such-adapter" in missing.err


async def test_scan_shows_progress_on_a_terminal_only() -> None:
    """stderr a terminal (a pty here): a redrawn progress line; the answer itself stays on stdout."""
    main, side = pty.openpty()
    try:
        async with tcp_units({2: bank(200)}) as port:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "modbus", "scan", f"127.0.0.1:{port}", "--units", "1-3",
                stdout=asyncio.subprocess.PIPE, stderr=side)
            os.close(side)
            async with asyncio.timeout(60):
                out, _ = await proc.communicate()
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once the child's end is closed and read
            while chunk := os.read(main, 4096):
                drawn += chunk
    finally:
        os.close(main)
    assert proc.returncode == 0 and "1 of 3 unit id(s) answered" in out.decode()
    assert b"\r" in drawn and f"scanning 127.0.0.1:{port} (1 found) 3/3 units".encode() in drawn, drawn


# -- bad arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    (("read", "3", "0", "1"), "give HOST[:PORT] for Modbus TCP or --rtu PORT"),
    (("read", "127.0.0.1", "3", "0", "1", "--rtu", "/dev/ttyUSB0"), "one of them"),
    (("read", "127.0.0.1:99999", "1", "0", "1"), "port '99999' is not a number in 1..65535"),
    (("read", "127.0.0.1", "1", "0", "126"), "COUNT 126 is outside 1..125"),
    (("read", "127.0.0.1", "1", "0", "3", "--type", "float32"), "COUNT 3 is not a whole number of float32"),
    (("read", "127.0.0.1", "1", "65535", "2"), "runs past 65535"),
    (("read", "127.0.0.1", "one", "0", "1"), "UNIT must be a whole number"),
    (("read", "--rtu", "/dev/ttyUSB0", "0", "0", "1"), "0 is broadcast"),
    (("read", "--rtu", "/dev/ttyUSB0", "1", "0", "1", "--baud", "12"), "--baud"),
    (("read", "127.0.0.1", "1", "0", "1", "--timeout", "soon"), "invalid duration"),
    (("read", "127.0.0.1", "1", "0", "1", "--type", "float16"), "invalid choice"),
    (("scan", "--units", "1-300", "--rtu", "/dev/ttyUSB0"), "unit ids are 1..247"),
    (("scan", "--units", "9-3", "--rtu", "/dev/ttyUSB0"), "runs backwards"),
    (("scan",), "give HOST[:PORT] for Modbus TCP or --rtu PORT"),
])
async def test_bad_arguments_exit_2_with_what_is_wrong(args: tuple[str, ...], says: str) -> None:
    run = await gateway("modbus", *args)
    assert run.code == 2 and says in run.err, run.err
    assert run.out == ""


# -- hostile replies -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def hostile(reply: Callable[[bytes], bytes | None]) -> AsyncIterator[int]:
    """A TCP endpoint answering each request with ``reply(request)`` (None: hang up); yields its port."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(260):
                answer = reply(data)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def mbap(request: bytes, pdu: bytes, *, unit: int | None = None, length: int | None = None) -> bytes:
    """A Modbus TCP reply header for ``request`` carrying ``pdu`` (a wrong unit or length when asked)."""
    return request[:4] + struct.pack(">HB", len(pdu) + 1 if length is None else length,
                                     request[6] if unit is None else unit) + pdu


HOSTILE: dict[str, Callable[[bytes], bytes | None]] = {
    "short frame": lambda rq: mbap(rq, b"\x03\x04\x00\x01"),  # says 4 bytes, carries 2
    "too many registers": lambda rq: mbap(rq, b"\x03\x04\x00\x01\x00\x02"),  # asked 1 register, got 2
    "wrong unit": lambda rq: mbap(rq, b"\x03\x02\x00\x01", unit=rq[6] + 1),
    "wrong function": lambda rq: mbap(rq, b"\x04\x02\x00\x01"),
    "garbage": lambda rq: b"\xde\xad\xbe\xef" * 3,
    "lying length": lambda rq: mbap(rq, b"\x03\x02\x00\x01", length=200),
    "hang up": lambda rq: None,
}


@pytest.mark.parametrize("how", list(HOSTILE))
async def test_a_hostile_reply_is_a_clear_error_never_a_traceback(how: str) -> None:
    async with hostile(HOSTILE[how]) as port:
        run = await gateway("modbus", "read", f"127.0.0.1:{port}", "1", "0", "1", "--timeout", "300ms")
        scan = await gateway("modbus", "scan", f"127.0.0.1:{port}", "--units", "1-2", "--timeout", "300ms",
                             "--json")
    assert run.code == 1 and run.out == "", run
    assert run.err.startswith(f"127.0.0.1:{port} unit 1: ") and len(run.err.splitlines()) == 1, run.err
    assert "Modbus Error" not in run.err
    assert scan.code == 1 and scan.json()["present"] == [], scan  # no unit passes for present on garbage
    assert [g["unit"] for g in scan.json()["garbled"]] == [1, 2], scan


async def test_a_wrong_unit_on_an_rtu_line_is_garbage_not_an_answer() -> None:
    """A unit set to its neighbour's address answers as the neighbour: not unit 2's registers."""
    units = {2: Unit(bank(200), Behaviour.GARBAGE, garbage=(Garble.UNIT,))}
    async with RtuLine(units) as line:
        run = await gateway("modbus", "read", "--rtu", line.port, "2", "0", "2", "--timeout", "300ms", "--json")
    assert run.code == 1 and run.json()["registers"] is None
    assert run.json()["error"]["kind"] == "garbage", run.json()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=40), st.booleans())
def test_any_bytes_back_give_registers_or_a_field_error(reply: bytes, keep_header: bool) -> None:
    """Whatever a device sends, a read gives the registers asked for or a DriverError: nothing else escapes."""
    async def once() -> None:
        answer = (lambda rq: rq[:4] + reply) if keep_header else (lambda rq: reply)
        async with hostile(answer) as port:
            bus = ModbusTcpBus(id="cli", driver="modbus_tcp", host="127.0.0.1", port=port, timeout=0.05)
            wire = Wire(bus)
            try:
                words = await wire.read(1, "holding", 0, 2)
            except DriverError:
                return
            finally:
                await wire.close()
            assert len(words) == 2 and all(0 <= w <= 0xFFFF for w in words)

    asyncio.run(once())


# -- parsers ---------------------------------------------------------------------------------------


@given(st.text(max_size=30))
def test_any_endpoint_text_parses_or_says_why(text: str) -> None:
    try:
        host, port = parse_endpoint(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert host and 1 <= port <= 65535 and not any(c.isspace() for c in host)


@given(st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), st.integers(1, 65535))
def test_host_and_port_come_back_as_written(host: str, port: int) -> None:
    assert parse_endpoint(f"{host}:{port}") == (host, port)
    assert parse_endpoint(host) == (host, 502)
    assert parse_endpoint(f"[::1]:{port}") == ("::1", port)
    assert parse_endpoint("fe80::1") == ("fe80::1", 502)


@given(st.lists(st.tuples(st.integers(1, 247), st.integers(0, 20)), min_size=1, max_size=6))
def test_unit_ranges_give_each_unit_once_in_order(ranges: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}-{min(a + n, 247)}" if n else str(a) for a, n in ranges)
    expected = list(dict.fromkeys(u for a, n in ranges for u in range(a, min(a + n, 247) + 1)))
    assert parse_units(text) == expected


@given(st.text(max_size=20))
def test_any_units_text_parses_or_says_why(text: str) -> None:
    try:
        units = parse_units(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert units and all(1 <= u <= 247 for u in units) and len(set(units)) == len(units)


def test_decoding_orders_match_the_codec() -> None:
    from drivers.modbus.cli import decoded

    words = encode(123456789, DataType.UINT32, Order.LITTLE, Order.LITTLE)
    assert decoded(words, "uint32", "little", "little", 10) == [{"address": 10, "value": 123456789}]
    assert decoded([0x7FC0, 0x0000], "float32", "big", "big", 0) == [{"address": 0, "value": "nan"}]

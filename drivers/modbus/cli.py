"""`gateway modbus read | scan`: a Modbus device that is not in the config yet, straight on the wire.

Commissioning starts before the config: which unit ids answer on this RS-485 line, what does register
40001 of that meter hold, is it a float with its words swapped? Both commands need no config file.
They talk through the same driver the daemon uses (``ModbusDriver.read_block``), so a reply is checked
as strictly as in service (function code, unit, CRC, length) and every failure is one of the typed
field errors, printed as one line: never a traceback, whatever the device sends.

The daemon owns its buses: stop it before scanning a line it polls (a serial port cannot be shared, and
many TCP converters take one connection only).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import re
import sys
from collections.abc import Callable
from typing import Any

from gateway.core.text import fmt, print_json, table

UNITS = (1, 247)
"""The unit ids a serial line can hold (0 is broadcast: nobody answers it)."""
EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
              5: "acknowledge", 6: "server busy", 8: "memory parity error", 10: "gateway path unavailable",
              11: "gateway target failed to respond"}
_RANGE = re.compile(r"\s*(\d{1,4})\s*(?:-\s*(\d{1,4})\s*)?", re.ASCII)
WORD_TYPES = ("uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")


# -- arguments -------------------------------------------------------------------------------------


def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[v6]:PORT`` or a bare IPv6 address too) -> (host, port); ValueError says what is wrong."""
    text = text.strip()
    host, port = text, 502
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
        host, port_text = inside, rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError(f"{text!r}: no port after the colon")
        if port_text:
            port = _port(port_text, text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    elif text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"{text!r} is neither HOST[:PORT] nor an IPv6 address") from None
    if not host or any(c.isspace() or c in "/[]" for c in host):
        raise ValueError(f"{text!r}: no host name or address")
    return host, port


def _port(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{whole!r}: port {text!r} is not a number in 1..65535")
    return int(text)


def parse_units(text: str) -> list[int]:
    """``1-20``, ``5``, ``1-5,9,12-14`` -> the unit ids in order, each once; only ids a line can hold (1..247)."""
    units: dict[int, None] = {}
    for part in text.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise ValueError(f"{text!r}: write unit ids like 1-20 or 1-5,9,12-14")
        first = int(match[1])
        last = int(match[2]) if match[2] else first
        if not (UNITS[0] <= first <= UNITS[1] and UNITS[0] <= last <= UNITS[1]):
            raise ValueError(f"{text!r}: unit ids are {UNITS[0]}..{UNITS[1]}")
        if last < first:
            raise ValueError(f"{text!r}: {first}-{last} runs backwards")
        units.update(dict.fromkeys(range(first, last + 1)))
    return list(units)


def add_commands(subparsers: Any) -> None:
    """Register `gateway modbus read` and `gateway modbus scan` (this plugin's CLI hook)."""
    modbus = subparsers.add_parser("modbus", help="Modbus tools for a device not in the config: raw reads, "
                                                  "unit id scans").add_subparsers(dest="sub", required=True)
    p = modbus.add_parser(
        "read", help="read registers or bits of any unit: raw words in hex and decoded values",
        usage="gateway modbus read (HOST[:PORT] | --rtu PORT) UNIT ADDR COUNT [options]",
        description="Read COUNT registers (or bits) from ADDR (zero-based, as on the wire) of unit UNIT, on Modbus "
                    "TCP at HOST[:PORT] (port 502 by default) or on the serial line --rtu PORT. No config needed.")
    p.add_argument("target", nargs="?", metavar="HOST[:PORT]", help="Modbus TCP endpoint (not with --rtu)")
    p.add_argument("unit", type=_int("UNIT"), metavar="UNIT", help="unit (slave) id")
    p.add_argument("address", type=_int("ADDR"), metavar="ADDR", help="first register or bit, zero-based")
    p.add_argument("count", type=_int("COUNT"), metavar="COUNT", help="registers (1..125) or bits (1..2000)")
    p.add_argument("--table", choices=("holding", "input", "coil", "discrete"), default="holding",
                   help="which table (default holding: function 3)")
    p.add_argument("--type", choices=WORD_TYPES, default="uint16", help="decode registers as (default uint16)")
    p.add_argument("--word-order", choices=("big", "little"), default="big",
                   help="order of the words of a multi-register value: big = ABCD, little = CDAB")
    p.add_argument("--byte-order", choices=("big", "little"), default="big",
                   help="order of the two bytes in each register (little swaps them)")
    _wire(p, "1s")
    p.set_defaults(fn=cmd_read)
    p = modbus.add_parser(
        "scan", help="which unit ids answer on a line (a converter, or --rtu PORT)",
        usage="gateway modbus scan (HOST[:PORT] | --rtu PORT) [--units 1-247] [options]",
        description="Ask every unit id a one-register read, each with a short timeout. A unit that answers, even "
                    "with an exception (illegal address...), is there; silence, or exception 10/11 from a TCP "
                    "converter, means no unit; bytes that make no valid reply are listed apart.")
    p.add_argument("target", nargs="?", metavar="HOST[:PORT]", help="Modbus TCP endpoint (not with --rtu)")
    p.add_argument("--units", type=_units, default=list(range(UNITS[0], UNITS[1] + 1)), metavar="IDS",
                   help="unit ids to ask, like 1-20 or 1-5,9 (default 1-247)")
    p.add_argument("--table", choices=("holding", "input", "coil", "discrete"), default="holding",
                   help="the table of the probe read (default holding)")
    p.add_argument("--address", type=_int("--address"), default=0,
                   help="the register or bit the probe reads (default 0)")
    _wire(p, "300ms")
    p.set_defaults(fn=_cmd_scan)


def _cmd_scan(args: argparse.Namespace) -> int:
    from drivers.modbus.scan import cmd_scan  # its module imports this one's helpers

    return cmd_scan(args)


def _wire(p: argparse.ArgumentParser, timeout: str) -> None:
    p.add_argument("--rtu", metavar="PORT", help="a local serial line (RS-485 adapter), e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=_int("--baud"), default=9600, help="with --rtu: baud rate (default 9600)")
    p.add_argument("--parity", choices=("N", "E", "O"), default="N", help="with --rtu: parity (default N)")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="with --rtu: stop bits (default 1)")
    p.add_argument("--bytesize", type=int, choices=(7, 8), default=8, help="with --rtu: data bits (default 8)")
    p.add_argument("--rtu-over-tcp", action="store_true",
                   help="HOST is a transparent serial server: raw RTU frames over TCP, no MBAP header")
    p.add_argument("--timeout", default=timeout, metavar="DURATION",
                   help=f"how long a unit may take to answer (default {timeout})")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _int(name: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            return int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, not {text!r}") from None
    return convert


def _units(text: str) -> list[int]:
    try:
        return parse_units(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _usage(message: str) -> SystemExit:
    print(f"gateway modbus: {message}", file=sys.stderr)
    return SystemExit(2)


def _bus(args: argparse.Namespace) -> Any:
    """The bus model of the command line (checked as a config's would be); exit 2 on a bad argument."""
    from pydantic import ValidationError

    from drivers.modbus.config import ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
    from gateway.core.config import parse_duration

    if (args.target is None) == (args.rtu is None):
        raise _usage("give HOST[:PORT] for Modbus TCP or --rtu PORT for a serial line (one of them)")
    try:
        timeout = parse_duration(args.timeout)
        if args.rtu is not None:
            if args.rtu_over_tcp:
                raise _usage("--rtu-over-tcp goes with HOST[:PORT], not with --rtu")
            return ModbusRtuBus(id="cli", driver="modbus_rtu", port=args.rtu, baudrate=args.baud,
                                parity=args.parity, stopbits=args.stopbits, bytesize=args.bytesize, timeout=timeout)
        host, port = parse_endpoint(args.target)
        if args.rtu_over_tcp:
            return ModbusRtuOverTcpBus(id="cli", driver="modbus_rtu_tcp", host=host, port=port, timeout=timeout)
        return ModbusTcpBus(id="cli", driver="modbus_tcp", host=host, port=port, timeout=timeout)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = {"baudrate": "--baud", "timeout": "--timeout"}.get(str(error["loc"][0]) if error["loc"] else "", "")
        raise _usage(f"{where or 'argument'}: {error['msg']}") from None
    except ValueError as exc:
        raise _usage(str(exc)) from None


# -- the wire --------------------------------------------------------------------------------------


def endpoint(bus: Any) -> str:
    """Where the command line's bus is: a serial port, or host:port."""
    return str(bus.port) if not hasattr(bus, "host") else f"{bus.host}:{bus.port}"


class Wire:
    """One driver on the command line's bus, with one device whose unit id each request sets."""

    def __init__(self, bus: Any) -> None:
        from drivers.modbus.config import ModbusDevice
        from drivers.modbus.driver import ModbusDriver

        self.device = ModbusDevice(id="cli", bus="cli", retries=0)
        self.driver = ModbusDriver(bus, [self.device])

    async def read(self, unit: int, table: str, address: int, count: int) -> list[Any]:
        """One read of ``unit``, checked as a poll's is; a field failure is a ``DriverError``."""
        from drivers.modbus.codec import Block, Table
        from drivers.scheduler import Urgency
        from gateway.core.errors import BadResponse, DeviceTimeout

        device = self.device.model_copy(update={"unit": unit})
        counts = self.driver.counts[self.device.id]
        late = counts["late_reply"]
        try:
            return await self.driver.read_block(device, Block(Table(table), address, count, ()), Urgency.POLL)
        except DeviceTimeout:
            # In service, bytes on TCP that fit no request are a slow device's late reply. Here, a request or
            # two at a time, they are more likely a wrong unit id or transaction id, or no Modbus frame at all.
            if counts["late_reply"] == late:
                raise
            raise BadResponse(f"unit {unit}: bytes that fit no request (a wrong unit or transaction id, no "
                              "Modbus frame, or a slow unit's late reply)") from None

    async def close(self) -> None:
        await self.driver.close()


def failure(exc: Exception, unit: int | None = None, where: str = "") -> dict[str, Any]:
    """A field failure as stable keys: kind (timeout, unreachable, exception, garbage), message, code.

    The message leaves out the unit and endpoint the driver's own message starts with: the caller says them.
    """
    from gateway.core.errors import DriverError, ExceptionResponse, error_kind

    code = exc.code if isinstance(exc, ExceptionResponse) else None
    message = str(exc).removeprefix(f"unit {unit}: ").removeprefix(f"{where}: ")
    for noise in ("Modbus Error: [Connection] ", "Modbus Error: [Input/Output] "):
        message = message.replace(noise, "")
    kind = error_kind(exc) if isinstance(exc, DriverError) else "garbage"
    if code is not None:
        message = f"exception {code} ({EXCEPTIONS.get(code, 'unknown code')})"
    elif "Unable to decode" in message:  # pymodbus hangs up on bytes it cannot frame: the device's garbage
        kind, message = "garbage", "bytes that are no Modbus reply (pymodbus dropped the connection)"
    return {"kind": kind, "message": message, "code": code}


def _quietly() -> None:
    from gateway.core import logs

    logs.configure("warning", "console", stream=sys.stderr)  # stdout is the answer's (--json)


def _field_noise(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """pymodbus raising inside the transport on a frame it cannot decode is the device's fault, and the
    read already fails with it: asyncio must not print a traceback for it as well."""
    from pymodbus.exceptions import ModbusException

    if isinstance(context.get("exception"), ModbusException):
        return
    loop.default_exception_handler(context)


# -- read ------------------------------------------------------------------------------------------


def decoded(words: list[int], dtype: str, word_order: str, byte_order: str, start: int) -> list[dict[str, Any]]:
    """Registers as values of ``dtype``: one per whole value, at the address of its first register.

    A float that is not finite (garbage decoded as float32) is the string "nan", "inf" or "-inf": JSON has
    no such numbers.
    """
    from drivers.modbus.codec import DataType, Order, decode, register_count

    kind = DataType(dtype)
    width = register_count(kind)
    out = []
    for i in range(0, len(words) - width + 1, width):
        value = decode(words[i:i + width], kind, Order(word_order), Order(byte_order))
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # type: ignore[assignment]
        out.append({"address": start + i, "value": value})
    return out


def cmd_read(args: argparse.Namespace) -> int:
    from drivers.modbus.codec import DataType, register_count
    from gateway.core.errors import DriverError

    bus = _bus(args)
    bits = args.table in ("coil", "discrete")
    limit = 2000 if bits else 125
    rtu = args.rtu is not None or args.rtu_over_tcp
    low = 1 if rtu else 0
    high = 247 if rtu else 255
    if not low <= args.unit <= high:
        raise _usage(f"UNIT {args.unit} is outside {low}..{high}"
                     + (" (0 is broadcast on a serial line: nobody answers it)" if rtu and args.unit == 0 else ""))
    if not 0 <= args.address <= 65535:
        raise _usage(f"ADDR {args.address} is outside 0..65535 (zero-based, as on the wire: 40001 is holding 0)")
    if not 1 <= args.count <= limit:
        raise _usage(f"COUNT {args.count} is outside 1..{limit} for a {args.table} read")
    if args.address + args.count > 65536:
        raise _usage(f"ADDR {args.address} + COUNT {args.count} runs past 65535")
    width = register_count(DataType(args.type))
    if not bits and args.count % width:
        raise _usage(f"COUNT {args.count} is not a whole number of {args.type} values ({width} registers each)")
    _quietly()
    report: dict[str, Any] = {
        "endpoint": endpoint(bus), "unit": args.unit, "table": args.table, "address": args.address,
        "count": args.count, "type": None if bits else args.type,
        "word_order": None if bits else args.word_order, "byte_order": None if bits else args.byte_order,
        "registers": None, "hex": None, "bits": None, "values": [], "error": None,
    }

    async def ask() -> list[Any]:
        asyncio.get_running_loop().set_exception_handler(_field_noise)
        wire = Wire(bus)  # pymodbus's clients belong to the loop they are made in
        try:
            return await wire.read(args.unit, args.table, args.address, args.count)
        finally:
            await wire.close()

    try:
        data = asyncio.run(ask())
    except DriverError as exc:
        report["error"] = failure(exc, args.unit, report["endpoint"])
        return _read_failed(args, report)
    if bits:
        report["bits"] = [bool(b) for b in data[:args.count]]
        report["values"] = [{"address": args.address + i, "value": b} for i, b in enumerate(report["bits"])]
    else:
        words = [int(w) for w in data]
        report["registers"] = words
        report["hex"] = [f"0x{w:04X}" for w in words]
        report["values"] = decoded(words, args.type, args.word_order, args.byte_order, args.address)
    if args.json:
        print_json(report)
    else:
        print(render_read(report))
    return 0


def _read_failed(args: argparse.Namespace, report: dict[str, Any]) -> int:
    error = report["error"]
    if args.json:
        print_json(report)
    hint = {"timeout": " (wrong unit id, baud rate or parity? `gateway modbus scan` finds the units)",
            "unreachable": "", "exception": " (the unit is there: it refused this read)"}.get(error["kind"], "")
    print(f"{report['endpoint']} unit {report['unit']}: {error['message']}{hint}", file=sys.stderr)
    return 1


def render_read(r: dict[str, Any]) -> str:
    head = f"{r['endpoint']} unit {r['unit']}, {r['table']} {r['address']}..{r['address'] + r['count'] - 1}"
    if r["bits"] is not None:
        rows: list[tuple[Any, ...]] = [(v["address"], int(v["value"]), "on" if v["value"] else "off")
                                       for v in r["values"]]
        return f"{head}:\n" + table(rows, ["address", "bit", "state"])
    order = "" if r["type"] in ("uint16", "int16") else f", words {r['word_order']}-endian"
    swapped = ", bytes swapped" if r["byte_order"] == "little" else ""
    at = {v["address"]: v["value"] for v in r["values"]}
    rows = [(r["address"] + i, r["hex"][i], word, fmt(at[r["address"] + i]) if r["address"] + i in at else "")
            for i, word in enumerate(r["registers"])]
    return f"{head} as {r['type']}{order}{swapped}:\n" + table(rows, ["address", "hex", "uint16", r["type"]])

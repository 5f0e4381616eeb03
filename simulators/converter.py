"""A Modbus TCP to RS-485 converter: one MBAP endpoint in front of several RTU units on one line.

Like a real serial gateway it runs ONE transaction at a time: requests from every TCP client
queue for the line (first come, first served), and each costs the line its honest time: the
request's bytes at the baud rate, the 3.5-character silence that ends a frame, the unit's
turnaround, the reply's bytes and silence. A unit that does not answer with a valid frame within
``serial_timeout`` (dead, or garbage the converter discards) costs the whole timeout, after which
the converter answers exception 11 (GATEWAY TARGET DEVICE FAILED TO RESPOND), or nothing at all
with ``dead_reply="silence"``, as some converters do.

The units are ``AwkwardDevice``s, so a unit behind the converter can also have gaps, a read
limit, busy spells or a slow CPU. A garbage unit's replies go through ``rtu.Garble`` in turn; the
converter checks each as a gateway does (unit id and CRC): a broken or truncated frame, a frame
from the wrong unit, or noise is dropped and the request times out; a valid frame for the wrong
function code is forwarded, as gateways do not read the PDU.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import random
import signal
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Self

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from simulators.awkward import AwkwardDevice, HookedEndpoints, Link, NoReply, parse_behaviour
from simulators.endpoints import quiet_pymodbus, serve_until_done
from simulators.rtu import Behaviour, Garble, garble

GATEWAY_NO_RESPONSE = 0x0B


class DeadReply(enum.StrEnum):
    EXCEPTION = "exception"
    """Exception 11 once ``serial_timeout`` has passed."""
    SILENCE = "silence"
    """Nothing at all: the TCP client's own timeout has to tell."""


@dataclasses.dataclass(slots=True)
class SerialUnit:
    """One unit on the line: its device, and how it behaves on the wire."""

    device: AwkwardDevice
    behaviour: Behaviour = Behaviour.OK
    slow_delay: float = 0.8
    """SLOW: seconds the unit takes on top of its device's own delay."""
    garbage: Sequence[Garble] = tuple(Garble)
    """GARBAGE: its replies are spoilt in these ways, in turn."""
    garbled: int = 0


@dataclasses.dataclass(slots=True)
class UnitStats:
    requests: int = 0
    """Requests put on the line for this unit id."""
    answered: int = 0
    """Valid reply frames forwarded to the client (exception replies from the unit included)."""
    timeouts: int = 0
    """No valid reply within serial_timeout: answered with exception 11 or with silence."""
    exceptions: Counter[int] = dataclasses.field(default_factory=Counter)
    """Exception codes sent to the client for this unit, the converter's own 11 included."""
    garbled: Counter[Garble] = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass(slots=True)
class ConverterStats:
    requests: int = 0
    """Requests received over TCP, for any unit."""
    connections: int = 0
    abandoned: int = 0
    """Queued requests whose TCP client had gone when the line came free: never sent on the line."""
    waiting: int = 0
    """Requests queued for the line right now."""
    max_waiting: int = 0
    line_time: float = 0.0
    """Seconds the line has been busy with transactions."""
    units: dict[int, UnitStats] = dataclasses.field(default_factory=dict)
    log: list[tuple[float, float, int, int]] = dataclasses.field(default_factory=list)
    """(start, end, unit id, function code) of every transaction on the line, loop time, in line order."""

    def unit(self, unit_id: int) -> UnitStats:
        return self.units.setdefault(unit_id, UnitStats())


UnitSpec = SerialUnit | AwkwardDevice | Behaviour | str


class RtuConverter:
    """The converter and the units behind it; a ``Responder`` for ``HookedEndpoints``.

    ``units`` maps unit ids to a ``SerialUnit``, an ``AwkwardDevice`` (a healthy unit) or just a
    ``Behaviour`` ("ok", "dead", "slow", "garbage"), which gets a plain ``AwkwardDevice``. A unit id
    not listed is silent, like a dead unit.
    """

    def __init__(self, units: Mapping[int, UnitSpec], *, baudrate: int = 9600, char_bits: int = 10,
                 serial_timeout: float = 1.0, turnaround: float = 0.003,
                 dead_reply: DeadReply | str = DeadReply.EXCEPTION, seed: int = 0) -> None:
        if baudrate <= 0 or char_bits not in (10, 11) or serial_timeout <= 0 or turnaround < 0:
            raise ValueError("need baudrate > 0, char_bits 10 (8N1) or 11 (8E1, 8N2), serial_timeout > 0, "
                             "turnaround >= 0")
        self.units = {uid: _unit(uid, spec) for uid, spec in units.items()}
        self.baudrate = baudrate
        self.char_time = char_bits / baudrate
        # A frame ends after 3.5 characters of silence; the spec fixes it at 1.75 ms above 19200 baud.
        self.frame_gap = 3.5 * self.char_time if baudrate <= 19200 else 0.00175
        self.serial_timeout = serial_timeout
        self.turnaround = turnaround
        self.dead_reply = DeadReply(dead_reply)
        self.stats = ConverterStats()
        self._line = asyncio.Lock()  # FIFO: waiters get the line in the order they asked
        self._random = random.Random(seed)
        self._framer = FramerRTU(DecodePDU(False))

    def wire_time(self, frame_bytes: int) -> float:
        """Seconds a frame of this many bytes holds the line, its closing silence included."""
        return frame_bytes * self.char_time + self.frame_gap

    def connected(self, link: Link) -> None:
        self.stats.connections += 1

    def disconnected(self, link: Link) -> None:
        pass

    async def respond(self, unit_id: int, pdu: bytes, link: Link | None = None) -> bytes | NoReply:
        stats = self.stats
        stats.requests += 1
        stats.waiting += 1
        stats.max_waiting = max(stats.max_waiting, stats.waiting)
        try:
            await self._line.acquire()
        finally:
            stats.waiting -= 1
        try:
            if link is not None and not link.is_active():
                stats.abandoned += 1
                return NoReply.LOST
            return await self._transact(unit_id, pdu)
        finally:
            self._line.release()

    async def _transact(self, unit_id: int, pdu: bytes) -> bytes | NoReply:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stats = self.stats.unit(unit_id)
        stats.requests += 1
        await asyncio.sleep(self.wire_time(len(pdu) + 3))  # unit id + PDU + CRC
        deadline = loop.time() + self.serial_timeout
        reply: bytes | None = None
        unit = self.units.get(unit_id)
        if unit is not None and unit.behaviour is not Behaviour.DEAD:
            try:
                async with asyncio.timeout_at(deadline):
                    reply = await self._hear(unit, unit_id, pdu, stats)
            except TimeoutError:
                reply = None
        if reply is None:  # the converter waits out its timeout for a valid frame
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            stats.timeouts += 1
        self._log(started, loop.time(), unit_id, pdu[0])
        if reply is None and self.dead_reply is DeadReply.SILENCE:
            return NoReply.LOST
        if reply is None:
            reply = bytes([(pdu[0] | 0x80) & 0xFF, GATEWAY_NO_RESPONSE])
        else:
            stats.answered += 1
        if reply[0] & 0x80 and len(reply) > 1:
            stats.exceptions[reply[1]] += 1
        return reply

    async def _hear(self, unit: SerialUnit, unit_id: int, pdu: bytes, stats: UnitStats) -> bytes | None:
        """The unit's reply as the converter receives it: the PDU of a valid frame, or None."""
        answer = await unit.device.respond(unit_id, pdu)
        await asyncio.sleep(self.turnaround + (unit.slow_delay if unit.behaviour is Behaviour.SLOW else 0.0))
        if not isinstance(answer, bytes):  # lost, or a hang-up, which a serial unit can only do by silence
            return None
        frame = self._framer.encode(answer, unit_id, 0)
        if unit.behaviour is Behaviour.GARBAGE:
            how = unit.garbage[unit.garbled % len(unit.garbage)]
            unit.garbled += 1
            stats.garbled[how] += 1
            frame = garble(frame, how, self._random)
        await asyncio.sleep(self.wire_time(len(frame)))
        # A gateway forwards a frame whose unit id and CRC are right; it does not read the PDU.
        valid = len(frame) >= 4 and frame[0] == unit_id and self._framer.encode(frame[1:-2], unit_id, 0) == frame
        return frame[1:-2] if valid else None

    def _log(self, start: float, end: float, unit_id: int, function_code: int) -> None:
        self.stats.line_time += end - start
        self.stats.log.append((start, end, unit_id, function_code))
        if len(self.stats.log) > 100_000:
            del self.stats.log[:50_000]


def _unit(unit_id: int, spec: UnitSpec) -> SerialUnit:
    if not 1 <= unit_id <= 247:
        raise ValueError(f"unit id {unit_id} is outside 1..247 (an RS-485 address)")
    if isinstance(spec, SerialUnit):
        unit = spec
    elif isinstance(spec, AwkwardDevice):
        unit = SerialUnit(spec)
    else:
        unit = SerialUnit(AwkwardDevice(unit_id=unit_id), Behaviour(spec))
    if unit.device.config.unit_id != unit_id:
        raise ValueError(f"the device for unit {unit_id} has unit id {unit.device.config.unit_id}")
    if not unit.garbage:
        raise ValueError(f"unit {unit_id}: garbage needs at least one way to garble")
    return unit


class ConverterServer(HookedEndpoints):
    """The converter listening on one TCP port (``.ports[0]``)."""

    def __init__(self, host: str, port: int, converter: RtuConverter) -> None:
        super().__init__(host, [port], [converter])
        self.converter = converter

    async def __aenter__(self) -> Self:
        await self.start_all()
        return self


async def serve_converter(host: str, port: int, units: Mapping[int, UnitSpec], **options: Any) -> ConverterServer:
    """Serve an ``RtuConverter(units, **options)`` on ``port`` (0 picks a free one: ``.ports[0]``)."""
    quiet_pymodbus()
    server = ConverterServer(host, port, RtuConverter(units, **options))
    await server.start_all()
    return server


async def _serve(args: argparse.Namespace) -> None:
    units: dict[int, UnitSpec] = {}
    for behaviour in Behaviour:
        for uid in filter(None, getattr(args, behaviour.value).split(",")):
            device = AwkwardDevice(parse_behaviour(args.behaviour, unit_id=int(uid), seed=args.seed + int(uid)))
            units[int(uid)] = SerialUnit(device, behaviour)
    server = await serve_converter(args.host, args.port, units, baudrate=args.baud, serial_timeout=args.serial_timeout,
                                   dead_reply=args.dead_reply, seed=args.seed)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"ready {server.ports[0]} 1", flush=True)
        await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.converter",
        description="Serve a Modbus TCP to RS-485 converter until killed; prints 'ready <port> 1'.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    for behaviour, default in (("ok", "1"), ("dead", ""), ("slow", ""), ("garbage", "")):
        parser.add_argument(f"--{behaviour}", default=default, metavar="IDS", help=f"{behaviour} unit ids, e.g. 1,2,3")
    parser.add_argument("--behaviour", default="", metavar="SPEC", help="awkward faults of every unit (see "
                        "simulators.awkward), e.g. 'limit=32,busy=0.05'")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--serial-timeout", type=float, default=1.0)
    parser.add_argument("--dead-reply", choices=[r.value for r in DeadReply], default=DeadReply.EXCEPTION.value)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return serve_until_done("simulators.converter", _serve(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""A simulated RS-485 line: several Modbus RTU units behind one serial port, with honest timing.

The gateway opens one end of a ``socat`` pty pair as if it were /dev/ttyUSB0; this simulator
answers on the other end. Requests are decoded and served by pymodbus's own server-side PDUs and
datastore, but the wire is ours, because pymodbus's server is not an honest RS-485 bus:
- a request for a unit nobody answers to gets silence (pymodbus would send an exception);
- every frame takes its time on the wire at the configured baud rate, both ways;
- a unit can be made ``dead`` (silent), ``slow`` (answers after an extra delay) or ``garbage``:
  its replies cycle, in a fixed order, through the ways a mad unit gets a reply wrong (``Garble``):
  a bad CRC, a valid frame from the wrong unit id or for the wrong function code, a truncated
  frame, and bytes that are no frame at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import serial_asyncio_fast
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusDeviceContext
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU

from simulators.endpoints import quiet_pymodbus


class Behaviour(enum.StrEnum):
    OK = "ok"
    DEAD = "dead"
    SLOW = "slow"
    GARBAGE = "garbage"


class Garble(enum.StrEnum):
    """How a garbage unit spoils a reply, each as happens on real lines."""

    CRC = "crc"
    """The right reply with its CRC broken, as by a flipped bit on the line."""
    UNIT = "unit"
    """A valid frame from the wrong unit id, as from a unit set to its neighbour's address."""
    FUNCTION = "function"
    """A valid frame for another function code (3 for 4, 15 for 16...): firmware that mixes them up."""
    TRUNCATE = "truncate"
    """The first half of the reply: the unit's transmitter dropped out mid-frame."""
    NOISE = "noise"
    """Bytes that are no frame, as from a unit at another baud rate (seeded)."""


_SWAPPED_FUNCTION = {1: 2, 2: 1, 3: 4, 4: 3, 5: 6, 6: 5, 15: 16, 16: 15}


def garble(frame: bytes, how: Garble, rng: random.Random) -> bytes:
    """Spoil an RTU reply frame (unit id, PDU, CRC) the way ``how`` says; too short a frame becomes noise."""
    if len(frame) < 4:
        how = Garble.NOISE
    if how is Garble.CRC:
        return frame[:-1] + bytes([frame[-1] ^ 0x5A])
    if how in (Garble.UNIT, Garble.FUNCTION):
        unit, fc = frame[0], frame[1]
        if how is Garble.UNIT:
            unit = (unit % 247) + 1  # another valid address, never the broadcast 0
        else:
            fc = (fc & 0x80) | _SWAPPED_FUNCTION.get(fc & 0x7F, (fc & 0x7F) ^ 0x01)
        return FramerRTU(DecodePDU(False)).encode(bytes([fc]) + frame[2:-2], unit, 0)
    if how is Garble.TRUNCATE:
        return frame[: max(1, len(frame) // 2)]
    return rng.randbytes(rng.randint(1, 12))


@dataclass(slots=True)
class Unit:
    context: ModbusDeviceContext
    behaviour: Behaviour = Behaviour.OK
    slow_delay: float = 0.8
    reply: bytes | None = None  # when set, answer exactly these bytes (hostile-device tests)
    requests: int = 0
    garbage: Sequence[Garble] = tuple(Garble)
    """A garbage unit's replies go through these in turn, starting again after the last."""
    garbled: int = 0

    def next_garble(self) -> Garble:
        how = self.garbage[self.garbled % len(self.garbage)]
        self.garbled += 1
        return how


@dataclass(slots=True)
class LineStats:
    frames: int = 0
    for_nobody: int = 0
    undecodable: int = 0
    answered: int = 0
    collisions: int = 0
    by_unit: dict[int, int] = field(default_factory=dict)
    garbled: dict[Garble, int] = field(default_factory=dict)
    """Garbage replies sent, by kind."""
    log: list[tuple[float, int, int]] = field(default_factory=list)
    """(monotonic time, unit id, function code) of every request heard, in wire order."""


class PtyPair:
    """``socat`` joining two pseudo-terminals: the gateway's end and the line's end."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rs485-"))
        self.gateway_end = str(self.dir / "gateway")
        self.device_end = str(self.dir / "line")
        self._proc: asyncio.subprocess.Process | None = None

    async def open(self) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat is not installed (apt-get install socat; scripts/setup.sh --test does it)")
        self._proc = await asyncio.create_subprocess_exec(
            socat, f"PTY,raw,echo=0,link={self.gateway_end}", f"PTY,raw,echo=0,link={self.device_end}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(200):
            if os.path.exists(self.gateway_end) and os.path.exists(self.device_end):  # noqa: ASYNC240
                return
            await asyncio.sleep(0.01)
        raise RuntimeError("socat did not create the pty pair")

    async def close(self) -> None:
        if self._proc and self._proc.returncode is None:
            self._proc.terminate()
            with contextlib.suppress(ProcessLookupError):
                await self._proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RtuLine:
    def __init__(self, units: dict[int, Unit], *, baudrate: int = 9600, char_bits: int = 10,
                 turnaround: float = 0.003, seed: int = 0) -> None:
        quiet_pymodbus()
        self.units = units
        self.baudrate = baudrate
        self.char_time = char_bits / baudrate
        self.turnaround = turnaround
        self.stats = LineStats()
        self.pty = PtyPair()
        self._framer = FramerRTU(DecodePDU(True))
        self._random = random.Random(seed)
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._answers: set[asyncio.Task[None]] = set()
        self._quiet_at = 0.0  # when the reply now on the wire (if any) ends

    @property
    def port(self) -> str:
        """The path the gateway opens, like /dev/ttyUSB0."""
        return self.pty.gateway_end

    async def start(self) -> str:
        await self.pty.open()
        reader, self._writer = await serial_asyncio_fast.open_serial_connection(
            url=self.pty.device_end, baudrate=self.baudrate
        )
        self._task = asyncio.create_task(self._serve(reader), name="rtu-line")
        return self.port

    async def close(self) -> None:
        for answer in list(self._answers):
            answer.cancel()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer:
            self._writer.close()
        await self.pty.close()

    async def __aenter__(self) -> RtuLine:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        buffer = b""
        silence = max(3.5 * self.char_time, 0.02)  # a frame is over when the line goes quiet
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(512), timeout=silence if buffer else None)
            except TimeoutError:
                chunk = b""
            if chunk:
                buffer += chunk
                request = self._decode(buffer)
                if request is None:
                    continue  # not a whole frame yet
            else:
                request = self._decode(buffer)
                if request is None:  # the line went quiet on bytes that are no frame: drop them
                    self.stats.undecodable += 1
                    buffer = b""
                    continue
            size, buffer = len(buffer), b""
            # Units are independent: a slow one must not hold up its neighbours' replies.
            answer = asyncio.create_task(self._answer(request, size))
            self._answers.add(answer)
            answer.add_done_callback(self._answers.discard)

    def _decode(self, data: bytes) -> ModbusPDU | None:
        try:
            _, pdu = self._framer.handleFrame(data, 0, 0)
        except Exception:  # pymodbus raises assorted errors on noise; on a real line noise is silence
            return None
        return pdu

    async def _answer(self, request: ModbusPDU, request_size: int) -> None:
        self.stats.frames += 1
        self.stats.log.append((asyncio.get_running_loop().time(), request.dev_id, request.function_code))
        if len(self.stats.log) > 100_000:
            del self.stats.log[:50_000]
        unit = self.units.get(request.dev_id)
        if unit is None:
            self.stats.for_nobody += 1
            return
        unit.requests += 1
        self.stats.by_unit[request.dev_id] = self.stats.by_unit.get(request.dev_id, 0) + 1
        if unit.behaviour is Behaviour.DEAD:
            return
        try:
            response = await request.update_datastore(unit.context)
        except Exception:
            response = ExceptionResponse(request.function_code, ExcCodes.DEVICE_FAILURE)
        response.dev_id = request.dev_id
        response.transaction_id = 0
        frame = self._framer.buildFrame(response) if unit.reply is None else unit.reply
        if unit.behaviour is Behaviour.GARBAGE:
            how = unit.next_garble()
            self.stats.garbled[how] = self.stats.garbled.get(how, 0) + 1
            frame = garble(frame, how, self._random)
        delay = self.char_time * request_size + self.turnaround
        if unit.behaviour is Behaviour.SLOW:
            delay += unit.slow_delay
        await asyncio.sleep(delay)
        # The reply occupies the wire for its length; two replies at once garble each other.
        loop = asyncio.get_running_loop()
        starts, duration = loop.time(), self.char_time * len(frame)
        if starts < self._quiet_at:
            self.stats.collisions += 1
            frame = bytes(b ^ 0xA5 for b in frame)
        self._quiet_at = max(self._quiet_at, starts + duration)
        await asyncio.sleep(duration)
        if self._writer is not None:
            self._writer.write(frame)
            self.stats.answered += 1


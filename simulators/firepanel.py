"""A simulated fire panel printing event lines on a serial port (one end of a ``socat`` pty pair).

It prints in any shipped format (drivers/firepanel/formats), in the format's encoding (GBK for
gst_cn), from the format's own templates, so what it prints is what the patterns are written
for. It prints a heartbeat line every ``heartbeat`` seconds unless made silent, and can be
unplugged and plugged back in (the USB adapter pulled out), for supervision tests.

A script (``gateway simulate firepanel --script FILE``) is one step a line:

    # a comment
    @sleep 2.5                           wait
    @silent 40                           print nothing at all, heartbeats included, for 40 s
    @send fire zone=3 address=15 description=2号楼5层电梯前室
                                         an event from a template (fields: loop, address, zone,
                                         device, description, time; defaults from the format)
    @hex c4e3bac30d0a                    raw bytes, as they are (no terminator added)
    火警 001-023 光电感烟 04区 门厅 {time}  any other line is printed as written ({time} = panel clock)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import serial_asyncio_fast

from drivers.firepanel.config import PanelFormat, load_format
from simulators.rtu import PtyPair

TERMINATORS = {"crlf": "\r\n", "lf": "\n", "cr": "\r"}
_RANDOM_MIX: tuple[tuple[str, float], ...] = (
    ("fire", 4), ("prealarm", 4), ("supervisory", 3), ("fault", 15), ("fault_clear", 12), ("panel_fault", 3),
    ("panel_fault_clear", 3), ("disable", 4), ("enable", 4), ("activation", 8), ("silence", 3), ("reset", 6),
    ("garbage", 3),
)
"""Template name (or "garbage": a line no pattern knows) and its weight in random mode."""


class _Cable(PtyPair):
    """The pty pair, with a plug that can be pulled: socat goes away and the gateway's end with it."""

    async def unplug(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()


class FirePanelSimulator:
    """One panel on one pty pair. ``port`` is what the gateway's serial_lines bus opens."""

    def __init__(self, format: str = "gst_cn", *, heartbeat: float = 30.0, terminator: str = "\r\n",
                 encoding: str | None = None, baudrate: int = 9600, seed: int | None = None) -> None:
        self.panel_format: PanelFormat = load_format(format)
        self.format = format
        self.heartbeat = heartbeat
        self.terminator = terminator
        self.encoding = encoding or self.panel_format.format.encoding
        self.baudrate = baudrate
        self.random = random.Random(seed)
        self.sent: list[tuple[float, bytes]] = []
        """(time.time() just before the write, the bytes written) of every write, in order."""
        self.cable = _Cable()
        self._writer: asyncio.StreamWriter | None = None
        self._beat: asyncio.Task[None] | None = None
        self._silent_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def port(self) -> str:
        return self.cable.gateway_end

    async def start(self) -> str:
        await self._plug()
        if self.heartbeat > 0:
            self._beat = asyncio.create_task(self._heartbeats(), name="firepanel-heartbeat")
        return self.port

    async def _plug(self) -> None:
        await self.cable.open()
        _, self._writer = await serial_asyncio_fast.open_serial_connection(
            url=self.cable.device_end, baudrate=self.baudrate)

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        await self._drop_writer()
        await self.cable.close()

    async def __aenter__(self) -> FirePanelSimulator:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- what the panel prints ---------------------------------------------------------------------

    def panel_time(self) -> str:
        return datetime.datetime.now().strftime(self.panel_format.simulator.time_format)

    def render(self, template: str, **fields: Any) -> str:
        """One line of text (no terminator) from a format template, e.g. render("fire", zone=3)."""
        shape = self.panel_format.templates.get(template)
        if shape is None:
            raise KeyError(f"format {self.format!r} has no template {template!r} "
                           f"(templates: {', '.join(self.panel_format.templates)})")
        values: dict[str, Any] = {
            "loop": 1, "address": 23, "zone": 4, "time": self.panel_time(),
            "device": shape.device or self.panel_format.simulator.device,
            "description": shape.description or self.panel_format.simulator.description,
        }
        values.update(fields)
        return shape.text.format(**values)

    def encode(self, text: str) -> bytes:
        return (text + self.terminator).encode(self.encoding, errors="replace")

    async def send(self, template: str, **fields: Any) -> float:
        """Print an event from a template; returns the wall-clock time the line was written."""
        return await self.send_bytes(self.encode(self.render(template, **fields)))

    async def send_line(self, text: str) -> float:
        return await self.send_bytes(self.encode(text.replace("{time}", self.panel_time())))

    async def send_bytes(self, data: bytes) -> float:
        """Write bytes as they are; explicit writes go out even while the panel is silent."""
        async with self._lock:
            if self._writer is None:
                raise ConnectionError("the panel is unplugged")
            at = time.time()
            self._writer.write(data)
            self.sent.append((at, data))
            await self._writer.drain()
        return at

    # -- silence, and the plug ---------------------------------------------------------------------

    @property
    def silent(self) -> bool:
        return time.monotonic() < self._silent_until

    def go_silent(self, seconds: float = float("inf")) -> None:
        """No heartbeats (nor random events) for ``seconds``: a panel that stopped talking."""
        self._silent_until = time.monotonic() + seconds

    def speak(self) -> None:
        self._silent_until = 0.0

    async def unplug(self) -> None:
        """The cable (or USB adapter) is pulled: the gateway's port disappears."""
        async with self._lock:
            await self._drop_writer()
            await self.cable.unplug()

    async def replug(self) -> None:
        """Plugged back in, on the same port path."""
        async with self._lock:
            await self._plug()

    async def _drop_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if not self.silent and self._writer is not None and "heartbeat" in self.panel_format.templates:
                with contextlib.suppress(ConnectionError):
                    await self.send("heartbeat")

    # -- scripted and random -----------------------------------------------------------------------

    async def run_script(self, steps: Iterable[str]) -> None:
        for number, raw in enumerate(steps, 1):
            step = raw.rstrip("\r\n")
            if not step.strip() or step.lstrip().startswith("#"):
                continue
            word, _, rest = step.strip().partition(" ")
            try:
                if word == "@sleep":
                    await asyncio.sleep(float(rest))
                elif word == "@silent":
                    self.go_silent(float(rest))
                    await asyncio.sleep(float(rest))
                    self.speak()
                elif word == "@send":
                    name, *pairs = rest.split()
                    await self.send(name, **dict(_field(p) for p in pairs))
                elif word == "@hex":
                    await self.send_bytes(bytes.fromhex(rest))
                else:
                    await self.send_line(step)
            except (KeyError, ValueError, IndexError) as exc:
                raise ValueError(f"script line {number}: {exc}") from None

    def random_line(self) -> str:
        names = [n for n, _ in _RANDOM_MIX if n == "garbage" or n in self.panel_format.templates]
        weights = [w for n, w in _RANDOM_MIX if n == "garbage" or n in self.panel_format.templates]
        name = self.random.choices(names, weights)[0]
        if name == "garbage":
            return self.random.choice(["@@ PRINTER BUFFER OVERFLOW @@", "系统自检中……", "ERR 0x3F LOOP CARD 2",
                                       "\x1b[2J"])
        return self.render(name, loop=self.random.randint(1, 4), address=self.random.randint(1, 199),
                           zone=self.random.randint(1, 30))

    async def run_random(self, rate: float, *, count: int | None = None) -> None:
        """Events at ``rate`` a second on average (Poisson arrivals), silent spells respected."""
        sent = 0
        while count is None or sent < count:
            await asyncio.sleep(self.random.expovariate(rate))
            if not self.silent:
                await self.send_line(self.random_line())
                sent += 1


def _field(pair: str) -> tuple[str, Any]:
    key, sep, value = pair.partition("=")
    if not sep:
        raise ValueError(f"expected key=value, got {pair!r}")
    return key, int(value) if key in ("loop", "address", "zone") else value


async def run_firepanel(format: str = "gst_cn", *, script: Path | None = None, random_rate: float = 0.0,
                        heartbeat: float = 30.0, silent_after: float | None = None, silent_for: float = 60.0,
                        terminator: str = "crlf", baudrate: int = 9600, seed: int | None = None) -> None:
    """`gateway simulate firepanel`: print until cancelled, saying where to point the gateway."""
    steps = (await asyncio.to_thread(script.read_text, encoding="utf-8")).splitlines() if script else None
    panel = FirePanelSimulator(format, heartbeat=heartbeat, terminator=TERMINATORS[terminator],
                               baudrate=baudrate, seed=seed)
    async with panel:
        print(f"fire panel ({format}, {panel.encoding}) on a pty pair; point a serial_lines bus at "
              f"port = \"{panel.port}\"", file=sys.stderr, flush=True)
        tasks: list[asyncio.Task[None]] = []
        if silent_after is not None:
            tasks.append(asyncio.create_task(_silence_later(panel, silent_after, silent_for)))
        if random_rate > 0:
            tasks.append(asyncio.create_task(panel.run_random(random_rate)))
        try:
            if steps is not None:
                await panel.run_script(steps)
                print("script done; heartbeats go on until Ctrl-C", file=sys.stderr, flush=True)
            await asyncio.Event().wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _silence_later(panel: FirePanelSimulator, after: float, seconds: float) -> None:
    await asyncio.sleep(after)
    print(f"going silent for {seconds:g}s", file=sys.stderr, flush=True)
    panel.go_silent(seconds)


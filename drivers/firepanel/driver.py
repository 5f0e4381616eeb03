"""A fire panel's serial line: every line kept, parsed into events, the panel's state latched.

The panel talks unasked, so there is nothing to poll: ``stream`` listens for the life of the bus.
Every line goes to the store byte for byte (``Sink.raw``) before anything else is made of it, and
a line no pattern knows still becomes a ``panel.unparsed`` event, so nothing the panel said is
lost or silently dropped. (Only a full disk sheds raw lines, counted; the events they made, with
their bytes where the decoding needed help, are kept and delivered.) In ``raw_lines``, ``parsed``
is NULL for exactly those lines: the list a pattern author works from. Which priority each event gets:

- alarm: fire, pre-alarm and supervisory (someone must act now); the panel's reset, because it
  clears fire state and must stay in order with the fire alarms it clears (the uplink keeps order
  only within a priority; a reset overtaken by a later fire would read as that fire cleared); and
  ``panel.comm_lost`` / ``panel.comm_restored``, since a panel we cannot hear may be burning.
- event: trouble (fault) and its clearing, disable/enable, activation of linked equipment and
  silence. They still go ahead of all telemetry and are never dropped, but a dirty detector is
  not a fire: raising every trouble as an alarm trains the duty desk to ignore alarms.
- an unparsed line is an event, or an alarm when it mentions one of the format's alarm words
  (火警, FIRE): an unknown line that may be a fire is treated as one.

Latching: fire, pre-alarm and supervisory locations stay active until the panel prints a reset,
as on the panel itself. Faults clear one by one (fault_clear) or all at a reset (the panel
reprints those still present). Disablements survive a reset, as on real panels, and end only
with an enable. A silence lasts until the reset or the next new fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import serial_asyncio_fast
import structlog

from drivers.base import Driver, Sink
from drivers.firepanel.config import FirePanel, SerialLineBus, compile_pattern
from drivers.firepanel.parser import Line, LineParser, LineSplitter, Parsed
from gateway.core.data import Event, Priority, Quality, Reading, Value
from gateway.core.errors import DeviceTimeout, DeviceUnreachable, WriteRefused
from gateway.core.timing import Backoff

log = structlog.get_logger("drivers.firepanel")

KINDS: dict[str, tuple[str, Priority]] = {
    "fire": ("fire.alarm", Priority.ALARM),
    "prealarm": ("fire.prealarm", Priority.ALARM),
    "supervisory": ("fire.supervisory", Priority.ALARM),
    "reset": ("fire.reset", Priority.ALARM),
    "fault": ("fire.fault", Priority.EVENT),
    "fault_clear": ("fire.fault_cleared", Priority.EVENT),
    "disable": ("fire.disable", Priority.EVENT),
    "enable": ("fire.enable", Priority.EVENT),
    "activation": ("fire.activation", Priority.EVENT),
    "silence": ("fire.silence", Priority.EVENT),
}
"""Line event -> (event kind, priority). heartbeat and ignore lines make no event."""


def location(fields: dict[str, str]) -> str:
    """Where an event happened, as a latching key: the device address, else the zone, else its text."""
    if "address" in fields:
        return f"{fields['loop']}-{fields['address']}" if "loop" in fields else fields["address"]
    if "zone" in fields:
        return f"zone {fields['zone']}"
    return fields.get("description", "panel")


@dataclass(slots=True)
class Outcome:
    raw: dict[str, Any] | None
    """What the raw_lines record says was made of the line; None when no pattern matched."""
    events: list[Event] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)


class PanelMonitor:
    """The panel's latched state. Pure: lines and clock readings in, raw records, events and readings out."""

    def __init__(self, device: str, parser: LineParser, *, alarm_words: Sequence[str] = (),
                 heartbeat: float = 0.0) -> None:
        self.device = device
        self.parser = parser
        self.alarm_words = [w for w in alarm_words if w]
        self.heartbeat = heartbeat
        self.fire: dict[str, dict[str, str]] = {}
        self.prealarm: dict[str, dict[str, str]] = {}
        self.supervisory: dict[str, dict[str, str]] = {}
        self.faults: dict[str, dict[str, str]] = {}
        self.disabled: dict[str, dict[str, str]] = {}
        self.silenced = False
        self.comm: bool | None = None
        """None until the panel is first heard (or found missing)."""
        self.since = 0.0
        """Monotonic time of the last line heard, or of the start of listening."""
        self._published: tuple[Value, ...] | None = None

    # -- the line --------------------------------------------------------------------------------

    def take(self, line: Line, ts: float, now: float) -> Outcome:
        """One line from the panel (``ts`` wall clock, ``now`` monotonic)."""
        events = self.heard(ts, now)
        text, replaced = self.parser.decode(line.data)
        flags: dict[str, Any] = {}
        if not line.complete:
            flags["complete"] = False
        if replaced:
            flags["decode_errors"] = True
        if not text:
            return Outcome({"event": "blank", **flags}, events, self._readings_if_changed(ts))
        parsed = self.parser.parse(text) or self.parser.rescue(text)
        if parsed is None:
            ev = self._unparsed(line.data, text, flags, ts)
            return Outcome(None, [*events, ev], self._readings_if_changed(ts))
        if "noise" in parsed.fields or "parse_failed" in parsed.fields:
            flags["noise"] = parsed.fields.pop("noise", "")
            if parsed.fields.pop("parse_failed", None):
                flags["parse_failed"] = True  # known only by its life-safety word: raised all the same
            replaced = True  # keep the raw bytes with the event
        made = self._apply(parsed, text, {**flags, **({"raw_hex": line.data.hex()} if replaced else {})}, ts)
        raw: dict[str, Any] = {"event": parsed.event, "pattern": parsed.pattern, **_renamed(parsed.fields), **flags}
        if made is not None:
            raw["id"] = made.id
            events.append(made)
        readings = self._readings_if_changed(ts, force=parsed.event == "heartbeat")
        return Outcome(raw, events, readings)

    def _unparsed(self, data: bytes, text: str, flags: dict[str, Any], ts: float) -> Event:
        payload: dict[str, Any] = {"text": text, "raw_hex": data.hex(), **flags}
        folded = text.casefold()
        word = next((w for w in self.alarm_words if w.casefold() in folded), None)
        if word is not None:
            payload["mentions"] = word
        priority = Priority.ALARM if word is not None else Priority.EVENT
        return Event("panel.unparsed", self.device, priority, payload, ts)

    def _apply(self, parsed: Parsed, text: str, extra: dict[str, Any], ts: float) -> Event | None:
        """Update the latched state; the event the line makes (None for heartbeat and ignore lines)."""
        if parsed.event not in KINDS:
            return None
        kind, priority = KINDS[parsed.event]
        fields = parsed.fields
        where = location(fields)
        data: dict[str, Any] = {**_renamed(fields), "text": text, "pattern": parsed.pattern, **extra}
        latch = {"fire": self.fire, "prealarm": self.prealarm, "supervisory": self.supervisory}.get(parsed.event)
        if latch is not None:
            data["repeat"] = where in latch
            if parsed.event == "fire" and where not in latch:
                self.silenced = False  # a new fire sounds again
            latch[where] = fields
        elif parsed.event == "fault":
            self.faults[where] = fields
        elif parsed.event == "fault_clear":
            data["was_active"] = self.faults.pop(where, None) is not None
        elif parsed.event == "disable":
            self.disabled[where] = fields
        elif parsed.event == "enable":
            data["was_disabled"] = self.disabled.pop(where, None) is not None
        elif parsed.event == "silence":
            self.silenced = True
        elif parsed.event == "reset":
            data["cleared"] = {name: sorted(state) for name, state in (
                ("fire", self.fire), ("prealarm", self.prealarm), ("supervisory", self.supervisory),
                ("faults", self.faults)) if state}
            for state in (self.fire, self.prealarm, self.supervisory, self.faults):
                state.clear()
            self.silenced = False
        return Event(kind, self.device, priority, data, ts)

    # -- supervision -----------------------------------------------------------------------------

    def listening(self, now: float) -> None:
        """The port is open: the heartbeat clock starts now."""
        self.since = now

    def heard(self, ts: float, now: float) -> list[Event]:
        silent_for = now - self.since
        self.since = now
        if self.comm is False:
            self.comm = True
            log.info("fire panel heard again", device=self.device, silent_for=round(silent_for, 1))
            return [Event("panel.comm_restored", self.device, Priority.ALARM,
                          {"silent_for": round(silent_for, 1), "clears": "panel.comm_lost"}, ts)]
        self.comm = True
        return []

    def deadline(self) -> float:
        """Monotonic time at which silence becomes comm loss (inf when off or already lost)."""
        if self.heartbeat <= 0 or self.comm is False:
            return math.inf
        return self.since + self.heartbeat

    def check(self, ts: float, now: float) -> Outcome:
        if now < self.deadline():
            return Outcome(None)
        return self._lost(ts, {"reason": "silent", "silent_for": round(now - self.since, 1),
                               "heartbeat": self.heartbeat})

    def port_lost(self, error: str, ts: float) -> Outcome:
        if self.comm is False:
            return Outcome(None)
        return self._lost(ts, {"reason": "port", "error": error[:300]})

    def _lost(self, ts: float, data: dict[str, Any]) -> Outcome:
        self.comm = False
        log.warning("fire panel communication lost", device=self.device, **data)
        ev = Event("panel.comm_lost", self.device, Priority.ALARM, data, ts)
        return Outcome(None, [ev], self._readings_if_changed(ts))

    # -- readings --------------------------------------------------------------------------------

    def state(self) -> dict[str, Value]:
        zones = sorted({f.get("zone") or where for where, f in self.fire.items()})
        return {
            "comm_ok": self.comm,
            "fire_zones_active": len(zones),
            "fire_zones": ",".join(zones),
            "prealarms_active": len(self.prealarm),
            "supervisory_active": len(self.supervisory),
            "faults_active": len(self.faults),
            "disabled_active": len(self.disabled),
            "silenced": self.silenced,
        }

    def readings(self, ts: float) -> list[Reading]:
        """The latched state; stale while the panel cannot be heard (it may have changed unseen)."""
        if self.comm is None:
            return []
        quality = Quality.GOOD if self.comm else Quality.STALE
        return [Reading(self.device, point, value, None, Quality.GOOD if point == "comm_ok" else quality, ts)
                for point, value in self.state().items()]

    def _readings_if_changed(self, ts: float, *, force: bool = False) -> list[Reading]:
        snapshot = tuple(self.state().values())
        if snapshot == self._published and not force:
            return []
        self._published = snapshot
        return self.readings(ts)


def _renamed(fields: dict[str, str]) -> dict[str, str]:
    """The panel's own clock is ``panel_time`` upstream, so nobody takes it for the event's time."""
    return {("panel_time" if k == "time" else k): v for k, v in fields.items()}


class _Listener(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, on_data: Any) -> None:
        self.on_data = on_data
        self.lost: asyncio.Future[Exception | None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class FirePanelDriver(Driver):
    """One panel on one serial port, listened to; it is never written to."""

    def __init__(self, bus: SerialLineBus, devices: Sequence[FirePanel]) -> None:
        super().__init__(bus, devices)
        if len(devices) != 1:
            raise ValueError(f"bus {bus.id!r}: a serial line carries one panel, not {len(devices)}")
        self.bus: SerialLineBus = bus
        self.panel = devices[0]
        patterns = [(label, p.event, compile_pattern(p.regex)) for label, p in self.panel.all_patterns()]
        self.monitor = PanelMonitor(
            self.panel.id, LineParser(patterns, self.panel.encoding(bus), self.panel.life_safety_words()),
            alarm_words=self.panel.words(), heartbeat=self.panel.heartbeat,
        )
        self._transport: asyncio.BaseTransport | None = None

    @property
    def listening(self) -> bool:
        """The port is open (lines written before this are flushed by the open, as on a real port)."""
        return self._transport is not None

    def polls(self, device: str) -> bool:
        return False

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def read(self, device: str) -> list[Reading]:
        return self.monitor.readings(time.time())

    async def write(self, device: str, point: str, value: Value) -> None:
        raise WriteRefused(f"{device}: a fire panel's serial port is listen-only")

    async def probe(self, device: str) -> bool:
        return self.monitor.comm is True

    def take(self, sink: Sink, line: Line, ts: float, now: float) -> None:
        """One line to the sink: its raw record always, whatever else goes wrong."""
        try:
            outcome = self.monitor.take(line, ts, now)
        except Exception as exc:  # a bug here must cost an event, never the line
            log.exception("fire panel line not understood", device=self.panel.id)
            outcome = Outcome({"event": "error", "error": repr(exc)[:300]}, [Event(
                "panel.unparsed", self.panel.id, Priority.ALARM,
                {"raw_hex": line.data.hex(), "error": repr(exc)[:300]}, ts)])
        self._emit(sink, outcome, line, ts)

    def _emit(self, sink: Sink, outcome: Outcome, line: Line | None = None, ts: float = 0.0) -> None:
        if line is not None:
            sink.raw(self.panel.id, ts, line.data, outcome.raw)
        for ev in outcome.events:
            sink.event(ev)
            if ev.kind == "panel.comm_lost" and ev.payload.get("reason") == "silent":
                sink.device_failed(self.panel.id, DeviceTimeout(f"panel silent for {ev.payload.get('silent_for')} s"))
            elif ev.kind == "panel.comm_restored":
                sink.device_ok(self.panel.id)
        if outcome.readings:
            sink.readings(self.panel.id, outcome.readings)

    async def stream(self, sink: Sink) -> None:
        """Listen until cancelled. A port that cannot be opened or goes away is the panel's state, not a crash:
        it is reported through the sink, and the port is tried again with backoff."""
        backoff = Backoff(1.0, 30.0)
        while True:
            try:
                await self._listen(sink, backoff)
            except DeviceUnreachable as exc:
                sink.device_failed(self.panel.id, exc)
                await asyncio.sleep(backoff.next())

    async def _listen(self, sink: Sink, backoff: Backoff) -> None:
        """One session on the port, from open to loss; ends by raising DeviceUnreachable."""
        bus = self.bus
        loop = asyncio.get_running_loop()
        splitter = LineSplitter(bus.terminator.encode(), bus.max_line)
        last_byte = loop.time()

        def on_data(data: bytes) -> None:
            nonlocal last_byte
            last_byte, ts = loop.time(), time.time()
            for line in splitter.feed(data):
                self.take(sink, line, ts, last_byte)

        listener = _Listener(loop, on_data)
        try:
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: listener, bus.port, baudrate=bus.baudrate, parity=bus.parity,
                stopbits=bus.stopbits, bytesize=bus.bytesize, exclusive=True,
            )
        except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
            self._emit(sink, self.monitor.port_lost(f"cannot open {bus.port}: {exc}", time.time()))
            raise DeviceUnreachable(f"{bus.port}: cannot open: {exc}") from exc
        self._transport = transport
        backoff.reset()
        sink.device_ok(self.panel.id)
        self.monitor.listening(loop.time())
        log.info("listening to fire panel", device=self.panel.id, port=bus.port)
        try:
            while not listener.lost.done():
                now = loop.time()
                self._emit(sink, self.monitor.check(time.time(), now))
                if splitter.pending and now - last_byte >= bus.timeout:
                    self._flush(sink, splitter, now)
                wake = min(self.monitor.deadline(), last_byte + bus.timeout if splitter.pending else math.inf)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if wake == math.inf else max(0.0, wake - now)):
                        await asyncio.shield(listener.lost)
            error = listener.lost.result()
        finally:
            self._flush(sink, splitter, loop.time())
            await self.close()
        reason = f"{type(error).__name__}: {error}" if error else "port closed"
        self._emit(sink, self.monitor.port_lost(reason, time.time()))
        raise DeviceUnreachable(f"{bus.port}: {reason}")

    def _flush(self, sink: Sink, splitter: LineSplitter, now: float) -> None:
        line = splitter.flush()
        if line is not None:
            self.take(sink, line, time.time(), now)

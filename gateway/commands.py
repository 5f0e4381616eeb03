"""Commands into the running gateway: one schema and one handler, whoever sends them.

The technician's CLI (over the local control socket) uses this today; rules and platform commands
over MQTT will use the same entry point, so a write is checked, queued ahead of polls on its bus,
read back and audited the same way whoever asked for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers.base import Driver
from gateway.bus import Sink
from gateway.config.schema import GatewayConfig
from gateway.core.config import IDENTIFIER_PATTERN
from gateway.core.data import Event, Priority, Value
from gateway.core.errors import DriverError, WriteRefused
from gateway.core.points import WriteSpec
from gateway.live import LiveValues


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WriteCommand(_Command):
    cmd: Literal["write"]
    device: str = Field(pattern=IDENTIFIER_PATTERN)
    point: str = Field(pattern=IDENTIFIER_PATTERN)
    value: bool | int | float | str | None  # "smart" union: JSON true stays bool, 1 stays int; null relinquishes
    actor: str = Field(default="unknown", max_length=128)
    verify: bool = True


class ReadCommand(_Command):
    cmd: Literal["read"]
    device: str = Field(pattern=IDENTIFIER_PATTERN)
    point: str | None = Field(default=None, pattern=IDENTIFIER_PATTERN)


class AlarmCommand(_Command):
    """acknowledge / reset / shelve / unshelve / out_of_service / in_service one alarm."""

    cmd: Literal["alarm"]
    action: Literal["acknowledge", "reset", "shelve", "unshelve", "out_of_service", "in_service"]
    key: str = Field(min_length=1, max_length=300)
    actor: str = Field(default="unknown", max_length=128)
    note: str = Field(default="", max_length=500)
    until: float | None = Field(default=None, description="Shelve until (epoch seconds).")


class RelearnCommand(_Command):
    """Forget what was learnt of a device's read limits and unreadable points; the next poll learns again."""

    cmd: Literal["relearn"]
    device: str = Field(pattern=IDENTIFIER_PATTERN)
    actor: str = Field(default="unknown", max_length=128)


class AlarmsCommand(_Command):
    cmd: Literal["alarms"]
    all: bool = False


class ValuesCommand(_Command):
    """The latest value of every point (of one device), from the daemon's memory: no device is asked."""

    cmd: Literal["values"]
    device: str | None = Field(default=None, pattern=IDENTIFIER_PATTERN)


class ReloadCommand(_Command):
    """Apply the config file as it is now: checked first, then only what changed restarts (gateway.reloader)."""

    cmd: Literal["reload"]
    actor: str = Field(default="unknown", max_length=128)


class ObserveCommand(_Command):
    """One picture of the running daemon (gateway.observe): devices, buses, outbox, uplinks, alarms, process."""

    cmd: Literal["observe"]


AnyCommand = (WriteCommand | ReadCommand | AlarmCommand | AlarmsCommand | RelearnCommand | ValuesCommand
              | ReloadCommand | ObserveCommand)
Command = Annotated[AnyCommand, Field(discriminator="cmd")]


class AlarmDesk(Protocol):
    """Where alarm commands go (gateway.automation.Automation); a Protocol so commands import no rules."""

    def command(self, action: str, key: str, who: str, *, note: str = "", until: float | None = None) -> list[str]: ...

    def listing(self, everything: bool = False) -> list[dict[str, Any]]: ...


class CommandError(Exception):
    """A command refused before it reached a device (bad shape, unknown target, limits)."""


def parse_command(data: Any) -> AnyCommand:
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(Command).validate_python(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        message = f"bad command: {where}: {first['msg']}" if where else f"bad command: {first['msg']}"
        raise CommandError(message) from None


_TRUE = {"1", "true", "on", "yes", "closed", "close"}
_FALSE = {"0", "false", "off", "no", "open"}
RELINQUISH = frozenset({"null", "relinquish"})


def coerce(spec: WriteSpec, value: bool | int | float | str | None, where: str) -> bool | float | None:
    """Turn what a person typed (or a platform sent) into a value the point accepts, or refuse.

    None (typed "null" or "relinquish") withdraws a command from a priority array, where the
    point has one: the device falls back to the next priority or its relinquish default.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in RELINQUISH):
        if spec.relinquish:
            return None
        raise WriteRefused(f"{where} has no command to relinquish: write a value")
    if spec.kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise WriteRefused(f"{where} is on/off: write true or false (got {value!r})")
    if isinstance(value, str) and spec.states:
        by_name = {name: code for code, name in spec.states.items()}
        if value in by_name:
            value = by_name[value]
    try:
        number = float(value)
    except (TypeError, ValueError):
        names = f" or one of {', '.join(spec.states.values())}" if spec.states else ""
        raise WriteRefused(f"{where} takes a number{names} (got {value!r})") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise WriteRefused(f"{where} takes a finite number (got {value!r})")
    if spec.states and (number != int(number) or int(number) not in spec.states):
        raise WriteRefused(f"{where}: {value!r} is not one of its states {spec.states}")
    if spec.allowed is not None and number not in spec.allowed:
        allowed = ", ".join(f"{a:g}" for a in spec.allowed)
        raise WriteRefused(f"{where}: {number:g} is not an allowed value ({allowed})")
    if spec.resolution > 0 and not spec.states:
        steps = (number - spec.origin) / spec.resolution
        if abs(steps - round(steps)) > 1e-6 * max(1.0, abs(steps)):  # a register holds whole steps: never round
            raise WriteRefused(f"{where} takes steps of {spec.resolution:g}"
                               f"{f' from {spec.origin:g}' if spec.origin else ''} (got {number:g})")
    if spec.min is not None and number < spec.min:
        raise WriteRefused(f"{where}: {number:g} is below its minimum {spec.min:g}")
    if spec.max is not None and number > spec.max:
        raise WriteRefused(f"{where}: {number:g} is above its maximum {spec.max:g}")
    return number


def _same(spec: WriteSpec, written: bool | float, read: Value) -> bool:
    if spec.kind == "bool" or isinstance(read, bool):
        return bool(read) == bool(written)
    if spec.states and isinstance(read, str):
        return spec.states.get(int(written)) == read
    if not isinstance(read, int | float):
        return False
    return abs(float(read) - float(written)) <= spec.resolution / 2 + 1e-6 * max(1.0, abs(float(written)))


class CommandHandler:
    def __init__(self, cfg: GatewayConfig, drivers: dict[str, Driver], sink: Sink,
                 live: LiveValues | None = None) -> None:
        self.cfg = cfg
        self.drivers = drivers
        self.sink = sink
        self.live = live
        self.alarms: AlarmDesk | None = None
        self.reloader: Callable[[str], Awaitable[dict[str, Any]]] | None = None
        self.observer: Callable[[], Awaitable[dict[str, Any]]] | None = None
        """Where reload commands go (the daemon's ``reload``); None: this process cannot reload."""

    async def execute(self, command: AnyCommand) -> dict[str, Any]:
        if isinstance(command, AlarmCommand | AlarmsCommand):
            return self._alarm(command)
        if isinstance(command, ValuesCommand):
            if command.device is not None and all(d.id != command.device for d in self.cfg.devices):
                raise CommandError(f"no device {command.device!r}")
            return {"values": self.live.listing(command.device) if self.live else []}
        if isinstance(command, ReloadCommand):
            if self.reloader is None:
                raise CommandError("this process cannot reload its config")
            return await self.reloader(command.actor)
        if isinstance(command, ObserveCommand):
            if self.observer is None:
                raise CommandError("this process has nothing to observe")
            return {"observed": await self.observer()}
        if command.device not in self.drivers:
            raise CommandError(f"no device {command.device!r} (or it is disabled)")
        if isinstance(command, ReadCommand):
            return await self._read(command)
        if isinstance(command, RelearnCommand):
            self.drivers[command.device].relearn(command.device)
            self.sink.audit("relearn", {"device": command.device, "actor": command.actor})
            return {"relearned": command.device}
        return await self._write(command)

    def _alarm(self, command: AlarmCommand | AlarmsCommand) -> dict[str, Any]:
        from rules.alarms import AlarmError

        if self.alarms is None:
            raise CommandError("no rules are configured, so there are no alarms")
        if isinstance(command, AlarmsCommand):
            return {"alarms": self.alarms.listing(command.all)}
        try:
            done = self.alarms.command(command.action, command.key, command.actor, note=command.note,
                                       until=command.until)
        except AlarmError as exc:
            raise CommandError(str(exc)) from None
        return {"transitions": done}

    async def _read(self, command: ReadCommand) -> dict[str, Any]:
        device = self.cfg.device(command.device)
        if command.point is not None and command.point not in device.point_ids():
            raise CommandError(f"device {command.device!r} has no point {command.point!r}")
        readings = await self.drivers[command.device].read(command.device)
        return {"readings": [
            {"device": r.device, "point": r.point, "value": r.value, "unit": r.unit, "quality": r.quality.value,
             "ts": r.ts}
            for r in readings if command.point in (None, r.point)
        ]}

    async def _write(self, command: WriteCommand) -> dict[str, Any]:
        device = self.cfg.device(command.device)
        where = f"{command.device}.{command.point}"
        audit: dict[str, Any] = {"device": command.device, "point": command.point, "value": command.value,
                                 "actor": command.actor}
        try:
            if command.point not in device.point_ids():
                raise WriteRefused(f"device {command.device!r} has no point {command.point!r}")
            spec = device.write_spec(command.point)
            if spec is None:
                raise WriteRefused(f"{where} is read-only")
            value = coerce(spec, command.value, where)
            driver = self.drivers[command.device]
            started = time.monotonic()
            await driver.write(command.device, command.point, value)
            audit["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
            result = "written"
            if command.verify:
                reading = await driver.read_point(command.device, command.point)
                audit["read_back"] = reading.value  # after a relinquish: what the point fell back to
                if value is not None:
                    result = "verified" if _same(spec, value, reading.value) else "mismatch"
        except WriteRefused as exc:
            self._audit(audit, "refused", str(exc))
            raise CommandError(str(exc)) from None
        except DriverError as exc:
            self._audit(audit, "failed", f"{type(exc).__name__}: {exc}")
            raise
        self._audit(audit, result, None)
        return {"result": result, **{k: v for k, v in audit.items() if k in ("read_back", "latency_ms")}}

    def _audit(self, audit: dict[str, Any], result: str, error: str | None) -> None:
        data = {**audit, "result": result}
        if error:
            data["error"] = error
        self.sink.audit("write", data)
        self.sink.event(Event("device.write", audit["device"], Priority.EVENT, data))

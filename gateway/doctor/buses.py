"""Is each bus reachable? A TCP connect (or opening the serial port), then a probe read of one configured point.

The two steps tell apart what a technician fixes differently: nothing at the address (power, cable, IP) from a
converter that accepts connections while nothing answers behind it (unit id, baud, A/B wiring).

While the daemon runs it owns the buses (a serial port cannot be opened twice, and many TCP-to-RS-485
converters take one connection), so the probe read goes through its control socket and its bus queue, and the
daemon's own picture of each device on the bus is added: a bus is only as healthy as its devices. The daemon
is asked a few buses at a time (its control socket turns away clients beyond a few dozen), until the run's end:
a bus whose turn did not come is judged on that picture alone, and says so.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import math
import os
import time
from typing import Any

from gateway.core.data import Quality
from gateway.core.errors import BadResponse, DeviceTimeout, DeviceUnreachable, DriverError, ExceptionResponse
from gateway.doctor.context import Context, DaemonView
from gateway.doctor.net import endpoint, tcp_connect
from gateway.doctor.result import Result, fail, ok, warn

PROBE_MAP = "`gateway device probe DEVICE` (daemon stopped) reads the whole map and says which lines fix it"
STUCK = "the bus did not answer in time: check its wiring, the converter and the devices' power"
MIN_READ = 1.0
"""Seconds a probe read through the daemon needs at the least: one not started this long before the run's end
is not started at all (the bus is judged on the daemon's picture alone, and says so)."""
VERDICT = 0.3
"""Seconds kept at the end of the run to say the verdict."""


def bus_budget(bus: Any) -> float:
    """Seconds a bus check may take: a connect and a read with the driver's retries, and a little slack."""
    return float(bus.timeout) * 4 + 2


def _where(bus: Any) -> str:
    if isinstance(getattr(bus, "port", None), str):
        return str(bus.port)
    if hasattr(bus, "host"):
        return endpoint(bus.host, bus.port)
    return f"bind {getattr(bus, 'bind', '?')}"


def _target(ctx: Context, bus: Any) -> tuple[list[Any], Any | None, str | None]:
    """The bus's enabled devices, and the device and point a probe reads (the first with any point)."""
    devices = [d for d in ctx.config.devices if d.bus == bus.id and d.enabled]
    for device in devices:
        points = device.point_ids()
        if points:
            return devices, device, points[0]
    return devices, None, None


def _who(device: Any) -> str:
    unit = getattr(device, "unit", None)
    return f"{device.id} (unit {unit})" if unit is not None else device.id


def _read_failed(name: str, bus: Any, device: Any, point: str, exc: DriverError, reached: str,
                 seen: dict[str, Any]) -> Result:
    """A failed probe read, in the words of what the technician checks next."""
    who, wait = _who(device), f"{float(bus.timeout):g} s"
    details = {**seen, "device": device.id, "point": point, "error": f"{type(exc).__name__}: {exc}"}
    if isinstance(exc, ExceptionResponse):
        return warn(name, f"{reached}; {who} answers but refuses {point} ({exc})",
                    f"check the register map: {PROBE_MAP}", **details)
    if isinstance(exc, DeviceTimeout):
        unit = getattr(device, "unit", None)
        if isinstance(getattr(bus, "port", None), str):
            behind = (f"the unit id ({unit} in the config), then the line: baud {bus.baudrate} and parity "
                      f"{bus.parity} as the device's, A/B wiring, termination")
        elif unit is not None:
            behind = (f"the unit id ({unit} in the config) and, behind a TCP-to-RS-485 converter, its serial side: "
                      "baud, parity, A/B wiring, termination")
        else:
            behind = "the device's address and instance, and that it is powered"
        return fail(name, f"{reached}, but {who} did not answer a read of {point} within {wait}",
                    f"check {behind}", **details)
    if isinstance(exc, BadResponse):
        return fail(name, f"{reached}, but {who} answered garbage to a read of {point}",
                    "wrong protocol on this port (modbus_tcp vs modbus_rtu_tcp)? baud or parity on a serial line? "
                    "two devices with one unit id?", **details)
    return fail(name, f"{reached}, but {who} could not be read: {exc}",
                "check the device's power and wiring, and its settings in the config", **details)


async def bus_reachable(ctx: Context, bus: Any) -> Result:
    name = f"bus:{bus.id}"
    devices, device, point = _target(ctx, bus)
    details: dict[str, Any] = {"driver": bus.driver, "endpoint": _where(bus), "devices": [d.id for d in devices]}
    if not devices:
        return ok(name, f"{_where(bus)}: no enabled device on this bus, nothing to reach", **details)
    view = await ctx.daemon()
    if view.running:
        # bounded by the run's deadline, not by bus_budget: with many buses a read waits for its turn
        return await _via_daemon(ctx, bus, view, devices, device, point, details)
    if view.problem:  # the daemon may run and own the bus: a probe behind its back could disturb it
        return warn(name, f"{_where(bus)}: not probed: cannot tell whether the daemon runs (it owns the bus "
                    "while it does)", view.problem, **details)
    try:
        async with asyncio.timeout(bus_budget(bus)):
            return await _direct(ctx, bus, device, point, details)
    except TimeoutError:
        return fail(name, f"no verdict within {bus_budget(bus):.1f} s", STUCK, **details)


# -- the daemon is stopped: connect and read ourselves --------------------------------------------


class PortBusy(OSError):
    """Another program holds the port's lock (pyserial's ``exclusive``, a second gateway)."""


def _open_serial(bus: Any) -> None:
    """Open the port as the driver would and see whether another program holds its lock; no byte is sent."""
    fd = os.open(bus.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PortBusy(f"{bus.port} is locked by another program") from None
    finally:
        os.close(fd)


async def _direct(ctx: Context, bus: Any, device: Any, point: str | None, details: dict[str, Any]) -> Result:
    name, where = f"bus:{bus.id}", _where(bus)
    details["via"] = "direct"
    if isinstance(getattr(bus, "port", None), str):
        try:
            await asyncio.to_thread(_open_serial, bus)
        except PortBusy:
            return fail(name, f"{where} is held by another program", f"find it with `fuser -v {where}` (a terminal "
                        "program, a second gateway) and stop it", **details)
        except PermissionError:  # the port is the service's group's (dialout), not necessarily the technician's
            return warn(name, f"{where}: not probed: this user may not open it",
                        f"run doctor with sudo to probe it (serial:{bus.id} says whether the service may)", **details)
        except OSError as exc:
            busy = exc.errno == errno.EBUSY
            return fail(name, f"cannot open {where}: {exc.strerror or exc}",
                        f"find who holds it: fuser -v {where}" if busy else f"see serial:{bus.id} above", **details)
        reached = f"{where} opens"
    elif hasattr(bus, "host"):
        unreached = await tcp_connect(bus.host, bus.port, float(bus.timeout))
        if unreached is not None:
            return fail(name, unreached.summary, unreached.advice, reached=unreached.kind, **details)
        reached = f"{where} accepts connections"
    else:
        reached = f"{bus.driver} on {where}"
    if device is None or point is None:
        return ok(name, f"{reached}; its devices have no points to read", **details)
    return await _probe(ctx, bus, device, point, reached, details)


async def _probe(ctx: Context, bus: Any, device: Any, point: str, reached: str, details: dict[str, Any]) -> Result:
    from drivers.registry import driver_class

    name = f"bus:{bus.id}"
    driver = driver_class(bus.driver)(bus, [device])
    try:
        if not driver.polls(device.id):
            return ok(name, f"{reached}; {device.id} speaks unasked, there is nothing to read", **details)
        reading = await driver.read_point(device.id, point)
    except DriverError as exc:
        return _read_failed(name, bus, device, point, exc, reached, details)
    finally:
        await driver.close()
    details.update(device=device.id, point=point, quality=reading.quality.value)
    if reading.quality is not Quality.GOOD:
        return warn(name, f"{reached}; {_who(device)} answered {point} with quality {reading.quality.value}",
                    f"check the point's address and type: {PROBE_MAP}", **details)
    return ok(name, f"{reached}; {_who(device)} answered {point}", **details)


# -- the daemon runs: ask it ----------------------------------------------------------------------


def _as_error(text: str) -> DriverError:
    """The daemon's answer ("DeviceTimeout: ...") as the error it was, so it is explained the same way."""
    kind, _, message = text.partition(": ")
    if kind == "ExceptionResponse":
        return ExceptionResponse(-1, message)
    known: dict[str, type[DriverError]] = {"DeviceTimeout": DeviceTimeout, "BadResponse": BadResponse,
                                           "DeviceUnreachable": DeviceUnreachable}
    return known.get(kind, DriverError)(message or text)


async def _ask_read(ctx: Context, bus: Any, device: Any, point: str) -> dict[str, Any] | str:
    """The daemon's answer to a probe read, or why it was not asked (the run's end came first).

    Reads are asked a few at a time (``ctx.daemon_reads``): each is a client of the daemon's control socket,
    which serves a few dozen at once and turns the rest away. TimeoutError when the daemon took longer than
    the bus's own budget.
    """
    from gateway.control import request
    from gateway.daemon import control_path

    wait = ctx.deadline - VERDICT - min(bus_budget(bus), MIN_READ) - time.monotonic()
    try:
        async with asyncio.timeout(max(0.0, wait) if math.isfinite(wait) else None):
            await ctx.daemon_reads.acquire()
    except TimeoutError:
        return "no time was left for its probe read (the daemon is asked a few buses at a time)"
    try:
        room = ctx.deadline - VERDICT - time.monotonic()
        limit = min(bus_budget(bus), room)
        try:
            async with asyncio.timeout(limit):
                return await request(control_path(ctx.config), {"cmd": "read", "device": device.id, "point": point})
        except TimeoutError:
            if limit < bus_budget(bus):
                return "its probe read had not finished when the run's time was up"
            raise
    finally:
        ctx.daemon_reads.release()


async def _via_daemon(ctx: Context, bus: Any, view: DaemonView, devices: list[Any], device: Any | None,
                      point: str | None, details: dict[str, Any]) -> Result:
    name, where = f"bus:{bus.id}", _where(bus)
    details["via"] = "daemon"
    seen = {d["id"]: d for d in (view.observed or {}).get("devices", []) if d.get("bus") == bus.id}
    states = {d.id: str(seen.get(d.id, {}).get("state", "unknown")) for d in devices}
    offline = sorted(i for i, state in states.items() if state == "offline")
    online = sum(state == "online" for state in states.values())
    details.update(offline=offline, online=online, snapshot=view.observed is not None)
    if offline:
        details["errors"] = {i: seen[i].get("error") for i in offline}
    reached = f"{where} (through the running daemon)"
    unprobed: str | None = None
    if device is not None and point is not None and getattr(bus, "driver", "") != "serial_lines":
        try:
            answer = await _ask_read(ctx, bus, device, point)
        except PermissionError:
            return warn(name, f"{where}: cannot ask the daemon", "run doctor as a member of the 'gateway' group, "
                        "or with sudo", **details)
        except TimeoutError:
            return fail(name, f"{where}: the daemon did not answer a read of {point} within "
                        f"{bus_budget(bus):.1f} s", STUCK, **details)
        except (OSError, ValueError) as exc:
            return warn(name, f"{where}: the daemon did not answer a read ({exc})",
                        "run doctor again; if it persists, journalctl -u gateway -n 50", **details)
        if isinstance(answer, str):
            unprobed = answer
        elif not answer.get("ok") and str(answer.get("error", "")).startswith("the daemon is busy"):
            unprobed = "the daemon's control socket was busy with other clients"
        else:
            details.update(device=device.id, point=point)
            if not answer.get("ok"):
                error = str(answer.get("error", "?"))
                details["error"] = error
                return _read_failed(name, bus, device, point, _as_error(error), reached, details)
            readings = answer.get("readings") or [{}]
            details["quality"] = readings[0].get("quality")
    if unprobed is not None:
        details["not_probed"] = unprobed
    if offline and len(offline) == len(devices):
        return fail(name, f"{where}: every device on it is offline ({', '.join(offline)})",
                    "check the bus itself: power, cable, converter; `gateway status` shows each error", **details)
    if offline:
        return warn(name, f"{where}: {len(offline)} of {len(devices)} devices offline ({', '.join(offline)})",
                    "check those devices' power, wiring and unit ids; `gateway status` shows each error", **details)
    if device is not None and point is not None and details.get("quality") not in (None, Quality.GOOD.value):
        return warn(name, f"{reached}; {_who(device)} answered {point} with quality {details['quality']}",
                    f"check the point's address and type: {PROBE_MAP}", **details)
    probe = f"; {_who(device)} answered {point}" if "quality" in details else ""
    if view.observed is None:
        found = f"{reached}{probe}" if probe else f"{where}: not checked ({unprobed or 'nothing to read'})"
        return warn(name, f"{found}; the daemon gave no picture of its devices",
                    "run doctor again; if it stays, journalctl -u gateway -n 50", **details)
    waiting = len(devices) - online
    counted = f"{online} online of {len(devices)}" + (f" ({waiting} not polled yet)" if waiting else "")
    return ok(name, f"{reached}{probe}; {counted}" + (f"; not probed: {unprobed}" if unprobed else ""), **details)

"""Serial ports named by buses: there, a character device, and usable by the user the service runs as.

The commonest RS-485 fault on a fresh install is not the wire but the permissions: the adapter's node is
``root:dialout 0660`` and the service user is not in ``dialout``. A ``ttyUSB0`` that became ``ttyUSB1`` after a
replug is the second: the advice names what is there, preferring the stable ``/dev/serial/by-id`` names.
"""

from __future__ import annotations

import asyncio
import glob
import os
import stat
from pathlib import Path
from typing import Any

from gateway.doctor.context import Context, group_name
from gateway.doctor.result import Result, fail, ok

CANDIDATES = ("/dev/serial/by-id/*", "/dev/ttyUSB*", "/dev/ttyACM*", "/dev/ttyAMA*", "/dev/ttyS[0-3]")


def serial_buses(ctx: Context) -> list[Any]:
    return [bus for bus in ctx.config.buses if isinstance(getattr(bus, "port", None), str)]


def present_ports() -> list[str]:
    """Serial ports on this box, by-id names first (they survive a replug)."""
    found: list[str] = []
    for pattern in CANDIDATES:
        found += sorted(glob.glob(pattern))
    return found


def _port(ctx: Context, bus: Any) -> Result:
    name, port, user = f"serial:{bus.id}", str(bus.port), ctx.host.service_user
    details: dict[str, Any] = {"port": port, "service_user": user.name}
    try:
        info = os.stat(port)
    except FileNotFoundError:
        there = present_ports()
        details["present"] = there
        hint = (f"ports here: {', '.join(there[:6])}" if there else "no serial ports at all here: is the adapter "
                "plugged in? (dmesg | tail shows it arrive)")
        return fail(name, f"{port} does not exist", f"{hint}; set buses.{bus.id}.port, preferably to its "
                    "/dev/serial/by-id/ name", **details)
    except OSError as exc:
        return fail(name, f"cannot look at {port}: {exc.strerror or exc}", "check the path", **details)
    if not stat.S_ISCHR(info.st_mode):
        return fail(name, f"{port} is not a serial device", f"set buses.{bus.id}.port to the adapter's device",
                    **details)
    group = group_name(info.st_gid)
    details.update(mode=f"{stat.S_IMODE(info.st_mode):04o}", owner=info.st_uid, group=group)
    if not user.may(Path(port), read=True, write=True):
        return fail(name, f"the service user {user.name!r} cannot open {port} (group {group}, mode "
                    f"{details['mode']})", f"sudo usermod -aG {group} {user.name}, then restart the service",
                    **details)
    real = os.path.realpath(port)
    shown = port if real == port else f"{port} -> {real}"
    return ok(name, f"{shown} present, usable by {user.name!r} (group {group})", **details)


async def serial_port(ctx: Context, bus: Any) -> Result:
    return await asyncio.to_thread(_port, ctx, bus)

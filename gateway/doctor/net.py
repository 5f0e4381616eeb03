"""A TCP connect that says what went wrong in a technician's words (refused, silent, no route, no name)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from typing import NamedTuple


class Unreached(NamedTuple):
    kind: str
    """refused, timeout, dns, unreachable, error: stable, for details."""
    summary: str
    advice: str


def endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def explain(exc: BaseException, host: str, port: int, timeout: float, what: str = "the device") -> Unreached:
    where = endpoint(host, port)
    if isinstance(exc, TimeoutError):
        return Unreached("timeout", f"no answer from {where} within {timeout:g} s",
                         f"wrong address, unplugged, another subnet or a firewall: ping {host}; check the cable")
    if isinstance(exc, socket.gaierror):
        return Unreached("dns", f"cannot resolve {host!r}",
                         "check this box's DNS (resolvectl status), or write the IP address")
    if isinstance(exc, ConnectionRefusedError):
        return Unreached("refused", f"{where} refuses connections",
                         f"{what} is off, or listens on another port")
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return Unreached("unreachable", f"no route to {where}",
                         "check this box's address and routes (ip addr, ip route) and the cable")
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return Unreached("error", f"cannot connect to {where}: {reason}", "check the address and the network")


async def tcp_connect(host: str, port: int, within: float, what: str = "the device") -> Unreached | None:
    """None when ``host:port`` accepts a connection within ``within`` seconds (closed again at once)."""
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        return explain(exc, host, port, within, what)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None

"""The daemon's local control socket: JSON lines over a Unix socket in the data directory.

Only the machine's own users reach it, and only those the file mode lets in (the gateway's
group). The peer's uid comes from the kernel (SO_PEERCRED), so the audit trail names the real
account, whatever the client claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import socket
import struct
from pathlib import Path
from typing import Any

import structlog

from gateway.commands import (
    AlarmCommand,
    CommandError,
    CommandHandler,
    RelearnCommand,
    ReloadCommand,
    WriteCommand,
    parse_command,
)
from gateway.core.errors import DriverError

log = structlog.get_logger("gateway.control")
SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
MAX_ANSWER = 64 * 2**20
"""What a client reads of the daemon's one-line answer: `observe` at a site of 300 devices is over 64 KiB."""
MAX_CLIENTS = 32
"""Connections served at once; more are told to retry, so a flood cannot use up the daemon's descriptors."""
IDLE = 10.0
"""Seconds a client may take to send its one line."""


def _peer(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return f"local:{pwd.getpwuid(uid).pw_name}"
    except (OSError, KeyError, AttributeError, struct.error):
        return "local:unknown"


class ControlServer:
    def __init__(self, path: Path, handler: CommandHandler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._clients = 0

    async def start(self) -> None:
        """Listen; the caller holds the store's lock, so a socket already there is a killed run's, not a live one's."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, 0o660)
        self._inode = os.stat(self.path).st_ino

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()  # only our own socket: never another daemon's

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(b'{"ok": false, "error": "the daemon is busy: try again"}\n')
            writer.close()
            return
        self._clients += 1
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=IDLE)
            reply = await self._answer(line, _peer(writer))
            writer.write(json.dumps(reply, ensure_ascii=False, default=str).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            self._clients -= 1
            writer.close()

    async def _answer(self, line: bytes, peer: str) -> dict[str, Any]:
        try:
            data = json.loads(line)
            command = parse_command(data)
            if isinstance(command, WriteCommand | AlarmCommand | RelearnCommand | ReloadCommand):
                command = command.model_copy(update={"actor": f"{peer} ({command.actor})"})
            return {"ok": True, **await self.handler.execute(command)}
        except (ValueError, CommandError) as exc:
            return {"ok": False, "error": str(exc)}
        except DriverError as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # a bug must still give the technician an answer, and a log line
            log.exception("control command failed", command=line[:200])
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}


async def request(path: Path, command: dict[str, Any]) -> dict[str, Any]:
    """Send one command to the running daemon; ConnectionError when it is not running."""
    async with asyncio.timeout(30):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_ANSWER)
        try:
            writer.write(json.dumps(command, ensure_ascii=False).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    if not line:
        raise ConnectionError("the daemon closed the connection without answering")
    answer: dict[str, Any] = json.loads(line)
    return answer

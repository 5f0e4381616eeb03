"""pymodbus's TCP server with a request hook: it frames MBAP, a ``Responder`` decides the answer.

pymodbus's own request handler always answers, at once, from a datastore, and keeps only the last
request of a connection (a pipelined request or a slow answer mixes transaction ids up). Real
devices lose requests, hang up, answer late or answer for units behind them; here every request
frame becomes ``responder.respond(unit_id, pdu, link)``, which returns the reply PDU (function code
first) or a ``NoReply``. Listening, accepting and closing stay pymodbus's.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
from collections.abc import Sequence
from typing import Any, Protocol

from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from simulators.endpoints import Endpoints, bound_port

log = logging.getLogger(__name__)


class NoReply(enum.Enum):
    LOST = "lost"
    """No reply at all; the connection stays (a lost request, a silent unit)."""
    HANG_UP = "hang up"
    """The device closes the connection without answering (the client reads EOF)."""


class Responder(Protocol):
    async def respond(self, unit_id: int, pdu: bytes, link: Link | None = None) -> bytes | NoReply: ...

    def connected(self, link: Link) -> None: ...

    def disconnected(self, link: Link) -> None: ...


class Link(ServerRequestHandler):
    """One client connection: MBAP frames in, the responder's answers out, in request order per responder."""

    def __init__(self, server: HookedTcpServer) -> None:
        super().__init__(server, None, None, None)  # type: ignore[no-untyped-call]
        self.responder: Responder = server.responder
        self._pending = server.pending

    def callback_connected(self) -> None:
        super().callback_connected()
        self.responder.connected(self)

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        self.responder.disconnected(self)

    def callback_data(self, data: bytes, addr: Any = None) -> int:
        """Take every whole frame in the buffer (pymodbus takes one per read and keeps only the last)."""
        used = 0
        while len(data) - used >= 8:
            tid, protocol, length, unit = struct.unpack_from(">HHHB", data, used)
            if protocol != 0 or not 2 <= length <= 254:
                self.hang_up()  # not Modbus/TCP: a device gives up on the stream
                return len(data)
            end = used + 6 + length
            if end > len(data):
                break
            task = asyncio.get_running_loop().create_task(self._serve(tid, unit, data[used + 7 : end]))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            used = end
        return used

    async def _serve(self, tid: int, unit: int, pdu: bytes) -> None:
        try:
            reply = await self.responder.respond(unit, pdu, self)
        except Exception:
            log.exception("simulated device failed on a request; hanging up")
            reply = NoReply.HANG_UP
        if reply is NoReply.HANG_UP:
            self.hang_up()
        elif isinstance(reply, bytes) and self.is_active():
            header = struct.pack(">HHHB", tid, 0, len(reply) + 1, unit)
            transport = self.transport
            assert isinstance(transport, asyncio.Transport)
            transport.write(header + reply)  # not send(): it would clear a pipelined request

    def hang_up(self) -> None:
        """Close the connection now; replies still being prepared are never sent."""
        if self.is_active():
            self.responder.disconnected(self)
            self.close()


class HookedTcpServer(ModbusTcpServer):
    def __init__(self, responder: Responder, address: tuple[str, int]) -> None:
        context = ModbusServerContext()  # type: ignore[no-untyped-call]  # never consulted: the hook answers
        super().__init__(context, address=address)
        self.responder = responder
        self.pending: set[asyncio.Task[None]] = set()
        """Requests being answered, on every connection: cancelled when the server stops."""

    def callback_new_connection(self) -> Link:
        return Link(self)


class HookedEndpoints(Endpoints):
    """One hooked pymodbus TCP server per responder, on consecutive ports, each stoppable alone."""

    def __init__(self, host: str, ports: list[int], responders: Sequence[Responder]) -> None:
        if len(responders) != len(ports):
            raise ValueError(f"{len(responders)} devices for {len(ports)} ports")
        super().__init__(host, ports)
        self.responders = list(responders)
        self._servers: list[HookedTcpServer | None] = [None] * len(ports)

    def is_running(self, index: int) -> bool:
        return self._servers[index] is not None

    async def _start(self, index: int) -> int:
        server = HookedTcpServer(self.responders[index], (self.host, self.ports[index]))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus logs the OSError and raises this instead
            raise OSError(f"cannot listen on {self.host}:{self.ports[index]} (in use?)") from exc
        self._servers[index] = server
        try:
            return bound_port(server.transport, self.host, self.ports[index])
        except OSError:
            await self._stop(index)
            raise

    async def _stop(self, index: int) -> None:
        server, self._servers[index] = self._servers[index], None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
            for task in list(server.pending):
                task.cancel()
            await asyncio.gather(*server.pending, return_exceptions=True)

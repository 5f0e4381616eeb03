"""TCP listeners for simulated devices: one port each, stoppable and restartable one at a time.

Shared by every simulator so that "a device vanishes and comes back" behaves the same whether the
device is a meter, a generic register bank or a black hole.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer


def quiet_pymodbus() -> None:
    """Keep pymodbus from printing: a simulator that logs every client hiccup buries the demo.

    Only takes effect while nobody configured the "pymodbus" logger; pymodbus's own
    ``pymodbus_apply_logging_config()`` sets a level on its child logger and still works.
    """
    logger = logging.getLogger("pymodbus")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


def sequential_block(values: list[int] | list[bool]) -> ModbusSequentialDataBlock:
    """A datastore block for wire address 0 onwards.

    pymodbus's device context adds 1 to every wire address before it reaches a block, so blocks
    start at 1. Reads past the block's end get ILLEGAL ADDRESS, as from a real device.
    """
    return ModbusSequentialDataBlock(1, values)  # type: ignore[no-untyped-call]


def port_range(port: int, count: int) -> list[int]:
    """``port``, ``port + 1``, ...; port 0 gives ``count`` zeros (each listener picks a free port)."""
    if count < 1:
        raise ValueError("count must be >= 1")
    if port == 0:
        return [0] * count
    if not 1 <= port <= 65536 - count:
        raise ValueError(f"ports {port}..{port + count - 1} are not all valid TCP ports")
    return [port + i for i in range(count)]


def bound_port(server: object, host: str, asked: int) -> int:
    """The one port a listener ended up on; several (IPv4 + IPv6 for port 0) is an error."""
    sockets = getattr(server, "sockets", None) or []
    ports = {sock.getsockname()[1] for sock in sockets}
    if len(ports) != 1:
        raise OSError(f"{host}:{asked} bound {len(sockets)} sockets on ports {sorted(ports)}; "
                      "with port 0 use a host with a single address")
    return int(ports.pop())


class Endpoints(abc.ABC):
    """A row of TCP listeners on consecutive ports that tests can take down and bring back."""

    def __init__(self, host: str, ports: list[int]) -> None:
        self.host = host
        self.ports = ports
        self._ticker: asyncio.Task[None] | None = None

    def tick_every(self, interval: float, step: Callable[[], None], name: str) -> None:
        """Advance the simulated devices every `interval` seconds until close()."""

        async def forever() -> None:
            while True:
                await asyncio.sleep(interval)
                step()

        self._ticker = asyncio.create_task(forever(), name=name)

    @abc.abstractmethod
    async def _start(self, index: int) -> int:
        """Listen for endpoint ``index`` on ``self.ports[index]``; return the bound port."""

    @abc.abstractmethod
    async def _stop(self, index: int) -> None: ...

    @abc.abstractmethod
    def is_running(self, index: int) -> bool: ...

    async def start_one(self, index: int) -> None:
        """Bring an endpoint back on the port it had; a no-op if it is up."""
        if not self.is_running(index):
            self.ports[index] = await self._start(index)

    async def stop_one(self, index: int) -> None:
        """Close the listener and drop its connections, so connects are refused."""
        if self.is_running(index):
            await self._stop(index)

    async def start_all(self) -> None:
        """Start every endpoint, or none: a failure closes the ones already listening."""
        try:
            for index in range(len(self.ports)):
                await self.start_one(index)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for index in range(len(self.ports)):
            await self.stop_one(index)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class ModbusEndpoints(Endpoints):
    """One pymodbus TCP server per endpoint, each serving its own context (a device with its own IP)."""

    def __init__(self, host: str, ports: list[int], contexts: Sequence[ModbusServerContext]) -> None:
        if len(contexts) != len(ports):
            raise ValueError(f"{len(contexts)} contexts for {len(ports)} ports")
        super().__init__(host, ports)
        self._contexts = list(contexts)
        self._servers: list[ModbusTcpServer | None] = [None] * len(ports)

    def is_running(self, index: int) -> bool:
        return self._servers[index] is not None

    async def _start(self, index: int) -> int:
        server = ModbusTcpServer(self._contexts[index], address=(self.host, self.ports[index]))
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
            # shutdown() closes the listening socket and every client connection at once.
            await server.shutdown()  # type: ignore[no-untyped-call]


def serve_until_done(name: str, serve: Coroutine[Any, Any, None]) -> int:
    """A simulator's own process: serve until stopped; a bad address or option is one line on stderr, exit 1."""
    try:
        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            asyncio.run(serve)
    except (OSError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0

"""The daemon's own HTTP/1.1 server (h11 on asyncio streams, in the daemon's loop): the status page and /metrics.

Every request is hostile: the head is bounded in size, header count and time (a slowloris client is dropped when
its deadline passes, whatever it trickles), the body in size, the connections in number; a malformed request gets
a 4xx and a closed connection, never an exception in the daemon. Connections that say nothing cannot hold the page
down: a new one has a few seconds to start its request, one address may hold only a few at once, and when the
table is full a newcomer takes the place of the connection that has waited longest for a request (a silent one or
an idle keep-alive); only requests in progress are never cut, and only when every place is one is a newcomer
refused (503). A port already taken (or a TLS file missing) is
an error the supervisor reports (``gateway.task_crashed``, source ``web``) and retries with backoff; the rest of
the gateway runs on regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h11
import structlog

from gateway.web.api import App, Request, Response, error
from models import live as frames

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = structlog.get_logger("gateway.web")

MAX_CONNECTIONS = 32
PER_PEER = 8
"""Connections one address may hold at once (every ``ssh -L`` user is 127.0.0.1, so a newcomer displaces
that address's longest-waiting one rather than being refused)."""
MAX_HEAD = 8 * 1024
MAX_HEADERS = 64
MAX_BODY = 16 * 1024
FIRST_BYTE = 5.0
"""Seconds a new connection may take to send the first byte of its request."""
IDLE = 30.0
"""Seconds a kept-alive connection may wait for its next request."""
REQUEST_TIME = 10.0
"""Seconds from a request's first byte to its last (head and body): what bounds a slowloris."""
WRITE_TIME = 30.0
SWEEP_EVERY = 10.0
"""Seconds between looks for left-over camera frames (models.live.STALE)."""
TLS_HANDSHAKE = 10.0


class WebUnavailable(Exception):
    """The server cannot listen (port taken, TLS files unreadable); the supervisor retries with backoff."""


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def serve(daemon: Daemon) -> None:
    """Serve [web] until cancelled; raises WebUnavailable when it cannot listen."""
    web = daemon.cfg.web
    context = None
    if web.tls_cert is not None and web.tls_key is not None:
        try:
            context = tls_context(str(web.tls_cert), str(web.tls_key))
        except (OSError, ssl.SSLError) as exc:
            log.error("web: TLS certificate unusable", cert=str(web.tls_cert), error=str(exc))
            raise WebUnavailable(f"TLS certificate {web.tls_cert} / key {web.tls_key} unusable: {exc}") from None
    server = HttpServer(App(daemon))
    try:
        listener = await asyncio.start_server(server.connection, web.listen, web.port, ssl=context,
                                              ssl_handshake_timeout=TLS_HANDSHAKE if context else None,
                                              backlog=64, limit=MAX_HEAD)
    except OSError as exc:
        log.error("web: cannot listen", listen=web.listen, port=web.port, error=str(exc))
        raise WebUnavailable(f"cannot listen on {web.listen}:{web.port}: {exc.strerror or exc}") from None
    scheme = "https" if context else "http"
    log.info("web: serving", url=f"{scheme}://{web.listen}:{web.port}/", page=web.page, metrics=web.metrics)
    sweeper = asyncio.create_task(sweep_frames(daemon.cfg.store.data_dir), name="web-sweep-frames")
    try:
        async with listener:
            await listener.serve_forever()
    finally:
        sweeper.cancel()
        await server.close()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


async def sweep_frames(data_dir: Path) -> None:
    """Camera frames left on disk (a worker that died, a camera lost or removed from the config) deleted once
    they are ``STALE``: at start, then every few seconds."""
    while True:
        removed = await asyncio.to_thread(frames.sweep, data_dir)
        if removed:
            log.info("web: removed left-over camera frames", files=removed)
        await asyncio.sleep(SWEEP_EVERY)


class _Drop(Exception):
    """Close the connection without another word (timeout, EOF, a client that broke the protocol twice)."""


@dataclass(eq=False, slots=True)
class _Client:
    """One connection as the table of connections sees it."""

    task: asyncio.Task[None]
    peer: str
    waiting_since: float | None
    """When it began waiting for a request's first byte (new or kept alive); None while a request is in progress."""
    requests: int = 0
    evicted: bool = False


class HttpServer:
    def __init__(self, app: App) -> None:
        self.app = app
        self.connections: dict[asyncio.Task[None], _Client] = {}

    async def close(self) -> None:
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    def _admit(self, peer: str) -> bool:
        """Room for a new connection from ``peer``, made by evicting the longest-waiting one if need be."""
        mine = [c for c in self.connections.values() if c.peer == peer]
        if len(mine) >= PER_PEER and not self._evict(mine):
            return False
        return len(self.connections) < MAX_CONNECTIONS or self._evict(list(self.connections.values()))

    def _evict(self, among: list[_Client]) -> bool:
        waiting = [c for c in among if c.waiting_since is not None]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.waiting_since or 0.0)
        oldest.evicted = True
        del self.connections[oldest.task]
        oldest.task.cancel()
        return True

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        where = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if task is None or not self._admit(where):
            with contextlib.suppress(Exception):
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
                             b"Retry-After: 5\r\n\r\n")
                writer.close()
            return
        client = _Client(task, where, asyncio.get_running_loop().time())
        self.connections[task] = client
        try:
            await self._serve(reader, writer, client)
        except (_Drop, TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            if not client.evicted:
                raise
        except Exception:  # a bug here must never reach the daemon: log it, drop the connection
            log.exception("web: request failed", peer=where)
        finally:
            if self.connections.get(task) is client:
                del self.connections[task]
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: _Client) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        tls = writer.get_extra_info("sslcontext") is not None
        while True:
            try:
                request = await self._request(conn, reader, client, tls)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
                    await self._send(conn, writer, error(status, "malformed request"), close=True)
                return
            except _TooLarge as exc:
                await self._send(conn, writer, exc.response, close=True)
                return
            if request is None:
                return
            response = await self.app.handle(request)
            await self._send(conn, writer, response, close=request.close)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
            client.requests += 1

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response, *,
                    close: bool = False) -> None:
        headers = response.header_list()
        if close:
            headers.append(("Connection", "close"))
        try:
            await _write(writer, conn.send(h11.Response(status_code=response.status, headers=headers)))
            await _write(writer, conn.send(h11.Data(data=response.body)))
            await _write(writer, conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            raise _Drop from None
        if close:
            raise _Drop

    async def _request(self, conn: h11.Connection, reader: asyncio.StreamReader, client: _Client,
                       tls: bool) -> Request | None:
        loop = asyncio.get_running_loop()
        client.waiting_since = loop.time()
        deadline = loop.time() + (IDLE if client.requests else FIRST_BYTE)
        started = False
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _Drop
                async with asyncio.timeout(remaining):
                    data = await reader.read(4096)
                if not started and data:
                    started, deadline = True, loop.time() + REQUEST_TIME
                    client.waiting_since = None  # a request in progress is never evicted
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Request):
                client.waiting_since = None  # (a pipelined request arrives without a read)
                head = event
                if len(event.headers) > MAX_HEADERS:
                    raise _TooLarge(error(431, "too many headers"))
                length = dict(event.headers).get(b"content-length")
                if length is not None and int(length) > MAX_BODY:
                    raise _TooLarge(error(413, f"a request body is at most {MAX_BODY} bytes"))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise _TooLarge(error(413, f"a request body is at most {MAX_BODY} bytes"))
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request.of(head, bytes(body), client.peer, tls)


class _TooLarge(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


async def _write(writer: asyncio.StreamWriter, data: bytes | None) -> None:
    if data:
        writer.write(data)
        async with asyncio.timeout(WRITE_TIME):
            await writer.drain()

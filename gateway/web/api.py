"""What the daemon's web server answers: the page, its JSON, alarm actions, camera frames, /metrics.

Alarm actions go through the same command handler as `gateway alarms ack` (one alarm book, one trail), with
the actor ``web:<user>``, and each is written to the audit (`gateway audit`). A POST must carry ``X-Gateway: 1``
and a JSON body: a browser sends neither cross-site without a CORS preflight, and none is ever offered, so
another site cannot make a logged-in browser acknowledge an alarm. On loopback the Host must be a loopback
name too, so a DNS-rebinding page cannot read the JSON either.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import h11
import orjson
import structlog
from pydantic import ValidationError

from gateway.commands import AlarmCommand, CommandError
from gateway.config.observe import is_loopback
from gateway.core.errors import DriverError
from gateway.web.auth import ANONYMOUS, Refused, User, Users
from models import live as frames

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = structlog.get_logger("gateway.web")

ACTIONS = ("acknowledge", "reset", "shelve", "unshelve")
"""What the page may do to an alarm (an operator's login); disabling one stays a CLI matter."""
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8"),
          "/static/icon.svg": ("icon.svg", "image/svg+xml"),
          "/favicon.ico": ("icon.svg", "image/svg+xml")}
CAMERA = re.compile(r"/api/cameras/([A-Za-z0-9][A-Za-z0-9_\-]{0,63})/frame\.jpg")
ALARM = re.compile(r"/api/alarms/([a-z_]{1,20})")
SECURITY = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
]
REALM = 'Basic realm="gateway", charset="UTF-8"'


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    peer: str
    tls: bool
    repeated: frozenset[bytes] = frozenset()
    """Header names sent more than once (an ambiguous Host or Authorization is refused)."""

    @property
    def close(self) -> bool:
        return b"close" in self.headers.get(b"connection", b"").lower()

    @classmethod
    def of(cls, head: h11.Request, body: bytes, peer: str, tls: bool) -> Request:
        headers: dict[bytes, bytes] = {}
        repeated = set()
        for name, value in head.headers:
            if name in headers:
                repeated.add(bytes(name))
            headers[bytes(name)] = bytes(value)
        target = bytes(head.target).decode("latin-1")
        return cls(bytes(head.method).decode("latin-1"), target.partition("?")[0], headers, body, peer, tls,
                   frozenset(repeated))


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    cache: str = "no-store"
    extra: list[tuple[str, str]] = field(default_factory=list)

    def header_list(self) -> list[tuple[str, str]]:
        return [("Content-Type", self.content_type), ("Content-Length", str(len(self.body))),
                ("Cache-Control", self.cache), *SECURITY, *self.extra]


def as_json(data: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS))


def error(status: int, message: str, *extra: tuple[str, str]) -> Response:
    response = as_json({"ok": False, "error": message}, status)
    response.extra.extend(extra)
    return response


def route(path: str) -> tuple[str, str | None] | None:
    """What a request path names: (route, argument), or None. No decoding: an id is taken as it is written."""
    if path in STATIC:
        return "static", path
    if path == "/api/state":
        return "state", None
    if path == "/metrics":
        return "metrics", None
    if match := CAMERA.fullmatch(path):
        return "frame", match.group(1)
    if (match := ALARM.fullmatch(path)) and match.group(1) in ACTIONS:
        return "alarm", match.group(1)
    return None


def host_name(host: bytes) -> str:
    """The name in a Host header, without its port, lower case, without a trailing dot ("LocalHost.:9847" ->
    "localhost", "[::1]:9847" -> "::1"): names are case-insensitive and "localhost." is "localhost"."""
    text = host.decode("latin-1").strip()
    if text.startswith("["):
        return text[1:].partition("]")[0].lower()
    name = text.rpartition(":")[0] if text.count(":") == 1 else text
    return name.lower().removesuffix(".")


class App:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.web = daemon.cfg.web
        self.users = Users(self.web.users_file)
        self.loopback = is_loopback(self.web.listen)
        static = resources.files("gateway.web").joinpath("static")
        self.static = {path: (static.joinpath(name).read_bytes(), kind) for path, (name, kind) in STATIC.items()}

    async def handle(self, req: Request) -> Response:
        try:
            response = await self._handle(req)
        except Exception:  # a bug answers 500 and a log line; the daemon goes on
            log.exception("web: request failed", method=req.method, path=req.path[:200])
            response = error(500, "internal error: see the gateway's log")
        if req.tls:
            response.extra.append(("Strict-Transport-Security", "max-age=31536000"))
        return response

    async def _handle(self, req: Request) -> Response:
        if req.repeated & {b"host", b"authorization", b"content-type", b"x-gateway", b"origin"}:
            return error(400, "a header that must appear once appears twice")
        if self.loopback and not is_loopback(host_name(req.headers.get(b"host", b""))):
            return error(421, "this server answers to localhost only (reach it with ssh -L)")
        found = route(req.path)
        if found is None:
            return error(404, "no such page")
        name, argument = found
        if name == "metrics":
            return await self._metrics(req) if self.web.metrics else error(404, "metrics are off ([web] metrics)")
        if not self.web.page:
            return error(404, "the status page is off ([web] page)")
        if name == "alarm":
            return await self._alarm(req, str(argument)) if req.method == "POST" else _method("POST")
        if req.method != "GET":
            return _method("GET")
        user = await self._login(req)
        if isinstance(user, Response):
            return user
        if name == "static":
            body, kind = self.static[str(argument)]
            return Response(200, body, kind, "no-cache")
        if name == "state":
            return as_json(await self._state(user))
        return self._frame(str(argument), user)

    async def _login(self, req: Request) -> User | Response:
        if not self.users.enabled:
            return ANONYMOUS
        try:
            return await self.users.login(req.headers.get(b"authorization"), req.peer)
        except Refused as exc:
            if exc.throttled:
                return error(429, str(exc), ("Retry-After", "300"))
            return error(401, f"log in: {exc}", ("WWW-Authenticate", REALM))

    async def _metrics(self, req: Request) -> Response:
        if req.method != "GET":
            return _method("GET")
        if self.web.login_for_metrics:
            if not self.users.enabled:
                return error(403, "metrics need a login here, and there is no [web] users_file to log in with")
            user = await self._login(req)
            if isinstance(user, Response):
                return user
        from gateway.metrics import CONTENT_TYPE, exposition  # only a server that serves metrics loads them

        # 20-30 ms at 300 devices on x86, ~100 ms on a Pi: rendered beside the loop, not in it
        return Response(200, await asyncio.to_thread(exposition, await self.daemon.observer.snapshot()), CONTENT_TYPE)

    async def _state(self, user: User) -> dict[str, Any]:
        d = self.daemon
        operator = self.users.enabled and user.can("operator")
        return {"user": user.name, "roles": sorted(user.roles), "login": self.users.enabled,
                "can": {"acknowledge": operator, "faces": self.users.enabled and user.can("faces")},
                "observed": await d.observer.snapshot(), "values": d.live.listing(),
                "actions": list(ACTIONS) if operator else []}

    def _frame(self, camera: str, user: User) -> Response:
        if camera not in self.daemon.cameras:
            return error(404, f"no camera {camera!r}")
        data_dir = self.daemon.cfg.store.data_dir
        faces = self.users.enabled and user.can("faces")
        try:
            frames.want(data_dir, camera, raw=faces)  # the unblurred picture is written only for such a viewer
        except OSError as exc:
            return error(503, f"cannot ask the camera worker for frames: {exc}")
        latest = frames.latest(data_dir, camera, faces=faces)
        if latest is None:
            return error(503, "no frame yet: the camera's worker writes one within a second or two while the page "
                              "is open (is the camera streaming?)", ("Retry-After", "1"))
        data, written = latest
        age = max(0.0, time.time() - written)
        return Response(200, data, "image/jpeg", extra=[("X-Frame-Age", f"{age:.1f}"),
                                                        ("X-Faces", "shown" if faces else "blurred")])

    async def _alarm(self, req: Request, action: str) -> Response:
        if req.headers.get(b"x-gateway") != b"1":
            return error(403, "refused: a POST needs the header X-Gateway: 1 (cross-site requests are refused)")
        if req.headers.get(b"content-type", b"").split(b";")[0].strip().lower() != b"application/json":
            return error(415, "refused: a POST carries JSON (Content-Type: application/json)")
        origin = req.headers.get(b"origin")
        if origin is not None and origin.partition(b"://")[2].lower() != req.headers.get(b"host", b"").lower():
            return error(403, "refused: a request from another site")
        if not self.users.enabled:
            return error(403, "the page is read-only: there is no [web] users_file, so nobody can log in to "
                              "acknowledge (add one with `gateway web user add NAME --role operator`)")
        user = await self._login(req)
        if isinstance(user, Response):
            return user
        if not user.can("operator"):
            return error(403, f"{user.name} may look but not act: the operator role is needed")
        try:
            body = orjson.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError("not an object")
            command = AlarmCommand(cmd="alarm", action=action, key=body.get("key"),
                                   actor=f"web:{user.name}", note=body.get("note") or "", until=body.get("until"))
        except (ValueError, ValidationError) as exc:
            message = exc.errors(include_url=False)[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            return error(400, f"bad request: {message}"[:300])
        audit: dict[str, Any] = {"actor": command.actor, "req": f"web {req.peer}", "cmd": f"alarm {action}",
                                 "target": command.key}
        if command.note:
            audit["value"] = command.note
        try:
            done = await self.daemon.commands.execute(command)
        except (CommandError, DriverError) as exc:
            self.daemon.bus.audit("command", {**audit, "result": "refused", "error": str(exc)})
            return error(409, str(exc))
        self.daemon.bus.audit("command", {**audit, "result": "ok"})
        log.info("web: alarm action", user=user.name, action=action, key=command.key)
        return as_json({"ok": True, **done})


def _method(allowed: str) -> Response:
    return error(405, f"method not allowed (use {allowed})", ("Allow", allowed))

"""The daemon's web server against a real client: login and roles, CSRF, alarm actions in the trail, /metrics,
TLS, and hostile requests that must leave the daemon polling."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import http.client
import json
import os
import socket
import ssl
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, free_ports, running, until, write_config
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load_config
from gateway.daemon import Daemon
from gateway.web import server as web_server
from gateway.web.api import ACTIONS, STATIC, App, host_name, route
from gateway.web.auth import (
    ROLES,
    SCRYPT_N,
    User,
    format_users,
    hash_password,
    parse_basic,
    parse_users,
    verify_password,
)
from simulators.meter import METER_POINTS, MeterServer, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]
RULES = """
[[rules]]
id = "overvoltage"
when = { point = "meter-0.voltage_a", above = 240 }
alarm = { class = "equipment", message = "Voltage {value} V" }
"""
PASSWORDS = {"alice": "alice-password", "vic": "vic-password", "fay": "fay-password"}
ROLES_OF = {"alice": ["operator"], "vic": ["viewer"], "fay": ["viewer", "faces"]}


# -- helpers shared with test_status_page ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def meter() -> AsyncIterator[MeterServer]:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    try:
        yield server
    finally:
        await server.close()


async def add_user(config: Path, name: str, password: str, roles: list[str]) -> None:
    """`gateway web user add`, run as a technician runs it."""
    role_args = [a for r in roles for a in ("--role", r)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "web", "user", "add", name, *role_args, "--password-stdin", "-c",
        str(config), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(password.encode() + b"\n")
    assert proc.returncode == 0, err.decode()


def site_config(tmp: Path, server: MeterServer, *, web: str, rules: str = RULES, extra: str = "") -> Path:
    buses = [dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0], timeout="300ms")]
    devices = [dict(id="meter-0", bus="bus-0", interval="200ms", points=POINTS)]
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=None, buses=buses, devices=devices,
                        extra=f"\n[web]\n{web}\n")
    path.write_text(path.read_text() + f"\n{extra}\n{rules}")
    return path


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


async def call(port: int, method: str, path: str, *, user: str | None = None, password: str | None = None,
               headers: dict[str, str] | None = None, body: bytes | None = None,
               context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with Python's own HTTP client (in a thread): status, headers, body."""
    sent = dict(headers or {})
    if user is not None:
        sent["Authorization"] = basic(user, password if password is not None else PASSWORDS[user])

    def go() -> tuple[int, dict[str, str], bytes]:
        conn: http.client.HTTPConnection = (http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
                                            if context else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    return await asyncio.to_thread(go)


async def eventually(check: Callable[[], Awaitable[object]], within: float = 15.0) -> None:
    """Until an asynchronous check (an HTTP request, a store query) comes true; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 (the answer comes from another process or the store)
            await asyncio.sleep(0.1)


async def serving(port: int) -> None:
    """Until the web server accepts connections (it starts beside the pollers, not before them)."""
    async with asyncio.timeout(15):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


async def act(port: int, action: str, key: str, user: str | None, **kw: Any) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "X-Gateway": "1", **kw.pop("headers", {})}
    status, _, body = await call(port, "POST", f"/api/alarms/{action}", user=user, headers=headers,
                                 body=json.dumps({"key": key}).encode(), **kw)
    return status, json.loads(body)


async def state(port: int, user: str | None = None) -> dict[str, Any]:
    status, _, body = await call(port, "GET", "/api/state", user=user)
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


async def alarm_key(port: int, user: str | None = None) -> str:
    keys: list[str] = []

    async def raised() -> bool:
        keys[:] = [a["key"] for a in (await state(port, user))["observed"]["alarms"]["list"]]
        return bool(keys)

    await eventually(raised, 20)
    return keys[0]


async def audit(daemon: Daemon) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await daemon.store.run(daemon.store.store.audit_entries, 100)
    return entries


# -- without a users file: read-only on loopback -------------------------------------------------------------------


async def test_loopback_without_users_reads_the_page_and_metrics_but_cannot_act(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    async with meter() as server:
        server.meters[0].freeze()
        server.meters[0].set_point("voltage_a", 251.0)
        cfg = load_config(site_config(tmp_path, server, web=f"port = {port}"))
        async with running(Daemon(cfg)) as daemon:
            await serving(port)
            await until(lambda: daemon.pollers["meter-0"].state.polls >= 3)
            status, headers, page = await call(port, "GET", "/")
            assert status == 200 and b'<script src="/static/app.js"' in page
            assert "script-src 'self'" in headers["content-security-policy"] and "unsafe-inline" not in page.decode()
            assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
            assert "access-control-allow-origin" not in headers
            for path in STATIC:
                assert (await call(port, "GET", path))[0] == 200
            seen = await state(port)
            assert seen["user"] == "anonymous" and seen["can"] == {"acknowledge": False, "faces": False}
            values = {(v["device"], v["point"]): v["value"] for v in seen["values"]}
            assert values[("meter-0", "voltage_a")] == pytest.approx(251.0)
            assert seen["observed"]["devices"][0]["id"] == "meter-0"
            key = await alarm_key(port)
            status, said = await act(port, "acknowledge", key, None)
            assert status == 403 and "read-only" in said["error"] and "users_file" in said["error"]
            status, headers, body = await call(port, "GET", "/metrics")
            assert status == 200 and headers["cache-control"] == "no-store"
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            polls = [s for s in families["gateway_device_polls"].samples if s.labels.get("device") == "meter-0"]
            assert polls and polls[0].value >= 3
            assert (await call(port, "GET", "/api/cameras/nowhere/frame.jpg"))[0] == 404
            assert (await call(port, "DELETE", "/api/state"))[0] == 405
            assert daemon.automation is not None
            assert [a["state"] for a in daemon.automation.listing()] == ["active_unack"]


# -- logins, roles, CSRF, the trail ---------------------------------------------------------------------------------


async def test_an_operator_acknowledges_through_the_command_handler_and_the_trail_names_them(tmp_path: Path) -> None:
    port = free_port()
    async with meter() as server:
        server.meters[0].freeze()
        server.meters[0].set_point("voltage_a", 251.0)
        config = site_config(tmp_path, server, web=f'port = {port}\nusers_file = "{tmp_path / "web-users"}"\n'
                                                    "metrics_auth = true")
        await add_user(config, "vic", PASSWORDS["vic"], ["viewer"])
        async with running(Daemon(load_config(config))) as daemon:
            await serving(port)
            status, headers, _ = await call(port, "GET", "/api/state")
            assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
            assert (await call(port, "GET", "/api/state", user="vic", password="wrong"))[0] == 401
            assert (await call(port, "GET", "/api/state", user="nobody", password="x"))[0] == 401
            assert (await call(port, "GET", "/metrics"))[0] == 401
            assert (await call(port, "GET", "/metrics", user="vic"))[0] == 200
            # a user added while the daemon runs can log in at once
            await add_user(config, "alice", PASSWORDS["alice"], ["operator"])
            key = await alarm_key(port, "alice")
            seen = await state(port, "alice")
            assert seen["can"]["acknowledge"] and seen["user"] == "alice"
            assert not (await state(port, "vic"))["can"]["acknowledge"]

            status, said = await act(port, "acknowledge", key, "vic")
            assert status == 403 and "operator" in said["error"]
            status, said = await act(port, "acknowledge", key, "alice", headers={"X-Gateway": "0"})
            assert status == 403 and "X-Gateway" in said["error"]
            status, said = await act(port, "acknowledge", key, "alice", headers={"Content-Type": "text/plain"})
            assert status == 415
            status, said = await act(port, "acknowledge", key, "alice", headers={"Origin": "http://evil.example"})
            assert status == 403 and "another site" in said["error"]
            status, _, _ = await call(port, "POST", "/api/alarms/acknowledge", user="alice", body=b"[1,2",
                                      headers={"Content-Type": "application/json", "X-Gateway": "1"})
            assert status == 400
            status, _, _ = await call(port, "GET", "/api/alarms/acknowledge", user="alice")
            assert status == 405
            assert daemon.automation is not None
            assert [a["state"] for a in daemon.automation.listing()] == ["active_unack"]  # none of those did a thing

            status, said = await act(port, "acknowledge", key, "alice",
                                     headers={"Origin": f"http://127.0.0.1:{port}"})
            assert status == 200 and said["ok"] and said["transitions"] == ["acknowledge"], said
            alarm = daemon.automation.listing()[0]
            assert alarm["state"] == "active_ack" and alarm["acknowledged_by"] == "web:alice"
            status, said = await act(port, "acknowledge", key, "alice")
            assert status == 409 or said.get("transitions") == []  # a second ack: refused or nothing to do
            status, said = await act(port, "reset", "no-such-alarm", "alice")
            assert status == 409 and said["error"]

            async def audited() -> list[dict[str, Any]]:
                return [e for e in await audit(daemon) if e.get("actor") == "web:alice"]

            async def acknowledged() -> bool:
                return any(e["result"] == "ok" for e in await audited())

            await eventually(acknowledged)
            done = next(e for e in await audited() if e["result"] == "ok")
            assert done["action"] == "command" and done["cmd"] == "alarm acknowledge" and done["target"] == key
            assert any(e["result"] == "refused" and e["target"] == "no-such-alarm" for e in await audited())
            events = await daemon.store.run(daemon.store.store.events_after, 0, 1000)
            acks = [e for _, e in events if e["kind"] == "alarm.acknowledge"]
            assert acks and acks[0]["data"]["who"] == "web:alice"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "audit", "-c", str(config),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert b"web:alice" in out and b"alarm acknowledge" in out  # what `gateway audit` shows a technician
    users_file = tmp_path / "web-users"
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    assert "alice-password" not in users_file.read_text() and "scrypt$" in users_file.read_text()


async def test_guessing_passwords_is_throttled_without_running_scrypt(tmp_path: Path) -> None:
    port = free_port()
    async with meter() as server:
        config = site_config(tmp_path, server, web=f'port = {port}\nusers_file = "{tmp_path / "web-users"}"')
        for name in ("vic", "alice", "fay"):
            await add_user(config, name, PASSWORDS[name], ROLES_OF[name])
        async with running(Daemon(load_config(config))):
            await serving(port)
            assert (await call(port, "GET", "/api/state", user="fay"))[0] == 200  # fay's page is open
            for name in ("vic", "fay"):
                codes = [(await call(port, "GET", "/api/state", user=name, password=f"guess-{n}"))[0]
                         for n in range(11)]
                assert codes[:10] == [401] * 10 and codes[10] == 429
            # even the right password waits out the window: the guesser cannot tell
            assert (await call(port, "GET", "/api/state", user="vic"))[0] == 429
            # every ssh -L user is 127.0.0.1: another name still logs in, and fay's open session goes on
            assert (await call(port, "GET", "/api/state", user="alice"))[0] == 200
            assert (await call(port, "GET", "/api/state", user="fay"))[0] == 200


# -- hostile requests ----------------------------------------------------------------------------------------------


async def raw(port: int, data: bytes, *, read_for: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(read_for):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


async def test_hostile_requests_are_answered_or_dropped_and_the_daemon_polls_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_server, "REQUEST_TIME", 1.0)  # the slowloris bound, shortened for the test
    monkeypatch.setattr(web_server, "FIRST_BYTE", 1.0)  # and the silent connection's
    port = free_port()
    async with meter() as server:
        cfg = load_config(site_config(tmp_path, server, web=f"port = {port}"))
        async with running(Daemon(cfg)) as daemon:
            await serving(port)
            await until(lambda: daemon.pollers["meter-0"].state.polls >= 2)
            head = b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            assert (await raw(port, head + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
            many = b"".join(b"X-%d: 1\r\n" % i for i in range(100))
            assert (await raw(port, head + many + b"\r\n")).startswith(b"HTTP/1.1 431")
            assert (await raw(port, b"\x16\x03\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
            assert (await raw(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")  # no Host
            big = b"POST /api/alarms/acknowledge HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 999999999\r\n\r\n"
            assert (await raw(port, big)).startswith(b"HTTP/1.1 413")
            # (Connection: close on the answers that would keep the connection: raw reads until the server ends it)
            rebound = b"GET /api/state HTTP/1.1\r\nHost: attacker.example:9847\r\nConnection: close\r\n\r\n"
            assert (await raw(port, rebound)).startswith(b"HTTP/1.1 421")
            two = b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n"
            assert (await raw(port, two)).startswith(b"HTTP/1.1 400")
            for path in (b"/../../etc/passwd", b"/api/cameras/..%2f..%2fgateway.db/frame.jpg", b"/%00", b"/api/"):
                answer = await raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                                   read_for=2)
                assert answer.startswith((b"HTTP/1.1 404", b"HTTP/1.1 400")), answer[:80]
            # keep-alive: two requests on one connection, both answered
            two_requests = head + b"\r\n" + head + b"Connection: close\r\n\r\n"
            assert (await raw(port, two_requests)).count(b"HTTP/1.1 200") == 2

            # a slowloris trickling its head is cut off at the request deadline; others are served meanwhile
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/state HTTP/1.1\r\n")
            await writer.drain()
            dropped = False
            async with asyncio.timeout(15):
                for _ in range(40):
                    try:
                        writer.write(b"X-A: b\r\n")
                        await writer.drain()
                    except ConnectionError:
                        dropped = True
                        break
                    if reader.at_eof() or await _closed(reader):
                        dropped = True
                        break
                    assert (await call(port, "GET", "/api/state"))[0] == 200
            writer.close()
            assert dropped, "a trickling client was never dropped"

            # a crowd of silent connections cannot hold the page: a newcomer takes the place of the longest silent
            crowd = [await asyncio.open_connection("127.0.0.1", port) for _ in range(web_server.MAX_CONNECTIONS + 8)]
            assert (await call(port, "GET", "/api/state"))[0] == 200
            assert (await call(port, "GET", "/metrics"))[0] == 200
            cut = [await _closed(r) for r, _ in crowd]
            assert sum(not c for c in cut) <= web_server.PER_PEER, "one address held more than its share"
            for _, w in crowd:
                w.close()
            silent, quiet = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(10):  # the first-byte deadline (1 s here), not the 30 s keep-alive
                assert await silent.read(1024) == b""
            quiet.close()
            # requests in progress are never cut: with every place of this address one, a newcomer is refused
            # (a second server on the daemon's own App, so the test can see when it has read the begun heads)
            second = web_server.HttpServer(App(daemon))
            listener = await asyncio.start_server(second.connection, "127.0.0.1", 0)
            other = listener.sockets[0].getsockname()[1]
            busy = [await asyncio.open_connection("127.0.0.1", other) for _ in range(web_server.PER_PEER)]
            for _, w in busy:
                w.write(head)  # a head begun, not finished
                await w.drain()
            await until(lambda: [c.waiting_since for c in second.connections.values()] == [None] * web_server.PER_PEER)
            refused = await raw(other, head + b"\r\n", read_for=2)
            assert refused.startswith(b"HTTP/1.1 503"), refused[:60]
            for _, w in busy:
                w.close()
            listener.close()
            await second.close()

            async def answers() -> bool:
                return (await call(port, "GET", "/api/state"))[0] == 200

            await eventually(answers)
            polls = daemon.pollers["meter-0"].state.polls
            await until(lambda: daemon.pollers["meter-0"].state.polls > polls + 2)
            assert not daemon.supervisor.restarts.get("web")


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server ended the connection (EOF, or an answer to a head it never finished reading)."""
    try:
        async with asyncio.timeout(0.3):
            await reader.read(1024)
            return True
    except TimeoutError:
        return False


async def test_a_taken_port_is_reported_and_retried_until_it_is_free(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    async with meter() as server:
        cfg = load_config(site_config(tmp_path, server, web=f"port = {port}"))
        async with running(Daemon(cfg)) as daemon:
            await until(lambda: daemon.supervisor.restarts.get("web", 0) >= 1)
            await until(lambda: daemon.pollers["meter-0"].state.polls >= 3)  # the rest of the gateway runs on
            blocker.close()
            async with asyncio.timeout(20):
                while True:
                    with contextlib.suppress(OSError):
                        if (await call(port, "GET", "/api/state"))[0] == 200:
                            break
                    await asyncio.sleep(0.2)
            events = await daemon.store.run(daemon.store.store.events_after, 0, 1000)
            crashed = [e for _, e in events if e["kind"] == "gateway.task_crashed" and e["source"] == "web"]
            assert crashed and "cannot listen" in crashed[0]["data"]["error"]


# -- TLS and the config's own guard ----------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "web.crt", directory / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


async def test_tls_serves_https_and_a_lan_address_without_tls_or_users_is_refused(tmp_path: Path) -> None:
    port = free_port()
    cert, key = self_signed(tmp_path)
    async with meter() as server:
        web = f'port = {port}\nusers_file = "{tmp_path / "web-users"}"\ntls_cert = "{cert}"\ntls_key = "{key}"'
        config = site_config(tmp_path, server, web=web)
        await add_user(config, "vic", PASSWORDS["vic"], ["viewer"])
        async with running(Daemon(load_config(config))):
            await serving(port)
            context = ssl.create_default_context(cafile=str(cert))
            status, headers, _ = await call(port, "GET", "/api/state", user="vic", context=context)
            assert status == 200 and headers["strict-transport-security"].startswith("max-age=")
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                await call(port, "GET", "/api/state", user="vic")  # plain HTTP to a TLS port gets nothing
        for web, needs in ((f"listen = \"0.0.0.0\"\nport = {port}", "tls_cert"),
                           (f'listen = "192.168.1.10"\ntls_cert = "{cert}"\ntls_key = "{key}"', "users_file"),
                           (f'tls_cert = "{cert}"', "together")):
            with pytest.raises(ConfigError, match=needs):
                load_config(site_config(tmp_path, server, web=web))


# -- the parsers, with hostile input ---------------------------------------------------------------------------------

A_HASH = hash_password("correct horse", salt=b"s" * 16, n=2**10)


@given(st.binary(max_size=300))
def test_any_authorization_header_parses_or_is_refused(header: bytes) -> None:
    got = parse_basic(header)
    assert got is None or (isinstance(got[0], str) and isinstance(got[1], str))


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", fullmatch=True), st.text(max_size=40))
def test_a_basic_login_round_trips(name: str, password: str) -> None:
    header = basic(name, password).encode()
    assert parse_basic(header) == (name, password)
    assert parse_basic(header.replace(b"Basic", b"Bearer")) is None


@given(st.text(max_size=2000))
def test_any_users_file_text_parses_into_users_and_problems(text: str) -> None:
    users, problems = parse_users(text)
    assert all(set(u.roles) <= set(ROLES) for u in users.values())
    assert all(p.startswith("line ") for p in problems)


@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,20}", fullmatch=True),
                       st.sets(st.sampled_from(ROLES), min_size=1), max_size=8))
def test_users_files_round_trip(roles: dict[str, set[str]]) -> None:
    users = [User(name, frozenset(r), A_HASH) for name, r in roles.items()]
    parsed, problems = parse_users(format_users(users))
    assert not problems and list(parsed.values()) == users


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=30))
def test_only_the_right_password_verifies(password: str) -> None:
    assert verify_password(password, A_HASH) == (password == "correct horse")


@given(st.text(max_size=200))
def test_any_path_routes_to_a_known_page_or_none(path: str) -> None:
    found = route(path)
    if found is not None:
        name, argument = found
        assert name in ("static", "state", "metrics", "frame", "alarm")
        if name == "frame":
            assert argument and "/" not in argument and "." not in argument
        if name == "alarm":
            assert argument in ACTIONS


@given(st.binary(max_size=100))
def test_any_host_header_gives_a_name(host: bytes) -> None:
    assert isinstance(host_name(host), str)


def test_host_names_are_case_insensitive_and_a_trailing_dot_is_the_same_name() -> None:
    assert {host_name(h) for h in (b"LocalHost:9847", b"localhost.:9847", b"LOCALHOST.", b"localhost")} == {
        "localhost"}
    assert host_name(b"[::1]:9847") == "::1" and host_name(b"127.0.0.1.:9847") == "127.0.0.1"


def test_hashes_use_the_interactive_scrypt_cost() -> None:
    assert hash_password("x").startswith(f"scrypt${SCRYPT_N}$8$1$")
    assert not verify_password("x", "scrypt$1099511627776$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==")  # no DoS


async def test_web_user_commands_keep_a_private_file_of_hashes(tmp_path: Path) -> None:
    users = tmp_path / "etc" / "web-users"

    async def cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "web", "user", *args, "--file", str(users), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(stdin)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    assert (await cli("add", "ops", "--role", "operator", "--role", "faces", "--password-stdin",
                      stdin=b"long enough pw\n"))[0] == 0
    assert (await cli("add", "guard", "--password-stdin", stdin=b"another password\n"))[0] == 0
    code, _, err = await cli("add", "short", "--password-stdin", stdin=b"abc\n")
    assert code == 2 and "at least 8" in err
    code, _, err = await cli("add", "bad:name", "--password-stdin", stdin=b"long enough pw\n")
    assert code == 2 and "bad user name" in err
    code, out, _ = await cli("list", "--json")
    assert code == 0 and json.loads(out) == [{"name": "ops", "roles": ["faces", "operator"]},
                                             {"name": "guard", "roles": ["viewer"]}]
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    parsed, problems = parse_users(users.read_text())
    assert not problems and verify_password("long enough pw", parsed["ops"].hash)
    assert parsed["ops"].hash.split("$")[4] != parsed["guard"].hash.split("$")[4]  # a salt per user
    assert (await cli("remove", "guard"))[0] == 0
    assert (await cli("remove", "guard"))[0] == 1
    users.write_text(users.read_text() + "garbage line\n")
    code, out, err = await cli("list")
    assert code == 0 and "ops" in out and "line 3" in err  # a bad line is said, not fatal


def test_web_user_add_under_sudo_gives_the_file_to_the_service_and_writes_through_no_link(tmp_path: Path) -> None:
    """`sudo gateway web user add x --file /etc/gateway/web-users`: the service's to read (the data directory's
    owner), 0600; a link planted where the temporary file goes is replaced, never written through; without a
    terminal or --password-stdin it says so and changes nothing."""
    assert os.geteuid() == 0, "this proof needs root, as the CLI under sudo has it (CI runs as root)"
    import subprocess

    service = (61001, 61003)
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, *service)
    config = write_config(tmp_path / "config.toml", data_dir=data, mqtt_port=None, buses=[], devices=[])
    users = tmp_path / "etc" / "web-users"
    users.parent.mkdir()
    outside = tmp_path / "shadow"
    outside.write_text("root's secret\n")
    outside.chmod(0o640)
    (users.parent / ".web-users.tmp").symlink_to(outside)

    def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "gateway", "web", "user", *args, "--file", str(users), "-c",
                               str(config)], input=stdin, capture_output=True, timeout=60, start_new_session=True)

    done = cli("add", "ops", "--role", "operator", "--password-stdin", stdin=b"long enough pw\n")
    assert done.returncode == 0, done.stderr
    info = users.lstat()
    assert (info.st_uid, info.st_gid) == service and stat.S_IMODE(info.st_mode) == 0o600
    assert outside.read_text() == "root's secret\n" and outside.stat().st_uid == 0
    assert stat.S_IMODE(outside.stat().st_mode) == 0o640
    os.chown(users, 0, 0)  # a file an earlier release left root's: the next change gives it back to the service
    assert cli("add", "guard", "--password-stdin", stdin=b"another password\n").returncode == 0
    assert (users.stat().st_uid, users.stat().st_gid) == service
    before = users.read_bytes()
    no_tty = cli("add", "eve")  # a new session: no controlling terminal, and stdin is empty
    assert no_tty.returncode == 2 and b"--password-stdin" in no_tty.stderr and b"Traceback" not in no_tty.stderr
    assert users.read_bytes() == before


async def test_one_address_spraying_names_is_refused_unheard_others_are_not(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.web import auth

    monkeypatch.setattr(auth, "SPRAY", 5)  # the bound, made small for the test
    path = tmp_path / "web-users"
    path.write_text(format_users([User("vic", frozenset({"viewer"}), hash_password(PASSWORDS["vic"]))]))
    users = auth.Users(path)
    header = basic("vic", PASSWORDS["vic"]).encode()
    for n in range(5):
        with pytest.raises(auth.Refused) as refused:
            await users.login(basic(f"name-{n}", "guess").encode(), "192.0.2.7")
        assert not refused.value.throttled
    with pytest.raises(auth.Refused) as refused:
        await users.login(header, "192.0.2.7")  # the sprayer, even with a right password
    assert refused.value.throttled
    assert (await users.login(header, "192.0.2.8")).name == "vic"  # another address

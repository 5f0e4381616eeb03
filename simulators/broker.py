"""A real Mosquitto on a free loopback port, and free ports for simulators: for tests, the demo and benches.

One implementation of "start a broker and wait until it listens" and of "find free ports", so a
fix to either (a race, a slow start, a process left behind) reaches every user at once. The daemon
never imports this module.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
"""Seconds Mosquitto may take to accept connections before ``start`` gives up."""
STOP_GRACE = 10.0
"""Seconds a stopped Mosquitto may take to exit before it is killed."""
PBKDF2_ROUNDS = 101
"""What ``mosquitto_passwd`` of Mosquitto 2 writes (``$7$``: PBKDF2-SHA512, 12 bytes of salt, 64 of hash)."""


def mosquitto_binary() -> str | None:
    """Where Mosquitto is installed (Debian puts it in /usr/sbin, often not on a user's PATH), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """One line of a Mosquitto 2 password file, as ``mosquitto_passwd`` writes it (no need for the tool)."""
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ROUNDS, 64)
    return f"{user}:$7${PBKDF2_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


_WORKER_PORTS = 10000
"""Ports each of two parallel test workers picks from, below the kernel's ephemeral range (32768-60999)."""
_ports = random.Random()


def _worker_block() -> int | None:
    """First port of this pytest-xdist worker's block (gw0, gw1), or None: one process, or more workers."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    if name in ("gw0", "gw1"):
        return 12000 + int(name[2:]) * _WORKER_PORTS
    return None


def free_port(host: str = HOST, *, udp: bool = False) -> int:
    """A port nobody listens on right now (another process may take it later).

    In one process the kernel chooses. Under two parallel test workers each takes random ports from its own
    block below the ephemeral range, so the workers never hand out the same port, and the kernel never gives one
    of them to an outgoing connection or a ``bind(0)`` meanwhile.
    """
    first = _worker_block()
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    for _ in range(200):
        if first is None:
            break
        port = _ports.randrange(first, first + _WORKER_PORTS)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = HOST, *, udp: bool = False) -> int:
    """First of ``count`` consecutive free ports (simulators serve port, port + 1, ...), TCP or UDP."""
    if count < 1:
        raise ValueError("count must be >= 1")
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    for _ in range(200):
        base = free_port(host, udp=udp)
        if base + count > 65536:
            continue
        held: list[socket.socket] = []
        try:
            for i in range(count):
                s = socket.socket(socket.AF_INET, kind)
                held.append(s)
                s.bind((host, base + i))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no run of {count} free {'UDP' if udp else 'TCP'} ports on {host}")


class Mosquitto:
    """A Mosquitto process on 127.0.0.1 that can be stopped and started again on the same port.

    In-flight and queued messages per client are unlimited: with Mosquitto's defaults (20 and 1000)
    the broker would drop what a slow subscriber has not yet taken, and that is never what a test or
    a bench means to measure. ``persistence`` keeps sessions (and the QoS 1 messages queued for them)
    across a graceful restart, so a test can tell "never sent" from "nobody listened". ``users``
    (name -> password) turns anonymous access off and writes a password file; ``acl`` is the text of an
    ACL file (``docs/commands.md`` has the templates). The config file is written once, here; ``start``
    uses ``conf`` as it then is and waits for ``port``.
    """

    def __init__(self, workdir: Path, *, persistence: bool = False, binary: str | None = None,
                 port: int | None = None, users: Mapping[str, str] | None = None, acl: str | None = None) -> None:
        self.binary = binary or mosquitto_binary()
        self.port = free_port() if port is None else port
        self.conf = workdir / "mosquitto.conf"
        keep = (f"persistence true\npersistence_location {workdir}/\nautosave_interval 0\n" if persistence
                else "persistence false\n")
        access = "allow_anonymous true\n"
        if users is not None:
            passwords = workdir / "mosquitto.passwd"
            passwords.write_text("".join(password_line(u, p) + "\n" for u, p in users.items()))
            passwords.chmod(0o600)
            access = f"allow_anonymous false\npassword_file {passwords}\n"
        if acl is not None:
            (workdir / "mosquitto.acl").write_text(acl)
            access += f"acl_file {workdir / 'mosquitto.acl'}\n"
        if (persistence or users is not None or acl is not None) and os.geteuid() == 0:
            keep += "user root\n"  # as root Mosquitto drops to its own user, who can neither save nor read here
        self.conf.write_text(f"listener {self.port} {HOST}\n{access}{keep}"
                             "max_inflight_messages 0\nmax_queued_messages 0\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start it and return once it accepts connections; RuntimeError (and nothing left running) if not."""
        if self.binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.2):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        code = self.proc.poll()
        self.stop(kill=True)
        raise RuntimeError(f"mosquitto did not start on {HOST}:{self.port}"
                           + (f" (exit code {code})" if code is not None else f" within {timeout:g}s"))

    def stop(self, *, kill: bool = False) -> None:
        """Graceful by default (sessions saved); ``kill=True`` is a crash (in-flight state lost)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

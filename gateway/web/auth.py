"""Who may use the status page: a users file of scrypt hashes, HTTP Basic logins, roles.

The file holds one user a line, ``NAME:ROLE[,ROLE...]:scrypt$N$r$p$SALT$HASH`` (base64 salt and hash), written
by `gateway web user add`; it never holds a password. Roles: ``viewer`` reads the page, ``operator`` also
acknowledges, shelves and resets alarms, ``faces`` sees camera frames with faces unblurred.

Every login is hostile until proven otherwise: the header is parsed without trusting its length or encoding,
an unknown name costs the same scrypt as a known one, hashes are compared in constant time, and guessing is
refused without any scrypt at all once it keeps failing (so it costs the guesser, not the daemon's CPU).
A login that verified is remembered a few minutes under a keyed digest, so a page polling every 1.5 s costs
one scrypt per session, not one per request.

The throttle counts failures per (address, name): over ``ssh -L`` every technician is 127.0.0.1, so ten wrong
passwords for one name must not lock every other name out. A session already logged in (its exact
credentials remembered) is never throttled, so guessing at alice's name does not end alice's open page; a new
login as alice waits the window out like the guesser. One address spraying many names is stopped at
``SPRAY`` failures whatever the names.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import hmac
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("gateway.web")

ROLES = ("viewer", "operator", "faces")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""scrypt's interactive-login cost: ~50 ms and 16 MiB on a Pi 4, once per session."""
MAX_FILE = 256 * 1024
MAX_HEADER = 1024
"""Longest Authorization header looked at; a name and password fit in far less."""
REMEMBER = 300.0
"""Seconds a verified login is remembered (the file changing forgets them all)."""
FAILURES, FAILURE_WINDOW = 10, 300.0
"""Failed logins for one name from one address in the window before that name is refused unheard there."""
SPRAY = 100
"""Failed logins from one address in the window, whatever the names, before the address is refused unheard."""
TRACKED = 4096
"""Most (address, name) pairs with recent failures kept (a spray from many addresses must not grow it without end)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    roles: frozenset[str]
    hash: str

    def can(self, role: str) -> bool:
        """``viewer`` is what every role can do; ``operator`` and ``faces`` are granted one by one."""
        return bool(self.roles) if role == "viewer" else role in self.roles


ANONYMOUS = User("anonymous", frozenset({"viewer"}), "")
"""Who reads the page on loopback when there is no users file: read-only, faces blurred."""


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    salt = salt if salt is not None else os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32, maxmem=2**26)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _params(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    """A stored hash's parameters, or None when it is not one we would ever have written (bounded costs)."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(p.isdigit() and len(p) <= 8 for p in parts[1:4]):
        return None
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    if not (2**10 <= n <= 2**17 and n & (n - 1) == 0 and 1 <= r <= 16 and 1 <= p <= 4):
        return None
    try:
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not (8 <= len(salt) <= 64 and 16 <= len(key) <= 64):
        return None
    return n, r, p, salt, key


def verify_password(password: str, encoded: str) -> bool:
    params = _params(encoded)
    if params is None:
        return False
    n, r, p, salt, key = params
    got = hashlib.scrypt(password.encode(errors="surrogateescape"), salt=salt, n=n, r=r, p=p, dklen=len(key),
                         maxmem=2**27)
    return hmac.compare_digest(got, key)


_DUMMY = hash_password("not a password", salt=b"\0" * 16)
"""Verified against when the name is unknown, so a wrong name takes as long as a wrong password."""


def parse_users(text: str) -> tuple[dict[str, User], list[str]]:
    """The users in a file's text, and a problem for each line that is not one (``line N: why``)."""
    users: dict[str, User] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            problems.append(f"line {number}: not NAME:ROLES:HASH")
            continue
        name, roles_text, encoded = parts
        roles = frozenset(r.strip() for r in roles_text.split(",") if r.strip())
        if not NAME.fullmatch(name):
            problems.append(f"line {number}: bad user name")
        elif not roles or not roles <= set(ROLES):
            problems.append(f"line {number}: {name}: roles must be among {', '.join(ROLES)}")
        elif _params(encoded) is None:
            problems.append(f"line {number}: {name}: not a scrypt hash written by `gateway web user add`")
        elif name in users:
            problems.append(f"line {number}: {name} is listed twice (the first counts)")
        else:
            users[name] = User(name, roles, encoded)
    return users, problems


def format_users(users: Iterable[User]) -> str:
    head = "# gateway web users: NAME:ROLES:HASH (written by `gateway web user add`; keep it 0600)\n"
    return head + "".join(f"{u.name}:{','.join(r for r in ROLES if r in u.roles)}:{u.hash}\n" for u in users)


def parse_basic(header: bytes | None) -> tuple[str, str] | None:
    """(name, password) from an ``Authorization: Basic ...`` value, or None for anything else."""
    if not header or len(header) > MAX_HEADER:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    name, sep, password = decoded.partition(":")
    if not sep or not NAME.fullmatch(name):
        return None
    return name, password


class Refused(Exception):
    """A login refused; ``throttled`` when the peer failed too often to be heard at all."""

    def __init__(self, message: str, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.throttled = throttled


class Users:
    """The users file as the server sees it: re-read when it changes, so `gateway web user add` needs no restart."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self._remembered: dict[bytes, tuple[str, float]] = {}
        self._secret = os.urandom(32)
        self._failures: dict[tuple[str, str], collections.deque[float]] = {}
        self._sprays: dict[str, collections.deque[float]] = {}
        self._verifying = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def current(self) -> dict[str, User]:
        if self.path is None:
            return {}
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._stamp is not None:
                log.error("web users file unreadable; nobody can log in", path=str(self.path), error=str(exc))
            self._stamp, self._users = None, {}
            self._remembered.clear()
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            self._remembered.clear()
            self._users = self._read()
        return self._users

    def _read(self) -> dict[str, User]:
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE + 1)
        except OSError as exc:
            log.error("web users file unreadable; nobody can log in", path=str(self.path), error=str(exc))
            return {}
        if len(data) > MAX_FILE:
            log.error("web users file too large; nobody can log in", path=str(self.path), limit=MAX_FILE)
            return {}
        users, problems = parse_users(data.decode("utf-8", errors="replace"))
        for problem in problems:
            log.warning("web users file: line skipped", path=str(self.path), problem=problem)
        return users

    async def login(self, header: bytes | None, peer: str) -> User:
        """The user an Authorization header proves, or Refused (say why to the log, not to the client)."""
        users = self.current()
        credentials = parse_basic(header)
        if credentials is None:
            raise Refused("no login given")
        now = time.monotonic()
        digest = hmac.new(self._secret, header or b"", hashlib.sha256).digest()
        known = self._remembered.get(digest)
        if known is not None and known[1] > now and known[0] in users:
            return users[known[0]]  # a session logged in a moment ago: never throttled
        name, password = credentials
        if _recent(self._failures.get((peer, name)), now) >= FAILURES:
            raise Refused("too many failed logins for this name: wait a few minutes", throttled=True)
        if _recent(self._sprays.get(peer), now) >= SPRAY:
            raise Refused("too many failed logins from this address: wait a few minutes", throttled=True)
        user = users.get(name)
        async with self._verifying:  # one scrypt at a time, off the event loop
            ok = await asyncio.to_thread(verify_password, password, user.hash if user else _DUMMY)
        if user is None or not ok:
            self._failures.setdefault((peer, name), collections.deque(maxlen=FAILURES)).append(now)
            self._sprays.setdefault(peer, collections.deque(maxlen=SPRAY)).append(now)
            self._forget_old_failures(now)
            log.warning("web login refused", user=name[:64], peer=peer)
            raise Refused("wrong name or password")
        if len(self._remembered) >= 256:
            self._remembered = {k: v for k, v in self._remembered.items() if v[1] > now}
            if len(self._remembered) >= 256:
                self._remembered.clear()
        self._remembered[digest] = (name, now + REMEMBER)
        self._failures.pop((peer, name), None)
        return user

    def _forget_old_failures(self, now: float) -> None:
        """Keep the failure books bounded: the expired go first, then (past TRACKED) the longest quiet."""
        if len(self._failures) + len(self._sprays) <= 1024:
            return
        self._failures = {k: v for k, v in self._failures.items() if v and now - v[-1] <= FAILURE_WINDOW}
        self._sprays = {k: v for k, v in self._sprays.items() if v and now - v[-1] <= FAILURE_WINDOW}
        if len(self._failures) > TRACKED:
            newest = sorted(self._failures.items(), key=lambda kv: kv[1][-1])[-TRACKED // 2:]
            self._failures = dict(newest)
        if len(self._sprays) > TRACKED:
            self._sprays = dict(sorted(self._sprays.items(), key=lambda kv: kv[1][-1])[-TRACKED // 2:])


def _recent(failures: collections.deque[float] | None, now: float) -> int:
    """How many of these failures are within the window (older ones dropped on the way)."""
    if failures is None:
        return 0
    while failures and now - failures[0] > FAILURE_WINDOW:
        failures.popleft()
    return len(failures)

"""Proxies to a family's shared inference service, and the wire both sides speak.

``connect(family, socket)`` gives a dict with the same names as ``models.hosting.FAMILIES[family]``
whose values forward any method call to the service (``python -m models.service FAMILY``). The
proxy is generic: it does not know the methods, so a model class can change its signatures without
touching this module. Plain attributes the service reported at the handshake (numbers, strings) are
read locally; anything else is a method call.

The wire, on a Unix stream socket: each message is a header (body length, buffer count), a table of
(offset, length) of the out-of-band buffers in the client's shared memory, then a pickle (protocol 5)
body. Frames never travel through the socket: every contiguous numpy array in the arguments is
written into a memfd the client made (sized for its frames, replaced by a bigger one when a bigger frame
comes, sealed against resizing) and sent once over the socket with SCM_RIGHTS; the service reads the
arrays in place, read-only. Replies are
small (boxes, landmarks, vectors, plate strings) and go in-band.

Pickle can run code when loaded, so both ends load only the classes a model result is made of
(numpy arrays and scalars, the dataclasses of ``models``, plain containers) through a restricted
unpickler, and the service takes requests only from peers of its own uid (SO_PEERCRED), which could
run anything as us anyway. The socket lives in a 0700 directory.

A call waits ``CALL_TIMEOUT`` seconds at most. A service that is gone, hung or restarting makes the
call raise :class:`ServiceUnavailable`, which the camera worker turns into a ``camera.error`` for
that frame; the next call connects again (the daemon restarts a service that exited).
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import mmap
import os
import pickle
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

CALL_TIMEOUT = 10.0
"""Longest wait for one reply: far above any frame on a Pi, short of the daemon's silence limit."""
START_WAIT = 15.0
"""How long a worker starting with the daemon waits for the service to be listening (models load in 1-5 s);
below the daemon's silence limit for a worker (2 x stall_timeout + 15 s), so a wait is never taken for a hang."""
RETRY_AFTER = 0.5
"""After a failed connection, calls fail at once for this long instead of trying on every frame."""
MAX_BODY = 16 << 20
MAX_BUFFERS = 64
MAX_SHM = 256 << 20
ALIGN = 64
MIN_SHM = 1 << 20
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
"""A frame memory's size can never change once sent: a peer shrinking it under the service's mapping would
kill the service with SIGBUS, so the service maps only memory sealed so."""
HEAD = struct.Struct("!II")
SLOT = struct.Struct("!QQ")

_SAFE_BUILTINS = frozenset({"tuple", "list", "dict", "set", "frozenset", "complex", "slice", "bytearray", "bytes",
                            "str", "int", "float", "bool", "range"})
_NUMPY = {"numpy": {"ndarray", "dtype"},
          "numpy.core.multiarray": {"_reconstruct", "scalar"}, "numpy._core.multiarray": {"_reconstruct", "scalar"},
          "numpy.core.numeric": {"_frombuffer"}, "numpy._core.numeric": {"_frombuffer"}}
"""Exactly what pickling an array or a NumPy scalar names (NumPy 1 and 2 spellings); nothing that calls out."""
class ServiceUnavailable(ConnectionError):
    """The family's service did not answer (gone, hung or restarting); the next call tries again."""


class RemoteError(RuntimeError):
    """The service ran the call and the model raised; the service itself carries on."""


class ProtocolError(ValueError):
    """A message that is not ours: too long, too many buffers, a buffer outside the shared memory."""


class _Unpickler(pickle.Unpickler):
    """Only what a frame, its arguments and a model's answer are made of; no other class can be named."""

    def find_class(self, module: str, name: str) -> Any:
        """Plain names only (a dotted name would walk attributes: ``models.remote`` + ``os.system``): builtins
        that hold data, the pieces of a NumPy array, NumPy scalar types, and dataclasses of ``models``."""
        if "." not in name:
            if module == "builtins" and name in _SAFE_BUILTINS:
                return super().find_class(module, name)
            if (module, name) in (("copyreg", "_reconstructor"), ("collections", "OrderedDict")):
                return super().find_class(module, name)
            if name in _NUMPY.get(module, ()):
                return super().find_class(module, name)
            found = None
            if module == "numpy" or module.startswith("models."):
                try:
                    found = super().find_class(module, name)
                except (ImportError, AttributeError):
                    found = None
            if module == "numpy" and isinstance(found, type) and issubclass(found, np.generic):
                return found  # numpy.float32 and the like: types of values, nothing runs
            if module.startswith("models.") and isinstance(found, type) and dataclasses.is_dataclass(found):
                return found  # Face, PlateBox, Roi, Pose ...: fields only
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed here")


def loads(body: bytes, buffers: list[memoryview] | None = None) -> Any:
    return _Unpickler(io.BytesIO(body), buffers=buffers).load()


def dumps(obj: Any, buffers: list[pickle.PickleBuffer] | None = None) -> bytes:
    return pickle.dumps(obj, protocol=5, buffer_callback=None if buffers is None else buffers.append)


def pack(body: bytes, slots: list[tuple[int, int]]) -> bytes:
    return HEAD.pack(len(body), len(slots)) + b"".join(SLOT.pack(o, n) for o, n in slots) + body


def recv_exact(sock: socket.socket, n: int, fds: list[int] | None = None) -> bytes:
    """``n`` bytes; descriptors passed with them (SCM_RIGHTS) are appended to ``fds`` (or closed)."""
    parts, got = [], 0
    space = socket.CMSG_SPACE(4 * 4)
    while got < n:
        data, ancdata, _flags, _addr = sock.recvmsg(n - got, space)
        for level, kind, raw in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = list(struct.unpack(f"{len(raw) // 4}i", raw[: len(raw) - len(raw) % 4]))
                if fds is None:
                    for fd in received:
                        os.close(fd)
                else:
                    fds.extend(received)
        if not data:
            raise EOFError("the other end closed the connection")
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def recv_message(sock: socket.socket, fds: list[int] | None = None) -> tuple[bytes, list[tuple[int, int]]]:
    length, count = HEAD.unpack(recv_exact(sock, HEAD.size, fds))
    if length > MAX_BODY or count > MAX_BUFFERS:
        raise ProtocolError(f"message of {length} bytes and {count} buffers refused")
    table = recv_exact(sock, SLOT.size * count, fds) if count else b""
    slots = [SLOT.unpack_from(table, i * SLOT.size) for i in range(count)]
    return recv_exact(sock, length, fds), slots


def _contiguous(value: Any) -> Any:
    """A strided view (a crop, a channel flip) is copied once, so it can go out of band like any frame."""
    if isinstance(value, np.ndarray) and not (value.flags.c_contiguous or value.flags.f_contiguous):
        return np.ascontiguousarray(value)
    return value


class Connection:
    """One worker's link to one family's service: a socket and a memfd for its frames. Thread-safe."""

    def __init__(self, family: str, path: Path) -> None:
        self.family = family
        self.path = path
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.catalogue: dict[str, dict[str, Any]] = {}
        self.memfd = -1
        self.shm: mmap.mmap | None = None
        self.size = 0
        self.sent_fd = False
        self._failed_at = float("-inf")

    def open(self, wait: float = 0.0) -> None:
        """Connect and shake hands, trying for ``wait`` seconds; raises ServiceUnavailable."""
        with self.lock:
            self._open(wait)

    def _open(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                self._handshake()
                return
            except (OSError, EOFError, ProtocolError, pickle.UnpicklingError) as exc:
                self._drop()
                if time.monotonic() >= deadline:
                    self._failed_at = time.monotonic()
                    raise ServiceUnavailable(f"{self.family} service at {self.path}: {exc}") from None
                time.sleep(0.1)

    def _handshake(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CALL_TIMEOUT)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        peer_uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))[1]
        if peer_uid != os.getuid():  # a socket planted by another user would be sent our frames
            sock.close()
            raise PermissionError(f"{self.path} is served by uid {peer_uid}, not by us: not sending it frames")
        self.sock = sock
        self.sent_fd = False
        reply = self._exchange(("hello",))
        if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "hello" and isinstance(reply[1], dict)):
            raise ProtocolError(f"unexpected handshake {str(reply)[:80]}")
        self.catalogue = reply[1]

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _room(self, need: int) -> None:
        """A memfd at least ``need`` bytes; a new one (sent with the next request) when the frames grew."""
        if self.shm is not None and need <= self.size:
            return
        if need > MAX_SHM:
            raise ValueError(f"{need} bytes of arrays in one call (the limit is {MAX_SHM})")
        size = max(MIN_SHM, need, 2 * self.size)
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = os.memfd_create(f"vision-{self.family}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)  # its size is fixed: the service may map all of it safely
            shm = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        self.close_shm()
        self.memfd, self.shm, self.size, self.sent_fd = fd, shm, size, False

    def close_shm(self) -> None:
        if self.shm is not None:
            self.shm.close()
            self.shm = None
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1

    def _exchange(self, request: tuple[Any, ...]) -> Any:
        assert self.sock is not None
        buffers: list[pickle.PickleBuffer] = []
        body = dumps(request, buffers)
        raws = [b.raw() for b in buffers]
        slots, offset = [], 0
        for raw in raws:
            slots.append((offset, raw.nbytes))
            offset += -(-raw.nbytes // ALIGN) * ALIGN
        self._room(max(offset, 1))
        assert self.shm is not None
        for (start, n), raw in zip(slots, raws, strict=True):
            self.shm[start:start + n] = raw
        fds = [] if self.sent_fd else [self.memfd]
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        self.sock.sendmsg([pack(body, slots)], rights)
        self.sent_fd = True
        reply_body, reply_slots = recv_message(self.sock)
        if reply_slots:
            raise ProtocolError("a reply with out-of-band buffers")
        return loads(reply_body)

    def call(self, name: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self.lock:
            if self.sock is None:
                if time.monotonic() - self._failed_at < RETRY_AFTER:
                    raise ServiceUnavailable(f"{self.family} service at {self.path} is not answering")
                self._open(0.0)
            args = tuple(_contiguous(a) for a in args)
            kwargs = {k: _contiguous(v) for k, v in kwargs.items()}
            try:
                reply = self._exchange(("call", name, method, args, kwargs))
            except (OSError, EOFError, ProtocolError, pickle.UnpicklingError) as exc:
                self._drop()  # a late reply must never be taken for the next call's
                self._failed_at = time.monotonic()
                raise ServiceUnavailable(f"{self.family} service: {name}.{method}: {type(exc).__name__}: {exc}") \
                    from None
        if isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "ok":
            return reply[1]
        if isinstance(reply, tuple) and len(reply) == 3 and reply[0] == "error":
            raise RemoteError(f"{self.family} service: {name}.{method}: {reply[1]}: {reply[2]}")
        raise RemoteError(f"{self.family} service: {name}.{method}: unexpected reply")


class Proxy:
    """Stands for one model object in the service: ``proxy.detect(frame)`` runs ``detect`` there."""

    def __init__(self, connection: Connection, name: str) -> None:
        self._connection = connection
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        attrs = self._connection.catalogue.get(self._name, {}).get("attrs", {})
        if attr in attrs:
            return attrs[attr]
        connection, name = self._connection, self._name

        def method(*args: Any, **kwargs: Any) -> Any:
            return connection.call(name, attr, args, kwargs)

        method.__name__ = attr
        return method

    def __repr__(self) -> str:
        return f"<{self._connection.family}.{self._name} in the service at {self._connection.path}>"


_connections: dict[tuple[str, Path], Connection] = {}
_lock = threading.Lock()


def connect(family: str, socket_path: Path) -> dict[str, Any]:
    """Proxies for the family's model objects; waits up to START_WAIT for the service (it may be loading).

    Raises ServiceUnavailable (an OSError) when it never answers, or when it answers that it cannot load
    its models (the reason, e.g. a model file not fetched, is in the message)."""
    key = (family, Path(socket_path))
    with _lock:
        connection = _connections.get(key)
        if connection is None:
            connection = _connections[key] = Connection(family, key[1])
    if connection.sock is None:
        connection.open(START_WAIT)
    broken = connection.catalogue.get("", {}).get("error")
    if broken:
        raise ServiceUnavailable(f"{family} service cannot serve: {broken}")
    return {name: Proxy(connection, name) for name in connection.catalogue if name}

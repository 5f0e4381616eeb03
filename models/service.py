"""One family's models, shared by every camera: ``python -m models.service FAMILY``.

The daemon starts one per model family the enabled cameras need (faces, plates, pose) and writes one
JSON line on stdin: the vision config, the data dir and the socket path. The service loads
``models.hosting.FAMILIES[family]`` once, listens on the Unix socket (in a 0700 directory), and
answers every camera worker's calls (see ``models.remote`` for the wire). It imports only what its
family needs: the faces service never loads LiteRT, the pose service never loads ONNX Runtime.

Cameras are served at once by a pool of threads sized by the cores. A model whose runtime is safe to
call from several threads (an ONNX Runtime session) is shared by them; one built on an OpenCV DNN
net or a LiteRT interpreter, which keep the input and output in the object, is lent to one call at a
time.

A request that is not ours (a peer of another uid, a message too long, a buffer outside the shared
memory, a class the unpickler does not know, a method that does not exist) gets an error reply or a
closed connection; a model raising on a frame gets an error reply. Neither ends the service. A crash
in native code does: the daemon starts it again and the cameras connect again. A ``ping`` is answered
outside the pool, with how long the oldest model call has been running: the daemon pings every few
seconds and kills and restarts a service that does not answer (stopped, deadlocked) or whose calls
have stopped ending.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import mmap
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from models import remote
from models.config import VisionConfig
from models.hosting import FAMILIES

MAX_CLIENTS = 64
"""Connections served at once: each camera holds one per family, `gateway vision` tools one more."""
NICE = 5
"""The camera workers' niceness (models.worker.NICE): the models' work is the cameras', below the daemon's, and
a worker at nice 5 waiting on a service at nice 0 lost the CPU to it (measured: the frame p99 at 4 cameras)."""
_EXCLUSIVE_MODULES = ("cv2", "ai_edge_litert", "tflite_runtime", "tensorflow")


def pool_size() -> int:
    """Calls run at once: one per core the service may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def exclusive(obj: Any, depth: int = 3) -> bool:
    """True when the object holds a runtime that one thread at a time may use (OpenCV DNN, LiteRT)."""
    if type(obj).__module__.startswith(_EXCLUSIVE_MODULES):
        return True
    if depth == 0:
        return False
    try:
        values = list(vars(obj).values())
    except TypeError:
        values = [getattr(obj, s, None) for s in getattr(type(obj), "__slots__", ())]
    for value in values:
        if isinstance(value, dict):
            value = list(value.values())
        items = value if isinstance(value, list | tuple) else [value]
        if any(exclusive(v, depth - 1) for v in items if not isinstance(v, int | float | str | bytes | bool)):
            return True
    return False


def describe(obj: Any) -> dict[str, Any]:
    """What a proxy needs to know: the public methods, and the plain values it may read without a call."""
    methods, attrs = [], {}
    for name in dir(obj):
        if name.startswith("_"):
            continue
        value = getattr(obj, name, None)
        if callable(value):
            methods.append(name)
        elif isinstance(value, int | float | str | bool) or value is None:
            attrs[name] = value
    return {"methods": methods, "attrs": attrs}


class Model:
    """One named model object: called by any thread at once (ONNX Runtime), or by one at a time (OpenCV DNN, LiteRT).

    No second copy of a model that one thread at a time may use is built: measured, a copy of the faces embedder
    or of the pose models costs the service 60-120 MB, more than a camera may add, for little latency (those
    models take 2-8 ms a call; the waits are short next to the shared detectors')."""

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.obj = obj
        self.shared = not exclusive(obj)
        self.lock = threading.Lock()
        self.calls = 0
        self.wait_s = 0.0
        """Seconds calls waited for this model (lent: another call had it) after getting a slot of the pool."""
        self.run_s = 0.0

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        t0 = time.perf_counter()
        with contextlib.nullcontext() if self.shared else self.lock:
            t1 = time.perf_counter()
            try:
                return getattr(self.obj, method)(*args, **kwargs)
            finally:
                self.calls += 1  # under the GIL: a lost update would only blur a bench figure
                self.wait_s += t1 - t0
                self.run_s += time.perf_counter() - t1


class Service:
    def __init__(self, family: str, vision: VisionConfig, data_dir: Path, path: Path, *,
                 pool: int | None = None) -> None:
        self.family = family
        self.vision = vision
        self.data_dir = data_dir
        self.path = path
        self.pool = pool or pool_size()
        self.slots = threading.BoundedSemaphore(self.pool)
        self.clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self.models: dict[str, Model] = {}
        self.error = ""
        self.load_lock = threading.Lock()
        self.uid = os.getuid()
        self.served = 0
        self.refused = 0
        self.calls: dict[int, float] = {}
        """The model calls under way: a token -> when it started (monotonic); a ping reports the oldest."""
        self._token = 0
        self._calls_lock = threading.Lock()
        self.slot_wait_s = 0.0
        """Seconds calls waited for a slot of the pool (every thread busy)."""

    def load(self) -> None:
        """The family's models; on failure the reason is kept and told to every client until a load works."""
        with self.load_lock:
            if self.models:
                return
            try:
                built = FAMILIES[self.family](self.data_dir, self.vision)
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self.error = ""
            self.models = {name: Model(name, obj) for name, obj in built.items()}

    def catalogue(self) -> dict[str, Any]:
        if not self.models:
            self.load()
        if not self.models:
            return {"": {"error": self.error}}
        return {name: describe(m.obj) for name, m in self.models.items()}

    def listen(self) -> socket.socket:
        private_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by a service that crashed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(MAX_CLIENTS)
        return sock

    def serve(self, sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            if not self._ours(conn) or not self.clients.acquire(blocking=False):
                self.refused += 1
                conn.close()
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _ours(self, conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return bool(uid == self.uid)

    def _client(self, conn: socket.socket) -> None:
        shm: mmap.mmap | None = None
        try:
            while True:
                fds: list[int] = []
                try:
                    body, slots = remote.recv_message(conn, fds)
                except (remote.ProtocolError, struct.error) as exc:
                    self._reply(conn, ("error", "ProtocolError", str(exc)))
                    return  # the stream cannot be trusted to be in step any more
                finally:
                    if fds:
                        shm = self._shm(fds, shm)
                self._reply(conn, self.handle(body, slots, shm))
        except (OSError, EOFError):
            pass  # the camera went away (or was killed): its thread ends, nobody else notices
        finally:
            conn.close()
            self.clients.release()

    def _shm(self, fds: list[int], old: mmap.mmap | None) -> mmap.mmap | None:
        """A client's frame memory (the last descriptor it sent); anything but a memfd sealed against resizing
        (``remote.SEALS``) is refused, and the calls that need it get an error reply."""
        new = old
        for fd in fds[:-1]:
            os.close(fd)
        fd = fds[-1]
        try:
            info = os.fstat(fd)
            sealed = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & remote.SEALS == remote.SEALS
            if sealed and stat.S_ISREG(info.st_mode) and 0 < info.st_size <= remote.MAX_SHM:
                new = mmap.mmap(fd, info.st_size, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            pass
        finally:
            os.close(fd)
        return new

    def handle(self, body: bytes, slots: list[tuple[int, int]], shm: mmap.mmap | None) -> tuple[Any, ...]:
        """The reply to one request; every failure is an error reply, never an exception."""
        buffers: list[memoryview] = []
        try:
            view = memoryview(shm) if shm is not None else None
            for offset, length in slots:
                if view is None or offset + length > len(view):
                    raise remote.ProtocolError("a buffer outside the shared memory")
                buffers.append(view[offset:offset + length])
            request = remote.loads(body, buffers)
            if not isinstance(request, tuple) or not request:
                raise remote.ProtocolError("not a request")
            if request[0] == "hello":
                return ("hello", self.catalogue())
            if request[0] == "ping":  # the daemon's watchdog: answered here, never behind the pool's slots
                return ("pong", {"busiest_s": self.busiest(), "served": self.served, "pool": self.pool,
                                 "slot_wait_s": round(self.slot_wait_s, 3),
                                 "models": {n: {"calls": m.calls, "wait_s": round(m.wait_s, 3),
                                                "run_s": round(m.run_s, 3)} for n, m in self.models.items()}})
            if request[0] != "call" or len(request) != 5:
                raise remote.ProtocolError(f"unknown request {str(request[0])[:40]!r}")
            _, name, method, args, kwargs = request
            if not self.models:
                self.load()
                if not self.models:
                    return ("error", "ServiceUnavailable", f"{self.family} models not loaded: {self.error}")
            model = self.models.get(name) if isinstance(name, str) else None
            if model is None or not isinstance(method, str) or not method.isidentifier() or method.startswith("_"):
                raise remote.ProtocolError(f"no method {str(name)[:40]}.{str(method)[:40]}")
            if not callable(getattr(model.obj, method, None)):
                raise remote.ProtocolError(f"no method {name}.{method}")
            if not (isinstance(args, tuple) and isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
                raise remote.ProtocolError("arguments must be a tuple and a dict")
            asked = time.perf_counter()
            with self.slots:
                self.slot_wait_s += time.perf_counter() - asked
                with self._calls_lock:
                    self._token += 1
                    token = self._token
                    self.calls[token] = time.monotonic()
                try:
                    value = model.call(method, args, kwargs)
                finally:
                    with self._calls_lock:
                        del self.calls[token]
            self.served += 1
            return ("ok", value)
        except Exception as exc:  # whatever a request does, the service and its other cameras go on
            return ("error", type(exc).__name__, str(exc)[:500])
        finally:
            del buffers  # no view of the client's memory outlives its call

    def busiest(self) -> float:
        """Seconds the oldest model call under way has run (0 when none): a call stuck in native code holds a slot
        of the pool for ever, and the daemon restarts a service whose calls stop ending."""
        with self._calls_lock:
            started = min(self.calls.values(), default=None)
        return 0.0 if started is None else round(time.monotonic() - started, 3)

    def _reply(self, conn: socket.socket, reply: tuple[Any, ...]) -> None:
        try:
            body = remote.dumps(reply)
        except Exception as exc:  # a result that cannot be pickled
            body = remote.dumps(("error", type(exc).__name__, str(exc)[:500]))
        if len(body) > remote.MAX_BODY:
            body = remote.dumps(("error", "ProtocolError", f"a reply of {len(body)} bytes"))
        conn.sendall(remote.pack(body, []))


def private_dir(path: Path) -> None:
    """The socket's directory: made 0700 if missing; one owned by someone else is refused."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to us")
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


M_ARENA_MAX = -8


def _steady_memory() -> None:
    """glibc's malloc gives each thread that serves a camera an arena of its own and keeps freed frame-sized
    buffers in it, so the service grew with each camera (measured: 10-20 MB a camera and a family). One arena
    for all threads holds only what the calls under way need at once. (Mapping every buffer over 256 KiB
    afresh kept it as flat but cost a faces call 5 ms in page faults.)"""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in FAMILIES:
        print(f"usage: python -m models.service {{{','.join(FAMILIES)}}}", file=sys.stderr)
        return 2
    _die_with_parent()
    _steady_memory()
    with contextlib.suppress(OSError):
        os.nice(NICE)  # as the camera workers: the daemon's event loop (meters, fire panels) wins the CPU
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # a library's print never reaches the status line
    try:
        job = json.loads(sys.stdin.readline())
        vision = VisionConfig.model_validate(job["vision"])
        data_dir, path = Path(job["data_dir"]), Path(job["socket"])
        pool = int(job.get("pool") or 0) or None
    except (ValueError, KeyError, TypeError) as exc:
        print(f"service: bad job on stdin: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(ImportError, AttributeError):
        import cv2  # every family's pre- and post-processing uses it

        cv2.setNumThreads(1)  # the pool gives the parallelism: one thread a call, as in a worker
    service = Service(args[0], vision, data_dir, path, pool=pool)
    started = time.perf_counter()
    service.load()
    sock = service.listen()

    def stop(_sig: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    out.write(json.dumps({"t": "ready", "family": args[0], "pool": service.pool, "error": service.error,
                          "load_ms": round((time.perf_counter() - started) * 1000, 1),
                          "models": {n: ("shared" if m.shared else "lent") for n, m in service.models.items()}}) + "\n")
    service.serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())

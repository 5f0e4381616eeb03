"""The shared inference services seen from the daemon: one ``python -m models.service FAMILY`` per model family the
enabled cameras need (faces, plates, pose), supervised like the camera workers, pinged so a hung one is restarted.

Split from :mod:`gateway.cameras`, which tells each worker the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog

from gateway.bus import Sink
from gateway.cameras import FAMILY_NEEDS, LINE_LIMIT, MAX_TEXT, end_process, log_stderr, safe_payload
from gateway.core.timing import SYSTEM_CLOCK, Clock
from gateway.supervisor import Supervisor
from models.config import CameraConfig, VisionConfig
from models.hosting import DETECTOR_FAMILY

log = structlog.get_logger("gateway.cameras")

SERVICE_STOP = 5.0
PING_EVERY = 5.0
"""How often the daemon asks each serving vision service whether it is alive (on a connection of its own)."""
PING_TIMEOUT = 10.0
"""A service that does not answer a ping within this (stopped, deadlocked, swapped to death) is killed and
restarted: a ping is answered outside the service's pool, in well under a second even on a loaded Pi."""
STUCK_CALL = 30.0
"""A service whose oldest model call has run this long is killed and restarted: no frame takes a model more
than a second, and a worker gives a call up after 10 s (``models.remote.CALL_TIMEOUT``)."""


def service_dir(data_dir: Path) -> Path:
    """The private directory (0700) of the services' sockets: ``$RUNTIME_DIRECTORY/vision`` under systemd, else
    ``<data_dir>/run/vision``; where that is too long for a Unix socket path (108 bytes), a directory of our
    own in the temp dir named after the data dir (a service refuses one owned by anybody else)."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    path = Path(runtime) / "vision" if runtime else data_dir / "run" / "vision"
    if len(os.fsencode(path / "plates.sock")) > 100:
        digest = hashlib.sha256(os.fsencode(data_dir.absolute())).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"gateway-vision-{os.getuid()}-{digest}"
    return path


class ServiceFailed(Exception):
    """A family's inference service exited; the supervisor starts a new one, cameras reconnect to it."""


class ModelService:
    """One family's shared inference service (``python -m models.service FAMILY``), run like a camera worker: an
    exit ends :meth:`run` with an exception, so the supervisor reports ``gateway.task_crashed`` and starts a new
    one with its backoff. Cameras carry on meanwhile: their frames in the gap give ``camera.error``."""

    def __init__(self, family: str, vision: VisionConfig, data_dir: Path, socket: Path, sink: Sink, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.family = family
        self.vision = vision
        self.data_dir = data_dir
        self.socket = socket
        self.sink = sink
        self.clock = clock
        self.pid: int | None = None
        self.status: dict[str, Any] = {"state": "starting"}
        self.pongs = 0
        """Pings answered in time since the daemon started (the watchdog's own count)."""
        self.pinging = False
        self.hung = ""

    def job(self) -> bytes:
        return json.dumps({"vision": self.vision.model_dump(mode="json"), "data_dir": str(self.data_dir),
                           "socket": str(self.socket)}).encode() + b"\n"

    async def run(self) -> None:
        missing = sorted(m for m in FAMILY_NEEDS[self.family] if importlib.util.find_spec(m) is None)
        if missing:  # each camera says so itself (missing_modules); nothing to retry until the software changes
            self._store({"state": "unavailable", "missing": ", ".join(missing)})
            await asyncio.Event().wait()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "models.service", self.family, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, limit=LINE_LIMIT,
        )
        self.pid = proc.pid
        assert proc.stdin and proc.stdout and proc.stderr
        stderr = asyncio.create_task(log_stderr(proc.stderr, self.clock, "vision service", family=self.family))
        watch: asyncio.Task[None] | None = None
        self.hung = ""
        try:
            proc.stdin.write(self.job())
            await proc.stdin.drain()
            proc.stdin.close()
            while line := await proc.stdout.readline():
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    if isinstance(msg, dict) and msg.get("t") == "ready":
                        self._store({"state": "serving" if not msg.get("error") else "broken",
                                     **safe_payload(msg), "models": json.dumps(msg.get("models"))[:MAX_TEXT]})
                        if msg.get("error"):
                            log.error("vision service cannot load its models", family=self.family,
                                      error=str(msg.get("error"))[:MAX_TEXT])
                        if watch is None:
                            watch = asyncio.create_task(self._watch(proc))
            code = await proc.wait()
            if self.hung:
                self._store({"state": "hung", "code": code, "reason": self.hung})
                raise ServiceFailed(f"vision service {self.family}: {self.hung}; killed")
            self._store({"state": "exited", "code": code})
            how = f"status {code}"
            if code < 0:
                with contextlib.suppress(ValueError):
                    how = f"signal {signal.Signals(-code).name}"
            raise ServiceFailed(f"vision service {self.family}: exited with {how}")
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            await end_process(proc)
            stderr.cancel()
            self.pid = None

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Ping the service every PING_EVERY seconds on a connection of the daemon's own; a service that does not
        answer within PING_TIMEOUT, or whose oldest model call has run STUCK_CALL seconds, is hung: every call
        of every camera of its family would time out for ever. It is killed, and :meth:`run` ends as for a crash
        (``gateway.task_crashed``, a restart with backoff); the cameras connect to the new one."""
        link: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while proc.returncode is None:
                await self.clock.sleep(PING_EVERY)
                self.pinging = True
                ping = asyncio.create_task(self._ping(link))
                timer = asyncio.create_task(self.clock.sleep(PING_TIMEOUT))
                try:
                    await asyncio.wait({ping, timer}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
                    self.pinging = False
                if not ping.done():
                    ping.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError, ValueError, EOFError):
                        await ping
                    self.hung = f"hung: no answer to a ping within {PING_TIMEOUT:g} s"
                elif ping.exception() is not None:
                    link = None  # the connection broke; the next ping opens another (an exit is seen by run)
                    continue
                else:
                    link, busiest = ping.result()
                    if busiest < STUCK_CALL:
                        self.pongs += 1
                        continue
                    self.hung = f"hung: a model call running for {busiest:.0f} s"
                log.error("vision service hung; killing it", family=self.family, pid=proc.pid, reason=self.hung)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # a stopped process dies of SIGKILL too; run() sees the exit
                return
        finally:
            if link is not None:
                link[1].close()

    async def _ping(self, link: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
                    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], float]:
        """One ping; the connection (opened when None) and the seconds the service's oldest call has run."""
        from models import remote  # the vision extra is there: the service runs

        if link is None:
            link = await asyncio.open_unix_connection(str(self.socket))
        reader, writer = link
        try:
            writer.write(remote.pack(remote.dumps(("ping",)), []))
            await writer.drain()
            length, count = remote.HEAD.unpack(await reader.readexactly(remote.HEAD.size))
            if count or length > 4096:
                raise ValueError(f"a pong of {length} bytes and {count} buffers")
            reply = remote.loads(await reader.readexactly(length))
            if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "pong" and isinstance(reply[1], dict)):
                raise ValueError(f"not a pong: {str(reply)[:80]}")
            return link, float(reply[1].get("busiest_s", 0.0))
        except BaseException:
            writer.close()
            raise

    def _store(self, status: dict[str, Any]) -> None:
        self.status = {**status, "pid": self.pid, "socket": str(self.socket)}
        self.sink.meta(f"vision:{self.family}", {**self.status, "ts": self.clock.time()})


SERVICE_SETTINGS = {"faces": ("embedder",), "plates": ("detect_max_side",), "pose": ()}
"""The ``[vision.<family>]`` settings a family's models are built with (``models.hosting``): a change to anything
else (an allowlist, a cooldown, a hold) restarts the cameras' workers but not the services, so editing the plate
allowlist never reloads the pose models a fall alarm depends on."""


def service_key(family: str, vision: VisionConfig) -> str:
    section = getattr(vision, family, None)
    return json.dumps({name: getattr(section, name) for name in SERVICE_SETTINGS[family]}, sort_keys=True)


class VisionServices:
    """The services the enabled cameras need, one per model family, kept right as cameras come and go."""

    def __init__(self, data_dir: Path, sink: Sink, supervisor: Supervisor, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.data_dir = data_dir
        self.sink = sink
        self.supervisor = supervisor
        self.clock = clock
        self.dir = service_dir(data_dir)
        self.running: dict[str, tuple[str, ModelService]] = {}
        """Family -> (the vision config it was started with, the service)."""

    @staticmethod
    def families(cameras: list[CameraConfig], vision: VisionConfig) -> set[str]:
        if not vision.shared_models:
            return set()
        return {DETECTOR_FAMILY[d] for c in cameras if c.enabled for d in c.detect}

    def sockets(self, camera: CameraConfig, vision: VisionConfig) -> dict[str, str]:
        """What a worker is told: its families' sockets (none when models are not shared), and the faces service's
        whenever one runs: the live frame for the status page blurs faces with its detector."""
        if not vision.shared_models:
            return {}
        families = {DETECTOR_FAMILY[d] for d in camera.detect}
        if "faces" in self.running:
            families.add("faces")
        return {family: str(self.dir / f"{family}.sock") for family in sorted(families)}

    async def sync(self, cameras: list[CameraConfig], vision: VisionConfig) -> None:
        """Start the services now needed, stop those no longer needed, restart those whose ``[vision]`` changed."""
        want = self.families(cameras, vision)
        stale = sorted(f for f, (k, _) in self.running.items() if f not in want or k != service_key(f, vision))
        if stale:
            late = await self.supervisor.end([f"vision:{f}" for f in stale], within=SERVICE_STOP)
            if late:
                log.error("vision services did not stop in time", tasks=late)
            for family in stale:
                del self.running[family]
                self.sink.meta(f"vision:{family}", {"state": "stopped", "ts": self.clock.time()})
        for family in sorted(want - set(self.running)):
            service = ModelService(family, vision, self.data_dir, self.dir / f"{family}.sock", self.sink,
                                   clock=self.clock)
            self.running[family] = (service_key(family, vision), service)
            self.supervisor.spawn(f"vision:{family}", service.run)

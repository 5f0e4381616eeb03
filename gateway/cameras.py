"""Camera workers seen from the daemon: one child process per camera, its JSON lines turned into events.

The daemon never decodes a frame or runs a model. It starts ``python -m models.worker``, hands it
the camera's config on stdin, and reads events and status lines. With ``[vision] shared_models``
(the default) the models are not in the workers: :class:`VisionServices` starts one
``python -m models.service FAMILY`` per model family the enabled cameras need (faces, plates, pose),
supervised the same way, and each worker is told the sockets; a worker then only captures, gates
on motion and tracks. A worker that exits (a crash, a
kill) or goes silent (a decoder stuck past every timeout) ends :meth:`CameraWorker.run` with an
exception, so the supervisor reports ``gateway.task_crashed`` and starts a fresh worker with its
usual backoff. Worker output is trusted no more than a field device: unknown kinds are refused,
priorities come from this table, and payloads are flattened to short scalars, so no image, crop
or embedding can ride an event upstream even if a worker tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from gateway.bus import Sink
from gateway.core.data import Event, Priority
from gateway.core.timing import SYSTEM_CLOCK, Clock, RateLimiter
from gateway.fall_watch import FallWatch
from models.config import CameraConfig, VisionConfig
from models.events import KINDS
from models.hosting import DETECTOR_FAMILY

if TYPE_CHECKING:
    from gateway.vision_services import VisionServices

log = structlog.get_logger("gateway.cameras")

MAX_TEXT = 200
"""Longest string a worker may put in an event: ids, plates, reasons; a base64 image is far longer."""
LINE_LIMIT = 1 << 16
STATUS_EVERY = 10.0
EVENT_LIMIT = 120
"""Event-priority events a camera may send a minute; beyond it they are counted, not stored (a mad
worker must not flood the outbox). Cooldowns and plate holds keep a sane camera far below it.
Alarms are never held back."""


NEEDS: dict[str, tuple[str, ...]] = {
    "": ("cv2", "numpy"),
    "faces": ("cryptography",),
    "plates": (),
    "falls": (),
}
"""Python modules a worker imports itself, per detector (the gallery is decrypted in the worker)."""
FAMILY_NEEDS: dict[str, tuple[str, ...]] = {
    "faces": ("cv2", "numpy", "onnxruntime"),
    "plates": ("cv2", "numpy", "onnxruntime"),
    "pose": ("cv2", "numpy", "ai_edge_litert"),
}
"""Python modules the models of a family need: imported by its service, or by the worker when models are not
shared. Both are checked before a camera starts, so a box without the vision extra says so once instead of
crashing a worker every minute."""
def missing_modules(camera: CameraConfig) -> list[str]:
    wanted = {m for key in ("", *camera.detect) for m in NEEDS[key]}
    wanted |= {m for d in camera.detect for m in FAMILY_NEEDS[DETECTOR_FAMILY[d]]}
    return sorted(m for m in wanted if importlib.util.find_spec(m) is None)


class WorkerFailed(Exception):
    """The camera's worker process exited or went silent; the supervisor starts a new one."""


def safe_payload(payload: Any) -> dict[str, Any]:
    """Only short scalars survive: what an event needs, and nothing that could be pixels."""
    if not isinstance(payload, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in list(payload.items())[:32]:
        if not isinstance(key, str) or len(key) > 64:
            continue
        short_text = isinstance(value, str) and len(value) <= MAX_TEXT
        if isinstance(value, bool | int | float) or value is None or short_text:
            out[key] = value
    return out


class CameraWorker:
    def __init__(self, camera: CameraConfig, vision: VisionConfig, data_dir: Path, sink: Sink, *,
                 clock: Clock = SYSTEM_CLOCK, services: VisionServices | None = None) -> None:
        self.camera = camera
        self.services = services
        """The daemon's shared model services; None: the worker loads its own models (tests, tools)."""
        self.vision = vision
        self.data_dir = data_dir
        self.sink = sink
        self.clock = clock
        self.silence = 2 * camera.stall_timeout + 15.0
        self.pid: int | None = None
        self.status: dict[str, Any] = {"state": "starting"}
        self.refused = 0
        self._status_at = 0.0
        self._events = RateLimiter(EVENT_LIMIT, 60.0)
        self.fall_watch = FallWatch(camera.id, vision.falls.hold, clock)

    def job(self) -> bytes:
        """What the worker is told on its stdin: the camera, the vision settings, where data lives and the sockets
        of the shared model services it is to use."""
        sockets = self.services.sockets(self.camera, self.vision) if self.services is not None else {}
        return json.dumps({"camera": self.camera.model_dump(mode="json"), "vision": self.vision.model_dump(mode="json"),
                           "data_dir": str(self.data_dir), "services": sockets}).encode() + b"\n"

    async def run(self) -> None:
        missing = missing_modules(self.camera)
        if missing:
            error = (f"the vision extra is not installed (no {', '.join(missing)}): "
                     "sudo scripts/install.sh --vision (64-bit OS), then restart")
            log.error("camera cannot start", camera=self.camera.id, error=error)
            self.sink.event(Event("camera.error", self.camera.id, KINDS["camera.error"],
                                  {"camera": self.camera.id, "stage": "start", "error": error}, self.clock.time()))
            self._state("unavailable")
            await asyncio.Event().wait()  # nothing to retry until the software changes
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "models.worker", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, limit=LINE_LIMIT,
        )
        self.pid = proc.pid
        assert proc.stdin and proc.stdout and proc.stderr
        stderr = asyncio.create_task(log_stderr(proc.stderr, self.clock, "camera worker", camera=self.camera.id))
        falls = asyncio.create_task(self._falls_due()) if "falls" in self.camera.detect else None
        try:
            proc.stdin.write(self.job())
            await proc.stdin.drain()
            proc.stdin.close()
            await self._pump(proc)
        finally:
            await end_process(proc)
            stderr.cancel()
            if falls is not None:
                falls.cancel()
            for event in self.fall_watch.ended():  # a hold dies with its worker: its alarm is raised here
                self.sink.event(event)
            self.pid = None

    async def _falls_due(self) -> None:
        """A fall.suspected the worker never answered raises the alarm itself (gateway/fall_watch.py)."""
        while True:
            await self.clock.sleep(1.0)
            for event in self.fall_watch.due():
                self.sink.event(event)

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout
        while True:
            try:
                async with asyncio.timeout(self.silence):
                    line = await proc.stdout.readline()
            except TimeoutError:
                self._state("hung")
                raise WorkerFailed(f"camera {self.camera.id}: worker silent for {self.silence:g} s, killed") from None
            except ValueError:  # a line over the limit: not ours to trust
                self.refused += 1
                continue
            if not line:
                code = await proc.wait()
                self._state("exited")
                how = f"status {code}"
                if code < 0:
                    with contextlib.suppress(ValueError):
                        how = f"signal {signal.Signals(-code).name}"
                raise WorkerFailed(f"camera {self.camera.id}: worker exited with {how}")
            self.handle(line)

    def handle(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            self.refused += 1
            return
        if not isinstance(msg, dict):
            self.refused += 1
        elif msg.get("t") == "event":
            self._event(msg)
        elif msg.get("t") == "status":
            self._status({**safe_payload(msg), "ms": safe_payload(msg.get("ms"))})

    def _event(self, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        priority = KINDS.get(kind) if isinstance(kind, str) else None
        if kind is None or priority is None:
            self.refused += 1
            log.warning("camera worker sent an unknown event kind; dropped", camera=self.camera.id, kind=str(kind)[:40])
            return
        ts = msg.get("ts")
        now = self.clock.time()
        when = float(ts) if isinstance(ts, int | float) and abs(now - ts) < 3600 else now
        payload = safe_payload(msg.get("payload"))
        payload["camera"] = self.camera.id
        # fall.suspected is the first word of a life-safety alarm: never held back, like the alarms themselves
        if priority is Priority.EVENT and not kind.startswith("fall.") and self._flooding(self.clock.monotonic()):
            return
        self.sink.event(Event(kind, self.camera.id, priority, payload, when))
        self.fall_watch.seen(kind, payload)
        if kind in ("camera.connected", "camera.lost"):
            self._state("streaming" if kind == "camera.connected" else "lost")

    def _flooding(self, now: float) -> bool:
        """True while over EVENT_LIMIT a minute; one camera.flood event tells how many were held back."""
        limiter = self._events
        if limiter.first_refused is not None and now - limiter.first_refused >= 60.0:
            self.sink.event(Event("camera.flood", self.camera.id, Priority.EVENT,
                                  {"camera": self.camera.id, "suppressed": limiter.take_refused(), "window_s": 60},
                                  self.clock.time()))
        return not limiter.allow(now)

    def _status(self, status: dict[str, Any]) -> None:
        """A worker's status line; stored for `gateway status` when the state moves, else every 10 s."""
        changed = status.get("state") != self.status.get("state")
        self.status = {**status, "pid": self.pid, "refused": self.refused}
        now = self.clock.monotonic()
        if changed or now - self._status_at >= STATUS_EVERY:
            self._status_at = now
            self._store()

    def _state(self, state: str) -> None:
        """What the daemon learnt itself (connected, lost, exited): stored now, the next status line too."""
        self.status = {**self.status, "state": state, "pid": self.pid}
        self._status_at = 0.0
        self._store()

    def _store(self) -> None:
        self.sink.meta(f"camera:{self.camera.id}", {**self.status, "ts": self.clock.time()})


async def log_stderr(stream: asyncio.StreamReader, clock: Clock, what: str, **who: str) -> None:
    """A child's stderr to the log; a child spewing a traceback loop must not fill the journal."""
    said = RateLimiter(20, 60.0)
    while line := await stream.readline():
        if said.allow(clock.monotonic()):
            log.warning(what, **who, said=line.decode(errors="replace").strip()[:500])


async def end_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        async with asyncio.timeout(3):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

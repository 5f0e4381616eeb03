"""The daemon's watch over a camera's falls: a fall that was suspected is never left unanswered.

A camera worker holds a fall's hold in its own memory: it says ``fall.suspected`` on the frame of the fall and
``fall.detected`` (the alarm) once the person has stayed down ``[vision.falls] hold`` seconds, or
``fall.cancelled`` if they got up. A worker killed or crashed during the hold, or whose stream dropped and never
came back, would say neither: a real fall, and no alarm. :class:`FallWatch` sees every event the camera sends;
a ``fall.suspected`` (camera, track) followed by neither ``fall.detected`` nor ``fall.cancelled`` within
``hold + margin`` seconds, or whose worker ends before, makes it raise ``fall.detected`` itself, with
``unconfirmed: true`` and the reason (``no_answer``, ``worker_exited``): a false alarm beats a lost one.

Pure logic on an injected clock (the daemon's monotonic clock for the deadlines, its wall clock for the event
time); :class:`gateway.cameras.CameraWorker` feeds it and asks it on a timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.core.data import Event
from gateway.core.timing import Clock
from models.events import KINDS

MARGIN = 5.0
"""Seconds past the hold the camera has to answer: it alarms on the first analysed frame after the hold (at most
0.5 s later at 2 fps), and a frame may wait for the models a second or two on a loaded Pi."""
UNCONFIRMED_CONFIDENCE = 0.5
"""The confidence of an alarm the camera never confirmed: the fall was seen, the staying down was not."""


@dataclass(frozen=True, slots=True)
class _Suspected:
    since: float
    """Monotonic clock when the fall.suspected arrived."""
    payload: dict[str, Any]


class FallWatch:
    """One camera's suspected falls awaiting the camera's answer."""

    def __init__(self, camera: str, hold: float, clock: Clock, *, margin: float = MARGIN) -> None:
        self.camera = camera
        self.hold = hold
        self.margin = margin
        self.clock = clock
        self._open: dict[str, _Suspected] = {}

    def seen(self, kind: str, payload: dict[str, Any]) -> None:
        """Every event of the camera, as admitted (kind, flattened payload)."""
        if not kind.startswith("fall."):
            return
        track = str(payload.get("track", "0"))
        if kind == "fall.suspected":
            self._open[track] = _Suspected(self.clock.monotonic(), dict(payload))
        elif kind in ("fall.detected", "fall.cancelled"):
            self._open.pop(track, None)

    @property
    def waiting(self) -> int:
        return len(self._open)

    def due(self) -> list[Event]:
        """The unconfirmed alarms whose time has come (each once)."""
        now = self.clock.monotonic()
        late = [t for t, s in self._open.items() if now - s.since >= self.hold + self.margin]
        return [self._alarm(t, "no_answer") for t in late]

    def ended(self) -> list[Event]:
        """The worker exited (or is being replaced): nobody will answer, every open fall alarms now."""
        return [self._alarm(t, "worker_exited") for t in list(self._open)]

    def _alarm(self, track: str, reason: str) -> Event:
        s = self._open.pop(track)
        payload = {"camera": self.camera, "confidence": UNCONFIRMED_CONFIDENCE, "track": track,
                   "descent_torso": s.payload.get("descent_torso", 0.0),
                   "torso_angle_deg": s.payload.get("torso_angle_deg", 0.0),
                   "down_s": round(self.clock.monotonic() - s.since, 1), "unconfirmed": True, "reason": reason}
        return Event("fall.detected", self.camera, KINDS["fall.detected"], payload, self.clock.time())

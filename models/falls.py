"""Fall detection from body landmarks: pure logic, no models, no I/O.

A fall is three things in order, all in image coordinates (y grows downwards):

1. **Rapid descent**: within ``window`` seconds (1.0 s) of a frame where the person was upright, the hip
   centre is at least ``descent`` torso lengths (0.5) lower *and* the shoulder centre at least
   ``shoulder_descent`` (1.5) lower. The torso length (hip centre to shoulder centre) is the longer of that
   upright frame's and the horizontal frame's, so the figures do not depend on the camera's distance, a
   torso foreshortened by lying down does not inflate them, and neither does the short torso the landmark
   model draws in a crop that lags a turning body (measured: 50 px against 74-80 for the cameraman lying
   back at 3.3 fps, which made a lie-back a fall). Why both: lying back from a seat brings the shoulders
   down by about one torso length (to the level of the hips) while the hips stay put; falling to the floor,
   from standing or from a chair, brings the shoulders down by 1.7 torso lengths or more and the hips by 0.9
   or more. Why 1.0 s: a fall takes 0.4-0.8 s from losing balance to the floor, and the hip estimates of a
   partly hidden body drift by up to 0.8 torso lengths over 1.5 s (measured on the test sequences while the
   person lay back).
2. **Horizontal torso**: in the same frame, the torso (hip centre -> shoulder centre) is more than
   ``horizontal`` degrees (60) from vertical.
3. **Staying down** for ``hold`` seconds. Getting up within the hold (torso back within ``upright``
   degrees of vertical *and* the hips back within ``recover`` torso lengths of their height before the
   fall *and* within ``near`` torso lengths sideways of where the hips were when the fall was seen)
   cancels it. The pose model follows one person, the best-scoring one after each re-detection: a
   passer-by standing elsewhere in the room is not the fallen person getting up, so an upright pose
   away from the fall counts as a frame without a pose.

Three events, all stamped with the frame time: ``fall.suspected`` (an event) on the frame where 1 and 2
are met, the fall itself, so someone is told within a second; ``fall.detected`` (the alarm) once the
person has stayed down for ``hold`` seconds after it; ``fall.cancelled`` (an event) when the person got
up within the hold. The hold is also checked on time passing without a frame (:meth:`FallDetector.tick`,
which the camera worker calls when its stream stalls), and the daemon raises an unconfirmed
``fall.detected`` itself when a suspected fall is followed by neither (``gateway/fall_watch.py``).

The window holds at 2 analysed frames a second and faster (models/config.py refuses fewer for a camera
with falls): below 4 fps the fall analyser runs the landmarks on the detection frame too
(models/fall_analyser.py), so a fall that takes one frame has horizontal landmarks at most 2 frame periods
after the last upright ones.

Choices, deliberately:

- Sitting down drops the hips but keeps the torso vertical: no fire.
- Lying down the usual way (sit first, then lie back: the hips barely move once seated) does not
  fire, nor does any lowering of the hips slower than ``descent`` torso lengths per ``window``
  seconds. A slow collapse is missed, which is the price of not alarming every time a resident goes to
  bed.
- Missing frames (``None``: no pose found) during the hold neither confirm nor cancel: a person lying
  on the floor is often lost by the pose model, and no evidence of getting up is not evidence of it.
  They lower the confidence instead.
- Sitting up on the floor (torso vertical, hips still low) does not cancel.
- After an alarm a track stays quiet until the person is seen up again.
- Timestamps going backwards (a camera clock reset) start the track afresh.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.core.data import Event
from models.events import vision_event

L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 11, 12, 23, 24
MIN_TORSO = 4.0
"""A torso shorter than this (pixels) is too small to measure an angle on: the frame is ignored."""
SLACK = 1e-3
"""Seconds of slack in the window and hold comparisons. Frame times are epoch seconds (a live camera, or a file
read by a camera: its start plus the position) or positions in a file (``gateway vision falls``); with frames
exactly ``window`` or ``hold`` apart, float rounding would otherwise decide differently for the two origins."""


@dataclass(frozen=True, slots=True)
class FallConfig:
    """Thresholds; the defaults are the README's figures."""

    hold: float = 5.0
    """Seconds the person must stay down after the fall before the alarm (models/README.md says why 5)."""
    descent: float = 0.5
    """Drop of the hip centre, in torso lengths, that counts as rapid when it happens within ``window``."""
    shoulder_descent: float = 1.5
    """Drop of the shoulder centre, in torso lengths, needed as well (lying back drops it by about 1)."""
    window: float = 1.0
    """Seconds from the last upright frame to the horizontal one."""
    horizontal: float = 60.0
    """Torso angle from vertical (degrees) above which the person is lying."""
    upright: float = 40.0
    """Torso angle from vertical (degrees) below which the person is up (stooping elderly people lean)."""
    recover: float = 0.5
    """Hips within this many torso lengths of their pre-fall height count as back up."""
    near: float = 1.0
    """An upright pose counts as the fallen person getting up only with its hips within this many torso lengths
    (the standing torso's) sideways of the hips on the frame the fall was seen; elsewhere it is somebody else."""

    def __post_init__(self) -> None:
        values = (self.hold, self.descent, self.shoulder_descent, self.window, self.horizontal, self.upright,
                  self.recover, self.near)
        if not all(math.isfinite(v) and v >= 0 for v in values) or self.window <= 0:
            raise ValueError("fall thresholds must be finite and non-negative (window > 0)")
        if not 0 <= self.upright < self.horizontal <= 90:
            raise ValueError("need 0 <= upright < horizontal <= 90 degrees")


@dataclass(frozen=True, slots=True)
class Sample:
    """What the fall logic needs from one frame's landmarks."""

    t: float
    hip_x: float
    hip_y: float
    shoulder_y: float
    torso: float
    angle: float
    """Degrees between the torso (hips -> shoulders) and straight up: 0 upright, 90 lying, 180 upside down."""


def measure(t: float, landmarks: object) -> Sample | None:
    """A sample from 33xK landmarks (x, y first), or None if they are missing, malformed or degenerate."""
    if not isinstance(landmarks, np.ndarray) or landmarks.ndim != 2 or landmarks.shape[0] <= R_HIP:
        return None
    if landmarks.shape[1] < 2 or not np.issubdtype(landmarks.dtype, np.number):
        return None
    with np.errstate(all="ignore"):
        pts = landmarks[[L_SHOULDER, R_SHOULDER, L_HIP, R_HIP], :2].astype(np.float64)
    if not np.isfinite(pts).all() or np.abs(pts).max() > 1e7:
        return None
    shoulders, hips = (pts[0] + pts[1]) / 2, (pts[2] + pts[3]) / 2
    dx, dy = shoulders - hips
    torso = math.hypot(dx, dy)
    if torso < MIN_TORSO:
        return None
    angle = math.degrees(math.atan2(abs(dx), -dy))  # 0 when the shoulders are straight above the hips
    return Sample(t, float(hips[0]), float(hips[1]), float(shoulders[1]), torso, angle)


@dataclass(slots=True)
class _Fall:
    """A fall in its hold period; descent and angle are the largest seen while down."""

    start: float
    before: Sample
    at: Sample
    """The frame the fall was seen on: where the person lies."""
    scale: float
    """The torso length the figures are in: the longer of the upright frame's and the fall frame's."""
    descent: float
    angle: float
    down: int = 0
    seen: int = 0


@dataclass(slots=True)
class _Track:
    history: deque[Sample] = field(default_factory=deque)
    fall: _Fall | None = None
    alarmed: bool = False
    last_t: float = -math.inf


class FallDetector:
    """Feed every frame of every camera (and track): ``update`` returns ``fall.suspected`` on the frame the fall
    is seen, then ``fall.detected`` once the person has stayed down ``hold`` seconds, or ``fall.cancelled`` if they
    got up within it."""

    def __init__(self, config: FallConfig | None = None) -> None:
        self.config = config or FallConfig()
        self._tracks: dict[tuple[str, str], _Track] = {}

    def reset(self, camera: str | None = None) -> None:
        """Forget one camera's tracks (or all)."""
        self._tracks = {} if camera is None else {k: v for k, v in self._tracks.items() if k[0] != camera}

    def state(self, camera: str, track: str = "0") -> str:
        """``watching``, ``down`` (fall seen, hold running) or ``alarmed`` (waiting for the person to get up)."""
        tr = self._tracks.get((camera, track))
        if tr is None or (tr.fall is None and not tr.alarmed):
            return "watching"
        return "alarmed" if tr.alarmed else "down"

    def _up(self, s: Sample, fall: _Fall) -> bool:
        return s.angle < self.config.upright and s.hip_y <= fall.before.hip_y + self.config.recover * fall.scale

    def _got_up(self, s: Sample, fall: _Fall) -> bool:
        """Up, and where the person fell: an upright pose elsewhere is someone else (the caller treats it as none)."""
        return self._up(s, fall) and abs(s.hip_x - fall.at.hip_x) <= self.config.near * fall.scale

    def tick(self, camera: str, t: float) -> list[Event]:
        """Time passing without a frame (a stalled stream): ``fall.detected`` for each fall whose hold ran out by
        ``t`` (frame-time clock), counted as seen on no frame since the last one."""
        out: list[Event] = []
        for (cam, track), tr in self._tracks.items():
            fall = tr.fall
            if cam != camera or fall is None or tr.alarmed or not math.isfinite(t) or t < tr.last_t:
                continue
            if t - fall.start >= self.config.hold - SLACK:
                tr.alarmed = True
                fall.seen += 1
                out.append(fall_event(camera, self._confidence(fall), descent=fall.descent, angle=fall.angle,
                                      down_for=t - fall.start, track=track))
        return out

    def update(self, camera: str, t: float, landmarks: NDArray[Any] | None, *, track: str = "0") -> list[Event]:
        """One frame: its time (seconds, the frame time) and its landmarks, or None if no pose was found.
        Returns ``fall.suspected``, ``fall.cancelled`` or ``fall.detected`` (with ``fall.suspected`` too when the
        hold is 0)."""
        if not math.isfinite(t):
            return []
        key = (camera, track)
        tr = self._tracks.get(key)
        if tr is None or t < tr.last_t:
            tr = self._tracks[key] = _Track()
        tr.last_t = t
        cfg = self.config
        s = measure(t, landmarks) if landmarks is not None else None
        while tr.history and tr.history[0].t < t - cfg.window - SLACK:
            tr.history.popleft()
        if tr.alarmed:
            if s is not None and tr.fall is not None and self._up(s, tr.fall):
                # anyone up, anywhere: the alarm is out, and a fallen person helped up and away must not leave the
                # track deaf to the next fall
                tr.alarmed, tr.fall = False, None
                tr.history.clear()
                tr.history.append(s)
            return []
        out: list[Event] = []
        if tr.fall is not None:
            fall = tr.fall
            fall.seen += 1
            if s is not None and self._up(s, fall) and not self._got_up(s, fall):
                s = None  # someone else standing (see the module's text): no evidence either way
            if s is not None:
                if self._up(s, fall):
                    tr.fall = None  # got up within the hold: no alarm
                    tr.history.clear()
                    tr.history.append(s)
                    return [cancelled_event(camera, down_for=t - fall.start, track=track)]
                fall.down += 1
                fall.descent = max(fall.descent, (s.hip_y - fall.before.hip_y) / fall.scale)
                fall.angle = max(fall.angle, min(s.angle, 90.0))
        elif s is None:
            return []
        elif s.angle > cfg.horizontal and (best := self._descent(tr, s)) is not None:
            fall = tr.fall = _Fall(start=t, before=best[1], at=s, scale=max(best[1].torso, s.torso), descent=best[0],
                                   angle=min(s.angle, 90.0), down=1, seen=1)
            tr.history.clear()
            out.append(suspected_event(camera, descent=fall.descent, angle=fall.angle, descent_s=t - best[2],
                                       hold=cfg.hold, track=track))
        else:
            tr.history.append(s)
            return []
        if t - fall.start >= cfg.hold - SLACK:
            tr.alarmed = True
            out.append(fall_event(camera, self._confidence(fall), descent=fall.descent, angle=fall.angle,
                                  down_for=t - fall.start, track=track))
        return out

    def _descent(self, tr: _Track, s: Sample) -> tuple[float, Sample, float] | None:
        """A rapid descent to ``s`` from an upright frame of the window: the largest drop, the frame it is measured
        from, and the latest such frame's time (the fall took at most ``s.t`` minus it)."""
        cfg = self.config
        best, latest = None, -math.inf
        for before in tr.history:
            if before.angle >= cfg.upright:
                continue
            scale = max(before.torso, s.torso)
            drop = (s.hip_y - before.hip_y) / scale
            upper = (s.shoulder_y - before.shoulder_y) / scale
            if drop >= cfg.descent and upper >= cfg.shoulder_descent:
                latest = max(latest, before.t)
                if best is None or drop > best[0]:
                    best = (drop, before)
        return None if best is None else (*best, latest)

    def _confidence(self, fall: _Fall) -> float:
        """Mean of how far past the thresholds the fall went and how much of the hold it was seen down."""
        cfg = self.config
        descent = min(1.0, fall.descent / (2 * cfg.descent)) if cfg.descent > 0 else 1.0
        angle = min(1.0, fall.angle / 90.0)
        seen_down = fall.down / max(fall.seen, 1)
        return max(1e-3, min(1.0, (descent + angle + seen_down) / 3))


def suspected_event(camera: str, *, descent: float, angle: float, descent_s: float, hold: float,
                    track: str = "0") -> Event:
    """``fall.suspected``: the fall as it happens, before the hold; the figures of that frame, no image bytes."""
    return vision_event("fall.suspected", camera,
                        {"camera": camera, "track": track, "descent_torso": round(float(descent), 2),
                         "torso_angle_deg": round(float(angle), 1), "descent_s": round(float(descent_s), 2),
                         "hold_s": round(float(hold), 2)})


def cancelled_event(camera: str, *, down_for: float, track: str = "0") -> Event:
    """``fall.cancelled``: the person of a ``fall.suspected`` got up within the hold; no alarm follows."""
    return vision_event("fall.cancelled", camera, {"camera": camera, "track": track,
                                                   "down_s": round(float(down_for), 2)})


def fall_event(camera: str, confidence: float, *, descent: float, angle: float, down_for: float,
               track: str = "0") -> Event:
    """``fall.detected`` at alarm priority: camera, confidence and the measured figures; no image bytes."""
    return vision_event("fall.detected", camera,
                        {"camera": camera, "confidence": round(float(confidence), 3), "track": track,
                         "descent_torso": round(float(descent), 2), "torso_angle_deg": round(float(angle), 1),
                         "down_s": round(float(down_for), 1)})

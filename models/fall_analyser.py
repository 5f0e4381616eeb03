"""Falls on a camera: a pose every analysed frame, the fall logic on its landmarks.

``analyse`` gets the frame time as ``now`` and returns ``fall.suspected`` on the frame the fall is seen,
``fall.cancelled`` if the person gets up within ``[vision.falls] hold`` seconds, else ``fall.detected``
(``tick`` too, when time passes without a frame): the same events at the same frame times for a clip read
as fast as the CPU allows (``gateway vision falls``) as for live video.
"""

from __future__ import annotations

import math
from pathlib import Path

from gateway.core.data import Event
from models.config import VisionConfig
from models.faces import Image
from models.falls import FallConfig, FallDetector
from models.hosting import open_models
from models.pose import PoseTracker

SLOW_PERIOD = 0.25
"""Seconds between analysed frames above which (below 4 fps) a frame without a track runs the detector and the
landmarks together, not the detector alone: see :meth:`FallAnalyser.analyse`."""


class FallAnalyser:
    """Pose every analysed frame; while someone is down, keep looking even if nothing moves."""

    name = "falls"

    def __init__(self, camera: str, vision: VisionConfig, data_dir: Path) -> None:
        self.camera = camera
        hosted = open_models("pose", data_dir, vision)
        self.tracker = PoseTracker(hosted["detector"], hosted["landmarker"])
        self.falls = FallDetector(FallConfig(hold=vision.falls.hold))
        self.found: list[tuple[str, tuple[float, float, float, float], str]] = []
        self._last = -math.inf

    @property
    def busy(self) -> bool:
        return self.falls.state(self.camera) == "down"

    def tick(self, now: float) -> list[Event]:
        """No frame, but time has passed (the stream stalled): ``fall.detected`` if a hold ran out by ``now``."""
        return self.falls.tick(self.camera, now)

    def analyse(self, frame: Image, now: float) -> list[Event]:
        """One frame. At 4 analysed frames a second or more, a frame runs one model (models/pose.py: a frame with no
        track runs the detector alone, the landmarks come a frame later), which keeps every frame within the speed
        target. Slower, the frame after a track ended runs both: with the detection-only frame in between, a fall
        that takes one frame would have its first horizontal landmarks 3 periods after the last upright ones, over
        the 1 s window at 2.5 fps and below (models/README.md, "Slow frame rates"); a frame has 250 ms or more then."""
        slow = now - self._last > SLOW_PERIOD
        self._last = now
        pose = self.tracker.update(self.camera, frame, defer=False if slow else None)
        events = self.falls.update(self.camera, now, None if pose is None else pose.landmarks)
        if pose is None and self.tracker.tracking(self.camera):
            return events  # a detection-only frame (models/pose.py): the person is still where last drawn
        self.found = []
        if pose is not None:
            xy = pose.landmarks[:33, :2]
            (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
            state = self.falls.state(self.camera)
            self.found = [("person", (float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                           "person" if state == "watching" else state)]
        return events

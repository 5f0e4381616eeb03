"""`gateway bench vision`: the pose and falls figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.vision_common import ms

if TYPE_CHECKING:
    from gateway.bench.vision_common import Frame


def measure(data_dir: Path, frames: list[Frame], repeat: int) -> list[dict[str, Any]]:
    """Detection, one landmark run, and a tracked frame as the camera worker runs it (frame check,
    landmarks in the previous frame's ROI, fall logic); a tracked frame costs the same with or without
    a person in it."""
    from models.faces import as_bgr
    from models.falls import FallDetector
    from models.pose import PoseTracker, Roi

    tracker = PoseTracker.from_data_dir(data_dir, threads=1)
    rows = []
    for frame in frames:
        h, w = frame.shape[:2]
        roi = tracker.detect_roi(frame) or Roi(w / 2, h / 2, h * 0.9, 0.0)
        falls, clock = FallDetector(), iter(range(10**9))

        def tracked(f: Any = frame, r: Any = roi, fd: Any = falls, ticks: Any = clock) -> object:
            bgr = as_bgr(f)
            pose = None if bgr is None else tracker.estimate(bgr, r, tracked=True)
            return fd.update("bench", next(ticks) / 10, None if pose is None else pose.landmarks)

        def landmarks(f: Any = frame, r: Any = roi) -> object:
            return tracker.landmarker.landmarks(f, r)

        def detect(f: Any = frame) -> object:
            return tracker.detector.detect(f)

        rows.append({"pose_detect_ms": ms(detect, repeat),
                     "pose_landmark_ms": ms(landmarks, repeat), "pose_tracked_frame_ms": ms(tracked, repeat)})
    return rows

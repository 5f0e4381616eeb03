"""Body pose: BlazePose detection and landmarks (MediaPipe's .tflite files) run with LiteRT.

No converter turns these files into ONNX (tflite2onnx 0.4 fails on their float16 weights, tf2onnx
needs TensorFlow), so they run on LiteRT (``ai_edge_litert``, 14 MB aarch64 wheel). On one x86 core
detection takes 6-16 ms and landmarks 9-18 ms (the upper figures with the core's sibling busy), so
:class:`PoseTracker` runs the detector only when it has no track, and then alone: each frame's
landmarks give the next frame's region of interest (hip centre and the point above the head), a
detection's region is landmarked on the next frame, and no frame runs both models.

All decoding, anchors and crop geometry are ours. Frames are hostile: anything ``as_bgr`` cannot turn
into a BGR image gives no pose, never an exception. BlazePose finds one person per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from models.faces import Image, as_bgr
from models.fetch import model_path

Floats = NDArray[np.float32]

DETECT_SIZE = 224
LANDMARK_SIZE = 256
NUM_LANDMARKS = 33
"""Body landmarks (BlazePose topology: 0 nose, 11/12 shoulders, 23/24 hips, ...); 33/34 are aux points."""
ROI_SCALE = 1.25
"""The ROI square is this much larger than twice the hip-centre to head-top distance (the model's crop)."""
MAX_CANDIDATES = 100
"""Anchors kept for NMS, best first: a real person lights up a few dozen."""
MIN_ROI = 24.0
"""A region of interest smaller than this (frame pixels) holds no usable body: drop the track."""

# Landmark indices the fall logic and the tests use.
NOSE, L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 0, 11, 12, 23, 24


def _sigmoid(x: NDArray[Any]) -> NDArray[np.float32]:
    z = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64)), -100.0, 100.0)
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float32)


def ssd_anchors(size: int = DETECT_SIZE, strides: tuple[int, ...] = (8, 16, 32, 32, 32),
                per_location: int = 2) -> Floats:
    """Anchor centres (N, 2), normalised, in the order the detector emits them.

    Consecutive layers with the same stride share one grid (their anchors are interleaved per cell),
    every anchor has the fixed size 1x1 and sits at the cell centre.
    """
    centres: list[Floats] = []
    i = 0
    while i < len(strides):
        stride, layers = strides[i], 0
        while i < len(strides) and strides[i] == stride:
            layers += 1
            i += 1
        n = math.ceil(size / stride)
        ys, xs = np.mgrid[0:n, 0:n]
        grid = np.stack([(xs.ravel() + 0.5) / n, (ys.ravel() + 0.5) / n], axis=1).astype(np.float32)
        centres.append(np.repeat(grid, layers * per_location, axis=0))
    return np.concatenate(centres)


@dataclass(frozen=True, slots=True)
class PoseDetection:
    """A person: box (x0, y0, x1, y1) and 4 keypoints (hip centre, above head, 2 more) in frame pixels."""

    box: tuple[float, float, float, float]
    keypoints: Floats
    score: float


@dataclass(frozen=True, slots=True)
class Roi:
    """A rotated square in frame pixels: centre, side, rotation (radians; 0 = person upright)."""

    cx: float
    cy: float
    size: float
    rotation: float

    @classmethod
    def from_points(cls, centre: NDArray[Any], top: NDArray[Any]) -> Roi:
        """The crop the landmark model was trained on: centred on the hips, turned so the head is up."""
        dx, dy = float(top[0] - centre[0]), float(top[1] - centre[1])
        rotation = math.pi / 2 - math.atan2(-dy, dx)
        rotation = (rotation + math.pi) % (2 * math.pi) - math.pi
        return cls(float(centre[0]), float(centre[1]), 2.0 * math.hypot(dx, dy) * ROI_SCALE, rotation)

    def crop_to_frame(self, side: int = LANDMARK_SIZE) -> NDArray[np.float64]:
        """2x3 affine taking crop pixels to frame pixels (its inverse cuts the crop out)."""
        s = self.size / side
        c, n = math.cos(self.rotation) * s, math.sin(self.rotation) * s
        half = side / 2
        return np.array([[c, -n, self.cx - half * c + half * n],
                         [n, c, self.cy - half * n - half * c]], dtype=np.float64)

    def valid(self, width: int, height: int) -> bool:
        """Finite, not tiny, and with its centre within a side of the frame."""
        values = (self.cx, self.cy, self.size, self.rotation)
        return (all(math.isfinite(v) for v in values) and self.size >= MIN_ROI
                and -self.size < self.cx < width + self.size and -self.size < self.cy < height + self.size
                and self.size < 4 * max(width, height))


@dataclass(frozen=True, slots=True)
class Pose:
    """33 landmarks (x, y in frame pixels, z in pixels relative to the hips, visibility 0..1)."""

    landmarks: Floats
    presence: float
    roi: Roi
    tracked: bool
    """True when the crop came from the previous frame's landmarks, False after a detection."""
    aux: Floats
    """Hip centre and the point above the head (frame pixels): the next frame's ROI."""


def _interpreter(path: Path, threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter  # here: a camera worker using the shared service never loads it

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    return interp


class PoseDetector:
    """The 224x224 person detector: letterbox, 2254 anchors, weighted NMS."""

    def __init__(self, path: Path, *, score_threshold: float = 0.5, nms_threshold: float = 0.3,
                 threads: int = 1) -> None:
        self.interp = _interpreter(path, threads)
        self.input_index = int(self.interp.get_input_details()[0]["index"])
        outputs = {o["name"]: int(o["index"]) for o in self.interp.get_output_details()}
        self.regressor_index, self.score_index = outputs["Identity"], outputs["Identity_1"]
        self.anchors = ssd_anchors()
        shape = tuple(self.interp.get_output_details()[0]["shape"])
        if shape[1] != len(self.anchors):
            raise ValueError(f"{path}: {shape[1]} detections, {len(self.anchors)} anchors")
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def detect(self, bgr: Image) -> list[PoseDetection]:
        h, w = bgr.shape[:2]
        scale = DETECT_SIZE / max(h, w)
        nw, nh = max(1, min(DETECT_SIZE, round(w * scale))), max(1, min(DETECT_SIZE, round(h * scale)))
        pad_x, pad_y = (DETECT_SIZE - nw) // 2, (DETECT_SIZE - nh) // 2
        small = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.zeros((DETECT_SIZE, DETECT_SIZE, 3), dtype=np.float32)
        canvas[pad_y:pad_y + nh, pad_x:pad_x + nw] = small[:, :, ::-1]
        self.interp.set_tensor(self.input_index, (canvas / 127.5 - 1.0)[None])
        self.interp.invoke()
        raw = np.asarray(self.interp.get_tensor(self.regressor_index)[0], dtype=np.float32)
        scores = _sigmoid(self.interp.get_tensor(self.score_index)[0, :, 0])
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return []
        keep = keep[np.argsort(-scores[keep])[:MAX_CANDIDATES]]  # bounded NMS cost on any frame
        anchors = self.anchors[keep]
        # Offsets are in input pixels; anchors are 1x1, so centre = anchor + offset / size.
        points = np.asarray(raw[keep].reshape(-1, 6, 2) / DETECT_SIZE, dtype=np.float32)
        points[:, 0] += anchors
        points[:, 2:] += anchors[:, None, :]
        merged = self._weighted_nms(points, scores[keep])
        out = []
        for pts, score in merged:
            px = (pts * DETECT_SIZE - (pad_x, pad_y)) / scale  # undo the letterbox
            (cx, cy), (bw, bh) = px[0], pts[1] * DETECT_SIZE / scale
            out.append(PoseDetection((float(cx - bw / 2), float(cy - bh / 2), float(cx + bw / 2),
                                      float(cy + bh / 2)), px[2:].astype(np.float32), score))
        return out

    def _weighted_nms(self, points: Floats, scores: Floats) -> list[tuple[Floats, float]]:
        """Overlapping candidates are averaged by score, which steadies the keypoints between frames."""
        corners = np.concatenate([points[:, 0] - points[:, 1] / 2, points[:, 0] + points[:, 1] / 2], axis=1)
        areas = np.prod(np.maximum(corners[:, 2:] - corners[:, :2], 0), axis=1)
        order = list(np.argsort(-scores))
        out: list[tuple[Floats, float]] = []
        while order:
            best = order[0]
            lo = np.maximum(corners[best, :2], corners[order, :2])
            hi = np.minimum(corners[best, 2:], corners[order, 2:])
            inter = np.prod(np.maximum(hi - lo, 0), axis=1)
            iou = inter / np.maximum(areas[best] + areas[order] - inter, 1e-9)
            group = [o for o, v in zip(order, iou, strict=True) if v > self.nms_threshold or o == best]
            weights = scores[group] / max(float(scores[group].sum()), 1e-9)
            out.append(((points[group] * weights[:, None, None]).sum(axis=0), float(scores[best])))
            order = [o for o in order if o not in group]
        return out


class PoseLandmarker:
    """The 256x256 landmark model on a rotated crop; landmarks mapped back to the frame."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.interp = _interpreter(path, threads)
        self.input_index = int(self.interp.get_input_details()[0]["index"])
        outputs = {o["name"]: int(o["index"]) for o in self.interp.get_output_details()}
        self.landmarks_index, self.flag_index = outputs["Identity"], outputs["Identity_1"]

    def crop(self, bgr: Image, roi: Roi) -> Image:
        m = roi.crop_to_frame()
        out = cv2.warpAffine(bgr, m, (LANDMARK_SIZE, LANDMARK_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        return np.asarray(out, dtype=np.uint8)

    def landmarks(self, bgr: Image, roi: Roi) -> tuple[Floats, Floats, float]:
        """(33x4 body landmarks, 2x2 aux points, presence 0..1) for the person in ``roi``."""
        crop = self.crop(bgr, roi)
        self.interp.set_tensor(self.input_index, (crop[:, :, ::-1].astype(np.float32) / 255.0)[None])
        self.interp.invoke()
        raw = np.asarray(self.interp.get_tensor(self.landmarks_index), dtype=np.float32).reshape(-1, 5)
        # The flag output is a probability already (measured: ~1.0 on a person, ~1e-4 on noise).
        presence = float(np.clip(np.nan_to_num(self.interp.get_tensor(self.flag_index).ravel()[0]), 0.0, 1.0))
        m = roi.crop_to_frame()
        xy = raw[:, :2] @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
        body = np.empty((NUM_LANDMARKS, 4), dtype=np.float32)
        body[:, :2] = xy[:NUM_LANDMARKS]
        body[:, 2] = raw[:NUM_LANDMARKS, 2] * roi.size / LANDMARK_SIZE
        body[:, 3] = _sigmoid(raw[:NUM_LANDMARKS, 3])
        return body, xy[NUM_LANDMARKS:NUM_LANDMARKS + 2].copy(), presence


def _turn(a: float, b: float) -> float:
    """The angle between two rotations (radians, 0..pi)."""
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


@dataclass(frozen=True, slots=True)
class _Track:
    roi: Roi
    hips: tuple[float, float]
    age: int
    """Tracked frames since the last detection."""
    detected: bool = False
    """The ROI came from the detector (on the previous frame), not from landmarks."""
    origin: float = 0.0
    """The rotation of the crop the detector found: tracking ends once the crop has turned ``max_drift`` from it."""


class PoseTracker:
    """Per camera: detect, then follow the person with landmarks alone; detect again when needed.

    The landmark model assumes an upright person in its crop. When the person turns fast (a fall) it
    keeps answering "upright" for a second or more while the crop crawls after the body, so a track is
    only trusted while the person moves little: if the hip centre moved more than ``motion`` of the
    crop side since the previous frame, the tracked ROI has turned by ``max_turn`` or more, or the track
    is ``redetect_every`` frames old, the next frame runs the detector (which finds the rotation
    itself). A lost track (presence below ``presence_threshold``) gives no pose, and the next frame
    runs the detector.

    With ``defer`` (the default) a frame runs one model, never two: a frame without a track runs the
    detector alone and gives no pose; the next frame runs the landmarks in the detector's crop (one
    frame late: at 5 fps 0.2 s, still well within the second a fall has to be reported in). Its hip
    centre is then compared with the detector's, which disagree by up to 7 % of the crop on a still
    person (measured on the test people), so against ``detected_motion`` rather than ``motion``.
    Without ``defer`` a frame that detects also runs the landmarks, and a lost track is detected again
    on the same frame (up to three model runs). ``update(..., defer=False)`` asks for that on one frame:
    the fall analyser does below 4 analysed frames a second, where the frame a person is lost on is too far
    from the next for the fall's 1 s window (models/fall_analyser.py).
    """

    def __init__(self, detector: PoseDetector, landmarker: PoseLandmarker, *, presence_threshold: float = 0.5,
                 motion: float = 0.05, detected_motion: float = 0.10, max_turn: float = math.radians(8),
                 max_drift: float = math.radians(20), redetect_every: int = 10, defer: bool = True) -> None:
        self.max_drift = max_drift
        self.defer = defer
        self.detected_motion = detected_motion
        self.detector = detector
        self.landmarker = landmarker
        self.presence_threshold = presence_threshold
        self.motion = motion
        self.max_turn = max_turn
        self.redetect_every = redetect_every
        self._tracks: dict[str, _Track] = {}

    @classmethod
    def from_data_dir(cls, data_dir: Path, *, threads: int = 1, score_threshold: float = 0.5,
                      presence_threshold: float = 0.5) -> PoseTracker:
        return cls(PoseDetector(model_path(data_dir, "pose_detection"), score_threshold=score_threshold,
                                threads=threads),
                   PoseLandmarker(model_path(data_dir, "pose_landmark"), threads=threads),
                   presence_threshold=presence_threshold)

    def reset(self, camera: str | None = None) -> None:
        """Forget the track of one camera (or all): the next frame runs the detector."""
        if camera is None:
            self._tracks.clear()
        else:
            self._tracks.pop(camera, None)

    def tracking(self, camera: str) -> bool:
        """True if the next frame of ``camera`` will be tracked (no detection)."""
        return camera in self._tracks

    def follow(self, camera: str, roi: Roi) -> None:
        """Track from ``roi`` on the next frame (as if the previous frame had put the person there)."""
        self._tracks[camera] = _Track(roi, (roi.cx, roi.cy), 0, origin=roi.rotation)

    def detect_roi(self, bgr: Image) -> Roi | None:
        """The crop for the best-scoring person the detector finds, or None."""
        found = self.detector.detect(bgr)
        if not found:
            return None
        best = max(found, key=lambda d: d.score)
        roi = Roi.from_points(best.keypoints[0], best.keypoints[1])
        return roi if roi.valid(bgr.shape[1], bgr.shape[0]) else None

    def estimate(self, bgr: Image, roi: Roi, *, tracked: bool) -> Pose | None:
        """Landmarks in ``roi``, or None if the model says no person is there."""
        body, aux, presence = self.landmarker.landmarks(bgr, roi)
        if presence < self.presence_threshold or not np.isfinite(body).all() or not np.isfinite(aux).all():
            return None
        return Pose(body, presence, roi, tracked, aux)

    def update(self, camera: str, frame: object, *, defer: bool | None = None) -> Pose | None:
        """The pose of the person on ``camera`` in this frame, or None (no person, or not an image). ``defer``
        overrides the tracker's own for this frame (the fall analyser turns it off at slow frame rates)."""
        bgr = as_bgr(frame)
        track = self._tracks.pop(camera, None)
        defer = self.defer if defer is None else defer
        if bgr is None:
            return None
        if track is None and defer:
            roi = self.detect_roi(bgr)
            if roi is not None:
                self._tracks[camera] = _Track(roi, (roi.cx, roi.cy), 0, detected=True, origin=roi.rotation)
            return None
        pose = None
        if track is not None:
            pose = self.estimate(bgr, track.roi, tracked=not track.detected)
        if pose is None and not defer:
            roi = self.detect_roi(bgr)
            pose = None if roi is None else self.estimate(bgr, roi, tracked=False)
            track = None
        if pose is None:
            return None
        following = Roi.from_points(pose.aux[0], pose.aux[1])
        hips = (float(pose.aux[0][0]), float(pose.aux[0][1]))
        if not following.valid(bgr.shape[1], bgr.shape[0]):
            return pose
        if track is not None:
            moved = math.hypot(hips[0] - track.hips[0], hips[1] - track.hips[1]) / max(pose.roi.size, 1.0)
            turned = _turn(following.rotation, pose.roi.rotation)
            limit = self.detected_motion if track.detected else self.motion
            if (moved > limit or turned >= self.max_turn or _turn(following.rotation, track.origin) >= self.max_drift
                    or track.age + 1 >= self.redetect_every):
                return pose  # no track: the next frame detects
            self._tracks[camera] = _Track(following, hips, track.age + 1, origin=track.origin)
        else:
            self._tracks[camera] = _Track(following, hips, 0, origin=following.rotation)
        return pose

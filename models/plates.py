"""Plates: detect (4 corners), rectify, read (CTC), validate the Chinese format, vote across frames.

Both networks run on ONNX Runtime with our own pre- and post-processing:

- ``clp_det``: a RetinaFace-style detector, fully convolutional. Input is the BGR frame minus the
  per-channel mean (104, 117, 123), padded right/bottom to a multiple of 32. Per prior it returns a box
  offset (``loc``), background/plate probabilities (``conf``) and 4 corner offsets (``landms``), all
  relative to priors of sizes 24/48, 96/192 and 384/768 px at strides 8, 16 and 32 (variances 0.1, 0.2).
  Its corner order is not top-left first, so corners are put in order geometrically.
- ``clp_rec``: a CRNN with a CTC head: 1x3x32xW RGB, (x/255 - 0.5) / 0.5, output (W/4)x73 probabilities.
  Class 0 is the blank, class i is line i of ``clp_dict.txt``. Plates are rectified to 200x32 (see REC_WIDTH).

Frames are hostile: anything :func:`models.faces.as_bgr` rejects yields no plates, never an exception.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from gateway.core.data import Event
from models.events import vision_event
from models.faces import Image, _session, as_bgr
from models.fetch import model_path

DET_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
DET_MIN_SIZES = ((24, 48), (96, 192), (384, 768))
DET_STEPS = (8, 16, 32)
DET_VARIANCE = (0.1, 0.2)
DET_ALIGN = 32
"""The detector's input is padded to a multiple of this, so its outputs line up with our priors."""
DEFAULT_MAX_SIDE = 960
"""Larger frames are scaled down to this before detection; the plate is still read from the full frame.

Measured on the 40 rendered plates at 1280x720 (180-260 px wide): 1280 -> 40 found, 37 exact, 81 ms;
960 -> 40 found, 39 exact, 41 ms; 800 -> 39, 38, 32 ms; 640 -> 38, 36, 18 ms. Raise it (config
``vision.plates.detect_max_side``) for cameras that see plates under ~100 px wide."""

REC_HEIGHT = 32
REC_WIDTH = 200
RETRY_WIDTHS = (180, 220, 240, 160)
"""Measured on rendered plates (40, see tests): width 100 (the plate's own aspect) reads 20/40, 160 reads 34,
200 reads 37, 240 reads 34; RGB beats BGR at every width."""

# Mainland province abbreviations (31).
PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_LETTER = "A-HJ-NP-Z"  # I and O are never used
_SERIAL = f"[{_LETTER}0-9]"
PLATE_RE = re.compile(
    f"[{PROVINCES}][{_LETTER}]"
    "(?:"
    f"{_SERIAL}{{5}}"  # ordinary: 京A12345, 京AB1234
    f"|[DF]{_SERIAL}[0-9]{{4}}"  # new energy, small car: 粤BD12345
    f"|[0-9]{{5}}[DF]"  # new energy, large vehicle: 粤B12345D
    f"|{_SERIAL}{{4}}[警学挂港澳]"  # police, driving school, trailer, Hong Kong / Macau crossing
    ")"
)
_SEPARATORS = str.maketrans("", "", " ·•.-\u00b7\u2022\u30fb")


def normalise_plate(text: str) -> str:
    """Upper case, separators (the dot after the second character, spaces, dashes) removed."""
    return text.translate(_SEPARATORS).upper()


def valid_plate(text: object) -> bool:
    """True if ``text`` (after :func:`normalise_plate`) is a mainland Chinese plate. Pure; never raises."""
    if not isinstance(text, str):
        return False
    return PLATE_RE.fullmatch(normalise_plate(text)) is not None


@dataclass(frozen=True, slots=True)
class PlateBox:
    """A detected plate: corners (4x2, top-left, top-right, bottom-right, bottom-left, frame pixels), score."""

    corners: NDArray[np.float32]
    score: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        x0, y0 = self.corners.min(axis=0)
        x1, y1 = self.corners.max(axis=0)
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


@dataclass(frozen=True, slots=True)
class PlateRead:
    text: str
    score: float
    detection: PlateBox
    valid: bool


def order_corners(points: NDArray[np.float32]) -> NDArray[np.float32]:
    """Four points as top-left, top-right, bottom-right, bottom-left (by x+y and y-x extremes)."""
    p = np.asarray(points, dtype=np.float32).reshape(4, 2)
    s = p.sum(axis=1)
    d = p[:, 1] - p[:, 0]
    ordered = np.stack([p[s.argmin()], p[d.argmin()], p[s.argmax()], p[d.argmax()]])
    if len({(float(x), float(y)) for x, y in ordered}) < 4:  # degenerate: fall back to angle order
        c = p.mean(axis=0)
        ang = np.arctan2(p[:, 1] - c[1], p[:, 0] - c[0])
        ordered = p[np.argsort(ang)]
        start = int(ordered.sum(axis=1).argmin())
        ordered = np.roll(ordered, -start, axis=0)
    return ordered.astype(np.float32)


class PlateDetector:
    def __init__(self, path: Path, *, score_threshold: float = 0.4, nms_threshold: float = 0.4,
                 max_side: int = DEFAULT_MAX_SIDE, threads: int = 1) -> None:
        self.session = _session(path, threads)
        self.input_name: str = self.session.get_inputs()[0].name
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self._priors: dict[tuple[int, int], NDArray[np.float32]] = {}

    def priors(self, h: int, w: int) -> NDArray[np.float32]:
        """(cx, cy, w, h) in input pixels for an h x w input (both multiples of DET_ALIGN)."""
        key = (h, w)
        if key not in self._priors:
            parts = []
            for step, sizes in zip(DET_STEPS, DET_MIN_SIZES, strict=True):
                fh, fw = -(-h // step), -(-w // step)
                rows, cols = np.mgrid[0:fh, 0:fw]
                cx = ((cols.ravel() + 0.5) * step).astype(np.float32)
                cy = ((rows.ravel() + 0.5) * step).astype(np.float32)
                per = [np.stack([cx, cy, np.full_like(cx, s), np.full_like(cx, s)], axis=1) for s in sizes]
                parts.append(np.stack(per, axis=1).reshape(-1, 4))  # sizes vary fastest
            self._priors[key] = np.concatenate(parts).astype(np.float32)
        return self._priors[key]

    def detect(self, bgr: Image) -> list[PlateBox]:
        h, w = bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            small = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
            bgr = np.asarray(small, dtype=np.uint8)
        sh, sw = bgr.shape[:2]
        ph, pw = -(-sh // DET_ALIGN) * DET_ALIGN, -(-sw // DET_ALIGN) * DET_ALIGN
        canvas = np.zeros((ph, pw, 3), dtype=np.float32)
        canvas[:sh, :sw] = bgr.astype(np.float32) - DET_MEAN
        blob = canvas.transpose(2, 0, 1)[None]
        loc, conf, landms = self.session.run(None, {self.input_name: blob})
        priors = self.priors(ph, pw)
        if loc.shape[1] != len(priors):  # a model other than the one pinned: find nothing, loudly in tests
            return []
        scores = conf[0, :, 1]
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return []
        pr = priors[keep]
        var0, var1 = DET_VARIANCE
        centre = pr[:, :2] + loc[0, keep, :2] * var0 * pr[:, 2:]
        wh = pr[:, 2:] * np.exp(np.clip(loc[0, keep, 2:] * var1, -10, 10))
        boxes = np.concatenate([centre - wh / 2, wh], axis=1) / scale
        corners = (pr[:, None, :2] + landms[0, keep].reshape(-1, 4, 2) * var0 * pr[:, None, 2:]) / scale
        kept = cv2.dnn.NMSBoxes(boxes.tolist(), scores[keep].tolist(), self.score_threshold, self.nms_threshold)
        found = []
        for i in np.asarray(kept, dtype=np.int64).ravel():
            c = corners[i]
            if not np.isfinite(c).all():
                continue
            clipped = np.clip(c, 0, [w - 1, h - 1]).astype(np.float32)
            found.append(PlateBox(order_corners(clipped), float(scores[keep][i])))
        found.sort(key=lambda p: p.score, reverse=True)
        return found


def rectify(frame: Image, corners: NDArray[np.float32], *, size: tuple[int, int] = (REC_WIDTH, REC_HEIGHT)) -> Image:
    """The plate warped from its 4 corners (TL, TR, BR, BL) to ``size`` (w, h), the recogniser's input."""
    w, h = size
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(np.asarray(corners, dtype=np.float32).reshape(4, 2), dst)
    out = cv2.warpPerspective(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(out, dtype=np.uint8)


def ctc_greedy(probs: NDArray[np.float32], charset: str, blank: int = 0) -> tuple[str, float]:
    """Best class per time step, repeats collapsed, blanks dropped; score = mean probability of kept steps."""
    if probs.ndim != 2 or probs.shape[0] == 0:
        return "", 0.0
    best = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    prev = np.concatenate([[-1], best[:-1]])
    keep = (best != prev) & (best != blank) & (best - 1 < len(charset))
    text = "".join(charset[int(i) - 1] for i in best[keep])
    score = float(conf[keep].mean()) if keep.any() else 0.0
    return text, score if np.isfinite(score) else 0.0


class PlateRecogniser:
    def __init__(self, path: Path, dictionary: Path, *, threads: int = 1) -> None:
        self.session = _session(path, threads)
        self.input_name: str = self.session.get_inputs()[0].name
        lines = dictionary.read_text(encoding="utf-8").splitlines()
        self.charset = "".join(lines)
        if len(lines) != len(self.charset) or any(len(c) != 1 for c in lines):
            raise ValueError(f"{dictionary}: expected one character a line")
        classes = self.session.get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes != len(self.charset) + 1:
            raise ValueError(f"{dictionary}: {len(self.charset)} characters, the model has {classes} classes")

    def recognise(self, crop: object, width: int = REC_WIDTH) -> tuple[str, float]:
        bgr = as_bgr(crop)
        if bgr is None:
            return "", 0.0
        if bgr.shape[:2] != (REC_HEIGHT, width):
            bgr = np.asarray(cv2.resize(bgr, (width, REC_HEIGHT), interpolation=cv2.INTER_AREA), dtype=np.uint8)
        blob = ((bgr[:, :, ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
        probs = self.session.run(None, {self.input_name: blob})[0][0]
        return ctc_greedy(np.asarray(probs, dtype=np.float32), self.charset)


class PlateReader:
    """Detect, rectify, read. Every method returns empty results on a frame it cannot use."""

    def __init__(self, detector: PlateDetector, recogniser: PlateRecogniser) -> None:
        self.detector = detector
        self.recogniser = recogniser

    @classmethod
    def from_data_dir(cls, data_dir: Path, *, threads: int = 1, score_threshold: float = 0.4,
                      max_side: int = DEFAULT_MAX_SIDE) -> PlateReader:
        return cls(
            PlateDetector(model_path(data_dir, "clp_det"), score_threshold=score_threshold, max_side=max_side,
                          threads=threads),
            PlateRecogniser(model_path(data_dir, "clp_rec"), model_path(data_dir, "clp_dict"), threads=threads),
        )

    def detect(self, frame: object) -> list[PlateBox]:
        bgr = as_bgr(frame)
        return [] if bgr is None else self.detector.detect(bgr)

    def rectify(self, frame: object, corners: NDArray[np.float32]) -> Image | None:
        bgr = as_bgr(frame)
        return None if bgr is None else rectify(bgr, corners)

    def recognise(self, crop: object) -> tuple[str, float]:
        return self.recogniser.recognise(crop)

    def read(self, frame: object) -> list[PlateRead]:
        bgr = as_bgr(frame)
        if bgr is None:
            return []
        reads = []
        for det in self.detector.detect(bgr):
            text, score = self.recogniser.recognise(rectify(bgr, det.corners))
            # A read that is no plate at all (a lost or doubled province character, mostly) gets a
            # second look at other widths, 8 ms each; the first valid reading wins.
            for width in RETRY_WIDTHS if not valid_plate(text) else ():
                again, again_score = self.recogniser.recognise(
                    rectify(bgr, det.corners, size=(width, REC_HEIGHT)), width)
                if valid_plate(again):
                    text, score = again, again_score
                    break
            reads.append(PlateRead(text, score, det, valid_plate(text)))
        return reads


@dataclass(slots=True)
class _CameraVotes:
    window: deque[tuple[str | None, float]]
    emitted: dict[str, float] = field(default_factory=dict)


class PlateVoter:
    """Per camera: emit a plate once it has won ``need`` of the last ``window`` reads, then hold it.

    Feed one read per frame (None when nothing valid was read, so gaps count against a plate). After
    emitting a plate the voter stays quiet for that plate on that camera for ``hold`` seconds.
    """

    def __init__(self, *, need: int = 3, window: int = 5, hold: float = 30.0) -> None:
        if not 1 <= need <= window:
            raise ValueError("need 1 <= need <= window")
        self.need = need
        self.window = window
        self.hold = hold
        self._cameras: dict[str, _CameraVotes] = {}

    def vote(self, camera: str, plate: str | None, score: float = 1.0,
             now: float | None = None) -> tuple[str, float] | None:
        """(plate, mean score of its winning reads) the first time it wins, else None."""
        t = time.monotonic() if now is None else now
        cam = self._cameras.get(camera)
        if cam is None:
            cam = self._cameras[camera] = _CameraVotes(deque(maxlen=self.window))
        text = normalise_plate(plate) if plate is not None and valid_plate(plate) else None
        cam.window.append((text, score))
        cam.emitted = {p: until for p, until in cam.emitted.items() if until > t}
        if text is None or text in cam.emitted:
            return None
        scores = [s for p, s in cam.window if p == text]
        if len(scores) < self.need:
            return None
        cam.emitted[text] = t + self.hold
        return text, float(np.mean(scores))


def plate_event(camera: str, plate: str, score: float, *, allowlist: Collection[str] = (),
                blocklist: Collection[str] = ()) -> Event:
    """``plate.read``: plate, camera, score and which list it is on (blocklist wins); no image bytes."""
    key = normalise_plate(plate)
    listed: str | None = None
    if key in {normalise_plate(p) for p in blocklist}:
        listed = "blocklist"
    elif key in {normalise_plate(p) for p in allowlist}:
        listed = "allowlist"
    return vision_event("plate.read", camera,
                        {"plate": key, "camera": camera, "score": round(float(score), 3), "list": listed})

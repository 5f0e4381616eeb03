"""Plates: detect (4 corners), rectify and read (CTC) each plate of a frame; the text rules are in
models/plate_text.py, the votes across frames in models/plate_votes.py.

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

from collections.abc import Collection, Mapping
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from models.faces import Image, _session, as_bgr
from models.fetch import model_path
from models.plate_text import (
    DEFAULT_MIN_CHAR_CONF,
    DEFAULT_PROVINCE_WEIGHT,
    EMPTY,
    STRICT_PROVINCES,
    PlateBox,
    PlateRead,
    TextRead,
    ctc_decode,
    ctc_greedy,
    fits_colour,
    judge,
    overlap,
    province_need,
    province_prior,
    valid_plate,
)

DET_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
DET_MIN_SIZES = ((24, 48), (96, 192), (384, 768))
DET_STEPS = (8, 16, 32)
DET_VARIANCE = (0.1, 0.2)
DET_ALIGN = 32
"""The detector's input is padded to a multiple of this, so its outputs line up with our priors."""
DEFAULT_MAX_SIDE = 960
"""Larger frames are scaled down to this before detection; the plate is still read from the full frame.

Measured on the 40 rendered plates at 1280x720 (180-260 px wide): 1280 -> 40 found, 37 exact, 81 ms;
960 -> 40 found, 39 exact, 41 ms; 800 -> 39, 38, 32 ms; 640 -> 38, 36, 18 ms. Plates under ~120 px wide that the
copy misses are mostly found by the second look (see :meth:`PlateDetector.detect`); raising it (config
``vision.plates.detect_max_side``) to 1280 found more of them on the passages set but published more wrong
provinces (models/README.md)."""

DEFAULT_SECOND_LOOKS = 3
"""Candidates a frame that get a second look at full resolution (0: none), best first."""
DEFAULT_SECOND_FLOOR = 0.05
"""A candidate of the first pass scoring this much (and less than the threshold) is worth a second look
(measured on the 125 frames of plates 80-120 px of the passages set: 105 plates score >= 0.05 on the 960 copy;
0.08 candidates a frame elsewhere on the set's real photos; 0.02 gave one more wrong passage)."""
SECOND_WIDTH = 120.0
"""The region of a second look is enlarged so the candidate is at least this wide (the size above which the
detector finds plates reliably on the set)."""
SECOND_MAX_WIDTH = 180.0
"""Only candidates narrower than this (full-frame pixels) get a second look: a wider one is 135 px or more on a
960 copy of a 1280 frame, where the detector sees plates well; a second look at it would cost a full-resolution
pass over a large region (a 365x186 box on the bench's noise frame: 69 ms instead of 28)."""
SECOND_REGION = (3.0, 5.0)
SECOND_MIN = 160.0
"""The region of a second look: this many candidate widths and heights, and at least this many pixels a side
at the zoom (the candidate's box is loose on a small plate)."""

REC_HEIGHT = 32
REC_WIDTH = 200
RETRY_WIDTHS = (180, 220, 240, 160)
SINGLE_VIEWS: tuple[tuple[int, tuple[float, float]], ...] = (
    (REC_WIDTH, (0.0, 0.0)), *((w, (0.0, 0.0)) for w in RETRY_WIDTHS), (REC_WIDTH, (0.0, 0.1)))
"""(width, margin) of each look at a single-row plate, in order, until one is confident: the last one with a
vertical margin (measured on the 134 single-row plates >= 120 px of the set: 88 -> 90 published exactly, wrong
unchanged at 3; a horizontal margin as well gave 93 but 4 wrong)."""
"""Measured on rendered plates (40, see tests): width 100 (the plate's own aspect) reads 20/40, 160 reads 34,
200 reads 37, 240 reads 34; RGB beats BGR at every width."""

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
                 max_side: int = DEFAULT_MAX_SIDE, threads: int = 1, second_looks: int = DEFAULT_SECOND_LOOKS,
                 second_floor: float = DEFAULT_SECOND_FLOOR) -> None:
        self.session = _session(path, threads)
        self.second_looks = second_looks
        self.second_floor = second_floor
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

    def _run(self, bgr: Image, scale: float, floor: float,
             offset: tuple[float, float] = (0.0, 0.0)) -> tuple[NDArray[np.float32], NDArray[np.float32],
                                                                  NDArray[np.float32]]:
        """One pass of the network on ``bgr`` resized by ``scale``: (boxes x, y, w, h; corners n x 4 x 2; scores)
        of the priors scoring at least ``floor``, in the coordinates of ``bgr`` plus ``offset``, before NMS."""
        h, w = bgr.shape[:2]
        if scale != 1.0:
            interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            bgr = np.asarray(cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                                        interpolation=interpolation), dtype=np.uint8)
        sh, sw = bgr.shape[:2]
        ph, pw = -(-sh // DET_ALIGN) * DET_ALIGN, -(-sw // DET_ALIGN) * DET_ALIGN
        canvas = np.zeros((ph, pw, 3), dtype=np.float32)
        canvas[:sh, :sw] = bgr.astype(np.float32) - DET_MEAN
        blob = canvas.transpose(2, 0, 1)[None]
        loc, conf, landms = self.session.run(None, {self.input_name: blob})
        priors = self.priors(ph, pw)
        if loc.shape[1] != len(priors):  # a model other than the one pinned: find nothing, loudly in tests
            return np.zeros((0, 4), np.float32), np.zeros((0, 4, 2), np.float32), np.zeros(0, np.float32)
        scores = conf[0, :, 1]
        keep = np.flatnonzero(scores >= floor)
        pr = priors[keep]
        var0, var1 = DET_VARIANCE
        centre = pr[:, :2] + loc[0, keep, :2] * var0 * pr[:, 2:]
        wh = pr[:, 2:] * np.exp(np.clip(loc[0, keep, 2:] * var1, -10, 10))
        shift = np.array(offset, dtype=np.float32)
        boxes = np.concatenate([centre - wh / 2, wh], axis=1) / scale
        boxes[:, :2] += shift
        corners = (pr[:, None, :2] + landms[0, keep].reshape(-1, 4, 2) * var0 * pr[:, None, 2:]) / scale + shift
        return boxes.astype(np.float32), corners.astype(np.float32), scores[keep].astype(np.float32)

    def _nms(self, boxes: NDArray[np.float32], corners: NDArray[np.float32], scores: NDArray[np.float32],
             floor: float, w: int, h: int) -> list[PlateBox]:
        if len(scores) == 0:
            return []
        kept = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), floor, self.nms_threshold)
        found = []
        for i in np.asarray(kept, dtype=np.int64).ravel():
            c = corners[i]
            if not np.isfinite(c).all():
                continue
            clipped = np.clip(c, 0, [w - 1, h - 1]).astype(np.float32)
            found.append(PlateBox(order_corners(clipped), float(scores[i])))
        found.sort(key=lambda p: p.score, reverse=True)
        return found

    def detect(self, bgr: Image) -> list[PlateBox]:
        """Plates scoring at least ``score_threshold``, best first. The whole frame is looked at on a copy at most
        ``max_side`` long; then up to ``second_looks`` candidates that scored between ``second_floor`` and the
        threshold there get a second look: the region around each, cut from the frame at full resolution and
        enlarged so the candidate is at least SECOND_WIDTH px wide, is run through the detector again (a
        distant plate is a few pixels on the copy; see models/README.md)."""
        h, w = bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        floor = min(self.second_floor, self.score_threshold) if self.second_looks else self.score_threshold
        boxes, corners, scores = self._run(bgr, scale, floor)
        found = self._nms(boxes, corners, scores, floor, w, h)
        sure = [p for p in found if p.score >= self.score_threshold]
        doubtful = [p for p in found if p.score < self.score_threshold][:self.second_looks]
        for cand in doubtful:
            x, y, bw, bh = cand.box
            if bw > SECOND_MAX_WIDTH or any(overlap(cand.box, p.box) > 0.3 for p in sure):
                continue  # a large candidate was seen well enough on the copy: no plate there
            zoom = max(1.0, SECOND_WIDTH / max(bw, 1.0))
            rw, rh = max(bw * SECOND_REGION[0], SECOND_MIN / zoom), max(bh * SECOND_REGION[1], SECOND_MIN / zoom)
            x0, y0 = int(max(0, x + bw / 2 - rw / 2)), int(max(0, y + bh / 2 - rh / 2))
            x1, y1 = int(min(w, x + bw / 2 + rw / 2)), int(min(h, y + bh / 2 + rh / 2))
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            b2, c2, s2 = self._run(np.ascontiguousarray(bgr[y0:y1, x0:x1]), zoom, self.score_threshold,
                                   (float(x0), float(y0)))
            for p in self._nms(b2, c2, s2, self.score_threshold, w, h):
                if not any(overlap(p.box, q.box) > 0.3 for q in sure):
                    sure.append(p)
        sure.sort(key=lambda p: p.score, reverse=True)
        return sure


def rectify(frame: Image, corners: NDArray[np.float32], *, size: tuple[int, int] = (REC_WIDTH, REC_HEIGHT),
            pad: tuple[float, float] = (0.0, 0.0)) -> Image:
    """The plate warped from its 4 corners (TL, TR, BR, BL) to ``size`` (w, h), the recogniser's input, with
    ``pad`` (fractions of w, h) of what is around the plate on each side."""
    w, h = size
    px, py = pad  # a margin around the plate
    dst = np.array([[w * px, h * py], [w * (1 - px), h * py], [w * (1 - px), h * (1 - py)], [w * px, h * (1 - py)]],
                   dtype=np.float32)
    m = cv2.getPerspectiveTransform(np.asarray(corners, dtype=np.float32).reshape(4, 2), dst)
    out = cv2.warpPerspective(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(out, dtype=np.uint8)


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

    def probabilities(self, crop: object, width: int = REC_WIDTH) -> NDArray[np.float32] | None:
        bgr = as_bgr(crop)
        if bgr is None:
            return None
        if bgr.shape[:2] != (REC_HEIGHT, width):
            bgr = np.asarray(cv2.resize(bgr, (width, REC_HEIGHT), interpolation=cv2.INTER_AREA), dtype=np.uint8)
        blob = ((bgr[:, :, ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
        return np.asarray(self.session.run(None, {self.input_name: blob})[0][0], dtype=np.float32)

    def recognise(self, crop: object, width: int = REC_WIDTH) -> tuple[str, float]:
        probs = self.probabilities(crop, width)
        return ("", 0.0) if probs is None else ctc_greedy(probs, self.charset)

    def read_text(self, crop: object, width: int = REC_WIDTH) -> TextRead:
        probs = self.probabilities(crop, width)
        return EMPTY if probs is None else ctc_decode(probs, self.charset)


DOUBLE_ROW_ASPECT = (2.4, 2.7)
"""Rectified width/height of a detected plate: below the first a double-row plate (440x220, measured 1.6-2.5
on the rendered set), above the second a single-row one (440x140 / 480x140, measured 2.5-3.9); between,
both readings are tried and the better kept."""
TOP_SQUEEZE = 0.6
DOUBLE_SIZE = (220, 110)
DOUBLE_PAD = (0.0, 0.1)
"""A double-row plate is rectified to DOUBLE_SIZE with this margin (fractions of w, h) before its rows are split:
the detector's corners often clip its top row (measured: 300 rendered plates, >= 120 px read exactly 63 % -> 70 %,
the same margin on single-row plates lowers it)."""


def quad_aspect(corners: NDArray[np.float32]) -> float:
    q = np.asarray(corners, dtype=np.float32).reshape(4, 2)
    w = (np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3])) / 2
    h = (np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])) / 2
    return float(w / h) if h > 0 else 0.0


def row_split(plate: Image) -> int:
    """The row between the two rows of a double-row plate rectified to DOUBLE_SIZE: the least inked row of
    the horizontal projection between 30 % and 50 % of the height (GA 36 puts it at ~36 %)."""
    grey = cv2.cvtColor(plate, cv2.COLOR_BGR2GRAY).astype(np.float32)
    h = grey.shape[0]
    inner = grey[:, grey.shape[1] // 8: -grey.shape[1] // 8]
    edges = np.abs(np.diff(inner, axis=1)).sum(axis=1)
    lo, hi = int(h * 0.30), int(h * 0.50)
    return lo + int(edges[lo:hi].argmin())


DOUBLE_TOP_WIDTH = 96
DOUBLE_BOTTOM_WIDTHS = (100, 140)
"""Widths the rows of a double-row plate are read at when read apart (measured on 58 rendered double-row
plates: reading the rows joined into one row, then apart, the best kept)."""


def split_rows(plate: Image) -> tuple[Image, Image]:
    """The top row's middle (province, letter) and the bottom row of a plate rectified to DOUBLE_SIZE."""
    w, h = plate.shape[1], plate.shape[0]
    split = row_split(plate)
    return plate[int(h * 0.03):split, int(w * 0.15):int(w * 0.85)], plate[split:int(h * 0.97), int(w * 0.03):]


def joined(top: TextRead, bottom: TextRead) -> TextRead:
    if not top.text or not bottom.text:
        return EMPTY
    return TextRead(top.text + bottom.text, top.confs + bottom.confs, np.concatenate([top.probs, bottom.probs]))


def join_rows(plate: Image) -> Image:
    """A double-row plate (rectified to DOUBLE_SIZE) made into one row: the top row's middle (province and
    letter), then the bottom row, both at the bottom row's height, resized to the recogniser's input."""
    w, h = plate.shape[1], plate.shape[0]
    split = row_split(plate)
    top = plate[int(h * 0.03):split, int(w * 0.2):int(w * 0.8)]
    bottom = plate[split:int(h * 0.97), int(w * 0.03):int(w * 0.97)]
    bh = bottom.shape[0]
    head = cv2.resize(top, (max(1, round(top.shape[1] * bh / max(1, top.shape[0]) * TOP_SQUEEZE)), bh),
                      interpolation=cv2.INTER_AREA)
    joined = np.concatenate([head, bottom], axis=1)
    return np.asarray(cv2.resize(joined, (REC_WIDTH, REC_HEIGHT), interpolation=cv2.INTER_AREA), dtype=np.uint8)


COLOUR_HUES = {"yellow": (12, 35), "green": (40, 90), "blue": (95, 130)}
"""OpenCV hue ranges (0-180) of plate backgrounds."""
COLOUR_SHARE = 0.4


def plate_colour(crop: Image) -> str | None:
    """The plate's background colour when at least COLOUR_SHARE of its pixels are saturated and of one hue."""
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
    h, sat, val = hsv[:, :, 0].ravel(), hsv[:, :, 1].ravel(), hsv[:, :, 2].ravel()
    vivid = (sat > 70) & (val > 50)
    for name, (lo, hi) in COLOUR_HUES.items():
        if np.count_nonzero(vivid & (h >= lo) & (h <= hi)) >= COLOUR_SHARE * h.size:
            return name
    return None


class PlateReader:
    """Detect (on a downscale), rectify and read (from the frame given, full resolution). Stateless: every
    method takes and returns picklable values, so one reader serves every camera from a shared service.
    Every method returns empty results on a frame it cannot use."""

    def __init__(self, detector: PlateDetector, recogniser: PlateRecogniser) -> None:
        self.detector = detector
        self.recogniser = recogniser

    @property
    def charset(self) -> str:
        return self.recogniser.charset

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

    def read(self, frame: object, *, min_conf: float = DEFAULT_MIN_CHAR_CONF, local_provinces: Collection[str] = (),
             province_weight: float = DEFAULT_PROVINCE_WEIGHT, province_conf: float = 0.0,
             strict_provinces: Mapping[str, float] = STRICT_PROVINCES) -> list[PlateRead]:
        """Every plate found, each with its decision: ``reason`` None = publishable, else why not."""
        bgr = as_bgr(frame)
        if bgr is None:
            return []
        return [self.read_plate(bgr, det, min_conf=min_conf, local_provinces=local_provinces,
                                province_weight=province_weight, province_conf=province_conf,
                                strict_provinces=strict_provinces)
                for det in self.detector.detect(bgr)]

    def read_plate(self, bgr: Image, det: PlateBox, *, min_conf: float = DEFAULT_MIN_CHAR_CONF,
                   local_provinces: Collection[str] = (),
                   province_weight: float = DEFAULT_PROVINCE_WEIGHT, province_conf: float = 0.0,
                   strict_provinces: Mapping[str, float] = STRICT_PROVINCES) -> PlateRead:
        """One plate's read. Its text, confidences and probabilities are the model's own (the local-province
        prior is applied once, by whoever decides: here only ``reason``, whether this one frame could be
        published; the voter applies it to a passage's combined frames). ``province_conf``: the confidence the
        province character needs (besides ``min_conf``), more for ``strict_provinces``."""
        aspect = quad_aspect(det.corners)
        colour = plate_colour(rectify(bgr, det.corners, size=(48, 16)))
        tries: list[tuple[int, TextRead]] = []

        def why(read: TextRead) -> str | None:
            reason = judge(read, min_conf, province_need(read.text, province_conf, strict_provinces))
            return "invalid_format" if reason is None and not fits_colour(read.text, colour) else reason

        def decide(read: TextRead) -> str | None:  # the prior used once, on this frame's raw read
            return why(province_prior(read, self.charset, local_provinces, weight=province_weight,
                                      confident=min_conf))

        def settle(rows: int, read: TextRead) -> bool:
            tries.append((rows, read))
            return decide(read) is None

        def rank(t: tuple[int, TextRead]) -> tuple[bool, bool, float]:
            return decide(t[1]) is None, valid_plate(t[1].text), t[1].score

        done = False
        if aspect < DOUBLE_ROW_ASPECT[1]:
            plate = rectify(bgr, det.corners, size=DOUBLE_SIZE, pad=DOUBLE_PAD)
            done = settle(2, self.recogniser.read_text(join_rows(plate)))
            top, bottom = split_rows(plate)
            for width in DOUBLE_BOTTOM_WIDTHS if not done else ():  # each row read on its own, then joined
                if settle(2, joined(self.recogniser.read_text(top, DOUBLE_TOP_WIDTH),
                                    self.recogniser.read_text(bottom, width))):
                    break
        if not done and aspect >= DOUBLE_ROW_ASPECT[0]:
            # A read that is not a confident plate (a lost or doubled character, mostly) gets a second look at
            # other widths, ~4 ms each; the first publishable one wins, else the best of all.
            for width, pad in SINGLE_VIEWS:
                crop = rectify(bgr, det.corners, size=(width, REC_HEIGHT), pad=pad)
                if settle(1, self.recogniser.read_text(crop, width)):
                    break
        rows, best = max(tries, key=rank)
        return PlateRead(best.text, best.score, det, valid_plate(best.text), confs=best.confs, probs=best.probs,
                         rows=rows, reason=decide(best), colour=colour)

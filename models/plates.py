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
from collections import Counter, deque
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
    """One plate in one frame: the text read, its score (the weakest character's confidence), each
    character's confidence and distribution, 1 or 2 rows, and ``reason`` None if it may be published
    (else no_text, invalid_format or low_confidence)."""

    text: str
    score: float
    detection: PlateBox
    valid: bool
    confs: tuple[float, ...] = ()
    probs: NDArray[np.float32] | None = None
    rows: int = 1
    reason: str | None = None
    colour: str | None = None
    """blue, green or yellow when the plate's colour is clear (see :func:`plate_colour`), else None."""

    @property
    def published(self) -> bool:
        return self.reason is None and self.valid

    @property
    def width_px(self) -> float:
        q = self.detection.corners
        return float((np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3])) / 2)


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
            if bw > SECOND_MAX_WIDTH or any(_overlap(cand.box, p.box) > 0.3 for p in sure):
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
                if not any(_overlap(p.box, q.box) > 0.3 for q in sure):
                    sure.append(p)
        sure.sort(key=lambda p: p.score, reverse=True)
        return sure


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


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


@dataclass(frozen=True, slots=True)
class TextRead:
    """What the recogniser read: the text, each character's confidence, and each character's distribution.

    ``probs[i]`` is the output at the time step where character i peaked, without the blank and renormalised
    (length = the charset), so ``confs[i] == probs[i][charset.index(text[i])]``: how sure the step was of this
    character against every other one.
    """

    text: str
    confs: tuple[float, ...]
    probs: NDArray[np.float32]

    @property
    def score(self) -> float:
        """The weakest character's confidence (0 for no text): a read is as good as its worst character."""
        return min(self.confs, default=0.0)


EMPTY = TextRead("", (), np.zeros((0, 0), np.float32))


def ctc_decode(probs: NDArray[np.float32], charset: str, blank: int = 0) -> TextRead:
    """Greedy CTC with per-character evidence: each emitted character is a run of steps whose best class is
    that character; its confidence is the largest probability the run gave it (the step that produced it)."""
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < len(charset) + 1:
        return EMPTY
    probs = np.nan_to_num(probs.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    best = probs.argmax(axis=1)
    chars: list[str] = []
    confs: list[float] = []
    rows: list[NDArray[np.float32]] = []
    t, n = 0, len(best)
    while t < n:
        c = int(best[t])
        end = t + 1
        while end < n and best[end] == c:
            end += 1
        if c != blank and 1 <= c <= len(charset):
            peak = t + int(probs[t:end, c].argmax())
            row = probs[peak, 1:len(charset) + 1]
            row = row / max(float(row.sum()), 1e-6)  # the choice between characters, not when to emit
            chars.append(charset[c - 1])
            confs.append(float(np.clip(row[c - 1], 0.0, 1.0)))
            rows.append(row)
        t = end
    if not chars:
        return EMPTY
    return TextRead("".join(chars), tuple(confs), np.stack(rows).astype(np.float32))


DEFAULT_MIN_CHAR_CONF = 0.85
"""A read is published only if every character has at least this confidence (see models/README.md)."""
DEFAULT_PROVINCE_WEIGHT = 30.0
"""How much likelier a local province is than another before the frame is seen (``local_provinces``)."""


def province_prior(read: TextRead, charset: str, local: Collection[str], *,
                   weight: float = DEFAULT_PROVINCE_WEIGHT, confident: float = DEFAULT_MIN_CHAR_CONF) -> TextRead:
    """The first character's distribution reweighted by a prior that favours the site's ``local`` provinces.

    Bayes-like: posterior(c) ~ p(c) * (weight if c is local else 1), over the province classes only,
    renormalised to the mass the first character had on provinces. Never applied when the first character
    already is a province read with ``confident`` confidence (a confident other province stays)."""
    if not local or not read.text or read.probs.shape[0] != len(read.text):
        return read
    if read.text[0] in PROVINCES and read.confs[0] >= confident:
        return read
    index = [i for i, ch in enumerate(charset) if ch in PROVINCES]
    p = read.probs[0].astype(np.float64)
    mass = float(p[index].sum())
    if mass <= 0:
        return read
    w = np.ones(len(index))
    w[[k for k, i in enumerate(index) if charset[i] in local]] = weight
    post = p[index] * w
    post *= mass / post.sum()
    first = p.copy()
    first[index] = post
    top = int(first.argmax())
    probs = read.probs.copy()
    probs[0] = first.astype(np.float32)
    return TextRead(charset[top] + read.text[1:], (float(first[top]), *read.confs[1:]), probs)


def judge(read: TextRead, min_conf: float = DEFAULT_MIN_CHAR_CONF) -> str | None:
    """None if ``read`` may be published as a plate; else why not: no_text, invalid_format, low_confidence."""
    if not read.text:
        return "no_text"
    if not valid_plate(read.text):
        return "invalid_format"
    if read.score < min_conf:
        return "low_confidence"
    return None


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
LENGTHS = {"green": 8, "blue": 7}
"""Green (new energy) plates carry 8 characters, blue ones 7; yellow ones either (7, or 8 on rare kinds)."""


def plate_colour(crop: Image) -> str | None:
    """The plate's background colour when at least COLOUR_SHARE of its pixels are saturated and of one hue."""
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
    h, sat, val = hsv[:, :, 0].ravel(), hsv[:, :, 1].ravel(), hsv[:, :, 2].ravel()
    vivid = (sat > 70) & (val > 50)
    for name, (lo, hi) in COLOUR_HUES.items():
        if np.count_nonzero(vivid & (h >= lo) & (h <= hi)) >= COLOUR_SHARE * h.size:
            return name
    return None


def fits_colour(text: str, colour: str | None) -> bool:
    """False if the plate's colour says it carries another number of characters (a green plate read as 7)."""
    need = LENGTHS.get(colour or "")
    return need is None or len(text) == need


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
             province_weight: float = DEFAULT_PROVINCE_WEIGHT) -> list[PlateRead]:
        """Every plate found, each with its decision: ``reason`` None = publishable, else why not."""
        bgr = as_bgr(frame)
        if bgr is None:
            return []
        return [self.read_plate(bgr, det, min_conf=min_conf, local_provinces=local_provinces,
                                province_weight=province_weight) for det in self.detector.detect(bgr)]

    def read_plate(self, bgr: Image, det: PlateBox, *, min_conf: float = DEFAULT_MIN_CHAR_CONF,
                   local_provinces: Collection[str] = (),
                   province_weight: float = DEFAULT_PROVINCE_WEIGHT) -> PlateRead:
        aspect = quad_aspect(det.corners)
        colour = plate_colour(rectify(bgr, det.corners, size=(48, 16)))
        tries: list[tuple[int, TextRead]] = []

        def why(read: TextRead) -> str | None:
            reason = judge(read, min_conf)
            return "invalid_format" if reason is None and not fits_colour(read.text, colour) else reason

        def settle(rows: int, read: TextRead) -> bool:
            read = province_prior(read, self.charset, local_provinces, weight=province_weight, confident=min_conf)
            tries.append((rows, read))
            return why(read) is None

        def rank(t: tuple[int, TextRead]) -> tuple[bool, bool, float]:
            return why(t[1]) is None, valid_plate(t[1].text), t[1].score

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
                         rows=rows, reason=why(best), colour=colour)


@dataclass(slots=True)
class _Passage:
    """One plate passing a camera: detections with gaps shorter than ``passage_gap`` between them."""

    last_seen: float = float("-inf")
    frames: int = 0
    settled: bool = False
    """A plate was published (or held) in it, or its unreadable event went out: nothing more to say."""


@dataclass(slots=True)
class _CameraVotes:
    window: deque[PlateRead | None]
    emitted: dict[str, float] = field(default_factory=dict)
    passage: _Passage = field(default_factory=_Passage)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the voter says after a frame: a plate to publish, or a passage that stayed unreadable."""

    kind: str
    """plate.read or plate.unreadable"""
    text: str
    score: float
    confs: tuple[float, ...]
    reason: str | None
    read: PlateRead | None
    """The frame's read that settled it (its box and crop), None for a bare text vote."""


def combine(reads: list[PlateRead], charset: str, length: int | None = None) -> TextRead:
    """Per-character evidence of several frames: the reads of the most common length, position by position,
    combined as a tempered product: the sum of the log-probabilities over n frames divided by sqrt(n), then
    renormalised. Frames that agree make a character surer, frames that disagree make it doubtful. A plain
    mean ignores agreement; a full product would count frames of one car as independent evidence, which they
    are not (the same glare, the same angle). Measured on 150 passages of 5 frames: mean 85 of 113 plates
    >= 120 px published exactly, 0 wrong of 150; tempered product 97 of 113, 2 wrong of 150."""
    if not reads:
        return EMPTY
    lengths: dict[int, list[PlateRead]] = {}
    for r in reads:
        if r.probs is not None and len(r.text) and r.probs.shape == (len(r.text), len(charset)):
            lengths.setdefault(len(r.text), []).append(r)
    if not lengths:
        return EMPTY
    group = lengths[length] if length in lengths else max(lengths.values(), key=len)
    stack = np.stack([r.probs for r in group if r.probs is not None])
    logp = np.log(np.clip(stack, 1e-6, 1.0)).sum(axis=0) / len(stack) ** 0.5
    logp -= logp.max(axis=1, keepdims=True)
    post = np.exp(logp)
    post = (post / post.sum(axis=1, keepdims=True)).astype(np.float32)
    best = post.argmax(axis=1)
    return TextRead("".join(charset[int(i)] for i in best), tuple(float(post[k, i]) for k, i in enumerate(best)),
                    post)


def lost_province(read: str, plate: str) -> bool:
    """True if ``read`` is ``plate`` without its province character: a frame that agrees on every other one.

    On small plates the province glyph (the first and most intricate, ~9 px wide on a 90 px plate) is the one a
    frame loses, read as nothing when the quadrilateral clips it. Such a frame counts towards the frames that
    must agree, but gives no evidence about the province: that comes from the frames that read one."""
    return bool(read) and len(plate) == len(read) + 1 and plate[0] in PROVINCES and plate[1:] == read


class PlateVoter:
    """Per camera: combine the last ``window`` frames' per-character evidence; publish a plate once ``need``
    frames of one length agree on a confident, valid text; then hold it for ``hold`` seconds.

    A passage (detections less than ``passage_gap`` s apart) that has been seen for ``unreadable_after`` frames
    without a plate published gives one plate.unreadable, never one per frame. Feed one read per frame (None
    when no plate was found, so gaps count against a plate).
    """

    def __init__(self, *, need: int = 3, window: int = 5, hold: float = 30.0,
                 min_conf: float = DEFAULT_MIN_CHAR_CONF, charset: str = "", local_provinces: Collection[str] = (),
                 province_weight: float = DEFAULT_PROVINCE_WEIGHT, passage_gap: float = 3.0,
                 unreadable_after: int | None = None) -> None:
        if not 1 <= need <= window:
            raise ValueError("need 1 <= need <= window")
        self.need = need
        self.window = window
        self.hold = hold
        self.min_conf = min_conf
        self.charset = charset
        self.local = tuple(local_provinces)
        self.province_weight = province_weight
        self.passage_gap = passage_gap
        self.unreadable_after = unreadable_after if unreadable_after is not None else 2 * window
        self._cameras: dict[str, _CameraVotes] = {}

    def observe(self, camera: str, read: PlateRead | None, now: float) -> Verdict | None:
        """The frame's read of the plate (None: none seen) in; a verdict out when there is one."""
        cam = self._cameras.get(camera)
        if cam is None:
            cam = self._cameras[camera] = _CameraVotes(deque(maxlen=self.window))
        cam.emitted = {p: until for p, until in cam.emitted.items() if until > now}
        if read is not None and now - cam.passage.last_seen > self.passage_gap:
            cam.passage = _Passage()  # a new plate: the last one's frames are no evidence for it
            cam.window.clear()
        cam.window.append(read)
        if read is None:
            return None
        passage = cam.passage
        passage.last_seen = now
        passage.frames += 1
        reads = [r for r in cam.window if r is not None]
        colours = Counter(r.colour for r in reads if r.colour is not None).most_common(1)
        colour = colours[0][0] if colours and colours[0][1] * 2 > len(reads) else None
        together = combine(reads, self.charset, LENGTHS.get(colour or "")) if self.charset else EMPTY
        together = province_prior(together, self.charset, self.local, weight=self.province_weight,
                                  confident=self.min_conf)
        agreeing = sum(1 for r in reads if len(r.text) == len(together.text) or lost_province(r.text, together.text))
        reason = judge(together, self.min_conf) if together.text else (read.reason or "no_text")
        if reason is None and not fits_colour(together.text, colour):
            reason = "invalid_format"
        if together.text and reason is None and agreeing >= self.need:
            plate = normalise_plate(together.text)
            passage.settled = True
            if plate in cam.emitted:
                return None
            cam.emitted[plate] = now + self.hold
            return Verdict("plate.read", plate, together.score, together.confs, None, read)
        if passage.settled or passage.frames < self.unreadable_after:
            return None
        passage.settled = True
        text, score, confs = (together.text, together.score, together.confs) if together.text else (
            read.text, read.score, read.confs)
        return Verdict("plate.unreadable", text, score, confs, reason or "low_confidence", read)

    def vote(self, camera: str, plate: str | None, score: float = 1.0,
             now: float | None = None) -> tuple[str, float] | None:
        """A bare text vote (no per-character evidence): (plate, mean score of its winning reads) the first time
        it wins ``need`` of the last ``window`` frames, else None. For reads from elsewhere (tests, tools)."""
        t = time.monotonic() if now is None else now
        cam = self._cameras.get(camera)
        if cam is None:
            cam = self._cameras[camera] = _CameraVotes(deque(maxlen=self.window))
        text = normalise_plate(plate) if plate is not None and valid_plate(plate) else None
        cam.window.append(None if text is None else PlateRead(text, score, _NO_BOX, True))
        cam.emitted = {p: until for p, until in cam.emitted.items() if until > t}
        if text is None or text in cam.emitted:
            return None
        scores = [r.score for r in cam.window if r is not None and r.text == text]
        if len(scores) < self.need:
            return None
        cam.emitted[text] = t + self.hold
        return text, float(np.mean(scores))


_NO_BOX = PlateBox(np.zeros((4, 2), np.float32), 0.0)


def unreadable_event(camera: str, verdict: Verdict, width_px: float, crop: str | None) -> Event:
    """``plate.unreadable``: camera, score, width, reason and the crop's file name on this box (never the image)."""
    payload: dict[str, object] = {"camera": camera, "score": round(float(verdict.score), 3),
                                  "width_px": round(float(width_px), 1), "reason": verdict.reason or "low_confidence"}
    if crop:
        payload["crop"] = crop
    return vision_event("plate.unreadable", camera, payload)


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

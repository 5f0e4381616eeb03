"""Plate text: the Chinese plate format, CTC decoding with per-character evidence, the confidence rule and the
local-province prior. Pure numpy, no model: the reader (models/plates.py) and the voter (models/plate_votes.py)
share it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

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


PROVINCE_TIE = 2.0
"""A local province that the evidence ranks second, within this factor of the first, names the plate in an
unreadable event; it is never published on the prior (see :func:`province_prior`)."""


def province_prior(read: TextRead, charset: str, local: Collection[str], *,
                   weight: float = DEFAULT_PROVINCE_WEIGHT, confident: float = DEFAULT_MIN_CHAR_CONF,
                   tie: float = PROVINCE_TIE) -> TextRead:
    """The site's ``local`` provinces used once, on raw evidence (one frame's, or a passage's combined frames).

    Over the province classes of the first character:
    - the evidence ranks a local province first: its confidence becomes the posterior with the local provinces
      ``weight`` times likelier a priori (p(c) * w(c), renormalised to the mass on provinces), so a local
      plate read with some doubt can be published;
    - it ranks another province first and a local one within a factor ``tie`` of it: a near-tie, the local one
      is named, with its own probability (under 0.5: never published);
    - else, or when the first character already is a province read with ``confident`` confidence, unchanged.
    A province the model did not rank first is thus never published on the prior (a car from elsewhere read
    with doubt is unreadable, not a local plate)."""
    if not local or not read.text or read.probs.shape[0] != len(read.text):
        return read
    if read.text[0] in PROVINCES and read.confs[0] >= confident:
        return read
    index = [i for i, ch in enumerate(charset) if ch in PROVINCES]
    locals_ = [i for i in index if charset[i] in local]
    p = read.probs[0].astype(np.float64)
    mass = float(p[index].sum())
    if mass <= 0 or not locals_:
        return read
    top = max(index, key=lambda i: p[i])
    near = max(locals_, key=lambda i: p[i])
    first = p.copy()
    if top == near:
        w = np.array([weight if i in locals_ else 1.0 for i in index])
        post = p[index] * w
        first[index] = post * mass / post.sum()
    elif p[near] * tie >= p[top] > 0:  # named, with its own (lower) probability
        return TextRead(charset[near] + read.text[1:], (float(p[near]), *read.confs[1:]), read.probs)
    else:
        return read
    probs = read.probs.copy()
    probs[0] = first.astype(np.float32)
    return TextRead(charset[top] + read.text[1:], (float(first[top]), *read.confs[1:]), probs)


def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


STRICT_PROVINCES = {"皖": 0.9}
"""Provinces the recogniser names when it is unsure of the glyph, with the probability each needs on the voted
frames' average (``strict_provinces``). 皖: every wrong plate of the tuning seed (19) was a province read as 皖
(辽, 陕), and 10 of 13 on the held-out seeds; consistent with a recogniser trained mostly on plates from Anhui
(CCPD was collected in Hefei; not verified for this model). Measured on seed 19: 0.9 took wrong from 2 to 0 of
150 and cost no exact read (models/README.md)."""


def province_need(text: str, province_conf: float, strict: Mapping[str, float]) -> float:
    """The probability the province of ``text`` needs: ``province_conf``, or more for a strict province."""
    return max(province_conf, strict.get(text[:1], 0.0)) if text else province_conf


def judge(read: TextRead, min_conf: float = DEFAULT_MIN_CHAR_CONF, province_conf: float = 0.0) -> str | None:
    """None if ``read`` may be published as a plate; else why not: no_text, invalid_format, low_confidence
    (a character under ``min_conf``, or the province character under ``province_conf``: one frame's read)."""
    if not read.text:
        return "no_text"
    if not valid_plate(read.text):
        return "invalid_format"
    if read.score < min_conf or (read.confs and read.confs[0] < province_conf):
        return "low_confidence"
    return None


LENGTHS = {"green": 8, "blue": 7}
"""Green (new energy) plates carry 8 characters, blue ones 7; yellow ones either (7, or 8 on rare kinds)."""


def fits_colour(text: str, colour: str | None) -> bool:
    """False if the plate's colour says it carries another number of characters (a green plate read as 7)."""
    need = LENGTHS.get(colour or "")
    return need is None or len(text) == need

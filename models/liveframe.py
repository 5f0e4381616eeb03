"""The latest frame for the status page, written by the camera worker only while someone watches.

At most once a second, and only while the server's ``want`` file is fresh (models/live.py), the worker writes
``blurred.jpg``, the frame with what the analysers found drawn on it, every face pixelated and labelled only
``face``; and, only while ``want-raw`` is fresh too (a viewer with the ``faces`` role asked), ``raw.jpg`` with
the names of the recognised. Blurring errs towards hiding: faces are looked for by a YuNet detector of their
own at a low score threshold (``BLUR_SCORE``, well under the faces analyser's), added to whatever the analyser
found, and each box is enlarged before it is pixelated; with no face model at all the whole picture is
pixelated, since a face we cannot find we cannot hide. Where the faces family has a shared service, its
detector is asked (at ``BLUR_SCORE``) instead of loading one in the worker (ONNX Runtime and the model, tens
of MB, for as long as someone watches); a frame it cannot answer for (the service restarting) is pixelated
whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.live import BLURRED, RAW, live_dir, wanted, write_atomically

Box = tuple[float, float, float, float]
Found = tuple[str, Box, str]
"""What an analyser found on a frame: (kind, box x y w h in frame pixels, label)."""
EVERY = 1.0
"""At most one frame a second."""
LOOK_EVERY = 1.0
"""How often the ``want`` file's age is looked at."""
COLOURS = {"face": (60, 200, 60), "plate": (0, 200, 255), "person": (255, 160, 0)}
QUALITY = 75
BLUR_SCORE = 0.3
"""YuNet's score above which a face is blurred: a face the analyser (0.6) is unsure of is still hidden, and a
blurred patch of wall costs nothing."""
BLUR_MARGIN = 0.4
"""How much each face box grows on every side before it is pixelated (hair, ears, a box a little off)."""


def pixelate(image: np.ndarray[Any, Any], box: Box, *, margin: float = BLUR_MARGIN, blocks: int = 6) -> None:
    """Pixelate ``box`` (enlarged by ``margin`` each side) in place: a few coarse blocks no one can recognise."""
    h, w = image.shape[:2]
    x, y, bw, bh = box
    x0, y0 = max(0, int(x - bw * margin)), max(0, int(y - bh * margin))
    x1, y1 = min(w, int(x + bw * (1 + margin)) + 1), min(h, int(y + bh * (1 + margin)) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    region = image[y0:y1, x0:x1]
    small = cv2.resize(region, (blocks, max(1, round(blocks * (y1 - y0) / (x1 - x0)))), interpolation=cv2.INTER_AREA)
    image[y0:y1, x0:x1] = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)


def draw(image: np.ndarray[Any, Any], found: Iterable[Found], *, names: bool) -> None:
    """Boxes and labels in place; without ``names`` a face is only ``face``."""
    for kind, (x, y, w, h), label in found:
        colour = COLOURS.get(kind, (255, 255, 255))
        text = label if names or kind != "face" else "face"
        p0, p1 = (int(x), int(y)), (int(x + w), int(y + h))
        cv2.rectangle(image, p0, p1, colour, 2)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(th + 4, p0[1])
        cv2.rectangle(image, (p0[0], top - th - 4), (p0[0] + tw + 4, top), colour, -1)
        cv2.putText(image, text, (p0[0] + 2, top - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)


class LiveFrames:
    """One camera's live frames; ``offer`` every analysed or gated frame, it decides whether to write."""

    def __init__(self, data_dir: Path, camera: str, face_boxes: Callable[[np.ndarray[Any, Any]], list[Box] | None],
                 *, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.data_dir = data_dir
        self.camera = camera
        self.dir = live_dir(data_dir, camera)
        self.face_boxes = face_boxes
        """Finds faces to blur on a frame (generously); its None: no face model, blur everything."""
        self.clock, self.wall = clock, wall
        self.written = 0
        self._looked = float("-inf")
        self._wanted = self._wanted_raw = False
        self._last = float("-inf")
        self._left = True
        """Frames may be on disk (a previous worker's): removed as soon as nobody watches."""

    def watched(self) -> bool:
        now = self.clock()
        if now - self._looked >= LOOK_EVERY:
            self._looked = now
            wall = self.wall()
            self._wanted = wanted(self.data_dir, self.camera, wall)
            self._wanted_raw = self._wanted and wanted(self.data_dir, self.camera, wall, raw=True)
            if not self._wanted_raw:
                (self.dir / RAW).unlink(missing_ok=True)
            if not self._wanted and self._left:
                self.clear()
        return self._wanted

    def clear(self) -> None:
        """No frame on disk (nobody watches, or the camera is lost: an old picture is no live frame)."""
        for name in (RAW, BLURRED):
            (self.dir / name).unlink(missing_ok=True)
        self._left = False

    def offer(self, frame: np.ndarray[Any, Any], found: Sequence[Found] | None, *, faces_looked: bool) -> bool:
        """Write this frame if someone watches and a second has passed; ``found``: the analysers' findings on
        it (None when none looked: a frame without motion); ``faces_looked``: the faces analyser ran on it."""
        now = self.clock()
        if now - self._last < EVERY or not self.watched():
            return False
        self._last = now
        found = list(found or [])
        blurred = frame.copy()
        faces = self.face_boxes(frame)
        if faces is None:
            pixelate(blurred, (0.0, 0.0, float(frame.shape[1]), float(frame.shape[0])), margin=0.0, blocks=24)
        else:
            if faces_looked:  # what the analyser found too (it may have seen one the blur detector did not)
                faces += [box for kind, box, _ in found if kind == "face"]
            for box in faces:
                pixelate(blurred, box)
        draw(blurred, found, names=False)
        self._left = True
        self._write(BLURRED, blurred)
        if self._wanted_raw:
            raw = frame.copy()
            draw(raw, found, names=True)
            self._write(RAW, raw)
        self.written += 1
        return True

    def _write(self, name: str, image: np.ndarray[Any, Any]) -> None:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        if ok:
            write_atomically(self.dir, name, buf.tobytes())


def face_finder(data_dir: Path) -> Callable[[np.ndarray[Any, Any]], list[Box] | None]:
    """Face boxes for blurring from a YuNet detector asked at ``BLUR_SCORE`` (not the faces analyser's threshold,
    which keeps only faces it is sure of): the faces service's when the worker was told one
    (``models.hosting.served``), else one of its own loaded on first use (a camera nobody watches never loads
    it). None from it, so the whole frame is pixelated, when there is no face model or the service cannot
    answer for this frame."""
    detector: Any = None
    missing = False

    def find(frame: np.ndarray[Any, Any]) -> list[Box] | None:
        from models.faces import as_bgr

        nonlocal detector, missing
        if detector is None and not missing:
            detector, missing = _blur_detector(data_dir)
        if detector is None:
            return None
        bgr = as_bgr(frame)
        if bgr is None:
            return None  # unreadable: blur it all
        try:
            return [face.box for face in detector.detect(bgr, score_threshold=BLUR_SCORE)]
        except (OSError, RuntimeError):  # the service gone or restarting (ServiceUnavailable, RemoteError)
            return None

    return find


def _blur_detector(data_dir: Path) -> tuple[Any, bool]:
    """(the detector, or None; True when there is none to be had: no model, a service that cannot load one)."""
    from models.hosting import open_models, served

    socket = served("faces")
    if socket is not None:
        if not socket.exists():  # stopped by a reload: no wait for it; the frame is pixelated whole
            return None, False
        from models.config import VisionConfig

        try:
            return open_models("faces", data_dir, VisionConfig())["detector"], False
        except OSError as exc:  # ServiceUnavailable: not up (try again next frame), or up without models
            return None, "cannot serve" in str(exc)
    from models.faces import FaceDetector
    from models.fetch import model_path

    try:
        return FaceDetector(model_path(data_dir, "yunet"), score_threshold=BLUR_SCORE, threads=1), False
    except Exception:  # no model (FetchError), or ONNX Runtime refusing it: blur the whole frame
        return None, True

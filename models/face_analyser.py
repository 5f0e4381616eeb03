"""Faces on a camera: detect every analysed frame, embed when a face is new, match against the gallery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.core.data import Event
from models.config import VisionConfig
from models.faces import FacePipeline, Image, face_events
from models.gallery import Gallery, load_key
from models.hosting import open_models

REFRESH = 1.0
"""A face that stays in place keeps its identity this long before it is embedded again (seconds)."""


@dataclass(slots=True)
class _SeenFace:
    box: tuple[float, float, float, float]
    person: str | None
    score: float
    embedded: float


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class FaceAnalyser:
    """Detect every analysed frame; embed a face when it is new, or once per REFRESH while it stays.

    Detection costs ~11 ms and an embedding ~20 ms on one core, so a person standing at a door for
    three seconds at 5 fps costs 15 detections and 3 embeddings instead of 15 of each.
    """

    name = "faces"
    busy = False

    def __init__(self, camera: str, vision: VisionConfig, data_dir: Path) -> None:
        cfg = vision.faces
        self.camera = camera
        self.threshold = cfg.threshold
        self.cooldown = cfg.cooldown
        hosted = open_models("faces", data_dir, vision)
        self.pipeline = FacePipeline(hosted["detector"], hosted["embedder"])
        self.gallery = Gallery(data_dir, load_key(cfg.key_file))
        self._last: dict[str | None, float] = {}
        self._seen: list[_SeenFace] = []
        self.embedded = 0
        self.found: list[tuple[str, tuple[float, float, float, float], str]] = []

    def analyse(self, frame: Image, now: float) -> list[Event]:
        bgr, found = self.pipeline.detect(frame)
        self.found = [("face", face.box, "face") for face in found]
        if bgr is None:
            return []
        results: list[tuple[str | None, float]] = []
        seen: list[_SeenFace] = []
        for face in found:
            prior = max(self._seen, key=lambda s: _iou(s.box, face.box), default=None)
            if prior is not None and _iou(prior.box, face.box) >= 0.3 and now - prior.embedded < REFRESH:
                self._seen.remove(prior)
                seen.append(_SeenFace(face.box, prior.person, prior.score, prior.embedded))
                continue
            embedded, _ = self.pipeline.embed(bgr, face)
            self.embedded += 1
            if embedded.embedding is None:
                continue
            match = self.gallery.match(embedded.embedding, self.threshold)
            seen.append(_SeenFace(face.box, match.person, match.score, now))
            if now - self._last.get(match.person, float("-inf")) < self.cooldown:
                continue
            self._last[match.person] = now
            results.append((match.person, match.score))
        self._seen = seen
        names = {s.box: s.person or "unknown" for s in seen}
        self.found = [(kind, box, names.get(box, label)) for kind, box, label in self.found]
        return face_events(self.camera, results)

"""What a camera worker runs on a frame that moved: faces, plates, falls; events out, no pixels.

Each analyser keeps the per-camera memory its events need (cooldowns, votes, pose tracks) so the
worker only hands it frames and clock readings. Events carry ids, plates and scores: never an
image, a crop or an embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.core.data import Event
from models.config import CameraConfig, VisionConfig
from models.faces import EMBEDDERS, FaceDetector, FacePipeline, Image, face_events
from models.falls import FallConfig, FallDetector
from models.fetch import model_path
from models.gallery import Gallery, load_key
from models.plates import PlateReader, PlateVoter, plate_event
from models.pose import PoseTracker


class Analyser(Protocol):
    name: str
    found: list[tuple[str, tuple[float, float, float, float], str]]
    """What the last analysed frame held: (kind, box x y w h, label), for the status page's live frame."""

    def analyse(self, frame: Image, now: float) -> list[Event]: ...

    @property
    def busy(self) -> bool:
        """True while the analyser needs frames even without motion (a person lying still after a fall)."""
        ...


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
        self.pipeline = FacePipeline(FaceDetector(model_path(data_dir, "yunet"), threads=1),
                                     EMBEDDERS[cfg.embedder](model_path(data_dir, "sface"), threads=1))
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


class PlateAnalyser:
    name = "plates"
    busy = False

    def __init__(self, camera: str, vision: VisionConfig, data_dir: Path) -> None:
        cfg = vision.plates
        self.camera = camera
        self.allow, self.block = cfg.allowlist, cfg.blocklist
        self.reader = PlateReader.from_data_dir(data_dir, threads=1, max_side=cfg.detect_max_side)
        self.voter = PlateVoter(need=cfg.votes, window=cfg.window, hold=cfg.hold)
        self.found: list[tuple[str, tuple[float, float, float, float], str]] = []

    def analyse(self, frame: Image, now: float) -> list[Event]:
        reads = [r for r in self.reader.read(frame) if r.valid]
        self.found = [("plate", r.detection.box, r.text) for r in reads]
        best = max(reads, key=lambda r: r.score, default=None)
        won = self.voter.vote(self.camera, best.text if best else None, best.score if best else 0.0, now)
        if won is None:
            return []
        return [plate_event(self.camera, won[0], won[1], allowlist=self.allow, blocklist=self.block)]


class FallAnalyser:
    """Pose every analysed frame; while someone is down, keep looking even if nothing moves."""

    name = "falls"

    def __init__(self, camera: str, vision: VisionConfig, data_dir: Path) -> None:
        self.camera = camera
        self.tracker = PoseTracker.from_data_dir(data_dir, threads=1)
        self.falls = FallDetector(FallConfig(hold=vision.falls.hold))
        self.found: list[tuple[str, tuple[float, float, float, float], str]] = []

    @property
    def busy(self) -> bool:
        return self.falls.state(self.camera) == "down"

    def analyse(self, frame: Image, now: float) -> list[Event]:
        pose = self.tracker.update(self.camera, frame)
        event = self.falls.update(self.camera, now, None if pose is None else pose.landmarks)
        self.found = []
        if pose is not None:
            xy = pose.landmarks[:33, :2]
            (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
            state = self.falls.state(self.camera)
            self.found = [("person", (float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                           "person" if state == "watching" else state)]
        return [] if event is None else [event]


ANALYSERS: dict[str, type[FaceAnalyser] | type[PlateAnalyser] | type[FallAnalyser]] = {
    "faces": FaceAnalyser,
    "plates": PlateAnalyser,
    "falls": FallAnalyser,
}


def build(camera: CameraConfig, vision: VisionConfig, data_dir: Path) -> list[Analyser]:
    """The camera's analysers, models loaded; raises FetchError / GalleryError with a reason to show."""
    return [ANALYSERS[name](camera.id, vision, data_dir) for name in camera.detect]

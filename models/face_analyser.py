"""Faces on a camera: detect every analysed frame, track faces by overlap, embed a new face once, match.

Per camera state lives here (the detector and embedder are stateless and may be a shared service):

- **tracks**: a face found in the next frame with IoU >= TRACK_IOU to a track's last box is the same
  face; a track unseen for TRACK_GONE seconds ends. A track is embedded when new and then once per
  REFRESH while it stays, so a person at a door for 3 s at 5 fps costs 15 detections and 3 embeddings.
- **at most EMBEDS_PER_FRAME embeddings per frame**: with several new faces at once, the largest is
  embedded now and the others on the next frames, so no single frame pays for a crowd.
- **minimum size and score**: a face smaller than ``faces.min_event_px`` or scoring under
  ``faces.min_event_score`` is drawn on the live view but never embedded and never an event (a badge
  photo or a coin at 20 px is not a visitor).
- **cooldowns**: an unknown face is reported once per track, and again only if that track is still
  there after ``faces.cooldown``; a recognised person once per ``faces.cooldown`` per camera whatever
  track they are on (leaving and coming back within the cooldown is one visit). A track once
  recognised never raises ``face.unknown`` afterwards (a head turned on a refresh is not a stranger).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.core.data import Event
from models.config import VisionConfig
from models.faces import Face, FacePipeline, Image, face_events
from models.gallery import Gallery, load_key
from models.hosting import open_models

REFRESH = 1.0
"""A face that stays in place keeps its identity this long before it is embedded again (seconds)."""
TRACK_IOU = 0.3
"""Overlap with a track's last box for a face to be that track."""
TRACK_GONE = 2.0
"""A track not seen for this long (seconds of frame time) ends; the face is new when it comes back."""
EMBEDS_PER_FRAME = 1
"""Embeddings at most per analysed frame; the rest wait for the next frames (largest face first)."""
MAX_TRACKS = 64
"""More faces than this at once: the smallest are not tracked (bounded memory on a crowd)."""

Box = tuple[float, float, float, float]


@dataclass(slots=True)
class Track:
    id: int
    box: Box
    seen: float
    small: bool = False  # below min_event_px / min_event_score: shown, never embedded
    person: str | None = None
    score: float = 0.0
    embedded: float | None = None  # frame time of the last embedding; None: waiting for one
    reported: float | None = None  # frame time of this track's last face.unknown
    recognised: bool = False


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class FaceAnalyser:
    """Per camera: tracks, cooldowns and the gallery; the models come from ``open_models("faces", ...)``."""

    name = "faces"
    busy = False

    def __init__(self, camera: str, vision: VisionConfig, data_dir: Path) -> None:
        cfg = vision.faces
        self.camera = camera
        self.threshold = cfg.threshold
        self.cooldown = cfg.cooldown
        self.min_px = cfg.min_event_px
        self.min_score = cfg.min_event_score
        hosted = open_models("faces", data_dir, vision)
        self.pipeline = FacePipeline(hosted["detector"], hosted["embedder"])
        self.gallery = Gallery(data_dir, load_key(cfg.key_file))
        self.tracks: list[Track] = []
        self._person_last: dict[str, float] = {}
        self._next_id = 1
        self.embedded = 0
        self.found: list[tuple[str, Box, str]] = []

    def _follow(self, faces: list[Face], now: float) -> list[tuple[Track, Face]]:
        """Each face onto the track it overlaps most (greedy, best overlap first), or a new track."""
        pairs = sorted(((iou(t.box, f.box), ti, fi) for ti, t in enumerate(self.tracks)
                        for fi, f in enumerate(faces)), reverse=True)
        taken_t: set[int] = set()
        taken_f: dict[int, Track] = {}
        for overlap, ti, fi in pairs:
            if overlap < TRACK_IOU:
                break
            if ti in taken_t or fi in taken_f:
                continue
            taken_t.add(ti)
            taken_f[fi] = self.tracks[ti]
        out = []
        for fi, face in enumerate(faces):
            small = face.size < self.min_px or face.score < self.min_score
            track = taken_f.get(fi)
            if track is None:
                track = Track(self._next_id, face.box, now, small)
                self._next_id += 1
            track.box, track.seen, track.small = face.box, now, small  # a small face walking closer grows into range
            out.append((track, face))
        kept = {id(t) for t, _ in out}
        alive = [t for t in self.tracks if id(t) not in kept and now - t.seen < TRACK_GONE]
        self.tracks = ([t for t, _ in out] + alive)[:MAX_TRACKS]
        return out

    def analyse(self, frame: Image, now: float) -> list[Event]:
        bgr, found = self.pipeline.detect(frame)
        found = sorted(found, key=lambda f: f.size, reverse=True)[:MAX_TRACKS]
        if bgr is None:
            self.found = []
            return []
        pairs = self._follow(found, now)
        due = [(t, f) for t, f in pairs if not t.small and (t.embedded is None or now - t.embedded >= REFRESH)]
        due.sort(key=lambda tf: (tf[0].embedded is not None, tf[0].embedded or 0.0, -tf[1].size))
        results: list[tuple[str | None, float]] = []
        for track, face in due[:EMBEDS_PER_FRAME]:
            embedded, _ = self.pipeline.embed(bgr, face)
            self.embedded += 1
            track.embedded = now
            if embedded.embedding is None:
                continue
            match = self.gallery.match(embedded.embedding, self.threshold)
            track.person, track.score = match.person, match.score
            if match.person is not None:
                track.recognised = True
                if now - self._person_last.get(match.person, float("-inf")) >= self.cooldown:
                    self._person_last[match.person] = now
                    results.append((match.person, match.score))
            elif not track.recognised and (track.reported is None or now - track.reported >= self.cooldown):
                track.reported = now
                results.append((None, match.score))
        self.found = [("face", f.box, "small" if t.small else (t.person or ("unknown" if t.embedded is not None
                                                                              else "face")))
                      for t, f in pairs]
        return face_events(self.camera, results)

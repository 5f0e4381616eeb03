"""Faces on a camera: detect every analysed frame, track faces by overlap, embed a new face once, match.

Per camera state lives here (the detector and embedder are stateless and may be a shared service):

- **tracks**: a face found in the next frame with IoU >= TRACK_IOU to a track's last box is the same
  face; a track unseen for TRACK_GONE seconds ends. A track is embedded when new and then once per
  REFRESH while it stays, so a person at a door for 3 s at 5 fps costs 15 detections and 3 embeddings.
- **a frame detects or embeds, not both** (``faces.split_frames``, on by default): the frame on which a
  face is new is detected, tracked and the face's 112x112 crop aligned; the next frame embeds and
  matches that crop and does not detect (``busy`` makes the worker analyse it even on a still scene).
  A frame then costs the detection or one embedding, never their sum, and the event comes one frame
  later (200 ms at 5 fps); its snapshot is the frame the face was seen on (``seen_frame``), not the
  later one, where the person may have moved or left. With ``split_frames = false`` the same frame embeds at most
  EMBEDS_PER_FRAME faces. Either way, with several faces due the largest new one goes first and the
  others wait for the next frames, so no single frame pays for a crowd.
- **minimum size and score**: a face smaller than ``faces.min_event_px`` or scoring under
  ``faces.min_event_score`` is drawn on the live view but never embedded and never an event (a badge
  photo or a coin at 20 px is not a visitor).
- **cooldowns**: an unknown face is reported once per track, and again only if that track is still
  there after ``faces.cooldown``; a recognised person once per ``faces.cooldown`` per camera whatever
  track they are on (leaving and coming back within the cooldown is one visit). A track recognised
  within the cooldown raises no ``face.unknown`` (a head turned on a refresh is not a stranger); after
  it, it can (the person was erased meanwhile, or the first match was wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.core.data import Event
from models.config import VisionConfig
from models.faces import Face, FacePipeline, Image, align, face_events
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
CLOCK_BACK = 5.0
"""Frame time this far behind the last frame's means the clock went back: tracks and cooldowns start over."""
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
    recognised: float | None = None  # frame time this track was last matched to a person
    matched: bool = False  # embedded and matched at least once (its label is then a person or "unknown")


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

    def __init__(self, camera: str, vision: VisionConfig, data_dir: Path) -> None:
        cfg = vision.faces
        self.camera = camera
        self.threshold = cfg.threshold
        self.cooldown = cfg.cooldown
        self.min_px = cfg.min_event_px
        self.min_score = cfg.min_event_score
        self.split = cfg.split_frames
        hosted = open_models("faces", data_dir, vision)
        self.pipeline = FacePipeline(hosted["detector"], hosted["embedder"])
        self.gallery = Gallery(data_dir, load_key(cfg.key_file))
        self.tracks: list[Track] = []
        self._person_last: dict[str, float] = {}
        self._next_id = 1
        self.embedded = 0
        self.found: list[tuple[str, Box, str]] = []
        self._queued: tuple[Track, Image, Image] | None = None
        """A crop aligned on the last frame, embedded on this one; with the frame it was aligned on."""
        self.seen_frame: Image | None = None
        """The frame the last analyse()'s events were seen on, when it is not the frame analysed (split frames):
        the worker saves it as the snapshot. None: the frame analysed."""
        self._pairs: list[tuple[Track, Face]] = []  # the last detected frame's faces and their tracks
        self._last_now = float("-inf")

    @property
    def busy(self) -> bool:
        """A crop waits to be embedded: the next frame must be analysed even if nothing moves."""
        return self._queued is not None

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
        if now < self._last_now - CLOCK_BACK:  # the clock went back: cooldowns and tracks would hold for as long
            self.tracks, self._person_last, self._queued, self._pairs = [], {}, None, []
        self._last_now = now
        self.seen_frame = None
        if self._queued is not None:  # this frame embeds what the last one found, and does not detect
            track, aligned, seen = self._queued
            self._queued = None
            queued = self._identify(track, aligned, now) if any(t is track for t in self.tracks) else []
            if queued:
                self.seen_frame = seen
            self._label()
            return queued
        bgr, found = self.pipeline.detect(frame)
        found = sorted(found, key=lambda f: f.size, reverse=True)[:MAX_TRACKS]
        if bgr is None:
            self.found, self._pairs = [], []
            return []
        self._pairs = self._follow(found, now)
        due = [(t, f) for t, f in self._pairs if not t.small and (t.embedded is None or now - t.embedded >= REFRESH)]
        due.sort(key=lambda tf: (tf[0].embedded is not None, tf[0].embedded or 0.0, -tf[1].size))
        events: list[Event] = []
        if self.split and due:
            track, face = due[0]
            track.embedded = now  # not due again while its crop waits
            self._queued = (track, align(bgr, face.landmarks), frame)  # the worker hands a new array each frame
        else:
            for track, face in due[:EMBEDS_PER_FRAME]:
                events += self._identify(track, align(bgr, face.landmarks), now)
        self._label()
        return events

    def _identify(self, track: Track, aligned: Image, now: float) -> list[Event]:
        """Embed the crop, match it, and the event its track's cooldowns allow (if any)."""
        embedding = self.pipeline.embedder.embed(aligned)
        self.embedded += 1
        track.embedded = now
        match = self.gallery.match(embedding, self.threshold)
        track.person, track.score, track.matched = match.person, match.score, True
        if match.person is not None:
            track.recognised = now
            if now - self._person_last.get(match.person, float("-inf")) >= self.cooldown:
                self._person_last[match.person] = now
                return face_events(self.camera, [(match.person, match.score)])
        elif ((track.recognised is None or now - track.recognised >= self.cooldown)
              and (track.reported is None or now - track.reported >= self.cooldown)):
            track.reported = now
            return face_events(self.camera, [(None, match.score)])
        return []

    def _label(self) -> None:
        self.found = [("face", f.box, "small" if t.small else (t.person or ("unknown" if t.matched else "face")))
                      for t, f in self._pairs]

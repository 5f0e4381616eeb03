"""Plates on a camera: read every analysed frame, publish a plate once enough frames agree with confidence.

The analyser takes the full-resolution frame (``full_resolution``): the reader detects on a downscale and
reads from the full frame, so a distant plate is read from all its pixels. Per camera it keeps the votes and
the passage (see :class:`models.plate_votes.PlateVoter`); a passage that ends without a confident, valid plate
gives one ``plate.unreadable`` when it ends, with the crop of its widest read kept on this box (file name in the
event, never the image). While a passage could still end unsaid, the analyser is ``busy`` (the motion gate must
not skip the frames that show the plate gone).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.core.data import Event
from models.config import SnapshotConfig, VisionConfig
from models.faces import Image
from models.hosting import open_models
from models.plate_text import PlateRead
from models.plate_votes import PlateVoter, Verdict, plate_event, unreadable_event
from models.plates import PlateReader
from models.snapshots import Snapshots

DEFAULT_FIT_WIDTH = 1280
"""The width of the frame the live page shows (the camera's ``max_width`` default)."""


def review_crop(frame: Image, read: PlateRead, margin: float = 0.25) -> Image:
    """The plate's box in ``frame`` with a margin, for a person to read it later."""
    h, w = frame.shape[:2]
    x, y, bw, bh = read.detection.box
    x0, y0 = max(0, int(x - bw * margin)), max(0, int(y - bh * margin))
    x1, y1 = min(w, int(x + bw * (1 + margin)) + 1), min(h, int(y + bh * (1 + margin)) + 1)
    return np.ascontiguousarray(frame[y0:y1, x0:x1])


class PlateAnalyser:
    name = "plates"
    full_resolution = True

    def __init__(self, camera: str, vision: VisionConfig, data_dir: Path, *,
                 max_width: int = DEFAULT_FIT_WIDTH) -> None:
        cfg = vision.plates
        self.camera = camera
        self.cfg = cfg
        self.max_width = max_width
        self.allow, self.block = cfg.allowlist, cfg.blocklist
        self.reader: PlateReader = open_models("plates", data_dir, vision)["reader"]
        self.voter = PlateVoter(need=cfg.votes, window=cfg.window, hold=cfg.hold, min_conf=cfg.min_char_conf,
                                charset=self.reader.charset, local_provinces=cfg.local_provinces,
                                province_weight=cfg.province_weight, passage_gap=cfg.passage_gap,
                                province_conf=cfg.min_province_conf, strict_provinces=cfg.strict_provinces)
        self.crops = Snapshots(data_dir / "plates" / "unreadable" / camera,
                               SnapshotConfig(enabled=True, retention=cfg.unreadable_retention,
                                              max_mb=cfg.unreadable_max_mb)) if cfg.keep_unreadable else None
        self.found: list[tuple[str, tuple[float, float, float, float], str]] = []
        self.busy = False
        self._crop: tuple[PlateRead, Image] | None = None
        """The open passage's widest read and its crop, kept until the passage ends."""

    def analyse(self, frame: Image, now: float) -> list[Event]:
        reads = self.reader.read(frame, min_conf=self.cfg.min_char_conf, local_provinces=self.cfg.local_provinces,
                                 province_weight=self.cfg.province_weight, province_conf=self.cfg.min_province_conf,
                                 strict_provinces=self.cfg.strict_provinces)
        k = min(1.0, self.max_width / frame.shape[1]) if frame.ndim >= 2 and frame.shape[1] else 1.0
        self.found = [("plate", tuple(v * k for v in r.detection.box),  # type: ignore[misc]
                       r.text if r.published else "?") for r in reads]
        # One plate a camera is followed: the widest (the nearest, the best read).
        best = max(reads, key=lambda r: r.width_px, default=None)
        verdicts = self.voter.observe(self.camera, best, now)
        events = [self.event(v, now) for v in verdicts]
        passage_best = self.voter.best(self.camera)
        if passage_best is not None and passage_best is best and self.crops is not None:
            self._crop = (best, review_crop(frame, best))
        self.busy = self.voter.wants_frames(self.camera, now)
        return events

    def tick(self, now: float) -> list[Event]:
        """Time passing without a frame (a stalled stream): a passage that has ended says so."""
        verdict = self.voter.close(self.camera, now)
        self.busy = self.voter.wants_frames(self.camera, now)
        return [] if verdict is None else [self.event(verdict, now)]

    def event(self, verdict: Verdict, now: float) -> Event:
        if verdict.kind == "plate.read":
            return plate_event(self.camera, verdict.text, verdict.score, allowlist=self.allow,
                               blocklist=self.block)
        return self.unreadable(verdict, now)

    def unreadable(self, verdict: Verdict, now: float) -> Event:
        read = verdict.read
        name = None
        if self._crop is not None and self.crops is not None and self._crop[0] is read:
            crop = self._crop[1]
            if crop.size:
                name = self.crops.save(crop, "plate.unreadable", now)
        return unreadable_event(self.camera, verdict, read.width_px if read else 0.0, name)

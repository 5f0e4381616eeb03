"""Plates on a camera: read every analysed frame, report a plate once enough frames agree."""

from __future__ import annotations

from pathlib import Path

from gateway.core.data import Event
from models.config import VisionConfig
from models.faces import Image
from models.hosting import open_models
from models.plates import PlateReader, PlateVoter, plate_event


class PlateAnalyser:
    name = "plates"
    busy = False

    def __init__(self, camera: str, vision: VisionConfig, data_dir: Path) -> None:
        cfg = vision.plates
        self.camera = camera
        self.allow, self.block = cfg.allowlist, cfg.blocklist
        self.reader: PlateReader = open_models("plates", data_dir, vision)["reader"]
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

"""What a camera worker runs on a frame that moved: faces, plates, falls; events out, no pixels.

Each analyser keeps the per-camera memory its events need (cooldowns, votes, pose tracks) so the
worker only hands it frames and frame times. Events carry ids, plates and scores: never an
image, a crop or an embedding. One module per family: ``face_analyser``, ``plate_analyser``,
``fall_analyser``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from gateway.core.data import Event
from models.config import CameraConfig, VisionConfig
from models.face_analyser import FaceAnalyser
from models.faces import Image
from models.fall_analyser import FallAnalyser
from models.plate_analyser import PlateAnalyser


class Analyser(Protocol):
    name: str
    found: list[tuple[str, tuple[float, float, float, float], str]]
    """What the last analysed frame held: (kind, box x y w h, label), for the status page's live frame."""

    def analyse(self, frame: Image, now: float) -> list[Event]:
        """``now`` is the frame's time (seconds since the epoch): the time events carry, and the clock of
        cooldowns, votes and holds, so a recorded clip gives the same answer as live video."""
        ...

    @property
    def busy(self) -> bool:
        """True while the analyser needs frames even without motion (a person lying still after a fall)."""
        ...


ANALYSERS: dict[str, type[FaceAnalyser] | type[PlateAnalyser] | type[FallAnalyser]] = {
    "faces": FaceAnalyser,
    "plates": PlateAnalyser,
    "falls": FallAnalyser,
}


def build(camera: CameraConfig, vision: VisionConfig, data_dir: Path) -> list[Analyser]:
    """The camera's analysers, models loaded; raises FetchError / GalleryError with a reason to show."""
    return [PlateAnalyser(camera.id, vision, data_dir, max_width=camera.max_width) if name == "plates"  # boxes on
            else ANALYSERS[name](camera.id, vision, data_dir) for name in camera.detect]  # the fitted frame

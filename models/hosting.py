"""Where a camera's models run: in its own process, or in the shared inference service of their family.

A family (faces, plates, pose) is a dict of named model objects whose methods take frames and small
values and return small picklable values; they keep no per-camera state (tracks, votes and cooldowns
live in the analysers). ``open_models`` gives the local objects, or, once the worker has been told the
family's service socket (``use_services``), proxies with the same methods that send the frame through
shared memory to the one process holding that family's weights for every camera.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.config import VisionConfig


def _faces(data_dir: Path, vision: VisionConfig) -> dict[str, Any]:
    from models.faces import EMBEDDERS, FaceDetector
    from models.fetch import model_path

    return {"detector": FaceDetector(model_path(data_dir, "yunet"), threads=1),
            "embedder": EMBEDDERS[vision.faces.embedder](model_path(data_dir, "sface"), threads=1)}


def _plates(data_dir: Path, vision: VisionConfig) -> dict[str, Any]:
    from models.plates import PlateReader

    return {"reader": PlateReader.from_data_dir(data_dir, threads=1, max_side=vision.plates.detect_max_side)}


def _pose(data_dir: Path, vision: VisionConfig) -> dict[str, Any]:
    from models.fetch import model_path
    from models.pose import PoseDetector, PoseLandmarker

    return {"detector": PoseDetector(model_path(data_dir, "pose_detection"), threads=1),
            "landmarker": PoseLandmarker(model_path(data_dir, "pose_landmark"), threads=1)}


FAMILIES: dict[str, Callable[[Path, VisionConfig], dict[str, Any]]] = {
    "faces": _faces,
    "plates": _plates,
    "pose": _pose,
}
"""Each family's model objects, built from the fetched files; raises FetchError when one is missing."""

DETECTOR_FAMILY = {"faces": "faces", "plates": "plates", "falls": "pose"}
"""The family each camera detector needs."""

_services: dict[str, Path] = {}


def use_services(sockets: dict[str, str]) -> None:
    """From now on, ``open_models`` of these families gives proxies to the service on each socket."""
    _services.clear()
    _services.update({family: Path(path) for family, path in sockets.items() if family in FAMILIES})


def served(family: str) -> Path | None:
    """The socket of the family's shared service this worker was told, or None (its models would be local)."""
    return _services.get(family)


def open_models(family: str, data_dir: Path, vision: VisionConfig) -> dict[str, Any]:
    """The family's model objects: local, or proxies to its shared service (see ``use_services``)."""
    socket = _services.get(family)
    if socket is None:
        return FAMILIES[family](data_dir, vision)
    from models.remote import connect  # written by the shared-service work; never imported without a socket

    return connect(family, socket)

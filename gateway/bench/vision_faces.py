"""`gateway bench vision`: the faces figures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.vision_common import ms, scratch

if TYPE_CHECKING:
    from gateway.bench.vision_common import Frame


def measure(data_dir: Path, frames: list[Frame], repeat: int) -> list[dict[str, Any]]:
    from models.faces import EMBEDDERS, FacePipeline, align
    from models.fetch import model_path

    pipeline = FacePipeline.from_data_dir(data_dir, threads=1)
    sface = model_path(data_dir, "sface")
    embedders = {name: cls(sface, threads=1) for name, cls in EMBEDDERS.items()}
    rows = []
    for frame in frames:
        faces = pipeline.detector.detect(frame)
        def detect(f: Any = frame) -> object:
            return pipeline.detector.detect(f)

        row: dict[str, Any] = {"faces": len(faces), "detect_ms": ms(detect, repeat)}
        for backend, embedder in embedders.items() if faces else ():

            def embed(f: Any = frame, lm: Any = faces[0].landmarks, e: Any = embedder) -> object:
                return e.embed(align(f, lm))

            row[f"align_embed_ms_{backend}"] = ms(embed, repeat)
        if faces:
            row["door_ms_per_frame"] = _door(data_dir, frame)
        rows.append(row)
    return rows


def _door(data_dir: Path, frame: Frame) -> float:
    """Mean ms per analysed frame as the camera worker runs faces: a person standing 3 s at 5 fps
    (detection every frame, an embedding when the face is new and once a second after)."""
    from models.config import VisionConfig
    from models.face_analyser import FaceAnalyser

    with scratch(data_dir) as (work, key):
        analyser = FaceAnalyser("bench", VisionConfig.model_validate({"faces": {"key_file": str(key)}}), work)
        analyser.analyse(frame, -10.0)  # warm-up
        t0 = time.perf_counter()
        for k in range(15):
            analyser.analyse(frame, k / 5)
        return round((time.perf_counter() - t0) * 1000 / 15, 2)

"""`gateway bench vision`: the plates figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.vision_common import ms

if TYPE_CHECKING:
    from gateway.bench.vision_common import Frame


def measure(data_dir: Path, frames: list[Frame], repeat: int) -> list[dict[str, Any]]:
    """Detection on the whole frame; rectify + read on a plate-sized quadrilateral (its cost does not
    depend on what the plate says: the crop is always 200x32; a failed read's retries cost more)."""
    import numpy as np

    from models.plates import PlateReader

    reader = PlateReader.from_data_dir(data_dir, threads=1)
    rows = []
    for frame in frames:
        h, w = frame.shape[:2]
        corners = np.array([[w * .40, h * .60], [w * .60, h * .61], [w * .60, h * .68], [w * .40, h * .67]],
                           dtype=np.float32)

        def read(f: Any = frame, c: Any = corners) -> object:
            return reader.recognise(reader.rectify(f, c))

        def detect(f: Any = frame) -> object:
            return reader.detect(f)

        rows.append({"plate_detect_ms": ms(detect, repeat),
                     "plate_read_ms": ms(read, repeat)})
    return rows

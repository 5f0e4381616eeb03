"""What the vision benches share: timing with percentiles, a scratch data dir, a camera-sized scene."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    Frame = np.ndarray[Any, Any]


def ms(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    fn()  # warm-up: first run allocates
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median": round(statistics.median(times), 2), "p90": round(times[int(0.9 * (len(times) - 1))], 2)}



@contextlib.contextmanager
def scratch(data_dir: Path) -> Iterator[tuple[Path, Path]]:
    """A throwaway data dir sharing the fetched models, with its own gallery and key (not the site's)."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        (work / "models").symlink_to((data_dir / "models").resolve())
        key = work / "faces.key"
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        yield work, key



def scene(image: Frame, width: int, height: int) -> Frame:
    """A camera-sized frame with the portrait pasted at about a quarter of the frame height."""
    import cv2
    import numpy as np

    frame = np.full((height, width, 3), 90, dtype=np.uint8)
    side = height // 2
    face = cv2.resize(image, (side, side))
    y, x = (height - side) // 2, (width - side) // 2
    frame[y:y + side, x:x + side] = face
    return frame

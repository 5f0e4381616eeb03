"""Real images and augmentations shared by the vision tests (not a test module)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

Aug = Callable[[np.ndarray], np.ndarray]


def _rotate(deg: float) -> Aug:
    def f(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
        return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return f


def _jpeg(img: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 30])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def _crop(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return np.ascontiguousarray(img[h // 10:, w // 12: w - w // 12])


AUGMENTATIONS: dict[str, Aug] = {
    "original": lambda img: img,
    "flip": lambda img: np.ascontiguousarray(img[:, ::-1]),
    "darker": lambda img: cv2.convertScaleAbs(img, alpha=0.7, beta=-20),
    "brighter": lambda img: cv2.convertScaleAbs(img, alpha=1.2, beta=30),
    "rot+8": _rotate(8),
    "rot-8": _rotate(-8),
    "crop": _crop,
    "half": lambda img: cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
    "jpeg30": _jpeg,
    "noise": lambda img: np.clip(img.astype(np.int16) + np.random.default_rng(1).normal(0, 8, img.shape),
                                 0, 255).astype(np.uint8),
}


def site_data(tmp: Path, vision_dir: Path) -> tuple[Path, Path]:
    """A site's data dir sharing the fetched models, and a gallery key of its own (0600); made once per ``tmp``."""
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    if not (data / "models").exists():
        (data / "models").symlink_to(vision_dir / "models")
    key = tmp / "faces.key"
    if not key.exists():
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
    return data, key

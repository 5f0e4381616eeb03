"""`gateway bench vision`: milliseconds per face stage on one core, at camera resolutions."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.faces import EMBEDDERS, FacePipeline, align
from models.fetch import model_path


def _ms(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    fn()  # warm-up: first run allocates
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median": round(statistics.median(times), 2), "p90": round(times[int(0.9 * (len(times) - 1))], 2)}


def _scene(image: np.ndarray[Any, Any], width: int, height: int) -> np.ndarray[Any, Any]:
    """A camera-sized frame with the portrait pasted at about a quarter of the frame height."""
    frame = np.full((height, width, 3), 90, dtype=np.uint8)
    side = height // 2
    face = cv2.resize(image, (side, side))
    y, x = (height - side) // 2, (width - side) // 2
    frame[y:y + side, x:x + side] = face
    return frame


def bench_vision(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pipeline = FacePipeline.from_data_dir(data_dir, threads=1)
    sface = model_path(data_dir, "sface")
    embedders = {name: cls(sface, threads=1) for name, cls in EMBEDDERS.items()}
    image_path = Path(args.image) if args.image else None
    if image_path is not None:
        portrait = cv2.imread(str(image_path))
        if portrait is None:
            print(f"cannot read {image_path}")
            return 2
    else:
        rng = np.random.default_rng(0)
        portrait = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    results: list[dict[str, Any]] = []
    for width, height in ((640, 480), (1280, 720)):
        frame = _scene(portrait, width, height)
        faces = pipeline.detector.detect(frame)

        def detect(f: Any = frame) -> object:
            return pipeline.detector.detect(f)

        row: dict[str, Any] = {"resolution": f"{width}x{height}", "faces": len(faces),
                               "detect_ms": _ms(detect, args.repeat)}
        for backend, embedder in embedders.items():
            if not faces:
                break

            def embed(f: Any = frame, lm: Any = faces[0].landmarks, e: Any = embedder) -> object:
                return e.embed(align(f, lm))

            row[f"align_embed_ms_{backend}"] = _ms(embed, args.repeat)
        results.append(row)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("one ONNX Runtime thread per model; median / p90 over", args.repeat, "runs")
        for r in results:
            line = f"{r['resolution']:>9}  detect {r['detect_ms']['median']:6.1f} / {r['detect_ms']['p90']:6.1f} ms"
            embeds = [(k.removeprefix("align_embed_ms_"), v) for k, v in r.items() if k.startswith("align_embed_ms_")]
            for backend, e in embeds:
                line += f"   align+embed ({backend}) {e['median']:5.1f} / {e['p90']:5.1f} ms"
            if not embeds:
                line += "   (no face in the frame: give --image PORTRAIT for the embed figure)"
            print(line)
    return 0

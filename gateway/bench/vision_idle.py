"""What a camera costs when nothing happens: a real worker process on a still MJPEG scene.

The worker is started exactly as the daemon starts it (``python -m models.worker``, the spec on
stdin) against the camera simulator on 127.0.0.1, and its CPU time is read from /proc after the
models have loaded. The same run with motion gating switched off is the baseline: the ratio is
what gating saves. Imported only when `gateway bench vision` measures an idle camera.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gateway.bench.harness import cpu_seconds, memory_mb, stop_process
from models.config import CameraConfig, MotionConfig, VisionConfig
from simulators.camera import MjpegCamera, scene


def _serve(frame: Any, fps: float, ready: threading.Event, stop: threading.Event, out: dict[str, str]) -> None:
    async def main() -> None:
        async with MjpegCamera([frame], fps=fps) as cam:
            out["url"] = cam.url
            ready.set()
            while not stop.is_set():  # noqa: ASYNC110 (a thread's flag, not an asyncio event)
                await asyncio.sleep(0.2)

    asyncio.run(main())


def idle_cpu(data_dir: Path, image: Path | None, *, seconds: float, fps: float, stream_fps: float,
             gated: bool, detect: list[str], key_file: Path | None) -> dict[str, Any]:
    portrait = cv2.imread(str(image)) if image else None
    picture = np.full((512, 512, 3), 160, np.uint8) if portrait is None else np.asarray(portrait, np.uint8)
    frame = scene(picture)
    ready, stop = threading.Event(), threading.Event()
    out: dict[str, str] = {}
    server = threading.Thread(target=_serve, args=(frame, stream_fps, ready, stop, out), daemon=True)
    server.start()
    ready.wait(10)
    camera = CameraConfig.model_validate({"id": "bench", "url": out["url"], "fps": fps, "detect": detect,
                                          "motion": MotionConfig(enabled=gated).model_dump()})
    vision = VisionConfig.model_validate({"faces": {"key_file": str(key_file)} if key_file else {}})
    spec = {"camera": camera.model_dump(mode="json"), "vision": vision.model_dump(mode="json"),
            "data_dir": str(data_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "models.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdin and proc.stdout
    proc.stdin.write((json.dumps(spec) + "\n").encode())
    proc.stdin.close()
    try:
        status: dict[str, Any] = {}
        for line in proc.stdout:  # wait until it streams: model loading is not idle cost
            msg = json.loads(line)
            if msg.get("t") == "status" and msg.get("state") == "streaming":
                break
            if msg.get("kind") == "camera.error":
                raise RuntimeError(msg["payload"].get("error"))
        time.sleep(camera.motion.hold + 2)  # the first frame of a scene is analysed, and the hold after it
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rss = memory_mb(proc.pid)[0]
        os.set_blocking(proc.stdout.fileno(), False)
        for line in proc.stdout.read().splitlines() or []:
            msg = json.loads(line)
            if msg.get("t") == "status":
                status = msg
    finally:
        stop_process(proc, grace=5)
        stop.set()
        server.join(5)
    return {"gated": gated, "detect": detect, "analysis_fps": fps, "stream_fps": stream_fps,
            "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
            "rss_mb": round(rss, 1), "analysed": status.get("analysed"), "gated_frames": status.get("gated"),
            "frames": status.get("frames")}

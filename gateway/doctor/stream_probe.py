"""`python -m gateway.doctor.stream_probe`: open one camera stream and read one frame, in a child process.

OpenCV's FFmpeg backend can block inside a C call that no Python timeout reaches, so doctor runs this in a
child it kills when time is up. The camera's config comes on stdin (its URL often carries a password, and a
command line is visible to every user in ``ps``); one JSON line comes back on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def probe(raw: str) -> dict[str, Any]:
    from models.config import CameraConfig
    from models.worker import open_capture

    camera = CameraConfig.model_validate_json(raw)
    capture = open_capture(camera)
    try:
        if not capture.isOpened():
            return {"opened": False, "frame": False}
        got, frame = capture.read()
        if not got or frame is None:
            return {"opened": True, "frame": False}
        height, width = frame.shape[:2]
        return {"opened": True, "frame": True, "width": int(width), "height": int(height)}
    finally:
        capture.release()


def main() -> int:
    try:
        answer = probe(sys.stdin.read(1 << 16))
    except Exception as exc:  # a child's last word, whatever broke; its type only: a message may hold the URL
        answer = {"opened": False, "frame": False, "error": type(exc).__name__}
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

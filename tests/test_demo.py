"""The README's first command: the demo runs, shows live readings, and (with --camera) vision events.

Run as the user runs it, a `gateway demo` process, and judged by what it prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import VISION_CACHE


def demo(*args: str, timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "gateway", "demo", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_demo_shows_live_readings() -> None:
    out = demo("--duration", "8", timeout=60)
    assert "gateway online" in out
    readings = [line for line in out.splitlines() if " V " in line and "kWh" in line and "meter-1" in line]
    assert len(readings) >= 2, out
    assert "gateway offline" in out  # a clean stop: the retained status says so


def test_demo_with_a_camera_recognises_a_resident_and_raises_a_fall_alarm(vision_dir: Path) -> None:
    out = demo("--camera", "--duration", "40", timeout=150, env={"GATEWAY_CACHE": str(VISION_CACHE)})
    lines = out.splitlines()
    assert any("face.recognized from lobby" in line and "person=r-0101" in line for line in lines), out
    assert any("face.unknown from lobby" in line for line in lines), out
    assert any("ALARM fall.detected from lobby" in line for line in lines), out
    assert any("ALARM alarm.raise" in line and "class=fall" in line for line in lines), out

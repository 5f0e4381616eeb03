"""`gateway bench vision` at toy size: every stage is measured, the idle worker is real and is gone after.

No timing is asserted (the machine is shared; figures are for people). What is asserted is behaviour:
on a still scene the gated worker analyses a handful of frames, the ungated one every fifth-of-a-second.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import psutil
import pytest

from gateway.bench.vision import bench_vision


def test_bench_vision_measures_every_stage_and_an_idle_worker(vision_dir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    image = vision_dir / "testdata" / "astronaut.png"
    args = argparse.Namespace(data_dir=vision_dir, image=image, repeat=2, idle=4.0, json=True)
    code = bench_vision(args)
    doc = json.loads(capsys.readouterr().out)
    # Speed targets may be missed on a loaded machine (then ok is false and the exit 1); nothing else may go wrong.
    assert doc["bench"] == "vision" and code == (0 if doc["ok"] else 1) and doc["problems"] == []
    assert doc["ok"] == all(t["met"] for t in doc["targets"])
    assert {t["unit"] for t in doc["targets"]} == {" ms"} and all(t["actual"] > 0 for t in doc["targets"])
    assert doc["params"] == {"data_dir": str(vision_dir), "image": str(image), "repeat": 2, "idle": 4.0,
                             "resolutions": ["640x480", "1280x720"]}
    assert doc["skipped"] == {}
    for row in doc["stages"]:
        assert row["faces"] == 1 and row["door_ms_per_frame"] > 0
        for key in ("detect_ms", "align_embed_ms_opencv", "plate_detect_ms", "plate_read_ms", "pose_detect_ms",
                    "pose_landmark_ms", "pose_tracked_frame_ms"):
            assert row[key]["median"] > 0, key
    gated, ungated = doc["idle_camera"]
    assert gated["gated"] and not ungated["gated"]
    assert gated["detect"] == ["faces", "plates", "falls"]
    assert gated["gated_frames"] > gated["analysed"] and ungated["gated_frames"] == 0
    assert ungated["analysed"] > 2 * gated["analysed"]
    assert "idle_gating_saves" in doc["derived"]
    assert psutil.Process().children(recursive=True) == []


def test_bench_vision_refuses_nonsense(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(data_dir=tmp_path, image=tmp_path / "missing.png", repeat=2, idle=0.0)
    assert bench_vision(args) == 2
    assert "cannot read" in capsys.readouterr().err


def test_bench_vision_without_models_reports_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_vision(argparse.Namespace(data_dir=tmp_path, image=None, repeat=1, idle=0.0, json=True))
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and not doc["ok"] and set(doc["skipped"]) == {"faces", "plates", "pose"}
    assert doc["problems"] and doc["problems"][0].startswith("no model family to bench")

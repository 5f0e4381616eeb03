"""`gateway bench soak` at toy size: the JSON has its shape, and no process is left behind.

Six seconds cannot judge a leak, so neither the slopes nor the targets' verdicts are asserted: only
that every figure is there, under its stable name.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.soak import bench_soak

SAMPLE = {"t", "rss_mb", "fds", "outbox", "heartbeat_age_s", "answer_ms", "delivered", "camera_rss_mb"}
SPREAD = {"first", "last", "min", "max"}


@pytest.mark.slow
def test_bench_soak_json_has_its_shape(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    args = argparse.Namespace(minutes=0.1, devices=5, points=5, sample=1.0, camera=False, json=True)
    code = bench_soak(args)
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "soak" and code == (0 if doc["ok"] else 1) and doc["problems"] == []
    assert doc["params"] == {"minutes": 0.1, "devices": 5, "points": 5, "interval": 1.0, "sample": 1.0,
                             "camera": "no camera (--no-camera)"}
    assert len(doc["samples"]) == 7 and all(set(s) == SAMPLE for s in doc["samples"])
    times = [s["t"] for s in doc["samples"]]
    assert times == sorted(times) and times[0] < 1 and doc["warmup_s"] == pytest.approx(1.5)
    assert 0 < doc["fitted_samples"] < len(times)
    for s in doc["samples"]:
        assert s["rss_mb"] > 0 and s["fds"] > 0 and s["outbox"] >= 0 and s["camera_rss_mb"] is None
        assert s["answer_ms"] > 0 and s["heartbeat_age_s"] is not None
    assert set(doc["slopes"]) == {"rss_mb_per_h", "fds_per_h", "outbox_per_h", "camera_rss_mb_per_h"}
    assert all(doc["slopes"][k] is not None for k in ("rss_mb_per_h", "fds_per_h", "outbox_per_h"))
    for figure in ("rss_mb", "fds", "outbox", "heartbeat_age_s", "camera_rss_mb"):
        assert set(doc[figure]) == SPREAD
    assert set(doc["control_answer"]) == {"p50_ms", "p99_ms", "max_ms", "n"} and doc["control_answer"]["n"] > 0
    assert doc["delivered"] > 0
    assert [(t["figure"], t["op"], t["value"]) for t in doc["targets"]] == [
        ("slopes.rss_mb_per_h", "<", 5), ("slopes.fds_per_h", "<=", 0)]
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def test_bench_soak_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_soak(argparse.Namespace(minutes=0)) == 2
    assert bench_soak(argparse.Namespace(minutes=0.1, sample=10)) == 2
    assert "two samples" in capsys.readouterr().err

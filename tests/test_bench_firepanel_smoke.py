"""`gateway bench firepanel` at toy size: it runs, every line arrives, no process is left behind.

No timing is asserted and no target is judged: the machine is shared and the figures are for people to read.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.firepanel import bench_firepanel


def test_bench_firepanel_json_has_the_latencies(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    args = argparse.Namespace(devices=2, points=5, lines=8, rate=20.0, warmup=0.3, format="notifier_en", json=True)
    code = bench_firepanel(args)
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "firepanel" and code == (0 if doc["ok"] else 1)
    assert doc["params"] == {"devices": 2, "points": 5, "interval": 1.0, "lines": 8, "rate": 20.0, "warmup": 0.3,
                             "format": "notifier_en"}
    assert doc["lines_sent"] == doc["alarms_received"] == doc["latency"]["n"] == 8 and doc["problems"] == []
    latency = doc["latency"]
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert doc["messages_delivered_upstream"] > 0 and doc["seconds"] > 0
    [target] = doc["targets"]
    assert target["figure"] == "latency.p99_ms" and target["actual"] == latency["p99_ms"] and target["value"] == 50
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def test_bench_firepanel_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_firepanel(argparse.Namespace(lines=0)) == 2
    assert "must be positive" in capsys.readouterr().err

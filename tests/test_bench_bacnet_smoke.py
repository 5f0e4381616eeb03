"""`gateway bench bacnet` at toy size: it runs, prints one JSON object with every figure, leaves no process behind.

No timing is asserted and no target is judged: the machine is shared and the figures are for people to read.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.bacnet import bench_bacnet


def test_bench_json_has_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_bacnet(argparse.Namespace(devices=2, points=30, seconds=0.5, json=True))
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "bacnet" and code == (0 if doc["ok"] else 1) and doc["problems"] == []
    assert doc["params"] == {"devices": 2, "points": 30, "seconds": 0.5, "read_multiple_objects": 25}
    for run in (doc, doc["read_property"]):
        assert run["points"] > 0 and run["points_per_s"] > 0 and run["cpu_s_per_1k_points"] > 0
        assert run["good_points_percent"] == 100.0 and run["failed_polls"] == 0
    # counted by the simulated devices: 30 objects, 25 per ReadPropertyMultiple, is 2 requests a poll;
    # alone, value and status flags of each: 60
    assert doc["requests_per_poll"] == 2.0 and doc["read_property"]["requests_per_poll"] == 60.0
    assert doc["derived"]["requests_per_poll_saved"]["value"] == 30.0
    assert psutil.Process().children(recursive=True) == []


def test_bench_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_bacnet(argparse.Namespace(devices=0, points=10, seconds=1.0)) == 2
    assert "must be positive" in capsys.readouterr().err
